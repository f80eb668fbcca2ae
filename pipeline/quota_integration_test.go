//go:build integration

package pipeline

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// kafkaHarness works on topics of its own (one partition) on the real
// broker, deleted with the group when the test ends.
func kafkaHarness(t *testing.T) (*harness, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prefix := fmt.Sprintf("certnode-it-wquota-%d", time.Now().UnixNano())
	kcfg := kafka.Config{Brokers: testenv.KafkaBrokers(t), Partitions: 1, ReplicationFactor: 1, TopicPrefix: prefix}
	h := harnessOn(t, kcfg)
	if err := kafka.EnsureTopics(ctx, h.client, kcfg); err != nil {
		t.Fatal(err)
	}
	group := prefix + "-workers"
	t.Cleanup(func() {
		adm := kadm.NewClient(h.client)
		adm.DeleteTopics(context.Background(), h.topics.All()...)
		adm.DeleteGroups(context.Background(), group)
	})
	return h, group
}

// On the real broker: a producer tenant limited to 5/s sends a burst while
// another producer tenant shares its partition. Every record is answered
// once; the limited tenant's are spread at its rate, the other's are not
// delayed.
func TestWorkerQuotaOnKafka(t *testing.T) {
	h, group := kafkaHarness(t)
	reg := prometheus.NewRegistry()
	const nSlow, nFast, rate, burst = 15, 300, 5.0, 2
	_, stop := h.workerWith(context.Background(), h.ring, func(c *Config) {
		c.Group, c.Registerer = group, reg
		c.Limiter = localLimiter(map[string]tenants.Limits{"acme": {RateLimit: rate, Burst: burst}})
	})
	defer stop()
	// Wait until the worker has joined the group, so latencies are the
	// worker's and not the group's first rebalance.
	h.produce(h.produced("globex", "warm-up"))
	h.consume(h.topics.Receipts, 1)

	recs := h.interleaved("acme", "globex", nSlow, nFast, 0)
	h.produce(recs...)
	out := h.consume(h.topics.Receipts, len(recs)+1)
	res := results(t, out) // fails on duplicates
	if len(res) != len(recs)+1 {
		t.Fatalf("%d results for %d requests", len(res), len(recs)+1)
	}
	for id, r := range res {
		if r.Status != schemas.StatusSigned || r.Auth != schemas.AuthProducer {
			t.Fatalf("%s: %+v", id, r)
		}
	}
	slow, fast := byPrefix(out, res, "slow-"), byPrefix(out, res, "fast-")
	for i, r := range slow {
		if r.ID != fmt.Sprintf("slow-%02d", i) {
			t.Fatalf("the slow tenant's results are out of order: %s at %d", r.ID, i)
		}
	}
	want := time.Duration(float64(nSlow-burst) / rate * float64(time.Second))
	spread := slow[nSlow-1].ProcessedAt.Sub(slow[0].ProcessedAt)
	if spread < want-400*time.Millisecond || spread > want+5*time.Second {
		t.Fatalf("the slow tenant's %d records were processed over %s; rate and burst make that %s", nSlow, spread, want)
	}
	fl, sl := latencies(fast), latencies(slow)
	if lf, late := lastProcessed(fast), slow[nSlow-2].ProcessedAt; !lf.Before(late) {
		t.Fatalf("the fast tenant finished %s after the slow tenant's first record, after its record %d (%s)",
			lf.Sub(slow[0].ProcessedAt), nSlow-2, late.Sub(slow[0].ProcessedAt))
	}
	t.Logf("fast tenant (%d records) latency p50 %s, p99 %s, max %s; slow tenant (%d at %g/s, burst %d) latency max %s, spread %s (rate makes it %s); held %v",
		nFast, fl[len(fl)/2], fl[len(fl)*99/100], fl[len(fl)-1], nSlow, rate, burst, sl[len(sl)-1], spread, want,
		metric(t, reg, "certnode_worker_held_total"))
}

// The handover through a real broker's commit metadata.
func TestWorkerHandoverOnKafka(t *testing.T) {
	h, group := kafkaHarness(t)
	testHandover(t, h, group)
}
