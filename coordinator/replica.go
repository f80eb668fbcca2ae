package coordinator

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/certnode/certnode/internal/apicustom"
	"github.com/certnode/certnode/internal/brand"
	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
)

// ReplicaConfig configures the local copy of the state another tier keeps.
type ReplicaConfig struct {
	// Addrs are coordinator HTTP addresses (https://host:port for TLS);
	// any member answers. TLS checks their certificates (tlsconf.Client;
	// nil: the system's roots).
	Addrs []string
	TLS   *tls.Config
	Token string // the node token
	// MaxStale is how long the copy keeps serving without reaching the
	// cluster; past it every key is refused (fail closed).
	MaxStale time.Duration
	// Wait is how long one blocking query waits for a change.
	Wait       time.Duration
	Registerer prometheus.Registerer
}

// Defaults for ReplicaConfig. An idle blocking query returns after Wait,
// so the staleness the copy reports stays within Wait while the cluster
// answers; one request per node every few seconds costs nothing.
const (
	DefaultMaxStale = 5 * time.Minute
	DefaultWait     = 5 * time.Second
)

// LogValue keeps the token out of logs.
func (c ReplicaConfig) LogValue() slog.Value {
	return slog.GroupValue(slog.Any("addrs", c.Addrs), slog.Duration("max_stale", c.MaxStale))
}

// Validate reports every problem at once.
func (c *ReplicaConfig) Validate() error {
	var errs []error
	if len(c.Addrs) == 0 {
		errs = append(errs, errors.New("coordinator: at least one address is required"))
	}
	if len(c.Token) < 16 {
		errs = append(errs, errors.New("coordinator: the node token ($CERTNODE_NODE_TOKEN) must be at least 16 bytes"))
	}
	if c.MaxStale <= 0 || c.Wait <= 0 || c.Wait > maxWait {
		errs = append(errs, fmt.Errorf("coordinator: max stale must be positive and wait within (0, %s]", maxWait))
	}
	return errors.Join(errs...)
}

// Replica follows the coordinator's state with blocking queries and
// answers from its copy: no request waits on the coordinator. It
// implements ingest's Authenticator.
type Replica struct {
	cfg    ReplicaConfig
	client *http.Client
	state  atomic.Pointer[replicaState]
	synced atomic.Int64 // UnixNano of the last answer from the cluster
	now    func() time.Time
	log    *slog.Logger
	age    prometheus.GaugeFunc
	index  prometheus.GaugeFunc
}

// replicaState is a copy of the state with the keys requests may use
// indexed once, so a request does no parsing or allocation.
type replicaState struct {
	index  uint64
	keys   map[string]usableKey   // by key id: unrevoked keys of active organizations
	orgs   map[string]*replicaOrg // active organizations
	hooks  map[string]*orgHooks   // webhook settings of every organization
	quota  []QuotaAlert           // alerts not announced yet
	reps   map[string]*Report     // saved reports of active organizations, by id
	blocks map[string]Block       // addresses kept out of ingest
	// domains are the custom domains, by name.
	domains map[string]*Domain
	// retention is each organization's retention in days (absent: none).
	retention map[string]int
	orgKeys   replicaOrgKeys // organizations' own signing keys
	// api is every organization's API settings (apisettings.go).
	api map[string]*apicustom.Settings
}

// orgHooks is what the dispatcher needs of an organization.
type orgHooks struct {
	endpoints []*WebhookEndpoint
	schedule  []time.Duration
}

type replicaOrg struct {
	subject  string // the subject pointer
	limits   tenants.Limits
	plans    []tenants.PlanPeriod
	producer map[string]*ProducerKey // unrevoked producer keys, by id
	brand    brand.Org
}

type usableKey struct {
	hash    []byte
	expires time.Time
	tenant  *tenants.Tenant // shared by every request with the key; never changed
	use     *keyUse         // kept across copies of the state
}

// keyUse is when a key was last used here (Unix seconds), and the last
// such time reported to the cluster.
type keyUse struct{ last, sent atomic.Int64 }

func newReplicaState(st *NodeState, prev *replicaState) *replicaState {
	rs := &replicaState{index: st.Index, keys: make(map[string]usableKey, len(st.State.Keys)), orgs: map[string]*replicaOrg{},
		hooks: map[string]*orgHooks{}, quota: pendingQuotaAlerts(st.State.QuotaAlerts), reps: map[string]*Report{}, blocks: map[string]Block{},
		retention: map[string]int{}, domains: map[string]*Domain{}, api: map[string]*apicustom.Settings{}}
	for addr, b := range st.State.Blocks {
		rs.blocks[addr] = *b
	}
	var prevKeys *replicaOrgKeys
	if prev != nil {
		prevKeys = &prev.orgKeys
	}
	rs.orgKeys = newReplicaOrgKeys(st.State.SigningKeys, prevKeys)
	for id, o := range st.State.Orgs {
		if o.Settings.RetentionDays > 0 {
			rs.retention[id] = o.Settings.RetentionDays
		}
		h := &orgHooks{}
		for _, d := range o.Settings.WebhookRetrySchedule {
			if v, err := time.ParseDuration(d); err == nil { // checked when set
				h.schedule = append(h.schedule, v)
			}
		}
		rs.hooks[id] = h
		rs.api[id] = replicaAPI(o)
		if o.Status == OrgActive {
			rs.orgs[id] = &replicaOrg{limits: o.EffectiveLimits(), plans: o.PlanHistory, producer: map[string]*ProducerKey{}, subject: o.Settings.SubjectPointer,
				brand: brand.Org{ID: id, Name: o.Name, Branding: o.Settings.Branding(), Maintenance: o.Maintenance}}
		}
	}
	maps.Copy(rs.domains, st.State.Domains)
	for id, r := range st.State.Reports {
		if rs.orgs[r.Org] != nil {
			rs.reps[id] = r
		}
	}
	for _, e := range st.State.Endpoints {
		if h := rs.hooks[e.Org]; h != nil {
			h.endpoints = append(h.endpoints, e)
		}
	}
	for _, h := range rs.hooks {
		slices.SortFunc(h.endpoints, func(a, b *WebhookEndpoint) int { return strings.Compare(a.ID, b.ID) })
	}
	for id, k := range st.State.ProducerKeys {
		if o := rs.orgs[k.Org]; o != nil && k.RevokedAt.IsZero() {
			o.producer[id] = k
		}
	}
	for id, k := range st.State.Keys {
		org := rs.orgs[k.Org]
		if org == nil || !k.RevokedAt.IsZero() || !k.SuspendedAt.IsZero() {
			continue
		}
		t := &tenants.Tenant{ID: k.Org, Scopes: k.Scopes, KeyID: id, Limits: org.limits, Defaults: k.Defaults,
			APIVersion: keyVersion(k, rs.api[k.Org])}
		for _, c := range k.CIDRs {
			if p, err := netip.ParsePrefix(c); err == nil { // checked when the key was made
				t.CIDRs = append(t.CIDRs, p.Masked())
			}
		}
		use := new(keyUse)
		if prev != nil && prev.keys[id].use != nil {
			use = prev.keys[id].use
		}
		rs.keys[id] = usableKey{hash: []byte(k.Hash), expires: k.ExpiresAt, tenant: t, use: use}
	}
	return rs
}

// NewReplica makes an empty replica; Run fills it.
func NewReplica(cfg ReplicaConfig) (*Replica, error) {
	if cfg.MaxStale == 0 {
		cfg.MaxStale = DefaultMaxStale
	}
	if cfg.Wait == 0 {
		cfg.Wait = DefaultWait
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Replica{cfg: cfg, client: HTTPClient(cfg.TLS, cfg.Wait+10*time.Second), now: time.Now,
		log: slog.With("role", "coordinator-replica")}
	r.age = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "certnode_coordinator_state_age_seconds",
		Help: "Seconds since the coordinator last answered (the local copy's staleness)."}, func() float64 {
		if s := r.synced.Load(); s != 0 {
			return r.now().Sub(time.Unix(0, s)).Seconds()
		}
		return -1
	})
	r.index = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "certnode_coordinator_state_index",
		Help: "Raft index of the local copy of the coordinator's state."}, func() float64 {
		if st := r.state.Load(); st != nil {
			return float64(st.index)
		}
		return 0
	})
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(r.age, r.index)
	}
	return r, nil
}

// Run follows the state until ctx ends, moving to the next address when
// one fails.
func (r *Replica) Run(ctx context.Context) error {
	var index uint64
	backoff := 100 * time.Millisecond
	for i := 0; ctx.Err() == nil; {
		addr := r.cfg.Addrs[i%len(r.cfg.Addrs)]
		st, err := r.fetch(ctx, addr, index)
		if err == nil && st.Index < index {
			// A node restarting, or far behind, answers with an older
			// state: it proves nothing about the current one.
			err = fmt.Errorf("state index %d is behind the copy's %d", st.Index, index)
		}
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			r.log.Warn("coordinator unreachable; serving the last known state", "addr", addr, "err", err,
				"age", r.Age().Round(time.Millisecond), "max_stale", r.cfg.MaxStale)
			i++
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		r.synced.Store(r.now().UnixNano())
		if st.Index > index || r.state.Load() == nil {
			r.state.Store(newReplicaState(st, r.state.Load()))
			index = st.Index
		}
	}
	return nil
}

func (r *Replica) fetch(ctx context.Context, addr string, index uint64) (*NodeState, error) {
	url := fmt.Sprintf("%s/v1/node/state?index=%d&wait=%s", BaseURL(addr), index, r.cfg.Wait)
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+r.cfg.Token)
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d: %.200s", resp.StatusCode, body)
	}
	var st NodeState
	if err := json.Unmarshal(body, &st); err != nil || st.State == nil {
		return nil, fmt.Errorf("state: %v", err)
	}
	return &st, nil
}

// Age is how long ago the cluster last answered (the copy's staleness).
func (r *Replica) Age() time.Duration {
	s := r.synced.Load()
	if s == 0 {
		return time.Duration(1<<63 - 1)
	}
	return r.now().Sub(time.Unix(0, s))
}

// Ready fails until the copy is filled, and once it is older than
// MaxStale: /readyz says so.
func (r *Replica) Ready(context.Context) error {
	switch age := r.Age(); {
	case r.state.Load() == nil:
		return errors.New("coordinator: no state received yet")
	case age > r.cfg.MaxStale:
		return fmt.Errorf("coordinator: unreachable for %s (over %s): refusing every key", age.Round(time.Second), r.cfg.MaxStale)
	}
	return nil
}

// KeyOrg names the organization of an unrevoked API key's id, so that a
// refusal naming the id (a wrong secret) reaches the audit log of the
// organization under attack.
func (r *Replica) KeyOrg(id string) (string, bool) {
	st := r.current()
	if st == nil {
		return "", false
	}
	k, ok := st.keys[id]
	if !ok {
		return "", false
	}
	return k.tenant.ID, true
}

// Authenticate resolves an API key from the local copy: a known key of an
// active organization, not revoked or expired. A copy older than MaxStale
// admits nothing, and an unknown key is never admitted.
func (r *Replica) Authenticate(key string) (*tenants.Tenant, bool) {
	st := r.current()
	if st == nil {
		return nil, false
	}
	key = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(key), "Bearer "))
	id, _, ok := strings.Cut(key, ".")
	if !ok {
		return nil, false
	}
	k, ok := st.keys[id]
	if !ok || subtle.ConstantTimeCompare([]byte(HashKey(key)), k.hash) != 1 {
		return nil, false
	}
	now := r.now()
	if !k.expires.IsZero() && !now.Before(k.expires) {
		return nil, false
	}
	if sec := now.Unix(); k.use.last.Load() != sec {
		k.use.last.Store(sec)
	}
	return k.tenant, true
}

// KeysUsed are the keys used here since they were last reported, with
// when (Unix seconds); Reported marks them reported once the cluster has
// them.
func (r *Replica) KeysUsed() map[string]int64 {
	st := r.state.Load()
	if st == nil {
		return nil
	}
	var out map[string]int64
	for id, k := range st.keys {
		if last := k.use.last.Load(); last > k.use.sent.Load() {
			if out == nil {
				out = map[string]int64{}
			}
			out[id] = last
		}
	}
	return out
}

// Reported records that the cluster has the times of used.
func (r *Replica) Reported(used map[string]int64) {
	st := r.state.Load()
	if st == nil {
		return
	}
	for id, at := range used {
		if k, ok := st.keys[id]; ok && k.use.sent.Load() < at {
			k.use.sent.Store(at)
		}
	}
}

// current is the copy requests may use: nil before the first state and
// once it is older than MaxStale.
func (r *Replica) current() *replicaState {
	st := r.state.Load()
	if st == nil || r.Age() > r.cfg.MaxStale {
		return nil
	}
	return st
}

// ProducerSecret finds the secret of an active organization's producer
// key that is neither revoked nor past its rotation overlap (the worker's
// ProducerKeys).
func (r *Replica) ProducerSecret(org, keyID string) ([]byte, bool) {
	st := r.current()
	if st == nil {
		return nil, false
	}
	o := st.orgs[org]
	if o == nil {
		return nil, false
	}
	k := o.producer[keyID]
	if k == nil || !k.usableAt(r.now()) {
		return nil, false
	}
	return []byte(k.Secret), true
}

// Limits are an active organization's limits: its plan's, with its
// overrides.
func (r *Replica) Limits(org string) (tenants.Limits, bool) {
	st := r.current()
	if st == nil || st.orgs[org] == nil {
		return tenants.Limits{}, false
	}
	return st.orgs[org].limits, true
}

// SubjectPointer is where an active organization's payloads hold a data
// subject's identifier ("": not set).
func (r *Replica) SubjectPointer(org string) string {
	st := r.current()
	if st == nil || st.orgs[org] == nil {
		return ""
	}
	return st.orgs[org].subject
}

// Retentions are the organizations' data retention settings, in days (an
// organization without one keeps its data).
func (r *Replica) Retentions() map[string]int {
	st := r.current()
	if st == nil {
		return nil
	}
	return st.retention
}

// Plans are the plans an active organization has been on, oldest first.
func (r *Replica) Plans(org string) []tenants.PlanPeriod {
	st := r.current()
	if st == nil || st.orgs[org] == nil {
		return nil
	}
	return st.orgs[org].plans
}

// WebhookEndpoints are an organization's endpoints, disabled ones too, by
// id; ok is false until the first state arrived. A stale copy still
// answers: a dispatcher goes on delivering while the cluster is away, and
// must not take a missing state for deleted endpoints. The endpoints are
// shared: callers must not change them.
func (r *Replica) WebhookEndpoints(org string) (eps []*WebhookEndpoint, ok bool) {
	st := r.state.Load()
	if st == nil {
		return nil, false
	}
	if h := st.hooks[org]; h != nil {
		return h.endpoints, true
	}
	return nil, true
}

// Report is an active organization's saved report.
func (r *Replica) Report(org, id string) (schemas.Report, bool) {
	st := r.current()
	if st == nil || st.reps[id] == nil || st.reps[id].Org != org {
		return schemas.Report{}, false
	}
	return st.reps[id].Report, true
}

// WebhookRetrySchedule is an organization's retry schedule (nil: the
// service's default).
func (r *Replica) WebhookRetrySchedule(org string) []time.Duration {
	if st := r.state.Load(); st != nil && st.hooks[org] != nil {
		return st.hooks[org].schedule
	}
	return nil
}

// ReportEndpointHealth tells the cluster when an endpoint started failing
// (zero: it delivers again), or disables it.
func (r *Replica) ReportEndpointHealth(ctx context.Context, id string, h EndpointHealth) error {
	return r.postNode(ctx, "/v1/node/webhooks/endpoints/"+url.PathEscape(id)+"/health", h)
}

// AnnounceQuota tells the cluster a quota.warning event was sent.
func (r *Replica) AnnounceQuota(ctx context.Context, org, month string, level int) error {
	return r.postNode(ctx, "/v1/node/quota-alerts/"+url.PathEscape(org), AnnounceQuota{Month: month, Level: level})
}

// postNode sends a node's report to the cluster.
func (r *Replica) postNode(ctx context.Context, path string, v any) error {
	_, err := r.node().call(ctx, "POST", path, v, nil)
	return err
}

// node is the client of the cluster's node routes.
func (r *Replica) node() *nodeClient {
	return &nodeClient{addrs: r.cfg.Addrs, token: r.cfg.Token, client: r.client}
}

// Accounts proxies the account routes to the coordinators this replica
// follows.
func (r *Replica) Accounts() *AccountsProxy {
	return NewAccountsProxy(r.cfg.Addrs, r.cfg.Token, r.cfg.TLS)
}
