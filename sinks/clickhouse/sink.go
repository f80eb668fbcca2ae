// Package clickhouse writes every authenticated result from
// certnode.receipts into the ClickHouse table certnode.results, every
// usage event from certnode.usage into certnode.usage_events, and every
// webhook attempt record from certnode.webhooks.attempts into
// certnode.webhook_attempts (which feeds certnode.webhook_messages), and
// every audit event from certnode.audit into certnode.audit_events, in batches
// by rows and time, committing Kafka offsets only after every record of a
// batch was inserted or sent to the DLQ. Usage rows are the events as
// published (what an external biller reading the topic sees), and the
// usage sink keeps publishing while ClickHouse is away. Replays are harmless: the table
// merges exact copies and counts read the certnode.requests view, one row
// per request id (see schemas.ClickHouseDDL). No record can stall the sink:
// untrusted times are replaced by the record's broker timestamp, results
// that do not decode go to the DLQ, and a batch the server refuses is split
// until the refused rows are found and sent to the DLQ.
package clickhouse

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/chconn"
	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/schemas"
)

// DLQ reasons of the sink (header schemas.HeaderDLQReason).
const (
	// ReasonBadResult: the record is not a valid result envelope, or holds
	// values no row can store.
	ReasonBadResult = "bad_result"
	// ReasonRefused: ClickHouse refused the row; the error header has the
	// server's message.
	ReasonRefused = "clickhouse_refused"
	// ReasonBadUsageEvent: the record is not a valid, attributed usage
	// event, or holds values no row can store.
	ReasonBadUsageEvent = "bad_usage_event"
	// ReasonBadWebhookAttempt: the record is not a valid webhook attempt
	// of the organization that keys it, or holds values no row can store.
	ReasonBadWebhookAttempt = "bad_webhook_attempt"
	// ReasonBadAuditEvent: the record is not a valid audit event of the
	// organization that keys it, or holds values no row can store.
	ReasonBadAuditEvent = "bad_audit_event"
)

// Config configures the sink.
type Config struct {
	Kafka kafka.Config
	Group string
	// ClickHouse is where the rows go.
	ClickHouse chconn.Options
	// BatchRows and BatchWait bound a batch: it is written when either is
	// reached.
	BatchRows int
	BatchWait time.Duration
	// AttemptTimeout bounds each insert, DLQ produce and offset commit; a
	// failed attempt is retried with backoff.
	AttemptTimeout time.Duration
	// Sealer encrypts the payloads (results' receipts, webhook bodies)
	// before they are stored: internal/envelope.
	Sealer Sealer
	// Registerer receives the sink's metrics (nil: not registered).
	Registerer prometheus.Registerer
}

// Sealer encrypts a payload of org's, from time at, for storage.
type Sealer interface {
	Seal(ctx context.Context, org string, at time.Time, plain []byte) (string, error)
}

// DefaultConfig returns a config with every field but the addresses set.
func DefaultConfig() Config {
	return Config{
		Kafka:     kafka.Config{Partitions: 8, ReplicationFactor: 1},
		Group:     "certnode-sink-clickhouse",
		BatchRows: 10000, BatchWait: time.Second, AttemptTimeout: time.Minute,
	}
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if err := c.Kafka.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Group == "" {
		errs = append(errs, errors.New("clickhouse sink: group is required"))
	}
	if err := c.ClickHouse.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.BatchRows < 1 || c.BatchWait <= 0 {
		errs = append(errs, errors.New("clickhouse sink: batch rows and wait must be positive"))
	}
	if c.AttemptTimeout <= 0 {
		errs = append(errs, errors.New("clickhouse sink: attempt timeout must be positive"))
	}
	if c.Sealer == nil {
		errs = append(errs, errors.New("clickhouse sink: a sealer is required: payloads are stored encrypted"))
	}
	return errors.Join(errs...)
}

// metrics are the sink's Prometheus metrics.
type metrics struct {
	inserted        prometheus.Counter
	usageInserted   prometheus.Counter
	attemptInserted prometheus.Counter
	auditInserted   prometheus.Counter
	dlq             *prometheus.CounterVec
	unauthenticated prometheus.Counter
	replaced        *prometheus.CounterVec
	pending         prometheus.Gauge
	flush           prometheus.Histogram
}

func newMetrics() metrics {
	m := metrics{
		inserted: prometheus.NewCounter(prometheus.CounterOpts{Name: "certnode_sink_clickhouse_rows_total",
			Help: "Rows inserted into certnode.results."}),
		usageInserted: prometheus.NewCounter(prometheus.CounterOpts{Name: "certnode_sink_clickhouse_usage_rows_total",
			Help: "Rows inserted into certnode.usage_events."}),
		attemptInserted: prometheus.NewCounter(prometheus.CounterOpts{Name: "certnode_sink_clickhouse_webhook_attempt_rows_total",
			Help: "Rows inserted into certnode.webhook_attempts."}),
		auditInserted: prometheus.NewCounter(prometheus.CounterOpts{Name: "certnode_sink_clickhouse_audit_rows_total",
			Help: "Rows inserted into certnode.audit_events."}),
		dlq: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "certnode_sink_clickhouse_dlq_total",
			Help: "Records sent to the DLQ, by reason."}, []string{"reason"}),
		unauthenticated: prometheus.NewCounter(prometheus.CounterOpts{Name: "certnode_sink_clickhouse_unauthenticated_total",
			Help: "Results of requests refused as unauthenticated (auth none), skipped: not the tenant's."}),
		replaced: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "certnode_sink_clickhouse_time_replaced_total",
			Help: "Times a result claimed that lay outside the window around its record's broker timestamp, replaced by it."}, []string{"column"}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{Name: "certnode_sink_clickhouse_pending_rows",
			Help: "Records collected and not yet inserted (or sent to the DLQ) and committed."}),
		flush: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "certnode_sink_clickhouse_flush_seconds",
			Help: "Time to insert, DLQ and commit one batch.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
	}
	// Every label value is shown from the start, at zero.
	for _, r := range []string{ReasonBadResult, ReasonRefused, ReasonBadUsageEvent, ReasonBadWebhookAttempt, ReasonBadAuditEvent} {
		m.dlq.WithLabelValues(r)
	}
	for _, c := range []string{colReceivedAt, colProcessedAt} {
		m.replaced.WithLabelValues(c)
	}
	return m
}

// Sink is one ClickHouse writer; run several in a group to scale.
type Sink struct {
	cfg      Config
	topics   schemas.Topics
	cl       *kgo.Client
	conn     driver.Conn // nil when built on other Inserters (tests)
	ins      Inserter[Row]
	usage    Inserter[UsageRow]
	attempts Inserter[AttemptRow]
	audit    Inserter[AuditRow]
	log      *slog.Logger
	m        metrics
}

// New connects to ClickHouse, applies the DDL and joins the consumer group.
func New(ctx context.Context, cfg Config, opts ...kgo.Opt) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	conn, err := open(ctx, cfg.ClickHouse)
	if err != nil {
		return nil, err
	}
	s, err := newSink(cfg, NewClickHouseInserter(conn, schemas.ClickHouseResultsTable), NewUsageInserter(conn, schemas.ClickHouseUsageTable),
		NewAttemptInserter(conn, schemas.ClickHouseWebhookAttemptsTable), NewAuditInserter(conn, schemas.ClickHouseAuditTable), opts...)
	if err != nil {
		conn.Close()
		return nil, err
	}
	s.conn = conn
	return s, nil
}

// newSink builds a sink that writes results through ins, usage events
// through usage, webhook attempts through attempts and audit events
// through audit, and joins the group.
func newSink(cfg Config, ins Inserter[Row], usage Inserter[UsageRow], attempts Inserter[AttemptRow], audit Inserter[AuditRow], opts ...kgo.Opt) (*Sink, error) {
	s := &Sink{cfg: cfg, topics: cfg.Kafka.Topics(), ins: ins, usage: usage, attempts: attempts, audit: audit, log: slog.With("role", "sink-clickhouse"), m: newMetrics()}
	// Results are the largest records, so ResultBatches fits DLQ copies of any.
	base := append(kafka.GroupConsumer(cfg.Group, s.topics.Receipts, s.topics.Usage, s.topics.WebhookAttempts, s.topics.Audit), kafka.ResultBatches())
	var err error
	if s.cl, err = kafka.NewClient(cfg.Kafka, append(base, opts...)...); err != nil {
		return nil, err
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(s.m.inserted, s.m.usageInserted, s.m.attemptInserted, s.m.auditInserted, s.m.dlq, s.m.unauthenticated, s.m.replaced, s.m.pending, s.m.flush)
	}
	return s, nil
}

// open connects to ClickHouse and applies the DDL.
func open(ctx context.Context, o chconn.Options) (driver.Conn, error) {
	conn, err := chconn.Open(ctx, o)
	if err != nil {
		return nil, err
	}
	if err := chconn.Migrate(ctx, conn); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// Run consumes and writes until ctx ends; the batch in hand is flushed first.
func (s *Sink) Run(ctx context.Context) error {
	work := context.WithoutCancel(ctx)
	for ctx.Err() == nil {
		recs := s.collect(ctx)
		if len(recs) > 0 {
			if err := s.flush(work, ctx, recs); err != nil {
				s.cl.AllowRebalance()
				return err
			}
		}
		s.cl.AllowRebalance()
	}
	return nil
}

// collect polls until BatchRows records or BatchWait after the first one.
func (s *Sink) collect(ctx context.Context) []*kgo.Record {
	var recs []*kgo.Record
	pollCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var timer *time.Timer
	for len(recs) < s.cfg.BatchRows {
		fetches := s.cl.PollRecords(pollCtx, s.cfg.BatchRows-len(recs))
		if fetches.IsClientClosed() {
			return recs
		}
		fetches.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				s.log.Warn("fetch error", "topic", t, "partition", p, "err", err)
			}
		})
		recs = append(recs, fetches.Records()...)
		s.m.pending.Set(float64(len(recs)))
		if len(recs) > 0 && timer == nil {
			timer = time.AfterFunc(s.cfg.BatchWait, cancel)
			defer timer.Stop()
		}
		if pollCtx.Err() != nil {
			return recs
		}
	}
	return recs
}

// part is one table's share of a batch: rows to insert, from src.
type part[R any] struct {
	rows []R
	src  []*kgo.Record
}

func (p *part[R]) add(row R, rec *kgo.Record) {
	p.rows, p.src = append(p.rows, row), append(p.src, rec)
}

// batch is a collected batch sorted out: rows to insert in each table and
// records for the DLQ.
type batch struct {
	results  part[Row]
	usage    part[UsageRow]
	attempts part[AttemptRow]
	audit    part[AuditRow]
	dlq      []*kgo.Record
	// sealed counts the rows of results and attempts whose payloads are
	// sealed: a retry goes on from there.
	sealed [2]int
}

// triage decodes recs into rows. Records that do not decode, or hold
// values no row can store, go to the DLQ; results of unauthenticated
// requests are skipped (the worker sent the request itself to the DLQ, and
// what they claim is not the tenant's).
func (s *Sink) triage(recs []*kgo.Record) *batch {
	b := &batch{}
	for _, rec := range recs {
		switch rec.Topic {
		case s.topics.Usage:
			triageKeyed(s, b, &b.usage, rec, ReasonBadUsageEvent, schemas.DecodeUsageEvent,
				func(ev *schemas.UsageEvent) string { return ev.Subject }, usageRowFor)
			continue
		case s.topics.WebhookAttempts:
			triageKeyed(s, b, &b.attempts, rec, ReasonBadWebhookAttempt, schemas.DecodeWebhookAttempt,
				func(a *schemas.WebhookAttempt) string { return a.Org }, attemptRowFor)
			continue
		case s.topics.Audit:
			// The audit log refuses the same events (a forged one it
			// never holds: an export's check finds the row).
			triageKeyed(s, b, &b.audit, rec, ReasonBadAuditEvent, decodeAuditEvent,
				func(e auditEvent) string { return e.Org }, func(e auditEvent) (AuditRow, error) { return auditRowFor(e, rec.Timestamp) })
			continue
		}
		res, err := schemas.DecodeResult(rec.Value)
		if err != nil {
			b.dlq = append(b.dlq, s.dlqRecord(rec, ReasonBadResult, err))
			continue
		}
		if res.Auth == schemas.AuthNone {
			s.m.unauthenticated.Inc()
			continue
		}
		row, replaced, err := rowFor(res, rec.Timestamp)
		if err != nil {
			b.dlq = append(b.dlq, s.dlqRecord(rec, ReasonBadResult, err))
			continue
		}
		for _, c := range replaced {
			s.m.replaced.WithLabelValues(c).Inc()
		}
		b.results.add(row, rec)
	}
	return b
}

// triageKeyed adds the row of rec, a record keyed by the organization it
// belongs to, to p, or rec to the DLQ with reason when it does not decode,
// is not the keying organization's (org names the one it claims), or holds
// values no row can store.
func triageKeyed[E, R any](s *Sink, b *batch, p *part[R], rec *kgo.Record, reason string,
	decode func([]byte) (E, error), org func(E) string, rowFor func(E) (R, error)) {
	e, err := decode(rec.Value)
	if err == nil && string(rec.Key) != org(e) {
		err = fmt.Errorf("record key %q, organization %q", rec.Key, org(e))
	}
	var row R
	if err == nil {
		row, err = rowFor(e)
	}
	if err != nil {
		b.dlq = append(b.dlq, s.dlqRecord(rec, reason, err))
		return
	}
	p.add(row, rec)
}

// dlqRecord copies a record to the DLQ with why and where from.
func (s *Sink) dlqRecord(rec *kgo.Record, reason string, err error) *kgo.Record {
	hs := []kgo.RecordHeader{
		{Key: schemas.HeaderDLQReason, Value: []byte(reason)},
		{Key: schemas.HeaderDLQError, Value: []byte(err.Error())},
		{Key: schemas.HeaderDLQSource, Value: fmt.Appendf(nil, "%s/%d/%d", rec.Topic, rec.Partition, rec.Offset)},
	}
	s.log.Warn("record sent to DLQ", "topic", rec.Topic, "reason", reason, "partition", rec.Partition, "offset", rec.Offset, "err", err)
	return &kgo.Record{Topic: s.topics.DLQ, Key: rec.Key, Value: rec.Value, Headers: append(hs, rec.Headers...)}
}

// flush inserts recs, sends the ones that cannot be inserted to the DLQ,
// and then commits them all, retrying each step until it succeeds: a
// record is never skipped. It gives up only when stop ends and a step
// keeps failing, leaving the offsets uncommitted for the next owner.
func (s *Sink) flush(ctx, stop context.Context, recs []*kgo.Record) error {
	start := time.Now()
	b := s.triage(recs)
	// A payload is never stored in the clear, nor dropped: while a KEK
	// cannot be had (the HSM unreachable) the batch waits, and the retry
	// log names the organization.
	if err := s.retry(stop, "seal", func() error {
		sctx, cancel := context.WithTimeout(ctx, s.cfg.AttemptTimeout)
		defer cancel()
		return s.seal(sctx, b)
	}); err != nil {
		return err
	}
	for _, insert := range []func() ([]*kgo.Record, error){
		func() ([]*kgo.Record, error) { return insertPart(s, ctx, stop, s.ins, b.results, s.m.inserted) },
		func() ([]*kgo.Record, error) { return insertPart(s, ctx, stop, s.usage, b.usage, s.m.usageInserted) },
		func() ([]*kgo.Record, error) {
			return insertPart(s, ctx, stop, s.attempts, b.attempts, s.m.attemptInserted)
		},
		func() ([]*kgo.Record, error) { return insertPart(s, ctx, stop, s.audit, b.audit, s.m.auditInserted) },
	} {
		refused, err := insert()
		if err != nil {
			return err
		}
		b.dlq = append(b.dlq, refused...)
	}
	if err := s.retry(stop, "DLQ produce", func() error { return s.produceDLQ(ctx, &b.dlq) }); err != nil {
		return err
	}
	if err := s.retry(stop, "commit", func() error {
		cctx, cancel := context.WithTimeout(ctx, s.cfg.AttemptTimeout)
		defer cancel()
		err := s.cl.CommitRecords(cctx, recs...)
		if kafka.LostMembership(err) {
			// The rows are in ClickHouse; the new owner writes them again
			// and the table absorbs the copies.
			s.log.Warn("partitions moved to another member before the commit", "rows", len(recs), "err", err)
			return nil
		}
		return err
	}); err != nil {
		return err
	}
	s.m.pending.Set(0)
	s.m.flush.Observe(time.Since(start).Seconds())
	return nil
}

// seal encrypts the payloads of b's rows in place.
func (s *Sink) seal(ctx context.Context, b *batch) error {
	for ; b.sealed[0] < len(b.results.rows); b.sealed[0]++ {
		r := &b.results.rows[b.sealed[0]]
		if err := sealField(ctx, s.cfg.Sealer, r.Tenant, r.ReceivedAt, &r.Receipt); err != nil {
			return err
		}
	}
	for ; b.sealed[1] < len(b.attempts.rows); b.sealed[1]++ {
		r := &b.attempts.rows[b.sealed[1]]
		// The endpoint's answer may echo the body: it is sealed too.
		for _, v := range []*string{&r.Body, &r.ResponseBody} {
			if err := sealField(ctx, s.cfg.Sealer, r.Org, r.At, v); err != nil {
				return err
			}
		}
	}
	return nil
}

// sealField seals *v unless it is empty (nothing to keep).
func sealField(ctx context.Context, sl Sealer, org string, at time.Time, v *string) error {
	if *v == "" {
		return nil
	}
	sealed, err := sl.Seal(ctx, org, at, []byte(*v))
	if err != nil {
		return err
	}
	*v = sealed
	return nil
}

// insertPart inserts p's rows through ins, retrying until every row is
// inserted or refused, and returns DLQ copies of the refused rows' records.
func insertPart[R any](s *Sink, ctx, stop context.Context, ins Inserter[R], p part[R], inserted prometheus.Counter) ([]*kgo.Record, error) {
	bs := newBisect(p.rows)
	if err := s.retry(stop, "insert", func() error {
		return bs.run(ctx, ins, s.cfg.AttemptTimeout, func(n int) { inserted.Add(float64(n)) })
	}); err != nil {
		return nil, err
	}
	var dlq []*kgo.Record
	for _, r := range bs.refused {
		dlq = append(dlq, s.dlqRecord(p.src[r.index], ReasonRefused, r.err))
	}
	return dlq, nil
}

// produceDLQ produces *recs and waits for the broker's acknowledgement,
// leaving in *recs only those that failed, for the next attempt.
func (s *Sink) produceDLQ(ctx context.Context, recs *[]*kgo.Record) error {
	pctx, cancel := context.WithTimeout(ctx, s.cfg.AttemptTimeout)
	defer cancel()
	return kafka.ProduceAcked(pctx, s.cl, recs, func(r *kgo.Record) {
		s.m.dlq.WithLabelValues(kafka.Header(r, schemas.HeaderDLQReason)).Inc()
	})
}

// retry runs f until it succeeds or stop ends (kafka.Retry).
func (s *Sink) retry(stop context.Context, what string, f func() error) error {
	return kafka.Retry(stop, s.log, what, f)
}

// Close leaves the group and closes the connections.
func (s *Sink) Close() {
	s.cl.Close()
	if s.conn != nil {
		s.conn.Close()
	}
}
