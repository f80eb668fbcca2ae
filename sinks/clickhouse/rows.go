package clickhouse

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/schemas"
)

// Row is one row of certnode.results, in the column order of
// schemas.ClickHouseResultColumns.
type Row struct {
	Tenant      string
	ID          string
	ReceiptID   string
	Kind        string
	Status      string
	Valid       uint8
	Reason      string
	Auth        string
	Keys        string
	Kid         string
	PayloadHash string
	JobID       string
	Line        int64
	Size        uint32
	ReceivedAt  time.Time
	ProcessedAt time.Time
	LatencyMS   uint32
	Receipt     string
	KeyID       string
}

func (r Row) values() []any {
	return []any{r.Tenant, r.ID, r.ReceiptID, r.Kind, r.Status, r.Valid, r.Reason, r.Auth, r.Keys,
		r.Kid, r.PayloadHash, r.JobID, r.Line, r.Size, r.ReceivedAt, r.ProcessedAt, r.LatencyMS, r.Receipt, r.KeyID}
}

// UsageRow is one row of certnode.usage_events, in the column order of
// schemas.ClickHouseUsageColumns.
type UsageRow struct {
	Org         string
	ID          string
	Source      string
	Time        time.Time
	Kind        string
	Status      string
	Auth        string
	KeyID       string
	Bytes       uint64
	JobID       string
	ProcessedAt time.Time
}

func (r UsageRow) values() []any {
	return []any{r.Org, r.ID, r.Source, r.Time, r.Kind, r.Status, r.Auth, r.KeyID, r.Bytes, r.JobID, r.ProcessedAt}
}

// DateTime holds whole seconds from 1970 to 2106 in a UInt32; the driver
// wraps times outside that silently.
var (
	minDateTime = time.Unix(0, 0)
	maxDateTime = time.Unix(math.MaxUint32, 0)
)

// errUnstorable marks a record the sink cannot turn into a row.
var errUnstorable = errors.New("record cannot be stored")

// Time columns a row may have had replaced by the broker timestamp.
const (
	colReceivedAt  = "received_at"
	colProcessedAt = "processed_at"
)

// rowFor turns a decoded result into a row, with received_at and
// processed_at taken from the result when they lie near broker, the
// timestamp of the result's record, and broker otherwise (wild values
// would spread one insert over many monthly partitions, refused by current
// servers, or wrap around in DateTime; see schemas.TrustedTime). replaced names
// the columns whose claimed time was not believed.
func rowFor(res *schemas.Result, broker time.Time) (row Row, replaced []string, err error) {
	received, bad := schemas.TrustedTime(res.ReceivedAt, broker)
	if bad {
		replaced = append(replaced, colReceivedAt)
	}
	processed, bad := schemas.TrustedTime(res.ProcessedAt, broker)
	if bad {
		replaced = append(replaced, colProcessedAt)
	}
	if err := errors.Join(storable(received), storable(processed)); err != nil {
		return Row{}, nil, fmt.Errorf("%w (record timestamp %s)", err, broker.UTC().Format(time.RFC3339))
	}
	if res.Size < 0 || int64(res.Size) > math.MaxUint32 {
		return Row{}, nil, fmt.Errorf("%w: size %d", errUnstorable, res.Size)
	}
	var valid uint8
	if res.Status == schemas.StatusValid || res.Status == schemas.StatusSigned {
		valid = 1
	}
	// Both times lie within a day and five minutes of broker, so the
	// latency fits a UInt32 of milliseconds.
	latency := max(processed.Sub(received).Milliseconds(), 0)
	return Row{
		Tenant: res.Tenant, ID: res.ID, ReceiptID: res.ReceiptID, Kind: string(res.Kind), Status: string(res.Status),
		Valid: valid, Reason: res.Reason, Auth: string(res.Auth), Keys: res.Keys, Kid: res.Kid,
		PayloadHash: res.PayloadHash, JobID: res.JobID, Line: res.Line, Size: uint32(res.Size),
		ReceivedAt: received.UTC(), ProcessedAt: processed.UTC(), LatencyMS: uint32(latency), Receipt: string(res.Receipt), KeyID: res.KeyID,
	}, replaced, nil
}

// storable checks that t fits ClickHouse DateTime.
func storable(t time.Time) error {
	if t.Before(minDateTime) || t.After(maxDateTime) {
		return fmt.Errorf("%w: time %s is outside ClickHouse DateTime (1970-2106)", errUnstorable, t.UTC().Format(time.RFC3339))
	}
	return nil
}

// usageRowFor turns a decoded usage event into a row. Its times are kept
// as the usage sink set them, already bounded by the result's broker
// timestamp: the usage record's own timestamp is later by however far the
// usage sink lagged, and must not move a request to another period.
func usageRowFor(ev *schemas.UsageEvent) (UsageRow, error) {
	if err := errors.Join(storable(ev.Time), storable(ev.Data.ProcessedAt)); err != nil {
		return UsageRow{}, err
	}
	d := ev.Data
	return UsageRow{Org: ev.Subject, ID: ev.ID, Source: ev.Source, Time: ev.Time.UTC(), Kind: string(d.Kind), Status: string(d.Status),
		Auth: string(d.Auth), KeyID: d.KeyID, Bytes: uint64(d.Bytes), JobID: d.JobID, ProcessedAt: d.ProcessedAt.UTC()}, nil
}

// AttemptRow is one row of certnode.webhook_attempts, in the column order
// of schemas.ClickHouseWebhookAttemptColumns.
type AttemptRow struct {
	Org              string
	MessageID        string
	ID               string
	EndpointID       string
	EventType        string
	EventID          string
	MessageCreatedAt time.Time
	Attempt          uint16
	Redelivery       uint8
	Round            string
	Held             uint8
	At               time.Time // whole seconds; AtNanos holds the rest
	AtNanos          uint32
	URL              string
	Status           uint16
	LatencyMS        uint32
	ResponseHeaders  string // a JSON object
	ResponseBody     string
	Error            string
	Outcome          string
	NextAttemptAt    time.Time // minDateTime when none
	Body             string
}

func (r AttemptRow) values() []any {
	return []any{r.Org, r.MessageID, r.ID, r.EndpointID, r.EventType, r.EventID, r.MessageCreatedAt, r.Attempt, r.Redelivery,
		r.Round, r.Held, r.At, r.AtNanos, r.URL, r.Status, r.LatencyMS, r.ResponseHeaders, r.ResponseBody, r.Error, r.Outcome, r.NextAttemptAt, r.Body}
}

// attemptRowFor turns a decoded attempt into a row. Its times are kept as
// the dispatcher set them: a message's created time may be long before the
// record (a replay of old messages), and it must be the same on every
// attempt, so the broker timestamp cannot stand in for it.
func attemptRowFor(a *schemas.WebhookAttempt) (AttemptRow, error) {
	next := minDateTime
	if !a.NextAttemptAt.IsZero() {
		next = a.NextAttemptAt
	}
	errs := []error{storable(a.MessageCreatedAt), storable(a.At), storable(next)}
	if a.Attempt < 0 || a.Attempt > math.MaxUint16 || a.Status < 0 || a.Status > math.MaxUint16 ||
		a.LatencyMillis < 0 || a.LatencyMillis > math.MaxUint32 {
		errs = append(errs, fmt.Errorf("%w: attempt %d, status %d, latency %d ms", errUnstorable, a.Attempt, a.Status, a.LatencyMillis))
	}
	headers := "{}"
	if len(a.ResponseHeaders) > 0 {
		b, err := json.Marshal(a.ResponseHeaders, json.Deterministic(true))
		if err != nil {
			errs = append(errs, fmt.Errorf("%w: response headers: %v", errUnstorable, err))
		}
		headers = string(b)
	}
	if err := errors.Join(errs...); err != nil {
		return AttemptRow{}, err
	}
	var body string
	if schemas.Present(a.Body) {
		body = string(a.Body)
	}
	var redelivery, held uint8
	if a.Redelivery {
		redelivery = 1
	}
	if a.Held {
		held = 1
	}
	at := a.At.UTC()
	return AttemptRow{Org: a.Org, MessageID: a.MessageID, ID: a.ID, EndpointID: a.EndpointID, EventType: a.EventType, EventID: a.EventID,
		MessageCreatedAt: a.MessageCreatedAt.UTC(), Attempt: uint16(a.Attempt), Redelivery: redelivery, Round: a.Round, Held: held,
		At: at.Truncate(time.Second), AtNanos: uint32(at.Nanosecond()), URL: a.URL, Status: uint16(a.Status),
		LatencyMS: uint32(a.LatencyMillis), ResponseHeaders: headers, ResponseBody: a.ResponseBody, Error: a.Error,
		Outcome: a.Outcome, NextAttemptAt: next.UTC(), Body: body}, nil
}

// AuditRow is a row of certnode.audit_events.
type AuditRow struct {
	Org, ID   string
	At        time.Time // whole seconds; AtNanos holds the rest
	AtNanos   uint32
	Action    string
	ActorKind string
	ActorID   string
	Addr      string
	Result    string
	Source    string
	Event     string // the canonical JSON the audit log's leaf commits to
}

func (r AuditRow) values() []any {
	return []any{r.Org, r.ID, r.At, r.AtNanos, r.Action, r.ActorKind, r.ActorID, r.Addr, r.Result, r.Source, r.Event}
}

// auditEvent is a decoded audit event with its canonical form.
type auditEvent struct {
	*schemas.AuditEvent
	canon []byte
}

func decodeAuditEvent(b []byte) (auditEvent, error) {
	ev, canon, err := schemas.DecodeAuditEvent(b)
	return auditEvent{ev, canon}, err
}

// auditRowFor turns a decoded audit event into a row, its time as the
// event states it (its leaf commits to it), unless it runs ahead of its
// record's timestamp by more than the clock skew the audit log allows.
func auditRowFor(e auditEvent, record time.Time) (AuditRow, error) {
	if err := errors.Join(storable(e.At), schemas.CheckAuditTime(e.At, record)); err != nil {
		return AuditRow{}, err
	}
	at := e.At.UTC()
	return AuditRow{Org: e.Org, ID: e.ID, At: at.Truncate(time.Second), AtNanos: uint32(at.Nanosecond()), Action: e.Action,
		ActorKind: e.Actor.Kind, ActorID: e.Actor.ID, Addr: e.Actor.Addr, Result: e.Result, Source: e.Source, Event: string(e.canon)}, nil
}
