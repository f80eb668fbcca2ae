//go:build integration

package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/internal/whsig"
	"github.com/certnode/certnode/schemas"
)

// TestSecureKafkaRoles: on the broker that takes only TLS and SCRAM and
// authorizes by ACL (deploy/local/kafka-secure.sh), certnode kafka grant
// gives each role a user of its own; then every role runs as its own
// process with only its user: a receipt is signed over HTTP and a bulk
// job finished (ingest, worker); poison input goes to the DLQ (worker);
// the receipt reaches ClickHouse, the usage events and the transparency
// log (sinks, log); webhooks are delivered, retried through the delay
// topics, given up into the webhook DLQ, triggered and redelivered through
// ingest (dispatcher); the coordinator's changes reach the audit log; an
// attack on a key raises an alert delivered as a webhook (detect). The
// broker refuses a user what its grant leaves out, and a wrong password.
func TestSecureKafkaRoles(t *testing.T) {
	sk := testenv.SecureKafkaBroker(t)
	e := newE2E(t, sk.Addr)
	admin := secureAdminOpts(t, sk)
	e.admin = admin
	suffix := strings.TrimPrefix(e.prefix, "e2e-")
	type cred struct{ user, password string }
	creds := map[kafka.Role]cred{}
	for _, r := range kafka.Roles() {
		creds[r] = cred{user: string(r) + "-" + suffix, password: "pw-" + testenv.RandomSuffix() + testenv.RandomSuffix()}
	}
	adminCl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(sk.Addr)}, admin...)...)
	if err != nil {
		t.Fatal(err)
	}
	adm := kadm.NewClient(adminCl)
	t.Cleanup(func() { // after the roles stopped: their users and ACLs go
		defer adminCl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var users []string
		var del []kadm.DeleteSCRAM
		for _, c := range creds {
			users = append(users, "User:"+c.user)
			del = append(del, kadm.DeleteSCRAM{User: c.user, Mechanism: kadm.ScramSha512})
		}
		res, err := adm.DeleteACLs(ctx, kadm.NewACLs().AnyResource().Allow(users...).AllowHosts().Operations(kadm.OpAny).ResourcePatternType(kadm.ACLPatternAny))
		n := 0
		for _, r := range res {
			if err == nil {
				err = r.Err
			}
			n += len(r.Deleted)
		}
		if err != nil || n == 0 {
			t.Errorf("deleting the users' ACLs: %d deleted, %v", n, err)
		}
		if _, err := adm.AlterUserSCRAMs(ctx, del, nil); err != nil {
			t.Errorf("deleting the users: %v", err)
		}
	})
	e.env = append(e.env, "CERTNODE_KAFKA_CA="+sk.CAFile, "CERTNODE_KAFKA_SASL_MECHANISM=SCRAM-SHA-512")
	// A later value of a variable wins (os/exec keeps the last): each
	// role's user is appended to the deployment's settings.
	as := func(r kafka.Role) []string {
		return append(slices.Clip(e.env), "CERTNODE_KAFKA_SASL_USER="+creds[r].user, "CERTNODE_KAFKA_SASL_PASSWORD="+creds[r].password)
	}

	// The administrator grants each role (the first grant creates the
	// topics); granting again without a password keeps the credential.
	bin := certnodeBinary(t)
	grant := func(r kafka.Role, password string) string {
		t.Helper()
		cmd := exec.Command(bin, "kafka", "grant", "--role", string(r), "--user", creds[r].user)
		cmd.Env = append(slices.Clip(e.env), "CERTNODE_KAFKA_SASL_USER="+sk.AdminUser, "CERTNODE_KAFKA_SASL_PASSWORD="+sk.AdminPassword,
			"CERTNODE_KAFKA_GRANT_PASSWORD="+password)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("kafka grant --role %s: %v\n%s", r, err, out)
		}
		if strings.Contains(string(out), sk.AdminPassword) || (password != "" && strings.Contains(string(out), password)) {
			t.Fatalf("kafka grant printed a password:\n%s", out)
		}
		return string(out)
	}
	for _, r := range kafka.Roles() {
		if out := grant(r, creds[r].password); !strings.Contains(out, "SCRAM-SHA-512 credential of "+creds[r].user+" set") {
			t.Fatalf("grant %s:\n%s", r, out)
		}
	}
	if out := grant(kafka.RoleWorker, ""); !strings.Contains(out, "credential of "+creds[kafka.RoleWorker].user+" left as it was") ||
		!strings.Contains(out, "ALLOW User:"+creds[kafka.RoleWorker].user+" READ TOPIC "+e.prefix+".requests (LITERAL)") {
		t.Fatalf("grant again:\n%s", out)
	}

	refusals(t, sk, e.prefix, func(r kafka.Role) (string, string) { return creds[r].user, creds[r].password })

	// Every role with its own user.
	var procs []*proc
	start := func(r kafka.Role, f func() *proc) {
		saved := e.env
		e.env = as(r)
		defer func() { e.env = saved }()
		if p := f(); p != nil {
			procs = append(procs, p)
		}
	}
	var caddr string
	var call func(method, path, body string) (int, string)
	start(kafka.RoleCoordinator, func() *proc { caddr, call = e.coordinated(); return nil })
	// coordinated added its tokens to the coordinator's env, which start
	// dropped: the roles following it need them too.
	e.env = append(e.env, "CERTNODE_ADMIN_TOKEN="+e2eAdminToken, "CERTNODE_NODE_TOKEN="+e2eNodeToken, "CERTNODE_TENANTS_FILE=")

	logKey := filepath.Join(e.dir, "log-key.pem")
	if r := certnode(t, "", "keys", "generate", "--out", logKey, "--alg", "EdDSA"); r.code != 0 {
		t.Fatalf("keys generate: %+v", r)
	}
	const origin = "secure.certnode.test/receipts"
	vk := certnode(t, "", "log", "key", "--key", logKey, "--origin", origin)
	if vk.code != 0 {
		t.Fatalf("log key: %+v", vk)
	}
	logAddr, auditAddr, detectMetrics := freeAddr(t), freeAddr(t), freeAddr(t)
	start(kafka.RoleLog, func() *proc {
		return e.start("log", "log", "serve", "--key", logKey, "--origin", origin, "--dir", filepath.Join(e.dir, "translog"), "--http", logAddr)
	})
	start(kafka.RoleAuditLog, func() *proc {
		return e.start("auditlog", "log", "serve", "--kind", "audit", "--key", logKey, "--dir", filepath.Join(e.dir, "auditlog"), "--http", auditAddr)
	})
	start(kafka.RoleSinkClickHouse, func() *proc { return e.sink("--seal=false") })
	start(kafka.RoleSinkUsage, func() *proc { return e.start("usage", "sink", "usage", "--metrics", freeAddr(t)) })
	start(kafka.RoleWorker, func() *proc {
		return e.start("worker", "worker", "--coordinator", caddr, "--metrics", freeAddr(t), "--concurrency", "2")
	})
	start(kafka.RoleDetect, func() *proc { return e.start("detect", "detect", "--coordinator", caddr, "--metrics", detectMetrics) })

	org, key := e.newOrgKey(call, "secure", `["admin","read","sign","jobs"]`)
	e.apiKey, e.tenant = key, org
	victimOrg, victim := e.newOrgKey(call, "victim", `["read"]`)
	endpoint := func(org, url string, events ...string) string {
		t.Helper()
		body, _ := json.Marshal(map[string]any{"url": url, "event_types": append([]string{}, events...), "secret": whsig.NewSecret().Encode()})
		code, resp := call("POST", "/v1/orgs/"+org+"/webhooks/endpoints", string(body))
		var ep struct {
			ID string `json:"id"`
		}
		if code != 201 || json.Unmarshal([]byte(resp), &ep, json.RejectUnknownMembers(false)) != nil {
			t.Fatalf("endpoint of %s: %d %s", org, code, resp)
		}
		return ep.ID
	}
	recv := newReceiver(t, 200)
	endpoint(org, recv.srv.URL+"/hook")
	endpoint(victimOrg, recv.srv.URL+"/hook")
	// Retries go through the delay topics and back onto webhooks; an
	// endpoint that never answers 2xx ends in the webhook DLQ.
	var flakyCalls atomic.Int32
	flaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if flakyCalls.Add(1) == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(flaky.Close)
	dead := newReceiver(t, http.StatusInternalServerError)
	flakyID := endpoint(org, flaky.URL+"/hook", schemas.EventReceiptSigned)
	deadID := endpoint(org, dead.srv.URL+"/hook", schemas.EventReceiptSigned)
	start(kafka.RoleDispatcher, func() *proc {
		return e.start("dispatcher", "dispatcher", "--coordinator", caddr, "--metrics", freeAddr(t), "--webhook-allow", "127.0.0.0/8",
			"--retry-schedule", "0s,1s")
	})
	start(kafka.RoleIngest, func() *proc {
		return e.ingest("--coordinator", caddr, "--log", "http://"+logAddr, "--log-key", strings.TrimSpace(vk.stdout))
	})

	// Signed over HTTP, and a bulk job finished.
	code, signed := e.do("POST", "/v1/sign", "application/json", `{"payload":{"secure":"kafka"}}`)
	var rc struct {
		ReceiptID string `json:"receipt_id"`
	}
	if code != 200 || json.Unmarshal([]byte(signed), &rc, json.RejectUnknownMembers(false)) != nil || rc.ReceiptID == "" {
		t.Fatalf("sign: %d %s", code, signed)
	}
	job := e.submitJob("sign", []string{`{"n":1}`, `{"n":2}`, `{"n":3}`})
	testenv.WaitFor(t, "the job done", 60*time.Second, func() (bool, string) {
		s := e.jobStatus(job)
		return s.State == "done" && s.Valid == 3, fmt.Sprintf("%+v", s)
	})
	waitProof(t, e, rc.ReceiptID, 60*time.Second)
	// Poison input: the worker puts it on the DLQ.
	topics := schemas.TopicsFor(e.prefix)
	pctx, pcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer pcancel()
	if err := adminCl.ProduceSync(pctx, &kgo.Record{Topic: topics.Requests, Key: []byte(org), Value: []byte("poison-" + suffix)}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	holds(t, sk, admin, topics.DLQ, "poison-"+suffix)

	// The results, their usage, the webhook attempts and the audit events
	// in ClickHouse, each through its role's user.
	conn := e.clickhouse()
	e.waitRows(conn, 4, 60*time.Second)
	ctx := context.Background()
	count := func(sql string, args ...any) uint64 {
		var n uint64
		if err := conn.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	testenv.WaitFor(t, "usage, webhook attempts and audit events stored", 60*time.Second, func() (bool, string) {
		usage := count("SELECT count() FROM certnode.usage_events WHERE org = ?", org)
		attempts := count("SELECT count() FROM certnode.webhook_attempts WHERE org = ? AND event_type = ? AND status = 200", org, schemas.EventReceiptSigned)
		created := count("SELECT count() FROM certnode.audit_events WHERE org = ? AND action = 'org.create' AND source = 'coordinator'", org)
		return usage >= 4 && attempts >= 1 && created == 1, fmt.Sprintf("usage %d, attempts %d, org.create %d", usage, attempts, created)
	})
	testenv.WaitFor(t, "a retry delivered, and a message given up", 60*time.Second, func() (bool, string) {
		retried := count("SELECT count() FROM certnode.webhook_attempts WHERE endpoint_id = ? AND attempt = 2 AND status = 200", flakyID)
		gaveUp := count("SELECT count() FROM certnode.webhook_attempts WHERE endpoint_id = ? AND attempt = 2 AND status = 500", deadID)
		return retried >= 1 && gaveUp >= 1, fmt.Sprintf("delivered at the second attempt %d, failed twice %d", retried, gaveUp)
	})
	// Through ingest: a triggered event (on events) and a redelivery (on
	// webhooks), each delivered.
	if code, resp := e.do("POST", "/v1/webhooks/trigger", "application/json", `{"event_type":"`+schemas.EventWebhookTest+`"}`); code != 202 {
		t.Fatalf("trigger: %d %s", code, resp)
	}
	code, resp := e.do("GET", "/v1/webhooks/deliveries?endpoint="+flakyID+"&status="+schemas.DeliveryDelivered, "", "")
	var page schemas.DeliveryPage
	if code != 200 || json.Unmarshal([]byte(resp), &page, json.RejectUnknownMembers(false)) != nil || len(page.Data) == 0 {
		t.Fatalf("deliveries: %d %s", code, resp)
	}
	if code, resp := e.do("POST", "/v1/webhooks/deliveries/"+page.Data[0].ID+"/redeliver", "", ""); code != 202 {
		t.Fatalf("redeliver: %d %s", code, resp)
	}
	testenv.WaitFor(t, "the triggered event and the redelivery delivered", 30*time.Second, func() (bool, string) {
		recv.mu.Lock()
		triggered := slices.ContainsFunc(recv.body, func(b string) bool { return strings.Contains(b, `"`+schemas.EventWebhookTest+`"`) })
		recv.mu.Unlock()
		redelivered := count("SELECT count() FROM certnode.webhook_attempts WHERE endpoint_id = ? AND redelivery = 1 AND status = 200", flakyID)
		return triggered && redelivered == 1, fmt.Sprintf("triggered %v, redelivered %d", triggered, redelivered)
	})
	holds(t, sk, admin, topics.WebhookDLQ, deadID)
	// The audit log holds the coordinator's events.
	testenv.WaitFor(t, "the audit log grows", 30*time.Second, func() (bool, string) {
		code, cp := request("GET", "http://"+auditAddr+"/checkpoint", "", "", "")
		lines := strings.Split(cp, "\n")
		return code == 200 && len(lines) > 1 && lines[1] != "0", fmt.Sprint(code, cp)
	})

	// Wrong secrets for the victim's key from 25 addresses: detect raises
	// an alert (audit and event), the dispatcher delivers it.
	victimID, _, _ := strings.Cut(victim, ".")
	for i := range 25 {
		e.from(fmt.Sprintf("127.0.3.%d", i+1), "GET", "/v1/jobs", victimID+".wrong-secret", "")
	}
	testenv.WaitFor(t, "the alert delivered and stored", 60*time.Second, func() (bool, string) {
		recv.mu.Lock()
		delivered := slices.ContainsFunc(recv.body, func(b string) bool {
			return strings.Contains(b, schemas.EventSecurityAlert) && strings.Contains(b, "failed_auth_key")
		})
		recv.mu.Unlock()
		stored := count("SELECT count() FROM certnode.audit_events WHERE org = ? AND action = 'security.alert' AND source = 'detector'", victimOrg)
		return delivered && stored == 1, fmt.Sprintf("delivered %v, stored %d", delivered, stored)
	})
	// Nothing a role did (joining its groups, fetching, producing) was
	// refused: a grant too narrow for a path this run did not check
	// shows here.
	for _, p := range procs {
		if out := p.output(); strings.Contains(out, "AUTHORIZATION_FAILED") {
			t.Errorf("%s was refused by the broker:\n%s", p.name, out)
		}
	}
}

// holds waits until topic holds a record whose value contains want.
func holds(t *testing.T, sk testenv.SecureKafka, admin []kgo.Opt, topic, want string) {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(sk.Addr), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())}, admin...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	testenv.WaitFor(t, want+" on "+topic, 30*time.Second, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		for _, r := range cl.PollFetches(ctx).Records() {
			if strings.Contains(string(r.Value), want) {
				return true, ""
			}
		}
		return false, "not yet"
	})
}

// refusals checks the broker refuses a role's user what its grant does
// not allow, through the roles' own client (kafka.NewClient).
func refusals(t *testing.T, sk testenv.SecureKafka, prefix string, user func(kafka.Role) (string, string)) {
	t.Helper()
	topics := schemas.TopicsFor(prefix)
	client := func(r kafka.Role, wrongPassword bool, opts ...kgo.Opt) *kgo.Client {
		t.Helper()
		name, password := user(r)
		if wrongPassword {
			password += "-wrong"
		}
		t.Setenv(kafka.SASLPasswordEnv, password)
		cfg := kafka.Config{Brokers: []string{sk.Addr}, Partitions: 4, ReplicationFactor: 1, TopicPrefix: prefix,
			TLS: true, CAFile: sk.CAFile, SASLMechanism: "SCRAM-SHA-512", SASLUser: name}
		cl, err := kafka.NewClient(cfg, append([]kgo.Opt{kgo.RequestRetries(1), kgo.RetryTimeout(5 * time.Second)}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.Close)
		return cl
	}
	produce := func(cl *kgo.Client, topic string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Key: []byte("t"), Value: []byte(`{}`)}).FirstErr()
	}
	// consume polls until the first record or error.
	consume := func(cl *kgo.Client) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for ctx.Err() == nil {
			f := cl.PollFetches(ctx)
			if err := f.Err0(); err != nil {
				return err
			}
			if len(f.Records()) > 0 {
				return nil
			}
		}
		return ctx.Err()
	}
	// A user allowed to write no topic is refused a producer id first.
	refused := func(err error) error {
		if errors.Is(err, kerr.ClusterAuthorizationFailed) {
			return kerr.TopicAuthorizationFailed
		}
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	wrong, err := kadm.NewClient(client(kafka.RoleIngest, true)).ListTopics(ctx)
	checks := []struct {
		what string
		err  error
		want error
	}{
		{"ingest consuming the audit events", consume(client(kafka.RoleIngest, false, kgo.ConsumeTopics(topics.Audit))), kerr.TopicAuthorizationFailed},
		{"the worker producing a webhook event", produce(client(kafka.RoleWorker, false), topics.Events), kerr.TopicAuthorizationFailed},
		{"the transparency log producing a result", refused(produce(client(kafka.RoleLog, false), topics.Receipts)), kerr.TopicAuthorizationFailed},
		{"the coordinator consuming results", consume(client(kafka.RoleCoordinator, false, kgo.ConsumeTopics(topics.Receipts))), kerr.TopicAuthorizationFailed},
		{"the worker in the usage sink's group", consume(client(kafka.RoleWorker, false,
			kgo.ConsumerGroup(kafka.Group(prefix, kafka.RoleSinkUsage)), kgo.ConsumeTopics(topics.Requests))), kerr.GroupAuthorizationFailed},
		{fmt.Sprintf("ingest with a wrong password (listed %v)", wrong.Names()), err, kerr.SaslAuthenticationFailed},
	}
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := kadm.NewClient(client(kafka.RoleIngest, false)).CreateTopic(ctx, 1, 1, nil, prefix+".extra")
	if err == nil {
		err = res.Err
	}
	checks = append(checks, struct {
		what string
		err  error
		want error
	}{"ingest creating a topic", err, kerr.TopicAuthorizationFailed})
	for _, c := range checks {
		if !errors.Is(c.err, c.want) {
			t.Errorf("%s: %v, want %v", c.what, c.err, c.want)
		}
	}
}

// secureAdminOpts connect to the secure broker as its administrator.
func secureAdminOpts(t *testing.T, sk testenv.SecureKafka) []kgo.Opt {
	t.Helper()
	pem, err := os.ReadFile(sk.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("%s holds no certificate", sk.CAFile)
	}
	return []kgo.Opt{kgo.DialTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}),
		kgo.SASL(scram.Auth{User: sk.AdminUser, Pass: sk.AdminPassword}.AsSha512Mechanism())}
}
