package ingest

import (
	"github.com/valyala/fasthttp"

	"github.com/certnode/certnode/schemas"
)

// OrgKeySource publishes an organization's JWKS: its own keys, marked with
// "org", then the service's (signer.OrgKeys).
type OrgKeySource interface {
	JWKS(org string) schemas.JWKS
}

// jwks serves the JWKS: on an organization's custom domain (Deps.Domains)
// the organization's, elsewhere the service's.
func (s *Server) jwks(ctx *fasthttp.RequestCtx) {
	jwks := s.deps.Keys.JWKS()
	if org, ok := s.hostOrg(ctx); ok && s.deps.OrgKeys != nil {
		jwks = s.deps.OrgKeys.JWKS(org)
	}
	writeJSON(ctx, fasthttp.StatusOK, jwks)
	ctx.Response.Header.Set("Cache-Control", "public, max-age=300")
}

// hostOrg is the organization whose custom domain the request came to.
func (s *Server) hostOrg(ctx *fasthttp.RequestCtx) (string, bool) {
	if s.deps.Domains == nil {
		return "", false
	}
	return s.deps.Domains.DomainOrg(string(ctx.Host()))
}
