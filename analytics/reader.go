package analytics

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/certnode/certnode/internal/chconn"
	"github.com/certnode/certnode/schemas"
)

// SealMargin is how much older than a seal's read an hour's latest change
// must be for the seal to hold it: an insert is dated (now() in the
// view) before its parts become visible, by well under this.
const SealMargin = 10 * time.Second

// maxLiveHours bounds the hours read from the minute states beside the
// sealed ones; past it (a sealer that stopped) a query reads them all.
const maxLiveHours = 168

// DefaultSeriesGroups is how many groups a grouped series keeps (the
// largest by the first metric) when the query sets no limit.
const DefaultSeriesGroups = 10

// Reader answers analytics queries from ClickHouse.
type Reader struct {
	conn driver.Conn
}

// Open connects to ClickHouse.
func Open(ctx context.Context, o chconn.Options) (*Reader, error) {
	conn, err := chconn.Open(ctx, o)
	if err != nil {
		return nil, err
	}
	return &Reader{conn: conn}, nil
}

// Close closes the connection.
func (r *Reader) Close() error { return r.conn.Close() }

// row is one row of an answer: its bucket, its group and its values.
type row struct {
	b time.Time
	g string
	n uint64
	s uint64
	q []float32 // the percentiles of schemas.RollupQuantiles; empty: none measured
}

// run answers a plan: it finds the hours whose seals are current, then
// reads the rest from the minutes.
func (r *Reader) run(ctx context.Context, p *plan) ([]row, error) {
	var live []time.Time
	allLive := false
	if p.step != time.Minute {
		sql, args := p.freshnessSQL()
		err := chconn.Each(ctx, r.conn, "analytics", sql, args, func(rows driver.Rows) error {
			var hour, changed, read time.Time
			if err := rows.Scan(&hour, &changed, &read); err != nil {
				return err
			}
			if read.Before(changed.Add(SealMargin)) {
				live = append(live, hour)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if len(live) > maxLiveHours {
			live, allLive = nil, true
		}
		slices.SortFunc(live, time.Time.Compare)
	}
	sql, args := p.sql(live, allLive)
	var out []row
	err := chconn.Each(ctx, r.conn, "analytics", sql, args, func(rows driver.Rows) error {
		var x row
		dest := []any{}
		if p.step != 0 {
			dest = append(dest, &x.b)
		}
		if p.group != "" {
			dest = append(dest, &x.g)
		}
		dest = append(dest, &x.n)
		if p.bytes {
			dest = append(dest, &x.s)
		}
		if p.latency {
			dest = append(dest, &x.q)
		}
		if err := rows.Scan(dest...); err != nil {
			return err
		}
		out = append(out, x)
		return nil
	})
	return out, err
}

// value is a metric's value in a row: nil for a percentile of nothing.
func value(name string, x row) *float64 {
	m := metrics[name]
	var v float64
	switch m.agg {
	case aggIDs:
		v = float64(x.n)
	case aggBytes:
		v = float64(x.s)
	case aggLatency:
		if x.n == 0 || m.q >= len(x.q) || math.IsNaN(float64(x.q[m.q])) {
			return nil
		}
		v = math.Round(float64(x.q[m.q])*10) / 10
	}
	return &v
}

// Series answers a time series of org.
func (r *Reader) Series(ctx context.Context, org string, q schemas.AnalyticsQuery) (*schemas.AnalyticsSeries, error) {
	p, limit, rows, err := r.answer(ctx, org, q, true)
	if err != nil {
		return nil, err
	}
	out := &schemas.AnalyticsSeries{Granularity: q.Granularity, From: p.from, To: p.to, GroupBy: p.group, Series: []schemas.AnalyticsLine{}}
	for t := p.from; t.Before(p.to); t = t.Add(p.step) {
		out.Timestamps = append(out.Timestamps, t)
	}
	type group struct {
		name  string
		total float64
		lines []schemas.AnalyticsLine
	}
	groups := map[string]*group{}
	for _, x := range rows {
		g := groups[x.g]
		if g == nil {
			g = &group{name: x.g}
			for _, m := range p.metrics {
				line := schemas.AnalyticsLine{Metric: m, Group: x.g, Values: make([]*float64, len(out.Timestamps))}
				if metrics[m].agg != aggLatency {
					for i := range line.Values {
						line.Values[i] = new(float64)
					}
				}
				g.lines = append(g.lines, line)
			}
			groups[x.g] = g
		}
		i := int(x.b.Sub(p.from) / p.step)
		if i < 0 || i >= len(out.Timestamps) {
			continue
		}
		for j, m := range p.metrics {
			g.lines[j].Values[i] = value(m, x)
		}
		if v := g.lines[0].Values[i]; v != nil && metrics[p.metrics[0]].agg != aggLatency {
			g.total += *v
		}
	}
	list := make([]*group, 0, len(groups))
	for _, g := range groups {
		list = append(list, g)
	}
	slices.SortFunc(list, func(a, b *group) int { return cmp.Or(cmp.Compare(b.total, a.total), cmp.Compare(a.name, b.name)) })
	if p.group != "" && len(list) > limit {
		list = list[:limit]
	}
	for _, g := range list {
		out.Series = append(out.Series, g.lines...)
	}
	if len(list) == 0 && p.group == "" { // nothing measured: the lines still exist, all empty
		for _, m := range p.metrics {
			line := schemas.AnalyticsLine{Metric: m, Values: make([]*float64, len(out.Timestamps))}
			if metrics[m].agg != aggLatency {
				for i := range line.Values {
					line.Values[i] = new(float64)
				}
			}
			out.Series = append(out.Series, line)
		}
	}
	return out, nil
}

// answer checks q (series: in buckets) and runs it, returning its plan,
// the groups to keep (q.Limit, or DefaultSeriesGroups) and the rows.
func (r *Reader) answer(ctx context.Context, org string, q schemas.AnalyticsQuery, series bool) (*plan, int, []row, error) {
	p, err := newPlan(org, q, series)
	if err != nil {
		return nil, 0, nil, err
	}
	limit := q.Limit
	switch {
	case limit == 0:
		limit = DefaultSeriesGroups
	case limit < 0 || limit > MaxTop:
		return nil, 0, nil, fmt.Errorf("%w: limit must be 1 to %d", schemas.ErrBadAnalyticsQuery, MaxTop)
	}
	rows, err := r.run(ctx, p)
	return p, limit, rows, err
}

// Top answers the groups of q.GroupBy with the largest first metric over
// q's range (widened to whole hours).
func (r *Reader) Top(ctx context.Context, org string, q schemas.AnalyticsQuery) (*schemas.AnalyticsTop, error) {
	if q.GroupBy == "" {
		return nil, fmt.Errorf("%w: name the dimension to rank", schemas.ErrBadAnalyticsQuery)
	}
	p, limit, rows, err := r.answer(ctx, org, q, false)
	if err != nil {
		return nil, err
	}
	out := &schemas.AnalyticsTop{From: p.from, To: p.to, Dimension: p.group, Metrics: p.metrics, Rows: []schemas.AnalyticsTopRow{}}
	for _, x := range rows {
		tr := schemas.AnalyticsTopRow{Group: x.g}
		for _, m := range p.metrics {
			tr.Values = append(tr.Values, value(m, x))
		}
		out.Rows = append(out.Rows, tr)
	}
	first := func(tr schemas.AnalyticsTopRow) float64 {
		if tr.Values[0] == nil {
			return math.Inf(-1)
		}
		return *tr.Values[0]
	}
	slices.SortFunc(out.Rows, func(a, b schemas.AnalyticsTopRow) int {
		return cmp.Or(cmp.Compare(first(b), first(a)), cmp.Compare(a.Group, b.Group))
	})
	if len(out.Rows) > limit {
		out.Rows = out.Rows[:limit]
	}
	return out, nil
}

// Summary answers org's totals over [from, to) (widened to whole hours).
func (r *Reader) Summary(ctx context.Context, org string, from, to time.Time) (*schemas.AnalyticsSummary, error) {
	totals := func(group string, metrics ...string) ([]row, *plan, error) {
		p, err := newPlan(org, schemas.AnalyticsQuery{Metrics: metrics, GroupBy: group, From: from, To: to}, false)
		if err != nil {
			return nil, nil, err
		}
		rows, err := r.run(ctx, p)
		return rows, p, err
	}
	percentiles := func(metricPrefix string, rows []row) schemas.Percentiles {
		if len(rows) == 0 {
			return schemas.Percentiles{}
		}
		return schemas.Percentiles{P50: value(metricPrefix+"p50", rows[0]), P90: value(metricPrefix+"p90", rows[0]), P99: value(metricPrefix+"p99", rows[0])}
	}
	byStatus, p, err := totals("status", "requests", "bytes")
	if err != nil {
		return nil, err
	}
	out := &schemas.AnalyticsSummary{From: p.from, To: p.to}
	for _, x := range byStatus {
		out.Requests += x.n
		out.Bytes += x.s
		switch schemas.Status(x.g) {
		case schemas.StatusSigned:
			out.Signed += x.n
		case schemas.StatusValid:
			out.Valid += x.n
		case schemas.StatusInvalid:
			out.Invalid += x.n
		case schemas.StatusFailed:
			out.Failed += x.n
		}
	}
	latency, _, err := totals("", "latency_p50", "latency_p90", "latency_p99")
	if err != nil {
		return nil, err
	}
	out.LatencyMillis = percentiles("latency_", latency)
	byOutcome, _, err := totals("outcome", "webhook_attempts")
	if err != nil {
		return nil, err
	}
	for _, x := range byOutcome {
		out.Webhooks.Attempts += x.n
		switch x.g {
		case schemas.OutcomeDelivered:
			out.Webhooks.Delivered += x.n
		case schemas.OutcomeRetrying:
			out.Webhooks.Retrying += x.n
		default:
			out.Webhooks.Failed += x.n
		}
	}
	wl, _, err := totals("", "webhook_latency_p50", "webhook_latency_p90", "webhook_latency_p99")
	if err != nil {
		return nil, err
	}
	out.Webhooks.LatencyMillis = percentiles("webhook_latency_", wl)
	return out, nil
}
