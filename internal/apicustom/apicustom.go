// Package apicustom holds the rules of an organization's API
// customization, which the coordinator checks when they are set and the
// tiers apply: response headers added to its answers, whether webhook
// events carry full receipts, metadata added to the payloads it signs, its
// pinned API version, and per-key defaults.
package apicustom

import (
	"errors"
	"fmt"
	"maps"
	"net/textproto"
	"slices"
	"strings"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/certnode/certnode/schemas"
)

// Settings are an organization's API customization.
type Settings struct {
	// ResponseHeaders are added to every API answer to the organization's
	// requests (CheckResponseHeaders says which may be).
	ResponseHeaders map[string]string `json:"response_headers,omitempty"`
	// WebhookReceipt is whether receipt.signed events carry the receipt
	// (ReceiptInclude, the default: up to the dispatcher's size limit) or
	// only its receipt_id and receipt_url (ReceiptOmit); an endpoint may
	// choose otherwise.
	WebhookReceipt string `json:"webhook_receipt,omitempty"`
	// ReceiptMetadata is a JSON object of scalars added to every payload
	// the organization signs (schemas.ReceiptMetaMember), in canonical
	// form; absent: none.
	ReceiptMetadata jsontext.Value `json:"receipt_metadata,omitzero"`
	// APIVersion is the organization's pinned API version ("": the
	// baseline, for organizations created before dated versions).
	APIVersion string `json:"api_version,omitempty"`
}

// Webhook receipt modes.
const (
	ReceiptInclude = "include"
	ReceiptOmit    = "omit"
)

// Result formats of GET /v1/jobs/{id}/results: each signed line with its
// receipt, or only with its receipt_id and kid.
const (
	ResultsFull    = "full"
	ResultsCompact = "compact"
)

// Bounds.
const (
	MaxHeaders        = 10
	MaxHeaderName     = 64
	MaxHeaderValue    = 512
	MaxHeadersBytes   = 4096 // names and values together
	MaxMetadataBytes  = 2048 // canonical form
	MaxMetadataFields = 20
	MaxMetadataName   = 64
)

// ErrRefused marks a setting the service refuses.
var ErrRefused = errors.New("refused")

func refused(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, a...))
}

// refusedNames are headers an organization may not set, canonical: the
// answer's framing and routing, what the service sets itself (security
// headers, CORS, authentication challenges, rate limiting, caching), and
// what would redirect or drop a client's state.
var refusedNames = []string{
	// Hop-by-hop and framing.
	"Connection", "Keep-Alive", "Transfer-Encoding", "Te", "Trailer", "Upgrade", "Host",
	// Content and routing of the answer.
	"Set-Cookie", "Cookie", "Location", "Refresh", "Date", "Server", "Alt-Svc", "Allow", "Link", "Accept-Ranges",
	// Security headers (internal/httpsec) and their relatives.
	"Strict-Transport-Security", "X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy",
	"Permissions-Policy", "X-Xss-Protection", "X-Permitted-Cross-Domain-Policies", "Clear-Site-Data",
	// Authentication and rate limiting.
	"Www-Authenticate", "Authorization", "Retry-After",
	// Caching: an organization's answers must not land in shared caches.
	"Cache-Control", "Pragma", "Expires", "Vary", "Etag", "Last-Modified", "Age",
}

// refusedPrefixes are header families an organization may not set.
var refusedPrefixes = []string{"Proxy-", "Content-", "Access-Control-", "Cross-Origin-", "Certnode-", "Sec-", "X-Accel-"}

// CheckHeader checks one response header: an RFC 7230 token name that is
// not refused, and a value of printable ASCII (spaces and tabs inside).
func CheckHeader(name, value string) error {
	if name == "" || len(name) > MaxHeaderName || !isToken(name) {
		return refused("header name %q: an RFC 7230 token of 1 to %d characters", name, MaxHeaderName)
	}
	canon := textproto.CanonicalMIMEHeaderKey(name)
	if slices.Contains(refusedNames, canon) || slices.ContainsFunc(refusedPrefixes, func(p string) bool { return strings.HasPrefix(canon, p) }) {
		return refused("header %q: the service sets it, or it would change how the answer is framed, cached, secured or authenticated", name)
	}
	if len(value) > MaxHeaderValue {
		return refused("header %q: the value is over %d bytes", name, MaxHeaderValue)
	}
	for i := 0; i < len(value); i++ {
		if c := value[i]; (c < ' ' || c > '~') && c != '\t' {
			return refused("header %q: the value must be printable ASCII on one line", name)
		}
	}
	if strings.TrimSpace(value) != value || value == "" {
		return refused("header %q: the value must be non-empty, without leading or trailing spaces", name)
	}
	return nil
}

// CheckResponseHeaders checks an organization's response headers: each
// one, their count and size, and no name twice in different cases.
func CheckResponseHeaders(h map[string]string) error {
	var errs []error
	if len(h) > MaxHeaders {
		errs = append(errs, refused("at most %d response headers", MaxHeaders))
	}
	size := 0
	seen := map[string]string{}
	for _, name := range slices.Sorted(maps.Keys(h)) {
		size += len(name) + len(h[name])
		if err := CheckHeader(name, h[name]); err != nil {
			errs = append(errs, err)
			continue
		}
		canon := textproto.CanonicalMIMEHeaderKey(name)
		if other, dup := seen[canon]; dup {
			errs = append(errs, refused("headers %q and %q are the same header", other, name))
		}
		seen[canon] = name
	}
	if size > MaxHeadersBytes {
		errs = append(errs, refused("response headers are over %d bytes in all", MaxHeadersBytes))
	}
	return errors.Join(errs...)
}

// isToken reports whether s is an RFC 7230 token.
func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// NormalizeMetadata checks receipt metadata, a JSON object of at most
// MaxMetadataFields members whose values are strings, numbers, booleans
// or null, and returns its canonical form (null or absent: none).
func NormalizeMetadata(v jsontext.Value) (jsontext.Value, error) {
	if !schemas.Present(v) {
		return nil, nil
	}
	canon, err := schemas.CanonicalizeObject(v)
	if err != nil {
		return nil, refused("receipt_metadata: %v", err)
	}
	if len(canon) > MaxMetadataBytes {
		return nil, refused("receipt_metadata is %d bytes; at most %d", len(canon), MaxMetadataBytes)
	}
	dec := jsontext.NewDecoder(strings.NewReader(string(canon)))
	dec.ReadToken() // {: checked by CanonicalizeObject
	n := 0
	var errs []error
	for dec.PeekKind() != '}' {
		tok, _ := dec.ReadToken()
		name := tok.String() // before the decoder moves on
		val, err := dec.ReadValue()
		if err != nil {
			return nil, refused("receipt_metadata: %v", err)
		}
		n++
		if name == "" || len(name) > MaxMetadataName {
			errs = append(errs, refused("receipt_metadata: member names are 1 to %d bytes", MaxMetadataName))
		}
		if k := val.Kind(); k == '{' || k == '[' {
			errs = append(errs, refused("receipt_metadata: %q is an object or array; values are strings, numbers, booleans or null", name))
		}
	}
	if n > MaxMetadataFields {
		errs = append(errs, refused("receipt_metadata has %d members; at most %d", n, MaxMetadataFields))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return canon, nil
}

// Check reports every problem of s; its metadata must be in canonical
// form (NormalizeMetadata).
func (s *Settings) Check() error {
	var errs []error
	if err := CheckResponseHeaders(s.ResponseHeaders); err != nil {
		errs = append(errs, err)
	}
	if err := CheckReceiptMode(s.WebhookReceipt); err != nil {
		errs = append(errs, err)
	}
	if schemas.Present(s.ReceiptMetadata) {
		if canon, err := NormalizeMetadata(s.ReceiptMetadata); err != nil {
			errs = append(errs, err)
		} else if string(canon) != string(s.ReceiptMetadata) {
			errs = append(errs, refused("receipt_metadata is not in canonical form"))
		}
	}
	if err := CheckVersion("api_version", s.APIVersion); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// CheckReceiptMode checks a webhook receipt mode ("" is the default).
func CheckReceiptMode(m string) error {
	if m != "" && m != ReceiptInclude && m != ReceiptOmit {
		return refused("webhook_receipt %q: want %s or %s", m, ReceiptInclude, ReceiptOmit)
	}
	return nil
}

// CheckVersion checks a pinned version ("": none).
func CheckVersion(what, v string) error {
	if v != "" && !schemas.KnownAPIVersion(v) {
		return refused("%s %q: want one of %v", what, v, schemas.KnownAPIVersions())
	}
	return nil
}

// KeyDefaults are what an API key's requests get when they do not say.
type KeyDefaults struct {
	// JobType is the type of POST /v1/jobs without ?type= (sign or
	// verify; "": the type is required).
	JobType string `json:"job_type,omitempty"`
	// ResultFormat is the format of GET /v1/jobs/{id}/results without
	// ?format= (ResultsFull or ResultsCompact; "": full).
	ResultFormat string `json:"result_format,omitempty"`
	// APIVersion pins the key's requests to a version ("": the
	// organization's).
	APIVersion string `json:"api_version,omitempty"`
}

// Check reports every problem of d.
func (d *KeyDefaults) Check() error {
	var errs []error
	if d.JobType != "" && d.JobType != string(schemas.KindSign) && d.JobType != string(schemas.KindVerify) {
		errs = append(errs, refused("job_type %q: want sign or verify", d.JobType))
	}
	if err := CheckResultFormat(d.ResultFormat); err != nil {
		errs = append(errs, err)
	}
	if err := CheckVersion("api_version", d.APIVersion); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// CheckResultFormat checks a results format ("" is the default).
func CheckResultFormat(f string) error {
	if f != "" && f != ResultsFull && f != ResultsCompact {
		return refused("result_format %q: want %s or %s", f, ResultsFull, ResultsCompact)
	}
	return nil
}
