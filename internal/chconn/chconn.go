// Package chconn opens ClickHouse connections the same way for every tier.
package chconn

import (
	"context"
	"fmt"
	"strings"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Open connects over the native protocol and checks the server answers.
func Open(ctx context.Context, addr []string, user, password string) (driver.Conn, error) {
	conn, err := ch.Open(&ch.Options{Addr: addr, Auth: ch.Auth{Username: user, Password: password}, DialTimeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("clickhouse: %w", err)
	}
	if err := conn.Ping(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("clickhouse %v: %w", addr, err)
	}
	return conn, nil
}

// Each runs a query and calls scan on each row; errors name what.
func Each(ctx context.Context, conn driver.Conn, what, sql string, args []any, scan func(driver.Rows) error) error {
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		return fmt.Errorf("%s query: %w", what, err)
	}
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows); err != nil {
			return fmt.Errorf("%s query: %w", what, err)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("%s query: %w", what, err)
	}
	return nil
}

// Placeholders is n bound parameters, "?, ?, ...", for an IN list.
func Placeholders(n int) string { return strings.TrimSuffix(strings.Repeat("?, ", n), ", ") }
