package exports

import (
	"context"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/certnode/certnode/schemas"
)

// auditEventsSQL reads an organization's audit events in a window of whole
// seconds, oldest first, one copy per id, as stored: the canonical JSON the
// audit log's leaves commit to.
const auditEventsSQL = "SELECT event FROM " + schemas.ClickHouseAuditTable +
	" WHERE org = ? AND at >= toDateTime(?) AND at < toDateTime(?) ORDER BY at, at_nanos, id LIMIT 1 BY id"

// AuditEvents calls yield with each of org's audit events in [from, to)
// (whole seconds), in time order.
func (e *Exporter) AuditEvents(ctx context.Context, org string, from, to time.Time, yield func(event []byte) error) error {
	return e.each(ctx, auditEventsSQL, []any{org, seconds(from), seconds(to)}, func(rows driver.Rows) error {
		var ev string
		if err := rows.Scan(&ev); err != nil {
			return err
		}
		return yield([]byte(ev))
	})
}
