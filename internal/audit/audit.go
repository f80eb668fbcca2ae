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
	"sync"
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

// MaxRefusalsPerMinute bounds the refusals Record sends per address (or,
// without one, per actor) and minute: a flood of bad requests is not a
// flood of leaves in the audit log. The detectors alert well below it.
const MaxRefusalsPerMinute = 60

// maxRefusers bounds the addresses counted at once.
const maxRefusers = 100_000

// Publisher sends one role's audit events.
type Publisher struct {
	cl         *kgo.Client
	mac        MAC
	topic      string
	source     string
	sent       prometheus.Counter
	dropped    prometheus.Counter
	suppressed prometheus.Counter
	log        *slog.Logger

	mu       sync.Mutex
	minute   int64
	refusals map[string]int // this minute's, by address or actor
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
		suppressed: prometheus.NewCounter(prometheus.CounterOpts{Name: "certnode_audit_refusals_suppressed_total",
			Help: "Refusals not sent: past MaxRefusalsPerMinute from one address or actor."}),
		refusals: map[string]int{},
	}
	if reg != nil {
		reg.MustRegister(p.sent, p.dropped, p.suppressed)
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
// counted, and so is a refusal past MaxRefusalsPerMinute from its address.
func (p *Publisher) Record(ev schemas.AuditEvent) {
	if ev.Result == schemas.AuditDenied && !p.admit(ev) {
		p.suppressed.Inc()
		return
	}
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

// admit counts a refusal against its address's (or actor's) minute.
func (p *Publisher) admit(ev schemas.AuditEvent) bool {
	who := ev.Actor.Addr
	if who == "" {
		who = ev.Org + "/" + ev.Actor.Kind + "/" + ev.Actor.ID
	}
	m := time.Now().Unix() / 60
	p.mu.Lock()
	defer p.mu.Unlock()
	if m != p.minute || len(p.refusals) >= maxRefusers {
		p.minute = m
		clear(p.refusals)
	}
	p.refusals[who]++
	return p.refusals[who] <= MaxRefusalsPerMinute
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
