package exports

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/apache/arrow/go/v17/parquet/file"

	"github.com/certnode/certnode/schemas"
)

var resultsRequest = schemas.ExportRequest{Kind: "results", Format: "csv", From: from, To: to}

// The service is Export and PageEnd in schemas' types: the same bytes,
// pages and cursors, and refusals that wrap schemas.ErrBadExport.
func TestServiceStream(t *testing.T) {
	e := newTestExporter(fakeResults(700))
	s := NewService(e)
	for _, f := range Formats {
		r := resultsRequest
		r.Format = string(f)
		var want, got bytes.Buffer
		wres, err := e.Export(t.Context(), &want, resultsQuery, f, Options{})
		if err != nil {
			t.Fatal(err)
		}
		res, err := s.Stream(t.Context(), &got, "acme", r, "", "")
		if err != nil || !bytes.Equal(got.Bytes(), want.Bytes()) || res != (schemas.ExportResult{Rows: 700, Bytes: int64(got.Len()), Cursor: wres.Cursor}) {
			t.Fatalf("%s: %+v %v", f, res, err)
		}
	}
	until, err := s.PageEnd(t.Context(), "acme", resultsRequest, "", 250)
	if err != nil {
		t.Fatal(err)
	}
	var joined, whole bytes.Buffer
	first, err := s.Stream(t.Context(), &joined, "acme", resultsRequest, "", until)
	if err != nil || first.Rows != 250 || first.Cursor != until {
		t.Fatalf("first page: %+v %v", first, err)
	}
	if rest, err := s.Stream(t.Context(), &joined, "acme", resultsRequest, until, ""); err != nil || rest.Rows != 450 {
		t.Fatalf("the rest: %+v %v", rest, err)
	}
	if _, err := s.Stream(t.Context(), &whole, "acme", resultsRequest, "", ""); err != nil || !bytes.Equal(joined.Bytes(), whole.Bytes()) {
		t.Fatalf("pages differ from the whole (%v)", err)
	}

	for name, tc := range map[string]struct {
		r             schemas.ExportRequest
		cursor, until string
	}{
		"format":    {r: schemas.ExportRequest{Kind: "results", Format: "xlsx", From: from, To: to}},
		"kind":      {r: schemas.ExportRequest{Kind: "audit", Format: "csv", From: from, To: to}},
		"range":     {r: schemas.ExportRequest{Kind: "results", Format: "csv", From: to, To: from}},
		"filter":    {r: schemas.ExportRequest{Kind: "results", Format: "csv", From: from, To: to, Filters: map[string]string{"tenant": "x"}}},
		"cursor":    {r: resultsRequest, cursor: "bm90"},
		"until":     {r: resultsRequest, until: "bm90"},
		"org until": {r: resultsRequest, until: until, cursor: ""},
	} {
		org := "acme"
		if name == "org until" {
			org = "globex"
		}
		var out bytes.Buffer
		if _, err := s.Stream(t.Context(), &out, org, tc.r, tc.cursor, tc.until); !errors.Is(err, schemas.ErrBadExport) || out.Len() != 0 {
			t.Errorf("bad %s: %v, %d bytes", name, err, out.Len())
		}
	}
	if _, err := s.PageEnd(t.Context(), "acme", resultsRequest, "", 0); !errors.Is(err, schemas.ErrBadExport) {
		t.Errorf("page of 0 rows: %v", err)
	}
}

// A table of the caller's reads back as written in every format, in
// batches of the exporter's size.
func TestServiceTable(t *testing.T) {
	e := newTestExporter(&fakeDB{})
	e.cfg.BatchRows = 3
	s := NewService(e)
	var cols []schemas.ExportColumn
	for _, c := range testSchema {
		cols = append(cols, schemas.ExportColumn{Name: c.Name, Type: c.Type.String()})
	}
	rows := testRows()
	for _, f := range Formats {
		var out bytes.Buffer
		w, err := s.Table(&out, string(f), cols)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			if err := w.Write(r); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		got := readBack(t, f, testSchema, out.Bytes())
		if len(got) != len(rows) {
			t.Fatalf("%s: read %d rows, want %d", f, len(got), len(rows))
		}
		for i, r := range rows {
			w := expect(f, testSchema, want(r))
			for c := range testSchema {
				if !equalValue(got[i][c], w[c]) {
					t.Errorf("%s row %d column %s: got %#v, want %#v", f, i, testSchema[c].Name, got[i][c], w[c])
				}
			}
		}
		if f == Parquet {
			pf, err := file.NewParquetReader(bytes.NewReader(out.Bytes()))
			if err != nil {
				t.Fatal(err)
			}
			if n := pf.NumRowGroups(); n != 3 {
				t.Errorf("%d row groups of 8 rows, want 3 of at most 3 rows", n)
			}
		}
		ct, ext, err := s.FileType(string(f))
		if err != nil || ct != f.ContentType() || ext != f.Extension() {
			t.Errorf("%s: %q %q %v", f, ct, ext, err)
		}
	}
	for name, tc := range map[string]struct {
		format string
		cols   []schemas.ExportColumn
		want   string
	}{
		"format":      {"xlsx", cols, "unknown format"},
		"no columns":  {"csv", nil, "needs columns"},
		"type":        {"csv", []schemas.ExportColumn{{Name: "a", Type: "float"}}, `unknown column type "float"`},
		"no name":     {"csv", []schemas.ExportColumn{{Type: "string"}}, "names"},
		"same name":   {"csv", []schemas.ExportColumn{{Name: "a", Type: "string"}, {Name: "a", Type: "bool"}}, `distinct: "a"`},
		"type's case": {"csv", []schemas.ExportColumn{{Name: "a", Type: "String"}}, "unknown column type"},
	} {
		var out bytes.Buffer
		if _, err := s.Table(&out, tc.format, tc.cols); !errors.Is(err, schemas.ErrBadExport) || !strings.Contains(err.Error(), tc.want) || out.Len() != 0 {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, _, err := s.FileType("pdf"); !errors.Is(err, schemas.ErrBadExport) {
		t.Errorf("FileType: %v", err)
	}
}

func TestParseType(t *testing.T) {
	for typ := String; typ <= JSONText; typ++ {
		if got, err := ParseType(typ.String()); got != typ || err != nil {
			t.Errorf("%s: %v %v", typ, got, err)
		}
	}
	if _, err := ParseType("Type(7)"); !errors.Is(err, ErrBadQuery) {
		t.Errorf("got %v", err)
	}
}
