// Package pipeline is the stage worker: it consumes certnode.requests in a
// consumer group, verifies or signs each request, produces results to
// certnode.receipts (and poison input to certnode.dlq), and commits offsets
// only after those produces were acknowledged.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
)

// Signer issues receipts and publishes the keys that verify them.
type Signer interface {
	Sign(ctx context.Context, payload []byte) (*schemas.Receipt, error)
	KeySet() *schemas.KeySet
}

// Authenticator resolves the API key on records customers produce directly.
type Authenticator interface {
	Authenticate(apiKey string) (*tenants.Tenant, bool)
}

// Config configures a worker.
type Config struct {
	Kafka kafka.Config
	// Group is the consumer group; all workers of a cluster share it.
	Group string
	// Concurrency bounds requests processed at once (within and across
	// partitions of one poll). Match it to the signer: cores for software
	// keys, the HSM pool's signers for PKCS#11.
	Concurrency int
	// MaxBatch bounds records taken per poll.
	MaxBatch int
	// DrainTimeout bounds how long a stopping worker keeps working on the
	// batch it holds, so that it commits instead of leaving it to be redone.
	DrainTimeout time.Duration
	// Registerer receives the worker's metrics (nil: not registered).
	Registerer prometheus.Registerer
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if err := c.Kafka.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Group == "" {
		errs = append(errs, errors.New("worker: group is required"))
	}
	if c.Concurrency < 1 {
		errs = append(errs, errors.New("worker: concurrency must be at least 1"))
	}
	if c.MaxBatch < 1 {
		errs = append(errs, errors.New("worker: max batch must be at least 1"))
	}
	if c.DrainTimeout <= 0 {
		errs = append(errs, errors.New("worker: drain timeout must be positive"))
	}
	return errors.Join(errs...)
}

// DefaultConfig returns a config with every field but Kafka.Brokers set.
func DefaultConfig() Config {
	return Config{
		Kafka:        kafka.Config{Partitions: 8, ReplicationFactor: 1},
		Group:        "certnode-workers",
		Concurrency:  2 * runtime.GOMAXPROCS(0),
		MaxBatch:     1000,
		DrainTimeout: 30 * time.Second,
	}
}

type metrics struct {
	records *prometheus.CounterVec
	batch   prometheus.Histogram
	retries prometheus.Counter
	lag     *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "certnode_worker_records_total", Help: "Requests processed, by kind and outcome.",
		}, []string{"kind", "status"}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "certnode_worker_batch_seconds", Help: "Time from poll to commit of one batch.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "certnode_worker_retries_total", Help: "Transient failures retried (signer, produce, commit).",
		}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "certnode_worker_partition_lag", Help: "Requests behind the partition's high watermark at the last poll.",
		}, []string{"partition"}),
	}
	if reg != nil {
		reg.MustRegister(m.records, m.batch, m.retries, m.lag)
	}
	return m
}

// Worker is one pipeline worker process (or one of several in a process).
type Worker struct {
	cfg    Config
	cl     *kgo.Client
	signer Signer
	auth   Authenticator
	mac    *tenants.MAC
	topics schemas.Topics
	m      *metrics
	log    *slog.Logger
}

// New connects a worker; Run starts consuming.
func New(cfg Config, s Signer, auth Authenticator, mac *tenants.MAC, opts ...kgo.Opt) (*Worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if s == nil || auth == nil || mac == nil {
		return nil, errors.New("worker: signer, authenticator and MAC are required")
	}
	w := &Worker{cfg: cfg, signer: s, auth: auth, mac: mac, topics: cfg.Kafka.Topics(), m: newMetrics(cfg.Registerer),
		log: slog.With("role", "worker")}
	base := kafka.GroupConsumer(cfg.Group, w.topics.Requests)
	cl, err := kafka.NewClient(cfg.Kafka, append(base, opts...)...)
	if err != nil {
		return nil, err
	}
	w.cl = cl
	return w, nil
}

// Run processes batches until ctx ends or the worker is closed. A batch in
// hand when ctx ends is still produced and committed (within DrainTimeout).
func (w *Worker) Run(ctx context.Context) error {
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(w.cfg.DrainTimeout, cancelWork) })
	defer stop()
	for {
		fetches := w.cl.PollRecords(ctx, w.cfg.MaxBatch)
		if fetches.IsClientClosed() || ctx.Err() != nil {
			w.cl.AllowRebalance()
			return nil
		}
		fetches.EachError(func(t string, p int32, err error) {
			w.log.Warn("fetch error", "topic", t, "partition", p, "err", err)
		})
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			if n := len(p.Records); n > 0 {
				w.m.lag.WithLabelValues(strconv.Itoa(int(p.Partition))).Set(float64(p.HighWatermark - p.Records[n-1].Offset - 1))
			}
		})
		recs := fetches.Records()
		if len(recs) > 0 {
			start := time.Now()
			if err := w.handle(work, recs); err != nil {
				w.cl.AllowRebalance()
				return fmt.Errorf("batch abandoned after drain timeout: %w", err)
			}
			w.m.batch.Observe(time.Since(start).Seconds())
		}
		w.cl.AllowRebalance()
	}
}

// handle processes, produces and commits one polled batch. It returns only
// when all of that succeeded or ctx ended: transient failures are retried,
// because skipping a record would lose it.
func (w *Worker) handle(ctx context.Context, recs []*kgo.Record) error {
	outs := make([][]*kgo.Record, len(recs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(w.cfg.Concurrency)
	for i, r := range recs {
		g.Go(func() error {
			var err error
			outs[i], err = w.retry(gctx, func() ([]*kgo.Record, error) { return w.process(gctx, r) })
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	var produce []*kgo.Record
	for _, o := range outs {
		produce = append(produce, o...)
	}
	if _, err := w.retry(ctx, func() ([]*kgo.Record, error) {
		return nil, w.cl.ProduceSync(ctx, produce...).FirstErr()
	}); err != nil {
		return err
	}
	_, err := w.retry(ctx, func() ([]*kgo.Record, error) { return nil, w.cl.CommitRecords(ctx, recs...) })
	return err
}

// retry runs f until it succeeds, backing off on errors, until ctx ends.
func (w *Worker) retry(ctx context.Context, f func() ([]*kgo.Record, error)) ([]*kgo.Record, error) {
	backoff := 50 * time.Millisecond
	for {
		out, err := f()
		if err == nil {
			return out, nil
		}
		w.m.retries.Inc()
		w.log.Warn("transient failure, retrying", "err", err, "backoff", backoff)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// permanentError marks input that will never process: it goes to the DLQ.
type permanentError struct {
	reason string
	err    error
}

func (e *permanentError) Error() string { return e.reason + ": " + e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// process turns one request record into its output records. A returned
// error is transient (the signer failed) and the record is retried.
func (w *Worker) process(ctx context.Context, rec *kgo.Record) ([]*kgo.Record, error) {
	req, err := w.authenticate(rec)
	if err != nil {
		var pe *permanentError
		if errors.As(err, &pe) {
			w.m.records.WithLabelValues("unknown", "dlq").Inc()
			return []*kgo.Record{w.dlq(rec, pe)}, nil
		}
		return nil, err
	}
	res := &schemas.Result{
		V: schemas.EnvelopeVersion, ID: req.ID, Tenant: req.Tenant, Kind: req.Kind,
		JobID: req.JobID, Line: req.Line, Size: len(rec.Value), ReceivedAt: req.ReceivedAt,
	}
	if res.ReceivedAt.IsZero() {
		res.ReceivedAt = rec.Timestamp // stable across replays, unlike the clock
	}
	var out []*kgo.Record
	switch req.Kind {
	case schemas.KindSign:
		err = w.sign(ctx, req, res)
	case schemas.KindVerify:
		w.verify(req, res)
	}
	var pe *permanentError
	switch {
	case errors.As(err, &pe):
		res.Status, res.Reason = schemas.StatusFailed, pe.reason
		out = append(out, w.dlq(rec, pe))
	case err != nil:
		return nil, err
	}
	res.ProcessedAt = time.Now()
	val, err := json.Marshal(res)
	if err != nil {
		return nil, err
	}
	w.m.records.WithLabelValues(string(req.Kind), string(res.Status)).Inc()
	result := &kgo.Record{Topic: w.topics.Receipts, Key: []byte(req.Tenant), Value: val,
		Headers: []kgo.RecordHeader{{Key: schemas.HeaderRequestID, Value: []byte(req.ID)}}}
	if req.JobID != "" {
		result.Headers = append(result.Headers, kgo.RecordHeader{Key: schemas.HeaderJobID, Value: []byte(req.JobID)})
	}
	return append([]*kgo.Record{result}, out...), nil
}

func (w *Worker) authenticate(rec *kgo.Record) (*schemas.Request, error) {
	req, err := schemas.DecodeRequest(rec.Value)
	if err != nil {
		return nil, &permanentError{"bad_envelope", err}
	}
	if string(rec.Key) != req.Tenant {
		return nil, &permanentError{"tenant_mismatch", fmt.Errorf("record key %q, envelope tenant %q", rec.Key, req.Tenant)}
	}
	for _, h := range rec.Headers {
		switch h.Key {
		case schemas.HeaderIngestMAC:
			if w.mac.Valid(req.Tenant, req.ID, string(h.Value)) {
				return req, nil
			}
		case schemas.HeaderAPIKey:
			if t, ok := w.auth.Authenticate(string(h.Value)); ok && t.ID == req.Tenant {
				return req, nil
			}
		}
	}
	return nil, &permanentError{"unauthenticated", errors.New("record carries no valid " + schemas.HeaderAPIKey + " for its tenant")}
}

func (w *Worker) sign(ctx context.Context, req *schemas.Request, res *schemas.Result) error {
	rc, err := w.signer.Sign(ctx, req.Payload)
	if err != nil {
		if errors.Is(err, schemas.ErrInvalidJSON) || errors.Is(err, schemas.ErrNotObject) || errors.Is(err, schemas.ErrDuplicateKey) {
			return &permanentError{"invalid_payload", err}
		}
		return err
	}
	raw, err := rc.Marshal()
	if err != nil {
		return err
	}
	res.Status, res.Kid, res.ReceiptID, res.PayloadHash, res.Receipt = schemas.StatusSigned, rc.Kid, rc.ReceiptID, rc.PayloadJCSSHA256, raw
	return nil
}

func (w *Worker) verify(req *schemas.Request, res *schemas.Result) {
	ks := w.signer.KeySet()
	if len(req.JWKS) > 0 {
		var err error
		if ks, err = schemas.ParseJWKS(req.JWKS); err != nil {
			res.Status, res.Reason = schemas.StatusInvalid, "invalid_jwks"
			return
		}
	}
	rc, err := ks.Verify(req.Receipt)
	if rc != nil {
		res.Kid, res.ReceiptID, res.PayloadHash = rc.Kid, rc.ReceiptID, rc.PayloadJCSSHA256
	}
	res.Receipt = req.Receipt
	var ve *schemas.VerifyError
	if errors.As(err, &ve) {
		res.Status, res.Reason = schemas.StatusInvalid, string(ve.Reason)
		return
	}
	res.Status = schemas.StatusValid
}

// dlq copies a poison record with its reason, dropping any API key header.
func (w *Worker) dlq(rec *kgo.Record, pe *permanentError) *kgo.Record {
	hs := []kgo.RecordHeader{
		{Key: schemas.HeaderDLQReason, Value: []byte(pe.reason)},
		{Key: "certnode-dlq-error", Value: []byte(pe.err.Error())},
		{Key: "certnode-dlq-source", Value: fmt.Appendf(nil, "%s/%d/%d", rec.Topic, rec.Partition, rec.Offset)},
	}
	for _, h := range rec.Headers {
		if h.Key != schemas.HeaderAPIKey {
			hs = append(hs, h)
		}
	}
	w.log.Warn("record sent to DLQ", "reason", pe.reason, "partition", rec.Partition, "offset", rec.Offset, "err", pe.err)
	return &kgo.Record{Topic: w.topics.DLQ, Key: rec.Key, Value: rec.Value, Headers: hs}
}

// Close leaves the group (after the current batch) and closes the client.
func (w *Worker) Close() { w.cl.Close() }
