package coordinator

import (
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/testenv"
)

func TestPasswordHashing(t *testing.T) {
	h1, err := HashPassword(context.Background(), "correct horse battery")
	if err != nil {
		t.Fatal(err)
	}
	h2, _ := HashPassword(context.Background(), "correct horse battery")
	if !strings.HasPrefix(h1, "$argon2id$v=19$m=19456,t=2,p=1$") || h1 == h2 {
		t.Fatalf("hashes %q %q: want argon2id PHC strings with fresh salts", h1, h2)
	}
	if ok, err := VerifyPassword(context.Background(), h1, "correct horse battery"); !ok || err != nil {
		t.Fatalf("the right password: %v %v", ok, err)
	}
	if ok, _ := VerifyPassword(context.Background(), h1, "correct horse batterz"); ok {
		t.Fatal("a wrong password verified")
	}
	for _, bad := range []string{"", "$argon2i$v=19$m=1,t=1,p=1$AAAA$AAAA", strings.Replace(h1, "m=19456", "m=99999999", 1), h1[:len(h1)-50]} {
		if _, err := VerifyPassword(context.Background(), bad, "x"); err == nil {
			t.Fatalf("hash %q read", bad)
		}
	}
	if _, err := HashPassword(context.Background(), "short"); err == nil {
		t.Fatal("a short password was hashed")
	}
}

// client is a browser: it keeps cookies and sends the CSRF token it was
// given on writes.
type client struct {
	t    *testing.T
	base string
	hc   *http.Client
	csrf string
	hdr  map[string]string
}

func newClient(t *testing.T, ts *testServer) *client {
	jar, _ := cookiejar.New(nil)
	return &client{t: t, base: "http://" + ts.Addr(), hc: &http.Client{Jar: jar}, hdr: map[string]string{}}
}

func (c *client) do(method, path, body string) (*http.Response, string) {
	c.t.Helper()
	req, _ := http.NewRequest(method, c.base+path, strings.NewReader(body))
	if c.csrf != "" {
		req.Header.Set(CSRFHeader, c.csrf)
	}
	for k, v := range c.hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func (c *client) must(want int, method, path, body string) string {
	c.t.Helper()
	resp, out := c.do(method, path, body)
	if resp.StatusCode != want {
		c.t.Fatalf("%s %s: %d %s (want %d)", method, path, resp.StatusCode, out, want)
	}
	return out
}

func (c *client) login(email, password string) {
	c.t.Helper()
	var v struct {
		CSRF string `json:"csrf_token"`
	}
	if err := json.Unmarshal([]byte(c.must(200, "POST", "/v1/auth/login", `{"email":"`+email+`","password":"`+password+`"}`)), &v); err != nil || v.CSRF == "" {
		c.t.Fatalf("login: %v", err)
	}
	c.csrf = v.CSRF
}

func operator(t *testing.T, ts *testServer) *client {
	c := newClient(t, ts)
	c.hdr["Authorization"] = "Bearer " + testAdmin
	return c
}

func soloNode(t *testing.T) *testServer {
	n := startNode(t, "solo", t.TempDir(), true, "")
	testenv.WaitFor(t, "leader", 10*time.Second, func() (bool, string) { return n.node.IsLeader(), "" })
	return n
}

func createUser(op *client, email string) string {
	var u userView
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/admin/users", `{"email":"`+email+`","name":"N","password":"password-of-`+email+`"}`)), &u)
	return u.ID
}

// Sign-in gives an HttpOnly, SameSite=Strict session cookie (Secure
// behind TLS) and a CSRF token every write must carry; sign-out ends the
// session on the server.
func TestSessionsAndCSRF(t *testing.T) {
	n := soloNode(t)
	op := operator(t, n)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"Acme"}`)
	uid := createUser(op, "ada@acme.test")
	op.must(409, "POST", "/v1/admin/users", `{"email":"ADA@acme.test","name":"Dup","password":"another-password"}`)
	op.must(400, "POST", "/v1/admin/users", `{"email":"not an email","password":"long-enough-password"}`)
	op.must(200, "PUT", "/v1/orgs/acme/members/"+uid, `{"role":"admin"}`)

	u := newClient(t, n)
	resp, _ := u.do("POST", "/v1/auth/login", `{"email":"ada@acme.test","password":"wrong-password!"}`)
	if resp.StatusCode != 401 {
		t.Fatalf("wrong password: %d", resp.StatusCode)
	}
	if resp, body := u.do("POST", "/v1/auth/login", `{"email":"nobody@acme.test","password":"whatever-password"}`); resp.StatusCode != 401 || !strings.Contains(body, "invalid_credentials") {
		t.Fatalf("unknown email: %d %s (want the wrong-password answer)", resp.StatusCode, body)
	}
	u.hdr["X-Forwarded-Proto"] = "https"
	resp, _ = u.do("POST", "/v1/auth/login", `{"email":"Ada@Acme.test","password":"password-of-ada@acme.test"}`)
	delete(u.hdr, "X-Forwarded-Proto")
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == SessionCookie {
			cookie = c
		}
	}
	if resp.StatusCode != 200 || cookie == nil || !cookie.HttpOnly || !cookie.Secure || cookie.SameSite != http.SameSiteStrictMode {
		t.Fatalf("login: %d cookie %+v", resp.StatusCode, cookie)
	}
	u.login("ada@acme.test", "password-of-ada@acme.test")
	if body := u.must(200, "GET", "/v1/me", ""); !strings.Contains(body, `"role":"admin"`) || !strings.Contains(body, u.csrf) {
		t.Fatalf("me: %s", body)
	}
	csrf := u.csrf
	u.csrf = ""
	if _, body := u.do("POST", "/v1/orgs/acme/keys", `{"scopes":["sign"]}`); !strings.Contains(body, `"csrf"`) {
		t.Fatalf("a write without the CSRF token: %s", body)
	}
	u.csrf = "forged"
	if resp, _ := u.do("POST", "/v1/orgs/acme/keys", `{"scopes":["sign"]}`); resp.StatusCode != 403 {
		t.Fatalf("a forged CSRF token: %d", resp.StatusCode)
	}
	u.csrf = csrf
	u.hdr["Origin"] = "https://evil.test"
	if resp, _ := u.do("POST", "/v1/orgs/acme/keys", `{"scopes":["sign"]}`); resp.StatusCode != 403 {
		t.Fatalf("a cross-origin write: %d", resp.StatusCode)
	}
	delete(u.hdr, "Origin")
	u.must(200, "GET", "/v1/orgs/acme/keys", "") // reads need no token
	u.must(201, "POST", "/v1/orgs/acme/keys", `{"scopes":["sign"]}`)
	u.must(204, "POST", "/v1/auth/logout", "")
	u.must(401, "GET", "/v1/me", "")

	// The copy other tiers read holds sessions but no password hash,
	// pending token or audit trail.
	if _, body := newClient(t, n).do("GET", "/v1/node/state", ""); !strings.Contains(body, "unauthorized") {
		t.Fatalf("state without the node token: %s", body)
	}
	nodeC := newClient(t, n)
	nodeC.hdr["Authorization"] = "Bearer " + testNode
	state := nodeC.must(200, "GET", "/v1/node/state", "")
	for _, secret := range []string{"$argon2id$", `"passwords"`, `"audit"`, `"reset_tokens"`, `"invitations"`} {
		if strings.Contains(state, secret) {
			t.Fatalf("the shared state holds %s", secret)
		}
	}
}

// Five wrong passwords in a row lock the account (429 with Retry-After,
// even for the right password); the lock ends after LockoutFor, and a
// right password clears the count.
func TestLockout(t *testing.T) {
	n := soloNode(t)
	op := operator(t, n)
	createUser(op, "bob@acme.test")
	u := newClient(t, n)
	for i := range MaxFailedLogins {
		if resp, _ := u.do("POST", "/v1/auth/login", `{"email":"bob@acme.test","password":"not-the-password"}`); resp.StatusCode != 401 {
			t.Fatalf("attempt %d: %d", i+1, resp.StatusCode)
		}
	}
	resp, body := u.do("POST", "/v1/auth/login", `{"email":"bob@acme.test","password":"password-of-bob@acme.test"}`)
	if resp.StatusCode != 429 || !strings.Contains(body, "account_locked") || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("locked account: %d %s %q", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}

	// The lock's end, and the count's reset, through the FSM with the
	// command's own time.
	f := newFSM()
	f.state.Users["usr_x"] = &User{ID: "usr_x", Email: "x@x.test", CreatedAt: t0}
	fail := func(at time.Time) { applyTo(t, f, &Login{Meta: Meta{At: at}, User: "usr_x"}) }
	for range MaxFailedLogins - 1 {
		fail(t0)
	}
	ss := &Session{Hash: HashKey("s1"), User: "usr_x", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	if err := applyTo(t, f, &Login{Meta: Meta{At: t0}, User: "usr_x", Session: ss}); err != nil || f.state.Users["usr_x"].FailedLogins != 0 {
		t.Fatalf("a sign-in did not clear the count: %v %+v", err, f.state.Users["usr_x"])
	}
	for range MaxFailedLogins {
		fail(t0)
	}
	if got := f.state.Users["usr_x"].LockedUntil; !got.Equal(t0.Add(LockoutFor)) {
		t.Fatalf("locked until %v", got)
	}
	// The session expired by the next command's time is pruned.
	fail(t0.Add(2 * time.Hour))
	if len(f.state.Sessions) != 0 {
		t.Fatalf("expired sessions kept: %v", f.state.Sessions)
	}
}

// Invitations and reset tokens work once, and not after they expire or
// are revoked; a reset ends the user's sessions.
func TestInvitationsAndResets(t *testing.T) {
	n := soloNode(t)
	op := operator(t, n)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"Acme"}`)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"globex","name":"Globex"}`)
	var inv invitationView
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/acme/invitations", `{"email":"Cy@acme.test","role":"developer"}`)), &inv)
	if inv.Token == "" || inv.Email != "cy@acme.test" {
		t.Fatalf("invitation %+v", inv)
	}
	if list := op.must(200, "GET", "/v1/orgs/acme/invitations", ""); strings.Contains(list, inv.Token) {
		t.Fatal("the list shows the token")
	}
	anon := newClient(t, n)
	anon.must(404, "POST", "/v1/auth/invitations/accept", `{"token":"cni_wrong","name":"Cy","password":"password-of-cy"}`)
	anon.must(400, "POST", "/v1/auth/invitations/accept", `{"token":"`+inv.Token+`","name":"Cy","password":"short"}`)
	anon.must(201, "POST", "/v1/auth/invitations/accept", `{"token":"`+inv.Token+`","name":"Cy","password":"password-of-cy"}`)
	anon.must(410, "POST", "/v1/auth/invitations/accept", `{"token":"`+inv.Token+`","name":"Cy","password":"password-of-cy"}`)

	cy := newClient(t, n)
	cy.login("cy@acme.test", "password-of-cy")
	// An existing user accepts with their own password.
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/globex/invitations", `{"email":"cy@acme.test","role":"viewer"}`)), &inv)
	anon.must(401, "POST", "/v1/auth/invitations/accept", `{"token":"`+inv.Token+`","password":"not-cys-password"}`)
	anon.must(201, "POST", "/v1/auth/invitations/accept", `{"token":"`+inv.Token+`","password":"password-of-cy"}`)
	if me := cy.must(200, "GET", "/v1/me", ""); !strings.Contains(me, `"org":"globex","user"`) {
		t.Fatalf("me after joining globex: %s", me)
	}
	// A revoked invitation.
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/acme/invitations", `{"email":"dee@acme.test","role":"viewer"}`)), &inv)
	op.must(204, "DELETE", "/v1/orgs/acme/invitations/"+inv.ID, "")
	anon.must(410, "POST", "/v1/auth/invitations/accept", `{"token":"`+inv.Token+`","name":"Dee","password":"password-of-dee"}`)

	var reset struct {
		Token string `json:"token"`
	}
	var me struct {
		User userView `json:"user"`
	}
	json.Unmarshal([]byte(cy.must(200, "GET", "/v1/me", "")), &me)
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/admin/users/"+me.User.ID+"/password-reset", "")), &reset)
	op.must(404, "POST", "/v1/admin/users/usr_nobody/password-reset", "")
	anon.must(204, "POST", "/v1/auth/password-reset", `{"token":"`+reset.Token+`","password":"a-new-password-for-cy"}`)
	anon.must(410, "POST", "/v1/auth/password-reset", `{"token":"`+reset.Token+`","password":"yet-another-password"}`)
	cy.must(401, "GET", "/v1/me", "") // the reset ended the session
	cy.login("cy@acme.test", "a-new-password-for-cy")

	// Expiry, with the command's own time.
	f := newFSM()
	f.state.Orgs["acme"] = &Org{ID: "acme"}
	f.state.Users["usr_x"] = &User{ID: "usr_x", Email: "x@x.test", CreatedAt: t0}
	tok := ResetToken{Hash: HashKey("r"), User: "usr_x", CreatedAt: t0, ExpiresAt: t0.Add(ResetTTL)}
	applyTo(t, f, &PutResetToken{Token: tok})
	phc, _ := HashPassword(context.Background(), "a-long-enough-password")
	if err := applyTo(t, f, &ResetPassword{Meta: Meta{At: t0.Add(ResetTTL)}, Hash: tok.Hash, Password: phc}); err == nil {
		t.Fatal("an expired reset token was used")
	}
	in := Invitation{ID: "inv_1", Org: "acme", Email: "z@x.test", Role: RoleViewer, Hash: HashKey("i"), CreatedAt: t0, ExpiresAt: t0.Add(InvitationTTL)}
	applyTo(t, f, &PutInvitation{Invitation: in, Create: true})
	nu := &User{ID: "usr_z", Email: "z@x.test", CreatedAt: t0}
	if err := applyTo(t, f, &AcceptInvitation{Meta: Meta{At: t0.Add(InvitationTTL)}, Hash: in.Hash, Org: "acme", NewUser: nu, Password: phc}); err == nil {
		t.Fatal("an expired invitation was accepted")
	}
}

// Roles decide what a member may do: viewers read, developers make keys
// but not admin-scope ones, only owners give or take ownership, and an
// organization keeps its last owner.
func TestRoles(t *testing.T) {
	n := soloNode(t)
	op := operator(t, n)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"Acme"}`)
	users := map[string]*client{}
	ids := map[string]string{}
	for _, role := range Roles {
		email := role + "@acme.test"
		ids[role] = createUser(op, email)
		op.must(200, "PUT", "/v1/orgs/acme/members/"+ids[role], `{"role":"`+role+`"}`)
		users[role] = newClient(t, n)
		users[role].login(email, "password-of-"+email)
	}
	users[RoleViewer].must(200, "GET", "/v1/orgs/acme/keys", "")
	users[RoleViewer].must(403, "POST", "/v1/orgs/acme/keys", `{"scopes":["sign"]}`)
	users[RoleBilling].must(403, "GET", "/v1/orgs/acme/keys", "")
	users[RoleBilling].must(200, "GET", "/v1/orgs/acme", "")
	users[RoleDeveloper].must(201, "POST", "/v1/orgs/acme/keys", `{"scopes":["sign"]}`)
	users[RoleDeveloper].must(403, "POST", "/v1/orgs/acme/keys", `{"scopes":["admin"]}`)
	var adminKey keyView
	json.Unmarshal([]byte(users[RoleAdmin].must(201, "POST", "/v1/orgs/acme/keys", `{"scopes":["admin"]}`)), &adminKey)
	users[RoleDeveloper].must(403, "DELETE", "/v1/orgs/acme/keys/"+adminKey.ID, "")
	users[RoleDeveloper].must(403, "GET", "/v1/orgs/acme/audit", "")
	users[RoleDeveloper].must(403, "PATCH", "/v1/orgs/acme", `{"settings":{"display_name":"x"}}`)
	users[RoleAdmin].must(200, "PATCH", "/v1/orgs/acme", `{"settings":{"display_name":"Acme Inc.","brand_color":"#112233"}}`)
	users[RoleAdmin].must(400, "PATCH", "/v1/orgs/acme", `{"plan":"enterprise"}`) // the operator's
	users[RoleAdmin].must(403, "PUT", "/v1/orgs/acme/members/"+ids[RoleViewer], `{"role":"owner"}`)
	users[RoleAdmin].must(403, "POST", "/v1/orgs/acme/invitations", `{"email":"o@acme.test","role":"owner"}`)
	users[RoleAdmin].must(200, "PUT", "/v1/orgs/acme/members/"+ids[RoleViewer], `{"role":"developer"}`)
	users[RoleAdmin].must(403, "DELETE", "/v1/orgs/acme/members/"+ids[RoleOwner], "")
	users[RoleOwner].must(409, "DELETE", "/v1/orgs/acme/members/"+ids[RoleOwner], "") // the last owner
	users[RoleOwner].must(200, "PUT", "/v1/orgs/acme/members/"+ids[RoleAdmin], `{"role":"owner"}`)
	users[RoleOwner].must(204, "DELETE", "/v1/orgs/acme/members/"+ids[RoleOwner], "")
	users[RoleOwner].must(404, "GET", "/v1/orgs/acme", "") // no longer a member

	// A suspended organization's people still read, but change nothing.
	op.must(200, "PATCH", "/v1/admin/orgs/acme", `{"status":"suspended"}`)
	users[RoleAdmin].must(200, "GET", "/v1/orgs/acme/keys", "")
	if _, body := users[RoleAdmin].do("POST", "/v1/orgs/acme/keys", `{"scopes":["sign"]}`); !strings.Contains(body, `"org_suspended"`) {
		t.Fatalf("a write in a suspended organization: %s", body)
	}
	op.must(200, "PATCH", "/v1/admin/orgs/acme", `{"status":"active"}`)

	// An admin-scope API key acts as an admin of its own organization.
	var k keyView
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/acme/keys", `{"scopes":["admin"]}`)), &k)
	kc := newClient(t, n)
	kc.hdr["Authorization"] = "Bearer " + k.Key
	kc.must(200, "GET", "/v1/orgs/acme/members", "")
	kc.must(401, "GET", "/v1/admin/orgs", "")
	var sk keyView
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/acme/keys", `{"scopes":["sign"]}`)), &sk)
	kc.hdr["Authorization"] = "Bearer " + sk.Key
	kc.must(401, "GET", "/v1/orgs/acme/members", "") // a key without the admin scope

	// Every change is in the audit trail, with who and from where.
	var page struct {
		Events []AuditEvent `json:"events"`
	}
	json.Unmarshal([]byte(users[RoleAdmin].must(200, "GET", "/v1/orgs/acme/audit?limit=1000", "")), &page)
	var sawAdminPatch, sawKey bool
	for _, e := range page.Events {
		if e.Org != "acme" {
			t.Fatalf("another organization's event: %+v", e)
		}
		sawAdminPatch = sawAdminPatch || (e.Action == "org.update" && e.Actor.Kind == ActorUser && e.Actor.ID == ids[RoleAdmin] && e.Actor.Addr == "127.0.0.1")
		sawKey = sawKey || (e.Action == "api_key.create" && e.Actor.Kind == ActorUser && e.Actor.ID == ids[RoleDeveloper])
	}
	if !sawAdminPatch || !sawKey {
		t.Fatalf("audit events %+v", page.Events)
	}
	op.must(400, "GET", "/v1/admin/audit?limit=0", "")
	if all := op.must(200, "GET", "/v1/admin/audit?org=acme&after=1&limit=2", ""); strings.Count(all, `"seq"`) != 2 {
		t.Fatalf("paged audit: %s", all)
	}
}

// A write retried with the same Idempotency-Key gets the first answer
// again (the same key and secret), not a second key; the same
// Idempotency-Key for another request is refused; keys are per caller.
func TestIdempotencyKeys(t *testing.T) {
	n := soloNode(t)
	op := operator(t, n)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"Acme"}`)
	op.hdr[IdempotencyHeader] = "create-ci-key-1"
	resp1, first := op.do("POST", "/v1/orgs/acme/keys", `{"name":"ci","scopes":["sign"]}`)
	resp2, again := op.do("POST", "/v1/orgs/acme/keys", `{"name":"ci","scopes":["sign"]}`)
	if resp1.StatusCode != 201 || resp2.StatusCode != 201 || first != again || resp2.Header.Get(replayedHeader) != "true" {
		t.Fatalf("retry: %d %s / %d %s", resp1.StatusCode, first, resp2.StatusCode, again)
	}
	if resp, body := op.do("POST", "/v1/orgs/acme/keys", `{"name":"other","scopes":["sign"]}`); resp.StatusCode != 422 || !strings.Contains(body, "idempotency_key_reused") {
		t.Fatalf("reused for another body: %d %s", resp.StatusCode, body)
	}
	delete(op.hdr, IdempotencyHeader)
	if list := op.must(200, "GET", "/v1/orgs/acme/keys", ""); strings.Count(list, `"id"`) != 1 {
		t.Fatalf("keys after a retried create: %s", list)
	}
	if _, third := op.do("POST", "/v1/orgs/acme/keys", `{"name":"ci","scopes":["sign"]}`); third == first {
		t.Fatal("a write without the header was answered from the kept answer")
	}
	// The kept answer is sealed: the key it shows is nowhere in a snapshot.
	var k keyView
	json.Unmarshal([]byte(first), &k)
	snap, err := n.node.fsm.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var buf sinkBuffer
	snap.Persist(&buf)
	if secret := k.Key[strings.Index(k.Key, ".")+1:]; strings.Contains(buf.String(), secret) {
		t.Fatal("the kept answer's secret is in the snapshot")
	}
	// Another caller's same key is their own.
	admin := newClient(t, n)
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/acme/keys", `{"scopes":["admin"]}`)), &k)
	admin.hdr["Authorization"] = "Bearer " + k.Key
	admin.hdr[IdempotencyHeader] = "create-ci-key-1"
	if _, body := admin.do("POST", "/v1/orgs/acme/keys", `{"name":"ci","scopes":["sign"]}`); body == first {
		t.Fatal("another caller got the operator's kept answer")
	}

	// Kept answers expire with the command's own time.
	s := newState()
	s.keep(&IdemRecord{Key: "a", At: t0})
	s.keep(&IdemRecord{Key: "b", At: t0.Add(IdempotencyTTL)})
	if _, ok := s.Idempotency["a"]; ok || len(s.Idempotency) != 1 {
		t.Fatalf("expired answers kept: %v", s.Idempotency)
	}
}

// Two changes to an organization made from the same reading both hold:
// the FSM applies each patch to the organization as it is then.
func TestPatchOrgKeepsConcurrentChanges(t *testing.T) {
	f := newFSM()
	applyTo(t, f, &PutOrg{Org: testOrg("acme"), Create: true})
	suspended, name := OrgSuspended, "Acme Inc."
	settings := OrgSettings{DisplayName: "Acme"}
	// Both proposed against the same state; applied one after the other.
	if err := applyTo(t, f, &PatchOrg{ID: "acme", Patch: OrgPatch{Status: &suspended}, At: t0.Add(time.Second)}); err != nil {
		t.Fatal(err)
	}
	if err := applyTo(t, f, &PatchOrg{ID: "acme", Patch: OrgPatch{Name: &name, Settings: &settings}, At: t0.Add(2 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	o := f.state.Orgs["acme"]
	if o.Status != OrgSuspended || o.Name != name || o.Settings.DisplayName != "Acme" {
		t.Fatalf("a change undid another: %+v", o)
	}
	bad := "nope"
	if err := applyTo(t, f, &PatchOrg{ID: "acme", Patch: OrgPatch{Plan: &bad}, At: t0.Add(3 * time.Second)}); err == nil {
		t.Fatal("a patch to an unknown plan applied")
	}
}

// Accepting an invitation as an existing user counts a wrong password
// toward that user's lockout, as a sign-in does.
func TestInvitationAcceptCountsTowardLockout(t *testing.T) {
	n := soloNode(t)
	op := operator(t, n)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"Acme"}`)
	createUser(op, "eve@acme.test")
	var inv invitationView
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/acme/invitations", `{"email":"eve@acme.test","role":"viewer"}`)), &inv)
	anon := newClient(t, n)
	for range MaxFailedLogins {
		anon.must(401, "POST", "/v1/auth/invitations/accept", `{"token":"`+inv.Token+`","password":"a-guessed-password"}`)
	}
	anon.must(429, "POST", "/v1/auth/invitations/accept", `{"token":"`+inv.Token+`","password":"password-of-eve@acme.test"}`)
	anon.must(429, "POST", "/v1/auth/login", `{"email":"eve@acme.test","password":"password-of-eve@acme.test"}`)
}

// Guesses sent at once get no more tries than guesses sent one by one:
// password checks of one user run in turn, each seeing the failures
// before it.
func TestLockoutHoldsUnderConcurrentGuesses(t *testing.T) {
	n := soloNode(t)
	op := operator(t, n)
	createUser(op, "fay@acme.test")
	const guesses = 24
	codes := make(chan int, guesses)
	var wg sync.WaitGroup
	for range guesses {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, _ := newClient(t, n).do("POST", "/v1/auth/login", `{"email":"fay@acme.test","password":"a-guessed-password"}`)
			codes <- resp.StatusCode
		}()
	}
	wg.Wait()
	close(codes)
	tried := 0
	for c := range codes {
		switch c {
		case 401:
			tried++
		case 429:
		default:
			t.Fatalf("a guess answered %d", c)
		}
	}
	if tried != MaxFailedLogins {
		t.Fatalf("%d of %d concurrent guesses were checked; the lockout allows %d", tried, guesses, MaxFailedLogins)
	}
}

// An admin-scope key is held to its CIDR allow-list on the coordinator's
// routes too: 403 forbidden_address, counted.
func TestAdminKeyCIDR(t *testing.T) {
	n := soloNode(t)
	op := operator(t, n)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"Acme"}`)
	var k keyView
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/acme/keys", `{"scopes":["admin"],"cidrs":["10.0.0.0/8"]}`)), &k)
	c := newClient(t, n)
	c.hdr["Authorization"] = "Bearer " + k.Key
	if _, body := c.do("POST", "/v1/orgs/acme/keys", `{"scopes":["admin"]}`); !strings.Contains(body, `"forbidden_address"`) {
		t.Fatalf("a key pinned to 10.0.0.0/8 used from 127.0.0.1: %s", body)
	}
	if m := newClient(t, n).must(200, "GET", "/metrics", ""); !strings.Contains(m, `certnode_coordinator_refused_total{code="forbidden_address"} 1`) {
		t.Fatal("the refusal is not counted")
	}
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/acme/keys", `{"scopes":["admin"],"cidrs":["127.0.0.0/8"]}`)), &k)
	c.hdr["Authorization"] = "Bearer " + k.Key
	c.must(200, "GET", "/v1/orgs/acme/keys", "")
}
