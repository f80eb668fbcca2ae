package schemas

import (
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/go-json-experiment/json"
)

// Usage events: one CloudEvents 1.0 event, in structured JSON mode, per
// result of an authenticated request, on certnode.usage. It is the form
// OpenMeter ingests (POST /api/v1/events, application/cloudevents+json),
// so any metering or billing system that reads CloudEvents can consume the
// topic as it is. usage-event.schema.json is its JSON Schema.
const (
	CloudEventsSpecVersion = "1.0"
	// UsageEventType is the event's type: one request processed. Meters
	// count events of this type, group by data.kind, data.status and
	// data.key_id, and sum data.bytes.
	UsageEventType = "com.certnode.request"
	// UsageDataContentType is the only content type OpenMeter accepts.
	UsageDataContentType = "application/json"
	// DefaultUsageSource is the base of every event's source.
	DefaultUsageSource = "/certnode"
	// MaxUsageEventBytes bounds a usage record: ids are bounded, so events
	// are well below it.
	MaxUsageEventBytes = 4 << 10
)

// UsageEvent is the value of a certnode.usage record (key: the
// organization id).
type UsageEvent struct {
	SpecVersion string `json:"specversion"`
	// ID is the request id, so a result replayed after a worker died gives
	// the same event, which consumers deduplicate on id and source.
	ID string `json:"id"`
	// Source is UsageSource(base, organization): request ids are chosen by
	// each organization's producers, so only the pair with the organization
	// is unique, and one organization's ids never shadow another's.
	Source  string `json:"source"`
	Type    string `json:"type"`
	Subject string `json:"subject"` // the organization id (OpenMeter's customer)
	// Time is when the request was received, as the analytics table dates
	// it (TrustedTime): the same in every replay of the request.
	Time            time.Time `json:"time"`
	DataContentType string    `json:"datacontenttype"`
	Data            UsageData `json:"data"`
}

// UsageData is what an event meters.
type UsageData struct {
	Kind   Kind   `json:"kind"`
	Status Status `json:"status"`
	// Auth is ingest (an API key) or producer (a producer key); results of
	// unauthenticated records never make an event.
	Auth Auth `json:"auth"`
	// KeyID is the API key or producer key used; empty for the keys of a
	// tenants file.
	KeyID string `json:"key_id"`
	// Bytes is the size of the request record.
	Bytes       int64     `json:"bytes"`
	JobID       string    `json:"job_id,omitempty"`
	ProcessedAt time.Time `json:"processed_at"`
}

// UsageSource is the source of an organization's events: base (by default
// DefaultUsageSource) followed by /orgs/ and the escaped organization id,
// a URI reference as CloudEvents wants.
func UsageSource(base, org string) string { return base + "/orgs/" + url.PathEscape(org) }

// Validate checks an event's shape, and that it is attributed: a valid
// organization id, and a request authenticated by ingest or a producer key.
func (e *UsageEvent) Validate() error {
	var errs []error
	if e.SpecVersion != CloudEventsSpecVersion {
		errs = append(errs, fmt.Errorf("specversion must be %s", CloudEventsSpecVersion))
	}
	if e.Type != UsageEventType {
		errs = append(errs, fmt.Errorf("type must be %s", UsageEventType))
	}
	if e.DataContentType != UsageDataContentType {
		errs = append(errs, fmt.Errorf("datacontenttype must be %s", UsageDataContentType))
	}
	errs = append(errs, checkToken("id", e.ID, MaxIDBytes), checkToken("subject", e.Subject, MaxTenantBytes))
	if e.Source == "" {
		errs = append(errs, errors.New("source is required"))
	}
	if e.Time.IsZero() || e.Data.ProcessedAt.IsZero() {
		errs = append(errs, errors.New("time and data.processed_at are required"))
	}
	d := e.Data
	if d.Kind != KindSign && d.Kind != KindVerify {
		errs = append(errs, fmt.Errorf("data.kind %q", d.Kind))
	}
	switch d.Status {
	case StatusSigned, StatusValid, StatusInvalid, StatusFailed:
	default:
		errs = append(errs, fmt.Errorf("data.status %q", d.Status))
	}
	if d.Auth != AuthIngest && d.Auth != AuthProducer {
		errs = append(errs, fmt.Errorf("data.auth must be ingest or producer, got %q", d.Auth))
	}
	if d.KeyID != "" {
		errs = append(errs, checkToken("data.key_id", d.KeyID, MaxIDBytes))
	}
	if d.JobID != "" {
		errs = append(errs, checkToken("data.job_id", d.JobID, MaxJobIDBytes))
	}
	if d.Bytes < 0 {
		errs = append(errs, errors.New("data.bytes must not be negative"))
	}
	return errors.Join(errs...)
}

// DecodeUsageEvent parses and validates a certnode.usage value.
func DecodeUsageEvent(b []byte) (*UsageEvent, error) {
	var e UsageEvent
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, err
	}
	if err := e.Validate(); err != nil {
		return nil, fmt.Errorf("not a usage event: %w", err)
	}
	return &e, nil
}
