package analytics

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/certnode/certnode/schemas"
)

var (
	t0 = time.Date(2026, 11, 1, 10, 17, 0, 0, time.UTC)
	t1 = t0.Add(26 * time.Hour)
)

func TestPlanRefusesBadQueries(t *testing.T) {
	long := strings.Repeat("x", schemas.MaxIDBytes+1)
	for name, q := range map[string]schemas.AnalyticsQuery{
		"no metric":        {From: t0, To: t1},
		"unknown metric":   {Metrics: []string{"requests; DROP TABLE x"}, From: t0, To: t1},
		"two sources":      {Metrics: []string{"requests", "webhook_attempts"}, From: t0, To: t1},
		"metric twice":     {Metrics: []string{"requests", "requests"}, From: t0, To: t1},
		"unknown group":    {Metrics: []string{"requests"}, GroupBy: "tenant", From: t0, To: t1},
		"other source dim": {Metrics: []string{"requests"}, GroupBy: "outcome", From: t0, To: t1},
		"unknown filter":   {Metrics: []string{"requests"}, Filters: []schemas.AnalyticsFilter{{Dim: "org", Values: []string{"x"}}}, From: t0, To: t1},
		"filter twice": {Metrics: []string{"requests"}, From: t0, To: t1,
			Filters: []schemas.AnalyticsFilter{{Dim: "kind", Values: []string{"sign"}}, {Dim: "kind", Values: []string{"verify"}}}},
		"empty filter":       {Metrics: []string{"requests"}, Filters: []schemas.AnalyticsFilter{{Dim: "kind"}}, From: t0, To: t1},
		"long filter value":  {Metrics: []string{"requests"}, Filters: []schemas.AnalyticsFilter{{Dim: "kind", Values: []string{long}}}, From: t0, To: t1},
		"backwards":          {Metrics: []string{"requests"}, From: t1, To: t0},
		"no range":           {Metrics: []string{"requests"}},
		"before 1970":        {Metrics: []string{"requests"}, From: time.Unix(-7200, 0), To: t0},
		"too many buckets":   {Metrics: []string{"requests"}, From: t0, To: t0.Add(51 * time.Hour), Granularity: schemas.GranularityMinute},
		"no granularity":     {Metrics: []string{"requests"}, From: t0, To: t1, Granularity: "week"},
		"too many days":      {Metrics: []string{"requests"}, From: t0, To: t0.AddDate(9, 0, 0), Granularity: schemas.GranularityDay},
		"hours over 4 month": {Metrics: []string{"requests"}, From: t0, To: t0.AddDate(0, 4, 10), Granularity: schemas.GranularityHour},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := newPlan("org1", q, q.Granularity != ""); !errors.Is(err, schemas.ErrBadAnalyticsQuery) {
				t.Fatalf("err %v, want ErrBadAnalyticsQuery", err)
			}
		})
	}
	if _, err := newPlan("bad org", schemas.AnalyticsQuery{Metrics: []string{"requests"}, From: t0, To: t1}, false); err == nil {
		t.Fatal("an organization id that is not one was accepted")
	}
}

// Values from the caller reach the statement only as arguments, the
// organization first; names map to columns through the tables.
func TestSQLBindsEveryValue(t *testing.T) {
	hostile := "x' OR 1=1 --"
	p, err := newPlan("org1", schemas.AnalyticsQuery{Metrics: []string{"requests", "latency_p99", "bytes"}, GroupBy: "reason",
		Filters: []schemas.AnalyticsFilter{{Dim: "key_id", Values: []string{hostile, "k2"}}}, From: t0, To: t1, Granularity: schemas.GranularityHour}, true)
	if err != nil {
		t.Fatal(err)
	}
	if !p.from.Equal(t0.Truncate(time.Hour)) || !p.to.Equal(t1.Truncate(time.Hour).Add(time.Hour)) {
		t.Fatalf("range widened to %v..%v", p.from, p.to)
	}
	live := []time.Time{p.to.Add(-time.Hour)}
	for name, c := range map[string]struct {
		live    []time.Time
		allLive bool
		want    []string
		tables  []string
	}{
		"sealed and live": {live: live, want: []string{"UNION ALL", "NOT IN ?", "(hour, version) IN (SELECT hour, max(version)", "GROUP BY b, g ORDER BY b, g"},
			tables: []string{schemas.ResultsRollup.Hours(), schemas.ResultsRollup.Minutes()}},
		"all sealed": {want: []string{"(hour, version) IN"}, tables: []string{schemas.ResultsRollup.Hours()}},
		"all live":   {allLive: true, want: []string{"toStartOfHour(minute) AS h0"}, tables: []string{schemas.ResultsRollup.Minutes()}},
	} {
		t.Run(name, func(t *testing.T) {
			sql, args := p.sql(c.live, c.allLive)
			if strings.Contains(sql, hostile) || strings.Contains(sql, "org1") {
				t.Fatalf("a value is in the SQL text: %s", sql)
			}
			for _, w := range c.want {
				if !strings.Contains(sql, w) {
					t.Errorf("SQL lacks %q: %s", w, sql)
				}
			}
			for _, table := range []string{schemas.ResultsRollup.Hours(), schemas.ResultsRollup.Minutes()} {
				if reads, want := strings.Contains(sql, "FROM "+table+" "), slices.Contains(c.tables, table); reads != want {
					t.Errorf("SQL reads %s: %v, want %v: %s", table, reads, want, sql)
				}
			}
			if strings.Count(sql, "?") != len(args) {
				t.Fatalf("%d placeholders, %d arguments: %s", strings.Count(sql, "?"), len(args), sql)
			}
			// Each part starts from scope: the organization is its first argument.
			orgs := 0
			for i, a := range args {
				if a == "org1" {
					orgs++
					if from, ok := args[i+1].(int64); !ok || from < p.from.Unix() || from >= p.to.Unix() {
						t.Errorf("argument %d: the organization is not followed by the start of a range within the query's", i)
					}
				}
				if set, ok := a.(clickhouse.GroupSet); ok && len(set.Value) == 2 && set.Value[0] != hostile {
					t.Errorf("the filter's values are %v", set.Value)
				}
			}
			if want := strings.Count(sql, "org = ?"); orgs != want || orgs == 0 {
				t.Errorf("the organization is bound %d times for %d scopes", orgs, want)
			}
		})
	}
	// Another source's plan reads its own tables.
	w, err := newPlan("org1", schemas.AnalyticsQuery{Metrics: []string{"webhook_attempts"}, GroupBy: "outcome", From: t0, To: t1}, false)
	if err != nil {
		t.Fatal(err)
	}
	if sql, _ := w.sql(nil, false); !strings.Contains(sql, schemas.WebhooksRollup.Hours()) || strings.Contains(sql, "sumMerge") || strings.Contains(sql, "AS b") {
		t.Errorf("webhook totals: %s", sql)
	}
}

func TestSeriesGranularityLimits(t *testing.T) {
	for _, c := range []struct {
		gran string
		span time.Duration
		ok   bool
	}{
		{schemas.GranularityMinute, 48 * time.Hour, true},
		{schemas.GranularityHour, 120 * 24 * time.Hour, true},
		{schemas.GranularityDay, 3 * 365 * 24 * time.Hour, true},
	} {
		from := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		_, err := newPlan("o", schemas.AnalyticsQuery{Metrics: []string{"requests"}, From: from, To: from.Add(c.span), Granularity: c.gran}, true)
		if (err == nil) != c.ok {
			t.Errorf("%s over %v: %v", c.gran, c.span, err)
		}
	}
}

// The metrics the API documents (schemas.AnalyticsMetrics, by source in
// the order of schemas.Rollups) are the ones a query may name.
func TestMetricsMatchSchemas(t *testing.T) {
	n := 0
	for i, names := range schemas.AnalyticsMetrics {
		for _, name := range names {
			m, ok := metrics[name]
			if !ok || m.src.Name != schemas.Rollups[i].Name {
				t.Errorf("metric %q of source %d: %v %+v", name, i, ok, m)
			}
			n++
		}
	}
	if n != len(metrics) {
		t.Errorf("schemas lists %d metrics, analytics answers %d", n, len(metrics))
	}
}
