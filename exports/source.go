package exports

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/certnode/certnode/schemas"
)

// Kind is what an export holds.
type Kind string

// The kinds.
const (
	// Results is one row per result the service produced (requests
	// replayed after a failure have several), received in the range.
	Results Kind = "results"
	// Receipts is the receipts the service signed, received in the range.
	Receipts Kind = "receipts"
	// Usage is one row per usage event (request), as billing counts them.
	Usage Kind = "usage"
	// WebhookAttempts is one row per delivery attempt made in the range.
	WebhookAttempts Kind = "webhook_attempts"
)

// Query is one export of one organization's data.
type Query struct {
	Org  string
	Kind Kind
	// From and To bound the rows' time, [From, To), in whole seconds.
	From, To time.Time
	// Filters are exact matches on columns; Filterable lists each kind's.
	Filters map[string]string
	// Receipt adds the receipt JSON to Results (Receipts always have it).
	Receipt bool
	// Bodies adds the request and response bodies to WebhookAttempts.
	Bodies bool
	// Cursor resumes after the last row an earlier export of the same
	// query wrote (Result.Cursor).
	Cursor string
}

// column is an export column and the SQL expression that reads it.
type column struct {
	Column
	expr string
	// opt columns are exported only on request (Query.Receipt, Query.Bodies).
	opt bool
	// zeroNull: a zero DateTime stands for no time.
	zeroNull bool
	// sealed columns are stored encrypted (Config.Opener opens them).
	sealed bool
}

// source is where a kind's rows come from. The sort key (key, after the
// organization) orders an export and positions its cursor: pages are
// read past the last key, so a resume is exact.
type source struct {
	table, org, time string
	// fixed is a condition of the kind's own, without values.
	fixed string
	// key names columns both in the table and in cols.
	key  []string
	cols []column
	// filters maps each filter to the column or alias it compares.
	filters map[string]string
	// grouped sources collapse copies with GROUP BY key (argMin in cols)
	// and filter on the collapsed values (HAVING); the others drop
	// copies with LIMIT 1 BY key, before which filters on any copy hold.
	grouped bool
}

// resultCols are the columns of Results, before the receipt.
var resultCols = []column{
	{Column: Column{"id", String}, expr: "id"},
	{Column: Column{"receipt_id", String}, expr: "receipt_id"},
	{Column: Column{"kind", String}, expr: "kind"},
	{Column: Column{"status", String}, expr: "status"},
	{Column: Column{"reason", String}, expr: "reason"},
	{Column: Column{"kid", String}, expr: "kid"},
	{Column: Column{"key_id", String}, expr: "key_id"},
	{Column: Column{"job_id", String}, expr: "job_id"},
	{Column: Column{"line", Int64}, expr: "line"},
	{Column: Column{"size", Int64}, expr: "toInt64(size)"},
	{Column: Column{"received_at", Timestamp}, expr: "received_at"},
	{Column: Column{"processed_at", Timestamp}, expr: "processed_at"},
	{Column: Column{"latency_ms", Int64}, expr: "toInt64(latency_ms)"},
	{Column: Column{"receipt", JSONText}, expr: "receipt", opt: true, sealed: true},
}

// Usage collapses copies of an event to the row as first processed, as
// billing counts it (see schemas.ClickHouseDDL); the aliases differ from
// the columns because ClickHouse 18.16 resolves a name to an alias first.
var usageCols = []column{
	{Column: Column{"id", String}, expr: "id"},
	{Column: Column{"time", Timestamp}, expr: "argMin(time, processed_at) AS u_time"},
	{Column: Column{"source", String}, expr: "argMin(source, processed_at) AS u_source"},
	{Column: Column{"kind", String}, expr: "argMin(kind, processed_at) AS u_kind"},
	{Column: Column{"status", String}, expr: "argMin(status, processed_at) AS u_status"},
	{Column: Column{"auth", String}, expr: "argMin(auth, processed_at) AS u_auth"},
	{Column: Column{"key_id", String}, expr: "argMin(key_id, processed_at) AS u_key_id"},
	{Column: Column{"bytes", Uint64}, expr: "argMin(bytes, processed_at) AS u_bytes"},
	{Column: Column{"job_id", String}, expr: "argMin(job_id, processed_at) AS u_job_id"},
	{Column: Column{"processed_at", Timestamp}, expr: "min(processed_at) AS u_processed_at"},
}

var sources = map[Kind]*source{
	Results: {table: schemas.ClickHouseResultsTable, org: "tenant", time: "received_at", key: []string{"receipt_id", "id"},
		cols:    resultCols,
		filters: map[string]string{"kind": "kind", "status": "status", "key_id": "key_id", "job_id": "job_id"}},
	Receipts: {table: schemas.ClickHouseResultsTable, org: "tenant", time: "received_at", key: []string{"receipt_id", "id"},
		fixed: "kind = 'sign' AND status = 'signed'",
		cols: []column{
			{Column: Column{"receipt_id", String}, expr: "receipt_id"},
			{Column: Column{"id", String}, expr: "id"},
			{Column: Column{"kid", String}, expr: "kid"},
			{Column: Column{"key_id", String}, expr: "key_id"},
			{Column: Column{"job_id", String}, expr: "job_id"},
			{Column: Column{"received_at", Timestamp}, expr: "received_at"},
			{Column: Column{"receipt", JSONText}, expr: "receipt", sealed: true},
		},
		filters: map[string]string{"key_id": "key_id", "job_id": "job_id"}},
	Usage: {table: schemas.ClickHouseUsageTable, org: "org", time: "time", key: []string{"id"}, grouped: true,
		cols:    usageCols,
		filters: map[string]string{"kind": "u_kind", "status": "u_status", "key_id": "u_key_id", "job_id": "u_job_id", "source": "u_source"}},
	WebhookAttempts: {table: schemas.ClickHouseWebhookAttemptsTable, org: "org", time: "at", key: []string{"message_id", "id"},
		cols: []column{
			{Column: Column{"message_id", String}, expr: "message_id"},
			{Column: Column{"id", String}, expr: "id"},
			{Column: Column{"endpoint_id", String}, expr: "endpoint_id"},
			{Column: Column{"event_type", String}, expr: "event_type"},
			{Column: Column{"event_id", String}, expr: "event_id"},
			{Column: Column{"message_created_at", Timestamp}, expr: "message_created_at"},
			{Column: Column{"attempt", Int64}, expr: "toInt64(attempt)"},
			{Column: Column{"redelivery", Bool}, expr: "redelivery"},
			{Column: Column{"round", String}, expr: "round"},
			{Column: Column{"held", Bool}, expr: "held"},
			{Column: Column{"at", Timestamp}, expr: "at"},
			{Column: Column{"at_nanos", Int64}, expr: "toInt64(at_nanos)"},
			{Column: Column{"url", String}, expr: "url"},
			{Column: Column{"status", Int64}, expr: "toInt64(status)"},
			{Column: Column{"latency_ms", Int64}, expr: "toInt64(latency_ms)"},
			{Column: Column{"response_headers", JSONText}, expr: "response_headers"},
			{Column: Column{"error", String}, expr: "error"},
			{Column: Column{"outcome", String}, expr: "outcome"},
			{Column: Column{"next_attempt_at", Timestamp}, expr: "next_attempt_at", zeroNull: true},
			// Bodies are whatever the message and the endpoint sent: text.
			{Column: Column{"body", String}, expr: "body", opt: true, sealed: true},
			{Column: Column{"response_body", String}, expr: "response_body", opt: true, sealed: true},
		},
		filters: map[string]string{"endpoint_id": "endpoint_id", "event_type": "event_type", "outcome": "outcome"}},
}

// Kinds lists every kind.
var Kinds = []Kind{Results, Receipts, Usage, WebhookAttempts}

// Filterable returns the filters a kind accepts, sorted.
func Filterable(k Kind) []string {
	s, ok := sources[k]
	if !ok {
		return nil
	}
	return slices.Sorted(maps.Keys(s.filters))
}

// Validate reports every problem of q at once; each wraps ErrBadQuery.
// The cursor is checked by Export, which holds the key.
func (q Query) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrBadQuery}, args...)...))
	}
	if err := schemas.CheckTenantID(q.Org); err != nil {
		bad("organization: %v", err)
	}
	s, ok := sources[q.Kind]
	if !ok {
		bad("unknown kind %q (valid: %s)", q.Kind, strings.Join(kindNames(), ", "))
	}
	if q.From.IsZero() || q.To.IsZero() || !q.From.Before(q.To) {
		bad("from and to are required, from before to")
	}
	for _, name := range slices.Sorted(maps.Keys(q.Filters)) {
		if ok && s.filters[name] == "" {
			bad("%s cannot be filtered on %q (valid: %s)", q.Kind, name, strings.Join(Filterable(q.Kind), ", "))
		}
		if v := q.Filters[name]; len(v) > schemas.MaxIDBytes {
			bad("filter %s is longer than %d bytes", name, schemas.MaxIDBytes)
		}
	}
	if q.Receipt && q.Kind != Results {
		bad("receipt only applies to %s", Results)
	}
	if q.Bodies && q.Kind != WebhookAttempts {
		bad("bodies only applies to %s", WebhookAttempts)
	}
	return errors.Join(errs...)
}

func kindNames() []string {
	names := make([]string, len(Kinds))
	for i, k := range Kinds {
		names[i] = string(k)
	}
	return names
}

// columns returns the columns q exports.
func (s *source) columns(q Query) []column {
	var out []column
	for _, c := range s.cols {
		if !c.opt || q.Receipt || q.Bodies {
			out = append(out, c)
		}
	}
	return out
}

// schema is the export schema of columns.
func schemaOf(cols []column) Schema {
	s := make(Schema, len(cols))
	for i, c := range cols {
		s[i] = c.Column
	}
	return s
}

// identity encodes everything that makes q the export it is, for the
// cursor's MAC: a cursor resumes only the export that made it.
func (q Query) identity() []byte {
	var b []byte
	str := func(s string) {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	str(q.Org)
	str(string(q.Kind))
	b = binary.AppendVarint(b, seconds(q.From))
	b = binary.AppendVarint(b, seconds(q.To))
	b = binary.AppendUvarint(b, uint64(len(q.Filters)))
	for _, name := range slices.Sorted(maps.Keys(q.Filters)) {
		str(name)
		str(q.Filters[name])
	}
	flags := byte(0)
	if q.Receipt {
		flags |= 1
	}
	if q.Bodies {
		flags |= 2
	}
	return append(b, flags)
}

// seconds is t as a DateTime argument: whole seconds, clamped to the
// range DateTime holds (toDateTime wraps values outside it).
func seconds(t time.Time) int64 {
	return min(max(t.Unix(), 0), math.MaxUint32)
}

// A page is the rows past one key (after; nil: from the start) up to
// another (upTo; nil: to the end), in key order, each once: pageSQL reads
// it. boundarySQL first finds the key of the page's last row, reading the
// key columns only, so that the page's query reads the wide columns of its
// own rows only: with a LIMIT instead, every page read them for all the
// rows left, and sorted those (0.95 s a page for a million results with
// receipts, against 0.13 s for the keys). The organization is the first
// argument of both, and every value of q an argument. Key conditions
// repeat the first key column alone (>=, <=) so that ClickHouse 18.16 uses
// the primary index on it.
func (s *source) pageSQL(q Query, cols []column, after, upTo []string) (string, []any) {
	sql, args := s.selectSQL(q, cols, after, upTo)
	key := strings.Join(s.key, ", ")
	if s.grouped {
		return sql + " ORDER BY " + key, args
	}
	return sql + " ORDER BY " + key + " LIMIT 1 BY " + key, args
}

// selectSQL is pageSQL in no order, and for sources that are not grouped
// with the copies of rows.
func (s *source) selectSQL(q Query, cols []column, after, upTo []string) (string, []any) {
	exprs := make([]string, len(cols))
	for i, c := range cols {
		exprs[i] = c.expr
	}
	var b strings.Builder
	fmt.Fprintf(&b, "SELECT %s FROM %s WHERE %s = ? AND %s >= toDateTime(?) AND %s < toDateTime(?)",
		strings.Join(exprs, ", "), s.table, s.org, s.time, s.time)
	args := []any{q.Org, seconds(q.From), seconds(q.To)}
	if s.fixed != "" {
		b.WriteString(" AND " + s.fixed)
	}
	var having []string
	var havingArgs []any
	for _, name := range slices.Sorted(maps.Keys(q.Filters)) {
		if s.grouped {
			having = append(having, s.filters[name]+" = ?")
			havingArgs = append(havingArgs, q.Filters[name])
			continue
		}
		b.WriteString(" AND " + s.filters[name] + " = ?")
		args = append(args, q.Filters[name])
	}
	// bound adds key op past (the first part) and op last (the whole key):
	// past after is > and >, up to upTo < and <=.
	bound := func(key []string, op, last string) {
		switch len(s.key) {
		case 1:
			fmt.Fprintf(&b, " AND %s %s ?", s.key[0], last)
			args = append(args, key[0])
		case 2:
			fmt.Fprintf(&b, " AND %[1]s %[3]s= ? AND (%[1]s %[3]s ? OR (%[1]s = ? AND %[2]s %[4]s ?))", s.key[0], s.key[1], op, last)
			args = append(args, key[0], key[0], key[0], key[1])
		}
	}
	if after != nil {
		bound(after, ">", ">")
	}
	if upTo != nil {
		bound(upTo, "<", "<=")
	}
	if s.grouped {
		b.WriteString(" GROUP BY " + strings.Join(s.key, ", "))
		if len(having) > 0 {
			b.WriteString(" HAVING " + strings.Join(having, " AND "))
			args = append(args, havingArgs...)
		}
	}
	return b.String(), args
}

// countSQL counts q's rows (Exporter.Estimate): for grouped sources the
// groups the filters pass, exactly; for the others the rows, copies
// included, since dropping them would sort every key of the range.
func (s *source) countSQL(q Query) (string, []any) {
	if s.grouped {
		sql, args := s.selectSQL(q, s.cols, nil, nil)
		return "SELECT count() FROM (" + sql + ")", args
	}
	return s.selectSQL(q, []column{{expr: "count()"}}, nil, nil)
}

// boundarySQL returns the statement of the row offset rows past after
// (none when fewer rows follow), with the columns it selects: the key's,
// or for grouped sources, which filter on aliases of the select list
// (HAVING), all of theirs, which are narrow.
func (s *source) boundarySQL(q Query, after []string, offset int) (string, []any, []column) {
	cols := s.cols
	if !s.grouped {
		cols = nil
		for _, k := range s.key {
			cols = append(cols, s.cols[slices.IndexFunc(s.cols, func(c column) bool { return c.Name == k })])
		}
	}
	sql, args := s.pageSQL(q, cols, after, nil)
	return sql + " LIMIT ?, 1", append(args, offset), cols
}

// keyIn returns where the key's columns are in cols.
func (s *source) keyIn(cols []column) []int {
	at := make([]int, len(s.key))
	for i, k := range s.key {
		at[i] = slices.IndexFunc(cols, func(c column) bool { return c.Name == k })
	}
	return at
}
