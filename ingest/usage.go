package ingest

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
)

// UsageReader reads an organization's metered usage and prices its
// invoices (billing.Reader). The routes always pass the caller's
// organization, the only one a key may read.
type UsageReader interface {
	Usage(ctx context.Context, org string, q schemas.UsageQuery) (*schemas.UsageReport, error)
	Invoice(ctx context.Context, org string, plans []tenants.PlanPeriod, month, now time.Time) (*schemas.Invoice, bool, error)
	Invoices(ctx context.Context, org string, plans []tenants.PlanPeriod, now time.Time) (*schemas.InvoiceList, error)
}

// PlanSource gives the plans an organization was and is on.
type PlanSource interface {
	Plans(tenant string) []tenants.PlanPeriod
}

// usageQuery reads GET /v1/usage's parameters: granularity (hour or day,
// default day), group_by (key), from (default: the start of the current
// month, UTC) and to (default: now), RFC 3339. It answers 400 itself.
func usageQuery(ctx *fasthttp.RequestCtx, now time.Time) (schemas.UsageQuery, bool) {
	args := ctx.QueryArgs()
	q := schemas.UsageQuery{Granularity: schemas.GranularityDay, GroupBy: string(args.Peek("group_by"))}
	if g := args.Peek("granularity"); g != nil {
		q.Granularity = string(g)
	}
	span, ok := schemas.MaxUsageSpan[q.Granularity]
	if !ok {
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_granularity", "granularity must be hour or day")
		return q, false
	}
	if q.GroupBy != "" && q.GroupBy != schemas.GroupByKey {
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_group_by", "group_by must be key (or absent)")
		return q, false
	}
	now = now.UTC()
	q.From, q.To = time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC), now
	for _, p := range []struct {
		name string
		t    *time.Time
	}{{"from", &q.From}, {"to", &q.To}} {
		v := args.Peek(p.name)
		if v == nil {
			continue
		}
		t, err := time.Parse(time.RFC3339, string(v))
		if err != nil {
			apiError(ctx, fasthttp.StatusBadRequest, "invalid_"+p.name, p.name+" must be an RFC 3339 time, such as 2026-05-01T00:00:00Z")
			return q, false
		}
		*p.t = t.UTC()
	}
	switch {
	case !q.From.Before(q.To):
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_range", "from must be before to")
		return q, false
	case q.To.Sub(q.From) > span:
		apiError(ctx, fasthttp.StatusBadRequest, "range_too_large",
			fmt.Sprintf("at most %d days by %s", int(span/(24*time.Hour)), q.Granularity))
		return q, false
	}
	return q, true
}

// usageReady answers 503 when usage storage, or (for invoices) plans, are
// not configured.
func (s *Server) usageReady(ctx *fasthttp.RequestCtx, plans bool) bool {
	switch {
	case s.deps.Usage == nil:
		apiError(ctx, fasthttp.StatusServiceUnavailable, "storage_unavailable", "usage storage (ClickHouse) is not configured")
		return false
	case plans && s.deps.Plans == nil:
		apiError(ctx, fasthttp.StatusServiceUnavailable, "plans_unavailable", "plans are not configured on this server")
		return false
	}
	return true
}

// usageFailed answers 503 when a usage read failed.
func (s *Server) usageFailed(ctx *fasthttp.RequestCtx, err error) {
	s.log.Warn("usage storage", "err", err)
	apiError(ctx, fasthttp.StatusServiceUnavailable, "storage_unavailable", "usage storage is unavailable; retry later")
}

func (s *Server) usage(ctx *fasthttp.RequestCtx, t *tenants.Tenant, _ []string) {
	q, ok := usageQuery(ctx, time.Now())
	if !ok || !s.usageReady(ctx, false) {
		return
	}
	rep, err := s.deps.Usage.Usage(s.life, t.ID, q)
	if err != nil {
		s.usageFailed(ctx, err)
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, rep)
}

func (s *Server) invoices(ctx *fasthttp.RequestCtx, t *tenants.Tenant, _ []string) {
	if !s.usageReady(ctx, true) {
		return
	}
	list, err := s.deps.Usage.Invoices(s.life, t.ID, s.deps.Plans.Plans(t.ID), time.Now())
	if err != nil {
		s.usageFailed(ctx, err)
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, list)
}

// invoice answers GET /v1/invoices/{period} (YYYY-MM): JSON, or CSV with
// ?format=csv or Accept: text/csv.
func (s *Server) invoice(ctx *fasthttp.RequestCtx, t *tenants.Tenant, params []string) {
	period := params[0]
	month, err := time.Parse("2006-01", period)
	if err != nil || len(period) != len("2006-01") {
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_period", "the period must be a calendar month, YYYY-MM")
		return
	}
	format := string(ctx.QueryArgs().Peek("format"))
	switch {
	case format == "" && strings.Contains(string(ctx.Request.Header.Peek("Accept")), "text/csv"):
		format = "csv"
	case format == "":
		format = "json"
	case format != "json" && format != "csv":
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_format", "format must be json or csv")
		return
	}
	if !s.usageReady(ctx, true) {
		return
	}
	inv, ok, err := s.deps.Usage.Invoice(s.life, t.ID, s.deps.Plans.Plans(t.ID), month, time.Now())
	switch {
	case err != nil:
		s.usageFailed(ctx, err)
	case !ok:
		apiError(ctx, fasthttp.StatusNotFound, "not_found", "no invoice for "+period)
	case format == "csv":
		ctx.SetStatusCode(fasthttp.StatusOK)
		ctx.SetContentType("text/csv; charset=utf-8")
		ctx.Response.Header.Set("Content-Disposition", `attachment; filename="invoice-`+inv.Period+`.csv"`)
		ctx.SetBody(inv.CSV())
	default:
		writeJSON(ctx, fasthttp.StatusOK, inv)
	}
}
