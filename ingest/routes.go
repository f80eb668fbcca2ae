package ingest

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/valyala/fasthttp"

	"github.com/certnode/certnode/internal/tenants"
)

// Route is one endpoint of the public API. Routes lists them for the
// OpenAPI and cross-tenant tests, which fail when a route has no case.
type Route struct {
	Method string
	// Path uses OpenAPI templates: /v1/jobs/{job_id}.
	Path string
	// Tenant routes need an API key and see only the caller's data.
	Tenant bool
	// Scope is what the key must hold (POST /v1/jobs also needs the scope
	// of the job's type).
	Scope string
	// Name labels the route's metrics.
	Name string
}

type route struct {
	Route
	segs   []string
	public func(ctx *fasthttp.RequestCtx)
	tenant func(ctx *fasthttp.RequestCtx, t *tenants.Tenant, params []string)
}

// Routes lists every endpoint a server answers.
func Routes() []Route {
	table := (&Server{}).table()
	out := make([]Route, len(table))
	for i, r := range table {
		out[i] = r.Route
	}
	return out
}

func (s *Server) table() []route {
	pub := func(method, path, name string, h func(*fasthttp.RequestCtx)) route {
		return route{Route: Route{Method: method, Path: path, Name: name}, segs: strings.Split(path, "/"), public: h}
	}
	ten := func(method, path, name, scope string, h func(*fasthttp.RequestCtx, *tenants.Tenant, []string)) route {
		return route{Route: Route{Method: method, Path: path, Tenant: true, Name: name, Scope: scope}, segs: strings.Split(path, "/"), tenant: h}
	}
	return []route{
		pub("GET", "/healthz", "healthz", s.healthz),
		pub("GET", "/readyz", "readyz", s.readyz),
		pub("GET", "/metrics", "metrics", func(ctx *fasthttp.RequestCtx) { s.promh(ctx) }),
		pub("GET", "/.well-known/jwks.json", "jwks", s.jwks),
		pub("GET", "/v1/jwks", "jwks", s.jwks),
		pub("GET", "/openapi.json", "openapi", s.openAPI),
		pub("GET", "/v1/webhooks/event-types", "event_types", s.eventTypes),
		pub("GET", "/v1/branding/host", "branding_host", s.brandingHost),
		pub("GET", "/v1/log/checkpoint", "log_checkpoint", s.logCheckpoint),
		pub("GET", "/v1/log/key", "log_key", s.logKey),
		pub("GET", "/v1/log/consistency", "log_consistency", s.logConsistency),
		pub("GET", "/v1/log/proof/{receipt_id}", "log_proof", s.logProof),
		pub("GET", "/v1/audit/checkpoint", "audit_checkpoint", s.auditCheckpoint),
		pub("GET", "/v1/audit/key", "audit_key", s.auditKey),
		ten("POST", "/v1/sign", "sign", tenants.ScopeSign, s.sign),
		ten("POST", "/v1/verify", "verify", tenants.ScopeVerify, s.verify),
		ten("GET", "/v1/jobs", "jobs_list", tenants.ScopeRead, s.listJobs),
		ten("POST", "/v1/jobs", "jobs_create", tenants.ScopeJobs, s.createJob),
		ten("GET", "/v1/jobs/{job_id}", "jobs_status", tenants.ScopeRead, s.jobStatus),
		ten("GET", "/v1/jobs/{job_id}/results", "jobs_results", tenants.ScopeRead, s.jobResults),
		ten("GET", "/v1/receipts/{receipt_id}", "receipts", tenants.ScopeRead, s.getReceipt),
		ten("GET", "/v1/receipts/{receipt_id}/proof", "receipt_proof", tenants.ScopeRead, s.receiptProof),
		ten("GET", "/v1/usage", "usage", tenants.ScopeRead, s.usage),
		ten("GET", "/v1/invoices", "invoices", tenants.ScopeRead, s.invoices),
		ten("GET", "/v1/invoices/{period}", "invoice", tenants.ScopeRead, s.invoice),
		ten("GET", "/v1/webhooks/deliveries", "webhook_deliveries", tenants.ScopeRead, s.listDeliveries),
		ten("GET", "/v1/webhooks/deliveries/{id}", "webhook_delivery", tenants.ScopeRead, s.getDelivery),
		ten("POST", "/v1/webhooks/deliveries/{id}/redeliver", "webhook_redeliver", tenants.ScopeAdmin, s.redeliver),
		ten("POST", "/v1/webhooks/endpoints/{id}/replay", "webhook_replay", tenants.ScopeAdmin, s.replay),
		ten("POST", "/v1/webhooks/trigger", "webhook_trigger", tenants.ScopeAdmin, s.trigger),
		ten("GET", "/v1/webhooks/listen", "webhook_listen", tenants.ScopeRead, s.listen),
		ten("GET", "/v1/analytics/series", "analytics_series", tenants.ScopeRead, s.analyticsSeries),
		ten("GET", "/v1/analytics/top", "analytics_top", tenants.ScopeRead, s.analyticsTop),
		ten("GET", "/v1/analytics/summary", "analytics_summary", tenants.ScopeRead, s.analyticsSummary),
		ten("GET", "/v1/analytics/requests", "analytics_requests", tenants.ScopeRead, s.analyticsRequests),
		ten("GET", "/v1/reports/{report_id}/run", "report_run", tenants.ScopeRead, s.runReport),
		ten("POST", "/v1/compliance/reports", "compliance_report", tenants.ScopeAdmin, s.complianceReport),
		ten("GET", "/v1/exports/{kind}", "export", tenants.ScopeRead, s.export),
		ten("GET", "/v1/audit/export", "audit_export", tenants.ScopeAdmin, s.auditExport),
		ten("GET", "/v1/security/alerts", "security_alerts", tenants.ScopeAdmin, s.securityAlerts),
		ten("POST", "/v1/privacy/subjects", "privacy_subject", tenants.ScopeAdmin, s.subjectAccess),
		ten("POST", "/v1/privacy/erasures", "privacy_erasure", tenants.ScopeAdmin, s.erase),
		ten("GET", "/v1/export-jobs", "export_jobs_list", tenants.ScopeRead, s.listExportJobs),
		ten("POST", "/v1/export-jobs", "export_jobs_create", tenants.ScopeRead, s.createExportJob),
		ten("GET", "/v1/export-jobs/{export_id}", "export_job", tenants.ScopeRead, s.getExportJob),
		ten("DELETE", "/v1/export-jobs/{export_id}", "export_job_cancel", tenants.ScopeRead, s.cancelExportJob),
		pub("GET", "/v1/export-jobs/{export_id}/file", "export_download", s.downloadExport),
		ten("POST", "/v1/branding/preview", "branding_preview", tenants.ScopeAdmin, s.brandingPreview),
		ten("GET", "/v1/branding/style.css", "branding_style", tenants.ScopeRead, s.brandingStyle),
	}
}

// match reports whether path fits the route's template, with its params.
func (r *route) match(path []string) ([]string, bool) {
	if len(path) != len(r.segs) {
		return nil, false
	}
	var params []string
	for i, seg := range r.segs {
		if strings.HasPrefix(seg, "{") {
			if path[i] == "" {
				return nil, false
			}
			params = append(params, path[i])
		} else if seg != path[i] {
			return nil, false
		}
	}
	return params, true
}

// maxAccountBody bounds an account request's body, as the coordinator does.
const maxAccountBody = 1 << 20

// accountPath reports whether a path belongs to the account routes the
// coordinator serves (Deps.Accounts).
func accountPath(p string) bool {
	return p == "/v1/me" || strings.HasPrefix(p, "/v1/auth/") || strings.HasPrefix(p, "/v1/orgs/")
}

// ConsolePrefix is where Deps.Console serves the dashboard.
const ConsolePrefix = "/dashboard"

// dispatch routes a request bound to an organization's custom domain
// ("": none) and returns the route name for metrics.
func (s *Server) dispatch(ctx *fasthttp.RequestCtx, bound string) string {
	if p := string(ctx.Path()); s.console != nil && (p == ConsolePrefix || strings.HasPrefix(p, ConsolePrefix+"/")) {
		s.console(ctx)
		return "console"
	}
	if p := string(ctx.Path()); s.verifyPage != nil && (p == VerifyPrefix || strings.HasPrefix(p, VerifyPrefix+"/")) {
		s.verifyPage(ctx)
		return "verify_page"
	}
	requested, ok := requestedVersion(ctx)
	if !ok {
		return "unknown_api_version"
	}
	s.applyVersion(ctx, requested, bound, nil)
	if s.accounts != nil && accountPath(string(ctx.Path())) {
		if org := accountOrg(string(ctx.Path())); bound != "" && org != "" && org != bound {
			apiError(ctx, fasthttp.StatusForbidden, "domain_bound", "this domain serves one organization only; use its own API address for others")
			s.recordRefusal(ctx, nil, "domain_bound")
			return "accounts"
		}
		// The adaptor would read a streamed body whole: read it here,
		// bounded, and hand it on.
		b, ok := s.readBody(ctx, maxAccountBody)
		if !ok {
			return "accounts"
		}
		ctx.Request.SetBody(b)
		s.accounts(ctx)
		return "accounts"
	}
	path := strings.Split(string(ctx.Path()), "/")
	method := string(ctx.Method())
	var allowed []string
	for i := range s.routes {
		r := &s.routes[i]
		params, ok := r.match(path)
		if !ok {
			continue
		}
		if r.Method != method && !(r.Method == "GET" && method == "HEAD") {
			allowed = append(allowed, r.Method)
			continue
		}
		if r.public != nil {
			r.public(ctx)
			return r.Name
		}
		t, ok := s.authenticate(ctx, bound)
		if !ok {
			return "unauthorized"
		}
		if s.outsideDomain(ctx, bound, t) {
			return "domain_bound"
		}
		s.applyVersion(ctx, requested, t.ID, t) // the caller's organization's, from now on
		if s.inMaintenance(ctx, t.ID) {
			return "maintenance"
		}
		if refused := s.forbidden(ctx, t, r.Scope); refused != "" {
			return refused
		}
		r.tenant(ctx, t, params)
		return r.Name
	}
	if len(allowed) > 0 {
		slices.Sort(allowed)
		ctx.Response.Header.Set("Allow", strings.Join(allowed, ", "))
		apiError(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed", method+" is not allowed on "+string(ctx.Path()))
		return "other"
	}
	apiError(ctx, fasthttp.StatusNotFound, "not_found", "no such endpoint: "+string(ctx.Path()))
	return "other"
}

// forbidden answers 403 when the key may not be used from the client's
// address or lacks scope, records it in the audit log, and names the
// refusal for the request metrics.
func (s *Server) forbidden(ctx *fasthttp.RequestCtx, t *tenants.Tenant, scope string) string {
	addr, _ := netip.AddrFromSlice(ctx.RemoteIP())
	code := ""
	switch {
	case !t.AllowsAddr(addr):
		code = "forbidden_address"
		apiError(ctx, fasthttp.StatusForbidden, code, "this API key may not be used from "+addr.Unmap().String())
	case scope != "" && !t.Allows(scope):
		code = "forbidden_scope"
		apiError(ctx, fasthttp.StatusForbidden, code, "this API key lacks the "+scope+" scope")
	default:
		return ""
	}
	s.recordRefusal(ctx, t, code)
	return code
}
