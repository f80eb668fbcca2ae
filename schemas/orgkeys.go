package schemas

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// ReasonKidOtherOrg: the receipt's kid is another organization's own key.
// Verification with the service's keys accepts the service's keys and the
// caller's own organization's keys, never another organization's.
const ReasonKidOtherOrg Reason = "kid_other_org"

// ErrKidOtherOrg matches a VerifyError with ReasonKidOtherOrg.
var ErrKidOtherOrg = &VerifyError{Reason: ReasonKidOtherOrg}

// States of an organization's signing key at a time.
const (
	OrgKeyStandby = "standby" // published, not signing yet
	OrgKeyActive  = "active"  // signs the organization's receipts
	OrgKeyRetired = "retired" // signs no more; stays published
)

// OrgKey is one of an organization's own signing keys as the coordinator
// holds it: public data only. The private half never leaves the HSM (or,
// for development, the workers' key ring directory); Source says where it
// is, in the key ring's notation (pkcs11:<label> or file:<name>.pem).
// A key is announced (published) at CreatedAt, signs from ActivatesAt
// until RetiredAt (zero: until a later key activates), and stays
// published for verification afterwards.
type OrgKey struct {
	Kid         string    `json:"kid"`
	JWK         JWK       `json:"jwk"`
	Source      string    `json:"source"`
	Request     string    `json:"request"` // the request it answered
	CreatedAt   time.Time `json:"created_at"`
	ActivatesAt time.Time `json:"activates_at"`
	RetiredAt   time.Time `json:"retired_at,omitzero"`
}

// State is the key's state at t.
func (k *OrgKey) State(t time.Time) string {
	switch {
	case !k.RetiredAt.IsZero() && !t.Before(k.RetiredAt):
		return OrgKeyRetired
	case t.Before(k.ActivatesAt):
		return OrgKeyStandby
	}
	return OrgKeyActive
}

// Check validates a reported key's public half: a P-256 or Ed25519 JWK
// whose kid is its thumbprint, and a source in the key ring's notation.
func (k *OrgKey) Check() error {
	var errs []error
	if _, err := k.JWK.PublicKey(); err != nil {
		errs = append(errs, fmt.Errorf("jwk: %w", err))
	} else if tp := k.JWK.Thumbprint(); k.Kid != tp || (k.JWK.Kid != "" && k.JWK.Kid != tp) {
		errs = append(errs, fmt.Errorf("kid %q is not the RFC 7638 thumbprint of its jwk (%s)", k.Kid, tp))
	}
	if a := k.JWK.Alg; a != "" && a != k.JWK.KeyAlg() {
		errs = append(errs, fmt.Errorf("jwk alg %q on a %s key", a, k.JWK.KeyAlg()))
	}
	if u := k.JWK.Use; u != "" && u != "sig" {
		errs = append(errs, fmt.Errorf("jwk use %q, want sig", u))
	}
	if !strings.HasPrefix(k.Source, "pkcs11:") && !strings.HasPrefix(k.Source, "file:") || len(k.Source) > 200 {
		errs = append(errs, fmt.Errorf("source %q: want pkcs11:<label> or file:<name>.pem", k.Source))
	}
	return errors.Join(errs...)
}

// OrgKeyRequest asks a worker with an HSM to make a key for an
// organization; the first worker to report one installs it.
type OrgKeyRequest struct {
	Org         string    `json:"org"`
	ID          string    `json:"id"`
	Alg         string    `json:"alg"`
	Reason      string    `json:"reason"` // enable, manual or scheduled
	RequestedAt time.Time `json:"requested_at"`
}

// OrgKeyRing is an organization's keys decoded once, for the tiers that
// sign, verify and publish with them.
type OrgKeyRing struct {
	Org  string
	Keys []OrgKey // in the order they were made
	ks   *KeySet
}

// NewOrgKeyRing decodes an organization's keys. Keys whose public half
// does not decode are left out of the key set (they were checked when
// installed, so this cannot happen but by corruption).
func NewOrgKeyRing(org string, keys []OrgKey) *OrgKeyRing {
	r := &OrgKeyRing{Org: org, Keys: keys}
	jwks := JWKS{Keys: make([]JWK, 0, len(keys))}
	for _, k := range keys {
		jwks.Keys = append(jwks.Keys, k.JWK)
	}
	r.ks, _ = NewKeySet(jwks)
	return r
}

// Active is the key that signs the organization's receipts at t: the
// newest one that has activated and is not retired.
func (r *OrgKeyRing) Active(t time.Time) (OrgKey, bool) {
	for i := len(r.Keys) - 1; i >= 0; i-- {
		if r.Keys[i].State(t) == OrgKeyActive {
			return r.Keys[i], true
		}
	}
	return OrgKey{}, false
}

// KeySet verifies receipts signed with any of the organization's keys
// (nil when it has none).
func (r *OrgKeyRing) KeySet() *KeySet { return r.ks }

// JWKS lists the organization's keys as published at t: the active one
// first, then the others newest first, each marked with the organization
// (the "org" member).
func (r *OrgKeyRing) JWKS(t time.Time) []JWK {
	out := make([]JWK, 0, len(r.Keys))
	active, ok := r.Active(t)
	for i := len(r.Keys) - 1; i >= 0; i-- {
		k := r.Keys[i]
		pub, err := k.JWK.PublicKey()
		if err != nil {
			continue
		}
		jwk, _ := NewJWK(pub)
		jwk.Org = r.Org
		if ok && k.Kid == active.Kid {
			out = slices.Insert(out, 0, jwk)
		} else {
			out = append(out, jwk)
		}
	}
	return out
}
