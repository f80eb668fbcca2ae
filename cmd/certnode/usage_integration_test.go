//go:build integration

package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/go-json-experiment/json"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/recordauth"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

func (e *e2e) usageSink() *proc {
	return e.start("usage", "sink", "usage", "--metrics", freeAddr(e.t))
}

// distinctByStatus is what ClickHouse's certnode.requests view counts for
// the tenant over [from, to): distinct request ids by status.
func (e *e2e) distinctByStatus(conn driver.Conn, from, to time.Time) map[string]uint64 {
	e.t.Helper()
	rows, err := conn.Query(context.Background(), `SELECT status, uniqExact(id) FROM certnode.requests
		WHERE tenant = ? AND received_at >= toDateTime(?) AND received_at < toDateTime(?) GROUP BY status`, e.tenant, from.Unix(), to.Unix())
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]uint64{}
	for rows.Next() {
		var status string
		var n uint64
		if err := rows.Scan(&status, &n); err != nil {
			e.t.Fatal(err)
		}
		out[status] = n
	}
	return out
}

// usageReport asks GET /v1/usage.
func (e *e2e) usageReport(query string) schemas.UsageReport {
	e.t.Helper()
	code, body := e.do("GET", "/v1/usage?"+query, "", "")
	var rep schemas.UsageReport
	if code != 200 || json.Unmarshal([]byte(body), &rep) != nil {
		e.t.Fatalf("GET /v1/usage?%s: %d %s", query, code, body)
	}
	return rep
}

// endOffsets sums a topic's end offsets: the records it ever received.
func (e *e2e) endOffsets(topic string) int64 {
	e.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(e.kafka, ",")...))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		e.t.Fatal(err)
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) { n += o.Offset })
	return n
}

// TestE2EUsageAfterWorkerKilled: a bulk sign job whose worker is SIGKILLed
// with results produced and not committed (they are replayed), plus
// requests a customer producer writes straight into Kafka, some of them
// twice, and unauthenticated ones. The usage API then reports, for the
// period, exactly ClickHouse's count of distinct requests by status, by
// hour and by day, per key too; no request is counted twice though the
// usage topic holds its replays; the unauthenticated requests are nobody's.
func TestE2EUsageAfterWorkerKilled(t *testing.T) {
	e := newE2E(t, "")
	topics := schemas.TopicsFor(e.prefix)
	from := time.Now().UTC().Truncate(time.Hour)
	e.sink()
	e.usageSink()
	const n = 4000
	job, uncommitted := e.killWorkerMidJob("usage", n)
	e.worker()

	// A customer producer: 30 signed requests, 10 of them written twice,
	// 5 verify requests of a receipt that is no receipt (failed or
	// invalid), and 5 unsigned ones that name the tenant.
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.kafka))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	signed := func(value string) *kgo.Record {
		return &kgo.Record{Topic: topics.Requests, Key: []byte(e.tenant), Value: []byte(value), Headers: []kgo.RecordHeader{
			{Key: schemas.HeaderProducerKeyID, Value: []byte(e.producerKeyID)},
			{Key: schemas.HeaderSignature, Value: []byte(recordauth.Sign([]byte(e.producerSecret), []byte(value)))}}}
	}
	var recs []*kgo.Record
	for i := range 30 {
		v := fmt.Sprintf(`{"v":1,"id":"ext-%d","tenant":%q,"kind":"sign","payload":{"i":%d}}`, i, e.tenant, i)
		recs = append(recs, signed(v))
		if i < 10 {
			recs = append(recs, signed(v))
		}
	}
	for i := range 5 {
		recs = append(recs, signed(fmt.Sprintf(`{"v":1,"id":"ext-v-%d","tenant":%q,"kind":"verify","receipt":{"protected":"x"}}`, i, e.tenant)),
			&kgo.Record{Topic: topics.Requests, Key: []byte(e.tenant),
				Value: []byte(fmt.Sprintf(`{"v":1,"id":"spoof-%d","tenant":%q,"kind":"sign","payload":{}}`, i, e.tenant))})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "job done after restart", 2*time.Minute, func() (bool, string) {
		s := e.jobStatus(job)
		return s.State == "done" && s.Done == n, fmt.Sprintf("%+v", s)
	})

	// Every authenticated request is in ClickHouse; the usage API, by
	// hour, then reports exactly the same distinct requests by status.
	const total = n + 30 + 5
	to := time.Now().UTC().Truncate(time.Hour).Add(time.Hour)
	conn := e.clickhouse()
	period := "from=" + url.QueryEscape(from.Format(time.RFC3339)) + "&to=" + url.QueryEscape(to.Format(time.RFC3339))
	var rep schemas.UsageReport
	var want map[string]uint64
	testenv.WaitFor(t, "usage equal to ClickHouse's distinct requests", 2*time.Minute, func() (bool, string) {
		want = e.distinctByStatus(conn, from, to)
		rep = e.usageReport("granularity=hour&" + period)
		var sum uint64
		for _, c := range want {
			sum += c
		}
		got := rep.Totals
		return sum == total && uint64(got.Requests) == sum && uint64(got.Signed) == want["signed"] && uint64(got.Valid) == want["valid"] &&
				uint64(got.Invalid) == want["invalid"] && uint64(got.Failed) == want["failed"],
			fmt.Sprintf("usage %+v, ClickHouse %v, want %d requests", got, want, total)
	})
	if rep.Totals.Signed != n+30 || rep.Totals.Invalid+rep.Totals.Failed != 5 {
		t.Fatalf("usage %+v: want %d signed and 5 verifications", rep.Totals, n+30)
	}
	t.Logf("worker killed with results for %d requests uncommitted; usage %+v equals ClickHouse %v", uncommitted, rep.Totals, want)

	// The replays did reach the usage topic and table, and count once.
	if events := e.endOffsets(topics.Usage); events <= total {
		t.Fatalf("the usage topic holds %d events for %d requests: no replay was tested", events, total)
	}
	var rows, distinct uint64
	if err := conn.QueryRow(context.Background(), "SELECT count(), uniqExact(id) FROM certnode.usage_events WHERE org = ?", e.tenant).Scan(&rows, &distinct); err != nil {
		t.Fatal(err)
	}
	if distinct != total {
		t.Fatalf("usage_events has %d distinct requests (%d rows), want %d", distinct, rows, total)
	}
	t.Logf("usage_events: %d rows (before merges) for %d requests", rows, distinct)

	// By day, and by key: the same totals; the producer's requests under
	// its key, ingest's (a tenants file's key, no id) under none.
	day := e.usageReport("granularity=day&from=" + url.QueryEscape(from.Truncate(24*time.Hour).Format(time.RFC3339)) + "&to=" +
		url.QueryEscape(to.Truncate(24*time.Hour).Add(24*time.Hour).Format(time.RFC3339)))
	if day.Totals != rep.Totals {
		t.Errorf("by day %+v, by hour %+v", day.Totals, rep.Totals)
	}
	byKey := e.usageReport("granularity=hour&group_by=key&" + period)
	perKey := map[string]int64{}
	for _, r := range byKey.Rows {
		perKey[r.KeyID] += r.Requests
	}
	if perKey[e.producerKeyID] != 35 || perKey[""] != n || len(perKey) != 2 {
		t.Errorf("requests per key %v, want %d for %s and %d without a key id", perKey, 35, e.producerKeyID, n)
	}

	// The month's invoice (unmetered: nothing to pay) counts the same.
	month := from.Format("2006-01")
	if time.Now().UTC().Format("2006-01") == month {
		code, body := e.do("GET", "/v1/invoices/"+month, "", "")
		var inv schemas.Invoice
		if code != 200 || json.Unmarshal([]byte(body), &inv) != nil || inv.Usage.Signed < rep.Totals.Signed || inv.Total != 0 ||
			inv.Status != schemas.InvoiceOpen || inv.Plan.ID != "unmetered" || inv.Organization != e.tenant {
			t.Errorf("invoice %s: %d %s", month, code, body)
		}
		req, _ := http.NewRequest("GET", "http://"+e.http+"/v1/invoices/"+month, nil)
		req.Header.Set("Authorization", "Bearer "+e.apiKey)
		req.Header.Set("Accept", "text/csv")
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		csvBody, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/csv; charset=utf-8" ||
			!strings.HasPrefix(string(csvBody), strings.Join(schemas.InvoiceCSVHeader, ",")+"\n") {
			t.Errorf("invoice CSV: %d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), csvBody)
		}
	}
}
