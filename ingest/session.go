package ingest

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/valyala/fasthttp"
	"golang.org/x/time/rate"

	"github.com/certnode/certnode/internal/tenants"
)

// Signed-in users (the dashboard) call the tenant routes with the
// session cookie the coordinator set at POST /v1/auth/login instead of an
// API key, naming the organization they act in (OrgHeader, or the org
// parameter where a browser cannot set headers: downloads, event
// streams). Their role there decides the scopes; the coordinator, asked
// through Deps.Accounts (GET /v1/me), says who the session is and what its
// CSRF token is, and its answer is kept for sessionTTL.

// Names of the session's cookie, its CSRF header and the organization header.
const (
	SessionCookie = "certnode_session"
	CSRFHeader    = "X-CSRF-Token"
	OrgHeader     = "Certnode-Org"
)

// OrgLimits gives an active organization's limits (the coordinator's
// replica): a signed-in user acts in an organization without a key.
type OrgLimits interface {
	Limits(org string) (tenants.Limits, bool)
}

// roleScopes are the scopes each role of an organization acts with.
var roleScopes = map[string][]string{
	"owner":     {tenants.ScopeSign, tenants.ScopeVerify, tenants.ScopeJobs, tenants.ScopeRead, tenants.ScopeAdmin},
	"admin":     {tenants.ScopeSign, tenants.ScopeVerify, tenants.ScopeJobs, tenants.ScopeRead, tenants.ScopeAdmin},
	"developer": {tenants.ScopeSign, tenants.ScopeVerify, tenants.ScopeJobs, tenants.ScopeRead},
	"viewer":    {tenants.ScopeRead},
	"billing":   {tenants.ScopeRead},
}

// Bounds of the sessions kept: how long an answer of the coordinator is
// believed (a sign-out or a role change takes this long to apply here),
// and how many sessions are kept at once.
const (
	sessionTTL      = 5 * time.Second
	maxSessionCache = 10000
	// A burst of unknown cookies (a client guessing) asks the coordinator
	// at most this often; past it they are refused without asking.
	sessionLookups = 200 // per second
)

// sessionToken is the form of the coordinator's session tokens.
var sessionToken = regexp.MustCompile(`^cns_[A-Za-z0-9_-]{43}$`)

// session is what the coordinator says of a session token.
type session struct {
	user  string
	csrf  string
	roles map[string]string // organization -> role
}

type cachedSession struct {
	s   *session // nil: not a session
	exp time.Time
}

// sessions keeps the coordinator's answers by the SHA-256 of the token.
type sessions struct {
	mu      sync.Mutex
	m       map[[32]byte]cachedSession
	lookups *rate.Limiter
}

// sessionOf resolves the request's session cookie, nil when there is
// none or the coordinator does not know it.
func (s *Server) sessionOf(ctx *fasthttp.RequestCtx) *session {
	cookie := ctx.Request.Header.Cookie(SessionCookie)
	if !sessionToken.Match(cookie) || s.deps.Accounts == nil || s.deps.Orgs == nil {
		return nil
	}
	key, now := sha256.Sum256(cookie), time.Now()
	s.sess.mu.Lock()
	c, ok := s.sess.m[key]
	s.sess.mu.Unlock()
	if ok && now.Before(c.exp) {
		return c.s
	}
	if !s.sess.lookups.Allow() {
		return nil
	}
	var me struct {
		User struct {
			ID          string `json:"id"`
			Memberships []struct {
				Org  string `json:"org"`
				Role string `json:"role"`
			} `json:"memberships"`
		} `json:"user"`
		CSRF string `json:"csrf_token"`
	}
	code, body := s.askAccounts(ctx, "/v1/me")
	var found *session
	switch {
	case code == http.StatusOK && json.Unmarshal(body, &me, json.RejectUnknownMembers(false)) == nil && me.User.ID != "":
		found = &session{user: me.User.ID, csrf: me.CSRF, roles: map[string]string{}}
		for _, m := range me.User.Memberships {
			found.roles[m.Org] = m.Role
		}
	case code >= 500:
		return nil // not an answer about the session: ask again next time
	}
	s.sess.mu.Lock()
	if len(s.sess.m) >= maxSessionCache {
		for k, v := range s.sess.m {
			if !now.Before(v.exp) || len(s.sess.m) >= maxSessionCache {
				delete(s.sess.m, k)
			}
		}
	}
	s.sess.m[key] = cachedSession{s: found, exp: now.Add(sessionTTL)}
	s.sess.mu.Unlock()
	return found
}

// askAccounts asks the coordinator (Deps.Accounts) GET path with the
// caller's own credentials (its key or session cookie) and address, so
// that it decides what the caller may read.
func (s *Server) askAccounts(ctx *fasthttp.RequestCtx, path string) (int, []byte) {
	return s.accountsAsker(ctx)(ctx, path)
}

// accountsAsker is askAccounts with the caller's credentials copied out of
// the request, for a streamed answer that asks after the handler returned.
func (s *Server) accountsAsker(ctx *fasthttp.RequestCtx) func(c context.Context, path string) (int, []byte) {
	addr := ctx.RemoteAddr().String()
	creds := map[string]string{}
	for _, h := range []string{"Authorization", "Cookie"} {
		if v := ctx.Request.Header.Peek(h); len(v) > 0 {
			creds[h] = string(v)
		}
	}
	return func(c context.Context, path string) (int, []byte) {
		req := httptest.NewRequestWithContext(c, "GET", path, nil)
		req.RemoteAddr = addr
		for h, v := range creds {
			req.Header.Set(h, v)
		}
		rec := httptest.NewRecorder()
		s.deps.Accounts.ServeHTTP(rec, req)
		return rec.Code, rec.Body.Bytes()
	}
}

// requestedOrg is the organization a request names: OrgHeader, else the
// org parameter.
func requestedOrg(ctx *fasthttp.RequestCtx) string {
	if h := ctx.Request.Header.Peek(OrgHeader); len(h) > 0 {
		return string(h)
	}
	return string(ctx.QueryArgs().Peek("org"))
}

// sessionTenant resolves a signed-in user's request to the organization it
// names, answering the refusal itself: 401 for an unknown session, 400
// when it names none and the user has several, 404 for an organization the
// user has no role in (as for one that does not exist), 403 for a
// state-changing request without the session's CSRF token or from another
// site.
func (s *Server) sessionTenant(ctx *fasthttp.RequestCtx, sess *session, bound string) (*tenants.Tenant, bool) {
	org := requestedOrg(ctx)
	if org == "" {
		org = bound
	}
	if org == "" && len(sess.roles) == 1 {
		for o := range sess.roles {
			org = o
		}
	}
	if org == "" {
		apiError(ctx, fasthttp.StatusBadRequest, "org_required", "name the organization to act in: the "+OrgHeader+" header or the org parameter")
		return nil, false
	}
	role, member := sess.roles[org]
	limits, active := tenants.Limits{}, false
	if member && s.deps.Orgs != nil {
		limits, active = s.deps.Orgs.Limits(org)
	}
	if !member || !active {
		apiError(ctx, fasthttp.StatusNotFound, "not_found", "no such organization: "+org)
		return nil, false
	}
	if m := string(ctx.Method()); m != "GET" && m != "HEAD" && m != "OPTIONS" {
		if !sameOrigin(ctx) || subtle.ConstantTimeCompare(ctx.Request.Header.Peek(CSRFHeader), []byte(sess.csrf)) != 1 || sess.csrf == "" {
			apiError(ctx, fasthttp.StatusForbidden, "csrf", "a signed-in user's "+m+" needs the session's CSRF token in "+CSRFHeader+", from this site")
			s.recordRefusal(ctx, &tenants.Tenant{ID: org, KeyID: sess.user}, "csrf")
			return nil, false
		}
	}
	// A role this server does not know gets no scope (nil would be every
	// scope: the keys of a tenants file).
	scopes, known := roleScopes[role]
	if !known {
		apiError(ctx, fasthttp.StatusForbidden, "forbidden_role", "the role "+role+" gives no access here")
		s.recordRefusal(ctx, &tenants.Tenant{ID: org, KeyID: sess.user}, "forbidden_role")
		return nil, false
	}
	return &tenants.Tenant{ID: org, Limits: limits, Scopes: slices.Clone(scopes), KeyID: sess.user}, true
}

// sameOrigin reports whether a browser's Origin, when sent, is this host.
func sameOrigin(ctx *fasthttp.RequestCtx) bool {
	o := ctx.Request.Header.Peek("Origin")
	if len(o) == 0 {
		return true
	}
	u, err := url.Parse(string(o))
	return err == nil && u.Host == string(ctx.Host())
}
