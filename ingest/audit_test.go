package ingest

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/schemas"
)

type fakeAudit struct {
	mu  sync.Mutex
	evs []schemas.AuditEvent
}

func (f *fakeAudit) Record(ev schemas.AuditEvent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.evs = append(f.evs, ev)
}

// Refused requests reach the audit log with who (a key's public id, never
// the key), from where, what and why; admitted ones do not, but for a
// key's first use from an address.
func TestRefusalsAreAudited(t *testing.T) {
	fa := &fakeAudit{}
	ts := startServer(t, func(_ *Config, d *Deps) { d.Audit = fa })
	ts.do("GET", "/v1/webhooks/deliveries", "", "").expect(t, "no key", 401, "unauthorized")
	ts.do("GET", "/v1/webhooks/deliveries", "cnk_ABCDEFGHIJKL.wrong-secret-1", "").expect(t, "a wrong secret", 401, "unauthorized")
	ts.do("GET", "/v1/webhooks/deliveries", "sk-live-not-ours-2", "").expect(t, "a foreign key", 401, "unauthorized")
	ts.do("GET", "/v1/webhooks/deliveries", "cnk_SECRETSECRET", "").expect(t, "a key of the id's shape without a dot", 401, "unauthorized")
	ts.do("POST", "/v1/sign", keyRead, `{"payload":{"a":1}}`).expect(t, "a read key signing", 403, "forbidden_scope")
	ts.do("GET", "/v1/webhooks/deliveries?endpoint_id=ep_one", keyRead, "").expect(t, "the read key again", 200, "")
	ts.do("GET", "/v1/webhooks/deliveries?endpoint_id=ep_one", keyA, "").expect(t, "an admitted request", 200, "")

	fa.mu.Lock()
	defer fa.mu.Unlock()
	type seen struct{ org, kind, id, reason, target string }
	var got []seen
	var firstUses []string
	for _, e := range fa.evs {
		if e.Action == "api_key.address" {
			firstUses = append(firstUses, e.Org+"/"+e.Actor.ID+"@"+e.Actor.Addr)
			continue
		}
		if e.Action != "access.refused" || e.Result != schemas.AuditDenied || e.Actor.Addr != "127.0.0.1" {
			t.Errorf("event %+v", e)
		}
		got = append(got, seen{e.Org, e.Actor.Kind, e.Actor.ID, e.Reason, e.Target})
		b, _ := json.Marshal(e)
		if strings.Contains(string(b), "wrong-secret-1") || strings.Contains(string(b), "not-ours-2") || strings.Contains(string(b), "SECRETSECRET") || strings.Contains(string(b), keyRead) {
			t.Errorf("a secret in the audit event %s", b)
		}
	}
	want := []seen{
		{"", "anonymous", "", "unauthorized", "GET /v1/webhooks/deliveries"},
		{"", "key", "cnk_ABCDEFGHIJKL", "unauthorized", "GET /v1/webhooks/deliveries"},
		{"", "key", "", "unauthorized", "GET /v1/webhooks/deliveries"},
		{"", "key", "", "unauthorized", "GET /v1/webhooks/deliveries"},
		{"a", "key", "key_read", "forbidden_scope", "POST /v1/sign"},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("audited\n%v\nwant\n%v", got, want)
	}
	// A key's first use from an address is announced once.
	if want := []string{"a/key_read@127.0.0.1"}; !slices.Equal(firstUses, want) {
		t.Fatalf("first uses %v, want %v", firstUses, want)
	}
}

type blockAll struct{ until time.Time }

func (b blockAll) Blocked(addr netip.Addr) (time.Time, bool) {
	return b.until, addr.String() == "127.0.0.1"
}

// A blocked address gets 403 address_blocked with Retry-After on every
// route, the probes excepted.
func TestBlockedAddress(t *testing.T) {
	ts := startServer(t, func(_ *Config, d *Deps) { d.Blocks = blockAll{time.Now().Add(90 * time.Second)} })
	for _, path := range []string{"/v1/webhooks/deliveries", "/.well-known/jwks.json", "/v1/nope"} {
		a := ts.do("GET", path, keyA, "").expect(t, path, 403, "address_blocked")
		if ra := a.header.Get("Retry-After"); ra != "90" && ra != "91" {
			t.Errorf("%s: Retry-After %q", path, ra)
		}
	}
	ts.do("GET", "/healthz", "", "").expect(t, "healthz", 200, "")
}
