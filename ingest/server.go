// Package ingest is the HTTP tier: it authenticates tenants, enforces
// quotas and limits, validates input, produces requests to
// certnode.requests (answering only after the broker acknowledged), and
// reads results back from certnode.receipts for callers that wait.
package ingest

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
	"golang.org/x/time/rate"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
)

// Authenticator resolves API keys to tenants.
type Authenticator interface {
	Authenticate(apiKey string) (*tenants.Tenant, bool)
}

// KeySource publishes the signing keys.
type KeySource interface {
	JWKS() schemas.JWKS
}

// ReceiptStore finds stored receipts (ClickHouse); optional.
type ReceiptStore interface {
	Receipt(ctx context.Context, tenant, receiptID string) ([]byte, error)
}

// ErrNotFound is what a ReceiptStore returns for an unknown receipt.
var ErrNotFound = errors.New("not found")

// Check is a readiness probe; /readyz fails while any returns an error.
type Check func(ctx context.Context) error

// Config configures the HTTP tier.
type Config struct {
	Addr  string
	Kafka kafka.Config
	// MaxBodyBytes bounds /v1/sign and /v1/verify bodies; MaxLineBytes
	// bounds one line of a bulk job; MaxJobLines bounds lines per job.
	MaxBodyBytes int
	MaxLineBytes int
	MaxJobLines  int64
	// SignWait bounds how long /v1/sign and /v1/verify wait for the result
	// before answering 504 with a job id to poll.
	SignWait time.Duration
	// ProduceTimeout bounds the wait for the broker's acknowledgement
	// before answering 503.
	ProduceTimeout time.Duration
	// JobRetention keeps finished jobs' status for polling.
	JobRetention time.Duration
	Registerer   prometheus.Registerer
	Gatherer     prometheus.Gatherer
}

// DefaultConfig returns a config with every field but Kafka.Brokers set.
func DefaultConfig() Config {
	return Config{
		Addr:           "127.0.0.1:8080",
		Kafka:          kafka.Config{Partitions: 8, ReplicationFactor: 1},
		MaxBodyBytes:   1 << 20,
		MaxLineBytes:   256 << 10,
		MaxJobLines:    10_000_000,
		SignWait:       10 * time.Second,
		ProduceTimeout: 10 * time.Second,
		JobRetention:   time.Hour,
	}
}

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
	if c.MaxJobLines < 1 {
		errs = append(errs, errors.New("ingest: max job lines must be positive"))
	}
	if c.SignWait <= 0 || c.ProduceTimeout <= 0 || c.JobRetention <= 0 {
		errs = append(errs, errors.New("ingest: sign wait, produce timeout and job retention must be positive"))
	}
	return errors.Join(errs...)
}

// Server is one ingest process.
type Server struct {
	cfg    Config
	auth   Authenticator
	keys   KeySource
	store  ReceiptStore
	mac    *tenants.MAC
	checks []Check
	prod   *kgo.Client
	res    *results
	srv    *fasthttp.Server
	promh  fasthttp.RequestHandler
	ln     net.Listener
	log    *slog.Logger
	m      *metrics

	limMu    sync.Mutex
	limiters map[string]*rate.Limiter
}

// New connects to Kafka; Run serves.
func New(ctx context.Context, cfg Config, auth Authenticator, keys KeySource, store ReceiptStore, mac *tenants.MAC, checks ...Check) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, auth: auth, keys: keys, store: store, mac: mac, log: slog.With("role", "ingest"),
		limiters: map[string]*rate.Limiter{}, m: newMetrics(cfg.Registerer)}
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
	s.checks = append([]Check{func(ctx context.Context) error { return s.prod.Ping(ctx) }}, checks...)
	if s.res, err = newResults(ctx, cfg.Kafka, cfg.JobRetention, s.m); err != nil {
		s.prod.Close()
		return nil, err
	}
	g := cfg.Gatherer
	if g == nil {
		g = prometheus.DefaultGatherer
	}
	s.promh = fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	s.srv = &fasthttp.Server{
		Handler:            s.handle,
		Name:               "certnode",
		StreamRequestBody:  true, // bulk jobs are read as they arrive, never whole
		MaxRequestBodySize: cfg.MaxBodyBytes,
		ReadTimeout:        5 * time.Minute,
		WriteTimeout:       5 * time.Minute,
		IdleTimeout:        time.Minute,
		Logger:             fasthttpLogger{},
	}
	if s.ln, err = net.Listen("tcp", cfg.Addr); err != nil {
		s.Close()
		return nil, fmt.Errorf("ingest: %w", err)
	}
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	go s.res.run(ctx)
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case <-ctx.Done():
		return s.srv.ShutdownWithContext(context.WithoutCancel(ctx))
	case err := <-errc:
		return err
	}
}

// Close releases the Kafka clients.
func (s *Server) Close() {
	if s.ln != nil {
		s.ln.Close()
	}
	if s.res != nil {
		s.res.close()
	}
	s.prod.Close()
}

func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	path := string(ctx.Path())
	route := s.route(ctx, path)
	s.m.requests.WithLabelValues(route, strconv.Itoa(ctx.Response.StatusCode())).Inc()
	s.m.latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
}

// route dispatches and returns a low-cardinality route name for metrics.
func (s *Server) route(ctx *fasthttp.RequestCtx, path string) string {
	method := string(ctx.Method())
	switch {
	case path == "/healthz":
		ctx.SetContentType("application/json")
		ctx.SetBodyString(`{"status":"ok"}`)
		return "healthz"
	case path == "/readyz":
		s.readyz(ctx)
		return "readyz"
	case path == "/metrics":
		s.promh(ctx)
		return "metrics"
	case path == "/.well-known/jwks.json" || path == "/v1/jwks":
		writeJSON(ctx, fasthttp.StatusOK, s.keys.JWKS())
		ctx.Response.Header.Set("Cache-Control", "public, max-age=300")
		return "jwks"
	}
	t, ok := s.authenticate(ctx)
	if !ok {
		return "unauthorized"
	}
	switch {
	case path == "/v1/sign" && method == "POST":
		s.single(ctx, t, schemas.KindSign)
		return "sign"
	case path == "/v1/verify" && method == "POST":
		s.single(ctx, t, schemas.KindVerify)
		return "verify"
	case path == "/v1/jobs" && method == "POST":
		s.createJob(ctx, t)
		return "jobs_create"
	case strings.HasPrefix(path, "/v1/jobs/") && method == "GET":
		id, sub, _ := strings.Cut(strings.TrimPrefix(path, "/v1/jobs/"), "/")
		switch sub {
		case "":
			s.jobStatus(ctx, t, id)
			return "jobs_status"
		case "results":
			s.jobResults(ctx, t, id)
			return "jobs_results"
		}
	case strings.HasPrefix(path, "/v1/receipts/") && method == "GET":
		s.getReceipt(ctx, t, strings.TrimPrefix(path, "/v1/receipts/"))
		return "receipts"
	}
	if path == "/v1/sign" || path == "/v1/verify" || path == "/v1/jobs" {
		apiError(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed", method+" is not allowed on "+path)
		return "other"
	}
	apiError(ctx, fasthttp.StatusNotFound, "not_found", "no such endpoint: "+path)
	return "other"
}

func (s *Server) readyz(ctx *fasthttp.RequestCtx) {
	c, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var problems []string
	for _, check := range s.checks {
		if err := check(c); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if !s.res.ready() {
		problems = append(problems, "results reader not started")
	}
	if len(problems) > 0 {
		writeJSON(ctx, fasthttp.StatusServiceUnavailable, map[string]any{"status": "unavailable", "problems": problems})
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]string{"status": "ready"})
}

// authenticate answers 401 itself when the key is missing or unknown; the
// message is the same either way, so it reveals nothing about tenants.
func (s *Server) authenticate(ctx *fasthttp.RequestCtx) (*tenants.Tenant, bool) {
	h := string(ctx.Request.Header.Peek("Authorization"))
	key, ok := strings.CutPrefix(h, "Bearer ")
	if ok {
		if t, found := s.auth.Authenticate(key); found {
			return t, true
		}
	}
	ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="certnode"`)
	apiError(ctx, fasthttp.StatusUnauthorized, "unauthorized", "a valid API key is required: Authorization: Bearer <key>")
	return nil, false
}

// limiter returns the tenant's token bucket, or nil when unlimited.
func (s *Server) limiter(t *tenants.Tenant) *rate.Limiter {
	if t.RateLimit <= 0 {
		return nil
	}
	s.limMu.Lock()
	defer s.limMu.Unlock()
	l, ok := s.limiters[t.ID]
	if !ok {
		burst := t.Burst
		if burst < 1 {
			burst = int(t.RateLimit) + 1
		}
		l = rate.NewLimiter(rate.Limit(t.RateLimit), burst)
		s.limiters[t.ID] = l
	}
	return l
}

func newID(prefix string) string {
	var b [16]byte
	rand.Read(b[:])
	return prefix + base64.RawURLEncoding.EncodeToString(b[:])
}

type fasthttpLogger struct{}

func (fasthttpLogger) Printf(format string, args ...any) {
	slog.Warn("http: " + fmt.Sprintf(format, args...))
}
