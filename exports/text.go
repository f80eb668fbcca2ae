package exports

import (
	"bufio"
	"encoding/csv"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/go-json-experiment/json/jsontext"
)

// writeBuffer is what a format holds before writing to the destination
// (encoding/csv keeps its own 4 KiB).
const writeBuffer = 64 << 10

// timeText is how text formats write a timestamp: RFC 3339 in UTC.
const timeText = time.RFC3339

// csvWriter writes RFC 4180 CSV. Records end in LF, not CRLF: with
// UseCRLF encoding/csv also turns every LF inside a value into CRLF and
// drops every CR, so values would not read back as they were.
type csvWriter struct {
	dst    io.Writer
	s      Schema
	w      *csv.Writer
	row    []any
	record []string
	size   int // since the last Flush, roughly
}

func newCSVWriter(dst io.Writer, s Schema, header bool) (*csvWriter, error) {
	c := &csvWriter{dst: dst, s: s, w: csv.NewWriter(dst), row: make([]any, len(s)), record: make([]string, len(s))}
	if header {
		for i, col := range s {
			c.record[i] = col.Name
		}
		if err := c.w.Write(c.record); err != nil {
			return nil, fmt.Errorf("exports: write: %w", err)
		}
	}
	return c, nil
}

func (c *csvWriter) Write(row []any) error {
	if err := checkRow(c.s, row, c.row); err != nil {
		return err
	}
	for i, v := range c.row {
		c.record[i] = text(v)
		c.size += len(c.record[i]) + 1
	}
	if err := c.w.Write(c.record); err != nil {
		return fmt.Errorf("exports: write: %w", err)
	}
	return nil
}

func (c *csvWriter) Buffered() int { return c.size }

func (c *csvWriter) Flush() error {
	c.size = 0
	c.w.Flush()
	if err := c.w.Error(); err != nil {
		return fmt.Errorf("exports: write: %w", err)
	}
	return flushDest(c.dst)
}

func (c *csvWriter) Close() error { return c.Flush() }

// text is a checked value as CSV writes it: null is empty.
func text(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case int64:
		return strconv.FormatInt(v, 10)
	case uint64:
		return strconv.FormatUint(v, 10)
	case float64:
		return strconv.FormatFloat(v, 'g', -1, 64)
	case bool:
		return strconv.FormatBool(v)
	case time.Time:
		return v.Format(timeText)
	}
	return ""
}

// jsonWriter writes one JSON object per row, keys in schema order: one a
// line (NDJSON), or as the elements of one array written as they come.
type jsonWriter struct {
	dst   io.Writer
	s     Schema
	w     *bufio.Writer
	array bool
	rows  int64
	size  int      // since the last Flush
	keys  [][]byte // `"name":` of each column
	row   []any
	buf   []byte
}

func newJSONWriter(dst io.Writer, s Schema, array bool) *jsonWriter {
	j := &jsonWriter{dst: dst, s: s, w: bufio.NewWriterSize(dst, writeBuffer), array: array, row: make([]any, len(s))}
	for _, c := range s {
		k, _ := jsontext.AppendQuote(nil, c.Name) // names are ours, valid UTF-8
		j.keys = append(j.keys, append(k, ':'))
	}
	return j
}

func (j *jsonWriter) Write(row []any) error {
	if err := checkRow(j.s, row, j.row); err != nil {
		return err
	}
	b := j.buf[:0]
	if j.array {
		if j.rows == 0 {
			b = append(b, "[\n"...)
		} else {
			b = append(b, ",\n"...)
		}
	}
	b = append(b, '{')
	for i, v := range j.row {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, j.keys[i]...)
		var err error
		if b, err = appendJSON(b, j.s[i], v); err != nil {
			return err
		}
	}
	b = append(b, '}')
	if !j.array {
		b = append(b, '\n')
	}
	j.buf = b
	j.rows++
	j.size += len(b)
	if _, err := j.w.Write(b); err != nil {
		return fmt.Errorf("exports: write: %w", err)
	}
	return nil
}

// appendJSON appends a checked value: JSON text as the value it holds,
// compacted so that NDJSON keeps one row a line; a timestamp as an RFC
// 3339 string.
func appendJSON(b []byte, c Column, v any) ([]byte, error) {
	switch v := v.(type) {
	case nil:
		return append(b, "null"...), nil
	case string:
		if c.Type == JSONText {
			out, err := jsontext.AppendFormat(b, v, jsontext.AllowDuplicateNames(true), jsontext.PreserveRawStrings(true))
			if err != nil {
				return b, fmt.Errorf("exports: column %s does not hold JSON: %w", c.Name, err)
			}
			return out, nil
		}
		return jsontext.AppendQuote(b, v) // v is valid UTF-8: no error
	case int64:
		return strconv.AppendInt(b, v, 10), nil
	case uint64:
		return strconv.AppendUint(b, v, 10), nil
	case float64:
		return strconv.AppendFloat(b, v, 'g', -1, 64), nil
	case bool:
		return strconv.AppendBool(b, v), nil
	case time.Time:
		b = append(b, '"')
		return append(v.AppendFormat(b, timeText), '"'), nil
	}
	return b, &ValueError{Column: c.Name, Type: c.Type, Value: v}
}

func (j *jsonWriter) Buffered() int { return j.size }

func (j *jsonWriter) Flush() error {
	j.size = 0
	return flushBuffered(j.w, j.dst)
}

func (j *jsonWriter) Close() error {
	if j.array {
		end := "\n]\n"
		if j.rows == 0 {
			end = "[]\n"
		}
		if _, err := j.w.WriteString(end); err != nil {
			return fmt.Errorf("exports: write: %w", err)
		}
	}
	return j.Flush()
}
