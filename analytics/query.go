// Package analytics answers an organization's questions about its
// traffic from the ClickHouse rollups (schemas.Rollups): time series at
// minute, hour and day granularity, top-N of a dimension, and the totals
// of the dashboard's overview. Metric and dimension names map through the
// tables below to columns; nothing a caller sends becomes SQL text, and
// every statement starts from scope, which binds the organization. It
// depends only on internal/ and schemas/; cmd mounts it on ingest's
// analytics routes and runs its Sealer beside the ClickHouse sink.
package analytics

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/certnode/certnode/schemas"
)

// agg is what a metric reads from a rollup.
type agg int

const (
	aggIDs     agg = iota // distinct ids
	aggBytes              // sum of bytes
	aggLatency            // a latency percentile
)

// metric is one measurable quantity of a source.
type metric struct {
	src *schemas.Rollup
	agg agg
	q   int // the percentile's index in schemas.RollupQuantiles
}

// Metrics lists the metrics a query may ask for.
var metrics = map[string]metric{
	"requests":            {src: &schemas.ResultsRollup, agg: aggIDs},
	"bytes":               {src: &schemas.ResultsRollup, agg: aggBytes},
	"latency_p50":         {src: &schemas.ResultsRollup, agg: aggLatency, q: 0},
	"latency_p90":         {src: &schemas.ResultsRollup, agg: aggLatency, q: 1},
	"latency_p99":         {src: &schemas.ResultsRollup, agg: aggLatency, q: 2},
	"webhook_attempts":    {src: &schemas.WebhooksRollup, agg: aggIDs},
	"webhook_latency_p50": {src: &schemas.WebhooksRollup, agg: aggLatency, q: 0},
	"webhook_latency_p90": {src: &schemas.WebhooksRollup, agg: aggLatency, q: 1},
	"webhook_latency_p99": {src: &schemas.WebhooksRollup, agg: aggLatency, q: 2},
}

// MetricNames and Dimensions list what a query may name, for errors and
// the API's documentation.
func MetricNames() []string {
	out := make([]string, 0, len(metrics))
	for m := range metrics {
		out = append(out, m)
	}
	slices.Sort(out)
	return out
}

// Limits of a query: a series holds at most maxBuckets buckets, a top-N
// at most MaxTop groups, a filter at most maxFilterValues values.
const (
	maxBuckets      = 3000
	MaxTop          = 100
	maxFilterValues = 100
)

// granularities maps a granularity to the width of its buckets.
var granularities = map[string]time.Duration{
	schemas.GranularityMinute: time.Minute,
	schemas.GranularityHour:   time.Hour,
	schemas.GranularityDay:    24 * time.Hour,
}

// plan is a checked query: its source, what to read, and its range with
// its edges on bucket (or, for totals, hour) boundaries.
type plan struct {
	org      string
	src      *schemas.Rollup
	metrics  []string
	group    string // a dimension of src, or ""
	filters  []schemas.AnalyticsFilter
	from, to time.Time
	step     time.Duration // 0: totals over the range
	bytes    bool          // a metric reads bytes
	latency  bool          // a metric reads the t-digest
}

// newPlan checks q for org. series says whether it asks for buckets.
func newPlan(org string, q schemas.AnalyticsQuery, series bool) (*plan, error) {
	if err := schemas.CheckTenantID(org); err != nil {
		return nil, fmt.Errorf("analytics: %w", err)
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", schemas.ErrBadAnalyticsQuery, fmt.Sprintf(format, args...))
	}
	if len(q.Metrics) == 0 {
		return nil, bad("name at least one metric: %s", strings.Join(MetricNames(), ", "))
	}
	p := &plan{org: org, group: q.GroupBy}
	for _, name := range q.Metrics {
		m, ok := metrics[name]
		if !ok {
			return nil, bad("unknown metric %q: want one of %s", name, strings.Join(MetricNames(), ", "))
		}
		if p.src != nil && p.src != m.src {
			return nil, bad("metrics %q and %q come from different data: ask for them separately", p.metrics[0], name)
		}
		if slices.Contains(p.metrics, name) {
			return nil, bad("metric %q is named twice", name)
		}
		p.src = m.src
		p.metrics = append(p.metrics, name)
		p.bytes = p.bytes || m.agg == aggBytes
		p.latency = p.latency || m.agg == aggLatency
	}
	if p.group != "" && !slices.Contains(p.src.Dims, p.group) {
		return nil, bad("cannot group %s by %q: want one of %s", p.metrics[0], p.group, strings.Join(p.src.Dims, ", "))
	}
	seen := map[string]bool{}
	for _, f := range q.Filters {
		switch {
		case !slices.Contains(p.src.Dims, f.Dim):
			return nil, bad("cannot filter %s by %q: want one of %s", p.metrics[0], f.Dim, strings.Join(p.src.Dims, ", "))
		case seen[f.Dim]:
			return nil, bad("filter %q is given twice", f.Dim)
		case len(f.Values) == 0 || len(f.Values) > maxFilterValues:
			return nil, bad("filter %q needs 1 to %d values", f.Dim, maxFilterValues)
		}
		for _, v := range f.Values {
			if len(v) > schemas.MaxIDBytes {
				return nil, bad("a value of filter %q is over %d bytes", f.Dim, schemas.MaxIDBytes)
			}
		}
		seen[f.Dim] = true
		p.filters = append(p.filters, f)
	}
	if q.From.IsZero() || q.To.IsZero() || !q.From.Before(q.To) {
		return nil, bad("from must be before to")
	}
	unit := time.Hour
	if series {
		var ok bool
		if p.step, ok = granularities[q.Granularity]; !ok {
			return nil, bad("granularity %q: want minute, hour or day", q.Granularity)
		}
		unit = p.step
	}
	// Buckets start on whole units since the epoch, which for days is
	// midnight UTC; the range widens to whole buckets.
	p.from, p.to = q.From.UTC().Truncate(unit), q.To.UTC().Add(unit-1).Truncate(unit)
	if p.from.Unix() < 0 || p.to.Unix() > 1<<32-1 {
		return nil, bad("from and to must lie between 1970 and 2106")
	}
	if series && p.to.Sub(p.from)/p.step > maxBuckets {
		return nil, bad("%s buckets from %s to %s are more than %d: choose a coarser granularity or a shorter range",
			q.Granularity, p.from.Format(time.RFC3339), p.to.Format(time.RFC3339), maxBuckets)
	}
	return p, nil
}

// scope is the start of every WHERE clause: the organization, and the
// range of col, which holds the rows' minutes or hours. Its arguments lead
// the statement's.
func (p *plan) scope(col string, from, to time.Time) (string, []any) {
	return "org = ? AND " + col + " >= toDateTime(?) AND " + col + " < toDateTime(?)", []any{p.org, from.Unix(), to.Unix()}
}

// where is scope plus the filters.
func (p *plan) where(col string, from, to time.Time) (string, []any) {
	sql, args := p.scope(col, from, to)
	f, fa := p.filterSQL()
	return sql + f, append(args, fa...)
}

// filterSQL is the filters: each dimension IN a set.
func (p *plan) filterSQL() (string, []any) {
	var sql string
	var args []any
	for _, f := range p.filters {
		vals := make([]any, len(f.Values))
		for i, v := range f.Values {
			vals[i] = v
		}
		sql += " AND " + f.Dim + " IN ?"
		args = append(args, clickhouse.GroupSet{Value: vals})
	}
	return sql, args
}

// hourSet binds a set of hours as seconds since the epoch.
func hourSet(hours []time.Time) clickhouse.GroupSet {
	out := make([]any, len(hours))
	for i, h := range hours {
		out[i] = uint32(h.Unix())
	}
	return clickhouse.GroupSet{Value: out}
}

// aggregates lists the inner columns a query reads: n0 (ids), s0 (bytes),
// q0 (t-digest state), from the sealed table when sealed and from the
// minute states otherwise.
func (p *plan) aggregates(sealed bool) string {
	var cols []string
	if sealed {
		cols = append(cols, "ids AS n0")
		if p.bytes {
			cols = append(cols, "bytes AS s0")
		}
		if p.latency {
			cols = append(cols, "latency AS q0")
		}
	} else {
		cols = append(cols, "uniqExactMerge(ids) AS n0")
		if p.bytes {
			cols = append(cols, "sumMerge(bytes) AS s0")
		}
		if p.latency {
			cols = append(cols, "quantilesTDigestMergeState("+schemas.RollupQuantiles+")(latency) AS q0")
		}
	}
	return strings.Join(cols, ", ")
}

// outer lists the answer's columns after the bucket and the group:
// n (UInt64), then s (UInt64) and q (Array(Float32)) when read.
func (p *plan) outer() string {
	cols := []string{"sum(n0) AS n"}
	if p.bytes {
		cols = append(cols, "sum(s0) AS s")
	}
	if p.latency {
		cols = append(cols, "quantilesTDigestMerge("+schemas.RollupQuantiles+")(q0) AS q")
	}
	return strings.Join(cols, ", ")
}

// sql returns the statement of a plan whose hours in live (sorted) are read from
// the minute states and the others from their latest seals; allLive reads
// every hour from the minutes. Minute buckets are always read from the
// minutes. Distinct ids are counted per minute (or hour) and every
// combination of dimensions, then summed: a request counts once in each
// combination it had (a replay that ended differently counts under both
// statuses), which is what a seal holds, so an answer does not change
// when an hour is sealed.
func (p *plan) sql(live []time.Time, allLive bool) (string, []any) {
	dims := strings.Join(p.src.Dims, ", ")
	var bucket, g0, g string
	switch p.step {
	case 0:
	case time.Minute:
		bucket = "h0 AS b, "
	case time.Hour:
		bucket = "h0 AS b, "
	default:
		bucket = "toStartOfDay(h0) AS b, "
	}
	if p.group != "" {
		g0, g = ", "+p.group+" AS g0", "g0 AS g, "
	}
	var parts []string
	var args []any
	minuteRead := func(timeExpr string, hours []time.Time) {
		from, to := p.from, p.to
		if hours != nil { // sorted: read only the minutes between the first and the last
			if first := hours[0]; first.After(from) {
				from = first
			}
			if last := hours[len(hours)-1].Add(time.Hour); last.Before(to) {
				to = last
			}
		}
		w, a := p.where("minute", from, to)
		if hours != nil {
			w += " AND toUInt32(toStartOfHour(minute)) IN ?"
			a = append(a, hourSet(hours))
		}
		parts = append(parts, fmt.Sprintf("SELECT %s AS h0%s, %s FROM %s WHERE %s GROUP BY h0, %s",
			timeExpr, g0, p.aggregates(false), p.src.Minutes(), w, dims))
		args = append(args, a...)
	}
	switch {
	case p.step == time.Minute:
		minuteRead("minute", nil)
	case allLive:
		minuteRead("toStartOfHour(minute)", nil)
	default:
		w, a := p.where("hour", p.from, p.to)
		w += p.sealedRows()
		if len(live) > 0 {
			w += " AND toUInt32(hour) NOT IN ?"
			a = append(a, hourSet(live))
		}
		latest, la := p.scope("hour", p.from, p.to)
		w += " AND (hour, version) IN (SELECT hour, max(version) FROM " + p.src.Hours() + " WHERE " + latest + p.sealedRows() + " GROUP BY hour)"
		parts = append(parts, fmt.Sprintf("SELECT hour AS h0%s, %s FROM %s WHERE %s", g0, p.aggregates(true), p.src.Hours(), w))
		args = append(append(args, a...), la...)
		if len(live) > 0 {
			minuteRead("toStartOfHour(minute)", live)
		}
	}
	sql := fmt.Sprintf("SELECT %s%s%s FROM (%s)", bucket, g, p.outer(), strings.Join(parts, " UNION ALL "))
	var keys []string
	if bucket != "" {
		keys = append(keys, "b")
	}
	if g != "" {
		keys = append(keys, "g")
	}
	if len(keys) > 0 {
		sql += " GROUP BY " + strings.Join(keys, ", ") + " ORDER BY " + strings.Join(keys, ", ")
	}
	return sql, args
}

// sealedRows picks the sealed rows a plan reads: the hour's totals when it
// neither filters nor groups, else the rows of each combination.
func (p *plan) sealedRows() string {
	if p.group == "" && len(p.filters) == 0 {
		return " AND total = 1"
	}
	return " AND total = 0"
}

// freshnessSQL returns, for each hour of the plan's range that has rows,
// the server time of its latest change and of the read of its latest seal
// (0 when never sealed).
func (p *plan) freshnessSQL() (string, []any) {
	w, a := p.scope("hour", p.from, p.to)
	w2, a2 := p.scope("hour", p.from, p.to)
	return fmt.Sprintf("SELECT hour, c_changed, s_read FROM "+
		"(SELECT hour, maxMerge(inserted) AS c_changed FROM %s WHERE %s GROUP BY hour) "+
		"ANY LEFT JOIN (SELECT hour, argMax(read_at, version) AS s_read FROM %s WHERE %s%s GROUP BY hour) USING hour",
		p.src.Changes(), w, p.src.Hours(), w2, p.sealedRows()), append(a, a2...)
}
