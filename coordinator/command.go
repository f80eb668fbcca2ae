package coordinator

import (
	"fmt"
	"time"

	"github.com/go-json-experiment/json"
)

// A log entry is one type byte followed by the command's JSON, so an
// unknown type is refused without guessing at its body, and a new command
// is one more registry entry.
type cmdType byte

const (
	cmdSetMember cmdType = 1
	cmdPutOrg    cmdType = 2
	cmdCreateKey cmdType = 3
	cmdRevokeKey cmdType = 4
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
	cmdSetMember: func() Command { return new(SetMember) },
	cmdPutOrg:    func() Command { return new(PutOrg) },
	cmdCreateKey: func() Command { return new(CreateKey) },
	cmdRevokeKey: func() Command { return new(RevokeKey) },
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
	return nil
}
func (c *PutOrg) apply(s *State) {
	o := c.Org
	s.Orgs[o.ID] = &o
}

// CreateKey adds an API key to an organization.
type CreateKey struct {
	Key APIKey `json:"key"`
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

// RevokeKey ends a key at At; a revoked key stays listed.
type RevokeKey struct {
	ID  string    `json:"id"`
	Org string    `json:"org"`
	At  time.Time `json:"at"`
}

func (*RevokeKey) cmdType() cmdType { return cmdRevokeKey }
func (c *RevokeKey) validate(s *State) error {
	k, ok := s.Keys[c.ID]
	if !ok || k.Org != c.Org {
		return fmt.Errorf("%w: key %q", ErrNotFound, c.ID)
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
