package clickhouse

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/proto"
)

// fakeInserter stores rows like a table would, refusing any insert that
// holds a row whose id starts with "refuse", or (tooBig > 0) more rows than
// tooBig.
type fakeInserter struct {
	mu     sync.Mutex
	tooBig int
	calls  int
	rows   []Row
}

var errTransient = errors.New("connection reset")

func (f *fakeInserter) Insert(_ context.Context, rows []Row) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	for _, r := range rows {
		if strings.HasPrefix(r.ID, "refuse") {
			return &RefusedError{Err: fmt.Errorf("code: 395, message: row %s", r.ID)}
		}
	}
	if f.tooBig > 0 && len(rows) > f.tooBig {
		return &RefusedError{Err: errors.New("code: 252, message: Too many partitions for single INSERT block"), TooBig: true}
	}
	f.rows = append(f.rows, rows...)
	return nil
}

func (f *fakeInserter) ids() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.rows {
		out = append(out, r.ID)
	}
	return out
}

func rowsWithIDs(ids ...string) []Row {
	rows := make([]Row, len(ids))
	for i, id := range ids {
		rows[i] = Row{Tenant: "t", ID: id}
	}
	return rows
}

func TestBisect(t *testing.T) {
	for _, tc := range []struct {
		name     string
		ids      []string
		tooBig   int
		inserted []string
		refused  []int
		maxCalls int
	}{
		{"all good: one insert", []string{"a", "b", "c", "d"}, 0, []string{"a", "b", "c", "d"}, nil, 1},
		{"one bad row", []string{"a", "b", "refuse1", "c", "d"}, 0, []string{"a", "b", "c", "d"}, []int{2}, 9},
		{"bad rows at both ends", []string{"refuse0", "a", "b", "c", "d", "e", "f", "refuse7"}, 0, []string{"a", "b", "c", "d", "e", "f"}, []int{0, 7}, 15},
		{"every row bad", []string{"refuse0", "refuse1", "refuse2"}, 0, nil, []int{0, 1, 2}, 5},
		{"one row, bad", []string{"refuse0"}, 0, nil, []int{0}, 1},
		{"too big, no bad row: split, nothing dropped", []string{"a", "b", "c", "d", "e"}, 2, []string{"a", "b", "c", "d", "e"}, nil, 9},
		{"nothing to insert", nil, 0, nil, nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeInserter{tooBig: tc.tooBig}
			b := newBisect(rowsWithIDs(tc.ids...))
			n := 0
			if err := b.run(context.Background(), f, time.Second, func(k int) { n += k }); err != nil {
				t.Fatal(err)
			}
			if got := f.ids(); !slices.Equal(got, tc.inserted) {
				t.Errorf("inserted %v, want %v (in order, each once)", got, tc.inserted)
			}
			if n != len(tc.inserted) {
				t.Errorf("reported %d inserted, want %d", n, len(tc.inserted))
			}
			var refused []int
			for _, r := range b.refused {
				refused = append(refused, r.index)
				if !strings.Contains(r.err.Error(), tc.ids[r.index]) {
					t.Errorf("refusal of %s carries %q", tc.ids[r.index], r.err)
				}
			}
			if !slices.Equal(refused, tc.refused) {
				t.Errorf("refused %v, want %v", refused, tc.refused)
			}
			if f.calls > tc.maxCalls {
				t.Errorf("%d inserts, want at most %d", f.calls, tc.maxCalls)
			}
		})
	}
}

// A transient error stops the bisect; running it again resumes where it
// stopped, inserting nothing twice.
func TestBisectResumesAfterTransientError(t *testing.T) {
	ids := []string{"a", "b", "refuse2", "c", "d", "e", "f", "g"}
	f := &fakeInserter{}
	b := newBisect(rowsWithIDs(ids...))
	// The whole batch and [0,4) are refused (a bad row), [0,2) is
	// inserted, and then [2,4) fails.
	failing := &failNth{in: f, n: 4}
	if err := b.run(context.Background(), failing, time.Second, func(int) {}); !errors.Is(err, errTransient) {
		t.Fatalf("got %v, want the transient error", err)
	}
	if got := f.ids(); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("before the error: inserted %v", got)
	}
	if err := b.run(context.Background(), f, time.Second, func(int) {}); err != nil {
		t.Fatal(err)
	}
	if got := f.ids(); !slices.Equal(got, []string{"a", "b", "c", "d", "e", "f", "g"}) {
		t.Fatalf("inserted %v", got)
	}
	if len(b.refused) != 1 || b.refused[0].index != 2 {
		t.Fatalf("refused %+v", b.refused)
	}
}

// failNth fails its n-th insert transiently and passes the others on.
type failNth struct {
	in       Inserter[Row]
	n, calls int
}

func (o *failNth) Insert(ctx context.Context, rows []Row) error {
	o.calls++
	if o.calls == o.n {
		return errTransient
	}
	return o.in.Insert(ctx, rows)
}

// A single row refused as too big is retried, never dropped.
func TestBisectTooBigSingleRowIsTransient(t *testing.T) {
	b := newBisect(rowsWithIDs("a", "b"))
	err := b.run(context.Background(), alwaysTooBig{}, time.Second, func(int) {})
	var re *RefusedError
	if !errors.As(err, &re) || !re.TooBig {
		t.Fatalf("got %v, want the too-big refusal returned", err)
	}
	if len(b.refused) != 0 || len(b.todo) == 0 {
		t.Fatalf("refused %v, todo %v: the row must stay to be retried", b.refused, b.todo)
	}
}

type alwaysTooBig struct{}

func (alwaysTooBig) Insert(context.Context, []Row) error {
	return &RefusedError{Err: errors.New("code: 241, message: Memory limit exceeded"), TooBig: true}
}

// The inserter's deadline reaches each insert.
func TestBisectBoundsEachInsert(t *testing.T) {
	var got time.Duration
	ins := inserterFunc(func(ctx context.Context, _ []Row) error {
		d, ok := ctx.Deadline()
		if !ok {
			return errors.New("no deadline")
		}
		got = time.Until(d)
		return nil
	})
	if err := newBisect(rowsWithIDs("a")).run(context.Background(), ins, 3*time.Second, func(int) {}); err != nil {
		t.Fatal(err)
	}
	if got <= 2*time.Second || got > 3*time.Second {
		t.Fatalf("deadline in %s, want about 3s", got)
	}
}

type inserterFunc func(context.Context, []Row) error

func (f inserterFunc) Insert(ctx context.Context, rows []Row) error { return f(ctx, rows) }

func TestClassify(t *testing.T) {
	ex := func(code int32, msg string) error {
		return fmt.Errorf("clickhouse [send batch]: %w", &proto.Exception{Code: code, Message: msg})
	}
	for _, tc := range []struct {
		name    string
		err     error
		refused bool
		tooBig  bool
	}{
		{"throwIf", ex(395, "Value passed to 'throwIf' function is non zero"), true, false},
		{"value out of range", ex(321, "out of range"), true, false},
		{"too many partitions", ex(252, "Too many partitions for single INSERT block (more than 100)"), true, true},
		{"memory limit", ex(241, "Memory limit (for query) exceeded"), true, true},
		{"too many parts: wait for merges", ex(252, "Too many parts (300). Merges are processing significantly slower than inserts"), false, false},
		{"table dropped", ex(60, "Table certnode.results doesn't exist"), false, false},
		{"read-only replica", ex(242, "Table is in readonly mode"), false, false},
		{"not enough space", ex(243, "Cannot reserve 1.00 MiB"), false, false},
		{"network", errors.New("read tcp 127.0.0.1:9000: connection reset by peer"), false, false},
		{"deadline", context.DeadlineExceeded, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			re := classify(tc.err)
			if (re != nil) != tc.refused {
				t.Fatalf("refused = %v, want %v", re != nil, tc.refused)
			}
			if re != nil && (re.TooBig != tc.tooBig || !errors.Is(re, tc.err)) {
				t.Fatalf("got %+v", re)
			}
		})
	}
}
