package coordinator

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/testenv"
)

// fakeTXT answers TXT lookups from a table, as a DNS server would: a name
// it lacks is NXDOMAIN.
type fakeTXT struct {
	mu      sync.Mutex
	records map[string][]string
}

// testDNS is every test node's resolver.
var testDNS = &fakeTXT{records: map[string][]string{}}

func (f *fakeTXT) set(name string, values ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.records[name] = values
}

func (f *fakeTXT) LookupTXT(_ context.Context, name string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.records[name], nil
}

func TestNormalizeDomain(t *testing.T) {
	for in, want := range map[string]string{
		"API.Example.COM":     "api.example.com",
		"api.example.com.":    "api.example.com",
		" verify.example.io ": "verify.example.io",
		"bücher.example":      "xn--bcher-kva.example",
		"a-b.c-d.example":     "a-b.c-d.example",
	} {
		if got, err := NormalizeDomain(in); err != nil || got != want {
			t.Errorf("NormalizeDomain(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "localhost", "127.0.0.1", "[::1]", "*.example.com", "-a.example.com", "a-.example.com",
		"a..example.com", "a_b.example.com", "exa mple.com", strings.Repeat("a", 64) + ".example.com",
		strings.Repeat("abcdefghi.", 26) + "com", "a.example.com/x", "a.example.com:443"} {
		if got, err := NormalizeDomain(in); err == nil || !errors.Is(err, ErrInvalid) {
			t.Errorf("NormalizeDomain(%q) = %q, %v; want an invalid error", in, got, err)
		}
	}
}

// TestDomainLifecycle: added pending with the TXT record to publish;
// verified only when the record holds the token; bound to its
// organization in replicas; a name belongs to one organization; HTTP
// verification is proved by the certificate an ingest node reports; a
// late report never undoes a newer state; removed, it binds nothing.
func TestDomainLifecycle(t *testing.T) {
	n := soloNode(t)
	op := operator(t, n)
	for _, org := range []string{"acme", "globex"} {
		op.must(201, "POST", "/v1/admin/orgs", `{"id":"`+org+`","name":"`+org+`"}`)
	}
	r, ctx := follow(t, ReplicaConfig{Addrs: []string{n.Addr()}, Token: testNode, Wait: time.Second})

	var d domainView
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/acme/domains", `{"name":"API.Lifecycle.Example"}`)), &d)
	if d.Name != "api.lifecycle.example" || d.State != DomainPending || d.Verification != VerifyDNS || d.DNSRecord == nil ||
		d.DNSRecord.Name != "_certnode-challenge.api.lifecycle.example" || d.DNSRecord.Value != "certnode-verify="+d.Token || len(d.Token) != 32 {
		t.Fatalf("added: %+v %+v", d, d.DNSRecord)
	}
	op.must(409, "POST", "/v1/orgs/acme/domains", `{"name":"api.lifecycle.example"}`)
	if out := op.must(409, "POST", "/v1/orgs/globex/domains", `{"name":"api.lifecycle.example."}`); !strings.Contains(out, "is claimed already") {
		t.Fatalf("taken: %s", out)
	}
	op.must(400, "POST", "/v1/orgs/acme/domains", `{"name":"*.lifecycle.example"}`)
	op.must(400, "POST", "/v1/orgs/acme/domains", `{"name":"b.lifecycle.example","verification":"email"}`)

	// No record, then a wrong one: 422, still pending, with the reason.
	out := op.must(422, "POST", "/v1/orgs/acme/domains/api.lifecycle.example/verify", "")
	if !strings.Contains(out, `"verification_failed"`) || !strings.Contains(out, "no TXT record at _certnode-challenge.api.lifecycle.example") {
		t.Fatalf("no record: %s", out)
	}
	testDNS.set("_certnode-challenge.api.lifecycle.example", "certnode-verify=somebody-else")
	if out := op.must(422, "POST", "/v1/orgs/acme/domains/api.lifecycle.example/verify", ""); !strings.Contains(out, "somebody-else") {
		t.Fatalf("wrong record: %s", out)
	}
	if _, ok := r.DomainOrg("api.lifecycle.example"); ok {
		t.Fatal("an unverified domain binds requests")
	}
	testDNS.set("_certnode-challenge.api.lifecycle.example", "v=spf1 -all", "certnode-verify="+d.Token)
	d = domainView{}
	json.Unmarshal([]byte(op.must(200, "POST", "/v1/orgs/acme/domains/API.lifecycle.example/verify", "")), &d)
	if d.State != DomainVerified || d.VerifiedAt.IsZero() || d.Reason != "" {
		t.Fatalf("verified: %+v", d)
	}
	testenv.WaitFor(t, "the replica binds the domain", 5*time.Second, func() (bool, string) {
		org, ok := r.DomainOrg("API.lifecycle.example.:8443")
		return ok && org == "acme", org
	})

	// An ingest node's reports: issuing, active with the certificate; a
	// late failure of the issuance that succeeded is refused.
	rep := func(c SetDomainState) error { c.Org = "acme"; return r.ReportDomain(ctx, c) }
	if err := rep(SetDomainState{Name: "api.lifecycle.example", State: DomainIssuing, From: []string{DomainVerified}}); err != nil {
		t.Fatal(err)
	}
	na := time.Now().Add(90 * 24 * time.Hour).UTC().Truncate(time.Second)
	if err := rep(SetDomainState{Name: "api.lifecycle.example", State: DomainActive, Serial: "0a1b", NotAfter: na}); err != nil {
		t.Fatal(err)
	}
	if err := rep(SetDomainState{Name: "api.lifecycle.example", State: DomainFailed, Reason: "late", From: []string{DomainIssuing}}); err == nil || !strings.Contains(err.Error(), "409") {
		t.Fatalf("a late report: %v", err)
	}
	if err := rep(SetDomainState{Name: "api.lifecycle.example", State: DomainVerified}); err == nil || !strings.Contains(err.Error(), "400") {
		t.Fatalf("a node reporting verified: %v", err)
	}
	d = domainView{}
	json.Unmarshal([]byte(op.must(200, "GET", "/v1/orgs/acme/domains/api.lifecycle.example", "")), &d)
	if d.State != DomainActive || d.CertSerial != "0a1b" || !d.CertNotAfter.Equal(na) {
		t.Fatalf("active: %+v", d)
	}
	op.must(404, "GET", "/v1/orgs/globex/domains/api.lifecycle.example", "")

	// HTTP verification: issuing on request, proved by the certificate.
	var h domainView
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/globex/domains", `{"name":"verify.lifecycle.example","verification":"http"}`)), &h)
	if h.DNSRecord != nil || h.State != DomainPending {
		t.Fatalf("http domain: %+v", h)
	}
	json.Unmarshal([]byte(op.must(200, "POST", "/v1/orgs/globex/domains/verify.lifecycle.example/verify", "")), &h)
	if h.State != DomainIssuing || !h.Issuable() || h.Bound() {
		t.Fatalf("http verify: %+v", h)
	}
	if err := r.ReportDomain(ctx, SetDomainState{Name: "verify.lifecycle.example", Org: "globex", State: DomainFailed, Reason: "CA: connection refused", From: []string{DomainIssuing}}); err != nil {
		t.Fatal(err)
	}
	h = domainView{}
	json.Unmarshal([]byte(op.must(200, "GET", "/v1/orgs/globex/domains/verify.lifecycle.example", "")), &h)
	if h.State != DomainFailed || h.Issuable() || h.Bound() || h.Reason != "CA: connection refused" {
		t.Fatalf("http failed: %+v", h)
	}
	json.Unmarshal([]byte(op.must(200, "POST", "/v1/orgs/globex/domains/verify.lifecycle.example/verify", "")), &h)
	// A certificate from before the claim (an earlier holder's) proves
	// nothing; one the CA issued since does.
	if err := r.ReportDomain(ctx, SetDomainState{Name: "verify.lifecycle.example", Org: "globex", State: DomainActive, Serial: "ee",
		NotBefore: h.CreatedAt.Add(-time.Hour)}); err == nil || !strings.Contains(err.Error(), "predates its claim") {
		t.Fatalf("a leftover certificate: %v", err)
	}
	if err := r.ReportDomain(ctx, SetDomainState{Name: "verify.lifecycle.example", Org: "globex", State: DomainActive, Serial: "ff",
		NotBefore: time.Now()}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "the http domain bound", 5*time.Second, func() (bool, string) {
		org, ok := r.DomainOrg("verify.lifecycle.example")
		return ok && org == "globex", org
	})
	if ds, ok := r.Domains(); !ok || len(ds) != 2 || ds["verify.lifecycle.example"].VerifiedAt.IsZero() {
		t.Fatalf("domains: %+v", ds)
	}

	op.must(204, "DELETE", "/v1/orgs/acme/domains/api.lifecycle.example", "")
	op.must(404, "DELETE", "/v1/orgs/acme/domains/api.lifecycle.example", "")
	testenv.WaitFor(t, "the removed domain unbound", 5*time.Second, func() (bool, string) {
		_, ok := r.DomainOrg("api.lifecycle.example")
		return !ok, ""
	})
	var audit struct {
		Events []AuditEvent `json:"events"`
	}
	json.Unmarshal([]byte(op.must(200, "GET", "/v1/orgs/acme/audit?limit=1000", "")), &audit)
	var actions []string
	for _, e := range audit.Events {
		if strings.HasPrefix(e.Action, "domain.") {
			actions = append(actions, e.Action+":"+e.Actor.Kind)
		}
	}
	want := []string{"domain.add:operator", "domain.pending:operator", "domain.pending:operator", "domain.verified:operator",
		"domain.issuing:node", "domain.active:node", "domain.delete:operator"}
	if !slices.Equal(actions, want) {
		t.Fatalf("audit: %v, want %v", actions, want)
	}
}

// TestCertStore: values, "directories", lists and deletes as certmagic's
// Storage needs them; leases exclusive until released or lapsed, renewed
// only by their holder.
func TestCertStore(t *testing.T) {
	n := soloNode(t)
	r, ctx := follow(t, ReplicaConfig{Addrs: []string{n.Addr()}, Token: testNode, Wait: time.Second})
	cs := r.CertStore()

	if _, err := cs.Load(ctx, "certificates/ca/a.example/a.example.crt"); !errors.Is(err, ErrCertNotFound) {
		t.Fatalf("load of nothing: %v", err)
	}
	for _, k := range []string{"certificates/ca/a.example/a.example.crt", "certificates/ca/a.example/a.example.key",
		"certificates/ca/b.example/b.example.crt", "acme/ca/users/x/x.json", "certificatesx/other"} {
		if err := cs.Store(ctx, k, []byte("v:"+k)); err != nil {
			t.Fatal(err)
		}
	}
	if v, err := cs.Load(ctx, "certificates/ca/a.example/a.example.key"); err != nil || string(v) != "v:certificates/ca/a.example/a.example.key" {
		t.Fatalf("load: %q %v", v, err)
	}
	if _, _, terminal, err := cs.Stat(ctx, "certificates/ca/a.example"); err != nil || terminal {
		t.Fatalf("stat of a directory: %v %v", terminal, err)
	}
	if mod, size, terminal, err := cs.Stat(ctx, "certificates/ca/b.example/b.example.crt"); err != nil || !terminal || size != int64(len("v:certificates/ca/b.example/b.example.crt")) || mod.IsZero() {
		t.Fatalf("stat of a value: %v %v %v %v", mod, size, terminal, err)
	}
	if _, _, _, err := cs.Stat(ctx, "certificates/c"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("stat of a partial name: %v", err)
	}
	if ks, err := cs.List(ctx, "certificates/ca", false); err != nil || !slices.Equal(ks, []string{"certificates/ca/a.example", "certificates/ca/b.example"}) {
		t.Fatalf("list: %v %v", ks, err)
	}
	if ks, err := cs.List(ctx, "certificates", true); err != nil || len(ks) != 6 || slices.Contains(ks, "certificatesx/other") {
		t.Fatalf("recursive list: %v %v", ks, err)
	}
	if err := cs.Delete(ctx, "certificates/ca/a.example"); err != nil {
		t.Fatal(err)
	}
	if ks, err := cs.List(ctx, "certificates/ca", false); err != nil || !slices.Equal(ks, []string{"certificates/ca/b.example"}) {
		t.Fatalf("list after delete: %v %v", ks, err)
	}
	if _, err := cs.List(ctx, "nothing/here", false); !errors.Is(err, ErrCertNotFound) {
		t.Fatalf("list of nothing: %v", err)
	}
	if err := cs.Store(ctx, "/bad//key", nil); err == nil {
		t.Fatal("a malformed key stored")
	}

	a, b := strings.Repeat("a", 24), strings.Repeat("b", 24)
	lock := func(token string, ttl time.Duration, renew bool) (bool, error) {
		return cs.Lock(ctx, "issue_cert_a.example", token, ttl, renew)
	}
	if ok, err := lock(a, time.Minute, false); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if ok, err := lock(b, time.Minute, false); ok || err != nil {
		t.Fatalf("second holder: %v %v", ok, err)
	}
	if ok, err := lock(b, time.Minute, true); ok || err != nil {
		t.Fatalf("renewed by another: %v %v", ok, err)
	}
	if err := cs.Unlock(ctx, "issue_cert_a.example", b); err == nil {
		t.Fatal("released by another")
	}
	if ok, err := lock(a, 200*time.Millisecond, true); !ok || err != nil {
		t.Fatalf("renewed by its holder: %v %v", ok, err)
	}
	testenv.WaitFor(t, "the lease lapses", 5*time.Second, func() (bool, string) {
		ok, err := lock(b, time.Minute, false)
		return ok, fmt.Sprint(err)
	})
	if ok, err := lock(a, time.Minute, true); ok || err != nil {
		t.Fatal("a lapsed holder renewed the lease another took")
	}
	if err := cs.Unlock(ctx, "issue_cert_a.example", b); err != nil {
		t.Fatal(err)
	}
	if ok, err := lock(a, time.Minute, false); !ok || err != nil {
		t.Fatalf("after the release: %v %v", ok, err)
	}
}

// FuzzNormalizeDomain: whatever a caller sends, a name accepted is
// canonical (normalizing it again changes nothing) and DNS-safe.
func FuzzNormalizeDomain(f *testing.F) {
	for _, s := range []string{"API.example.com.", "bücher.example", "xn--bcher-kva.example", "*.a.b", "1.2.3.4", "a..b", "\u200b.example"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		n, err := NormalizeDomain(in)
		if err != nil {
			return
		}
		if again, err := NormalizeDomain(n); err != nil || again != n {
			t.Fatalf("%q -> %q -> %q, %v", in, n, again, err)
		}
		if len(n) > 253 || strings.Trim(n, "abcdefghijklmnopqrstuvwxyz0123456789-.") != "" {
			t.Fatalf("%q -> %q", in, n)
		}
	})
}

// An unproved claim holds a name for ClaimTTL only: then another
// organization may claim it, so that nobody can sit on a name.
func TestDomainClaimLapses(t *testing.T) {
	st := newState()
	t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	for _, o := range []string{"acme", "globex"} {
		st.Orgs[o] = &Org{ID: o, Name: o, Status: OrgActive, Plan: DefaultPlan}
	}
	claim := func(org string, at time.Time) *AddDomain {
		return &AddDomain{Meta: Meta{At: at}, Domain: Domain{Name: "shop.example.com", Org: org, Verification: VerifyDNS, State: DomainPending,
			Token: strings.Repeat("t", 32), CreatedAt: at, UpdatedAt: at}}
	}
	first := claim("acme", t0)
	if err := first.validate(st); err != nil {
		t.Fatal(err)
	}
	first.apply(st)
	if err := claim("globex", t0.Add(ClaimTTL-time.Hour)).validate(st); !errors.Is(err, ErrConflict) {
		t.Fatalf("a fresh claim of another: %v", err)
	}
	late := claim("globex", t0.Add(ClaimTTL+time.Hour))
	if err := late.validate(st); err != nil {
		t.Fatalf("a lapsed claim of another: %v", err)
	}
	late.apply(st)
	if st.Domains["shop.example.com"].Org != "globex" {
		t.Fatal("the lapsed claim stayed")
	}
	// A proved domain never lapses.
	d := *st.Domains["shop.example.com"]
	d.State, d.VerifiedAt = DomainActive, t0.Add(ClaimTTL+2*time.Hour)
	st.Domains[d.Name] = &d
	if err := claim("acme", t0.Add(10*ClaimTTL)).validate(st); !errors.Is(err, ErrConflict) {
		t.Fatalf("a proved domain claimed by another: %v", err)
	}
}

// No organization may claim the service's own names or names under them.
func TestReservedDomains(t *testing.T) {
	n := startNodeCfg(t, Config{ID: "solo", RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", DataDir: t.TempDir(), Bootstrap: true,
		ReservedDomains: []string{"api.certnode.example"}})
	testenv.WaitFor(t, "leader", 10*time.Second, func() (bool, string) { return n.node.IsLeader(), "" })
	op := operator(t, n)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"acme"}`)
	for _, name := range []string{"api.certnode.example", "API.Certnode.Example.", "eu.api.certnode.example"} {
		if out := op.must(400, "POST", "/v1/orgs/acme/domains", `{"name":"`+name+`","verification":"http"}`); !strings.Contains(out, "reserved") {
			t.Fatalf("%s: %s", name, out)
		}
	}
	op.must(201, "POST", "/v1/orgs/acme/domains", `{"name":"notapi.certnode.example.org"}`)
}
