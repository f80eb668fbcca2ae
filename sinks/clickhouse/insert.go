package clickhouse

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/ClickHouse/clickhouse-go/v2/lib/proto"

	"github.com/certnode/certnode/schemas"
)

// Inserter writes rows of one table to ClickHouse in one insert. It
// returns a *RefusedError when the server refused the insert for what it
// holds, so the same rows can never be inserted as they are; any other
// error may pass on a retry.
type Inserter[R any] interface {
	Insert(ctx context.Context, rows []R) error
}

// RefusedError is an insert the server refused because of its rows.
type RefusedError struct {
	Err error
	// TooBig: the insert as a whole was refused (too many partitions for
	// one block, the server's memory limit), not any row: smaller inserts
	// pass, and a single row so refused is retried, not dropped.
	TooBig bool
}

func (e *RefusedError) Error() string { return "clickhouse refused the rows: " + e.Err.Error() }
func (e *RefusedError) Unwrap() error { return e.Err }

// ClickHouseInserter inserts rows of type R into a ClickHouse table over
// the native protocol.
type ClickHouseInserter[R any] struct {
	conn   driver.Conn
	insert string
	values func(R) []any // a row's values in the insert's column order
}

// NewClickHouseInserter inserts into table (schemas.ClickHouseResultsTable
// in production), which has the columns of certnode.results.
func NewClickHouseInserter(conn driver.Conn, table string) *ClickHouseInserter[Row] {
	return &ClickHouseInserter[Row]{conn: conn, insert: "INSERT INTO " + table + " (" + schemas.ClickHouseResultColumns + ")", values: Row.values}
}

// NewUsageInserter inserts into table (schemas.ClickHouseUsageTable in
// production), which has the columns of certnode.usage_events.
func NewUsageInserter(conn driver.Conn, table string) *ClickHouseInserter[UsageRow] {
	return &ClickHouseInserter[UsageRow]{conn: conn, insert: "INSERT INTO " + table + " (" + schemas.ClickHouseUsageColumns + ")", values: UsageRow.values}
}

// NewAttemptInserter inserts into table
// (schemas.ClickHouseWebhookAttemptsTable in production), which has the
// columns of certnode.webhook_attempts.
func NewAttemptInserter(conn driver.Conn, table string) *ClickHouseInserter[AttemptRow] {
	return &ClickHouseInserter[AttemptRow]{conn: conn, insert: "INSERT INTO " + table + " (" + schemas.ClickHouseWebhookAttemptColumns + ")", values: AttemptRow.values}
}

// NewAuditInserter inserts into table (schemas.ClickHouseAuditTable in
// production), which has the columns of certnode.audit_events.
func NewAuditInserter(conn driver.Conn, table string) *ClickHouseInserter[AuditRow] {
	return &ClickHouseInserter[AuditRow]{conn: conn, insert: "INSERT INTO " + table + " (" + schemas.ClickHouseAuditColumns + ")", values: AuditRow.values}
}

// Insert sends rows as one block. Failures before the block reaches the
// server (no connection, unknown table, a column of another type) are
// never the rows' fault: every row would fail the same way.
func (c *ClickHouseInserter[R]) Insert(ctx context.Context, rows []R) error {
	batch, err := c.conn.PrepareBatch(ctx, c.insert)
	if err != nil {
		return fmt.Errorf("clickhouse prepare insert: %w", err)
	}
	for _, r := range rows {
		if err := batch.Append(c.values(r)...); err != nil {
			batch.Abort()
			return fmt.Errorf("clickhouse append row: %w", err)
		}
	}
	if err := batch.Send(); err != nil {
		if re := classify(err); re != nil {
			return re
		}
		return fmt.Errorf("clickhouse insert: %w", err)
	}
	return nil
}

// Server exception codes (ClickHouse's ErrorCodes.cpp).
const (
	codeMemoryLimitExceeded = 241
	codeTooManyParts        = 252
)

// environmental lists server exceptions that say nothing about the rows:
// the server, its disks, its replicas, the table or the credentials are
// not fit right now. An insert that fails so is retried whole; splitting
// it would wrongly send every row to the DLQ.
var environmental = map[int32]bool{
	8: true, 10: true, 16: true, 20: true, 47: true, 53: true, // THERE_IS_NO_COLUMN ... TYPE_MISMATCH: the table changed
	60: true, 81: true, 218: true, // UNKNOWN_TABLE, UNKNOWN_DATABASE, TABLE_IS_DROPPED
	74: true, 75: true, 76: true, 172: true, 204: true, 243: true, // file descriptors, open, mkdir, fsync, NOT_ENOUGH_SPACE
	159: true, 160: true, 209: true, 210: true, 394: true, 236: true, // timeouts, network, cancelled, aborted
	164: true, 192: true, 193: true, 194: true, 195: true, 201: true, 291: true, 497: true, 516: true, // access and quotas
	173: true, 202: true, 203: true, 439: true, 473: true, // no memory, too many queries, no free connection, CANNOT_SCHEDULE_TASK, DEADLOCK_AVOIDED
	225: true, 242: true, 279: true, 285: true, 286: true, 319: true, 999: true, // replication, read-only table, keeper
	425: true, 1000: true, 1001: true, 1002: true, // SYSTEM_ERROR, POCO/STD/UNKNOWN_EXCEPTION
}

// classify returns the refusal that err, from sending an insert, is, or
// nil when it is not the rows' fault: not a server exception (network,
// timeouts), or an environmental one.
func classify(err error) *RefusedError {
	var ex *proto.Exception
	if !errors.As(err, &ex) {
		return nil
	}
	switch {
	case ex.Code == codeMemoryLimitExceeded:
		return &RefusedError{Err: err, TooBig: true}
	case ex.Code == codeTooManyParts:
		// The same code says the table has too many parts (merges are
		// behind: wait) or one block spans too many partitions (split it).
		if strings.Contains(ex.Message, "single INSERT block") {
			return &RefusedError{Err: err, TooBig: true}
		}
		return nil
	case environmental[ex.Code]:
		return nil
	}
	return &RefusedError{Err: err}
}

// span is rows[lo:hi] of a batch.
type span struct{ lo, hi int }

// refusal is a row the server refused, with the server's reason.
type refusal struct {
	index int
	err   error
}

// bisect inserts a batch's rows, splitting any part the server refuses in
// halves until every refused row stands alone, so one bad row costs its
// own DLQ entry and not the batch. It keeps its progress: after a
// transient error, run resumes with the parts not yet inserted.
type bisect[R any] struct {
	rows    []R
	todo    []span // a stack, so the parts are inserted in order
	refused []refusal
}

func newBisect[R any](rows []R) *bisect[R] {
	b := &bisect[R]{rows: rows}
	if len(rows) > 0 {
		b.todo = []span{{0, len(rows)}}
	}
	return b
}

// run inserts what is left, each insert bounded by timeout, calling
// inserted with the number of rows of each successful insert. It ends
// after at most 2n-1 inserts for n rows, since every refused part of
// several rows is replaced by two smaller ones, or at the first error that
// is not a refusal of a part it can split or drop, which it returns.
func (b *bisect[R]) run(ctx context.Context, ins Inserter[R], timeout time.Duration, inserted func(int)) error {
	for len(b.todo) > 0 {
		sp := b.todo[len(b.todo)-1]
		ictx, cancel := context.WithTimeout(ctx, timeout)
		err := ins.Insert(ictx, b.rows[sp.lo:sp.hi])
		cancel()
		var re *RefusedError
		switch {
		case err == nil:
			b.todo = b.todo[:len(b.todo)-1]
			inserted(sp.hi - sp.lo)
		case errors.As(err, &re) && sp.hi-sp.lo == 1 && re.TooBig:
			return err
		case errors.As(err, &re):
			b.todo = b.todo[:len(b.todo)-1]
			if sp.hi-sp.lo == 1 {
				b.refused = append(b.refused, refusal{index: sp.lo, err: re.Err})
				continue
			}
			mid := (sp.lo + sp.hi) / 2
			b.todo = append(b.todo, span{mid, sp.hi}, span{sp.lo, mid})
		default:
			return err
		}
	}
	return nil
}
