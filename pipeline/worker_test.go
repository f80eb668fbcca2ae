package pipeline

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/recordauth"
	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
)

// producerSecret is acme's producer key pk1, globexSecret globex's.
const (
	producerSecret = "ps_acme_0123456789abcdef0123456789abcdef"
	globexSecret   = "ps_globex_0123456789abcdef0123456789abcdef"
)

var topics = schemas.TopicsFor(schemas.DefaultTopicPrefix)

type harness struct {
	t       *testing.T
	cluster *kfake.Cluster // nil on real Kafka
	kcfg    kafka.Config
	topics  schemas.Topics
	ring    *memSigner
	store   *tenants.FileStore
	mac     *recordauth.Keyring
	client  *kgo.Client
}

func newHarness(t *testing.T, partitions int32) *harness {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, schemas.TopicsFor(schemas.DefaultTopicPrefix).All()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	h := harnessOn(t, kafka.Config{Brokers: c.ListenAddrs(), Partitions: partitions, ReplicationFactor: 1})
	h.cluster = c
	return h
}

// harnessOn works on the topics of kcfg, which must exist.
func harnessOn(t *testing.T, kcfg kafka.Config) *harness {
	t.Helper()
	ring := newMemSigner(t)
	store, err := tenants.NewFileStore(tenants.File{Tenants: []tenants.Tenant{
		{ID: "acme", ProducerKeys: []tenants.ProducerKey{{ID: "pk1", Secret: producerSecret}}},
		{ID: "globex", ProducerKeys: []tenants.ProducerKey{{ID: "pk1", Secret: globexSecret}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	mac, _ := recordauth.NewKeyring([]byte("0123456789abcdef0123456789abcdef"))
	cl, err := kafka.NewClient(kcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return &harness{t: t, kcfg: kcfg, topics: kcfg.Topics(), ring: ring, store: store, mac: mac, client: cl}
}

func (h *harness) worker(ctx context.Context) (*Worker, func()) {
	return h.workerWith(ctx, h.ring, func(*Config) {})
}

func (h *harness) workerWith(ctx context.Context, s Signer, edit func(*Config)) (*Worker, func()) {
	cfg := DefaultConfig()
	cfg.Kafka = h.kcfg
	cfg.MaxBatch = 50
	edit(&cfg)
	w, err := New(cfg, s, h.store, h.mac)
	if err != nil {
		h.t.Fatal(err)
	}
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(ctx)
	go func() { done <- w.Run(ctx) }()
	return w, func() {
		cancel()
		if err := <-done; err != nil {
			h.t.Errorf("worker: %v", err)
		}
		w.Close()
	}
}

// request builds a record as ingest writes it (MAC over the value) or, with
// producerKey set, as a customer producer signs it.
func (h *harness) request(tenant, id string, kind schemas.Kind, body string, producerKey string) *kgo.Record {
	req := schemas.Request{V: 1, ID: id, Tenant: tenant, Kind: kind}
	if kind == schemas.KindSign {
		req.Payload = []byte(body)
	} else {
		req.Receipt = []byte(body)
	}
	val, err := json.Marshal(req)
	if err != nil {
		// Invalid payload JSON cannot go through the encoder; write it raw.
		val = []byte(fmt.Sprintf(`{"v":1,"id":%q,"tenant":%q,"kind":%q,"payload":%s}`, id, tenant, kind, body))
	}
	return h.record(tenant, val, producerKey)
}

// record signs a raw value: with the ingest MAC, or with acme's producer
// key pk1 when producerKey is "pk1" (any other name signs with a wrong secret).
func (h *harness) record(key string, val []byte, producerKey string) *kgo.Record {
	r := &kgo.Record{Topic: h.topics.Requests, Key: []byte(key), Value: val}
	switch producerKey {
	case "":
		r.Headers = []kgo.RecordHeader{{Key: schemas.HeaderIngestMAC, Value: h.mac.Header(val)}}
	case "pk1":
		r.Headers = []kgo.RecordHeader{{Key: schemas.HeaderProducerKeyID, Value: []byte("pk1")},
			{Key: schemas.HeaderSignature, Value: []byte(recordauth.Sign([]byte(producerSecret), val))}}
	default:
		r.Headers = []kgo.RecordHeader{{Key: schemas.HeaderProducerKeyID, Value: []byte("pk1")},
			{Key: schemas.HeaderSignature, Value: []byte(recordauth.Sign([]byte("wrong secret"), val))}}
	}
	return r
}

// produced builds a sign request as tenant's own producer writes it,
// signed with its key pk1.
func (h *harness) produced(tenant, id string) *kgo.Record {
	val, err := json.Marshal(schemas.Request{V: 1, ID: id, Tenant: tenant, Kind: schemas.KindSign, Payload: []byte(`{"id":"` + id + `"}`)})
	if err != nil {
		h.t.Fatal(err)
	}
	secret := map[string]string{"acme": producerSecret, "globex": globexSecret}[tenant]
	return &kgo.Record{Topic: h.topics.Requests, Key: []byte(tenant), Value: val, Headers: []kgo.RecordHeader{
		{Key: schemas.HeaderProducerKeyID, Value: []byte("pk1")},
		{Key: schemas.HeaderSignature, Value: []byte(recordauth.Sign([]byte(secret), val))}}}
}

func (h *harness) produce(recs ...*kgo.Record) {
	h.t.Helper()
	if err := h.client.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		h.t.Fatal(err)
	}
}

// consume reads n records from topic (from the start), failing after a timeout.
func (h *harness) consume(topic string, n int) []*kgo.Record {
	h.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(h.kcfg.Brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		h.t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out []*kgo.Record
	for len(out) < n {
		f := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			h.t.Fatalf("%s: got %d records, want %d", topic, len(out), n)
		}
		out = append(out, f.Records()...)
	}
	return out
}

func results(t *testing.T, recs []*kgo.Record) map[string]*schemas.Result {
	t.Helper()
	m := map[string]*schemas.Result{}
	for _, r := range recs {
		res, err := schemas.DecodeResult(r.Value)
		if err != nil {
			t.Fatal(err)
		}
		if _, dup := m[res.ID]; dup {
			t.Errorf("request %s has two results", res.ID)
		}
		if string(r.Key) != res.Tenant {
			t.Errorf("result keyed %q for tenant %q", r.Key, res.Tenant)
		}
		m[res.ID] = res
	}
	return m
}

func TestWorkerSignsAndVerifies(t *testing.T) {
	h := newHarness(t, 4)
	good, _ := h.ring.Sign(context.Background(), []byte(`{"already":"signed"}`))
	goodRaw, _ := good.Marshal()
	tampered := []byte(string(goodRaw[:len(goodRaw)-3]) + `AA"}`)
	h.produce(
		h.request("acme", "s1", schemas.KindSign, `{"b":2,"a":1}`, ""),
		h.request("acme", "s2", schemas.KindSign, `{"x":"y"}`, "pk1"), // customer-produced
		h.request("acme", "s3", schemas.KindSign, `{}`, ""),           // an empty object is a payload
		h.request("acme", "v1", schemas.KindVerify, string(goodRaw), ""),
		h.request("acme", "v2", schemas.KindVerify, string(tampered), ""),
	)
	_, stop := h.worker(context.Background())
	defer stop()
	res := results(t, h.consume(topics.Receipts, 5))

	ks := h.ring.KeySet()
	for _, id := range []string{"s1", "s2", "s3"} {
		r := res[id]
		if r == nil || r.Status != schemas.StatusSigned {
			t.Fatalf("%s: %+v", id, r)
		}
		if _, err := ks.Verify(r.Receipt); err != nil {
			t.Fatalf("%s: signed receipt does not verify: %v", id, err)
		}
	}
	if string(res["s1"].Receipt) == "" || !jsonHas(res["s1"].Receipt, `"payload":{"a":1,"b":2}`) {
		t.Fatalf("s1 payload not canonical: %s", res["s1"].Receipt)
	}
	if res["s1"].Auth != schemas.AuthIngest || res["s2"].Auth != schemas.AuthProducer {
		t.Fatalf("auth: %s %s", res["s1"].Auth, res["s2"].Auth)
	}
	if r := res["v1"]; r.Status != schemas.StatusValid || r.ReceiptID != good.ReceiptID || r.Kid != good.Kid || r.Keys != schemas.KeysService {
		t.Fatalf("v1: %+v", r)
	}
	if r := res["v2"]; r.Status != schemas.StatusInvalid || r.Reason == "" {
		t.Fatalf("v2: %+v", r)
	}
}

type fakeAudit struct {
	mu  sync.Mutex
	evs []schemas.AuditEvent
}

func (f *fakeAudit) Record(ev schemas.AuditEvent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.evs = append(f.evs, ev)
}

func jsonHas(b []byte, s string) bool { return len(b) > 0 && contains(string(b), s) }

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func TestWorkerRefusalsGetResultsAndDLQ(t *testing.T) {
	h := newHarness(t, 1) // one partition: poison must not block what follows
	raw := func(v string) []byte { return []byte(v) }
	forged := h.record("acme", raw(`{"v":1,"id":"forged","tenant":"acme","kind":"sign","payload":{"a":1},"job_id":"job_x","line":3}`), "")
	forged.Value = raw(`{"v":1,"id":"forged","tenant":"acme","kind":"sign","payload":{"a":2},"job_id":"job_x","line":3}`) // MAC over another value
	legacy := &kgo.Record{Topic: topics.Requests, Key: []byte("acme"), Value: raw(`{"v":1,"id":"legacy","tenant":"acme","kind":"sign","payload":{}}`),
		Headers: []kgo.RecordHeader{{Key: schemas.HeaderLegacyAPIKey, Value: raw("cn_secret_api_key")}}}
	h.produce(
		&kgo.Record{Topic: topics.Requests, Key: []byte("acme"), Value: raw("not json")},
		h.record("acme", raw(`{"v":1,"id":"huge-line","tenant":"acme","kind":"sign","payload":{},"job_id":"job_1","line":4611686018427387904}`), ""),
		h.record("acme", raw(`{"v":1,"id":"neg-line","tenant":"acme","kind":"sign","payload":{},"job_id":"job_1","line":-1}`), ""),
		h.record("acme", raw(`{"v":1,"id":"no-payload","tenant":"acme","kind":"sign","job_id":"job_1","line":2}`), ""),
		h.record("acme", raw(`{"v":1,"id":"producer-job","tenant":"acme","kind":"sign","payload":{},"job_id":"job_1","line":5}`), "pk1"),
		h.request("acme", "bad-sig", schemas.KindSign, `{"a":1}`, "wrong"),
		h.request("globex", "other-tenant-key", schemas.KindSign, `{"a":1}`, "pk1"),
		forged, legacy,
		h.record("globex", h.request("acme", "mismatch", schemas.KindSign, `{}`, "").Value, ""),
		h.request("acme", "not-object", schemas.KindSign, `[1,2]`, ""),
		h.request("acme", "after", schemas.KindSign, `{"ok":true}`, ""),
	)
	audit := &fakeAudit{}
	_, stop := h.workerWith(context.Background(), h.ring, func(c *Config) { c.Audit = audit })
	defer stop()

	dlq := h.consume(topics.DLQ, 11)
	reasons := map[string]int{}
	for _, r := range dlq {
		for _, hd := range r.Headers {
			switch hd.Key {
			case schemas.HeaderDLQReason:
				reasons[string(hd.Value)]++
			case schemas.HeaderIngestMAC, schemas.HeaderSignature, schemas.HeaderLegacyAPIKey:
				t.Fatalf("credential header %s copied into the DLQ", hd.Key)
			}
		}
	}
	want := map[string]int{"bad_envelope": 4, "unauthenticated": 5, "tenant_mismatch": 1, "invalid_payload": 1}
	for k, v := range want {
		if reasons[k] != v {
			t.Fatalf("DLQ reasons %v, want %v", reasons, want)
		}
	}
	// Each unauthenticated record is a security event: the organization
	// and producer key it claimed, never a secret.
	audit.mu.Lock()
	var claimed []string
	for _, ev := range audit.evs {
		if ev.Action != "record.refused" || ev.Result != schemas.AuditDenied || ev.Source != "worker" || ev.Target == "" {
			t.Errorf("event %+v", ev)
		}
		claimed = append(claimed, ev.Org+"/"+ev.Actor.ID)
		if b, _ := json.Marshal(ev); contains(string(b), "cn_secret_api_key") || contains(string(b), "wrong") {
			t.Errorf("a secret in %s", b)
		}
	}
	audit.mu.Unlock()
	slices.Sort(claimed)
	// Only a record naming one of the claimed organization's own producer
	// keys (both have a pk1) is that organization's to hear of.
	if want := []string{"/", "/", "/", "acme/pk1", "globex/pk1"}; !slices.Equal(claimed, want) {
		t.Errorf("security events claim %v, want %v", claimed, want)
	}
	// Every record that names a request gets exactly one result, so no job
	// waits on a poison line; only "not json" names nothing.
	res := results(t, h.consume(topics.Receipts, 11))
	if res["after"].Status != schemas.StatusSigned {
		t.Fatalf("record after the poison: %+v", res["after"])
	}
	for id, want := range map[string]struct {
		reason string
		auth   schemas.Auth
		job    string
		line   int64
	}{
		"huge-line":        {"bad_envelope", schemas.AuthIngest, "", 0},
		"neg-line":         {"bad_envelope", schemas.AuthIngest, "", 0},
		"no-payload":       {"bad_envelope", schemas.AuthIngest, "job_1", 2},
		"producer-job":     {"bad_envelope", schemas.AuthProducer, "", 0},
		"bad-sig":          {"unauthenticated", schemas.AuthNone, "", 0},
		"other-tenant-key": {"unauthenticated", schemas.AuthNone, "", 0},
		"forged":           {"unauthenticated", schemas.AuthNone, "job_x", 3},
		"legacy":           {"unauthenticated", schemas.AuthNone, "", 0},
		"mismatch":         {"tenant_mismatch", schemas.AuthIngest, "", 0},
		"not-object":       {"invalid_payload", schemas.AuthIngest, "", 0},
	} {
		r := res[id]
		if r == nil || r.Status != schemas.StatusFailed || r.Reason != want.reason || r.Auth != want.auth || r.JobID != want.job || r.Line != want.line || len(r.Receipt) != 0 {
			t.Errorf("%s: %+v, want %+v", id, r, want)
		}
	}
}

// TestWorkerCommitsOnlyAfterProduce fails the results produce a few times
// and checks that the group's offset does not move until it succeeds.
func TestWorkerCommitsOnlyAfterProduce(t *testing.T) {
	h := newHarness(t, 1)
	h.produce(h.request("acme", "r1", schemas.KindSign, `{"n":1}`, ""))
	// From now on only the worker produces.
	fault := h.cluster.Fault(kfake.Fault{
		Keys:  []kmsg.Key{kmsg.Produce},
		Err:   kerr.NotEnoughReplicas, // retriable, as when the ISR shrinks
		Count: -1,
	})
	_, stop := h.worker(context.Background())
	defer stop()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := fault.Wait(ctx, 2); err != nil { // franz-go backs off between attempts
		t.Fatalf("produce was not attempted: %v (hits %d, committed %d)", err, fault.Hits(), committed(t, h, "certnode-workers"))
	}
	if off := committed(t, h, "certnode-workers"); off > 0 {
		t.Fatalf("offset %d committed while results could not be produced", off)
	}
	fault.Remove()
	res := results(t, h.consume(topics.Receipts, 1))
	if res["r1"].Status != schemas.StatusSigned {
		t.Fatalf("%+v", res["r1"])
	}
	deadline := time.Now().Add(10 * time.Second)
	for committed(t, h, "certnode-workers") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("offset not committed after the produce succeeded")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func committed(t *testing.T, h *harness, group string) int64 {
	t.Helper()
	offs, err := kadm.NewClient(h.client).FetchOffsets(context.Background(), group)
	if errors.Is(err, kerr.GroupIDNotFound) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	offs.Each(func(o kadm.OffsetResponse) {
		if o.Topic == h.topics.Requests && o.At > 0 {
			total += o.At
		}
	})
	return total
}

// TestWorkerRebalanceHandsOverCleanly runs a second worker into the group
// mid-stream and closes the first: every request gets exactly one result.
func TestWorkerRebalanceHandsOverCleanly(t *testing.T) {
	h := newHarness(t, 6)
	const n = 1200
	var recs []*kgo.Record
	for i := 0; i < n; i++ {
		tenant := []string{"acme", "globex"}[i%2]
		recs = append(recs, h.request(tenant, fmt.Sprintf("req-%d", i), schemas.KindSign, fmt.Sprintf(`{"i":%d}`, i), ""))
	}
	h.produce(recs[:n/2]...)
	// Each worker signs with its own key, so the results show who did what.
	signerA, signerB := newMemSigner(t), newMemSigner(t)
	_, stopA := h.workerWith(context.Background(), signerA, func(*Config) {})
	var once sync.Once
	stopAOnce := func() { once.Do(stopA) }
	defer stopAOnce()

	// Wait for A to be part-way through, then add B and remove A.
	for committed(t, h, "certnode-workers") == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	_, stopB := h.workerWith(context.Background(), signerB, func(*Config) {})
	defer stopB()
	h.produce(recs[n/2:]...)
	stopAOnce()

	res := results(t, h.consume(topics.Receipts, n)) // fails on duplicates
	if len(res) != n {
		t.Fatalf("%d distinct results, want %d", len(res), n)
	}
	// The premise: A did part of the work and B took A's partitions over.
	byKid := map[string]int{}
	for _, r := range res {
		byKid[r.Kid]++
	}
	if byKid[signerA.kid] == 0 || byKid[signerB.kid] == 0 || byKid[signerA.kid]+byKid[signerB.kid] != n {
		t.Fatalf("results by worker: A %d, B %d of %d: no handover happened", byKid[signerA.kid], byKid[signerB.kid], n)
	}
}

// TestWorkerDropsBatchWhenMembershipLost: a commit refused because the
// group moved the partitions away is not retried forever (the new owner
// redoes the batch); the worker goes on polling.
func TestWorkerDropsBatchWhenMembershipLost(t *testing.T) {
	h := newHarness(t, 1)
	reg := prometheus.NewRegistry()
	h.produce(h.request("acme", "r1", schemas.KindSign, `{"n":1}`, ""))
	fault := h.cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.OffsetCommit}, Err: kerr.UnknownMemberID, Count: 1})
	_, stop := h.workerWith(context.Background(), h.ring, func(c *Config) { c.Registerer = reg })
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := fault.Wait(ctx, 1); err != nil {
		t.Fatalf("the commit was not attempted: %v", err)
	}
	h.produce(h.request("acme", "r2", schemas.KindSign, `{"n":2}`, ""))
	res := results(t, h.consume(topics.Receipts, 2))
	if res["r2"] == nil || res["r2"].Status != schemas.StatusSigned {
		t.Fatalf("the worker stopped after the refused commit: %+v", res)
	}
	if v := metric(t, reg, "certnode_worker_batches_lost_total"); v != 1 {
		t.Fatalf("certnode_worker_batches_lost_total = %v", v)
	}
}

// stuckSigner never finishes a signature until released, as an HSM that
// hangs would.
type stuckSigner struct {
	*memSigner
	release chan struct{}
}

func (s stuckSigner) Sign(ctx context.Context, payload []byte) (*schemas.Receipt, error) {
	select {
	case <-s.release:
		return s.memSigner.Sign(ctx, payload)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func TestWorkerStalledBatchFailsHealth(t *testing.T) {
	h := newHarness(t, 1)
	reg := prometheus.NewRegistry()
	stuck := stuckSigner{newMemSigner(t), make(chan struct{})}
	w, stop := h.workerWith(context.Background(), stuck, func(c *Config) {
		c.RebalanceTimeout, c.Registerer = 300*time.Millisecond, reg
	})
	defer stop()
	if err := w.Healthy(); err != nil {
		t.Fatalf("idle worker unhealthy: %v", err)
	}
	h.produce(h.request("acme", "slow", schemas.KindSign, `{}`, ""))
	deadline := time.Now().Add(10 * time.Second)
	for w.Healthy() == nil {
		if time.Now().After(deadline) {
			t.Fatal("a batch stuck past the rebalance timeout left the worker healthy")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if v := metric(t, reg, "certnode_worker_stalled"); v != 1 {
		t.Fatalf("certnode_worker_stalled = %v while stalled", v)
	}
	close(stuck.release)
	results(t, h.consume(topics.Receipts, 1))
	for w.Healthy() != nil {
		if time.Now().After(deadline) {
			t.Fatal("worker stayed unhealthy after the batch finished")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if v := metric(t, reg, "certnode_worker_stalled"); v != 0 {
		t.Fatalf("certnode_worker_stalled = %v after recovery", v)
	}
}

// metric reads a registered gauge or counter, or a histogram's count.
func metric(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			if h := m.GetHistogram(); h != nil {
				return float64(h.GetSampleCount())
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

// memSigner is an in-memory signer; the pipeline never sees key storage
// (cmd wires the signer package in).
type memSigner struct {
	key *ecdsa.PrivateKey
	kid string
	ks  *schemas.KeySet
}

func newMemSigner(t *testing.T) *memSigner {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwk, _ := schemas.NewJWK(&key.PublicKey)
	ks, err := schemas.NewKeySet(schemas.JWKS{Keys: []schemas.JWK{jwk}})
	if err != nil {
		t.Fatal(err)
	}
	return &memSigner{key: key, kid: jwk.Kid, ks: ks}
}

func (m *memSigner) KeySet() *schemas.KeySet { return m.ks }

func (m *memSigner) Sign(_ context.Context, payload []byte) (*schemas.Receipt, error) {
	u, err := schemas.NewUnsigned(schemas.AlgES256, m.kid, payload)
	if err != nil {
		return nil, err
	}
	d := sha256.Sum256(u.Input())
	r, s, err := ecdsa.Sign(rand.Reader, m.key, d[:])
	if err != nil {
		return nil, err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return u.Complete(sig)
}

// The caller JWKS of a verify job is decoded once, not per line; a JWKS
// with no usable key is an error every time; the cache stays bounded.
func TestKeySetCache(t *testing.T) {
	m := newMemSigner(t)
	jwk, _ := schemas.NewJWK(&m.key.PublicKey)
	doc, _ := json.Marshal(schemas.JWKS{Keys: []schemas.JWK{jwk}})
	var c keySetCache
	a, err1 := c.get(doc)
	b, err2 := c.get(append([]byte(nil), doc...))
	if err1 != nil || err2 != nil || a != b || !a.Has(m.kid) {
		t.Fatalf("cached key sets %p %p: %v %v", a, b, err1, err2)
	}
	for i := 0; i < 2; i++ {
		if _, err := c.get([]byte(`{"keys":[{"kty":"RSA"}]}`)); !errors.Is(err, schemas.ErrNoUsableKeys) {
			t.Fatalf("unusable JWKS: %v", err)
		}
	}
	one, _ := json.Marshal(jwk)
	for i := 0; i < 3*maxCachedKeySets; i++ {
		c.get(fmt.Appendf(nil, `{"keys":[%s],"n":%d}`, one, i))
		if len(c.sets) > maxCachedKeySets {
			t.Fatalf("cache holds %d key sets", len(c.sets))
		}
	}
}
