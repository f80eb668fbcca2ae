package ingest

import (
	"context"
	"database/sql"
	"errors"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/certnode/certnode/internal/chconn"
	"github.com/certnode/certnode/internal/envelope"
	"github.com/certnode/certnode/schemas"
)

// ClickHouseStore reads receipts the ClickHouse sink wrote.
type ClickHouseStore struct {
	conn driver.Conn
	open Opener
}

// Opener decrypts a payload stored sealed (internal/envelope).
type Opener interface {
	Open(ctx context.Context, org, v string) ([]byte, error)
}

// OpenClickHouseStore connects to ClickHouse (the sink creates the tables).
func OpenClickHouseStore(ctx context.Context, o chconn.Options, open Opener) (*ClickHouseStore, error) {
	conn, err := chconn.Open(ctx, o)
	if err != nil {
		return nil, err
	}
	return &ClickHouseStore{conn: conn, open: open}, nil
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
	plain, err := s.open.Open(ctx, tenant, receipt)
	if errors.Is(err, envelope.ErrDestroyed) {
		return nil, ErrErased
	}
	return plain, err
}

// Close closes the connection.
func (s *ClickHouseStore) Close() error { return s.conn.Close() }
