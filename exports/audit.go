package exports

import (
	"context"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/certnode/certnode/schemas"
)

// AuditQuery selects an organization's audit events (every
// organization's, and the deployment's, with AllOrgs): those of [From, To)
// (whole seconds), of Action, actions starting with ActionPrefix and
// Source when set, at most Limit (0: all) newest first, else all oldest
// first.
type AuditQuery struct {
	Org          string
	AllOrgs      bool
	From, To     time.Time
	Action       string
	ActionPrefix string
	Source       string
	Limit        int
}

// where is q's condition and its arguments.
func (q AuditQuery) where() (string, []any) {
	sql := "at >= toDateTime(?) AND at < toDateTime(?)"
	args := []any{seconds(q.From), seconds(q.To)}
	if !q.AllOrgs {
		sql += " AND org = ?"
		args = append(args, q.Org)
	}
	for _, c := range []struct{ cond, v string }{{" AND action = ?", q.Action}, {" AND startsWith(action, ?)", q.ActionPrefix}, {" AND source = ?", q.Source}} {
		if c.v != "" {
			sql += c.cond
			args = append(args, c.v)
		}
	}
	return sql, args
}

// AuditEvents calls yield with each event q selects, one copy per id, as
// stored: the canonical JSON the audit log's leaves commit to.
func (e *Exporter) AuditEvents(ctx context.Context, q AuditQuery, yield func(event []byte) error) error {
	where, args := q.where()
	sql := "SELECT event FROM " + schemas.ClickHouseAuditTable + " WHERE " + where
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

// AuditCount is how many distinct events q selects (Limit aside).
func (e *Exporter) AuditCount(ctx context.Context, q AuditQuery) (int, error) {
	var n uint64
	where, args := q.where()
	err := e.each(ctx, "SELECT uniqExact(id) FROM "+schemas.ClickHouseAuditTable+" WHERE "+where, args,
		func(rows driver.Rows) error { return rows.Scan(&n) })
	return int(n), err
}
