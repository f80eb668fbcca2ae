// Package coordinator is the replicated source of truth for everything
// that is not per-request traffic: organizations, API keys and the
// cluster's own membership, held by a hashicorp/raft node. Other tiers
// never call it on the hot path; they keep a local copy current with a
// blocking query on its state index.
package coordinator

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"time"

	"github.com/certnode/certnode/internal/tenants"
)

// State is what the cluster agrees on. It changes only through commands
// applied by the FSM, in log order, so every node holds the same state
// at the same index.
type State struct {
	Orgs map[string]*Org    `json:"orgs"`
	Keys map[string]*APIKey `json:"keys"` // by key id
	// Members maps a node's raft id to its HTTP address, so a follower
	// can forward writes to the leader's API.
	Members map[string]string `json:"members"`
}

func newState() *State {
	return &State{Orgs: map[string]*Org{}, Keys: map[string]*APIKey{}, Members: map[string]string{}}
}

// Organization statuses.
const (
	OrgActive    = "active"
	OrgSuspended = "suspended"
)

// Org is a tenant.
type Org struct {
	ID        string      `json:"id"`
	Name      string      `json:"name"`
	Status    string      `json:"status"`
	Plan      string      `json:"plan"`
	Settings  OrgSettings `json:"settings"`
	CreatedAt time.Time   `json:"created_at"`
	UpdatedAt time.Time   `json:"updated_at"`
}

// OrgSettings are an organization's own choices.
type OrgSettings struct {
	DisplayName   string `json:"display_name,omitempty"`
	LogoURL       string `json:"logo_url,omitempty"`
	BrandColor    string `json:"brand_color,omitempty"`
	SupportEmail  string `json:"support_email,omitempty"`
	RetentionDays int    `json:"retention_days,omitempty"`
}

// APIKey is an organization's key as the cluster stores it: the secret is
// shown once at creation and only its SHA-256 is kept.
type APIKey struct {
	ID        string    `json:"id"` // public: the key's recognisable prefix
	Org       string    `json:"org"`
	Name      string    `json:"name,omitempty"`
	Hash      string    `json:"hash"` // base64url SHA-256 of the whole key
	Scopes    []string  `json:"scopes"`
	CIDRs     []string  `json:"cidrs,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
}

var (
	idPattern   = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	keyIDPat    = regexp.MustCompile(`^cnk_[A-Za-z0-9_-]{8,32}$`)
	hashPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)
	colorPat    = regexp.MustCompile(`^#[0-9a-fA-F]{6}$`)
)

// ErrInvalid marks a command refused before it reaches the log.
var ErrInvalid = errors.New("invalid")

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
}

// ErrNotFound and ErrConflict name the state a command did not find or
// would break.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
)

func (o *Org) check() error {
	var errs []error
	if !idPattern.MatchString(o.ID) {
		errs = append(errs, invalid("org id %q: 1-63 characters a-z 0-9 _ -, starting with a letter or digit", o.ID))
	}
	if o.Name == "" || len(o.Name) > 200 {
		errs = append(errs, invalid("name must be 1-200 bytes"))
	}
	if o.Status != OrgActive && o.Status != OrgSuspended {
		errs = append(errs, invalid("status %q: want active or suspended", o.Status))
	}
	if o.Plan != "" && !idPattern.MatchString(o.Plan) {
		errs = append(errs, invalid("plan %q", o.Plan))
	}
	if s := o.Settings; s.BrandColor != "" && !colorPat.MatchString(s.BrandColor) {
		errs = append(errs, invalid("brand_color %q: want #rrggbb", s.BrandColor))
	}
	if o.Settings.RetentionDays < 0 || o.Settings.RetentionDays > 3650 {
		errs = append(errs, invalid("retention_days must be 0-3650"))
	}
	if o.CreatedAt.IsZero() || o.UpdatedAt.IsZero() {
		errs = append(errs, invalid("created_at and updated_at are required"))
	}
	return errors.Join(errs...)
}

func (k *APIKey) check() error {
	var errs []error
	if !keyIDPat.MatchString(k.ID) {
		errs = append(errs, invalid("key id %q", k.ID))
	}
	if !hashPattern.MatchString(k.Hash) {
		errs = append(errs, invalid("hash must be a base64url SHA-256"))
	}
	if len(k.Name) > 200 {
		errs = append(errs, invalid("name over 200 bytes"))
	}
	if len(k.Scopes) == 0 {
		errs = append(errs, invalid("at least one scope is required"))
	}
	for _, s := range k.Scopes {
		if !slices.Contains(tenants.Scopes, s) {
			errs = append(errs, invalid("scope %q: want one of %v", s, tenants.Scopes))
		}
	}
	for _, c := range k.CIDRs {
		if _, err := netip.ParsePrefix(c); err != nil {
			errs = append(errs, invalid("cidr %q: %v", c, err))
		}
	}
	if k.CreatedAt.IsZero() {
		errs = append(errs, invalid("created_at is required"))
	}
	if !k.ExpiresAt.IsZero() && !k.ExpiresAt.After(k.CreatedAt) {
		errs = append(errs, invalid("expires_at must be after created_at"))
	}
	return errors.Join(errs...)
}
