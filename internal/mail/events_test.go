package mail

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

type anyMAC struct{}

func (anyMAC) Check([]byte, string) error { return nil }

// refusing refuses the emails of one organization, as the coordinator
// answers 4xx, and keeps the others.
type refusing struct {
	org    string
	mu     sync.Mutex
	queued []string
}

func (r *refusing) Enqueue(_ context.Context, e EventEmail) error {
	if e.Org == r.org {
		return fmt.Errorf("POST /v1/node/email/events: 127.0.0.1:1: status 400: %w", ErrRefused)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.queued = append(r.queued, e.EventID)
	return nil
}

// An event whose email the coordinator refuses is dropped: the events
// after it, of other organizations, are queued.
func TestEventsRefusedDoesNotBlock(t *testing.T) {
	topics := schemas.TopicsFor(schemas.DefaultTopicPrefix)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topics.Events))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	kcfg := kafka.Config{Brokers: c.ListenAddrs(), Partitions: 1, ReplicationFactor: 1}
	q := &refusing{org: "bigco"}
	ev, err := NewEvents(EventsConfig{Kafka: kcfg, Group: "mailer-test", MAC: anyMAC{}, Queue: q})
	if err != nil {
		t.Fatal(err)
	}
	testenv.RunUntilCleanup(t, ev.Run, ev.Close)

	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	for i, org := range []string{"bigco", "acme"} {
		v, err := json.Marshal(schemas.EventRecord{V: schemas.EnvelopeVersion, ID: fmt.Sprintf("evt_%d", i), Org: org,
			Event: schemas.WebhookEvent{Type: schemas.EventSecurityAlert, Timestamp: time.Now().UTC(), Data: []byte(`{"summary":"s"}`)}})
		if err != nil {
			t.Fatal(err)
		}
		if err := cl.ProduceSync(context.Background(), &kgo.Record{Topic: topics.Events, Key: []byte(org), Value: v}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, "acme's event queued", 20*time.Second, func() (bool, string) {
		q.mu.Lock()
		defer q.mu.Unlock()
		return len(q.queued) == 1 && q.queued[0] == "evt_1", fmt.Sprint(q.queued)
	})
}
