package clickhouse

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/envelope"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// testSealer seals with KEKs in a temporary folder.
func testSealer(t testing.TB) *envelope.Envelope {
	t.Helper()
	keks, err := envelope.NewDirKEKs(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return envelope.New(keks)
}

// opened is a stored payload of org's, decrypted.
func opened(t testing.TB, s Sealer, org, v string) string {
	t.Helper()
	if v != "" && !envelope.Sealed(v) {
		t.Fatalf("stored in the clear: %q", v)
	}
	plain, err := s.(*envelope.Envelope).Open(context.Background(), org, v)
	if err != nil {
		t.Fatal(err)
	}
	return string(plain)
}

// signedResult is a signed result received a second before at and
// processed at at.
func signedResult(tenant, id string, at time.Time) *schemas.Result {
	rid := id + "-receipt"
	return &schemas.Result{V: schemas.EnvelopeVersion, ID: id, Tenant: tenant, Kind: schemas.KindSign,
		Status: schemas.StatusSigned, Auth: schemas.AuthIngest, Kid: "kid1", ReceiptID: rid, PayloadHash: "ph",
		Receipt: []byte(`{"receipt_id":"` + rid + `"}`), Size: 42, ReceivedAt: at.Add(-time.Second), ProcessedAt: at}
}

// resultRecord is a result as a worker writes it, with broker time ts.
func resultRecord(t testing.TB, topic string, res *schemas.Result, ts time.Time) *kgo.Record {
	t.Helper()
	val, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	return &kgo.Record{Topic: topic, Key: []byte(res.Tenant), Value: val, Timestamp: ts,
		Headers: []kgo.RecordHeader{{Key: schemas.HeaderRequestID, Value: []byte(res.ID)}}}
}

// webhookAttempt is attempt n of message msg (created at created) to
// endpoint ep_1, made at at with the given outcome; the first attempt of a
// round carries the body.
func webhookAttempt(org, msg string, created time.Time, n int, at time.Time, outcome string) *schemas.WebhookAttempt {
	a := &schemas.WebhookAttempt{V: schemas.EnvelopeVersion, ID: fmt.Sprintf("att_%s_%d", msg, at.UnixNano()), MessageID: msg,
		Org: org, EndpointID: "ep_1", EventType: "receipt.signed", EventID: "evt_" + msg, MessageCreatedAt: created,
		Attempt: n, At: at, URL: "https://example.com/hook", Status: 500, LatencyMillis: 12, Outcome: outcome}
	if n == 1 {
		a.Body = []byte(`{"type":"receipt.signed","data":{"id":"` + msg + `"}}`)
	}
	switch outcome {
	case schemas.OutcomeDelivered:
		a.Status = 200
	case schemas.OutcomeRetrying:
		a.NextAttemptAt = at.Add(time.Minute)
	}
	return a
}

// keyedRecord is v as JSON, keyed by key.
func keyedRecord(t testing.TB, topic, key string, v any) *kgo.Record {
	t.Helper()
	val, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return &kgo.Record{Topic: topic, Key: []byte(key), Value: val}
}

// produce writes recs and waits for the broker's acknowledgement.
func produce(t testing.TB, cl *kgo.Client, recs ...*kgo.Record) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
}

// fakeTable stores rows like a table would.
type fakeTable[R any] struct {
	mu   sync.Mutex
	rows []R
}

func (f *fakeTable[R]) Insert(_ context.Context, rows []R) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rows = append(f.rows, rows...)
	return nil
}

// stored returns the rows inserted so far, in order.
func (f *fakeTable[R]) stored() []R {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.rows)
}

// ids returns the id of each row inserted so far, in order.
func (f *fakeTable[R]) ids(id func(R) string) []string {
	var out []string
	for _, r := range f.stored() {
		out = append(out, id(r))
	}
	return out
}

// runSink runs s until the test ends; Run must then return nil.
func runSink(t testing.TB, s *Sink) {
	t.Helper()
	testenv.RunUntilCleanup(t, s.Run, s.Close)
}

// readTopic reads the n records of topic from the start, and checks no
// more follow.
func readTopic(t testing.TB, brokers []string, topic string, n int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
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
	if len(out) == n {
		more, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		out = append(out, cl.PollFetches(more).Records()...)
	}
	if len(out) != n {
		t.Fatalf("%s: read %d records, want %d", topic, len(out), n)
	}
	return out
}
