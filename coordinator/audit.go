package coordinator

import (
	"slices"
	"time"
)

// Actor kinds: who asked for a change.
const (
	ActorOperator  = "operator"  // the admin token
	ActorUser      = "user"      // a signed-in user
	ActorKey       = "key"       // an organization's API key
	ActorNode      = "node"      // a coordinator node itself
	ActorAnonymous = "anonymous" // a token holder not yet a user (sign-in, invitation, reset)
)

// Actor is who asked for a change, and from which address.
type Actor struct {
	Kind string `json:"kind"`
	ID   string `json:"id,omitempty"`
	Addr string `json:"addr,omitempty"`
}

// Meta travels with a command: when and by whom it was asked for. The
// proposer fixes both, so every node records the same audit event.
type Meta struct {
	At time.Time `json:"at,omitzero"`
	By Actor     `json:"by,omitzero"`
	// Idem is the answer to keep for a retry with the same
	// Idempotency-Key.
	Idem *IdemRecord `json:"idem,omitempty"`
}

func (m *Meta) metadata() *Meta { return m }

// audited is a command that describes itself for the audit trail: the
// action, the organization it concerns (empty: none) and its target id.
// Secrets and hashes never appear in it.
type audited interface {
	metadata() *Meta
	audit() (action, org, target string)
}

// AuditEvent is one applied change: who, what, when, from where. The
// security work makes the trail tamper-evident; here it is kept in the
// replicated state, queryable by organization.
type AuditEvent struct {
	Seq    uint64    `json:"seq"` // the raft index that applied it
	At     time.Time `json:"at"`
	Actor  Actor     `json:"actor"`
	Action string    `json:"action"`
	Org    string    `json:"org,omitempty"`
	Target string    `json:"target,omitempty"`
}

// MaxAuditEvents bounds the trail kept in the state; the oldest go first.
const MaxAuditEvents = 100_000

// record appends c's audit event, if c asks for one.
func (s *State) record(index uint64, c Command) {
	a, ok := c.(audited)
	if !ok || a.metadata().By.Kind == "" {
		return
	}
	m := a.metadata()
	if m.Idem != nil {
		s.keep(m.Idem)
	}
	action, org, target := a.audit()
	if len(s.Audit) >= MaxAuditEvents {
		// Drop a tenth at once so trimming is not paid on every entry.
		s.Audit = slices.Clone(s.Audit[MaxAuditEvents/10:])
	}
	s.Audit = append(s.Audit, AuditEvent{Seq: index, At: m.At, Actor: m.By, Action: action, Org: org, Target: target})
}
