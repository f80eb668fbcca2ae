package webhook

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/schemas"
)

// errNotOurs marks a record that makes no message and is not an error: an
// unauthenticated result, a job not yet done.
var errNotOurs = errors.New("no event")

// event is what one record announces to an organization.
type event struct {
	id, org string
	ev      schemas.WebhookEvent
	only    []string // the record names its endpoints
	except  string
	// res is the result a receipt.signed event announces: its body
	// without the receipt is made from it for endpoints that omit it.
	res *schemas.Result
}

// eventOf reads a record of certnode.receipts, certnode.events or
// certnode.jobs. A record whose key is not the organization (or job) it
// names is refused: keys place records, and one placed by a lie is a
// forgery.
func (d *Dispatcher) eventOf(rec *kgo.Record) (*event, error) {
	switch rec.Topic {
	case d.topics.Receipts:
		res, err := schemas.DecodeResult(rec.Value)
		if err != nil {
			return nil, err
		}
		if string(rec.Key) != res.Tenant {
			return nil, fmt.Errorf("record key %q, result tenant %q", rec.Key, res.Tenant)
		}
		// A claimed time outside the window around the record's is not
		// believed (as for analytics).
		res.ProcessedAt, _ = schemas.TrustedTime(res.ProcessedAt, rec.Timestamp)
		res.ReceivedAt, _ = schemas.TrustedTime(res.ReceivedAt, rec.Timestamp)
		ev, ok, err := schemas.EventForResult(res, d.cfg.MaxReceiptBytes)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, errNotOurs
		}
		e := &event{id: schemas.ResultEventID(res), org: res.Tenant, ev: *ev}
		if ev.Type == schemas.EventReceiptSigned {
			e.res = res
		}
		return e, nil
	case d.topics.Events:
		if err := d.authentic(rec); err != nil {
			return nil, err
		}
		er, err := schemas.DecodeEventRecord(rec.Value)
		if err != nil {
			return nil, err
		}
		if string(rec.Key) != er.Org {
			return nil, fmt.Errorf("record key %q, event organization %q", rec.Key, er.Org)
		}
		return &event{id: er.ID, org: er.Org, ev: er.Event, only: er.Endpoints, except: er.Except}, nil
	case d.topics.Jobs:
		return jobEvent(rec)
	}
	return nil, fmt.Errorf("topic %q", rec.Topic)
}

// jobEvent is the job.completed event of a bulk job's done record (the
// jobs topic is compacted and written again by each ingest node that saw
// the job finish: every copy makes the same event id).
func jobEvent(rec *kgo.Record) (*event, error) {
	var j schemas.Job
	if err := json.Unmarshal(rec.Value, &j); err != nil {
		return nil, err
	}
	if err := j.Validate(); err != nil {
		return nil, err
	}
	if string(rec.Key) != j.ID {
		return nil, fmt.Errorf("record key %q, job %q", rec.Key, j.ID)
	}
	if j.Single || j.State != schemas.JobDone {
		return nil, errNotOurs
	}
	data, err := json.Marshal(map[string]any{"job_id": j.ID, "job_type": j.Kind, "total": j.Total, "valid": j.Valid,
		"invalid": j.Invalid, "failed": j.Failed, "lines_rejected": len(j.Rejected)})
	if err != nil {
		return nil, err
	}
	at := j.FinishedAt
	if at.IsZero() {
		at = rec.Timestamp
	}
	return &event{id: schemas.EventID(j.Tenant, "job", j.ID), org: j.Tenant,
		ev: schemas.WebhookEvent{Type: schemas.EventJobCompleted, Timestamp: at.UTC(), Data: data}}, nil
}

// messages makes an event's messages: one per enabled endpoint of the
// organization that subscribes to its type and existed when it happened
// (so an endpoint does not receive history), or per endpoint the event
// names.
func (d *Dispatcher) messages(e *event, eps []*Endpoint, now time.Time) ([]*schemas.WebhookMessage, error) {
	var body, bare []byte // the event's body, and a receipt.signed one without the receipt
	orgMode := ""
	if e.res != nil {
		orgMode = d.dir.WebhookReceipt(e.org)
	}
	var out []*schemas.WebhookMessage
	for _, ep := range eps {
		switch {
		case ep.Org != e.org || !ep.Enabled || ep.ID == e.except:
			continue
		case e.only != nil:
			if !slices.Contains(e.only, ep.ID) {
				continue
			}
		case e.ev.Timestamp.Before(ep.CreatedAt) || len(ep.EventTypes) > 0 && !slices.Contains(ep.EventTypes, e.ev.Type):
			continue
		}
		mode := ep.Receipt
		if mode == "" {
			mode = orgMode
		}
		b, err := d.body(e, mode == ReceiptOmit, &body, &bare)
		if err != nil {
			return nil, err
		}
		out = append(out, &schemas.WebhookMessage{V: schemas.EnvelopeVersion, ID: schemas.MessageID(e.id, ep.ID), Org: e.org,
			EndpointID: ep.ID, EventType: e.ev.Type, EventID: e.id, Body: b, CreatedAt: e.ev.Timestamp, DueAt: now})
	}
	return out, nil
}

// body is the event's body, made once per event: with omit, for a
// receipt.signed event, the one whose receipt is replaced by its
// receipt_id and receipt_url.
func (d *Dispatcher) body(e *event, omit bool, full, bare *[]byte) ([]byte, error) {
	dst, ev := full, &e.ev
	if omit && e.res != nil {
		dst = bare
		if *bare == nil {
			linked, _, err := schemas.EventForResult(e.res, 0)
			if err != nil {
				return nil, err
			}
			ev = linked
		}
	}
	if *dst == nil {
		b, err := json.Marshal(ev)
		if err != nil {
			return nil, err
		}
		if len(b) > schemas.MaxWebhookBody {
			return nil, fmt.Errorf("event %s: a body of %d bytes", e.id, len(b))
		}
		*dst = b
	}
	return *dst, nil
}
