package coordinator

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/base64"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/certnode/certnode/internal/brand"
	"github.com/certnode/certnode/internal/tenants"
)

// Token lifetimes.
const (
	InvitationTTL = 7 * 24 * time.Hour
	ResetTTL      = time.Hour
)

// newToken makes a random secret with a prefix saying what it is.
func newToken(prefix string) (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return prefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// newID makes a random id: prefix and 20 lower-case letters or digits.
func newID(prefix string) (string, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return prefix + base32Lower.EncodeToString(b[:]), nil
}

var base32Lower = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// userView is a user as the API shows them.
type userView struct {
	ID          string           `json:"id"`
	Email       string           `json:"email"`
	Name        string           `json:"name,omitempty"`
	CreatedAt   time.Time        `json:"created_at"`
	LockedUntil time.Time        `json:"locked_until,omitzero"`
	Memberships []membershipView `json:"memberships"`
}

type membershipView struct {
	Org       string    `json:"org"`
	User      string    `json:"user"`
	Email     string    `json:"email,omitempty"`
	Name      string    `json:"name,omitempty"`
	Role      string    `json:"role"`
	CreatedAt time.Time `json:"created_at"`
}

func (st *State) userView(u *User) userView {
	v := userView{ID: u.ID, Email: u.Email, Name: u.Name, CreatedAt: u.CreatedAt, LockedUntil: u.LockedUntil, Memberships: []membershipView{}}
	for _, m := range st.Memberships {
		if m.User == u.ID {
			v.Memberships = append(v.Memberships, membershipView{Org: m.Org, User: m.User, Role: m.Role, CreatedAt: m.CreatedAt})
		}
	}
	slices.SortFunc(v.Memberships, func(a, b membershipView) int { return strings.Compare(a.Org, b.Org) })
	return v
}

// newUser checks a new user's fields and hashes the password.
func newUser(ctx context.Context, email, name, password string) (User, string, error) {
	email, err := NormalizeEmail(email)
	if err != nil {
		return User{}, "", err
	}
	phc, err := HashPassword(ctx, password)
	if err != nil {
		return User{}, "", err
	}
	id, err := newID("usr_")
	if err != nil {
		return User{}, "", err
	}
	return User{ID: id, Email: email, Name: name, CreatedAt: time.Now().UTC()}, phc, nil
}

func (s *Server) createUser(w http.ResponseWriter, r *http.Request, body []byte) {
	var b struct {
		Email    string `json:"email"`
		Name     string `json:"name"`
		Password string `json:"password"`
	}
	if err := decodeBody(body, &b); err != nil {
		s.fail(w, err)
		return
	}
	u, phc, err := newUser(r.Context(), b.Email, b.Name, b.Password)
	if err != nil {
		s.fail(w, err)
		return
	}
	s.write(w, r, body, &CreateUser{User: u, Password: phc}, http.StatusCreated,
		userView{ID: u.ID, Email: u.Email, Name: u.Name, CreatedAt: u.CreatedAt, Memberships: []membershipView{}})
}

func (s *Server) listUsers(w http.ResponseWriter, _ *http.Request, _ []byte) {
	out := []userView{}
	s.node.fsm.View(func(st *State) {
		for _, u := range st.Users {
			out = append(out, st.userView(u))
		}
	})
	slices.SortFunc(out, func(a, b userView) int { return strings.Compare(a.Email, b.Email) })
	writeJSON(w, http.StatusOK, map[string]any{"users": out})
}

// issueReset makes a single-use password reset token for a user, shown
// once, for the operator to hand over.
func (s *Server) issueReset(w http.ResponseWriter, r *http.Request, body []byte) {
	token, err := newToken("cnr_")
	if err != nil {
		s.fail(w, err)
		return
	}
	now := time.Now().UTC()
	t := ResetToken{Hash: HashKey(token), User: r.PathValue("user"), CreatedAt: now, ExpiresAt: now.Add(ResetTTL)}
	s.write(w, r, body, &PutResetToken{Token: t}, http.StatusCreated, map[string]any{"user": t.User, "token": token, "expires_at": t.ExpiresAt})
}

func (s *Server) resetPassword(w http.ResponseWriter, r *http.Request, body []byte) {
	var b struct {
		Token    string `json:"token"`
		Password string `json:"password"`
	}
	if err := decodeBody(body, &b); err != nil {
		s.fail(w, err)
		return
	}
	// The token is checked before the costly hashing, so a guessed token
	// costs nothing; the FSM checks it again.
	c := &ResetPassword{Meta: Meta{At: time.Now().UTC()}, Hash: HashKey(b.Token)}
	var err error
	s.node.fsm.View(func(st *State) { err = st.checkResetToken(c.Hash, c.Meta.At) })
	if err == nil {
		c.Password, err = HashPassword(r.Context(), b.Password)
	}
	if err != nil {
		s.fail(w, err)
		return
	}
	s.write(w, r, body, c, http.StatusNoContent, nil)
}

// login checks a password on the leader and records the outcome: a
// session (cookie, and its CSRF token in the answer) or a failure, which
// counts toward the lockout. An unknown email costs the same hashing as a
// wrong password and gets the same answer.
func (s *Server) login(w http.ResponseWriter, r *http.Request, body []byte) {
	var b struct {
		Email    string `json:"email"`
		Password string `json:"password"`
	}
	if err := decodeBody(body, &b); err != nil {
		s.fail(w, err)
		return
	}
	email, _ := NormalizeEmail(b.Email)
	var id string
	s.node.fsm.View(func(st *State) {
		if p := st.userByEmail(email); p != nil {
			id = p.ID
		}
	})
	if id == "" {
		if _, err := VerifyPassword(r.Context(), dummyHash(), b.Password); err != nil {
			s.fail(w, err)
			return
		}
		s.recordRefusal(r, "", "invalid_credentials")
		writeError(w, http.StatusUnauthorized, "invalid_credentials", "wrong email or password")
		return
	}
	u, ok := s.checkPassword(w, r, id, b.Password)
	if !ok {
		return
	}
	now := time.Now().UTC()
	token, err := newToken("cns_")
	if err != nil {
		s.fail(w, err)
		return
	}
	ss := &Session{Hash: HashKey(token), User: u.ID, CreatedAt: now, ExpiresAt: now.Add(SessionTTL)}
	if !s.commit(w, r, &Login{Meta: Meta{At: now}, User: u.ID, Session: ss}) {
		return
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: token, Path: "/", HttpOnly: true, Secure: secureRequest(r),
		SameSite: http.SameSiteStrictMode, Expires: ss.ExpiresAt, MaxAge: int(SessionTTL / time.Second)})
	var v userView
	s.node.fsm.View(func(st *State) { v = st.userView(&u) })
	writeJSON(w, http.StatusOK, map[string]any{"user": v, "csrf_token": csrfToken(token), "expires_at": ss.ExpiresAt})
}

// checkPassword checks a user's password, refusing a locked account and
// recording a wrong password toward the lockout; it answers refusals
// itself. Checks of one user's password run one at a time, each reading
// the state the previous one left, so concurrent guesses cannot all pass
// the lockout check before any failure is recorded.
func (s *Server) checkPassword(w http.ResponseWriter, r *http.Request, userID, password string) (User, bool) {
	mu, _ := s.pwLocks.LoadOrStore(userID, new(sync.Mutex))
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()
	var u User
	var phc string
	s.node.fsm.View(func(st *State) {
		if p := st.Users[userID]; p != nil {
			u, phc = *p, st.Passwords[userID]
		}
	})
	now := time.Now().UTC()
	if now.Before(u.LockedUntil) {
		w.Header().Set("Retry-After", strconv.Itoa(int(u.LockedUntil.Sub(now)/time.Second)+1))
		s.refuse(w, r, http.StatusTooManyRequests, "account_locked",
			fmt.Sprintf("too many failed sign-ins: the account is locked until %s", u.LockedUntil.Format(time.RFC3339)))
		return u, false
	}
	ok, err := VerifyPassword(r.Context(), phc, password)
	if err != nil {
		s.fail(w, err)
		return u, false
	}
	if !ok && s.commit(w, r, &Login{Meta: Meta{At: now}, User: u.ID}) {
		s.refuse(w, r, http.StatusUnauthorized, "invalid_credentials", "wrong email or password")
	}
	return u, ok
}

// secureRequest reports whether the client reached us over TLS, directly
// or through a proxy that says so.
func secureRequest(r *http.Request) bool {
	return r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https"
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request, _ []byte) {
	p := principalOf(r)
	if !s.commit(w, r, &EndSession{Hash: HashKey(p.session)}) {
		return
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", HttpOnly: true, Secure: secureRequest(r),
		SameSite: http.SameSiteStrictMode, MaxAge: -1})
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) me(w http.ResponseWriter, r *http.Request, _ []byte) {
	p := principalOf(r)
	var v userView
	s.node.fsm.View(func(st *State) { v = st.userView(st.Users[p.userID]) })
	writeJSON(w, http.StatusOK, map[string]any{"user": v, "csrf_token": csrfToken(p.session)})
}

// orgView is an organization as its own users see it: no plan history.
type orgView struct {
	ID       string         `json:"id"`
	Name     string         `json:"name"`
	Status   string         `json:"status"`
	Plan     string         `json:"plan"`
	Settings OrgSettings    `json:"settings"`
	Limits   tenants.Limits `json:"limits"` // in effect: the plan's with overrides
	// Maintenance is set while maintenance mode is on.
	Maintenance *brand.Maintenance `json:"maintenance,omitempty"`
	CreatedAt   time.Time          `json:"created_at"`
	UpdatedAt   time.Time          `json:"updated_at"`
	Role        string             `json:"role"` // the caller's
}

func orgViewOf(o *Org, role string) orgView {
	return orgView{ID: o.ID, Name: o.Name, Status: o.Status, Plan: o.Plan, Settings: o.Settings,
		Limits: o.EffectiveLimits(), Maintenance: o.Maintenance, CreatedAt: o.CreatedAt, UpdatedAt: o.UpdatedAt, Role: role}
}

func (s *Server) orgView(w http.ResponseWriter, _ *http.Request, sc scope, _ []byte) {
	o, _ := s.org(sc.org)
	writeJSON(w, http.StatusOK, orgViewOf(&o, sc.role))
}

// updateOrgSettings lets an organization change its name and settings;
// status, plan and limits are the operator's.
func (s *Server) updateOrgSettings(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	var b struct {
		Name     *string      `json:"name"`
		Settings *OrgSettings `json:"settings"`
	}
	if err := decodeBody(body, &b); err != nil {
		s.fail(w, err)
		return
	}
	s.patchOrg(w, r, body, sc.org, OrgPatch{Name: b.Name, Settings: b.Settings}, func(o *Org) any { return orgViewOf(o, sc.role) })
}

func (s *Server) listMembers(w http.ResponseWriter, _ *http.Request, sc scope, _ []byte) {
	out := []membershipView{}
	s.node.fsm.View(func(st *State) {
		for _, m := range st.Memberships {
			if m.Org == sc.org {
				u := st.Users[m.User]
				out = append(out, membershipView{Org: m.Org, User: m.User, Email: u.Email, Name: u.Name, Role: m.Role, CreatedAt: m.CreatedAt})
			}
		}
	})
	slices.SortFunc(out, func(a, b membershipView) int { return strings.Compare(a.Email, b.Email) })
	writeJSON(w, http.StatusOK, map[string]any{"members": out})
}

// member finds a membership of the scope's organization.
func (s *Server) member(sc scope, user string) (Membership, bool) {
	var m Membership
	var ok bool
	s.node.fsm.View(func(st *State) {
		if p := st.Memberships[membershipKey(sc.org, user)]; p != nil {
			m, ok = *p, true
		}
	})
	return m, ok
}

// ownerOnly refuses a change that gives or takes the owner role to a
// caller who is not an owner.
func ownerOnly(w http.ResponseWriter, sc scope, roles ...string) bool {
	if sc.role != RoleOwner && slices.Contains(roles, RoleOwner) {
		writeError(w, http.StatusForbidden, "forbidden_role", "only an owner can give or take the owner role")
		return false
	}
	return true
}

// putMember sets a member's role. The operator may also add any user;
// an organization's own admins add people by invitation.
func (s *Server) putMember(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	var b struct {
		Role string `json:"role"`
	}
	if err := decodeBody(body, &b); err != nil {
		s.fail(w, err)
		return
	}
	old, exists := s.member(sc, r.PathValue("user"))
	if !exists && !principalOf(r).operator() {
		s.fail(w, fmt.Errorf("%w: user %q is not a member (invite them)", ErrNotFound, r.PathValue("user")))
		return
	}
	if !ownerOnly(w, sc, old.Role, b.Role) {
		return
	}
	m := Membership{Org: sc.org, User: r.PathValue("user"), Role: b.Role, CreatedAt: time.Now().UTC()}
	if exists {
		m.CreatedAt = old.CreatedAt // the FSM keeps it: answer what is kept
	}
	s.write(w, r, body, &PutMembership{Membership: m}, http.StatusOK, membershipView{Org: m.Org, User: m.User, Role: m.Role, CreatedAt: m.CreatedAt})
}

func (s *Server) removeOrgMember(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	old, exists := s.member(sc, r.PathValue("user"))
	if !exists {
		s.fail(w, fmt.Errorf("%w: user %q is not a member", ErrNotFound, r.PathValue("user")))
		return
	}
	if !ownerOnly(w, sc, old.Role) {
		return
	}
	s.write(w, r, body, &PutMembership{Membership: old, Delete: true}, http.StatusNoContent, nil)
}

// invitationView is an invitation as listed; the token appears only in
// the answer that creates it.
type invitationView struct {
	ID         string    `json:"id"`
	Org        string    `json:"org"`
	Email      string    `json:"email"`
	Role       string    `json:"role"`
	InvitedBy  string    `json:"invited_by,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	ExpiresAt  time.Time `json:"expires_at"`
	AcceptedAt time.Time `json:"accepted_at,omitzero"`
	RevokedAt  time.Time `json:"revoked_at,omitzero"`
	Token      string    `json:"token,omitempty"`
}

func invitationViewOf(in *Invitation) invitationView {
	return invitationView{ID: in.ID, Org: in.Org, Email: in.Email, Role: in.Role, InvitedBy: in.InvitedBy,
		CreatedAt: in.CreatedAt, ExpiresAt: in.ExpiresAt, AcceptedAt: in.AcceptedAt, RevokedAt: in.RevokedAt}
}

func (s *Server) invite(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	var b struct {
		Email string `json:"email"`
		Role  string `json:"role"`
		// SendEmail mails the invitation (its token only in the email)
		// instead of answering the token.
		SendEmail bool `json:"send_email"`
	}
	if err := decodeBody(body, &b); err != nil {
		s.fail(w, err)
		return
	}
	email, err := NormalizeEmail(b.Email)
	if err != nil {
		s.fail(w, err)
		return
	}
	if !ownerOnly(w, sc, b.Role) {
		return
	}
	token, err1 := newToken("cni_")
	id, err2 := newToken("inv_")
	if err1 != nil || err2 != nil {
		s.fail(w, fmt.Errorf("random: %v %v", err1, err2))
		return
	}
	p, now := principalOf(r), time.Now().UTC()
	in := Invitation{ID: id[:4+16], Org: sc.org, Email: email, Role: b.Role, Hash: HashKey(token), InvitedBy: p.actor.Kind + ":" + p.actor.ID,
		CreatedAt: now, ExpiresAt: now.Add(InvitationTTL)}
	if b.SendEmail {
		s.inviteByEmail(w, r, body, in, s.inviterName(p))
		return
	}
	v := invitationViewOf(&in)
	v.Token = token
	s.write(w, r, body, &PutInvitation{Invitation: in, Create: true}, http.StatusCreated, v)
}

func (s *Server) listInvitations(w http.ResponseWriter, _ *http.Request, sc scope, _ []byte) {
	out := ownedList(s, sc, invitationsOf, func(_ *State, in *Invitation) invitationView { return invitationViewOf(in) })
	writeJSON(w, http.StatusOK, map[string]any{"invitations": out})
}

func (s *Server) revokeInvitation(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	in, ok := owned(s, sc, invitationsOf, r.PathValue("id"))
	if !ok {
		s.fail(w, fmt.Errorf("%w: invitation %q", ErrNotFound, r.PathValue("id")))
		return
	}
	if !in.RevokedAt.IsZero() {
		s.fail(w, fmt.Errorf("%w: invitation %q is already revoked", ErrConflict, in.ID))
		return
	}
	in.RevokedAt = time.Now().UTC()
	s.write(w, r, body, &PutInvitation{Invitation: in}, http.StatusNoContent, nil)
}

// acceptInvitation joins the invited organization: as a new user (name
// and password), or as the existing user with the invited email, who
// proves it with their password.
func (s *Server) acceptInvitation(w http.ResponseWriter, r *http.Request, body []byte) {
	var b struct {
		Token    string `json:"token"`
		Name     string `json:"name"`
		Password string `json:"password"`
	}
	if err := decodeBody(body, &b); err != nil {
		s.fail(w, err)
		return
	}
	hash, now := HashKey(b.Token), time.Now().UTC()
	var in Invitation
	var existing *User
	s.node.fsm.View(func(st *State) {
		if p := st.invitationByHash(hash); p != nil {
			in = *p
			existing = st.userByEmail(in.Email)
		}
	})
	if in.ID == "" {
		s.fail(w, fmt.Errorf("%w: no such invitation", ErrNotFound))
		return
	}
	c := &AcceptInvitation{Meta: Meta{At: now}, Hash: hash, Org: in.Org}
	if existing != nil {
		// The password proves the invited user is the existing one; it
		// counts toward the lockout as a sign-in does.
		if _, ok := s.checkPassword(w, r, existing.ID, b.Password); !ok {
			return
		}
	} else {
		u, newPHC, err := newUser(r.Context(), in.Email, b.Name, b.Password)
		if err != nil {
			s.fail(w, err)
			return
		}
		c.NewUser, c.Password = &u, newPHC
	}
	s.write(w, r, body, c, http.StatusCreated, map[string]any{"org": in.Org, "role": in.Role, "email": in.Email})
}

// auditPage answers a page of events that keep: events after ?after=
// (a seq), at most ?limit= (default 100, at most 1000).
func (s *Server) auditPage(w http.ResponseWriter, r *http.Request, keep func(*AuditEvent) bool) {
	q := r.URL.Query()
	var after uint64
	limit := 100
	var err error
	if v := q.Get("after"); v != "" {
		if after, err = strconv.ParseUint(v, 10, 64); err != nil {
			s.fail(w, invalid("after %q: a sequence number", v))
			return
		}
	}
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > 1000 {
			s.fail(w, invalid("limit %q: 1 to 1000", v))
			return
		}
	}
	out := []AuditEvent{}
	s.node.fsm.View(func(st *State) {
		i, _ := slices.BinarySearchFunc(st.Audit, after+1, func(e AuditEvent, seq uint64) int {
			return cmpUint(e.Seq, seq)
		})
		for ; i < len(st.Audit) && len(out) < limit; i++ {
			if keep(&st.Audit[i]) {
				out = append(out, st.Audit[i])
			}
		}
	})
	writeJSON(w, http.StatusOK, map[string]any{"events": out})
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (s *Server) orgAudit(w http.ResponseWriter, r *http.Request, sc scope, _ []byte) {
	s.auditPage(w, r, func(e *AuditEvent) bool { return e.Org == sc.org })
}

func (s *Server) adminAudit(w http.ResponseWriter, r *http.Request, _ []byte) {
	org := r.URL.Query().Get("org")
	s.auditPage(w, r, func(e *AuditEvent) bool { return org == "" || e.Org == org })
}
