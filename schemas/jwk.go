package schemas

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"errors"
	"fmt"
)

// JWK is a public P-256 signing key as published in the JWKS.
type JWK struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
	Kid string `json:"kid,omitempty"`
	Alg string `json:"alg,omitempty"`
	Use string `json:"use,omitempty"`
}

// JWKS is a JSON Web Key Set, served at /.well-known/jwks.json.
type JWKS struct {
	Keys []JWK `json:"keys"`
}

// ErrUnsupportedKey is returned for keys that are not EC P-256.
var ErrUnsupportedKey = errors.New("unsupported key: only EC P-256 is supported")

// NewJWK describes pub as a JWK whose kid is its RFC 7638 thumbprint.
func NewJWK(pub *ecdsa.PublicKey) (JWK, error) {
	if pub == nil || pub.Curve != elliptic.P256() {
		return JWK{}, ErrUnsupportedKey
	}
	var x, y [32]byte
	pub.X.FillBytes(x[:])
	pub.Y.FillBytes(y[:])
	j := JWK{Kty: "EC", Crv: "P-256", X: B64U(x[:]), Y: B64U(y[:]), Alg: "ES256", Use: "sig"}
	j.Kid = j.Thumbprint()
	return j, nil
}

// Thumbprint is the RFC 7638 SHA-256 thumbprint: the hash of the required
// members in lexicographic order with no whitespace. Those members are plain
// base64url and fixed names, so the JSON is written directly.
func (j JWK) Thumbprint() string {
	s := `{"crv":"` + j.Crv + `","kty":"` + j.Kty + `","x":"` + j.X + `","y":"` + j.Y + `"}`
	sum := sha256.Sum256([]byte(s))
	return B64U(sum[:])
}

// PublicKey decodes the JWK, checking that the point is on P-256.
func (j JWK) PublicKey() (*ecdsa.PublicKey, error) {
	if j.Kty != "EC" || j.Crv != "P-256" {
		return nil, fmt.Errorf("%w (kty=%q crv=%q)", ErrUnsupportedKey, j.Kty, j.Crv)
	}
	x, err1 := b64u.DecodeString(j.X)
	y, err2 := b64u.DecodeString(j.Y)
	if err1 != nil || err2 != nil || len(x) != 32 || len(y) != 32 {
		return nil, errors.New("jwk: x and y must be 32-byte base64url values")
	}
	// The parser rejects points that are not on the curve.
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
	if err != nil {
		return nil, fmt.Errorf("jwk: %w", err)
	}
	return pub, nil
}
