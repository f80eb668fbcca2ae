package ingest

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
)

// AnalyticsReader answers an organization's analytics queries (the
// analytics package, over ClickHouse); bad queries wrap
// schemas.ErrBadAnalyticsQuery.
type AnalyticsReader interface {
	Series(ctx context.Context, org string, q schemas.AnalyticsQuery) (*schemas.AnalyticsSeries, error)
	Top(ctx context.Context, org string, q schemas.AnalyticsQuery) (*schemas.AnalyticsTop, error)
	Summary(ctx context.Context, org string, from, to time.Time) (*schemas.AnalyticsSummary, error)
	Requests(ctx context.Context, org string, q schemas.AnalyticsQuery, cursor string) (*schemas.AnalyticsRequestPage, error)
}

// analyticsParams are the parameters of the analytics routes besides the
// dimensions of the rollups, which filter.
var analyticsParams = []string{"metric", "group_by", "granularity", "from", "to", "limit", "org"}

// analyticsQuery reads an analytics route's parameters, answering 400
// itself: metric (comma-separated), group_by, granularity, from and to
// (RFC 3339; default the last 24 hours), limit, and a filter for each
// dimension (comma-separated values, any of which matches).
func analyticsQuery(ctx *fasthttp.RequestCtx, now time.Time, extra ...string) (schemas.AnalyticsQuery, bool) {
	args := ctx.QueryArgs()
	var dims []string
	for _, r := range schemas.Rollups {
		dims = append(dims, r.Dims...)
	}
	var q schemas.AnalyticsQuery
	var unknown string
	args.VisitAll(func(k, v []byte) {
		key := string(k)
		switch {
		case slices.Contains(analyticsParams, key) || slices.Contains(extra, key):
		case slices.Contains(dims, key):
			q.Filters = append(q.Filters, schemas.AnalyticsFilter{Dim: key, Values: strings.Split(string(v), ",")})
		case unknown == "":
			unknown = key
		}
	})
	if unknown != "" {
		apiError(ctx, fasthttp.StatusBadRequest, "unknown_parameter", "unknown parameter "+strconv.Quote(unknown)+
			": the analytics routes take "+strings.Join(analyticsParams, ", ")+" and a filter on any of "+strings.Join(dims, ", "))
		return q, false
	}
	if m := string(args.Peek("metric")); m != "" {
		q.Metrics = strings.Split(m, ",")
	}
	q.GroupBy, q.Granularity = string(args.Peek("group_by")), string(args.Peek("granularity"))
	if !timeParam(ctx, "from", &q.From) || !timeParam(ctx, "to", &q.To) {
		return q, false
	}
	if q.To.IsZero() {
		q.To = now
	}
	if q.From.IsZero() {
		q.From = q.To.Add(-24 * time.Hour)
	}
	if q.Granularity == "" {
		q.Granularity = schemas.DefaultGranularity(q.To.Sub(q.From))
	}
	if v := args.Peek("limit"); v != nil {
		n, err := strconv.Atoi(string(v))
		if err != nil || n < 1 {
			apiError(ctx, fasthttp.StatusBadRequest, "invalid_limit", "limit must be a positive number")
			return q, false
		}
		q.Limit = n
	}
	return q, true
}

// analyticsAnswer writes an analytics answer, or the error that stopped it.
func (s *Server) analyticsAnswer(ctx *fasthttp.RequestCtx, v any, err error) {
	switch {
	case errors.Is(err, schemas.ErrBadAnalyticsQuery):
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_query", err.Error())
	case err != nil:
		s.log.Warn("analytics store", "err", err)
		apiError(ctx, fasthttp.StatusServiceUnavailable, "analytics_unavailable", "the analytics store is unavailable; retry later")
	default:
		writeJSON(ctx, fasthttp.StatusOK, v)
	}
}

// analyticsReady answers 503 when no analytics store is configured.
func (s *Server) analyticsReady(ctx *fasthttp.RequestCtx) bool {
	if s.deps.Analytics == nil {
		apiError(ctx, fasthttp.StatusServiceUnavailable, "analytics_unavailable", "the analytics store (ClickHouse) is not configured on this server")
		return false
	}
	return true
}

func (s *Server) analyticsSeries(ctx *fasthttp.RequestCtx, t *tenants.Tenant, _ []string) {
	s.analyticsMetrics(ctx, func(q schemas.AnalyticsQuery) (any, error) { return s.deps.Analytics.Series(s.life, t.ID, q) })
}

func (s *Server) analyticsTop(ctx *fasthttp.RequestCtx, t *tenants.Tenant, _ []string) {
	s.analyticsMetrics(ctx, func(q schemas.AnalyticsQuery) (any, error) { return s.deps.Analytics.Top(s.life, t.ID, q) })
}

// analyticsMetrics answers a route of metrics (default: requests) with ask.
func (s *Server) analyticsMetrics(ctx *fasthttp.RequestCtx, ask func(schemas.AnalyticsQuery) (any, error)) {
	q, ok := analyticsQuery(ctx, time.Now())
	if !ok || !s.analyticsReady(ctx) {
		return
	}
	if len(q.Metrics) == 0 {
		q.Metrics = []string{"requests"}
	}
	out, err := ask(q)
	s.analyticsAnswer(ctx, out, err)
}

// analyticsRequests answers the drill-down: raw results matching the
// filters, newest first, a page at a time (cursor).
func (s *Server) analyticsRequests(ctx *fasthttp.RequestCtx, t *tenants.Tenant, _ []string) {
	q, ok := analyticsQuery(ctx, time.Now(), "cursor")
	if !ok || !s.analyticsReady(ctx) {
		return
	}
	out, err := s.deps.Analytics.Requests(s.life, t.ID, q, string(ctx.QueryArgs().Peek("cursor")))
	s.analyticsAnswer(ctx, out, err)
}

func (s *Server) analyticsSummary(ctx *fasthttp.RequestCtx, t *tenants.Tenant, _ []string) {
	q, ok := analyticsQuery(ctx, time.Now())
	if !ok {
		return
	}
	if len(q.Metrics) > 0 || q.GroupBy != "" || len(q.Filters) > 0 || q.Limit != 0 || ctx.QueryArgs().Has("granularity") {
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_query", "the summary takes only from and to")
		return
	}
	if !s.analyticsReady(ctx) {
		return
	}
	out, err := s.deps.Analytics.Summary(s.life, t.ID, q.From, q.To)
	s.analyticsAnswer(ctx, out, err)
}

// ReportSource finds an organization's saved reports (the coordinator's
// replica).
type ReportSource interface {
	Report(org, id string) (schemas.Report, bool)
}

// noSuchReport answers another organization's report as an unknown one.
const noSuchReport = "no such report for this organization"

// runReport answers GET /v1/reports/{report_id}/run: the report's series
// over its range as of now, or over [from, to) when both are given (the
// period of a report.ready event). With format (csv, ndjson, json, arrow,
// parquet) the run is a table instead: a row per bucket and group, a
// column per metric.
func (s *Server) runReport(ctx *fasthttp.RequestCtx, t *tenants.Tenant, params []string) {
	var from, to time.Time
	if !timeParam(ctx, "from", &from) || !timeParam(ctx, "to", &to) {
		return
	}
	if from.IsZero() != to.IsZero() {
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_range", "give both from and to, or neither")
		return
	}
	if s.deps.Reports == nil {
		apiError(ctx, fasthttp.StatusServiceUnavailable, "reports_unavailable", "this server does not know the reports (no coordinator)")
		return
	}
	rep, ok := s.deps.Reports.Report(t.ID, params[0])
	if !ok {
		apiError(ctx, fasthttp.StatusNotFound, "not_found", noSuchReport)
		return
	}
	if !s.analyticsReady(ctx) {
		return
	}
	now := time.Now().UTC()
	q := rep.Query
	if !from.IsZero() {
		q.Range, q.From, q.To = schemas.RangeCustom, from, to
	}
	format := string(ctx.QueryArgs().Peek("format"))
	var ctype, ext string
	if format != "" {
		if !s.exportsReady(ctx) {
			return
		}
		if ctype, ext, ok = s.fileType(ctx, format); !ok {
			return
		}
	}
	series, err := s.deps.Analytics.Series(s.life, t.ID, q.Analytics(now))
	if format == "" || err != nil {
		s.analyticsAnswer(ctx, &schemas.ReportRun{Report: rep, RanAt: now, Series: series}, err)
		return
	}
	// A run is as large as its buckets (bounded by the analytics queries):
	// it is written whole, then sent.
	var buf bytes.Buffer
	tw, err := s.writeTable(&buf, format, "Report "+rep.Name+" ("+rep.ID+") of "+t.ID, period(series.From, series.To), reportColumns(series))
	if err == nil {
		err = reportTable(tw, series)
	}
	if err != nil {
		s.exportFailed(ctx, err)
		return
	}
	ctx.SetContentType(ctype)
	ctx.Response.Header.Set("Content-Disposition", `attachment; filename="`+schemas.ExportFileName("report-"+rep.ID, t.ID, series.From, series.To, ext)+`"`)
	ctx.SetBody(buf.Bytes())
}
