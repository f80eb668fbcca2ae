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

func usageEvent(org, id string, at time.Time) *schemas.UsageEvent {
	return &schemas.UsageEvent{SpecVersion: "1.0", ID: id, Source: schemas.UsageSource(schemas.DefaultUsageSource, org),
		Type: schemas.UsageEventType, Subject: org, Time: at, DataContentType: "application/json",
		Data: schemas.UsageData{Kind: schemas.KindSign, Status: schemas.StatusSigned, Auth: schemas.AuthIngest, KeyID: "key_1",
			Bytes: 42, ProcessedAt: at.Add(time.Second)}}
}

// Usage events land in their table as published, replays included (the
// table merges them); events that are not attributed to the organization
// keying them go to the DLQ, never into the table.
func TestSinkWritesUsageEvents(t *testing.T) {
	e := newFakeEnv(t)
	now := time.Now().UTC().Truncate(time.Second)
	good := usageEvent("t1", "req-1", now)
	old := usageEvent("t1", "req-2", now.Add(-72*time.Hour)) // a lagging usage sink: the time stays
	unauth := usageEvent("t1", "spoof", now)
	unauth.Data.Auth = schemas.AuthNone
	badOrg := usageEvent("t 1", "bad-org", now)
	pre1970 := usageEvent("t1", "pre-1970", time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC))
	recs := []*kgo.Record{
		keyedRecord(t, e.topics.Usage, "t1", good),
		keyedRecord(t, e.topics.Usage, "t1", good), // a replay
		keyedRecord(t, e.topics.Usage, "t1", old),
		keyedRecord(t, e.topics.Usage, "t1", unauth),
		keyedRecord(t, e.topics.Usage, "t 1", badOrg),
		keyedRecord(t, e.topics.Usage, "t2", usageEvent("t1", "other-key", now)),
		keyedRecord(t, e.topics.Usage, "t1", pre1970),
		{Topic: e.topics.Usage, Key: []byte("t1"), Value: []byte(`{"specversion":"1.0"}`)},
	}
	produce(t, e.cl, recs...)
	u := &fakeTable[UsageRow]{}
	s, err := newSink(e.cfg, &fakeInserter{}, u, &fakeTable[AttemptRow]{}, &fakeTable[AuditRow]{})
	if err != nil {
		t.Fatal(err)
	}
	runSink(t, s)
	kafkatest.WaitCommitted(t, e.adm, e.cfg.Group, e.topics.Usage, int64(len(recs)), 30*time.Second)

	if got, want := u.ids(func(r UsageRow) string { return r.ID }), []string{"req-1", "req-1", "req-2"}; !slices.Equal(got, want) {
		t.Fatalf("usage rows %v, want %v", got, want)
	}
	want := UsageRow{Org: "t1", ID: "req-2", Source: "/certnode/orgs/t1", Time: old.Time, Kind: "sign", Status: "signed", Auth: "ingest",
		KeyID: "key_1", Bytes: 42, ProcessedAt: old.Data.ProcessedAt}
	if got := u.stored()[2]; got != want {
		t.Errorf("row %+v, want %+v", got, want)
	}
	dlq := readTopic(t, e.cfg.Kafka.Brokers, e.topics.DLQ, 5)
	for _, d := range dlq {
		if r := kafka.Header(d, schemas.HeaderDLQReason); r != ReasonBadUsageEvent {
			t.Errorf("DLQ reason %q for %s", r, d.Value)
		}
	}
	if n := value(t, s.m.dlq.WithLabelValues(ReasonBadUsageEvent)); n != 5 {
		t.Errorf("bad usage events counted %v, want 5", n)
	}
	if n := value(t, s.m.usageInserted); n != 3 {
		t.Errorf("usage rows counted %v, want 3", n)
	}
}
