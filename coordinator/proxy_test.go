package coordinator

import (
	"context"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-json-experiment/json"
)

// Through the proxy another tier runs, a browser signs in and works with
// one host: the cookie and CSRF check work, an unreachable coordinator is
// skipped, and the audit trail records the browser's address (which the
// proxy vouches for), never an address a client claims itself.
func TestAccountsProxy(t *testing.T) {
	n := soloNode(t)
	op := operator(t, n)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"Acme"}`)
	uid := createUser(op, "ada@acme.test")
	op.must(200, "PUT", "/v1/orgs/acme/members/"+uid, `{"role":"admin"}`)

	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()
	front := httptest.NewServer(NewAccountsProxy([]string{deadAddr, n.Addr()}, testNode, nil))
	defer front.Close()

	// The browser connects from 127.0.0.2, and claims to be 10.9.9.9.
	jar, _ := cookiejar.New(nil)
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	browser := &client{t: t, base: front.URL, hdr: map[string]string{clientAddrHeader: "10.9.9.9", forwardAuthHeader: "Bearer guess"},
		hc: &http.Client{Jar: jar, Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		}}}}
	browser.login("ada@acme.test", "password-of-ada@acme.test")
	browser.must(200, "GET", "/v1/me", "")
	browser.must(201, "POST", "/v1/orgs/acme/keys", `{"name":"via-proxy","scopes":["sign"]}`)

	var page struct {
		Events []AuditEvent `json:"events"`
	}
	json.Unmarshal([]byte(op.must(200, "GET", "/v1/admin/audit?org=acme&limit=1000", "")), &page)
	var found bool
	for _, e := range page.Events {
		if e.Action == "api_key.create" {
			found = true
			if e.Actor.Addr != "127.0.0.2" {
				t.Fatalf("audit address %q, want the browser's 127.0.0.2", e.Actor.Addr)
			}
		}
	}
	if !found {
		t.Fatalf("no key creation in %+v", page.Events)
	}

	// A direct caller's claimed address is not believed.
	op.hdr[clientAddrHeader] = "10.9.9.9"
	op.must(201, "POST", "/v1/orgs/acme/producer-keys", "")
	delete(op.hdr, clientAddrHeader)
	if audit := op.must(200, "GET", "/v1/admin/audit?org=acme&limit=1000", ""); strings.Contains(audit, "10.9.9.9") {
		t.Fatalf("a claimed address reached the audit trail: %s", audit)
	}

	// No coordinator at all: 503 with Retry-After.
	none := httptest.NewServer(NewAccountsProxy([]string{deadAddr}, testNode, nil))
	defer none.Close()
	resp, err := http.Get(none.URL + "/v1/me")
	if err != nil || resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("no coordinator: %v %v", resp, err)
	}
	resp.Body.Close()
}
