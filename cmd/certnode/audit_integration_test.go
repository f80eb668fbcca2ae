//go:build integration

package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// TestAuditLog: on real Kafka, ClickHouse and SoftHSM2, the coordinator's
// changes and the refusals of ingest and the coordinator reach the audit
// log (a tessera log whose checkpoints an HSM key signs) and ClickHouse;
// an organization's export verifies offline with certnode audit verify,
// holds none of another organization's events, and stops verifying when
// a row is deleted or edited in ClickHouse.
func TestAuditLog(t *testing.T) {
	module, token := testenv.PKCS11(t) // before newE2E clears them
	e := newE2E(t, "")
	var b [5]byte
	rand.Read(b[:])
	label, origin := fmt.Sprintf("audit-%x", b), "test.certnode/audit"
	hsm := []string{"--pkcs11-module", module, "--token", token, "--label", label}
	if r := certnode(t, "", append([]string{"keys", "generate", "--alg", "EdDSA"}, hsm...)...); r.code != 0 {
		t.Fatalf("keys generate: %+v", r)
	}
	r := certnode(t, "", append([]string{"log", "key", "--origin", origin}, hsm...)...)
	if r.code != 0 {
		t.Fatalf("log key: %+v", r)
	}
	vkey := strings.TrimSpace(r.stdout)
	dir := t.TempDir()
	vkeyFile := filepath.Join(dir, "audit.vkey")
	os.WriteFile(vkeyFile, []byte(vkey+"\n"), 0o600)

	start := time.Now().UTC()
	caddr, call := e.coordinated()
	logAddr := freeAddr(t)
	e.start("auditlog", append([]string{"log", "serve", "--kind", "audit", "--dir", filepath.Join(e.dir, "auditlog"), "--http", logAddr, "--origin", origin}, hsm...)...)
	e.sink()
	e.ingest("--coordinator", caddr, "--audit-log", "http://"+logAddr, "--audit-log-key", vkeyFile)

	orgA, adminA := e.newOrgKey(call, "a", `["admin","read"]`)
	_, readA := e.newOrgKey(call, "a", `["read"]`)
	orgB, adminB := e.newOrgKey(call, "b", `["admin"]`)

	// Refusals from an address of their own: a key that lacks the scope
	// (A's), an unknown key and a wrong sign-in (the deployment's).
	send := func(method, path, key, body string) int { return e.from("127.0.0.5", method, path, key, body) }
	if code := send("POST", "/v1/sign", readA, `{"payload":{"a":1}}`); code != 403 {
		t.Fatalf("a read key signing: %d", code)
	}
	if code := send("GET", "/v1/usage", "cnk_ZZZZZZZZZZZZ.not-a-key", ""); code != 401 {
		t.Fatalf("an unknown key: %d", code)
	}
	if code := send("POST", "/v1/auth/login", "", `{"email":"nobody@e2e.test","password":"guess-1234"}`); code != 401 {
		t.Fatalf("a wrong sign-in: %d", code)
	}

	// A's export verifies once its events are in ClickHouse and in a
	// checkpoint: org.create, two api_key.create and the refusal.
	exportOf := func(key string) (string, []schemas.AuditEvent) {
		t.Helper()
		q := fmt.Sprintf("/v1/audit/export?from=%s&to=%s", start.Truncate(time.Second).Format(time.RFC3339),
			time.Now().UTC().Add(time.Minute).Truncate(time.Second).Format(time.RFC3339))
		code, body := request("GET", "http://"+e.http+q, key, "", "")
		if code != 200 {
			t.Fatalf("export: %d %s", code, body)
		}
		var x schemas.AuditExport
		if err := json.Unmarshal([]byte(body), &x); err != nil {
			t.Fatalf("export: %v: %.300s", err, body)
		}
		var evs []schemas.AuditEvent
		for _, raw := range x.Events {
			var ev schemas.AuditEvent
			if err := json.Unmarshal(raw, &ev); err != nil {
				t.Fatal(err)
			}
			evs = append(evs, ev)
		}
		f := filepath.Join(dir, fmt.Sprintf("export-%d.json", time.Now().UnixNano()))
		os.WriteFile(f, []byte(body), 0o600)
		return f, evs
	}
	verify := func(f string) result {
		return certnode(t, "", "audit", "verify", "--export", f, "--audit-log-key", vkeyFile)
	}
	actionsOf := func(evs []schemas.AuditEvent) []string {
		var out []string
		for _, ev := range evs {
			out = append(out, ev.Action+"/"+ev.Result+"/"+ev.Reason)
		}
		slices.Sort(out)
		return out
	}
	// A's read key was refused from 127.0.0.5, its first use from there;
	// its admin key's first use is the export's.
	want := []string{"access.refused/denied/forbidden_scope", "api_key.address/ok/", "api_key.address/ok/", "api_key.create/ok/", "api_key.create/ok/", "org.create/ok/"}
	var fileA string
	var evsA []schemas.AuditEvent
	testenv.WaitFor(t, "A's export verifies with its six events", 60*time.Second, func() (bool, string) {
		fileA, evsA = exportOf(adminA)
		v := verify(fileA)
		return v.code == 0 && slices.Equal(actionsOf(evsA), want), fmt.Sprint(actionsOf(evsA), v)
	})
	t.Logf("first event to a verified export: %v", time.Since(start))
	v := verify(fileA)
	if !strings.Contains(v.stdout, "verified: 6 events of "+orgA) || !strings.Contains(v.stdout, "organization tags: ") {
		t.Fatalf("verify: %+v", v)
	}
	// Pinned, A's tags check the later exports; B's export does not carry
	// them.
	tagsA := strings.Fields(strings.TrimPrefix(strings.TrimSpace(v.stdout[strings.Index(v.stdout, "organization tags: "):]), "organization tags: "))
	if len(tagsA) != 1 {
		t.Fatalf("A's tags %v", tagsA)
	}
	if r := certnode(t, "", "audit", "verify", "--export", fileA, "--audit-log-key", vkeyFile, "--org-tag", tagsA[0]); r.code != 0 {
		t.Fatalf("with A's tag pinned: %+v", r)
	}
	for _, ev := range evsA {
		if ev.Org != orgA || (ev.Action == "access.refused" && (ev.Actor.Addr != "127.0.0.5" || ev.Source != "ingest")) {
			t.Errorf("A's event %+v", ev)
		}
		if ev.Action == "org.create" && (ev.Actor.Kind != "operator" || ev.Source != "coordinator") {
			t.Errorf("org.create %+v", ev)
		}
	}
	// B's export holds B's events only, under another tag.
	fileB, evsB := exportOf(adminB)
	if r := certnode(t, "", "audit", "verify", "--export", fileB, "--audit-log-key", vkeyFile, "--org-tag", tagsA[0]); r.code != 1 || !strings.Contains(r.stderr, "does not name the tag") {
		t.Fatalf("B's export with A's tag pinned: %+v", r)
	}
	for _, ev := range evsB {
		if ev.Org != orgB {
			t.Errorf("B's export holds %+v", ev)
		}
	}
	if b := actionsOf(evsB); !slices.Contains(b, "org.create/ok/") || !slices.Contains(b, "api_key.create/ok/") {
		t.Errorf("B's events %v, want org.create and api_key.create", b)
	}
	// The deployment's refusals are in ClickHouse, under no organization.
	conn := e.clickhouse()
	ctx := context.Background()
	testenv.WaitFor(t, "the unknown key and the wrong sign-in stored", 30*time.Second, func() (bool, string) {
		var n uint64
		err := conn.QueryRow(ctx, "SELECT count() FROM certnode.audit_events WHERE org = '' AND addr = '127.0.0.5' AND at >= toDateTime(?) AND action IN ('access.refused', 'user.login_failed')", start.Unix()).Scan(&n)
		return err == nil && n >= 2, fmt.Sprint(n, err)
	})

	// A row deleted, then one edited, in ClickHouse: the export no longer
	// verifies, and says what is wrong.
	var created, refused schemas.AuditEvent
	for _, ev := range evsA {
		switch ev.Action {
		case "org.create":
			created = ev
		case "access.refused":
			refused = ev
		}
	}
	mutate := func(sql string, args ...any) {
		t.Helper()
		if err := conn.Exec(ctx, sql, args...); err != nil {
			t.Fatal(err)
		}
	}
	mutate("ALTER TABLE certnode.audit_events DELETE WHERE org = ? AND id = ?", orgA, refused.ID)
	testenv.WaitFor(t, "the deletion applied", 60*time.Second, func() (bool, string) {
		_, evs := exportOf(adminA)
		return len(evs) == 5, fmt.Sprint(actionsOf(evs))
	})
	f, _ := exportOf(adminA)
	if v := verify(f); v.code != 1 || !strings.Contains(v.stderr, "missing from the export") {
		t.Fatalf("a deleted row: %+v", v)
	}
	mutate("ALTER TABLE certnode.audit_events UPDATE event = replaceOne(event, '\"operator\"', '\"user\"') WHERE org = ? AND id = ?", orgA, created.ID)
	testenv.WaitFor(t, "the edit applied", 60*time.Second, func() (bool, string) {
		_, evs := exportOf(adminA)
		for _, ev := range evs {
			if ev.ID == created.ID {
				return ev.Actor.Kind == "user", fmt.Sprint(ev)
			}
		}
		return false, "no org.create"
	})
	f, _ = exportOf(adminA)
	if v := verify(f); v.code != 1 || !strings.Contains(v.stderr, "event "+created.ID+" (org.create") || !strings.Contains(v.stderr, "is not in the log") {
		t.Fatalf("an edited row: %+v", v)
	}
}

// The tokens of the coordinator coordinated starts.
const e2eAdminToken, e2eNodeToken = "admin-token-e2e-0123456789", "node-token-e2e-0123456789"

// coordinated starts a coordinator for e, relaying its audit events to
// e's Kafka ($CERTNODE_KAFKA), with extra flags, and returns its address
// and its admin API.
func (e *e2e) coordinated(extra ...string) (string, func(method, path, body string) (int, string)) {
	e.t.Helper()
	const admin, node = e2eAdminToken, e2eNodeToken
	e.env = append(e.env, "CERTNODE_ADMIN_TOKEN="+admin, "CERTNODE_NODE_TOKEN="+node, "CERTNODE_TENANTS_FILE=")
	caddr := freeAddr(e.t)
	e.coordinator = caddr
	e.start("coordinator", append([]string{"coordinator", "--id", "c1", "--raft", freeAddr(e.t), "--http", caddr, "--data", e.t.TempDir(), "--bootstrap"}, extra...)...)
	call := func(method, path, body string) (int, string) {
		return request(method, "http://"+caddr+path, admin, "application/json", body)
	}
	testenv.WaitFor(e.t, "the coordinator leads", 30*time.Second, func() (bool, string) {
		code, body := call("GET", "/v1/admin/cluster", "")
		return code == 200 && strings.Contains(body, `"state":"Leader"`), body
	})
	return caddr, call
}

// newOrgKey makes a key with scopes (a JSON array) in the organization
// name-SUFFIX, which it creates first if need be.
func (e *e2e) newOrgKey(call func(method, path, body string) (int, string), name, scopes string) (org, key string) {
	e.t.Helper()
	org = name + "-" + strings.TrimPrefix(e.tenant, "tenant-")
	if code, body := call("POST", "/v1/admin/orgs", `{"id":"`+org+`","name":"`+name+`"}`); code != 201 && code != 409 {
		e.t.Fatalf("org %s: %d %s", org, code, body)
	}
	code, body := call("POST", "/v1/admin/orgs/"+org+"/keys", `{"scopes":`+scopes+`}`)
	var k struct {
		Key string `json:"key"`
	}
	if code != 201 || json.Unmarshal([]byte(body), &k, json.RejectUnknownMembers(false)) != nil {
		e.t.Fatalf("key of %s: %d %s", org, code, body)
	}
	e.synced()
	return org, k.Key
}

// synced waits until a running ingest's copy of the coordinator's state
// holds every change made so far: a key just made is known there.
func (e *e2e) synced() {
	e.t.Helper()
	if e.coordinator == "" || !e.ingestUp {
		return
	}
	code, body := request("GET", "http://"+e.coordinator+"/v1/node/state", e2eNodeToken, "", "")
	var st struct {
		Index uint64 `json:"index"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &st, json.RejectUnknownMembers(false)) != nil {
		e.t.Fatalf("the coordinator's state: %d", code)
	}
	testenv.WaitFor(e.t, "ingest's copy of the coordinator's state", 30*time.Second, func() (bool, string) {
		_, metrics := request("GET", "http://"+e.http+"/metrics", "", "", "")
		for line := range strings.Lines(metrics) {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "certnode_coordinator_state_index "); ok {
				index, err := strconv.ParseFloat(v, 64)
				return err == nil && uint64(index) >= st.Index, v
			}
		}
		return false, "no certnode_coordinator_state_index"
	})
}

// from sends a request to e's ingest from the loopback address ip
// (127.0.0.0/8: nothing leaves this machine) and returns its status.
func (e *e2e) from(ip, method, path, key, body string) int {
	code, _ := e.fromBody(ip, method, path, key, body)
	return code
}

// fromBody is from, with the answer's body.
func (e *e2e) fromBody(ip, method, path, key, body string) (int, string) {
	e.t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}).DialContext}}
	req, _ := http.NewRequest(method, "http://"+e.http+path, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
