package coordinator

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/certnode/certnode/internal/tenants"
)

// LimiterConfig configures a node's cluster-wide limiter.
type LimiterConfig struct {
	// Renew is how often the node renews its leases (LeaseRenew).
	Renew time.Duration
	// AcquireWait bounds how long a request of an organization the node
	// holds no share of waits for one (DefaultAcquireWait).
	AcquireWait time.Duration
	Registerer  prometheus.Registerer
}

// Validate reports every problem at once.
func (c *LimiterConfig) Validate() error {
	var errs []error
	if c.Renew <= 0 || c.Renew > LeaseTTL/2 {
		errs = append(errs, fmt.Errorf("coordinator limiter: renew must be within (0, %s]", LeaseTTL/2))
	}
	if c.AcquireWait < 0 {
		errs = append(errs, errors.New("coordinator limiter: the acquire wait must not be negative"))
	}
	return errors.Join(errs...)
}

// DefaultAcquireWait is LimiterConfig.AcquireWait's default.
const DefaultAcquireWait = time.Second

// Limiter holds one node's requests to each organization's limits across
// the cluster, with the method ingest's Limiter declares (as
// tenants.LocalLimiter does within a process). It admits from local token
// buckets sized to the shares the leader lends the node (see leases.go),
// and refuses with tenants.ErrMonthlyQuota once the organization's
// month-to-date count, cluster-wide, reaches its monthly allowance.
//
// The first request of an organization the node holds no share of (it was
// idle here for a second or more) waits for a renewal, one round trip to
// the leader, at most AcquireWait.
//
// Without the cluster, the node keeps its shares until they lapse
// (LeaseTTL), then admits a conservative share of each limit: 1/N of it, N
// being the nodes the leader last counted, never unlimited. If only some
// nodes lose the cluster, the others' shares grow meanwhile: the cluster
// then admits up to the limit plus the lost nodes' conservative shares.
//
// The monthly allowance can be overrun by what other nodes admitted since
// their last renewal (about one renewal interval of the organization's
// rate), and by the counts a leader that dies had not committed yet
// (admittedCommitEvery of traffic): small against a monthly allowance,
// and it keeps the check off the request path.
type Limiter struct {
	replica *Replica
	cfg     LimiterConfig
	id      string
	client  *http.Client
	now     func() time.Time
	log     *slog.Logger
	kick    chan struct{}

	mu        sync.Mutex
	orgs      map[string]*orgQuota
	reachable bool // the last renewal was answered (or none was tried)
	failing   bool // logged the failure already
	nodes     int  // the nodes the leader last counted
	// seq numbers the batches of admitted counts; batch is the one sent
	// and not yet answered (0: none), which the leader takes once.
	seq, batch uint64
	marks      [2]time.Time
	done       chan struct{} // closed when the renewal under way ends

	requests *prometheus.CounterVec
	share    *prometheus.GaugeVec
	failures prometheus.Counter
}

// orgQuota is one organization on this node.
type orgQuota struct {
	// asked counts the requests asked of the node in the current and the
	// previous renewal interval: its demand.
	asked [2]int64
	// rate and burst are the share held, lent until expires, or taken as
	// the fallback while the cluster is unreachable.
	rate, burst float64
	expires     time.Time
	fallback    bool
	bucket      bucket
	// month and used are the leader's count when it last answered;
	// pending and inflight the requests admitted here since, by month:
	// not yet sent, and sent in the batch not yet answered (resent as it
	// is, under its number, until it is).
	month             string
	used              int64
	pending, inflight map[string]int64
}

// NewLimiter makes a limiter that reads organizations' limits from r and
// reaches the cluster at r's addresses with r's node token; Run renews.
func NewLimiter(r *Replica, cfg LimiterConfig) (*Limiter, error) {
	if cfg.Renew == 0 {
		cfg.Renew = LeaseRenew
	}
	if cfg.AcquireWait == 0 {
		cfg.AcquireWait = DefaultAcquireWait
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	var b [6]byte
	rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	if host != "" {
		id = fmt.Sprintf("%.100s-%s", host, id)
	}
	now := time.Now()
	l := &Limiter{replica: r, cfg: cfg, id: id, client: HTTPClient(r.cfg.TLS, 2*time.Second), now: time.Now,
		log: slog.With("role", "coordinator-limiter"), kick: make(chan struct{}, 1), orgs: map[string]*orgQuota{},
		reachable: true, marks: [2]time.Time{now, now}, done: make(chan struct{}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "certnode_quota_requests_total",
			Help: "Requests of limited organizations, by result: admitted, over_rate, over_month."}, []string{"result"}),
		share: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "certnode_quota_share",
			Help: "This node's share of an organization's rate (requests/s) and burst, lent by the coordinator or taken while it is unreachable."}, []string{"org", "kind"}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "certnode_quota_lease_failures_total",
			Help: "Lease renewals the coordinator did not answer."}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(l.requests, l.share, l.failures)
	}
	return l, nil
}

// Take admits n requests of org now (0), or takes nothing and says how
// long to wait before asking again; tenants.ErrMonthlyQuota when the
// organization's monthly allowance is used up.
func (l *Limiter) Take(org string, n int) (time.Duration, error) {
	lim, ok := l.replica.Limits(org)
	if !ok || lim.RateLimit <= 0 && lim.MonthlyReceipts <= 0 {
		return 0, nil // unlimited (unknown organizations are refused earlier, by authentication)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	o := l.org(org)
	o.asked[0] += int64(n)
	if !l.holds(o) {
		if o = l.acquire(org, lim); o == nil {
			l.requests.WithLabelValues("over_rate").Inc()
			return l.cfg.Renew, nil // no share yet (a new leader lends none during its grace)
		}
	}
	now := l.now()
	month := monthOf(now)
	if lim.MonthlyReceipts > 0 && o.monthUsed(month)+int64(n) > lim.MonthlyReceipts {
		l.requests.WithLabelValues("over_month").Inc()
		return 0, tenants.ErrMonthlyQuota
	}
	if lim.RateLimit > 0 {
		if d := o.bucket.take(now, n); d != 0 {
			l.requests.WithLabelValues("over_rate").Inc()
			if d < 0 { // no share now; perhaps at the next renewal
				d = l.cfg.Renew
			}
			return d, nil
		}
	}
	o.pending[month] += int64(n)
	l.requests.WithLabelValues("admitted").Inc()
	return 0, nil
}

func (l *Limiter) org(id string) *orgQuota {
	o := l.orgs[id]
	if o == nil {
		o = &orgQuota{pending: map[string]int64{}, inflight: map[string]int64{}}
		l.orgs[id] = o
	}
	return o
}

// holds reports whether o has a share to admit from; l.mu is held.
func (l *Limiter) holds(o *orgQuota) bool {
	return o.fallback && !l.reachable || l.now().Before(o.expires)
}

// acquire waits (l.mu released) for a renewal that carries org, and takes
// the fallback share when the cluster cannot be reached. It returns nil
// when the leader lent nothing.
func (l *Limiter) acquire(org string, lim tenants.Limits) *orgQuota {
	deadline := l.now().Add(l.cfg.AcquireWait)
	// The renewal under way may have left before this request was
	// counted: wait for the next one too.
	for range 2 {
		wait := deadline.Sub(l.now())
		if !l.reachable || wait <= 0 {
			break
		}
		done := l.done
		select {
		case l.kick <- struct{}{}:
		default:
		}
		l.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-done:
		case <-t.C:
		}
		t.Stop()
		l.mu.Lock()
		if o := l.org(org); l.holds(o) {
			return o
		}
	}
	o := l.org(org)
	if l.reachable {
		return nil
	}
	nodes := float64(max(l.nodes, 1))
	burst, fill := float64(lim.EffectiveBurst())/nodes, 0.0
	if o.bucket.at.IsZero() { // a new bucket starts full; one in use keeps its tokens
		fill = burst
	}
	o.fallback, o.expires = true, time.Time{}
	l.setShare(org, o, lim.RateLimit/nodes, burst, fill)
	return o
}

// setShare resizes o's bucket to a share, keeping its tokens within it,
// and adds tokens.
func (l *Limiter) setShare(org string, o *orgQuota, rate, burst, tokens float64) {
	now := l.now()
	o.rate, o.burst = rate, burst
	o.bucket.advance(now)
	o.bucket.rate, o.bucket.cap = rate, burst
	if rate > 0 {
		o.bucket.cap = max(burst, 1) // a share under one request would admit none
	}
	o.bucket.tokens = min(o.bucket.cap, o.bucket.tokens+tokens)
	l.share.WithLabelValues(org, "rate").Set(rate)
	l.share.WithLabelValues(org, "burst").Set(burst)
}

func (o *orgQuota) monthUsed(month string) int64 {
	n := o.pending[month] + o.inflight[month]
	if o.month == month {
		n += o.used
	}
	return n
}

// Run renews the leases every Renew (and at once when a request needs a
// share), moving to the next address when one fails, until ctx ends;
// then it hands its shares back and reports what it admitted last.
func (l *Limiter) Run(ctx context.Context) error {
	tick := time.NewTicker(l.cfg.Renew)
	defer tick.Stop()
	addrs := l.replica.cfg.Addrs
	for i := 0; ; {
		if err := l.renew(ctx, addrs[i%len(addrs)], false); err != nil && ctx.Err() == nil {
			i++
		}
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			if err := l.renew(fctx, addrs[i%len(addrs)], true); err != nil {
				l.log.Warn("could not hand back the leases and last counts", "err", err)
			}
			return nil
		case <-tick.C:
		case <-l.kick:
		}
	}
}

// Close releases idle connections; Run hands the shares back.
func (l *Limiter) Close() { l.client.CloseIdleConnections() }

// renew sends the node's demand, holdings and counts and takes the
// answer; final reports no demand, giving every share back.
func (l *Limiter) renew(ctx context.Context, addr string, final bool) error {
	l.mu.Lock()
	sent := l.now()
	span := max(sent.Sub(l.marks[1]), l.cfg.Renew/2).Seconds()
	l.marks = [2]time.Time{sent, l.marks[0]}
	req := LeaseRequest{Node: l.id, Orgs: map[string]OrgDemand{}, Admitted: map[string]map[string]int64{}}
	if l.batch == 0 { // the last batch was answered: the pending counts make the next
		for _, o := range l.orgs {
			for month, n := range o.pending {
				o.inflight[month] += n
			}
			clear(o.pending)
		}
		l.seq++
		l.batch = l.seq
	}
	req.Seq, req.KeysUsed = l.batch, l.replica.KeysUsed()
	for id, o := range l.orgs {
		d := OrgDemand{Demand: float64(o.asked[0]+o.asked[1]) / span}
		o.asked = [2]int64{0, o.asked[0]}
		if final {
			d.Demand = 0
		}
		if sent.Before(o.expires) {
			o.bucket.advance(sent)
			d.Rate, d.Burst, d.Tokens = o.rate, o.burst, o.bucket.tokens
		}
		if d.Demand > 0 || d.Rate > 0 {
			req.Orgs[id] = d
		}
		for month, n := range o.inflight {
			if req.Admitted[month] == nil {
				req.Admitted[month] = map[string]int64{}
			}
			req.Admitted[month][id] += n
		}
	}
	done := l.done
	l.mu.Unlock()

	g, err := l.post(ctx, addr, &req)

	l.mu.Lock()
	defer l.mu.Unlock()
	defer func() {
		close(done)
		l.done = make(chan struct{})
	}()
	if err != nil {
		l.reachable = false
		l.failures.Inc()
		if !l.failing && ctx.Err() == nil {
			l.failing = true
			l.log.Warn("lease renewal failed; keeping the shares until they lapse, then a conservative share", "addr", addr, "err", err)
		}
		return err // the batch is resent as it is: the leader may have counted it
	}
	if l.failing {
		l.failing = false
		l.log.Info("lease renewal answered again", "addr", addr)
	}
	l.reachable, l.nodes, l.batch = true, g.Nodes, 0
	l.replica.Reported(req.KeysUsed)
	expires := sent.Add(time.Duration(g.TTLMillis) * time.Millisecond)
	for id, o := range l.orgs {
		clear(o.inflight)
		o.fallback = false
		s, ok := g.Orgs[id]
		if !ok {
			o.expires = time.Time{}
			l.setShare(id, o, 0, 0, 0)
			if o.asked == [2]int64{} && len(o.pending) == 0 {
				delete(l.orgs, id)
				l.share.DeleteLabelValues(id, "rate")
				l.share.DeleteLabelValues(id, "burst")
			}
			continue
		}
		o.expires, o.month, o.used = expires, g.Month, s.Used
		l.setShare(id, o, s.Rate, s.Burst, s.Tokens)
	}
	return nil
}

func (l *Limiter) post(ctx context.Context, addr string, lr *LeaseRequest) (*LeaseGrant, error) {
	body, err := json.Marshal(lr)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, "POST", BaseURL(addr)+"/v1/node/leases", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+l.replica.cfg.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := l.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d: %.200s", resp.StatusCode, b)
	}
	var g LeaseGrant
	if err := json.Unmarshal(b, &g); err != nil {
		return nil, fmt.Errorf("lease grant: %w", err)
	}
	if g.TTLMillis <= 0 {
		return nil, errors.New("lease grant without a ttl")
	}
	return &g, nil
}

// bucket is a token bucket: tokens accrue at rate up to cap.
type bucket struct {
	rate, cap, tokens float64
	at                time.Time
}

func (b *bucket) advance(now time.Time) {
	if !b.at.IsZero() && now.After(b.at) {
		b.tokens = min(b.cap, b.tokens+b.rate*now.Sub(b.at).Seconds())
	}
	b.at = now
}

// take takes n tokens (0), or says how long until there are n; -1 when
// there never will be at the current rate.
func (b *bucket) take(now time.Time, n int) time.Duration {
	b.advance(now)
	need := float64(n)
	if b.tokens >= need {
		b.tokens -= need
		return 0
	}
	if b.rate <= 0 {
		return -1
	}
	return max(time.Duration((need-b.tokens)/b.rate*float64(time.Second)), time.Millisecond)
}
