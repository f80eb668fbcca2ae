package coordinator

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/certnode/certnode/internal/tenants"
)

// Who a request comes from, and what it may do, is decided here and only
// here: handlers of organization routes receive the organization the
// caller was checked against and never read it from the request again.

// SessionCookie carries a signed-in user's session token; CSRFHeader must
// repeat the session's CSRF token on every state-changing request.
const (
	SessionCookie = "certnode_session"
	CSRFHeader    = "X-CSRF-Token"
	SessionTTL    = 12 * time.Hour
	// clientAddrHeader and forwardAuthHeader carry the client's address
	// across a forward; the address is believed only with the node token.
	clientAddrHeader  = "Certnode-Client-Addr"
	forwardAuthHeader = "Certnode-Forward-Auth"
)

// principal is an authenticated caller.
type principal struct {
	actor   Actor
	refused string // why a known key may not be used here (its CIDR allow-list)
	userID  string // a signed-in user
	keyOrg  string // an API key's organization (the key has the admin scope)
	session string // the session token, for CSRF
}

func (p *principal) operator() bool { return p.actor.Kind == ActorOperator }

// Permissions of organization routes, and the roles that hold each.
const (
	permOrgRead           = "org.read"
	permOrgWrite          = "org.write"
	permMembersRead       = "members.read"
	permMembersWrite      = "members.write"
	permKeysRead          = "keys.read"
	permKeysWrite         = "keys.write"
	permProducerKeysRead  = "producer_keys.read"
	permProducerKeysWrite = "producer_keys.write"
	permAuditRead         = "audit.read"
	permWebhooksRead      = "webhooks.read"
	permWebhooksWrite     = "webhooks.write"
	permReportsRead       = "reports.read"
	permReportsWrite      = "reports.write"
	permDomainsRead       = "domains.read"
	permDomainsWrite      = "domains.write"
	permSigningKeysRead   = "signing_keys.read"
	permSigningKeysWrite  = "signing_keys.write"
)

var permissions = map[string][]string{
	permOrgRead:           Roles,
	permOrgWrite:          {RoleOwner, RoleAdmin},
	permMembersRead:       Roles,
	permMembersWrite:      {RoleOwner, RoleAdmin},
	permKeysRead:          {RoleOwner, RoleAdmin, RoleDeveloper, RoleViewer},
	permKeysWrite:         {RoleOwner, RoleAdmin, RoleDeveloper},
	permProducerKeysRead:  {RoleOwner, RoleAdmin, RoleDeveloper},
	permProducerKeysWrite: {RoleOwner, RoleAdmin},
	permAuditRead:         {RoleOwner, RoleAdmin},
	permWebhooksRead:      {RoleOwner, RoleAdmin, RoleDeveloper, RoleViewer},
	permWebhooksWrite:     {RoleOwner, RoleAdmin, RoleDeveloper},
	permReportsRead:       Roles,
	permReportsWrite:      {RoleOwner, RoleAdmin, RoleDeveloper},
	permDomainsRead:       Roles,
	permDomainsWrite:      {RoleOwner, RoleAdmin},
	permSigningKeysRead:   Roles,
	permSigningKeysWrite:  {RoleOwner, RoleAdmin},
}

// scope is what an organization route runs with: the organization the
// caller was checked against and the caller's role in it.
type scope struct {
	org  string
	role string
}

type principalKey struct{}

func principalOf(r *http.Request) *principal {
	p, _ := r.Context().Value(principalKey{}).(*principal)
	return p
}

// clientAddr is the caller's address: the one a forwarding node vouched
// for, else the connection's.
func (s *Server) clientAddr(r *http.Request) string {
	if a := r.Header.Get(clientAddrHeader); a != "" && s.nodeTokenOK(r.Header.Get(forwardAuthHeader)) {
		return a
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func (s *Server) nodeTokenOK(h string) bool {
	return subtle.ConstantTimeCompare([]byte(h), []byte("Bearer "+s.node.cfg.NodeToken)) == 1
}

// identify finds the caller: the operator (admin token), a node (node
// token), an organization's admin-scope API key, or a signed-in user
// (session cookie). nil: none of them.
func (s *Server) identify(r *http.Request) *principal {
	addr := s.clientAddr(r)
	if h := r.Header.Get("Authorization"); h != "" {
		switch {
		case subtle.ConstantTimeCompare([]byte(h), []byte("Bearer "+s.node.cfg.AdminToken)) == 1:
			return &principal{actor: Actor{Kind: ActorOperator, Addr: addr}}
		case s.nodeTokenOK(h):
			return &principal{actor: Actor{Kind: ActorNode, Addr: addr}}
		}
		key := strings.TrimSpace(strings.TrimPrefix(h, "Bearer "))
		id, _, _ := strings.Cut(key, ".")
		var p *principal
		now := time.Now()
		s.node.fsm.View(func(st *State) {
			k := st.Keys[id]
			if k == nil || subtle.ConstantTimeCompare([]byte(HashKey(key)), []byte(k.Hash)) != 1 || !k.RevokedAt.IsZero() ||
				(!k.ExpiresAt.IsZero() && !now.Before(k.ExpiresAt)) || !slices.Contains(k.Scopes, tenants.ScopeAdmin) {
				return
			}
			if o := st.Orgs[k.Org]; o == nil || o.Status != OrgActive {
				return
			}
			p = &principal{actor: Actor{Kind: ActorKey, ID: k.ID, Addr: addr}, keyOrg: k.Org}
			if !keyAllowsAddr(k.CIDRs, addr) {
				p.refused = "forbidden_address"
			}
		})
		return p
	}
	c, err := r.Cookie(SessionCookie)
	if err != nil || c.Value == "" {
		return nil
	}
	var p *principal
	hash, now := HashKey(c.Value), time.Now()
	s.node.fsm.View(func(st *State) {
		ss := st.Sessions[hash]
		if ss == nil || !now.Before(ss.ExpiresAt) || st.Users[ss.User] == nil {
			return
		}
		p = &principal{actor: Actor{Kind: ActorUser, ID: ss.User, Addr: addr}, userID: ss.User, session: c.Value}
	})
	return p
}

// keyAllowsAddr reports whether a key with the CIDR allow-list cidrs
// (none: anywhere) may be used from addr.
func keyAllowsAddr(cidrs []string, addr string) bool {
	if len(cidrs) == 0 {
		return true
	}
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return false
	}
	a = a.Unmap()
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil && p.Contains(a) {
			return true
		}
	}
	return false
}

// csrfToken is the CSRF token of a session: derived from its secret
// token, so any node checks it without storing it, and useless without
// the HttpOnly cookie.
func csrfToken(session string) string {
	m := hmac.New(sha256.New, []byte(session))
	m.Write([]byte("certnode csrf v1"))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// safeMethod reports whether a method changes nothing.
func safeMethod(m string) bool { return m == "GET" || m == "HEAD" || m == "OPTIONS" }

// csrfOK checks a session's state-changing request: the CSRF header must
// match, and a browser's Origin (when sent) must be this host.
func csrfOK(r *http.Request, p *principal) bool {
	if p.session == "" || safeMethod(r.Method) {
		return true
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return false
		}
	}
	return subtle.ConstantTimeCompare([]byte(r.Header.Get(CSRFHeader)), []byte(csrfToken(p.session))) == 1
}

type handler func(w http.ResponseWriter, r *http.Request, body []byte)

// orgHandler serves an organization route for a caller checked against sc.
type orgHandler func(w http.ResponseWriter, r *http.Request, sc scope, body []byte)

// readBody reads a bounded body.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, "too_large", "the body is over 1 MiB")
		return nil, false
	}
	return body, true
}

// authed serves h to callers of the kinds given, with the principal in
// the request's context; a session's writes must pass the CSRF check.
func (s *Server) authed(kinds ...string) func(handler) http.Handler {
	return func(h handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, ok := readBody(w, r)
			if !ok {
				return
			}
			p := s.identify(r)
			if p == nil && !s.node.IsLeader() && r.Header.Get(forwardedHeader) == "" &&
				(r.Header.Get("Authorization") != "" || r.Header.Get("Cookie") != "") {
				// A session or key made a moment ago may not have reached
				// this follower yet: the leader has it.
				s.forward(w, r, body)
				return
			}
			switch {
			case p == nil || !slices.Contains(kinds, p.actor.Kind):
				s.refuse(w, r, http.StatusUnauthorized, "unauthorized", "missing or wrong credentials")
				return
			case p.refused != "":
				s.refuse(w, r, http.StatusForbidden, p.refused, "this key may not be used from "+p.actor.Addr)
				return
			case !csrfOK(r, p):
				s.refuse(w, r, http.StatusForbidden, "csrf", "a state-changing request with a session needs the "+CSRFHeader+" header of that session, from this origin")
				return
			}
			r = r.WithContext(context.WithValue(r.Context(), principalKey{}, p))
			if !s.replay(w, r, body) {
				h(w, r, body)
			}
		})
	}
}

// anonymous serves h to anyone (sign-in, invitations, password reset).
func (s *Server) anonymous(h handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, ok := readBody(w, r)
		if !ok {
			return
		}
		p := &principal{actor: Actor{Kind: ActorAnonymous, Addr: s.clientAddr(r)}}
		h(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)), body)
	})
}

// inOrg checks the caller's role in the organization of the path against
// perm, and runs h with that organization. Someone with no role in it
// gets the 404 an organization that does not exist gets.
func (s *Server) inOrg(perm string, h orgHandler) handler {
	return func(w http.ResponseWriter, r *http.Request, body []byte) {
		org := r.PathValue("org")
		p := principalOf(r)
		role, suspended := s.roleIn(p, org)
		if role == "" {
			writeError(w, http.StatusNotFound, "not_found", "not found: organization "+org)
			return
		}
		if suspended && !p.operator() && !safeMethod(r.Method) {
			s.refuse(w, r, http.StatusForbidden, "org_suspended", "the organization is suspended: only the operator changes it")
			return
		}
		if !slices.Contains(permissions[perm], role) {
			s.refuse(w, r, http.StatusForbidden, "forbidden_role", "the role "+role+" does not allow "+perm)
			return
		}
		h(w, r, scope{org: org, role: role}, body)
	}
}

// roleIn is the caller's role in org: owner for the operator, admin for
// the org's admin-scope key, the membership's for a user, else none; and
// whether the organization is suspended.
func (s *Server) roleIn(p *principal, org string) (role string, suspended bool) {
	s.node.fsm.View(func(st *State) {
		o, ok := st.Orgs[org]
		if !ok {
			return
		}
		suspended = o.Status == OrgSuspended
		switch {
		case p.operator():
			role = RoleOwner
		case p.keyOrg != "":
			if p.keyOrg == org {
				role = RoleAdmin
			}
		case p.userID != "":
			if m := st.Memberships[membershipKey(org, p.userID)]; m != nil {
				role = m.Role
			}
		}
	})
	return role, suspended
}

// meta is the caller of r and the time, for a command's Meta.
func (s *Server) meta(r *http.Request) Meta {
	m := Meta{At: time.Now().UTC()}
	if p := principalOf(r); p != nil {
		m.By = p.actor
	}
	return m
}

// propose stamps c with the caller and the time, and proposes it.
func (s *Server) propose(r *http.Request, c Command) (uint64, error) {
	if a, ok := c.(audited); ok {
		m := a.metadata()
		at, idem := m.At, m.Idem
		*m = s.meta(r)
		m.Idem = idem
		if !at.IsZero() { // fixed by the handler, which checked against it
			m.At = at
		}
	}
	return s.node.Propose(c)
}

// ownedEntry is an entry of the state that belongs to one organization.
type ownedEntry interface {
	owner() string
	created() time.Time
}

func (k *APIKey) owner() string           { return k.Org }
func (k *APIKey) created() time.Time      { return k.CreatedAt }
func (k *ProducerKey) owner() string      { return k.Org }
func (k *ProducerKey) created() time.Time { return k.CreatedAt }
func (in *Invitation) owner() string      { return in.Org }
func (in *Invitation) created() time.Time { return in.CreatedAt }

// owned copies the entry id of one of the state's tables when it belongs
// to the scope's organization. Organization routes look their entries up
// only through owned and ownedList, so another organization's ids are
// never found.
func owned[T any, P interface {
	*T
	ownedEntry
}](s *Server, sc scope, table func(*State) map[string]*T, id string) (T, bool) {
	var v T
	var ok bool
	s.node.fsm.View(func(st *State) {
		if p := table(st)[id]; p != nil && P(p).owner() == sc.org {
			v, ok = *p, true
		}
	})
	return v, ok
}

// ownedList is the views of the entries of one of the state's tables that
// belong to the scope's organization, oldest first.
func ownedList[T, V any, P interface {
	*T
	ownedEntry
}](s *Server, sc scope, table func(*State) map[string]*T, view func(*State, P) V) []V {
	out := []V{}
	s.node.fsm.View(func(st *State) {
		var mine []P
		for _, p := range table(st) {
			if P(p).owner() == sc.org {
				mine = append(mine, P(p))
			}
		}
		slices.SortFunc(mine, func(a, b P) int { return a.created().Compare(b.created()) })
		for _, p := range mine {
			out = append(out, view(st, p))
		}
	})
	return out
}

func keysOf(st *State) map[string]*APIKey              { return st.Keys }
func producerKeysOf(st *State) map[string]*ProducerKey { return st.ProducerKeys }
func invitationsOf(st *State) map[string]*Invitation   { return st.Invitations }
