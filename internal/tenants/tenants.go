// Package tenants authenticates API keys and describes tenants' limits.
// Until the coordinator lands, tenants come from a JSON file; ingest and
// pipeline depend on the small Authenticator interface they each declare,
// so the coordinator's client can replace FileStore.
package tenants

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/go-json-experiment/json"
)

// Tenant is one customer account.
type Tenant struct {
	ID string `json:"id"`
	// APIKeyHashes are "sha256:<hex>" of the tenant's API keys; keys
	// themselves are never stored.
	APIKeyHashes []string `json:"api_key_hashes"`
	// RateLimit is the sustained request rate (per second, per ingest
	// process) and Burst the bucket size; 0 means unlimited.
	RateLimit float64 `json:"rate_limit,omitempty"`
	Burst     int     `json:"burst,omitempty"`
}

// File is the tenants file format.
type File struct {
	Tenants []Tenant `json:"tenants"`
}

// FileStore authenticates against a tenants file loaded at start.
type FileStore struct {
	byHash map[string]*Tenant
}

// HashKey is the stored form of an API key.
func HashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// GenerateKey makes a new random API key.
func GenerateKey() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return "cn_" + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// NewFileStore checks and indexes tenants.
func NewFileStore(f File) (*FileStore, error) {
	s := &FileStore{byHash: map[string]*Tenant{}}
	byID := map[string]bool{}
	var errs []error
	for i := range f.Tenants {
		t := &f.Tenants[i]
		if t.ID == "" || strings.ContainsAny(t.ID, " \t\r\n") || len(t.ID) > 64 {
			errs = append(errs, fmt.Errorf("tenant %d: id must be 1-64 bytes without spaces", i))
			continue
		}
		if byID[t.ID] {
			errs = append(errs, fmt.Errorf("tenant %q: defined twice", t.ID))
		}
		byID[t.ID] = true
		if t.RateLimit < 0 || t.Burst < 0 {
			errs = append(errs, fmt.Errorf("tenant %q: rate_limit and burst must not be negative", t.ID))
		}
		for _, h := range t.APIKeyHashes {
			if !strings.HasPrefix(h, "sha256:") || len(h) != len("sha256:")+64 {
				errs = append(errs, fmt.Errorf("tenant %q: api key hashes must be sha256:<64 hex>", t.ID))
				continue
			}
			if other, dup := s.byHash[h]; dup {
				errs = append(errs, fmt.Errorf("tenants %q and %q share an API key", other.ID, t.ID))
			}
			s.byHash[h] = t
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return s, nil
}

// LoadFile reads a tenants file.
func LoadFile(path string) (*FileStore, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tenants file: %w", err)
	}
	var f File
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("tenants file %s: %w", path, err)
	}
	return NewFileStore(f)
}

// Authenticate returns the tenant owning key. It accepts "Bearer <key>" too.
func (s *FileStore) Authenticate(key string) (*Tenant, bool) {
	key = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(key), "Bearer "))
	if key == "" {
		return nil, false
	}
	t, ok := s.byHash[HashKey(key)]
	return t, ok
}

// MAC authenticates records the ingest tier writes to Kafka, so workers can
// tell them from records a customer produced without a valid API key.
type MAC struct{ secret []byte }

// NewMAC needs a secret of at least 32 bytes.
func NewMAC(secret []byte) (*MAC, error) {
	if len(secret) < 32 {
		return nil, errors.New("internal secret must be at least 32 bytes")
	}
	return &MAC{secret: secret}, nil
}

// Sum is the hex HMAC-SHA256 of tenant + "\n" + id.
func (m *MAC) Sum(tenant, id string) string {
	h := hmac.New(sha256.New, m.secret)
	h.Write([]byte(tenant))
	h.Write([]byte{'\n'})
	h.Write([]byte(id))
	return hex.EncodeToString(h.Sum(nil))
}

// Valid checks a Sum in constant time.
func (m *MAC) Valid(tenant, id, sum string) bool {
	return hmac.Equal([]byte(m.Sum(tenant, id)), []byte(sum))
}

// SecretFromEnv reads the internal secret from CERTNODE_INTERNAL_SECRET or
// the file named by CERTNODE_INTERNAL_SECRET_FILE.
func SecretFromEnv() ([]byte, error) {
	if s := os.Getenv("CERTNODE_INTERNAL_SECRET"); s != "" {
		return []byte(s), nil
	}
	if f := os.Getenv("CERTNODE_INTERNAL_SECRET_FILE"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("internal secret: %w", err)
		}
		return []byte(strings.TrimSpace(string(b))), nil
	}
	return nil, errors.New("no internal secret: set CERTNODE_INTERNAL_SECRET or CERTNODE_INTERNAL_SECRET_FILE (shared by ingest and workers)")
}
