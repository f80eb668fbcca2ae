package ingest

import (
	"errors"
	"regexp"
	"slices"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/valyala/fasthttp"

	"github.com/certnode/certnode/internal/brand"
	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
)

// maxPreviewBody bounds a preview request: the largest branding (its CSS
// and four templates) with room for JSON escaping.
const maxPreviewBody = 256 << 10

// PreviewPageVerify names the verification page in a preview request;
// the other pages are brand.Kinds.
const PreviewPageVerify = "verify"

// brandingPreview answers POST /v1/branding/preview: a page drawn with
// proposed branding, checked as saving it would check it (the same 400),
// and stored nowhere. It is served as the real pages are (no script runs
// in it), and only this site may frame it, for the dashboard.
func (s *Server) brandingPreview(ctx *fasthttp.RequestCtx, t *tenants.Tenant, _ []string) {
	body, ok := s.readBody(ctx, maxPreviewBody)
	if !ok {
		return
	}
	var req struct {
		Branding brand.Branding `json:"branding"`
		Page     string         `json:"page"`
		Message  string         `json:"message,omitempty"`
		Until    time.Time      `json:"until,omitzero"`
	}
	if err := json.Unmarshal(body, &req, json.RejectUnknownMembers(true)); err != nil {
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_json", "the body is not a preview request: "+err.Error())
		return
	}
	if req.Page == "" {
		req.Page = PreviewPageVerify
	}
	if req.Page != PreviewPageVerify && !slices.Contains(brand.Kinds, req.Page) {
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_page", "page must be verify, 404, 429, 5xx or maintenance")
		return
	}
	if err := brand.Check(&req.Branding); err != nil {
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_branding", err.Error())
		return
	}
	o := brand.Org{ID: t.ID, Name: t.ID, Branding: req.Branding}
	if s.deps.Brands != nil {
		if cur, ok := s.deps.Brands.Brand(t.ID); ok {
			o.Name = cur.Name
		}
	}
	var page []byte
	switch req.Page {
	case PreviewPageVerify:
		if s.deps.VerifyPage == nil {
			apiError(ctx, fasthttp.StatusServiceUnavailable, "verify_page_unavailable", "this server does not serve the verification page")
			return
		}
		page = s.deps.VerifyPage.Preview(&o)
	default:
		e := previewError(req.Page, req.Message)
		if req.Page == brand.KindMaintenance {
			o.Maintenance = &brand.Maintenance{Message: e.Message, Until: req.Until}
			e.Until, e.RetryAfter = req.Until, o.Maintenance.RetryAfter(time.Now())
		}
		page = brand.Render(&o, e)
	}
	writePage(ctx, fasthttp.StatusOK, page, "'self'")
}

// previewError is a sample error of a kind, for a preview.
func previewError(kind, message string) brand.ErrorPage {
	e := map[string]brand.ErrorPage{
		brand.KindNotFound:    {Status: 404, Code: "not_found", Message: "no such endpoint: /example", Path: "/example"},
		brand.KindTooMany:     {Status: 429, Code: "rate_limited", Message: "too many requests; retry after the delay", RetryAfter: 2},
		brand.KindServer:      {Status: 503, Code: "kafka_unavailable", Message: "the message broker is unavailable; retry later"},
		brand.KindMaintenance: {Status: 503, Code: "maintenance", Message: "We are upgrading our systems."},
	}[kind]
	e.Kind = kind
	if message != "" {
		e.Message = message
	}
	return e
}

// brandingStyle answers GET /v1/branding/style.css: the caller's
// organization's palette and custom CSS, for the dashboard (whose policy
// takes styles only from this site).
func (s *Server) brandingStyle(ctx *fasthttp.RequestCtx, t *tenants.Tenant, _ []string) {
	var b brand.Branding
	if s.deps.Brands != nil {
		if o, ok := s.deps.Brands.Brand(t.ID); ok {
			b = o.Branding
		}
	}
	ctx.SetContentType("text/css; charset=utf-8")
	ctx.Response.Header.Set("Cache-Control", "private, no-cache")
	ctx.Response.Header.Set("X-Content-Type-Options", "nosniff")
	ctx.SetBodyString(brand.StyleSheet(&b))
}

// brandingHost answers GET /v1/branding/host: the public face of the
// organization whose custom domain the request came to (its name, logo,
// favicon, palette and support details: what its pages there show
// anyone), for the pages drawn before anyone signs in there, such as the
// dashboard's sign-in. On any other host: 404 not_custom_domain.
func (s *Server) brandingHost(ctx *fasthttp.RequestCtx) {
	org, _ := ctx.UserValue(orgValue).(string)
	var o brand.Org
	ok := org != "" && s.deps.Brands != nil
	if ok {
		o, ok = s.deps.Brands.Brand(org)
	}
	if !ok {
		apiError(ctx, fasthttp.StatusNotFound, "not_custom_domain", "this host is not an organization's custom domain")
		return
	}
	b := o.Branding
	b.CustomCSS, b.ErrorPages = "", nil
	ctx.Response.Header.Set("Cache-Control", "public, max-age=60")
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"id": o.ID, "name": o.Name, "settings": b})
}

// receiptIDPat is a receipt id: a base64url SHA-256.
var receiptIDPat = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)

// logProof answers GET /v1/log/proof/{receipt_id}: the inclusion proof of
// a receipt, for whoever holds it (the hosted verification page). The id
// is a SHA-256 over the receipt's signature, known only to holders of the
// receipt, and the log holds hashes only; an unknown id is not_logged.
func (s *Server) logProof(ctx *fasthttp.RequestCtx) {
	if !s.logReady(ctx) {
		return
	}
	rid := string(ctx.Path()[len("/v1/log/proof/"):])
	if !receiptIDPat.MatchString(rid) {
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_receipt_id", "a receipt id is 43 base64url characters")
		return
	}
	p, err := s.deps.Log.Proof(s.life, rid)
	switch {
	case errors.Is(err, schemas.ErrNotLogged):
		ctx.Response.Header.Set("Retry-After", "1")
		apiError(ctx, fasthttp.StatusNotFound, "not_logged", "the receipt is in no published checkpoint (yet: a receipt is logged within seconds of its signing)")
	case err != nil:
		s.logFailed(ctx, err)
	default:
		ctx.Response.Header.Set("Cache-Control", "no-cache")
		writeJSON(ctx, fasthttp.StatusOK, p)
	}
}
