// Package tenants authenticates API keys and describes tenants' limits.
// Until the coordinator lands, tenants come from a JSON file; ingest and
// pipeline depend on the small Authenticator interface they each declare,
// so the coordinator's client can replace FileStore.
package tenants

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/apicustom"
	"github.com/certnode/certnode/schemas"
)

// Tenant is one customer account.
type Tenant struct {
	ID string `json:"id"`
	// APIKeyHashes are "sha256:<hex>" of the tenant's API keys; keys
	// themselves are never stored.
	APIKeyHashes []string `json:"api_key_hashes"`
	// Limits are the tenant's quotas (a tenants file sets rate_limit and
	// burst, held per process; the coordinator sets them all, cluster-wide).
	Limits `json:",inline"`
	// ProducerKeys authenticate records the tenant produces straight into
	// Kafka (an HMAC of each record value). The secrets are kept, not
	// hashed, because checking an HMAC needs them: the file is mode 0600.
	ProducerKeys []ProducerKey `json:"producer_keys,omitempty"`
	// Scopes and CIDRs restrict the API key a request authenticated with;
	// nil allows every scope and address (the keys of a tenants file).
	Scopes []string       `json:"-"`
	CIDRs  []netip.Prefix `json:"-"`
	// KeyID names the API key a request authenticated with, for usage per
	// key; empty for the keys of a tenants file.
	KeyID string `json:"-"`
	// Defaults are the API key's defaults; APIVersion is the version its
	// requests get without schemas.VersionHeader: the key's pin, else its
	// organization's ("": the current version, for a tenants file).
	Defaults   apicustom.KeyDefaults `json:"-"`
	APIVersion string                `json:"-"`
}

// Limits are a tenant's quotas; a zero field means unlimited.
type Limits struct {
	// RateLimit is the sustained request rate (per second) and Burst the
	// bucket size.
	RateLimit float64 `json:"rate_limit,omitempty"`
	Burst     int     `json:"burst,omitempty"`
	// MonthlyReceipts bounds the requests admitted per calendar month (UTC).
	MonthlyReceipts   int64 `json:"monthly_receipts,omitempty"`
	MaxPayloadBytes   int   `json:"max_payload_bytes,omitempty"`
	MaxJobLines       int64 `json:"max_job_lines,omitempty"`
	MaxConcurrentJobs int   `json:"max_concurrent_jobs,omitempty"`
}

// Override returns l with every non-zero field of o in its place.
func (l Limits) Override(o Limits) Limits {
	if o.RateLimit != 0 {
		l.RateLimit = o.RateLimit
	}
	if o.Burst != 0 {
		l.Burst = o.Burst
	}
	if o.MonthlyReceipts != 0 {
		l.MonthlyReceipts = o.MonthlyReceipts
	}
	if o.MaxPayloadBytes != 0 {
		l.MaxPayloadBytes = o.MaxPayloadBytes
	}
	if o.MaxJobLines != 0 {
		l.MaxJobLines = o.MaxJobLines
	}
	if o.MaxConcurrentJobs != 0 {
		l.MaxConcurrentJobs = o.MaxConcurrentJobs
	}
	return l
}

// Check reports every negative limit.
func (l Limits) Check() error {
	if l.RateLimit < 0 || l.Burst < 0 || l.MonthlyReceipts < 0 || l.MaxPayloadBytes < 0 || l.MaxJobLines < 0 || l.MaxConcurrentJobs < 0 {
		return errors.New("limits must not be negative")
	}
	return nil
}

// Plan is what an organization pays for: a base price per month, the
// receipts it includes, the price of each further 1,000, and its limits.
// Prices are in the smallest unit of Currency (cents).
type Plan struct {
	ID               string `json:"id"`
	Name             string `json:"name"`
	Currency         string `json:"currency"`
	BasePrice        int64  `json:"base_price"`
	IncludedReceipts int64  `json:"included_receipts"`
	PricePer1000     int64  `json:"price_per_1000"`
	Limits           Limits `json:"limits"`
}

// PlanPeriod is the plan an organization is on from a time.
type PlanPeriod struct {
	From time.Time `json:"from"`
	Plan Plan      `json:"plan"`
}

// API key scopes.
const (
	ScopeSign   = "sign"
	ScopeVerify = "verify"
	ScopeJobs   = "jobs"
	ScopeRead   = "read"
	ScopeAdmin  = "admin"
)

// Scopes lists every scope a key can hold.
var Scopes = []string{ScopeSign, ScopeVerify, ScopeJobs, ScopeRead, ScopeAdmin}

// Allows reports whether the key holds scope.
func (t *Tenant) Allows(scope string) bool {
	return t.Scopes == nil || slices.Contains(t.Scopes, scope)
}

// AllowsAddr reports whether the key may be used from addr.
func (t *Tenant) AllowsAddr(addr netip.Addr) bool {
	if t.CIDRs == nil {
		return true
	}
	addr = addr.Unmap()
	for _, p := range t.CIDRs {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// ProducerKey is one producer signing secret; several let a tenant rotate.
type ProducerKey struct {
	ID     string `json:"id"`
	Secret string `json:"secret"`
}

// File is the tenants file format.
type File struct {
	Tenants []Tenant `json:"tenants"`
}

// FileStore authenticates against a tenants file loaded at start.
type FileStore struct {
	byHash map[string]*Tenant
	byID   map[string]*Tenant
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
	s := &FileStore{byHash: map[string]*Tenant{}, byID: map[string]*Tenant{}}
	var errs []error
	for i := range f.Tenants {
		t := &f.Tenants[i]
		if err := schemas.CheckTenantID(t.ID); err != nil {
			errs = append(errs, fmt.Errorf("tenant %d: %w", i, err))
			continue
		}
		if s.byID[t.ID] != nil {
			errs = append(errs, fmt.Errorf("tenant %q: defined twice", t.ID))
		}
		s.byID[t.ID] = t
		ids := map[string]bool{}
		for _, pk := range t.ProducerKeys {
			if pk.ID == "" || strings.ContainsAny(pk.ID, " \t\r\n:") || len(pk.ID) > 64 || ids[pk.ID] {
				errs = append(errs, fmt.Errorf("tenant %q: producer key ids must be unique, 1-64 bytes, without spaces", t.ID))
			}
			ids[pk.ID] = true
			if len(pk.Secret) < 32 {
				errs = append(errs, fmt.Errorf("tenant %q: producer key %q: secret must be at least 32 bytes", t.ID, pk.ID))
			}
		}
		if err := t.Limits.Check(); err != nil {
			errs = append(errs, fmt.Errorf("tenant %q: %w", t.ID, err))
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

// Limits are a tenant's limits (LocalLimiter's source).
func (s *FileStore) Limits(tenant string) (Limits, bool) {
	t, ok := s.byID[tenant]
	if !ok {
		return Limits{}, false
	}
	return t.Limits, true
}

// ProducerSecret returns the secret of one of tenant's producer keys.
func (s *FileStore) ProducerSecret(tenant, keyID string) ([]byte, bool) {
	t, ok := s.byID[tenant]
	if !ok {
		return nil, false
	}
	for _, pk := range t.ProducerKeys {
		if pk.ID == keyID {
			return []byte(pk.Secret), true
		}
	}
	return nil, false
}

// Unmetered is the plan of organizations that are not billed (those of a
// tenants file): nothing is charged, usage is still reported.
var Unmetered = Plan{ID: "unmetered", Name: "Unmetered", Currency: "USD"}

// UnmeteredPlans puts every tenant on Unmetered since the Unix epoch; it
// is the plan source where no coordinator keeps plans.
type UnmeteredPlans struct{}

// Plans returns Unmetered from the Unix epoch.
func (UnmeteredPlans) Plans(string) []PlanPeriod {
	return []PlanPeriod{{From: time.Unix(0, 0).UTC(), Plan: Unmetered}}
}
