package clickhouse

import (
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/kafkatest"
	"github.com/certnode/certnode/schemas"
)

func auditEventOf(org, id string, at time.Time) *schemas.AuditEvent {
	return &schemas.AuditEvent{ID: id, At: at, Org: org, Actor: schemas.AuditActor{Kind: "user", ID: "usr_1", Addr: "127.0.0.9"},
		Action: "api_key.create", Target: "key_1", Result: schemas.AuditOK, Source: "coordinator"}
}

// Audit events land in their table with the canonical JSON their leaf
// commits to; events not of the organization keying them, or not events,
// go to the DLQ.
func TestSinkWritesAuditEvents(t *testing.T) {
	e := newFakeEnv(t)
	at := time.Date(2026, 11, 27, 10, 0, 0, 123456789, time.UTC)
	good := auditEventOf("t1", "ev-1", at)
	operator := auditEventOf("", "ev-2", at)
	noResult := auditEventOf("t1", "ev-3", at)
	noResult.Result = ""
	future := auditEventOf("t1", "ev-4", time.Now().Add(time.Hour)) // ahead of its record by more than the skew
	recs := []*kgo.Record{
		keyedRecord(t, e.topics.Audit, "t1", future),
		keyedRecord(t, e.topics.Audit, "t1", good),
		keyedRecord(t, e.topics.Audit, "", operator),
		keyedRecord(t, e.topics.Audit, "t2", auditEventOf("t1", "other-key", at)),
		keyedRecord(t, e.topics.Audit, "t1", noResult),
		{Topic: e.topics.Audit, Key: []byte("t1"), Value: []byte(`{"id":"x","extra":1}`)},
	}
	produce(t, e.cl, recs...)
	a := &fakeTable[AuditRow]{}
	s, err := newSink(e.cfg, &fakeInserter{}, &fakeTable[UsageRow]{}, &fakeTable[AttemptRow]{}, a)
	if err != nil {
		t.Fatal(err)
	}
	runSink(t, s)
	kafkatest.WaitCommitted(t, e.adm, e.cfg.Group, e.topics.Audit, int64(len(recs)), 30*time.Second)

	if got, want := a.ids(func(r AuditRow) string { return r.ID }), []string{"ev-1", "ev-2"}; !slices.Equal(got, want) {
		t.Fatalf("audit rows %v, want %v", got, want)
	}
	row := a.stored()[0]
	canon, err := schemas.EncodeAuditEvent(good)
	if err != nil {
		t.Fatal(err)
	}
	if canon, err = schemas.CanonicalizeObject(canon); err != nil {
		t.Fatal(err)
	}
	want := AuditRow{Org: "t1", ID: "ev-1", At: at.Truncate(time.Second), AtNanos: 123456789, Action: "api_key.create",
		ActorKind: "user", ActorID: "usr_1", Addr: "127.0.0.9", Result: "ok", Source: "coordinator", Event: string(canon)}
	if row != want {
		t.Errorf("row %+v, want %+v", row, want)
	}
	for _, d := range readTopic(t, e.cfg.Kafka.Brokers, e.topics.DLQ, 4) {
		if r := kafka.Header(d, schemas.HeaderDLQReason); r != ReasonBadAuditEvent {
			t.Errorf("DLQ reason %q for %s", r, d.Value)
		}
	}
	if n := value(t, s.m.auditInserted); n != 2 {
		t.Errorf("audit rows counted %v, want 2", n)
	}
}
