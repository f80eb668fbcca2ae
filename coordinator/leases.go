package coordinator

import (
	"fmt"
	"math"
	"net/http"
	"sync"
	"time"

	"github.com/certnode/certnode/internal/tenants"
)

// Cluster-wide rate limits. The leader lends each ingest node a share of
// every limited organization's rate and burst for LeaseTTL, in proportion
// to the node's recent demand; nodes renew every LeaseRenew (one request
// for all their organizations, reporting demand and what they admitted)
// and admit from local token buckets sized to their shares.
//
// Why leases rather than gubernator's GLOBAL behaviour: there one peer owns
// each limit, the others answer from a cached copy of its state and send
// it their hits every sync interval (100 ms by default), and the owner
// broadcasts the new state to every peer. Answers are fast, but every peer
// spends the same cached remainder until the next broadcast, so N peers can
// admit up to N times what was left (N bursts after an idle spell), and the
// traffic grows with hits: each key's hits go to its owner and each change
// to every peer. With leases the shares never sum to more than the limit,
// a node's bucket only gets tokens the leader knows are unused (the pool
// below), a node renews all its organizations in one request per interval
// whatever its traffic, and a node with no demand holds nothing, so its
// share goes to the others at their next renewal.

// Lease timing.
const (
	// LeaseTTL is how long a share holds without renewal.
	LeaseTTL = 3 * time.Second
	// LeaseRenew is how often nodes renew.
	LeaseRenew = 500 * time.Millisecond
	// leaseHeadroom: a node holds more than its fair slot (the limit over
	// the nodes) only up to this multiple of its demand, so that a node
	// starting to see an organization's traffic finds room at once instead
	// of waiting for the others to renew.
	leaseHeadroom = 2
	// admittedCommitEvery is how often the leader commits the month's
	// admitted counts through Raft. A leader that dies loses at most this
	// long of counts (the organization can then go over its monthly
	// allowance by as much); committing more often would push the whole
	// state to every node's copy more often.
	admittedCommitEvery = 5 * time.Second
	// maxLeaseOrgs bounds one renewal.
	maxLeaseOrgs = 100_000
)

// LeaseRequest is a node's renewal.
type LeaseRequest struct {
	// Node names the process; a restarted process is a new node, and the
	// leases of the old one lapse.
	Node string `json:"node"`
	// Orgs are the limited organizations the node was asked to admit
	// requests of lately, or holds a share of.
	Orgs map[string]OrgDemand `json:"orgs,omitempty"`
	// Admitted counts the requests admitted since the last answered
	// renewal, by month (UTC, "2006-01") and organization. Seq numbers
	// this batch: a node resends an unanswered batch as it was, and the
	// leader counts each number of a node once, so a lost answer never
	// counts twice.
	Admitted map[string]map[string]int64 `json:"admitted,omitempty"`
	Seq      uint64                      `json:"seq,omitempty"`
	// KeysUsed are the API keys used on the node since it last reported
	// them, with when (Unix seconds), for the keys' last-used times.
	KeysUsed map[string]int64 `json:"keys_used,omitempty"`
}

// OrgDemand is one organization as a node sees it.
type OrgDemand struct {
	// Demand is requests per second asked of the node lately, admitted
	// or not.
	Demand float64 `json:"demand"`
	// Rate and Burst are the share the node holds (a new leader learns
	// from them what its predecessor lent) and Tokens its bucket's level
	// (tokens over a smaller share return to the organization's pool).
	Rate   float64 `json:"rate,omitempty"`
	Burst  float64 `json:"burst,omitempty"`
	Tokens float64 `json:"tokens,omitempty"`
}

// LeaseGrant answers a renewal.
type LeaseGrant struct {
	// TTLMillis is how long the shares hold, counted by the node from
	// when it sent its request (before the leader counted it).
	TTLMillis int64 `json:"ttl_ms"`
	// Nodes counts the nodes holding leases: a node that cannot reach
	// the cluster once its leases lapse admits 1/Nodes of each limit.
	Nodes int `json:"nodes"`
	// Month is the leader's current month, which Used counts.
	Month string `json:"month"`
	// Orgs has every organization of the request that the node was asked
	// to admit requests of; the others it holds nothing of.
	Orgs map[string]Share `json:"orgs"`
}

// Share is a node's part of one organization's limits.
type Share struct {
	Rate  float64 `json:"rate"`
	Burst float64 `json:"burst"`
	// Tokens are to be added to the node's bucket: unused burst.
	Tokens float64 `json:"tokens"`
	// Used is the organization's admitted requests this month,
	// cluster-wide, as the leader knows them.
	Used int64 `json:"used"`
}

func (r *LeaseRequest) check() error {
	finite := func(v float64) bool { return v >= 0 && !math.IsInf(v, 0) && !math.IsNaN(v) }
	if r.Node == "" || len(r.Node) > 128 {
		return invalid("node must be 1-128 bytes")
	}
	if len(r.Orgs) > maxLeaseOrgs {
		return invalid("at most %d organizations per renewal", maxLeaseOrgs)
	}
	for id, d := range r.Orgs {
		if !idPattern.MatchString(id) || !finite(d.Demand) || !finite(d.Rate) || !finite(d.Burst) || !finite(d.Tokens) {
			return invalid("organization %q: an id and non-negative numbers", id)
		}
	}
	for month, counts := range r.Admitted {
		if err := checkAdmitted(month, counts); err != nil {
			return err
		}
	}
	if len(r.Admitted) > 0 && r.Seq == 0 {
		return invalid("admitted counts need a batch number (seq)")
	}
	if len(r.KeysUsed) > maxLeaseOrgs {
		return invalid("at most %d keys used per renewal", maxLeaseOrgs)
	}
	for id, at := range r.KeysUsed {
		if !keyIDPat.MatchString(id) || at <= 0 {
			return invalid("keys_used: %q needs a key id and a positive time", id)
		}
	}
	return nil
}

// monthOf names t's calendar month, UTC.
func monthOf(t time.Time) string { return t.UTC().Format("2006-01") }

// allocator is the leader's in-memory book of leases. It is rebuilt, empty,
// by every new leader: shares live only TTL, and the month's counts are
// read back from the state.
type allocator struct {
	ttl time.Duration
	// Until graceUntil the shares the previous leader lent may still be
	// in use: shares are then only renewed, at most at what nodes say
	// they hold, and nothing new is lent.
	graceUntil time.Time

	mu       sync.Mutex
	nodes    map[string]*leaseHolder
	pools    map[string]*burstPool
	totals   map[string]map[string]int64 // month -> organization -> admitted
	dirty    map[string]map[string]bool  // counts changed since the last commit
	batches  map[string]seenBatch        // node -> the last batch of counts taken
	keysUsed map[string]int64            // key id -> last used (Unix), not committed yet
	keysAt   time.Time                   // when key use was last committed
	lastGC   time.Time
	gcPeriod time.Duration
}

type leaseHolder struct {
	expires time.Time
	orgs    map[string]heldShare
}

type heldShare struct{ rate, burst, demand float64 }

// seenBatch is a node's last batch of counts taken, kept well past its
// leases so a late resend is still known.
type seenBatch struct {
	seq  uint64
	seen time.Time
}

// batchMemory is how long a node's last batch number is kept.
const batchMemory = 10 * time.Minute

// burstPool is the unlent part of an organization's bucket: it fills at the
// unlent rate up to the unlent burst. A node lent more burst gets the
// pool's tokens for it, never new ones, so tokens a node spent are not
// handed out again when its share moves to another node.
type burstPool struct {
	level       float64
	at          time.Time
	rate, burst float64 // the organization's limits when last seen
}

func newAllocator(now time.Time, ttl, grace time.Duration) *allocator {
	return &allocator{ttl: ttl, graceUntil: now.Add(grace), nodes: map[string]*leaseHolder{}, pools: map[string]*burstPool{},
		totals: map[string]map[string]int64{}, dirty: map[string]map[string]bool{}, batches: map[string]seenBatch{},
		keysUsed: map[string]int64{}, keysAt: now, gcPeriod: ttl}
}

// grant records a renewal and answers it. limits gives an active
// organization's limits, committed its count for a month in the state.
func (a *allocator) grant(now time.Time, req *LeaseRequest, limits func(org string) (tenants.Limits, bool),
	committed func(month, org string) int64) LeaseGrant {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(req.Admitted) > 0 {
		if req.Seq <= a.batches[req.Node].seq {
			req.Admitted = nil // a resend of a batch already taken
		} else {
			a.batches[req.Node] = seenBatch{seq: req.Seq, seen: now}
		}
	}
	for id, at := range req.KeysUsed {
		a.keysUsed[id] = max(a.keysUsed[id], at)
	}
	for month, counts := range req.Admitted {
		for org, n := range counts {
			a.used(month, org, committed)
			a.totals[month][org] += n
			if a.dirty[month] == nil {
				a.dirty[month] = map[string]bool{}
			}
			a.dirty[month][org] = true
		}
	}
	a.gc(now)
	grace := now.Before(a.graceUntil)
	prev := a.nodes[req.Node]
	if prev == nil {
		prev = &leaseHolder{orgs: map[string]heldShare{}}
		if grace { // what the previous leader lent
			for org, d := range req.Orgs {
				prev.orgs[org] = heldShare{rate: d.Rate, burst: d.Burst}
			}
		}
		a.nodes[req.Node] = prev
	}
	prev.expires = now.Add(a.ttl) // live while its shares are worked out
	month := monthOf(now)
	g := LeaseGrant{TTLMillis: a.ttl.Milliseconds(), Nodes: len(a.nodes), Month: month, Orgs: map[string]Share{}}
	next := map[string]heldShare{}
	for org, d := range req.Orgs {
		lim, ok := limits(org)
		if !ok {
			continue
		}
		var sh Share
		if lim.RateLimit > 0 {
			held, tokens := a.lend(now, req.Node, org, d, lim, len(a.nodes), grace)
			if d.Demand > 0 { // with no share too: the others' shares make room for it
				next[org] = held
			}
			sh.Rate, sh.Burst, sh.Tokens = held.rate, held.burst, tokens
		}
		if d.Demand > 0 {
			sh.Used = a.used(month, org, committed)
			g.Orgs[org] = sh
		}
	}
	for org := range prev.orgs {
		if _, kept := next[org]; !kept && a.pools[org] != nil {
			a.fill(org, a.pools[org], now) // the pool filled less while this share was lent
		}
	}
	prev.orgs = next
	return g
}

// lend works out a node's share of one organization and the tokens that
// move with it.
func (a *allocator) lend(now time.Time, node, org string, d OrgDemand, lim tenants.Limits, nodes int, grace bool) (heldShare, float64) {
	rate, burst := lim.RateLimit, float64(lim.EffectiveBurst())
	p := a.pools[org]
	if p == nil {
		// An organization nobody held: idle long enough for a full
		// bucket, unless a previous leader's shares may still be spent.
		p = &burstPool{at: now, rate: rate, burst: burst}
		if !grace {
			p.level = burst
		}
		a.pools[org] = p
	}
	a.fill(org, p, now)
	p.rate, p.burst = rate, burst
	had := a.nodes[node].orgs[org]
	var otherRate, otherBurst, otherDemand float64
	for id, h := range a.nodes {
		if s, ok := h.orgs[org]; ok && id != node {
			otherRate, otherBurst, otherDemand = otherRate+s.rate, otherBurst+s.burst, otherDemand+s.demand
		}
	}
	var s heldShare
	if d.Demand > 0 {
		r := rate * d.Demand / (d.Demand + otherDemand)
		r = min(r, max(leaseHeadroom*d.Demand, rate/float64(nodes)), max(0, rate-otherRate))
		// Burst follows the rate's fraction; never more than is unlent.
		b := min(burst*r/rate, max(0, burst-otherBurst))
		if grace {
			r, b = min(r, had.rate), min(b, had.burst)
		}
		s = heldShare{rate: r, burst: b, demand: d.Demand}
	}
	var give float64
	if s.burst > had.burst {
		give = min(s.burst-had.burst, p.level)
		p.level -= give
	} else {
		p.level += max(0, min(d.Tokens, had.burst)-s.burst)
	}
	p.level = min(p.level, max(0, burst-otherBurst-s.burst))
	return s, give
}

// fill adds what the pool gained since it last changed.
func (a *allocator) fill(org string, p *burstPool, now time.Time) {
	var lentRate, lentBurst float64
	for _, h := range a.nodes {
		s := h.orgs[org]
		lentRate, lentBurst = lentRate+s.rate, lentBurst+s.burst
	}
	gained := max(0, p.rate-lentRate) * now.Sub(p.at).Seconds()
	p.level, p.at = min(max(0, p.burst-lentBurst), p.level+max(0, gained)), now
}

// gc drops lapsed leases (their shares return to the pools, their tokens
// do not: they may have been spent), and, once per gcPeriod, full pools
// (a new pool starts full) and months before the previous one.
func (a *allocator) gc(now time.Time) {
	for id, h := range a.nodes {
		if now.Before(h.expires) {
			continue
		}
		for org := range h.orgs {
			if p := a.pools[org]; p != nil {
				a.fill(org, p, now)
			}
		}
		delete(a.nodes, id)
	}
	if now.Sub(a.lastGC) < a.gcPeriod {
		return
	}
	a.lastGC = now
	for node, b := range a.batches {
		if now.Sub(b.seen) > batchMemory {
			delete(a.batches, node)
		}
	}
	for org, p := range a.pools {
		if a.fill(org, p, now); p.level >= p.burst {
			delete(a.pools, org) // a new pool starts full
		}
	}
	keep := monthOf(time.Date(now.UTC().Year(), now.UTC().Month()-1, 1, 0, 0, 0, 0, time.UTC))
	for month := range a.totals {
		if month < keep {
			delete(a.totals, month)
			delete(a.dirty, month)
		}
	}
}

// used is an organization's count for a month, read from the state the
// first time.
func (a *allocator) used(month, org string, committed func(month, org string) int64) int64 {
	m := a.totals[month]
	if m == nil {
		m = map[string]int64{}
		a.totals[month] = m
	}
	v, ok := m[org]
	if !ok {
		v = committed(month, org)
		m[org] = v
	}
	return v
}

// toCommit takes the counts changed since the last commit, as totals.
func (a *allocator) toCommit() []*SetAdmitted {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []*SetAdmitted
	for month, orgs := range a.dirty {
		c := &SetAdmitted{Month: month, Counts: map[string]int64{}}
		for org := range orgs {
			c.Counts[org] = a.totals[month][org]
		}
		out = append(out, c)
	}
	a.dirty = map[string]map[string]bool{}
	return out
}

// keysToCommit is the key use gathered since the last commit, once
// keyUseCommitEvery has passed: last-used times need minutes, not
// seconds, and each commit is a Raft write.
func (a *allocator) keysToCommit(now time.Time) *SetKeysUsed {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.keysUsed) == 0 || now.Sub(a.keysAt) < keyUseCommitEvery {
		return nil
	}
	c := &SetKeysUsed{Used: a.keysUsed}
	a.keysUsed, a.keysAt = map[string]int64{}, now
	return c
}

// keyUseCommitEvery is how often the leader commits keys' last use.
var keyUseCommitEvery = time.Minute

// recommit marks a commit's counts changed again after it failed.
func (a *allocator) recommit(c *SetAdmitted) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.dirty[c.Month] == nil {
		a.dirty[c.Month] = map[string]bool{}
	}
	for org := range c.Counts {
		a.dirty[c.Month][org] = true
	}
}

// leaseServer answers POST /v1/node/leases on the leader and commits the
// admitted counts it gathers.
type leaseServer struct {
	s           *Server
	ttl, grace  time.Duration
	commitEvery time.Duration
	now         func() time.Time

	mu         sync.Mutex
	term       uint64
	alloc      *allocator
	lastCommit time.Time
	committing bool
}

func newLeaseServer(s *Server) *leaseServer {
	// A deposed leader may lend until it notices, about a heartbeat
	// timeout after losing the cluster: the grace covers that too.
	return &leaseServer{s: s, ttl: LeaseTTL, grace: LeaseTTL + s.node.cfg.HeartbeatTimeout,
		commitEvery: admittedCommitEvery, now: time.Now}
}

func (l *leaseServer) serve(w http.ResponseWriter, _ *http.Request, body []byte) {
	var req LeaseRequest
	if err := decodeBody(body, &req); err != nil {
		l.s.fail(w, err)
		return
	}
	if err := req.check(); err != nil {
		l.s.fail(w, err)
		return
	}
	// Counts are taken for this month and the last only (a node's clock
	// or a bad request must not open a future month, which would prune
	// the current one). Checked here, by the leader's clock, before
	// anything is proposed: apply stays clock-free.
	now := l.now()
	for month := range req.Admitted {
		if month != monthOf(now) && month != monthOf(now.AddDate(0, 0, -now.Day())) {
			l.s.fail(w, invalid("admitted counts for month %s: only this month's and the last are taken", month))
			return
		}
	}
	a, err := l.allocator()
	if err != nil {
		l.s.fail(w, err)
		return
	}
	var g LeaseGrant
	l.s.node.fsm.View(func(st *State) { g = a.grant(l.now(), &req, st.orgLimits, st.admitted) })
	l.maybeCommit(a)
	writeJSON(w, http.StatusOK, g)
}

// allocator is the book of the current term, new when this node has just
// become the leader: its state then first applies everything committed,
// so the counts it reads back are complete.
func (l *leaseServer) allocator() (*allocator, error) {
	term := l.s.node.raft.CurrentTerm()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.alloc != nil && l.term == term {
		return l.alloc, nil
	}
	if err := l.s.node.raft.Barrier(l.s.node.cfg.ApplyTimeout).Error(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotLeader, err)
	}
	l.term, l.alloc, l.lastCommit = term, newAllocator(l.now(), l.ttl, l.grace), l.now()
	return l.alloc, nil
}

// maybeCommit commits the counts in the background every commitEvery.
func (l *leaseServer) maybeCommit(a *allocator) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.committing || l.now().Sub(l.lastCommit) < l.commitEvery {
		return
	}
	l.committing, l.lastCommit = true, l.now()
	go func() {
		l.commit(a)
		l.mu.Lock()
		l.committing = false
		l.mu.Unlock()
	}()
}

func (l *leaseServer) commit(a *allocator) {
	for _, c := range a.toCommit() {
		if _, err := l.s.node.Propose(c); err != nil {
			l.s.log.Warn("could not commit admitted counts; retrying with the next", "month", c.Month, "err", err)
			a.recommit(c)
		}
	}
	if c := a.keysToCommit(l.now()); c != nil {
		if _, err := l.s.node.Propose(c); err != nil {
			// Last-used times are a convenience: the next report brings
			// newer ones.
			l.s.log.Warn("could not commit keys' last use", "err", err)
		}
	}
}

// orgLimits are an active organization's limits.
func (s *State) orgLimits(org string) (tenants.Limits, bool) {
	o := s.Orgs[org]
	if o == nil || o.Status != OrgActive {
		return tenants.Limits{}, false
	}
	return o.EffectiveLimits(), true
}

// admitted is an organization's committed count for a month.
func (s *State) admitted(month, org string) int64 { return s.Admitted[month][org] }
