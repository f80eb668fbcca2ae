// Package detect watches the live event streams for attacks: the audit
// events of every role (refused credentials, failed sign-ins, keys seen
// from new addresses, endpoint changes), the results (each key's volume,
// failed verifications) and the webhook attempts (deliveries per
// endpoint). Its Engine runs the detectors in event time; Detector feeds
// it from Kafka and turns each finding into a security event: in the
// audit log (action security.alert), a security.alert webhook to the
// organization, a Prometheus count and, when configured, a temporary
// block of the address at ingest.
//
// A detector's state is in its memory: run one per deployment (its
// consumer group sees every partition), and after a restart its
// baselines warm up again.
package detect

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/schemas"
)

// AuditPublisher sends audit events and waits for the broker
// (internal/audit's Publisher).
type AuditPublisher interface {
	Publish(ctx context.Context, evs []schemas.AuditEvent) error
}

// Blocker blocks an address at ingest until a time (the coordinator).
type Blocker interface {
	Block(ctx context.Context, addr string, until time.Time, reason string) error
}

// RecordMAC checks the audit records the detectors read, and
// authenticates the event records the dispatcher reads
// (recordauth.Keyring).
type RecordMAC interface {
	Check(value []byte, header string) error
	Header(value []byte) []byte
}

// Config configures the detector.
type Config struct {
	Kafka      kafka.Config
	Group      string
	Thresholds Thresholds
	// BlockFor is how long an address flagged by a burst of refused
	// credentials or sign-ins is blocked at ingest (0: never blocked).
	BlockFor       time.Duration
	BatchRecords   int
	AttemptTimeout time.Duration
	Registerer     prometheus.Registerer
}

// DefaultConfig returns a config with every field but the brokers set.
func DefaultConfig() Config {
	return Config{Kafka: kafka.Config{Partitions: 8, ReplicationFactor: 1}, Group: "certnode-detect", Thresholds: DefaultThresholds(),
		BatchRecords: 5000, AttemptTimeout: 30 * time.Second}
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	errs := []error{c.Kafka.Validate(), c.Thresholds.Validate()}
	if c.Group == "" || c.BatchRecords < 1 || c.AttemptTimeout <= 0 {
		errs = append(errs, errors.New("detect: a group, a positive batch and attempt timeout are required"))
	}
	if c.BlockFor < 0 || c.BlockFor > 7*24*time.Hour {
		errs = append(errs, errors.New("detect: a block lasts 0 (none) to 7 days"))
	}
	return errors.Join(errs...)
}

// Detector feeds the engine from Kafka and acts on its findings.
type Detector struct {
	cfg     Config
	topics  schemas.Topics
	cl      *kgo.Client
	engine  *Engine
	audit   AuditPublisher
	blocker Blocker // nil: no blocking
	mac     RecordMAC
	log     *slog.Logger
	alerts  *prometheus.CounterVec
	blocked prometheus.Counter
	refused prometheus.Counter
	swept   time.Time
}

// New joins the consumer group. blocker may be nil.
func New(cfg Config, audit AuditPublisher, blocker Blocker, mac RecordMAC, opts ...kgo.Opt) (*Detector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	engine, err := NewEngine(cfg.Thresholds)
	if err != nil {
		return nil, err
	}
	d := &Detector{cfg: cfg, topics: cfg.Kafka.Topics(), engine: engine, audit: audit, blocker: blocker, mac: mac, log: slog.With("role", "detect"),
		alerts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "certnode_security_alerts_total",
			Help: "Security alerts raised, by detector."}, []string{"detector"}),
		blocked: prometheus.NewCounter(prometheus.CounterOpts{Name: "certnode_security_blocks_total",
			Help: "Addresses blocked at ingest after an alert."}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{Name: "certnode_security_records_refused_total",
			Help: "Audit records the detectors ignored: no valid MAC, or timed too far ahead of their record."}),
	}
	for _, name := range Detectors {
		d.alerts.WithLabelValues(name)
	}
	untracked := prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "certnode_security_untracked_total",
		Help: "Signals whose subject the detectors had no room to track."}, func() float64 { return float64(engine.Untracked()) })
	d.cl, err = kafka.NewClient(cfg.Kafka, append(kafka.GroupConsumer(cfg.Group, d.topics.Audit, d.topics.Receipts, d.topics.WebhookAttempts), opts...)...)
	if err != nil {
		return nil, err
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(d.alerts, d.blocked, d.refused, untracked)
	}
	return d, nil
}

// Run detects until ctx ends.
func (d *Detector) Run(ctx context.Context) error {
	return kafka.EachBatch(ctx, d.cl, d.cfg.BatchRecords, d.log, func(work context.Context, recs []*kgo.Record) error {
		var alerts []Alert
		for _, rec := range recs {
			for _, s := range d.signals(rec) {
				alerts = append(alerts, d.engine.Observe(s)...)
			}
		}
		if now := time.Now(); now.Sub(d.swept) > time.Minute {
			d.engine.Sweep(now)
			d.swept = now
		}
		if err := d.act(work, ctx, alerts); err != nil {
			return err
		}
		return kafka.Commit(work, ctx, d.cl, d.log, d.cfg.AttemptTimeout, recs)
	})
}

// signals reads what rec reports. Records that do not decode are skipped:
// the sinks that own those topics send them to the DLQ.
func (d *Detector) signals(rec *kgo.Record) []Signal {
	switch rec.Topic {
	case d.topics.Audit:
		// Only the roles' own events count: a forged one could block any
		// address.
		if err := d.mac.Check(rec.Value, kafka.Header(rec, schemas.HeaderIngestMAC)); err != nil {
			d.refused.Inc()
			return nil
		}
		ev, _, err := schemas.DecodeAuditEvent(rec.Value)
		if err != nil {
			return nil
		}
		if err := schemas.CheckAuditTime(ev.At, rec.Timestamp); err != nil {
			d.refused.Inc()
			return nil
		}
		return auditSignals(ev)
	case d.topics.WebhookAttempts:
		a, err := schemas.DecodeWebhookAttempt(rec.Value)
		if err != nil || schemas.CheckAuditTime(a.At, rec.Timestamp) != nil {
			return nil
		}
		return []Signal{{At: a.At, Kind: Delivery, Org: a.Org, Target: a.EndpointID}}
	}
	res, err := schemas.DecodeResult(rec.Value)
	if err != nil || res.Auth == schemas.AuthNone {
		return nil
	}
	at, _ := schemas.TrustedTime(res.ProcessedAt, rec.Timestamp)
	var out []Signal
	if res.KeyID != "" {
		out = append(out, Signal{At: at, Kind: Request, Org: res.Tenant, Key: res.KeyID})
	}
	if res.Kind == schemas.KindVerify {
		out = append(out, Signal{At: at, Kind: Verification, Org: res.Tenant, Bad: res.Status == schemas.StatusInvalid})
	}
	return out
}

// maxSubject bounds a key id or endpoint id a signal carries, so that an
// alert's subject fits an audit event.
const maxSubject = 128

// auditSignals reads an audit event. The detector's own alerts are
// events too, and signal nothing.
func auditSignals(ev *schemas.AuditEvent) []Signal {
	s := Signal{At: ev.At, Org: ev.Org}
	if a, err := netip.ParseAddr(ev.Actor.Addr); err == nil {
		s.Addr = a.Unmap().String()
	}
	key := ev.Actor.ID
	if ev.Actor.Kind != schemas.ActorKey || len(key) > maxSubject {
		key = ""
	}
	switch {
	case ev.Action == "user.login_failed" && s.Addr != "":
		s.Kind = LoginFailure
	case ev.Action == "access.refused" && ev.Result == schemas.AuditDenied, ev.Action == "record.refused":
		s.Kind, s.Key = AuthFailure, key
	case ev.Action == ActionKeyAddress && key != "" && s.Addr != "":
		s.Kind, s.Key = KeyAddress, key
	case (ev.Action == "webhook_endpoint.create" || ev.Action == "webhook_endpoint.update") && len(ev.Target) <= maxSubject:
		s.Kind, s.Target = EndpointChanged, ev.Target
	default:
		return nil
	}
	return []Signal{s}
}

// ActionKeyAddress is the audit event ingest sends the first time it sees
// a key from an address.
const ActionKeyAddress = "api_key.address"

// ActionAlert is the audit event of a finding.
const ActionAlert = "security.alert"

// blocking lists the detectors whose subject is an address worth blocking.
var blocking = map[string]bool{FailedAuthAddress: true, CredentialStuffing: true}

// act makes each alert a security event, retrying until it is done or stop
// ends: a block (when configured), the audit event, the webhook.
func (d *Detector) act(ctx, stop context.Context, alerts []Alert) error {
	if len(alerts) == 0 {
		return nil
	}
	evs := make([]schemas.AuditEvent, 0, len(alerts))
	var hooks []*kgo.Record
	for _, a := range alerts {
		response := ""
		if blocking[a.Detector] && d.blocker != nil && d.cfg.BlockFor > 0 && a.Addr != "" {
			response = d.block(ctx, stop, a)
		}
		d.alerts.WithLabelValues(a.Detector).Inc()
		d.log.Warn("security alert", "detector", a.Detector, "org", a.Org, "subject", a.Subject, "count", a.Count, "response", response)
		detail := a.Summary
		if response != "" {
			detail += "; " + response
		}
		ev := schemas.AuditEvent{ID: a.ID, At: a.At.UTC(), Org: a.Org, Actor: schemas.AuditActor{Kind: schemas.ActorDetector, ID: a.Detector, Addr: a.Addr},
			Action: ActionAlert, Target: a.Subject, Result: schemas.AuditFlagged, Reason: a.Detector, Source: "detector", Detail: detail}
		if err := ev.Validate(); err != nil {
			d.log.Error("alert not recorded", "alert", a.ID, "err", err) // signals are bounded: not expected
			continue
		}
		evs = append(evs, ev)
		if a.Org == "" {
			continue // the deployment's: the operator's audit log and metrics
		}
		data, err := json.Marshal(schemas.SecurityAlertData{AlertID: a.ID, Detector: a.Detector, Subject: a.Subject, Address: a.Addr, KeyID: a.Key,
			Count: a.Count, WindowSeconds: int64(a.Window / time.Second), Summary: a.Summary, Response: response})
		if err != nil {
			return err
		}
		rec := schemas.EventRecord{V: schemas.EnvelopeVersion, ID: schemas.EventID(a.Org, "security", a.ID), Org: a.Org,
			Event: schemas.WebhookEvent{Type: schemas.EventSecurityAlert, Timestamp: a.At.UTC(), Data: data}}
		val, err := json.Marshal(&rec)
		if err != nil {
			return err
		}
		hooks = append(hooks, &kgo.Record{Topic: d.topics.Events, Key: []byte(a.Org), Value: val,
			Headers: []kgo.RecordHeader{{Key: schemas.HeaderIngestMAC, Value: d.mac.Header(val)}}})
	}
	if err := kafka.Retry(stop, d.log, "publish alerts", func() error {
		pctx, cancel := context.WithTimeout(ctx, d.cfg.AttemptTimeout)
		defer cancel()
		return d.audit.Publish(pctx, evs)
	}); err != nil {
		return err
	}
	return kafka.Retry(stop, d.log, "produce alert webhooks", func() error {
		pctx, cancel := context.WithTimeout(ctx, d.cfg.AttemptTimeout)
		defer cancel()
		return kafka.ProduceAcked(pctx, d.cl, &hooks, func(*kgo.Record) {})
	})
}

// blockAttempts bounds the tries to block an address: an alert is not held
// up for long by a coordinator that is away or refuses.
const blockAttempts = 3

// block blocks a's address for BlockFor from now, and says so, or that it
// could not.
func (d *Detector) block(ctx, stop context.Context, a Alert) string {
	until := time.Now().Add(d.cfg.BlockFor).Truncate(time.Second)
	var err error
	for i := 1; ; i++ {
		bctx, cancel := context.WithTimeout(ctx, d.cfg.AttemptTimeout)
		err = d.blocker.Block(bctx, a.Addr, until, a.Detector+" "+a.ID)
		cancel()
		if err == nil {
			d.blocked.Inc()
			return "address " + a.Addr + " blocked at ingest until " + until.UTC().Format(time.RFC3339)
		}
		if i == blockAttempts || stop.Err() != nil {
			break
		}
		time.Sleep(time.Duration(i) * time.Second)
	}
	d.log.Error("address not blocked", "addr", a.Addr, "alert", a.ID, "err", err)
	return "address " + a.Addr + " not blocked (the coordinator did not take it)"
}

// Close leaves the group.
func (d *Detector) Close() { d.cl.Close() }
