package ingest

import (
	"strings"

	"github.com/valyala/fasthttp"

	"github.com/certnode/certnode/internal/hostname"
	"github.com/certnode/certnode/internal/tenants"
)

// DomainOrgs names the organization a custom domain belongs to, once its
// ownership is proved (the coordinator replica's DomainOrg).
type DomainOrgs interface {
	DomainOrg(host string) (org string, ok bool)
}

// boundOrg is the organization a request's host binds it to ("": none).
// On a TLS connection opened for a custom domain (SNI), the Host must name
// that domain: the certificate and the binding stand for one
// organization, so another Host on the connection is answered 421.
func (s *Server) boundOrg(ctx *fasthttp.RequestCtx) (string, bool) {
	if s.deps.Domains == nil {
		return "", true
	}
	host := string(ctx.Host())
	if cs := ctx.TLSConnectionState(); cs != nil && cs.ServerName != "" {
		if _, custom := s.deps.Domains.DomainOrg(cs.ServerName); custom && hostname.Of(host) != hostname.Of(cs.ServerName) {
			apiError(ctx, fasthttp.StatusMisdirectedRequest, "misdirected_request",
				"this connection was opened for "+cs.ServerName+": send its requests with that Host")
			return "", false
		}
	}
	org, _ := s.deps.Domains.DomainOrg(host)
	return org, true
}

// outsideDomain refuses a caller of another organization than the custom
// domain's: 403 domain_bound, recorded in the audit log.
func (s *Server) outsideDomain(ctx *fasthttp.RequestCtx, bound string, t *tenants.Tenant) bool {
	if bound == "" || t.ID == bound {
		return false
	}
	apiError(ctx, fasthttp.StatusForbidden, "domain_bound", "this domain serves one organization only; use its own API address for others")
	s.recordRefusal(ctx, t, "domain_bound")
	return true
}

// accountOrg is the organization an account path names (/v1/orgs/{org}/...), "" for none.
func accountOrg(path string) string {
	rest, ok := strings.CutPrefix(path, "/v1/orgs/")
	if !ok {
		return ""
	}
	org, _, _ := strings.Cut(rest, "/")
	return org
}
