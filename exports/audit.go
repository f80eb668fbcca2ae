package exports

import (
	"context"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/certnode/certnode/schemas"
)

// AuditQuery selects an organization's audit events: those of [From, To)
// (whole seconds), of Action when set, at most Limit (0: all) newest
// first, else all oldest first.
type AuditQuery struct {
	Org      string
	From, To time.Time
	Action   string
	Limit    int
}

// AuditEvents calls yield with each event q selects, one copy per id, as
// stored: the canonical JSON the audit log's leaves commit to.
func (e *Exporter) AuditEvents(ctx context.Context, q AuditQuery, yield func(event []byte) error) error {
	sql := "SELECT event FROM " + schemas.ClickHouseAuditTable + " WHERE org = ? AND at >= toDateTime(?) AND at < toDateTime(?)"
	args := []any{q.Org, seconds(q.From), seconds(q.To)}
	if q.Action != "" {
		sql += " AND action = ?"
		args = append(args, q.Action)
	}
	if q.Limit > 0 {
		sql += " ORDER BY at DESC, at_nanos DESC, id LIMIT 1 BY id LIMIT ?"
		args = append(args, q.Limit)
	} else {
		sql += " ORDER BY at, at_nanos, id LIMIT 1 BY id"
	}
	return e.each(ctx, sql, args, func(rows driver.Rows) error {
		var ev string
		if err := rows.Scan(&ev); err != nil {
			return err
		}
		return yield([]byte(ev))
	})
}

// AuditCount is how many distinct events q selects (Action and Limit
// aside).
func (e *Exporter) AuditCount(ctx context.Context, q AuditQuery) (int, error) {
	var n uint64
	err := e.each(ctx, "SELECT uniqExact(id) FROM "+schemas.ClickHouseAuditTable+" WHERE org = ? AND at >= toDateTime(?) AND at < toDateTime(?)",
		[]any{q.Org, seconds(q.From), seconds(q.To)}, func(rows driver.Rows) error { return rows.Scan(&n) })
	return int(n), err
}
