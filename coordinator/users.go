package coordinator

import (
	"fmt"
	"net/mail"
	"slices"
	"strings"
	"time"
)

// Roles a user holds in an organization.
const (
	RoleOwner     = "owner"
	RoleAdmin     = "admin"
	RoleDeveloper = "developer"
	RoleViewer    = "viewer"
	RoleBilling   = "billing"
)

// Roles lists every role.
var Roles = []string{RoleOwner, RoleAdmin, RoleDeveloper, RoleViewer, RoleBilling}

// Lockout: this many wrong passwords in a row lock an account for
// LockoutFor.
const (
	MaxFailedLogins = 5
	LockoutFor      = 15 * time.Minute
)

// User is a person who signs in. The password hash is kept apart
// (State.Passwords) so the state other tiers copy never holds it.
type User struct {
	ID                string    `json:"id"`
	Email             string    `json:"email"` // lower case; unique
	Name              string    `json:"name,omitempty"`
	CreatedAt         time.Time `json:"created_at"`
	PasswordChangedAt time.Time `json:"password_changed_at,omitzero"`
	FailedLogins      int       `json:"failed_logins,omitempty"`
	LockedUntil       time.Time `json:"locked_until,omitzero"`
}

// Membership gives a user a role in an organization.
type Membership struct {
	Org       string    `json:"org"`
	User      string    `json:"user"`
	Role      string    `json:"role"`
	CreatedAt time.Time `json:"created_at"`
}

func membershipKey(org, user string) string { return org + "/" + user }

// Invitation asks whoever holds its token to join an organization with a
// role, as the user with its email. Only the token's hash is kept.
type Invitation struct {
	ID         string    `json:"id"`
	Org        string    `json:"org"`
	Email      string    `json:"email"`
	Role       string    `json:"role"`
	Hash       string    `json:"hash"`
	InvitedBy  string    `json:"invited_by,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	ExpiresAt  time.Time `json:"expires_at"`
	AcceptedAt time.Time `json:"accepted_at,omitzero"`
	RevokedAt  time.Time `json:"revoked_at,omitzero"`
}

// ResetToken lets whoever holds it set a user's password once, before it
// expires. Kept by its hash.
type ResetToken struct {
	Hash      string    `json:"hash"`
	User      string    `json:"user"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	UsedAt    time.Time `json:"used_at,omitzero"`
}

// Session is a signed-in user's browser session, kept by its token's hash
// so every node (and other tiers' copies) can check the cookie.
type Session struct {
	Hash      string    `json:"hash"`
	User      string    `json:"user"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// NormalizeEmail lower-cases an address and checks it is a bare address.
func NormalizeEmail(e string) (string, error) {
	e = strings.ToLower(strings.TrimSpace(e))
	a, err := mail.ParseAddress(e)
	if err != nil || a.Address != e || len(e) > 254 {
		return "", invalid("email %q is not an address", e)
	}
	return e, nil
}

func checkRole(r string) error {
	if !slices.Contains(Roles, r) {
		return invalid("role %q: want one of %v", r, Roles)
	}
	return nil
}

// userByEmail finds a user by normalized email.
func (s *State) userByEmail(email string) *User {
	for _, u := range s.Users {
		if u.Email == email {
			return u
		}
	}
	return nil
}

// owners counts an organization's owners.
func (s *State) owners(org string) int {
	n := 0
	for _, m := range s.Memberships {
		if m.Org == org && m.Role == RoleOwner {
			n++
		}
	}
	return n
}

func (u *User) check() error {
	if !strings.HasPrefix(u.ID, "usr_") || !idPattern.MatchString(strings.ToLower(u.ID[4:])) {
		return invalid("user id %q", u.ID)
	}
	if e, err := NormalizeEmail(u.Email); err != nil || e != u.Email {
		return invalid("email %q must be a lower-case address", u.Email)
	}
	if len(u.Name) > 200 {
		return invalid("name over 200 bytes")
	}
	if u.CreatedAt.IsZero() {
		return invalid("created_at is required")
	}
	return nil
}

// CreateUser adds a user with a password hash (made by the proposer).
type CreateUser struct {
	Meta     `json:"meta,omitzero"`
	User     User   `json:"user"`
	Password string `json:"password"` // PHC string
}

func (*CreateUser) cmdType() cmdType { return cmdCreateUser }
func (c *CreateUser) validate(s *State) error {
	if err := c.User.check(); err != nil {
		return err
	}
	if !strings.HasPrefix(c.Password, "$argon2id$") {
		return invalid("password must be an argon2id hash")
	}
	if _, ok := s.Users[c.User.ID]; ok || s.userByEmail(c.User.Email) != nil {
		return fmt.Errorf("%w: a user with this id or email exists", ErrConflict)
	}
	return nil
}
func (c *CreateUser) apply(s *State) {
	u := c.User
	s.Users[u.ID] = &u
	s.Passwords[u.ID] = c.Password
}
func (c *CreateUser) audit() (string, string, string) { return "user.create", "", c.User.ID }

// PutMembership gives a user a role in an organization, changes it, or
// (Delete) ends it. An organization with owners keeps at least one.
type PutMembership struct {
	Meta       `json:"meta,omitzero"`
	Membership Membership `json:"membership"`
	Delete     bool       `json:"delete,omitempty"`
}

func (*PutMembership) cmdType() cmdType { return cmdPutMembership }
func (c *PutMembership) validate(s *State) error {
	m := c.Membership
	if _, ok := s.Orgs[m.Org]; !ok {
		return fmt.Errorf("%w: organization %q", ErrNotFound, m.Org)
	}
	if _, ok := s.Users[m.User]; !ok {
		return fmt.Errorf("%w: user %q", ErrNotFound, m.User)
	}
	old := s.Memberships[membershipKey(m.Org, m.User)]
	if c.Delete {
		if old == nil {
			return fmt.Errorf("%w: user %q is not a member", ErrNotFound, m.User)
		}
	} else {
		if err := checkRole(m.Role); err != nil {
			return err
		}
		if m.CreatedAt.IsZero() {
			return invalid("created_at is required")
		}
	}
	if old != nil && old.Role == RoleOwner && (c.Delete || m.Role != RoleOwner) && s.owners(m.Org) == 1 {
		return fmt.Errorf("%w: an organization keeps at least one owner", ErrConflict)
	}
	return nil
}
func (c *PutMembership) apply(s *State) {
	m := c.Membership
	k := membershipKey(m.Org, m.User)
	if c.Delete {
		delete(s.Memberships, k)
		return
	}
	if old := s.Memberships[k]; old != nil {
		m.CreatedAt = old.CreatedAt
	}
	s.Memberships[k] = &m
}
func (c *PutMembership) audit() (string, string, string) {
	if c.Delete {
		return "member.remove", c.Membership.Org, c.Membership.User
	}
	return "member.put:" + c.Membership.Role, c.Membership.Org, c.Membership.User
}

// PutInvitation creates an invitation, or replaces one (its revocation).
type PutInvitation struct {
	Meta       `json:"meta,omitzero"`
	Invitation Invitation `json:"invitation"`
	Create     bool       `json:"create,omitempty"`
}

func (*PutInvitation) cmdType() cmdType { return cmdPutInvitation }
func (c *PutInvitation) validate(s *State) error {
	in := c.Invitation
	if !strings.HasPrefix(in.ID, "inv_") || !hashPattern.MatchString(in.Hash) {
		return invalid("invitation id and hash")
	}
	if _, ok := s.Orgs[in.Org]; !ok {
		return fmt.Errorf("%w: organization %q", ErrNotFound, in.Org)
	}
	if e, err := NormalizeEmail(in.Email); err != nil || e != in.Email {
		return invalid("email %q", in.Email)
	}
	if err := checkRole(in.Role); err != nil {
		return err
	}
	if !in.ExpiresAt.After(in.CreatedAt) {
		return invalid("expires_at must be after created_at")
	}
	old, exists := s.Invitations[in.ID]
	switch {
	case c.Create && exists:
		return fmt.Errorf("%w: invitation exists", ErrConflict)
	case !c.Create && (!exists || old.Org != in.Org):
		return fmt.Errorf("%w: invitation %q", ErrNotFound, in.ID)
	case !c.Create && (old.Hash != in.Hash || !old.AcceptedAt.IsZero()):
		return fmt.Errorf("%w: invitation %q was accepted or cannot change so", ErrConflict, in.ID)
	}
	return nil
}
func (c *PutInvitation) apply(s *State) {
	in := c.Invitation
	s.Invitations[in.ID] = &in
}
func (c *PutInvitation) audit() (string, string, string) {
	if c.Create {
		return "invitation.create:" + c.Invitation.Role, c.Invitation.Org, c.Invitation.ID
	}
	return "invitation.revoke", c.Invitation.Org, c.Invitation.ID
}

// AcceptInvitation makes the invitation's holder a member: a new user
// (NewUser, with Password) or the existing user with the invited email.
type AcceptInvitation struct {
	Meta     `json:"meta,omitzero"`
	Hash     string `json:"hash"`
	Org      string `json:"org"` // the invitation's, for the audit trail
	NewUser  *User  `json:"new_user,omitempty"`
	Password string `json:"password,omitempty"`
}

func (*AcceptInvitation) cmdType() cmdType { return cmdAcceptInvitation }

// invitationByHash finds an invitation by its token's hash.
func (s *State) invitationByHash(hash string) *Invitation {
	for _, in := range s.Invitations {
		if in.Hash == hash {
			return in
		}
	}
	return nil
}

func (c *AcceptInvitation) validate(s *State) error {
	in := s.invitationByHash(c.Hash)
	at := c.Meta.At
	switch {
	case in == nil || at.IsZero():
		return fmt.Errorf("%w: no such invitation", ErrNotFound)
	case !in.AcceptedAt.IsZero() || !in.RevokedAt.IsZero() || !at.Before(in.ExpiresAt):
		return fmt.Errorf("%w: the invitation was used, revoked or has expired", ErrGone)
	case in.Org != c.Org:
		return invalid("org does not match the invitation's")
	}
	if _, ok := s.Orgs[in.Org]; !ok {
		return fmt.Errorf("%w: organization %q", ErrNotFound, in.Org)
	}
	existing := s.userByEmail(in.Email)
	if c.NewUser == nil {
		if existing == nil {
			return invalid("no user has the invited email yet: give a name and password")
		}
		if s.Memberships[membershipKey(in.Org, existing.ID)] != nil {
			return fmt.Errorf("%w: already a member", ErrConflict)
		}
		return nil
	}
	if existing != nil {
		return fmt.Errorf("%w: a user has this email: sign in to accept", ErrConflict)
	}
	if err := c.NewUser.check(); err != nil {
		return err
	}
	if c.NewUser.Email != in.Email {
		return invalid("the invitation is for another email")
	}
	if _, ok := s.Users[c.NewUser.ID]; ok || !strings.HasPrefix(c.Password, "$argon2id$") {
		return invalid("new user id or password hash")
	}
	return nil
}
func (c *AcceptInvitation) apply(s *State) {
	in := *s.invitationByHash(c.Hash)
	user := s.userByEmail(in.Email)
	if c.NewUser != nil {
		u := *c.NewUser
		s.Users[u.ID], s.Passwords[u.ID] = &u, c.Password
		user = &u
	}
	s.Memberships[membershipKey(in.Org, user.ID)] = &Membership{Org: in.Org, User: user.ID, Role: in.Role, CreatedAt: c.Meta.At}
	in.AcceptedAt = c.Meta.At
	s.Invitations[in.ID] = &in
}
func (c *AcceptInvitation) audit() (string, string, string) { return "invitation.accept", c.Org, "" }

// PutResetToken records a password reset token.
type PutResetToken struct {
	Meta  `json:"meta,omitzero"`
	Token ResetToken `json:"token"`
}

func (*PutResetToken) cmdType() cmdType { return cmdPutResetToken }
func (c *PutResetToken) validate(s *State) error {
	t := c.Token
	if !hashPattern.MatchString(t.Hash) || !t.ExpiresAt.After(t.CreatedAt) || !t.UsedAt.IsZero() {
		return invalid("reset token")
	}
	if _, ok := s.Users[t.User]; !ok {
		return fmt.Errorf("%w: user %q", ErrNotFound, t.User)
	}
	if _, ok := s.ResetTokens[t.Hash]; ok {
		return fmt.Errorf("%w: token exists", ErrConflict)
	}
	return nil
}
func (c *PutResetToken) apply(s *State) {
	t := c.Token
	s.ResetTokens[t.Hash] = &t
	s.prune(t.CreatedAt)
}
func (c *PutResetToken) audit() (string, string, string) {
	return "user.password_reset_issued", "", c.Token.User
}

// ResetPassword uses a reset token once: it sets the password, unlocks
// the account and ends every session of the user.
type ResetPassword struct {
	Meta     `json:"meta,omitzero"`
	Hash     string `json:"hash"`
	Password string `json:"password"`
}

func (*ResetPassword) cmdType() cmdType { return cmdResetPassword }
func (c *ResetPassword) validate(s *State) error {
	if err := s.checkResetToken(c.Hash, c.Meta.At); err != nil {
		return err
	}
	if !strings.HasPrefix(c.Password, "$argon2id$") {
		return invalid("password must be an argon2id hash")
	}
	return nil
}

// checkResetToken reports whether the token with hash may be used at at.
func (s *State) checkResetToken(hash string, at time.Time) error {
	t := s.ResetTokens[hash]
	switch {
	case t == nil || at.IsZero():
		return fmt.Errorf("%w: no such reset token", ErrNotFound)
	case !t.UsedAt.IsZero() || !at.Before(t.ExpiresAt):
		return fmt.Errorf("%w: the reset token was used or has expired", ErrGone)
	}
	if _, ok := s.Users[t.User]; !ok {
		return fmt.Errorf("%w: user %q", ErrNotFound, t.User)
	}
	return nil
}
func (c *ResetPassword) apply(s *State) {
	t := *s.ResetTokens[c.Hash]
	t.UsedAt = c.Meta.At
	s.ResetTokens[c.Hash] = &t
	u := *s.Users[t.User]
	u.PasswordChangedAt, u.FailedLogins, u.LockedUntil = c.Meta.At, 0, time.Time{}
	s.Users[u.ID], s.Passwords[u.ID] = &u, c.Password
	for h, ss := range s.Sessions {
		if ss.User == u.ID {
			delete(s.Sessions, h)
		}
	}
}
func (c *ResetPassword) audit() (string, string, string) { return "user.password_reset", "", "" }

// Login records a sign-in attempt: a session when the password was right
// (checked by the proposer), else one more failure, which locks the
// account after MaxFailedLogins in a row.
type Login struct {
	Meta    `json:"meta,omitzero"`
	User    string   `json:"user"`
	Session *Session `json:"session,omitempty"`
}

func (*Login) cmdType() cmdType { return cmdLogin }
func (c *Login) validate(s *State) error {
	if _, ok := s.Users[c.User]; !ok {
		return fmt.Errorf("%w: user %q", ErrNotFound, c.User)
	}
	if c.Meta.At.IsZero() {
		return invalid("meta.at is required")
	}
	if ss := c.Session; ss != nil {
		if !hashPattern.MatchString(ss.Hash) || ss.User != c.User || !ss.ExpiresAt.After(ss.CreatedAt) {
			return invalid("session")
		}
		if _, ok := s.Sessions[ss.Hash]; ok {
			return fmt.Errorf("%w: session exists", ErrConflict)
		}
	}
	return nil
}
func (c *Login) apply(s *State) {
	u := *s.Users[c.User]
	if c.Session == nil {
		u.FailedLogins++
		if u.FailedLogins >= MaxFailedLogins {
			u.FailedLogins, u.LockedUntil = 0, c.Meta.At.Add(LockoutFor)
		}
	} else {
		u.FailedLogins, u.LockedUntil = 0, time.Time{}
		ss := *c.Session
		s.Sessions[ss.Hash] = &ss
	}
	s.Users[u.ID] = &u
	s.prune(c.Meta.At)
}
func (c *Login) audit() (string, string, string) {
	if c.Session == nil {
		return "user.login_failed", "", c.User
	}
	return "user.login", "", c.User
}

// EndSession signs a session out.
type EndSession struct {
	Meta `json:"meta,omitzero"`
	Hash string `json:"hash"`
}

func (*EndSession) cmdType() cmdType { return cmdEndSession }
func (c *EndSession) validate(s *State) error {
	if _, ok := s.Sessions[c.Hash]; !ok {
		return fmt.Errorf("%w: no such session", ErrNotFound)
	}
	return nil
}
func (c *EndSession) apply(s *State)                  { delete(s.Sessions, c.Hash) }
func (c *EndSession) audit() (string, string, string) { return "user.logout", "", "" }

// prune drops sessions and tokens that ended before at (a day before,
// for tokens, so a late use still gets "expired" rather than "unknown").
// It runs inside apply with the command's time, so every node prunes
// alike.
func (s *State) prune(at time.Time) {
	for h, ss := range s.Sessions {
		if !at.Before(ss.ExpiresAt) {
			delete(s.Sessions, h)
		}
	}
	old := at.Add(-24 * time.Hour)
	for h, t := range s.ResetTokens {
		if t.ExpiresAt.Before(old) {
			delete(s.ResetTokens, h)
		}
	}
	for id, in := range s.Invitations {
		if in.ExpiresAt.Before(old.Add(-30 * 24 * time.Hour)) {
			delete(s.Invitations, id)
		}
	}
}

// Users, memberships, invitations, resets and sessions are the
// coordinator's own: other tiers' copies do not change with them.
func (*CreateUser) coordinatorOnly()       {}
func (*PutMembership) coordinatorOnly()    {}
func (*PutInvitation) coordinatorOnly()    {}
func (*AcceptInvitation) coordinatorOnly() {}
func (*PutResetToken) coordinatorOnly()    {}
func (*ResetPassword) coordinatorOnly()    {}
func (*Login) coordinatorOnly()            {}
func (*EndSession) coordinatorOnly()       {}
