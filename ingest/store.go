package ingest

import (
	"context"
	"database/sql"
	"errors"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/certnode/certnode/internal/chconn"
	"github.com/certnode/certnode/schemas"
)

// ClickHouseStore reads receipts the ClickHouse sink wrote.
type ClickHouseStore struct{ conn driver.Conn }

// OpenClickHouseStore connects to ClickHouse (the sink creates the tables).
func OpenClickHouseStore(ctx context.Context, o chconn.Options) (*ClickHouseStore, error) {
	conn, err := chconn.Open(ctx, o)
	if err != nil {
		return nil, err
	}
	return &ClickHouseStore{conn: conn}, nil
}

// Receipt returns the receipt with receiptID that the service signed for
// the tenant; receipts the tenant only asked to verify are not found.
func (s *ClickHouseStore) Receipt(ctx context.Context, tenant, receiptID string) ([]byte, error) {
	var receipt string
	err := s.conn.QueryRow(ctx, schemas.ClickHouseSelectReceipt, tenant, receiptID).Scan(&receipt)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	if receipt == "" {
		return nil, ErrErased
	}
	return []byte(receipt), nil
}

// Close closes the connection.
func (s *ClickHouseStore) Close() error { return s.conn.Close() }
