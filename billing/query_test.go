package billing

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/certnode/certnode/schemas"
)

func TestUsageSQL(t *testing.T) {
	from := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	to := time.Date(2026, 5, 2, 0, 0, 0, 0, time.UTC)
	inner := "FROM (SELECT id, argMin(time, processed_at) AS u_time, argMin(status, processed_at) AS u_status, " +
		"argMin(key_id, processed_at) AS u_key_id, argMin(bytes, processed_at) AS u_bytes " +
		"FROM certnode.usage_events WHERE org = ? AND time >= toDateTime(?) AND time < toDateTime(?) GROUP BY id) " +
		"GROUP BY bucket, key ORDER BY bucket, key"
	counts := " AS key, count() AS requests, countIf(u_status = 'signed') AS signed, countIf(u_status = 'valid') AS valid, " +
		"countIf(u_status = 'invalid') AS invalid, countIf(u_status = 'failed') AS failed, sum(u_bytes) AS bytes "
	for _, tc := range []struct {
		name     string
		query    usageQuery
		wantSQL  string
		wantArgs []any
		wantErr  string
	}{
		{
			name:     "by hour",
			query:    usageQuery{org: "acme", q: schemas.UsageQuery{From: from, To: to, Granularity: "hour"}},
			wantSQL:  "SELECT toUInt64(intDiv(toUInt32(u_time), 3600) * 3600) AS bucket, ''" + counts + inner,
			wantArgs: []any{"acme", from.Unix(), to.Unix()},
		},
		{
			name:     "by day and key",
			query:    usageQuery{org: "acme", q: schemas.UsageQuery{From: from, To: to, Granularity: "day", GroupBy: "key"}},
			wantSQL:  "SELECT toUInt64(intDiv(toUInt32(u_time), 86400) * 86400) AS bucket, u_key_id" + counts + inner,
			wantArgs: []any{"acme", from.Unix(), to.Unix()},
		},
		{
			name:     "an organization id that looks like SQL is an argument",
			query:    usageQuery{org: "x'OR'1'='1", q: schemas.UsageQuery{From: from, To: to, Granularity: "day"}},
			wantSQL:  "SELECT toUInt64(intDiv(toUInt32(u_time), 86400) * 86400) AS bucket, ''" + counts + inner,
			wantArgs: []any{"x'OR'1'='1", from.Unix(), to.Unix()},
		},
		{
			name:    "unknown granularity",
			query:   usageQuery{org: "acme", q: schemas.UsageQuery{From: from, To: to, Granularity: "toUInt32(1)"}},
			wantErr: "granularity",
		},
		{
			name:    "unknown grouping",
			query:   usageQuery{org: "acme", q: schemas.UsageQuery{From: from, To: to, Granularity: "day", GroupBy: "org"}},
			wantErr: "group by",
		},
		{
			name:    "no organization",
			query:   usageQuery{q: schemas.UsageQuery{From: from, To: to, Granularity: "day"}},
			wantErr: "tenant id",
		},
		{
			name:    "empty range",
			query:   usageQuery{org: "acme", q: schemas.UsageQuery{From: to, To: to, Granularity: "day"}},
			wantErr: "empty range",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sql, args, err := tc.query.toSQL()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error about %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if sql != tc.wantSQL {
				t.Errorf("SQL\n %s\nwant\n %s", sql, tc.wantSQL)
			}
			if !slices.Equal(args, tc.wantArgs) {
				t.Errorf("args %v, want %v", args, tc.wantArgs)
			}
		})
	}
}
