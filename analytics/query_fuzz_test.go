package analytics

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/certnode/certnode/schemas"
)

// Whatever a caller sends, a query is refused as a bad query or becomes a
// statement whose text holds only names from the tables, with a
// placeholder for every argument.
func FuzzPlan(f *testing.F) {
	f.Add("requests,latency_p99", "status", "key_id", "k1,k2", "hour", int64(1793059200), int64(86400), int64(3600))
	f.Add("webhook_attempts", "outcome", "endpoint_id", "ep_1", "minute", int64(0), int64(60), int64(0))
	f.Add("bytes", "", "kind", "sign' OR '1'='1", "day", int64(-5), int64(1<<40), int64(7200))
	f.Fuzz(func(t *testing.T, metrics, group, dim, vals, gran string, from, span, live int64) {
		q := schemas.AnalyticsQuery{Metrics: strings.Split(metrics, ","), GroupBy: group, Granularity: gran,
			From: time.Unix(from, 0), To: time.Unix(from, 0).Add(time.Duration(span) * time.Second)}
		if dim != "" {
			q.Filters = []schemas.AnalyticsFilter{{Dim: dim, Values: strings.Split(vals, ",")}}
		}
		for _, series := range []bool{false, true} {
			p, err := newPlan("org1", q, series)
			if err != nil {
				if !errors.Is(err, schemas.ErrBadAnalyticsQuery) {
					t.Fatalf("error %v is not a bad query", err)
				}
				continue
			}
			var hours []time.Time
			if live > 0 {
				hours = []time.Time{p.from.Add(time.Duration(live%24) * time.Hour)}
			}
			for _, allLive := range []bool{false, true} {
				sql, args := p.sql(hours, allLive)
				if strings.Count(sql, "?") != len(args) {
					t.Fatalf("%d placeholders, %d arguments: %s", strings.Count(sql, "?"), len(args), sql)
				}
				for _, v := range strings.Split(vals, ",") {
					if len(v) > 2 && strings.Contains(sql, v) && !slices.Contains(p.src.Dims, v) && !strings.Contains(allNames, v) {
						t.Fatalf("value %q is in the SQL: %s", v, sql)
					}
				}
			}
		}
	})
}

// allNames is every name a statement may hold, for FuzzPlan to tell a
// value that happens to be one of them.
var allNames = func() string {
	p := &plan{org: "o", src: &schemas.ResultsRollup, bytes: true, latency: true, group: "status", step: time.Hour}
	w := &plan{org: "o", src: &schemas.WebhooksRollup, latency: true, group: "outcome", step: time.Minute}
	a, _ := p.sql([]time.Time{time.Unix(0, 0)}, false)
	b, _ := w.sql(nil, false)
	c, _ := p.sql(nil, true)
	fa, _ := p.freshnessSQL()
	return a + b + c + fa + strings.Join(slices.Concat(schemas.ResultsRollup.Dims, schemas.WebhooksRollup.Dims), " ")
}()
