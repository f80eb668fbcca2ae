package detect

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/kafkatest"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

type fakeAudit struct {
	mu  sync.Mutex
	evs []schemas.AuditEvent
}

func (f *fakeAudit) Publish(_ context.Context, evs []schemas.AuditEvent) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.evs = append(f.evs, evs...)
	return nil
}

type fakeBlocker struct {
	mu      sync.Mutex
	blocked map[string]time.Time
}

func (f *fakeBlocker) Block(_ context.Context, addr string, until time.Time, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.blocked[addr] = until
	return nil
}

// mac takes records whose MAC header is "good".
type mac struct{}

func (mac) Header([]byte) []byte { return []byte("good") }
func (mac) Check(_ []byte, header string) error {
	if header != "good" {
		return errors.New("bad MAC")
	}
	return nil
}

// From the topics to the security events: a burst of refused credentials
// from one address and a spike of failed verifications make one alert each,
// in the audit log, as a security.alert webhook for the organization, and
// (for the address) a block at ingest.
func TestDetectorActs(t *testing.T) {
	topics := schemas.TopicsFor(schemas.DefaultTopicPrefix)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, topics.Audit, topics.Receipts, topics.WebhookAttempts, topics.Events))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	now := time.Now().UTC()
	var recs []*kgo.Record
	for i := range 25 {
		ev := schemas.AuditEvent{ID: fmt.Sprintf("ev_%d", i), At: now.Add(time.Duration(i) * 100 * time.Millisecond), Org: "acme",
			Actor: schemas.AuditActor{Kind: schemas.ActorKey, ID: "key_1", Addr: "127.0.0.5"}, Action: "access.refused",
			Result: schemas.AuditDenied, Reason: "forbidden_scope", Source: "ingest"}
		b, _ := schemas.EncodeAuditEvent(&ev)
		recs = append(recs, &kgo.Record{Topic: topics.Audit, Key: []byte("acme"), Value: b,
			Headers: []kgo.RecordHeader{{Key: schemas.HeaderIngestMAC, Value: []byte("good")}}})
	}
	// Forged events (no valid MAC) and events timed ahead of their record
	// count for nothing: 25 of each from another address.
	for i := range 50 {
		at := now
		if i%2 == 1 {
			at = now.Add(time.Hour)
		}
		ev := schemas.AuditEvent{ID: fmt.Sprintf("forged_%d", i), At: at, Actor: schemas.AuditActor{Kind: schemas.ActorAnonymous, Addr: "127.0.0.66"},
			Action: "access.refused", Result: schemas.AuditDenied, Reason: "unauthorized", Source: "ingest"}
		b, _ := schemas.EncodeAuditEvent(&ev)
		header := "forged"
		if i%2 == 1 {
			header = "good"
		}
		recs = append(recs, &kgo.Record{Topic: topics.Audit, Value: b, Headers: []kgo.RecordHeader{{Key: schemas.HeaderIngestMAC, Value: []byte(header)}}})
	}
	for i := range 60 { // failed verifications, all in one minute, no history
		res := schemas.Result{V: 1, ID: fmt.Sprintf("req_%d", i), Tenant: "acme", Kind: schemas.KindVerify, Status: schemas.StatusInvalid,
			Reason: "bad_signature", Auth: schemas.AuthIngest, KeyID: "key_2", ProcessedAt: now}
		b, _ := json.Marshal(&res)
		recs = append(recs, &kgo.Record{Topic: topics.Receipts, Key: []byte("acme"), Value: b})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Kafka = kafka.Config{Brokers: c.ListenAddrs(), Partitions: 2, ReplicationFactor: 1}
	cfg.BlockFor = 15 * time.Minute
	cfg.Thresholds.WarmupMinutes = 1
	audit, blocker := &fakeAudit{}, &fakeBlocker{blocked: map[string]time.Time{}}
	d, err := New(cfg, audit, blocker, mac{})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(runCtx) }()
	defer func() { stop(); <-done; d.Close() }()
	kafkatest.WaitCommitted(t, kadm.NewClient(cl), cfg.Group, topics.Audit, 75, 30*time.Second)
	kafkatest.WaitCommitted(t, kadm.NewClient(cl), cfg.Group, topics.Receipts, 60, 30*time.Second)

	audit.mu.Lock()
	var got []string
	for _, ev := range audit.evs {
		got = append(got, ev.Reason+" "+ev.Target)
		if ev.Action != ActionAlert || ev.Result != schemas.AuditFlagged || ev.Validate() != nil || ev.Org != "acme" {
			t.Errorf("alert event %+v: %v", ev, ev.Validate())
		}
	}
	audit.mu.Unlock()
	slices.Sort(got)
	// A verification spike needs a baseline: with one minute of warm-up
	// and none of history, the failures alone do not make one.
	want := []string{"failed_auth_address addr:127.0.0.5", "failed_auth_key key:key_1"}
	if !slices.Equal(got, want) {
		t.Fatalf("alerts %v, want %v", got, want)
	}
	if n := testutil.ToFloat64(d.refused); n != 50 {
		t.Errorf("refused audit records %v, want 50", n)
	}
	if _, ok := blocker.blocked["127.0.0.66"]; ok {
		t.Error("forged events blocked an address")
	}
	if until, ok := blocker.blocked["127.0.0.5"]; !ok || until.Sub(now) < 14*time.Minute {
		t.Fatalf("blocks %v", blocker.blocked)
	}
	reader, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics(topics.Events), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	var hooks []schemas.EventRecord
	testenv.WaitFor(t, "two security.alert webhooks", 10*time.Second, func() (bool, string) {
		pctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		for _, r := range reader.PollFetches(pctx).Records() {
			var er schemas.EventRecord
			if json.Unmarshal(r.Value, &er) == nil && er.Event.Type == schemas.EventSecurityAlert && kafka.Header(r, schemas.HeaderIngestMAC) != "" {
				hooks = append(hooks, er)
			}
		}
		return len(hooks) == 2, fmt.Sprint(len(hooks))
	})
	var data schemas.SecurityAlertData
	for _, h := range hooks {
		json.Unmarshal(h.Event.Data, &data)
		if data.Detector == FailedAuthAddress && (data.Address != "127.0.0.5" || data.Response == "" || data.Count != 20) {
			t.Errorf("address alert %+v", data)
		}
	}
}
