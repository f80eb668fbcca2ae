// Package billing is the read side of usage metering: parameterised
// ClickHouse queries over certnode.usage_events, each scoped to one
// organization, and invoices priced from an organization's plans. It
// depends only on internal/ and schemas/; cmd mounts it on ingest's usage
// and invoice routes.
package billing

import (
	"fmt"
	"time"

	"github.com/certnode/certnode/schemas"
)

// usageSelect is the only statement that reads usage. Its WHERE clause
// binds the organization first, so no query can read another's rows, and
// every value from a caller is an argument, never SQL text. The inner
// query keeps each request once, as first processed (the row merges keep,
// see schemas.ClickHouseDDL); the outer one counts requests per bucket.
// Inner names differ from the columns they aggregate (u_...) because
// ClickHouse 18.16 resolves a name to a SELECT alias before a column.
const usageSelect = `SELECT %s AS bucket, %s AS key, count() AS requests, ` +
	`countIf(u_status = 'signed') AS signed, countIf(u_status = 'valid') AS valid, ` +
	`countIf(u_status = 'invalid') AS invalid, countIf(u_status = 'failed') AS failed, sum(u_bytes) AS bytes ` +
	`FROM (SELECT id, argMin(time, processed_at) AS u_time, argMin(status, processed_at) AS u_status, ` +
	`argMin(key_id, processed_at) AS u_key_id, argMin(bytes, processed_at) AS u_bytes ` +
	`FROM ` + schemas.ClickHouseUsageTable + ` WHERE org = ? AND time >= toDateTime(?) AND time < toDateTime(?) GROUP BY id) ` +
	`GROUP BY bucket, key ORDER BY bucket, key`

// bucketExpr starts each row's bucket in whole seconds since the epoch:
// arithmetic on the timestamp, so buckets are UTC whatever the server's
// time zone.
var bucketExpr = map[string]string{
	schemas.GranularityHour: "toUInt64(intDiv(toUInt32(u_time), 3600) * 3600)",
	schemas.GranularityDay:  "toUInt64(intDiv(toUInt32(u_time), 86400) * 86400)",
}

// keyExpr groups by key, or puts every key in one group.
var keyExpr = map[string]string{"": "''", schemas.GroupByKey: "u_key_id"}

// usageQuery is one organization's usage query.
type usageQuery struct {
	org string
	q   schemas.UsageQuery
}

// toSQL returns the statement and its arguments; the statement's text
// depends only on the granularity and grouping, chosen from fixed ones.
func (u usageQuery) toSQL() (string, []any, error) {
	bucket, ok := bucketExpr[u.q.Granularity]
	if !ok {
		return "", nil, fmt.Errorf("billing: granularity %q", u.q.Granularity)
	}
	key, ok := keyExpr[u.q.GroupBy]
	if !ok {
		return "", nil, fmt.Errorf("billing: group by %q", u.q.GroupBy)
	}
	if err := schemas.CheckTenantID(u.org); err != nil {
		return "", nil, fmt.Errorf("billing: %w", err)
	}
	if !u.q.From.Before(u.q.To) {
		return "", nil, fmt.Errorf("billing: empty range [%s, %s)", u.q.From, u.q.To)
	}
	return fmt.Sprintf(usageSelect, bucket, key), []any{u.org, u.q.From.Unix(), u.q.To.Unix()}, nil
}

// monthStart is the first instant of t's calendar month, UTC.
func monthStart(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}
