package schemas

import (
	"crypto/sha256"
	"fmt"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Receipt is a CertNode v1 receipt. Field order is the wire order. Payload
// is omitzero so that a receipt decoded without one is not written back
// with "payload":null, which is a different, present payload.
type Receipt struct {
	Protected        string         `json:"protected"`
	Payload          jsontext.Value `json:"payload,omitzero"`
	Signature        string         `json:"signature"`
	Kid              string         `json:"kid"`
	PayloadJCSSHA256 string         `json:"payload_jcs_sha256,omitempty"`
	ReceiptID        string         `json:"receipt_id,omitempty"`
}

// ProtectedHeader returns the base64url protected header for alg and kid,
// byte-exact with other CertNode implementations:
// {"alg":"ES256","kid":"..."} or {"alg":"EdDSA","kid":"..."}.
func ProtectedHeader(alg, kid string) string {
	a, _ := json.Marshal(alg) // marshalling a string cannot fail
	k, _ := json.Marshal(kid)
	return B64U([]byte(`{"alg":` + string(a) + `,"kid":` + string(k) + `}`))
}

// Unsigned is a receipt waiting for its signature.
type Unsigned struct {
	Kid       string
	Protected string
	Payload   []byte // canonical (JCS) payload
	input     []byte // protected + "." + b64u(payload)
}

// NewUnsigned canonicalizes payload (a JSON object) and prepares the signing
// input for a key of algorithm alg (AlgES256 or AlgEdDSA) named kid.
func NewUnsigned(alg, kid string, payload []byte) (*Unsigned, error) {
	if alg != AlgES256 && alg != AlgEdDSA {
		return nil, fmt.Errorf("alg %q: receipts are signed with ES256 or EdDSA", alg)
	}
	canon, err := CanonicalizeObject(payload)
	if err != nil {
		return nil, err
	}
	prot := ProtectedHeader(alg, kid)
	return &Unsigned{Kid: kid, Protected: prot, Payload: canon, input: signingInput(prot, canon)}, nil
}

func signingInput(protected string, canonicalPayload []byte) []byte {
	in := make([]byte, 0, len(protected)+1+b64u.EncodedLen(len(canonicalPayload)))
	in = append(in, protected...)
	in = append(in, '.')
	return b64u.AppendEncode(in, canonicalPayload)
}

// Input is the JWS signing input, protected + "." + b64u(payload): what an
// EdDSA key signs, and what an ES256 key signs the SHA-256 of.
func (u *Unsigned) Input() []byte { return u.input }

// Complete attaches a 64-byte signature (r||s for ES256, RFC 8032 for
// EdDSA) and derives the hashes.
func (u *Unsigned) Complete(sig []byte) (*Receipt, error) {
	if len(sig) != 64 {
		return nil, fmt.Errorf("signature must be 64 bytes, got %d", len(sig))
	}
	s := B64U(sig)
	ph := sha256.Sum256(u.Payload)
	return &Receipt{
		Protected:        u.Protected,
		Payload:          jsontext.Value(u.Payload),
		Signature:        s,
		Kid:              u.Kid,
		PayloadJCSSHA256: B64U(ph[:]),
		ReceiptID:        receiptID(u.input, s),
	}, nil
}

func receiptID(input []byte, sig string) string {
	h := sha256.New()
	h.Write(input)
	h.Write([]byte{'.'})
	h.Write([]byte(sig))
	return B64U(h.Sum(nil))
}

// Marshal writes the receipt as compact JSON without HTML escaping.
func (r *Receipt) Marshal() ([]byte, error) { return r.appendJSON(nil) }

// appendJSON appends the receipt's JSON to b. Receipts this package made
// hold only base64url strings and a canonical payload, which are written
// directly (signing is the hot path); anything else goes through the JSON
// encoder, which escapes and validates.
func (r *Receipt) appendJSON(b []byte) ([]byte, error) {
	if !isB64U(r.Protected) || !isB64U(r.Signature) || !isB64U(r.Kid) ||
		!isB64U(r.PayloadJCSSHA256) || !isB64U(r.ReceiptID) || !jsontext.Value(r.Payload).IsValid() {
		out, err := json.Marshal(r)
		return append(b, out...), err
	}
	b = append(b, `{"protected":"`...)
	b = append(b, r.Protected...)
	b = append(b, `","payload":`...)
	b = append(b, r.Payload...)
	b = append(b, `,"signature":"`...)
	b = append(b, r.Signature...)
	b = append(b, `","kid":"`...)
	b = append(b, r.Kid...)
	b = append(b, '"')
	if r.PayloadJCSSHA256 != "" {
		b = append(b, `,"payload_jcs_sha256":"`...)
		b = append(b, r.PayloadJCSSHA256...)
		b = append(b, '"')
	}
	if r.ReceiptID != "" {
		b = append(b, `,"receipt_id":"`...)
		b = append(b, r.ReceiptID...)
		b = append(b, '"')
	}
	return append(b, '}'), nil
}

func isB64U(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
