package schemas

import (
	"errors"
	"fmt"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Topics names the Kafka topics. Records on requests, receipts, dlq and
// usage are keyed by tenant id, so a tenant's traffic keeps its order; jobs
// is compacted and keyed by job id.
type Topics struct {
	Requests string
	Receipts string
	DLQ      string
	Jobs     string
	// Usage carries one CloudEvent per attributable result (UsageEvent).
	Usage string
	// Events carries the webhook events that do not come from a result
	// (EventRecord: job.completed, quota.warning, endpoint.disabled,
	// triggered examples), keyed by organization.
	Events string
	// Webhooks holds webhook messages due now (WebhookMessage: retries
	// that came due, redeliveries, parked messages), keyed by endpoint.
	Webhooks string
	// WebhookDelays are FIFO topics, one per delay in WebhookDelayTiers,
	// holding messages until they are due; WebhookDLQ the messages that
	// exhausted their retries; WebhookAttempts one record per attempt
	// (WebhookAttempt), keyed by organization, for ClickHouse.
	WebhookDelays   []string
	WebhookDLQ      string
	WebhookAttempts string
	// Audit carries every role's audit events (AuditEvent), keyed by
	// organization (empty: the deployment's).
	Audit string
}

// DefaultTopicPrefix gives certnode.requests, certnode.receipts,
// certnode.dlq, certnode.jobs and certnode.usage.
const DefaultTopicPrefix = "certnode"

// TopicsFor names the topics under prefix, so several environments (or
// test runs) can share one cluster.
func TopicsFor(prefix string) Topics {
	t := Topics{Requests: prefix + ".requests", Receipts: prefix + ".receipts", DLQ: prefix + ".dlq", Jobs: prefix + ".jobs",
		Usage: prefix + ".usage", Events: prefix + ".events", Webhooks: prefix + ".webhooks",
		WebhookDLQ: prefix + ".webhooks.dlq", WebhookAttempts: prefix + ".webhooks.attempts", Audit: prefix + ".audit"}
	for _, d := range WebhookDelayTiers {
		t.WebhookDelays = append(t.WebhookDelays, prefix+".webhooks.delay."+d.String())
	}
	return t
}

// All lists the topics.
func (t Topics) All() []string {
	return append([]string{t.Requests, t.Receipts, t.DLQ, t.Jobs, t.Usage, t.Events, t.Webhooks, t.WebhookDLQ,
		t.WebhookAttempts, t.Audit}, t.WebhookDelays...)
}

// Record size limits. A request may be as large as MaxRequestBytes; its
// result carries the receipt (the payload plus a few hundred bytes), so
// results, the DLQ and job records get more room.
const (
	MaxRequestBytes = 2 << 20
	MaxResultBytes  = 8 << 20
)

// Record headers.
const (
	// HeaderIngestMAC marks records written by the ingest tier:
	// "<kid>:<hex HMAC-SHA256 of the record value>" under the cluster's
	// internal secret named by kid. Ingest authenticates callers itself and
	// never puts credentials on the topic.
	HeaderIngestMAC = "certnode-ingest-mac"
	// HeaderProducerKeyID and HeaderSignature authenticate records that
	// customer systems produce straight into certnode.requests: the id of
	// one of the tenant's producer keys, and the hex HMAC-SHA256 of the
	// record value under that key's secret.
	HeaderProducerKeyID = "certnode-key-id"
	HeaderSignature     = "certnode-signature"
	// HeaderLegacyAPIKey carried a plaintext API key in early releases. It
	// is refused (a reusable credential must not sit in a topic) and never
	// copied to the DLQ.
	HeaderLegacyAPIKey = "certnode-api-key"
	// HeaderDLQReason, HeaderDLQError and HeaderDLQSource say why and from
	// where a record went to certnode.dlq.
	HeaderDLQReason = "certnode-dlq-reason"
	HeaderDLQError  = "certnode-dlq-error"
	HeaderDLQSource = "certnode-dlq-source"
	// HeaderRequestID and HeaderJobID repeat a result's id and job_id so
	// that readers waiting for one request or job skip others undecoded.
	HeaderRequestID = "certnode-id"
	HeaderJobID     = "certnode-job"
)

// EnvelopeVersion is the version of the request and result envelopes.
const EnvelopeVersion = 1

// Kind is what a request asks for.
type Kind string

const (
	KindSign   Kind = "sign"
	KindVerify Kind = "verify"
)

// Envelope field limits.
const (
	MaxIDBytes     = 128
	MaxTenantBytes = 64
	MaxJobIDBytes  = 64
	// MaxLine bounds the line number of a bulk job's request; ingest's own
	// limit on a job's lines is lower.
	MaxLine = 1 << 32
)

// Request is the value of a certnode.requests record (JSON).
type Request struct {
	V      int    `json:"v"`
	ID     string `json:"id"`     // unique per request; the idempotency key
	Tenant string `json:"tenant"` // must equal the record key
	Kind   Kind   `json:"kind"`
	// omitzero, not omitempty: an empty object ({}) is a payload to sign.
	Payload jsontext.Value `json:"payload,omitzero"` // sign: a JSON object
	Receipt jsontext.Value `json:"receipt,omitzero"` // verify: a receipt
	JWKS    jsontext.Value `json:"jwks,omitzero"`    // verify: keys to use instead of ours
	// JobID and Line place a request in an ingest bulk job (line is the
	// 1-based input line); only the ingest tier sets them.
	JobID      string    `json:"job_id,omitempty"`
	Line       int64     `json:"line,omitempty"`
	ReceivedAt time.Time `json:"received_at,omitzero"`
	// KeyID names the API key ingest authenticated the request with, for
	// usage per key; only the ingest tier sets it.
	KeyID string `json:"key_id,omitempty"`
	// APIVersion is the API version the request was made under
	// (VersionHeader): ingest sets the one it applied; a producer may set
	// one, else its organization's applies.
	APIVersion string `json:"api_version,omitempty"`
}

// ErrBadEnvelope wraps every envelope problem.
var ErrBadEnvelope = errors.New("bad request envelope")

// checkToken checks an identifier that travels in keys, headers and logs:
// 1 to max bytes of printable ASCII without spaces.
func checkToken(name, v string, max int) error {
	if v == "" || len(v) > max {
		return fmt.Errorf("%s is required (1-%d bytes)", name, max)
	}
	for i := 0; i < len(v); i++ {
		if v[i] <= ' ' || v[i] > '~' {
			return fmt.Errorf("%s must be printable ASCII without spaces", name)
		}
	}
	return nil
}

// CheckTenantID checks a tenant id the way envelopes do, so a tenant that
// can be configured can also be served.
func CheckTenantID(id string) error { return checkToken("tenant id", id, MaxTenantBytes) }

// Present reports whether an optional JSON member was given: null is not.
func Present(v jsontext.Value) bool { return len(v) > 0 && v.Kind() != 'n' }

// checkJobLine checks that a job id and line come together and in range.
func checkJobLine(jobID string, line int64) error {
	if jobID == "" {
		if line != 0 {
			return errors.New("line is only allowed with job_id")
		}
		return nil
	}
	if err := checkToken("job_id", jobID, MaxJobIDBytes); err != nil {
		return err
	}
	if line < 1 || line > MaxLine {
		return fmt.Errorf("line must be between 1 and %d with job_id", int64(MaxLine))
	}
	return nil
}

// checkCommon checks the members requests and results share.
func checkCommon(v int, id, tenant, jobID string, line int64) []error {
	var errs []error
	if v != EnvelopeVersion {
		errs = append(errs, fmt.Errorf("v must be %d", EnvelopeVersion))
	}
	return append(errs, checkToken("id", id, MaxIDBytes), checkToken("tenant", tenant, MaxTenantBytes),
		checkJobLine(jobID, line))
}

// Validate checks the envelope's shape (not the payload's JSON, which the
// worker canonicalizes anyway) and reports every problem at once.
func (r *Request) Validate() error {
	errs := checkCommon(r.V, r.ID, r.Tenant, r.JobID, r.Line)
	if r.KeyID != "" {
		errs = append(errs, checkToken("key_id", r.KeyID, MaxIDBytes))
	}
	if r.APIVersion != "" && !KnownAPIVersion(r.APIVersion) {
		errs = append(errs, fmt.Errorf("api_version %q: want one of %v", r.APIVersion, KnownAPIVersions()))
	}
	switch r.Kind {
	case KindSign:
		if !Present(r.Payload) {
			errs = append(errs, errors.New("sign needs payload"))
		}
		if Present(r.Receipt) || Present(r.JWKS) {
			errs = append(errs, errors.New("sign takes payload only, not receipt or jwks"))
		}
	case KindVerify:
		if !Present(r.Receipt) {
			errs = append(errs, errors.New("verify needs receipt"))
		}
		if Present(r.Payload) {
			errs = append(errs, errors.New("verify takes receipt (and jwks), not payload"))
		}
	default:
		errs = append(errs, fmt.Errorf("kind must be sign or verify, got %q", r.Kind))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrBadEnvelope, err)
	}
	return nil
}

// DecodeRequest parses and validates a certnode.requests value. On a
// validation error the decoded request is still returned, so that its
// id, tenant and job can be named in the failed result.
func DecodeRequest(b []byte) (*Request, error) {
	var r Request
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadEnvelope, err)
	}
	return &r, r.Validate()
}

// Status is the outcome of one request.
type Status string

const (
	StatusSigned  Status = "signed"
	StatusValid   Status = "valid"
	StatusInvalid Status = "invalid"
	StatusFailed  Status = "failed" // the request could not be processed (reason says why)
)

// Auth says how the worker authenticated a request.
type Auth string

const (
	AuthIngest   Auth = "ingest"   // written by the ingest tier (internal MAC)
	AuthProducer Auth = "producer" // a customer producer signed it with its producer key
	// AuthNone: the record was refused as unauthenticated. Its result is
	// failed and names only what the record claimed; consumers must not
	// attribute it to the tenant without their own check.
	AuthNone Auth = "none"
)

// Keys says which keys a verify request used.
const (
	KeysService = "service"
	KeysCaller  = "caller"
)

// Result is the value of a certnode.receipts record (JSON).
type Result struct {
	V           int            `json:"v"`
	ID          string         `json:"id"`
	Tenant      string         `json:"tenant"`
	Kind        Kind           `json:"kind"`
	Status      Status         `json:"status"`
	Reason      string         `json:"reason,omitempty"`
	Auth        Auth           `json:"auth"`
	Keys        string         `json:"keys,omitempty"` // verify: service or caller
	Kid         string         `json:"kid,omitempty"`
	ReceiptID   string         `json:"receipt_id,omitempty"`
	PayloadHash string         `json:"payload_hash,omitempty"`
	Receipt     jsontext.Value `json:"receipt,omitzero"` // the signed or verified receipt
	JobID       string         `json:"job_id,omitempty"`
	Line        int64          `json:"line,omitempty"`
	Size        int            `json:"size"` // bytes of the request value
	// KeyID is the API key (ingest) or producer key (producer) the request
	// was authenticated with.
	KeyID       string    `json:"key_id,omitempty"`
	ReceivedAt  time.Time `json:"received_at,omitzero"`
	ProcessedAt time.Time `json:"processed_at"`
}

// Validate checks a result's shape; readers drop results that fail it.
func (r *Result) Validate() error {
	errs := checkCommon(r.V, r.ID, r.Tenant, r.JobID, r.Line)
	if r.Kind != KindSign && r.Kind != KindVerify {
		errs = append(errs, fmt.Errorf("kind %q", r.Kind))
	}
	switch r.Status {
	case StatusSigned, StatusValid, StatusInvalid, StatusFailed:
	default:
		errs = append(errs, fmt.Errorf("status %q", r.Status))
	}
	switch r.Auth {
	case AuthIngest, AuthProducer, AuthNone:
	default:
		errs = append(errs, fmt.Errorf("auth %q", r.Auth))
	}
	if r.Status == StatusSigned && !Present(r.Receipt) {
		errs = append(errs, errors.New("a signed result needs its receipt"))
	}
	if r.Size < 0 {
		errs = append(errs, errors.New("size must not be negative"))
	}
	return errors.Join(errs...)
}

// DecodeResult parses and validates a certnode.receipts value.
func DecodeResult(b []byte) (*Result, error) {
	var r Result
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("not a v%d result: %w", EnvelopeVersion, err)
	}
	return &r, nil
}

// The window, around the broker timestamp of a result record, in which the
// times a result claims are believed. received_at comes from the request,
// which a customer's producer writes directly, so it can say anything; it
// dates analytics rows and usage (and so the billing period a request falls
// in). A request normally waits seconds, so a day covers a worker backlog;
// five minutes covers clock skew. A result is therefore never dated more
// than ClaimedTimeBefore before it was written, which is how long a billing
// period stays open after it ended.
const (
	ClaimedTimeBefore = 24 * time.Hour
	ClaimedTimeAfter  = 5 * time.Minute
)

// TrustedTime returns claimed when it lies in the window around broker, the
// timestamp of the result's record, else broker; and whether claimed (when
// set) was replaced.
func TrustedTime(claimed, broker time.Time) (time.Time, bool) {
	if claimed.IsZero() {
		return broker, false
	}
	if claimed.Before(broker.Add(-ClaimedTimeBefore)) || claimed.After(broker.Add(ClaimedTimeAfter)) {
		return broker, true
	}
	return claimed, false
}
