package schemas

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"errors"
	"fmt"

	"filippo.io/edwards25519"
)

// Signature algorithms of CertNode v1 receipts: ES256 (ECDSA P-256 with
// SHA-256) is required of every implementation; EdDSA (pure Ed25519, RFC
// 8032) is recommended for its deterministic signatures.
const (
	AlgES256 = "ES256"
	AlgEdDSA = "EdDSA"
)

// JWK is a public signing key as published in the JWKS: EC P-256 (ES256)
// or OKP Ed25519 (EdDSA).
type JWK struct {
	Kty string `json:"kty"`
	Crv string `json:"crv,omitempty"`
	X   string `json:"x,omitempty"`
	Y   string `json:"y,omitempty"`
	Kid string `json:"kid,omitempty"`
	Alg string `json:"alg,omitempty"`
	Use string `json:"use,omitempty"`
	// Org names the organization whose own key this is (a CertNode
	// member, absent on the service's keys): a verifier shows who signed.
	// It is not part of the thumbprint.
	Org string `json:"org,omitempty"`
}

// JWKS is a JSON Web Key Set, served at /.well-known/jwks.json.
type JWKS struct {
	Keys []JWK `json:"keys"`
}

// ErrUnsupportedKey is returned for keys that are neither EC P-256 nor
// OKP Ed25519.
var ErrUnsupportedKey = errors.New("unsupported key type: CertNode keys are EC P-256 (ES256) or OKP Ed25519 (EdDSA)")

// AlgOf names the algorithm pub signs receipts with.
func AlgOf(pub crypto.PublicKey) (string, error) {
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		if p != nil && p.Curve == elliptic.P256() {
			return AlgES256, nil
		}
	case ed25519.PublicKey:
		if len(p) == ed25519.PublicKeySize {
			return AlgEdDSA, nil
		}
	}
	return "", fmt.Errorf("%w: got %T", ErrUnsupportedKey, pub)
}

// NewJWK describes pub (*ecdsa.PublicKey on P-256 or ed25519.PublicKey) as
// a JWK whose kid is its RFC 7638 thumbprint.
func NewJWK(pub crypto.PublicKey) (JWK, error) {
	alg, err := AlgOf(pub)
	if err != nil {
		return JWK{}, err
	}
	var j JWK
	switch alg {
	case AlgES256:
		p := pub.(*ecdsa.PublicKey)
		var x, y [32]byte
		p.X.FillBytes(x[:])
		p.Y.FillBytes(y[:])
		j = JWK{Kty: "EC", Crv: "P-256", X: B64U(x[:]), Y: B64U(y[:])}
	case AlgEdDSA:
		j = JWK{Kty: "OKP", Crv: "Ed25519", X: B64U(pub.(ed25519.PublicKey))}
	}
	j.Alg, j.Use = alg, "sig"
	j.Kid = j.Thumbprint()
	return j, nil
}

// Thumbprint is the RFC 7638 SHA-256 thumbprint: the hash of the key
// type's required members in lexicographic order with no whitespace (RFC
// 8037 section 2 for OKP). Those members are plain base64url and fixed
// names, so the JSON is written directly.
func (j JWK) Thumbprint() string {
	var s string
	if j.Kty == "OKP" {
		s = `{"crv":"` + j.Crv + `","kty":"OKP","x":"` + j.X + `"}`
	} else {
		s = `{"crv":"` + j.Crv + `","kty":"` + j.Kty + `","x":"` + j.X + `","y":"` + j.Y + `"}`
	}
	sum := sha256.Sum256([]byte(s))
	return B64U(sum[:])
}

// KeyAlg is the receipt algorithm of the JWK's key type, or "" when
// CertNode has none for it.
func (j JWK) KeyAlg() string {
	switch {
	case j.Kty == "EC" && j.Crv == "P-256":
		return AlgES256
	case j.Kty == "OKP" && j.Crv == "Ed25519":
		return AlgEdDSA
	}
	return ""
}

// PublicKey decodes the JWK: an *ecdsa.PublicKey checked to be on P-256,
// or an ed25519.PublicKey checked to be a point of large order.
func (j JWK) PublicKey() (crypto.PublicKey, error) {
	switch j.KeyAlg() {
	case AlgES256:
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
	case AlgEdDSA:
		x, err := b64u.DecodeString(j.X)
		if err != nil || len(x) != ed25519.PublicKeySize {
			return nil, errors.New("jwk: x must be a 32-byte base64url value")
		}
		// A point of small order has no secret behind it: anyone can make
		// signatures that verify under it, so it must never vouch for a receipt.
		// A non-canonical encoding would give one key a second kid.
		p, err := new(edwards25519.Point).SetBytes(x)
		if err != nil || !bytes.Equal(p.Bytes(), x) {
			return nil, errors.New("jwk: x is not the canonical encoding of an Ed25519 point")
		}
		if new(edwards25519.Point).MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()) == 1 {
			return nil, errors.New("jwk: x is a point of small order, a key no one holds")
		}
		return ed25519.PublicKey(x), nil
	}
	return nil, fmt.Errorf("%w (kty=%q crv=%q)", ErrUnsupportedKey, j.Kty, j.Crv)
}
