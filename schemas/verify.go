package schemas

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/big"
	"strings"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
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
	// ReasonAlgKeyMismatch: the header's alg is not the algorithm of the
	// key its kid names (an EdDSA header on an EC key, or the reverse).
	ReasonAlgKeyMismatch Reason = "alg_key_mismatch"
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
	ErrAlgKeyMismatch      = &VerifyError{Reason: ReasonAlgKeyMismatch}
)

func fail(r Reason, format string, a ...any) error {
	return &VerifyError{Reason: r, Detail: fmt.Sprintf(format, a...)}
}

// KeySet is a JWKS decoded once for repeated verification.
type KeySet struct {
	keys    map[string]verifyKey
	skipped []SkippedKey
}

// verifyKey is one usable key: ec for ES256, ed for EdDSA.
type verifyKey struct {
	alg string
	ec  *ecdsa.PublicKey
	ed  ed25519.PublicKey
}

// ErrKidNotThumbprint refuses a JWKS key whose kid is not its RFC 7638
// thumbprint: receipts name keys by thumbprint, so a free-form kid would let
// a caller-supplied JWKS make any key answer for any kid.
var ErrKidNotThumbprint = errors.New("kid is not the key's RFC 7638 thumbprint")

// ErrNoUsableKeys is a JWKS in which no key can verify a receipt.
var ErrNoUsableKeys = errors.New("jwks: no usable key")

// Why a JWKS key was skipped; the values appear in API responses.
const (
	SkipUnsupportedType = "unsupported_key_type" // neither EC P-256 nor OKP Ed25519
	SkipNotForSigning   = "not_for_signing"      // "use" is not "sig"
	SkipAlgMismatch     = "alg_mismatch"         // "alg" is not the key type's algorithm
	SkipInvalidKey      = "invalid_key"          // a known type whose key material does not decode
	SkipMalformed       = "malformed"            // not a JWK object
)

// SkippedKey is a JWKS key that a KeySet does not use, and why. A JWKS
// may hold keys for other purposes or algorithms; they never make the set
// unusable, but the caller should hear of them once.
type SkippedKey struct {
	Index  int    `json:"index"`
	Kid    string `json:"kid,omitempty"`
	Kty    string `json:"kty,omitempty"`
	Crv    string `json:"crv,omitempty"`
	Reason string `json:"reason"`
	Detail string `json:"detail,omitempty"`
}

func (s SkippedKey) String() string {
	msg := fmt.Sprintf("jwks key %d (kid %q, kty %q, crv %q) skipped: %s", s.Index, s.Kid, s.Kty, s.Crv, s.Reason)
	if s.Detail != "" {
		msg += " (" + s.Detail + ")"
	}
	return msg
}

// NewKeySet indexes every usable key of jwks by its RFC 7638 thumbprint
// and records the others as skipped. A key may omit kid; a kid that is
// present must equal the thumbprint, or the whole set is refused: that is
// a forgery or a broken publisher, not a key for another purpose. A set
// with no usable key is refused with ErrNoUsableKeys.
func NewKeySet(jwks JWKS) (*KeySet, error) {
	ks := &KeySet{keys: make(map[string]verifyKey, len(jwks.Keys))}
	for i, k := range jwks.Keys {
		if err := ks.add(i, k); err != nil {
			return nil, err
		}
	}
	return ks.usable()
}

func (ks *KeySet) add(i int, k JWK) error {
	skip := func(reason, detail string) {
		ks.skipped = append(ks.skipped, SkippedKey{Index: i, Kid: k.Kid, Kty: k.Kty, Crv: k.Crv, Reason: reason, Detail: detail})
	}
	alg := k.KeyAlg()
	switch {
	case alg == "":
		skip(SkipUnsupportedType, "")
		return nil
	case k.Use != "" && k.Use != "sig":
		skip(SkipNotForSigning, fmt.Sprintf("use %q", k.Use))
		return nil
	case k.Alg != "" && k.Alg != alg:
		skip(SkipAlgMismatch, fmt.Sprintf("alg %q on a %s key, want %q", k.Alg, k.Crv, alg))
		return nil
	}
	if tp := k.Thumbprint(); k.Kid != "" && k.Kid != tp {
		return fmt.Errorf("jwks key %d: kid %q: %w %q", i, k.Kid, ErrKidNotThumbprint, tp)
	}
	pub, err := k.PublicKey()
	if err != nil {
		skip(SkipInvalidKey, err.Error())
		return nil
	}
	vk := verifyKey{alg: alg}
	if alg == AlgES256 {
		vk.ec = pub.(*ecdsa.PublicKey)
	} else {
		vk.ed = pub.(ed25519.PublicKey)
	}
	ks.keys[k.Thumbprint()] = vk
	return nil
}

func (ks *KeySet) usable() (*KeySet, error) {
	if len(ks.keys) > 0 {
		return ks, nil
	}
	if len(ks.skipped) == 0 {
		return nil, fmt.Errorf("%w: the set has no keys", ErrNoUsableKeys)
	}
	msgs := make([]string, len(ks.skipped))
	for i, s := range ks.skipped {
		msgs[i] = s.String()
	}
	return nil, fmt.Errorf("%w: %s", ErrNoUsableKeys, strings.Join(msgs, "; "))
}

// ParseJWKS decodes and checks a JWKS document. Each key is decoded on its
// own, so one that is not even a JWK object is skipped like a key of an
// unknown type.
func ParseJWKS(data []byte) (*KeySet, error) {
	var doc struct {
		Keys []jsontext.Value `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	ks := &KeySet{keys: make(map[string]verifyKey, len(doc.Keys))}
	for i, raw := range doc.Keys {
		var k JWK
		if err := json.Unmarshal(raw, &k); err != nil {
			ks.skipped = append(ks.skipped, SkippedKey{Index: i, Reason: SkipMalformed, Detail: err.Error()})
			continue
		}
		if err := ks.add(i, k); err != nil {
			return nil, err
		}
	}
	return ks.usable()
}

// Skipped lists the JWKS keys the set does not use, in JWKS order.
func (ks *KeySet) Skipped() []SkippedKey { return ks.skipped }

// Has reports whether kid names a usable key of the set.
func (ks *KeySet) Has(kid string) bool {
	_, ok := ks.keys[kid]
	return ok
}

// unknownKid explains a kid the set cannot use, naming why when the JWKS
// held it but skipped it.
func (ks *KeySet) unknownKid(kid string) error {
	for _, s := range ks.skipped {
		if s.Kid == kid {
			return fail(ReasonUnknownKid, "kid %q is in the JWKS but its key was skipped: %s", kid, s.Reason)
		}
	}
	return fail(ReasonUnknownKid, "kid %q is not in the JWKS", kid)
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
	if hdr.Alg != AlgES256 && hdr.Alg != AlgEdDSA {
		return fail(ReasonUnsupportedAlg, "alg %q; receipts use ES256 or EdDSA", hdr.Alg)
	}
	// The header is byte-exact, so no member (crit, b64, ...) can change
	// what a JWS library would take the signature to cover.
	if r.Protected != ProtectedHeader(hdr.Alg, hdr.Kid) {
		return fail(ReasonMalformed, `protected header must be exactly {"alg":%q,"kid":%q}`, hdr.Alg, hdr.Kid)
	}
	if hdr.Kid != r.Kid {
		return fail(ReasonKidMismatch, "header kid %q, receipt kid %q", hdr.Kid, r.Kid)
	}
	key, ok := ks.keys[r.Kid]
	if !ok {
		return ks.unknownKid(r.Kid)
	}
	if key.alg != hdr.Alg {
		return fail(ReasonAlgKeyMismatch, "header alg %s, key %s is for %s", hdr.Alg, r.Kid, key.alg)
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
		return fail(ReasonBadSignature, "signature is %d bytes, want 64", len(sig))
	}
	input := signingInput(r.Protected, canon)
	if !key.verify(input, sig) {
		return fail(ReasonBadSignature, "")
	}
	if r.ReceiptID != "" && receiptID(input, r.Signature) != r.ReceiptID {
		return fail(ReasonReceiptIDMismatch, "")
	}
	return nil
}

// verify checks a 64-byte signature over a JWS signing input: ECDSA over
// its SHA-256 with r||s for ES256, pure Ed25519 for EdDSA.
func (k verifyKey) verify(input, sig []byte) bool {
	if k.alg == AlgEdDSA {
		return ed25519.Verify(k.ed, input, sig)
	}
	digest := sha256.Sum256(input)
	return ecdsa.Verify(k.ec, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
}
