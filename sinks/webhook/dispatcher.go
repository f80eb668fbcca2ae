package webhook

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/whsig"
	"github.com/certnode/certnode/schemas"
)

// Dispatcher delivers webhooks; run several in a group to scale.
type Dispatcher struct {
	cfg    Config
	topics schemas.Topics
	dir    Directory
	http   whsig.Doer
	mac    MAC
	cl     *kgo.Client // the group reading results, events, jobs and due messages; and every producer
	delay  *delayer
	log    *slog.Logger
	m      *metrics
	now    func() time.Time

	ctx  context.Context // ends when Run ends: pending sends give up
	stop context.CancelFunc

	mu      sync.Mutex
	tracks  map[tp]*track
	eps     map[string]*queue
	health  map[string]healthMemo
	seen    *seen
	active  map[string]*holder // by activeKey: the messages held here
	pending atomic.Int64       // messages in memory
	flight  atomic.Int64       // attempts and sends under way
	// assigned are the partitions this member holds now: a record polled
	// before its partition left is not taken (its new owner takes it).
	assigned map[tp]bool
}

type tp struct {
	topic string
	part  int32
}

// track follows one partition's records until each is settled: the
// committed offset is the first record with a message still unsettled.
type track struct {
	entries   []*entry // offset order; settled ones leave from the front
	next      int64    // the offset after the last record taken
	committed int64
}

type entry struct {
	offset int64
	left   int // messages not settled yet
}

func (t *track) mark() int64 {
	for len(t.entries) > 0 && t.entries[0].left == 0 {
		t.entries[0] = nil
		t.entries = t.entries[1:]
	}
	if len(t.entries) == 0 {
		return t.next
	}
	return t.entries[0].offset
}

// New joins the consumer groups.
func New(cfg Config, dir Directory, client whsig.Doer, mac MAC, opts ...kgo.Opt) (*Dispatcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if dir == nil || client == nil || mac == nil {
		return nil, errors.New("dispatcher: directory, client and MAC are required")
	}
	ctx, stop := context.WithCancel(context.Background())
	d := &Dispatcher{cfg: cfg, topics: cfg.Kafka.Topics(), dir: dir, http: client, mac: mac, log: slog.With("role", "dispatcher"),
		m: newMetrics(), now: time.Now, ctx: ctx, stop: stop,
		tracks: map[tp]*track{}, assigned: map[tp]bool{}, eps: map[string]*queue{}, health: map[string]healthMemo{}, seen: newSeen(cfg.SeenLookback), active: map[string]*holder{}}
	group := []kgo.Opt{
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(d.topics.Receipts, d.topics.Events, d.topics.Jobs, d.topics.Webhooks),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.DisableAutoCommit(),
		kgo.FetchMaxWait(100 * time.Millisecond),
		kgo.SessionTimeout(10 * time.Second),
		kgo.HeartbeatInterval(time.Second),
		kgo.RebalanceTimeout(kafka.RebalanceTimeout),
		kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, parts map[string][]int32) { d.assign(parts) }),
		kgo.OnPartitionsRevoked(func(ctx context.Context, cl *kgo.Client, lost map[string][]int32) { d.release(ctx, lost, true) }),
		kgo.OnPartitionsLost(func(ctx context.Context, cl *kgo.Client, lost map[string][]int32) { d.release(ctx, lost, false) }),
		kafka.ResultBatches(),
	}
	var err error
	if d.cl, err = kafka.NewClient(cfg.Kafka, append(group, opts...)...); err != nil {
		return nil, err
	}
	if d.delay, err = newDelayer(d, opts...); err != nil {
		d.cl.Close()
		return nil, err
	}
	if cfg.Registerer != nil {
		d.m.register(cfg.Registerer, d)
	}
	return d, nil
}

// Run delivers until ctx ends, then waits a little for attempts in flight
// and commits what is settled.
func (d *Dispatcher) Run(ctx context.Context) error {
	// What was recorded lately is known before anything is read again.
	if err := <-d.follow(ctx); err != nil {
		d.stop()
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("dispatcher: reading recent attempts: %w", err)
	}
	errc := make(chan error, 1)
	go func() { errc <- d.delay.run(ctx) }()
	go d.commitLoop(ctx)
	go d.sweepLoop(ctx)
	go d.announceLoop(ctx)
	err := d.consume(ctx)
	for deadline := time.Now().Add(5 * time.Second); d.flight.Load() > 0 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	d.stop()
	d.commit(context.Background(), nil)
	return errors.Join(err, <-errc)
}

// Close leaves the groups and closes the clients.
func (d *Dispatcher) Close() {
	d.stop()
	d.delay.cl.Close()
	d.cl.Close()
}

func (d *Dispatcher) consume(ctx context.Context) error {
	for ctx.Err() == nil {
		for d.pending.Load() >= int64(d.cfg.MaxPending) && ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
		}
		fetches := d.cl.PollRecords(ctx, 1000)
		if fetches.IsClientClosed() {
			return nil
		}
		fetches.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				d.log.Warn("fetch error", "topic", t, "partition", p, "err", err)
			}
		})
		for _, rec := range fetches.Records() {
			if err := d.take(ctx, rec); err != nil {
				return nil // stopping
			}
		}
	}
	return nil
}

// take turns one record into messages and queues them; the record is
// settled when they all are.
func (d *Dispatcher) take(ctx context.Context, rec *kgo.Record) error {
	var msgs []*schemas.WebhookMessage
	if rec.Topic == d.topics.Webhooks {
		m, err := d.dueMessage(rec)
		if err != nil {
			d.skip(rec, err)
		} else {
			if _, err := d.endpoints(ctx, m.Org); err != nil {
				return err
			}
			msgs = []*schemas.WebhookMessage{m}
		}
	} else if e, err := d.eventOf(rec); err != nil {
		d.skip(rec, err)
	} else {
		eps, err := d.endpoints(ctx, e.org)
		if err != nil {
			return err
		}
		if msgs, err = d.messages(e, eps, d.now()); err != nil {
			d.skip(rec, err)
		}
		d.m.events.WithLabelValues(e.ev.Type).Inc()
	}
	d.mu.Lock()
	k := tp{rec.Topic, rec.Partition}
	if !d.assigned[k] {
		d.mu.Unlock()
		return nil
	}
	t := d.tracks[k]
	if t == nil {
		t = &track{committed: -1}
		d.tracks[k] = t
	}
	t.next = rec.Offset + 1
	if len(msgs) == 0 {
		d.mu.Unlock()
		return nil
	}
	// A message recorded already is not sent again; nor is one held here
	// (a copy of the same record read twice), and the record is then
	// settled with the copy held: its partition may have left and come
	// back, and that copy is all that stands for it.
	e := &entry{offset: rec.Offset}
	msgs = slices.DeleteFunc(msgs, func(m *schemas.WebhookMessage) bool {
		switch k := activeKey(m); {
		case d.seen.done(m):
			d.m.dropped.WithLabelValues("already_sent").Inc()
		case d.active[k] != nil:
			d.m.dropped.WithLabelValues("in_progress").Inc()
			e.left++
			d.active[k].entries = append(d.active[k].entries, e)
		default:
			e.left++
			d.active[k] = &holder{entries: []*entry{e}}
			return false
		}
		return true
	})
	if e.left > 0 {
		t.entries = append(t.entries, e)
	}
	d.mu.Unlock()
	for _, m := range msgs {
		k := activeKey(m)
		d.enqueue(m, func() {
			d.mu.Lock()
			for _, e := range d.active[k].entries {
				e.left--
			}
			delete(d.active, k)
			d.mu.Unlock()
		})
	}
	return nil
}

// holder is a message held here, with the records it settles.
type holder struct{ entries []*entry }

// activeKey names a message's next attempt.
func activeKey(m *schemas.WebhookMessage) string {
	return seenKey(m.ID, m.Round, strconv.Itoa(m.Attempt+1))
}

// authentic checks the MAC of a record of an internal topic.
func (d *Dispatcher) authentic(rec *kgo.Record) error {
	if err := d.mac.Check(rec.Value, kafka.Header(rec, schemas.HeaderIngestMAC)); err != nil {
		return fmt.Errorf("not written by CertNode: %w", err)
	}
	return nil
}

// dueMessage reads a message of certnode.webhooks: it must be keyed by
// its endpoint, and the endpoint must be its organization's.
func (d *Dispatcher) dueMessage(rec *kgo.Record) (*schemas.WebhookMessage, error) {
	if err := d.authentic(rec); err != nil {
		return nil, err
	}
	m, err := schemas.DecodeWebhookMessage(rec.Value)
	if err != nil {
		return nil, err
	}
	if string(rec.Key) != m.EndpointID {
		return nil, fmt.Errorf("record key %q, endpoint %q", rec.Key, m.EndpointID)
	}
	return m, nil
}

// endpoints waits for the directory's first state: a missing state is not
// an organization without endpoints.
func (d *Dispatcher) endpoints(ctx context.Context, org string) ([]*Endpoint, error) {
	for {
		if eps, ok := d.dir.Endpoints(org); ok {
			return eps, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (d *Dispatcher) skip(rec *kgo.Record, err error) {
	if errors.Is(err, errNotOurs) {
		return
	}
	d.m.skipped.WithLabelValues(rec.Topic).Inc()
	d.log.Warn("record skipped", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "err", err)
}

// release commits what is settled of partitions leaving this member (when
// they were revoked, not lost) and forgets them; messages of theirs still
// in flight finish, and the new owner sends them again.
func (d *Dispatcher) release(ctx context.Context, parts map[string][]int32, commit bool) {
	if commit {
		d.commit(ctx, parts)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for topic, ps := range parts {
		for _, p := range ps {
			delete(d.tracks, tp{topic, p})
			delete(d.assigned, tp{topic, p})
		}
	}
}

func (d *Dispatcher) assign(parts map[string][]int32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for topic, ps := range parts {
		for _, p := range ps {
			d.assigned[tp{topic, p}] = true
		}
	}
}

func (d *Dispatcher) commitLoop(ctx context.Context) {
	tick := time.NewTicker(d.cfg.CommitInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			d.commit(ctx, nil)
		}
	}
}

// commit commits the settled offsets of only (nil: every partition held).
func (d *Dispatcher) commit(ctx context.Context, only map[string][]int32) {
	offsets := map[string]map[int32]kgo.EpochOffset{}
	marks := map[tp]int64{}
	d.mu.Lock()
	for k, t := range d.tracks {
		if only != nil && !containsPart(only, k) {
			continue
		}
		if m := t.mark(); m > t.committed {
			if offsets[k.topic] == nil {
				offsets[k.topic] = map[int32]kgo.EpochOffset{}
			}
			offsets[k.topic][k.part] = kgo.EpochOffset{Epoch: -1, Offset: m}
			marks[k] = m
		}
	}
	d.mu.Unlock()
	if len(marks) == 0 {
		return
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	var cerr error
	d.cl.CommitOffsetsSync(cctx, offsets, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		cerr = commitError(resp, err)
	})
	if cerr != nil {
		if !kafka.LostMembership(cerr) {
			d.log.Warn("commit failed; retried at the next tick", "err", cerr)
		}
		return
	}
	d.mu.Lock()
	for k, m := range marks {
		if t := d.tracks[k]; t != nil && m > t.committed {
			t.committed = m
		}
	}
	d.mu.Unlock()
}

// commitError is the commit's error, or the first partition's.
func commitError(resp *kmsg.OffsetCommitResponse, err error) error {
	if err != nil || resp == nil {
		return err
	}
	for _, t := range resp.Topics {
		for _, p := range t.Partitions {
			if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
				return err
			}
		}
	}
	return nil
}

func containsPart(parts map[string][]int32, k tp) bool {
	for _, p := range parts[k.topic] {
		if p == k.part {
			return true
		}
	}
	return false
}

// send produces rec and calls then once the broker acknowledged it,
// retrying with backoff until it is, or until the dispatcher stops (the
// record it came from is then not committed, and is read again).
//
// The client runs produce callbacks one at a time and frees a record's
// buffer space only after its callback: then, which may take d.mu or
// produce, runs on a goroutine of its own, never in the callback.
func (d *Dispatcher) send(rec *kgo.Record, then func()) {
	d.flight.Add(1)
	var try func(backoff time.Duration)
	try = func(backoff time.Duration) {
		r := &kgo.Record{Topic: rec.Topic, Key: rec.Key, Value: rec.Value,
			Headers: []kgo.RecordHeader{{Key: schemas.HeaderIngestMAC, Value: d.mac.Header(rec.Value)}}}
		r.Headers = append(r.Headers, rec.Headers...)
		d.cl.Produce(d.ctx, r, func(_ *kgo.Record, err error) {
			switch {
			case err == nil:
				go func() {
					if then != nil {
						then()
					}
					d.flight.Add(-1)
				}()
			case d.ctx.Err() != nil:
				d.flight.Add(-1)
			default:
				d.log.Warn("produce failed, retrying", "topic", rec.Topic, "err", err, "backoff", backoff)
				time.AfterFunc(backoff, func() { try(min(2*backoff, 5*time.Second)) })
			}
		})
	}
	try(100 * time.Millisecond)
}
