package mail

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/schemas"
)

// EventTemplates maps the events that are mailed to their templates.
var EventTemplates = map[string]string{
	schemas.EventQuotaWarning:     TemplateQuotaWarning,
	schemas.EventSecurityAlert:    TemplateSecurityAlert,
	schemas.EventEndpointDisabled: TemplateEndpointDisabled,
	schemas.EventReportReady:      TemplateReportReady,
}

// Enqueuer hands an event's email to the coordinator, which picks the
// recipients and keeps one message per recipient (by the event's id, so a
// record read twice is mailed once). An error that wraps ErrRefused says
// that asking again gets the same answer.
type Enqueuer interface {
	Enqueue(ctx context.Context, e EventEmail) error
}

// ErrRefused is the coordinator's refusal of a request (a 4xx answer that
// is not about the caller's credentials or pace).
var ErrRefused = errors.New("refused by the coordinator")

// MAC checks that a certnode.events record was written by CertNode
// (internal/recordauth).
type MAC interface {
	Check(value []byte, header string) error
}

// EventsConfig configures the consumer of certnode.events.
type EventsConfig struct {
	Kafka kafka.Config
	Group string
	MAC   MAC
	Queue Enqueuer
	Log   *slog.Logger
}

// Events reads certnode.events and queues an email for each event that
// is mailed. Offsets are committed once the coordinator took the batch's
// emails, so none is lost; a record that is not CertNode's or does not
// parse, or whose email the coordinator refuses, is dropped with a warning.
type Events struct {
	cfg EventsConfig
	cl  *kgo.Client
	log *slog.Logger
}

// NewEvents joins the consumer group.
func NewEvents(cfg EventsConfig) (*Events, error) {
	if cfg.MAC == nil || cfg.Queue == nil || cfg.Group == "" {
		return nil, errors.New("mail: the events consumer needs a MAC keyring, a queue and a group")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	cl, err := kafka.NewClient(cfg.Kafka, kafka.GroupConsumer(cfg.Group, cfg.Kafka.Topics().Events)...)
	if err != nil {
		return nil, err
	}
	return &Events{cfg: cfg, cl: cl, log: cfg.Log.With("role", "mailer", "part", "events")}, nil
}

// Close leaves the group.
func (e *Events) Close() { e.cl.Close() }

// Run consumes until ctx ends.
func (e *Events) Run(ctx context.Context) error {
	return kafka.EachBatch(ctx, e.cl, 500, e.log, func(work context.Context, recs []*kgo.Record) error {
		for _, rec := range recs {
			ev, err := e.emailOf(rec)
			if err != nil {
				e.log.Warn("event record dropped", "partition", rec.Partition, "offset", rec.Offset, "err", err)
				continue
			}
			if ev == nil {
				continue
			}
			if err := kafka.Retry(ctx, e.log, "queue an event's email", func() error {
				qctx, cancel := context.WithTimeout(work, 10*time.Second)
				defer cancel()
				err := e.cfg.Queue.Enqueue(qctx, *ev)
				if errors.Is(err, ErrRefused) {
					// Retried, it would hold up every organization's mail.
					e.log.Warn("event email refused; dropped", "partition", rec.Partition, "offset", rec.Offset,
						"event", ev.EventID, "org", ev.Org, "template", ev.Template, "err", err)
					return nil
				}
				return err
			}); err != nil {
				return err
			}
		}
		return kafka.Commit(work, ctx, e.cl, e.log, 10*time.Second, recs)
	})
}

// emailOf reads a record: nil when its event is not mailed.
func (e *Events) emailOf(rec *kgo.Record) (*EventEmail, error) {
	if err := e.cfg.MAC.Check(rec.Value, kafka.Header(rec, schemas.HeaderIngestMAC)); err != nil {
		return nil, fmt.Errorf("not written by CertNode: %w", err)
	}
	r, err := schemas.DecodeEventRecord(rec.Value)
	if err != nil {
		return nil, err
	}
	if string(rec.Key) != r.Org {
		return nil, fmt.Errorf("record key %q, event organization %q", rec.Key, r.Org)
	}
	return EventEmailOf(r)
}

// EventEmailOf is the email of an event record: nil for an event that is
// not mailed, or one aimed at chosen endpoints (a test delivery).
func EventEmailOf(r *schemas.EventRecord) (*EventEmail, error) {
	tmpl, ok := EventTemplates[r.Event.Type]
	if !ok || len(r.Endpoints) > 0 {
		return nil, nil
	}
	fields, err := Fields(r.Event.Data)
	if err != nil {
		return nil, fmt.Errorf("event %s data: %w", r.ID, err)
	}
	return &EventEmail{EventID: r.ID, Org: r.Org, Template: tmpl, Fields: fields}, nil
}

// Limits of Fields.
const (
	maxFields     = 32
	maxFieldBytes = 1024
)

// Fields reads an event's data, a JSON object, into the strings templates
// show: strings as they are, numbers and booleans as written; nested
// values are left out. Keys and values are bounded, values cut at
// maxFieldBytes.
func Fields(data jsontext.Value) (map[string]string, error) {
	var obj map[string]jsontext.Value
	if err := json.Unmarshal(data, &obj); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for k, v := range obj {
		if len(out) == maxFields {
			break
		}
		if len(k) > 64 {
			continue
		}
		var s string
		switch v.Kind() {
		case '"':
			if err := json.Unmarshal(v, &s); err != nil {
				return nil, err
			}
		case '0', 't', 'f':
			s = string(v) // as written: a JSON number keeps its digits
		default:
			continue
		}
		if len(s) > maxFieldBytes {
			s = strings.ToValidUTF8(s[:maxFieldBytes], "")
		}
		out[k] = s
	}
	return out, nil
}
