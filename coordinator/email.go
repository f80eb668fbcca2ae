package coordinator

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/certnode/certnode/internal/brand"
	cnmail "github.com/certnode/certnode/internal/mail"
	"github.com/certnode/certnode/schemas"
)

// Email: the coordinator keeps the outbox (EmailMessage) and the
// organizations' sending domains; the mailer role (certnode mailer) claims
// due messages, sends them and records each outcome here, and makes the
// DKIM keys in its HSM, reporting only their public halves. Tokens of
// invitations and password resets are made by the mailer for each attempt:
// the coordinator registers their hashes when a message is claimed, so a
// token is in the clear nowhere but in the message.
const (
	cmdPutSendingDomain    cmdType = 40
	cmdDeleteSendingDomain cmdType = 41
	cmdQueueEmails         cmdType = 42
	cmdClaimEmail          cmdType = 43
	cmdRecordEmail         cmdType = 44
)

// Sending domain statuses; then DomainVerified, or DomainFailed when the
// last check failed (Reason says why), as for custom domains.
const (
	DomainPendingKey = "pending_key" // the mailer has not made its DKIM key yet
	DomainPendingDNS = "pending_dns" // publish the record, then verify
)

// SendingDomain is a domain an organization sends its mail from, once
// its DKIM record is published and checked.
type SendingDomain struct {
	Org       string `json:"org"`
	Domain    string `json:"domain"`
	Selector  string `json:"selector"`
	FromLocal string `json:"from_local"` // mail goes out as FromLocal@Domain
	// Record is the DKIM TXT record the mailer reported for its key.
	Record     string    `json:"record,omitempty"`
	Status     string    `json:"status"`
	Reason     string    `json:"reason,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
	CheckedAt  time.Time `json:"checked_at,omitzero"`
	VerifiedAt time.Time `json:"verified_at,omitzero"`
}

func sendingDomainKey(org, domain string) string { return org + "/" + domain }

func (d *SendingDomain) owner() string      { return d.Org }
func (d *SendingDomain) created() time.Time { return d.CreatedAt }

var (
	domainPat   = regexp.MustCompile(`^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$`)
	selectorPat = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	localPat    = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9._+-]{0,62}[a-z0-9])?$`)
	emailIDPat  = regexp.MustCompile(`^eml_[a-z0-9]{20,40}$`)
)

// CheckDomain checks a sending domain's name: lower case, at most 253
// bytes, two labels at least.
func CheckDomain(d string) error {
	if len(d) > 253 || !domainPat.MatchString(d) {
		return invalid("domain %q: a lower-case DNS name such as mail.example.com", d)
	}
	return nil
}

func (d *SendingDomain) check() error {
	var errs []error
	if err := CheckDomain(d.Domain); err != nil {
		errs = append(errs, err)
	}
	if !selectorPat.MatchString(d.Selector) {
		errs = append(errs, invalid("selector %q", d.Selector))
	}
	if !localPat.MatchString(d.FromLocal) {
		errs = append(errs, invalid("from_local %q: the part before @, e.g. no-reply", d.FromLocal))
	}
	if !slices.Contains([]string{DomainPendingKey, DomainPendingDNS, DomainVerified, DomainFailed}, d.Status) {
		errs = append(errs, invalid("status %q", d.Status))
	}
	if (d.Record == "") != (d.Status == DomainPendingKey) {
		errs = append(errs, invalid("a domain has a DKIM record once its key is made, and only then"))
	}
	if d.Record != "" {
		if tags, err := cnmail.ParseRecord(d.Record); err != nil || tags["p"] == "" || len(d.Record) > 2048 {
			errs = append(errs, invalid("record: not a DKIM key record"))
		}
	}
	if len(d.Reason) > 500 {
		errs = append(errs, invalid("reason over 500 bytes"))
	}
	if d.CreatedAt.IsZero() || d.UpdatedAt.IsZero() {
		errs = append(errs, invalid("created_at and updated_at are required"))
	}
	return errors.Join(errs...)
}

// PutSendingDomain adds a sending domain (Create) or records a change: its
// key's record (from the mailer), a check's result.
type PutSendingDomain struct {
	Meta   `json:"meta,omitzero"`
	Domain SendingDomain `json:"domain"`
	Create bool          `json:"create,omitempty"`
}

func (*PutSendingDomain) cmdType() cmdType { return cmdPutSendingDomain }
func (c *PutSendingDomain) validate(s *State) error {
	d := c.Domain
	if err := d.check(); err != nil {
		return err
	}
	if _, ok := s.Orgs[d.Org]; !ok {
		return fmt.Errorf("%w: organization %q", ErrNotFound, d.Org)
	}
	old, exists := s.SendingDomains[sendingDomainKey(d.Org, d.Domain)]
	switch {
	case c.Create && exists:
		return fmt.Errorf("%w: sending domain %q exists", ErrConflict, d.Domain)
	case c.Create && d.Status != DomainPendingKey:
		return invalid("a new sending domain waits for its key")
	case !c.Create && !exists:
		return fmt.Errorf("%w: sending domain %q", ErrNotFound, d.Domain)
	case !c.Create && (old.Selector != d.Selector || !old.CreatedAt.Equal(d.CreatedAt)):
		return fmt.Errorf("%w: a sending domain's selector and created_at never change", ErrConflict)
	case !c.Create && old.Record != "" && old.Record != d.Record:
		return fmt.Errorf("%w: the domain's DKIM key is already made", ErrConflict)
	}
	if d.Status == DomainVerified {
		for _, o := range s.SendingDomains {
			if o.Domain == d.Domain && o.Org != d.Org && o.Status == DomainVerified {
				return fmt.Errorf("%w: another organization sends from %q", ErrConflict, d.Domain)
			}
		}
	}
	return nil
}
func (c *PutSendingDomain) apply(s *State) {
	d := c.Domain
	s.SendingDomains[sendingDomainKey(d.Org, d.Domain)] = &d
}
func (c *PutSendingDomain) audit() (string, string, string) {
	if c.Create {
		return "email_domain.create", c.Domain.Org, c.Domain.Domain
	}
	return "email_domain.update:" + c.Domain.Status, c.Domain.Org, c.Domain.Domain
}
func (*PutSendingDomain) coordinatorOnly() {}

// DeleteSendingDomain removes a sending domain; its mail goes out from the
// service's address again.
type DeleteSendingDomain struct {
	Meta   `json:"meta,omitzero"`
	Org    string `json:"org"`
	Domain string `json:"domain"`
}

func (*DeleteSendingDomain) cmdType() cmdType { return cmdDeleteSendingDomain }
func (c *DeleteSendingDomain) validate(s *State) error {
	if _, ok := s.SendingDomains[sendingDomainKey(c.Org, c.Domain)]; !ok {
		return fmt.Errorf("%w: sending domain %q", ErrNotFound, c.Domain)
	}
	return nil
}
func (c *DeleteSendingDomain) apply(s *State) {
	delete(s.SendingDomains, sendingDomainKey(c.Org, c.Domain))
}
func (c *DeleteSendingDomain) audit() (string, string, string) {
	return "email_domain.delete", c.Org, c.Domain
}
func (*DeleteSendingDomain) coordinatorOnly() {}

// Email message statuses.
const (
	EmailQueued  = "queued"  // waiting for its (next) attempt
	EmailSending = "sending" // claimed by a mailer
	EmailSent    = "sent"    // the relay accepted it
	EmailFailed  = "failed"  // given up: LastError says why
)

// EmailRetention is how long a sent or failed message stays listed.
const EmailRetention = 30 * 24 * time.Hour

// EmailMessage is one email to one recipient, and what came of it. It
// never holds a token: only the hash the last claim registered.
type EmailMessage struct {
	ID       string            `json:"id"`
	Org      string            `json:"org,omitempty"` // "" for the service's own mail
	Template string            `json:"template"`
	To       string            `json:"to"`
	Ref      string            `json:"ref,omitempty"` // the invitation, the user (reset) or the event
	Fields   map[string]string `json:"fields,omitempty"`
	Status   string            `json:"status"`
	Attempts int               `json:"attempts"`
	// LastError is why the last attempt failed (the relay's answer).
	LastError     string    `json:"last_error,omitempty"`
	NextAttemptAt time.Time `json:"next_attempt_at,omitzero"`
	ClaimedBy     string    `json:"claimed_by,omitempty"`
	ClaimUntil    time.Time `json:"claim_until,omitzero"`
	TokenHash     string    `json:"token_hash,omitempty"`
	From          string    `json:"from,omitempty"`
	DKIMDomain    string    `json:"dkim_domain,omitempty"`
	CreatedAt     time.Time `json:"created_at"`
	UpdatedAt     time.Time `json:"updated_at"`
	SentAt        time.Time `json:"sent_at,omitzero"`
}

func (m *EmailMessage) owner() string      { return m.Org }
func (m *EmailMessage) created() time.Time { return m.CreatedAt }

func (m *EmailMessage) check() error {
	var errs []error
	if !emailIDPat.MatchString(m.ID) {
		errs = append(errs, invalid("email id %q", m.ID))
	}
	if !slices.Contains(cnmail.TemplateNames, m.Template) {
		errs = append(errs, invalid("template %q", m.Template))
	}
	if e, err := NormalizeEmail(m.To); err != nil || e != m.To {
		errs = append(errs, invalid("to %q: a lower-case address", m.To))
	}
	if m.Status != EmailQueued || m.Attempts != 0 {
		errs = append(errs, invalid("a new message is queued with no attempt"))
	}
	if len(m.Fields) > 32 || len(m.Ref) > 200 {
		errs = append(errs, invalid("at most 32 fields and a ref of 200 bytes"))
	}
	for k, v := range m.Fields {
		if len(k) > 64 || len(v) > 1024 {
			errs = append(errs, invalid("field %.64q: keys up to 64 bytes, values up to 1024", k))
		}
	}
	if m.CreatedAt.IsZero() {
		errs = append(errs, invalid("created_at is required"))
	}
	return errors.Join(errs...)
}

// eventEmailID is the id of an event's message to one recipient: the
// same event queued twice is one message.
func eventEmailID(eventID, to string) string {
	return "eml_" + strings.TrimPrefix(schemas.EventID(eventID, to), "evt_")
}

// maxQueueEmails bounds the messages of one QueueEmails command; more
// are queued in several.
const maxQueueEmails = 100

// QueueEmails adds messages to the outbox; one that is there already (the
// same event read twice) is left as it is. Invitation, when set, is
// created in the same entry: an invitation sent by email.
type QueueEmails struct {
	Meta       `json:"meta,omitzero"`
	Messages   []EmailMessage `json:"messages"`
	Invitation *Invitation    `json:"invitation,omitempty"`
}

func (*QueueEmails) cmdType() cmdType { return cmdQueueEmails }
func (c *QueueEmails) validate(s *State) error {
	if c.Meta.At.IsZero() || len(c.Messages) == 0 || len(c.Messages) > maxQueueEmails {
		return invalid("1-%d messages and a time", maxQueueEmails)
	}
	if c.Invitation != nil {
		if err := (&PutInvitation{Invitation: *c.Invitation, Create: true}).validate(s); err != nil {
			return err
		}
	}
	for i := range c.Messages {
		m := &c.Messages[i]
		if err := m.check(); err != nil {
			return err
		}
		if _, ok := s.Orgs[m.Org]; m.Org != "" && !ok {
			return fmt.Errorf("%w: organization %q", ErrNotFound, m.Org)
		}
		if m.Template == cnmail.TemplatePasswordReset && s.resetQueued(m.Ref, c.Meta.At) {
			return errResetTooSoon
		}
	}
	return nil
}

// errResetTooSoon refuses a reset email queued within ResetRequestInterval
// of the user's last one.
var errResetTooSoon = fmt.Errorf("%w: a password reset email was queued for this user within %s", ErrConflict, ResetRequestInterval)

// resetQueued reports whether a reset email for user was queued within
// ResetRequestInterval before at.
func (s *State) resetQueued(user string, at time.Time) bool {
	for _, old := range s.EmailMessages {
		if old.Template == cnmail.TemplatePasswordReset && old.Ref == user && at.Sub(old.CreatedAt) < ResetRequestInterval {
			return true
		}
	}
	return false
}
func (c *QueueEmails) apply(s *State) {
	if c.Invitation != nil {
		in := *c.Invitation
		s.Invitations[in.ID] = &in
	}
	for _, m := range c.Messages {
		if _, ok := s.EmailMessages[m.ID]; !ok {
			m.UpdatedAt = m.CreatedAt
			s.EmailMessages[m.ID] = &m
		}
	}
	for id, m := range s.EmailMessages {
		if (m.Status == EmailSent || m.Status == EmailFailed) && c.Meta.At.Sub(m.UpdatedAt) > EmailRetention {
			delete(s.EmailMessages, id)
		}
	}
}
func (c *QueueEmails) audit() (string, string, string) {
	m := c.Messages[0]
	return "email.queue:" + m.Template, m.Org, m.Ref
}
func (*QueueEmails) coordinatorOnly() {}

// due reports whether a mailer may claim m at t: queued and due, or
// claimed by a mailer whose claim lapsed.
func (m *EmailMessage) due(t time.Time) bool {
	return (m.Status == EmailQueued && !t.Before(m.NextAttemptAt)) || (m.Status == EmailSending && t.After(m.ClaimUntil))
}

// ClaimEmail gives a due message to a mailer until Until, and registers
// the hash of the token its link carries: the invitation's, or a new
// password reset's (the previous attempt's reset token is dropped).
type ClaimEmail struct {
	ID             string    `json:"id"`
	Mailer         string    `json:"mailer"`
	At             time.Time `json:"at"`
	Until          time.Time `json:"until"`
	InvitationHash string    `json:"invitation_hash"`
	ResetHash      string    `json:"reset_hash"`
}

func (*ClaimEmail) cmdType() cmdType { return cmdClaimEmail }
func (c *ClaimEmail) validate(s *State) error {
	m := s.EmailMessages[c.ID]
	switch {
	case m == nil:
		return fmt.Errorf("%w: email %q", ErrNotFound, c.ID)
	case !idPattern.MatchString(c.Mailer) || !c.Until.After(c.At):
		return invalid("a claim needs a mailer id and an end after its time")
	case !hashPattern.MatchString(c.InvitationHash) || !hashPattern.MatchString(c.ResetHash):
		return invalid("token hashes")
	case !m.due(c.At):
		return fmt.Errorf("%w: email %q is not due", ErrConflict, c.ID)
	}
	return s.tokenTarget(m, c.At)
}

// tokenTarget checks that what m's token opens can still be opened: a
// pending invitation, an existing user.
func (s *State) tokenTarget(m *EmailMessage, at time.Time) error {
	switch m.Template {
	case cnmail.TemplateInvitation:
		in := s.Invitations[m.Ref]
		if in == nil || !in.AcceptedAt.IsZero() || !in.RevokedAt.IsZero() || !at.Before(in.ExpiresAt) {
			return fmt.Errorf("%w: the invitation was accepted, revoked or has expired", ErrGone)
		}
	case cnmail.TemplatePasswordReset:
		if s.Users[m.Ref] == nil {
			return fmt.Errorf("%w: the user no longer exists", ErrGone)
		}
	}
	return nil
}
func (c *ClaimEmail) apply(s *State) {
	m := *s.EmailMessages[c.ID]
	m.Status, m.ClaimedBy, m.ClaimUntil, m.UpdatedAt = EmailSending, c.Mailer, c.Until, c.At
	m.Attempts++
	switch m.Template {
	case cnmail.TemplateInvitation:
		in := *s.Invitations[m.Ref]
		in.Hash = c.InvitationHash
		s.Invitations[in.ID] = &in
		m.TokenHash = c.InvitationHash
	case cnmail.TemplatePasswordReset:
		if old := s.ResetTokens[m.TokenHash]; old != nil && old.UsedAt.IsZero() {
			delete(s.ResetTokens, m.TokenHash)
		}
		s.ResetTokens[c.ResetHash] = &ResetToken{Hash: c.ResetHash, User: m.Ref, CreatedAt: c.At, ExpiresAt: c.At.Add(ResetTTL)}
		m.TokenHash = c.ResetHash
	}
	s.EmailMessages[c.ID] = &m
}
func (*ClaimEmail) coordinatorOnly() {}

// RecordEmail records an attempt's outcome, from the mailer that claimed
// the message; or (Cancel) gives up on a message whose link can no longer
// work.
type RecordEmail struct {
	ID      string         `json:"id"`
	At      time.Time      `json:"at"`
	Outcome cnmail.Outcome `json:"outcome"`
	Cancel  bool           `json:"cancel,omitempty"`
}

func (*RecordEmail) cmdType() cmdType { return cmdRecordEmail }
func (c *RecordEmail) validate(s *State) error {
	m := s.EmailMessages[c.ID]
	switch {
	case m == nil:
		return fmt.Errorf("%w: email %q", ErrNotFound, c.ID)
	case c.At.IsZero() || len(c.Outcome.Error) > 1000 || len(c.Outcome.From) > 254 || len(c.Outcome.DKIMDomain) > 253:
		return invalid("an outcome needs a time; its error up to 1000 bytes")
	case c.Cancel && (m.Status == EmailSent || m.Status == EmailFailed):
		return fmt.Errorf("%w: email %q is finished", ErrConflict, c.ID)
	case !c.Cancel && (m.Status != EmailSending || m.ClaimedBy != c.Outcome.Mailer):
		return fmt.Errorf("%w: email %q is not claimed by %q", ErrConflict, c.ID, c.Outcome.Mailer)
	}
	return nil
}
func (c *RecordEmail) apply(s *State) {
	m := *s.EmailMessages[c.ID]
	o := c.Outcome
	m.UpdatedAt, m.ClaimedBy, m.ClaimUntil = c.At, "", time.Time{}
	switch {
	case c.Cancel:
		m.Status, m.LastError = EmailFailed, o.Error
	case o.Sent:
		m.Status, m.SentAt, m.LastError, m.NextAttemptAt = EmailSent, c.At, "", time.Time{}
	case o.RetryAt.IsZero():
		m.Status, m.LastError = EmailFailed, o.Error
	default:
		m.Status, m.LastError, m.NextAttemptAt = EmailQueued, o.Error, o.RetryAt
	}
	if !c.Cancel {
		m.From, m.DKIMDomain = o.From, o.DKIMDomain
	}
	s.EmailMessages[c.ID] = &m
}
func (*RecordEmail) coordinatorOnly() {}

// branding is how an organization's mail looks: its branding as its
// pages show it (internal/brand), its name when it set no display name.
func branding(o *Org) cnmail.Branding {
	if o == nil {
		return cnmail.Branding{}
	}
	b := brand.Org{ID: o.ID, Name: o.Name, Branding: o.Settings.Branding()}
	return cnmail.Branding{Name: b.Title(), LogoURL: b.Branding.LogoURL, Color: b.Branding.Colors.Primary,
		SupportEmail: b.Branding.SupportEmail, SupportURL: b.Branding.SupportURL}
}

// sender is the verified sending domain org's mail goes out from (the
// first by name), nil for none.
func (s *State) sender(org string) *cnmail.Sender {
	var best *SendingDomain
	for _, d := range s.SendingDomains {
		if d.Org == org && d.Status == DomainVerified && (best == nil || d.Domain < best.Domain) {
			best = d
		}
	}
	if best == nil {
		return nil
	}
	return &cnmail.Sender{Domain: best.Domain, Selector: best.Selector, Local: best.FromLocal}
}

// recipients are who an organization's event mail goes to: its
// notification addresses, else its owners and admins.
func (s *State) recipients(org string) []string {
	o := s.Orgs[org]
	if o == nil {
		return nil
	}
	if len(o.Settings.NotificationEmails) > 0 {
		return slices.Clone(o.Settings.NotificationEmails)
	}
	var out []string
	for _, m := range s.Memberships {
		if m.Org == org && (m.Role == RoleOwner || m.Role == RoleAdmin) {
			if u := s.Users[m.User]; u != nil {
				out = append(out, u.Email)
			}
		}
	}
	slices.Sort(out)
	return out
}

// checkNotificationEmails checks an organization's notification list.
func checkNotificationEmails(list []string) error {
	if len(list) > 20 {
		return invalid("notification_emails: at most 20 addresses")
	}
	for _, e := range list {
		if n, err := NormalizeEmail(e); err != nil || n != e {
			return invalid("notification_emails: %q is not a lower-case address", e)
		}
	}
	return nil
}
