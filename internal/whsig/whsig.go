// Package whsig signs and verifies webhooks as the Standard Webhooks
// specification says (https://www.standardwebhooks.com/, "Signature
// scheme" and "Webhook headers"): HMAC-SHA256 over "id.timestamp.body",
// keyed with the base64-decoded part of a "whsec_" secret, sent as
// "v1,<base64>" in webhook-signature, one entry per secret while a secret
// is being rotated. Any Standard Webhooks library accepts what Sign makes.
//
// It lives in internal/ rather than beside the dispatcher because the
// coordinator makes and checks endpoint secrets too, and tiers never import
// each other.
package whsig

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The headers of a delivery, lower case as the specification writes them
// (http.Header canonicalizes them either way).
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// DefaultTolerance is how far a delivery's timestamp may be from the
// receiver's clock, either way, before it counts as a replay.
const DefaultTolerance = 5 * time.Minute

const (
	secretPrefix = "whsec_"
	// The specification's bounds for a symmetric signing secret.
	minSecretLen = 24
	maxSecretLen = 64
	// newSecretLen is what NewSecret draws: 256 bits, HMAC-SHA256's own size.
	newSecretLen = 32
	version      = "v1"
)

// Secret is an endpoint's signing key. The zero Secret is not usable: get
// one from NewSecret or ParseSecret.
type Secret struct {
	key []byte
}

// NewSecret draws a random secret.
func NewSecret() Secret {
	key := make([]byte, newSecretLen)
	_, _ = rand.Read(key) // crypto/rand.Read never fails (it crashes the program instead)
	return Secret{key: key}
}

// ParseSecret reads the "whsec_<base64>" form Encode writes.
func ParseSecret(s string) (Secret, error) {
	b64, ok := strings.CutPrefix(s, secretPrefix)
	if !ok {
		return Secret{}, errors.New("webhook secret: must start with " + secretPrefix)
	}
	// The reference libraries accept base64 with or without padding.
	key, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		key, err = base64.RawStdEncoding.DecodeString(b64)
	}
	if err != nil {
		// Not err itself: it quotes the offending byte of the secret.
		return Secret{}, errors.New("webhook secret: the part after " + secretPrefix + " is not base64")
	}
	if len(key) < minSecretLen || len(key) > maxSecretLen {
		return Secret{}, fmt.Errorf("webhook secret: %d bytes, want %d to %d", len(key), minSecretLen, maxSecretLen)
	}
	return Secret{key: key}, nil
}

// Encode returns the "whsec_<base64>" form, to store or to show its owner.
// Never log it.
func (s Secret) Encode() string { return secretPrefix + base64.StdEncoding.EncodeToString(s.key) }

// String keeps the key out of logs and error messages that format a Secret.
func (s Secret) String() string { return secretPrefix + "[redacted]" }

// GoString does what String does, for %#v.
func (s Secret) GoString() string { return s.String() }

// mac is the raw HMAC-SHA256 of the signed content.
func (s Secret) mac(id string, ts int64, body []byte) []byte {
	h := hmac.New(sha256.New, s.key)
	h.Write([]byte(id))
	h.Write([]byte{'.'})
	h.Write(strconv.AppendInt(nil, ts, 10))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(nil)
}

// Sign returns the webhook-signature header of a delivery: "v1,<base64>"
// for each secret, space-separated (the current and the previous secret
// while one is rotated). ts is sent in webhook-timestamp as whole seconds
// (ts.Unix()); id, sent in webhook-id, must not contain "." (the
// specification forbids it: it would make "id.timestamp.body" ambiguous),
// and Verify refuses such ids. Sign panics on a zero Secret: signing with an
// empty key would let anyone forge deliveries.
func Sign(id string, ts time.Time, body []byte, secrets ...Secret) string {
	var b strings.Builder
	for i, s := range secrets {
		if len(s.key) == 0 {
			panic("whsig: Sign with a zero Secret")
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(version + ",")
		b.WriteString(base64.StdEncoding.EncodeToString(s.mac(id, ts.Unix(), body)))
	}
	return b.String()
}

// Reason names the check a delivery failed.
type Reason string

const (
	ReasonMalformedHeader     Reason = "malformed_header"
	ReasonTimestampTolerance  Reason = "timestamp_outside_tolerance"
	ReasonNoMatchingSignature Reason = "no_matching_signature"
)

// VerifyError is why Verify refused a delivery. Detail never holds a
// secret or a signature.
type VerifyError struct {
	Reason Reason
	Detail string
}

func (e *VerifyError) Error() string {
	if e.Detail == "" {
		return string(e.Reason)
	}
	return string(e.Reason) + ": " + e.Detail
}

// Is reports whether target is a VerifyError with the same reason.
func (e *VerifyError) Is(target error) bool {
	t, ok := target.(*VerifyError)
	return ok && t.Reason == e.Reason
}

// Sentinels for errors.Is.
var (
	ErrMalformedHeader     = &VerifyError{Reason: ReasonMalformedHeader}
	ErrTimestampTolerance  = &VerifyError{Reason: ReasonTimestampTolerance}
	ErrNoMatchingSignature = &VerifyError{Reason: ReasonNoMatchingSignature}
)

// ErrNoSecret is a caller's mistake, not a verdict on the delivery.
var ErrNoSecret = errors.New("whsig: Verify needs at least one non-zero Secret")

// Verify checks a delivery: the three headers are present and well formed,
// webhook-timestamp is within tolerance of now (either way; DefaultTolerance
// when tolerance <= 0), and some v1 entry of webhook-signature is the HMAC
// of the body under one of secrets (compared in constant time). Entries of
// other versions (v1a, asymmetric) are skipped, as the specification says.
// It is stricter than the reference libraries in two ways the specification
// supports and no conforming sender trips: an id containing "." and a
// timestamp with a sign, fraction or leading zero are malformed.
// It returns nil, a *VerifyError naming the first check that failed, or
// ErrNoSecret.
func Verify(h http.Header, body []byte, secrets []Secret, tolerance time.Duration, now time.Time) error {
	if len(secrets) == 0 {
		return ErrNoSecret
	}
	for _, s := range secrets {
		if len(s.key) == 0 {
			return ErrNoSecret
		}
	}
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	id, tsText, sigHeader := h.Get(HeaderID), h.Get(HeaderTimestamp), h.Get(HeaderSignature)
	for _, c := range []struct{ name, value string }{{HeaderID, id}, {HeaderTimestamp, tsText}, {HeaderSignature, sigHeader}} {
		if c.value == "" {
			return malformed("%s is missing", c.name)
		}
	}
	if strings.Contains(id, ".") {
		return malformed("%s contains \".\"", HeaderID)
	}
	ts, err := parseTimestamp(tsText)
	if err != nil {
		return err
	}
	entries := strings.Fields(sigHeader)
	var candidates [][]byte
	for i, e := range entries {
		v, sig, ok := strings.Cut(e, ",")
		if !ok || v == "" || sig == "" {
			return malformed("%s entry %d is not \"version,signature\"", HeaderSignature, i+1)
		}
		if v != version {
			continue
		}
		// A v1 entry that is not base64 of a SHA-256 MAC can match nothing,
		// like a wrong one.
		if raw, err := base64.StdEncoding.DecodeString(sig); err == nil && len(raw) == sha256.Size {
			candidates = append(candidates, raw)
		}
	}

	// The timestamp is checked before the signature (as the reference
	// libraries do) so that a replayed old delivery is named as such.
	// Compared as times, not as a difference: a far-off timestamp would
	// overflow a Duration.
	switch t := time.Unix(ts, 0); {
	case t.Before(now.Add(-tolerance)):
		return &VerifyError{Reason: ReasonTimestampTolerance,
			Detail: fmt.Sprintf("%s %d is %s before now; tolerance %s", HeaderTimestamp, ts, now.Sub(t).Truncate(time.Second), tolerance)}
	case t.After(now.Add(tolerance)):
		return &VerifyError{Reason: ReasonTimestampTolerance,
			Detail: fmt.Sprintf("%s %d is %s after now; tolerance %s", HeaderTimestamp, ts, t.Sub(now).Truncate(time.Second), tolerance)}
	}

	for _, s := range secrets {
		want := s.mac(id, ts, body)
		for _, c := range candidates {
			if hmac.Equal(c, want) {
				return nil
			}
		}
	}
	return &VerifyError{Reason: ReasonNoMatchingSignature,
		Detail: fmt.Sprintf("%d %s entries, %d of them well-formed v1, %d secrets", len(entries), HeaderSignature, len(candidates), len(secrets))}
}

func malformed(format string, a ...any) error {
	return &VerifyError{Reason: ReasonMalformedHeader, Detail: fmt.Sprintf(format, a...)}
}

// parseTimestamp takes only decimal digits without leading zeros: the
// specification's "integer unix timestamp" written the one way Sign writes
// it, so the MAC covers the header exactly as sent.
func parseTimestamp(s string) (int64, error) {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' || (i == 0 && s[i] == '0' && len(s) > 1) {
			return 0, malformed("%s is not an integer Unix time", HeaderTimestamp)
		}
	}
	ts, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, malformed("%s is out of range", HeaderTimestamp)
	}
	return ts, nil
}
