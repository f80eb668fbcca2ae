package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/recordauth"
	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/internal/whsig"
	"github.com/certnode/certnode/schemas"
)

// directProducer writes sign requests straight into a requests topic, as
// a customer's producer does, and reads their results back.
type directProducer struct {
	t      *testing.T
	cl     *kgo.Client // consumes the results topic from its start
	topics schemas.Topics
}

var directSeq atomic.Int64

func newDirectProducer(t *testing.T, brokers, prefix string) *directProducer {
	t.Helper()
	topics := schemas.TopicsFor(prefix)
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...), kgo.ConsumeTopics(topics.Receipts),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.RecordDeliveryTimeout(20*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return &directProducer{t: t, cl: cl, topics: topics}
}

// sign writes one request of tenant signed with a producer key and
// returns its result: signed when the worker admitted the key, failed
// (auth none) when it refused it.
func (p *directProducer) sign(tenant, keyID, secret string) *schemas.Result {
	p.t.Helper()
	id := fmt.Sprintf("direct-%d-%d", time.Now().UnixNano(), directSeq.Add(1))
	value := fmt.Sprintf(`{"v":1,"id":%q,"tenant":%q,"kind":"sign","payload":{"id":%q}}`, id, tenant, id)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rec := &kgo.Record{Topic: p.topics.Requests, Key: []byte(tenant), Value: []byte(value), Headers: []kgo.RecordHeader{
		{Key: schemas.HeaderProducerKeyID, Value: []byte(keyID)},
		{Key: schemas.HeaderSignature, Value: []byte(recordauth.Sign([]byte(secret), []byte(value)))}}}
	if err := p.cl.ProduceSync(ctx, rec).FirstErr(); err != nil {
		p.t.Fatal(err)
	}
	for ctx.Err() == nil {
		var found *schemas.Result
		p.cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			if res, err := schemas.DecodeResult(r.Value); err == nil && res.ID == id {
				found = res
			}
		})
		if found != nil {
			return found
		}
	}
	p.t.Fatalf("no result for %s", id)
	return nil
}

// admitted reports whether the worker signed res as the producer key's.
func admitted(res *schemas.Result, keyID string) bool {
	return res.Status == schemas.StatusSigned && res.Auth == schemas.AuthProducer && res.KeyID == keyID
}

// signs checks that dev signs with key through the API.
func (e *devEnv) signs(key string) bool {
	code, _ := e.do("POST", "/v1/sign", key, "application/json", `{"payload":{"at":"`+time.Now().String()+`"}}`)
	return code == 200
}

// TestDevCoordinatorFirstStart: dev's first start makes the demo
// organization in its coordinator, with an API key and a producer key in
// credentials.json that work, and certnode admin reaches it with the admin
// token there; after a restart the same keys still work.
func TestDevCoordinatorFirstStart(t *testing.T) {
	dir := t.TempDir()
	e := startDevIn(t, dir, freeAddr(t))
	c := e.creds()
	if !strings.HasPrefix(c.APIKey, "cnk_") || !strings.HasPrefix(c.ProducerKeyID, "pk_") || len(c.NodeToken) < 16 ||
		len(c.AdminToken) < 16 || c.NodeToken == c.AdminToken || c.Coordinator == "" || c.Tenant != "demo" {
		t.Fatalf("credentials: %+v", c)
	}
	if st, err := os.Stat(filepath.Join(dir, "coordinator")); err != nil || !st.IsDir() {
		t.Fatalf("no coordinator data in DIR/coordinator: %v", err)
	}
	if !e.signs(c.APIKey) {
		t.Fatal("the demo key does not sign")
	}
	p := newDirectProducer(t, c.Kafka, schemas.DefaultTopicPrefix)
	if res := p.sign("demo", c.ProducerKeyID, c.ProducerSecret); !admitted(res, c.ProducerKeyID) {
		t.Fatalf("a record signed with the demo producer key: %+v", res)
	}
	if _, m := e.do("GET", "/metrics", "", "", ""); !strings.Contains(m, "certnode_coordinator_state_index") {
		t.Fatal("no coordinator replica metrics")
	}

	t.Setenv("CERTNODE_ADMIN_TOKEN", c.AdminToken)
	r := certnode(t, "", "admin", "--coordinator", c.Coordinator, "keys", "list", "demo")
	id, _, _ := strings.Cut(c.APIKey, ".")
	if r.code != 0 || !strings.Contains(r.stdout, id) || strings.Contains(r.stdout, c.APIKey) ||
		!strings.Contains(r.stdout, `"scopes":["sign","verify","jobs","read","admin"]`) {
		t.Fatalf("certnode admin keys list demo: %+v", r)
	}

	if code, took := e.stop(); code != 0 {
		t.Fatalf("stop: exit %d after %s: %s", code, took, e.stderr())
	}
	again := startDevIn(t, dir, freeAddr(t))
	after := again.creds()
	if after.APIKey != c.APIKey || after.ProducerKeyID != c.ProducerKeyID || after.ProducerSecret != c.ProducerSecret ||
		after.AdminToken != c.AdminToken || after.NodeToken != c.NodeToken {
		t.Fatalf("credentials changed over a restart:\n%+v\n%+v", c, after)
	}
	if !again.signs(c.APIKey) {
		t.Fatal("the demo key does not sign after a restart")
	}
	p = newDirectProducer(t, after.Kafka, schemas.DefaultTopicPrefix) // the embedded Kafka listens on a new port
	if res := p.sign("demo", c.ProducerKeyID, c.ProducerSecret); !admitted(res, c.ProducerKeyID) {
		t.Fatalf("the demo producer key after a restart: %+v", res)
	}
	if strings.Contains(again.stderr(), "replaces") {
		t.Fatalf("a restart replaced a key: %s", again.stderr())
	}
}

// TestDevMigratesTenantsFile: a data folder from before the coordinator (a
// cn_ API key, a tenants file) is migrated on first start: the tenants
// become organizations with their limits, producer keys keep working with
// their secrets, and the demo organization gets a new API key in
// credentials.json (the old format cannot be imported), said on stderr.
func TestDevMigratesTenantsFile(t *testing.T) {
	dir := t.TempDir()
	oldKey, _ := tenants.GenerateKey()
	acmeKey, _ := tenants.GenerateKey()
	demoSecret, _ := tenants.GenerateKey()
	acmeSecret, _ := tenants.GenerateKey()
	oldAdmin, _ := tenants.GenerateKey()
	if err := writeJSONFile(filepath.Join(dir, "credentials.json"), credentials{Tenant: "demo", APIKey: oldKey,
		ProducerKeyID: "pk_demo", ProducerSecret: demoSecret, AdminToken: oldAdmin}); err != nil {
		t.Fatal(err)
	}
	if err := writeJSONFile(filepath.Join(dir, "tenants.json"), tenants.File{Tenants: []tenants.Tenant{
		{ID: "demo", APIKeyHashes: []string{tenants.HashKey(oldKey)}, ProducerKeys: []tenants.ProducerKey{{ID: "pk_demo", Secret: demoSecret}}},
		{ID: "acme", APIKeyHashes: []string{tenants.HashKey(acmeKey)}, Limits: tenants.Limits{RateLimit: 5, Burst: 7},
			ProducerKeys: []tenants.ProducerKey{{ID: "pk_acme", Secret: acmeSecret}}},
	}}); err != nil {
		t.Fatal(err)
	}
	e := startDevIn(t, dir, freeAddr(t))
	c := e.creds()
	if c.APIKey == oldKey || !strings.HasPrefix(c.APIKey, "cnk_") || c.AdminToken != oldAdmin || c.ProducerKeyID != "pk_demo" || c.ProducerSecret != demoSecret {
		t.Fatalf("credentials after the migration: %+v", c)
	}
	for _, want := range []string{"migrated " + filepath.Join(dir, "tenants.json"), "organizations demo, acme", "is not one the coordinator accepts",
		`tenant "acme"'s API keys cannot move`} {
		if !strings.Contains(e.stderr(), want) {
			t.Errorf("stderr lacks %q: %s", want, e.stderr())
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "tenants.json")); !os.IsNotExist(err) {
		t.Errorf("tenants.json is still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "tenants.json.migrated")); err != nil {
		t.Error(err)
	}
	if !e.signs(c.APIKey) {
		t.Fatal("the new demo key does not sign")
	}
	if code, _ := e.do("GET", "/v1/jobs/job_none", oldKey, "", ""); code != 401 {
		t.Fatalf("the old-format key: %d, want 401", code)
	}
	code, org := e.admin("GET", "/v1/admin/orgs/acme", "")
	var o struct {
		Limits tenants.Limits `json:"limits"`
	}
	if code != 200 || json.Unmarshal([]byte(org), &o, json.RejectUnknownMembers(false)) != nil || o.Limits.RateLimit != 5 || o.Limits.Burst != 7 {
		t.Fatalf("acme after the migration: %d %s", code, org)
	}
	p := newDirectProducer(t, c.Kafka, schemas.DefaultTopicPrefix)
	if res := p.sign("demo", "pk_demo", demoSecret); !admitted(res, "pk_demo") {
		t.Fatalf("the demo producer key from before: %+v", res)
	}
	if res := p.sign("acme", "pk_acme", acmeSecret); !admitted(res, "pk_acme") {
		t.Fatalf("acme's producer key from before: %+v", res)
	}

	if code, took := e.stop(); code != 0 {
		t.Fatalf("stop: exit %d after %s: %s", code, took, e.stderr())
	}
	again := startDevIn(t, dir, freeAddr(t))
	if after := again.creds(); after.APIKey != c.APIKey || !again.signs(c.APIKey) {
		t.Fatalf("after a restart: key %s (was %s)", after.APIKey, c.APIKey)
	}
	if strings.Contains(again.stderr(), "migrated") || strings.Contains(again.stderr(), "replaces") {
		t.Fatalf("the restart migrated again: %s", again.stderr())
	}
}

// TestDevProducerKeyLifecycle: a producer key made through the admin API
// while dev runs is admitted by its worker within 2 s, and refused within
// 2 s of its revocation.
func TestDevProducerKeyLifecycle(t *testing.T) {
	e := startDev(t)
	p := newDirectProducer(t, e.creds().Kafka, schemas.DefaultTopicPrefix)
	code, body := e.admin("POST", "/v1/admin/orgs/other/producer-keys", "")
	created := time.Now()
	var k struct {
		ID     string `json:"id"`
		Secret string `json:"secret"`
	}
	if code != 201 || json.Unmarshal([]byte(body), &k, json.RejectUnknownMembers(false)) != nil || k.Secret == "" {
		t.Fatalf("create: %d %s", code, body)
	}
	// Records sent before the worker's copy has the key are refused; one
	// sent within 2 s of the creation must be admitted.
	testenv.WaitFor(t, "the new producer key admitted", 2*time.Second, func() (bool, string) {
		res := p.sign("other", k.ID, k.Secret)
		return admitted(res, k.ID), fmt.Sprintf("%+v", res)
	})
	t.Logf("admitted %s after the creation", time.Since(created).Round(time.Millisecond))
	if res := p.sign("demo", k.ID, k.Secret); res.Status != schemas.StatusFailed || res.Auth != schemas.AuthNone {
		t.Fatalf("other's producer key used for demo: %+v", res)
	}
	if code, body := e.admin("DELETE", "/v1/admin/orgs/other/producer-keys/"+k.ID, ""); code != 204 {
		t.Fatalf("revoke: %d %s", code, body)
	}
	revoked := time.Now()
	testenv.WaitFor(t, "the revoked producer key refused", 2*time.Second, func() (bool, string) {
		res := p.sign("other", k.ID, k.Secret)
		return res.Status == schemas.StatusFailed && res.Auth == schemas.AuthNone, fmt.Sprintf("%+v", res)
	})
	t.Logf("refused %s after the revocation", time.Since(revoked).Round(time.Millisecond))
}

// A worker takes producer keys from exactly one of --tenants and
// --coordinator, and --coordinator needs the node token.
func TestWorkerProducerKeySource(t *testing.T) {
	for _, v := range []string{"CERTNODE_TENANTS_FILE", "CERTNODE_COORDINATOR", "CERTNODE_NODE_TOKEN", "CERTNODE_NODE_TOKEN_FILE"} {
		t.Setenv(v, "")
	}
	t.Setenv("CERTNODE_INTERNAL_SECRET", "internal-secret-0123456789abcdef0123456789")
	tenFile := filepath.Join(t.TempDir(), "tenants.json")
	if err := writeJSONFile(tenFile, tenants.File{Tenants: []tenants.Tenant{{ID: "acme"}}}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"both", []string{"--tenants", tenFile, "--coordinator", "127.0.0.1:1"}, "use either --tenants or --coordinator, not both"},
		{"neither", nil, "--tenants FILE is required"},
		{"neither names the coordinator", nil, "(or --coordinator ADDR)"},
		{"no node token", []string{"--coordinator", "127.0.0.1:1"}, "$CERTNODE_NODE_TOKEN (or $CERTNODE_NODE_TOKEN_FILE) is required"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := certnode(t, "", append([]string{"worker", "--kafka", "127.0.0.1:1"}, c.args...)...)
			if r.code != exitUsage || !strings.Contains(r.stderr, c.want) {
				t.Fatalf("got %+v, want exit %d with %q", r, exitUsage, c.want)
			}
		})
	}
}

// dev's ingest serves the account routes of its coordinator: a user
// signs in on the API's own host; a body over 1 MiB is refused, read no
// further than that (and drained, so the client reads the answer).
func TestDevAccountRoutes(t *testing.T) {
	e := startDev(t)
	if code, body := e.admin("POST", "/v1/admin/users", `{"email":"dev@demo.test","password":"a password for dev"}`); code != 201 {
		t.Fatalf("user: %d %s", code, body)
	}
	resp, err := http.Post(e.base+"/v1/auth/login", "application/json", strings.NewReader(`{"email":"dev@demo.test","password":"a password for dev"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || len(resp.Cookies()) != 1 || resp.Cookies()[0].Name != "certnode_session" || !resp.Cookies()[0].HttpOnly {
		t.Fatalf("sign-in through dev's ingest: %d %v", resp.StatusCode, resp.Cookies())
	}
	if code, body := e.do("POST", "/v1/auth/login", "", "application/json", strings.Repeat(" ", 2<<20)); code != 413 || !strings.Contains(body, "too_large") {
		t.Fatalf("a 2 MiB sign-in: %d %.200s", code, body)
	}
	// A chunked body is read up to the bound too.
	req, _ := http.NewRequest("POST", e.base+"/v1/auth/login", io.MultiReader(strings.NewReader(`{"email":"dev@demo.test",`),
		strings.NewReader(`"password":"a password for dev"}`)))
	req.ContentLength = -1
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("a chunked sign-in: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	req, _ = http.NewRequest("POST", e.base+"/v1/auth/login", io.MultiReader(strings.NewReader(strings.Repeat(" ", 2<<20))))
	req.ContentLength = -1
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 413 {
		t.Fatalf("a chunked 2 MiB sign-in: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
}

// In dev, a webhook endpoint on this machine gets its test delivery
// (dev allows loopback), signed so that its secret verifies it.
func TestDevWebhookTest(t *testing.T) {
	e := startDev(t)
	got := make(chan *http.Request, 1)
	bodies := make(chan []byte, 1)
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- r
		bodies <- b
		w.WriteHeader(http.StatusNoContent)
	}))
	defer recv.Close()
	code, body := e.do("POST", "/v1/orgs/demo/webhooks/endpoints", e.key, "application/json", `{"url":"`+recv.URL+`/hook"}`)
	var ep struct {
		ID     string `json:"id"`
		Secret string `json:"secret"`
	}
	if code != 201 || json.Unmarshal([]byte(body), &ep, json.RejectUnknownMembers(false)) != nil {
		t.Fatalf("endpoint: %d %s", code, body)
	}
	code, body = e.do("POST", "/v1/orgs/demo/webhooks/endpoints/"+ep.ID+"/test", e.key, "application/json", "")
	if code != 200 || !strings.Contains(body, `"delivered":true`) || !strings.Contains(body, `"status":204`) {
		t.Fatalf("test delivery: %d %s", code, body)
	}
	r, b := <-got, <-bodies
	sec, err := whsig.ParseSecret(ep.Secret)
	if err != nil {
		t.Fatal(err)
	}
	if err := whsig.Verify(r.Header, b, []whsig.Secret{sec}, 0, time.Now()); err != nil {
		t.Fatalf("the delivery does not verify: %v", err)
	}
}

// certnode dev delivers a signed receipt to a local endpoint through its
// embedded dispatcher, signed with the endpoint's secret, and with both
// secrets while a rotation overlaps.
func TestDevDeliversWebhooks(t *testing.T) {
	e := startDev(t)
	type delivery struct {
		h    http.Header
		body []byte
	}
	got := make(chan delivery, 10)
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- delivery{r.Header.Clone(), b}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer recv.Close()
	code, body := e.do("POST", "/v1/orgs/demo/webhooks/endpoints", e.key, "application/json",
		`{"url":"`+recv.URL+`/hook","event_types":["receipt.signed"]}`)
	var ep struct {
		ID     string `json:"id"`
		Secret string `json:"secret"`
	}
	if code != 201 || json.Unmarshal([]byte(body), &ep, json.RejectUnknownMembers(false)) != nil {
		t.Fatalf("endpoint: %d %s", code, body)
	}
	first, err := whsig.ParseSecret(ep.Secret)
	if err != nil {
		t.Fatal(err)
	}
	sign := func() (receiptID string) {
		t.Helper()
		code, body := e.do("POST", "/v1/sign", e.key, "application/json", `{"payload":{"n":1}}`)
		var r struct {
			ReceiptID string `json:"receipt_id"`
		}
		if code != 200 || json.Unmarshal([]byte(body), &r, json.RejectUnknownMembers(false)) != nil {
			t.Fatalf("sign: %d %s", code, body)
		}
		return r.ReceiptID
	}
	next := func(receiptID string, secrets ...whsig.Secret) {
		t.Helper()
		select {
		case d := <-got:
			for _, s := range secrets {
				if err := whsig.Verify(d.h, d.body, []whsig.Secret{s}, time.Minute, time.Now()); err != nil {
					t.Fatalf("the delivery does not verify with a live secret: %v", err)
				}
			}
			var ev struct {
				Type string `json:"type"`
				Data struct {
					ReceiptID string `json:"receipt_id"`
				} `json:"data"`
			}
			if json.Unmarshal(d.body, &ev, json.RejectUnknownMembers(false)) != nil || ev.Type != schemas.EventReceiptSigned || ev.Data.ReceiptID != receiptID {
				t.Fatalf("delivered %s, want the receipt %s", d.body, receiptID)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("no delivery: %s", e.stderr())
		}
	}
	next(sign(), first)
	code, body = e.do("POST", "/v1/orgs/demo/webhooks/endpoints/"+ep.ID+"/rotate-secret", e.key, "application/json", `{"overlap":"1h"}`)
	var rotated struct {
		Secret string `json:"secret"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &rotated, json.RejectUnknownMembers(false)) != nil {
		t.Fatalf("rotate: %d %s", code, body)
	}
	second, err := whsig.ParseSecret(rotated.Secret)
	if err != nil {
		t.Fatal(err)
	}
	// The dispatcher follows the coordinator: a delivery soon carries both.
	testenv.WaitFor(t, "a delivery signed with both secrets", 15*time.Second, func() (bool, string) {
		id := sign()
		select {
		case d := <-got:
			both := whsig.Verify(d.h, d.body, []whsig.Secret{second}, time.Minute, time.Now()) == nil &&
				whsig.Verify(d.h, d.body, []whsig.Secret{first}, time.Minute, time.Now()) == nil
			return both && strings.Contains(string(d.body), id), string(d.body)
		case <-time.After(15 * time.Second):
			return false, "no delivery"
		}
	})
}
