// Package signer owns CertNode's signing keys: a software P-256 key for
// development and tests, a pooled PKCS#11 client for HSMs, and the key ring
// that issues receipts with the active key while still publishing retired
// keys in the JWKS.
package signer

import (
	"context"
	"crypto/ecdsa"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
)

// Key is one P-256 signing key, wherever its private half lives.
// SignDigest signs a SHA-256 digest and returns the 64-byte r||s (P1363)
// form receipts carry.
type Key interface {
	Public() *ecdsa.PublicKey
	SignDigest(ctx context.Context, digest []byte) ([]byte, error)
}

// ErrWrongKeyType is returned for keys that are not ECDSA P-256.
var ErrWrongKeyType = errors.New("wrong key type: CertNode keys are ECDSA P-256")

// derToP1363 converts an ASN.1 DER ECDSA signature to fixed-width r||s.
func derToP1363(der []byte) ([]byte, error) {
	var sig struct{ R, S *big.Int }
	rest, err := asn1.Unmarshal(der, &sig)
	if err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("signature is not DER ECDSA: %v", err)
	}
	return p1363(sig.R, sig.S)
}

func p1363(r, s *big.Int) ([]byte, error) {
	if r.Sign() <= 0 || s.Sign() <= 0 || r.BitLen() > 256 || s.BitLen() > 256 {
		return nil, errors.New("signature values out of range for P-256")
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out, nil
}
