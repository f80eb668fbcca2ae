package clickhouse

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/certnode/certnode/schemas"
)

func TestRowForTimes(t *testing.T) {
	broker := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	date := func(y int) time.Time { return time.Date(y, 1, 1, 0, 0, 0, 0, time.UTC) }
	for _, tc := range []struct {
		name                string
		received, processed time.Time
		wantRecv, wantProc  time.Time
		replaced            []string
	}{
		{"in window", broker.Add(-23 * time.Hour), broker.Add(-time.Second), broker.Add(-23 * time.Hour), broker.Add(-time.Second), nil},
		{"clock skew allowed", broker.Add(4 * time.Minute), broker.Add(4 * time.Minute), broker.Add(4 * time.Minute), broker.Add(4 * time.Minute), nil},
		{"received absent", time.Time{}, broker, broker, broker, nil},
		{"year 1900", date(1900), broker, broker, broker, []string{colReceivedAt}},
		{"year 9999", date(9999), broker, broker, broker, []string{colReceivedAt}},
		{"an hour ahead", broker.Add(time.Hour), broker, broker, broker, []string{colReceivedAt}},
		{"25 hours old", broker.Add(-25 * time.Hour), broker, broker, broker, []string{colReceivedAt}},
		{"processed far future", broker, date(2100), broker, broker, []string{colProcessedAt}},
		{"both wild", date(2), date(3000), broker, broker, []string{colReceivedAt, colProcessedAt}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := &schemas.Result{V: 1, ID: "r1", Tenant: "t1", Kind: schemas.KindSign, Status: schemas.StatusSigned,
				Auth: schemas.AuthIngest, Size: 10, ReceivedAt: tc.received, ProcessedAt: tc.processed}
			row, replaced, err := rowFor(res, broker)
			if err != nil {
				t.Fatal(err)
			}
			if !row.ReceivedAt.Equal(tc.wantRecv) || !row.ProcessedAt.Equal(tc.wantProc) {
				t.Errorf("received %s processed %s, want %s %s", row.ReceivedAt, row.ProcessedAt, tc.wantRecv, tc.wantProc)
			}
			if !slices.Equal(replaced, tc.replaced) {
				t.Errorf("replaced %v, want %v", replaced, tc.replaced)
			}
			if want := max(tc.wantProc.Sub(tc.wantRecv).Milliseconds(), 0); int64(row.LatencyMS) != want {
				t.Errorf("latency %d ms, want %d", row.LatencyMS, want)
			}
		})
	}
}

func TestRowForUnstorable(t *testing.T) {
	ok := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name   string
		broker time.Time
		size   int
	}{
		{"broker before 1970", time.Date(1969, 12, 31, 23, 0, 0, 0, time.UTC), 1},
		{"broker after 2106", time.Date(2107, 1, 1, 0, 0, 0, 0, time.UTC), 1},
		{"negative size", ok, -1},
		{"size over UInt32", ok, 1 << 33},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := &schemas.Result{V: 1, ID: "r1", Tenant: "t1", Kind: schemas.KindVerify, Status: schemas.StatusValid,
				Auth: schemas.AuthIngest, Size: tc.size}
			if _, _, err := rowFor(res, tc.broker); !errors.Is(err, errUnstorable) {
				t.Fatalf("got %v, want errUnstorable", err)
			}
		})
	}
}

func TestRowForColumns(t *testing.T) {
	broker := time.Date(2026, 3, 10, 12, 0, 0, 0, time.FixedZone("x", 3600))
	res := &schemas.Result{V: 1, ID: "r1", Tenant: "t1", Kind: schemas.KindVerify, Status: schemas.StatusInvalid,
		Reason: "bad_signature", Auth: schemas.AuthProducer, Keys: schemas.KeysCaller, Kid: "k", ReceiptID: "rid",
		PayloadHash: "ph", JobID: "j", Line: 7, Size: 99, Receipt: []byte(`{"a":1}`), KeyID: "key_1",
		ReceivedAt: broker.Add(-1500 * time.Millisecond), ProcessedAt: broker}
	row, _, err := rowFor(res, broker)
	if err != nil {
		t.Fatal(err)
	}
	want := Row{Tenant: "t1", ID: "r1", ReceiptID: "rid", Kind: "verify", Status: "invalid", Valid: 0, Reason: "bad_signature",
		Auth: "producer", Keys: "caller", Kid: "k", PayloadHash: "ph", JobID: "j", Line: 7, Size: 99,
		ReceivedAt: broker.Add(-1500 * time.Millisecond).UTC(), ProcessedAt: broker.UTC(), LatencyMS: 1500, Receipt: `{"a":1}`, KeyID: "key_1"}
	if row != want {
		t.Fatalf("row\n%+v\nwant\n%+v", row, want)
	}
	res.Status = schemas.StatusValid
	if row, _, _ := rowFor(res, broker); row.Valid != 1 {
		t.Fatal("a valid result must have valid = 1")
	}
}
