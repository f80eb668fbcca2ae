//go:build integration

package exports

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// observer calls page before each query that finds a page's end; its
// lock guards what page changes.
type observer struct {
	querier
	mu   sync.Mutex
	page func()
}

func (o *observer) Query(ctx context.Context, sql string, args ...any) (driver.Rows, error) {
	if strings.HasSuffix(sql, "LIMIT ?, 1") {
		o.mu.Lock()
		if o.page != nil {
			o.page()
		}
		o.mu.Unlock()
	}
	return o.querier.Query(ctx, sql, args...)
}

func (o *observer) observe(page func()) { o.locked(func() { o.page = page }) }

func (o *observer) locked(f func()) {
	o.mu.Lock()
	defer o.mu.Unlock()
	f()
}

// setUpJobs writes a dataset and returns an exporter observed at each page.
func setUpJobs(t *testing.T, ctx context.Context) (*Exporter, *observer, *dataset) {
	t.Helper()
	e := openClickHouse(t, ctx, Config{PageRows: 500, BatchRows: 128})
	conn := e.conn.(driver.Conn)
	d := newDataset(testenv.RandomSuffix())
	t.Cleanup(func() { removeOrgs(t, conn, d.org, d.other) })
	d.write(t, ctx, conn, nil)
	o := &observer{querier: e.conn}
	e.conn = o
	return e, o, d
}

// Against the real ClickHouse: pages cut by PageEnd and exported up to it
// are exact and repeatable, and Estimate counts at least the rows (usage
// exactly).
func TestPagesAndEstimateOnClickHouse(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e, _, d := setUpJobs(t, ctx)
	for _, kq := range []Query{
		{Kind: Results, Receipt: true},
		{Kind: Usage, Filters: map[string]string{"status": "signed", "source": "kafka"}},
		{Kind: WebhookAttempts, Bodies: true},
	} {
		q := kq
		q.Org, q.From, q.To = d.org, d.from, d.to
		t.Run(string(q.Kind), func(t *testing.T) {
			want := int64(len(d.expected(q)))
			n, err := e.Estimate(ctx, q)
			if err != nil || n < want || q.Kind == Usage && n != want {
				t.Fatalf("estimate %d, %v; %d rows", n, err, want)
			}
			t.Logf("estimate %d of %d rows", n, want)
			whole, _ := exportTo(t, ctx, e, q, CSV, Options{})
			var joined bytes.Buffer
			p := q
			for {
				until, err := e.PageEnd(ctx, p, 97)
				if err != nil {
					t.Fatal(err)
				}
				page, res := exportTo(t, ctx, e, p, CSV, Options{Until: until})
				if again, _ := exportTo(t, ctx, e, p, CSV, Options{Until: until}); !bytes.Equal(again, page) {
					t.Fatal("a page exported again differs")
				}
				joined.Write(page)
				if until == "" {
					if res.Total != want || res.Rows > 97 {
						t.Fatalf("the last page: %+v", res)
					}
					break
				}
				if res.Rows != 97 || res.Cursor != until || res.More {
					t.Fatalf("page %+v, want 97 rows up to %q", res, until)
				}
				p.Cursor = until
			}
			if !bytes.Equal(joined.Bytes(), whole) {
				t.Fatal("the pages differ from the whole export")
			}
		})
	}
}

// Against the real ClickHouse: a job runs to done, its record moving as
// it goes, and its file is the export of its request; a CSV job stopped
// with its server resumes at the next start into the same bytes as an
// export never stopped.
func TestJobOnClickHouse(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e, o, d := setUpJobs(t, ctx)
	dir := filepath.Join(t.TempDir(), "jobs")
	r := schemas.ExportRequest{Kind: "results", Format: "csv", From: d.from, To: d.to, Receipt: true}
	q := queryOf(d.org, r, "")
	want, _ := exportTo(t, ctx, e, q, CSV, Options{})
	var wholePages int
	o.observe(func() { wholePages++ })
	exportTo(t, ctx, e, q, CSV, Options{})

	t.Run("done", func(t *testing.T) {
		j, _ := newTestJobs(t, e, dir, nil)
		for _, f := range []Format{CSV, Parquet} {
			r := r
			r.Format = string(f)
			job, err := j.Start(d.org, r)
			if err != nil {
				t.Fatal(err)
			}
			var seen []schemas.ExportJob
			o.observe(func() {
				if rec, err := j.load(job.ID); err == nil && rec.Job.Status == schemas.ExportRunning {
					seen = append(seen, rec.Job)
				}
			})
			stop := runJobs(t, j)
			job = waitJob(t, j, d.org, job.ID, schemas.ExportDone, schemas.ExportFailed)
			stop()
			o.observe(nil)
			direct, _ := exportTo(t, ctx, e, q, f, Options{})
			if got := download(t, j, job); job.Status != schemas.ExportDone || !bytes.Equal(got, direct) {
				t.Fatalf("%+v: the file (%d bytes) is not the export (%d bytes)", job, len(got), len(direct))
			}
			if job.Rows != int64(len(d.expected(q))) || job.EstimatedRows < job.Rows || job.Progress != 1 {
				t.Fatalf("%+v", job)
			}
			if len(seen) < 3 || seen[len(seen)-1].Rows <= seen[1].Rows || seen[len(seen)-1].Progress <= 0 || seen[len(seen)-1].Progress > 0.99 {
				t.Fatalf("the record moved %d times: %+v", len(seen), seen)
			}
		}
	})

	t.Run("resumed", func(t *testing.T) {
		j, _ := newTestJobs(t, e, dir, nil)
		job, err := j.Start(d.org, r)
		if err != nil {
			t.Fatal(err)
		}
		rctx, stop := context.WithCancel(ctx)
		pages := 0
		o.observe(func() {
			if pages++; pages == 3 {
				stop()
			}
		})
		if err := j.Run(rctx); err != nil {
			t.Fatal(err)
		}
		rec := rawRecord(t, j, job.ID)
		if rec.Job.Status != schemas.ExportRunning || rec.Cursor == "" || rec.Job.Rows == 0 {
			t.Fatalf("stopped: %+v", rec)
		}
		part := j.filePath(&rec) + ".part"
		f, err := os.OpenFile(part, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString("a row cut sh"); err != nil || f.Close() != nil {
			t.Fatal(err)
		}
		o.locked(func() { pages = 0 })
		o.observe(func() { pages++ })
		again, _ := newTestJobs(t, e, dir, nil)
		runJobs(t, again)
		done := waitJob(t, again, d.org, job.ID, schemas.ExportDone, schemas.ExportFailed)
		if got := download(t, again, done); done.Status != schemas.ExportDone || !bytes.Equal(got, want) {
			t.Fatalf("%+v: the file (%d bytes) is not the export never stopped (%d bytes)", done, len(got), len(want))
		}
		o.locked(func() {
			if pages >= wholePages {
				t.Errorf("the resumed job read %d pages, the whole export %d", pages, wholePages)
			}
		})
		if _, err := again.Cancel(d.org, job.ID); err != nil {
			t.Fatal(err)
		}
		id, expires, sig := linkParts(t, done)
		if _, _, err := again.Open(id, expires, sig); !errors.Is(err, schemas.ErrExportLink) {
			t.Errorf("the canceled job's link: %v", err)
		}
	})
}
