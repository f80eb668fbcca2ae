package exports

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/certnode/certnode/internal/chconn"
	"github.com/certnode/certnode/internal/envelope"
)

// Config tunes an Exporter; zero values take the defaults.
type Config struct {
	// CursorKey authenticates cursors (HMAC-SHA256): at least
	// MinCursorKeyBytes, secret, and the same on every server that may
	// resume an export.
	CursorKey []byte
	// PageRows is the rows of one query (default 100,000): each page
	// is a query of its own, read past the last row of the one before.
	PageRows int
	// BatchBytes ends a batch (an Arrow record batch, a Parquet row group,
	// a flush of the destination) when it holds this many bytes (default
	// 2 MiB: about 2,700 results with receipts), BatchRows when it holds
	// this many rows (default 65,536).
	BatchRows, BatchBytes int
	// BlockRows is ClickHouse's max_block_size for exports (default 512):
	// the client holds a few blocks at once. Exporting a million results
	// with receipts, blocks of 4096 rows took about 20 MiB more resident
	// memory than blocks of 1024, which took about 5 MiB more than 512.
	BlockRows int
	// Logger gets a line per export (default slog.Default()).
	Logger *slog.Logger
	// Opener decrypts the payloads stored sealed (internal/envelope):
	// without it, an export of receipts or bodies fails (ErrNoOpener).
	Opener Opener
}

// ErrNoOpener refuses an export of payloads by an Exporter that cannot
// decrypt them.
var ErrNoOpener = errors.New("exports: payloads are stored encrypted, and this exporter has no opener")

// Opener decrypts a payload of org's stored sealed.
type Opener interface {
	Open(ctx context.Context, org, v string) ([]byte, error)
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	if len(c.CursorKey) < MinCursorKeyBytes {
		errs = append(errs, fmt.Errorf("exports: the cursor key needs at least %d bytes", MinCursorKeyBytes))
	}
	for _, v := range []struct {
		name string
		n    int
	}{{"page rows", c.PageRows}, {"batch rows", c.BatchRows}, {"batch bytes", c.BatchBytes}, {"block rows", c.BlockRows}} {
		if v.n < 0 {
			errs = append(errs, fmt.Errorf("exports: %s must not be negative", v.name))
		}
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.PageRows, 100_000)
	def(&c.BatchRows, 65536)
	def(&c.BatchBytes, 2<<20)
	def(&c.BlockRows, 512)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// querier is the part of a ClickHouse connection exports use.
type querier interface {
	Query(ctx context.Context, query string, args ...any) (driver.Rows, error)
	Close() error
}

// Exporter streams exports out of ClickHouse.
type Exporter struct {
	conn    querier
	cfg     Config
	sources map[Kind]*source // tests read other tables
}

// Open connects to ClickHouse.
func Open(ctx context.Context, o chconn.Options, cfg Config) (*Exporter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	conn, err := chconn.Open(ctx, o)
	if err != nil {
		return nil, err
	}
	return &Exporter{conn: conn, cfg: cfg.withDefaults(), sources: sources}, nil
}

// Close closes the connection.
func (e *Exporter) Close() error { return e.conn.Close() }

// Options tune one Export.
type Options struct {
	// Limit stops the export after this many rows (0: none), to export in
	// parts: Result.More says to go on from Result.Cursor.
	Limit int64
	// Until ends the export after the row it names, a cursor of the same
	// query (PageEnd's): the page (Query.Cursor, Until] is exact and the
	// same each time it is exported, whatever rows come later.
	Until string
	// Progress is called after each batch is written to the destination,
	// with where the export stands (on the goroutine of Export).
	Progress func(Result)
}

// Result says where an export stands.
type Result struct {
	// Rows and Bytes are what this call wrote.
	Rows, Bytes int64
	// Total is the rows of the export from its beginning, resumes
	// included.
	Total int64
	// Cursor resumes after the last row counted: another Export of the
	// same query with it writes the rest, CSV without its header (append
	// it), Arrow and Parquet as a file of their own. Empty when no row was
	// ever written: start again.
	Cursor string
	// More is set when the export stopped at Options.Limit.
	More bool
}

// Export writes q's rows to w in format f, sorted by the kind's key, each
// row once, and returns where it ended. w is flushed after each batch
// when it has a Flush method. On an error after the output began, the
// Result is that of the last batch written out whole, whose Cursor
// resumes without losing or repeating a row (for appended CSV and NDJSON,
// after cutting w back to Result.Bytes). Errors of q or its cursors wrap
// ErrBadQuery (ErrBadCursor), and come before anything is written.
func (e *Exporter) Export(ctx context.Context, w io.Writer, q Query, f Format, opts Options) (Result, error) {
	start := time.Now()
	res, err := e.export(ctx, w, q, f, opts)
	log := e.cfg.Logger.With("org", q.Org, "kind", q.Kind, "format", f, "rows", res.Rows, "bytes", res.Bytes,
		"resumed", q.Cursor != "", "seconds", time.Since(start).Seconds())
	switch {
	case errors.Is(err, ErrBadQuery):
		log.Info("export refused", "err", err)
	case err != nil:
		log.Warn("export failed", "err", err)
	default:
		log.Info("export", "more", res.More)
	}
	return res, err
}

func (e *Exporter) export(ctx context.Context, w io.Writer, q Query, f Format, opts Options) (Result, error) {
	if err := q.Validate(); err != nil {
		return Result{}, err
	}
	if _, err := ParseFormat(string(f)); err != nil {
		return Result{}, err
	}
	if opts.Limit < 0 {
		return Result{}, fmt.Errorf("%w: negative limit", ErrBadQuery)
	}
	src := e.sources[q.Kind]
	identity := q.identity()
	pos, err := e.position(src, identity, q.Cursor)
	if err != nil {
		return Result{}, err
	}
	end, err := e.position(src, identity, opts.Until)
	if err != nil {
		return Result{}, err
	}
	cols := src.columns(q)
	if e.cfg.Opener == nil && slices.ContainsFunc(cols, func(c column) bool { return c.sealed }) {
		return Result{}, ErrNoOpener
	}
	keyAt := src.keyIn(cols)
	cw := &countingWriter{w: w}
	rw, err := NewWriter(cw, f, schemaOf(cols), WriterOptions{NoHeader: q.Cursor != ""})
	if err != nil {
		return Result{}, err
	}

	done := Result{Total: int64(pos.rows), Cursor: q.Cursor} // as of the last batch written out
	var rows, inBatch int64
	checkpoint := func() error {
		if err := rw.Flush(); err != nil {
			return err
		}
		done.Rows, done.Bytes, done.Total = rows, cw.n, int64(pos.rows)
		if pos.key != nil {
			done.Cursor = encodeCursor(e.cfg.CursorKey, identity, pos)
		}
		inBatch = 0
		if opts.Progress != nil {
			opts.Progress(done)
		}
		return ctx.Err()
	}
	sc := newScanner(cols)
	sc.open = func(v string) ([]byte, error) { return e.cfg.Opener.Open(ctx, q.Org, v) }
	// One block read ahead is enough to keep the writer busy.
	qctx := clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"max_block_size": e.cfg.BlockRows}),
		clickhouse.WithBlockBufferSize(1))
pages:
	for {
		size := e.cfg.PageRows
		if opts.Limit > 0 {
			size = int(min(int64(size), opts.Limit-rows))
		}
		if size == 0 {
			done.More = true
			break
		}
		upTo, err := e.boundary(qctx, src, q, pos.key, size)
		if err != nil {
			return done, exportErr(ctx, q.Kind, err)
		}
		last := upTo == nil
		if end.key != nil && (last || slices.Compare(upTo, end.key) >= 0) {
			upTo, last = end.key, true
		}
		sql, args := src.pageSQL(q, cols, pos.key, upTo)
		err = e.each(qctx, sql, args, func(r driver.Rows) error {
			if opts.Limit > 0 && rows == opts.Limit {
				return errLimit // rows that came since the boundary made the page longer
			}
			row, err := sc.scan(r)
			if err != nil {
				return err
			}
			if err := rw.Write(row); err != nil {
				return err
			}
			if pos.key == nil {
				pos.key = make([]string, len(keyAt))
			}
			for i, at := range keyAt {
				pos.key[i] = row[at].(string)
			}
			pos.rows++
			rows, inBatch = rows+1, inBatch+1
			if inBatch >= int64(e.cfg.BatchRows) || rw.Buffered() >= e.cfg.BatchBytes {
				return checkpoint()
			}
			return nil
		})
		switch {
		case err == errLimit: // the next round ends the export
		case err != nil:
			return done, exportErr(ctx, q.Kind, err)
		case last:
			break pages
		default:
			// Past upTo whatever the page held: rows deleted since the
			// boundary must not keep the export in place.
			pos.key = slices.Clone(upTo)
		}
	}
	if err := checkpoint(); err != nil {
		return done, exportErr(ctx, q.Kind, err)
	}
	if err := rw.Close(); err != nil {
		return done, exportErr(ctx, q.Kind, err)
	}
	done.Bytes = cw.n
	return done, nil
}

// position decodes a cursor of the export whose identity is given; ""
// is the start.
func (e *Exporter) position(src *source, identity []byte, cursor string) (position, error) {
	if cursor == "" {
		return position{}, nil
	}
	return decodeCursor(e.cfg.CursorKey, identity, len(src.key), cursor)
}

// PageEnd returns the cursor of the rows-th row past q.Cursor: the
// Result.Cursor of an Export of q that wrote rows rows, for Options.Until
// to export that page again, exactly. It is "" when fewer rows follow.
// It reads the keys alone, as Export finds the end of each page.
func (e *Exporter) PageEnd(ctx context.Context, q Query, rows int64) (string, error) {
	if err := q.Validate(); err != nil {
		return "", err
	}
	if rows < 1 {
		return "", fmt.Errorf("%w: a page needs at least one row", ErrBadQuery)
	}
	src := e.sources[q.Kind]
	identity := q.identity()
	pos, err := e.position(src, identity, q.Cursor)
	if err != nil {
		return "", err
	}
	key, err := e.boundary(ctx, src, q, pos.key, int(rows))
	if err != nil {
		return "", exportErr(ctx, q.Kind, err)
	}
	if key == nil {
		return "", nil
	}
	return encodeCursor(e.cfg.CursorKey, identity, position{rows: pos.rows + uint64(rows), key: key}), nil
}

// Estimate counts the rows of q (from its start, whatever q.Cursor), for
// progress bars: cheaply, so results, receipts and webhook attempts
// count the copies ClickHouse has not merged away yet, which an export
// writes once: the count may be a little high. Usage, collapsed by id
// anyway, counts exactly.
func (e *Exporter) Estimate(ctx context.Context, q Query) (int64, error) {
	if err := q.Validate(); err != nil {
		return 0, err
	}
	sql, args := e.sources[q.Kind].countSQL(q)
	var n uint64
	if err := e.each(ctx, sql, args, func(r driver.Rows) error { return r.Scan(&n) }); err != nil {
		return 0, exportErr(ctx, q.Kind, err)
	}
	return int64(n), nil
}

// errLimit ends a page at Options.Limit.
var errLimit = errors.New("exports: limit reached")

// boundary returns the key of the size-th row past after: the end of the
// next page; nil when fewer rows follow.
func (e *Exporter) boundary(ctx context.Context, src *source, q Query, after []string, size int) ([]string, error) {
	sql, args, cols := src.boundarySQL(q, after, size-1)
	sc, at := newScanner(cols), src.keyIn(cols)
	var key []string
	err := e.each(ctx, sql, args, func(r driver.Rows) error {
		row, err := sc.scan(r)
		if err != nil {
			return err
		}
		for _, i := range at {
			key = append(key, row[i].(string))
		}
		return nil
	})
	return key, err
}

// exportErr names the context's end rather than how the query noticed it.
func exportErr(ctx context.Context, kind Kind, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("exports: %s: %w", kind, context.Cause(ctx))
	}
	return err
}

// each runs a page's query and calls row on each row; ending early (an
// error) cancels the query rather than reading the rest of the page.
func (e *Exporter) each(ctx context.Context, sql string, args []any, row func(driver.Rows) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rows, err := e.conn.Query(ctx, sql, args...)
	if err != nil {
		return fmt.Errorf("exports: query: %w", err)
	}
	defer func() {
		cancel()
		rows.Close()
	}()
	for rows.Next() {
		if err := row(rows); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("exports: query: %w", err)
	}
	return nil
}

// scanner reads rows of a query into export rows.
type scanner struct {
	cols []column
	dest []any
	row  []any
	// open decrypts the sealed columns.
	open func(string) ([]byte, error)
}

func newScanner(cols []column) *scanner {
	s := &scanner{cols: cols, dest: make([]any, len(cols)), row: make([]any, len(cols))}
	for i, c := range cols {
		switch c.Type {
		case String, JSONText:
			s.dest[i] = new(string)
		case Int64:
			s.dest[i] = new(int64)
		case Uint64:
			s.dest[i] = new(uint64)
		case Bool:
			s.dest[i] = new(bool)
		case Timestamp:
			s.dest[i] = new(time.Time)
		}
	}
	return s
}

// scan returns the next row, reusing its slice, its sealed columns
// opened: JSON text that is empty
// and zero times of zeroNull columns are null.
func (s *scanner) scan(r driver.Rows) ([]any, error) {
	if err := r.Scan(s.dest...); err != nil {
		return nil, err
	}
	for i, c := range s.cols {
		switch d := s.dest[i].(type) {
		case *string:
			v := *d
			if c.sealed && v != "" {
				plain, err := s.open(v)
				if err != nil && !errors.Is(err, envelope.ErrDestroyed) {
					return nil, err
				}
				v = string(plain) // erased with its key: as if blanked
			}
			s.row[i] = v
			if c.Type == JSONText && v == "" {
				s.row[i] = nil
			}
		case *int64:
			s.row[i] = *d
		case *uint64:
			s.row[i] = *d
		case *bool:
			s.row[i] = *d
		case *time.Time:
			s.row[i] = d.UTC()
			if c.zeroNull && d.Unix() <= 0 {
				s.row[i] = nil
			}
		}
	}
	return s.row, nil
}

// countingWriter counts what reaches w, and passes flushes on.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func (c *countingWriter) Flush() error { return flushDest(c.w) }
