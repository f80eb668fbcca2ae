package audit

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/recordauth"
	"github.com/certnode/certnode/schemas"
)

// Events reach the topic with their MAC; refusals past the minute's bound
// from one address are counted, not sent, while other addresses' go on.
func TestPublisher(t *testing.T) {
	topics := schemas.TopicsFor(schemas.DefaultTopicPrefix)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topics.Audit))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mac, _ := recordauth.NewKeyring([]byte("0123456789abcdef0123456789abcdef"))
	p, err := NewPublisher(kafka.Config{Brokers: c.ListenAddrs(), Partitions: 1, ReplicationFactor: 1}, "ingest", mac, nil)
	if err != nil {
		t.Fatal(err)
	}
	refusal := func(addr string) schemas.AuditEvent {
		return schemas.AuditEvent{Actor: schemas.AuditActor{Kind: "anonymous", Addr: addr}, Action: "access.refused", Result: schemas.AuditDenied, Reason: "unauthorized"}
	}
	for range MaxRefusalsPerMinute + 40 {
		p.Record(refusal("127.0.0.5"))
	}
	p.Record(refusal("127.0.0.6"))
	if err := p.Publish(context.Background(), []schemas.AuditEvent{{Org: "acme", Actor: schemas.AuditActor{Kind: "operator"}, Action: "org.create", Result: schemas.AuditOK}}); err != nil {
		t.Fatal(err)
	}
	p.Close()
	if n := testutil.ToFloat64(p.suppressed); n != 40 {
		t.Fatalf("suppressed %v, want 40", n)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics(topics.Audit), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var got []*kgo.Record
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for len(got) < MaxRefusalsPerMinute+2 && ctx.Err() == nil {
		got = append(got, cl.PollFetches(ctx).Records()...)
	}
	if len(got) != MaxRefusalsPerMinute+2 {
		t.Fatalf("%d records, want %d", len(got), MaxRefusalsPerMinute+2)
	}
	for _, r := range got {
		ev, _, err := schemas.DecodeAuditEvent(r.Value)
		if err != nil || mac.Check(r.Value, kafka.Header(r, schemas.HeaderIngestMAC)) != nil || ev.Source != "ingest" || ev.ID == "" || string(r.Key) != ev.Org {
			t.Fatalf("record %s: %v", r.Value, err)
		}
	}
}
