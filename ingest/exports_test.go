package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/certnode/certnode/schemas"
)

// fakeExports streams what its fields say, and records how each stream
// ended.
type fakeExports struct {
	mu sync.Mutex
	// out is written in chunks of 32 KiB; then err is returned. With
	// endless, chunks go on until a write fails or ctx ends.
	out     []byte
	err     error
	endless bool
	ended   chan error // each Stream's end: its write error or ctx's
	pages   map[string]string
	asked   []schemas.ExportRequest
}

func (f *fakeExports) Stream(ctx context.Context, w io.Writer, org string, r schemas.ExportRequest, cursor, until string) (schemas.ExportResult, error) {
	f.mu.Lock()
	f.asked = append(f.asked, r)
	out, err, endless, ended := f.out, f.err, f.endless, f.ended
	f.mu.Unlock()
	var end error
	defer func() {
		if ended != nil {
			ended <- end
		}
	}()
	chunk := make([]byte, 32<<10)
	for i := 0; endless || i < len(out); i += len(chunk) {
		if !endless {
			chunk = out[i:min(i+len(chunk), len(out))]
		}
		if _, end = w.Write(chunk); end != nil {
			return schemas.ExportResult{}, end
		}
		if end = ctx.Err(); end != nil {
			return schemas.ExportResult{}, end
		}
	}
	return schemas.ExportResult{}, err
}

func (f *fakeExports) PageEnd(_ context.Context, org string, r schemas.ExportRequest, cursor string, rows int64) (string, error) {
	return f.pages[fmt.Sprintf("%s %d", cursor, rows)], nil
}

func (f *fakeExports) Table(w io.Writer, format string, cols []schemas.ExportColumn) (TableWriter, error) {
	return lineWriter{w}, nil
}

func (f *fakeExports) FileType(format string) (string, string, error) {
	if format != "csv" && format != "ndjson" {
		return "", "", fmt.Errorf("%w: unknown format %q", schemas.ErrBadExport, format)
	}
	return "text/" + format, "." + format, nil
}

// lineWriter writes a table a row a line.
type lineWriter struct{ w io.Writer }

func (l lineWriter) Write(row []any) error { _, err := fmt.Fprintln(l.w, row...); return err }
func (l lineWriter) Close() error          { return nil }

func withExports(f *fakeExports) serverOpt {
	return func(_ *Config, d *Deps) { d.Exports = f }
}

func TestExportStreams(t *testing.T) {
	big := []byte(strings.Repeat("0123456789abcdef", 64<<10)) // 1 MiB
	f := &fakeExports{out: big}
	ts := startServer(t, withExports(f))
	rng := "&from=2026-05-01T00:00:00Z&to=2026-05-02T00:00:00Z"

	a := ts.do("GET", "/v1/exports/results?format=csv"+rng, keyA, "").expect(t, "a whole export", 200, "")
	if a.body != string(big) || a.header.Get("Content-Type") != "text/csv" ||
		a.header.Get("Content-Disposition") != `attachment; filename="results-a-20260501T000000Z-20260502T000000Z.csv"` {
		t.Fatalf("a whole export: %d bytes, %v", len(a.body), a.header)
	}

	// Refusals and failures before the first byte are error answers.
	f.out, f.err = nil, fmt.Errorf("%w: bad cursor", schemas.ErrBadExport)
	ts.do("GET", "/v1/exports/results?cursor=x"+rng, keyA, "").expect(t, "a bad cursor", 400, "invalid_export")
	f.err = errors.New("clickhouse down")
	ts.do("GET", "/v1/exports/results"+rng, keyA, "").expect(t, "the store down", 503, "exports_unavailable")
	ts.do("GET", "/v1/exports/results?format=xlsx", keyA, "").expect(t, "an unknown format", 400, "invalid_format")
	ts.do("GET", "/v1/exports/results?cursor=x&from=2026-05-01T00:00:00Z", keyA, "").expect(t, "a cursor without to", 400, "invalid_export")
	f.err = nil
	if a := ts.do("GET", "/v1/exports/results?format=ndjson"+rng, keyA, "").expect(t, "no rows", 200, ""); a.body != "" {
		t.Fatalf("no rows: %q", a.body)
	}

	// A failure after the first byte cuts the transfer: never a whole file.
	f.out, f.err = big[:100<<10], errors.New("clickhouse went away")
	resp, err := testClient.Do(authed("GET", ts.base+"/v1/exports/results"+rng))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || err == nil || len(got) > 100<<10 {
		t.Fatalf("a failure midway: %d, %d bytes, read error %v", resp.StatusCode, len(got), err)
	}

	// A client gone, and a HEAD, stop the export.
	f.ended = make(chan error, 1)
	f.out, f.err, f.endless = nil, nil, true
	resp, err = testClient.Do(authed("GET", ts.base+"/v1/exports/results"+rng))
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(resp.Body, make([]byte, 1<<20))
	resp.Body.Close()
	select {
	case err := <-f.ended:
		if err == nil {
			t.Fatal("the export ended well with its client gone")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the export goes on with its client gone")
	}
	resp, err = testClient.Do(authed("HEAD", ts.base+"/v1/exports/results"+rng))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/csv" {
		t.Fatalf("HEAD: %d %v", resp.StatusCode, resp.Header)
	}
	select {
	case <-f.ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the export goes on after a HEAD")
	}
}

func authed(method, u string) *http.Request {
	req, _ := http.NewRequest(method, u, nil)
	req.Header.Set("Authorization", "Bearer "+keyA)
	return req
}

// A page names the next only when rows follow it, with the range its
// cursor fits.
func TestExportPages(t *testing.T) {
	f := &fakeExports{out: []byte("rows\n"), pages: map[string]string{" 2": "c2", "c2 1": "c3", "c2 2": "c4"}}
	ts := startServer(t, withExports(f))
	a := ts.do("GET", "/v1/exports/results?limit=2&to=2026-05-02T00:00:00Z", keyA, "").expect(t, "page 1", 200, "")
	if a.header.Get("Certnode-Next-Cursor") != "c2" {
		t.Fatalf("page 1: %v", a.header)
	}
	link := a.header.Get("Link")
	u, err := url.Parse(strings.TrimSuffix(strings.TrimPrefix(link, "<"), `>; rel="next"`))
	if err != nil || u.Path != "/v1/exports/results" || u.Query().Get("cursor") != "c2" || u.Query().Get("limit") != "2" ||
		u.Query().Get("from") != "2026-05-01T00:00:00Z" || u.Query().Get("to") != "2026-05-02T00:00:00Z" {
		t.Fatalf("Link %q", link)
	}
	// c4 ends the page and nothing follows it: the last page.
	a = ts.do("GET", u.String(), keyA, "").expect(t, "page 2", 200, "")
	if a.header.Get("Certnode-Next-Cursor") != "" || a.header.Get("Link") != "" {
		t.Fatalf("the last page names another: %v", a.header)
	}
}

// fakeJobs opens one done job's file.
type fakeJobs struct{ path string }

func (fakeJobs) Start(string, schemas.ExportRequest) (schemas.ExportJob, error) {
	return schemas.ExportJob{}, nil
}
func (fakeJobs) List(string) ([]schemas.ExportJob, error) { return nil, nil }
func (fakeJobs) Get(string, string) (schemas.ExportJob, error) {
	return schemas.ExportJob{}, schemas.ErrExportNotFound
}
func (fakeJobs) Cancel(string, string) (schemas.ExportJob, error) {
	return schemas.ExportJob{}, schemas.ErrExportNotFound
}
func (f fakeJobs) Open(id, expires, signature string) (*os.File, schemas.ExportJob, error) {
	if id != "exp_1" || signature != "good" {
		return nil, schemas.ExportJob{}, schemas.ErrExportLink
	}
	file, err := os.Open(f.path)
	return file, schemas.ExportJob{ID: id, FileName: "results.csv", Request: schemas.ExportRequest{Format: "csv"}}, err
}

func TestExportDownloadRanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(path, []byte("0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, withExports(&fakeExports{}), func(_ *Config, d *Deps) { d.ExportJobs = fakeJobs{path} })
	get := func(link string, header ...string) answer { return ts.send("GET", link, "", header...) }
	const link = "/v1/export-jobs/exp_1/file?expires=1&signature=good"
	whole := get(link).expect(t, "the file", 200, "")
	etag := whole.header.Get("ETag")
	if whole.body != "0123456789" || etag == "" || whole.header.Get("Accept-Ranges") != "bytes" ||
		whole.header.Get("Content-Disposition") != `attachment; filename="results.csv"` {
		t.Fatalf("the file: %q %v", whole.body, whole.header)
	}
	for _, c := range []struct {
		name, rng, ifRange string
		status             int
		body, cr           string
	}{
		{"a range", "bytes=2-5", "", 206, "2345", "bytes 2-5/10"},
		{"the rest", "bytes=7-", etag, 206, "789", "bytes 7-9/10"},
		{"the last bytes", "bytes=-3", "", 206, "789", "bytes 7-9/10"},
		{"another file's range", "bytes=2-5", `"other"`, 200, "0123456789", ""},
		{"several ranges", "bytes=0-1,4-5", "", 200, "0123456789", ""},
		{"another unit", "items=0-1", "", 200, "0123456789", ""},
		{"past the end", "bytes=20-", "", 416, "", "bytes */10"},
	} {
		a := get(link, "Range", c.rng, "If-Range", c.ifRange)
		if a.status != c.status || (c.body != "" && a.body != c.body) || a.header.Get("Content-Range") != c.cr {
			t.Errorf("%s: %d %q %q", c.name, a.status, a.body, a.header.Get("Content-Range"))
		}
	}
	get("/v1/export-jobs/exp_1/file?expires=1&signature=forged").expect(t, "a forged link", 403, "invalid_link")
	get("/v1/export-jobs/exp_2/file?expires=1&signature=good").expect(t, "another job's link", 403, "invalid_link")
}

// The audit trail exports a coordinator page at a time, in the range,
// with the caller's credentials; the coordinator's refusal is the answer.
func TestExportAudit(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	var asked []string
	accounts := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked = append(asked, r.URL.RequestURI()+" "+r.Header.Get("Authorization"))
		if r.Header.Get("Authorization") != "Bearer "+keyA {
			w.WriteHeader(403)
			io.WriteString(w, `{"error":{"code":"forbidden_role","message":"no"}}`)
			return
		}
		after := 0
		fmt.Sscan(r.URL.Query().Get("after"), &after)
		var events []string
		for seq := after + 1; seq <= 2500 && len(events) < auditPage; seq++ {
			events = append(events, fmt.Sprintf(`{"seq":%d,"at":%q,"actor":{"kind":"user","id":"u1"},"action":"x"}`,
				seq, t0.Add(time.Duration(seq)*time.Second).Format(time.RFC3339)))
		}
		io.WriteString(w, `{"events":[`+strings.Join(events, ",")+`]}`)
	})
	ts := startServer(t, withExports(&fakeExports{}), func(_ *Config, d *Deps) { d.Accounts = accounts })
	rng := "&from=" + t0.Add(100*time.Second).Format(time.RFC3339) + "&to=" + t0.Add(2100*time.Second).Format(time.RFC3339)
	a := ts.do("GET", "/v1/exports/audit_events?format=csv"+rng, keyA, "").expect(t, "a's audit events", 200, "")
	lines := strings.Split(strings.TrimSpace(a.body), "\n")
	if len(lines) != 2000 || !strings.HasPrefix(lines[0], "100 ") || !strings.HasPrefix(lines[1999], "2099 ") {
		t.Fatalf("%d events, first %q, last %q", len(lines), lines[0], lines[len(lines)-1])
	}
	if len(asked) != 3 || !strings.Contains(asked[2], "after=2000") {
		t.Fatalf("asked %v", asked)
	}
	a = ts.do("GET", "/v1/exports/audit_events?format=csv&cursor=2000"+rng, keyA, "").expect(t, "resumed", 200, "")
	if !strings.HasPrefix(a.body, "2001 ") {
		t.Fatalf("resumed at %.20q", a.body)
	}
	ts.do("GET", "/v1/exports/audit_events?format=csv"+rng, keyB, "").expect(t, "the coordinator refuses b", 403, "forbidden_role")
	ts.do("GET", "/v1/exports/audit_events?limit=5"+rng, keyA, "").expect(t, "a limit", 400, "invalid_export")
	ts.do("GET", "/v1/exports/audit_events?status=x"+rng, keyA, "").expect(t, "a filter", 400, "invalid_export")
	ts.do("GET", "/v1/exports/audit_events?cursor=seven"+rng, keyA, "").expect(t, "a bad cursor", 400, "invalid_export")
}

// Every answer carries the security headers; the dashboard keeps its own
// content policy.
func TestSecurityHeaders(t *testing.T) {
	page := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'self'")
		w.Write([]byte("<html></html>"))
	})
	ts := startServer(t, func(_ *Config, d *Deps) { d.Console = page })
	for path, csp := range map[string]string{
		"/healthz": "default-src 'none'; frame-ancestors 'none'", "/v1/nothing": "default-src 'none'; frame-ancestors 'none'",
		"/v1/exports/results": "default-src 'none'; frame-ancestors 'none'", ConsolePrefix: "default-src 'self'",
	} {
		a := ts.do("GET", path, keyA, "")
		if a.header.Get("X-Content-Type-Options") != "nosniff" || a.header.Get("X-Frame-Options") != "DENY" || a.header.Get("Referrer-Policy") != "no-referrer" {
			t.Errorf("%s: %d %v", path, a.status, a.header)
		}
		if v := a.header.Values("Content-Security-Policy"); len(v) != 1 || v[0] != csp {
			t.Errorf("%s: CSP %q, want %q", path, v, csp)
		}
	}
}
