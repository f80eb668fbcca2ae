package ingest

import (
	"context"
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

type fakePrivacy struct{ erased []schemas.ErasureRequest }

func (f *fakePrivacy) Subject(_ context.Context, _, pointer, value string) (*schemas.SubjectData, error) {
	return &schemas.SubjectData{SubjectPointer: pointer, Subject: value, Receipts: []schemas.SubjectReceipt{}}, nil
}

func (f *fakePrivacy) Erase(_ context.Context, _ string, r schemas.ErasureRequest, _ string) (*schemas.Erasure, error) {
	f.erased = append(f.erased, r)
	mode, _ := r.Mode()
	return &schemas.Erasure{Mode: mode, Rows: map[string]uint64{"certnode.results": 2}}, nil
}

type pointers map[string]string

func (p pointers) SubjectPointer(org string) string { return p[org] }

// Privacy requests: a subject needs the organization's pointer, a request
// asks for one kind of erasure, and both are audited with the subject
// hashed.
func TestPrivacyRequests(t *testing.T) {
	fa, fp := &fakeAudit{}, &fakePrivacy{}
	ts := startServer(t, func(_ *Config, d *Deps) {
		d.Audit, d.Privacy, d.SubjectPointers = fa, fp, pointers{"a": "/customer/email"}
	})
	ts.do("POST", "/v1/privacy/subjects", keyAdmin, `{"subject":"ada@example.com"}`).expect(t, "subject access", 200, "")
	ts.do("POST", "/v1/privacy/subjects", keyAdmin, `{}`).expect(t, "no subject", 400, "invalid_subject")
	ts.do("POST", "/v1/privacy/subjects", keyRead, `{"subject":"x"}`).expect(t, "a read key", 403, "forbidden_scope")
	ts.do("POST", "/v1/privacy/erasures", keyAdmin, `{"subject":"ada@example.com"}`).expect(t, "erasure", 202, "")
	ts.do("POST", "/v1/privacy/erasures", keyAdmin, `{"subject":"x","all":true}`).expect(t, "two kinds", 400, "invalid_erasure")
	ts.do("POST", "/v1/privacy/erasures", keyAdmin, `{"from":"2026-02-01T00:00:00Z","to":"2026-01-01T00:00:00Z"}`).expect(t, "backwards", 400, "invalid_erasure")
	ts.do("POST", "/v1/privacy/erasures", keyAdmin, `{"everything":true}`).expect(t, "an unknown member", 400, "malformed_json")
	if len(fp.erased) != 1 || fp.erased[0].Subject != "ada@example.com" {
		t.Fatalf("erasures %+v", fp.erased)
	}
	fa.mu.Lock()
	defer fa.mu.Unlock()
	var actions []string
	for _, ev := range fa.evs {
		if ev.Action == "api_key.address" || ev.Action == "access.refused" {
			continue
		}
		actions = append(actions, ev.Action)
		if b, _ := json.Marshal(ev); strings.Contains(string(b), "ada@") || !strings.HasPrefix(ev.Target, "hmac:") {
			t.Errorf("audit event %s", b)
		}
	}
	if want := []string{"privacy.subject_access", "erasure.subject"}; !slices.Equal(actions, want) {
		t.Fatalf("audited %v, want %v", actions, want)
	}
}
