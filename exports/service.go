package exports

import (
	"context"
	"fmt"
	"io"

	"github.com/certnode/certnode/schemas"
)

// Service is an Exporter as the HTTP tier calls it: in schemas' types,
// since that tier does not import exports. Its errors wrap
// schemas.ErrBadExport where Export's wrap ErrBadQuery.
type Service struct{ e *Exporter }

// NewService serves e.
func NewService(e *Exporter) *Service { return &Service{e: e} }

// queryOf is the Query of org's request r, resumed at cursor.
func queryOf(org string, r schemas.ExportRequest, cursor string) Query {
	return Query{Org: org, Kind: Kind(r.Kind), From: r.From, To: r.To, Filters: r.Filters, Receipt: r.Receipt, Bodies: r.Bodies,
		Cursor: cursor}
}

// Stream exports org's request r to w from cursor ("": the start) up to
// until (a cursor of PageEnd; "": the end), as Exporter.Export does.
func (s *Service) Stream(ctx context.Context, w io.Writer, org string, r schemas.ExportRequest, cursor, until string) (schemas.ExportResult, error) {
	f, err := ParseFormat(r.Format)
	if err != nil {
		return schemas.ExportResult{}, err
	}
	res, err := s.e.Export(ctx, w, queryOf(org, r, cursor), f, Options{Until: until})
	return schemas.ExportResult{Rows: res.Rows, Bytes: res.Bytes, Cursor: res.Cursor}, err
}

// PageEnd returns the cursor rows rows past cursor in org's request r,
// "" when fewer follow (Exporter.PageEnd).
func (s *Service) PageEnd(ctx context.Context, org string, r schemas.ExportRequest, cursor string, rows int64) (string, error) {
	return s.e.PageEnd(ctx, queryOf(org, r, cursor), rows)
}

// Table returns a writer of a table of the caller's own, in format, with
// columns cols (types as ParseType names them). It ends a batch (a
// flush of w; Arrow: a record batch; Parquet: a row group) as often as
// Export does, so that a long table is never held whole. Close ends the
// output; it does not close w.
func (s *Service) Table(w io.Writer, format string, cols []schemas.ExportColumn) (RowWriter, error) {
	f, err := ParseFormat(format)
	if err != nil {
		return nil, err
	}
	if len(cols) == 0 {
		return nil, fmt.Errorf("%w: a table needs columns", ErrBadQuery)
	}
	schema := make(Schema, len(cols))
	seen := map[string]bool{}
	for i, c := range cols {
		if c.Name == "" || seen[c.Name] {
			return nil, fmt.Errorf("%w: column names must be given and distinct: %q", ErrBadQuery, c.Name)
		}
		seen[c.Name] = true
		t, err := ParseType(c.Type)
		if err != nil {
			return nil, err
		}
		schema[i] = Column{Name: c.Name, Type: t}
	}
	rw, err := NewWriter(w, f, schema, WriterOptions{})
	if err != nil {
		return nil, err
	}
	return &batching{RowWriter: rw, rows: s.e.cfg.BatchRows, bytes: s.e.cfg.BatchBytes}, nil
}

// FileType returns format's media type and file name extension (with its
// dot).
func (s *Service) FileType(format string) (contentType, ext string, err error) {
	f, err := ParseFormat(format)
	if err != nil {
		return "", "", err
	}
	return f.ContentType(), f.Extension(), nil
}

// batching flushes a RowWriter every rows rows or bytes bytes.
type batching struct {
	RowWriter
	rows, bytes, n int
}

func (b *batching) Write(row []any) error {
	if err := b.RowWriter.Write(row); err != nil {
		return err
	}
	if b.n++; b.n >= b.rows || b.Buffered() >= b.bytes {
		return b.Flush()
	}
	return nil
}

func (b *batching) Flush() error {
	b.n = 0
	return b.RowWriter.Flush()
}
