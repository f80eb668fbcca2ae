//go:build integration

package main

import (
	"bytes"
	"encoding/csv"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/testenv"
)

// TestOpenAPIExportsClickHouse: with ClickHouse, an organization exports
// its results in every format, by pages that resume exactly, and in the
// background behind a signed link that resumes with Range; its audit
// events and report runs export too. Another organization's exports,
// pages, cursors, jobs and links hold nothing of it. Every answer is
// validated against the document.
func TestOpenAPIExportsClickHouse(t *testing.T) {
	e := startDev(t, "--clickhouse", testenv.ClickHouseAddr(t))
	c := newContract(t, e)
	a := newCrossTenant()
	keyA := e.keyID()
	start := time.Now().UTC()
	rng := "from=" + start.Add(-time.Minute).Format(time.RFC3339) + "&to=" + start.Add(time.Hour).Format(time.RFC3339)
	const n = 3
	a.traffic(t, c, e, n)

	// A's results with receipts, this run's key only (earlier runs left
	// rows of an organization of the same name), once the sink wrote them.
	results := "/v1/exports/results?receipt=true&key_id=" + keyA + "&" + rng
	var rows [][]string
	deadline := time.Now().Add(30 * time.Second)
	for {
		body := c.expect(t, e, exchange{name: "A's results as CSV", method: "GET", path: results, key: e.key, status: 200}).body
		recs, err := csv.NewReader(strings.NewReader(body)).ReadAll()
		if err != nil {
			t.Fatalf("A's CSV: %v\n%s", err, body)
		}
		if rows = recs; len(rows) == n+2 { // the header, n signs, a verify
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("A's export never held its %d results: %s", n+1, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if col := strings.Join(rows[0], ","); !strings.Contains(col, "receipt") || !strings.Contains(col, "key_id") {
		t.Fatalf("A's CSV header: %s", col)
	}
	signed := 0
	for _, r := range rows[1:] {
		if strings.Contains(strings.Join(r, ","), a.secret) {
			signed++
		}
	}
	if signed != n {
		t.Errorf("%d of A's rows hold its receipts' payload, want %d", signed, n)
	}

	// Every format, with its type; the text ones hold the same rows.
	for format, check := range map[string]func(body string) bool{
		"ndjson": func(b string) bool { return strings.Count(b, "\n") == n+1 && strings.Contains(b, a.secret) },
		"json": func(b string) bool {
			var v []map[string]any
			return json.Unmarshal([]byte(b), &v) == nil && len(v) == n+1
		},
		"arrow":   func(b string) bool { return strings.HasPrefix(b, "\xff\xff\xff\xff") && strings.Contains(b, a.secret) },
		"parquet": func(b string) bool { return strings.HasPrefix(b, "PAR1") && strings.HasSuffix(b, "PAR1") },
	} {
		r := c.expect(t, e, exchange{name: "A's results as " + format, method: "GET", path: results + "&format=" + format, key: e.key, status: 200})
		if !check(r.body) {
			t.Errorf("A's %s export (%s): %.300q", format, r.header.Get("Content-Type"), r.body)
		}
		if cd := r.header.Get("Content-Disposition"); !strings.Contains(cd, "attachment") {
			t.Errorf("%s: Content-Disposition %q", format, cd)
		}
	}

	// HEAD answers as GET would, with no body, and stops the export.
	for path, want := range map[string]int{results: 200, "/v1/exports/results?cursor=bm9wZQ": 400} {
		rq, _ := http.NewRequest("HEAD", e.base+path, nil)
		rq.Header.Set("Authorization", "Bearer "+e.key)
		resp, err := apiClient.Do(rq)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want || (want == 200 && !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/csv")) {
			t.Errorf("HEAD %s: %d %v", path, resp.StatusCode, resp.Header)
		}
	}

	// Pages of one row resume exactly: the whole export, header once.
	var paged []string
	next, pages := "", 0
	for {
		p := results + "&format=csv&limit=1"
		if next != "" {
			p += "&cursor=" + url.QueryEscape(next)
		}
		r := c.expect(t, e, exchange{name: "A's page", method: "GET", path: p, key: e.key, status: 200})
		paged = append(paged, r.body)
		pages++
		if next = r.header.Get("Certnode-Next-Cursor"); next == "" {
			break
		}
		if !strings.Contains(r.header.Get("Link"), `rel="next"`) || pages > n+2 {
			t.Fatalf("page %d: Link %q", pages, r.header.Get("Link"))
		}
		if pages == 2 {
			// A page asked again with its cursor is the same page; another
			// organization cannot use the cursor.
			again := c.expect(t, e, exchange{name: "A's page again", method: "GET", path: p, key: e.key, status: 200}).body
			if again != r.body {
				t.Errorf("page 2 asked again differs:\n%s\n%s", r.body, again)
			}
			a.leaks(t, c.expect(t, e, exchange{name: "B with A's cursor", method: "GET", path: p, key: e.other, status: 400, code: "invalid_export"}).body)
		}
	}
	whole := c.expect(t, e, exchange{name: "A's whole CSV", method: "GET", path: results, key: e.key, status: 200}).body
	if got := strings.Join(paged, ""); got != whole || pages != n+1 {
		t.Errorf("%d pages joined differ from the whole export:\n%s\nwant\n%s", pages, got, whole)
	}

	// B: none of A's rows, even naming A's key.
	for _, p := range []string{results, "/v1/exports/results?format=ndjson&" + rng, "/v1/exports/receipts?" + rng, "/v1/exports/usage?key_id=" + keyA + "&" + rng,
		"/v1/exports/webhook_attempts?" + rng, "/v1/exports/audit_events?format=ndjson&" + rng} {
		body := c.expect(t, e, exchange{name: "B exports " + p, method: "GET", path: p, key: e.other, status: 200}).body
		a.leaks(t, body)
		if strings.Contains(body, keyA) {
			t.Errorf("B's %s holds A's key: %s", p, body)
		}
	}
	for _, x := range []exchange{
		{name: "an unknown format", method: "GET", path: "/v1/exports/results?format=xlsx", key: e.key, offSpec: true, status: 400, code: "invalid_format"},
		{name: "an unknown filter", method: "GET", path: "/v1/exports/usage?colour=red", key: e.key, status: 400, code: "invalid_export"},
		{name: "a forged cursor", method: "GET", path: "/v1/exports/results?cursor=bm9wZQ", key: e.key, status: 400, code: "invalid_export"},
		{name: "export jobs with an unknown key", method: "GET", path: "/v1/export-jobs", key: "cn_nope", status: 401, code: "unauthorized"},
		{name: "an unknown kind", method: "GET", path: "/v1/exports/tenants", key: e.key, offSpec: true, status: 400, code: "invalid_export"},
	} {
		c.expect(t, e, x)
	}

	// A's audit trail holds the report it saves; a report runs as a table.
	rid := e.newReport("demo")
	audit := c.expect(t, e, exchange{name: "A's audit events", method: "GET", path: "/v1/exports/audit_events?format=ndjson&" + rng, key: e.key, status: 200}).body
	if !strings.Contains(audit, rid) {
		t.Errorf("A's audit export lacks its report %s: %s", rid, audit)
	}
	run := c.expect(t, e, exchange{name: "A's report as CSV", method: "GET", path: "/v1/reports/" + rid + "/run?format=csv", key: e.key, status: 200}).body
	if !strings.HasPrefix(run, "time,status,") || !strings.Contains(run, ",signed,") {
		t.Errorf("A's report as CSV: %s", run)
	}
	for _, f := range []string{"ndjson", "json", "arrow", "parquet"} {
		c.expect(t, e, exchange{name: "A's report as " + f, method: "GET", path: "/v1/reports/" + rid + "/run?format=" + f, key: e.key, status: 200})
	}
	if text := pdfText(t, []byte(c.expect(t, e, exchange{name: "A's report as PDF", method: "GET", path: "/v1/reports/" + rid + "/run?format=pdf", key: e.key, status: 200}).body)); !strings.Contains(text, rid) || !strings.Contains(text, "signed") {
		t.Errorf("A's report as PDF reads %s", text)
	}
	if text := pdfText(t, []byte(c.expect(t, e, exchange{name: "A's audit events as PDF", method: "GET", path: "/v1/exports/audit_events?format=pdf&" + rng, key: e.key, status: 200}).body)); !strings.Contains(text, rid) || !strings.Contains(text, "report.create") {
		t.Errorf("A's audit events as PDF read %s", text)
	}
	c.expect(t, e, exchange{name: "results as PDF", method: "GET", path: "/v1/exports/results?format=pdf", key: e.key, status: 400, code: "invalid_format"})
	c.expect(t, e, exchange{name: "a report as xlsx", method: "GET", path: "/v1/reports/" + rid + "/run?format=xlsx", key: e.key, offSpec: true, status: 400, code: "invalid_format"})

	exportJobs(t, c, e, a, keyA, start, whole)

	for _, key := range []string{"GET /v1/exports/{kind}", "POST /v1/export-jobs", "GET /v1/export-jobs", "GET /v1/export-jobs/{export_id}",
		"DELETE /v1/export-jobs/{export_id}", "GET /v1/export-jobs/{export_id}/file"} {
		if !c.success[key] || !c.failure[key] {
			t.Errorf("%s: success validated %v, error validated %v", key, c.success[key], c.failure[key])
		}
	}
}

// exportJobs runs A's export in the background: its file equals the
// streamed export, a link resumes with Range and is refused altered, and
// B sees none of A's jobs.
func exportJobs(t *testing.T, c *contract, e *devEnv, a *crossTenant, keyA string, start time.Time, whole string) {
	const js = "application/json"
	req := `{"kind":"results","format":"csv","receipt":true,"filters":{"key_id":"` + keyA + `"},"from":"` +
		start.Add(-time.Minute).Format(time.RFC3339) + `","to":"` + start.Add(time.Hour).Format(time.RFC3339) + `"}`
	type job struct {
		ID          string  `json:"id"`
		Status      string  `json:"status"`
		Rows        int64   `json:"rows"`
		Progress    float64 `json:"progress"`
		DownloadURL string  `json:"download_url"`
	}
	var j job
	r := c.expect(t, e, exchange{name: "A starts an export", method: "POST", path: "/v1/export-jobs", key: e.key, ctype: js, body: req, status: 202})
	json.Unmarshal([]byte(r.body), &j, json.RejectUnknownMembers(false))
	if r.header.Get("Location") != "/v1/export-jobs/"+j.ID || j.ID == "" {
		t.Fatalf("A's export job: %s %v", r.body, r.header)
	}
	deadline := time.Now().Add(30 * time.Second)
	for j.Status != "done" {
		if time.Now().After(deadline) || j.Status == "failed" || j.Status == "canceled" {
			t.Fatalf("A's export job: %+v", j)
		}
		time.Sleep(100 * time.Millisecond)
		body := c.expect(t, e, exchange{name: "A follows its export", method: "GET", path: "/v1/export-jobs/" + j.ID, key: e.key, status: 200}).body
		json.Unmarshal([]byte(body), &j, json.RejectUnknownMembers(false))
	}
	if j.Progress != 1 || j.Rows == 0 || !strings.HasPrefix(j.DownloadURL, e.base+"/v1/export-jobs/"+j.ID+"/file?") {
		t.Fatalf("A's export done: %+v", j)
	}
	link := strings.TrimPrefix(j.DownloadURL, e.base)
	file := c.expect(t, e, exchange{name: "the link downloads", method: "GET", path: link, status: 200})
	if file.body != whole {
		t.Errorf("the job's file differs from the streamed export:\n%s\nwant\n%s", file.body, whole)
	}
	// A download cut off resumes where it stopped.
	rq, _ := http.NewRequest("GET", j.DownloadURL, nil)
	rq.Header.Set("Range", "bytes=10-")
	rq.Header.Set("If-Range", file.header.Get("ETag"))
	resp, err := apiClient.Do(rq)
	if err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 206 || !bytes.Equal(rest, []byte(whole[10:])) || resp.Header.Get("Content-Range") != "bytes 10-"+strconv.Itoa(len(whole)-1)+"/"+strconv.Itoa(len(whole)) {
		t.Errorf("a resumed download: %d %q %q", resp.StatusCode, resp.Header.Get("Content-Range"), rest)
	}
	u, _ := url.Parse(j.DownloadURL)
	q := u.Query()
	sig := q.Get("signature")
	for name, alter := range map[string]func(url.Values){
		"an altered signature": func(v url.Values) { v.Set("signature", sig[:len(sig)-2]+"AA") },
		"a later expiry":       func(v url.Values) { v.Set("expires", strconv.Itoa(int(time.Now().Add(time.Hour*48).Unix()))) },
		"no signature":         func(v url.Values) { v.Del("signature") },
	} {
		v := url.Values{}
		for k, vs := range q {
			v[k] = vs
		}
		alter(v)
		c.expect(t, e, exchange{name: name, method: "GET", path: u.Path + "?" + v.Encode(), offSpec: name == "no signature", status: 403, code: "invalid_link"})
	}
	rq, _ = http.NewRequest("GET", j.DownloadURL, nil)
	rq.Header.Set("Range", "bytes=999999-")
	if resp, err := apiClient.Do(rq); err != nil || resp.StatusCode != 416 {
		t.Errorf("a range past the end: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	// B sees none of it, and what B starts is B's.
	a.jobID = j.ID
	a.notFound(t, c, e, "/v1/export-jobs/"+j.ID, "/v1/export-jobs/exp_00000000000000000000000000")
	list := c.expect(t, e, exchange{name: "B lists its exports", method: "GET", path: "/v1/export-jobs", key: e.other, status: 200}).body
	a.leaks(t, list)
	c.expect(t, e, exchange{name: "B cancels A's export", method: "DELETE", path: "/v1/export-jobs/" + j.ID, key: e.other, status: 404, code: "not_found"})
	if !strings.Contains(c.expect(t, e, exchange{name: "A lists its exports", method: "GET", path: "/v1/export-jobs", key: e.key, status: 200}).body, j.ID) {
		t.Error("A's list lacks its export")
	}
	for _, x := range []exchange{
		{name: "an export job of audit events", method: "POST", path: "/v1/export-jobs", key: e.key, ctype: js, body: `{"kind":"audit_events"}`, offSpec: true, status: 400, code: "invalid_export"},
		{name: "an export job with an unknown member", method: "POST", path: "/v1/export-jobs", key: e.key, ctype: js, body: `{"kind":"results","colour":"red"}`, offSpec: true, status: 400, code: "malformed_json"},
		{name: "an export job with a bad filter", method: "POST", path: "/v1/export-jobs", key: e.key, ctype: js, body: `{"kind":"usage","filters":{"colour":"red"}}`, status: 400, code: "invalid_export"},
	} {
		c.expect(t, e, x)
	}
	// Canceled, its file is gone and its link refused.
	c.expect(t, e, exchange{name: "A cancels its export", method: "DELETE", path: "/v1/export-jobs/" + j.ID, key: e.key, status: 200})
	c.expect(t, e, exchange{name: "a canceled export's link", method: "GET", path: link, status: 403, code: "invalid_link"})
}
