//go:build integration

package exports

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/chconn"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// openClickHouse connects to the test ClickHouse and migrates it.
func openClickHouse(t *testing.T, ctx context.Context, cfg Config) *Exporter {
	t.Helper()
	cfg.CursorKey, cfg.Opener = testKey, testOpener()
	e, err := Open(ctx, chconn.Options{Addr: []string{testenv.ClickHouseAddr(t)}}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	if err := chconn.Migrate(ctx, e.conn.(driver.Conn)); err != nil {
		t.Fatal(err)
	}
	return e
}

// removeOrgs deletes the organizations' rows from the shared tables, the
// rollups the views filled included, and waits for the deletes to end.
func removeOrgs(t *testing.T, conn driver.Conn, orgs ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	in := "IN (" + strings.TrimSuffix(strings.Repeat("?, ", len(orgs)), ", ") + ")"
	args := make([]any, len(orgs))
	for i, o := range orgs {
		args[i] = o
	}
	tables := map[string]string{schemas.ClickHouseResultsTable: "tenant", schemas.ClickHouseUsageTable: "org",
		schemas.ClickHouseWebhookAttemptsTable: "org", schemas.ClickHouseWebhookMessagesTable: "org"}
	for _, r := range schemas.Rollups {
		for _, tb := range []string{r.Minutes(), r.Changes(), r.Hours()} {
			tables[tb] = "org"
		}
	}
	for _, tb := range slices.Sorted(maps.Keys(tables)) {
		if err := conn.Exec(ctx, "ALTER TABLE "+tb+" DELETE WHERE "+tables[tb]+" "+in, args...); err != nil {
			t.Errorf("delete from %s: %v", tb, err)
		}
	}
	testenv.WaitFor(t, "deletes of the test's organizations", 2*time.Minute, func() (bool, string) {
		var n uint64
		err := conn.QueryRow(ctx, "SELECT count() FROM system.mutations WHERE database = 'certnode' AND is_done = 0 AND position(command, ?) > 0",
			orgs[0]).Scan(&n)
		return err == nil && n == 0, fmt.Sprintf("%d running, %v", n, err)
	})
}

// result is a row of certnode.results the test writes.
type result struct {
	org, id, receiptID, kind, status, reason, kid, keyID, jobID string
	line                                                        int64
	size, latency                                               uint32
	received, processed                                         time.Time
	receipt                                                     string
}

// usageEvent is a row of certnode.usage_events.
type usageEvent struct {
	org, id, source, kind, status, auth, keyID, jobID string
	bytes                                             uint64
	at, processed                                     time.Time
}

// attempt is a row of certnode.webhook_attempts.
type attempt struct {
	org, messageID, id, endpoint, eventType, eventID, round, url, headers, respBody, errText, outcome, body string
	created, at, next                                                                                       time.Time
	n, status                                                                                               uint16
	redelivery, held                                                                                        uint8
	nanos, latency                                                                                          uint32
}

// dataset is what the test writes, and the rows each export must hold.
type dataset struct {
	org, other string
	from, to   time.Time
	results    []result
	usage      []usageEvent
	attempts   []attempt
}

func newDataset(sfx string) *dataset {
	d := &dataset{org: "exp-" + sfx, other: "exp-other-" + sfx}
	d.from = time.Now().UTC().Add(-3 * time.Hour).Truncate(time.Hour)
	d.to = d.from.Add(time.Hour)
	hash := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:16]) }
	for i := range 2400 {
		r := result{org: d.org, id: fmt.Sprintf("req-%04d", i), receiptID: hash(fmt.Sprint("r", i)), kind: "sign", status: "signed",
			kid: "kid-1", keyID: []string{"k1", "k2"}[i%2], size: uint32(100 + i%300), latency: uint32(i % 40),
			received: d.from.Add(time.Duration(i) * time.Second), processed: d.from.Add(time.Duration(i+1) * time.Second)}
		r.receipt = fmt.Sprintf(`{"protected":"eyJ%s","payload":{"n":%d,"note":"h\u00e9llo, \"q\""},"signature":"%s","receipt_id":"%s"}`,
			hash(r.id), i, hash(r.id+"s"), r.receiptID)
		switch {
		case i%50 == 0: // failed: no receipt, and the empty receipt_id sorts first
			r.kind, r.status, r.reason, r.receiptID, r.receipt = "verify", "failed", "malformed", "", ""
		case i%7 == 0:
			r.kind, r.status, r.reason = "verify", "invalid", "bad_signature"
			r.receipt = "{\n  \"spaced\": true,\n  \"receipt_id\": \"" + r.receiptID + "\"\n}"
		case i%13 == 0:
			r.reason = "unicode ☃ 🎉, a \"quote\", a comma,\nand a newline"
		}
		if i%5 == 0 {
			r.jobID, r.line = "job-1", int64(i/5+1)
		}
		d.results = append(d.results, r)
		if i%100 == 1 { // a replay signed again: another result of the same request
			r.receiptID, r.processed = hash(fmt.Sprint("replay", i)), r.processed.Add(time.Minute)
			d.results = append(d.results, r)
		}
	}
	for i := range 900 {
		d.usage = append(d.usage, usageEvent{org: d.org, id: fmt.Sprintf("req-%04d", i), source: []string{"http", "kafka"}[i%2],
			kind: "sign", status: "signed", auth: "api_key", keyID: []string{"k1", "k2"}[i%2], bytes: uint64(200 + i),
			at: d.from.Add(time.Duration(i) * 3 * time.Second), processed: d.from.Add(time.Duration(i)*3*time.Second + time.Second)})
	}
	for m := range 150 {
		created := d.from.Add(time.Duration(m) * 20 * time.Second)
		for n := range 1 + m%3 {
			a := attempt{org: d.org, messageID: fmt.Sprintf("msg_%03d", m), id: fmt.Sprintf("att_%03d_%d", m, n), endpoint: []string{"ep_1", "ep_2"}[m%2],
				eventType: "receipt.signed", eventID: fmt.Sprintf("evt_%03d", m), round: "r1", url: "https://example.com/hook", created: created,
				at: created.Add(time.Duration(n) * time.Second), n: uint16(n + 1), status: 500, latency: uint32(10 + n), nanos: uint32(n * 1000),
				headers: `{"content-type":["text/plain"]}`, respBody: "oops, \"down\"\n", errText: "status 500", outcome: "retrying",
				next: created.Add(time.Duration(n+1) * time.Minute), held: uint8(m % 2)}
			if n == 0 {
				a.body = fmt.Sprintf(`{"type":"receipt.signed","data":{"n":%d}}`, m)
			}
			if n == m%3 && m%4 != 0 {
				a.outcome, a.status, a.next, a.errText = "delivered", 200, time.Time{}, ""
			}
			d.attempts = append(d.attempts, a)
		}
	}
	return d
}

// write inserts the dataset, with exact copies of some rows (as the sink
// reading an offset range twice leaves them), rows of another organization
// and rows just outside the range, which no export may show.
func (d *dataset) write(t *testing.T, ctx context.Context, conn driver.Conn, tables map[string]string) {
	t.Helper()
	insert := func(table, cols string, n int, row func(i int) []any) {
		t.Helper()
		if tables[table] != "" {
			table = tables[table]
		}
		b, err := conn.PrepareBatch(ctx, "INSERT INTO "+table+" ("+cols+")")
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if err := b.Append(row(i)...); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Send(); err != nil {
			t.Fatal(err)
		}
	}
	results := func(rs []result) {
		insert(schemas.ClickHouseResultsTable, schemas.ClickHouseResultColumns, len(rs), func(i int) []any {
			r := rs[i]
			return []any{r.org, r.id, r.receiptID, r.kind, r.status, uint8(0), r.reason, "ingest", "", r.kid, "", r.jobID, r.line, r.size,
				r.received, r.processed, r.latency, r.receipt, r.keyID}
		})
	}
	usage := func(us []usageEvent) {
		insert(schemas.ClickHouseUsageTable, schemas.ClickHouseUsageColumns, len(us), func(i int) []any {
			u := us[i]
			return []any{u.org, u.id, u.source, u.at, u.kind, u.status, u.auth, u.keyID, u.bytes, u.jobID, u.processed}
		})
	}
	attempts := func(as []attempt) {
		insert(schemas.ClickHouseWebhookAttemptsTable, schemas.ClickHouseWebhookAttemptColumns, len(as), func(i int) []any {
			a := as[i]
			next := a.next
			if next.IsZero() {
				next = time.Unix(0, 0)
			}
			return []any{a.org, a.messageID, a.id, a.endpoint, a.eventType, a.eventID, a.created, a.n, a.redelivery, a.round, a.held,
				a.at, a.nanos, a.url, a.status, a.latency, a.headers, a.respBody, a.errText, a.outcome, next, a.body}
		})
	}
	every := func(n int) func(int) bool { return func(i int) bool { return i%n == 0 } }
	results(d.results)
	results(pick(d.results, every(3))) // copies
	results(relabel(d.results[:300], func(r *result) { r.org = d.other }))
	results(relabel(d.results[:2], func(r *result) { r.id += "-out"; r.received = d.from.Add(-time.Second) }))
	results(relabel(d.results[:2], func(r *result) { r.id += "-late"; r.received = d.to }))
	usage(d.usage)
	usage(pick(d.usage, every(4)))
	// A replay processed later, differently: the event as first processed counts.
	usage(relabel(pick(d.usage, every(10)), func(u *usageEvent) { u.status, u.processed = "failed", u.processed.Add(time.Hour) }))
	usage(relabel(d.usage[:100], func(u *usageEvent) { u.org = d.other }))
	usage(relabel(d.usage[:2], func(u *usageEvent) { u.id += "-late"; u.at = d.to }))
	attempts(d.attempts)
	attempts(pick(d.attempts, every(2)))
	attempts(relabel(d.attempts[:50], func(a *attempt) { a.org = d.other }))
}

func pick[T any](s []T, keep func(int) bool) []T {
	var out []T
	for i, v := range s {
		if keep(i) {
			out = append(out, v)
		}
	}
	return out
}

func relabel[T any](s []T, edit func(*T)) []T {
	out := slices.Clone(s)
	for i := range out {
		edit(&out[i])
	}
	return out
}

// expected returns the rows an export of q must hold, computed from the
// dataset alone: the organization's rows in range, once each, sorted by
// the kind's key, filtered.
func (d *dataset) expected(q Query) [][]any {
	null := func(s string) any {
		if s == "" {
			return nil
		}
		return s
	}
	var rows [][]any
	match := func(vals map[string]string) bool {
		for k, v := range q.Filters {
			if vals[k] != v {
				return false
			}
		}
		return true
	}
	switch q.Kind {
	case Results, Receipts:
		for _, r := range d.results {
			if q.Kind == Receipts && (r.kind != "sign" || r.status != "signed") {
				continue
			}
			if !match(map[string]string{"kind": r.kind, "status": r.status, "key_id": r.keyID, "job_id": r.jobID}) {
				continue
			}
			if q.Kind == Receipts {
				rows = append(rows, []any{r.receiptID, r.id, r.kid, r.keyID, r.jobID, r.received, null(r.receipt)})
				continue
			}
			row := []any{r.id, r.receiptID, r.kind, r.status, r.reason, r.kid, r.keyID, r.jobID, r.line, int64(r.size), r.received, r.processed,
				int64(r.latency)}
			if q.Receipt {
				row = append(row, null(r.receipt))
			}
			rows = append(rows, row)
		}
		if q.Kind == Results {
			slices.SortFunc(rows, func(a, b []any) int {
				return cmp.Or(cmp.Compare(a[1].(string), b[1].(string)), cmp.Compare(a[0].(string), b[0].(string)))
			})
		} else {
			slices.SortFunc(rows, func(a, b []any) int {
				return cmp.Or(cmp.Compare(a[0].(string), b[0].(string)), cmp.Compare(a[1].(string), b[1].(string)))
			})
		}
	case Usage:
		for _, u := range d.usage {
			if match(map[string]string{"kind": u.kind, "status": u.status, "key_id": u.keyID, "job_id": u.jobID, "source": u.source}) {
				rows = append(rows, []any{u.id, u.at, u.source, u.kind, u.status, u.auth, u.keyID, u.bytes, u.jobID, u.processed})
			}
		}
	case WebhookAttempts:
		for _, a := range d.attempts {
			if !match(map[string]string{"endpoint_id": a.endpoint, "event_type": a.eventType, "outcome": a.outcome}) {
				continue
			}
			var next any
			if !a.next.IsZero() {
				next = a.next
			}
			row := []any{a.messageID, a.id, a.endpoint, a.eventType, a.eventID, a.created, int64(a.n), a.redelivery == 1, a.round, a.held == 1, a.at,
				int64(a.nanos), a.url, int64(a.status), int64(a.latency), a.headers, a.errText, a.outcome, next}
			if q.Bodies {
				row = append(row, a.body, a.respBody)
			}
			rows = append(rows, row)
		}
	}
	return rows
}

// Against the real ClickHouse: every kind in every format holds exactly
// the organization's rows in range, copies collapsed, in key order, as
// Go's readers and independent ones (pyarrow, Python's csv) read them; an
// export in parts or cancelled and resumed is the whole export; a cursor
// fits only its own export.
func TestExportOnClickHouse(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e := openClickHouse(t, ctx, Config{PageRows: 700, BatchRows: 256})
	conn := e.conn.(driver.Conn)
	d := newDataset(testenv.RandomSuffix())
	t.Cleanup(func() { removeOrgs(t, conn, d.org, d.other) })
	d.write(t, ctx, conn, nil)
	var raw, distinct uint64
	if err := conn.QueryRow(ctx, "SELECT count(), uniqExact(receipt_id, id) FROM certnode.results WHERE tenant = ?", d.org).Scan(&raw, &distinct); err != nil {
		t.Fatal(err)
	}
	t.Logf("certnode.results holds %d rows of %d distinct results (copies not merged yet: %d)", raw, distinct, raw-distinct)
	checkExports(t, ctx, e, d)

	q := Query{Org: d.org, From: d.from, To: d.to, Kind: Results, Receipt: true}
	for _, f := range Formats {
		t.Run("in parts "+string(f), func(t *testing.T) {
			whole, _ := exportTo(t, ctx, e, q, f, Options{})
			var joined bytes.Buffer
			var rows [][]string
			p := q
			for parts := 1; ; parts++ {
				out, res := exportTo(t, ctx, e, p, f, Options{Limit: 1000})
				joined.Write(out)
				if f != CSV && f != NDJSON { // appended, not files of their own
					rows = append(rows, readExport(t, f, p, out)...)
				}
				if !res.More {
					if parts != 3 || res.Total != int64(len(d.expected(q))) {
						t.Fatalf("%d parts, %d rows", parts, res.Total)
					}
					break
				}
				p.Cursor = res.Cursor
			}
			switch f {
			case CSV, NDJSON:
				if !bytes.Equal(joined.Bytes(), whole) {
					t.Fatal("the parts appended differ from the whole export")
				}
			default:
				if !slices.EqualFunc(rows, readExport(t, f, q, whole), slices.Equal) {
					t.Fatal("the parts' rows differ from the whole export's")
				}
			}
		})
	}

	t.Run("cancelled and resumed", func(t *testing.T) {
		whole, _ := exportTo(t, ctx, e, q, NDJSON, Options{})
		cctx, ccancel := context.WithCancel(ctx)
		var out bytes.Buffer
		var cancelled time.Time
		res, err := e.Export(cctx, &out, q, NDJSON, Options{Progress: func(r Result) {
			if r.Rows >= 512 && cancelled.IsZero() {
				cancelled = time.Now()
				ccancel()
			}
		}})
		if !errors.Is(err, context.Canceled) || res.Rows != 512 {
			t.Fatalf("got %+v, %v; want 512 rows and context.Canceled", res, err)
		}
		if took := time.Since(cancelled); took > 2*time.Second {
			t.Errorf("returned %s after the cancel", took)
		}
		r := q
		r.Cursor = res.Cursor
		rest, _ := exportTo(t, ctx, e, r, NDJSON, Options{})
		if !bytes.Equal(append(out.Bytes()[:res.Bytes:res.Bytes], rest...), whole) {
			t.Fatal("the export cut at its last batch and resumed differs from the whole")
		}
	})

	t.Run("cursors fit their own export only", func(t *testing.T) {
		_, res := exportTo(t, ctx, e, q, CSV, Options{Limit: 10})
		for _, edit := range []func(*Query){
			func(o *Query) { o.Org = d.other },
			func(o *Query) { o.Kind, o.Receipt = Receipts, false },
			func(o *Query) { o.Filters = map[string]string{"status": "signed"} },
			func(o *Query) { o.Receipt = false },
		} {
			o := q
			o.Cursor = res.Cursor
			edit(&o)
			if _, err := e.Export(ctx, &bytes.Buffer{}, o, CSV, Options{}); !errors.Is(err, ErrBadCursor) {
				t.Errorf("%+v: got %v, want ErrBadCursor", o, err)
			}
		}
	})
}

// Copies that ClickHouse has not merged yet never show: the same checks
// on plain MergeTree copies of the tables, which never merge rows.
func TestExportCopiesNeverMerged(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e := openClickHouse(t, ctx, Config{PageRows: 500, BatchRows: 300})
	conn := e.conn.(driver.Conn)
	sfx := testenv.RandomSuffix()
	tables := map[string]string{}
	e.sources = map[Kind]*source{}
	for k, src := range sources {
		shadow := *src
		if tables[src.table] == "" {
			tables[src.table] = "certnode.exports_test_" + sfx + "_" + strings.TrimPrefix(src.table, "certnode.")
			partition := map[string]string{schemas.ClickHouseWebhookAttemptsTable: "message_created_at"}[src.table]
			if partition == "" {
				partition = src.time
			}
			ddl := fmt.Sprintf("CREATE TABLE %s AS %s ENGINE = MergeTree() PARTITION BY toYYYYMM(%s) ORDER BY (%s, %s)",
				tables[src.table], src.table, partition, src.org, strings.Join(src.key, ", "))
			if err := conn.Exec(ctx, ddl); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := conn.Exec(context.Background(), "DROP TABLE IF EXISTS "+tables[src.table]); err != nil {
					t.Error(err)
				}
			})
		}
		shadow.table = tables[src.table]
		e.sources[k] = &shadow
	}
	d := newDataset(sfx)
	d.write(t, ctx, conn, tables)
	for table, org := range map[string]string{schemas.ClickHouseResultsTable: "tenant", schemas.ClickHouseUsageTable: "org",
		schemas.ClickHouseWebhookAttemptsTable: "org"} {
		var raw, distinct uint64
		if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT count(), uniqExact(*) FROM %s WHERE %s = ?", tables[table], org), d.org).Scan(&raw, &distinct); err != nil {
			t.Fatal(err)
		}
		if raw <= distinct {
			t.Fatalf("%s: %d rows, %d distinct: no copies", table, raw, distinct)
		}
		t.Logf("%s: %d rows, %d distinct", table, raw, distinct)
	}
	checkExports(t, ctx, e, d)
}

// exportTo runs one export into memory.
func exportTo(t *testing.T, ctx context.Context, e *Exporter, q Query, f Format, opts Options) ([]byte, Result) {
	t.Helper()
	var out bytes.Buffer
	res, err := e.Export(ctx, &out, q, f, opts)
	if err != nil {
		t.Fatalf("%s %s: %v", q.Kind, f, err)
	}
	if res.Bytes != int64(out.Len()) {
		t.Fatalf("result says %d bytes, wrote %d", res.Bytes, out.Len())
	}
	return out.Bytes(), res
}

// checkExports exports every kind, with and without filters, in every
// format, and compares what Go's readers (and for results, Python's) read
// with the dataset's expected rows.
func checkExports(t *testing.T, ctx context.Context, e *Exporter, d *dataset) {
	t.Helper()
	for _, kq := range []Query{
		{Kind: Results, Receipt: true},
		{Kind: Results, Filters: map[string]string{"status": "signed", "key_id": "k1"}},
		{Kind: Results, Filters: map[string]string{"kind": "' OR 1=1 --"}},
		{Kind: Receipts},
		{Kind: Receipts, Filters: map[string]string{"job_id": "job-1"}},
		{Kind: Usage},
		{Kind: Usage, Filters: map[string]string{"status": "signed", "source": "kafka"}},
		{Kind: WebhookAttempts},
		{Kind: WebhookAttempts, Bodies: true, Filters: map[string]string{"outcome": "delivered"}},
	} {
		q := kq
		q.Org, q.From, q.To = d.org, d.from, d.to
		want := d.expected(q)
		s := schemaOf(sources[q.Kind].columns(q))
		for _, f := range Formats {
			t.Run(fmt.Sprintf("%s %v %s", q.Kind, q.Filters, f), func(t *testing.T) {
				out, res := exportTo(t, ctx, e, q, f, Options{})
				if res.Rows != int64(len(want)) || res.Total != res.Rows || res.More {
					t.Fatalf("result %+v, want %d rows", res, len(want))
				}
				got := readBack(t, f, s, out)
				if len(got) != len(want) {
					t.Fatalf("read %d rows, want %d", len(got), len(want))
				}
				for i := range want {
					w := expect(f, s, want[i])
					for c := range s {
						if !equalValue(got[i][c], w[c]) {
							t.Fatalf("row %d column %s: got %#v, want %#v", i, s[c].Name, got[i][c], w[c])
						}
					}
				}
				if q.Kind == Results && q.Receipt && f != NDJSON && f != JSON {
					checkIndependently(t, f, s, out, want)
				}
			})
		}
	}
}

// readback is the summary exports/testdata/readback.py prints.
type readback struct {
	Rows    int      `json:"rows"`
	Batches int      `json:"batches"`
	Columns []string `json:"columns"`
	SHA256  string   `json:"sha256"`
}

// checkIndependently reads out with Python's readers (pyarrow, csv) and
// compares their checksum with the expected rows'.
func checkIndependently(t *testing.T, f Format, s Schema, out []byte, want [][]any) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "export"+f.Extension())
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command("python3", filepath.Join("testdata", "readback.py"), string(f), path)
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3 readback.py %s: %v: %s (python3 and pyarrow are installed by `make services`)", f, err, strings.TrimSpace(stderr.String()))
	}
	var got readback
	if err := json.Unmarshal(stdout, &got); err != nil {
		t.Fatalf("readback.py said %q: %v", stdout, err)
	}
	h := sha256.New()
	row := make([]any, len(s))
	fields := make([]string, len(s))
	for _, r := range want {
		if err := checkRow(s, r, row); err != nil {
			t.Fatal(err)
		}
		for i, v := range row {
			fields[i] = text(v)
		}
		h.Write([]byte(strings.Join(fields, "\x1f") + "\n"))
	}
	names := make([]string, len(s))
	for i, c := range s {
		names[i] = c.Name
	}
	if got.Rows != len(want) || got.SHA256 != hex.EncodeToString(h.Sum(nil)) || !slices.Equal(got.Columns, names) {
		t.Fatalf("Python read %d rows, columns %v, sha256 %s; want %d rows, %v, %x", got.Rows, got.Columns, got.SHA256, len(want), names, h.Sum(nil))
	}
	if f != CSV && got.Batches < 2 {
		t.Errorf("Python read %d batches, want one per %d rows", got.Batches, 256)
	}
	t.Logf("Python read %s: %d rows in %d batches, checksums agree", f, got.Rows, got.Batches)
}
