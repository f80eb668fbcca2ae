// Package usage publishes usage events: for every result on
// certnode.receipts of a request that was authenticated (by ingest with an
// API key, or by a producer key), one CloudEvent on certnode.usage, keyed
// by the organization (see schemas.UsageEvent). Results are read at least
// once and replayed after a worker died; an event's id is the request id
// and its time the request's received time, so a replay publishes the same
// event again and consumers (certnode.usage_events, OpenMeter) keep one.
// Offsets are committed only after the broker acknowledged the events.
package usage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/schemas"
)

// Config configures the sink.
type Config struct {
	Kafka kafka.Config
	Group string
	// Source is the base of the events' source (schemas.UsageSource).
	Source string
	// BatchRecords bounds the results handled, and events produced, at once.
	BatchRecords int
	// AttemptTimeout bounds each produce and offset commit; a failed
	// attempt is retried with backoff.
	AttemptTimeout time.Duration
	// Registerer receives the sink's metrics (nil: not registered).
	Registerer prometheus.Registerer
}

// DefaultConfig returns a config with every field but the brokers set.
func DefaultConfig() Config {
	return Config{
		Kafka: kafka.Config{Partitions: 8, ReplicationFactor: 1},
		Group: "certnode-sink-usage", Source: schemas.DefaultUsageSource,
		BatchRecords: 5000, AttemptTimeout: time.Minute,
	}
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if err := c.Kafka.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Group == "" {
		errs = append(errs, errors.New("usage sink: group is required"))
	}
	if c.Source == "" {
		errs = append(errs, errors.New("usage sink: source is required"))
	}
	if c.BatchRecords < 1 || c.AttemptTimeout <= 0 {
		errs = append(errs, errors.New("usage sink: batch records and attempt timeout must be positive"))
	}
	return errors.Join(errs...)
}

// Why a result makes no event (label of certnode_sink_usage_skipped_total).
const (
	// SkipUnauthenticated: the worker refused the request as
	// unauthenticated (auth none); what it claims is nobody's.
	SkipUnauthenticated = "unauthenticated"
	// SkipBadResult: not a valid result (the ClickHouse sink sends it to
	// the DLQ), or keyed by another tenant than it names.
	SkipBadResult = "bad_result"
)

// ErrNotAttributable is what EventFor returns for a result that must not
// be billed to anyone.
var ErrNotAttributable = errors.New("result not attributable")

// EventFor maps a result to its usage event. broker is the timestamp of the
// result's record, which bounds the received time the result claims (as
// the ClickHouse sink bounds it), so an event is dated as the request's
// analytics row. A result of an unauthenticated request is refused.
func EventFor(res *schemas.Result, broker time.Time, source string) (*schemas.UsageEvent, error) {
	if res.Auth != schemas.AuthIngest && res.Auth != schemas.AuthProducer {
		return nil, fmt.Errorf("%w: auth %q", ErrNotAttributable, res.Auth)
	}
	received, _ := schemas.TrustedTime(res.ReceivedAt, broker)
	processed, _ := schemas.TrustedTime(res.ProcessedAt, broker)
	ev := &schemas.UsageEvent{
		SpecVersion: schemas.CloudEventsSpecVersion, ID: res.ID, Source: schemas.UsageSource(source, res.Tenant),
		Type: schemas.UsageEventType, Subject: res.Tenant, Time: received.UTC(), DataContentType: schemas.UsageDataContentType,
		Data: schemas.UsageData{Kind: res.Kind, Status: res.Status, Auth: res.Auth, KeyID: res.KeyID, Bytes: int64(res.Size),
			JobID: res.JobID, ProcessedAt: processed.UTC()},
	}
	if err := ev.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotAttributable, err)
	}
	return ev, nil
}

type metrics struct {
	events  prometheus.Counter
	skipped *prometheus.CounterVec
}

func newMetrics() metrics {
	m := metrics{
		events: prometheus.NewCounter(prometheus.CounterOpts{Name: "certnode_sink_usage_events_total",
			Help: "Usage events produced and acknowledged (replays included)."}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "certnode_sink_usage_skipped_total",
			Help: "Results that made no usage event, by reason."}, []string{"reason"}),
	}
	for _, r := range []string{SkipUnauthenticated, SkipBadResult} {
		m.skipped.WithLabelValues(r)
	}
	return m
}

// Sink is one usage publisher; run several in a group to scale.
type Sink struct {
	cfg    Config
	topics schemas.Topics
	cl     *kgo.Client
	log    *slog.Logger
	m      metrics
}

// New joins the consumer group.
func New(cfg Config, opts ...kgo.Opt) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Sink{cfg: cfg, topics: cfg.Kafka.Topics(), log: slog.With("role", "sink-usage"), m: newMetrics()}
	var err error
	if s.cl, err = kafka.NewClient(cfg.Kafka, append(kafka.GroupConsumer(cfg.Group, s.topics.Receipts), opts...)...); err != nil {
		return nil, err
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(s.m.events, s.m.skipped)
	}
	return s, nil
}

// Run consumes and publishes until ctx ends; the batch in hand is
// published and committed first.
func (s *Sink) Run(ctx context.Context) error {
	return kafka.EachBatch(ctx, s.cl, s.cfg.BatchRecords, s.log, func(work context.Context, recs []*kgo.Record) error {
		return s.publish(work, ctx, recs)
	})
}

// events maps result records to usage event records.
func (s *Sink) events(recs []*kgo.Record) []*kgo.Record {
	var out []*kgo.Record
	for _, rec := range recs {
		res, err := schemas.DecodeResult(rec.Value)
		if err == nil && string(rec.Key) != res.Tenant {
			err = fmt.Errorf("record key %q, result tenant %q", rec.Key, res.Tenant)
		}
		if err != nil {
			s.m.skipped.WithLabelValues(SkipBadResult).Inc()
			s.log.Warn("result skipped", "partition", rec.Partition, "offset", rec.Offset, "err", err)
			continue
		}
		ev, err := EventFor(res, rec.Timestamp, s.cfg.Source)
		switch {
		case err != nil && res.Auth == schemas.AuthNone:
			s.m.skipped.WithLabelValues(SkipUnauthenticated).Inc()
			continue
		case err != nil:
			s.m.skipped.WithLabelValues(SkipBadResult).Inc()
			s.log.Warn("result skipped", "partition", rec.Partition, "offset", rec.Offset, "err", err)
			continue
		}
		val, err := json.Marshal(ev)
		if err != nil { // cannot happen: the event's fields all encode
			s.m.skipped.WithLabelValues(SkipBadResult).Inc()
			continue
		}
		out = append(out, &kgo.Record{Topic: s.topics.Usage, Key: []byte(ev.Subject), Value: val,
			// The CloudEvents Kafka binding's marker of structured mode.
			Headers: []kgo.RecordHeader{{Key: "content-type", Value: []byte("application/cloudevents+json; charset=UTF-8")}}})
	}
	return out
}

// publish produces the events of recs and commits recs once the broker
// acknowledged every event, retrying each step until it succeeds. It gives
// up only when stop ends and a step keeps failing, leaving the offsets
// uncommitted for the next owner, which publishes the same events again.
func (s *Sink) publish(ctx, stop context.Context, recs []*kgo.Record) error {
	out := s.events(recs)
	if err := kafka.Retry(stop, s.log, "usage produce", func() error {
		pctx, cancel := context.WithTimeout(ctx, s.cfg.AttemptTimeout)
		defer cancel()
		return kafka.ProduceAcked(pctx, s.cl, &out, func(*kgo.Record) { s.m.events.Inc() })
	}); err != nil {
		return err
	}
	// Published events the next owner publishes again are kept once by
	// consumers (their ids).
	return kafka.Commit(ctx, stop, s.cl, s.log, s.cfg.AttemptTimeout, recs)
}

// Close leaves the group and closes the client.
func (s *Sink) Close() { s.cl.Close() }
