package clickhouse

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/kafkatest"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// fakeEnv is a sink on an in-process Kafka (kfake) writing to an Inserter.
type fakeEnv struct {
	cluster *kfake.Cluster
	cfg     Config
	topics  schemas.Topics
	cl      *kgo.Client
	adm     *kadm.Client
}

func newFakeEnv(t *testing.T) *fakeEnv {
	t.Helper()
	topics := schemas.TopicsFor(schemas.DefaultTopicPrefix)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, topics.Receipts, topics.DLQ, topics.Usage, topics.WebhookAttempts, topics.Audit))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	cfg := DefaultConfig()
	cfg.Kafka = kafka.Config{Brokers: c.ListenAddrs(), Partitions: 2, ReplicationFactor: 1}
	cfg.ClickHouse.Addr = []string{"unused:9000"}
	cfg.Sealer = testSealer(t)
	cfg.BatchWait, cfg.AttemptTimeout = 100*time.Millisecond, 2*time.Second
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return &fakeEnv{cluster: c, cfg: cfg, topics: topics, cl: cl, adm: kadm.NewClient(cl)}
}

func (e *fakeEnv) start(t *testing.T, ins Inserter[Row]) *Sink {
	t.Helper()
	s, err := newSink(e.cfg, ins, &fakeTable[UsageRow]{}, &fakeTable[AttemptRow]{}, &fakeTable[AuditRow]{})
	if err != nil {
		t.Fatal(err)
	}
	runSink(t, s)
	return s
}

func (e *fakeEnv) waitCommitted(t *testing.T, n int64) {
	t.Helper()
	kafkatest.WaitCommitted(t, e.adm, e.cfg.Group, e.topics.Receipts, n, 30*time.Second)
}

// One batch with good results, a row ClickHouse refuses, results that do
// not decode, an unauthenticated one and a wild received_at: each ends
// where it belongs, and only then are the offsets committed.
func TestSinkSortsEveryRecord(t *testing.T) {
	e := newFakeEnv(t)
	e.cfg.BatchWait = time.Second // one batch: all records are produced at once
	now := time.Now().Truncate(time.Second)
	var recs []*kgo.Record
	var want []string
	for i := range 4 {
		id := fmt.Sprintf("ok-%d", i)
		recs = append(recs, resultRecord(t, e.topics.Receipts, signedResult("t1", id, now), now))
		want = append(want, id)
	}
	verify := &schemas.Result{V: 1, ID: "v-1", Tenant: "t1", Kind: schemas.KindVerify, Status: schemas.StatusValid,
		Auth: schemas.AuthProducer, Keys: schemas.KeysCaller, ReceiptID: "ok-0-receipt", Receipt: []byte(`{}`), ProcessedAt: now}
	wild := signedResult("t1", "wild", now)
	wild.ReceivedAt = time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC)
	unauth := &schemas.Result{V: 1, ID: "spoof", Tenant: "t1", Kind: schemas.KindSign, Status: schemas.StatusFailed,
		Reason: "unauthenticated", Auth: schemas.AuthNone, ProcessedAt: now}
	badStatus := signedResult("t1", "bad-status", now)
	badStatus.Status = "weird"
	recs = append(recs,
		resultRecord(t, e.topics.Receipts, verify, now),
		resultRecord(t, e.topics.Receipts, wild, now),
		resultRecord(t, e.topics.Receipts, signedResult("t1", "refuse-1", now), now),
		resultRecord(t, e.topics.Receipts, unauth, now),
		resultRecord(t, e.topics.Receipts, badStatus, now),
		&kgo.Record{Topic: e.topics.Receipts, Key: []byte("t1"), Value: []byte("not json"), Timestamp: now},
	)
	want = append(want, "v-1", "wild")
	produce(t, e.cl, recs...)
	f := &fakeInserter{}
	reg := prometheus.NewPedanticRegistry()
	e.cfg.Registerer = reg
	s := e.start(t, f)
	e.waitCommitted(t, int64(len(recs)))

	got := f.ids()
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("inserted %v, want %v", got, want)
	}
	for _, r := range f.rows {
		if r.ID == "wild" && !r.ReceivedAt.Equal(now) {
			t.Errorf("received_at of the year-1900 result is %s, want the broker time %s", r.ReceivedAt, now)
		}
		if r.ID == "v-1" && (r.Keys != "caller" || r.Auth != "producer" || r.Kind != "verify") {
			t.Errorf("verify row %+v", r)
		}
	}

	dlq := readTopic(t, e.cfg.Kafka.Brokers, e.topics.DLQ, 3)
	reasons := map[string][]string{}
	for _, d := range dlq {
		src := slices.IndexFunc(recs, func(r *kgo.Record) bool { return string(r.Value) == string(d.Value) })
		if src < 0 {
			t.Fatalf("DLQ record %q is no copy of a result", d.Value)
		}
		orig := recs[src]
		if want := fmt.Sprintf("%s/%d/%d", orig.Topic, orig.Partition, orig.Offset); kafka.Header(d, schemas.HeaderDLQSource) != want {
			t.Errorf("source %q, want %q", kafka.Header(d, schemas.HeaderDLQSource), want)
		}
		if string(d.Key) != "t1" || kafka.Header(d, schemas.HeaderDLQError) == "" {
			t.Errorf("DLQ record key %q, error %q", d.Key, kafka.Header(d, schemas.HeaderDLQError))
		}
		reason := kafka.Header(d, schemas.HeaderDLQReason)
		reasons[reason] = append(reasons[reason], kafka.Header(d, schemas.HeaderDLQError))
	}
	if len(reasons[ReasonRefused]) != 1 || !strings.Contains(reasons[ReasonRefused][0], "code: 395, message: row refuse-1") {
		t.Errorf("refused: %q", reasons[ReasonRefused])
	}
	if len(reasons[ReasonBadResult]) != 2 {
		t.Errorf("bad results: %q", reasons[ReasonBadResult])
	}

	for _, m := range []struct {
		name      string
		got, want float64
	}{
		{"inserted", value(t, s.m.inserted), 6},
		{"dlq bad_result", value(t, s.m.dlq.WithLabelValues(ReasonBadResult)), 2},
		{"dlq refused", value(t, s.m.dlq.WithLabelValues(ReasonRefused)), 1},
		{"unauthenticated", value(t, s.m.unauthenticated), 1},
		{"received_at replaced", value(t, s.m.replaced.WithLabelValues(colReceivedAt)), 1},
		{"processed_at replaced", value(t, s.m.replaced.WithLabelValues(colProcessedAt)), 0},
		{"pending", value(t, s.m.pending), 0},
	} {
		if m.got != m.want {
			t.Errorf("metric %s = %v, want %v", m.name, m.got, m.want)
		}
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(fams, func(f *dto.MetricFamily) bool { return f.GetName() == "certnode_sink_clickhouse_flush_seconds" })
	if i < 0 || fams[i].GetMetric()[0].GetHistogram().GetSampleCount() < 1 {
		t.Errorf("no flush observed in the registry")
	}
}

// value reads a counter or gauge.
func value(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}

// holdInserter fails transiently while held, counting attempts.
type holdInserter struct {
	fakeInserter
	held     atomic.Bool
	attempts atomic.Int32
}

func (h *holdInserter) Insert(ctx context.Context, rows []Row) error {
	h.attempts.Add(1)
	if h.held.Load() {
		return errTransient
	}
	return h.fakeInserter.Insert(ctx, rows)
}

// While ClickHouse fails, the batch is retried, stays pending and nothing
// is committed; once it recovers every row is inserted once.
func TestSinkRetriesUntilInserted(t *testing.T) {
	e := newFakeEnv(t)
	now := time.Now()
	produce(t, e.cl, resultRecord(t, e.topics.Receipts, signedResult("t1", "a", now), now),
		resultRecord(t, e.topics.Receipts, signedResult("t1", "b", now), now))
	h := &holdInserter{}
	h.held.Store(true)
	s := e.start(t, h)
	testenv.WaitFor(t, "insert attempts", 30*time.Second, func() (bool, string) {
		return h.attempts.Load() >= 3, fmt.Sprint(h.attempts.Load())
	})
	if c := kafkatest.Committed(t, e.adm, e.cfg.Group, e.topics.Receipts); c != 0 {
		t.Fatalf("committed %d records that are not in ClickHouse", c)
	}
	if p := value(t, s.m.pending); p != 2 {
		t.Fatalf("pending rows %v, want 2", p)
	}
	h.held.Store(false)
	e.waitCommitted(t, 2)
	if got := h.ids(); len(got) != 2 {
		t.Fatalf("inserted %v", got)
	}
	// The gauge is cleared just after the commit the test saw.
	testenv.WaitFor(t, "no pending rows after the commit", 5*time.Second, func() (bool, string) {
		p := value(t, s.m.pending)
		return p == 0, fmt.Sprint(p)
	})
}

// Offsets are committed only after the broker acknowledged the DLQ copies.
func TestSinkCommitsAfterDLQAcknowledged(t *testing.T) {
	e := newFakeEnv(t)
	refusal := kafkatest.RefuseProduce(t, e.cluster, e.adm, e.topics.DLQ)
	now := time.Now()
	produce(t, e.cl, resultRecord(t, e.topics.Receipts, signedResult("t1", "a", now), now),
		&kgo.Record{Topic: e.topics.Receipts, Key: []byte("t1"), Value: []byte("{}"), Timestamp: now})
	f := &fakeInserter{}
	s := e.start(t, f)
	testenv.WaitFor(t, "refused DLQ produces", 30*time.Second, func() (bool, string) {
		return refusal.Count.Load() >= 2, fmt.Sprint(refusal.Count.Load())
	})
	if got := f.ids(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("inserted %v", got)
	}
	if c := kafkatest.Committed(t, e.adm, e.cfg.Group, e.topics.Receipts); c != 0 {
		t.Fatalf("committed %d records while the DLQ copy was not acknowledged", c)
	}
	refusal.Refusing.Store(false)
	e.waitCommitted(t, 2)
	if d := readTopic(t, e.cfg.Kafka.Brokers, e.topics.DLQ, 1); kafka.Header(d[0], schemas.HeaderDLQReason) != ReasonBadResult {
		t.Fatalf("DLQ record %+v", d[0])
	}
	if got := f.ids(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("inserted %v: the retried DLQ produce must not insert again", got)
	}
	if n := value(t, s.m.dlq.WithLabelValues(ReasonBadResult)); n != 1 {
		t.Fatalf("dlq metric %v", n)
	}
}
