package signer

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/certnode/certnode/schemas"
)

// Software is a key held in process memory: ECDSA P-256 or Ed25519. It is
// meant for development and tests; production keys belong in an HSM.
type Software struct {
	priv crypto.Signer // *ecdsa.PrivateKey or ed25519.PrivateKey
}

// GenerateSoftware makes a new random key for alg (schemas.AlgES256 or
// schemas.AlgEdDSA).
func GenerateSoftware(alg string) (*Software, error) {
	if err := CheckAlg(alg); err != nil {
		return nil, err
	}
	if alg == schemas.AlgEdDSA {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		return NewSoftware(k)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return NewSoftware(k)
}

// NewSoftware wraps an existing private key: an *ecdsa.PrivateKey on P-256
// or an ed25519.PrivateKey.
func NewSoftware(k crypto.Signer) (*Software, error) {
	switch p := k.(type) {
	case *ecdsa.PrivateKey:
		if p == nil || p.Curve != elliptic.P256() {
			return nil, ErrWrongKeyType
		}
	case ed25519.PrivateKey:
		if len(p) != ed25519.PrivateKeySize {
			return nil, ErrWrongKeyType
		}
	default:
		return nil, fmt.Errorf("%w: got %T", ErrWrongKeyType, k)
	}
	return &Software{priv: k}, nil
}

// LoadSoftware reads a PKCS#8 ("PRIVATE KEY") or SEC 1 ("EC PRIVATE KEY")
// PEM file.
func LoadSoftware(path string) (*Software, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	return ParseSoftwarePEM(data)
}

// ParseSoftwarePEM decodes a PEM private key.
func ParseSoftwarePEM(data []byte) (*Software, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("key file is not PEM")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("%w: PEM block is %q, want \"PRIVATE KEY\" (PKCS#8)", ErrWrongKeyType, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse key: %w", err)
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: got %T", ErrWrongKeyType, key)
	}
	return NewSoftware(s)
}

// MarshalPEM encodes the key as PKCS#8 PEM.
func (s *Software) MarshalPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(s.priv)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// WritePEM writes the key to a new file with mode 0600, atomically: the
// key is written to a temporary file and linked into place, which fails
// when path exists. It never overwrites: losing a signing key silently is
// worse than an error.
func (s *Software) WritePEM(path string) error {
	data, err := s.MarshalPEM()
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := writeSynced(tmp, data, 0o600); err != nil {
		return err
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// Public returns the public key.
func (s *Software) Public() crypto.PublicKey { return s.priv.Public() }

// Sign signs a JWS signing input.
func (s *Software) Sign(_ context.Context, input []byte) ([]byte, error) {
	if k, ok := s.priv.(ed25519.PrivateKey); ok {
		return ed25519.Sign(k, input), nil
	}
	digest := sha256.Sum256(input)
	r, ss, err := ecdsa.Sign(rand.Reader, s.priv.(*ecdsa.PrivateKey), digest[:])
	if err != nil {
		return nil, err
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	ss.FillBytes(out[32:])
	return out, nil
}
