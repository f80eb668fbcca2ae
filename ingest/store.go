package ingest

import (
	"context"
	"database/sql"
	"errors"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/certnode/certnode/internal/chconn"
)

// ClickHouseStore reads receipts the ClickHouse sink wrote.
type ClickHouseStore struct{ conn driver.Conn }

// OpenClickHouseStore connects to ClickHouse (the sink creates the tables).
func OpenClickHouseStore(ctx context.Context, addr []string, user, password string) (*ClickHouseStore, error) {
	conn, err := chconn.Open(ctx, addr, user, password)
	if err != nil {
		return nil, err
	}
	return &ClickHouseStore{conn: conn}, nil
}

// Receipt returns the tenant's receipt with receiptID, from a successful row.
func (s *ClickHouseStore) Receipt(ctx context.Context, tenant, receiptID string) ([]byte, error) {
	var receipt string
	err := s.conn.QueryRow(ctx, `SELECT receipt FROM certnode.receipts
		WHERE tenant = ? AND receipt_id = ? AND valid = 1 AND receipt != '' LIMIT 1`, tenant, receiptID).Scan(&receipt)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return []byte(receipt), nil
}

// Close closes the connection.
func (s *ClickHouseStore) Close() error { return s.conn.Close() }
