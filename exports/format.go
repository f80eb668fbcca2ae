// Package exports streams an organization's data out of ClickHouse as
// CSV, NDJSON, JSON, Arrow IPC or Parquet, in constant memory whatever
// the size, resumable by an authenticated cursor. Every format writes the
// same model: a Schema of typed columns and rows of Go values. It depends
// only on internal/ and schemas/; cmd mounts it on the server's routes and
// jobs.
package exports

import (
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/certnode/certnode/schemas"
)

// ErrBadQuery marks an export the caller asked for wrongly (HTTP 400):
// an unknown format, kind or filter, a bad range or cursor. It wraps
// schemas.ErrBadExport, which callers that cannot import exports test.
var ErrBadQuery = fmt.Errorf("exports: %w", schemas.ErrBadExport)

// Format is an output format.
type Format string

// The formats.
const (
	CSV     Format = "csv"
	NDJSON  Format = "ndjson"
	JSON    Format = "json"
	Arrow   Format = "arrow"
	Parquet Format = "parquet"
)

// Formats lists every format, in the order error messages name them.
var Formats = []Format{CSV, NDJSON, JSON, Arrow, Parquet}

var formatInfo = map[Format]struct{ contentType, ext string }{
	CSV:     {"text/csv; charset=utf-8", ".csv"},
	NDJSON:  {"application/x-ndjson", ".ndjson"},
	JSON:    {"application/json", ".json"},
	Arrow:   {"application/vnd.apache.arrow.stream", ".arrows"},
	Parquet: {"application/vnd.apache.parquet", ".parquet"},
}

// UnknownFormatError is the error of ParseFormat; it wraps ErrBadQuery.
type UnknownFormatError struct{ Name string }

func (e *UnknownFormatError) Error() string {
	names := make([]string, len(Formats))
	for i, f := range Formats {
		names[i] = string(f)
	}
	return fmt.Sprintf("exports: unknown format %q (valid: %s)", e.Name, strings.Join(names, ", "))
}

func (e *UnknownFormatError) Unwrap() error { return ErrBadQuery }

// ParseFormat returns the format named s (as Formats spell them).
func ParseFormat(s string) (Format, error) {
	if _, ok := formatInfo[Format(s)]; !ok {
		return "", &UnknownFormatError{Name: s}
	}
	return Format(s), nil
}

// ContentType is the format's media type.
func (f Format) ContentType() string { return formatInfo[f].contentType }

// Extension is the format's file name extension, with its dot.
func (f Format) Extension() string { return formatInfo[f].ext }

// Type is a column's type. Each has one Go type in rows (any value may
// also be nil, for null).
type Type int

// The types.
const (
	String    Type = iota + 1 // string
	Int64                     // int64
	Uint64                    // uint64
	Bool                      // bool
	Timestamp                 // time.Time, kept in whole seconds, UTC
	JSONText                  // string holding one JSON value, embedded as JSON where a format can
	Float64                   // float64; NaN and infinities are null (JSON has neither)
)

func (t Type) String() string {
	switch t {
	case String:
		return "string"
	case Int64:
		return "int64"
	case Uint64:
		return "uint64"
	case Bool:
		return "bool"
	case Timestamp:
		return "timestamp"
	case JSONText:
		return "json"
	case Float64:
		return "float64"
	}
	return fmt.Sprintf("Type(%d)", int(t))
}

// ParseType returns the type named s, as Type.String names it.
func ParseType(s string) (Type, error) {
	for t := String; t <= Float64; t++ {
		if t.String() == s {
			return t, nil
		}
	}
	return 0, fmt.Errorf("%w: unknown column type %q (valid: string, int64, uint64, float64, bool, timestamp, json)", ErrBadQuery, s)
}

// Column is a column of an export.
type Column struct {
	Name string
	Type Type
}

// Schema is the ordered columns of an export.
type Schema []Column

// ValueError is a row value that does not fit its column: a bug of what
// made the row (Export's sources), never the client's doing.
type ValueError struct {
	Column string
	Type   Type
	Value  any
}

func (e *ValueError) Error() string {
	return fmt.Sprintf("exports: column %s (%s) cannot hold %T", e.Column, e.Type, e.Value)
}

// check returns v as the column holds it, or a ValueError: strings are
// made valid UTF-8 (ClickHouse strings are bytes; every format here needs
// text) and times UTC seconds, so that every format writes the same
// value.
func (c Column) check(v any) (any, error) {
	if v == nil {
		return nil, nil
	}
	ok := false
	switch c.Type {
	case String, JSONText:
		var s string
		if s, ok = v.(string); ok && !utf8.ValidString(s) {
			return strings.ToValidUTF8(s, "\uFFFD"), nil
		}
	case Int64:
		_, ok = v.(int64)
	case Uint64:
		_, ok = v.(uint64)
	case Bool:
		_, ok = v.(bool)
	case Float64:
		var f float64
		if f, ok = v.(float64); ok && (math.IsNaN(f) || math.IsInf(f, 0)) {
			return nil, nil
		}
	case Timestamp:
		var t time.Time
		if t, ok = v.(time.Time); ok {
			return t.UTC().Truncate(time.Second), nil
		}
	}
	if !ok {
		return nil, &ValueError{Column: c.Name, Type: c.Type, Value: v}
	}
	return v, nil
}

// RowWriter writes rows in one format. Rows are grouped in batches: Flush
// ends one (Arrow: a record batch; Parquet: a row group) and flushes the
// destination, so that a client sees bytes early; the caller decides when
// from Buffered.
type RowWriter interface {
	// Write adds a row, one value per column; it does not keep row.
	Write(row []any) error
	// Buffered is the size of the current batch in bytes, roughly (text
	// formats write out as they go, and count what they wrote).
	Buffered() int
	// Flush writes the current batch out and flushes the destination.
	Flush() error
	// Close flushes and ends the output (Arrow: end of stream; Parquet:
	// footer; JSON: the closing bracket). It does not close the destination.
	Close() error
}

// WriterOptions tune NewWriter.
type WriterOptions struct {
	// NoHeader leaves out the CSV header: an export resumed by appending.
	NoHeader bool
}

// NewWriter returns a writer of format f to w. When w has a Flush method
// (bufio.Writer, http.ResponseWriter's http.Flusher) every batch calls it.
func NewWriter(w io.Writer, f Format, s Schema, opts WriterOptions) (RowWriter, error) {
	if len(s) == 0 {
		return nil, errors.New("exports: a schema needs columns")
	}
	switch f {
	case CSV:
		return newCSVWriter(w, s, !opts.NoHeader)
	case NDJSON:
		return newJSONWriter(w, s, false), nil
	case JSON:
		return newJSONWriter(w, s, true), nil
	case Arrow:
		return newArrowWriter(w, s), nil
	case Parquet:
		return newParquetWriter(w, s)
	}
	return nil, &UnknownFormatError{Name: string(f)}
}

// flushDest flushes w if it can be.
func flushDest(w io.Writer) error {
	switch f := w.(type) {
	case interface{ Flush() error }:
		return f.Flush()
	case interface{ Flush() }:
		f.Flush()
	}
	return nil
}

// checkRow checks row against s into out (reused between rows).
func checkRow(s Schema, row, out []any) error {
	if len(row) != len(s) {
		return fmt.Errorf("exports: a row of %d values for %d columns", len(row), len(s))
	}
	for i, c := range s {
		v, err := c.check(row[i])
		if err != nil {
			return err
		}
		out[i] = v
	}
	return nil
}
