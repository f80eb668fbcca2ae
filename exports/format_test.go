package exports

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/ipc"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/apache/arrow/go/v17/parquet/compress"
	"github.com/apache/arrow/go/v17/parquet/file"
	"github.com/apache/arrow/go/v17/parquet/pqarrow"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/certnode/certnode/schemas"
)

var testSchema = Schema{
	{"name", String}, {"n", Int64}, {"u", Uint64}, {"ok", Bool}, {"at", Timestamp}, {"doc", JSONText}, {"f", Float64},
}

// testRows covers what a value can be: unicode, separators, quotes and
// newlines, empty strings, the zero and the epoch time, extremes, nulls.
func testRows() [][]any {
	at := time.Date(2026, 5, 1, 12, 30, 45, 0, time.UTC)
	return [][]any{
		{"plain", int64(1), uint64(2), true, at, `{"a":1}`, 1.5},
		{"", int64(0), uint64(0), false, time.Time{}, `[]`, 0.0},
		{"comma, \"quotes\"\nand a newline", int64(-1), uint64(math.MaxUint64), true, time.Unix(0, 0), "{\n  \"spaced\": [1, 2],\n  \"s\": \"a\\nb\"\n}", -math.MaxFloat64},
		{"héllo ☃ 🎉 日本語", int64(math.MinInt64), uint64(1), false, at.Add(-time.Hour), `"just a string"`, math.SmallestNonzeroFloat64},
		{" leading space", int64(math.MaxInt64), uint64(7), true, at, `{"nested":{"k":["v",null,true,1.5e3]}}`, 0.1},
		{nil, nil, nil, nil, nil, nil, nil},
		{"\\. a backslash-dot", int64(42), uint64(42), false, time.Date(2106, 2, 7, 6, 28, 15, 0, time.UTC), `null`, math.NaN()},
		{"bad utf-8: \xff\xfe", int64(3), uint64(3), true, at.In(time.FixedZone("X", 3600)).Add(999 * time.Millisecond), `{"x":"\u00e9"}`, 1e21},
	}
}

// want is a row as every format holds it: strings valid UTF-8, times
// UTC whole seconds.
func want(row []any) []any {
	out := make([]any, len(row))
	if err := checkRow(testSchema, row, out); err != nil {
		panic(err)
	}
	return out
}

// write writes rows with a batch boundary after every two.
func write(t *testing.T, f Format, rows [][]any, opts WriterOptions) ([]byte, int) {
	t.Helper()
	var buf bytes.Buffer
	dst := &flushCounter{w: &buf}
	w, err := NewWriter(dst, f, testSchema, opts)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range rows {
		if err := w.Write(r); err != nil {
			t.Fatalf("row %d: %v", i, err)
		}
		if i%2 == 1 {
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), dst.flushes
}

// flushCounter is a destination with a Flush method, as http.Flusher.
type flushCounter struct {
	w       io.Writer
	flushes int
}

func (f *flushCounter) Write(p []byte) (int, error) { return f.w.Write(p) }
func (f *flushCounter) Flush()                      { f.flushes++ }

func TestFormatsReadBack(t *testing.T) {
	rows := testRows()
	for _, f := range Formats {
		t.Run(string(f), func(t *testing.T) {
			out, flushes := write(t, f, rows, WriterOptions{})
			if want := len(rows)/2 + 1; flushes < want {
				t.Errorf("destination flushed %d times, want at least %d (one a batch)", flushes, want)
			}
			got := readBack(t, f, testSchema, out)
			if len(got) != len(rows) {
				t.Fatalf("read %d rows, want %d", len(got), len(rows))
			}
			for i, r := range rows {
				w := expect(f, testSchema, want(r))
				for c := range testSchema {
					if !equalValue(got[i][c], w[c]) {
						t.Errorf("row %d column %s: got %#v, want %#v", i, testSchema[c].Name, got[i][c], w[c])
					}
				}
			}
		})
	}
}

// expect is a checked row as f can give it back: CSV has no null, only
// empty text; JSON formats embed JSON text, compacted, and null as null.
func expect(f Format, s Schema, row []any) []any {
	out := make([]any, len(row))
	for i, v := range row {
		text := s[i].Type == String || s[i].Type == JSONText
		switch {
		case f == CSV && v == nil && text:
			v = ""
		case (f == NDJSON || f == JSON) && s[i].Type == JSONText:
			if v == nil {
				v = "null"
			} else {
				var b bytes.Buffer
				if err := json.Compact(&b, []byte(v.(string))); err != nil {
					panic(err)
				}
				v = b.String()
			}
		}
		out[i] = v
	}
	return out
}

func equalValue(a, b any) bool {
	ta, aok := a.(time.Time)
	tb, bok := b.(time.Time)
	if aok || bok {
		return aok && bok && ta.Equal(tb) && ta.Location() == time.UTC
	}
	return a == b
}

// readBack decodes an output with an independent reader of its format.
func readBack(t *testing.T, f Format, s Schema, out []byte) [][]any {
	t.Helper()
	switch f {
	case CSV:
		return readCSV(t, s, out)
	case NDJSON:
		var rows [][]any
		if len(out) == 0 {
			return nil
		}
		for i, line := range strings.Split(strings.TrimSuffix(string(out), "\n"), "\n") {
			if line == "" {
				t.Fatalf("line %d is empty", i)
			}
			rows = append(rows, readObject(t, s, jsontext.NewDecoder(strings.NewReader(line))))
		}
		return rows
	case JSON:
		d := jsontext.NewDecoder(bytes.NewReader(out))
		if tok, err := d.ReadToken(); err != nil || tok.Kind() != '[' {
			t.Fatalf("not an array: %v %v", tok, err)
		}
		var rows [][]any
		for d.PeekKind() != ']' {
			rows = append(rows, readObject(t, s, d))
		}
		if _, err := d.ReadToken(); err != nil {
			t.Fatal(err)
		}
		if _, err := d.ReadToken(); err != io.EOF {
			t.Fatalf("after the array: %v", err)
		}
		return rows
	case Arrow:
		r, err := ipc.NewReader(bytes.NewReader(out))
		if err != nil {
			t.Fatal(err)
		}
		defer r.Release()
		if !r.Schema().Equal(arrowSchema(s)) {
			t.Fatalf("schema %s", r.Schema())
		}
		var rows [][]any
		for r.Next() {
			rows = append(rows, recordRows(t, r.Record())...)
		}
		if err := r.Err(); err != nil {
			t.Fatal(err)
		}
		return rows
	case Parquet:
		return readParquet(t, s, out)
	}
	t.Fatalf("no reader for %s", f)
	return nil
}

// readCSV reads a CSV export, its header first.
func readCSV(t *testing.T, s Schema, out []byte) [][]any {
	t.Helper()
	records, err := csv.NewReader(bytes.NewReader(out)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range s {
		if records[0][i] != c.Name {
			t.Fatalf("header %q", records[0])
		}
	}
	var rows [][]any
	for _, rec := range records[1:] {
		row := make([]any, len(rec))
		for i, v := range rec {
			row[i] = parseText(t, s[i].Type, v)
		}
		rows = append(rows, row)
	}
	return rows
}

// parseText reads a CSV field back: empty is null but for text.
func parseText(t *testing.T, typ Type, s string) any {
	t.Helper()
	if s == "" && typ != String && typ != JSONText {
		return nil
	}
	var v any
	var err error
	switch typ {
	case String, JSONText:
		v = s
	case Int64:
		v, err = strconv.ParseInt(s, 10, 64)
	case Uint64:
		v, err = strconv.ParseUint(s, 10, 64)
	case Bool:
		v, err = strconv.ParseBool(s)
	case Float64:
		v, err = strconv.ParseFloat(s, 64)
	case Timestamp:
		v, err = time.Parse(time.RFC3339, s)
	}
	if err != nil {
		t.Fatalf("%s %q: %v", typ, s, err)
	}
	return v
}

// readObject reads one object and checks its keys come in schema order.
func readObject(t *testing.T, s Schema, d *jsontext.Decoder) []any {
	t.Helper()
	if tok, err := d.ReadToken(); err != nil || tok.Kind() != '{' {
		t.Fatalf("not an object: %v %v", tok, err)
	}
	row := make([]any, len(s))
	for i, c := range s {
		name, err := d.ReadToken()
		if err != nil || name.String() != c.Name {
			t.Fatalf("key %d: %v %v, want %s", i, name, err, c.Name)
		}
		raw, err := d.ReadValue()
		if err != nil {
			t.Fatal(err)
		}
		row[i] = parseJSON(t, c.Type, raw)
	}
	if tok, err := d.ReadToken(); err != nil || tok.Kind() != '}' {
		t.Fatalf("object goes on: %v %v", tok, err)
	}
	return row
}

func parseJSON(t *testing.T, typ Type, raw jsontext.Value) any {
	t.Helper()
	if raw.Kind() == 'n' && typ != JSONText {
		return nil
	}
	switch typ {
	case String, Timestamp:
		s, err := jsontext.AppendUnquote(nil, raw)
		if err != nil {
			t.Fatal(err)
		}
		return parseText(t, typ, string(s))
	case JSONText:
		// Embedded as the value it holds: compare it compacted.
		return string(raw)
	default:
		return parseText(t, typ, string(raw))
	}
}

func recordRows(t *testing.T, rec arrow.Record) [][]any {
	t.Helper()
	rows := make([][]any, rec.NumRows())
	for i := range rows {
		rows[i] = make([]any, rec.NumCols())
		for c, col := range rec.Columns() {
			if col.IsNull(i) {
				continue
			}
			switch a := col.(type) {
			case *array.String:
				rows[i][c] = a.Value(i)
			case *array.Int64:
				rows[i][c] = a.Value(i)
			case *array.Uint64:
				rows[i][c] = a.Value(i)
			case *array.Float64:
				rows[i][c] = a.Value(i)
			case *array.Boolean:
				rows[i][c] = a.Value(i)
			case *array.Timestamp:
				unit := a.DataType().(*arrow.TimestampType).Unit
				rows[i][c] = a.Value(i).ToTime(unit)
			default:
				t.Fatalf("column %d is %T", c, col)
			}
		}
	}
	return rows
}

func readParquet(t *testing.T, s Schema, out []byte) [][]any {
	t.Helper()
	pf, err := file.NewParquetReader(bytes.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	md := pf.MetaData()
	for g := range pf.NumRowGroups() {
		for c := range md.Schema.NumColumns() {
			cc, err := md.RowGroup(g).ColumnChunk(c)
			if err != nil {
				t.Fatal(err)
			}
			if cc.Compression() != compress.Codecs.Snappy {
				t.Errorf("row group %d column %d is %s, want snappy", g, c, cc.Compression())
			}
			// Statistics on every column but the JSON documents.
			if ok, err := cc.StatsSet(); ok != (s[c].Type != JSONText) || err != nil {
				t.Errorf("row group %d column %d has statistics: %v (%v)", g, c, ok, err)
			}
		}
	}
	fr, err := pqarrow.NewFileReader(pf, pqarrow.ArrowReadProperties{BatchSize: 1024}, memory.DefaultAllocator)
	if err != nil {
		t.Fatal(err)
	}
	rr, err := fr.GetRecordReader(t.Context(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rr.Release()
	var rows [][]any
	for rr.Next() {
		rows = append(rows, recordRows(t, rr.Record())...)
	}
	if err := rr.Err(); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return rows
}

// Parquet writes one row group a batch; its stored Arrow schema gives
// readers timestamps in seconds, UTC.
func TestParquetRowGroups(t *testing.T) {
	out, _ := write(t, Parquet, testRows(), WriterOptions{})
	pf, err := file.NewParquetReader(bytes.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	if got := pf.NumRowGroups(); got != 4 {
		t.Errorf("%d row groups, want one per batch of 2 rows: 4", got)
	}
	fr, err := pqarrow.NewFileReader(pf, pqarrow.ArrowReadProperties{}, memory.DefaultAllocator)
	if err != nil {
		t.Fatal(err)
	}
	s, err := fr.Schema()
	if err != nil {
		t.Fatal(err)
	}
	if at := s.Field(4).Type.(*arrow.TimestampType); at.TimeZone != "UTC" {
		t.Errorf("timestamp type %s", at)
	}
}

// Text formats: the exact bytes, header and escaping included.
func TestTextGolden(t *testing.T) {
	at := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	rows := [][]any{{"a,b", int64(1), uint64(2), true, at, "{ \"k\" : [1, 2] }", 2.5}, {"", nil, nil, nil, nil, nil, nil}}
	for _, tc := range []struct {
		f    Format
		opts WriterOptions
		want string
	}{
		{CSV, WriterOptions{}, "name,n,u,ok,at,doc,f\n\"a,b\",1,2,true,2026-05-01T00:00:00Z,\"{ \"\"k\"\" : [1, 2] }\",2.5\n,,,,,,\n"},
		{CSV, WriterOptions{NoHeader: true}, "\"a,b\",1,2,true,2026-05-01T00:00:00Z,\"{ \"\"k\"\" : [1, 2] }\",2.5\n,,,,,,\n"},
		{NDJSON, WriterOptions{}, `{"name":"a,b","n":1,"u":2,"ok":true,"at":"2026-05-01T00:00:00Z","doc":{"k":[1,2]},"f":2.5}` + "\n" +
			`{"name":"","n":null,"u":null,"ok":null,"at":null,"doc":null,"f":null}` + "\n"},
		{JSON, WriterOptions{}, "[\n" + `{"name":"a,b","n":1,"u":2,"ok":true,"at":"2026-05-01T00:00:00Z","doc":{"k":[1,2]},"f":2.5}` + ",\n" +
			`{"name":"","n":null,"u":null,"ok":null,"at":null,"doc":null,"f":null}` + "\n]\n"},
	} {
		t.Run(fmt.Sprintf("%s %+v", tc.f, tc.opts), func(t *testing.T) {
			out, _ := write(t, tc.f, rows, tc.opts)
			if string(out) != tc.want {
				t.Errorf("got\n%s\nwant\n%s", out, tc.want)
			}
		})
	}
}

// An export of no rows is still a valid file of its format.
func TestEmptyOutputs(t *testing.T) {
	for _, f := range Formats {
		t.Run(string(f), func(t *testing.T) {
			out, _ := write(t, f, nil, WriterOptions{})
			if got := readBack(t, f, testSchema, out); len(got) != 0 {
				t.Fatalf("read %d rows", len(got))
			}
			if f == JSON && string(out) != "[]\n" {
				t.Errorf("got %q", out)
			}
		})
	}
}

func TestBadRows(t *testing.T) {
	at := time.Unix(0, 0)
	for _, f := range Formats {
		for _, tc := range []struct {
			name string
			row  []any
			want any
		}{
			{"int for string", []any{1, int64(1), uint64(1), true, at, "{}", 0.0}, &ValueError{}},
			{"int for int64", []any{"", 1, uint64(1), true, at, "{}", 0.0}, &ValueError{}},
			{"string for time", []any{"", int64(1), uint64(1), true, "2026-01-01", "{}", 0.0}, &ValueError{}},
			{"bytes for JSON", []any{"", int64(1), uint64(1), true, at, []byte("{}"), 0.0}, &ValueError{}},
			{"too short", []any{"x"}, "a row of 1 values"},
		} {
			t.Run(string(f)+" "+tc.name, func(t *testing.T) {
				w, err := NewWriter(io.Discard, f, testSchema, WriterOptions{})
				if err != nil {
					t.Fatal(err)
				}
				err = w.Write(tc.row)
				switch want := tc.want.(type) {
				case *ValueError:
					var ve *ValueError
					if !errors.As(err, &ve) {
						t.Fatalf("got %v, want a ValueError", err)
					}
				case string:
					if err == nil || !strings.Contains(err.Error(), want) {
						t.Fatalf("got %v, want %q", err, want)
					}
				}
			})
		}
	}
	// Formats that embed JSON refuse text that is not JSON.
	for _, f := range []Format{NDJSON, JSON} {
		w, _ := NewWriter(io.Discard, f, testSchema, WriterOptions{})
		if err := w.Write([]any{"", int64(1), uint64(1), true, at, `{"a":`, 0.0}); err == nil || !strings.Contains(err.Error(), "does not hold JSON") {
			t.Errorf("%s: got %v", f, err)
		}
	}
}

func TestParseFormat(t *testing.T) {
	for _, f := range Formats {
		got, err := ParseFormat(string(f))
		if err != nil || got != f || f.ContentType() == "" || !strings.HasPrefix(f.Extension(), ".") {
			t.Errorf("%s: %v %v %q %q", f, got, err, f.ContentType(), f.Extension())
		}
	}
	_, err := ParseFormat("xlsx")
	var ufe *UnknownFormatError
	if !errors.As(err, &ufe) || !errors.Is(err, ErrBadQuery) || !errors.Is(err, schemas.ErrBadExport) || ufe.Name != "xlsx" ||
		err.Error() != `exports: unknown format "xlsx" (valid: csv, ndjson, json, arrow, parquet)` {
		t.Errorf("got %v", err)
	}
	if _, err := NewWriter(io.Discard, "pdf", testSchema, WriterOptions{}); !errors.As(err, &ufe) {
		t.Errorf("NewWriter: %v", err)
	}
	if Parquet.ContentType() != "application/vnd.apache.parquet" || Arrow.ContentType() != "application/vnd.apache.arrow.stream" {
		t.Error("content types")
	}
}

// Writing to a destination that fails reports it.
func TestWriteErrors(t *testing.T) {
	for _, f := range Formats {
		w, err := NewWriter(failingWriter{}, f, testSchema, WriterOptions{NoHeader: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range testRows() {
			if err = w.Write(r); err != nil {
				break
			}
		}
		if err == nil {
			err = w.Close()
		}
		if !errors.Is(err, errFailing) {
			t.Errorf("%s: got %v", f, err)
		}
	}
}

var errFailing = errors.New("disk full")

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errFailing }
