package coordinator

import (
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/certnode/certnode/internal/tenants"
)

// cmdSuspendKey stands apart from the other commands' numbers.
const cmdSuspendKey cmdType = 28

// SuspendKey suspends an API key (Resume: lifts the suspension): an admin's
// answer to a security alert about it, undone when the alarm was false,
// where a revocation is final. A suspended key is refused like an unknown
// one.
type SuspendKey struct {
	Meta   `json:"meta,omitzero"`
	ID     string    `json:"id"`
	Org    string    `json:"org"`
	At     time.Time `json:"at"`
	Reason string    `json:"reason,omitempty"`
	Resume bool      `json:"resume,omitempty"`
}

func (*SuspendKey) cmdType() cmdType { return cmdSuspendKey }
func (c *SuspendKey) validate(s *State) error {
	k, err := s.orgKey(c.Org, c.ID)
	switch {
	case err != nil:
		return err
	case c.At.IsZero():
		return invalid("at is required")
	case len(c.Reason) > 200:
		return invalid("reason is at most 200 bytes")
	case !k.RevokedAt.IsZero():
		return fmt.Errorf("%w: key %q is revoked", ErrConflict, c.ID)
	case c.Resume == k.SuspendedAt.IsZero():
		return fmt.Errorf("%w: key %q is %s", ErrConflict, c.ID, map[bool]string{true: "not suspended", false: "suspended already"}[c.Resume])
	}
	return nil
}
func (c *SuspendKey) apply(s *State) {
	k := *s.Keys[c.ID] // copy: readers may hold the old value
	k.SuspendedAt, k.SuspendedFor = c.At, c.Reason
	if c.Resume {
		k.SuspendedAt, k.SuspendedFor = time.Time{}, ""
	}
	s.Keys[c.ID] = &k
}
func (c *SuspendKey) audit() (string, string, string) {
	if c.Resume {
		return "api_key.resume", c.Org, c.ID
	}
	return "api_key.suspend", c.Org, c.ID
}

// suspendKey answers POST /v1/orgs/{org}/keys/{key}/suspend {"reason"}
// and .../resume: as a revocation, an admin-scope key only by an owner or
// admin.
func (s *Server) suspendKey(resume bool) orgHandler {
	return func(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
		var b struct {
			Reason string `json:"reason"`
		}
		if err := decodeBody(orEmptyObject(body), &b); err != nil {
			s.fail(w, err)
			return
		}
		k, _ := owned(s, sc, keysOf, r.PathValue("key"))
		if slices.Contains(k.Scopes, tenants.ScopeAdmin) && sc.role != RoleOwner && sc.role != RoleAdmin {
			s.refuse(w, r, http.StatusForbidden, "forbidden_role", "only an owner or admin can suspend a key with the admin scope")
			return
		}
		c := &SuspendKey{ID: r.PathValue("key"), Org: sc.org, At: time.Now().UTC(), Reason: b.Reason, Resume: resume}
		// The key as the command leaves it, kept for a retry with the
		// same Idempotency-Key.
		v := viewOf(&k)
		v.SuspendedAt, v.SuspendedFor = c.At, c.Reason
		if resume {
			v.SuspendedAt, v.SuspendedFor = time.Time{}, ""
		}
		s.write(w, r, body, c, http.StatusOK, v)
	}
}
