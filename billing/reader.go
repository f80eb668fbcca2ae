package billing

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/certnode/certnode/internal/chconn"
	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
)

// Reader answers usage and invoice questions from ClickHouse (the tables
// the ClickHouse sink creates and writes).
type Reader struct{ conn driver.Conn }

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

// Usage returns org's usage over [q.From, q.To), each request counted once.
func (r *Reader) Usage(ctx context.Context, org string, q schemas.UsageQuery) (*schemas.UsageReport, error) {
	rows, err := r.rows(ctx, usageQuery{org: org, q: q})
	if err != nil {
		return nil, err
	}
	rep := &schemas.UsageReport{Organization: org, From: q.From.UTC(), To: q.To.UTC(), Granularity: q.Granularity, GroupBy: q.GroupBy, Rows: rows}
	for _, row := range rows {
		rep.Totals = rep.Totals.Add(row.UsageCounts)
	}
	return rep, nil
}

// rows runs a usage query.
func (r *Reader) rows(ctx context.Context, u usageQuery) ([]schemas.UsageRow, error) {
	sql, args, err := u.toSQL()
	if err != nil {
		return nil, err
	}
	res, err := r.conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("usage query: %w", err)
	}
	defer res.Close()
	out := []schemas.UsageRow{}
	for res.Next() {
		var bucket, requests, signed, valid, invalid, failed, bytes uint64
		var key string
		if err := res.Scan(&bucket, &key, &requests, &signed, &valid, &invalid, &failed, &bytes); err != nil {
			return nil, fmt.Errorf("usage query: %w", err)
		}
		out = append(out, schemas.UsageRow{Start: time.Unix(int64(bucket), 0).UTC(), KeyID: key, UsageCounts: schemas.UsageCounts{
			Requests: int64(requests), Signed: int64(signed), Valid: int64(valid), Invalid: int64(invalid),
			Failed: int64(failed), Bytes: int64(bytes)}})
	}
	if err := res.Err(); err != nil {
		return nil, fmt.Errorf("usage query: %w", err)
	}
	return out, nil
}

// monthly returns org's usage per calendar month over [from, to), both
// month starts: daily rows (UTC) summed by month.
func (r *Reader) monthly(ctx context.Context, org string, from, to time.Time) (map[time.Time]schemas.UsageCounts, error) {
	rows, err := r.rows(ctx, usageQuery{org: org, q: schemas.UsageQuery{From: from, To: to, Granularity: schemas.GranularityDay}})
	if err != nil {
		return nil, err
	}
	out := map[time.Time]schemas.UsageCounts{}
	for _, row := range rows {
		m := monthStart(row.Start)
		out[m] = out[m].Add(row.UsageCounts)
	}
	return out, nil
}

// Invoice returns org's invoice for the month starting at month, as seen
// at now; ok is false when there is none (no plan then, or not begun).
func (r *Reader) Invoice(ctx context.Context, org string, plans []tenants.PlanPeriod, month, now time.Time) (*schemas.Invoice, bool, error) {
	start := monthStart(month)
	if _, ok := Price(org, start, plans, schemas.UsageCounts{}, now); !ok {
		return nil, false, nil
	}
	usage, err := r.monthly(ctx, org, start, start.AddDate(0, 1, 0))
	if err != nil {
		return nil, false, err
	}
	inv, ok := Price(org, start, plans, usage[start], now)
	return inv, ok, nil
}

// Invoices returns org's invoices, newest first (at most
// MaxListedPeriods).
func (r *Reader) Invoices(ctx context.Context, org string, plans []tenants.PlanPeriod, now time.Time) (*schemas.InvoiceList, error) {
	list := &schemas.InvoiceList{Organization: org, Invoices: []schemas.Invoice{}}
	months := listedMonths(plans, now)
	if len(months) == 0 {
		return list, nil
	}
	usage, err := r.monthly(ctx, org, months[0], months[len(months)-1].AddDate(0, 1, 0))
	if err != nil {
		return nil, err
	}
	list.Invoices = invoices(org, plans, usage, now)
	return list, nil
}
