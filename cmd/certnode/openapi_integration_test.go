//go:build integration

package main

import (
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/testenv"
)

// TestOpenAPIReceiptsClickHouse: with the ClickHouse sink, GET
// /v1/receipts/{receipt_id} answers the tenant's own receipt as it was
// signed, 404 for an unknown id, and to another tenant asking for it the
// same 404 as for an unknown id; every answer validated against the
// document. The in-process tests run without ClickHouse (503 only).
func TestOpenAPIReceiptsClickHouse(t *testing.T) {
	e := startDev(t, "--clickhouse", testenv.ClickHouseAddr(t))
	c := newContract(t, e)
	raw := make([]byte, 32)
	rand.Read(raw)
	a := newCrossTenant()
	unknown := base64.RawURLEncoding.EncodeToString(raw) // a well-formed id no receipt has

	receipt := strings.TrimSpace(c.expect(t, e, exchange{name: "A signs", method: "POST", path: "/v1/sign", key: e.key,
		ctype: "application/json", body: `{"payload":{"s":"` + a.secret + `"}}`, status: 200}).body)
	var rc struct {
		ReceiptID string `json:"receipt_id"`
	}
	json.Unmarshal([]byte(receipt), &rc, json.RejectUnknownMembers(false))

	// The row lands within the sink's batch window; 404 until then.
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := c.do(t, e, exchange{name: "A's receipt", method: "GET", path: "/v1/receipts/" + rc.ReceiptID, key: e.key})
		if r.status == 200 {
			if strings.TrimSpace(r.body) != receipt {
				t.Fatalf("stored receipt %s, signed %s", r.body, receipt)
			}
			break
		}
		if r.status != 404 || time.Now().After(deadline) {
			t.Fatalf("A's receipt: %d %s", r.status, r.body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.expect(t, e, exchange{name: "unknown receipt", method: "GET", path: "/v1/receipts/" + unknown, key: e.key, status: 404, code: "not_found"})

	// The 404 message repeats the id asked for: B's answer for A's id is
	// its answer for an unknown id, with that id.
	got := c.expect(t, e, exchange{name: "B on A's receipt", method: "GET", path: "/v1/receipts/" + rc.ReceiptID, key: e.other, status: 404, code: "not_found"}).body
	want := c.expect(t, e, exchange{name: "B on an unknown receipt", method: "GET", path: "/v1/receipts/" + unknown, key: e.other, status: 404, code: "not_found"}).body
	if strings.ReplaceAll(got, rc.ReceiptID, unknown) != want {
		t.Errorf("B tells A's receipt (%s) from an unknown one (%s)", got, want)
	}
	a.leaks(t, got)

	key := "GET /v1/receipts/{receipt_id}"
	if !c.success[key] || !c.failure[key] {
		t.Fatalf("%s: success validated %v, error validated %v", key, c.success[key], c.failure[key])
	}
}

// traffic has A sign n requests with its secret and verify one (invalid).
func (a *crossTenant) traffic(t *testing.T, c *contract, e *devEnv, n int) {
	t.Helper()
	for range n {
		c.expect(t, e, exchange{name: "A signs", method: "POST", path: "/v1/sign", key: e.key,
			ctype: "application/json", body: `{"payload":{"s":"` + a.secret + `"}}`, status: 200})
	}
	c.expect(t, e, exchange{name: "A verifies", method: "POST", path: "/v1/verify", key: e.key,
		ctype: "application/json", body: `{"receipt":{}}`, status: 200})
}

// TestOpenAPIUsageClickHouse: with ClickHouse, the usage and invoice
// routes answer the tenant's own usage, validated against the document,
// and another tenant's answers hold nothing of it.
func TestOpenAPIUsageClickHouse(t *testing.T) {
	e := startDev(t, "--clickhouse", testenv.ClickHouseAddr(t))
	c := newContract(t, e)
	a := newCrossTenant()
	const n = 3
	a.traffic(t, c, e, n)
	// Every test run signs again on the shared ClickHouse: count from now on.
	from := time.Now().UTC().Add(-time.Minute).Truncate(time.Second)
	q := "?from=" + from.Format(time.RFC3339)
	month := time.Now().UTC().Format("2006-01")

	// Rows land within the usage and ClickHouse sinks' batch windows.
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := c.expect(t, e, exchange{name: "A's usage by hour", method: "GET", path: "/v1/usage" + q + "&granularity=hour&group_by=key", key: e.key, status: 200})
		var rep struct {
			Totals struct {
				Requests int `json:"requests"`
			} `json:"totals"`
		}
		json.Unmarshal([]byte(r.body), &rep, json.RejectUnknownMembers(false))
		if rep.Totals.Requests >= n+1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("A's usage never showed its %d requests: %s", n+1, r.body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, x := range []exchange{
		{name: "A's usage by day", method: "GET", path: "/v1/usage" + q, key: e.key, status: 200},
		{name: "A's invoices", method: "GET", path: "/v1/invoices", key: e.key, status: 200},
		{name: "A's invoice", method: "GET", path: "/v1/invoices/" + month, key: e.key, status: 200},
		{name: "A's invoice as CSV", method: "GET", path: "/v1/invoices/" + month + "?format=csv", key: e.key, status: 200},
		{name: "an invoice of a month not begun", method: "GET", path: "/v1/invoices/2999-01", key: e.key, status: 404, code: "not_found"},
	} {
		c.expect(t, e, x)
	}

	// B, on the same routes, sees its own organization only: none of A's
	// requests (B made none), and no trace of A.
	b := c.expect(t, e, exchange{name: "B's usage", method: "GET", path: "/v1/usage" + q + "&granularity=hour&group_by=key", key: e.other, status: 200}).body
	if !strings.Contains(b, `"organization":"other"`) || !strings.Contains(b, `"rows":[]`) {
		t.Errorf("B's usage: %s", b)
	}
	a.leaks(t, b)
	for _, path := range []string{"/v1/invoices", "/v1/invoices/" + month, "/v1/invoices/" + month + "?format=csv"} {
		body := c.expect(t, e, exchange{name: "B on " + path, method: "GET", path: path, key: e.other, status: 200}).body
		if !strings.Contains(body, "other") {
			t.Errorf("B's %s is not B's: %s", path, body)
		}
		a.leaks(t, body)
	}
	for _, key := range []string{"GET /v1/usage", "GET /v1/invoices", "GET /v1/invoices/{period}"} {
		if !c.success[key] {
			t.Errorf("%s: no success validated", key)
		}
	}
}

// TestOpenAPIAnalyticsClickHouse: with ClickHouse, the analytics routes
// count the tenant's own requests, validated against the document; the
// other tenant's answers over the same range are the same before and
// after the first tenant's traffic, and hold nothing of it.
func TestOpenAPIAnalyticsClickHouse(t *testing.T) {
	e := startDev(t, "--clickhouse", testenv.ClickHouseAddr(t))
	c := newContract(t, e)
	a := newCrossTenant()
	keyA := e.keyID()
	start := time.Now().UTC()
	rng := "from=" + start.Add(-time.Minute).Format(time.RFC3339) + "&to=" + start.Add(2*time.Hour).Format(time.RFC3339)
	bPaths := []string{
		"/v1/analytics/requests?" + rng,
		"/v1/analytics/summary?" + rng,
		"/v1/analytics/series?granularity=hour&group_by=key_id&metric=requests,bytes,latency_p50&" + rng,
		"/v1/analytics/top?group_by=key_id&" + rng,
		"/v1/analytics/top?group_by=reason&status=invalid,failed&" + rng,
	}
	before := map[string]string{}
	for _, p := range bPaths {
		before[p] = c.expect(t, e, exchange{name: "B before A's traffic: " + p, method: "GET", path: p, key: e.other, status: 200}).body
	}

	const n = 3
	a.traffic(t, c, e, n)

	// Rows land within the sink's batch window. Earlier runs left rows of
	// a tenant of the same name: this run's key tells its own.
	series := "/v1/analytics/series?granularity=minute&metric=requests&group_by=kind&key_id=" + keyA + "&" + rng
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := c.expect(t, e, exchange{name: "A's series", method: "GET", path: series, key: e.key, status: 200})
		var s struct {
			Series []struct {
				Group  string     `json:"group"`
				Values []*float64 `json:"values"`
			} `json:"series"`
		}
		json.Unmarshal([]byte(r.body), &s, json.RejectUnknownMembers(false))
		got := map[string]float64{}
		for _, l := range s.Series {
			for _, v := range l.Values {
				if v != nil {
					got[l.Group] += *v
				}
			}
		}
		if got["sign"] >= n && got["verify"] >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("A's series never showed its %d signs and a verify: %s", n, r.body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	top := c.expect(t, e, exchange{name: "A's key", method: "GET", path: "/v1/analytics/top?group_by=key_id&key_id=" + keyA + "&" + rng, key: e.key, status: 200}).body
	if !strings.Contains(top, `"group":"`+keyA+`"`) {
		t.Errorf("A's top keys lack its key %s: %s", keyA, top)
	}
	var sum struct {
		Requests int `json:"requests"`
		Signed   int `json:"signed"`
		Invalid  int `json:"invalid"`
	}
	body := c.expect(t, e, exchange{name: "A's summary", method: "GET", path: "/v1/analytics/summary?" + rng, key: e.key, status: 200}).body
	json.Unmarshal([]byte(body), &sum, json.RejectUnknownMembers(false))
	if sum.Requests < n+1 || sum.Signed < n || sum.Invalid < 1 {
		t.Errorf("A's summary: %s", body)
	}
	for _, x := range []exchange{
		{name: "A's failure reasons", method: "GET", path: "/v1/analytics/top?group_by=reason&status=invalid,failed&" + rng, key: e.key, status: 200},
		{name: "A's webhook attempts", method: "GET", path: "/v1/analytics/series?metric=webhook_attempts,webhook_latency_p99&group_by=outcome&" + rng, key: e.key, status: 200},
		{name: "an unknown metric", method: "GET", path: "/v1/analytics/series?metric=tenants", key: e.key, status: 400, code: "invalid_query"},
		{name: "minutes over ten days", method: "GET", path: "/v1/analytics/series?granularity=minute&from=2026-01-01T00:00:00Z&to=2026-01-11T00:00:00Z", key: e.key, status: 400, code: "invalid_query"},
		{name: "top without a dimension", method: "GET", path: "/v1/analytics/top", key: e.key, offSpec: true, status: 400, code: "invalid_query"},
		{name: "summary backwards", method: "GET", path: "/v1/analytics/summary?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", key: e.key, status: 400, code: "invalid_query"},
	} {
		c.expect(t, e, x)
	}

	for _, p := range bPaths {
		after := c.expect(t, e, exchange{name: "B after A's traffic: " + p, method: "GET", path: p, key: e.other, status: 200}).body
		if after != before[p] {
			t.Errorf("B's %s changed with A's traffic:\nbefore %s\nafter  %s", p, before[p], after)
		}
		if strings.Contains(after, keyA) {
			t.Errorf("B's %s holds A's key %s: %s", p, keyA, after)
		}
		a.leaks(t, after)
	}
	// A saved report runs as the series it asks for, over its range or
	// over a period (a report.ready event's link).
	rid := e.newReport("demo")
	run := c.expect(t, e, exchange{name: "A runs a report", method: "GET", path: "/v1/reports/" + rid + "/run", key: e.key, status: 200}).body
	if !strings.Contains(run, `"group_by":"status"`) || !strings.Contains(run, `"group":"signed"`) {
		t.Errorf("A's report: %s", run)
	}
	hour := start.Truncate(time.Hour)
	period := "from=" + hour.Format(time.RFC3339) + "&to=" + hour.Add(2*time.Hour).Format(time.RFC3339)
	run = c.expect(t, e, exchange{name: "A runs a report over a period", method: "GET", path: "/v1/reports/" + rid + "/run?" + period, key: e.key, status: 200}).body
	if !strings.Contains(run, `"from":"`+hour.Format(time.RFC3339)+`"`) || !strings.Contains(run, `"granularity":"minute"`) || !strings.Contains(run, `"group":"signed"`) {
		t.Errorf("A's report over %s: %s", period, run)
	}
	c.expect(t, e, exchange{name: "a report with from only", method: "GET", path: "/v1/reports/" + rid + "/run?from=" + hour.Format(time.RFC3339), key: e.key, status: 400, code: "invalid_range"})
	c.expect(t, e, exchange{name: "an unknown report", method: "GET", path: "/v1/reports/rpt_nope/run", key: e.key, status: 404, code: "not_found"})
	drill := c.expect(t, e, exchange{name: "A's drill-down", method: "GET", path: "/v1/analytics/requests?limit=2&key_id=" + keyA + "&" + rng, key: e.key, status: 200}).body
	var page struct {
		Data []struct {
			KeyID string `json:"key_id"`
		} `json:"data"`
		NextCursor string `json:"next_cursor"`
	}
	json.Unmarshal([]byte(drill), &page, json.RejectUnknownMembers(false))
	if len(page.Data) != 2 || page.Data[0].KeyID != keyA || page.NextCursor == "" {
		t.Errorf("A's drill-down: %s", drill)
	}
	c.expect(t, e, exchange{name: "A's drill-down, next page", method: "GET", path: "/v1/analytics/requests?limit=2&key_id=" + keyA + "&cursor=" + page.NextCursor + "&" + rng, key: e.key, status: 200})
	c.expect(t, e, exchange{name: "a forged cursor", method: "GET", path: "/v1/analytics/requests?cursor=bm9wZQ", key: e.key, status: 400, code: "invalid_query"})
	for _, key := range []string{"GET /v1/analytics/series", "GET /v1/analytics/top", "GET /v1/analytics/summary", "GET /v1/analytics/requests", "GET /v1/reports/{report_id}/run"} {
		if !c.success[key] || !c.failure[key] {
			t.Errorf("%s: success validated %v, error validated %v", key, c.success[key], c.failure[key])
		}
	}
}
