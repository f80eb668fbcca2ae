package ingest

import (
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/tenants"
)

// tok is a session token of the coordinator's form, named.
func tok(name string) string { return "cns_" + (name + strings.Repeat("_", 43))[:43] }

// fakeMe answers GET /v1/me as the coordinator does, for the sessions it
// knows, and counts the questions.
type fakeMe struct {
	calls    atomic.Int64
	sessions map[string]string // cookie -> the /v1/me answer
}

func (f *fakeMe) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.calls.Add(1)
	c, err := r.Cookie(SessionCookie)
	if r.URL.Path != "/v1/me" || err != nil || f.sessions[c.Value] == "" {
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"error":{"code":"unauthorized","message":"sign in"}}`)
		return
	}
	io.WriteString(w, f.sessions[c.Value])
}

type fakeOrgs map[string]bool

func (f fakeOrgs) Limits(org string) (tenants.Limits, bool) { return tenants.Limits{}, f[org] }

func me(user string, roles ...string) string {
	type m struct {
		Org  string `json:"org"`
		Role string `json:"role"`
	}
	var ms []m
	for i := 0; i+1 < len(roles); i += 2 {
		ms = append(ms, m{roles[i], roles[i+1]})
	}
	b, _ := json.Marshal(map[string]any{"user": map[string]any{"id": user, "memberships": ms}, "csrf_token": "csrf-" + user})
	return string(b)
}

// Signed-in users act in an organization they have a role in, with its
// scopes; another organization is as unknown as one that does not exist;
// writes need the session's CSRF token; the coordinator is asked once per
// session within the cache's time.
func TestSessionAuth(t *testing.T) {
	accounts := &fakeMe{sessions: map[string]string{
		tok("viewer"):    me("usr_v", "a", "viewer"),
		tok("admin"):     me("usr_x", "a", "admin"),
		tok("two"):       me("usr_2", "a", "developer", "b", "viewer"),
		tok("suspended"): me("usr_s", "gone", "owner"),
		tok("future"):    me("usr_f", "a", "auditor"),
	}}
	ts := startServer(t, func(_ *Config, d *Deps) { d.Accounts, d.Orgs = accounts, fakeOrgs{"a": true, "b": true} })
	do := func(method, path, cookie string, headers ...string) answer {
		t.Helper()
		first := []string{"Content-Type", "application/json"} // the test's headers may replace it
		if cookie != "" {
			first = append(first, "Cookie", (&http.Cookie{Name: SessionCookie, Value: cookie}).String())
		}
		return ts.send(method, path, `{}`, append(first, headers...)...)
	}
	list := "/v1/webhooks/deliveries"
	// One membership: the organization may be left out.
	a := do("GET", list, tok("viewer")).expect(t, "viewer lists a's deliveries", 200, "")
	if !strings.Contains(a.body, "ep_one") {
		t.Fatalf("viewer's list: %s", a.body)
	}
	do("GET", list, tok("viewer"), OrgHeader, "b").expect(t, "viewer on b", 404, "not_found")
	do("GET", list+"?org=b", tok("viewer")).expect(t, "viewer on b by parameter", 404, "not_found")
	do("GET", list, tok("viewer"), OrgHeader, "nope").expect(t, "viewer on an unknown org", 404, "not_found")
	do("GET", list, tok("suspended")).expect(t, "an organization that is not active", 404, "not_found")
	do("GET", list, tok("two")).expect(t, "two memberships, none named", 400, "org_required")
	b := do("GET", list, tok("two"), OrgHeader, "b").expect(t, "developer of a, viewer of b, on b", 200, "")
	if strings.Contains(b.body, "ep_one") {
		t.Fatalf("b's list holds a's deliveries: %s", b.body)
	}
	do("GET", list, tok("stolen")).expect(t, "an unknown session", 401, "unauthorized")
	do("GET", list, tok("future")).expect(t, "a role this server does not know", 403, "forbidden_role")

	trigger := "/v1/webhooks/trigger"
	do("POST", trigger, tok("viewer"), CSRFHeader, "csrf-usr_v").expect(t, "a viewer triggers", 403, "forbidden_scope")
	do("POST", trigger, tok("admin")).expect(t, "an admin's write without the CSRF token", 403, "csrf")
	do("POST", trigger, tok("admin"), CSRFHeader, "csrf-usr_v").expect(t, "another session's CSRF token", 403, "csrf")
	do("POST", trigger, tok("admin"), CSRFHeader, "csrf-usr_x", "Origin", "https://evil.example").expect(t, "from another site", 403, "csrf")
	got := do("POST", trigger, tok("admin"), CSRFHeader, "csrf-usr_x", "Origin", ts.base)
	if got.status == 401 || got.status == 403 {
		t.Fatalf("an admin's write with its CSRF token was refused: %d %s", got.status, got.body)
	}

	// A key acts in its own organization only.
	ts.do("GET", list+"?org=a", keyA, "").expect(t, "a's key naming a", 200, "")
	ts.do("GET", list+"?org=b", keyA, "").expect(t, "a's key naming b", 400, "org_mismatch")

	before := accounts.calls.Load()
	for range 5 {
		do("GET", list, tok("viewer")).expect(t, "viewer again", 200, "")
	}
	do("GET", list, "not-a-session-token").expect(t, "a cookie not of the form of a session", 401, "unauthorized")
	if n := accounts.calls.Load() - before; n != 0 {
		t.Errorf("the coordinator was asked %d times for a session it answered for just now", n)
	}
}
