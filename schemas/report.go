package schemas

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// AnalyticsMetrics are the metrics of /v1/analytics, by source: the
// metrics of results, then those of webhook attempts (the analytics
// package maps each to its rollup and checks it has these).
var AnalyticsMetrics = [][]string{
	{"requests", "bytes", "latency_p50", "latency_p90", "latency_p99"},
	{"webhook_attempts", "webhook_latency_p50", "webhook_latency_p90", "webhook_latency_p99"},
}

// Report ranges: a report's period, relative to when it runs.
const (
	RangeLastHour  = "last_hour"
	RangeLast24h   = "last_24h"
	RangeLast7d    = "last_7d"
	RangeLast30d   = "last_30d"
	RangeThisMonth = "this_month"
	RangeLastMonth = "last_month"
	RangeCustom    = "custom" // From and To
)

// ReportRanges lists the ranges.
var ReportRanges = []string{RangeLastHour, RangeLast24h, RangeLast7d, RangeLast30d, RangeThisMonth, RangeLastMonth, RangeCustom}

// Report charts and schedules.
var (
	ReportCharts    = []string{"line", "bar", "table"}
	ReportSchedules = []string{"", "daily", "weekly", "monthly"}
)

// Report is an analytics question an organization saved: run on demand,
// or on its schedule.
type Report struct {
	ID          string      `json:"id"`
	Org         string      `json:"org"`
	Name        string      `json:"name"`
	Description string      `json:"description,omitempty"`
	Query       ReportQuery `json:"query"`
	Chart       string      `json:"chart"`
	Schedule    string      `json:"schedule,omitempty"`
	CreatedAt   time.Time   `json:"created_at"`
	UpdatedAt   time.Time   `json:"updated_at"`
}

// ReportQuery is what a report asks: an analytics series over its range.
type ReportQuery struct {
	Metrics     []string          `json:"metrics"`
	GroupBy     string            `json:"group_by,omitempty"`
	Filters     []AnalyticsFilter `json:"filters,omitempty"`
	Range       string            `json:"range"`
	From        time.Time         `json:"from,omitzero"` // custom range
	To          time.Time         `json:"to,omitzero"`
	Granularity string            `json:"granularity,omitempty"` // "": by the range
}

// Check reports every problem of a report's fields at once.
func (r *Report) Check() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if n := len(strings.TrimSpace(r.Name)); n == 0 || len(r.Name) > 200 {
		bad("name: 1 to 200 bytes")
	}
	if len(r.Description) > 2000 {
		bad("description: at most 2000 bytes")
	}
	if !slices.Contains(ReportCharts, r.Chart) {
		bad("chart %q: want one of %v", r.Chart, ReportCharts)
	}
	if !slices.Contains(ReportSchedules, r.Schedule) {
		bad("schedule %q: want daily, weekly, monthly or none", r.Schedule)
	}
	q := r.Query
	var src []string
	var dims []string
	for i, ms := range AnalyticsMetrics {
		if len(q.Metrics) > 0 && slices.Contains(ms, q.Metrics[0]) {
			src, dims = ms, Rollups[i].Dims
		}
	}
	switch {
	case len(q.Metrics) == 0 || len(q.Metrics) > 5:
		bad("metrics: 1 to 5")
	case src == nil:
		bad("metric %q: want one of %v", q.Metrics[0], AnalyticsMetrics)
	}
	for _, m := range q.Metrics {
		if src != nil && !slices.Contains(src, m) {
			bad("metric %q: all metrics of a report come from one source, one of %v", m, AnalyticsMetrics)
		}
	}
	if q.GroupBy != "" && src != nil && !slices.Contains(dims, q.GroupBy) {
		bad("group_by %q: want one of %v", q.GroupBy, dims)
	}
	if len(q.Filters) > 10 {
		bad("filters: at most 10")
	}
	for _, f := range q.Filters {
		if src != nil && !slices.Contains(dims, f.Dim) {
			bad("filter %q: want one of %v", f.Dim, dims)
		}
		if len(f.Values) == 0 || len(f.Values) > 100 {
			bad("filter %q: 1 to 100 values", f.Dim)
		}
		for _, v := range f.Values {
			if len(v) > MaxIDBytes {
				bad("filter %q: a value over %d bytes", f.Dim, MaxIDBytes)
			}
		}
	}
	if !slices.Contains(ReportRanges, q.Range) {
		bad("range %q: want one of %v", q.Range, ReportRanges)
	}
	if (q.Range == RangeCustom) != (!q.From.IsZero() || !q.To.IsZero()) || (q.Range == RangeCustom && !q.From.Before(q.To)) {
		bad("from and to: set both, from before to, with range custom only")
	}
	if !slices.Contains([]string{"", GranularityMinute, GranularityHour, GranularityDay}, q.Granularity) {
		bad("granularity %q: want minute, hour, day or none", q.Granularity)
	}
	return errors.Join(errs...)
}

// Period is the range a report covers when it runs at now (UTC).
func (q ReportQuery) Period(now time.Time) (from, to time.Time) {
	now = now.UTC()
	month := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	switch q.Range {
	case RangeLastHour:
		return now.Add(-time.Hour), now
	case RangeLast24h:
		return now.Add(-24 * time.Hour), now
	case RangeLast7d:
		return now.AddDate(0, 0, -7), now
	case RangeLast30d:
		return now.AddDate(0, 0, -30), now
	case RangeThisMonth:
		return month, now
	case RangeLastMonth:
		return month.AddDate(0, -1, 0), month
	}
	return q.From, q.To
}

// Analytics is the series query of a report run at now; the granularity,
// when the report sets none, fits the period.
func (q ReportQuery) Analytics(now time.Time) AnalyticsQuery {
	from, to := q.Period(now)
	g := q.Granularity
	if g == "" {
		g = DefaultGranularity(to.Sub(from))
	}
	return AnalyticsQuery{Metrics: q.Metrics, GroupBy: q.GroupBy, Filters: q.Filters, From: from, To: to, Granularity: g}
}

// ReportPeriod is the last whole period of a schedule before now (UTC):
// its label (2006-01-02 daily, 2006-W01 weekly by ISO week from Monday,
// 2006-01 monthly) and range; ok is false with no schedule.
func ReportPeriod(schedule string, now time.Time) (label string, from, to time.Time, ok bool) {
	now = now.UTC()
	today := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	switch schedule {
	case "daily":
		from = today.AddDate(0, 0, -1)
		return from.Format("2006-01-02"), from, today, true
	case "weekly":
		monday := today.AddDate(0, 0, -((int(today.Weekday()) + 6) % 7))
		from = monday.AddDate(0, 0, -7)
		y, w := from.ISOWeek()
		return fmt.Sprintf("%04d-W%02d", y, w), from, monday, true
	case "monthly":
		to = time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
		from = to.AddDate(0, -1, 0)
		return from.Format("2006-01"), from, to, true
	}
	return "", time.Time{}, time.Time{}, false
}

// ReportRun is a report's answer: its definition, the period and the
// series.
type ReportRun struct {
	Report Report           `json:"report"`
	RanAt  time.Time        `json:"ran_at"`
	Series *AnalyticsSeries `json:"series"`
}
