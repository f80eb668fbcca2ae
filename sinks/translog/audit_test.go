package translog

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/transparency-dev/tessera/client"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/kafkatest"
	"github.com/certnode/certnode/internal/recordauth"
	"github.com/certnode/certnode/schemas"
)

// The audit log appends the roles' events (a valid MAC, a time not ahead
// of the record), each once, as leaves with the organization's keyed tag
// and append times that never go back, and indexes when each minute's
// first leaf was appended.
func TestLogsAuditEvents(t *testing.T) {
	e := newEnv(t)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, e.topics.Audit))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	e.cfg.Kafka = kafka.Config{Brokers: c.ListenAddrs(), Partitions: 2, ReplicationFactor: 1}
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	e.cl = cl
	e.adm = kadm.NewClient(cl)
	mac, err := recordauth.NewKeyring([]byte(strings.Repeat("k", 32)))
	if err != nil {
		t.Fatal(err)
	}
	e.cfg.Kind, e.cfg.MAC = Audit, mac
	now := time.Now().UTC()
	event := func(org, id string, at time.Time, header []byte) *kgo.Record {
		ev := schemas.AuditEvent{ID: id, At: at, Org: org, Actor: schemas.AuditActor{Kind: "operator"}, Action: "org.create",
			Result: schemas.AuditOK, Source: "coordinator"}
		b, _ := schemas.EncodeAuditEvent(&ev)
		if header == nil {
			header = mac.Header(b)
		}
		return &kgo.Record{Topic: e.topics.Audit, Key: []byte(org), Value: b, Headers: []kgo.RecordHeader{{Key: schemas.HeaderIngestMAC, Value: header}}}
	}
	recs := []*kgo.Record{event("acme", "ev_1", now, nil), event("", "ev_2", now, nil), event("acme", "ev_1", now, nil), // a copy
		event("acme", "ev_forged", now, []byte("0000:00")), event("acme", "ev_future", now.Add(time.Hour), nil),
		event("globex", "ev_3", now, nil)}
	e.produce(t, recs...)
	s, stop := e.start(t)
	defer stop()
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	kafkatest.WaitCommitted(t, e.adm, e.cfg.Group, e.topics.Audit, int64(len(recs)), 20*time.Second)
	e.checkpoint(t, srv, 3)

	eb, err := client.GetEntryBundle(context.Background(), client.FileFetcher{Root: filepath.Join(e.cfg.Dir, "log")}.ReadEntryBundle, 0, 3)
	if err != nil || len(eb.Entries) != 3 {
		t.Fatalf("entries %d: %v", len(eb.Entries), err)
	}
	key, _ := mac.Derive(mac.SignKeyID(), []byte(schemas.AuditTagLabel))
	var last time.Time
	var tags []string
	for i, leaf := range eb.Entries {
		f, err := schemas.ParseAuditLeaf(leaf)
		if err != nil || f.Appended.Before(last) || f.Appended.Before(now) {
			t.Fatalf("leaf %d %q: %+v %v", i, leaf, f, err)
		}
		last = f.Appended
		tags = append(tags, f.OrgTag)
	}
	for _, org := range []string{"acme", "", "globex"} {
		if tag := schemas.AuditOrgTag(mac.SignKeyID(), key, org); !strings.Contains(strings.Join(tags, " "), tag) {
			t.Errorf("no leaf of %q (tag %s) in %v", org, tag, tags)
		}
	}
	if _, ok := s.Index("ev_forged"); ok {
		t.Error("a forged event was logged")
	}
	if _, ok := s.Index("ev_future"); ok {
		t.Error("an event an hour ahead of its record was logged")
	}
	for path, want := range map[string]string{
		fmt.Sprintf("/since/%d", now.Add(-time.Hour).Unix()): `{"index":0}`,
		fmt.Sprintf("/since/%d", now.Add(time.Hour).Unix()):  "404",
		"/since/yesterday": "400",
	} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got := strings.TrimSpace(string(b)); got != want && fmt.Sprint(resp.StatusCode) != want {
			t.Errorf("%s: %d %s, want %s", path, resp.StatusCode, got, want)
		}
	}
}
