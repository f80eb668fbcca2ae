package webhook

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/schemas"
)

// seen remembers the attempts recorded lately, by every dispatcher, so
// that a message read again (after a dispatcher was killed before its
// commit, or when partitions moved) is not sent again. An attempt is
// recorded only after what follows it is in Kafka (the retry in a delay
// topic, the message in the DLQ), so a recorded attempt means the message
// is taken care of: a final outcome settles every copy of the message's
// round, a retry the copies that would make that attempt again. A retry
// held in memory (an ordered endpoint's) settles nothing: its record is
// re-read from the start. What stays is a delivery whose record was not
// yet written at the kill: the attempt in flight, sent again with the
// same webhook-id.
type seen struct {
	mu       sync.Mutex
	keys     map[string]time.Time
	lookback time.Duration
}

func newSeen(lookback time.Duration) *seen {
	return &seen{keys: map[string]time.Time{}, lookback: lookback}
}

func seenKey(id, round, attempt string) string { return id + "\x00" + round + "\x00" + attempt }

func (s *seen) add(a *schemas.WebhookAttempt, now time.Time) {
	var k string
	switch {
	case a.Outcome != schemas.OutcomeRetrying:
		k = seenKey(a.MessageID, a.Round, "final")
	case !a.Held:
		k = seenKey(a.MessageID, a.Round, strconv.Itoa(a.Attempt))
	default:
		return
	}
	s.mu.Lock()
	s.keys[k] = now
	s.mu.Unlock()
}

// done reports whether m's next attempt was already made and recorded.
func (s *seen) done(m *schemas.WebhookMessage) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.keys[seenKey(m.ID, m.Round, "final")]; ok {
		return true
	}
	_, ok := s.keys[seenKey(m.ID, m.Round, strconv.Itoa(m.Attempt+1))]
	return ok
}

func (s *seen) prune(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, at := range s.keys {
		if now.Sub(at) > s.lookback {
			delete(s.keys, k)
		}
	}
}

func (s *seen) size() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.keys)
}

// follow reads the attempts of the last lookback from every partition,
// returns once it has read up to the ends it found at its start (loaded),
// and goes on following in the background until ctx ends.
func (d *Dispatcher) follow(ctx context.Context) (loaded <-chan error) {
	ch := make(chan error, 1)
	go func() {
		start := d.now().Add(-d.cfg.SeenLookback)
		cl, err := kafka.NewClient(d.cfg.Kafka, kgo.ConsumeTopics(d.topics.WebhookAttempts),
			kgo.ConsumeResetOffset(kgo.NewOffset().AfterMilli(start.UnixMilli())), kgo.FetchMaxWait(250*time.Millisecond))
		if err != nil {
			ch <- err
			return
		}
		defer cl.Close()
		topic := d.topics.WebhookAttempts
		ends, err := listOffsets(ctx, cl, topic, func(ctx context.Context, adm *kadm.Client) (kadm.ListedOffsets, error) {
			return adm.ListEndOffsets(ctx, topic)
		})
		if err != nil {
			ch <- err
			return
		}
		// Where reading starts: a partition with nothing since then is
		// read up to its end already.
		pos, err := listOffsets(ctx, cl, topic, func(ctx context.Context, adm *kadm.Client) (kadm.ListedOffsets, error) {
			return adm.ListOffsetsAfterMilli(ctx, start.UnixMilli(), topic)
		})
		if err != nil {
			ch <- err
			return
		}
		for p, o := range pos {
			if o < 0 {
				pos[p] = ends[p]
			}
		}
		caughtUp := func() bool {
			for p, end := range ends {
				if end > 0 && pos[p] < end {
					return false
				}
			}
			return true
		}
		signalled := false
		if caughtUp() {
			ch <- nil
			signalled = true
		}
		lastPrune := d.now()
		for ctx.Err() == nil {
			fetches := cl.PollFetches(ctx)
			if fetches.IsClientClosed() {
				break
			}
			now := d.now()
			fetches.EachRecord(func(rec *kgo.Record) {
				pos[rec.Partition] = rec.Offset + 1
				if d.authentic(rec) != nil {
					return // a forged attempt must not hide a message
				}
				if a, err := schemas.DecodeWebhookAttempt(rec.Value); err == nil {
					d.seen.add(a, rec.Timestamp)
				}
			})
			if !signalled && caughtUp() {
				ch <- nil
				signalled = true
			}
			if now.Sub(lastPrune) > time.Minute {
				d.seen.prune(now)
				lastPrune = now
			}
		}
		if !signalled {
			ch <- ctx.Err()
		}
	}()
	return ch
}

// listOffsets lists offsets of topic's partitions, retrying a while.
func listOffsets(ctx context.Context, cl *kgo.Client, topic string,
	list func(context.Context, *kadm.Client) (kadm.ListedOffsets, error)) (map[int32]int64, error) {
	for attempt := 0; ; attempt++ {
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		offs, err := list(lctx, kadm.NewClient(cl))
		cancel()
		if err == nil {
			err = offs.Error()
		}
		if err == nil {
			out := map[int32]int64{}
			offs.Each(func(o kadm.ListedOffset) { out[o.Partition] = o.Offset })
			return out, nil
		}
		if ctx.Err() != nil || attempt == 20 {
			return nil, errors.Join(fmt.Errorf("offsets of %s: %w", topic, err), ctx.Err())
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}
