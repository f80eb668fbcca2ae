package coordinator

import (
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/internal/testenv"
)

var acmeLimits = tenants.Limits{RateLimit: 100, Burst: 50}

func limitsOf(m map[string]tenants.Limits) func(string) (tenants.Limits, bool) {
	return func(org string) (tenants.Limits, bool) { l, ok := m[org]; return l, ok }
}

func noCounts(string, string) int64 { return 0 }

// leaseBook is the nodes' side of a test: each node's latest share, live
// until the TTL after it asked, as a node counts it.
type leaseBook struct {
	t     *testing.T
	a     *allocator
	lim   tenants.Limits
	held  map[string]OrgDemand // by node: its share and its (assumed spent) tokens
	until map[string]time.Time
}

func newLeaseBook(t *testing.T, a *allocator) *leaseBook {
	return &leaseBook{t: t, a: a, lim: acmeLimits, held: map[string]OrgDemand{}, until: map[string]time.Time{}}
}

// renew has node ask for a share with demand, reporting what it holds,
// and checks that the live shares stay within the limit.
func (b *leaseBook) renew(now time.Time, node string, demand float64) Share {
	b.t.Helper()
	d := b.held[node]
	if !now.Before(b.until[node]) {
		d = OrgDemand{}
	}
	d.Demand = demand
	g := b.a.grant(now, &LeaseRequest{Node: node, Orgs: map[string]OrgDemand{"acme": d}}, limitsOf(map[string]tenants.Limits{"acme": b.lim}), noCounts)
	s := g.Orgs["acme"]
	b.held[node] = OrgDemand{Rate: s.Rate, Burst: s.Burst}
	b.until[node] = now.Add(time.Duration(g.TTLMillis) * time.Millisecond)
	b.check(now)
	return s
}

func (b *leaseBook) check(now time.Time) {
	b.t.Helper()
	var rate, burst float64
	for node, d := range b.held {
		if now.Before(b.until[node]) {
			rate, burst = rate+d.Rate, burst+d.Burst
		}
	}
	if rate > b.lim.RateLimit+1e-9 || burst > float64(b.lim.Burst)+1e-9 {
		b.t.Fatalf("at %s live shares sum to %.3f/s and a burst of %.3f, over %g and %d: %+v",
			now.Sub(t0), rate, burst, b.lim.RateLimit, b.lim.Burst, b.held)
	}
}

// Shares never sum to more than the rate and burst, follow the nodes'
// demand, and a node that goes idle, or away, leaves its share to the
// others within a renewal, or a TTL.
func TestLeaseSharesFollowDemand(t *testing.T) {
	a := newAllocator(t0, LeaseTTL, 0)
	b := newLeaseBook(t, a)
	now := t0
	s := b.renew(now, "a", 200)
	if s.Rate != 100 || s.Burst != 50 || s.Tokens != 50 {
		t.Fatalf("a lone node: %+v, want the whole rate and a full burst", s)
	}
	if s := b.renew(now.Add(time.Millisecond), "b", 200); s.Rate != 0 {
		t.Fatalf("b while a holds everything: %+v", s)
	}
	// Renewals in a staggered order converge to shares proportional to
	// demand (3:1), the limit held at every step.
	for i := range 6 {
		now = t0.Add(time.Duration(i+1) * LeaseRenew)
		b.renew(now, "a", 300)
		b.renew(now.Add(100*time.Millisecond), "b", 100)
	}
	if a, bb := b.held["a"].Rate, b.held["b"].Rate; fmt.Sprintf("%.1f %.1f", a, bb) != "75.0 25.0" {
		t.Fatalf("shares at demand 300:100 are %.2f and %.2f, want 75 and 25", a, bb)
	}
	if a, bb := b.held["a"].Burst, b.held["b"].Burst; fmt.Sprintf("%.1f %.1f", a, bb) != "37.5 12.5" {
		t.Fatalf("bursts at demand 300:100 are %.2f and %.2f, want 37.5 and 12.5", a, bb)
	}
	// b goes idle: its share is given back at its next renewal and a has
	// all of it at its own.
	now = now.Add(LeaseRenew)
	if s := b.renew(now, "b", 0); s.Rate != 0 {
		t.Fatalf("an idle node kept %+v", s)
	}
	if s := b.renew(now.Add(100*time.Millisecond), "a", 300); s.Rate != 100 {
		t.Fatalf("a after b went idle: %+v, want the whole rate", s)
	}
	// c takes half; then c goes away without a word: its share returns
	// once its lease lapsed.
	for range 4 {
		now = now.Add(LeaseRenew)
		b.renew(now, "a", 200)
		b.renew(now.Add(100*time.Millisecond), "c", 200)
	}
	if r := b.held["c"].Rate; r < 45 {
		t.Fatalf("c at equal demand holds %.2f", r)
	}
	gone := now.Add(100 * time.Millisecond)
	for now.Before(gone.Add(LeaseTTL + LeaseRenew)) {
		now = now.Add(LeaseRenew)
		b.renew(now, "a", 200)
	}
	if r := b.held["a"].Rate; r != 100 {
		t.Fatalf("a a TTL after c went away holds %.2f, want 100", r)
	}
}

// A node starting to see an organization's traffic finds room at once
// when the others hold more than their fair slot and need less.
func TestLeaseRoomForNewcomers(t *testing.T) {
	a := newAllocator(t0, LeaseTTL, 0)
	b := newLeaseBook(t, a)
	b.renew(t0, "idle", 0) // a third node, with no traffic of acme
	b.renew(t0, "a", 10)
	if s := b.renew(t0.Add(time.Millisecond), "b", 10); s.Rate < 30 || s.Tokens < 1 {
		t.Fatalf("a newcomer beside a node using a tenth of the limit: %+v", s)
	}
}

// Random demands, renewal orders, idle spells and nodes that vanish:
// the live shares never sum to more than the limit, and tokens handed out
// never exceed the burst plus what the unlent rate made.
func TestLeaseSharesStayWithinTheLimit(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	a := newAllocator(t0, LeaseTTL, 0)
	b := newLeaseBook(t, a)
	nodes := []string{"a", "b", "c", "d"}
	var given, lentSeconds float64 // tokens handed out; rate x time lent
	now, last := t0, t0
	for range 2000 {
		now = now.Add(time.Duration(rng.IntN(300)) * time.Millisecond)
		for node, d := range b.held {
			end := b.until[node]
			if now.Before(end) {
				end = now
			}
			if last.Before(end) {
				lentSeconds += d.Rate * end.Sub(last).Seconds()
			}
		}
		last = now
		node := nodes[rng.IntN(len(nodes))]
		if node == "d" && rng.IntN(4) > 0 {
			continue // d mostly stays away, its leases lapsing
		}
		demand := float64(rng.IntN(4)) * 80
		given += b.renew(now, node, demand).Tokens
	}
	// Tokens come only from the pool, which fills at the unlent rate.
	elapsed := now.Sub(t0).Seconds()
	if bound := float64(acmeLimits.Burst) + acmeLimits.RateLimit*elapsed - lentSeconds; given > bound+1e-6 {
		t.Fatalf("handed out %.1f tokens; the burst and the unlent rate allow %.1f", given, bound)
	}
}

// A new leader renews what nodes say they hold but lends nothing new
// until the previous leader's shares have lapsed, so no moment has both
// leaders' shares over the limit.
func TestLeaseLeaderChange(t *testing.T) {
	old := newAllocator(t0, LeaseTTL, 0)
	b := newLeaseBook(t, old)
	for i := range 4 {
		now := t0.Add(time.Duration(i) * LeaseRenew)
		b.renew(now, "a", 200)
		b.renew(now, "b", 200)
		b.renew(now, "gone", 200) // cut off from the new leader
	}
	changed := t0.Add(4 * LeaseRenew)
	grace := LeaseTTL + 500*time.Millisecond
	b.a = newAllocator(changed, LeaseTTL, grace)
	var lentC bool
	for now := changed; now.Before(changed.Add(3 * grace)); now = now.Add(LeaseRenew) {
		sa := b.renew(now, "a", 400)
		b.renew(now, "b", 200)
		sc := b.renew(now, "c", 200)
		inGrace := now.Before(changed.Add(grace))
		switch {
		case inGrace && (sc.Rate > 0 || sa.Rate > 100.0/3+1e-9):
			t.Fatalf("during the grace: a %+v, c %+v; want nothing new lent", sa, sc)
		case !inGrace && sc.Rate > 0:
			lentC = true
		}
	}
	if !lentC || b.held["a"].Rate <= 100.0/3 {
		t.Fatalf("after the grace: %+v; want shares following demand again", b.held)
	}
}

// Admitted counts add up across nodes, are committed as totals that only
// ever raise the stored ones, and a new leader reads them back.
func TestAdmittedCounts(t *testing.T) {
	month := monthOf(t0)
	a := newAllocator(t0, LeaseTTL, 0)
	lim := limitsOf(map[string]tenants.Limits{"acme": acmeLimits})
	committed := func(m, org string) int64 {
		if m == month && org == "acme" {
			return 100
		}
		return 0
	}
	a.grant(t0, &LeaseRequest{Node: "a", Seq: 1, Admitted: map[string]map[string]int64{month: {"acme": 5}}}, lim, committed)
	b := func(seq uint64, n int64) LeaseGrant {
		return a.grant(t0, &LeaseRequest{Node: "b", Seq: seq, Orgs: map[string]OrgDemand{"acme": {Demand: 1}},
			Admitted: map[string]map[string]int64{month: {"acme": n}}}, lim, committed)
	}
	if g := b(1, 7); g.Month != month || g.Orgs["acme"].Used != 112 {
		t.Fatalf("grant %+v, want 112 used in %s", g, month)
	}
	// A batch resent after a lost answer is taken once; the next counts.
	if g := b(1, 7); g.Orgs["acme"].Used != 112 {
		t.Fatalf("a resent batch counted again: %+v", g)
	}
	if g := b(2, 3); g.Orgs["acme"].Used != 115 {
		t.Fatalf("the next batch: %+v, want 115", g)
	}
	cs := a.toCommit()
	if len(cs) != 1 || cs[0].Month != month || cs[0].Counts["acme"] != 115 || len(a.toCommit()) != 0 {
		t.Fatalf("to commit: %+v", cs)
	}
	f := newFSM()
	for _, c := range []*SetAdmitted{cs[0], {Month: month, Counts: map[string]int64{"acme": 90}}} {
		if err := applyTo(t, f, c); err != nil {
			t.Fatal(err)
		}
	}
	var st *State
	f.View(func(s *State) { st = s })
	if got := st.admitted(month, "acme"); got != 115 {
		t.Fatalf("stored %d after a lower total, want 115", got)
	}
	next := newAllocator(t0, LeaseTTL, 0)
	g := next.grant(t0, &LeaseRequest{Node: "a", Orgs: map[string]OrgDemand{"acme": {Demand: 1}}}, lim, st.admitted)
	if g.Orgs["acme"].Used != 115 {
		t.Fatalf("a new leader reads %d used, want 115", g.Orgs["acme"].Used)
	}
	// Counts of a month two back are dropped; bad ones are refused.
	later := monthOf(t0.AddDate(0, 2, 0))
	if err := applyTo(t, f, &SetAdmitted{Month: later, Counts: map[string]int64{"acme": 1}}); err != nil {
		t.Fatal(err)
	}
	f.View(func(s *State) {
		if _, ok := s.Admitted[month]; ok || s.Admitted[later]["acme"] != 1 {
			t.Fatalf("admitted after two months: %v", s.Admitted)
		}
	})
	for _, bad := range []*SetAdmitted{{Month: "2026-13", Counts: map[string]int64{"acme": 1}},
		{Month: month, Counts: map[string]int64{"acme": -1}}, {Month: month, Counts: map[string]int64{"Not An Org": 1}}, {Month: month}} {
		if err := applyTo(t, f, bad); err == nil {
			t.Fatalf("%+v accepted", bad)
		}
	}
}

// POST /v1/node/leases: the node token only, requests checked, nothing
// new lent during a first leader's grace, and counts committed through
// Raft are read back by a new leader's book.
func TestLeaseAPI(t *testing.T) {
	n := startNode(t, "solo", t.TempDir(), true, "")
	testenv.WaitFor(t, "leader", 10*time.Second, func() (bool, string) { return n.node.IsLeader(), "" })
	if code, body := n.do(t, "POST", "/v1/admin/orgs", testAdmin, `{"id":"acme","name":"Acme","limits":{"rate_limit":100,"burst":50,"monthly_receipts":1000}}`); code != 201 {
		t.Fatalf("org: %d %s", code, body)
	}
	month := monthOf(time.Now())
	body := `{"node":"n1","seq":1,"orgs":{"acme":{"demand":10}},"admitted":{"` + month + `":{"acme":7}}}`
	if code, _ := n.do(t, "POST", "/v1/node/leases", testAdmin, body); code != 401 {
		t.Fatalf("the admin token was taken for the node token: %d", code)
	}
	for _, bad := range []string{`{"node":""}`, `{"node":"n","orgs":{"acme":{"demand":-1}}}`, `{"node":"n","admitted":{"May":{"acme":1}}}`, `{"node":"n","extra":1}`,
		`{"node":"n","admitted":{"` + month + `":{"acme":1}}}`,   // counts without a batch number
		`{"node":"n","seq":1,"admitted":{"2099-01":{"acme":1}}}`, // a future month would prune this one
		`{"node":"n","seq":1,"admitted":{"2001-01":{"acme":1}}}`} {
		if code, resp := n.do(t, "POST", "/v1/node/leases", testNode, bad); code != 400 {
			t.Fatalf("%s: %d %s", bad, code, resp)
		}
	}
	code, resp := n.do(t, "POST", "/v1/node/leases", testNode, body)
	var g LeaseGrant
	if code != 200 || json.Unmarshal([]byte(resp), &g) != nil {
		t.Fatalf("renewal: %d %s", code, resp)
	}
	// The cluster has just started: its first leader lends nothing new
	// during its grace, but counts.
	if s := g.Orgs["acme"]; s.Rate != 0 || s.Used != 7 || g.Nodes != 1 || g.TTLMillis != LeaseTTL.Milliseconds() {
		t.Fatalf("grant %+v", g)
	}
	// Another book on the same leader, past its grace, commits what it
	// counted; a new leader's book reads it back, and lends.
	ls := newLeaseServer(n.Server)
	ls.grace = 0
	ls.serve(httptest.NewRecorder(), nil, []byte(body))
	ls.commit(mustAlloc(t, ls))
	var committed int64
	n.node.fsm.View(func(st *State) { committed = st.admitted(month, "acme") })
	if committed != 7 {
		t.Fatalf("committed %d, want 7", committed)
	}
	next := newLeaseServer(n.Server)
	next.grace = 0
	rec := httptest.NewRecorder()
	next.serve(rec, nil, []byte(`{"node":"n2","orgs":{"acme":{"demand":10}}}`))
	g = LeaseGrant{}
	if err := json.Unmarshal(rec.Body.Bytes(), &g); err != nil {
		t.Fatalf("%v: %s", err, rec.Body)
	}
	if s := g.Orgs["acme"]; s.Used != 7 || s.Rate != 100 || s.Burst != 50 || s.Tokens != 50 {
		t.Fatalf("a new book's grant: %+v", g)
	}
}

func mustAlloc(t *testing.T, ls *leaseServer) *allocator {
	t.Helper()
	a, err := ls.allocator()
	if err != nil {
		t.Fatal(err)
	}
	return a
}
