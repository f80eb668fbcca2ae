//go:build integration

package billing

import (
	"context"
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/certnode/certnode/internal/chconn"
	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// Against the real ClickHouse: copies of a request (replays) count once,
// as first processed, before and after the table merged them; buckets are
// UTC hours and days; invoices sum a month's days; the organization's
// rows are the only ones read.
func TestReaderOnClickHouse(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := Open(ctx, chconn.Options{Addr: []string{testenv.ClickHouseAddr(t)}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := chconn.Migrate(ctx, r.conn); err != nil {
		t.Fatal(err)
	}
	var b [5]byte
	rand.Read(b[:])
	org, other := fmt.Sprintf("org-%x", b), fmt.Sprintf("org-%x-b", b)
	h := time.Date(2026, 3, 31, 22, 0, 0, 0, time.UTC) // the last hours of March
	type ev struct {
		org, id, status, key string
		at, processed        time.Time
	}
	evs := []ev{
		{org, "a", "signed", "k1", h.Add(10 * time.Minute), h.Add(11 * time.Minute)},
		{org, "a", "failed", "k1", h.Add(10 * time.Minute), h.Add(50 * time.Minute)}, // a later replay, another outcome
		{org, "a", "signed", "k1", h.Add(10 * time.Minute), h.Add(11 * time.Minute)}, // an exact copy
		{org, "b", "valid", "k2", h.Add(70 * time.Minute), h.Add(71 * time.Minute)},
		{org, "c", "invalid", "k1", h.Add(150 * time.Minute), h.Add(151 * time.Minute)}, // April 1st, 00:30
		{other, "a", "signed", "k1", h.Add(10 * time.Minute), h.Add(11 * time.Minute)},
	}
	batch, err := r.conn.PrepareBatch(ctx, "INSERT INTO "+schemas.ClickHouseUsageTable+" ("+schemas.ClickHouseUsageColumns+")")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if err := batch.Append(e.org, e.id, "/certnode/orgs/"+e.org, e.at, "sign", e.status, "ingest", e.key, uint64(10), "", e.processed); err != nil {
			t.Fatal(err)
		}
	}
	if err := batch.Send(); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		rep, err := r.Usage(ctx, org, schemas.UsageQuery{From: h, To: h.Add(4 * time.Hour), Granularity: "hour", GroupBy: "key"})
		if err != nil {
			t.Fatal(err)
		}
		want := []schemas.UsageRow{
			{Start: h, KeyID: "k1", UsageCounts: schemas.UsageCounts{Requests: 1, Signed: 1, Bytes: 10}},
			{Start: h.Add(time.Hour), KeyID: "k2", UsageCounts: schemas.UsageCounts{Requests: 1, Valid: 1, Bytes: 10}},
			{Start: h.Add(2 * time.Hour), KeyID: "k1", UsageCounts: schemas.UsageCounts{Requests: 1, Invalid: 1, Bytes: 10}},
		}
		if len(rep.Rows) != len(want) {
			t.Fatalf("%s: rows %+v, want %+v", when, rep.Rows, want)
		}
		for i := range want {
			if !rep.Rows[i].Start.Equal(want[i].Start) || rep.Rows[i].KeyID != want[i].KeyID || rep.Rows[i].UsageCounts != want[i].UsageCounts {
				t.Errorf("%s: row %d %+v, want %+v", when, i, rep.Rows[i], want[i])
			}
		}
		days, err := r.Usage(ctx, org, schemas.UsageQuery{From: h.Add(-22 * time.Hour), To: h.Add(26 * time.Hour), Granularity: "day"})
		if err != nil {
			t.Fatal(err)
		}
		if len(days.Rows) != 2 || days.Rows[0].Requests != 2 || days.Rows[1].Requests != 1 || !days.Rows[1].Start.Equal(h.Add(2*time.Hour)) {
			t.Errorf("%s: days %+v", when, days.Rows)
		}
		plans := []tenants.PlanPeriod{{From: time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC), Plan: tenants.Plan{ID: "p", Name: "P", Currency: "EUR", PricePer1000: 7}}}
		inv, ok, err := r.Invoice(ctx, org, plans, h, time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC))
		if err != nil || !ok || inv.Usage.Requests != 2 || inv.Usage.Signed != 1 || inv.Total != 7 || inv.Status != "closed" {
			t.Errorf("%s: March invoice %v %v %+v", when, ok, err, inv)
		}
		// February cost nothing and had no usage: left out.
		list, err := r.Invoices(ctx, org, plans, time.Date(2026, 4, 15, 0, 0, 0, 0, time.UTC))
		if err != nil || len(list.Invoices) != 2 || list.Invoices[0].Period != "2026-04" || list.Invoices[0].Usage.Requests != 1 ||
			list.Invoices[0].Status != "open" || list.Invoices[1].Period != "2026-03" || list.Invoices[1].Usage.Requests != 2 {
			t.Errorf("%s: invoices %v %+v", when, err, list)
		}
	}
	check("before merges")
	if err := r.conn.Exec(ctx, "OPTIMIZE TABLE "+schemas.ClickHouseUsageTable+" FINAL"); err != nil {
		t.Fatal(err)
	}
	var rows uint64
	if err := r.conn.QueryRow(ctx, "SELECT count() FROM "+schemas.ClickHouseUsageTable+" WHERE org = ? AND id = 'a'", org).Scan(&rows); err != nil || rows != 1 {
		t.Fatalf("after OPTIMIZE FINAL: %d rows of request a (%v), want the merge to keep one", rows, err)
	}
	check("after merges")
}
