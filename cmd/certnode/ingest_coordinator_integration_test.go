//go:build integration

package main

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/testenv"
)

// Two ingest processes take their API keys from a coordinator process: a
// key works on both once created, and a revoked key, or a suspended
// organization's, is refused on both within 2 s. With the coordinator
// gone they serve the last known keys for --coordinator-max-stale, then
// refuse every key and say so in /readyz.
func TestE2EIngestFollowsCoordinator(t *testing.T) {
	e := newE2E(t, "")
	const admin, node = "admin-token-e2e-0123456789", "node-token-e2e-0123456789"
	e.env = append(e.env, "CERTNODE_ADMIN_TOKEN="+admin, "CERTNODE_NODE_TOKEN="+node, "CERTNODE_TENANTS_FILE=")
	caddr := freeAddr(t)
	coord := e.start("coordinator", "coordinator", "--id", "c1", "--raft", freeAddr(t), "--http", caddr, "--data", t.TempDir(), "--bootstrap")
	call := func(addr, method, path, token, body string) (int, string) {
		return request(method, "http://"+addr+path, token, "", body)
	}
	testenv.WaitFor(t, "the coordinator leads", 30*time.Second, func() (bool, string) {
		code, body := call(caddr, "GET", "/v1/admin/cluster", admin, "")
		return code == 200 && strings.Contains(body, `"state":"Leader"`), body
	})
	if code, body := call(caddr, "POST", "/v1/admin/orgs", admin, `{"id":"`+e.tenant+`","name":"E2E"}`); code != 201 {
		t.Fatalf("org: %d %s", code, body)
	}
	newKeyWith := func(grant string) (id, key string) {
		code, body := call(caddr, "POST", "/v1/admin/orgs/"+e.tenant+"/keys", admin, grant)
		var v struct {
			ID  string `json:"id"`
			Key string `json:"key"`
		}
		if code != 201 || json.Unmarshal([]byte(body), &v, json.RejectUnknownMembers(false)) != nil || v.Key == "" {
			t.Fatalf("key: %d %s", code, body)
		}
		return v.ID, v.Key
	}
	newKey := func() (id, key string) { return newKeyWith(`{"scopes":["sign","verify","jobs","read"]}`) }

	addrs := []string{freeAddr(t), freeAddr(t)}
	for i, a := range addrs {
		p := e.start(fmt.Sprintf("ingest-%d", i), "ingest", "--http", a, "--coordinator", caddr, "--coordinator-max-stale", "3s")
		testenv.WaitFor(t, "ingest ready", 60*time.Second, func() (bool, string) {
			code, body := call(a, "GET", "/readyz", "", "")
			return code == 200, fmt.Sprint(code, body, p.output())
		})
	}
	// An authenticated unknown job is a 404; an unauthenticated call a 401.
	admitted := func(key string) []bool {
		var out []bool
		for _, a := range addrs {
			code, _ := call(a, "GET", "/v1/jobs/job_none", key, "")
			out = append(out, code == 404)
		}
		return out
	}
	within := func(what string, want bool, key string, limit time.Duration) {
		t.Helper()
		start := time.Now()
		testenv.WaitFor(t, what, limit, func() (bool, string) {
			got := admitted(key)
			return got[0] == want && got[1] == want, fmt.Sprint(got)
		})
		t.Logf("%s on both ingest nodes after %s", what, time.Since(start).Round(time.Millisecond))
	}
	id, key := newKey()
	within("a new key admitted", true, key, 2*time.Second)
	if got := admitted("cnk_unknown.secret"); got[0] || got[1] {
		t.Fatal("an unknown key was admitted")
	}
	call(caddr, "DELETE", "/v1/admin/orgs/"+e.tenant+"/keys/"+id, admin, "")
	within("a revoked key refused", false, key, 2*time.Second)

	_, key2 := newKey()
	within("a second key admitted", true, key2, 2*time.Second)
	call(caddr, "PATCH", "/v1/admin/orgs/"+e.tenant, admin, `{"status":"suspended"}`)
	within("a suspended organization's key refused", false, key2, 2*time.Second)
	call(caddr, "PATCH", "/v1/admin/orgs/"+e.tenant, admin, `{"status":"active"}`)
	within("the key admitted after reactivation", true, key2, 2*time.Second)

	// A key is held to its scopes and its CIDR allow-list (403, counted);
	// a client bound to 127.0.0.2 stands for an allowed address.
	_, readOnly := newKeyWith(`{"scopes":["read"]}`)
	within("a read-only key admitted for reads", true, readOnly, 2*time.Second)
	for _, c := range []struct{ path, body string }{{"/v1/sign", `{"payload":{}}`}, {"/v1/jobs?type=sign", "{}\n"}} {
		if code, body := call(addrs[0], "POST", c.path, readOnly, c.body); code != 403 || !strings.Contains(body, `"forbidden_scope"`) {
			t.Fatalf("POST %s with a read-only key: %d %s", c.path, code, body)
		}
	}
	_, signOnly := newKeyWith(`{"scopes":["jobs","sign"]}`)
	testenv.WaitFor(t, "a verify job refused to a key without verify", 2*time.Second, func() (bool, string) {
		code, body := call(addrs[0], "POST", "/v1/jobs?type=verify", signOnly, "{}\n")
		return code == 403 && strings.Contains(body, "lacks the verify scope"), fmt.Sprint(code, body)
	})
	_, pinned := newKeyWith(`{"scopes":["read"],"cidrs":["127.0.0.2/32"]}`)
	from2 := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).DialContext}}
	testenv.WaitFor(t, "a CIDR-pinned key admitted from 127.0.0.2", 2*time.Second, func() (bool, string) {
		req, _ := http.NewRequest("GET", "http://"+addrs[1]+"/v1/jobs/job_none", nil)
		req.Header.Set("Authorization", "Bearer "+pinned)
		resp, err := from2.Do(req)
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 404, fmt.Sprint(resp.StatusCode)
	})
	if code, body := call(addrs[1], "GET", "/v1/jobs/job_none", pinned, ""); code != 403 || !strings.Contains(body, "may not be used from 127.0.0.1") {
		t.Fatalf("a CIDR-pinned key from 127.0.0.1: %d %s", code, body)
	}
	if _, metrics := call(addrs[1], "GET", "/metrics", "", ""); !strings.Contains(metrics, `route="forbidden_address"`) {
		t.Fatal("refusals by address are not counted")
	}

	// The account routes reach the coordinator through either ingest
	// node: a user signs in there and works with one host.
	if code, body := call(caddr, "POST", "/v1/admin/users", admin, `{"email":"ada@e2e.test","password":"a-password-for-ada"}`); code != 201 {
		t.Fatalf("user: %d %s", code, body)
	}
	for _, a := range addrs {
		resp, err := http.Post("http://"+a+"/v1/auth/login", "application/json", strings.NewReader(`{"email":"ada@e2e.test","password":"a-password-for-ada"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || len(resp.Cookies()) == 0 || resp.Cookies()[0].Name != "certnode_session" {
			t.Fatalf("sign-in through ingest %s: %d %v", a, resp.StatusCode, resp.Cookies())
		}
	}

	coord.kill()
	if got := admitted(key2); !got[0] || !got[1] {
		t.Fatalf("known key refused as soon as the coordinator went away: %v", got)
	}
	within("every key refused once the copy is older than 3s", false, key2, 10*time.Second)
	for _, a := range addrs {
		if code, body := call(a, "GET", "/readyz", "", ""); code != 503 || !strings.Contains(body, "coordinator") {
			t.Fatalf("readyz with a stale copy: %d %s", code, body)
		}
	}
}
