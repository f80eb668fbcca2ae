package chconn

import (
	"context"
	"fmt"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/certnode/certnode/schemas"
)

// Migrate brings the database to schemas' DDL: it adds the columns an
// existing table lacks (schemas.ClickHouseAddedColumns), runs the DDL, and
// fills the rollups whose views it just created from the rows their
// sources already held.
//
// Two processes migrating the same old database at once would both fill
// a new rollup: its counts of ids stay exact, its sums and percentiles
// count those rows twice. Start one sink first on an upgrade.
func Migrate(ctx context.Context, conn driver.Conn) error {
	exists := func(table string) (bool, error) {
		db, name, _ := strings.Cut(table, ".")
		var n uint64
		err := conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ? AND name = ?", db, name).Scan(&n)
		return n > 0, err
	}
	for _, c := range schemas.ClickHouseAddedColumns {
		ok, err := exists(c.Table)
		if err != nil {
			return fmt.Errorf("clickhouse migrate: %w", err)
		}
		if !ok {
			continue // the DDL creates it with the column
		}
		db, name, _ := strings.Cut(c.Table, ".")
		var n uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?", db, name, c.Name).Scan(&n); err != nil {
			return fmt.Errorf("clickhouse migrate: %w", err)
		}
		if n == 0 {
			if err := conn.Exec(ctx, "ALTER TABLE "+c.Table+" ADD COLUMN "+c.Name+" "+c.Type); err != nil {
				return fmt.Errorf("clickhouse migrate: add %s.%s: %w", c.Table, c.Name, err)
			}
		}
	}
	var fill []schemas.Rollup
	for _, r := range schemas.Rollups {
		src, err := exists(r.Source)
		if err != nil {
			return fmt.Errorf("clickhouse migrate: %w", err)
		}
		view, err := exists(r.Minutes() + "_mv")
		if err != nil {
			return fmt.Errorf("clickhouse migrate: %w", err)
		}
		if src && !view {
			fill = append(fill, r)
		}
	}
	for _, ddl := range schemas.ClickHouseDDL {
		if err := conn.Exec(ctx, ddl); err != nil {
			return fmt.Errorf("clickhouse DDL: %w", err)
		}
	}
	for _, r := range fill {
		if err := backfill(ctx, conn, r); err != nil {
			return fmt.Errorf("clickhouse migrate: fill %s: %w", r.Minutes(), err)
		}
	}
	return nil
}

// backfill adds a source's rows to its new rollup, a month at a time so
// that no statement holds more than a month's states.
func backfill(ctx context.Context, conn driver.Conn, r schemas.Rollup) error {
	var months []uint32
	err := Each(ctx, conn, "months", fmt.Sprintf("SELECT DISTINCT toYYYYMM(%s) FROM %s", r.Time, r.Source), nil, func(rows driver.Rows) error {
		var m uint32
		err := rows.Scan(&m)
		months = append(months, m)
		return err
	})
	if err != nil {
		return err
	}
	for _, m := range months {
		for _, stmt := range r.Backfill() {
			if err := conn.Exec(ctx, stmt, m); err != nil {
				return err
			}
		}
	}
	return nil
}
