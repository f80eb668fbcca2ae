package schemas

import (
	"errors"
	"fmt"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Topics names the three Kafka topics. Records on all three are keyed by
// tenant id, so a tenant's traffic keeps its order.
type Topics struct {
	Requests string
	Receipts string
	DLQ      string
}

// DefaultTopicPrefix gives certnode.requests, certnode.receipts, certnode.dlq.
const DefaultTopicPrefix = "certnode"

// TopicsFor names the topics under prefix, so several environments (or
// test runs) can share one cluster.
func TopicsFor(prefix string) Topics {
	return Topics{Requests: prefix + ".requests", Receipts: prefix + ".receipts", DLQ: prefix + ".dlq"}
}

// All lists the topics.
func (t Topics) All() []string { return []string{t.Requests, t.Receipts, t.DLQ} }

// Record headers.
const (
	// HeaderAPIKey carries a tenant API key on records that customer systems
	// produce straight into certnode.requests ("Bearer <key>" or the key).
	HeaderAPIKey = "certnode-api-key"
	// HeaderIngestMAC marks records written by the ingest tier: hex
	// HMAC-SHA256 over tenant + "\n" + id under the cluster's internal
	// secret. Ingest authenticates the caller itself and never puts API keys
	// on the topic.
	HeaderIngestMAC = "certnode-ingest-mac"
	// HeaderDLQReason names why a record went to certnode.dlq.
	HeaderDLQReason = "certnode-dlq-reason"
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

// Request is the value of a certnode.requests record (JSON).
type Request struct {
	V          int            `json:"v"`
	ID         string         `json:"id"`     // unique per request; the idempotency key
	Tenant     string         `json:"tenant"` // must equal the record key
	Kind       Kind           `json:"kind"`
	Payload    jsontext.Value `json:"payload,omitempty"` // sign: a JSON object
	Receipt    jsontext.Value `json:"receipt,omitempty"` // verify: a receipt
	JWKS       jsontext.Value `json:"jwks,omitempty"`    // verify: keys to use instead of ours
	JobID      string         `json:"job_id,omitempty"`
	Line       int64          `json:"line,omitempty"` // 1-based input line of a bulk job
	ReceivedAt time.Time      `json:"received_at,omitzero"`
}

// Errors from Request.Validate.
var ErrBadEnvelope = errors.New("bad request envelope")

// Validate checks the envelope's shape (not the payload's JSON, which the
// worker canonicalizes anyway).
func (r *Request) Validate() error {
	var errs []error
	if r.V != EnvelopeVersion {
		errs = append(errs, fmt.Errorf("v must be %d", EnvelopeVersion))
	}
	if r.ID == "" || len(r.ID) > 128 {
		errs = append(errs, errors.New("id is required (at most 128 bytes)"))
	}
	if r.Tenant == "" {
		errs = append(errs, errors.New("tenant is required"))
	}
	switch r.Kind {
	case KindSign:
		if len(r.Payload) == 0 {
			errs = append(errs, errors.New("sign needs payload"))
		}
	case KindVerify:
		if len(r.Receipt) == 0 {
			errs = append(errs, errors.New("verify needs receipt"))
		}
	default:
		errs = append(errs, fmt.Errorf("kind must be sign or verify, got %q", r.Kind))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrBadEnvelope, err)
	}
	return nil
}

// DecodeRequest parses and validates a certnode.requests value.
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

// Result is the value of a certnode.receipts record (JSON).
type Result struct {
	V           int            `json:"v"`
	ID          string         `json:"id"`
	Tenant      string         `json:"tenant"`
	Kind        Kind           `json:"kind"`
	Status      Status         `json:"status"`
	Reason      string         `json:"reason,omitempty"`
	Kid         string         `json:"kid,omitempty"`
	ReceiptID   string         `json:"receipt_id,omitempty"`
	PayloadHash string         `json:"payload_hash,omitempty"`
	Receipt     jsontext.Value `json:"receipt,omitempty"` // the signed or verified receipt
	JobID       string         `json:"job_id,omitempty"`
	Line        int64          `json:"line,omitempty"`
	Size        int            `json:"size"` // bytes of the request value
	ReceivedAt  time.Time      `json:"received_at,omitzero"`
	ProcessedAt time.Time      `json:"processed_at"`
}

// DecodeResult parses a certnode.receipts value.
func DecodeResult(b []byte) (*Result, error) {
	var r Result
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	if r.V != EnvelopeVersion || r.ID == "" {
		return nil, fmt.Errorf("not a v%d result", EnvelopeVersion)
	}
	return &r, nil
}
