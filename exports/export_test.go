package exports

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/certnode/certnode/internal/envelope"
)

// fakeDB answers the queries of an export of Results (without receipts)
// from rows held in key order, as ClickHouse would: the rows between the
// keys in the arguments, the key at an offset past one, or their count.
type fakeDB struct {
	rows    [][]any // the columns of Results without the receipt
	queries int
	err     error // of every query when set
	// changes, when set, changes the rows after each boundary query, given
	// where the page it bounds starts, and its last row.
	changes func(rows [][]any, start, last int) [][]any
}

func (f *fakeDB) Query(ctx context.Context, sql string, args ...any) (driver.Rows, error) {
	f.queries++
	if f.err != nil {
		return nil, f.err
	}
	if strings.HasPrefix(sql, "SELECT count()") {
		return &fakeRows{ctx: ctx, rows: [][]any{{uint64(len(f.rows))}}}, nil
	}
	rest := args[3:] // past the organization and the range
	// past is where the rows past a key (receipt_id, id) start.
	past := func() int {
		k := []string{rest[0].(string), rest[3].(string)}
		rest = rest[4:]
		i, found := slices.BinarySearchFunc(f.rows, k, func(r []any, k []string) int {
			return cmp.Or(cmp.Compare(r[1].(string), k[0]), cmp.Compare(r[0].(string), k[1]))
		})
		if found {
			i++
		}
		return i
	}
	start, end := 0, len(f.rows)
	if strings.Contains(sql, "id > ?") {
		start = past()
	}
	if strings.Contains(sql, "id <= ?") {
		end = past()
	}
	rows := f.rows[start:max(start, end)]
	if strings.HasSuffix(sql, "LIMIT ?, 1") {
		offset := rest[0].(int)
		if f.changes != nil {
			defer func() { f.rows = f.changes(f.rows, start, min(start+offset, len(f.rows)-1)) }()
		}
		if offset >= len(rows) {
			return &fakeRows{ctx: ctx}, nil
		}
		rows = [][]any{{rows[offset][1], rows[offset][0]}}
	}
	return &fakeRows{ctx: ctx, rows: rows}, nil
}

func (f *fakeDB) Close() error { return nil }

type fakeRows struct {
	driver.Rows
	ctx  context.Context
	rows [][]any
	i    int
}

func (r *fakeRows) Next() bool {
	if r.ctx.Err() != nil || r.i >= len(r.rows) {
		return false
	}
	r.i++
	return true
}

func (r *fakeRows) Scan(dest ...any) error {
	for i, d := range dest {
		switch d := d.(type) {
		case *string:
			*d = r.rows[r.i-1][i].(string)
		case *int64:
			*d = r.rows[r.i-1][i].(int64)
		case *uint64:
			*d = r.rows[r.i-1][i].(uint64)
		case *time.Time:
			*d = r.rows[r.i-1][i].(time.Time)
		default:
			return fmt.Errorf("scan into %T", d)
		}
	}
	return nil
}

func (r *fakeRows) Err() error   { return r.ctx.Err() }
func (r *fakeRows) Close() error { return nil }

func fakeResults(n int) *fakeDB {
	db := &fakeDB{}
	at := from.Add(time.Hour)
	for i := range n {
		// Receipt ids repeat so that the key's second part matters.
		db.rows = append(db.rows, []any{fmt.Sprintf("req-%05d", i), fmt.Sprintf("r%03d", i/3), "sign", "signed", "", "kid1", "key1", "",
			int64(0), int64(100 + i), at.Add(time.Duration(i) * time.Second), at, int64(i % 50)})
	}
	slices.SortFunc(db.rows, func(a, b []any) int {
		return cmp.Or(cmp.Compare(a[1].(string), b[1].(string)), cmp.Compare(a[0].(string), b[0].(string)))
	})
	return db
}

var testKey = []byte("a cursor key of thirty-two bytes!")

// testKEKs is the folder of testOpener's KEKs, removed by TestMain.
var testKEKs string

func TestMain(m *testing.M) {
	code := m.Run()
	if testKEKs != "" {
		os.RemoveAll(testKEKs)
	}
	os.Exit(code)
}

// testOpener opens with KEKs in a folder of the test process.
var testOpener = sync.OnceValue(func() *envelope.Envelope {
	var err error
	if testKEKs, err = os.MkdirTemp("", "certnode-exports-keks-"); err != nil {
		panic(err)
	}
	keks, err := envelope.NewDirKEKs(testKEKs)
	if err != nil {
		panic(err)
	}
	return envelope.New(keks)
})

func newTestExporter(db querier) *Exporter {
	return &Exporter{conn: db, cfg: Config{CursorKey: testKey, PageRows: 300, BatchRows: 128, Opener: testOpener()}.withDefaults(), sources: sources}
}

var resultsQuery = Query{Org: "acme", Kind: Results, From: from, To: to}

// Exported in parts of any size, an export is the whole export: appended
// for CSV and NDJSON, the same rows for Arrow and Parquet.
func TestExportInParts(t *testing.T) {
	db := fakeResults(2000)
	e := newTestExporter(db)
	for _, f := range Formats {
		t.Run(string(f), func(t *testing.T) {
			var whole bytes.Buffer
			res, err := e.Export(t.Context(), &whole, resultsQuery, f, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if res.Rows != 2000 || res.Total != 2000 || res.More || res.Bytes != int64(whole.Len()) || res.Cursor == "" {
				t.Fatalf("result %+v, %d bytes", res, whole.Len())
			}
			for _, part := range []int64{7, 299, 300, 301, 2000} {
				var joined bytes.Buffer
				var rows [][]string
				q := resultsQuery
				for {
					var out bytes.Buffer
					res, err := e.Export(t.Context(), &out, q, f, Options{Limit: part})
					if err != nil {
						t.Fatal(err)
					}
					if res.Rows > part || res.Bytes != int64(out.Len()) {
						t.Fatalf("part of %d: %+v", part, res)
					}
					joined.Write(out.Bytes())
					if f != CSV && f != NDJSON {
						rows = append(rows, readExport(t, f, resultsQuery, out.Bytes())...)
					}
					if !res.More {
						if res.Total != 2000 {
							t.Fatalf("ended at %d rows", res.Total)
						}
						break
					}
					q.Cursor = res.Cursor
				}
				switch f {
				case CSV, NDJSON:
					if !bytes.Equal(joined.Bytes(), whole.Bytes()) {
						t.Fatalf("parts of %d differ from the whole", part)
					}
				case JSON, Arrow, Parquet:
					if want := readExport(t, f, resultsQuery, whole.Bytes()); !slices.EqualFunc(rows, want, slices.Equal) {
						t.Fatalf("parts of %d: %d rows, want %d", part, len(rows), len(want))
					}
				}
			}
		})
	}
}

// readExport reads the rows of an export of q, each value as text.
func readExport(t *testing.T, f Format, q Query, out []byte) [][]string {
	t.Helper()
	var rows [][]string
	for _, r := range readBack(t, f, schemaOf(sources[q.Kind].columns(q)), out) {
		row := make([]string, len(r))
		for i, v := range r {
			row[i] = fmt.Sprint(v)
		}
		rows = append(rows, row)
	}
	return rows
}

// A cancelled export stops at a batch written out whole; its cursor
// resumes after it, and w cut back to its bytes plus the rest is the
// whole export.
func TestExportCancelledAndResumed(t *testing.T) {
	db := fakeResults(1000)
	e := newTestExporter(db)
	var whole bytes.Buffer
	if _, err := e.Export(t.Context(), &whole, resultsQuery, CSV, Options{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	var seen []Result
	var out bytes.Buffer
	res, err := e.Export(ctx, &out, resultsQuery, CSV, Options{Progress: func(r Result) {
		seen = append(seen, r)
		if len(seen) == 3 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if len(seen) != 3 || res != seen[2] || res.Rows != 3*128 || res.Total != res.Rows {
		t.Fatalf("stopped at %+v after %d batches", res, len(seen))
	}
	for i := 1; i < len(seen); i++ {
		if seen[i].Rows <= seen[i-1].Rows || seen[i].Bytes <= seen[i-1].Bytes {
			t.Fatalf("progress goes back: %+v then %+v", seen[i-1], seen[i])
		}
	}
	q := resultsQuery
	q.Cursor = res.Cursor
	var rest bytes.Buffer
	res2, err := e.Export(t.Context(), &rest, q, CSV, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res2.Rows != 1000-res.Rows || res2.Total != 1000 {
		t.Fatalf("resumed: %+v", res2)
	}
	if got := append(out.Bytes()[:res.Bytes:res.Bytes], rest.Bytes()...); !bytes.Equal(got, whole.Bytes()) {
		t.Fatal("the cut output and the rest differ from the whole export")
	}
	// Nothing remains after the end.
	q.Cursor = res2.Cursor
	var none bytes.Buffer
	if res3, err := e.Export(t.Context(), &none, q, CSV, Options{}); err != nil || res3.Rows != 0 || res3.Total != 1000 || res3.Cursor != q.Cursor || none.Len() != 0 {
		t.Fatalf("after the end: %+v %v %q", res3, err, none.String())
	}
}

// A cursor resumes only the export that made it, and is refused before
// any query or output.
func TestExportRefusesOtherCursors(t *testing.T) {
	db := fakeResults(10)
	e := newTestExporter(db)
	res, err := e.Export(t.Context(), &bytes.Buffer{}, resultsQuery, NDJSON, Options{Limit: 5})
	if err != nil || !res.More {
		t.Fatal(res, err)
	}
	other := &Exporter{conn: db, cfg: Config{CursorKey: []byte("another cursor key of 32 bytes.."), Opener: testOpener()}.withDefaults(), sources: sources}
	for _, tc := range []struct {
		name string
		e    *Exporter
		edit func(*Query)
	}{
		{"another organization", e, func(q *Query) { q.Org = "globex" }},
		{"another kind", e, func(q *Query) { q.Kind = Receipts }},
		{"another filter", e, func(q *Query) { q.Filters = map[string]string{"status": "signed"} }},
		{"another range", e, func(q *Query) { q.From = q.From.Add(-time.Hour) }},
		{"other columns", e, func(q *Query) { q.Receipt = true }},
		{"another key", other, func(*Query) {}},
		{"tampered", e, func(q *Query) { q.Cursor = q.Cursor[:10] + string(q.Cursor[10]^1) + q.Cursor[11:] }},
		{"not a cursor", e, func(q *Query) { q.Cursor = "bm90IGEgY3Vyc29y" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := resultsQuery
			q.Cursor = res.Cursor
			tc.edit(&q)
			before := db.queries
			var out bytes.Buffer
			_, err := tc.e.Export(t.Context(), &out, q, NDJSON, Options{})
			if !errors.Is(err, ErrBadCursor) {
				t.Fatalf("got %v, want ErrBadCursor", err)
			}
			if db.queries != before || out.Len() != 0 {
				t.Fatalf("%d queries, %d bytes written", db.queries-before, out.Len())
			}
		})
	}
}

// Rows that come or go between a page's boundary and its query are
// exported or not, but the export neither stops short, nor loops, nor
// goes past its limit.
func TestExportPagesThatChange(t *testing.T) {
	db := fakeResults(1000)
	e := newTestExporter(db)
	// After each boundary: a row more in the page, one gone after it.
	db.changes = func(rows [][]any, start, last int) [][]any {
		extra := slices.Clone(rows[last-1]) // sorts just after it
		extra[0] = extra[0].(string) + "-new"
		rows = slices.Insert(rows, last, extra)
		if last+3 < len(rows) {
			rows = slices.Delete(rows, last+3, last+4)
		}
		return rows
	}
	var out bytes.Buffer
	res, err := e.Export(t.Context(), &out, resultsQuery, NDJSON, Options{Limit: 700})
	if err != nil || res.Rows != 700 || !res.More {
		t.Fatalf("%+v %v", res, err)
	}
	// And rows the boundary counted on gone before the page is read.
	db.changes = func(rows [][]any, start, last int) [][]any { return slices.Delete(rows, start, last+1) }
	q := resultsQuery
	q.Cursor = res.Cursor
	if res, err = e.Export(t.Context(), &out, q, NDJSON, Options{}); err != nil || res.More {
		t.Fatalf("%+v %v", res, err)
	}
	// Every row written is a distinct row, in key order.
	var keys []string
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var r struct {
			ID        string `json:"id"`
			ReceiptID string `json:"receipt_id"`
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, r.ReceiptID+"\x00"+r.ID)
	}
	if !slices.IsSorted(keys) || len(slices.Compact(slices.Clone(keys))) != len(keys) {
		t.Fatalf("%d rows, not sorted or repeated", len(keys))
	}
}

func TestExportErrors(t *testing.T) {
	e := newTestExporter(&fakeDB{err: errors.New("connection refused")})
	var out bytes.Buffer
	if _, err := e.Export(t.Context(), &out, resultsQuery, "xlsx", Options{}); !errors.Is(err, ErrBadQuery) {
		t.Errorf("unknown format: %v", err)
	}
	if _, err := e.Export(t.Context(), &out, Query{Org: "acme", Kind: Results}, CSV, Options{}); !errors.Is(err, ErrBadQuery) {
		t.Errorf("no range: %v", err)
	}
	if _, err := e.Export(t.Context(), &out, resultsQuery, CSV, Options{Limit: -1}); !errors.Is(err, ErrBadQuery) {
		t.Errorf("negative limit: %v", err)
	}
	if out.Len() != 0 {
		t.Errorf("bad queries wrote %q", out.String())
	}
	if _, err := e.Export(t.Context(), &out, resultsQuery, CSV, Options{}); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("query error: %v", err)
	}
	e = newTestExporter(fakeResults(500))
	if res, err := e.Export(t.Context(), failingWriter{}, resultsQuery, Parquet, Options{}); !errors.Is(err, errFailing) || res.Rows != 0 {
		t.Errorf("destination error: %+v %v", res, err)
	}
}

func TestConfigValidate(t *testing.T) {
	err := Config{CursorKey: []byte("short"), PageRows: -1, BatchBytes: -1}.Validate()
	for _, want := range []string{"cursor key needs at least 32 bytes", "page rows", "batch bytes"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v does not say %q", err, want)
		}
	}
	if err := (Config{CursorKey: testKey, Opener: testOpener()}).Validate(); err != nil {
		t.Error(err)
	}
}

// Without an opener, payloads are refused rather than exported sealed.
func TestExportWithoutOpener(t *testing.T) {
	e := newTestExporter(fakeResults(10))
	e.cfg.Opener = nil
	q := resultsQuery
	if _, err := e.Export(t.Context(), io.Discard, q, NDJSON, Options{}); err != nil {
		t.Fatalf("results without receipts: %v", err)
	}
	q.Receipt = true
	if _, err := e.Export(t.Context(), io.Discard, q, NDJSON, Options{}); !errors.Is(err, ErrNoOpener) {
		t.Fatalf("results with receipts: %v", err)
	}
}

// Pages cut by PageEnd and exported with Until are exact: each holds the
// rows asked, ends at the cursor PageEnd gave, is the same bytes when
// exported again, and the pages appended are the whole export.
func TestExportPages(t *testing.T) {
	db := fakeResults(1000)
	e := newTestExporter(db)
	var whole bytes.Buffer
	if _, err := e.Export(t.Context(), &whole, resultsQuery, CSV, Options{}); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int64{1, 7, 299, 300, 301, 999, 1000, 5000} {
		var joined bytes.Buffer
		q := resultsQuery
		for pages := 1; ; pages++ {
			until, err := e.PageEnd(t.Context(), q, size)
			if err != nil {
				t.Fatal(err)
			}
			var page, again bytes.Buffer
			res, err := e.Export(t.Context(), &page, q, CSV, Options{Until: until})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := e.Export(t.Context(), &again, q, CSV, Options{Until: until}); err != nil || !bytes.Equal(page.Bytes(), again.Bytes()) {
				t.Fatalf("pages of %d: page %d differs exported again (%v)", size, pages, err)
			}
			joined.Write(page.Bytes())
			if until == "" { // the rest
				if res.Total != 1000 || res.More || int64(pages) != 1000/size+1 {
					t.Fatalf("pages of %d: the last, %d, ends at %+v", size, pages, res)
				}
				break
			}
			if res.Rows != size || res.More || res.Cursor != until {
				t.Fatalf("pages of %d: page %d is %+v, want %d rows ending at %q", size, pages, res, size, until)
			}
			q.Cursor = until
		}
		if !bytes.Equal(joined.Bytes(), whole.Bytes()) {
			t.Fatalf("pages of %d differ from the whole export", size)
		}
	}

	// Until and Limit together: the first reached ends the export.
	until, err := e.PageEnd(t.Context(), resultsQuery, 500)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := e.Export(t.Context(), &bytes.Buffer{}, resultsQuery, NDJSON, Options{Until: until, Limit: 200}); err != nil || res.Rows != 200 || !res.More {
		t.Fatalf("limit before until: %+v %v", res, err)
	}
	// A cursor at or past Until exports nothing.
	q := resultsQuery
	q.Cursor, err = e.PageEnd(t.Context(), resultsQuery, 600)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if res, err := e.Export(t.Context(), &out, q, NDJSON, Options{Until: until}); err != nil || res.Rows != 0 || out.Len() != 0 {
		t.Fatalf("past until: %+v %v %q", res, err, out.String())
	}
}

// Until is a cursor of the same export, checked before any query; PageEnd
// takes a positive count and a cursor of its query.
func TestPageErrors(t *testing.T) {
	db := fakeResults(10)
	e := newTestExporter(db)
	until, err := e.PageEnd(t.Context(), resultsQuery, 5)
	if err != nil || until == "" {
		t.Fatal(until, err)
	}
	other := resultsQuery
	other.Org = "globex"
	foreign, err := e.PageEnd(t.Context(), other, 5)
	if err != nil {
		t.Fatal(err)
	}
	for name, u := range map[string]string{"another query's": foreign, "tampered": until[:5] + string(until[5]^1) + until[6:], "not a cursor": "eA"} {
		before := db.queries
		var out bytes.Buffer
		if _, err := e.Export(t.Context(), &out, resultsQuery, CSV, Options{Until: u}); !errors.Is(err, ErrBadCursor) || db.queries != before || out.Len() != 0 {
			t.Errorf("%s until: %v, %d queries, %d bytes", name, err, db.queries-before, out.Len())
		}
		q := resultsQuery
		q.Cursor = u
		if _, err := e.PageEnd(t.Context(), q, 1); !errors.Is(err, ErrBadCursor) {
			t.Errorf("%s cursor: %v", name, err)
		}
	}
	for _, rows := range []int64{0, -1} {
		if _, err := e.PageEnd(t.Context(), resultsQuery, rows); !errors.Is(err, ErrBadQuery) {
			t.Errorf("%d rows: %v", rows, err)
		}
	}
	if _, err := e.PageEnd(t.Context(), Query{Org: "acme", Kind: Results}, 1); !errors.Is(err, ErrBadQuery) {
		t.Errorf("no range: %v", err)
	}
	if end, err := e.PageEnd(t.Context(), resultsQuery, 11); end != "" || err != nil {
		t.Errorf("past the end: %q %v", end, err)
	}
}

func TestEstimate(t *testing.T) {
	e := newTestExporter(fakeResults(1234))
	if n, err := e.Estimate(t.Context(), resultsQuery); n != 1234 || err != nil {
		t.Fatalf("got %d, %v", n, err)
	}
	if _, err := e.Estimate(t.Context(), Query{Org: "acme", Kind: "audit", From: from, To: to}); !errors.Is(err, ErrBadQuery) {
		t.Errorf("bad query: %v", err)
	}
	e = newTestExporter(&fakeDB{err: errors.New("connection refused")})
	if _, err := e.Estimate(t.Context(), resultsQuery); err == nil || errors.Is(err, ErrBadQuery) {
		t.Errorf("query error: %v", err)
	}
}

// Sealed receipts are exported opened; once the organization's KEK is
// destroyed they are exported as erased (null), like blanked ones.
func TestExportOpensSealedReceipts(t *testing.T) {
	keks, err := envelope.NewDirKEKs(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	env := envelope.New(keks)
	sealed, err := env.Seal(t.Context(), "acme", from, []byte(`{"r":"sealed"}`))
	if err != nil {
		t.Fatal(err)
	}
	db := fakeResults(3)
	for i, receipt := range []string{sealed, `{"r":"stored before encryption"}`, ""} {
		db.rows[i] = append(db.rows[i], receipt)
	}
	e := newTestExporter(db)
	e.cfg.Opener = env
	q := resultsQuery
	q.Receipt = true
	receipts := func() []string {
		t.Helper()
		var out bytes.Buffer
		if _, err := e.Export(t.Context(), &out, q, NDJSON, Options{}); err != nil {
			t.Fatal(err)
		}
		var got []string
		for line := range strings.Lines(out.String()) {
			var row struct {
				Receipt json.RawMessage `json:"receipt"`
			}
			if err := json.Unmarshal([]byte(line), &row); err != nil {
				t.Fatalf("%q: %v", line, err)
			}
			got = append(got, string(row.Receipt))
		}
		return got
	}
	if got := receipts(); !slices.Equal(got, []string{`{"r":"sealed"}`, `{"r":"stored before encryption"}`, "null"}) {
		t.Fatalf("receipts exported: %q", got)
	}
	if err := env.Destroy(t.Context(), "acme"); err != nil {
		t.Fatal(err)
	}
	if got := receipts(); !slices.Equal(got, []string{"null", `{"r":"stored before encryption"}`, "null"}) {
		t.Fatalf("receipts exported after the KEK's destruction: %q", got)
	}
}
