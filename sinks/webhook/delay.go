package webhook

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/schemas"
)

// delayer moves messages out of the delay topics when they are due. Every
// record of a tier waits the same delay from the time it was written, so
// a partition is in due order: the delayer holds what it read of a
// partition, pauses fetching it until its head is due, then forwards the
// head to certnode.webhooks (or, for a message due later than the tier's
// delay, to the tier that fits what is left) and commits.
type delayer struct {
	d     *Dispatcher
	cl    *kgo.Client
	delay map[string]time.Duration // by topic

	mu       sync.Mutex
	bufs     map[tp][]*held
	paused   map[tp]bool
	assigned map[tp]bool
}

func newDelayer(d *Dispatcher, opts ...kgo.Opt) (*delayer, error) {
	dl := &delayer{d: d, delay: map[string]time.Duration{}, bufs: map[tp][]*held{}, paused: map[tp]bool{},
		assigned: map[tp]bool{}}
	for i, t := range d.topics.WebhookDelays {
		dl.delay[t] = schemas.WebhookDelayTiers[i]
	}
	group := []kgo.Opt{
		kgo.ConsumerGroup(kafka.DelayGroup(d.cfg.Group)),
		kgo.ConsumeTopics(d.topics.WebhookDelays...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.DisableAutoCommit(),
		kgo.FetchMaxWait(250 * time.Millisecond),
		kgo.SessionTimeout(10 * time.Second),
		kgo.HeartbeatInterval(time.Second),
		kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, parts map[string][]int32) { dl.assign(parts) }),
		kgo.OnPartitionsRevoked(func(_ context.Context, _ *kgo.Client, parts map[string][]int32) { dl.drop(parts) }),
		kgo.OnPartitionsLost(func(_ context.Context, _ *kgo.Client, parts map[string][]int32) { dl.drop(parts) }),
		kafka.ResultBatches(),
	}
	var err error
	dl.cl, err = kafka.NewClient(d.cfg.Kafka, append(group, opts...)...)
	return dl, err
}

// drop forgets what was read of partitions leaving this member; their new
// owner reads them again from the last commit.
func (dl *delayer) drop(parts map[string][]int32) {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	for topic, ps := range parts {
		for _, p := range ps {
			k := tp{topic, p}
			delete(dl.bufs, k)
			delete(dl.assigned, k)
			if dl.paused[k] {
				dl.cl.ResumeFetchPartitions(map[string][]int32{topic: {p}})
				delete(dl.paused, k)
			}
		}
	}
}

func (dl *delayer) assign(parts map[string][]int32) {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	for topic, ps := range parts {
		for _, p := range ps {
			dl.assigned[tp{topic, p}] = true
		}
	}
}

func (dl *delayer) run(ctx context.Context) error {
	for ctx.Err() == nil {
		pctx, cancel := context.WithTimeout(ctx, dl.nextWake())
		fetches := dl.cl.PollRecords(pctx, 1000)
		cancel()
		if fetches.IsClientClosed() {
			return nil
		}
		fetches.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				dl.d.log.Warn("fetch error", "topic", t, "partition", p, "err", err)
			}
		})
		now := dl.d.now()
		dl.mu.Lock()
		for _, rec := range fetches.Records() {
			// A record polled before its partition left is its new
			// owner's.
			if k := (tp{rec.Topic, rec.Partition}); dl.assigned[k] {
				dl.bufs[k] = append(dl.bufs[k], dl.hold(rec, now))
			}
		}
		dl.mu.Unlock()
		if err := dl.forward(ctx); err != nil {
			return nil // stopping; what was not committed is read again
		}
	}
	return nil
}

// held is a record read from a delay topic, with when to forward it.
type held struct {
	rec   *kgo.Record
	ready time.Time
	msg   *schemas.WebhookMessage // nil when the record is not one (err says why)
	err   error
}

// hold dates a record: its tier's delay after it was written or, when the
// message is due less than the shortest tier after that, when it is due
// (waiting in memory, and holding back its partition, for under that
// tier's delay rather than going round the tier again).
func (dl *delayer) hold(rec *kgo.Record, now time.Time) *held {
	delay := dl.delay[rec.Topic]
	// A record dated in the future (a writer's clock ahead, a forged
	// timestamp) waits no longer than its tier from now.
	h := &held{rec: rec, ready: rec.Timestamp.Add(delay)}
	if h.ready.After(now.Add(delay)) {
		h.ready = now.Add(delay)
	}
	if h.msg, h.err = dl.d.dueMessage(rec); h.err == nil {
		if extra := h.msg.DueAt.Sub(h.ready); extra > 0 && extra < schemas.WebhookDelayTiers[0] && h.msg.DueAt.Before(now.Add(delay+extra)) {
			h.ready = h.msg.DueAt
		}
	}
	return h
}

// nextWake is how long to wait for records before looking at the heads.
func (dl *delayer) nextWake() time.Duration {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	wake := time.Second
	now := dl.d.now()
	for _, buf := range dl.bufs {
		if len(buf) > 0 {
			wake = min(wake, max(time.Millisecond, buf[0].ready.Sub(now)))
		}
	}
	return wake
}

// forward sends on every record whose wait is over, then commits them.
func (dl *delayer) forward(ctx context.Context) error {
	now := dl.d.now()
	var due []*held
	offsets := map[string]map[int32]kgo.EpochOffset{}
	dl.mu.Lock()
	for k, buf := range dl.bufs {
		n := 0
		for n < len(buf) && !buf[n].ready.After(now) {
			n++
		}
		if n > 0 {
			due = append(due, buf[:n]...)
			if offsets[k.topic] == nil {
				offsets[k.topic] = map[int32]kgo.EpochOffset{}
			}
			offsets[k.topic][k.part] = kgo.EpochOffset{Epoch: -1, Offset: buf[n-1].rec.Offset + 1}
			dl.bufs[k] = buf[n:]
		}
		// Hold a partition whose head is not due: what follows is not either.
		switch waiting := len(dl.bufs[k]) > 0; {
		case waiting && !dl.paused[k]:
			dl.cl.PauseFetchPartitions(map[string][]int32{k.topic: {k.part}})
			dl.paused[k] = true
		case !waiting && dl.paused[k]:
			dl.cl.ResumeFetchPartitions(map[string][]int32{k.topic: {k.part}})
			delete(dl.paused, k)
		}
		if len(dl.bufs[k]) == 0 {
			delete(dl.bufs, k)
		}
	}
	dl.mu.Unlock()
	if len(due) == 0 {
		return nil
	}
	out := make([]*kgo.Record, 0, len(due))
	for _, h := range due {
		rec, m := h.rec, h.msg
		if h.err != nil {
			dl.d.skip(rec, h.err)
			continue
		}
		topic := dl.d.topics.Webhooks
		if left := m.DueAt.Sub(now); left > 50*time.Millisecond {
			topic = dl.d.topics.WebhookDelays[schemas.DelayTier(left)]
		}
		out = append(out, &kgo.Record{Topic: topic, Key: rec.Key, Value: rec.Value,
			Headers: []kgo.RecordHeader{{Key: schemas.HeaderIngestMAC, Value: dl.d.mac.Header(rec.Value)}}})
	}
	work := context.WithoutCancel(ctx)
	if err := kafka.Retry(ctx, dl.d.log, "delay forward", func() error {
		pctx, cancel := context.WithTimeout(work, 30*time.Second)
		defer cancel()
		return kafka.ProduceAcked(pctx, dl.d.cl, &out, func(*kgo.Record) {})
	}); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(work, 10*time.Second)
	defer cancel()
	var cerr error
	dl.cl.CommitOffsetsSync(cctx, offsets, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		cerr = commitError(resp, err)
	})
	if cerr != nil && !kafka.LostMembership(cerr) {
		// The next commit covers these offsets; until then a restart
		// forwards them again (the same message ids).
		dl.d.log.Warn("delay commit failed", "err", cerr)
	}
	return nil
}
