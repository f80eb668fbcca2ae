//go:build integration

package clickhouse

import (
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/kafkatest"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// messageState is a message as certnode.webhook_messages has it.
type messageState struct {
	ID       string
	Attempts uint64
	Outcome  string
	Status   uint16
	Next     time.Time
}

// The sink on the real Kafka and ClickHouse: attempt records, copies
// included, land in certnode.webhook_attempts, the view keeps each
// message's latest state in certnode.webhook_messages (counting a copy
// once, and ordering attempts closer than a second apart by their
// nanoseconds, not their ids), and bad records go to the DLQ.
func TestIntegrationSinkWritesWebhookAttempts(t *testing.T) {
	e := newKafkaEnv(t)
	org, other := "sinktest-"+testenv.RandomSuffix(), "sinktest-"+testenv.RandomSuffix()
	created := time.Now().UTC().Truncate(time.Second)
	at := created.Add(10 * time.Second)
	a1 := webhookAttempt(org, "msg_a", created, 1, at, schemas.OutcomeRetrying)
	a2 := webhookAttempt(org, "msg_a", created, 2, at.Add(time.Minute), schemas.OutcomeDelivered)
	b1 := webhookAttempt(org, "msg_b", created, 1, at, schemas.OutcomeExhausted)
	// msg_c: two attempts in one second; the later one has the smaller id.
	c1 := webhookAttempt(org, "msg_c", created, 1, at.Add(100*time.Millisecond), schemas.OutcomeRetrying)
	c2 := webhookAttempt(org, "msg_c", created, 2, at.Add(900*time.Millisecond), schemas.OutcomeDisabled)
	c1.ID, c2.ID = "att_z", "att_a"
	theirs := webhookAttempt(other, "msg_a", created, 1, at, schemas.OutcomeRetrying)
	rec := func(a *schemas.WebhookAttempt) *kgo.Record { return keyedRecord(t, e.topics.WebhookAttempts, a.Org, a) }
	recs := []*kgo.Record{rec(a1), rec(a2), rec(a2), rec(b1), rec(c1), rec(c2), rec(theirs),
		keyedRecord(t, e.topics.WebhookAttempts, other, a1)} // keyed by another organization
	produce(t, e.cl, recs...)

	s, err := New(ctxT(t), e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	runSink(t, s)
	kafkatest.WaitCommitted(t, e.adm, e.cfg.Group, e.topics.WebhookAttempts, int64(len(recs)), time.Minute)

	conn := chConn(t)
	var distinct, withBody uint64
	var body string
	if err := conn.QueryRow(ctxT(t), `SELECT uniqExact(id), uniqExactIf(id, body != ''), argMaxIf(body, (at, at_nanos, id), body != '' AND message_id = 'msg_a')
		FROM certnode.webhook_attempts WHERE org = ?`, org).Scan(&distinct, &withBody, &body); err != nil {
		t.Fatal(err)
	}
	if distinct != 5 || withBody != 3 || opened(t, e.cfg.Sealer, org, body) != string(a1.Body) {
		t.Errorf("%d attempts, %d with a body, msg_a body %q; want 5, 3 and %q", distinct, withBody, body, a1.Body)
	}
	var nanos uint32
	if err := conn.QueryRow(ctxT(t), `SELECT any(at_nanos) FROM certnode.webhook_attempts WHERE org = ? AND id = 'att_a'`, org).Scan(&nanos); err != nil || nanos != 900_000_000 {
		t.Errorf("at_nanos %d (%v), want 900000000", nanos, err)
	}

	rows, err := conn.Query(ctxT(t), `SELECT message_id, uniqExactMerge(attempts), argMaxMerge(last_outcome), argMaxMerge(last_status),
		argMaxMerge(last_next_attempt_at) FROM certnode.webhook_messages WHERE org = ?
		GROUP BY created_at, message_id, endpoint_id, event_type, event_id ORDER BY message_id`, org)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []messageState
	for rows.Next() {
		var m messageState
		if err := rows.Scan(&m.ID, &m.Attempts, &m.Outcome, &m.Status, &m.Next); err != nil {
			t.Fatal(err)
		}
		m.Next = m.Next.UTC()
		got = append(got, m)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	epoch := time.Unix(0, 0).UTC()
	want := []messageState{{"msg_a", 2, "delivered", 200, epoch}, {"msg_b", 1, "exhausted", 500, epoch}, {"msg_c", 2, "endpoint_disabled", 500, epoch}}
	if len(got) != len(want) {
		t.Fatalf("messages %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("message %+v, want %+v", got[i], want[i])
		}
	}
	var theirAttempts uint64
	if err := conn.QueryRow(ctxT(t), `SELECT uniqExactMerge(attempts) FROM certnode.webhook_messages WHERE org = ?`, other).Scan(&theirAttempts); err != nil || theirAttempts != 1 {
		t.Errorf("the other organization has %d attempts (%v), want 1: its own, not the one keyed by it", theirAttempts, err)
	}

	dlq := readTopic(t, e.cfg.Kafka.Brokers, e.topics.DLQ, 1)
	if kafka.Header(dlq[0], schemas.HeaderDLQReason) != ReasonBadWebhookAttempt || string(dlq[0].Key) != other {
		t.Errorf("DLQ record key %q headers %v", dlq[0].Key, dlq[0].Headers)
	}
	if v := value(t, s.m.attemptInserted); v != 7 {
		t.Errorf("attempt rows metric %v, want 7", v)
	}
}
