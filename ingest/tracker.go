package ingest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/time/rate"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/schemas"
)

// tracker keeps every job of the cluster current in this process: it reads
// the compacted jobs topic (so any ingest process answers for any job, and
// a restart loses none) and certnode.receipts (to count each job's results
// and wake requests waiting for theirs). Every result is checked against
// its job before it counts.
type tracker struct {
	topics      schemas.Topics
	keys        keyDeriver
	prod        *kgo.Client
	jobsCl      *kgo.Client
	resCl       *kgo.Client
	maxLine     int64
	uploadLimit time.Duration
	retention   time.Duration
	m           *metrics
	log         *slog.Logger
	started     atomic.Bool

	mu   sync.Mutex
	jobs map[string]*jobState
	// open holds each tenant's bulk jobs that were uploading or running
	// when last looked at (finished ones leave when counted), for the
	// tenants' limits on jobs at once.
	open       map[string]map[string]*jobState
	waiters    map[string]waiter
	pending    map[string][]pendingResult // results of jobs not known yet
	npending   int
	refusedLog rate.Sometimes
	// pos is the next receipts offset the reader will see, per partition: a
	// job started now finds all its results at or after it.
	pos map[int32]int64
}

// waiter is a request whose caller waits for its result.
type waiter struct {
	tenant string
	ch     chan *schemas.Result
}

// pendingResult is a result that arrived before its job's record.
type pendingResult struct {
	res *schemas.Result
	at  time.Time
}

const (
	maxPending = 100_000
	pendingTTL = 2 * time.Minute
)

// newTracker loads every job from the jobs topic, then starts reading
// results where the oldest unfinished job's results begin (or at the end).
func newTracker(ctx context.Context, kcfg kafka.Config, prod *kgo.Client, keys keyDeriver, maxLine int64, uploadLimit, retention time.Duration, m *metrics) (*tracker, error) {
	t := &tracker{topics: kcfg.Topics(), keys: keys, prod: prod, maxLine: maxLine, uploadLimit: uploadLimit,
		retention: retention, m: m, log: slog.With("role", "ingest"), refusedLog: rate.Sometimes{Interval: 10 * time.Second},
		jobs: map[string]*jobState{}, open: map[string]map[string]*jobState{}, waiters: map[string]waiter{}, pending: map[string][]pendingResult{}}
	adm := kadm.NewClient(prod)
	// The topics may have been created a moment ago and not be listed by
	// every broker yet: retry.
	var jobEnds, resEnds map[int32]int64
	var err error
	for attempt := 0; ; attempt++ {
		if jobEnds, err = endOffsets(ctx, adm, t.topics.Jobs); err == nil {
			resEnds, err = endOffsets(ctx, adm, t.topics.Receipts)
		}
		if err == nil {
			break
		}
		if attempt == 60 || ctx.Err() != nil {
			return nil, err
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.jobsCl, err = kafka.NewClient(kcfg, kgo.ConsumeTopics(t.topics.Jobs), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		return nil, err
	}
	if err := t.loadJobs(ctx, jobEnds); err != nil {
		t.jobsCl.Close()
		return nil, err
	}
	start := resEnds
	now := time.Now()
	for _, j := range t.jobs {
		if v := j.view(now, uploadLimit); v.State == schemas.JobDone || v.State == schemas.JobAbandoned {
			continue
		}
		for p, o := range j.meta.Start {
			if cur, ok := start[p]; ok && o < cur {
				start[p] = o
			}
		}
	}
	t.pos = map[int32]int64{}
	parts := map[int32]kgo.Offset{}
	for p, o := range start {
		parts[p], t.pos[p] = kgo.NewOffset().At(o), o
	}
	t.resCl, err = kafka.NewClient(kcfg, kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{t.topics.Receipts: parts}),
		kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		t.jobsCl.Close()
		return nil, err
	}
	return t, nil
}

func endOffsets(ctx context.Context, adm *kadm.Client, topic string) (map[int32]int64, error) {
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("list %s offsets: %w", topic, err)
	}
	out := map[int32]int64{}
	var firstErr error
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err != nil && firstErr == nil {
			firstErr = o.Err
		}
		out[o.Partition] = o.Offset
	})
	if len(out) == 0 && firstErr == nil {
		firstErr = fmt.Errorf("topic %s has no partitions", topic)
	}
	return out, firstErr
}

// loadJobs reads the jobs topic up to ends.
func (t *tracker) loadJobs(ctx context.Context, ends map[int32]int64) error {
	remaining := map[int32]int64{}
	for p, o := range ends {
		if o > 0 {
			remaining[p] = o
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for len(remaining) > 0 {
		fetches := t.jobsCl.PollFetches(ctx)
		if ctx.Err() != nil {
			return fmt.Errorf("loading jobs from %s: %w", t.topics.Jobs, ctx.Err())
		}
		fetches.EachRecord(func(rec *kgo.Record) {
			t.applyJob(rec)
			if rec.Offset+1 >= remaining[rec.Partition] {
				delete(remaining, rec.Partition)
			}
		})
	}
	return nil
}

func (t *tracker) ready() bool { return t.started.Load() }

// run reads both topics, and expires old jobs, until ctx ends.
func (t *tracker) run(ctx context.Context) {
	t.started.Store(true)
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			fetches := t.jobsCl.PollFetches(ctx)
			if fetches.IsClientClosed() {
				return
			}
			fetches.EachRecord(t.applyJob)
		}
	}()
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			fetches := t.resCl.PollFetches(ctx)
			if fetches.IsClientClosed() {
				return
			}
			fetches.EachError(func(_ string, p int32, err error) {
				if ctx.Err() == nil && !errors.Is(err, context.Canceled) {
					t.log.Warn("results: fetch error", "partition", p, "err", err)
				}
			})
			fetches.EachRecord(t.deliver)
		}
	}()
	go func() {
		defer wg.Done()
		gc := time.NewTicker(time.Minute)
		defer gc.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-gc.C:
				t.collect(ctx, now)
			}
		}
	}()
	wg.Wait()
}

// applyJob takes a record from the jobs topic.
func (t *tracker) applyJob(rec *kgo.Record) {
	id := string(rec.Key)
	t.mu.Lock()
	defer t.mu.Unlock()
	if rec.Value == nil { // a tombstone: the job expired
		t.remove(id)
		return
	}
	meta, err := schemas.DecodeJob(rec.Value)
	if err != nil || meta.ID != id {
		t.log.Warn("jobs: undecodable record", "partition", rec.Partition, "offset", rec.Offset, "err", err)
		return
	}
	j, known := t.jobs[id]
	switch {
	case !known:
		if meta.State == schemas.JobDone && time.Since(meta.FinishedAt) > t.retention {
			return
		}
		j = newJobState(*meta, jobLineKey(t.keys, meta), false)
		t.add(j)
		for _, p := range t.pending[id] {
			t.countLocked(j, p.res)
		}
		t.npending -= len(t.pending[id])
		delete(t.pending, id)
	case j.meta.State == schemas.JobDone:
		j.doneWritten = j.doneWritten || meta.State == schemas.JobDone
		return // a job never goes back from done
	case meta.State == schemas.JobDone:
		j.doneWritten = true
		j.meta, j.seen, j.valid, j.invalid, j.index = *meta, nil, nil, nil, nil
	case j.owner:
		return // our own record coming back
	case meta.State == schemas.JobRunning && j.meta.State == schemas.JobUploading:
		j.uploaded(*meta)
	}
	if j.complete() {
		t.writeDone(j)
	}
	j.notify()
}

// deliver takes a record from certnode.receipts. Results are decoded
// outside the lock: they can be large, and every result of the cluster
// passes here.
func (t *tracker) deliver(rec *kgo.Record) {
	id, jobID := kafka.Header(rec, schemas.HeaderRequestID), kafka.Header(rec, schemas.HeaderJobID)
	t.mu.Lock()
	if next := rec.Offset + 1; next > t.pos[rec.Partition] {
		t.pos[rec.Partition] = next
	}
	_, waiting := t.waiters[id]
	_, tracked := t.jobs[jobID]
	if jobID == "" {
		_, tracked = t.jobs[id] // a single request that was told to poll
	}
	t.mu.Unlock()
	if !waiting && !tracked && jobID == "" {
		return
	}
	res, err := schemas.DecodeResult(rec.Value)
	if err != nil {
		t.m.resultsDropped.WithLabelValues("undecodable").Inc()
		return
	}
	t.m.lag.Set(time.Since(res.ProcessedAt).Seconds())
	t.mu.Lock()
	defer t.mu.Unlock()
	if w, ok := t.waiters[id]; ok && res.JobID == "" && res.ID == id && res.Tenant == w.tenant {
		delete(t.waiters, id)
		w.ch <- res
	}
	j, ok := t.jobs[jobID]
	if jobID == "" {
		j, ok = t.jobs[id]
	}
	switch {
	case ok:
		t.countLocked(j, res)
	case jobID == "" || res.Auth != schemas.AuthIngest:
		// Only results of ingest's own records wait for their job's
		// record: forged ones must not fill the buffer.
	case t.npending >= maxPending:
		t.m.resultsDropped.WithLabelValues("pending_full").Inc()
	default:
		res.Receipt = nil // counting needs none of it
		t.pending[jobID] = append(t.pending[jobID], pendingResult{res, time.Now()})
		t.npending++
	}
}

// countFor counts a result for a job this process holds.
func (t *tracker) countFor(j *jobState, res *schemas.Result) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.countLocked(j, res)
}

// countLocked counts res for j; callers hold t.mu.
func (t *tracker) countLocked(j *jobState, res *schemas.Result) {
	if j.meta.Single {
		if res.JobID != "" || res.ID != j.meta.ID || res.Tenant != j.meta.Tenant || j.meta.Result != nil {
			return
		}
		r := *res
		j.meta.Result, j.meta.Done, j.lastProcessed = &r, 1, res.ProcessedAt
		switch res.Status {
		case schemas.StatusSigned, schemas.StatusValid:
			j.meta.Valid = 1
		case schemas.StatusInvalid:
			j.meta.Invalid = 1
		default:
			j.meta.Failed = 1
		}
	} else if ok, why := j.count(res, t.maxLine); !ok {
		if why != "" {
			t.m.resultsDropped.WithLabelValues(why).Inc()
			t.refusedLog.Do(func() {
				t.log.Warn("results refused for the job they name (more are only counted in certnode_ingest_results_refused_total)",
					"job", j.meta.ID, "line", res.Line, "reason", why)
			})
		}
		return
	}
	if j.complete() {
		t.writeDone(j)
	}
	j.notify()
}

// writeDone records a finished job, unless its done record is already on
// the topic. The owner writes at once; others only if no done record came
// within a few seconds (the owner may be gone). A failed write is retried.
func (t *tracker) writeDone(j *jobState) {
	meta := j.meta
	var write func(attempt int)
	write = func(attempt int) {
		t.mu.Lock()
		skip := j.doneWritten
		j.doneWritten = true
		t.mu.Unlock()
		if skip {
			return
		}
		// writeMu is never held while taking t.mu (finishUpload takes them
		// the other way round).
		j.writeMu.Lock()
		err := t.put(context.Background(), &meta)
		j.writeMu.Unlock()
		if err != nil {
			t.mu.Lock()
			j.doneWritten = false
			t.mu.Unlock()
			if attempt < 5 {
				time.AfterFunc(time.Duration(attempt+1)*2*time.Second, func() { write(attempt + 1) })
			}
		}
	}
	if j.owner {
		go write(0)
	} else {
		time.AfterFunc(5*time.Second, func() { write(0) })
	}
}

// put writes a job record, however the request that led to it ends: a
// stopping server cancels request contexts, and the record must still land.
func (t *tracker) put(ctx context.Context, meta *schemas.Job) error {
	val, err := json.Marshal(meta)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	err = t.prod.ProduceSync(ctx, &kgo.Record{Topic: t.topics.Jobs, Key: []byte(meta.ID), Value: val}).FirstErr()
	if err != nil {
		t.log.Warn("jobs: write failed", "job", meta.ID, "state", meta.State, "err", err)
	}
	return err
}

// errTooManyJobs refuses a job over its tenant's limit on jobs at once.
var errTooManyJobs = errors.New("too many jobs at once")

// start registers a job this process owns and writes its first record,
// unless its tenant already has limit bulk jobs uploading or running
// (0: no limit). Jobs started on other ingest processes count as soon as
// their records arrive from the jobs topic (within ~100 ms): the limit
// holds cluster-wide, but starts on different processes within that
// window can each pass it.
func (t *tracker) start(ctx context.Context, meta schemas.Job, limit int) (*jobState, error) {
	meta.V, meta.CreatedAt = schemas.EnvelopeVersion, time.Now().UTC()
	t.mu.Lock()
	if limit > 0 && t.running(meta.Tenant, time.Now()) >= limit {
		t.mu.Unlock()
		return nil, errTooManyJobs
	}
	j := newJobState(meta, jobLineKey(t.keys, &meta), true)
	t.add(j) // results counted from now on change j.meta, not meta
	t.mu.Unlock()
	if err := t.put(ctx, &meta); err != nil {
		t.mu.Lock()
		t.remove(meta.ID)
		t.mu.Unlock()
		return nil, err
	}
	return j, nil
}

// add keeps a job; t.mu is held.
func (t *tracker) add(j *jobState) {
	t.jobs[j.meta.ID] = j
	if !j.meta.Single && (j.meta.State == schemas.JobUploading || j.meta.State == schemas.JobRunning) {
		if t.open[j.meta.Tenant] == nil {
			t.open[j.meta.Tenant] = map[string]*jobState{}
		}
		t.open[j.meta.Tenant][j.meta.ID] = j
	}
}

// remove forgets a job; t.mu is held.
func (t *tracker) remove(id string) {
	if j, ok := t.jobs[id]; ok {
		t.forget(j.meta.Tenant, id)
		delete(t.jobs, id)
	}
}

func (t *tracker) forget(tenant, id string) {
	if open := t.open[tenant]; open != nil {
		if delete(open, id); len(open) == 0 {
			delete(t.open, tenant)
		}
	}
}

// running counts a tenant's bulk jobs uploading or running; t.mu is held.
func (t *tracker) running(tenant string, now time.Time) int {
	n := 0
	for id, j := range t.open[tenant] {
		if st := j.view(now, t.uploadLimit).State; st == schemas.JobUploading || st == schemas.JobRunning {
			n++
		} else { // done or abandoned: for good
			t.forget(tenant, id)
		}
	}
	return n
}

// finishUpload records the end of an owned upload. The record is written
// before any done record of the job (writeMu), so the compacted topic ends
// with the job's last state.
func (t *tracker) finishUpload(ctx context.Context, j *jobState, meta schemas.Job) error {
	t.mu.Lock()
	j.uploaded(meta)
	rec := j.meta
	rec.Done, rec.Valid, rec.Invalid, rec.Failed = 0, 0, 0, 0 // counts travel only in done records
	if j.complete() {
		rec = j.meta
		j.doneWritten = true
	}
	j.notify()
	j.writeMu.Lock()
	t.mu.Unlock()
	defer j.writeMu.Unlock()
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if err = t.put(ctx, &rec); err == nil {
			return nil
		}
	}
	return err
}

// positions is where this process's results reader stands.
func (t *tracker) positions() map[int32]int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[int32]int64, len(t.pos))
	for p, o := range t.pos {
		out[p] = o
	}
	return out
}

// lookup returns tenant's job and a channel closed on its next change.
func (t *tracker) lookup(tenant, id string) (schemas.Job, <-chan struct{}, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	j, ok := t.jobs[id]
	if !ok || j.meta.Tenant != tenant {
		return schemas.Job{}, nil, false
	}
	return j.view(time.Now(), t.uploadLimit), j.changed, true
}

// list returns tenant's latest bulk jobs (of state, if set), newest first.
// It looks at every job this node holds: they are bounded by the jobs
// topic's retention.
func (t *tracker) list(tenant string, state schemas.JobState, limit int) []schemas.Job {
	now := time.Now()
	var out []schemas.Job
	t.mu.Lock()
	for _, j := range t.jobs {
		if j.meta.Tenant != tenant || j.meta.Single {
			continue
		}
		if v := j.view(now, t.uploadLimit); state == "" || v.State == state {
			out = append(out, v)
		}
	}
	t.mu.Unlock()
	slices.SortFunc(out, func(a, b schemas.Job) int {
		return cmp.Or(b.CreatedAt.Compare(a.CreatedAt), strings.Compare(b.ID, a.ID))
	})
	return out[:min(limit, len(out))]
}

// wait registers interest in one request's result; call before producing.
func (t *tracker) wait(tenant, id string) chan *schemas.Result {
	ch := make(chan *schemas.Result, 1)
	t.mu.Lock()
	t.waiters[id] = waiter{tenant, ch}
	t.mu.Unlock()
	t.m.waiting.Inc()
	return ch
}

func (t *tracker) cancel(id string) {
	t.mu.Lock()
	delete(t.waiters, id)
	t.mu.Unlock()
	t.m.waiting.Dec()
}

// collect drops expired pending results and jobs past their retention
// (writing a tombstone, so the compacted topic forgets them too).
func (t *tracker) collect(ctx context.Context, now time.Time) {
	var expired []string
	t.mu.Lock()
	for id, ps := range t.pending {
		if now.Sub(ps[len(ps)-1].at) > pendingTTL {
			t.npending -= len(ps)
			delete(t.pending, id)
		}
	}
	for id, j := range t.jobs {
		v := j.view(now, t.uploadLimit)
		end := v.FinishedAt
		if v.State == schemas.JobAbandoned || v.State == schemas.JobUploading || end.IsZero() {
			end = v.CreatedAt.Add(t.uploadLimit)
		}
		if v.State != schemas.JobRunning && now.Sub(end) > t.retention {
			t.remove(id)
			expired = append(expired, id)
		}
	}
	t.mu.Unlock()
	for _, id := range expired {
		t.prod.Produce(ctx, &kgo.Record{Topic: t.topics.Jobs, Key: []byte(id)}, nil)
	}
}

func (t *tracker) close() {
	for _, cl := range []*kgo.Client{t.jobsCl, t.resCl} {
		if cl != nil {
			cl.Close()
		}
	}
}
