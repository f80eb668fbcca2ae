package usage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/kafkatest"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// eventSchema is the published JSON Schema of usage events.
func eventSchema(t testing.TB) *jsonschema.Schema {
	t.Helper()
	f, err := os.Open("../../schemas/usage-event.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource("usage-event.schema.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("usage-event.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	return sch
}

// conforms checks an encoded event against the JSON Schema.
func conforms(t testing.TB, sch *jsonschema.Schema, val []byte) error {
	t.Helper()
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(val))
	if err != nil {
		t.Fatal(err)
	}
	return sch.Validate(v)
}

var t0 = time.Date(2026, 5, 31, 23, 59, 58, 123456789, time.UTC)

func result(mod func(*schemas.Result)) *schemas.Result {
	r := &schemas.Result{V: 1, ID: "req_1", Tenant: "acme", Kind: schemas.KindSign, Status: schemas.StatusSigned,
		Auth: schemas.AuthIngest, Receipt: []byte(`{}`), Size: 321, KeyID: "key_9", JobID: "job_1", Line: 3,
		ReceivedAt: t0, ProcessedAt: t0.Add(3 * time.Second)}
	if mod != nil {
		mod(r)
	}
	return r
}

func TestEventFor(t *testing.T) {
	sch := eventSchema(t)
	broker := t0.Add(4 * time.Second)
	for _, tc := range []struct {
		name string
		res  *schemas.Result
		want *schemas.UsageEvent // nil: no event
	}{
		{"ingest sign", result(nil), &schemas.UsageEvent{SpecVersion: "1.0", ID: "req_1", Source: "/certnode/orgs/acme",
			Type: "com.certnode.request", Subject: "acme", Time: t0, DataContentType: "application/json",
			Data: schemas.UsageData{Kind: "sign", Status: "signed", Auth: "ingest", KeyID: "key_9", Bytes: 321, JobID: "job_1",
				ProcessedAt: t0.Add(3 * time.Second)}}},
		{"producer verify, invalid", result(func(r *schemas.Result) {
			r.Auth, r.Kind, r.Status, r.Receipt, r.KeyID, r.JobID, r.Line = schemas.AuthProducer, schemas.KindVerify, schemas.StatusInvalid, nil, "pk_1", "", 0
		}), &schemas.UsageEvent{SpecVersion: "1.0", ID: "req_1", Source: "/certnode/orgs/acme",
			Type: "com.certnode.request", Subject: "acme", Time: t0, DataContentType: "application/json",
			Data: schemas.UsageData{Kind: "verify", Status: "invalid", Auth: "producer", KeyID: "pk_1", Bytes: 321,
				ProcessedAt: t0.Add(3 * time.Second)}}},
		{"failed, key without id, id with odd characters", result(func(r *schemas.Result) {
			r.Status, r.Receipt, r.KeyID, r.ID, r.Tenant = schemas.StatusFailed, nil, "", "ext/1?#%", "a/b%c"
		}), &schemas.UsageEvent{SpecVersion: "1.0", ID: "ext/1?#%", Source: "/certnode/orgs/a%2Fb%25c",
			Type: "com.certnode.request", Subject: "a/b%c", Time: t0, DataContentType: "application/json",
			Data: schemas.UsageData{Kind: "sign", Status: "failed", Auth: "ingest", Bytes: 321, JobID: "job_1",
				ProcessedAt: t0.Add(3 * time.Second)}}},
		{"received long before the result: the broker's time, as the analytics row", result(func(r *schemas.Result) {
			r.ReceivedAt = t0.AddDate(0, -2, 0)
		}), &schemas.UsageEvent{SpecVersion: "1.0", ID: "req_1", Source: "/certnode/orgs/acme",
			Type: "com.certnode.request", Subject: "acme", Time: broker, DataContentType: "application/json",
			Data: schemas.UsageData{Kind: "sign", Status: "signed", Auth: "ingest", KeyID: "key_9", Bytes: 321, JobID: "job_1",
				ProcessedAt: t0.Add(3 * time.Second)}}},
		{"unauthenticated", result(func(r *schemas.Result) { r.Auth, r.Status, r.Receipt = schemas.AuthNone, schemas.StatusFailed, nil }), nil},
		{"unknown auth", result(func(r *schemas.Result) { r.Auth = "admin" }), nil},
		{"empty auth", result(func(r *schemas.Result) { r.Auth = "" }), nil},
		{"tenant with a space", result(func(r *schemas.Result) { r.Tenant = "ac me" }), nil},
		{"empty tenant", result(func(r *schemas.Result) { r.Tenant = "" }), nil},
		{"tenant too long", result(func(r *schemas.Result) { r.Tenant = strings.Repeat("a", 65) }), nil},
		{"tenant not ASCII", result(func(r *schemas.Result) { r.Tenant = "acmé" }), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev, err := EventFor(tc.res, broker, schemas.DefaultUsageSource)
			if tc.want == nil {
				if ev != nil || !errors.Is(err, ErrNotAttributable) {
					t.Fatalf("got %+v, %v; want no event", ev, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, _ := json.Marshal(ev)
			want, _ := json.Marshal(tc.want)
			if !bytes.Equal(got, want) {
				t.Fatalf("event\n %s\nwant\n %s", got, want)
			}
			if err := conforms(t, sch, got); err != nil {
				t.Fatalf("%s does not conform to the JSON Schema: %v", got, err)
			}
			if _, err := schemas.DecodeUsageEvent(got); err != nil {
				t.Fatalf("the event does not decode: %v", err)
			}
		})
	}
}

// The event of a replayed result is the same event: same id, source,
// time and outcome, so consumers keep one; only processed_at says when.
func TestEventForReplay(t *testing.T) {
	first, err := EventFor(result(nil), t0.Add(4*time.Second), schemas.DefaultUsageSource)
	if err != nil {
		t.Fatal(err)
	}
	replayed := result(func(r *schemas.Result) { r.ProcessedAt = t0.Add(40 * time.Second) })
	again, err := EventFor(replayed, t0.Add(41*time.Second), schemas.DefaultUsageSource)
	if err != nil {
		t.Fatal(err)
	}
	again.Data.ProcessedAt = first.Data.ProcessedAt
	if *first != *again {
		t.Fatalf("replay %+v differs from %+v", again, first)
	}
}

// FuzzEventFor: whatever a result record holds, an event is made only for
// an authenticated request of a valid organization, named by the record's
// key, and it is attributed to that organization and nobody else.
func FuzzEventFor(f *testing.F) {
	for _, r := range []*schemas.Result{result(nil), result(func(r *schemas.Result) { r.Auth = schemas.AuthNone }),
		result(func(r *schemas.Result) { r.Tenant = "x y" })} {
		b, _ := json.Marshal(r)
		f.Add(b, []byte(r.Tenant))
	}
	f.Add([]byte(`{"v":1,"id":"a","tenant":"t","kind":"sign","status":"failed","auth":"none","size":1,"processed_at":"2026-01-01T00:00:00Z"}`), []byte("t"))
	sch := eventSchema(f)
	f.Fuzz(func(t *testing.T, value, key []byte) {
		s := &Sink{cfg: Config{Source: schemas.DefaultUsageSource}, topics: schemas.TopicsFor("certnode"), log: slog.New(slog.DiscardHandler), m: newMetrics()}
		out := s.events([]*kgo.Record{{Topic: "certnode.receipts", Key: key, Value: value, Timestamp: t0}})
		if len(out) == 0 {
			return
		}
		res, err := schemas.DecodeResult(value)
		if err != nil {
			t.Fatalf("an event from a result that does not decode: %s", out[0].Value)
		}
		if res.Auth != schemas.AuthIngest && res.Auth != schemas.AuthProducer {
			t.Fatalf("an event from a result with auth %q", res.Auth)
		}
		ev, err := schemas.DecodeUsageEvent(out[0].Value)
		if err != nil {
			t.Fatalf("the event does not decode: %v", err)
		}
		if ev.Subject != res.Tenant || string(key) != res.Tenant || string(out[0].Key) != res.Tenant || schemas.CheckTenantID(ev.Subject) != nil {
			t.Fatalf("event for %q keyed %q, from a result of %q keyed %q", ev.Subject, out[0].Key, res.Tenant, key)
		}
		if ev.ID != res.ID || ev.Source != schemas.UsageSource(schemas.DefaultUsageSource, res.Tenant) {
			t.Fatalf("event id %q source %q for request %q of %q", ev.ID, ev.Source, res.ID, res.Tenant)
		}
		if err := conforms(t, sch, out[0].Value); err != nil {
			t.Fatalf("%s does not conform to the JSON Schema: %v", out[0].Value, err)
		}
	})
}

// env is a sink on an in-process Kafka.
type env struct {
	cluster *kfake.Cluster
	cfg     Config
	topics  schemas.Topics
	cl      *kgo.Client
	adm     *kadm.Client
}

func newEnv(t *testing.T) *env {
	t.Helper()
	topics := schemas.TopicsFor(schemas.DefaultTopicPrefix)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, topics.Receipts, topics.Usage))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	cfg := DefaultConfig()
	cfg.Kafka = kafka.Config{Brokers: c.ListenAddrs(), Partitions: 2, ReplicationFactor: 1}
	cfg.AttemptTimeout = 2 * time.Second
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return &env{cluster: c, cfg: cfg, topics: topics, cl: cl, adm: kadm.NewClient(cl)}
}

func (e *env) start(t *testing.T) *Sink {
	t.Helper()
	s, err := New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	testenv.RunUntilCleanup(t, s.Run, s.Close)
	return s
}

func (e *env) produce(t *testing.T, recs ...*kgo.Record) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// committed sums the group's committed offsets on the results topic.
func (e *env) committed(t *testing.T) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	offs, err := e.adm.FetchOffsets(ctx, e.cfg.Group)
	if errors.Is(err, kerr.GroupIDNotFound) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, o := range offs[e.topics.Receipts] {
		n += max(o.At, 0)
	}
	return n
}

// usageEvents reads the usage topic until n events arrived (and no more
// follow shortly).
func (e *env) usageEvents(t *testing.T, n int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.cfg.Kafka.Brokers...), kgo.ConsumeTopics(e.topics.Usage),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out []*kgo.Record
	for len(out) < n && ctx.Err() == nil {
		out = append(out, cl.PollFetches(ctx).Records()...)
	}
	more, cancel2 := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel2()
	out = append(out, cl.PollFetches(more).Records()...)
	if len(out) != n {
		t.Fatalf("%d usage events, want %d", len(out), n)
	}
	return out
}

func resultRecord(t *testing.T, topic, key string, res *schemas.Result) *kgo.Record {
	t.Helper()
	val, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	return &kgo.Record{Topic: topic, Key: []byte(key), Value: val, Timestamp: res.ProcessedAt}
}

// Each attributable result makes one event keyed by its organization, a
// replay the same event again; hostile or broken results make none, and
// every offset is committed.
func TestSinkPublishes(t *testing.T) {
	e := newEnv(t)
	now := time.Now().UTC()
	mk := func(mod func(*schemas.Result)) *schemas.Result {
		return result(func(r *schemas.Result) {
			r.ReceivedAt, r.ProcessedAt = now.Add(-time.Second), now
			if mod != nil {
				mod(r)
			}
		})
	}
	recv := e.topics.Receipts
	recs := []*kgo.Record{
		resultRecord(t, recv, "acme", mk(nil)),
		resultRecord(t, recv, "acme", mk(func(r *schemas.Result) { r.ProcessedAt = now.Add(time.Second) })), // replay
		resultRecord(t, recv, "beta", mk(func(r *schemas.Result) {
			r.Tenant, r.ID, r.Auth, r.KeyID = "beta", "ext-1", schemas.AuthProducer, "pk_b"
		})),
		resultRecord(t, recv, "acme", mk(func(r *schemas.Result) {
			r.ID, r.Auth, r.Status, r.Receipt = "spoof", schemas.AuthNone, schemas.StatusFailed, nil
		})),
		resultRecord(t, recv, "acme", mk(func(r *schemas.Result) { r.Tenant, r.ID = "beta", "cross" })), // keyed by another tenant
		resultRecord(t, recv, "a b", mk(func(r *schemas.Result) { r.Tenant, r.ID = "a b", "bad-org" })),
		{Topic: recv, Key: []byte("acme"), Value: []byte("not json"), Timestamp: now},
	}
	e.produce(t, recs...)
	s := e.start(t)
	testenv.WaitFor(t, "offsets committed", 30*time.Second, func() (bool, string) {
		c := e.committed(t)
		return c == int64(len(recs)), fmt.Sprintf("%d of %d", c, len(recs))
	})
	got := e.usageEvents(t, 3)
	var ids []string
	for _, r := range got {
		ev, err := schemas.DecodeUsageEvent(r.Value)
		if err != nil {
			t.Fatal(err)
		}
		if string(r.Key) != ev.Subject || kafka.Header(r, "content-type") != "application/cloudevents+json; charset=UTF-8" {
			t.Errorf("record key %q, content-type %q for an event of %q", r.Key, kafka.Header(r, "content-type"), ev.Subject)
		}
		ids = append(ids, ev.Subject+"/"+ev.ID)
	}
	slices.Sort(ids)
	if want := []string{"acme/req_1", "acme/req_1", "beta/ext-1"}; !slices.Equal(ids, want) {
		t.Fatalf("events %v, want %v", ids, want)
	}
	first, _ := schemas.DecodeUsageEvent(got[0].Value)
	second, _ := schemas.DecodeUsageEvent(got[1].Value)
	if first.Subject == "acme" && second.Subject == "acme" && (first.ID != second.ID || !first.Time.Equal(second.Time)) {
		t.Errorf("replayed event differs: %+v, %+v", first, second)
	}
	for _, m := range []struct {
		name      string
		got, want float64
	}{
		{"events", testutil.ToFloat64(s.m.events), 3},
		{"unauthenticated", testutil.ToFloat64(s.m.skipped.WithLabelValues(SkipUnauthenticated)), 1},
		{"bad results", testutil.ToFloat64(s.m.skipped.WithLabelValues(SkipBadResult)), 3},
	} {
		if m.got != m.want {
			t.Errorf("metric %s = %v, want %v", m.name, m.got, m.want)
		}
	}
}

// Offsets are committed only after the broker acknowledged the events.
func TestSinkCommitsAfterAcknowledged(t *testing.T) {
	e := newEnv(t)
	refusal := kafkatest.RefuseProduce(t, e.cluster, e.adm, e.topics.Usage)
	now := time.Now().UTC()
	e.produce(t, resultRecord(t, e.topics.Receipts, "acme", result(func(r *schemas.Result) { r.ReceivedAt, r.ProcessedAt = now, now })))
	e.start(t)
	testenv.WaitFor(t, "refused usage produces", 30*time.Second, func() (bool, string) {
		return refusal.Count.Load() >= 2, fmt.Sprint(refusal.Count.Load())
	})
	if c := e.committed(t); c != 0 {
		t.Fatalf("committed %d results whose event was not acknowledged", c)
	}
	refusal.Refusing.Store(false)
	testenv.WaitFor(t, "offsets committed", 30*time.Second, func() (bool, string) {
		c := e.committed(t)
		return c == 1, fmt.Sprint(c)
	})
	e.usageEvents(t, 1)
}
