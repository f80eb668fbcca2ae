package schemas

import (
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/go-json-experiment/json/jsontext"
)

// An organization names where its payloads hold a data subject's
// identifier with a JSON pointer (RFC 6901), its subject_pointer setting:
// "/customer/email" finds "ada@example.com" in
// {"customer":{"email":"ada@example.com"}}. Data subject access and
// erasure by subject find the receipts whose payload holds the value
// there.

// MaxJSONPointerBytes bounds a subject pointer.
const MaxJSONPointerBytes = 256

// ErrBadJSONPointer: not an RFC 6901 JSON pointer.
var ErrBadJSONPointer = errors.New("not a JSON pointer (RFC 6901): \"\" or /a/b, ~0 for ~ and ~1 for /")

// CheckJSONPointer checks p's syntax.
func CheckJSONPointer(p string) error {
	if len(p) > MaxJSONPointerBytes || (p != "" && p[0] != '/') {
		return ErrBadJSONPointer
	}
	for i := 0; i < len(p); i++ {
		if p[i] == '~' && (i+1 == len(p) || (p[i+1] != '0' && p[i+1] != '1')) {
			return ErrBadJSONPointer
		}
	}
	return nil
}

// JSONPointerGet returns the value p points to in doc (decoded JSON: maps,
// slices, strings, numbers, booleans, nil).
func JSONPointerGet(doc any, p string) (any, bool) {
	if CheckJSONPointer(p) != nil {
		return nil, false
	}
	if p == "" {
		return doc, true
	}
	cur := doc
	for _, tok := range strings.Split(p[1:], "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		switch v := cur.(type) {
		case map[string]any:
			next, ok := v[tok]
			if !ok {
				return nil, false
			}
			cur = next
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(v) || strconv.Itoa(i) != tok {
				return nil, false
			}
			cur = v[i]
		default:
			return nil, false
		}
	}
	return cur, true
}

// ErasureRequest asks to erase an organization's payloads: those whose
// subject_pointer holds Subject, or those received in [From, To), or All
// of its data (exactly one).
type ErasureRequest struct {
	Subject string    `json:"subject,omitempty"`
	From    time.Time `json:"from,omitzero"`
	To      time.Time `json:"to,omitzero"`
	All     bool      `json:"all,omitempty"`
}

// Erasure modes.
const (
	ErasureSubject      = "subject"
	ErasureRange        = "range"
	ErasureOrganization = "organization"
)

// Mode checks r and names its mode.
func (r *ErasureRequest) Mode() (string, error) {
	modes := 0
	mode := ""
	if r.Subject != "" {
		modes, mode = modes+1, ErasureSubject
	}
	if !r.From.IsZero() || !r.To.IsZero() {
		modes, mode = modes+1, ErasureRange
		if r.From.IsZero() || r.To.IsZero() || !r.From.Before(r.To) {
			return "", errors.New("a range needs from before to")
		}
		if r.From.Year() < 1970 || r.To.Year() > 2105 {
			return "", errors.New("a range lies between 1970 and 2105")
		}
	}
	if r.All {
		modes, mode = modes+1, ErasureOrganization
	}
	if modes != 1 {
		return "", errors.New(`ask for exactly one of {"subject":...}, {"from":...,"to":...} or {"all":true}`)
	}
	if len(r.Subject) > 1024 {
		return "", errors.New("a subject is at most 1024 bytes")
	}
	return mode, nil
}

// Erasure is what an erasure did: the rows it rewrote (payloads blanked)
// or deleted, by table. ClickHouse applies them within seconds.
type Erasure struct {
	Mode string `json:"mode"`
	// Requests are the erased requests' ids (subject mode).
	Requests []string          `json:"requests,omitempty"`
	Rows     map[string]uint64 `json:"rows"`
	// KeyDestroyed: the organization's key-encryption key was destroyed
	// (organization mode), so no copy of its payloads can be read again.
	KeyDestroyed bool `json:"key_destroyed,omitempty"`
}

// SubjectReceipt is a receipt whose payload names a data subject.
type SubjectReceipt struct {
	RequestID  string         `json:"request_id"`
	ReceiptID  string         `json:"receipt_id"`
	ReceivedAt time.Time      `json:"received_at"`
	Receipt    jsontext.Value `json:"receipt"`
}

// SubjectData is everything held about a data subject: the receipts whose
// payload holds the value at the organization's subject_pointer, and how
// many webhook attempts carried them.
type SubjectData struct {
	SubjectPointer  string           `json:"subject_pointer"`
	Subject         string           `json:"subject"`
	Receipts        []SubjectReceipt `json:"receipts"`
	WebhookAttempts uint64           `json:"webhook_attempts"`
	// Truncated: more receipts than an answer holds (MaxSubjectReceipts).
	Truncated bool `json:"truncated"`
}

// MaxSubjectReceipts bounds the receipts a subject access answer holds.
const MaxSubjectReceipts = 10_000

// ClickHouseOrgTable is a table of an organization's data: which column
// names the organization, which one times a row, and which ones hold
// payloads (receipts, bodies) that erasure blanks.
type ClickHouseOrgTable struct {
	Table, Org, Time string
	Payloads         []string
}

// ClickHouseErasable are the tables erasure and retention reach. The
// usage events stay: they hold no payload, and invoices are built from
// them. The audit events stay: they are the record the audit log proves.
var ClickHouseErasable = []ClickHouseOrgTable{
	{Table: ClickHouseResultsTable, Org: "tenant", Time: "received_at", Payloads: []string{"receipt"}},
	{Table: ClickHouseWebhookAttemptsTable, Org: "org", Time: "message_created_at", Payloads: []string{"body", "response_body"}},
	{Table: ClickHouseWebhookMessagesTable, Org: "org", Time: "created_at"},
}
