// Package ingest is the HTTP tier: it authenticates tenants, enforces
// quotas and limits, validates input, produces requests to
// certnode.requests (answering only after the broker acknowledged), keeps
// jobs in the compacted certnode.jobs topic, and reads results back from
// certnode.receipts for callers that wait, poll or stream.
package ingest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
	"golang.org/x/time/rate"

	"github.com/certnode/certnode/internal/httpsec"
	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
)

// Authenticator resolves API keys to tenants.
type Authenticator interface {
	Authenticate(apiKey string) (*tenants.Tenant, bool)
}

// KeyOwner names the organization of an API key's public id; an
// Authenticator that knows it implements it, so that refusals naming the
// id reach that organization's audit log.
type KeyOwner interface {
	KeyOrg(keyID string) (string, bool)
}

// Limiter holds tenants to their request rate and monthly allowance:
// tenants.LocalLimiter within this process (tenants files), or the
// coordinator's Limiter across the cluster.
type Limiter interface {
	// Take admits n requests now (0), or takes nothing and says how long
	// to wait before asking again; tenants.ErrMonthlyQuota once the
	// tenant's monthly allowance is used up.
	Take(tenant string, n int) (time.Duration, error)
}

// KeySource publishes the signing keys.
type KeySource interface {
	JWKS() schemas.JWKS
}

// ReceiptStore finds stored receipts (ClickHouse); optional.
type ReceiptStore interface {
	Receipt(ctx context.Context, tenant, receiptID string) ([]byte, error)
}

// RecordMAC authenticates the records ingest writes (the value's MAC) and
// derives keys from the same internal secret (recordauth.Keyring).
type RecordMAC interface {
	Header(value []byte) []byte
	SignKeyID() string
	Derive(kid string, label []byte) ([]byte, bool)
}

// AuditRecorder sends access events to the audit log (internal/audit's
// Publisher); it never blocks.
type AuditRecorder interface {
	Record(ev schemas.AuditEvent)
}

// Blocklist names the addresses kept out (the coordinator's blocks, set
// by the threat detector or the operator).
type Blocklist interface {
	Blocked(addr netip.Addr) (until time.Time, ok bool)
}

// ErrNotFound is what a ReceiptStore returns for an unknown receipt, and
// ErrErased for one whose payload was erased (its proof stays valid).
var (
	ErrNotFound = errors.New("not found")
	ErrErased   = errors.New("erased")
)

// Check is a probe; /readyz (readiness) or /healthz (liveness) fails while
// any of its checks returns an error.
type Check func(ctx context.Context) error

// Deps are the parts the server uses; Store, Usage, Plans, Deliveries and
// Endpoints may be nil (their routes answer 503).
type Deps struct {
	Auth  Authenticator
	Keys  KeySource
	Store ReceiptStore
	Usage UsageReader
	Plans PlanSource
	MAC   RecordMAC
	// Deliveries reads webhook deliveries (GET /v1/webhooks/deliveries...,
	// redeliver, replay); Endpoints gives the organizations' webhook
	// endpoints (redeliver, replay, and a trigger aimed at one endpoint).
	Deliveries DeliveryReader
	Endpoints  EndpointSource
	// Analytics answers GET /v1/analytics/... (nil: 503).
	Analytics AnalyticsReader
	// Orgs gives organizations' limits, for signed-in users' requests
	// (nil: sessions are not accepted).
	Orgs OrgLimits
	// Reports finds saved reports (GET /v1/reports/{id}/run; nil: 503).
	Reports ReportSource
	// Exports streams exports (GET /v1/exports/...; nil: 503); ExportJobs
	// runs them in the background (/v1/export-jobs...; nil: 503).
	Exports    Exports
	ExportJobs ExportJobs
	// Log proves receipts are in the transparency log (/v1/log/...,
	// /v1/receipts/{id}/proof; nil: 503).
	Log TransparencyLog
	// AuditLog serves the audit log's checkpoints and verifiable exports
	// (/v1/audit/...; nil: 503).
	AuditLog AuditLog
	// Alerts lists security alerts (GET /v1/security/alerts; nil: 503).
	Alerts AlertStore
	// Privacy answers data subject access and erasures (/v1/privacy/...;
	// nil: 503), by each organization's subject pointer (SubjectPointers).
	Privacy         Privacy
	SubjectPointers SubjectPointers
	// Compliance draws compliance reports as PDF (nil: JSON only).
	Compliance ComplianceRenderer
	// Console serves the dashboard's pages under ConsolePrefix (nil: 404).
	Console http.Handler
	// VerifyPage serves the hosted verification page under VerifyPrefix
	// (nil: 404, and POST /v1/branding/preview draws error pages only).
	VerifyPage VerifyPage
	// Brands gives organizations' branding and maintenance: their error
	// pages, JSON errors' support details, maintenance mode and
	// GET /v1/branding/style.css (nil: the service's pages, no
	// maintenance).
	Brands Brands
	// Ready and Live are extra readiness and liveness checks (for example
	// the signer, or an embedded worker's health).
	Ready []Check
	Live  []Check
	// Audit receives the refused requests (401 and 403), and each key's
	// first use from an address, as access events (nil: not recorded).
	Audit AuditRecorder
	// Domains binds requests on an organization's custom domain to it:
	// other organizations' keys and sessions are refused there (nil: no
	// custom domains).
	Domains DomainOrgs
	// Blocks keeps blocked addresses out: every request but the probes
	// answers 403 address_blocked (nil: none).
	Blocks Blocklist
	// Accounts serves the account routes (/v1/auth/*, /v1/me, /v1/orgs/*):
	// the coordinator's, through a proxy. Nil: they answer 404.
	Accounts http.Handler

	// Limiter holds tenants to their rate and monthly allowance.
	Limiter Limiter

	// OrgKeys publishes organizations' own keys (nil: none). On an
	// organization's custom domain (Domains) the JWKS routes serve its
	// keys and the service's.
	OrgKeys OrgKeySource

	// API gives organizations' API settings: response headers, pinned
	// versions, receipt metadata (nil: none, and every request gets the
	// current version unless it asks for another).
	API OrgAPI
}

// Config configures the HTTP tier.
type Config struct {
	Addr string
	// TLS serves HTTPS (internal/tlsconf: TLS 1.2 and later); nil: HTTP.
	TLS *tls.Config
	// DomainsAddr serves the same API over TLS with DomainsTLS too: the
	// organizations' custom domains, their certificates picked by SNI
	// (ingest/certs). Empty: no such listener.
	DomainsAddr string
	DomainsTLS  *tls.Config
	Kafka       kafka.Config
	// MaxBodyBytes bounds /v1/sign and /v1/verify bodies; MaxLineBytes
	// bounds one line of a bulk job; MaxJobLines bounds the input lines of
	// a job (blank and rejected ones included).
	MaxBodyBytes int
	MaxLineBytes int
	MaxJobLines  int64
	// SignWait bounds how long /v1/sign and /v1/verify wait for the result
	// before answering 504 with a job id to poll.
	SignWait time.Duration
	// ProduceTimeout bounds the wait for the broker's acknowledgement
	// before answering 503.
	ProduceTimeout time.Duration
	// UploadTimeout bounds one bulk upload; a job still uploading after it
	// was abandoned (its process or client went away).
	UploadTimeout time.Duration
	// JobRetention keeps finished jobs answerable.
	JobRetention time.Duration
	// ShutdownTimeout bounds a graceful stop: open results streams are
	// ended at once, other requests get this long to finish.
	ShutdownTimeout time.Duration
	// MaxListeners bounds the GET /v1/webhooks/listen streams open at
	// once on this process (each organization may hold 5 of them).
	MaxListeners int
	// WebhookReceiptBytes is the largest receipt a listened receipt.signed
	// event carries; a larger one is linked (receipt_url). Set it as the
	// dispatcher's, so that listened events look like delivered ones.
	WebhookReceiptBytes int
	Registerer          prometheus.Registerer
	Gatherer            prometheus.Gatherer
}

// DefaultConfig returns a config with every field but Kafka.Brokers set.
func DefaultConfig() Config {
	return Config{
		Addr:            "127.0.0.1:8080",
		Kafka:           kafka.Config{Partitions: 8, ReplicationFactor: 1},
		MaxBodyBytes:    1 << 20,
		MaxLineBytes:    256 << 10,
		MaxJobLines:     10_000_000,
		SignWait:        10 * time.Second,
		ProduceTimeout:  10 * time.Second,
		UploadTimeout:   30 * time.Minute,
		JobRetention:    7 * 24 * time.Hour,
		ShutdownTimeout: 10 * time.Second,
		MaxListeners:    20,
		// WebhookReceiptBytes: what the dispatcher carries by default.
		WebhookReceiptBytes: DefaultWebhookReceiptBytes,
	}
}

// DefaultWebhookReceiptBytes is the largest receipt a webhook event
// carries by default.
const DefaultWebhookReceiptBytes = 256 << 10

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if err := c.Kafka.Validate(); err != nil {
		errs = append(errs, err)
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		errs = append(errs, fmt.Errorf("ingest: listen address %q: %w", c.Addr, err))
	}
	if c.MaxBodyBytes < 1024 || c.MaxLineBytes < 1024 {
		errs = append(errs, errors.New("ingest: body and line limits must be at least 1024 bytes"))
	}
	if c.MaxBodyBytes > schemas.MaxRequestBytes/2 || c.MaxLineBytes > schemas.MaxRequestBytes/2 {
		errs = append(errs, fmt.Errorf("ingest: body and line limits must be at most %d bytes (half a request record)", schemas.MaxRequestBytes/2))
	}
	if c.MaxJobLines < 1 || c.MaxJobLines > schemas.MaxLine {
		errs = append(errs, fmt.Errorf("ingest: max job lines must be between 1 and %d", int64(schemas.MaxLine)))
	}
	if c.SignWait <= 0 || c.ProduceTimeout <= 0 || c.UploadTimeout <= 0 || c.JobRetention <= 0 || c.ShutdownTimeout <= 0 {
		errs = append(errs, errors.New("ingest: sign wait, produce, upload and shutdown timeouts and job retention must be positive"))
	}
	if c.DomainsAddr != "" && (c.DomainsTLS == nil || c.DomainsTLS.GetCertificate == nil) {
		errs = append(errs, errors.New("ingest: the custom domains' listener needs their certificates (ingest/certs)"))
	}
	if c.MaxListeners < 1 {
		errs = append(errs, errors.New("ingest: max listeners must be at least 1"))
	}
	if c.WebhookReceiptBytes < 1 || c.WebhookReceiptBytes > schemas.MaxWebhookBody-64<<10 {
		errs = append(errs, fmt.Errorf("ingest: the webhook receipt limit must be from 1 to %d bytes", schemas.MaxWebhookBody-64<<10))
	}
	return errors.Join(errs...)
}

// Server is one ingest process.
type Server struct {
	cfg   Config
	deps  Deps
	prod  *kgo.Client
	jobs  *tracker
	srv   *fasthttp.Server
	promh fasthttp.RequestHandler
	// accounts serves Deps.Accounts; nil without it.
	accounts   fasthttp.RequestHandler
	console    fasthttp.RequestHandler
	verifyPage fasthttp.RequestHandler
	sess       sessions
	ln         net.Listener
	dln        net.Listener // the custom domains' (Config.DomainsAddr)
	log        *slog.Logger
	m          *metrics
	routes     []route
	// stopping is closed when Run's context ends: results streams end.
	stopping chan struct{}
	// life ends with Run's context too. Handlers derive their contexts
	// from it rather than from the *fasthttp.RequestCtx: context's
	// cancellation goroutine would read a RequestCtx's values after the
	// server recycled it (fasthttp pools them).
	life    context.Context
	endLife context.CancelFunc

	streamsMu sync.Mutex
	streams   map[string]int // open results streams per tenant

	// keyAddrs holds the org/key/address pairs announced
	// (noteKeyAddress): read on every authenticated request, without a
	// lock.
	keyAddrs  sync.Map
	keyAddrsN atomic.Int64

	// hub serves GET /v1/webhooks/listen; listenHeartbeat is its SSE
	// heartbeat interval (tests shorten it).
	hub             *listenHub
	listenHeartbeat time.Duration
	// writes holds each organization's webhook writes to a rate.
	writes writeLimiter
}

// New connects to Kafka, loads the jobs and listens; Run serves.
func New(ctx context.Context, cfg Config, deps Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Auth == nil || deps.Limiter == nil || deps.Keys == nil || deps.MAC == nil {
		return nil, errors.New("ingest: authenticator, limiter, keys and record MAC are required")
	}
	s := &Server{cfg: cfg, deps: deps, log: slog.With("role", "ingest"), stopping: make(chan struct{}),
		streams: map[string]int{}, m: newMetrics(cfg.Registerer)}
	s.life, s.endLife = context.WithCancel(context.Background())
	s.routes = s.table()
	s.listenHeartbeat = listenHeartbeat
	var err error
	// acks=all, but not franz-go's idempotent mode: an idempotent producer
	// must hold a record whose fate it cannot know until the broker is back,
	// which would turn an outage into hung requests instead of 503s. A
	// retry can then write a request twice; request ids absorb that
	// downstream (results, job counts and ClickHouse dedupe on them). With
	// idempotence off franz-go keeps one request in flight per broker, so a
	// tenant's order still holds.
	s.prod, err = kafka.NewClient(cfg.Kafka, kgo.DisableIdempotentWrite(),
		kgo.RecordDeliveryTimeout(cfg.ProduceTimeout), kgo.MaxBufferedRecords(20000))
	if err != nil {
		return nil, err
	}
	if s.jobs, err = newTracker(ctx, cfg.Kafka, s.prod, deps.MAC, cfg.MaxJobLines, cfg.UploadTimeout, cfg.JobRetention, s.m); err != nil {
		s.prod.Close()
		return nil, err
	}
	s.hub = newListenHub(cfg.Kafka, kadm.NewClient(s.prod), cfg.MaxListeners, cfg.WebhookReceiptBytes, s.m)
	s.hub.api = deps.API
	g := cfg.Gatherer
	if g == nil {
		g = prometheus.DefaultGatherer
	}
	s.promh = fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	if deps.Accounts != nil {
		s.accounts = fasthttpadaptor.NewFastHTTPHandler(deps.Accounts)
	}
	if deps.Console != nil {
		s.console = fasthttpadaptor.NewFastHTTPHandler(deps.Console)
	}
	if deps.VerifyPage != nil {
		s.verifyPage = fasthttpadaptor.NewFastHTTPHandler(deps.VerifyPage)
	}
	s.sess.m, s.sess.lookups = map[[32]byte]cachedSession{}, rate.NewLimiter(sessionLookups, 2*sessionLookups)
	s.srv = &fasthttp.Server{
		Handler:            s.handle,
		Name:               "certnode",
		StreamRequestBody:  true, // bulk jobs are read as they arrive, never whole
		MaxRequestBodySize: cfg.MaxBodyBytes,
		ReadTimeout:        cfg.UploadTimeout,
		WriteTimeout:       maxStream,
		IdleTimeout:        time.Minute,
		Logger:             fasthttpLogger{},
	}
	if s.ln, err = net.Listen("tcp", cfg.Addr); err != nil {
		s.Close()
		return nil, fmt.Errorf("ingest: %w", err)
	}
	if cfg.TLS != nil {
		s.ln = tls.NewListener(s.ln, cfg.TLS)
	}
	if cfg.DomainsAddr != "" {
		ln, err := net.Listen("tcp", cfg.DomainsAddr)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("ingest: the custom domains' listener: %w", err)
		}
		s.dln = tls.NewListener(ln, cfg.DomainsTLS)
	}
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// DomainsAddr is the address of the custom domains' TLS listener ("":
// none).
func (s *Server) DomainsAddr() string {
	if s.dln == nil {
		return ""
	}
	return s.dln.Addr().String()
}

// Run serves until ctx ends, then stops within the shutdown timeout.
func (s *Server) Run(ctx context.Context) error {
	tctx, stopTracker := context.WithCancel(context.WithoutCancel(ctx))
	defer stopTracker()
	go s.jobs.run(tctx)
	errc := make(chan error, 2)
	go func() { errc <- s.srv.Serve(s.ln) }()
	if s.dln != nil {
		go func() { errc <- s.srv.Serve(s.dln) }()
	}
	select {
	case <-ctx.Done():
		close(s.stopping)
		s.endLife()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
		defer cancel()
		if err := s.srv.ShutdownWithContext(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		return nil
	case err := <-errc:
		return err
	}
}

// Close releases the Kafka clients.
func (s *Server) Close() {
	s.endLife()
	if s.ln != nil {
		s.ln.Close()
	}
	if s.dln != nil {
		s.dln.Close()
	}
	if s.hub != nil {
		s.hub.close()
	}
	if s.jobs != nil {
		s.jobs.close()
	}
	s.prod.Close()
}

func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	name := "blocked"
	if !s.blocked(ctx) {
		name = s.dispatchIn(ctx)
	}
	s.decorateError(ctx)
	s.addOrgHeaders(ctx)
	h := &ctx.Response.Header
	httpsec.Add(func(n string) bool { return h.Peek(n) != nil }, h.Set, ctx.IsTLS())
	s.m.requests.WithLabelValues(name, strconv.Itoa(ctx.Response.StatusCode())).Inc()
	s.m.latency.WithLabelValues(name).Observe(time.Since(start).Seconds())
}

// blocked answers 403 address_blocked, with Retry-After, to a blocked
// address; the probes answer whoever asks.
func (s *Server) blocked(ctx *fasthttp.RequestCtx) bool {
	if s.deps.Blocks == nil {
		return false
	}
	switch string(ctx.Path()) {
	case "/healthz", "/readyz", "/metrics":
		return false
	}
	addr, _ := netip.AddrFromSlice(ctx.RemoteIP())
	until, ok := s.deps.Blocks.Blocked(addr.Unmap())
	if !ok {
		return false
	}
	ctx.Response.Header.Set("Retry-After", strconv.Itoa(int(time.Until(until)/time.Second)+1))
	apiError(ctx, fasthttp.StatusForbidden, "address_blocked", "this address is blocked until "+until.UTC().Format(time.RFC3339)+" after a security alert")
	return true
}

// maxKeyAddrs bounds the key and address pairs remembered: past it the
// memory starts over, and pairs are announced again (the detector knows
// them).
const maxKeyAddrs = 100_000

// noteKeyAddress sends the audit log a key's first use from an address
// this process saw, for the detector of keys used from new addresses.
func (s *Server) noteKeyAddress(ctx *fasthttp.RequestCtx, t *tenants.Tenant) {
	if s.deps.Audit == nil || t.KeyID == "" {
		return
	}
	addr := clientIP(ctx)
	pair := t.ID + "/" + t.KeyID + "/" + addr
	if _, seen := s.keyAddrs.Load(pair); seen {
		return
	}
	if _, seen := s.keyAddrs.LoadOrStore(pair, struct{}{}); !seen {
		if s.keyAddrsN.Add(1) > maxKeyAddrs {
			s.keyAddrs.Clear()
			s.keyAddrsN.Store(0)
		}
		s.deps.Audit.Record(schemas.AuditEvent{At: time.Now().UTC(), Org: t.ID, Actor: schemas.AuditActor{Kind: schemas.ActorKey, ID: t.KeyID, Addr: addr},
			Action: "api_key.address", Target: t.KeyID, Result: schemas.AuditOK, Source: "ingest"})
	}
}

func (s *Server) readyz(ctx *fasthttp.RequestCtx) {
	own := []Check{
		func(context.Context) error {
			if !s.jobs.ready() {
				return errors.New("jobs and results reader not started")
			}
			return nil
		},
		func(c context.Context) error { return s.prod.Ping(c) },
	}
	s.probe(ctx, append(own, s.deps.Ready...))
}

func (s *Server) healthz(ctx *fasthttp.RequestCtx) { s.probe(ctx, s.deps.Live) }

// eventTypes answers the webhook event catalog: each type with its JSON
// Schema and an example. It holds no tenant's data.
func (s *Server) eventTypes(ctx *fasthttp.RequestCtx) {
	cat, err := schemas.EventCatalog()
	if err != nil {
		apiError(ctx, fasthttp.StatusInternalServerError, "internal", err.Error())
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"event_types": cat})
	ctx.Response.Header.Set("Cache-Control", "public, max-age=300")
}

// probe runs checks and answers 200, or 503 with every problem.
func (s *Server) probe(ctx *fasthttp.RequestCtx, checks []Check) {
	c, cancel := context.WithTimeout(s.life, 3*time.Second)
	defer cancel()
	var problems []string
	for _, check := range checks {
		if err := check(c); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if len(problems) > 0 {
		writeJSON(ctx, fasthttp.StatusServiceUnavailable, map[string]any{"status": "unavailable", "problems": problems})
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]string{"status": "ok"})
}

// authenticate finds the caller: an API key, or without one a signed-in
// user's session (see sessionTenant; on a custom domain, bound, its
// organization is the session's default). It answers 401 itself when neither
// is valid; the message is the same for a missing and an unknown key, so
// it reveals nothing about tenants. A key used with another organization
// named is refused: the key's is the only one it acts in.
func (s *Server) authenticate(ctx *fasthttp.RequestCtx, bound string) (*tenants.Tenant, bool) {
	h := ctx.Request.Header.Peek("Authorization")
	if len(h) == 0 {
		if sess := s.sessionOf(ctx); sess != nil {
			return s.sessionTenant(ctx, sess, bound)
		}
	}
	if len(h) > 7 && string(h[:7]) == "Bearer " {
		if t, found := s.deps.Auth.Authenticate(string(h[7:])); found {
			if org := requestedOrg(ctx); org != "" && org != t.ID {
				apiError(ctx, fasthttp.StatusBadRequest, "org_mismatch", "this API key acts in its own organization only; leave out "+OrgHeader+" and org, or name its organization")
				return nil, false
			}
			s.noteKeyAddress(ctx, t)
			return t, true
		}
	}
	ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="certnode"`)
	apiError(ctx, fasthttp.StatusUnauthorized, "unauthorized", "a valid API key is required: Authorization: Bearer <key> (or a signed-in session)")
	s.recordRefusal(ctx, nil, "unauthorized")
	return nil, false
}

// keyPrefix is the public id of an API key ("cnk_" and 12 letters or
// digits, before the dot); "" for anything else, which may be a secret
// (a key with no dot is all secret).
func keyPrefix(h []byte) string {
	key, ok := bytes.CutPrefix(h, []byte("Bearer "))
	id, _, dot := bytes.Cut(key, []byte("."))
	if !ok || !dot || len(id) != 16 || !bytes.HasPrefix(id, []byte("cnk_")) {
		return ""
	}
	for _, c := range id[4:] {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return ""
		}
	}
	return string(id)
}

// recordRefusal sends a refused request to the audit log: who as far as
// known (t, the caller when it authenticated; else an API key's public
// id, never the key), from which address, what, and the refusal's code.
func (s *Server) recordRefusal(ctx *fasthttp.RequestCtx, t *tenants.Tenant, code string) {
	if s.deps.Audit == nil {
		return
	}
	actor := schemas.AuditActor{Kind: schemas.ActorAnonymous, Addr: clientIP(ctx)}
	var org string
	h := ctx.Request.Header.Peek("Authorization")
	switch {
	case t != nil && len(h) == 0:
		actor.Kind, actor.ID, org = schemas.ActorUser, t.KeyID, t.ID
	case t != nil:
		actor.Kind, actor.ID, org = schemas.ActorKey, t.KeyID, t.ID
	case len(h) > 0:
		actor.Kind, actor.ID = schemas.ActorKey, keyPrefix(h)
		if owner, ok := s.deps.Auth.(KeyOwner); ok && actor.ID != "" {
			org, _ = owner.KeyOrg(actor.ID)
		}
	}
	s.deps.Audit.Record(schemas.AuditEvent{At: time.Now().UTC(), Org: org, Actor: actor, Action: "access.refused",
		Target: schemas.AuditRequestTarget(string(ctx.Method()), string(ctx.Path())), Result: schemas.AuditDenied, Reason: code, Source: "ingest"})
}

// clientIP is the connection's address, without an IPv4 mapping.
func clientIP(ctx *fasthttp.RequestCtx) string {
	addr, _ := netip.AddrFromSlice(ctx.RemoteIP())
	return addr.Unmap().String()
}

func newID(prefix string) string {
	var b [16]byte
	rand.Read(b[:])
	return prefix + base64.RawURLEncoding.EncodeToString(b[:])
}

// fasthttpLogger passes fasthttp's own messages to slog at debug level:
// they are per-request notices (such as the streamed-body one), not
// problems an operator must act on.
type fasthttpLogger struct{}

func (fasthttpLogger) Printf(format string, args ...any) {
	slog.Debug("http: " + fmt.Sprintf(format, args...))
}
