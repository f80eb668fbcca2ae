package exports

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/schemas"
)

// testClock moves on by step at each reading, so that every batch of a
// job is a second after the one before, and its progress saved.
type testClock struct {
	mu   sync.Mutex
	now  time.Time
	step time.Duration
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(c.step)
	return c.now
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

var linkKey = []byte("a download link key of 32 bytes.")

// newTestJobs runs jobs on e in dir (a new one when ""), one at a time:
// the fake database serves one export at once.
func newTestJobs(t *testing.T, e *Exporter, dir string, edit func(*JobsConfig)) (*Jobs, *testClock) {
	t.Helper()
	clock := &testClock{now: time.Date(2026, 6, 2, 10, 0, 0, 0, time.UTC), step: 2 * time.Second}
	cfg := JobsConfig{Dir: cmpOr(dir, filepath.Join(t.TempDir(), "jobs")), LinkKey: linkKey, Node: "node-1", Workers: 1,
		Logger: slog.New(slog.DiscardHandler), Now: clock.Now}
	if edit != nil {
		edit(&cfg)
	}
	j, err := NewJobs(e, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return j, clock
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// runJobs runs j until the returned function stops it.
func runJobs(t *testing.T, j *Jobs) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- j.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// waitJob waits until org's job id has one of the statuses.
func waitJob(t *testing.T, j *Jobs, org, id string, statuses ...string) schemas.ExportJob {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		job, err := j.Get(org, id)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(statuses, job.Status) {
			return job
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s is %s, want %v", id, job.Status, statuses)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// download opens the job's download link and reads its file.
func download(t *testing.T, j *Jobs, job schemas.ExportJob) []byte {
	t.Helper()
	id, expires, sig := linkParts(t, job)
	f, got, err := j.Open(id, expires, sig)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got.ID != job.ID || got.Status != schemas.ExportDone {
		t.Fatalf("opened %+v", got)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func linkParts(t *testing.T, job schemas.ExportJob) (id, expires, signature string) {
	t.Helper()
	u, err := url.Parse(job.DownloadURL)
	if err != nil {
		t.Fatal(err)
	}
	id, ok := strings.CutSuffix(strings.TrimPrefix(u.Path, "/v1/export-jobs/"), "/file")
	if !ok || u.Host != "" || len(u.Query()) != 2 {
		t.Fatalf("download URL %q", job.DownloadURL)
	}
	return id, u.Query().Get("expires"), u.Query().Get("signature")
}

// files lists dir's files but the nodes' heartbeats.
func files(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".node-") {
			names = append(names, e.Name())
		}
	}
	return names
}

// exported is the direct export of the request of rows results, on a
// database of its own (the jobs' is their worker's).
func exported(t *testing.T, rows int, r schemas.ExportRequest) []byte {
	t.Helper()
	var out bytes.Buffer
	if _, err := newTestExporter(fakeResults(rows)).Export(t.Context(), &out, queryOf("acme", r, ""), Format(r.Format), Options{}); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func request(f Format) schemas.ExportRequest {
	r := resultsRequest
	r.Format = string(f)
	return r
}

func TestJobsConfig(t *testing.T) {
	err := JobsConfig{LinkKey: []byte("short"), Keep: -1, Workers: -1}.Validate()
	for _, want := range []string{"directory", "link key needs at least 32 bytes", "keep", "workers"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v does not say %q", err, want)
		}
	}
	dir := filepath.Join(t.TempDir(), "a", "jobs")
	j, err := NewJobs(newTestExporter(&fakeDB{}), JobsConfig{Dir: dir, LinkKey: linkKey})
	if err != nil {
		t.Fatal(err)
	}
	if c := j.cfg; c.Workers != 2 || c.MaxPerOrg != 3 || c.MaxQueued != 64 || c.Keep != 24*time.Hour || c.LinkTTL != 15*time.Minute || c.Node == "" {
		t.Errorf("defaults: %+v", c)
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("directory: %v %v", st.Mode(), err)
	}
}

// A job runs to done in every format: its file, downloaded by its link,
// is the export of its request, and its record moved on as it ran.
func TestJobRunsToDone(t *testing.T) {
	db := fakeResults(2000)
	e := newTestExporter(db)
	j, _ := newTestJobs(t, e, "", func(c *JobsConfig) { c.MaxPerOrg = len(Formats) })
	var ids []string
	for _, f := range Formats {
		job, err := j.Start("acme", request(f))
		if err != nil {
			t.Fatal(err)
		}
		if !validJobID(job.ID) || job.Status != schemas.ExportQueued || job.Org != "acme" || job.CreatedAt.IsZero() ||
			job.FileName != "results-acme-20260501T000000Z-20260601T000000Z"+f.Extension() {
			t.Fatalf("started %+v", job)
		}
		ids = append(ids, job.ID)
	}
	// The CSV job's record, read at each page of its export.
	var mu sync.Mutex
	var seen []schemas.ExportJob
	db.changes = func(rows [][]any, _, _ int) [][]any {
		if rec, err := j.load(ids[0]); err == nil && rec.Job.Status == schemas.ExportRunning {
			mu.Lock()
			seen = append(seen, rec.Job)
			mu.Unlock()
		}
		return rows
	}
	runJobs(t, j)
	for i, f := range Formats {
		job := waitJob(t, j, "acme", ids[i], schemas.ExportDone, schemas.ExportFailed)
		want := exported(t, 2000, request(f))
		if job.Status != schemas.ExportDone || job.Rows != 2000 || job.EstimatedRows != 2000 || job.Bytes != int64(len(want)) || job.Progress != 1 ||
			job.StartedAt.IsZero() || job.FinishedAt.Before(job.StartedAt) || !job.ExpiresAt.Equal(job.FinishedAt.Add(24*time.Hour)) ||
			!strings.HasPrefix(job.DownloadURL, "/v1/export-jobs/"+job.ID+"/file?expires=") || job.DownloadExpiresAt.IsZero() {
			t.Fatalf("%s: %+v", f, job)
		}
		if got := download(t, j, job); !bytes.Equal(got, want) {
			t.Fatalf("%s: the file (%d bytes) is not the export (%d bytes)", f, len(got), len(want))
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) < 3 {
		t.Fatalf("the record moved %d times", len(seen))
	}
	for i, s := range seen {
		if s.Rows == 0 && i > 0 || i > 0 && s.Rows < seen[i-1].Rows || s.Progress > 0.99 || s.EstimatedRows != 2000 {
			t.Fatalf("progress %d: %+v after %+v", i, s, seen[max(i-1, 0)])
		}
	}
	if last := seen[len(seen)-1]; last.Rows < 1000 || last.Progress < 0.5 {
		t.Errorf("last progress seen: %d rows, %.2f", last.Rows, last.Progress)
	}
	for _, name := range files(t, j.cfg.Dir) {
		if strings.HasSuffix(name, ".part") || strings.HasSuffix(name, ".tmp") {
			t.Errorf("left %s", name)
		}
	}
	list, err := j.List("acme")
	if err != nil || len(list) != len(Formats) || list[0].DownloadURL == "" {
		t.Fatalf("list: %d jobs, %v", len(list), err)
	}
}

// A link opens its job's file until it expires; any change to it, or the
// job not done, is schemas.ErrExportLink; swept, the job is gone.
func TestJobLinks(t *testing.T) {
	j, clock := newTestJobs(t, newTestExporter(fakeResults(300)), "", nil)
	started, err := j.Start("acme", request(NDJSON))
	if err != nil {
		t.Fatal(err)
	}
	stop := runJobs(t, j)
	job := waitJob(t, j, "acme", started.ID, schemas.ExportDone)
	stop()
	if !bytes.Equal(download(t, j, job), exported(t, 300, request(NDJSON))) {
		t.Fatal("the file is not the export")
	}
	id, expires, sig := linkParts(t, job)
	if expires != strconv.FormatInt(job.DownloadExpiresAt.Unix(), 10) {
		t.Fatalf("expires %s, download_expires_at %s", expires, job.DownloadExpiresAt)
	}
	queued, err := j.Start("acme", request(CSV)) // never run
	if err != nil {
		t.Fatal(err)
	}
	flip := func(s string, i int) string { return s[:i] + string(s[i]^1) + s[i+1:] }
	for name, link := range map[string][3]string{
		"another id":          {newJobID(), expires, sig},
		"an id changed":       {flip(id, 10), expires, sig},
		"a path":              {"../" + id, expires, sig},
		"later":               {id, strconv.FormatInt(job.DownloadExpiresAt.Unix()+1, 10), sig},
		"expires spelt again": {id, "0" + expires, sig},
		"a signature changed": {id, expires, flip(sig, 5)},
		"a signature cut":     {id, expires, sig[:len(sig)-1]},
		"padded":              {id, expires, sig + "="},
		"no signature":        {id, expires, ""},
		"not a number":        {id, "soon", sig},
		"a job not done":      {queued.ID, expires, j.sign(queued.ID, expires)},
	} {
		if f, _, err := j.Open(link[0], link[1], link[2]); err != schemas.ErrExportLink {
			t.Errorf("%s: %v", name, err)
			if f != nil {
				f.Close()
			}
		}
	}
	clock.advance(15 * time.Minute)
	if _, _, err := j.Open(id, expires, sig); err != schemas.ErrExportLink {
		t.Errorf("expired: %v", err)
	}
	// A fresh read issues a fresh link, expiring with the file at the latest.
	job, err = j.Get("acme", id)
	if err != nil {
		t.Fatal(err)
	}
	download(t, j, job)
	clock.advance(job.ExpiresAt.Sub(clock.Now()) - 5*time.Minute)
	if job, _ = j.Get("acme", id); !job.DownloadExpiresAt.Equal(job.ExpiresAt) {
		t.Errorf("link expires %s, the file %s", job.DownloadExpiresAt, job.ExpiresAt)
	}
	clock.advance(5 * time.Minute)
	j.sweep()
	if _, err := j.Get("acme", id); err != schemas.ErrExportNotFound {
		t.Errorf("swept: %v", err)
	}
	if _, _, err := j.Open(id, expires, sig); err != schemas.ErrExportLink {
		t.Errorf("swept: %v", err)
	}
	if got := files(t, j.cfg.Dir); len(got) != 1 || got[0] != queued.ID+recordExt {
		t.Errorf("left %v", got)
	}
}

// Only ids of the form Start makes name files.
func TestJobIDs(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		id := newJobID()
		if !validJobID(id) || seen[id] {
			t.Fatalf("%q", id)
		}
		seen[id] = true
	}
	j, _ := newTestJobs(t, newTestExporter(&fakeDB{}), "", nil)
	id := newJobID()
	for _, bad := range []string{"", "exp_", id + "a", id[:len(id)-1], strings.ToUpper(id), "EXP" + id[3:], "exp_../../../../etc/passwd",
		"exp_" + strings.Repeat("a", 23) + "1", "exp_" + strings.Repeat("a", 22) + "/a", "job_" + id[4:], id + "\x00"} {
		if validJobID(bad) {
			t.Errorf("%q is valid", bad)
		}
		if _, err := j.Get("acme", bad); err != schemas.ErrExportNotFound {
			t.Errorf("Get %q: %v", bad, err)
		}
		if _, err := j.Cancel("acme", bad); err != schemas.ErrExportNotFound {
			t.Errorf("Cancel %q: %v", bad, err)
		}
	}
	// A record outside the directory, named as an id would be, is not read.
	outside := filepath.Join(filepath.Dir(j.cfg.Dir), id+recordExt)
	if err := os.WriteFile(outside, []byte(`{"job":{"id":"`+id+`","organization":"acme"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Get("acme", "../"+id); err != schemas.ErrExportNotFound {
		t.Errorf("outside: %v", err)
	}
}

// Start refuses bad requests before queuing anything, and more jobs than
// an organization or the node may have.
func TestJobStartLimits(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "jobs")
	j, _ := newTestJobs(t, newTestExporter(&fakeDB{}), dir, func(c *JobsConfig) { c.MaxPerOrg, c.MaxQueued = 2, 3 })
	for name, r := range map[string]schemas.ExportRequest{
		"format": {Kind: "results", Format: "xlsx", From: from, To: to},
		"kind":   {Kind: "audit", Format: "csv", From: from, To: to},
		"range":  {Kind: "results", Format: "csv"},
		"filter": {Kind: "results", Format: "csv", From: from, To: to, Filters: map[string]string{"tenant": "x"}},
	} {
		if _, err := j.Start("acme", r); !errors.Is(err, schemas.ErrBadExport) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := j.Start("a b", request(CSV)); !errors.Is(err, schemas.ErrBadExport) {
		t.Errorf("organization: %v", err)
	}
	if got := files(t, dir); len(got) != 0 {
		t.Fatalf("refusals left %v", got)
	}
	start := func(org string, want error) schemas.ExportJob {
		t.Helper()
		job, err := j.Start(org, request(CSV))
		if !errors.Is(err, want) || (err == nil) != (want == nil) {
			t.Fatalf("%s: got %v, want %v", org, err, want)
		}
		return job
	}
	first := start("acme", nil)
	start("acme", nil)
	start("acme", schemas.ErrTooManyExports) // the organization's limit
	start("globex", nil)
	start("initech", schemas.ErrTooManyExports) // the node's queue is full
	if _, err := j.Cancel("acme", first.ID); err != nil {
		t.Fatal(err)
	}
	start("initech", nil)
	start("umbrella", schemas.ErrTooManyExports)
	// Another node sharing the directory counts the organization's jobs
	// wherever they are queued.
	other, _ := newTestJobs(t, newTestExporter(&fakeDB{}), dir, func(c *JobsConfig) { c.Node, c.MaxPerOrg = "node-2", 2 })
	if _, err := other.Start("acme", request(CSV)); err != nil {
		t.Errorf("another node: %v", err)
	}
	if _, err := other.Start("acme", request(CSV)); !errors.Is(err, schemas.ErrTooManyExports) {
		t.Errorf("another node: %v", err)
	}
}

// An organization sees its own jobs only, newest first.
func TestJobsOfAnotherOrganization(t *testing.T) {
	j, _ := newTestJobs(t, newTestExporter(&fakeDB{}), "", nil)
	a1, _ := j.Start("acme", request(CSV))
	a2, _ := j.Start("acme", request(Parquet))
	g, _ := j.Start("globex", request(CSV))
	if _, err := j.Get("globex", a1.ID); err != schemas.ErrExportNotFound {
		t.Errorf("Get: %v", err)
	}
	if _, err := j.Cancel("globex", a1.ID); err != schemas.ErrExportNotFound {
		t.Errorf("Cancel: %v", err)
	}
	if job, err := j.Get("acme", a1.ID); err != nil || job.Status != schemas.ExportQueued {
		t.Errorf("after another's cancel: %+v %v", job, err)
	}
	if _, err := j.Get("acme", newJobID()); err != schemas.ErrExportNotFound {
		t.Errorf("unknown id: %v", err)
	}
	list, err := j.List("acme")
	if err != nil || len(list) != 2 || list[0].ID != a2.ID || list[1].ID != a1.ID {
		t.Errorf("acme's: %+v %v", list, err)
	}
	if list, err := j.List("globex"); err != nil || len(list) != 1 || list[0].ID != g.ID {
		t.Errorf("globex's: %+v %v", list, err)
	}
	if list, err := j.List("initech"); err != nil || len(list) != 0 {
		t.Errorf("none: %+v %v", list, err)
	}
}

// rawRecord reads a job's record as written, cancel marker aside.
func rawRecord(t *testing.T, j *Jobs, id string) record {
	t.Helper()
	b, err := os.ReadFile(j.recordPath(id))
	if err != nil {
		t.Fatal(err)
	}
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

// A cancel stops a job queued, running here or on another node, and
// deletes its file, done or not.
func TestJobCancel(t *testing.T) {
	t.Run("queued", func(t *testing.T) {
		j, _ := newTestJobs(t, newTestExporter(fakeResults(500)), "", nil)
		a, _ := j.Start("acme", request(CSV))
		job, err := j.Cancel("acme", a.ID)
		if err != nil || job.Status != schemas.ExportCanceled || job.FinishedAt.IsZero() || job.ExpiresAt.IsZero() {
			t.Fatalf("%+v %v", job, err)
		}
		b, _ := j.Start("acme", request(CSV))
		runJobs(t, j)
		waitJob(t, j, "acme", b.ID, schemas.ExportDone)
		if job := waitJob(t, j, "acme", a.ID, schemas.ExportCanceled); job.Rows != 0 || !job.StartedAt.IsZero() {
			t.Errorf("the canceled job ran: %+v", job)
		}
	})
	for _, where := range []string{"here", "from another node"} {
		t.Run("running, canceled "+where, func(t *testing.T) {
			db := fakeResults(2000)
			dir := filepath.Join(t.TempDir(), "jobs")
			j, _ := newTestJobs(t, newTestExporter(db), dir, nil)
			canceler := j
			if where != "here" {
				canceler, _ = newTestJobs(t, newTestExporter(&fakeDB{}), dir, func(c *JobsConfig) { c.Node = "node-2" })
			}
			a, _ := j.Start("acme", request(CSV))
			var boundaries atomic.Int32
			db.changes = func(rows [][]any, _, _ int) [][]any {
				if boundaries.Add(1) == 3 {
					if _, err := canceler.Cancel("acme", a.ID); err != nil {
						t.Error(err)
					}
				}
				return rows
			}
			runJobs(t, j)
			job := waitJob(t, j, "acme", a.ID, schemas.ExportCanceled, schemas.ExportDone)
			// The worker's end is the sign it stopped: it writes the record last.
			deadline := time.Now().Add(10 * time.Second)
			for j.busy(a.ID) && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if job.Status != schemas.ExportCanceled || boundaries.Load() > 4 {
				t.Fatalf("%+v after %d pages", job, boundaries.Load())
			}
			if rec := rawRecord(t, j, a.ID); rec.Job.Status != schemas.ExportCanceled || rec.Cursor != "" {
				t.Errorf("record %+v", rec)
			}
			if got := files(t, dir); !slices.Equal(got, []string{a.ID + ".canceled", a.ID + recordExt}) {
				t.Errorf("left %v", got)
			}
		})
	}
	t.Run("done and failed", func(t *testing.T) {
		db := fakeResults(100)
		j, _ := newTestJobs(t, newTestExporter(db), "", nil)
		a, _ := j.Start("acme", request(Arrow))
		stop := runJobs(t, j)
		done := waitJob(t, j, "acme", a.ID, schemas.ExportDone)
		db.err = errors.New("connection refused")
		b, _ := j.Start("acme", request(Arrow))
		waitJob(t, j, "acme", b.ID, schemas.ExportFailed)
		stop()
		job, err := j.Cancel("acme", a.ID)
		if err != nil || job.Status != schemas.ExportCanceled || job.DownloadURL != "" {
			t.Fatalf("%+v %v", job, err)
		}
		id, expires, sig := linkParts(t, done)
		if _, _, err := j.Open(id, expires, sig); err != schemas.ErrExportLink {
			t.Errorf("the canceled job's link: %v", err)
		}
		if job, err := j.Cancel("acme", b.ID); err != nil || job.Status != schemas.ExportFailed {
			t.Errorf("failed: %+v %v", job, err)
		}
		if got := files(t, j.cfg.Dir); !slices.Equal(got, slices.Sorted(slices.Values([]string{a.ID + ".canceled", a.ID + recordExt, b.ID + recordExt}))) {
			t.Errorf("left %v", got)
		}
	})
}

// busy reports whether job id is queued or running on this node.
func (j *Jobs) busy(id string) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	_, ok := j.active[id]
	return ok
}

// A job that fails says so without detail, and leaves no file.
func TestJobFails(t *testing.T) {
	db := fakeResults(2000)
	j, _ := newTestJobs(t, newTestExporter(db), "", nil)
	a, _ := j.Start("acme", request(Parquet))
	boundaries := 0
	db.changes = func(rows [][]any, _, _ int) [][]any {
		if boundaries++; boundaries == 3 {
			db.err = errors.New("code: 241, message: Memory limit exceeded: SELECT receipt_id FROM certnode.results")
		}
		return rows
	}
	runJobs(t, j)
	job := waitJob(t, j, "acme", a.ID, schemas.ExportFailed)
	if job.Error != "the export failed; start it again" || job.FinishedAt.IsZero() || job.DownloadURL != "" {
		t.Fatalf("%+v", job)
	}
	if got := files(t, j.cfg.Dir); !slices.Equal(got, []string{a.ID + recordExt}) {
		t.Errorf("left %v", got)
	}
}

// Stopped while its export runs, a job is resumed by the node's next Run:
// CSV and NDJSON from the record's cursor, after cutting the file back to
// the bytes recorded with it; the other formats from the start. Either way
// the file is the export.
func TestJobResumes(t *testing.T) {
	for _, f := range Formats {
		t.Run(string(f), func(t *testing.T) {
			db := fakeResults(2000)
			e := newTestExporter(db)
			dir := filepath.Join(t.TempDir(), "jobs")
			j, _ := newTestJobs(t, e, dir, nil)
			a, _ := j.Start("acme", request(f))
			// The server stops as the fourth page begins.
			ctx, stop := context.WithCancel(t.Context())
			boundaries := 0
			db.changes = func(rows [][]any, _, _ int) [][]any {
				if boundaries++; boundaries == 4 {
					stop()
				}
				return rows
			}
			if err := j.Run(ctx); err != nil {
				t.Fatal(err)
			}
			db.changes = nil
			rec := rawRecord(t, j, a.ID)
			if rec.Job.Status != schemas.ExportRunning || rec.Job.Rows == 0 || rec.Job.Rows >= 2000 || rec.Cursor == "" || rec.Node != "node-1" {
				t.Fatalf("stopped: %+v", rec)
			}
			part := j.filePath(&rec) + ".part"
			b, err := os.ReadFile(part)
			if err != nil || int64(len(b)) < rec.Job.Bytes {
				t.Fatalf("part of %d bytes, recorded %d: %v", len(b), rec.Job.Bytes, err)
			}
			// Half a batch past the record, and a mark in what it counts:
			// a resume keeps it, a restart does not.
			b = append(b[:rec.Job.Bytes:rec.Job.Bytes], "half a batch,"...)
			b[0] = '#'
			if err := os.WriteFile(part, b, 0o600); err != nil {
				t.Fatal(err)
			}

			// Another node leaves it.
			other, _ := newTestJobs(t, e, dir, func(c *JobsConfig) { c.Node = "node-2" })
			stopOther := runJobs(t, other)
			time.Sleep(20 * time.Millisecond)
			stopOther()
			if got := rawRecord(t, j, a.ID); got.Job.Rows != rec.Job.Rows || got.Job.Status != schemas.ExportRunning {
				t.Fatalf("another node touched it: %+v", got)
			}

			again, _ := newTestJobs(t, e, dir, nil)
			runJobs(t, again)
			job := waitJob(t, again, "acme", a.ID, schemas.ExportDone, schemas.ExportFailed)
			want := exported(t, 2000, request(f))
			if f == CSV || f == NDJSON {
				want[0] = '#'
			}
			if got := download(t, again, job); job.Rows != 2000 || job.Bytes != int64(len(want)) || !bytes.Equal(got, want) {
				t.Fatalf("%+v: the file (%d bytes) is not the export (%d bytes)", job, len(got), len(want))
			}
		})
	}
}

// Temporary records a crash left are swept once old.
func TestJobSweepTemporaries(t *testing.T) {
	j, _ := newTestJobs(t, newTestExporter(&fakeDB{}), "", nil)
	old, fresh := filepath.Join(j.cfg.Dir, "."+newJobID()+recordExt+".1.tmp"), filepath.Join(j.cfg.Dir, "."+newJobID()+recordExt+".2.tmp")
	for _, p := range []string{old, fresh} {
		if err := os.WriteFile(p, []byte("{"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chtimes(old, time.Now().Add(-2*time.Hour), time.Now().Add(-2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	j.sweep()
	if got := files(t, j.cfg.Dir); !slices.Equal(got, []string{filepath.Base(fresh)}) {
		t.Errorf("left %v", got)
	}
}

// Jobs queued when a node stopped run at its next start; Close stops Run.
func TestJobRequeuedAndClose(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "jobs")
	first, _ := newTestJobs(t, newTestExporter(fakeResults(300)), dir, nil)
	a, err := first.Start("acme", request(NDJSON))
	if err != nil {
		t.Fatal(err)
	}
	next, _ := newTestJobs(t, newTestExporter(fakeResults(300)), dir, nil)
	ran := make(chan error, 1)
	go func() { ran <- next.Run(t.Context()) }()
	job := waitJob(t, next, "acme", a.ID, schemas.ExportDone)
	if !bytes.Equal(download(t, next, job), exported(t, 300, request(NDJSON))) {
		t.Fatal("the file is not the export")
	}
	if err := next.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ran:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run goes on after Close")
	}
}

// A node gone silent leaves its jobs to the first live node that claims
// them; a node that beats keeps its own.
func TestJobTakenOverFromASilentNode(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "jobs")
	named := func(node string) func(*JobsConfig) { return func(c *JobsConfig) { c.Node = node } }
	dead, _ := newTestJobs(t, newTestExporter(fakeResults(300)), dir, named("dead"))
	orphan, err := dead.Start("acme", request(CSV))
	if err != nil {
		t.Fatal(err)
	}
	alive, clock := newTestJobs(t, newTestExporter(fakeResults(300)), dir, named("alive"))
	kept, err := alive.Start("acme", request(NDJSON))
	if err != nil {
		t.Fatal(err)
	}
	if err := alive.heartbeat(); err != nil {
		t.Fatal(err)
	}
	// The dead node never beat; its record is an hour old.
	old := clock.Now().Add(-time.Hour)
	if err := os.Chtimes(dead.recordPath(orphan.ID), old, old); err != nil {
		t.Fatal(err)
	}

	// Two live nodes sweep at once: one takes the job.
	a, _ := newTestJobs(t, newTestExporter(fakeResults(300)), dir, named("a"))
	b, _ := newTestJobs(t, newTestExporter(fakeResults(300)), dir, named("b"))
	recsA, errA := a.records()
	recsB, errB := b.records()
	if err := errors.Join(errA, errB); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { a.takeOver(recsA) })
	wg.Go(func() { b.takeOver(recsB) })
	wg.Wait()
	rec, err := a.load(orphan.ID)
	if err != nil {
		t.Fatal(err)
	}
	owner := map[string]*Jobs{"a": a, "b": b}[rec.Node]
	if owner == nil || rec.Takeovers != 1 {
		t.Fatalf("the orphan's record: node %q, takeovers %d", rec.Node, rec.Takeovers)
	}
	for name, j := range map[string]*Jobs{"a": a, "b": b} {
		if _, queued := j.active[orphan.ID]; queued != (name == rec.Node) {
			t.Errorf("node %s queued the orphan: %v (owner %s)", name, queued, rec.Node)
		}
		if _, queued := j.active[kept.ID]; queued {
			t.Errorf("node %s took the live node's job", name)
		}
	}
	if rec, err := a.load(kept.ID); err != nil || rec.Node != "alive" {
		t.Fatalf("the live node's job: %+v %v", rec, err)
	}
	// The new owner runs it to the same file the dead node would have.
	runJobs(t, owner)
	job := waitJob(t, owner, "acme", orphan.ID, schemas.ExportDone)
	if !bytes.Equal(download(t, owner, job), exported(t, 300, request(CSV))) {
		t.Fatal("the file is not the export")
	}
}
