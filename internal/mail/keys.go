package mail

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
)

// KeyStore holds DKIM private keys by name (KeyName). The mailer's is an
// HSM (signer.HSM's DKIMKeys: RSA keys made inside the token, never
// extractable); certnode dev's is a folder (DirKeys).
type KeyStore interface {
	// Key returns the signer named name; with create, it makes an
	// RSA-2048 key when there is none (ErrNoKey otherwise).
	Key(ctx context.Context, name string, create bool) (crypto.Signer, error)
}

// ErrNoKey names a DKIM key the store does not hold.
var ErrNoKey = errors.New("no such DKIM key")

// DKIMBits is the size of the RSA keys made: 2048 bits, what every
// receiver verifies (RFC 8301) and still fits one TXT record.
const DKIMBits = 2048

// KeyName names the key of a selector and domain: selectors are unique per
// sending domain, so the pair names one key.
func KeyName(selector, domain string) string { return selector + "._domainkey." + domain }

var keyNamePat = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}\._domainkey\.[a-z0-9.-]{1,253}$`)

// CheckKeyName refuses a name that is not a KeyName, before it becomes a
// file name or a token label.
func CheckKeyName(name string) error {
	if !keyNamePat.MatchString(name) {
		return fmt.Errorf("dkim key name %q", name)
	}
	return nil
}

// DirKeys keeps DKIM keys as PKCS#8 PEM files (mode 0600) in a folder,
// for development: a production mailer keeps them in an HSM.
type DirKeys struct{ Dir string }

// Key implements KeyStore.
func (d DirKeys) Key(_ context.Context, name string, create bool) (crypto.Signer, error) {
	if err := CheckKeyName(name); err != nil {
		return nil, err
	}
	path := filepath.Join(d.Dir, name+".pem")
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && create {
		return d.create(path)
	}
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNoKey, name)
	}
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("dkim key %s: not a PKCS#8 PEM file", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("dkim key %s: %w", path, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("dkim key %s: %T cannot sign", path, k)
	}
	return s, nil
}

func (d DirKeys) create(path string) (crypto.Signer, error) {
	if err := os.MkdirAll(d.Dir, 0o700); err != nil {
		return nil, err
	}
	k, err := rsa.GenerateKey(rand.Reader, DKIMBits)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	// O_EXCL: two callers making the same key keep the first one's.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return d.Key(context.Background(), filepath.Base(path[:len(path)-len(".pem")]), false)
	}
	if err != nil {
		return nil, err
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	return k, f.Close()
}
