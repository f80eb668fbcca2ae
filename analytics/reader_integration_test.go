//go:build integration

package analytics

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/certnode/certnode/internal/chconn"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// result is a row of certnode.results the test writes.
type result struct {
	org, id, receipt, kind, status, reason, key string
	size, latency                               uint32
	at                                          time.Time
}

func insertResults(t *testing.T, r *Reader, rows ...result) {
	t.Helper()
	batch, err := r.conn.PrepareBatch(context.Background(), "INSERT INTO "+schemas.ClickHouseResultsTable+" ("+schemas.ClickHouseResultColumns+")")
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range rows {
		valid := uint8(0)
		if x.status == "signed" || x.status == "valid" {
			valid = 1
		}
		if err := batch.Append(x.org, x.id, x.receipt, x.kind, x.status, valid, x.reason, "ingest", "", "kid1", "", "", int64(0), x.size,
			x.at, x.at, x.latency, "{}", x.key); err != nil {
			t.Fatal(err)
		}
	}
	if err := batch.Send(); err != nil {
		t.Fatal(err)
	}
}

func values(t *testing.T, l schemas.AnalyticsLine) []float64 {
	t.Helper()
	out := make([]float64, len(l.Values))
	for i, v := range l.Values {
		if v == nil {
			out[i] = -1
		} else {
			out[i] = *v
		}
	}
	return out
}

// Against the real ClickHouse: copies of a request count once, in series
// at each granularity, top-N and totals; the answers are the same before
// and after the sealer wrote the hours' final counts, and stay exact when
// a row lands in an hour already sealed (until it is sealed again); one
// organization never sees another's rows.
func TestReaderOnClickHouse(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	addr := testenv.ClickHouseAddr(t)
	r, err := Open(ctx, chconn.Options{Addr: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := chconn.Migrate(ctx, r.conn); err != nil {
		t.Fatal(err)
	}
	sfx := testenv.RandomSuffix()
	orgA, orgB := "an-a-"+sfx, "an-b-"+sfx
	// Three closed hours, well in the past so that nothing else lands there.
	h0 := time.Now().UTC().Add(-5 * time.Hour).Truncate(time.Hour)
	at := func(hour, minute int) time.Time {
		return h0.Add(time.Duration(hour)*time.Hour + time.Duration(minute)*time.Minute)
	}
	var rows []result
	for i := range 5 {
		rows = append(rows, result{orgA, fmt.Sprintf("s%d", i), fmt.Sprintf("rs%d", i), "sign", "signed", "", "key1", 100, 10, at(0, i)})
	}
	rows = append(rows,
		result{orgA, "s0", "rs0-replayed", "sign", "signed", "", "key1", 100, 10, at(0, 0)}, // a replay: new receipt, same request
		result{orgA, "v0", "x0", "verify", "invalid", "bad_signature", "key2", 50, 20, at(0, 30)},
		result{orgA, "v1", "x1", "verify", "invalid", "bad_signature", "key2", 50, 20, at(0, 31)},
		result{orgA, "v2", "", "verify", "failed", "malformed", "key2", 50, 20, at(0, 59)},
		result{orgA, "t0", "rt0", "sign", "signed", "", "key1", 100, 10, at(1, 0)},
		result{orgA, "t1", "rt1", "sign", "signed", "", "key1", 100, 10, at(1, 1)},
		result{orgA, "t2", "rt2", "sign", "signed", "", "key1", 100, 10, at(1, 2)},
	)
	for i := range 10 {
		rows = append(rows, result{orgB, fmt.Sprintf("b%d", i), fmt.Sprintf("rb%d", i), "verify", "invalid", "unknown_kid", "keyB", 7, uint32(i + 1), at(0, 5)})
	}
	insertResults(t, r, rows...)
	insertResults(t, r, rows[:4]...) // copies: the sink read an offset range twice
	if err := r.conn.Exec(ctx, "INSERT INTO "+schemas.ClickHouseWebhookAttemptsTable+" (org, message_id, id, endpoint_id, event_type, message_created_at, at, latency_ms, outcome) "+
		"SELECT ?, concat('msg_', toString(number)), concat('att_', toString(number)), 'ep_1', 'receipt.signed', toDateTime(?), toDateTime(?), 5, "+
		"['delivered', 'delivered', 'delivered', 'retrying', 'exhausted'][number + 1] FROM system.numbers LIMIT 5", orgA, at(0, 1).Unix(), at(0, 1).Unix()); err != nil {
		t.Fatal(err)
	}

	from, to := h0, h0.Add(3*time.Hour)
	type answers struct {
		hour, day, minute []float64
		byStatus          map[string][]float64
		top               []schemas.AnalyticsTopRow
		sum               *schemas.AnalyticsSummary
		b                 *schemas.AnalyticsSummary
	}
	ask := func() answers {
		t.Helper()
		var a answers
		s, err := r.Series(ctx, orgA, schemas.AnalyticsQuery{Metrics: []string{"requests"}, From: from, To: to, Granularity: schemas.GranularityHour})
		if err != nil {
			t.Fatal(err)
		}
		a.hour = values(t, s.Series[0])
		d, err := r.Series(ctx, orgA, schemas.AnalyticsQuery{Metrics: []string{"requests"}, From: from, To: to, Granularity: schemas.GranularityDay})
		if err != nil {
			t.Fatal(err)
		}
		var sum float64
		for _, v := range values(t, d.Series[0]) {
			sum += v
		}
		a.day = []float64{sum}
		m, err := r.Series(ctx, orgA, schemas.AnalyticsQuery{Metrics: []string{"requests"}, From: from, To: to, Granularity: schemas.GranularityMinute})
		if err != nil {
			t.Fatal(err)
		}
		a.minute = []float64{0, 0, 0}
		for i, v := range values(t, m.Series[0]) {
			a.minute[i/60] += v
		}
		g, err := r.Series(ctx, orgA, schemas.AnalyticsQuery{Metrics: []string{"requests"}, GroupBy: "status", From: from, To: to, Granularity: schemas.GranularityHour})
		if err != nil {
			t.Fatal(err)
		}
		a.byStatus = map[string][]float64{}
		for _, l := range g.Series {
			a.byStatus[l.Group] = values(t, l)
		}
		top, err := r.Top(ctx, orgA, schemas.AnalyticsQuery{Metrics: []string{"requests"}, GroupBy: "reason", From: from, To: to,
			Filters: []schemas.AnalyticsFilter{{Dim: "status", Values: []string{"invalid", "failed"}}}})
		if err != nil {
			t.Fatal(err)
		}
		a.top = top.Rows
		if a.sum, err = r.Summary(ctx, orgA, from, to); err != nil {
			t.Fatal(err)
		}
		if a.b, err = r.Summary(ctx, orgB, from, to); err != nil {
			t.Fatal(err)
		}
		return a
	}
	check := func(when string, a answers, firstHour float64) {
		t.Helper()
		if want := []float64{firstHour, 3, 0}; !slices.Equal(a.hour, want) || !slices.Equal(a.minute, want) {
			t.Errorf("%s: requests by hour %v, summed by minute %v, want %v", when, a.hour, a.minute, want)
		}
		if a.day[0] != firstHour+3 {
			t.Errorf("%s: requests by day %v, want %v", when, a.day, firstHour+3)
		}
		signed := firstHour - 3
		if !slices.Equal(a.byStatus["signed"], []float64{signed, 3, 0}) || !slices.Equal(a.byStatus["invalid"], []float64{2, 0, 0}) ||
			!slices.Equal(a.byStatus["failed"], []float64{1, 0, 0}) || len(a.byStatus) != 3 {
			t.Errorf("%s: by status %v", when, a.byStatus)
		}
		if len(a.top) != 2 || a.top[0].Group != "bad_signature" || *a.top[0].Values[0] != 2 || a.top[1].Group != "malformed" || *a.top[1].Values[0] != 1 {
			t.Errorf("%s: top reasons %+v", when, a.top)
		}
		s := a.sum
		if s.Requests != uint64(firstHour+3) || s.Signed != uint64(signed+3) || s.Invalid != 2 || s.Failed != 1 || s.Valid != 0 ||
			s.Webhooks.Attempts != 5 || s.Webhooks.Delivered != 3 || s.Webhooks.Retrying != 1 || s.Webhooks.Failed != 1 {
			t.Errorf("%s: A's summary %+v", when, s)
		}
		// B's ten requests took 1 to 10 ms and 7 bytes each; B sees none of A's.
		b := a.b
		if b.Requests != 10 || b.Invalid != 10 || b.Bytes != 70 || b.Webhooks.Attempts != 0 || b.LatencyMillis.P50 == nil ||
			*b.LatencyMillis.P50 < 4 || *b.LatencyMillis.P50 > 7 || *b.LatencyMillis.P99 < 9 || b.Webhooks.LatencyMillis.P50 != nil {
			t.Errorf("%s: B's summary %+v", when, b)
		}
	}
	live := func() int {
		p, err := newPlan(orgA, schemas.AnalyticsQuery{Metrics: []string{"requests"}, From: from, To: to}, false)
		if err != nil {
			t.Fatal(err)
		}
		sql, args := p.freshnessSQL()
		n := 0
		if err := chconn.Each(ctx, r.conn, "freshness", sql, args, func(rows driver.Rows) error {
			var h, changed, read time.Time
			if err := rows.Scan(&h, &changed, &read); err != nil {
				return err
			}
			if read.Before(changed.Add(SealMargin)) {
				n++
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return n
	}

	// The drill-down pages through the raw results, newest first, each
	// result once (copies not merged yet, too), none of B's.
	var seen []string
	cursor := ""
	for range 10 {
		page, err := r.Requests(ctx, orgA, schemas.AnalyticsQuery{From: from, To: to, Limit: 3}, cursor)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range page.Data {
			seen = append(seen, x.ID+"/"+x.ReceiptID)
		}
		if !page.HasMore {
			break
		}
		cursor = page.NextCursor
	}
	sorted := slices.Clone(seen)
	slices.Sort(sorted)
	if len(seen) != 12 || len(slices.Compact(sorted)) != 12 || seen[0] != "t2/rt2" || !slices.Contains(seen, "s0/rs0-replayed") {
		t.Fatalf("drill-down: %v", seen)
	}
	failed, err := r.Requests(ctx, orgA, schemas.AnalyticsQuery{From: from, To: to, Filters: []schemas.AnalyticsFilter{{Dim: "status", Values: []string{"failed", "invalid"}}}}, "")
	if err != nil || len(failed.Data) != 3 || failed.HasMore || failed.Data[0].ID != "v2" || failed.Data[0].Reason != "malformed" || failed.Data[0].KeyID != "key2" {
		t.Fatalf("failures: %v %+v", err, failed)
	}
	if _, err := r.Requests(ctx, orgB, schemas.AnalyticsQuery{From: from, To: to}, cursor); err != nil {
		t.Fatalf("B with A's cursor: %v", err) // a position, not a permission: B still sees only B's rows
	}
	if p, _ := r.Requests(ctx, orgB, schemas.AnalyticsQuery{From: from, To: to, Limit: 200}, ""); len(p.Data) != 10 {
		t.Fatalf("B's drill-down: %d rows", len(p.Data))
	}

	before := ask()
	check("before sealing", before, 8)
	if n := live(); n != 2 {
		t.Fatalf("%d of A's hours are live before sealing, want 2", n)
	}
	cfg := DefaultSealerConfig()
	cfg.ClickHouse.Addr = []string{addr}
	sealer, err := NewSealer(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sealer.Close()
	seal := func() {
		t.Helper()
		for _, ru := range schemas.Rollups {
			if err := sealer.Seal(ctx, ru, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The hours changed just now: the sealer waits for them to be quiet.
	seal()
	if n := live(); n != 2 {
		t.Fatalf("%d of A's hours are live after a pass that found them busy, want 2", n)
	}
	time.Sleep(SealMargin + time.Second)
	seal()
	if n := live(); n != 0 {
		t.Fatalf("%d of A's hours are still live after sealing", n)
	}
	check("sealed", ask(), 8)

	// A late row in a sealed hour counts at once, from the minutes.
	insertResults(t, r, result{orgA, "late", "rlate", "sign", "signed", "", "key1", 100, 10, at(0, 45)})
	if n := live(); n != 1 {
		t.Fatalf("%d of A's hours are live after a late row, want 1", n)
	}
	check("a late row", ask(), 9)
	time.Sleep(SealMargin + time.Second)
	seal()
	if n := live(); n != 0 {
		t.Fatalf("%d of A's hours are live after sealing again", n)
	}
	check("sealed again", ask(), 9)
}
