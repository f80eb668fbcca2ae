package coordinator

import (
	"fmt"
	"slices"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/tenants"
)

// A log entry is one type byte followed by the command's JSON, so an
// unknown type is refused without guessing at its body, and a new command
// is one more registry entry.
type cmdType byte

const (
	cmdSetMember        cmdType = 1
	cmdPutOrg           cmdType = 2
	cmdCreateKey        cmdType = 3
	cmdRevokeKey        cmdType = 4
	cmdPutPlan          cmdType = 5
	cmdPutProducerKey   cmdType = 6
	cmdCreateUser       cmdType = 7
	cmdPutMembership    cmdType = 8
	cmdPutInvitation    cmdType = 9
	cmdAcceptInvitation cmdType = 10
	cmdPutResetToken    cmdType = 11
	cmdResetPassword    cmdType = 12
	cmdLogin            cmdType = 13
	cmdEndSession       cmdType = 14
	cmdPatchOrg         cmdType = 15
	// 16 and 17 are SetAdmitted and SetKeysUsed (admitted.go).
	cmdPutEndpoint    cmdType = 18
	cmdDeleteEndpoint cmdType = 19
	// 20 is SetEndpointHealth, which dispatchers send; 21 AnnounceQuota;
	// 22 to 24 PutReport, DeleteReport and AnnounceReport.
	cmdSetEndpointHealth cmdType = 20

	// Branding and error pages (50-59).
	cmdSetBranding    cmdType = 50
	cmdSetMaintenance cmdType = 51
)

// Command is a change to the State. validate looks at the state it will
// apply to, and apply must be deterministic: every node applies the same
// command to the same state, so anything time- or random-dependent is in
// the command, fixed by the proposer.
type Command interface {
	cmdType() cmdType
	validate(s *State) error
	apply(s *State)
}

var registry = map[cmdType]func() Command{
	cmdSetMember:         func() Command { return new(SetMember) },
	cmdPutOrg:            func() Command { return new(PutOrg) },
	cmdCreateKey:         func() Command { return new(CreateKey) },
	cmdRevokeKey:         func() Command { return new(RevokeKey) },
	cmdPutPlan:           func() Command { return new(PutPlan) },
	cmdPutProducerKey:    func() Command { return new(PutProducerKey) },
	cmdCreateUser:        func() Command { return new(CreateUser) },
	cmdPutMembership:     func() Command { return new(PutMembership) },
	cmdPutInvitation:     func() Command { return new(PutInvitation) },
	cmdAcceptInvitation:  func() Command { return new(AcceptInvitation) },
	cmdPutResetToken:     func() Command { return new(PutResetToken) },
	cmdResetPassword:     func() Command { return new(ResetPassword) },
	cmdLogin:             func() Command { return new(Login) },
	cmdEndSession:        func() Command { return new(EndSession) },
	cmdPatchOrg:          func() Command { return new(PatchOrg) },
	cmdPutEndpoint:       func() Command { return new(PutEndpoint) },
	cmdDeleteEndpoint:    func() Command { return new(DeleteEndpoint) },
	cmdSetEndpointHealth: func() Command { return new(SetEndpointHealth) },
	cmdAnnounceQuota:     func() Command { return new(AnnounceQuota) },
	cmdPutReport:         func() Command { return new(PutReport) },
	cmdDeleteReport:      func() Command { return new(DeleteReport) },
	cmdAnnounceReport:    func() Command { return new(AnnounceReport) },
	cmdSetKeysUsed:       func() Command { return new(SetKeysUsed) },
	cmdSetAdmitted:       func() Command { return new(SetAdmitted) },
	cmdRelayAudit:        func() Command { return new(RelayAudit) },
	cmdBlockAddress:      func() Command { return new(BlockAddress) },
	cmdUnblockAddress:    func() Command { return new(UnblockAddress) },
	cmdSuspendKey:        func() Command { return new(SuspendKey) },
	cmdAddDomain:         func() Command { return new(AddDomain) },
	cmdDeleteDomain:      func() Command { return new(DeleteDomain) },
	cmdSetDomainState:    func() Command { return new(SetDomainState) },
	cmdPutCertObject:     func() Command { return new(PutCertObject) },
	cmdDeleteCertObjects: func() Command { return new(DeleteCertObjects) },
	cmdLockCert:          func() Command { return new(LockCert) },
	cmdUnlockCert:        func() Command { return new(UnlockCert) },
	// Email (email.go): 40-49.
	cmdPutSendingDomain:    func() Command { return new(PutSendingDomain) },
	cmdDeleteSendingDomain: func() Command { return new(DeleteSendingDomain) },
	cmdQueueEmails:         func() Command { return new(QueueEmails) },
	cmdClaimEmail:          func() Command { return new(ClaimEmail) },
	cmdRecordEmail:         func() Command { return new(RecordEmail) },
	// 60-69: organizations' own signing keys (orgkeys.go).
	cmdSetOrgKeySettings: func() Command { return new(SetOrgKeySettings) },
	cmdRequestOrgKey:     func() Command { return new(RequestOrgKey) },
	cmdInstallOrgKey:     func() Command { return new(InstallOrgKey) },
	cmdSetBranding:       func() Command { return new(SetBranding) },
	cmdSetMaintenance:    func() Command { return new(SetMaintenance) },
	// 70-79: API customization (apisettings.go).
	cmdSetAPISettings: func() Command { return new(SetAPISettings) },
	cmdSetKeyDefaults: func() Command { return new(SetKeyDefaults) },
}

func encode(c Command) ([]byte, error) {
	body, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	return append([]byte{byte(c.cmdType())}, body...), nil
}

func decode(data []byte) (Command, error) {
	if len(data) == 0 {
		return nil, invalid("empty log entry")
	}
	mk, ok := registry[cmdType(data[0])]
	if !ok {
		return nil, invalid("unknown command type %d", data[0])
	}
	c := mk()
	if err := json.Unmarshal(data[1:], c, json.RejectUnknownMembers(true)); err != nil {
		return nil, invalid("command %d: %v", data[0], err)
	}
	return c, nil
}

// SetMember records a node's HTTP address (empty: the node left).
type SetMember struct {
	Meta `json:"meta,omitzero"`
	ID   string `json:"id"`
	HTTP string `json:"http"`
}

func (*SetMember) cmdType() cmdType { return cmdSetMember }
func (c *SetMember) validate(*State) error {
	if !idPattern.MatchString(c.ID) {
		return invalid("node id %q", c.ID)
	}
	return nil
}
func (c *SetMember) apply(s *State) {
	if c.HTTP == "" {
		delete(s.Members, c.ID)
		return
	}
	s.Members[c.ID] = c.HTTP
}

// PutOrg creates an organization (Create) or replaces one that exists.
type PutOrg struct {
	Meta   `json:"meta,omitzero"`
	Org    Org  `json:"org"`
	Create bool `json:"create"`
}

func (*PutOrg) cmdType() cmdType { return cmdPutOrg }
func (c *PutOrg) validate(s *State) error {
	if err := c.Org.check(); err != nil {
		return err
	}
	old, exists := s.Orgs[c.Org.ID]
	switch {
	case c.Create && exists:
		return fmt.Errorf("%w: organization %q exists", ErrConflict, c.Org.ID)
	case !c.Create && !exists:
		return fmt.Errorf("%w: organization %q", ErrNotFound, c.Org.ID)
	case exists && !old.CreatedAt.Equal(c.Org.CreatedAt):
		return invalid("created_at cannot change")
	}
	if _, ok := s.Plan(c.Org.Plan); !ok {
		return fmt.Errorf("%w: plan %q", ErrNotFound, c.Org.Plan)
	}
	return nil
}
func (c *PutOrg) apply(s *State) { s.putOrg(c.Org) }

// putOrg stores o, keeping the plan history the FSM holds (whatever was
// proposed) and extending it when the plan changed.
func (s *State) putOrg(o Org) {
	o.PlanHistory = nil
	if old := s.Orgs[o.ID]; old != nil {
		o.PlanHistory = old.PlanHistory
	}
	if n := len(o.PlanHistory); n == 0 || o.PlanHistory[n-1].Plan.ID != o.Plan {
		p, _ := s.Plan(o.Plan)
		o.PlanHistory = append(slices.Clip(o.PlanHistory), tenants.PlanPeriod{From: o.UpdatedAt, Plan: p})
	}
	s.Orgs[o.ID] = &o
}

// OrgPatch is a change to some of an organization's fields; nil ones
// keep their value.
type OrgPatch struct {
	Name     *string         `json:"name,omitempty"`
	Status   *string         `json:"status,omitempty"`
	Plan     *string         `json:"plan,omitempty"`
	Settings *OrgSettings    `json:"settings,omitempty"`
	Limits   *tenants.Limits `json:"limits,omitempty"`
}

func (p *OrgPatch) applyTo(o *Org) {
	if p.Name != nil {
		o.Name = *p.Name
	}
	if p.Status != nil {
		o.Status = *p.Status
	}
	if p.Plan != nil {
		o.Plan = *p.Plan
	}
	if p.Settings != nil {
		o.Settings = *p.Settings
	}
	if p.Limits != nil {
		o.Limits = *p.Limits
	}
}

// PatchOrg changes an organization as it is when the entry applies, so
// concurrent changes to other fields are never undone (PutOrg, which
// replaces the whole organization, now only creates).
type PatchOrg struct {
	Meta  `json:"meta,omitzero"`
	ID    string    `json:"id"`
	Patch OrgPatch  `json:"patch"`
	At    time.Time `json:"at"`
}

func (*PatchOrg) cmdType() cmdType { return cmdPatchOrg }

// patched is the organization with the patch applied, or why not.
func (c *PatchOrg) patched(s *State) (Org, error) {
	old, ok := s.Orgs[c.ID]
	if !ok {
		return Org{}, fmt.Errorf("%w: organization %q", ErrNotFound, c.ID)
	}
	if c.At.IsZero() {
		return Org{}, invalid("at is required")
	}
	o := *old
	c.Patch.applyTo(&o)
	o.UpdatedAt = c.At
	if err := o.check(); err != nil {
		return Org{}, err
	}
	if _, ok := s.Plan(o.Plan); !ok {
		return Org{}, fmt.Errorf("%w: plan %q", ErrNotFound, o.Plan)
	}
	return o, nil
}
func (c *PatchOrg) validate(s *State) error { _, err := c.patched(s); return err }
func (c *PatchOrg) apply(s *State) {
	o, _ := c.patched(s)
	s.putOrg(o)
}
func (c *PatchOrg) audit() (string, string, string) { return "org.update", c.ID, c.ID }

// PutPlan creates or changes a plan. Organizations on it move to the new
// terms from At; their earlier periods keep the terms they had.
type PutPlan struct {
	Meta `json:"meta,omitzero"`
	Plan tenants.Plan `json:"plan"`
	At   time.Time    `json:"at"`
}

func (*PutPlan) cmdType() cmdType { return cmdPutPlan }
func (c *PutPlan) validate(*State) error {
	if c.At.IsZero() {
		return invalid("at is required")
	}
	return checkPlan(&c.Plan)
}
func (c *PutPlan) apply(s *State) {
	p := c.Plan
	s.Plans[p.ID] = &p
	for id, o := range s.Orgs {
		if o.Plan != p.ID {
			continue
		}
		n := *o // copy: readers may hold the old value
		n.PlanHistory = append(slices.Clip(o.PlanHistory), tenants.PlanPeriod{From: c.At, Plan: p})
		s.Orgs[id] = &n
	}
}

// PutProducerKey adds a producer key (Create) or replaces one: a
// revocation, or the end of an old key's overlap when it is rotated.
// Rotate names a key whose use ends at RotateUntil, in the same entry
// that creates its successor, so no moment has neither.
type PutProducerKey struct {
	Meta        `json:"meta,omitzero"`
	Key         ProducerKey `json:"key"`
	Create      bool        `json:"create"`
	Rotate      string      `json:"rotate,omitempty"`
	RotateUntil time.Time   `json:"rotate_until,omitzero"`
}

func (*PutProducerKey) cmdType() cmdType { return cmdPutProducerKey }
func (c *PutProducerKey) validate(s *State) error {
	if err := c.Key.check(); err != nil {
		return err
	}
	if _, ok := s.Orgs[c.Key.Org]; !ok {
		return fmt.Errorf("%w: organization %q", ErrNotFound, c.Key.Org)
	}
	old, exists := s.ProducerKeys[c.Key.ID]
	switch {
	case c.Create && exists:
		return fmt.Errorf("%w: producer key %q exists", ErrConflict, c.Key.ID)
	case !c.Create && (!exists || old.Org != c.Key.Org):
		return fmt.Errorf("%w: producer key %q", ErrNotFound, c.Key.ID)
	case !c.Create && (old.Secret != c.Key.Secret || !old.CreatedAt.Equal(c.Key.CreatedAt)):
		return invalid("a producer key's secret and created_at cannot change")
	}
	if c.Rotate != "" {
		prev, ok := s.ProducerKeys[c.Rotate]
		if !ok || prev.Org != c.Key.Org || !c.Create {
			return fmt.Errorf("%w: producer key %q", ErrNotFound, c.Rotate)
		}
		if !prev.RevokedAt.IsZero() {
			return fmt.Errorf("%w: producer key %q is revoked", ErrConflict, c.Rotate)
		}
		if c.RotateUntil.Before(c.Key.CreatedAt) {
			return invalid("rotate_until must not be before the new key's created_at")
		}
	}
	return nil
}
func (c *PutProducerKey) apply(s *State) {
	k := c.Key
	s.ProducerKeys[k.ID] = &k
	if c.Rotate != "" {
		prev := *s.ProducerKeys[c.Rotate]
		if prev.ExpiresAt.IsZero() || c.RotateUntil.Before(prev.ExpiresAt) {
			prev.ExpiresAt = c.RotateUntil
		}
		s.ProducerKeys[c.Rotate] = &prev
	}
}

// CreateKey adds an API key to an organization.
type CreateKey struct {
	Meta `json:"meta,omitzero"`
	Key  APIKey `json:"key"`
}

func (*CreateKey) cmdType() cmdType { return cmdCreateKey }
func (c *CreateKey) validate(s *State) error {
	if err := c.Key.check(); err != nil {
		return err
	}
	if _, ok := s.Orgs[c.Key.Org]; !ok {
		return fmt.Errorf("%w: organization %q", ErrNotFound, c.Key.Org)
	}
	if _, ok := s.Keys[c.Key.ID]; ok {
		return fmt.Errorf("%w: key %q exists", ErrConflict, c.Key.ID)
	}
	return nil
}
func (c *CreateKey) apply(s *State) {
	k := c.Key
	s.Keys[k.ID] = &k
}

// orgKey is API key id of org; another organization's key is not found,
// so the answer never tells one that the id exists.
func (s *State) orgKey(org, id string) (*APIKey, error) {
	k, ok := s.Keys[id]
	if !ok || k.Org != org {
		return nil, fmt.Errorf("%w: key %q", ErrNotFound, id)
	}
	return k, nil
}

// RevokeKey ends a key at At; a revoked key stays listed.
type RevokeKey struct {
	Meta `json:"meta,omitzero"`
	ID   string    `json:"id"`
	Org  string    `json:"org"`
	At   time.Time `json:"at"`
}

func (*RevokeKey) cmdType() cmdType { return cmdRevokeKey }
func (c *RevokeKey) validate(s *State) error {
	k, err := s.orgKey(c.Org, c.ID)
	if err != nil {
		return err
	}
	if c.At.IsZero() {
		return invalid("at is required")
	}
	if !k.RevokedAt.IsZero() {
		return fmt.Errorf("%w: key %q is already revoked", ErrConflict, c.ID)
	}
	return nil
}
func (c *RevokeKey) apply(s *State) {
	k := *s.Keys[c.ID] // copy: readers may hold the old value
	k.RevokedAt = c.At
	s.Keys[c.ID] = &k
}

func (c *SetMember) audit() (string, string, string) { return "cluster.member_address", "", c.ID }
func (c *PutOrg) audit() (string, string, string) {
	if c.Create {
		return "org.create", c.Org.ID, c.Org.ID
	}
	return "org.update", c.Org.ID, c.Org.ID
}
func (c *CreateKey) audit() (string, string, string) { return "api_key.create", c.Key.Org, c.Key.ID }
func (c *RevokeKey) audit() (string, string, string) { return "api_key.revoke", c.Org, c.ID }
func (c *PutPlan) audit() (string, string, string)   { return "plan.put", "", c.Plan.ID }
func (c *PutProducerKey) audit() (string, string, string) {
	switch {
	case c.Rotate != "":
		return "producer_key.rotate", c.Key.Org, c.Key.ID
	case c.Create:
		return "producer_key.create", c.Key.Org, c.Key.ID
	}
	return "producer_key.revoke", c.Key.Org, c.Key.ID
}
