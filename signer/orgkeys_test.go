package signer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/certnode/certnode/schemas"
)

// fakeCoordinator keeps organizations' keys as the coordinator does: the
// first report for a pending request installs (activating after delay),
// the same report again succeeds, any other is refused.
type fakeCoordinator struct {
	mu      sync.Mutex
	now     time.Time
	delay   time.Duration
	pending []schemas.OrgKeyRequest
	keys    map[string][]schemas.OrgKey
	// lostAnswers makes the next n reports install but fail, as a report
	// whose answer was lost.
	lostAnswers int
}

func (c *fakeCoordinator) PendingOrgKeys() []schemas.OrgKeyRequest {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.pending)
}

func (c *fakeCoordinator) InstallOrgKey(_ context.Context, org, request string, key schemas.OrgKey) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if slices.ContainsFunc(c.keys[org], func(k schemas.OrgKey) bool { return k.Kid == key.Kid && k.Request == request }) {
		return true, nil
	}
	i := slices.IndexFunc(c.pending, func(r schemas.OrgKeyRequest) bool { return r.ID == request && r.Org == org })
	if i < 0 {
		return false, nil
	}
	c.pending = slices.Delete(c.pending, i, i+1)
	key.CreatedAt, key.ActivatesAt = c.now, c.now.Add(c.delay)
	if n := len(c.keys[org]); n > 0 {
		c.keys[org][n-1].RetiredAt = key.ActivatesAt
	}
	c.keys[org] = append(c.keys[org], key)
	if c.lostAnswers > 0 {
		c.lostAnswers--
		return false, errors.New("connection reset")
	}
	return true, nil
}

func (c *fakeCoordinator) OrgKeyRing(org string) *schemas.OrgKeyRing {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.keys[org]) == 0 {
		return nil
	}
	return schemas.NewOrgKeyRing(org, slices.Clone(c.keys[org]))
}

func (c *fakeCoordinator) OrgKeyRings() []*schemas.OrgKeyRing {
	var out []*schemas.OrgKeyRing
	for org := range c.keys {
		out = append(out, c.OrgKeyRing(org))
	}
	return out
}

func (c *fakeCoordinator) KidOrg(kid string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for org, keys := range c.keys {
		if slices.ContainsFunc(keys, func(k schemas.OrgKey) bool { return k.Kid == kid }) {
			return org, true
		}
	}
	return "", false
}

// staleCopy is a worker's copy of the state that has not seen the
// install yet: it still lists the requests it was made with.
type staleCopy struct {
	*fakeCoordinator
	pending []schemas.OrgKeyRequest
}

func (s staleCopy) PendingOrgKeys() []schemas.OrgKeyRequest { return s.pending }

func orgKeyFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "org-*.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Two workers answer one request: the first report installs its key; the
// second worker, whose copy still lists the request, makes a key too, is
// refused, and destroys it, so the ring directory holds the installed key
// alone. A report whose answer was lost is sent again and found
// installed: that key is kept.
func TestOrgKeyMakersFirstReportWins(t *testing.T) {
	dir := t.TempDir()
	t0 := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	c := &fakeCoordinator{now: t0, delay: time.Minute, keys: map[string][]schemas.OrgKey{},
		pending: []schemas.OrgKeyRequest{{Org: "acme", ID: "okr_one", Alg: schemas.AlgES256, Reason: "enable", RequestedAt: t0}}}
	store := OrgKeyStore{Dir: dir}
	first := NewOrgKeyMaker(c, store, time.Second, 0)
	second := NewOrgKeyMaker(staleCopy{c, c.PendingOrgKeys()}, store, time.Second, 0)
	ctx := context.Background()
	first.Step(ctx, t0)
	second.Step(ctx, t0)
	files := orgKeyFiles(t, dir)
	ring := c.OrgKeyRing("acme")
	if ring == nil || len(ring.Keys) != 1 || len(files) != 1 || filepath.Base(files[0]) != "org-acme-"+ring.Keys[0].Kid+".pem" {
		t.Fatalf("keys %+v, files %v: want the installed key alone", ring, files)
	}
	if len(first.made)+len(second.made) != 0 {
		t.Fatalf("keys left to report: %v %v", first.made, second.made)
	}

	c.pending = []schemas.OrgKeyRequest{{Org: "acme", ID: "okr_two", Alg: schemas.AlgEdDSA, Reason: "manual", RequestedAt: t0}}
	c.lostAnswers = 1
	first.Step(ctx, t0)
	if len(first.made) != 1 {
		t.Fatalf("a key whose report failed is not kept to report again: %v", first.made)
	}
	first.Step(ctx, t0.Add(time.Second))
	ring = c.OrgKeyRing("acme")
	if len(first.made) != 0 || len(ring.Keys) != 2 || ring.Keys[1].JWK.KeyAlg() != schemas.AlgEdDSA || len(orgKeyFiles(t, dir)) != 2 {
		t.Fatalf("after the report again: made %v, ring %+v, files %v", first.made, ring, orgKeyFiles(t, dir))
	}
}

// A request is answered after a random moment up to the spread: not
// before it, and by then a worker whose copy saw another's key installed
// makes none.
func TestOrgKeyMakerSpread(t *testing.T) {
	dir := t.TempDir()
	t0 := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	c := &fakeCoordinator{now: t0, keys: map[string][]schemas.OrgKey{},
		pending: []schemas.OrgKeyRequest{{Org: "acme", ID: "okr_one", Alg: schemas.AlgES256, Reason: "enable", RequestedAt: t0}}}
	m := NewOrgKeyMaker(c, OrgKeyStore{Dir: dir}, time.Second, time.Hour)
	m.Step(context.Background(), t0)
	due := m.due["okr_one"]
	if due.Before(t0) || !due.Before(t0.Add(time.Hour)) {
		t.Fatalf("due at %s", due)
	}
	if due.After(t0) && len(orgKeyFiles(t, dir)) != 0 {
		t.Fatal("a key made before its moment")
	}
	m.Step(context.Background(), t0.Add(time.Hour))
	if ring := c.OrgKeyRing("acme"); ring == nil || len(ring.Keys) != 1 {
		t.Fatalf("not answered once due: %+v", ring)
	}
}

// OrgKeys signs an organization's requests with its active key only: a
// key on standby does not sign yet (the service's key does: ok false), the
// active one does, with its kid; a key whose private half cannot be opened
// is an ErrOrgKeyUnavailable error, never a signature by another key. The
// organization's JWKS lists its keys, marked with it, then the service's.
func TestOrgKeysSignAndPublish(t *testing.T) {
	dir := t.TempDir()
	t0 := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	c := &fakeCoordinator{now: t0, delay: time.Minute, keys: map[string][]schemas.OrgKey{},
		pending: []schemas.OrgKeyRequest{{Org: "acme", ID: "okr_one", Alg: schemas.AlgEdDSA, Reason: "enable", RequestedAt: t0}}}
	NewOrgKeyMaker(c, OrgKeyStore{Dir: dir}, time.Second, 0).Step(context.Background(), t0)
	svcKey, _ := GenerateSoftware(schemas.AlgES256)
	svc, _ := NewRing(svcKey)
	now := t0
	ok, err := NewOrgKeys(OrgKeysConfig{Directory: c, Service: svc, Dir: dir, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, own, err := ok.Sign(ctx, "acme", []byte(`{}`)); own || err != nil {
		t.Fatalf("a key on standby signed: %v %v", own, err)
	}
	if _, own, _ := ok.Sign(ctx, "globex", []byte(`{}`)); own {
		t.Fatal("an organization without keys has one")
	}
	now = t0.Add(time.Minute)
	kid := c.keys["acme"][0].Kid
	rc, own, err := ok.Sign(ctx, "acme", []byte(`{"a":1}`))
	if !own || err != nil || rc.Kid != kid || rc.Protected != schemas.ProtectedHeader(schemas.AlgEdDSA, kid) {
		t.Fatalf("active key: %+v %v %v", rc, own, err)
	}
	if err := ok.KeySet("acme").VerifyReceipt(rc); err != nil {
		t.Fatalf("verify: %v", err)
	}
	jwks := ok.JWKS("acme")
	if len(jwks.Keys) != 2 || jwks.Keys[0].Kid != kid || jwks.Keys[0].Org != "acme" || jwks.Keys[1].Kid != svc.ActiveKID() || jwks.Keys[1].Org != "" {
		t.Fatalf("jwks: %+v", jwks)
	}
	if org, found := ok.KidOrg(kid); !found || org != "acme" {
		t.Fatalf("kid's org: %q %v", org, found)
	}

	// A second key, not openable here (its file is elsewhere).
	c.pending = []schemas.OrgKeyRequest{{Org: "acme", ID: "okr_two", Alg: schemas.AlgES256, Reason: "manual", RequestedAt: now}}
	c.now = now
	NewOrgKeyMaker(c, OrgKeyStore{Dir: dir}, time.Second, 0).Step(ctx, now)
	second := c.keys["acme"][1]
	if err := os.Rename(filepath.Join(dir, "org-acme-"+second.Kid+".pem"), filepath.Join(t.TempDir(), "moved.pem")); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Minute)
	if _, own, err := ok.Sign(ctx, "acme", []byte(`{}`)); !own || !errors.Is(err, ErrOrgKeyUnavailable) {
		t.Fatalf("an active key that does not open: %v %v", own, err)
	}
	ok.prefetch()
	if _, kept := ok.keys[kid]; kept {
		t.Fatal("the retired key is kept open")
	}
}
