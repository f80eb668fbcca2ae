package clickhouse

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/kafkatest"
	"github.com/certnode/certnode/schemas"
)

func TestAttemptRowFor(t *testing.T) {
	created := time.Date(2026, 3, 10, 12, 0, 0, 0, time.FixedZone("x", 3600))
	at := created.Add(90*time.Second + 123456789*time.Nanosecond)
	a := webhookAttempt("org1", "msg_1", created, 1, at, schemas.OutcomeRetrying)
	a.Redelivery = true
	a.ResponseHeaders = map[string]string{"x-b": "2", "content-type": "text/plain"}
	a.ResponseBody, a.Error = "try later", "status 500"
	row, err := attemptRowFor(a)
	if err != nil {
		t.Fatal(err)
	}
	want := AttemptRow{Org: "org1", MessageID: "msg_1", ID: a.ID, EndpointID: "ep_1", EventType: "receipt.signed", EventID: "evt_msg_1",
		MessageCreatedAt: created.UTC(), Attempt: 1, Redelivery: 1, At: at.UTC().Truncate(time.Second), AtNanos: 123456789,
		URL: "https://example.com/hook", Status: 500, LatencyMS: 12, ResponseHeaders: `{"content-type":"text/plain","x-b":"2"}`,
		ResponseBody: "try later", Error: "status 500", Outcome: "retrying", NextAttemptAt: at.Add(time.Minute).UTC(), Body: string(a.Body)}
	if row != want {
		t.Errorf("row\n%+v\nwant\n%+v", row, want)
	}

	// A later attempt: no body, no headers, no next attempt (stored as 0).
	last, err := attemptRowFor(webhookAttempt("org1", "msg_1", created, 2, at.Add(time.Minute), schemas.OutcomeDelivered))
	if err != nil {
		t.Fatal(err)
	}
	if last.Body != "" || last.ResponseHeaders != "{}" || !last.NextAttemptAt.Equal(time.Unix(0, 0)) || last.AtNanos != 123456789 {
		t.Errorf("later attempt row %+v", last)
	}
	null := webhookAttempt("org1", "msg_1", created, 1, at, schemas.OutcomeDelivered)
	null.Body = []byte("null")
	if row, err := attemptRowFor(null); err != nil || row.Body != "" {
		t.Errorf("a null body is stored as %q (%v), want none", row.Body, err)
	}
}

func TestAttemptRowForUnstorable(t *testing.T) {
	created := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name   string
		modify func(*schemas.WebhookAttempt)
	}{
		{"no message created time", func(a *schemas.WebhookAttempt) { a.MessageCreatedAt = time.Time{} }},
		{"created after 2106", func(a *schemas.WebhookAttempt) { a.MessageCreatedAt = time.Date(2107, 1, 1, 0, 0, 0, 0, time.UTC) }},
		{"attempt before 1970", func(a *schemas.WebhookAttempt) { a.At = time.Date(1969, 1, 1, 0, 0, 0, 0, time.UTC) }},
		{"next attempt in 3000", func(a *schemas.WebhookAttempt) { a.NextAttemptAt = time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC) }},
		{"negative latency", func(a *schemas.WebhookAttempt) { a.LatencyMillis = -1 }},
		{"latency over UInt32", func(a *schemas.WebhookAttempt) { a.LatencyMillis = 1 << 33 }},
		{"status over UInt16", func(a *schemas.WebhookAttempt) { a.Status = 70000 }},
		{"negative attempt", func(a *schemas.WebhookAttempt) { a.Attempt = -1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := webhookAttempt("org1", "msg_1", created, 1, created.Add(time.Second), schemas.OutcomeRetrying)
			tc.modify(a)
			if _, err := attemptRowFor(a); !errors.Is(err, errUnstorable) {
				t.Fatalf("got %v, want errUnstorable", err)
			}
		})
	}
}

// Attempt records land in their table as published, copies included (the
// table merges them); records that are no attempt of the organization
// keying them, or that no row can hold, go to the DLQ with their reason.
func TestSinkWritesWebhookAttempts(t *testing.T) {
	e := newFakeEnv(t)
	now := time.Now().UTC()
	first := webhookAttempt("t1", "msg_a", now, 1, now.Add(time.Second), schemas.OutcomeRetrying)
	second := webhookAttempt("t1", "msg_a", now, 2, now.Add(time.Minute), schemas.OutcomeDelivered)
	otherOrg := webhookAttempt("t2", "msg_b", now, 1, now, schemas.OutcomeDelivered)
	badOutcome := webhookAttempt("t1", "msg_c", now, 1, now, "gave_up")
	noCreated := webhookAttempt("t1", "msg_d", now, 1, now, schemas.OutcomeExhausted)
	noCreated.MessageCreatedAt = time.Time{}
	rec := func(key string, a *schemas.WebhookAttempt) *kgo.Record {
		return keyedRecord(t, e.topics.WebhookAttempts, key, a)
	}
	recs := []*kgo.Record{rec("t1", first), rec("t1", second), rec("t1", second), // a copy
		rec("t1", otherOrg), rec("t1", badOutcome), rec("t1", noCreated),
		{Topic: e.topics.WebhookAttempts, Key: []byte("t1"), Value: []byte(`{"v":1,"id":`)}}
	produce(t, e.cl, recs...)
	tries := &fakeTable[AttemptRow]{}
	s, err := newSink(e.cfg, &fakeInserter{}, &fakeTable[UsageRow]{}, tries, &fakeTable[AuditRow]{})
	if err != nil {
		t.Fatal(err)
	}
	runSink(t, s)
	kafkatest.WaitCommitted(t, e.adm, e.cfg.Group, e.topics.WebhookAttempts, int64(len(recs)), 30*time.Second)

	if got, want := tries.ids(func(r AttemptRow) string { return r.ID }), []string{first.ID, second.ID, second.ID}; !slices.Equal(got, want) {
		t.Fatalf("attempt rows %v, want %v", got, want)
	}
	if r := tries.stored()[0]; opened(t, e.cfg.Sealer, r.Org, r.Body) != string(first.Body) || r.Outcome != "retrying" || !r.MessageCreatedAt.Equal(now.Truncate(0)) {
		t.Errorf("first attempt row %+v", r)
	}
	dlq := readTopic(t, e.cfg.Kafka.Brokers, e.topics.DLQ, 4)
	for _, d := range dlq {
		if r := kafka.Header(d, schemas.HeaderDLQReason); r != ReasonBadWebhookAttempt || kafka.Header(d, schemas.HeaderDLQError) == "" {
			t.Errorf("DLQ reason %q, error %q for %s", r, kafka.Header(d, schemas.HeaderDLQError), d.Value)
		}
	}
	if n := value(t, s.m.dlq.WithLabelValues(ReasonBadWebhookAttempt)); n != 4 {
		t.Errorf("bad attempts counted %v, want 4", n)
	}
	if n := value(t, s.m.attemptInserted); n != 3 {
		t.Errorf("attempt rows counted %v, want 3", n)
	}
}
