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

	"github.com/certnode/certnode/internal/apicustom"
	"github.com/certnode/certnode/internal/brand"
	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
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
	// Plans are the operator's plans; the built-in ones (BuiltinPlans)
	// apply where no plan of the same id is stored.
	Plans        map[string]*tenants.Plan    `json:"plans"`
	ProducerKeys map[string]*ProducerKey     `json:"producer_keys"` // by key id
	Endpoints    map[string]*WebhookEndpoint `json:"endpoints"`     // webhook endpoints by id
	QuotaAlerts  map[string]*QuotaAlert      `json:"quota_alerts"`  // by organization
	Reports      map[string]*Report          `json:"reports"`       // saved analytics reports by id
	Blocks       map[string]*Block           `json:"blocks"`        // addresses kept out of ingest, by address
	Domains      map[string]*Domain          `json:"domains"`       // custom domains by name
	Users        map[string]*User            `json:"users"`
	Memberships  map[string]*Membership      `json:"memberships"` // by org/user
	Sessions     map[string]*Session         `json:"sessions"`    // by token hash
	// SigningKeys are organizations' own signing keys (public data only),
	// by organization.
	SigningKeys map[string]*OrgSigningKeys `json:"signing_keys"`

	// Kept by the coordinator only: never in the state other tiers copy.
	Passwords   map[string]string      `json:"passwords"`    // argon2id PHC string by user id
	Invitations map[string]*Invitation `json:"invitations"`  // by id
	ResetTokens map[string]*ResetToken `json:"reset_tokens"` // by token hash
	Audit       []AuditEvent           `json:"audit"`
	// AuditRelayed is the seq of the last audit event the audit log
	// acknowledged (RelayAudit).
	AuditRelayed uint64                 `json:"audit_relayed,omitzero"`
	Idempotency  map[string]*IdemRecord `json:"idempotency"` // kept answers, by key
	KeyUse       map[string]int64       `json:"key_use"`     // API key id -> last used, Unix seconds
	// The certificate store ingest nodes share (certstore.go).
	CertObjects map[string]*CertObject `json:"cert_objects,omitempty"`
	CertLocks   map[string]*CertLock   `json:"cert_locks,omitempty"`
	// Admitted counts each organization's admitted requests by month
	// ("2006-01", UTC), for monthly quotas (SetAdmitted).
	Admitted map[string]map[string]int64 `json:"admitted,omitempty"`
	// The outbox and the sending domains (email.go).
	EmailMessages  map[string]*EmailMessage  `json:"email_messages"`  // by id
	SendingDomains map[string]*SendingDomain `json:"sending_domains"` // by org/domain
}

// SharedState is what other tiers copy: what they need to admit and
// attribute requests. Users, sessions, password hashes, pending tokens
// and the audit trail stay with the coordinator, which answers the
// account routes itself.
type SharedState struct {
	Orgs         map[string]*Org             `json:"orgs"`
	Keys         map[string]*APIKey          `json:"keys"`
	Members      map[string]string           `json:"members"`
	Plans        map[string]*tenants.Plan    `json:"plans"`
	ProducerKeys map[string]*ProducerKey     `json:"producer_keys"`
	Endpoints    map[string]*WebhookEndpoint `json:"endpoints"`
	QuotaAlerts  map[string]*QuotaAlert      `json:"quota_alerts"`
	Reports      map[string]*Report          `json:"reports"`
	Blocks       map[string]*Block           `json:"blocks"`
	Domains      map[string]*Domain          `json:"domains"`
	SigningKeys  map[string]*OrgSigningKeys  `json:"signing_keys"`
}

func (s *State) shared() SharedState {
	return SharedState{Orgs: s.Orgs, Keys: s.Keys, Members: s.Members, Plans: s.Plans, ProducerKeys: s.ProducerKeys,
		Endpoints: s.Endpoints, QuotaAlerts: s.QuotaAlerts, Reports: s.Reports, Blocks: s.Blocks, Domains: s.Domains, SigningKeys: s.SigningKeys}
}

func newState() *State {
	s := &State{}
	s.fill()
	return s
}

// fill makes the maps a state from an older snapshot lacks.
func (s *State) fill() {
	if s.Orgs == nil {
		s.Orgs = map[string]*Org{}
	}
	if s.Keys == nil {
		s.Keys = map[string]*APIKey{}
	}
	if s.Members == nil {
		s.Members = map[string]string{}
	}
	if s.Plans == nil {
		s.Plans = map[string]*tenants.Plan{}
	}
	if s.ProducerKeys == nil {
		s.ProducerKeys = map[string]*ProducerKey{}
	}
	if s.Endpoints == nil {
		s.Endpoints = map[string]*WebhookEndpoint{}
	}
	if s.QuotaAlerts == nil {
		s.QuotaAlerts = map[string]*QuotaAlert{}
	}
	if s.Reports == nil {
		s.Reports = map[string]*Report{}
	}
	if s.Domains == nil {
		s.Domains = map[string]*Domain{}
	}
	if s.CertObjects == nil {
		s.CertObjects = map[string]*CertObject{}
	}
	if s.CertLocks == nil {
		s.CertLocks = map[string]*CertLock{}
	}
	if s.Users == nil {
		s.Users = map[string]*User{}
	}
	if s.Blocks == nil {
		s.Blocks = map[string]*Block{}
	}
	if s.Memberships == nil {
		s.Memberships = map[string]*Membership{}
	}
	if s.Sessions == nil {
		s.Sessions = map[string]*Session{}
	}
	if s.Passwords == nil {
		s.Passwords = map[string]string{}
	}
	if s.Invitations == nil {
		s.Invitations = map[string]*Invitation{}
	}
	if s.ResetTokens == nil {
		s.ResetTokens = map[string]*ResetToken{}
	}
	if s.EmailMessages == nil {
		s.EmailMessages = map[string]*EmailMessage{}
	}
	if s.SendingDomains == nil {
		s.SendingDomains = map[string]*SendingDomain{}
	}
	if s.Idempotency == nil {
		s.Idempotency = map[string]*IdemRecord{}
	}
	if s.KeyUse == nil {
		s.KeyUse = map[string]int64{}
	}
	if s.SigningKeys == nil {
		s.SigningKeys = map[string]*OrgSigningKeys{}
	}
}

// DefaultPlan is the plan of an organization created without one: no
// limits and no charge, for organizations the operator bills elsewhere.
const DefaultPlan = "unlimited"

// BuiltinPlans are the plans every cluster has; the operator may replace
// them (PutPlan with the same id) or add others.
var BuiltinPlans = map[string]tenants.Plan{
	DefaultPlan: {ID: DefaultPlan, Name: "Unlimited", Currency: "USD"},
	"free": {ID: "free", Name: "Free", Currency: "USD", IncludedReceipts: 10_000,
		Limits: tenants.Limits{RateLimit: 20, Burst: 40, MonthlyReceipts: 10_000, MaxPayloadBytes: 64 << 10,
			MaxJobLines: 10_000, MaxConcurrentJobs: 2}},
	"team": {ID: "team", Name: "Team", Currency: "USD", BasePrice: 4_900, IncludedReceipts: 1_000_000, PricePer1000: 40,
		Limits: tenants.Limits{RateLimit: 500, Burst: 1_000, MaxJobLines: 1_000_000, MaxConcurrentJobs: 10}},
	"enterprise": {ID: "enterprise", Name: "Enterprise", Currency: "USD", BasePrice: 99_900, IncludedReceipts: 50_000_000, PricePer1000: 20,
		Limits: tenants.Limits{RateLimit: 5_000, Burst: 10_000, MaxConcurrentJobs: 50}},
}

// Plan finds a plan by id: a stored one, else a built-in one.
func (s *State) Plan(id string) (tenants.Plan, bool) {
	if p := s.Plans[id]; p != nil {
		return *p, true
	}
	p, ok := BuiltinPlans[id]
	return p, ok
}

// Organization statuses.
const (
	OrgActive    = "active"
	OrgSuspended = "suspended"
)

// Org is a tenant.
type Org struct {
	ID       string      `json:"id"`
	Name     string      `json:"name"`
	Status   string      `json:"status"`
	Plan     string      `json:"plan"`
	Settings OrgSettings `json:"settings"`
	// Limits override the plan's limits field by field (zero: the plan's).
	Limits tenants.Limits `json:"limits,omitzero"`
	// Maintenance is on while set (SetMaintenance): the organization's
	// requests answer 503. It is no setting, so a settings change never
	// turns it on or off.
	Maintenance *brand.Maintenance `json:"maintenance,omitempty"`
	// PlanHistory holds each plan the organization was on and from when,
	// with the plan's terms as they were, so a closed period is billed
	// on the terms in effect then. The FSM appends to it.
	PlanHistory []tenants.PlanPeriod `json:"plan_history,omitempty"`
	// API is the organization's API customization (apisettings.go).
	API       apicustom.Settings `json:"api,omitzero"`
	CreatedAt time.Time          `json:"created_at"`
	UpdatedAt time.Time          `json:"updated_at"`
}

// EffectiveLimits are the plan's limits with the organization's overrides.
func (o *Org) EffectiveLimits() tenants.Limits {
	var base tenants.Limits
	if n := len(o.PlanHistory); n > 0 {
		base = o.PlanHistory[n-1].Plan.Limits
	}
	return base.Override(o.Limits)
}

// OrgSettings are an organization's own choices.
type OrgSettings struct {
	DisplayName   string `json:"display_name,omitempty"`
	LogoURL       string `json:"logo_url,omitempty"`
	BrandColor    string `json:"brand_color,omitempty"`
	SupportEmail  string `json:"support_email,omitempty"`
	RetentionDays int    `json:"retention_days,omitzero"`
	// SubjectPointer is where payloads hold a data subject's identifier (a
	// JSON pointer), for subject access and erasure.
	SubjectPointer string `json:"subject_pointer,omitempty"`
	// WebhookRetrySchedule is the organization's default retry schedule
	// for webhook deliveries (Go durations, e.g. "5s"); empty: the
	// service's default.
	WebhookRetrySchedule []string `json:"webhook_retry_schedule,omitempty"`
	// NotificationEmails receive the organization's event mail (quota,
	// security, endpoints, reports); empty: its owners and admins do.
	NotificationEmails []string `json:"notification_emails,omitempty"`

	// Branding beyond the fields above (brand.Branding; Branding()): a
	// favicon, a palette (colors.primary is brand_color: setting either
	// sets both), support details, custom CSS and error page templates.
	FaviconURL     string            `json:"favicon_url,omitempty"`
	Colors         brand.Palette     `json:"colors,omitzero"`
	SupportURL     string            `json:"support_url,omitempty"`
	SupportMessage string            `json:"support_message,omitempty"`
	CustomCSS      string            `json:"custom_css,omitempty"`
	ErrorPages     map[string]string `json:"error_pages,omitempty"`
}

// ProducerKey is a secret an organization's own Kafka producers sign
// records with (an HMAC of each value). The secret is kept, not hashed:
// checking an HMAC needs it. During a rotation the old key keeps working
// until ExpiresAt.
type ProducerKey struct {
	ID        string    `json:"id"`
	Org       string    `json:"org"`
	Secret    string    `json:"secret"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
}

func (k *ProducerKey) check() error {
	var errs []error
	if !producerIDPat.MatchString(k.ID) {
		errs = append(errs, invalid("producer key id %q", k.ID))
	}
	if len(k.Secret) < 32 || len(k.Secret) > 256 {
		errs = append(errs, invalid("producer key secret must be 32-256 bytes"))
	}
	if k.CreatedAt.IsZero() {
		errs = append(errs, invalid("created_at is required"))
	}
	return errors.Join(errs...)
}

// usableAt reports whether the key may sign at t.
func (k *ProducerKey) usableAt(t time.Time) bool {
	return k.RevokedAt.IsZero() && (k.ExpiresAt.IsZero() || t.Before(k.ExpiresAt))
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
	// SuspendedAt is when it was suspended (SuspendKey; zero: it is not),
	// SuspendedFor why.
	SuspendedAt  time.Time `json:"suspended_at,omitzero"`
	SuspendedFor string    `json:"suspended_for,omitempty"`
	// Defaults are what the key's requests get when they do not say
	// (apisettings.go).
	Defaults apicustom.KeyDefaults `json:"defaults,omitzero"`
}

var (
	idPattern     = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	keyIDPat      = regexp.MustCompile(`^cnk_[A-Za-z0-9_-]{8,32}$`)
	hashPattern   = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)
	producerIDPat = regexp.MustCompile(`^pk_[A-Za-z0-9_-]{4,60}$`)
	currencyPat   = regexp.MustCompile(`^[A-Z]{3}$`)
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
	// ErrGone names a token that was used, revoked or has expired.
	ErrGone = errors.New("gone")
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
	if !idPattern.MatchString(o.Plan) {
		errs = append(errs, invalid("plan %q", o.Plan))
	}
	if err := o.Settings.checkBranding(); err != nil {
		errs = append(errs, err)
	}
	if o.Settings.RetentionDays < 0 || o.Settings.RetentionDays > 3650 {
		errs = append(errs, invalid("retention_days must be 0-3650"))
	}
	if err := schemas.CheckJSONPointer(o.Settings.SubjectPointer); err != nil {
		errs = append(errs, invalid("subject_pointer %q: %v", o.Settings.SubjectPointer, err))
	}
	if e := o.Settings.SupportEmail; e != "" {
		if n, err := NormalizeEmail(e); err != nil || n != e {
			errs = append(errs, invalid("support_email %q: a lower-case address", e))
		}
	}
	if len(o.Settings.WebhookRetrySchedule) > 20 {
		errs = append(errs, invalid("webhook_retry_schedule: at most 20 steps"))
	}
	for _, d := range o.Settings.WebhookRetrySchedule {
		if v, err := time.ParseDuration(d); err != nil || v < 0 || v > 7*24*time.Hour {
			errs = append(errs, invalid("webhook_retry_schedule: %q is not a duration of 0 to 168h", d))
		}
	}
	if err := checkNotificationEmails(o.Settings.NotificationEmails); err != nil {
		errs = append(errs, err)
	}
	if err := o.Limits.Check(); err != nil {
		errs = append(errs, invalid("limits: %v", err))
	}
	errs = append(errs, checkAPI(&o.API))
	if o.CreatedAt.IsZero() || o.UpdatedAt.IsZero() {
		errs = append(errs, invalid("created_at and updated_at are required"))
	}
	return errors.Join(errs...)
}

func checkPlan(p *tenants.Plan) error {
	var errs []error
	if !idPattern.MatchString(p.ID) {
		errs = append(errs, invalid("plan id %q", p.ID))
	}
	if p.Name == "" || len(p.Name) > 200 {
		errs = append(errs, invalid("plan name must be 1-200 bytes"))
	}
	if !currencyPat.MatchString(p.Currency) {
		errs = append(errs, invalid("currency %q: want an ISO 4217 code such as USD", p.Currency))
	}
	if p.BasePrice < 0 || p.IncludedReceipts < 0 || p.PricePer1000 < 0 {
		errs = append(errs, invalid("prices and included receipts must not be negative"))
	}
	if err := p.Limits.Check(); err != nil {
		errs = append(errs, invalid("limits: %v", err))
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
	errs = append(errs, checkKeyDefaults(&k.Defaults))
	if !k.ExpiresAt.IsZero() && !k.ExpiresAt.After(k.CreatedAt) {
		errs = append(errs, invalid("expires_at must be after created_at"))
	}
	return errors.Join(errs...)
}
