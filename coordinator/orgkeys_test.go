package coordinator

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// testOrgKey makes a key as a worker reports it, for request.
func testOrgKey(t testing.TB, alg, request string) schemas.OrgKey {
	t.Helper()
	var jwk schemas.JWK
	var err error
	if alg == schemas.AlgEdDSA {
		pub, _, _ := ed25519.GenerateKey(rand.Reader)
		jwk, err = schemas.NewJWK(pub)
	} else {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		jwk, err = schemas.NewJWK(&k.PublicKey)
	}
	if err != nil {
		t.Fatal(err)
	}
	return schemas.OrgKey{Kid: jwk.Kid, JWK: jwk, Source: "pkcs11:certnode-org-acme-" + jwk.Kid[:16], Request: request}
}

// installAt is the command that installs key at, activating an hour later.
func installAt(org string, key schemas.OrgKey, at time.Time) *InstallOrgKey {
	key.CreatedAt, key.ActivatesAt = at, at.Add(time.Hour)
	return &InstallOrgKey{Org: org, Key: key}
}

func orgKeyRequest(org, id, alg, reason string, at time.Time) schemas.OrgKeyRequest {
	return schemas.OrgKeyRequest{Org: org, ID: id, Alg: alg, Reason: reason, RequestedAt: at}
}

// An organization's key ring changes only through its commands: turning
// the keys on asks for a key; the first report for the pending request
// installs it and a second (another worker's key) is refused, while the
// same report again changes nothing; a rotation waits for the pending
// request (or its timeout); a new key retires the previous one when it
// activates; turning the keys off retires them all and drops the request.
func TestOrgKeyCommands(t *testing.T) {
	f := newFSM()
	for _, org := range []string{"acme", "globex"} {
		if err := applyTo(t, f, &PutOrg{Org: testOrg(org), Create: true}); err != nil {
			t.Fatal(err)
		}
	}
	on := OrgKeySettings{Enabled: true, Alg: schemas.AlgES256, RotationDays: 30}
	req1 := orgKeyRequest("acme", "okr_first", schemas.AlgES256, OrgKeyReasonEnable, t0)
	w1, w2 := testOrgKey(t, schemas.AlgES256, "okr_first"), testOrgKey(t, schemas.AlgES256, "okr_first")
	notThumb := testOrgKey(t, schemas.AlgES256, "okr_first")
	notThumb.Kid = w2.Kid
	edKey := testOrgKey(t, schemas.AlgEdDSA, "okr_first")
	badSource := testOrgKey(t, schemas.AlgES256, "okr_first")
	badSource.Source = "/etc/passwd"
	req2 := orgKeyRequest("acme", "okr_second", schemas.AlgEdDSA, OrgKeyReasonManual, t0.Add(2*time.Minute))
	ed2 := testOrgKey(t, schemas.AlgEdDSA, "okr_second")
	at2 := t0.Add(3 * time.Minute)
	cases := []struct {
		name string
		c    Command
		want error
	}{
		{"settings of an unknown org", &SetOrgKeySettings{Org: "ghost", Settings: on, At: t0}, ErrNotFound},
		{"settings with an unknown alg", &SetOrgKeySettings{Org: "acme", Settings: OrgKeySettings{Enabled: true, Alg: "RS256"}, At: t0}, ErrInvalid},
		{"a request with the keys off", &RequestOrgKey{Request: req1}, ErrConflict},
		{"turn on, asking for a key", &SetOrgKeySettings{Org: "acme", Settings: on, Request: &req1, At: t0}, nil},
		{"a rotation while a key is being made", &RequestOrgKey{Request: orgKeyRequest("acme", "okr_x", schemas.AlgES256, OrgKeyReasonManual, t0.Add(time.Minute))}, ErrConflict},
		{"a report for another request", installAt("acme", testOrgKey(t, schemas.AlgES256, "okr_other"), t0), ErrConflict},
		{"a report whose kid is not its thumbprint", installAt("acme", notThumb, t0), ErrInvalid},
		{"a report of the wrong alg", installAt("acme", edKey, t0), ErrInvalid},
		{"a report with a source outside the ring's notation", installAt("acme", badSource, t0), ErrInvalid},
		{"the first report", installAt("acme", w1, t0), nil},
		{"the same report again (a retried answer)", installAt("acme", w1, t0.Add(time.Second)), nil},
		{"a second worker's report", installAt("acme", w2, t0), ErrConflict},
		{"another organization's kid", &SetOrgKeySettings{Org: "globex", Settings: on, Request: &schemas.OrgKeyRequest{Org: "globex", ID: "okr_g", Alg: schemas.AlgES256, Reason: OrgKeyReasonEnable, RequestedAt: t0}, At: t0}, nil},
		{"acme's key reported for globex", installAt("globex", func() schemas.OrgKey { k := w1; k.Request = "okr_g"; return k }(), t0), ErrConflict},
		{"a rotation to EdDSA", &RequestOrgKey{Request: req2}, nil},
		{"its key", installAt("acme", ed2, at2), nil},
	}
	for _, tc := range cases {
		if err := applyTo(t, f, tc.c); (tc.want == nil) != (err == nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	f.View(func(s *State) {
		k := s.SigningKeys["acme"]
		if k == nil || len(k.Keys) != 2 || k.Pending != nil || k.Keys[0].Kid != w1.Kid || k.Keys[1].Kid != ed2.Kid {
			t.Fatalf("acme's ring: %+v", k)
		}
		first, second := k.Keys[0], k.Keys[1]
		for _, c := range []struct {
			key  schemas.OrgKey
			at   time.Time
			want string
		}{
			{first, t0, schemas.OrgKeyStandby},
			{first, t0.Add(time.Hour), schemas.OrgKeyActive},
			{second, t0.Add(time.Hour), schemas.OrgKeyStandby},
			{first, at2.Add(time.Hour), schemas.OrgKeyRetired},
			{second, at2.Add(time.Hour), schemas.OrgKeyActive},
		} {
			if got := c.key.State(c.at); got != c.want {
				t.Errorf("key %s at %s: %s, want %s", c.key.Kid, c.at, got, c.want)
			}
		}
		ring := schemas.NewOrgKeyRing("acme", k.Keys)
		if a, ok := ring.Active(at2.Add(time.Hour)); !ok || a.Kid != ed2.Kid {
			t.Errorf("active after the rotation: %v %v", a.Kid, ok)
		}
		jwks := ring.JWKS(at2.Add(time.Hour))
		if len(jwks) != 2 || jwks[0].Kid != ed2.Kid || jwks[1].Kid != w1.Kid || jwks[0].Org != "acme" {
			t.Errorf("jwks: %+v", jwks)
		}
	})

	off := OrgKeySettings{Enabled: false, Alg: schemas.AlgEdDSA}
	if err := applyTo(t, f, &RequestOrgKey{Request: orgKeyRequest("acme", "okr_third", schemas.AlgEdDSA, OrgKeyReasonManual, at2)}); err != nil {
		t.Fatal(err)
	}
	offAt := at2.Add(10 * time.Minute)
	if err := applyTo(t, f, &SetOrgKeySettings{Org: "acme", Settings: off, At: offAt}); err != nil {
		t.Fatal(err)
	}
	f.View(func(s *State) {
		k := s.SigningKeys["acme"]
		ring := schemas.NewOrgKeyRing("acme", k.Keys)
		if _, ok := ring.Active(offAt); ok || k.Pending != nil || len(ring.JWKS(offAt)) != 2 {
			t.Fatalf("after turning the keys off: %+v", k)
		}
	})
	// The off request's worker comes late: refused, so it destroys its key.
	if err := applyTo(t, f, installAt("acme", testOrgKey(t, schemas.AlgEdDSA, "okr_third"), offAt)); !errors.Is(err, ErrConflict) {
		t.Fatalf("a report after the keys were turned off: %v", err)
	}
}

// The schedule asks for a key rotation_days after the newest key
// activated, never while a fresh request is pending, again once a request
// went unanswered past OrgKeyRequestTimeout, and not for keys turned off.
func TestOrgKeySchedule(t *testing.T) {
	f := newFSM()
	applyTo(t, f, &PutOrg{Org: testOrg("acme"), Create: true})
	req := orgKeyRequest("acme", "okr_first", schemas.AlgES256, OrgKeyReasonEnable, t0)
	applyTo(t, f, &SetOrgKeySettings{Org: "acme", Settings: OrgKeySettings{Enabled: true, Alg: schemas.AlgES256, RotationDays: 1}, Request: &req, At: t0})
	if err := applyTo(t, f, installAt("acme", testOrgKey(t, schemas.AlgES256, "okr_first"), t0)); err != nil {
		t.Fatal(err)
	}
	activated := t0.Add(time.Hour)
	due := func(at time.Time) []*RequestOrgKey {
		var out []*RequestOrgKey
		f.View(func(s *State) { out = dueOrgKeyRequests(s, at) })
		return out
	}
	if d := due(activated.Add(23 * time.Hour)); len(d) != 0 {
		t.Fatalf("due a day early: %+v", d)
	}
	d := due(activated.Add(24 * time.Hour))
	if len(d) != 1 || d[0].Request.Org != "acme" || d[0].Request.Reason != OrgKeyReasonScheduled || d[0].Request.Alg != schemas.AlgES256 {
		t.Fatalf("due after a day: %+v", d)
	}
	if err := applyTo(t, f, d[0]); err != nil {
		t.Fatal(err)
	}
	if d := due(activated.Add(24*time.Hour + time.Minute)); len(d) != 0 {
		t.Fatalf("due again while the request is pending: %+v", d)
	}
	d = due(activated.Add(24*time.Hour + OrgKeyRequestTimeout))
	if len(d) != 1 {
		t.Fatalf("not asked again once the request went unanswered: %+v", d)
	}
	applyTo(t, f, &SetOrgKeySettings{Org: "acme", Settings: OrgKeySettings{Alg: schemas.AlgES256, RotationDays: 1}, At: activated.Add(25 * time.Hour)})
	if d := due(activated.Add(100 * 24 * time.Hour)); len(d) != 0 {
		t.Fatalf("due with the keys off: %+v", d)
	}
}

// Two workers report keys for one request at the same moment, each
// through its own copy of the state: exactly one is installed; the other
// is told it lost (and would destroy its key). The winner's retried
// report succeeds again, so a lost answer never makes a worker destroy an
// installed key. The copies then list the key, its organization and no
// pending request; the API shows it on standby, then active.
func TestOrgKeyFirstReportWins(t *testing.T) {
	n := startNodeCfg(t, Config{ID: "solo", RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", DataDir: t.TempDir(), Bootstrap: true,
		OrgKeyActivationDelay: 1500 * time.Millisecond})
	testenv.WaitFor(t, "leader", 10*time.Second, func() (bool, string) { return n.node.IsLeader(), "" })
	op := operator(t, n)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"Acme"}`)
	var v signingKeysView
	json.Unmarshal([]byte(op.must(200, "PUT", "/v1/orgs/acme/signing-keys/settings", `{"enabled":true}`)), &v)
	if v.Pending == nil || v.Pending.Reason != OrgKeyReasonEnable || v.Pending.Alg != schemas.AlgES256 || len(v.Keys) != 0 {
		t.Fatalf("turned on: %+v", v)
	}
	// Turning on again while the key is being made asks for no second one.
	var again signingKeysView
	json.Unmarshal([]byte(op.must(200, "PUT", "/v1/orgs/acme/signing-keys/settings", `{"enabled":true,"rotation_days":90}`)), &again)
	if again.Pending == nil || again.Pending.ID != v.Pending.ID || again.Settings.RotationDays != 90 {
		t.Fatalf("turned on again: %+v", again)
	}
	cfg := ReplicaConfig{Addrs: []string{n.Addr()}, Token: testNode, Wait: time.Second}
	r1, ctx := follow(t, cfg)
	r2, _ := follow(t, cfg)
	for _, r := range []*Replica{r1, r2} {
		testenv.WaitFor(t, "the request in the copy", 5*time.Second, func() (bool, string) {
			p := r.PendingOrgKeys()
			return len(p) == 1 && p[0].ID == v.Pending.ID, ""
		})
	}
	keys := []schemas.OrgKey{testOrgKey(t, schemas.AlgES256, v.Pending.ID), testOrgKey(t, schemas.AlgES256, v.Pending.ID)}
	installed := make([]bool, 2)
	var wg sync.WaitGroup
	for i, r := range []*Replica{r1, r2} {
		wg.Go(func() {
			var err error
			if installed[i], err = r.InstallOrgKey(ctx, "acme", v.Pending.ID, keys[i]); err != nil {
				t.Errorf("report %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if installed[0] == installed[1] {
		t.Fatalf("installed: %v, want exactly one", installed)
	}
	win, lose := 0, 1
	if installed[1] {
		win, lose = 1, 0
	}
	if ok, err := r1.InstallOrgKey(ctx, "acme", v.Pending.ID, keys[win]); !ok || err != nil {
		t.Fatalf("the winner's report again: %v %v", ok, err)
	}
	testenv.WaitFor(t, "the key in the copies", 5*time.Second, func() (bool, string) {
		ring := r2.OrgKeyRing("acme")
		org, ok := r2.KidOrg(keys[win].Kid)
		return ring != nil && len(ring.Keys) == 1 && ok && org == "acme" && len(r2.PendingOrgKeys()) == 0, ""
	})
	if _, ok := r2.KidOrg(keys[lose].Kid); ok {
		t.Fatal("the losing key is known")
	}
	v = signingKeysView{}
	json.Unmarshal([]byte(op.must(200, "GET", "/v1/orgs/acme/signing-keys", "")), &v)
	if len(v.Keys) != 1 || v.Keys[0].State != schemas.OrgKeyStandby || v.ActiveKid != "" || v.Pending != nil {
		t.Fatalf("after the report: %+v", v)
	}
	testenv.WaitFor(t, "the key active", 10*time.Second, func() (bool, string) {
		body := op.must(200, "GET", "/v1/orgs/acme/signing-keys", "")
		json.Unmarshal([]byte(body), &v)
		return v.ActiveKid == keys[win].Kid, body
	})
	if jwks := op.must(200, "GET", "/v1/orgs/acme/jwks", ""); !strings.Contains(jwks, `"kid":"`+keys[win].Kid+`"`) || !strings.Contains(jwks, `"org":"acme"`) {
		t.Fatalf("jwks: %s", jwks)
	}
	audit := op.must(200, "GET", "/v1/admin/audit?org=acme&limit=100", "")
	for _, action := range []string{"signing_keys.settings", "signing_key.install"} {
		if !strings.Contains(audit, `"action":"`+action+`"`) {
			t.Errorf("no %s in the audit trail: %s", action, audit)
		}
	}
	// The schedule, as the leader runs it: nothing due before the period,
	// a request a day after the key activated; then a rotation on demand
	// waits for it (409).
	op.must(200, "PUT", "/v1/orgs/acme/signing-keys/settings", `{"enabled":true,"rotation_days":1}`)
	n.requestDueOrgKeys(time.Now().UTC())
	v = signingKeysView{}
	json.Unmarshal([]byte(op.must(200, "GET", "/v1/orgs/acme/signing-keys", "")), &v)
	if v.Pending != nil {
		t.Fatalf("a rotation asked for before its day: %+v", v.Pending)
	}
	n.requestDueOrgKeys(time.Now().UTC().Add(25 * time.Hour))
	json.Unmarshal([]byte(op.must(200, "GET", "/v1/orgs/acme/signing-keys", "")), &v)
	if v.Pending == nil || v.Pending.Reason != OrgKeyReasonScheduled {
		t.Fatalf("no scheduled rotation a day later: %+v", v)
	}
	op.must(409, "POST", "/v1/orgs/acme/signing-keys/rotate", "")
}

// FuzzInstallOrgKeyReport: a worker's report, whatever its bytes, never
// panics the coordinator, and is installed only as a key the organization
// can publish: a P-256 or Ed25519 key of the pending request's algorithm,
// named by its thumbprint, with a source in the key ring's notation.
func FuzzInstallOrgKeyReport(f *testing.F) {
	good := testOrgKey(f, schemas.AlgES256, "okr_fuzz")
	body, _ := json.Marshal(OrgKeyReport{Request: good.Request, Kid: good.Kid, JWK: good.JWK, Source: good.Source})
	f.Add(body)
	ed := testOrgKey(f, schemas.AlgEdDSA, "okr_fuzz")
	body, _ = json.Marshal(OrgKeyReport{Request: ed.Request, Kid: ed.Kid, JWK: ed.JWK, Source: ed.Source})
	f.Add(body)
	f.Add([]byte(`{"request":"okr_fuzz","kid":"x","jwk":{"kty":"OKP","crv":"Ed25519","x":"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},"source":"pkcs11:x"}`))
	f.Add([]byte(`{"request":"okr_fuzz","jwk":{"kty":"EC","crv":"P-256","x":"AA","y":"AA","org":"globex"},"source":"file:../x.pem"}`))
	f.Add([]byte(`{"request":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		st := newState()
		st.Orgs["acme"] = func() *Org { o := testOrg("acme"); return &o }()
		st.SigningKeys["acme"] = &OrgSigningKeys{Org: "acme", Settings: OrgKeySettings{Enabled: true, Alg: schemas.AlgES256},
			Pending: &schemas.OrgKeyRequest{Org: "acme", ID: "okr_fuzz", Alg: schemas.AlgES256, Reason: OrgKeyReasonEnable, RequestedAt: t0}}
		c, err := reportCommand("acme", data, t0, time.Minute)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("undocumented error: %v", err)
			}
			return
		}
		k, err := c.next(st)
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrConflict) {
				t.Fatalf("undocumented error: %v", err)
			}
			return
		}
		key := k.Keys[len(k.Keys)-1]
		pub, err := key.JWK.PublicKey()
		if err != nil || key.JWK.KeyAlg() != schemas.AlgES256 || key.Kid != key.JWK.Thumbprint() || key.JWK.Kid != key.Kid || key.JWK.Org != "" {
			t.Fatalf("installed %+v (%v)", key, err)
		}
		if jwk, _ := schemas.NewJWK(pub); jwk != key.JWK {
			t.Fatalf("installed jwk %+v, want it rebuilt %+v", key.JWK, jwk)
		}
		if !strings.HasPrefix(key.Source, "pkcs11:") && !strings.HasPrefix(key.Source, "file:") || k.Pending != nil {
			t.Fatalf("installed %+v, pending %+v", key, k.Pending)
		}
	})
}

// signingKeysConformance drives the organization key routes for
// TestOpenAPIAccounts: the owner's session and an admin key (admin),
// a developer (dev: read only) and a worker's report through the node
// route.
func signingKeysConformance(t *testing.T, k *conformance, n *testServer, admin, key, dev *client) {
	for _, x := range []call{
		{name: "the ring before any key", as: dev, method: "GET", path: "/v1/orgs/acme/signing-keys", status: 200},
		{name: "the JWKS before any key", as: dev, method: "GET", path: "/v1/orgs/acme/jwks", status: 200},
		{name: "rotate with the keys off", as: admin, method: "POST", path: "/v1/orgs/acme/signing-keys/rotate", status: 409, code: "conflict"},
		{name: "turn on as a developer", as: dev, method: "PUT", path: "/v1/orgs/acme/signing-keys/settings", body: `{"enabled":true}`, status: 403, code: "forbidden_role"},
		{name: "turn on without enabled", as: admin, method: "PUT", path: "/v1/orgs/acme/signing-keys/settings", body: `{"alg":"EdDSA"}`, offSpec: true, status: 400, code: "invalid"},
		{name: "turn on with an unknown alg", as: admin, method: "PUT", path: "/v1/orgs/acme/signing-keys/settings", body: `{"enabled":true,"alg":"RS256"}`, offSpec: true, status: 400, code: "invalid"},
		{name: "turn on", as: admin, method: "PUT", path: "/v1/orgs/acme/signing-keys/settings", body: `{"enabled":true,"alg":"EdDSA","rotation_days":90}`, status: 200},
		{name: "rotate while the key is being made", as: key, method: "POST", path: "/v1/orgs/acme/signing-keys/rotate", status: 409, code: "conflict"},
		{name: "the JWKS of another organization", as: admin, method: "GET", path: "/v1/orgs/globex/jwks", status: 404, code: "not_found"},
		{name: "the ring of another organization", as: key, method: "GET", path: "/v1/orgs/globex/signing-keys", status: 404, code: "not_found"},
	} {
		k.expect(t, x)
	}
	var v signingKeysView
	json.Unmarshal([]byte(k.expect(t, call{name: "the ring with a pending key", as: admin, method: "GET", path: "/v1/orgs/acme/signing-keys", status: 200}).Body), &v)
	if v.Pending == nil {
		t.Fatalf("no pending request: %+v", v)
	}
	ed := testOrgKey(t, schemas.AlgEdDSA, v.Pending.ID)
	body, _ := json.Marshal(OrgKeyReport{Request: ed.Request, Kid: ed.Kid, JWK: ed.JWK, Source: ed.Source})
	if code, out := n.do(t, "POST", "/v1/node/orgs/acme/signing-keys", testNode, string(body)); code != 204 {
		t.Fatalf("a worker's report: %d %s", code, out)
	}
	r := k.expect(t, call{name: "the ring with a key", as: dev, method: "GET", path: "/v1/orgs/acme/signing-keys?consistent=true", status: 200})
	if !strings.Contains(r.Body, ed.Kid) || strings.Contains(r.Body, "pkcs11:") {
		t.Fatalf("ring: %s", r.Body)
	}
	r = k.expect(t, call{name: "the JWKS with a key", as: key, method: "GET", path: "/v1/orgs/acme/jwks", status: 200})
	if !strings.Contains(r.Body, `"org":"acme"`) {
		t.Fatalf("jwks: %s", r.Body)
	}
	k.expect(t, call{name: "rotate", as: admin, method: "POST", path: "/v1/orgs/acme/signing-keys/rotate", status: 202})
	k.expect(t, call{name: "turn off", as: key, method: "PUT", path: "/v1/orgs/acme/signing-keys/settings", body: `{"enabled":false}`, status: 200})
}
