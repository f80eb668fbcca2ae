package schemas

import (
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// WebhookDelayTiers are the delays of the webhook delay topics. Every
// record of a tier waits the same time, so each topic partition is in due
// order and its consumer only waits on the head. A message due later than
// a tier's delay goes through it again, or through a shorter one.
var WebhookDelayTiers = []time.Duration{time.Second, 5 * time.Second, 30 * time.Second, 5 * time.Minute,
	30 * time.Minute, 2 * time.Hour}

// DelayTier is the index of the longest tier not longer than wait (the
// first tier for shorter waits).
func DelayTier(wait time.Duration) int {
	i := 0
	for j, d := range WebhookDelayTiers {
		if d <= wait {
			i = j
		}
	}
	return i
}

// MaxWebhookBody bounds a webhook message's body; a receipt that would
// make it larger is linked rather than carried (EventForResult).
const MaxWebhookBody = 1 << 20

// EventRecord is the value of a certnode.events record (key: the
// organization): a webhook event that does not come from a result.
type EventRecord struct {
	V int `json:"v"`
	// ID is unique per event; the id of each message made from it derives
	// from it and the endpoint (MessageID), so a record read twice makes
	// the same messages.
	ID    string       `json:"id"`
	Org   string       `json:"org"`
	Event WebhookEvent `json:"event"`
	// Endpoints, when set, are the only endpoints the event goes to (a
	// trigger aimed at one endpoint); otherwise every enabled endpoint of
	// the organization subscribed to the type gets it.
	Endpoints []string `json:"endpoints,omitempty"`
	// Except is an endpoint the event is never sent to (the one an
	// endpoint.disabled event is about).
	Except string `json:"except,omitempty"`
}

// Validate checks an event record's shape; readers drop records that fail it.
func (r *EventRecord) Validate() error {
	var errs []error
	if r.V != EnvelopeVersion {
		errs = append(errs, fmt.Errorf("v must be %d", EnvelopeVersion))
	}
	if err := checkToken("event id", r.ID, MaxIDBytes); err != nil {
		errs = append(errs, err)
	}
	if err := CheckTenantID(r.Org); err != nil {
		errs = append(errs, err)
	}
	if !slices.Contains(EventTypes, r.Event.Type) {
		errs = append(errs, fmt.Errorf("event type %q", r.Event.Type))
	}
	if r.Event.Timestamp.IsZero() || !Present(r.Event.Data) {
		errs = append(errs, errors.New("an event needs a timestamp and data"))
	}
	if len(r.Endpoints) > 100 {
		errs = append(errs, errors.New("at most 100 endpoints"))
	}
	return errors.Join(errs...)
}

// DecodeEventRecord parses and validates a certnode.events value.
func DecodeEventRecord(b []byte) (*EventRecord, error) {
	var r EventRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("not a v%d event record: %w", EnvelopeVersion, err)
	}
	return &r, nil
}

// ResultEventID is the event id of a result's receipt.* event: request
// ids are chosen by each organization, so the organization is part of it.
func ResultEventID(r *Result) string { return EventID(r.Tenant, r.ID) }

// EventID makes an event id from what identifies the event, so that every
// writer of the same event gives it the same id.
func EventID(parts ...string) string { return "evt_" + shortHash(parts...) }

// MessageID is the id of the message carrying an event to an endpoint: the
// webhook-id header, the same on every attempt and every redelivery.
func MessageID(eventID, endpointID string) string { return "msg_" + shortHash(eventID, endpointID) }

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// shortHash is 130 bits of SHA-256 over the parts, in lower-case base32.
func shortHash(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return strings.ToLower(b32.EncodeToString(h[:])[:26])
}

// WebhookMessage is one event on its way to one endpoint: the value of
// certnode.webhooks, of the delay topics and of the webhook DLQ (key: the
// endpoint id).
type WebhookMessage struct {
	V          int    `json:"v"`
	ID         string `json:"id"` // MessageID: the webhook-id
	Org        string `json:"org"`
	EndpointID string `json:"endpoint_id"`
	EventType  string `json:"event_type"`
	EventID    string `json:"event_id"`
	// Body is the delivery's body, exactly the bytes that are signed.
	Body      jsontext.Value `json:"body"`
	CreatedAt time.Time      `json:"created_at"` // when the event happened
	// Attempt counts the attempts made in this round; a redelivery starts
	// a new round with the schedule from its start.
	Attempt int       `json:"attempt"`
	DueAt   time.Time `json:"due_at"`
	// Redelivery marks a round a user asked for (redeliver or replay);
	// Round tells rounds apart (empty for the first, a fresh id for each
	// redelivery).
	Redelivery bool   `json:"redelivery,omitzero"`
	Round      string `json:"round,omitempty"`
}

// Validate checks a message's shape; the dispatcher drops (and counts)
// messages that fail it.
func (m *WebhookMessage) Validate() error {
	var errs []error
	if m.V != EnvelopeVersion {
		errs = append(errs, fmt.Errorf("v must be %d", EnvelopeVersion))
	}
	for _, f := range []struct{ name, v string }{{"message id", m.ID}, {"endpoint id", m.EndpointID}, {"event id", m.EventID}} {
		if err := checkToken(f.name, f.v, MaxIDBytes); err != nil {
			errs = append(errs, err)
		}
	}
	if err := CheckTenantID(m.Org); err != nil {
		errs = append(errs, err)
	}
	if !slices.Contains(EventTypes, m.EventType) {
		errs = append(errs, fmt.Errorf("event type %q", m.EventType))
	}
	if !Present(m.Body) || len(m.Body) > MaxWebhookBody {
		errs = append(errs, fmt.Errorf("a body of 1 to %d bytes is required", MaxWebhookBody))
	}
	if len(m.Round) > MaxIDBytes {
		errs = append(errs, errors.New("round over 128 bytes"))
	}
	if m.Attempt < 0 || m.Attempt > 100 {
		errs = append(errs, fmt.Errorf("attempt %d", m.Attempt))
	}
	return errors.Join(errs...)
}

// DecodeWebhookMessage parses and validates a webhook message.
func DecodeWebhookMessage(b []byte) (*WebhookMessage, error) {
	var m WebhookMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("not a v%d webhook message: %w", EnvelopeVersion, err)
	}
	return &m, nil
}

// Attempt outcomes.
const (
	OutcomeDelivered = "delivered" // the endpoint answered 2xx
	OutcomeRetrying  = "retrying"  // failed; another attempt is scheduled
	// OutcomeExhausted: the round's last attempt failed; the message waits
	// in the webhook DLQ and can be redelivered.
	OutcomeExhausted = "exhausted"
	// OutcomeDisabled: the endpoint answered 410, or is disabled, so the
	// message went to the webhook DLQ (no request, when it was disabled).
	OutcomeDisabled = "endpoint_disabled"
)

// WebhookAttempt records one attempt: the value of a
// certnode.webhooks.attempts record (key: the organization).
type WebhookAttempt struct {
	V          int    `json:"v"`
	ID         string `json:"id"` // unique per attempt
	MessageID  string `json:"message_id"`
	Org        string `json:"org"`
	EndpointID string `json:"endpoint_id"`
	EventType  string `json:"event_type"`
	EventID    string `json:"event_id"`
	// Body is the message's body, on the first attempt of each round, so
	// that the store can redeliver it.
	Body             jsontext.Value `json:"body,omitzero"`
	MessageCreatedAt time.Time      `json:"message_created_at"`
	Attempt          int            `json:"attempt"` // 1-based, within its round
	Redelivery       bool           `json:"redelivery,omitzero"`
	Round            string         `json:"round,omitempty"`
	At               time.Time      `json:"at"`
	URL              string         `json:"url"`
	// Status is the HTTP status (0 when no answer came).
	Status          int               `json:"status,omitzero"`
	LatencyMillis   int64             `json:"latency_ms"`
	ResponseHeaders map[string]string `json:"response_headers,omitempty"`
	ResponseBody    string            `json:"response_body,omitempty"`
	Error           string            `json:"error,omitempty"`
	Outcome         string            `json:"outcome"`
	NextAttemptAt   time.Time         `json:"next_attempt_at,omitzero"`
	// Held: the retry waits in the dispatcher (an ordered endpoint's head),
	// not in a delay topic.
	Held bool `json:"held,omitzero"`
}

// DecodeWebhookAttempt parses an attempt record.
func DecodeWebhookAttempt(b []byte) (*WebhookAttempt, error) {
	var a WebhookAttempt
	if err := json.Unmarshal(b, &a); err != nil {
		return nil, err
	}
	var errs []error
	if a.V != EnvelopeVersion {
		errs = append(errs, fmt.Errorf("v must be %d", EnvelopeVersion))
	}
	if err := CheckTenantID(a.Org); err != nil {
		errs = append(errs, err)
	}
	if a.ID == "" || a.MessageID == "" || a.EndpointID == "" || a.At.IsZero() {
		errs = append(errs, errors.New("id, message id, endpoint id and time are required"))
	}
	switch a.Outcome {
	case OutcomeDelivered, OutcomeRetrying, OutcomeExhausted, OutcomeDisabled:
	default:
		errs = append(errs, fmt.Errorf("outcome %q", a.Outcome))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("not a v%d webhook attempt: %w", EnvelopeVersion, err)
	}
	return &a, nil
}

// Delivery states, as the deliveries API reports a message: delivered,
// pending (an attempt is scheduled) or failed (it waits in the DLQ).
const (
	DeliveryDelivered = "delivered"
	DeliveryPending   = "pending"
	DeliveryFailed    = "failed"
)

// DeliveryStatus is the state a message's latest attempt leaves it in.
func DeliveryStatus(outcome string) string {
	switch outcome {
	case OutcomeDelivered:
		return DeliveryDelivered
	case OutcomeRetrying:
		return DeliveryPending
	default:
		return DeliveryFailed
	}
}

// WebhookDelivery is a message as GET /v1/webhooks/deliveries shows it.
type WebhookDelivery struct {
	ID            string    `json:"id"` // the message id (webhook-id)
	EndpointID    string    `json:"endpoint_id"`
	EventType     string    `json:"event_type"`
	EventID       string    `json:"event_id"`
	Status        string    `json:"status"` // DeliveryDelivered, ...
	Attempts      int       `json:"attempts"`
	CreatedAt     time.Time `json:"created_at"`
	LastAttemptAt time.Time `json:"last_attempt_at"`
	// LastHTTPStatus is the latest attempt's HTTP status (0: no answer).
	LastHTTPStatus int       `json:"last_http_status,omitzero"`
	NextAttemptAt  time.Time `json:"next_attempt_at,omitzero"`
	// Body and AttemptList are filled for one delivery only.
	Body        jsontext.Value   `json:"body,omitzero"`
	AttemptList []WebhookAttempt `json:"attempt_list,omitempty"`
}

// DeliveryQuery selects an organization's deliveries, newest first.
type DeliveryQuery struct {
	Endpoint  string
	EventType string
	Status    string // DeliveryDelivered, DeliveryPending, DeliveryFailed or empty
	Since     time.Time
	Until     time.Time
	// Cursor is the NextCursor of the previous page (opaque).
	Cursor string
	Limit  int // 1..MaxDeliveryPage
}

// MaxDeliveryPage bounds a page of deliveries.
const MaxDeliveryPage = 250

// DeliveryPage is one page of deliveries.
type DeliveryPage struct {
	Data       []WebhookDelivery `json:"data"`
	NextCursor string            `json:"next_cursor,omitempty"`
	HasMore    bool              `json:"has_more"`
}
