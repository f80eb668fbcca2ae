package clickhouse

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/certnode/certnode/schemas"
)

// Row is one row of certnode.results, in the column order of
// schemas.ClickHouseResultColumns.
type Row struct {
	Tenant      string
	ID          string
	ReceiptID   string
	Kind        string
	Status      string
	Valid       uint8
	Reason      string
	Auth        string
	Keys        string
	Kid         string
	PayloadHash string
	JobID       string
	Line        int64
	Size        uint32
	ReceivedAt  time.Time
	ProcessedAt time.Time
	LatencyMS   uint32
	Receipt     string
}

// The window, around the broker timestamp of the result record, in which
// the times a result claims are believed. received_at comes from the
// request, which a customer's producer writes directly, so it can say
// anything; the table is partitioned by month of received_at, and wild
// values would spread one insert over many partitions (refused by current
// servers) or wrap around in DateTime. A request normally waits seconds,
// so a day covers a worker backlog; five minutes covers clock skew.
const (
	trustBefore = 24 * time.Hour
	trustAfter  = 5 * time.Minute
)

// DateTime holds whole seconds from 1970 to 2106 in a UInt32; the driver
// wraps times outside that silently.
var (
	minDateTime = time.Unix(0, 0)
	maxDateTime = time.Unix(math.MaxUint32, 0)
)

// errUnstorable marks a result the sink cannot turn into a row.
var errUnstorable = errors.New("result cannot be stored")

// trusted returns claimed when it lies in the window around broker, else
// broker, and whether claimed (when set) was replaced.
func trusted(claimed, broker time.Time) (time.Time, bool) {
	if claimed.IsZero() {
		return broker, false
	}
	if claimed.Before(broker.Add(-trustBefore)) || claimed.After(broker.Add(trustAfter)) {
		return broker, true
	}
	return claimed, false
}

// Time columns a row may have had replaced by the broker timestamp.
const (
	colReceivedAt  = "received_at"
	colProcessedAt = "processed_at"
)

// rowFor turns a decoded result into a row, with received_at and
// processed_at taken from the result when they lie near broker, the
// timestamp of the result's record, and broker otherwise. replaced names
// the columns whose claimed time was not believed.
func rowFor(res *schemas.Result, broker time.Time) (row Row, replaced []string, err error) {
	received, bad := trusted(res.ReceivedAt, broker)
	if bad {
		replaced = append(replaced, colReceivedAt)
	}
	processed, bad := trusted(res.ProcessedAt, broker)
	if bad {
		replaced = append(replaced, colProcessedAt)
	}
	for _, t := range []time.Time{received, processed} {
		if t.Before(minDateTime) || t.After(maxDateTime) {
			return Row{}, nil, fmt.Errorf("%w: time %s (record timestamp %s) is outside ClickHouse DateTime (1970-2106)",
				errUnstorable, t.UTC().Format(time.RFC3339), broker.UTC().Format(time.RFC3339))
		}
	}
	if res.Size < 0 || int64(res.Size) > math.MaxUint32 {
		return Row{}, nil, fmt.Errorf("%w: size %d", errUnstorable, res.Size)
	}
	var valid uint8
	if res.Status == schemas.StatusValid || res.Status == schemas.StatusSigned {
		valid = 1
	}
	// Both times lie within a day and five minutes of broker, so the
	// latency fits a UInt32 of milliseconds.
	latency := max(processed.Sub(received).Milliseconds(), 0)
	return Row{
		Tenant: res.Tenant, ID: res.ID, ReceiptID: res.ReceiptID, Kind: string(res.Kind), Status: string(res.Status),
		Valid: valid, Reason: res.Reason, Auth: string(res.Auth), Keys: res.Keys, Kid: res.Kid,
		PayloadHash: res.PayloadHash, JobID: res.JobID, Line: res.Line, Size: uint32(res.Size),
		ReceivedAt: received.UTC(), ProcessedAt: processed.UTC(), LatencyMS: uint32(latency), Receipt: string(res.Receipt),
	}, replaced, nil
}
