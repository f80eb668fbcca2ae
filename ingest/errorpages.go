package ingest

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/valyala/fasthttp"

	"github.com/certnode/certnode/internal/brand"
	"github.com/certnode/certnode/schemas"
)

// Brands gives an active organization's branding and maintenance (the
// coordinator's replica): its error pages, the support details of its
// JSON errors and its maintenance mode.
type Brands interface {
	Brand(org string) (brand.Org, bool)
}

// VerifyPage is the hosted verification page (cmd mounts the read-side
// package's handler at VerifyPrefix), which also draws itself with
// proposed branding for POST /v1/branding/preview.
type VerifyPage interface {
	http.Handler
	Preview(o *brand.Org) []byte
}

// VerifyPrefix is where Deps.VerifyPage is served.
const VerifyPrefix = "/verify"

// User values a request carries once known: its organization (its API
// key's, session's or custom domain's) and whether it met maintenance.
const (
	orgValue         = "certnode.org"
	maintenanceValue = "certnode.maintenance"
)

// dispatchIn routes a request within its custom domain's organization:
// the organization is known from the start, and in maintenance only the
// exempt paths are served.
func (s *Server) dispatchIn(ctx *fasthttp.RequestCtx) string {
	bound, ok := s.boundOrg(ctx)
	if !ok {
		return "misdirected"
	}
	if bound != "" {
		ctx.SetUserValue(orgValue, bound)
		if !maintenanceExempt(string(ctx.Path())) && s.inMaintenance(ctx, bound) {
			return "maintenance"
		}
	}
	return s.dispatch(ctx, bound)
}

// maintenanceExempt are the paths an organization in maintenance still
// reaches: the account routes and the dashboard (to turn it off) with its
// sign-in page's branding, the probes, and the published keys (receipts
// already handed out must stay verifiable).
func maintenanceExempt(p string) bool {
	switch p {
	case "/healthz", "/readyz", "/metrics", "/.well-known/jwks.json", "/v1/jwks", "/v1/branding/host":
		return true
	}
	return accountPath(p) || p == ConsolePrefix || strings.HasPrefix(p, ConsolePrefix+"/")
}

// inMaintenance answers 503 maintenance, with Retry-After, when org is in
// maintenance mode, and reports whether it did.
func (s *Server) inMaintenance(ctx *fasthttp.RequestCtx, org string) bool {
	if s.deps.Brands == nil {
		return false
	}
	o, ok := s.deps.Brands.Brand(org)
	if !ok || o.Maintenance == nil {
		return false
	}
	ctx.SetUserValue(maintenanceValue, true)
	ctx.Response.Header.Set("Retry-After", strconv.Itoa(o.Maintenance.RetryAfter(time.Now())))
	apiError(ctx, fasthttp.StatusServiceUnavailable, "maintenance", o.Maintenance.Message)
	return true
}

// callerBrand is the branding of the request's organization, when known.
func (s *Server) callerBrand(ctx *fasthttp.RequestCtx) *brand.Org {
	org, _ := ctx.UserValue(orgValue).(string)
	if org == "" || s.deps.Brands == nil {
		return nil
	}
	o, ok := s.deps.Brands.Brand(org)
	if !ok {
		return nil
	}
	return &o
}

// decorateError finishes an API error once the route answered: a browser
// that asked for a page gets the organization's error page (404, 429,
// 5xx, maintenance), and a JSON error to a known organization's caller
// gains its support details. Only error bodies of the API's own shape are
// touched.
func (s *Server) decorateError(ctx *fasthttp.RequestCtx) {
	status := ctx.Response.StatusCode()
	if status < 400 || ctx.Response.IsBodyStream() || !bytes.HasPrefix(ctx.Response.Header.ContentType(), []byte("application/json")) {
		return
	}
	var body struct {
		Error struct {
			errorDetail
			Support *errorSupport `json:"support,omitempty"`
		} `json:"error"`
		JobID string         `json:"job_id,omitempty"`
		Job   jsontext.Value `json:"job,omitzero"`
	}
	if json.Unmarshal(ctx.Response.Body(), &body, json.RejectUnknownMembers(true)) != nil || body.Error.Code == "" {
		return
	}
	o := s.callerBrand(ctx)
	maintenance, _ := ctx.UserValue(maintenanceValue).(bool)
	if kind, ok := brand.KindOf(status, maintenance); ok && wantsHTML(ctx) {
		retry, _ := strconv.Atoi(string(ctx.Response.Header.Peek("Retry-After")))
		e := brand.ErrorPage{Kind: kind, Status: status, Code: body.Error.Code, Message: body.Error.Message, Path: string(ctx.Path()), RetryAfter: retry}
		if maintenance && o != nil && o.Maintenance != nil {
			e.Until = o.Maintenance.Until
		}
		writePage(ctx, status, brand.Render(o, e), "'none'")
		return
	}
	if o == nil || (o.Branding.SupportMessage == "" && o.Branding.SupportURL == "") || !atLeast(ctx, schemas.APIVersionWhiteLabel) {
		return
	}
	body.Error.Support = &errorSupport{Message: o.Branding.SupportMessage, URL: o.Branding.SupportURL}
	if b, err := json.Marshal(body); err == nil {
		ctx.SetBody(append(b, '\n'))
	}
}

// errorSupport is where an organization's callers get help.
type errorSupport struct {
	Message string `json:"message,omitempty"`
	URL     string `json:"url,omitempty"`
}

// writePage answers a page drawn from an organization's branding: it may
// style itself inline and show https images, and nothing more. The
// sandbox makes it an origin of its own, so even markup an organization
// wrote cannot reach this site's cookies or pages. frameAncestors says who
// may frame it.
func writePage(ctx *fasthttp.RequestCtx, status int, page []byte, frameAncestors string) {
	h := &ctx.Response.Header
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; base-uri 'none'; "+
		"form-action 'none'; frame-ancestors "+frameAncestors+"; sandbox")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	ctx.SetStatusCode(status)
	ctx.SetContentType("text/html; charset=utf-8")
	ctx.SetBody(page)
}

// wantsHTML reports whether a browser navigated here: a GET or HEAD
// whose Accept names text/html (or XHTML) above application/json. Scripts
// and API clients (Accept */* or JSON) keep getting JSON.
func wantsHTML(ctx *fasthttp.RequestCtx) bool {
	if !ctx.IsGet() && !ctx.IsHead() {
		return false
	}
	var html, js float64 = 0, -1
	for part := range strings.SplitSeq(string(ctx.Request.Header.Peek("Accept")), ",") {
		media, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		q := 1.0
		for p := range strings.SplitSeq(params, ";") {
			if k, v, ok := strings.Cut(strings.TrimSpace(p), "="); ok && strings.TrimSpace(k) == "q" {
				if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
					q = f
				}
			}
		}
		switch strings.ToLower(strings.TrimSpace(media)) {
		case "text/html", "application/xhtml+xml":
			html = max(html, q)
		case "application/json":
			js = max(js, q)
		}
	}
	return html > 0 && html > js
}
