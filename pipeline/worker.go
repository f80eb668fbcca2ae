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
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/recordauth"
	"github.com/certnode/certnode/schemas"
)

// Signer issues receipts and publishes the keys that verify them.
type Signer interface {
	Sign(ctx context.Context, payload []byte) (*schemas.Receipt, error)
	KeySet() *schemas.KeySet
}

// ProducerKeys finds the secret of a tenant's producer key, for records
// customers produce directly.
type ProducerKeys interface {
	ProducerSecret(tenant, keyID string) ([]byte, bool)
}

// IngestMAC checks the MAC the ingest tier puts on its records.
type IngestMAC interface {
	Check(value []byte, header string) error
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
	// RebalanceTimeout is how long the group waits for this worker to
	// finish its batch when partitions move; a batch older than that makes
	// Healthy fail.
	RebalanceTimeout time.Duration
	// Registerer receives the worker's metrics (nil: not registered).
	Registerer prometheus.Registerer
	// Limiter holds the records customers produce directly (Auth producer)
	// to their tenant's quotas; nil: no quota. Ingest's records are never
	// held: ingest admitted them. A record over its tenant's rate is held
	// back (never dropped) while the partition's other tenants go on.
	Limiter Limiter
	// MaxHeldBytes bounds the records held back per partition; past it the
	// partition's fetching pauses until some are released.
	MaxHeldBytes int
	// Audit receives the records refused as unauthenticated, as security
	// events (nil: not recorded).
	Audit AuditRecorder
	// OrgKeys sign the requests of organizations with keys of their own
	// and verify their receipts (nil: the service's keys only).
	OrgKeys OrgKeys
	// API gives organizations' receipt metadata and pinned versions
	// (apisettings.go; nil: payloads are signed as sent).
	API OrgAPI
	// OrgKeyWait bounds how long an organization's sign requests are
	// retried while its active key cannot be used here; after it they fail
	// (org_key_unavailable, with a DLQ copy) until the key signs again.
	OrgKeyWait time.Duration
}

// AuditRecorder sends security events to the audit log (internal/audit's
// Publisher); it never blocks.
type AuditRecorder interface {
	Record(ev schemas.AuditEvent)
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
	if c.DrainTimeout <= 0 || c.RebalanceTimeout <= 0 {
		errs = append(errs, errors.New("worker: drain and rebalance timeouts must be positive"))
	}
	if c.MaxHeldBytes < 1 {
		errs = append(errs, errors.New("worker: max held bytes must be at least 1"))
	}
	if c.OrgKeyWait <= 0 {
		errs = append(errs, errors.New("worker: the wait for an organization's key must be positive"))
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
		MaxHeldBytes: 16 << 20,
		OrgKeyWait:   30 * time.Second,

		RebalanceTimeout: kafka.RebalanceTimeout,
	}
}

type metrics struct {
	records  *prometheus.CounterVec
	batch    prometheus.Histogram
	retries  prometheus.Counter
	lag      *prometheus.GaugeVec
	batchAge prometheus.GaugeFunc
	stalled  prometheus.GaugeFunc
	lost     prometheus.Counter
	dlq      *prometheus.CounterVec

	held        prometheus.Counter
	heldSeconds prometheus.Histogram
	heldNow     prometheus.Gauge
	paused      prometheus.Gauge
	monthly     prometheus.Counter
	skipped     prometheus.Counter
	orgKeyWaits prometheus.Counter
}

func (w *Worker) newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "certnode_worker_records_total", Help: "Requests processed, by kind and outcome (status, or dlq reason).",
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
		dlq: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "certnode_worker_dlq_total", Help: "Records copied to the DLQ, by reason.",
		}, []string{"reason"}),
		lost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "certnode_worker_batches_lost_total", Help: "Batches whose partitions moved to another member before their commit.",
		}),
		batchAge: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "certnode_worker_batch_age_seconds", Help: "How long the batch in hand has been worked on (0 when idle).",
		}, func() float64 { return w.batchAge().Seconds() }),
		held: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "certnode_worker_held_total", Help: "Producer records held back because their tenant was over its rate.",
		}),
		heldSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "certnode_worker_held_seconds", Help: "How long held records waited for their tenant's rate.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}),
		heldNow: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "certnode_worker_held_records", Help: "Producer records held back now.",
		}),
		paused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "certnode_worker_paused_partitions", Help: "Partitions not fetched because their held records are over the bound.",
		}),
		monthly: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "certnode_worker_monthly_quota_total", Help: "Producer requests answered failed (monthly_quota_exceeded): their tenant's monthly allowance was used up.",
		}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "certnode_worker_handover_skipped_total", Help: "Records skipped after a handover: the partition's previous owner had answered them.",
		}),
		orgKeyWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "certnode_worker_org_key_unavailable_total", Help: "Sign attempts whose organization's active key could not be used here (retried, or failed org_key_unavailable past the worker's wait).",
		}),
		stalled: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "certnode_worker_stalled", Help: "1 while the batch in hand has outlived the group's rebalance timeout.",
		}, func() float64 {
			if w.Healthy() != nil {
				return 1
			}
			return 0
		}),
	}
	if reg != nil {
		reg.MustRegister(m.records, m.batch, m.retries, m.lag, m.batchAge, m.stalled, m.lost, m.dlq,
			m.held, m.heldSeconds, m.heldNow, m.paused, m.monthly, m.skipped, m.orgKeyWaits)
	}
	return m
}

// Worker is one pipeline worker process (or one of several in a process).
type Worker struct {
	cfg      Config
	cl       *kgo.Client
	signer   Signer
	producer ProducerKeys
	mac      IngestMAC
	topics   schemas.Topics
	m        *metrics
	log      *slog.Logger
	dlqLog   rate.Sometimes
	// limiterLog and pauseLog sample the limiter's failures and pauses.
	limiterLog, pauseLog rate.Sometimes
	// quota holds the records held back for their tenant's rate.
	quota quota
	// batchStart is the UnixNano time the batch in hand was polled (0: idle).
	batchStart atomic.Int64
	callerKeys keySetCache
	// orgKeysDown is since when organizations' keys fail here.
	orgKeysDown keysDown
}

// keySetCache keeps the caller JWKS recently seen decoded: a verify job
// names the same JWKS on every line, and decoding checks every key's point.
type keySetCache struct {
	mu   sync.Mutex
	sets map[string]*schemas.KeySet
}

// maxCachedKeySets bounds the cache; past it, it starts over.
const maxCachedKeySets = 256

func (c *keySetCache) get(jwks []byte) (*schemas.KeySet, error) {
	c.mu.Lock()
	ks, ok := c.sets[string(jwks)]
	c.mu.Unlock()
	if ok {
		return ks, nil
	}
	ks, err := schemas.ParseJWKS(jwks)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.sets == nil || len(c.sets) >= maxCachedKeySets {
		c.sets = make(map[string]*schemas.KeySet, maxCachedKeySets)
	}
	c.sets[string(jwks)] = ks
	c.mu.Unlock()
	return ks, nil
}

// New connects a worker; Run starts consuming.
func New(cfg Config, s Signer, producer ProducerKeys, mac IngestMAC, opts ...kgo.Opt) (*Worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if s == nil || producer == nil || mac == nil {
		return nil, errors.New("worker: signer, producer keys and ingest MAC are required")
	}
	w := &Worker{cfg: cfg, signer: s, producer: producer, mac: mac, topics: cfg.Kafka.Topics(),
		log: slog.With("role", "worker"), dlqLog: rate.Sometimes{Interval: 10 * time.Second},
		limiterLog: rate.Sometimes{Interval: 10 * time.Second}, pauseLog: rate.Sometimes{Interval: 10 * time.Second},
		quota: quota{parts: map[int32]*partition{}, handovers: map[int32]*handover{}}}
	w.m = w.newMetrics(cfg.Registerer)
	base := append(kafka.GroupConsumer(cfg.Group, w.topics.Requests), kgo.RebalanceTimeout(cfg.RebalanceTimeout), kafka.ResultBatches(),
		kgo.OnPartitionsRevoked(w.forget), kgo.OnPartitionsLost(w.forget), kgo.OnOffsetsFetched(w.fetched))
	cl, err := kafka.NewClient(cfg.Kafka, append(base, opts...)...)
	if err != nil {
		return nil, err
	}
	w.cl = cl
	return w, nil
}

func (w *Worker) batchAge() time.Duration {
	if start := w.batchStart.Load(); start != 0 {
		return time.Since(time.Unix(0, start))
	}
	return 0
}

// Healthy fails while the batch in hand has outlived the group's rebalance
// timeout: the group has then given this worker's partitions to another
// member, and a supervisor should restart it (its /healthz says so).
func (w *Worker) Healthy() error {
	if age := w.batchAge(); age > w.cfg.RebalanceTimeout {
		return fmt.Errorf("worker: the batch in hand is %s old, over the group's %s rebalance timeout", age.Round(time.Millisecond), w.cfg.RebalanceTimeout)
	}
	return nil
}

// Run processes batches until ctx ends or the worker is closed. A batch in
// hand when ctx ends is still produced and committed (within DrainTimeout);
// records held for quota are not: they were never committed, and whoever
// owns their partition next reads them again.
func (w *Worker) Run(ctx context.Context) error {
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(w.cfg.DrainTimeout, cancelWork) })
	defer stop()
	for {
		fetches := w.poll(ctx)
		if fetches.IsClientClosed() || ctx.Err() != nil {
			w.cl.AllowRebalance()
			return nil
		}
		fetches.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.DeadlineExceeded) { // the poll woke for held records
				w.log.Warn("fetch error", "topic", t, "partition", p, "err", err)
			}
		})
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			if n := len(p.Records); n > 0 {
				w.m.lag.WithLabelValues(strconv.Itoa(int(p.Partition))).Set(float64(p.HighWatermark - p.Records[n-1].Offset - 1))
			}
		})
		if jobs, parts := w.schedule(fetches.Records()); len(parts) > 0 {
			start := time.Now()
			w.batchStart.Store(start.UnixNano())
			err := w.handle(work, jobs, parts)
			w.batchStart.Store(0)
			if err != nil {
				w.cl.AllowRebalance()
				return fmt.Errorf("batch abandoned after drain timeout: %w", err)
			}
			w.m.batch.Observe(time.Since(start).Seconds())
		}
		w.cl.AllowRebalance()
	}
}

// poll waits for records, or until held records are due.
func (w *Worker) poll(ctx context.Context) kgo.Fetches {
	if due, ok := w.nextDue(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, due)
		defer cancel()
	}
	return w.cl.PollRecords(ctx, w.cfg.MaxBatch)
}

// handle processes one batch of jobs, produces their output and commits
// parts. It returns only when all of that succeeded or ctx ended:
// transient failures are retried, because skipping a record would lose it.
func (w *Worker) handle(ctx context.Context, jobs []*job, parts []*partition) error {
	outs := make([][]*kgo.Record, len(jobs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(w.cfg.Concurrency)
	for i, j := range jobs {
		g.Go(func() error {
			var err error
			outs[i], err = w.retry(gctx, func() ([]*kgo.Record, error) { return w.process(gctx, j) })
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
	_, err := w.retry(ctx, func() ([]*kgo.Record, error) {
		err := w.commit(ctx, parts)
		if kafka.LostMembership(err) {
			w.m.lost.Inc()
			w.log.Warn("partitions moved to another member before the commit; it redoes the batch", "records", len(jobs), "err", err)
			return nil, nil
		}
		return nil, err
	})
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

// Reasons a request is refused; each is the result's reason and the DLQ
// copy's certnode-dlq-reason.
const (
	ReasonBadEnvelope     = "bad_envelope"
	ReasonTenantMismatch  = "tenant_mismatch"
	ReasonUnauthenticated = "unauthenticated"
	ReasonInvalidPayload  = "invalid_payload"
	ReasonTooLarge        = "too_large"
)

// ReasonMonthlyQuota is the reason of a producer record's failed result
// when its tenant's monthly allowance is used up (ingest refuses its own
// requests with 429 instead).
const ReasonMonthlyQuota = "monthly_quota_exceeded"

// permanentError marks input that will never process: it goes to the DLQ.
type permanentError struct {
	reason string
	err    error
}

func (e *permanentError) Error() string { return e.reason + ": " + e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func refuse(reason string, err error) *permanentError { return &permanentError{reason, err} }

// process turns one request record into its output records: exactly one
// result whenever the record names a request (a refused one gets a failed
// result with the reason, so no job waits forever on a poison line), plus
// a DLQ copy of refused records. A returned error is transient (the
// signer failed) and the record is retried.
func (w *Worker) process(ctx context.Context, j *job) ([]*kgo.Record, error) {
	rec, auth := j.rec, j.auth
	req, err := w.admit(rec, auth, j.authErr)
	if req == nil {
		// Nothing names a request to answer: only the DLQ hears of it.
		w.m.records.WithLabelValues("unknown", "dlq_"+err.reason).Inc()
		return []*kgo.Record{w.dlq(rec, err)}, nil
	}
	res := &schemas.Result{
		V: schemas.EnvelopeVersion, ID: req.ID, Tenant: req.Tenant, Kind: req.Kind, Auth: auth,
		JobID: req.JobID, Line: req.Line, Size: len(rec.Value), ReceivedAt: req.ReceivedAt, KeyID: req.KeyID,
	}
	if auth == schemas.AuthProducer {
		res.KeyID = j.keyID
	}
	if auth != schemas.AuthIngest || res.ReceivedAt.IsZero() {
		// Only ingest's clock is trusted. The record's timestamp (the
		// producer's create time, or the broker's with LogAppendTime) is
		// stable across replays; the sink bounds it.
		res.ReceivedAt = rec.Timestamp
	}
	var out []*kgo.Record
	if err == nil {
		switch {
		case j.overQuota:
			// Not poison, so no DLQ copy: the request is fine, the
			// tenant's allowance is not.
			res.Status, res.Reason = schemas.StatusFailed, ReasonMonthlyQuota
			w.m.monthly.Inc()
		case req.Kind == schemas.KindSign:
			if serr := w.sign(ctx, req, res); serr != nil {
				if !errors.As(serr, &err) {
					return nil, serr
				}
			}
		case req.Kind == schemas.KindVerify:
			w.verify(req, res)
		}
	}
	res.ProcessedAt = time.Now()
	val, merr := json.Marshal(res)
	if err == nil && (merr != nil || len(val) > schemas.MaxResultBytes) {
		err = refuse(ReasonTooLarge, fmt.Errorf("the result is over %d bytes", schemas.MaxResultBytes))
	}
	if err != nil {
		res.Status, res.Reason = schemas.StatusFailed, err.reason
		res.Kid, res.ReceiptID, res.PayloadHash, res.Receipt, res.Keys = "", "", "", nil, ""
		out = append(out, w.dlq(rec, err))
		if val, merr = json.Marshal(res); merr != nil {
			return nil, merr
		}
	}
	w.m.records.WithLabelValues(string(req.Kind), string(res.Status)).Inc()
	result := &kgo.Record{Topic: w.topics.Receipts, Key: []byte(req.Tenant), Value: val,
		Headers: []kgo.RecordHeader{{Key: schemas.HeaderRequestID, Value: []byte(req.ID)}}}
	if req.JobID != "" {
		result.Headers = append(result.Headers, kgo.RecordHeader{Key: schemas.HeaderJobID, Value: []byte(req.JobID)})
	}
	return append([]*kgo.Record{result}, out...), nil
}

// authenticate says who wrote the record (identify), and sends a refused
// one to the audit log: the producer key it named, and, when that key is
// the organization's it claimed, that organization (a record naming
// another's key, or none, may not write into its log), and where it lies.
func (w *Worker) authenticate(rec *kgo.Record) (schemas.Auth, string, error) {
	auth, keyID, err := w.identify(rec)
	if err != nil && w.cfg.Audit != nil {
		ev := schemas.AuditEvent{At: time.Now().UTC(), Actor: schemas.AuditActor{Kind: schemas.ActorKey},
			Action: "record.refused", Target: fmt.Sprintf("%s/%d/%d", rec.Topic, rec.Partition, rec.Offset),
			Result: schemas.AuditDenied, Reason: ReasonUnauthenticated, Source: "worker"}
		if id := kafka.Header(rec, schemas.HeaderProducerKeyID); schemas.CheckTenantID(id) == nil {
			ev.Actor.ID = id
			if _, ok := w.producer.ProducerSecret(string(rec.Key), id); ok {
				ev.Org = string(rec.Key)
			}
		}
		w.cfg.Audit.Record(ev)
	}
	return auth, keyID, err
}

// identify says who wrote the record: the ingest tier (its MAC over the
// whole value), a customer producer (a producer key's HMAC over the value,
// the tenant being the record key), or nobody provable; for a producer, the
// id of the key that signed.
func (w *Worker) identify(rec *kgo.Record) (schemas.Auth, string, error) {
	var keyID, sig string
	for _, h := range rec.Headers {
		switch h.Key {
		case schemas.HeaderIngestMAC:
			if err := w.mac.Check(rec.Value, string(h.Value)); err != nil {
				return schemas.AuthNone, "", err
			}
			return schemas.AuthIngest, "", nil
		case schemas.HeaderProducerKeyID:
			keyID = string(h.Value)
		case schemas.HeaderSignature:
			sig = string(h.Value)
		case schemas.HeaderLegacyAPIKey:
			return schemas.AuthNone, "", errors.New("the certnode-api-key header is no longer accepted: sign each record with a producer key (headers " +
				schemas.HeaderProducerKeyID + " and " + schemas.HeaderSignature + ")")
		}
	}
	if keyID == "" || sig == "" {
		return schemas.AuthNone, "", errors.New("record carries neither " + schemas.HeaderProducerKeyID + " and " + schemas.HeaderSignature + " nor an ingest MAC")
	}
	secret, ok := w.producer.ProducerSecret(string(rec.Key), keyID)
	if !ok || !recordauth.Valid(secret, rec.Value, sig) {
		return schemas.AuthNone, "", fmt.Errorf("no valid signature by producer key %q of tenant %q", keyID, rec.Key)
	}
	return schemas.AuthProducer, keyID, nil
}

// admit decodes the envelope and decides whether it may be processed. It
// returns the request to answer (nil when nothing identifies one) and, for
// a refused record, why. Only ingest's records may place a request in a
// job; the result of an unauthenticated record keeps what it claimed, and
// is marked so (Auth none) for readers to check.
func (w *Worker) admit(rec *kgo.Record, auth schemas.Auth, authErr error) (*schemas.Request, *permanentError) {
	if len(rec.Value) > schemas.MaxRequestBytes {
		return nil, refuse(ReasonTooLarge, fmt.Errorf("the record is %d bytes; the limit is %d", len(rec.Value), schemas.MaxRequestBytes))
	}
	req, derr := schemas.DecodeRequest(rec.Value)
	var refusal *permanentError
	switch {
	case authErr != nil:
		refusal = refuse(ReasonUnauthenticated, authErr)
	case derr != nil:
		refusal = refuse(ReasonBadEnvelope, derr)
	case string(rec.Key) != req.Tenant:
		refusal = refuse(ReasonTenantMismatch, fmt.Errorf("record key %q, envelope tenant %q", rec.Key, req.Tenant))
	case auth == schemas.AuthProducer && req.JobID != "":
		refusal = refuse(ReasonBadEnvelope, errors.New("job_id and line are set only by the ingest tier"))
	}
	if req == nil || !answerable(req) {
		if refusal == nil { // cannot happen: an answerable check failed validation
			refusal = refuse(ReasonBadEnvelope, derr)
		}
		return nil, refusal
	}
	if auth == schemas.AuthProducer {
		req.JobID, req.Line, req.KeyID = "", 0, ""
		req.Tenant = string(rec.Key) // the tenant the signature proved
	}
	return req, refusal
}

// answerable reports whether a (possibly invalid) request names enough to
// carry a result: a valid id, tenant and kind, and a job line only when
// consistent.
func answerable(req *schemas.Request) bool {
	probe := schemas.Result{V: schemas.EnvelopeVersion, ID: req.ID, Tenant: req.Tenant, Kind: req.Kind,
		Status: schemas.StatusFailed, Auth: schemas.AuthNone, JobID: req.JobID, Line: req.Line}
	if probe.Validate() != nil {
		req.JobID, req.Line = "", 0
		probe.JobID, probe.Line = "", 0
		return probe.Validate() == nil
	}
	return true
}

func (w *Worker) sign(ctx context.Context, req *schemas.Request, res *schemas.Result) error {
	payload, err := w.payloadFor(req)
	var pe *permanentError
	switch {
	case errors.As(err, &pe):
		return pe
	case err != nil && invalidPayload(err):
		return refuse(ReasonInvalidPayload, err)
	case err != nil:
		return err
	}
	req.Payload = payload
	rc, err := w.signFor(ctx, req)
	if err != nil {
		if invalidPayload(err) {
			return refuse(ReasonInvalidPayload, err)
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
	ks, keys := w.signer.KeySet(), schemas.KeysService
	if schemas.Present(req.JWKS) {
		keys = schemas.KeysCaller
		var err error
		if ks, err = w.callerKeys.get(req.JWKS); err != nil {
			res.Status, res.Reason, res.Keys = schemas.StatusInvalid, "invalid_jwks", keys
			return
		}
	}
	res.Keys = keys
	var rc *schemas.Receipt
	var err error
	if keys == schemas.KeysService {
		rc, err = w.verifyService(req.Tenant, req.Receipt)
	} else {
		rc, err = ks.Verify(req.Receipt)
	}
	if rc != nil {
		res.Kid, res.ReceiptID, res.PayloadHash = rc.Kid, rc.ReceiptID, rc.PayloadJCSSHA256
	}
	res.Receipt = req.Receipt
	var ve *schemas.VerifyError
	switch {
	case err == nil:
		res.Status = schemas.StatusValid
	case errors.As(err, &ve):
		res.Status, res.Reason = schemas.StatusInvalid, string(ve.Reason)
	default: // never valid by default
		res.Status, res.Reason = schemas.StatusInvalid, string(schemas.ReasonMalformed)
	}
}

// dlq copies a poison record with its reason. Credentials and MACs are not
// copied: the DLQ is read by operators, and a MAC would let its copy be
// replayed into certnode.requests as authentic.
func (w *Worker) dlq(rec *kgo.Record, pe *permanentError) *kgo.Record {
	msg := pe.err.Error()
	if len(msg) > 1024 {
		msg = msg[:1024]
	}
	hs := []kgo.RecordHeader{
		{Key: schemas.HeaderDLQReason, Value: []byte(pe.reason)},
		{Key: schemas.HeaderDLQError, Value: []byte(msg)},
		{Key: schemas.HeaderDLQSource, Value: fmt.Appendf(nil, "%s/%d/%d", rec.Topic, rec.Partition, rec.Offset)},
	}
	for _, h := range rec.Headers {
		switch h.Key {
		case schemas.HeaderIngestMAC, schemas.HeaderSignature, schemas.HeaderLegacyAPIKey:
		default:
			hs = append(hs, h)
		}
	}
	w.m.dlq.WithLabelValues(pe.reason).Inc()
	// Hostile producers can send floods: the metric counts every record,
	// the log shows a sample.
	w.dlqLog.Do(func() {
		w.log.Warn("record sent to DLQ (more are only counted in certnode_worker_dlq_total)", "reason", pe.reason,
			"partition", rec.Partition, "offset", rec.Offset, "err", msg)
	})
	return &kgo.Record{Topic: w.topics.DLQ, Key: rec.Key, Value: rec.Value, Headers: hs}
}

// Close leaves the group (after the current batch) and closes the client.
func (w *Worker) Close() { w.cl.Close() }
