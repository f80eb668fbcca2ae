package exports

import (
	"bufio"
	"fmt"
	"io"
	"time"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/ipc"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/apache/arrow/go/v17/parquet"
	"github.com/apache/arrow/go/v17/parquet/compress"
	"github.com/apache/arrow/go/v17/parquet/pqarrow"
)

// arrowType is the Arrow type of each column type. Every field is
// nullable; JSON text is a string.
var arrowType = map[Type]arrow.DataType{
	String:    arrow.BinaryTypes.String,
	Int64:     arrow.PrimitiveTypes.Int64,
	Uint64:    arrow.PrimitiveTypes.Uint64,
	Float64:   arrow.PrimitiveTypes.Float64,
	Bool:      arrow.FixedWidthTypes.Boolean,
	Timestamp: arrow.FixedWidthTypes.Timestamp_s,
	JSONText:  arrow.BinaryTypes.String,
}

// arrowSchema is the Arrow schema the Arrow and Parquet formats write s in.
func arrowSchema(s Schema) *arrow.Schema {
	fields := make([]arrow.Field, len(s))
	for i, c := range s {
		fields[i] = arrow.Field{Name: c.Name, Type: arrowType[c.Type], Nullable: true}
	}
	return arrow.NewSchema(fields, nil)
}

// batch builds the record batch of the columnar formats.
type batch struct {
	s    Schema
	b    *array.RecordBuilder
	row  []any
	rows int
	size int // bytes added since the last flush, roughly
}

func newBatch(s Schema) *batch {
	return &batch{s: s, b: array.NewRecordBuilder(memory.NewGoAllocator(), arrowSchema(s)), row: make([]any, len(s))}
}

func (b *batch) add(row []any) error {
	if err := checkRow(b.s, row, b.row); err != nil {
		return err
	}
	for i, v := range b.row {
		f := b.b.Field(i)
		if v == nil {
			f.AppendNull()
			b.size++
			continue
		}
		switch v := v.(type) {
		case string:
			f.(*array.StringBuilder).Append(v)
			b.size += len(v) + 4
		case int64:
			f.(*array.Int64Builder).Append(v)
			b.size += 8
		case uint64:
			f.(*array.Uint64Builder).Append(v)
			b.size += 8
		case float64:
			f.(*array.Float64Builder).Append(v)
			b.size += 8
		case bool:
			f.(*array.BooleanBuilder).Append(v)
			b.size++
		case time.Time:
			f.(*array.TimestampBuilder).Append(arrow.Timestamp(v.Unix()))
			b.size += 8
		}
	}
	b.rows++
	return nil
}

// flush hands the rows added since the last flush to write as a record,
// if there are any.
func (b *batch) flush(write func(arrow.Record) error) error {
	if b.rows == 0 {
		return nil
	}
	b.rows, b.size = 0, 0
	rec := b.b.NewRecord()
	err := write(rec)
	rec.Release()
	if err != nil {
		return fmt.Errorf("exports: write: %w", err)
	}
	return nil
}

// recordWriter is the Arrow IPC or Parquet writer under a columnarWriter.
type recordWriter interface {
	Write(arrow.Record) error
	Close() error
}

// columnarWriter writes record batches, one per Flush, through w.
type columnarWriter struct {
	dst io.Writer
	buf *bufio.Writer
	b   *batch
	w   recordWriter
}

// newArrowWriter writes the Arrow IPC stream format.
func newArrowWriter(dst io.Writer, s Schema) *columnarWriter {
	buf := bufio.NewWriterSize(dst, writeBuffer)
	b := newBatch(s)
	return &columnarWriter{dst: dst, buf: buf, b: b, w: ipc.NewWriter(buf, ipc.WithSchema(b.b.Schema()))}
}

// newParquetWriter writes a Parquet file: a row group per Flush (Write,
// not WriteBuffered, so that only one batch is ever held), with
// statistics, compressed with snappy: Arrow's zstd codec makes a new
// encoder, of megabytes, for every page it compresses. The footer, written
// last, holds every row group's metadata, so memory grows by some
// kilobytes a row group (9 KiB for results). The Arrow schema is stored in
// the file so that Arrow readers get timestamps in seconds back (Parquet
// has milliseconds at the coarsest).
func newParquetWriter(dst io.Writer, s Schema) (*columnarWriter, error) {
	// The file writer closes its sink, if it can be: buf cannot.
	buf := bufio.NewWriterSize(dst, writeBuffer)
	b := newBatch(s)
	// Small pages, filled 64 values at a time, keep the encoder's buffers
	// small: a page of receipts was 1 MiB, or a batch of 1024 of them.
	opts := []parquet.WriterProperty{parquet.WithCompression(compress.Codecs.Snappy), parquet.WithStats(true),
		parquet.WithDataPageSize(64 << 10), parquet.WithBatchSize(64), parquet.WithCreatedBy("certnode exports")}
	for _, c := range s {
		// Documents are distinct, and their min and max help no reader:
		// a dictionary and statistics of them only cost memory (the
		// footer keeps every row group's statistics).
		if c.Type == JSONText {
			opts = append(opts, parquet.WithDictionaryFor(c.Name, false), parquet.WithStatsFor(c.Name, false))
		}
	}
	props := parquet.NewWriterProperties(opts...)
	w, err := pqarrow.NewFileWriter(b.b.Schema(), buf, props, pqarrow.NewArrowWriterProperties(pqarrow.WithStoreSchema()))
	if err != nil {
		return nil, fmt.Errorf("exports: parquet: %w", err)
	}
	return &columnarWriter{dst: dst, buf: buf, b: b, w: w}, nil
}

func (c *columnarWriter) Write(row []any) error { return c.b.add(row) }
func (c *columnarWriter) Buffered() int         { return c.b.size }

func (c *columnarWriter) Flush() error {
	if err := c.b.flush(c.w.Write); err != nil {
		return err
	}
	return flushBuffered(c.buf, c.dst)
}

func (c *columnarWriter) Close() error {
	if err := c.Flush(); err != nil {
		return err
	}
	if err := c.w.Close(); err != nil {
		return fmt.Errorf("exports: write: %w", err)
	}
	c.b.b.Release()
	return flushBuffered(c.buf, c.dst)
}

// flushBuffered writes buf out to dst, then flushes dst.
func flushBuffered(buf *bufio.Writer, dst io.Writer) error {
	if err := buf.Flush(); err != nil {
		return fmt.Errorf("exports: write: %w", err)
	}
	return flushDest(dst)
}
