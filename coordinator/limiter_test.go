package coordinator

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/certnode/certnode/internal/tenants"
)

// simCluster is a leader on a simulated clock: an allocator behind a
// loopback HTTP server, and limiters that renew when the test says so.
type simCluster struct {
	t      *testing.T
	mu     sync.Mutex
	now    time.Time
	alloc  *allocator
	limits map[string]tenants.Limits
	srv    *httptest.Server
	down   atomic.Bool  // answer 503
	lose   atomic.Bool  // take the renewal, then answer 503 (a lost answer)
	calls  atomic.Int64 // renewals received
}

func newSimCluster(t *testing.T, limits map[string]tenants.Limits) *simCluster {
	c := &simCluster{t: t, now: t0, alloc: newAllocator(t0, LeaseTTL, 0), limits: limits}
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.calls.Add(1)
		var req LeaseRequest
		if c.down.Load() || json.UnmarshalRead(r.Body, &req) != nil || req.check() != nil {
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
			return
		}
		g := c.alloc.grant(c.clock(), &req, limitsOf(c.limits), noCounts)
		if c.lose.Load() {
			http.Error(w, "answer lost", http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, http.StatusOK, g)
	}))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *simCluster) clock() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *simCluster) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// limiter is one node, following a replica that holds the cluster's
// organizations with their limits.
func (c *simCluster) limiter() *Limiter {
	c.t.Helper()
	r, err := NewReplica(ReplicaConfig{Addrs: []string{c.srv.Listener.Addr().String()}, Token: testNode})
	if err != nil {
		c.t.Fatal(err)
	}
	st := newState()
	for id, lim := range c.limits {
		st.Orgs[id] = &Org{ID: id, Status: OrgActive, Limits: lim}
	}
	r.state.Store(newReplicaState(&NodeState{Index: 1, State: st}, nil))
	r.synced.Store(time.Now().UnixNano())
	l, err := NewLimiter(r, LimiterConfig{AcquireWait: time.Nanosecond})
	if err != nil {
		c.t.Fatal(err)
	}
	l.now = c.clock
	return l
}

func (c *simCluster) renew(l *Limiter) error {
	return l.renew(context.Background(), l.replica.cfg.Addrs[0], false)
}

// simNode is a node of a run and the requests/s it is sent.
type simNode struct {
	l    *Limiter
	rate float64
}

// run sends each node its rate of requests of org for d, renewing each
// node every LeaseRenew (staggered), and returns the requests admitted.
func (c *simCluster) run(org string, d time.Duration, nodes ...simNode) int {
	const step = time.Millisecond
	admitted := 0
	for at := time.Duration(0); at < d; at += step {
		for i, n := range nodes {
			if (at+time.Duration(i)*LeaseRenew/time.Duration(len(nodes)))%LeaseRenew == 0 {
				c.renew(n.l)
			}
			if n.rate > 0 && at%time.Duration(float64(time.Second)/n.rate) == 0 {
				if wait, err := n.l.Take(org, 1); wait == 0 && err == nil {
					admitted++
				}
			}
		}
		c.advance(step)
	}
	return admitted
}

// Two nodes, each sent twice the limit, together admit the rate for the
// time plus the burst, not more, and close to it; when one goes idle the
// other has the whole rate within a second or two.
func TestLimiterHoldsTheLimitAcrossNodes(t *testing.T) {
	c := newSimCluster(t, map[string]tenants.Limits{"acme": acmeLimits, "free": {}})
	a, b := c.limiter(), c.limiter()
	const seconds = 10
	got := c.run("acme", seconds*time.Second, simNode{a, 200}, simNode{b, 200})
	want := acmeLimits.RateLimit*seconds + float64(acmeLimits.Burst)
	t.Logf("admitted %d of 4000 requests over 10 s; the limit allows %.0f", got, want)
	if float64(got) > want+2 || float64(got) < 0.9*want {
		t.Fatalf("admitted %d; want %.0f (at most 2 over, one request per node, and within 10%%)", got, want)
	}
	c.run("acme", 2*time.Second, simNode{a, 200}, simNode{b, 0})
	if r := a.orgs["acme"].rate; r != acmeLimits.RateLimit {
		t.Fatalf("a holds %.1f/s two seconds after b went idle, want all %g", r, acmeLimits.RateLimit)
	}
	if _, ok := b.orgs["acme"]; ok {
		t.Fatal("b still tracks acme two seconds after its last request")
	}
	// An unlimited organization costs no renewal and is always admitted.
	calls := c.calls.Load()
	for range 100 {
		if wait, err := a.Take("free", 1); wait != 0 || err != nil {
			t.Fatalf("unlimited: %v %v", wait, err)
		}
	}
	c.renew(a)
	if c.calls.Load() != calls+1 {
		t.Fatal("unlimited requests caused renewals")
	}
	if v := counterValue(a.requests.WithLabelValues("over_rate")); v == 0 {
		t.Fatal("refusals over the rate were not counted")
	}
}

// A node stops at the monthly allowance; two nodes stop once their
// renewals have told the leader, having gone over by what they admitted
// since their last renewal at most.
func TestLimiterMonthlyQuota(t *testing.T) {
	c := newSimCluster(t, map[string]tenants.Limits{"capped": {MonthlyReceipts: 30}})
	a, b := c.limiter(), c.limiter()
	take := func(l *Limiter) error {
		_, err := l.Take("capped", 1)
		return err
	}
	for _, l := range []*Limiter{a, b} {
		take(l) // no share yet: refused, but asked for at the renewal
		c.renew(l)
	}
	admitted := 0
	for take(a) == nil {
		admitted++
		if admitted > 100 {
			t.Fatal("never refused")
		}
	}
	if admitted != 30 || !errors.Is(take(a), tenants.ErrMonthlyQuota) {
		t.Fatalf("a alone admitted %d of an allowance of 30", admitted)
	}
	// b has not heard of a's requests yet: it admits until the next
	// renewals, then both refuse.
	if err := take(b); err != nil {
		t.Fatalf("b before the renewals: %v", err)
	}
	c.renew(a)
	c.renew(b)
	for _, l := range []*Limiter{a, b} {
		if err := take(l); !errors.Is(err, tenants.ErrMonthlyQuota) {
			t.Fatalf("after the renewals: %v, want the monthly quota", err)
		}
	}
	// A new month starts from zero.
	c.advance(40 * 24 * time.Hour)
	c.renew(a)
	if err := take(a); err != nil {
		t.Fatalf("a new month: %v", err)
	}
}

// Without the leader a node keeps its share until it lapses, then admits
// its conservative share, 1/N of the limit, never more.
func TestLimiterWithoutTheCluster(t *testing.T) {
	c := newSimCluster(t, map[string]tenants.Limits{"acme": acmeLimits})
	a, b := c.limiter(), c.limiter()
	c.run("acme", 3*time.Second, simNode{a, 200}, simNode{b, 200})
	c.down.Store(true)
	before := counterValue(a.failures)
	c.run("acme", LeaseTTL-LeaseRenew-time.Millisecond, simNode{a, 200})
	if o := a.orgs["acme"]; o.fallback || o.rate != 50 {
		t.Fatalf("before the lease lapsed: %+v, want the share lent", o)
	}
	got := c.run("acme", 10*time.Second, simNode{a, 200})
	if !a.orgs["acme"].fallback || counterValue(a.failures) <= before {
		t.Fatal("no fallback, or the failures were not counted")
	}
	t.Logf("admitted %d in 10 s on the fallback share", got)
	if max := acmeLimits.RateLimit/2*10 + float64(acmeLimits.Burst)/2 + 1; float64(got) > max || got < 400 {
		t.Fatalf("admitted %d in 10 s on the fallback share; want about 50/s, at most %.0f", got, max)
	}
	c.down.Store(false)
	c.run("acme", time.Second, simNode{a, 200})
	if a.orgs["acme"].fallback {
		t.Fatal("still on the fallback share with the cluster back")
	}
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	c.Write(&m)
	return m.GetCounter().GetValue()
}

// A renewal whose answer is lost after the leader counted it is resent as
// it was, and counted once; counts admitted meanwhile go in the next batch.
func TestLimiterCountsOnceAfterALostAnswer(t *testing.T) {
	c := newSimCluster(t, map[string]tenants.Limits{"capped": {MonthlyReceipts: 1000}})
	a := c.limiter()
	a.Take("capped", 1) // no share yet; asked for at the renewal
	c.renew(a)
	taken := func(n int) {
		for range n {
			if _, err := a.Take("capped", 1); err != nil {
				t.Fatal(err)
			}
		}
	}
	counted := func() int64 {
		c.alloc.mu.Lock()
		defer c.alloc.mu.Unlock()
		return c.alloc.totals[monthOf(t0)]["capped"]
	}
	taken(10)
	c.lose.Store(true)
	if err := c.renew(a); err == nil {
		t.Fatal("a lost answer went unnoticed")
	}
	if counted() != 10 {
		t.Fatalf("the leader counted %d of the first batch, want 10", counted())
	}
	taken(5)
	c.renew(a) // lost again: the same batch
	c.lose.Store(false)
	if err := c.renew(a); err != nil { // the same batch, answered
		t.Fatal(err)
	}
	if got := counted(); got != 10 {
		t.Fatalf("after resends of a counted batch: %d, want 10", got)
	}
	if err := c.renew(a); err != nil { // the 5 admitted meanwhile
		t.Fatal(err)
	}
	if got := counted(); got != 15 {
		t.Fatalf("after the next batch: %d, want 15", got)
	}
}
