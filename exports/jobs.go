package exports

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/schemas"
)

// MinLinkKeyBytes is the shortest download link key JobsConfig accepts.
const MinLinkKeyBytes = 32

// JobsConfig configures background export jobs; zero values take the
// defaults.
type JobsConfig struct {
	// Dir holds the export files and a record of each job (created 0700).
	// Ingest nodes may share it: each reads every node's jobs, and
	// cancels any of them.
	Dir string
	// LinkKey authenticates download links (HMAC-SHA256): at least
	// MinLinkKeyBytes, secret, the same on every node sharing Dir.
	LinkKey []byte
	// Keep is how long a finished job's file and record are kept (default
	// 24h).
	Keep time.Duration
	// LinkTTL is the lifetime of a download link (default 15m).
	LinkTTL time.Duration
	// Workers is the exports run at once on this node (default 2).
	Workers int
	// MaxPerOrg is the queued and running jobs an organization may have
	// (default 3), MaxQueued the jobs queued on this node (default 64).
	MaxPerOrg, MaxQueued int
	// Node names this node in its jobs' records (default the host name),
	// the same across its restarts and different from every other node
	// sharing Dir (two on one host need names of their own): on start, it
	// resumes its own jobs.
	Node string
	// NodeTimeout is how long a node may go without a heartbeat (each
	// writes one every HeartbeatEvery, default 30s) before another node
	// sharing Dir takes over its queued and running jobs (default 5m).
	NodeTimeout, HeartbeatEvery time.Duration
	// Logger gets a line per job (default slog.Default()).
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Validate reports every problem at once.
func (c JobsConfig) Validate() error {
	var errs []error
	if c.Dir == "" {
		errs = append(errs, errors.New("exports: jobs need a directory"))
	}
	if len(c.LinkKey) < MinLinkKeyBytes {
		errs = append(errs, fmt.Errorf("exports: the download link key needs at least %d bytes", MinLinkKeyBytes))
	}
	if c.Keep < 0 || c.LinkTTL < 0 || c.NodeTimeout < 0 || c.HeartbeatEvery < 0 {
		errs = append(errs, errors.New("exports: keep, link lifetime, node timeout and heartbeat must not be negative"))
	}
	if c.Workers < 0 || c.MaxPerOrg < 0 || c.MaxQueued < 0 {
		errs = append(errs, errors.New("exports: workers, jobs per organization and queued jobs must not be negative"))
	}
	return errors.Join(errs...)
}

// Jobs runs exports in the background into files of Dir, which signed
// links download. Each job has a record in Dir, rewritten whole (a
// temporary file renamed) at each change, which every node reads: a job
// is wherever its record says, and a cancel is a marker file next to it,
// which no record written after it can hide.
type Jobs struct {
	e   *Exporter
	cfg JobsConfig
	log *slog.Logger

	mu      sync.Mutex
	pending []string                           // queued on this node, oldest first
	active  map[string]context.CancelCauseFunc // pending (nil) or running on this node
	wake    chan struct{}
	stop    context.CancelFunc // of Run's workers
	stopped chan struct{}      // closed when Run returns
}

// errJobCanceled ends the export of a job canceled while it runs.
var errJobCanceled = errors.New("exports: job canceled")

// NewJobs runs jobs with e, once Run is called.
func NewJobs(e *Exporter, cfg JobsConfig) (*Jobs, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&cfg.Workers, 2)
	def(&cfg.MaxPerOrg, 3)
	def(&cfg.MaxQueued, 64)
	cfg.Keep = cmp.Or(cfg.Keep, 24*time.Hour)
	cfg.LinkTTL = cmp.Or(cfg.LinkTTL, 15*time.Minute)
	cfg.NodeTimeout = cmp.Or(cfg.NodeTimeout, 5*time.Minute)
	cfg.HeartbeatEvery = cmp.Or(cfg.HeartbeatEvery, 30*time.Second)
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Node == "" {
		host, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("exports: node name: %w", err)
		}
		cfg.Node = host
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("exports: jobs directory: %w", err)
	}
	return &Jobs{e: e, cfg: cfg, log: cfg.Logger.With("node", cfg.Node), active: map[string]context.CancelCauseFunc{},
		wake: make(chan struct{}, 1)}, nil
}

// record is what Dir holds of a job. Cursor resumes a CSV or NDJSON export
// after the first Job.Bytes bytes of its file (what follows is cut off):
// both are of the same batch.
type record struct {
	Job    schemas.ExportJob `json:"job"`
	Node   string            `json:"node"`
	Cursor string            `json:"cursor,omitempty"`
	// Takeovers counts the nodes that took the job over from one gone
	// silent: the next claims it by creating takeoverPath(Takeovers).
	Takeovers int `json:"takeovers,omitempty"`
}

// Job ids are "exp_" and 24 characters of base32 (120 random bits), in
// lower case; only those name files, so that no id reaches outside Dir.
const (
	jobIDPrefix = "exp_"
	jobIDLen    = len(jobIDPrefix) + 24
)

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

func newJobID() string {
	b := make([]byte, 15)
	rand.Read(b) // never fails
	return jobIDPrefix + idEncoding.EncodeToString(b)
}

func validJobID(id string) bool {
	if len(id) != jobIDLen || !strings.HasPrefix(id, jobIDPrefix) {
		return false
	}
	for _, c := range []byte(id[len(jobIDPrefix):]) {
		if (c < 'a' || c > 'z') && (c < '2' || c > '7') {
			return false
		}
	}
	return true
}

// Files of a job: its record, the export while written (".part") and once
// done, and the cancel marker. The record's name is no export's.
const recordExt = ".record.json"

func (j *Jobs) recordPath(id string) string { return filepath.Join(j.cfg.Dir, id+recordExt) }
func (j *Jobs) markerPath(id string) string { return filepath.Join(j.cfg.Dir, id+".canceled") }
func (j *Jobs) takeoverPath(id string, n int) string {
	return filepath.Join(j.cfg.Dir, fmt.Sprintf("%s.takeover-%d", id, n))
}

// heartbeatPath is node's heartbeat file, named by a hash: node names are
// free text.
func (j *Jobs) heartbeatPath(node string) string {
	sum := sha256.Sum256([]byte(node))
	return filepath.Join(j.cfg.Dir, ".node-"+hex.EncodeToString(sum[:8])+".alive")
}
func (j *Jobs) filePath(rec *record) string {
	return filepath.Join(j.cfg.Dir, rec.Job.ID+Format(rec.Job.Request.Format).Extension())
}

// Start queues an export of org's data: refusals wrap schemas.ErrBadExport
// (the request), or schemas.ErrTooManyExports.
func (j *Jobs) Start(org string, r schemas.ExportRequest) (schemas.ExportJob, error) {
	q := queryOf(org, r, "")
	f, ferr := ParseFormat(r.Format)
	if err := errors.Join(q.Validate(), ferr); err != nil {
		return schemas.ExportJob{}, err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if len(j.pending) >= j.cfg.MaxQueued {
		return schemas.ExportJob{}, fmt.Errorf("exports: %w: %d exports are queued on this server", schemas.ErrTooManyExports, len(j.pending))
	}
	recs, err := j.records()
	if err != nil {
		return schemas.ExportJob{}, err
	}
	busy := 0
	for _, rec := range recs {
		if rec.Job.Org == org && (rec.Job.Status == schemas.ExportQueued || rec.Job.Status == schemas.ExportRunning) {
			busy++
		}
	}
	if busy >= j.cfg.MaxPerOrg {
		return schemas.ExportJob{}, fmt.Errorf("exports: %w: the organization has %d exports queued or running", schemas.ErrTooManyExports, busy)
	}
	rec := &record{Node: j.cfg.Node, Job: schemas.ExportJob{ID: newJobID(), Org: org, Request: r, Status: schemas.ExportQueued,
		CreatedAt: j.cfg.Now().UTC(), FileName: schemas.ExportFileName(string(q.Kind), org, q.From, q.To, f.Extension())}}
	if err := j.save(rec); err != nil {
		return schemas.ExportJob{}, err
	}
	j.enqueue(rec.Job.ID)
	j.log.Info("export job queued", "id", rec.Job.ID, "org", org, "kind", r.Kind, "format", r.Format)
	return rec.Job, nil
}

// enqueue queues id on this node; j.mu is held.
func (j *Jobs) enqueue(id string) {
	j.pending = append(j.pending, id)
	j.active[id] = nil
	select {
	case j.wake <- struct{}{}:
	default:
	}
}

// List returns org's jobs, newest first.
func (j *Jobs) List(org string) ([]schemas.ExportJob, error) {
	recs, err := j.records()
	if err != nil {
		return nil, err
	}
	var jobs []schemas.ExportJob
	for _, rec := range recs {
		if rec.Job.Org == org {
			jobs = append(jobs, j.view(rec))
		}
	}
	slices.SortFunc(jobs, func(a, b schemas.ExportJob) int {
		return cmp.Or(b.CreatedAt.Compare(a.CreatedAt), strings.Compare(b.ID, a.ID))
	})
	return jobs, nil
}

// Get returns org's job id; done, with a fresh download link.
func (j *Jobs) Get(org, id string) (schemas.ExportJob, error) {
	rec, err := j.orgRecord(org, id)
	if err != nil {
		return schemas.ExportJob{}, err
	}
	return j.view(rec), nil
}

// orgRecord loads org's job id: schemas.ErrExportNotFound when there is
// none, or it is another organization's.
func (j *Jobs) orgRecord(org, id string) (*record, error) {
	if !validJobID(id) {
		return nil, schemas.ErrExportNotFound
	}
	rec, err := j.load(id)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, schemas.ErrExportNotFound
	case err != nil:
		return nil, err
	case rec.Job.Org != org:
		return nil, schemas.ErrExportNotFound
	}
	return rec, nil
}

// view is the job as clients see it: done, with a link valid for LinkTTL,
// or until the file is deleted if sooner.
func (j *Jobs) view(rec *record) schemas.ExportJob {
	job := rec.Job
	if job.Status != schemas.ExportDone {
		return job
	}
	expires := j.cfg.Now().Add(j.cfg.LinkTTL)
	if job.ExpiresAt.Before(expires) {
		expires = job.ExpiresAt
	}
	exp := strconv.FormatInt(expires.Unix(), 10)
	job.DownloadURL = "/v1/export-jobs/" + job.ID + "/file?expires=" + exp + "&signature=" + j.sign(job.ID, exp)
	job.DownloadExpiresAt = time.Unix(expires.Unix(), 0).UTC()
	return job
}

// sign is the signature of a download link of job id until expires (Unix
// seconds, as the link spells them).
func (j *Jobs) sign(id, expires string) string {
	m := hmac.New(sha256.New, j.cfg.LinkKey)
	m.Write([]byte("certnode export link\x00" + id + "\x00" + expires))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// Open opens the file of a download link: job id's, expiring at expires,
// signed with signature. The link must be one Get issued, unexpired, and
// the job done with its file present; anything else is
// schemas.ErrExportLink, whatever failed.
func (j *Jobs) Open(id, expires, signature string) (*os.File, schemas.ExportJob, error) {
	refuse := func(why string, args ...any) (*os.File, schemas.ExportJob, error) {
		j.log.Debug("export download refused", append([]any{"why", why}, args...)...) // a public route: no flood of lines
		return nil, schemas.ExportJob{}, schemas.ErrExportLink
	}
	if !validJobID(id) {
		return refuse("malformed id")
	}
	if !hmac.Equal([]byte(signature), []byte(j.sign(id, expires))) {
		return refuse("bad signature", "id", id)
	}
	exp, err := strconv.ParseInt(expires, 10, 64)
	if err != nil || !j.cfg.Now().Before(time.Unix(exp, 0)) {
		return refuse("expired", "id", id)
	}
	rec, err := j.load(id)
	if err != nil || rec.Job.Status != schemas.ExportDone {
		return refuse("not done", "id", id, "err", err)
	}
	f, err := os.Open(j.filePath(rec))
	if err != nil {
		return refuse("no file", "id", id, "err", err)
	}
	return f, rec.Job, nil
}

// Cancel stops org's job id if queued or running, and deletes its file,
// done or not. A failed or canceled job stays as it is.
func (j *Jobs) Cancel(org, id string) (schemas.ExportJob, error) {
	rec, err := j.orgRecord(org, id)
	if err != nil {
		return schemas.ExportJob{}, err
	}
	if rec.Job.Status == schemas.ExportFailed || rec.Job.Status == schemas.ExportCanceled {
		return rec.Job, nil
	}
	// The marker first: the node running the job stops when it sees it.
	if err := os.WriteFile(j.markerPath(id), nil, 0o600); err != nil {
		return schemas.ExportJob{}, fmt.Errorf("exports: cancel: %w", err)
	}
	now := j.cfg.Now().UTC()
	rec.Job.Status, rec.Job.FinishedAt, rec.Job.ExpiresAt, rec.Cursor = schemas.ExportCanceled, now, now.Add(j.cfg.Keep), ""
	if err := j.save(rec); err != nil {
		return schemas.ExportJob{}, err
	}
	j.mu.Lock()
	if stop, ok := j.active[id]; ok {
		if stop != nil {
			stop(errJobCanceled)
		} else {
			j.pending = slices.DeleteFunc(j.pending, func(p string) bool { return p == id })
			delete(j.active, id)
		}
	}
	j.mu.Unlock()
	j.removeFiles(rec)
	j.log.Info("export job canceled", "id", id, "org", org)
	return rec.Job, nil
}

// removeFiles deletes a job's export file, whole or partial.
func (j *Jobs) removeFiles(rec *record) {
	for _, p := range []string{j.filePath(rec), j.filePath(rec) + ".part"} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			j.log.Warn("export job: cannot delete a file", "path", p, "err", err)
		}
	}
}

// load reads job id's record; its cancel marker makes it canceled
// whatever the record says (the running node may have written it after).
func (j *Jobs) load(id string) (*record, error) {
	b, err := os.ReadFile(j.recordPath(id))
	if err != nil {
		return nil, err
	}
	rec := &record{}
	if err := json.Unmarshal(b, rec); err != nil {
		return nil, fmt.Errorf("exports: job record %s: %w", id, err)
	}
	if rec.Job.Status != schemas.ExportCanceled {
		if st, err := os.Stat(j.markerPath(id)); err == nil {
			at := st.ModTime().UTC()
			rec.Job.Status, rec.Job.FinishedAt, rec.Job.ExpiresAt, rec.Cursor = schemas.ExportCanceled, at, at.Add(j.cfg.Keep), ""
		}
	}
	return rec, nil
}

// records loads every job's record; one that cannot be read is logged and
// left out.
func (j *Jobs) records() ([]*record, error) {
	entries, err := os.ReadDir(j.cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("exports: jobs directory: %w", err)
	}
	var recs []*record
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), recordExt)
		if !ok || !validJobID(id) {
			continue
		}
		rec, err := j.load(id)
		if errors.Is(err, fs.ErrNotExist) { // swept meanwhile
			continue
		}
		if err != nil {
			j.log.Warn("export job: unreadable record", "id", id, "err", err)
			continue
		}
		recs = append(recs, rec)
	}
	return recs, nil
}

// save writes rec whole, durably: a temporary file synced, then renamed.
func (j *Jobs) save(rec *record) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("exports: job record: %w", err)
	}
	f, err := os.CreateTemp(j.cfg.Dir, "."+rec.Job.ID+recordExt+".*.tmp")
	if err != nil {
		return fmt.Errorf("exports: job record: %w", err)
	}
	_, err = f.Write(b)
	err = errors.Join(err, f.Sync(), f.Close())
	if err == nil {
		err = os.Rename(f.Name(), j.recordPath(rec.Job.ID))
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("exports: job record: %w", err)
	}
	return nil
}

// Run runs this node's jobs until ctx ends or Close is called: first those
// queued or running when it last stopped, then those Start queues. Every
// minute it deletes the files and records of jobs finished Keep ago, and
// takes over the jobs of nodes gone silent.
// It returns once the running exports are stopped, their records left
// running, so that the next Run resumes them.
func (j *Jobs) Run(ctx context.Context) error {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	j.mu.Lock()
	if j.stop != nil {
		j.mu.Unlock()
		return errors.New("exports: jobs are already running")
	}
	stopped := make(chan struct{})
	j.stop, j.stopped = stop, stopped
	defer func() {
		j.mu.Lock()
		j.stop = nil
		j.mu.Unlock()
		close(stopped)
	}()
	err := errors.Join(j.heartbeat(), j.requeue())
	j.mu.Unlock()
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	for range j.cfg.Workers {
		wg.Go(func() {
			for {
				id, ok := j.next(ctx)
				if !ok {
					return
				}
				j.run(ctx, id)
			}
		})
	}
	wg.Go(func() {
		beat, sweep := time.NewTicker(j.cfg.HeartbeatEvery), time.NewTicker(time.Minute)
		defer beat.Stop()
		defer sweep.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-beat.C:
				if err := j.heartbeat(); err != nil {
					j.log.Warn("export jobs: heartbeat", "err", err)
				}
			case <-sweep.C:
				j.sweep()
			}
		}
	})
	j.sweep()
	wg.Wait()
	return nil
}

// Close stops Run, if it runs, as the end of its context does.
func (j *Jobs) Close() error {
	j.mu.Lock()
	stop, stopped := j.stop, j.stopped
	j.mu.Unlock()
	if stop != nil {
		stop()
		<-stopped
	}
	return nil
}

// requeue queues this node's queued and running jobs, oldest first; j.mu
// is held.
func (j *Jobs) requeue() error {
	recs, err := j.records()
	if err != nil {
		return err
	}
	slices.SortFunc(recs, func(a, b *record) int { return a.Job.CreatedAt.Compare(b.Job.CreatedAt) })
	for _, rec := range recs {
		if _, queued := j.active[rec.Job.ID]; queued || rec.Node != j.cfg.Node ||
			rec.Job.Status != schemas.ExportQueued && rec.Job.Status != schemas.ExportRunning {
			continue
		}
		j.log.Info("export job requeued", "id", rec.Job.ID, "org", rec.Job.Org, "status", rec.Job.Status)
		j.enqueue(rec.Job.ID)
	}
	return nil
}

// heartbeat tells the nodes sharing Dir this one is alive.
func (j *Jobs) heartbeat() error {
	p := j.heartbeatPath(j.cfg.Node)
	now := j.cfg.Now()
	if err := os.Chtimes(p, now, now); err == nil {
		return nil
	}
	if err := os.WriteFile(p, []byte(j.cfg.Node+"\n"), 0o600); err != nil {
		return fmt.Errorf("exports: heartbeat: %w", err)
	}
	return os.Chtimes(p, now, now)
}

// silent reports whether node has written no heartbeat for NodeTimeout,
// nor rec's record since (a node that never beat, if its record is old).
func (j *Jobs) silent(rec *record) bool {
	cutoff := j.cfg.Now().Add(-j.cfg.NodeTimeout)
	for _, p := range []string{j.heartbeatPath(rec.Node), j.recordPath(rec.Job.ID)} {
		if st, err := os.Stat(p); err == nil && st.ModTime().After(cutoff) {
			return false
		}
	}
	return true
}

// takeOver queues, on this node, the queued and running jobs of nodes
// gone silent, as their own restart would: the first node to create the
// job's next takeover file has it, so that no two write its file.
func (j *Jobs) takeOver(recs []*record) {
	for _, rec := range recs {
		if rec.Node == j.cfg.Node || rec.Job.Status != schemas.ExportQueued && rec.Job.Status != schemas.ExportRunning || !j.silent(rec) {
			continue
		}
		f, err := os.OpenFile(j.takeoverPath(rec.Job.ID, rec.Takeovers), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			continue // another node has it, or the directory fails (the next sweep tries again)
		}
		fmt.Fprintln(f, j.cfg.Node)
		f.Close()
		from := rec.Node
		rec.Node, rec.Takeovers = j.cfg.Node, rec.Takeovers+1
		if err := j.save(rec); err != nil {
			j.log.Warn("export job: cannot take it over", "id", rec.Job.ID, "err", err)
			continue
		}
		j.log.Info("export job taken over from a silent node", "id", rec.Job.ID, "org", rec.Job.Org, "from", from)
		j.mu.Lock()
		if _, queued := j.active[rec.Job.ID]; !queued {
			j.enqueue(rec.Job.ID)
		}
		j.mu.Unlock()
	}
}

// next takes the oldest queued job, waiting for one until ctx ends.
func (j *Jobs) next(ctx context.Context) (string, bool) {
	for ctx.Err() == nil {
		j.mu.Lock()
		if len(j.pending) > 0 {
			id := j.pending[0]
			j.pending = j.pending[1:]
			if len(j.pending) > 0 { // for another worker
				select {
				case j.wake <- struct{}{}:
				default:
				}
			}
			j.mu.Unlock()
			return id, true
		}
		j.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-j.wake:
		}
	}
	return "", false
}

// run exports job id into its file.
func (j *Jobs) run(ctx context.Context, id string) {
	jctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	j.mu.Lock()
	j.active[id] = cancel
	j.mu.Unlock()
	defer func() {
		j.mu.Lock()
		delete(j.active, id)
		j.mu.Unlock()
	}()
	rec, err := j.load(id)
	if err != nil {
		j.log.Warn("export job: cannot read its record", "id", id, "err", err)
		return
	}
	if rec.Job.Status != schemas.ExportQueued && rec.Job.Status != schemas.ExportRunning {
		return // canceled meanwhile
	}
	log := j.log.With("id", id, "org", rec.Job.Org)
	res, err := j.export(jctx, cancel, rec, log)
	now := j.cfg.Now().UTC()
	switch {
	case errors.Is(context.Cause(jctx), errJobCanceled):
		j.removeFiles(rec)
		// This worker may have saved its progress after Cancel's record.
		if rec, err := j.load(id); err == nil {
			if err := j.save(rec); err != nil {
				log.Warn("export job: cannot save its cancel", "err", err)
			}
		}
		log.Info("export job stopped: canceled", "rows", res.Total)
		return
	case err == nil:
		rec.Job.Status, rec.Job.Progress, rec.Cursor = schemas.ExportDone, 1, ""
		log.Info("export job done", "rows", rec.Job.Rows, "bytes", rec.Job.Bytes, "seconds", now.Sub(rec.Job.StartedAt).Seconds())
	case ctx.Err() != nil:
		log.Info("export job stopped: the server stops; its next start resumes it", "rows", res.Total)
		return
	default:
		j.removeFiles(rec)
		rec.Job.Status, rec.Job.Error, rec.Cursor = schemas.ExportFailed, jobError(err), ""
		log.Warn("export job failed", "err", err)
	}
	rec.Job.FinishedAt, rec.Job.ExpiresAt = now, now.Add(j.cfg.Keep)
	if err := j.save(rec); err != nil {
		log.Error("export job: cannot save its end", "err", err)
	}
	if j.isCanceled(id) { // canceled as it ended: the marker wins
		j.removeFiles(rec)
	}
}

// jobError is what a client is told of a failed job: refusals say why,
// other failures nothing of the database or the disk.
func jobError(err error) string {
	if errors.Is(err, schemas.ErrBadExport) {
		return err.Error()
	}
	return "the export failed; start it again"
}

// isCanceled reports whether job id's cancel marker exists.
func (j *Jobs) isCanceled(id string) bool {
	_, err := os.Stat(j.markerPath(id))
	return err == nil
}

// export writes rec's job into its file, updating rec and saving it as
// it goes (at most once a second), and returns Export's result and error.
// A cancel marker found after a batch ends ctx, with errJobCanceled.
// CSV and NDJSON resume from the record's cursor, after the bytes
// recorded with it; the other formats, whose files are whole or nothing,
// start again. Once done, the file is renamed to its final name.
func (j *Jobs) export(ctx context.Context, cancel context.CancelCauseFunc, rec *record, log *slog.Logger) (Result, error) {
	q := queryOf(rec.Job.Org, rec.Job.Request, "")
	f := Format(rec.Job.Request.Format)
	path := j.filePath(rec) + ".part"
	file, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return Result{}, fmt.Errorf("exports: job file: %w", err)
	}
	defer file.Close()
	if st, err := file.Stat(); err == nil && (f == CSV || f == NDJSON) && rec.Cursor != "" && st.Size() >= rec.Job.Bytes {
		q.Cursor = rec.Cursor
		log.Info("export job resumed", "rows", rec.Job.Rows, "bytes", rec.Job.Bytes)
	} else {
		rec.Job.Rows, rec.Job.Bytes, rec.Job.Progress, rec.Cursor = 0, 0, 0, ""
	}
	base := rec.Job.Bytes
	if err := file.Truncate(base); err != nil {
		return Result{}, fmt.Errorf("exports: job file: %w", err)
	}
	if _, err := file.Seek(base, io.SeekStart); err != nil {
		return Result{}, fmt.Errorf("exports: job file: %w", err)
	}
	if q.Cursor == "" {
		n, err := j.e.Estimate(ctx, q)
		if err != nil {
			return Result{}, err
		}
		rec.Job.EstimatedRows = n
	}
	rec.Job.Status = schemas.ExportRunning
	if rec.Job.StartedAt.IsZero() {
		rec.Job.StartedAt = j.cfg.Now().UTC()
	}
	if err := j.save(rec); err != nil {
		return Result{}, err
	}
	// at sets rec to a result of Export, written out whole.
	at := func(r Result) {
		rec.Job.Rows, rec.Job.Bytes, rec.Cursor = r.Total, base+r.Bytes, r.Cursor
		if rec.Job.EstimatedRows > 0 {
			rec.Job.Progress = min(float64(r.Total)/float64(rec.Job.EstimatedRows), 0.99)
		}
	}
	// checkpoint saves rec, after the file, so that the record never
	// counts bytes the disk may not hold.
	checkpoint := func() {
		if err := file.Sync(); err != nil {
			log.Warn("export job: cannot sync its file", "err", err)
			return
		}
		if err := j.save(rec); err != nil {
			log.Warn("export job: cannot save its progress", "err", err)
		}
	}
	var saved time.Time
	res, err := j.e.Export(ctx, file, q, f, Options{Progress: func(r Result) {
		at(r)
		if j.isCanceled(rec.Job.ID) { // by another node
			cancel(errJobCanceled)
		}
		if now := j.cfg.Now(); now.Sub(saved) >= time.Second {
			saved = now
			checkpoint()
		}
	}})
	at(res)
	if err != nil {
		if ctx.Err() != nil && !errors.Is(context.Cause(ctx), errJobCanceled) {
			checkpoint() // stopped with the server: the next start resumes here
		}
		return res, err
	}
	if err := errors.Join(file.Sync(), file.Close()); err != nil {
		return res, fmt.Errorf("exports: job file: %w", err)
	}
	if err := os.Rename(path, j.filePath(rec)); err != nil {
		return res, fmt.Errorf("exports: job file: %w", err)
	}
	return res, nil
}

// sweep deletes the files and records of jobs that finished Keep ago, and
// temporary records left by a crash.
func (j *Jobs) sweep() {
	recs, err := j.records()
	if err != nil {
		j.log.Warn("export jobs: sweep", "err", err)
		return
	}
	j.takeOver(recs)
	now := j.cfg.Now()
	for _, rec := range recs {
		if rec.Job.ExpiresAt.IsZero() || now.Before(rec.Job.ExpiresAt) {
			continue
		}
		j.removeFiles(rec)
		claims, _ := filepath.Glob(filepath.Join(j.cfg.Dir, rec.Job.ID+".takeover-*"))
		// The record last, so that a sweep cut short is done again.
		for _, p := range append(claims, j.markerPath(rec.Job.ID), j.recordPath(rec.Job.ID)) {
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				j.log.Warn("export jobs: sweep", "path", p, "err", err)
			}
		}
		j.log.Info("export job expired", "id", rec.Job.ID, "org", rec.Job.Org, "status", rec.Job.Status)
	}
	entries, _ := os.ReadDir(j.cfg.Dir)
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".exp_") || !strings.HasSuffix(e.Name(), ".tmp") {
			continue
		}
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > time.Hour {
			os.Remove(filepath.Join(j.cfg.Dir, e.Name()))
		}
	}
}
