package schemas

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/big"

	"github.com/go-json-experiment/json"
)

// Reason names why a receipt failed verification. The values are part of
// the API: they appear in HTTP responses, CLI output and analytics rows.
type Reason string

const (
	ReasonMalformed           Reason = "malformed"
	ReasonUnsupportedAlg      Reason = "unsupported_alg"
	ReasonUnknownKid          Reason = "unknown_kid"
	ReasonKidMismatch         Reason = "kid_mismatch"
	ReasonBadSignature        Reason = "bad_signature"
	ReasonPayloadHashMismatch Reason = "payload_hash_mismatch"
	ReasonReceiptIDMismatch   Reason = "receipt_id_mismatch"
)

// VerifyError is a failed verification. errors.Is matches any VerifyError
// with the same Reason, so callers can test against the Err* values.
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
	ErrMalformed           = &VerifyError{Reason: ReasonMalformed}
	ErrUnsupportedAlg      = &VerifyError{Reason: ReasonUnsupportedAlg}
	ErrUnknownKid          = &VerifyError{Reason: ReasonUnknownKid}
	ErrKidMismatch         = &VerifyError{Reason: ReasonKidMismatch}
	ErrBadSignature        = &VerifyError{Reason: ReasonBadSignature}
	ErrPayloadHashMismatch = &VerifyError{Reason: ReasonPayloadHashMismatch}
	ErrReceiptIDMismatch   = &VerifyError{Reason: ReasonReceiptIDMismatch}
)

func fail(r Reason, format string, a ...any) error {
	return &VerifyError{Reason: r, Detail: fmt.Sprintf(format, a...)}
}

// KeySet is a JWKS decoded once for repeated verification.
type KeySet struct {
	keys map[string]*ecdsa.PublicKey
}

// ErrKidNotThumbprint refuses a JWKS key whose kid is not its RFC 7638
// thumbprint: receipts name keys by thumbprint, so a free-form kid would let
// a caller-supplied JWKS make any key answer for any kid.
var ErrKidNotThumbprint = errors.New("kid is not the key's RFC 7638 thumbprint")

// NewKeySet decodes every key of jwks and indexes it by its RFC 7638
// thumbprint. A key may omit kid; a kid that is present must equal the
// thumbprint, or the whole set is refused.
func NewKeySet(jwks JWKS) (*KeySet, error) {
	ks := &KeySet{keys: make(map[string]*ecdsa.PublicKey, len(jwks.Keys))}
	for i, k := range jwks.Keys {
		pub, err := k.PublicKey()
		if err != nil {
			return nil, fmt.Errorf("jwks key %d (kid %q): %w", i, k.Kid, err)
		}
		tp := k.Thumbprint()
		if k.Kid != "" && k.Kid != tp {
			return nil, fmt.Errorf("jwks key %d: kid %q: %w %q", i, k.Kid, ErrKidNotThumbprint, tp)
		}
		ks.keys[tp] = pub
	}
	return ks, nil
}

// ParseJWKS decodes and checks a JWKS document.
func ParseJWKS(data []byte) (*KeySet, error) {
	var jwks JWKS
	if err := json.Unmarshal(data, &jwks); err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	if len(jwks.Keys) == 0 {
		return nil, fmt.Errorf("jwks: no keys")
	}
	return NewKeySet(jwks)
}

// Lookup returns the public key for kid.
func (ks *KeySet) Lookup(kid string) (*ecdsa.PublicKey, bool) {
	k, ok := ks.keys[kid]
	return k, ok
}

type protectedHeader struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
}

// Verify checks a receipt given as JSON and returns it decoded. On failure
// the error is a *VerifyError naming the reason.
func (ks *KeySet) Verify(raw []byte) (*Receipt, error) {
	var r Receipt
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, fail(ReasonMalformed, "%v", err)
	}
	return &r, ks.VerifyReceipt(&r)
}

// VerifyReceipt checks a decoded receipt. The payload hash is checked before
// the signature so that a payload edited after signing is reported as such.
func (ks *KeySet) VerifyReceipt(r *Receipt) error {
	if r.Protected == "" || r.Signature == "" || r.Kid == "" || len(r.Payload) == 0 {
		return fail(ReasonMalformed, "protected, payload, signature and kid are required")
	}
	hdrJSON, err := b64u.DecodeString(r.Protected)
	if err != nil {
		return fail(ReasonMalformed, "protected is not base64url: %v", err)
	}
	var hdr protectedHeader
	if err := json.Unmarshal(hdrJSON, &hdr); err != nil {
		return fail(ReasonMalformed, "protected header: %v", err)
	}
	if hdr.Alg != Alg {
		return fail(ReasonUnsupportedAlg, "alg %q", hdr.Alg)
	}
	if hdr.Kid != r.Kid {
		return fail(ReasonKidMismatch, "header kid %q, receipt kid %q", hdr.Kid, r.Kid)
	}
	pub, ok := ks.Lookup(r.Kid)
	if !ok {
		return fail(ReasonUnknownKid, "kid %q is not in the JWKS", r.Kid)
	}
	canon, err := CanonicalizeObject(r.Payload)
	if err != nil {
		return fail(ReasonMalformed, "payload: %v", err)
	}
	if r.PayloadJCSSHA256 != "" {
		sum := sha256.Sum256(canon)
		if B64U(sum[:]) != r.PayloadJCSSHA256 {
			return fail(ReasonPayloadHashMismatch, "")
		}
	}
	sig, err := b64u.DecodeString(r.Signature)
	if err != nil {
		return fail(ReasonMalformed, "signature is not base64url: %v", err)
	}
	if len(sig) != 64 {
		return fail(ReasonBadSignature, "signature is %d bytes, want 64 (r||s)", len(sig))
	}
	input := signingInput(r.Protected, canon)
	digest := sha256.Sum256(input)
	rr, ss := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if !ecdsa.Verify(pub, digest[:], rr, ss) {
		return fail(ReasonBadSignature, "")
	}
	if r.ReceiptID != "" && receiptID(input, r.Signature) != r.ReceiptID {
		return fail(ReasonReceiptIDMismatch, "")
	}
	return nil
}
