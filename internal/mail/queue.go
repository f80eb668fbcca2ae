package mail

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"time"
)

// The coordinator keeps the outbox: every message waiting, sending, sent
// or failed, so a delivery's outcome survives any mailer and shows in the
// API. A mailer claims the next due message (Claim), sends it and reports
// the outcome (Outcome). These are the wire types of the coordinator's
// node routes the mailer calls.

// Job is a message a mailer claimed: all it needs to render and send it.
type Job struct {
	ID       string            `json:"id"`
	Org      string            `json:"org,omitempty"`
	Template string            `json:"template"`
	To       string            `json:"to"`
	Brand    Branding          `json:"brand"`
	Fields   map[string]string `json:"fields,omitempty"`
	Attempt  int               `json:"attempt"` // this attempt's number, from 1
	// ExpiresAt is when the token the claim registered stops working.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// Sender is the organization's verified sending domain; nil: the
	// message goes out from the service's own address.
	Sender *Sender `json:"sender,omitempty"`
}

// NeedsToken reports whether the job's link carries a token the claim
// registered (an invitation's or a password reset's).
func (j *Job) NeedsToken() bool {
	return j.Template == TemplateInvitation || j.Template == TemplatePasswordReset
}

// Sender is a verified sending domain: mail goes out as Local@Domain,
// signed with the key of Selector.
type Sender struct {
	Domain   string `json:"domain"`
	Selector string `json:"selector"`
	Local    string `json:"local"`
}

// Claim asks for the next due message. The mailer makes the tokens of
// invitations and password resets itself and sends only their hashes: the
// coordinator registers the one the message needs, and a token exists in
// the clear only in the message.
type Claim struct {
	Mailer         string `json:"mailer"`
	LeaseSeconds   int    `json:"lease_seconds"`
	InvitationHash string `json:"invitation_hash"`
	ResetHash      string `json:"reset_hash"`
}

// Outcome is what came of an attempt.
type Outcome struct {
	Mailer string `json:"mailer"`
	Sent   bool   `json:"sent"`
	Error  string `json:"error,omitempty"`
	// RetryAt is when to try again after a failure; zero: give up.
	RetryAt    time.Time `json:"retry_at,omitzero"`
	From       string    `json:"from,omitempty"`
	DKIMDomain string    `json:"dkim_domain,omitempty"`
}

// EventEmail asks the coordinator to mail an event to an organization's
// notification addresses (or its owners and admins).
type EventEmail struct {
	EventID  string            `json:"event_id"`
	Org      string            `json:"org"`
	Template string            `json:"template"`
	Fields   map[string]string `json:"fields"`
}

// KeyRequest is a sending domain that has no DKIM key yet.
type KeyRequest struct {
	Org      string `json:"org"`
	Domain   string `json:"domain"`
	Selector string `json:"selector"`
}

// KeyReport gives the coordinator a new key's public record (RecordValue).
type KeyReport struct {
	Selector string `json:"selector"`
	Record   string `json:"record"`
}

// NewToken makes a secret for a link (prefix says what it opens) and the
// hash the coordinator keeps: base64url SHA-256, as coordinator.HashKey.
func NewToken(prefix string) (token, hash string, err error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", err
	}
	token = prefix + base64.RawURLEncoding.EncodeToString(b[:])
	sum := sha256.Sum256([]byte(token))
	return token, base64.RawURLEncoding.EncodeToString(sum[:]), nil
}
