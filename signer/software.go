package signer

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Software is a P-256 key held in process memory. It is meant for
// development and tests; production keys belong in an HSM.
type Software struct {
	priv *ecdsa.PrivateKey
}

// GenerateSoftware makes a new random P-256 key.
func GenerateSoftware() (*Software, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return &Software{priv: k}, nil
}

// NewSoftware wraps an existing private key, which must be on P-256.
func NewSoftware(k *ecdsa.PrivateKey) (*Software, error) {
	if k == nil || k.Curve != elliptic.P256() {
		return nil, ErrWrongKeyType
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
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%w: got %T", ErrWrongKeyType, key)
	}
	return NewSoftware(ec)
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
func (s *Software) Public() *ecdsa.PublicKey { return &s.priv.PublicKey }

// SignDigest signs a SHA-256 digest.
func (s *Software) SignDigest(_ context.Context, digest []byte) ([]byte, error) {
	r, ss, err := ecdsa.Sign(rand.Reader, s.priv, digest)
	if err != nil {
		return nil, err
	}
	return p1363(r, ss)
}
