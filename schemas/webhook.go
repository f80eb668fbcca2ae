package schemas

import (
	"embed"
	"fmt"
	"slices"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Webhook event types an endpoint can subscribe to.
const (
	EventReceiptSigned             = "receipt.signed"
	EventReceiptVerified           = "receipt.verified"
	EventReceiptVerificationFailed = "receipt.verification_failed"
	EventJobCompleted              = "job.completed"
	EventQuotaWarning              = "quota.warning"
	EventEndpointDisabled          = "endpoint.disabled"
	EventWebhookTest               = "webhook.test"
	EventReportReady               = "report.ready"
	EventSecurityAlert             = "security.alert"
)

// EventTypes lists every webhook event type.
var EventTypes = []string{EventReceiptSigned, EventReceiptVerified, EventReceiptVerificationFailed,
	EventJobCompleted, EventQuotaWarning, EventEndpointDisabled, EventWebhookTest, EventReportReady, EventSecurityAlert}

// SecurityAlertData is the data of a security.alert event.
type SecurityAlertData struct {
	AlertID       string `json:"alert_id"`
	Detector      string `json:"detector"`
	Subject       string `json:"subject"`
	Address       string `json:"address,omitempty"`
	KeyID         string `json:"key_id,omitempty"`
	Count         int64  `json:"count"`
	WindowSeconds int64  `json:"window_seconds,omitzero"`
	Summary       string `json:"summary"`
	Response      string `json:"response,omitempty"`
}

// EventVersion is the version of every event's schema; a change that
// breaks receivers gets a new version beside the old one.
const EventVersion = 1

//go:embed events/*.json
var eventSchemas embed.FS

// WebhookEvent is the body of a delivery, in the shape the Standard
// Webhooks specification recommends: a type, when, and the data.
type WebhookEvent struct {
	Type      string         `json:"type"`
	Timestamp time.Time      `json:"timestamp"`
	Data      jsontext.Value `json:"data"`
}

// EventTypeInfo describes one event type in the catalog.
type EventTypeInfo struct {
	Type        string         `json:"type"`
	Version     int            `json:"version"`
	Description string         `json:"description"`
	Schema      jsontext.Value `json:"schema"`
	Example     jsontext.Value `json:"example"`
}

// EventCatalog lists every event type with its JSON Schema and an example.
func EventCatalog() ([]EventTypeInfo, error) {
	out := make([]EventTypeInfo, 0, len(EventTypes))
	for _, t := range EventTypes {
		raw, err := eventSchemas.ReadFile(fmt.Sprintf("events/%s.v%d.json", t, EventVersion))
		if err != nil {
			return nil, err
		}
		var s struct {
			Description string           `json:"description"`
			Examples    []jsontext.Value `json:"examples"`
		}
		if err := json.Unmarshal(raw, &s, json.RejectUnknownMembers(false)); err != nil || len(s.Examples) == 0 {
			return nil, fmt.Errorf("event schema %s: %v", t, err)
		}
		out = append(out, EventTypeInfo{Type: t, Version: EventVersion, Description: s.Description, Schema: raw, Example: s.Examples[0]})
	}
	return out, nil
}

// ReceiptEventData is the data of the receipt.* events.
type ReceiptEventData struct {
	RequestID  string         `json:"request_id"`
	Status     Status         `json:"status,omitempty"` // verification_failed only
	Reason     string         `json:"reason,omitempty"`
	ReceiptID  string         `json:"receipt_id,omitempty"`
	Kid        string         `json:"kid,omitempty"`
	Keys       string         `json:"keys,omitempty"` // verified only
	JobID      string         `json:"job_id,omitempty"`
	Line       int64          `json:"line,omitzero"`
	KeyID      string         `json:"key_id,omitempty"`
	ReceivedAt time.Time      `json:"received_at"`
	Receipt    jsontext.Value `json:"receipt,omitzero"`      // signed only
	ReceiptURL string         `json:"receipt_url,omitempty"` // signed, when the receipt is left out
}

// EventForResult is the webhook event a result makes: receipt.signed,
// receipt.verified or receipt.verification_failed (an invalid receipt, or
// a request that failed). A result of an unauthenticated record makes
// none: nobody is proven to own it. A receipt over maxReceipt bytes is
// replaced by a link to it.
func EventForResult(r *Result, maxReceipt int) (*WebhookEvent, bool, error) {
	if r.Auth == AuthNone {
		return nil, false, nil
	}
	d := ReceiptEventData{RequestID: r.ID, JobID: r.JobID, Line: r.Line, KeyID: r.KeyID, ReceivedAt: r.ReceivedAt.UTC(),
		ReceiptID: r.ReceiptID, Kid: r.Kid}
	var typ string
	switch r.Status {
	case StatusSigned:
		typ = EventReceiptSigned
		if len(r.Receipt) > maxReceipt {
			d.ReceiptURL = "/v1/receipts/" + r.ReceiptID
		} else {
			d.Receipt = r.Receipt
		}
	case StatusValid:
		typ, d.Keys = EventReceiptVerified, r.Keys
	case StatusInvalid, StatusFailed:
		typ, d.Status, d.Reason = EventReceiptVerificationFailed, r.Status, r.Reason
	default:
		return nil, false, fmt.Errorf("result %s: status %q", r.ID, r.Status)
	}
	if !slices.Contains(EventTypes, typ) {
		return nil, false, fmt.Errorf("unknown event type %q", typ)
	}
	data, err := json.Marshal(d)
	if err != nil {
		return nil, false, err
	}
	return &WebhookEvent{Type: typ, Timestamp: r.ProcessedAt.UTC(), Data: data}, true, nil
}
