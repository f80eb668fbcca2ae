package ingest

import (
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/certnode/certnode/schemas"
)

func TestUsageQuery(t *testing.T) {
	now := time.Date(2026, 5, 20, 10, 30, 0, 0, time.UTC)
	may := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		query string
		want  schemas.UsageQuery
		code  string
	}{
		{"", schemas.UsageQuery{From: may, To: now, Granularity: "day"}, ""},
		{"granularity=hour&group_by=key&from=2026-05-19T00:00:00Z&to=2026-05-20T00:00:00Z",
			schemas.UsageQuery{From: may.AddDate(0, 0, 18), To: may.AddDate(0, 0, 19), Granularity: "hour", GroupBy: "key"}, ""},
		{"from=2026-05-19T02:00:00%2B02:00", schemas.UsageQuery{From: may.AddDate(0, 0, 18), To: now, Granularity: "day"}, ""},
		{"granularity=month", schemas.UsageQuery{}, "invalid_granularity"},
		{"granularity=", schemas.UsageQuery{}, "invalid_granularity"},
		{"group_by=org", schemas.UsageQuery{}, "invalid_group_by"},
		{"from=yesterday", schemas.UsageQuery{}, "invalid_from"},
		{"to=2026-05-20", schemas.UsageQuery{}, "invalid_to"},
		{"from=2026-05-20T00:00:00Z&to=2026-05-20T00:00:00Z", schemas.UsageQuery{}, "invalid_range"},
		{"from=2026-06-01T00:00:00Z", schemas.UsageQuery{}, "invalid_range"},
		{"granularity=hour&from=2026-04-01T00:00:00Z&to=2026-05-02T00:00:01Z", schemas.UsageQuery{}, "range_too_large"},
		{"granularity=hour&from=2026-04-01T00:00:00Z&to=2026-05-02T00:00:00Z",
			schemas.UsageQuery{From: may.AddDate(0, -1, 0), To: may.AddDate(0, 0, 1), Granularity: "hour"}, ""},
		{"from=2025-01-01T00:00:00Z&to=2026-01-02T00:00:01Z", schemas.UsageQuery{}, "range_too_large"},
	} {
		t.Run(tc.query, func(t *testing.T) {
			var ctx fasthttp.RequestCtx
			ctx.Request.SetRequestURI("/v1/usage?" + tc.query)
			q, ok := usageQuery(&ctx, now)
			if tc.code != "" {
				body := string(ctx.Response.Body())
				if ok || ctx.Response.StatusCode() != 400 || !strings.Contains(body, `"code":"`+tc.code+`"`) {
					t.Fatalf("got %v %d %s, want 400 %s", ok, ctx.Response.StatusCode(), body, tc.code)
				}
				return
			}
			if !ok || !q.From.Equal(tc.want.From) || !q.To.Equal(tc.want.To) || q.Granularity != tc.want.Granularity || q.GroupBy != tc.want.GroupBy {
				t.Fatalf("got %v %+v, want %+v (%s)", ok, q, tc.want, ctx.Response.Body())
			}
		})
	}
}
