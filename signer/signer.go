// Package signer owns CertNode's signing keys: software keys for
// development and tests, a pooled PKCS#11 client for HSMs, and the key ring
// that issues receipts with the active key while still publishing retired
// keys in the JWKS. Keys are ECDSA P-256 (ES256) or Ed25519 (EdDSA).
package signer

import (
	"context"
	"crypto"
	"errors"
	"fmt"

	"github.com/certnode/certnode/schemas"
)

// Key is one signing key, wherever its private half lives. Public is an
// *ecdsa.PublicKey on P-256 or an ed25519.PublicKey. Sign signs a JWS
// signing input and returns the 64 bytes a receipt carries: r||s of ECDSA
// over the input's SHA-256 for ES256, the RFC 8032 signature of the input
// for EdDSA.
type Key interface {
	Public() crypto.PublicKey
	Sign(ctx context.Context, input []byte) ([]byte, error)
}

// ErrWrongKeyType is returned for keys that are neither ECDSA P-256 nor
// Ed25519.
var ErrWrongKeyType = errors.New("wrong key type: CertNode keys are ECDSA P-256 (ES256) or Ed25519 (EdDSA)")

// CheckAlg refuses an algorithm name receipts do not use.
func CheckAlg(alg string) error {
	if alg != schemas.AlgES256 && alg != schemas.AlgEdDSA {
		return fmt.Errorf("algorithm %q: want %s or %s", alg, schemas.AlgES256, schemas.AlgEdDSA)
	}
	return nil
}
