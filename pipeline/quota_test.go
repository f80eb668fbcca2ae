package pipeline

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
)

func localLimiter(limits map[string]tenants.Limits) *tenants.LocalLimiter {
	return tenants.NewLocalLimiter(func(id string) (tenants.Limits, bool) { l, ok := limits[id]; return l, ok })
}

// interleaved is n of fast's producer records with one of slow's every
// n/perSlow records (ids slow-00.., fast-000..) and, when ingest > 0, that
// many of slow's records written by ingest (ingest-0..), spread the same way.
func (h *harness) interleaved(slow, fast string, nSlow, nFast, ingest int) []*kgo.Record {
	var recs []*kgo.Record
	for i := range nFast {
		if i%(nFast/nSlow) == 0 && i/(nFast/nSlow) < nSlow {
			recs = append(recs, h.produced(slow, fmt.Sprintf("slow-%02d", i/(nFast/nSlow))))
		}
		if ingest > 0 && i%(nFast/ingest) == 1 {
			recs = append(recs, h.request(slow, fmt.Sprintf("ingest-%d", i/(nFast/ingest)), schemas.KindSign, `{}`, ""))
		}
		recs = append(recs, h.produced(fast, fmt.Sprintf("fast-%03d", i)))
	}
	return recs
}

// byPrefix returns the results whose id starts with prefix, in the order
// they were produced.
func byPrefix(out []*kgo.Record, res map[string]*schemas.Result, prefix string) []*schemas.Result {
	var rs []*schemas.Result
	for _, r := range out {
		if id := kafka.Header(r, schemas.HeaderRequestID); len(id) >= len(prefix) && id[:len(prefix)] == prefix {
			rs = append(rs, res[id])
		}
	}
	return rs
}

// consumeAll reads every record topic holds now.
func (h *harness) consumeAll(topic string) []*kgo.Record {
	h.t.Helper()
	ends, err := kadm.NewClient(h.client).ListEndOffsets(context.Background(), topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		h.t.Fatal(err)
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) { n += o.Offset })
	return h.consume(topic, int(n))
}

func lastProcessed(rs []*schemas.Result) time.Time {
	var last time.Time
	for _, r := range rs {
		if r.ProcessedAt.After(last) {
			last = r.ProcessedAt
		}
	}
	return last
}

// latencies are the results' times from the producer's record timestamp
// to processing, sorted.
func latencies(rs []*schemas.Result) []time.Duration {
	var ds []time.Duration
	for _, r := range rs {
		ds = append(ds, r.ProcessedAt.Sub(r.ReceivedAt))
	}
	slices.Sort(ds)
	return ds
}

// A producer tenant over its rate is held back and released at that rate;
// the other tenant on the same partition, and the slow tenant's records
// written by ingest, are not held up.
func TestWorkerHoldsProducerOverRate(t *testing.T) {
	h := newHarness(t, 1) // one partition: both tenants share it
	reg := prometheus.NewRegistry()
	const nSlow, nFast, rate = 10, 200, 5.0
	recs := h.interleaved("acme", "globex", nSlow, nFast, 5)
	h.produce(recs...)
	_, stop := h.workerWith(context.Background(), h.ring, func(c *Config) {
		c.Limiter, c.Registerer = localLimiter(map[string]tenants.Limits{"acme": {RateLimit: rate, Burst: 1}}), reg
	})
	defer stop()
	out := h.consume(h.topics.Receipts, len(recs))
	res := results(t, out)
	if len(res) != len(recs) {
		t.Fatalf("%d results for %d requests", len(res), len(recs))
	}
	for id, r := range res {
		if r.Status != schemas.StatusSigned {
			t.Fatalf("%s: %+v", id, r)
		}
	}
	slow, fast, ingest := byPrefix(out, res, "slow-"), byPrefix(out, res, "fast-"), byPrefix(out, res, "ingest-")
	for i, r := range slow {
		if r.ID != fmt.Sprintf("slow-%02d", i) {
			t.Fatalf("the slow tenant's results are out of order: %s at %d", r.ID, i)
		}
	}
	// A token bucket of 1 at 5/s admits the tenth record 1.8 s after the
	// first at the earliest; the slack is for the first one's processing.
	want := time.Duration(float64(nSlow-1) / rate * float64(time.Second))
	spread := slow[nSlow-1].ProcessedAt.Sub(slow[0].ProcessedAt)
	if spread < want-400*time.Millisecond || spread > want+5*time.Second {
		t.Fatalf("the slow tenant's %d records were processed over %s; its rate makes that %s", nSlow, spread, want)
	}
	// Neither the other tenant nor ingest's records wait for the slow
	// tenant's held ones.
	if lf, li, late := lastProcessed(fast), lastProcessed(ingest), slow[nSlow-2].ProcessedAt; !lf.Before(late) || !li.Before(late) {
		t.Fatalf("the fast tenant finished at +%s and ingest's records at +%s, after the slow tenant's record %d at +%s",
			lf.Sub(slow[0].ProcessedAt), li.Sub(slow[0].ProcessedAt), nSlow-2, late.Sub(slow[0].ProcessedAt))
	}
	fl := latencies(fast)
	t.Logf("fast tenant latency p50 %s, max %s; slow tenant spread %s (rate makes it %s)", fl[len(fl)/2], fl[len(fl)-1], spread, want)

	held := metric(t, reg, "certnode_worker_held_total")
	if held < nSlow/2 || held > nSlow-1 {
		t.Fatalf("certnode_worker_held_total = %v for %d records over the rate", held, nSlow-1)
	}
	if n := metric(t, reg, "certnode_worker_held_seconds"); n != held {
		t.Fatalf("held time observed %v times for %v held records", n, held)
	}
	if v := metric(t, reg, "certnode_worker_held_records"); v != 0 {
		t.Fatalf("certnode_worker_held_records = %v after all were answered", v)
	}
}

// A worker closed while it holds records commits only up to the first of
// them; the next owner answers the held records and skips those answered
// after them, so every request gets exactly one result.
func TestWorkerHandoverKeepsHeldRecords(t *testing.T) {
	testHandover(t, newHarness(t, 1), "certnode-workers")
}

// testHandover runs the handover on h's topics (one partition) in group.
func testHandover(t *testing.T, h *harness, group string) {
	const nSlow, nFast = 8, 80
	recs := h.interleaved("acme", "globex", nSlow, nFast, 0)
	h.produce(recs...)
	limits := map[string]tenants.Limits{"acme": {RateLimit: 2, Burst: 1}}
	signerA, signerB := newMemSigner(t), newMemSigner(t)
	regA, regB := prometheus.NewRegistry(), prometheus.NewRegistry()
	_, stopA := h.workerWith(context.Background(), signerA, func(c *Config) { c.Limiter, c.Registerer, c.Group = localLimiter(limits), regA, group })
	first := results(t, h.consume(h.topics.Receipts, nFast))
	if held := metric(t, regA, "certnode_worker_held_records"); held < 2 {
		stopA()
		t.Fatalf("premise: worker A holds %v records when the fast tenant is done", held)
	}
	stopA()

	// A's commit stops at the first record it had not answered.
	all := results(t, h.consumeAll(h.topics.Receipts))
	firstUnanswered := int64(-1)
	for _, r := range recs {
		if id := kafkaValueID(t, r); all[id] == nil {
			firstUnanswered = r.Offset
			break
		}
	}
	if c := committed(t, h, group); firstUnanswered < 0 || c != firstUnanswered {
		t.Fatalf("worker A committed %d; its first unanswered record is at %d (answered %d of %d)", c, firstUnanswered, len(all), len(recs))
	}

	_, stopB := h.workerWith(context.Background(), signerB, func(c *Config) { c.Limiter, c.Registerer, c.Group = localLimiter(limits), regB, group })
	defer stopB()
	res := results(t, h.consume(h.topics.Receipts, len(recs))) // fails on duplicates
	if len(res) != len(recs) {
		t.Fatalf("%d results for %d requests", len(res), len(recs))
	}
	byB := 0
	for id, r := range res {
		if r.Kid == signerB.kid {
			byB++
			if first[id] != nil {
				t.Fatalf("%s answered by both workers", id)
			}
		}
	}
	if byB == 0 || byB >= nSlow {
		t.Fatalf("worker B answered %d records; A left %d held", byB, nSlow)
	}
	if v := metric(t, regB, "certnode_worker_handover_skipped_total"); v == 0 {
		t.Fatal("worker B skipped nothing that A had answered after its commit point")
	}
}

func kafkaValueID(t *testing.T, r *kgo.Record) string {
	t.Helper()
	req, err := schemas.DecodeRequest(r.Value)
	if err != nil {
		t.Fatal(err)
	}
	return req.ID
}

// Past MaxHeldBytes the partition is paused (the records behind the held
// ones wait), and resumed once the held records drain; none is lost.
func TestWorkerPausesPartitionOverHeldBound(t *testing.T) {
	h := newHarness(t, 1)
	reg := prometheus.NewRegistry()
	const nSlow = 12
	var slow []*kgo.Record
	for i := range nSlow {
		slow = append(slow, h.produced("acme", fmt.Sprintf("slow-%02d", i)))
	}
	h.produce(slow...)
	bound := 3 * heldSize(slow[0])
	_, stop := h.workerWith(context.Background(), h.ring, func(c *Config) {
		c.Limiter = localLimiter(map[string]tenants.Limits{"acme": {RateLimit: 10, Burst: 1}})
		c.Registerer, c.MaxBatch, c.MaxHeldBytes = reg, 2, bound
	})
	defer stop()

	deadline := time.Now().Add(10 * time.Second)
	for metric(t, reg, "certnode_worker_paused_partitions") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the partition was not paused with its held records over the bound")
		}
		time.Sleep(5 * time.Millisecond)
	}
	h.produce(h.produced("globex", "fast-after-pause"))
	maxHeld := 0.0
	res := map[string]*schemas.Result{}
	for len(res) < nSlow+1 {
		maxHeld = max(maxHeld, metric(t, reg, "certnode_worker_held_records"))
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d results", len(res), nSlow+1)
		}
		res = results(t, h.consumeAll(h.topics.Receipts))
		time.Sleep(5 * time.Millisecond)
	}
	// The bound holds up to one poll's records beyond it.
	if maxHeld > 3+2 {
		t.Fatalf("%v records held with a bound of 3 records' bytes and polls of 2", maxHeld)
	}
	if v := metric(t, reg, "certnode_worker_paused_partitions"); v != 0 {
		t.Fatalf("%v partitions paused after the held records drained", v)
	}
	for id, r := range res {
		if r.Status != schemas.StatusSigned {
			t.Fatalf("%s: %+v", id, r)
		}
	}
}

type limiterFunc func(tenant string, n int) (time.Duration, error)

func (f limiterFunc) Take(tenant string, n int) (time.Duration, error) { return f(tenant, n) }

// A producer tenant past its monthly allowance gets failed results with
// the reason, not held and not sent to the DLQ; its records written by
// ingest, other tenants, and records the limiter cannot judge go through.
func TestWorkerMonthlyQuota(t *testing.T) {
	h := newHarness(t, 1)
	reg := prometheus.NewRegistry()
	lim := limiterFunc(func(tenant string, _ int) (time.Duration, error) {
		switch tenant {
		case "acme":
			return 0, fmt.Errorf("acme: %w", tenants.ErrMonthlyQuota)
		case "globex":
			return 0, errors.New("coordinator unreachable")
		}
		return 0, nil
	})
	badEnvelope := h.record("acme", []byte(`{"v":1,"id":"bad","tenant":"acme","kind":"sign"}`), "pk1")
	h.produce(h.produced("acme", "over-1"), h.produced("acme", "over-2"), badEnvelope,
		h.request("acme", "via-ingest", schemas.KindSign, `{}`, ""), h.produced("globex", "limiter-down"))
	_, stop := h.workerWith(context.Background(), h.ring, func(c *Config) { c.Limiter, c.Registerer = lim, reg })
	defer stop()
	res := results(t, h.consume(h.topics.Receipts, 5))
	for _, id := range []string{"over-1", "over-2"} {
		if r := res[id]; r == nil || r.Status != schemas.StatusFailed || r.Reason != ReasonMonthlyQuota || r.Auth != schemas.AuthProducer || r.KeyID != "pk1" {
			t.Fatalf("%s: %+v", id, r)
		}
	}
	if r := res["bad"]; r.Status != schemas.StatusFailed || r.Reason != ReasonBadEnvelope {
		t.Fatalf("a refused record keeps its own reason: %+v", r)
	}
	for _, id := range []string{"via-ingest", "limiter-down"} {
		if r := res[id]; r.Status != schemas.StatusSigned {
			t.Fatalf("%s: %+v", id, r)
		}
	}
	if v := metric(t, reg, "certnode_worker_monthly_quota_total"); v != 2 {
		t.Fatalf("certnode_worker_monthly_quota_total = %v", v)
	}
	if v := metric(t, reg, "certnode_worker_held_total"); v != 0 {
		t.Fatalf("%v records held", v)
	}
	// The DLQ record and the failed result are produced independently:
	// wait for the first before counting.
	h.consume(h.topics.DLQ, 1)
	if dlq := h.consumeAll(h.topics.DLQ); len(dlq) != 1 || kafka.Header(dlq[0], schemas.HeaderDLQReason) != ReasonBadEnvelope {
		t.Fatalf("DLQ holds %d records; want only the bad envelope", len(dlq))
	}
}

func TestHandoverMetadata(t *testing.T) {
	meta := encodeHandover(100, 250, []int64{100, 101, 180})
	h := parseHandover(&meta, 100)
	if h == nil || h.from != 100 || h.upto != 250 || !slices.Equal(h.held, []int64{100, 101, 180}) {
		t.Fatalf("round trip: %+v", h)
	}
	p := &partition{handover: h}
	for off, want := range map[int64]bool{99: false, 100: false, 102: true, 180: false, 249: true} {
		if got := p.answeredBefore(off); got != want {
			t.Fatalf("answered %d: %v", off, got)
		}
	}
	if p.answeredBefore(250); p.handover != nil {
		t.Fatal("the handover outlived its range")
	}
	// Another offset was committed since, or someone else's metadata.
	for _, m := range []string{meta, "member-1", handoverPrefix + "!!", handoverPrefix} {
		if parseHandover(&m, 101) != nil {
			t.Fatalf("%q accepted for offset 101", m)
		}
	}
	// Too many held records to describe: the range stops at the first one
	// left out, and the metadata stays under the bound.
	var many []int64
	for i := range int64(5000) {
		many = append(many, 1000+3*i)
	}
	meta = encodeHandover(1000, 1_000_000, many)
	h = parseHandover(&meta, 1000)
	if len(meta) > maxHandoverMetadata || h == nil || len(h.held) == 0 || len(h.held) == len(many) || h.upto != many[len(h.held)] {
		t.Fatalf("truncated handover: %d bytes, %d held, upto %d", len(meta), len(h.held), h.upto)
	}
}
