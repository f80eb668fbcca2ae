package pipeline

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
)

// Limiter holds tenants to their quotas: tenants.LocalLimiter within one
// process, the coordinator's limiter across the cluster. Take admits n
// requests of tenant now (0), or takes nothing and says when to ask again;
// it returns tenants.ErrMonthlyQuota once the monthly allowance is used up.
type Limiter interface {
	Take(tenant string, n int) (time.Duration, error)
}

// minHoldWait spaces a held tenant's retries, so that a tenant limited to
// thousands a second is released in batches rather than one poll per record.
const minHoldWait = 10 * time.Millisecond

// heldOverhead is what a held record costs beyond its key and value
// (record, job and queue bookkeeping), counted against MaxHeldBytes.
const heldOverhead = 512

// job is a polled record on its way to a result.
type job struct {
	rec     *kgo.Record
	auth    schemas.Auth
	keyID   string // the producer key that signed it
	authErr error
	// overQuota: the tenant's monthly allowance is used up; the request is
	// answered failed.
	overQuota bool
	heldAt    time.Time // when it was held back for its tenant's rate
}

// heldQueue is one tenant's records held back in one partition, oldest
// first, so the tenant's order is kept.
type heldQueue struct {
	jobs []*job
	due  time.Time // when to ask the limiter again
}

// partition is what the worker knows of one partition of the requests
// topic it owns: where its polled records end, the records held back for
// quota (queued per tenant: a tenant's wait holds up no other tenant), and
// what the previous owner answered beyond its commit.
type partition struct {
	id        int32
	next      kgo.EpochOffset // just after the last record polled
	queues    map[string]*heldQueue
	held      int
	heldBytes int
	paused    bool
	handover  *handover
}

func heldSize(r *kgo.Record) int { return len(r.Key) + len(r.Value) + heldOverhead }

// answeredBefore reports whether the previous owner already answered the
// record at off (it committed below it while holding another record).
func (p *partition) answeredBefore(off int64) bool {
	h := p.handover
	if h == nil {
		return false
	}
	if off >= h.upto {
		p.handover = nil
		return false
	}
	_, held := slices.BinarySearch(h.held, off)
	return off >= h.from && !held
}

// commitPoint is where p's commit goes: its first record not answered yet
// (never past a held one), and, when records after it were answered, the
// metadata that lets the next owner skip them instead of answering them
// twice ("" when there are none).
func (p *partition) commitPoint() (kgo.EpochOffset, string) {
	at := p.next
	held := make([]int64, 0, p.held)
	for _, q := range p.queues {
		for _, j := range q.jobs {
			held = append(held, j.rec.Offset)
			if j.rec.Offset < at.Offset {
				at = kgo.EpochOffset{Epoch: j.rec.LeaderEpoch, Offset: j.rec.Offset}
			}
		}
	}
	slices.Sort(held)
	upto := p.next.Offset
	if h := p.handover; h != nil && h.upto > upto {
		// What the previous owner answered beyond the records polled so
		// far is still true: pass it on.
		i, _ := slices.BinarySearch(h.held, upto)
		held, upto = append(held, h.held[i:]...), h.upto
	}
	if upto == at.Offset {
		return at, ""
	}
	return at, encodeHandover(at.Offset, upto, held)
}

// handover is what a partition's commit at offset from says of the records
// after it: below upto, only those in held (sorted) were not answered.
type handover struct {
	from, upto int64
	held       []int64
}

// The metadata of a commit with a handover: the prefix, then base64url of
// uvarints: from, upto-from, and each held offset's distance from the
// previous one (the first one's from from).
const handoverPrefix = "certnode.held.v1:"

// maxHandoverMetadata keeps the metadata well under Kafka's default
// offset.metadata.max.bytes (4096). Held offsets past what fits are left
// out and upto stops at the first of them: the next owner redoes what was
// answered after it (at least once, as after any crash).
const maxHandoverMetadata = 2048

func encodeHandover(from, upto int64, held []int64) string {
	budget := base64.RawURLEncoding.DecodedLen(maxHandoverMetadata-len(handoverPrefix)) - 2*binary.MaxVarintLen64
	var deltas []byte
	prev := from
	for _, h := range held {
		next := binary.AppendUvarint(deltas, uint64(h-prev))
		if len(next) > budget {
			upto = h
			break
		}
		deltas, prev = next, h
	}
	b := binary.AppendUvarint(nil, uint64(from))
	b = binary.AppendUvarint(b, uint64(upto-from))
	return handoverPrefix + base64.RawURLEncoding.EncodeToString(append(b, deltas...))
}

// parseHandover reads a commit's metadata; nil when it is not a handover
// for the committed offset (written by something else, or for an offset
// since moved).
func parseHandover(meta *string, committed int64) *handover {
	if meta == nil || !strings.HasPrefix(*meta, handoverPrefix) {
		return nil
	}
	b, err := base64.RawURLEncoding.DecodeString((*meta)[len(handoverPrefix):])
	if err != nil {
		return nil
	}
	next := func() (int64, bool) {
		v, n := binary.Uvarint(b)
		if n <= 0 || v > 1<<62 {
			return 0, false
		}
		b = b[n:]
		return int64(v), true
	}
	from, ok1 := next()
	span, ok2 := next()
	if !ok1 || !ok2 || from != committed {
		return nil
	}
	h := &handover{from: from, upto: from + span}
	prev := from
	for len(b) > 0 {
		d, ok := next()
		if !ok || (len(h.held) > 0 && d == 0) || prev+d >= h.upto {
			return nil
		}
		prev += d
		h.held = append(h.held, prev)
	}
	return h
}

// quota is the worker's record of held records, by partition. Only the
// poll loop and the rebalance callbacks touch parts, and they never run at
// once (BlockRebalanceOnPoll gates them); handovers are written when a
// partition's offsets are fetched, which is not gated.
type quota struct {
	parts      map[int32]*partition
	handoverMu sync.Mutex
	handovers  map[int32]*handover
}

// partition returns p's state, starting it (with the previous owner's
// handover) when p was just assigned.
func (w *Worker) partition(id int32) *partition {
	p := w.quota.parts[id]
	if p == nil {
		p = &partition{id: id, queues: map[string]*heldQueue{}}
		w.quota.handoverMu.Lock()
		p.handover = w.quota.handovers[id]
		delete(w.quota.handovers, id)
		w.quota.handoverMu.Unlock()
		w.quota.parts[id] = p
	}
	return p
}

// schedule decides what polled and held records become in this batch: jobs
// to answer now, records held back for their tenant's rate, or records the
// previous owner already answered (skipped). It returns the jobs and the
// partitions whose commit point may have moved.
func (w *Worker) schedule(recs []*kgo.Record) ([]*job, []*partition) {
	now := time.Now()
	touched := map[int32]*partition{}
	jobs := w.release(now, touched)
	for _, j := range w.authenticateAll(recs) {
		p := w.partition(j.rec.Partition)
		touched[p.id] = p
		p.next = kgo.EpochOffset{Epoch: j.rec.LeaderEpoch, Offset: j.rec.Offset + 1}
		switch {
		case p.answeredBefore(j.rec.Offset):
			w.m.skipped.Inc()
			continue
		case w.cfg.Limiter == nil || j.auth != schemas.AuthProducer:
			// Ingest admitted its own records; unauthenticated ones only
			// get a refusal, which no tenant pays for.
			jobs = append(jobs, j)
			continue
		}
		tenant := string(j.rec.Key) // the tenant the producer signature proved
		if q := p.queues[tenant]; q != nil {
			w.hold(p, q, j, now) // behind the tenant's earlier records
			continue
		}
		wait, over := w.take(tenant)
		if wait > 0 {
			q := &heldQueue{due: now.Add(max(wait, minHoldWait))}
			p.queues[tenant] = q
			w.hold(p, q, j, now)
			continue
		}
		j.overQuota = over
		jobs = append(jobs, j)
	}
	w.pauseOrResume(w.cl)
	parts := make([]*partition, 0, len(touched))
	for _, p := range touched {
		parts = append(parts, p)
	}
	return jobs, parts
}

// take asks the limiter for one record of tenant: how long to hold it (0:
// go now), or true when its monthly allowance is used up. A limiter that
// fails otherwise admits the record: quotas must not stop the pipeline.
func (w *Worker) take(tenant string) (time.Duration, bool) {
	d, err := w.cfg.Limiter.Take(tenant, 1)
	if errors.Is(err, tenants.ErrMonthlyQuota) {
		return 0, true
	}
	if err != nil {
		w.limiterLog.Do(func() { w.log.Warn("limiter failed; admitting the record", "tenant", tenant, "err", err) })
		return 0, false
	}
	return d, false
}

func (w *Worker) hold(p *partition, q *heldQueue, j *job, now time.Time) {
	j.heldAt = now
	q.jobs = append(q.jobs, j)
	p.held++
	p.heldBytes += heldSize(j.rec)
	w.m.held.Inc()
}

// release takes the held records whose tenant's limiter admits them now,
// at most MaxBatch (the rest stay due, so the next poll returns at once).
func (w *Worker) release(now time.Time, touched map[int32]*partition) []*job {
	var jobs []*job
	for _, p := range w.quota.parts {
		for tenant, q := range p.queues {
			if q.due.After(now) {
				continue
			}
			for len(q.jobs) > 0 && len(jobs) < w.cfg.MaxBatch {
				wait, over := w.take(tenant)
				if wait > 0 {
					q.due = now.Add(max(wait, minHoldWait))
					break
				}
				j := q.jobs[0]
				q.jobs[0], q.jobs = nil, q.jobs[1:]
				p.held--
				p.heldBytes -= heldSize(j.rec)
				j.overQuota = over
				w.m.heldSeconds.Observe(now.Sub(j.heldAt).Seconds())
				jobs = append(jobs, j)
				touched[p.id] = p
			}
			if len(q.jobs) == 0 {
				delete(p.queues, tenant)
			}
		}
	}
	return jobs
}

// nextDue is when the earliest held tenant may be asked again.
func (w *Worker) nextDue() (time.Time, bool) {
	var due time.Time
	for _, p := range w.quota.parts {
		for _, q := range p.queues {
			if due.IsZero() || q.due.Before(due) {
				due = q.due
			}
		}
	}
	return due, !due.IsZero()
}

// pauseOrResume stops fetching a partition whose held records are over
// MaxHeldBytes, and resumes it as soon as they are back under. This is the
// backstop that bounds memory, not the normal path: while a partition is
// paused, the other tenants on it wait too, until enough of the held
// tenant's records were released at its rate. Resuming at once (not at a
// lower mark) keeps that wait as short as the bound allows.
func (w *Worker) pauseOrResume(cl *kgo.Client) {
	held, paused := 0, 0
	for _, p := range w.quota.parts {
		switch over := p.heldBytes > w.cfg.MaxHeldBytes; {
		case over && !p.paused:
			cl.PauseFetchPartitions(map[string][]int32{w.topics.Requests: {p.id}})
			p.paused = true
			w.pauseLog.Do(func() {
				w.log.Warn("partition paused: its records held for quota are over the bound (later pauses are only in certnode_worker_paused_partitions)",
					"partition", p.id, "held", p.held, "held_bytes", p.heldBytes)
			})
		case !over && p.paused:
			cl.ResumeFetchPartitions(map[string][]int32{w.topics.Requests: {p.id}})
			p.paused = false
		}
		held += p.held
		if p.paused {
			paused++
		}
	}
	w.m.heldNow.Set(float64(held))
	w.m.paused.Set(float64(paused))
}

// forget drops what the worker held for partitions it no longer owns (on a
// revoke, a lost membership or Close). Their held records were never
// committed: the next owner reads them again.
func (w *Worker) forget(_ context.Context, cl *kgo.Client, gone map[string][]int32) {
	var resume []int32
	for _, id := range gone[w.topics.Requests] {
		if p := w.quota.parts[id]; p != nil && p.paused {
			resume = append(resume, id) // pauses outlive assignments
		}
		delete(w.quota.parts, id)
		w.quota.handoverMu.Lock()
		delete(w.quota.handovers, id)
		w.quota.handoverMu.Unlock()
	}
	if len(resume) > 0 {
		cl.ResumeFetchPartitions(map[string][]int32{w.topics.Requests: resume})
	}
	w.pauseOrResume(cl)
}

// fetched keeps the handover each newly assigned partition's last commit
// carries, for when its records arrive.
func (w *Worker) fetched(_ context.Context, _ *kgo.Client, resp *kmsg.OffsetFetchResponse) error {
	w.quota.handoverMu.Lock()
	defer w.quota.handoverMu.Unlock()
	for _, g := range resp.Groups {
		for _, t := range g.Topics { // the worker consumes only the requests topic
			for _, p := range t.Partitions {
				if h := parseHandover(p.Metadata, p.Offset); h != nil {
					w.quota.handovers[p.Partition] = h
				} else {
					delete(w.quota.handovers, p.Partition)
				}
			}
		}
	}
	return nil
}

// commit commits each partition at its commit point, with its handover.
func (w *Worker) commit(ctx context.Context, parts []*partition) error {
	offsets := make(map[int32]kgo.EpochOffset, len(parts))
	meta := make(map[int32]string, len(parts))
	for _, p := range parts {
		offsets[p.id], meta[p.id] = p.commitPoint()
	}
	ctx = kgo.PreCommitFnContext(ctx, func(req *kmsg.OffsetCommitRequest) error {
		for i := range req.Topics {
			for j := range req.Topics[i].Partitions {
				rp := &req.Topics[i].Partitions[j]
				if m := meta[rp.Partition]; m != "" {
					rp.Metadata = &m
				}
			}
		}
		return nil
	})
	var err error
	w.cl.CommitOffsetsSync(ctx, map[string]map[int32]kgo.EpochOffset{w.topics.Requests: offsets},
		func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, cerr error) {
			if err = cerr; err != nil {
				return
			}
			for _, t := range resp.Topics {
				for _, p := range t.Partitions {
					if err = kerr.ErrorForCode(p.ErrorCode); err != nil {
						return
					}
				}
			}
		})
	return err
}

// authenticateAll finds who wrote each record, on every core: the quota
// decisions that follow need it, in order, and checking MACs is the
// largest cost before signing.
func (w *Worker) authenticateAll(recs []*kgo.Record) []*job {
	jobs := make([]*job, len(recs))
	chunk := max(64, (len(recs)+w.cfg.Concurrency-1)/w.cfg.Concurrency)
	var wg sync.WaitGroup
	for lo := 0; lo < len(recs); lo += chunk {
		wg.Go(func() {
			for i := lo; i < min(lo+chunk, len(recs)); i++ {
				j := &job{rec: recs[i]}
				j.auth, j.keyID, j.authErr = w.authenticate(recs[i])
				jobs[i] = j
			}
		})
	}
	wg.Wait()
	return jobs
}
