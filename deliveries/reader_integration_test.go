//go:build integration

package deliveries

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/chconn"
	"github.com/certnode/certnode/internal/envelope"
	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/kafkatest"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// sinkEnv is a topic prefix of its own on the real Kafka, with a
// `certnode sink clickhouse` process writing it to the real ClickHouse.
type sinkEnv struct {
	topics   schemas.Topics
	group    string
	cl       *kgo.Client
	adm      *kadm.Client
	produced int64
	// keks is the folder of the sink's KEKs: bodies are stored sealed.
	keks string
}

// opener opens what the sink sealed, as ingest does.
func (e *sinkEnv) opener(t *testing.T) *envelope.Envelope {
	t.Helper()
	keks, err := envelope.NewDirKEKs(e.keks)
	if err != nil {
		t.Fatal(err)
	}
	return envelope.New(keks)
}

func newSinkEnv(t *testing.T) *sinkEnv {
	t.Helper()
	prefix := "deliveriestest-" + testenv.RandomSuffix()
	cfg := kafka.Config{Brokers: testenv.KafkaBrokers(t), Partitions: 2, ReplicationFactor: 1, TopicPrefix: prefix}
	cl, err := kafka.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e := &sinkEnv{topics: cfg.Topics(), group: prefix + "-sink-clickhouse", cl: cl, adm: kadm.NewClient(cl), keks: t.TempDir()}
	t.Cleanup(func() { // after the sink stopped (cleanups run last in, first out)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		e.adm.DeleteTopics(ctx, e.topics.All()...)
		cl.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := kafka.EnsureTopics(ctx, cl, cfg); err != nil {
		t.Fatal(err)
	}

	// The sink runs as its own process, as in production: this read-side
	// package may not import it (DESIGN.md section 3).
	cmd := exec.Command(testenv.CertnodeBinary(t, "../cmd/certnode", false), "sink", "clickhouse", "--clickhouse", testenv.ClickHouseAddr(t),
		"--metrics", "127.0.0.1:0", "--batch-wait", "200ms", "--kek-dir", e.keks)
	cmd.Env = append(os.Environ(), "CERTNODE_KAFKA="+cfg.Brokers[0], "CERTNODE_TOPIC_PREFIX="+prefix, "CERTNODE_KAFKA_PARTITIONS=2")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("--- sink output:\n%s", out.String())
		}
	})
	return e
}

// send produces attempts, keyed by organization, and waits until the sink
// committed them, so they are in ClickHouse.
func (e *sinkEnv) send(t *testing.T, attempts ...*schemas.WebhookAttempt) {
	t.Helper()
	var recs []*kgo.Record
	for _, a := range attempts {
		val, err := json.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, &kgo.Record{Topic: e.topics.WebhookAttempts, Key: []byte(a.Org), Value: val})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
	e.produced += int64(len(recs))
	kafkatest.WaitCommitted(t, e.adm, e.group, e.topics.WebhookAttempts, e.produced, 2*time.Minute)
}

// message is a webhook message of the test and what the reader must say
// of it.
type message struct {
	org, id, endpoint, eventType string
	created                      time.Time
	attempts                     []*schemas.WebhookAttempt
}

// attempt adds attempt n of a round to m, at at; the first attempt of a
// round carries the body, which names the round's time.
func (m *message) attempt(n int, redelivery bool, at time.Time, outcome string) *schemas.WebhookAttempt {
	a := &schemas.WebhookAttempt{V: schemas.EnvelopeVersion, ID: fmt.Sprintf("att_%s_%d", m.id, at.UnixNano()), MessageID: m.id,
		Org: m.org, EndpointID: m.endpoint, EventType: m.eventType, EventID: "evt_" + m.id, MessageCreatedAt: m.created,
		Attempt: n, Redelivery: redelivery, At: at, URL: "https://example.com/" + m.endpoint, Status: 503, LatencyMillis: 7,
		ResponseBody: "busy", Outcome: outcome}
	if n == 1 {
		a.Body = fmt.Appendf(nil, `{"org":%q,"id":%q,"round":%d}`, m.org, m.id, at.UnixNano())
	}
	switch outcome {
	case schemas.OutcomeDelivered:
		a.Status, a.ResponseHeaders, a.ResponseBody = 200, map[string]string{"content-type": "text/plain", "x-request-id": m.id}, "ok"
	case schemas.OutcomeRetrying:
		a.NextAttemptAt = at.Add(5 * time.Minute).Truncate(time.Second)
	}
	m.attempts = append(m.attempts, a)
	return a
}

func (m *message) last() *schemas.WebhookAttempt {
	l := m.attempts[0]
	for _, a := range m.attempts[1:] {
		if a.At.After(l.At) || (a.At.Equal(l.At) && a.ID > l.ID) {
			l = a
		}
	}
	return l
}

// want is the message as List shows it.
func (m *message) want() schemas.WebhookDelivery {
	l := m.last()
	return schemas.WebhookDelivery{ID: m.id, EndpointID: m.endpoint, EventType: m.eventType, EventID: "evt_" + m.id,
		Status: schemas.DeliveryStatus(l.Outcome), Attempts: len(m.attempts), CreatedAt: m.created, LastAttemptAt: l.At,
		LastHTTPStatus: l.Status, NextAttemptAt: l.NextAttemptAt}
}

// body is the newest body of m.
func (m *message) body() string {
	var newest *schemas.WebhookAttempt
	for _, a := range m.attempts {
		if a.Body != nil && (newest == nil || a.At.After(newest.At)) {
			newest = a
		}
	}
	return string(newest.Body)
}

// corpus is the messages of the test, by organization.
type corpus map[string][]*message

// wantList is org's messages that keep, newest first, as List shows them.
func (c corpus) wantList(org string, keep func(*message) bool) []schemas.WebhookDelivery {
	var ms []*message
	for _, m := range c[org] {
		if keep == nil || keep(m) {
			ms = append(ms, m)
		}
	}
	slices.SortFunc(ms, func(a, b *message) int {
		if c := b.created.Compare(a.created); c != 0 {
			return c
		}
		return strings.Compare(b.id, a.id)
	})
	out := []schemas.WebhookDelivery{}
	for _, m := range ms {
		out = append(out, m.want())
	}
	return out
}

func (c corpus) find(org, id string) *message {
	i := slices.IndexFunc(c[org], func(m *message) bool { return m.id == id })
	return c[org][i]
}

func ids(ds []schemas.WebhookDelivery) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.ID)
	}
	return out
}

// checkDeliveries compares deliveries without bodies.
func checkDeliveries(t *testing.T, what string, got, want []schemas.WebhookDelivery) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d deliveries %v, want %d %v", what, len(got), ids(got), len(want), ids(want))
	}
	for i := range want {
		g := got[i]
		g.Body = nil
		if !reflect.DeepEqual(g, want[i]) {
			t.Errorf("%s: delivery %d\n%+v\nwant\n%+v", what, i, g, want[i])
		}
	}
}

// Attempt records go through real Kafka and the real sink into
// ClickHouse, and the reader answers from there: filters, stable pages
// while rows arrive, copies counted once (also unmerged), organizations
// apart, one message with its rounds and body, and the failed messages of
// an endpoint for a replay.
func TestReaderOnClickHouse(t *testing.T) {
	e := newSinkEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r, err := Open(ctx, chconn.Options{Addr: []string{testenv.ClickHouseAddr(t)}}, e.opener(t))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	orgA, orgB := "deliveriestest-"+testenv.RandomSuffix(), "deliveriestest-"+testenv.RandomSuffix()
	base := time.Now().UTC().Truncate(time.Second).Add(-2 * time.Hour)
	c := corpus{}
	var sent []*schemas.WebhookAttempt
	// 24 messages of orgA, two a second (so ties in created_at), on two
	// endpoints and two event types; by i%3 delivered after a retry,
	// pending, or failed after a retry.
	for i := range 24 {
		m := &message{org: orgA, id: fmt.Sprintf("msg_%02d", i), endpoint: []string{"ep_1", "ep_2"}[i%2],
			eventType: schemas.EventReceiptSigned, created: base.Add(time.Duration(i/2) * time.Second)}
		if i%4 == 3 {
			m.eventType = schemas.EventReceiptVerified
		}
		at := m.created.Add(time.Second + 250*time.Millisecond)
		m.attempt(1, false, at, schemas.OutcomeRetrying)
		switch i % 3 {
		case 0:
			m.attempt(2, false, at.Add(time.Minute), schemas.OutcomeDelivered)
		case 2:
			m.attempt(2, false, at.Add(time.Minute), schemas.OutcomeExhausted)
		}
		c[orgA] = append(c[orgA], m)
	}
	// msg_02 failed, then was redelivered in a second round with another body.
	c.find(orgA, "msg_02").attempt(1, true, base.Add(time.Hour), schemas.OutcomeDelivered)
	// msg_05's endpoint was disabled 600 ms after a retry, in the same
	// second; the later attempt has the smaller id.
	m5 := c.find(orgA, "msg_05")
	m5.attempts = m5.attempts[:1]
	m5.attempts[0].ID = "att_z"
	m5.attempt(2, false, m5.attempts[0].At.Add(600*time.Millisecond), schemas.OutcomeDisabled).ID = "att_a"
	// orgB has a message with an id orgA uses too.
	for i, id := range []string{"msg_00", "msg_b1"} {
		m := &message{org: orgB, id: id, endpoint: "ep_1", eventType: schemas.EventReceiptSigned, created: base.Add(time.Duration(i) * time.Second)}
		m.attempt(1, false, m.created.Add(time.Second), []string{schemas.OutcomeExhausted, schemas.OutcomeDelivered}[i])
		c[orgB] = append(c[orgB], m)
	}
	for _, org := range []string{orgA, orgB} {
		for _, m := range c[org] {
			sent = append(sent, m.attempts...)
			sent = append(sent, m.last()) // a copy: Kafka delivers at least once
		}
	}
	e.send(t, sent...)

	list := func(t *testing.T, org string, q schemas.DeliveryQuery) *schemas.DeliveryPage {
		t.Helper()
		page, err := r.List(ctx, org, q)
		if err != nil {
			t.Fatal(err)
		}
		return page
	}

	t.Run("list and filters", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			q    schemas.DeliveryQuery
			keep func(*message) bool
		}{
			{"everything", schemas.DeliveryQuery{}, nil},
			{"endpoint", schemas.DeliveryQuery{Endpoint: "ep_1"}, func(m *message) bool { return m.endpoint == "ep_1" }},
			{"event type", schemas.DeliveryQuery{EventType: schemas.EventReceiptVerified},
				func(m *message) bool { return m.eventType == schemas.EventReceiptVerified }},
			{"delivered", schemas.DeliveryQuery{Status: schemas.DeliveryDelivered}, func(m *message) bool { return m.want().Status == "delivered" }},
			{"pending", schemas.DeliveryQuery{Status: schemas.DeliveryPending}, func(m *message) bool { return m.want().Status == "pending" }},
			{"failed on ep_2", schemas.DeliveryQuery{Status: schemas.DeliveryFailed, Endpoint: "ep_2"},
				func(m *message) bool { return m.want().Status == "failed" && m.endpoint == "ep_2" }},
			{"since and until", schemas.DeliveryQuery{Since: base.Add(3 * time.Second), Until: base.Add(6 * time.Second)},
				func(m *message) bool {
					return !m.created.Before(base.Add(3*time.Second)) && m.created.Before(base.Add(6*time.Second))
				}},
		} {
			page := list(t, orgA, tc.q)
			want := c.wantList(orgA, tc.keep)
			if len(want) == 0 || len(want) == len(c[orgA]) && tc.keep != nil {
				t.Fatalf("%s: the filter keeps %d of %d messages; the test would prove nothing", tc.name, len(want), len(c[orgA]))
			}
			checkDeliveries(t, tc.name, page.Data, want)
			if page.HasMore || page.NextCursor != "" {
				t.Errorf("%s: has_more %v, cursor %q on the only page", tc.name, page.HasMore, page.NextCursor)
			}
		}
		if d := c.find(orgA, "msg_00").want(); d.Attempts != 2 {
			t.Fatalf("msg_00 expects %d attempts", d.Attempts) // its copy must not count
		}
		if _, err := r.List(ctx, orgA, schemas.DeliveryQuery{Cursor: "bm9wZQ"}); !errors.Is(err, ErrBadCursor) {
			t.Errorf("a bad cursor: %v, want ErrBadCursor", err)
		}
	})

	t.Run("bodies stored sealed", func(t *testing.T) {
		var sealed, clear uint64
		if err := r.conn.QueryRow(ctx, "SELECT countIf(substring(body, 1, 5) = 'cne1:'), countIf(body != '' AND substring(body, 1, 5) != 'cne1:') FROM certnode.webhook_attempts WHERE org IN (?, ?)",
			orgA, orgB).Scan(&sealed, &clear); err != nil || sealed == 0 || clear != 0 {
			t.Errorf("%d bodies sealed, %d in the clear (%v)", sealed, clear, err)
		}
	})

	t.Run("organizations apart", func(t *testing.T) {
		checkDeliveries(t, "orgB", list(t, orgB, schemas.DeliveryQuery{}).Data, c.wantList(orgB, nil))
		if _, ok, err := r.Get(ctx, orgA, "msg_b1"); ok || err != nil {
			t.Errorf("orgA got orgB's message (%v, %v)", ok, err)
		}
		d, ok, err := r.Get(ctx, orgB, "msg_00")
		if err != nil || !ok || d.Attempts != 1 || d.Status != schemas.DeliveryFailed || string(d.Body) != c.find(orgB, "msg_00").body() {
			t.Errorf("orgB's msg_00 (%v, %v): %+v", ok, err, d)
		}
		if _, ok, err := r.Get(ctx, orgA, "msg_nope"); ok || err != nil {
			t.Errorf("an absent message: %v, %v", ok, err)
		}
	})

	t.Run("get", func(t *testing.T) {
		m := c.find(orgA, "msg_02")
		d, ok, err := r.Get(ctx, orgA, m.id)
		if err != nil || !ok {
			t.Fatalf("get: %v %v", ok, err)
		}
		want := m.want()
		if d.Status != schemas.DeliveryDelivered || d.Attempts != 3 || !d.LastAttemptAt.Equal(want.LastAttemptAt) ||
			!d.CreatedAt.Equal(m.created) || d.LastHTTPStatus != 200 || string(d.Body) != m.body() {
			t.Errorf("msg_02 %+v, body %s; want %+v, body %s", d, d.Body, want, m.body())
		}
		if len(d.AttemptList) != 3 {
			t.Fatalf("attempt list %+v", d.AttemptList)
		}
		for i, a := range d.AttemptList {
			w := *m.attempts[i]
			w.Body = nil // the body is the delivery's
			if !reflect.DeepEqual(a, w) {
				t.Errorf("attempt %d\n%+v\nwant\n%+v", i, a, w)
			}
		}
		d5, ok, err := r.Get(ctx, orgA, "msg_05")
		if err != nil || !ok || d5.Status != schemas.DeliveryFailed || len(d5.AttemptList) != 2 || d5.AttemptList[1].ID != "att_a" {
			t.Errorf("msg_05 (%v, %v): %+v; the endpoint_disabled attempt, 600 ms later, is the latest", ok, err, d5)
		}
	})

	t.Run("failed for replay", func(t *testing.T) {
		oldestFirst := func(org string, keep func(*message) bool) []schemas.WebhookDelivery {
			w := c.wantList(org, keep)
			slices.Reverse(w)
			return w
		}
		check := func(what, org string, got []schemas.WebhookDelivery, err error, want []schemas.WebhookDelivery) {
			t.Helper()
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			checkDeliveries(t, what, got, want)
			for _, d := range got {
				if b := c.find(org, d.ID).body(); string(d.Body) != b {
					t.Errorf("%s: %s body %s, want %s", what, d.ID, d.Body, b)
				}
			}
		}
		failedEp2 := func(m *message) bool { return m.endpoint == "ep_2" && m.want().Status == schemas.DeliveryFailed }
		got, err := r.Failed(ctx, orgA, "ep_2", base, base.Add(time.Hour), false, MaxFailed)
		check("failed on ep_2", orgA, got, err, oldestFirst(orgA, failedEp2))
		got, err = r.Failed(ctx, orgA, "ep_2", base, base.Add(time.Hour), false, 2)
		check("the 2 oldest failed on ep_2", orgA, got, err, oldestFirst(orgA, failedEp2)[:2])
		got, err = r.Failed(ctx, orgA, "ep_2", base.Add(3*time.Second), base.Add(6*time.Second), true, MaxFailed)
		check("all on ep_2 in 3 seconds", orgA, got, err, oldestFirst(orgA, func(m *message) bool {
			return m.endpoint == "ep_2" && !m.created.Before(base.Add(3*time.Second)) && m.created.Before(base.Add(6*time.Second))
		}))
		got, err = r.Failed(ctx, orgB, "ep_1", time.Time{}, time.Time{}, false, MaxFailed)
		check("orgB", orgB, got, err, oldestFirst(orgB, func(m *message) bool { return m.id == "msg_00" }))
	})

	t.Run("copies not merged yet count once", func(t *testing.T) {
		// Tables of their own, merges stopped, holding every attempt of
		// orgA twice as two inserts: the reader must answer as it does
		// from the real tables.
		sfx := testenv.RandomSuffix()
		iso := tables{attempts: "certnode.dtest_" + sfx + "_webhook_attempts", messages: "certnode.dtest_" + sfx + "_webhook_messages"}
		t.Cleanup(func() {
			for _, table := range []string{"webhook_messages_mv", "webhook_messages", "webhook_attempts"} {
				r.conn.Exec(context.Background(), "DROP TABLE IF EXISTS certnode.dtest_"+sfx+"_"+table)
			}
		})
		for _, ddl := range schemas.ClickHouseDDL {
			// The webhook tables, not the rollups of the attempts.
			if strings.Contains(ddl, "certnode.webhook_") && !strings.Contains(ddl, schemas.WebhooksRollup.Name+"_") {
				if err := r.conn.Exec(ctx, strings.ReplaceAll(ddl, "certnode.webhook_", "certnode.dtest_"+sfx+"_webhook_")); err != nil {
					t.Fatal(err)
				}
			}
		}
		for _, table := range []string{iso.attempts, iso.messages} {
			if err := r.conn.Exec(ctx, "SYSTEM STOP MERGES "+table); err != nil {
				t.Fatal(err)
			}
		}
		for range 2 {
			if err := r.conn.Exec(ctx, "INSERT INTO "+iso.attempts+" ("+schemas.ClickHouseWebhookAttemptColumns+") SELECT "+
				schemas.ClickHouseWebhookAttemptColumns+" FROM "+schemas.ClickHouseWebhookAttemptsTable+" WHERE org = ? LIMIT 1 BY id", orgA); err != nil {
				t.Fatal(err)
			}
		}
		var attempts, messages uint64
		if err := r.conn.QueryRow(ctx, "SELECT count(), uniqExact(id) FROM "+iso.attempts+" WHERE org = ?", orgA).Scan(&attempts, new(uint64)); err != nil {
			t.Fatal(err)
		}
		if err := r.conn.QueryRow(ctx, "SELECT count() FROM "+iso.messages+" WHERE org = ?", orgA).Scan(&messages); err != nil {
			t.Fatal(err)
		}
		distinct := 0
		for _, m := range c[orgA] {
			distinct += len(m.attempts)
		}
		if attempts != uint64(2*distinct) || messages != uint64(2*len(c[orgA])) {
			t.Fatalf("%d attempt rows, %d message rows; want every one twice (%d, %d)", attempts, messages, 2*distinct, 2*len(c[orgA]))
		}
		ir := &Reader{conn: r.conn, t: iso, open: r.open}
		for _, q := range []schemas.DeliveryQuery{{}, {Status: schemas.DeliveryFailed}, {Limit: 5}} {
			got, err := ir.List(ctx, orgA, q)
			if err != nil {
				t.Fatal(err)
			}
			if want := list(t, orgA, q); !reflect.DeepEqual(got, want) {
				t.Errorf("list %+v on copies\n%+v\nwant\n%+v", q, got, want)
			}
		}
		for _, id := range []string{"msg_02", "msg_05"} {
			got, _, err := ir.Get(ctx, orgA, id)
			want, _, err2 := r.Get(ctx, orgA, id)
			if err != nil || err2 != nil || !reflect.DeepEqual(got, want) {
				t.Errorf("get %s on copies (%v, %v)\n%+v\nwant\n%+v", id, err, err2, got, want)
			}
		}
		got, err := ir.Failed(ctx, orgA, "ep_2", time.Time{}, time.Time{}, true, MaxFailed)
		want, err2 := r.Failed(ctx, orgA, "ep_2", time.Time{}, time.Time{}, true, MaxFailed)
		if err != nil || err2 != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("failed on copies (%v, %v)\n%+v\nwant\n%+v", err, err2, got, want)
		}
	})

	// Last, since it adds messages and attempts.
	t.Run("pages stay stable while rows arrive", func(t *testing.T) {
		want := ids(c.wantList(orgA, nil))
		var seen []string
		q := schemas.DeliveryQuery{Limit: 5}
		for page := 0; ; page++ {
			p := list(t, orgA, q)
			seen = append(seen, ids(p.Data)...)
			if !p.HasMore {
				if p.NextCursor != "" || len(p.Data) == 0 {
					t.Errorf("last page: cursor %q, %d deliveries", p.NextCursor, len(p.Data))
				}
				break
			}
			if len(p.Data) != 5 || page > 10 {
				t.Fatalf("page %d: %d deliveries, has_more", page, len(p.Data))
			}
			// Between pages: new messages (newer than every one listed),
			// and new attempts of messages on pages seen and unseen.
			now := time.Now().UTC()
			m := &message{org: orgA, id: fmt.Sprintf("msg_new_%d", page), endpoint: "ep_1", eventType: schemas.EventReceiptSigned, created: now.Truncate(time.Second)} // stored in whole seconds
			more := []*schemas.WebhookAttempt{m.attempt(1, false, now, schemas.OutcomeRetrying),
				c.find(orgA, want[page*5]).attempt(1, true, now, schemas.OutcomeDelivered),
				c.find(orgA, want[len(want)-1-page]).attempt(1, true, now, schemas.OutcomeRetrying)}
			c[orgA] = append(c[orgA], m)
			e.send(t, more...)
			q.Cursor = p.NextCursor
		}
		if !slices.Equal(seen, want) {
			t.Errorf("pages listed\n%v\nwant every message there was at the start, once, in order\n%v", seen, want)
		}
		// A new listing starts with the new messages and shows the new states.
		checkDeliveries(t, "after", list(t, orgA, schemas.DeliveryQuery{Limit: schemas.MaxDeliveryPage}).Data, c.wantList(orgA, nil))
	})
}
