// Package audit publishes audit events (schemas.AuditEvent) to
// certnode.audit, each record authenticated by the internal secret's MAC,
// from which the audit log appends them to its Merkle tree, the ClickHouse
// sink stores them for queries and the threat detectors read them.
package audit

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/schemas"
)

// MaxBuffered bounds the events Record holds for the broker: past it, a
// burst (a flood of refused requests while the broker is away) drops
// events, counted, rather than growing memory or slowing the requests.
const MaxBuffered = 20000

// MAC authenticates the records (recordauth.Keyring).
type MAC interface {
	Header(value []byte) []byte
}

// Publisher sends one role's audit events.
type Publisher struct {
	cl      *kgo.Client
	mac     MAC
	topic   string
	source  string
	sent    prometheus.Counter
	dropped prometheus.Counter
	log     *slog.Logger
}

// NewPublisher connects to the brokers of cfg; source names the role
// (coordinator, ingest, worker, detector); mac authenticates the records.
// reg receives its metrics (nil: not registered).
func NewPublisher(cfg kafka.Config, source string, mac MAC, reg prometheus.Registerer, opts ...kgo.Opt) (*Publisher, error) {
	// A batch must fit the audit topic's record limit.
	base := []kgo.Opt{kgo.MaxBufferedRecords(MaxBuffered), kgo.ProducerBatchMaxBytes(schemas.MaxAuditEventBytes + 64<<10)}
	cl, err := kafka.NewClient(cfg, append(base, opts...)...)
	if err != nil {
		return nil, err
	}
	p := &Publisher{cl: cl, mac: mac, topic: cfg.Topics().Audit, source: source, log: slog.With("role", source),
		sent: prometheus.NewCounter(prometheus.CounterOpts{Name: "certnode_audit_events_sent_total",
			Help: "Audit events the broker acknowledged."}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "certnode_audit_events_dropped_total",
			Help: "Access events dropped because too many were waiting for the broker, or it refused them."}),
	}
	if reg != nil {
		reg.MustRegister(p.sent, p.dropped)
	}
	return p, nil
}

// NewID returns a random event id.
func NewID() string {
	var b [16]byte
	rand.Read(b[:])
	return "ev_" + base64.RawURLEncoding.EncodeToString(b[:])
}

// fill completes ev: its id, time and source when unset.
func (p *Publisher) fill(ev *schemas.AuditEvent) {
	if ev.ID == "" {
		ev.ID = NewID()
	}
	if ev.At.IsZero() {
		ev.At = time.Now()
	}
	if ev.Source == "" {
		ev.Source = p.source
	}
}

func (p *Publisher) record(ev *schemas.AuditEvent) (*kgo.Record, error) {
	p.fill(ev)
	if err := ev.Validate(); err != nil {
		return nil, fmt.Errorf("audit: %s: %w", ev.Action, err)
	}
	b, err := schemas.EncodeAuditEvent(ev)
	if err != nil {
		return nil, err
	}
	return &kgo.Record{Topic: p.topic, Key: []byte(ev.Org), Value: b,
		Headers: []kgo.RecordHeader{{Key: schemas.HeaderIngestMAC, Value: p.mac.Header(b)}}}, nil
}

// Record sends ev without waiting: for access events on a request's path.
// It never blocks; an event the buffer has no room for is dropped and
// counted.
func (p *Publisher) Record(ev schemas.AuditEvent) {
	rec, err := p.record(&ev)
	if err != nil {
		p.dropped.Inc()
		p.log.Error("audit event not sent", "action", ev.Action, "err", err)
		return
	}
	p.cl.TryProduce(context.Background(), rec, func(_ *kgo.Record, err error) {
		if err != nil {
			p.dropped.Inc()
			if !errors.Is(err, kgo.ErrMaxBuffered) {
				p.log.Warn("audit event not sent", "action", ev.Action, "err", err)
			}
			return
		}
		p.sent.Inc()
	})
}

// Publish sends evs and waits for the broker's acknowledgement: for
// events that must not be lost (a relay retries until this succeeds).
func (p *Publisher) Publish(ctx context.Context, evs []schemas.AuditEvent) error {
	recs := make([]*kgo.Record, 0, len(evs))
	for i := range evs {
		rec, err := p.record(&evs[i])
		if err != nil {
			return err
		}
		recs = append(recs, rec)
	}
	if err := p.cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	p.sent.Add(float64(len(recs)))
	return nil
}

// Close sends what is buffered (for at most five seconds) and disconnects.
func (p *Publisher) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p.cl.Flush(ctx)
	p.cl.Close()
}
