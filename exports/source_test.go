package exports

import (
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

var (
	from = time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	to   = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
)

const (
	resultsSelect = "SELECT id, receipt_id, kind, status, reason, kid, key_id, job_id, line, toInt64(size), received_at, processed_at, toInt64(latency_ms)"
	resultsWhere  = " FROM certnode.results WHERE tenant = ? AND received_at >= toDateTime(?) AND received_at < toDateTime(?)"
	resultsAfter  = " AND receipt_id >= ? AND (receipt_id > ? OR (receipt_id = ? AND id > ?))"
	resultsUpTo   = " AND receipt_id <= ? AND (receipt_id < ? OR (receipt_id = ? AND id <= ?))"
	resultsOrder  = " ORDER BY receipt_id, id LIMIT 1 BY receipt_id, id"
	usageSelect   = "SELECT id, argMin(time, processed_at) AS u_time, argMin(source, processed_at) AS u_source, " +
		"argMin(kind, processed_at) AS u_kind, argMin(status, processed_at) AS u_status, argMin(auth, processed_at) AS u_auth, " +
		"argMin(key_id, processed_at) AS u_key_id, argMin(bytes, processed_at) AS u_bytes, argMin(job_id, processed_at) AS u_job_id, " +
		"min(processed_at) AS u_processed_at FROM certnode.usage_events WHERE org = ? AND time >= toDateTime(?) AND time < toDateTime(?)"
	attemptsSelect = "SELECT message_id, id, endpoint_id, event_type, event_id, message_created_at, toInt64(attempt), redelivery, round, held, " +
		"at, toInt64(at_nanos), url, toInt64(status), toInt64(latency_ms), response_headers, error, outcome, next_attempt_at"
	attemptsWhere = " FROM certnode.webhook_attempts WHERE org = ? AND at >= toDateTime(?) AND at < toDateTime(?)"
	attemptsOrder = " ORDER BY message_id, id LIMIT 1 BY message_id, id"
)

func TestPageSQL(t *testing.T) {
	hostile := "x' OR 1=1 --"
	for _, tc := range []struct {
		name        string
		q           Query
		after, upTo []string
		wantSQL     string
		wantArgs    []any
	}{
		{
			name:     "results, the first page of one",
			q:        Query{Org: "acme", Kind: Results, From: from, To: to},
			wantSQL:  resultsSelect + resultsWhere + resultsOrder,
			wantArgs: []any{"acme", from.Unix(), to.Unix()},
		},
		{
			name:  "results with receipts, every filter, between keys",
			q:     Query{Org: "acme", Kind: Results, From: from, To: to, Receipt: true, Filters: map[string]string{"status": "signed", "kind": "sign", "key_id": "k1", "job_id": "j1"}},
			after: []string{"r1", "id1"}, upTo: []string{"r9", "id9"},
			wantSQL: resultsSelect + ", receipt" + resultsWhere + " AND job_id = ? AND key_id = ? AND kind = ? AND status = ?" +
				resultsAfter + resultsUpTo + resultsOrder,
			wantArgs: []any{"acme", from.Unix(), to.Unix(), "j1", "k1", "sign", "signed", "r1", "r1", "r1", "id1", "r9", "r9", "r9", "id9"},
		},
		{
			name:     "values that look like SQL are arguments",
			q:        Query{Org: "o'rg", Kind: Results, From: from, To: to, Filters: map[string]string{"kind": hostile}},
			after:    []string{hostile, `\'; DROP TABLE certnode.results`},
			wantSQL:  resultsSelect + resultsWhere + " AND kind = ?" + resultsAfter + resultsOrder,
			wantArgs: []any{"o'rg", from.Unix(), to.Unix(), hostile, hostile, hostile, hostile, `\'; DROP TABLE certnode.results`},
		},
		{
			name: "receipts: signed ones only",
			q:    Query{Org: "acme", Kind: Receipts, From: from, To: to, Filters: map[string]string{"job_id": "j1"}},
			wantSQL: "SELECT receipt_id, id, kid, key_id, job_id, received_at, receipt" + resultsWhere +
				" AND kind = 'sign' AND status = 'signed' AND job_id = ?" + resultsOrder,
			wantArgs: []any{"acme", from.Unix(), to.Unix(), "j1"},
		},
		{
			name:     "usage: collapsed by id, filtered after",
			q:        Query{Org: "acme", Kind: Usage, From: from, To: to, Filters: map[string]string{"status": hostile, "key_id": "k1"}},
			after:    []string{"req-5"},
			upTo:     []string{"req-9"},
			wantSQL:  usageSelect + " AND id > ? AND id <= ? GROUP BY id HAVING u_key_id = ? AND u_status = ? ORDER BY id",
			wantArgs: []any{"acme", from.Unix(), to.Unix(), "req-5", "req-9", "k1", hostile},
		},
		{
			name:     "usage, the first page of one",
			q:        Query{Org: "acme", Kind: Usage, From: from, To: to},
			wantSQL:  usageSelect + " GROUP BY id ORDER BY id",
			wantArgs: []any{"acme", from.Unix(), to.Unix()},
		},
		{
			name:     "webhook attempts",
			q:        Query{Org: "acme", Kind: WebhookAttempts, From: from, To: to, Filters: map[string]string{"outcome": "failed"}},
			after:    []string{"msg_1", "att_2"},
			wantSQL:  attemptsSelect + attemptsWhere + " AND outcome = ? AND message_id >= ? AND (message_id > ? OR (message_id = ? AND id > ?))" + attemptsOrder,
			wantArgs: []any{"acme", from.Unix(), to.Unix(), "failed", "msg_1", "msg_1", "msg_1", "att_2"},
		},
		{
			name:     "webhook attempts with bodies",
			q:        Query{Org: "acme", Kind: WebhookAttempts, From: from, To: to, Bodies: true},
			upTo:     []string{"msg_1", "att_2"},
			wantSQL:  attemptsSelect + ", body, response_body" + attemptsWhere + " AND message_id <= ? AND (message_id < ? OR (message_id = ? AND id <= ?))" + attemptsOrder,
			wantArgs: []any{"acme", from.Unix(), to.Unix(), "msg_1", "msg_1", "msg_1", "att_2"},
		},
		{
			name:     "times outside DateTime are clamped, not wrapped",
			q:        Query{Org: "acme", Kind: Results, From: time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC), To: time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)},
			wantSQL:  resultsSelect + resultsWhere + resultsOrder,
			wantArgs: []any{"acme", int64(0), int64(math.MaxUint32)},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.q.Validate(); err != nil {
				t.Fatal(err)
			}
			s := sources[tc.q.Kind]
			sql, args := s.pageSQL(tc.q, s.columns(tc.q), tc.after, tc.upTo)
			checkSQL(t, sql, args, tc.wantSQL, tc.wantArgs)
		})
	}
}

// A page's end is found reading the key alone, or for usage, whose
// filters apply to the collapsed rows, the narrow row.
func TestBoundarySQL(t *testing.T) {
	for _, tc := range []struct {
		name     string
		q        Query
		after    []string
		wantSQL  string
		wantArgs []any
		wantCols []string
	}{
		{
			name:     "results",
			q:        Query{Org: "acme", Kind: Results, From: from, To: to, Receipt: true, Filters: map[string]string{"status": "signed"}},
			after:    []string{"r1", "id1"},
			wantSQL:  "SELECT receipt_id, id" + resultsWhere + " AND status = ?" + resultsAfter + resultsOrder + " LIMIT ?, 1",
			wantArgs: []any{"acme", from.Unix(), to.Unix(), "signed", "r1", "r1", "r1", "id1", 99},
			wantCols: []string{"receipt_id", "id"},
		},
		{
			name:     "webhook attempts from the start",
			q:        Query{Org: "acme", Kind: WebhookAttempts, From: from, To: to, Bodies: true},
			wantSQL:  "SELECT message_id, id" + attemptsWhere + attemptsOrder + " LIMIT ?, 1",
			wantArgs: []any{"acme", from.Unix(), to.Unix(), 99},
			wantCols: []string{"message_id", "id"},
		},
		{
			name:     "usage",
			q:        Query{Org: "acme", Kind: Usage, From: from, To: to, Filters: map[string]string{"status": "signed"}},
			after:    []string{"req-5"},
			wantSQL:  usageSelect + " AND id > ? GROUP BY id HAVING u_status = ? ORDER BY id LIMIT ?, 1",
			wantArgs: []any{"acme", from.Unix(), to.Unix(), "req-5", "signed", 99},
			wantCols: []string{"id", "time", "source", "kind", "status", "auth", "key_id", "bytes", "job_id", "processed_at"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := sources[tc.q.Kind]
			sql, args, cols := s.boundarySQL(tc.q, tc.after, 99)
			checkSQL(t, sql, args, tc.wantSQL, tc.wantArgs)
			var names []string
			for _, c := range cols {
				names = append(names, c.Name)
			}
			if !slices.Equal(names, tc.wantCols) {
				t.Errorf("columns %v, want %v", names, tc.wantCols)
			}
		})
	}
}

// Estimates count the rows of the range and filters: the copies too,
// except for usage, whose filters apply to the collapsed rows.
func TestCountSQL(t *testing.T) {
	for _, tc := range []struct {
		name     string
		q        Query
		wantSQL  string
		wantArgs []any
	}{
		{
			name:     "results",
			q:        Query{Org: "acme", Kind: Results, From: from, To: to, Receipt: true, Filters: map[string]string{"status": "signed"}, Cursor: "x"},
			wantSQL:  "SELECT count()" + resultsWhere + " AND status = ?",
			wantArgs: []any{"acme", from.Unix(), to.Unix(), "signed"},
		},
		{
			name:     "receipts",
			q:        Query{Org: "acme", Kind: Receipts, From: from, To: to},
			wantSQL:  "SELECT count()" + resultsWhere + " AND kind = 'sign' AND status = 'signed'",
			wantArgs: []any{"acme", from.Unix(), to.Unix()},
		},
		{
			name:     "usage",
			q:        Query{Org: "acme", Kind: Usage, From: from, To: to, Filters: map[string]string{"status": "signed"}},
			wantSQL:  "SELECT count() FROM (" + usageSelect + " GROUP BY id HAVING u_status = ?)",
			wantArgs: []any{"acme", from.Unix(), to.Unix(), "signed"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sql, args := sources[tc.q.Kind].countSQL(tc.q)
			checkSQL(t, sql, args, tc.wantSQL, tc.wantArgs)
		})
	}
}

func checkSQL(t *testing.T, sql string, args []any, wantSQL string, wantArgs []any) {
	t.Helper()
	if sql != wantSQL {
		t.Errorf("SQL\n %s\nwant\n %s", sql, wantSQL)
	}
	if !slices.Equal(args, wantArgs) {
		t.Errorf("args %#v\nwant %#v", args, wantArgs)
	}
	// The only quotes in the text are the kinds' own constants.
	if strings.Contains(strings.ReplaceAll(sql, "kind = 'sign' AND status = 'signed'", ""), "'") {
		t.Errorf("a quote in the SQL text: %s", sql)
	}
}

func TestQueryValidate(t *testing.T) {
	ok := Query{Org: "acme", Kind: Results, From: from, To: to}
	for _, tc := range []struct {
		name string
		edit func(*Query)
		want []string // every problem reported
	}{
		{"fine", func(*Query) {}, nil},
		{"no organization", func(q *Query) { q.Org = "" }, []string{"organization"}},
		{"unknown kind", func(q *Query) { q.Kind = "audit" }, []string{`unknown kind "audit" (valid: results, receipts, usage, webhook_attempts)`}},
		{"no range", func(q *Query) { q.From = time.Time{} }, []string{"from and to are required"}},
		{"empty range", func(q *Query) { q.From = to }, []string{"from before to"}},
		{"unknown filter", func(q *Query) { q.Filters = map[string]string{"tenant": "other"} },
			[]string{`results cannot be filtered on "tenant" (valid: job_id, key_id, kind, status)`}},
		{"long filter", func(q *Query) { q.Filters = map[string]string{"kind": strings.Repeat("x", 129)} }, []string{"longer than 128"}},
		{"bodies of results", func(q *Query) { q.Bodies = true }, []string{"bodies only applies to webhook_attempts"}},
		{"receipt of usage", func(q *Query) { q.Kind, q.Receipt = Usage, true }, []string{"receipt only applies to results"}},
		{"every problem at once", func(q *Query) { q.Org, q.To, q.Filters = "a b", time.Time{}, map[string]string{"x": ""} },
			[]string{"organization", "from and to", `"x"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := ok
			tc.edit(&q)
			err := q.Validate()
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrBadQuery) {
				t.Fatalf("got %v, want ErrBadQuery", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q does not say %q", err, w)
				}
			}
		})
	}
}

// A cursor fits only the export that made it.
func TestIdentityDiffers(t *testing.T) {
	base := Query{Org: "acme", Kind: Results, From: from, To: to, Filters: map[string]string{"kind": "sign"}}
	variants := []func(*Query){
		func(q *Query) { q.Org = "acme2" },
		func(q *Query) { q.Kind = Receipts },
		func(q *Query) { q.From = q.From.Add(time.Second) },
		func(q *Query) { q.To = q.To.Add(time.Second) },
		func(q *Query) { q.Filters = map[string]string{"kind": "verify"} },
		func(q *Query) { q.Filters = map[string]string{"status": "sign"} },
		func(q *Query) { q.Filters = nil },
		func(q *Query) { q.Filters = map[string]string{"kind": "sign", "status": ""} },
		func(q *Query) { q.Receipt = true },
		func(q *Query) { q.Bodies = true },
	}
	seen := map[string]int{string(base.identity()): -1}
	for i, edit := range variants {
		q := base
		edit(&q)
		id := string(q.identity())
		if j, dup := seen[id]; dup {
			t.Errorf("variant %d has the identity of %d", i, j)
		}
		seen[id] = i
	}
	// The cursor itself and the order of filters do not matter.
	q := base
	q.Cursor = "x"
	if string(q.identity()) != string(base.identity()) {
		t.Error("the cursor changes the identity")
	}
}
