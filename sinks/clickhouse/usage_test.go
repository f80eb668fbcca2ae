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

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// fakeUsage stores usage rows like a table would.
type fakeUsage struct {
	mu   sync.Mutex
	rows []UsageRow
}

func (f *fakeUsage) Insert(_ context.Context, rows []UsageRow) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rows = append(f.rows, rows...)
	return nil
}

func (f *fakeUsage) ids() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.rows {
		out = append(out, r.ID)
	}
	return out
}

func usageEvent(org, id string, at time.Time) *schemas.UsageEvent {
	return &schemas.UsageEvent{SpecVersion: "1.0", ID: id, Source: schemas.UsageSource(schemas.DefaultUsageSource, org),
		Type: schemas.UsageEventType, Subject: org, Time: at, DataContentType: "application/json",
		Data: schemas.UsageData{Kind: schemas.KindSign, Status: schemas.StatusSigned, Auth: schemas.AuthIngest, KeyID: "key_1",
			Bytes: 42, ProcessedAt: at.Add(time.Second)}}
}

func usageRecord(t *testing.T, topic, key string, ev *schemas.UsageEvent) *kgo.Record {
	t.Helper()
	val, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	return &kgo.Record{Topic: topic, Key: []byte(key), Value: val}
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
		usageRecord(t, e.topics.Usage, "t1", good),
		usageRecord(t, e.topics.Usage, "t1", good), // a replay
		usageRecord(t, e.topics.Usage, "t1", old),
		usageRecord(t, e.topics.Usage, "t1", unauth),
		usageRecord(t, e.topics.Usage, "t 1", badOrg),
		usageRecord(t, e.topics.Usage, "t2", usageEvent("t1", "other-key", now)),
		usageRecord(t, e.topics.Usage, "t1", pre1970),
		{Topic: e.topics.Usage, Key: []byte("t1"), Value: []byte(`{"specversion":"1.0"}`)},
	}
	produce(t, e.cl, recs...)
	u := &fakeUsage{}
	s, err := newSink(e.cfg, &fakeInserter{}, u)
	if err != nil {
		t.Fatal(err)
	}
	runSink(t, s)
	testenv.WaitFor(t, "usage offsets committed", 30*time.Second, func() (bool, string) {
		c := committed(t, e.adm, e.cfg.Group, e.topics.Usage)
		return c == int64(len(recs)), fmt.Sprintf("%d of %d", c, len(recs))
	})

	if got, want := u.ids(), []string{"req-1", "req-1", "req-2"}; !slices.Equal(got, want) {
		t.Fatalf("usage rows %v, want %v", got, want)
	}
	want := UsageRow{Org: "t1", ID: "req-2", Source: "/certnode/orgs/t1", Time: old.Time, Kind: "sign", Status: "signed", Auth: "ingest",
		KeyID: "key_1", Bytes: 42, ProcessedAt: old.Data.ProcessedAt}
	if got := u.rows[2]; got != want {
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
