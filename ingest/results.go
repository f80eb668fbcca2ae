package ingest

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/schemas"
)

// job is a bulk job, or a single request that callers may poll after a 504.
type job struct {
	ID        string       `json:"job_id"`
	Tenant    string       `json:"-"`
	Kind      schemas.Kind `json:"type"`
	State     string       `json:"state"` // uploading, running, done
	Total     int64        `json:"total"` // accepted lines
	Done      int64        `json:"done"`
	Valid     int64        `json:"valid"` // signed, or verified valid
	Invalid   int64        `json:"invalid"`
	Failed    int64        `json:"failed"`
	CreatedAt time.Time    `json:"created_at"`
	// For single requests: the result, once it arrived.
	result *schemas.Result
	// seen dedupes results by line: delivery is at-least-once.
	seen bitset
	// start are the certnode.receipts offsets when the job began; results
	// streams read from there.
	start    map[int32]int64
	finished time.Time
	changed  chan struct{} // closed and replaced on every update
}

// results reads certnode.receipts from the end, wakes requests waiting for
// their result and keeps job counts. Every ingest process reads every
// result; headers let it skip others' without decoding.
type results struct {
	kcfg      kafka.Config
	cl        *kgo.Client
	adm       *kadm.Client
	retention time.Duration
	m         *metrics
	started   atomic.Bool

	mu      sync.Mutex
	waiters map[string]chan *schemas.Result
	jobs    map[string]*job
}

func newResults(ctx context.Context, kcfg kafka.Config, retention time.Duration, m *metrics) (*results, error) {
	admin, err := kafka.NewClient(kcfg)
	if err != nil {
		return nil, err
	}
	adm := kadm.NewClient(admin)
	r := &results{kcfg: kcfg, adm: adm, retention: retention, m: m,
		waiters: map[string]chan *schemas.Result{}, jobs: map[string]*job{}}
	// Start from offsets fixed now, before serving, so no result of a
	// request accepted from here on can be skipped. The topics may have been
	// created a moment ago and not be listed by every broker yet: retry.
	var start map[int32]int64
	for attempt := 0; ; attempt++ {
		if start, err = r.endOffsets(ctx); err == nil {
			break
		}
		if attempt == 60 || ctx.Err() != nil {
			admin.Close()
			return nil, err
		}
		time.Sleep(500 * time.Millisecond)
	}
	r.cl, err = kafka.NewClient(kcfg, consumeFrom(kcfg.Topics().Receipts, start), kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		admin.Close()
		return nil, err
	}
	return r, nil
}

func consumeFrom(topic string, start map[int32]int64) kgo.Opt {
	parts := map[int32]kgo.Offset{}
	for p, o := range start {
		parts[p] = kgo.NewOffset().At(o)
	}
	return kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: parts})
}

func (r *results) endOffsets(ctx context.Context) (map[int32]int64, error) {
	topic := r.kcfg.Topics().Receipts
	ends, err := r.adm.ListEndOffsets(ctx, topic)
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

func (r *results) ready() bool { return r.started.Load() }

func (r *results) run(ctx context.Context) {
	r.started.Store(true)
	gc := time.NewTicker(time.Minute)
	defer gc.Stop()
	for ctx.Err() == nil {
		fetches := r.cl.PollFetches(ctx)
		if fetches.IsClientClosed() {
			return
		}
		fetches.EachError(func(t string, p int32, err error) {
			if ctx.Err() == nil {
				slog.Warn("results: fetch error", "partition", p, "err", err)
			}
		})
		fetches.EachRecord(r.deliver)
		select {
		case <-gc.C:
			r.collect(time.Now())
		default:
		}
	}
}

func header(rec *kgo.Record, key string) string {
	for _, h := range rec.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

func (r *results) deliver(rec *kgo.Record) {
	id, jobID := header(rec, schemas.HeaderRequestID), header(rec, schemas.HeaderJobID)
	r.mu.Lock()
	defer r.mu.Unlock()
	w, waiting := r.waiters[id]
	j, tracked := r.jobs[jobID]
	if !tracked {
		j, tracked = r.jobs[id] // a single request is its own job
	}
	if !waiting && !tracked {
		return
	}
	res, err := schemas.DecodeResult(rec.Value)
	if err != nil {
		slog.Error("results: undecodable result", "partition", rec.Partition, "offset", rec.Offset, "err", err)
		return
	}
	r.m.lag.Set(time.Since(res.ProcessedAt).Seconds())
	if waiting {
		delete(r.waiters, id)
		w <- res
	}
	if tracked {
		line := max(res.Line, 1) // a single request is line 1 of its own job
		if !j.seen.add(line) {
			return // a redelivered result
		}
		if res.JobID == "" {
			j.result = res
		}
		j.Done++
		switch res.Status {
		case schemas.StatusSigned, schemas.StatusValid:
			j.Valid++
		case schemas.StatusInvalid:
			j.Invalid++
		default:
			j.Failed++
		}
		r.settle(j)
	}
}

// settle marks a job done when every accepted line has a result, and wakes
// anyone watching it. Callers hold r.mu.
func (r *results) settle(j *job) {
	if j.State == "running" && j.Done >= j.Total {
		j.State, j.finished = "done", time.Now()
	}
	close(j.changed)
	j.changed = make(chan struct{})
}

// wait registers interest in one request's result; call before producing.
func (r *results) wait(id string) chan *schemas.Result {
	ch := make(chan *schemas.Result, 1)
	r.mu.Lock()
	r.waiters[id] = ch
	r.mu.Unlock()
	r.m.waiting.Inc()
	return ch
}

func (r *results) cancel(id string) {
	r.mu.Lock()
	delete(r.waiters, id)
	r.mu.Unlock()
	r.m.waiting.Dec()
}

// track starts a job. Bulk jobs record the results topic's end offsets
// first, for streaming their results later; single requests need not.
func (r *results) track(ctx context.Context, j *job, bulk bool) error {
	if bulk {
		start, err := r.endOffsets(ctx)
		if err != nil {
			return err
		}
		j.start = start
	}
	j.changed, j.CreatedAt = make(chan struct{}), time.Now().UTC()
	r.mu.Lock()
	r.jobs[j.ID] = j
	r.mu.Unlock()
	return nil
}

// update changes a job under the lock.
func (r *results) update(id string, f func(j *job)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if j, ok := r.jobs[id]; ok {
		f(j)
		r.settle(j)
	}
}

// snapshot returns a copy of the job for tenant, and a channel closed on
// its next change.
func (r *results) snapshot(tenant, id string) (job, <-chan struct{}, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	j, ok := r.jobs[id]
	if !ok || j.Tenant != tenant {
		return job{}, nil, false
	}
	cp := *j
	cp.seen = nil
	return cp, j.changed, true
}

func (r *results) collect(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, j := range r.jobs {
		if (!j.finished.IsZero() && now.Sub(j.finished) > r.retention) || now.Sub(j.CreatedAt) > 24*time.Hour+r.retention {
			delete(r.jobs, id)
		}
	}
}

func (r *results) forget(id string) {
	r.mu.Lock()
	delete(r.jobs, id)
	r.mu.Unlock()
}

func (r *results) close() {
	if r.cl != nil {
		r.cl.Close()
	}
	r.adm.Close()
}

// bitset records which lines have a result.
type bitset []uint64

func (b *bitset) add(i int64) bool {
	w := int(i / 64)
	if w >= len(*b) {
		*b = append(*b, make([]uint64, w-len(*b)+1)...)
	}
	mask := uint64(1) << (i % 64)
	if (*b)[w]&mask != 0 {
		return false
	}
	(*b)[w] |= mask
	return true
}
