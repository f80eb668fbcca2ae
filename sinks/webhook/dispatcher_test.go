package webhook

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/egress"
	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/recordauth"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/internal/whsig"
	"github.com/certnode/certnode/schemas"
)

// fakeDir is a directory in memory; a disable report disables.
type fakeDir struct {
	mu        sync.Mutex
	eps       map[string][]*Endpoint
	sched     map[string][]time.Duration
	receipt   map[string]string // organizations' webhook receipt modes
	reports   []healthReport
	alerts    []QuotaAlert
	due       []DueReport
	announced []string
}

type healthReport struct {
	endpoint string
	since    time.Time
	disable  bool
	reason   string
}

func (f *fakeDir) Endpoints(org string) ([]*Endpoint, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.eps[org], true
}

func (f *fakeDir) RetrySchedule(org string) []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sched[org]
}

func (f *fakeDir) WebhookReceipt(org string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.receipt[org]
}

func (f *fakeDir) ReportHealth(_ context.Context, ep *Endpoint, since time.Time, disable bool, reason string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	org, id := ep.Org, ep.ID
	f.reports = append(f.reports, healthReport{id, since, disable, reason})
	for i, ep := range f.eps[org] {
		if ep.ID == id {
			c := *ep
			c.FailingSince = since
			if disable {
				c.Enabled = false
			}
			f.eps[org] = slices.Clone(f.eps[org])
			f.eps[org][i] = &c
		}
	}
	return nil
}

func (f *fakeDir) PendingQuotaAlerts() []QuotaAlert {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.alerts)
}

func (f *fakeDir) AnnounceQuota(_ context.Context, org, month string, level int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.alerts = slices.DeleteFunc(f.alerts, func(a QuotaAlert) bool { return a.Org == org && a.Month == month && a.Level <= level })
	f.announced = append(f.announced, fmt.Sprintf("%s %s %d", org, month, level))
	return nil
}

func (f *fakeDir) DueReports(time.Time) []DueReport {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.due)
}

func (f *fakeDir) AnnounceReport(_ context.Context, org, id, period string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.due = slices.DeleteFunc(f.due, func(d DueReport) bool { return d.Org == org && d.ID == id && d.Period == period })
	f.announced = append(f.announced, fmt.Sprintf("%s %s %s", org, id, period))
	return nil
}

func (f *fakeDir) add(ep *Endpoint) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.eps[ep.Org] = append(slices.Clone(f.eps[ep.Org]), ep)
}

func (f *fakeDir) healthReports() []healthReport {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.reports)
}

// receiver is an endpoint on loopback; answer decides each answer from
// how many times the message (webhook-id) came before.
type receiver struct {
	srv    *httptest.Server
	secret whsig.Secret
	answer func(seen int, w http.ResponseWriter)
	mu     sync.Mutex
	got    []got
}

type got struct {
	id, typ string
	sig     string
	header  http.Header
	at      time.Time
	valid   error
	body    []byte
	// schemaErr: the body does not meet its event type's schema.
	schemaErr error
}

var (
	catalogOnce    sync.Once
	catalogSchemas map[string]*jsonschema.Schema
)

// conforms checks a delivery's body against its type's published schema.
func conforms(body []byte) error {
	catalogOnce.Do(func() {
		catalogSchemas = map[string]*jsonschema.Schema{}
		infos, err := schemas.EventCatalog()
		if err != nil {
			panic(err)
		}
		for _, info := range infos {
			doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(info.Schema))
			if err != nil {
				panic(err)
			}
			c := jsonschema.NewCompiler()
			c.AssertFormat()
			if err := c.AddResource(info.Type+".json", doc); err != nil {
				panic(err)
			}
			catalogSchemas[info.Type] = c.MustCompile(info.Type + ".json")
		}
	})
	var ev struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(body, &ev, json.RejectUnknownMembers(false)); err != nil {
		return err
	}
	sch := catalogSchemas[ev.Type]
	if sch == nil {
		return fmt.Errorf("type %q", ev.Type)
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return err
	}
	return sch.Validate(v)
}

func newReceiver(t *testing.T, answer func(seen int, w http.ResponseWriter)) *receiver {
	rv := &receiver{secret: whsig.NewSecret(), answer: answer}
	rv.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var ev schemas.WebhookEvent
		json.Unmarshal(body, &ev, json.RejectUnknownMembers(false))
		g := got{id: r.Header.Get("Webhook-Id"), typ: ev.Type, sig: r.Header.Get("Webhook-Signature"), header: r.Header.Clone(),
			at: time.Now(), body: body,
			valid: whsig.Verify(r.Header, body, []whsig.Secret{rv.secret}, 5*time.Minute, time.Now()), schemaErr: conforms(body)}
		rv.mu.Lock()
		seen := 0
		for _, o := range rv.got {
			if o.id == g.id {
				seen++
			}
		}
		rv.got = append(rv.got, g)
		rv.mu.Unlock()
		if rv.answer == nil {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		rv.answer(seen, w)
	}))
	t.Cleanup(rv.srv.Close)
	return rv
}

func (rv *receiver) received() []got {
	rv.mu.Lock()
	defer rv.mu.Unlock()
	return slices.Clone(rv.got)
}

func (rv *receiver) endpoint(id, org string, types ...string) *Endpoint {
	return &Endpoint{ID: id, Org: org, URL: rv.srv.URL + "/hook", EventTypes: types, Enabled: true,
		Secrets: []Secret{{Key: rv.secret}}, CreatedAt: time.Now().Add(-time.Hour)}
}

type harness struct {
	t      *testing.T
	cfg    Config
	topics schemas.Topics
	cl     *kgo.Client
	dir    *fakeDir
	client *http.Client
	mac    *recordauth.Keyring
}

func newHarness(t *testing.T, mod func(*Config)) *harness {
	t.Helper()
	topics := schemas.TopicsFor(schemas.DefaultTopicPrefix)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, topics.All()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	cfg := DefaultConfig()
	cfg.Kafka = kafka.Config{Brokers: c.ListenAddrs(), Partitions: 2, ReplicationFactor: 1}
	cfg.Jitter, cfg.CommitInterval = 0, 100*time.Millisecond
	if mod != nil {
		mod(&cfg)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	ecfg := egress.DefaultConfig()
	ecfg.Timeout, ecfg.Allow = 2*time.Second, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	client, err := egress.NewClient(ecfg)
	if err != nil {
		t.Fatal(err)
	}
	mac, err := recordauth.NewKeyring([]byte("a test internal secret of 32+ bytes"))
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, cfg: cfg, topics: topics, cl: cl, client: client, mac: mac,
		dir: &fakeDir{eps: map[string][]*Endpoint{}, sched: map[string][]time.Duration{}}}
}

// start runs a dispatcher until stop is called (or the test ends).
func (h *harness) start() (stop func()) {
	h.t.Helper()
	d, err := New(h.cfg, h.dir, h.client, h.mac)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				h.t.Errorf("run: %v", err)
			}
			d.Close()
		})
	}
	h.t.Cleanup(stop)
	return stop
}

func (h *harness) produce(topic, key string, v any) {
	h.t.Helper()
	val, err := json.Marshal(v)
	if err != nil {
		h.t.Fatal(err)
	}
	rec := &kgo.Record{Topic: topic, Key: []byte(key), Value: val}
	if topic == h.topics.Events || topic == h.topics.Webhooks {
		// As ingest writes them.
		rec.Headers = []kgo.RecordHeader{{Key: schemas.HeaderIngestMAC, Value: h.mac.Header(val)}}
	}
	if err := h.cl.ProduceSync(context.Background(), rec).FirstErr(); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) result(org, id string) *schemas.Result {
	r := &schemas.Result{V: 1, ID: id, Tenant: org, Kind: schemas.KindSign, Status: schemas.StatusSigned,
		Auth: schemas.AuthIngest, Receipt: []byte(`{"receipt_id":"r"}`), ReceiptID: "r_" + id, Kid: "kid_1", Size: 10,
		ReceivedAt: time.Now(), ProcessedAt: time.Now()}
	h.produce(h.topics.Receipts, org, r)
	return r
}

// records reads a topic from the start until want records came (or 10 s).
func (h *harness) records(topic string, want int) []*kgo.Record {
	h.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(h.cfg.Kafka.Brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		h.t.Fatal(err)
	}
	defer cl.Close()
	var out []*kgo.Record
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for len(out) < want && ctx.Err() == nil {
		out = append(out, cl.PollFetches(ctx).Records()...)
	}
	return out
}

func (h *harness) attempts(want int) []schemas.WebhookAttempt {
	var out []schemas.WebhookAttempt
	for _, r := range h.records(h.topics.WebhookAttempts, want) {
		a, err := schemas.DecodeWebhookAttempt(r.Value)
		if err != nil {
			h.t.Fatalf("attempt record: %v", err)
		}
		out = append(out, *a)
	}
	return out
}

func waitGot(t *testing.T, rv *receiver, n int, within time.Duration) []got {
	t.Helper()
	testenv.WaitFor(t, fmt.Sprintf("%d deliveries", n), within, func() (bool, string) {
		g := rv.received()
		return len(g) >= n, fmt.Sprintf("%d received", len(g))
	})
	g := rv.received()
	for _, x := range g {
		if x.schemaErr != nil && !strings.HasPrefix(string(x.body), `{"type":"receipt.signed"}`) {
			t.Fatalf("a delivery does not meet its schema: %v\n%s", x.schemaErr, x.body)
		}
	}
	return g
}

// Each subscribed endpoint of the organization gets the event, signed as
// the Standard Webhooks specification says with every live secret; other
// organizations, unsubscribed endpoints and endpoints made after the event
// get nothing, and an unauthenticated result makes no event.
func TestDeliversToSubscribedEndpoints(t *testing.T) {
	h := newHarness(t, nil)
	signed, jobs, other, later := newReceiver(t, nil), newReceiver(t, nil), newReceiver(t, nil), newReceiver(t, nil)
	ep := signed.endpoint("ep_signed", "acme", schemas.EventReceiptSigned)
	old := whsig.NewSecret()
	ep.Secrets = append(ep.Secrets, Secret{Key: old, ExpiresAt: time.Now().Add(time.Hour)},
		Secret{Key: whsig.NewSecret(), ExpiresAt: time.Now().Add(-time.Minute)})
	ep.Headers = map[string]string{"X-Team": "payments"}
	h.dir.add(ep)
	h.dir.add(jobs.endpoint("ep_jobs", "acme", schemas.EventJobCompleted))
	h.dir.add(other.endpoint("ep_other", "other"))
	late := later.endpoint("ep_later", "acme")
	late.CreatedAt = time.Now().Add(time.Hour)
	h.dir.add(late)
	h.start()

	res := h.result("acme", "req_1")
	h.result("other", "req_2")
	anon := &schemas.Result{V: 1, ID: "req_3", Tenant: "acme", Kind: schemas.KindVerify, Status: schemas.StatusInvalid,
		Reason: "bad_signature", Auth: schemas.AuthNone, ProcessedAt: time.Now()}
	h.produce(h.topics.Receipts, "acme", anon)
	// A result placed under another organization's key is a forgery.
	h.produce(h.topics.Receipts, "acme", h.resultValue("other", "req_forged"))

	g := waitGot(t, signed, 1, 10*time.Second)
	if g[0].valid != nil || g[0].typ != schemas.EventReceiptSigned || g[0].id != schemas.MessageID(schemas.ResultEventID(res), "ep_signed") {
		t.Fatalf("delivery %+v", g[0])
	}
	// The previous secret (still in its overlap) signs too; the expired one
	// does not; the endpoint's own headers come along.
	if n := strings.Count(g[0].sig, "v1,"); n != 2 {
		t.Fatalf("%d signatures, want 2 (the current and the rotating secret)", n)
	}
	if err := whsig.Verify(g[0].header, g[0].body, []whsig.Secret{old}, time.Minute, time.Now()); err != nil {
		t.Fatalf("the rotating secret's signature: %v", err)
	}
	if g[0].header.Get("X-Team") != "payments" || g[0].header.Get("Content-Type") != "application/json" {
		t.Fatalf("headers %v", g[0].header)
	}
	waitGot(t, other, 1, 10*time.Second)
	time.Sleep(500 * time.Millisecond)
	if n := len(signed.received()); n != 1 {
		t.Fatalf("the endpoint got %d deliveries", n)
	}
	if n := len(other.received()); n != 1 {
		t.Fatalf("the other organization's endpoint got %d deliveries", n)
	}
	if n, m := len(jobs.received()), len(later.received()); n != 0 || m != 0 {
		t.Fatalf("unsubscribed got %d, made after the event got %d", n, m)
	}
	at := h.attempts(2)
	if len(at) != 2 || at[0].Outcome != schemas.OutcomeDelivered || !schemas.Present(at[0].Body) || at[0].Attempt != 1 {
		t.Fatalf("attempts %+v", at)
	}
}

func (h *harness) resultValue(org, id string) *schemas.Result {
	return &schemas.Result{V: 1, ID: id, Tenant: org, Kind: schemas.KindSign, Status: schemas.StatusSigned,
		Auth: schemas.AuthIngest, Receipt: []byte(`{}`), Size: 2, ProcessedAt: time.Now()}
}

// A receiver that fails the first N attempts of each message gets each
// after exactly N retries, on the schedule, with the same webhook-id; each
// attempt is recorded.
func TestRetriesOnSchedule(t *testing.T) {
	const failures, messages = 3, 5
	h := newHarness(t, nil)
	sched := []time.Duration{0, time.Second, 2 * time.Second, time.Second, time.Hour}
	h.dir.sched["acme"] = sched
	rv := newReceiver(t, func(seen int, w http.ResponseWriter) {
		if seen < failures {
			w.WriteHeader(http.StatusInternalServerError)
			io.WriteString(w, "not yet")
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	h.dir.add(rv.endpoint("ep_1", "acme"))
	h.start()
	for i := range messages {
		h.result("acme", fmt.Sprintf("req_%d", i))
	}
	g := waitGot(t, rv, messages*(failures+1), 30*time.Second)
	byID := map[string][]got{}
	for _, x := range g {
		if x.valid != nil {
			t.Fatalf("attempt not verifiable: %v", x.valid)
		}
		byID[x.id] = append(byID[x.id], x)
	}
	if len(byID) != messages {
		t.Fatalf("%d distinct webhook-ids, want %d", len(byID), messages)
	}
	for id, xs := range byID {
		if len(xs) != failures+1 {
			t.Fatalf("%s: %d attempts, want %d", id, len(xs), failures+1)
		}
		for i := 1; i < len(xs); i++ {
			if gap := xs[i].at.Sub(xs[i-1].at); gap < sched[i]-50*time.Millisecond {
				t.Fatalf("%s: attempt %d came %s after the previous, schedule says %s", id, i+1, gap, sched[i])
			}
		}
	}
	at := h.attempts(messages * (failures + 1))
	outcomes := map[string]int{}
	for _, a := range at {
		outcomes[a.Outcome]++
		if a.Outcome == schemas.OutcomeRetrying && (a.Status != 500 || a.ResponseBody != "not yet" || a.NextAttemptAt.IsZero()) {
			t.Fatalf("failed attempt recorded as %+v", a)
		}
	}
	if outcomes[schemas.OutcomeRetrying] != messages*failures || outcomes[schemas.OutcomeDelivered] != messages {
		t.Fatalf("outcomes %v", outcomes)
	}
	// The endpoint was reported failing, then healthy again.
	r := h.dir.healthReports()
	if len(r) < 2 || r[0].since.IsZero() || !r[len(r)-1].since.IsZero() {
		t.Fatalf("health reports %+v", r)
	}
}

// 410 disables the endpoint (an endpoint.disabled event tells the others);
// a redirect is not followed and counts as a failure; a message whose
// schedule is spent waits in the webhook DLQ.
func TestGoneRedirectAndExhausted(t *testing.T) {
	h := newHarness(t, nil)
	h.dir.sched["acme"] = []time.Duration{0, time.Second}
	gone := newReceiver(t, func(int, http.ResponseWriter) {})
	gone.answer = func(_ int, w http.ResponseWriter) { w.WriteHeader(http.StatusGone) }
	target := newReceiver(t, nil)
	redirect := newReceiver(t, func(_ int, w http.ResponseWriter) {
		w.Header().Set("Location", target.srv.URL)
		w.WriteHeader(http.StatusFound)
	})
	watcher := newReceiver(t, nil)
	h.dir.add(gone.endpoint("ep_gone", "acme", schemas.EventReceiptSigned))
	h.dir.add(redirect.endpoint("ep_redirect", "acme", schemas.EventReceiptSigned))
	h.dir.add(watcher.endpoint("ep_watch", "acme", schemas.EventEndpointDisabled))
	h.start()
	h.result("acme", "req_1")

	w := waitGot(t, watcher, 1, 10*time.Second)
	var ev struct {
		Type string `json:"type"`
		Data struct {
			EndpointID string `json:"endpoint_id"`
			Reason     string `json:"reason"`
		} `json:"data"`
	}
	if err := json.Unmarshal(w[0].body, &ev); err != nil || ev.Type != schemas.EventEndpointDisabled || ev.Data.EndpointID != "ep_gone" ||
		!strings.Contains(ev.Data.Reason, "410") || w[0].valid != nil {
		t.Fatalf("endpoint.disabled event %s (%v)", w[0].body, err)
	}
	reports := h.dir.healthReports()
	if !slices.ContainsFunc(reports, func(r healthReport) bool { return r.endpoint == "ep_gone" && r.disable }) {
		t.Fatalf("not disabled: %+v", reports)
	}
	// The redirect was tried twice (the schedule), never followed.
	waitGot(t, redirect, 2, 10*time.Second)
	dlq := h.records(h.topics.WebhookDLQ, 2)
	reasons := map[string]string{}
	for _, r := range dlq {
		m, err := schemas.DecodeWebhookMessage(r.Value)
		if err != nil {
			t.Fatal(err)
		}
		reasons[m.EndpointID] = kafka.Header(r, schemas.HeaderDLQReason)
	}
	if reasons["ep_gone"] != schemas.OutcomeDisabled || reasons["ep_redirect"] != schemas.OutcomeExhausted {
		t.Fatalf("DLQ reasons %v", reasons)
	}
	if n := len(target.received()); n != 0 {
		t.Fatalf("a redirect was followed %d times", n)
	}
	for _, a := range h.attempts(4) {
		if a.EndpointID == "ep_redirect" && (a.Status != http.StatusFound || !strings.Contains(a.Error, "redirect")) {
			t.Fatalf("redirect attempt %+v", a)
		}
	}
	// A message for the disabled endpoint goes to the DLQ unsent.
	h.result("acme", "req_2")
	time.Sleep(time.Second)
	if n := len(gone.received()); n != 1 {
		t.Fatalf("the disabled endpoint got %d requests", n)
	}
}

// An endpoint failing for DisableAfter is disabled; Retry-After is
// honoured (within MaxRetryAfter) when it asks for more than the schedule.
func TestDisableAfterAndRetryAfter(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.DisableAfter, c.MaxRetryAfter = 2500*time.Millisecond, 3*time.Second })
	h.dir.sched["acme"] = []time.Duration{0, time.Second, time.Second, time.Second, time.Second}
	rv := newReceiver(t, func(_ int, w http.ResponseWriter) {
		w.Header().Set("Retry-After", "2")
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	h.dir.add(rv.endpoint("ep_1", "acme"))
	h.start()
	h.result("acme", "req_1")
	testenv.WaitFor(t, "disabled after failing for 2.5 s", 20*time.Second, func() (bool, string) {
		r := h.dir.healthReports()
		return slices.ContainsFunc(r, func(r healthReport) bool { return r.disable && strings.HasPrefix(r.reason, "failing since") }),
			fmt.Sprintf("%+v", r)
	})
	g := rv.received()
	for i := 1; i < len(g); i++ {
		if gap := g[i].at.Sub(g[i-1].at); gap < 1950*time.Millisecond {
			t.Fatalf("attempt %d came %s after the previous, Retry-After asked 2 s", i+1, gap)
		}
	}
	if len(g) < 2 {
		t.Fatalf("%d attempts", len(g))
	}
}

// An ordered endpoint gets its messages one at a time in order: a failing
// one holds back the rest.
func TestOrderedEndpoint(t *testing.T) {
	h := newHarness(t, nil)
	h.dir.sched["acme"] = []time.Duration{0, time.Second, time.Second, time.Second}
	var first string
	var mu sync.Mutex
	rv := newReceiver(t, nil)
	rv.answer = func(seen int, w http.ResponseWriter) {
		g := rv.received()
		mu.Lock()
		if first == "" {
			first = g[len(g)-1].id
		}
		fail := g[len(g)-1].id == first && seen < 2
		mu.Unlock()
		if fail {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	}
	ep := rv.endpoint("ep_1", "acme")
	ep.Ordered = true
	h.dir.add(ep)
	h.start()
	var ids []string
	for i := range 5 {
		r := h.result("acme", fmt.Sprintf("req_%d", i))
		ids = append(ids, schemas.MessageID(schemas.ResultEventID(r), "ep_1"))
	}
	g := waitGot(t, rv, 7, 20*time.Second)
	var order []string
	for _, x := range g {
		order = append(order, x.id)
	}
	want := append([]string{ids[0], ids[0]}, ids...)
	if !slices.Equal(order, want) {
		t.Fatalf("order %v, want %v", order, want)
	}
}

// A hung endpoint next to healthy ones, in the same organization and in
// another: the healthy ones get every event at once while the hung one's
// attempts wait for their timeout, and its backlog is parked.
func TestHungEndpointIsolation(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ParkAfter, c.Concurrency = 500*time.Millisecond, 2 })
	release := make(chan struct{})
	hung := newReceiver(t, func(int, http.ResponseWriter) { <-release })
	t.Cleanup(func() { close(release) })
	same, other := newReceiver(t, nil), newReceiver(t, nil)
	h.dir.add(hung.endpoint("ep_hung", "acme"))
	h.dir.add(same.endpoint("ep_same", "acme"))
	h.dir.add(other.endpoint("ep_other", "other"))
	h.start()
	const n = 100
	sent := map[string]time.Time{}
	for i := range n {
		for _, org := range []string{"acme", "other"} {
			r := h.result(org, fmt.Sprintf("req_%d", i))
			ep := map[string]string{"acme": "ep_same", "other": "ep_other"}[org]
			sent[schemas.MessageID(schemas.ResultEventID(r), ep)] = time.Now()
		}
		time.Sleep(10 * time.Millisecond)
	}
	var worst time.Duration
	for _, rv := range []*receiver{same, other} {
		for _, g := range waitGot(t, rv, n, 10*time.Second) {
			worst = max(worst, g.at.Sub(sent[g.id]))
		}
	}
	// The hung endpoint's timeout is 2 s: a delivery that waited for it
	// would show it.
	if worst > time.Second {
		t.Fatalf("a healthy endpoint waited %s", worst)
	}
	testenv.WaitFor(t, "the hung endpoint's backlog parked", 5*time.Second, func() (bool, string) {
		return len(h.records(h.topics.WebhookDelays[0], 1)) > 0, ""
	})
}

// A dispatcher stopped mid-burst and started again delivers every message;
// a duplicate carries the same webhook-id.
func TestRestartLosesNothing(t *testing.T) {
	h := newHarness(t, nil)
	rv := newReceiver(t, nil)
	h.dir.add(rv.endpoint("ep_1", "acme"))
	stop := h.start()
	const n = 300
	want := map[string]bool{}
	for i := range n {
		r := h.result("acme", fmt.Sprintf("req_%d", i))
		want[schemas.MessageID(schemas.ResultEventID(r), "ep_1")] = true
		if i == n/3 {
			stop()
		}
	}
	h.start()
	testenv.WaitFor(t, "every message delivered", 20*time.Second, func() (bool, string) {
		seen := map[string]bool{}
		for _, g := range rv.received() {
			if !want[g.id] {
				t.Fatalf("unexpected webhook-id %s", g.id)
			}
			seen[g.id] = true
		}
		return len(seen) == n, fmt.Sprintf("%d of %d", len(seen), n)
	})
}

// A dispatcher reading everything again (here: a new group, as after a
// kill before any commit) sends nothing whose attempt was recorded; a
// redelivery (a new round of the same message) is sent.
func TestRecordedAttemptsAreNotRepeated(t *testing.T) {
	h := newHarness(t, nil)
	h.dir.sched["acme"] = []time.Duration{0, time.Second, time.Hour}
	rv := newReceiver(t, func(seen int, w http.ResponseWriter) {
		if seen == 0 {
			w.WriteHeader(http.StatusInternalServerError) // each message is retried once
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	h.dir.add(rv.endpoint("ep_1", "acme"))
	stop := h.start()
	const n = 20
	var last *schemas.Result
	for i := range n {
		last = h.result("acme", fmt.Sprintf("req_%d", i))
	}
	waitGot(t, rv, 2*n, 15*time.Second)
	stop()
	h.cfg.Group = "another-group"
	h.start()
	id := schemas.MessageID(schemas.ResultEventID(last), "ep_1")
	h.produce(h.topics.Webhooks, "ep_1", &schemas.WebhookMessage{V: 1, ID: id, Org: "acme", EndpointID: "ep_1",
		EventType: schemas.EventReceiptSigned, EventID: schemas.ResultEventID(last), Body: []byte(`{"type":"receipt.signed"}`),
		CreatedAt: time.Now(), DueAt: time.Now(), Redelivery: true, Round: "rd_1"})
	g := waitGot(t, rv, 2*n+1, 10*time.Second)
	time.Sleep(2 * time.Second) // anything read again would arrive by now
	if g = rv.received(); len(g) != 2*n+1 || g[len(g)-1].id != id {
		t.Fatalf("%d deliveries after reading everything again, want %d (the redelivery only)", len(g), 2*n+1)
	}
}

// A pending quota alert becomes one quota.warning event for the
// organization's subscribed endpoints, and is marked announced.
func TestQuotaWarnings(t *testing.T) {
	h := newHarness(t, nil)
	rv := newReceiver(t, nil)
	h.dir.add(rv.endpoint("ep_1", "acme", schemas.EventQuotaWarning))
	h.dir.alerts = []QuotaAlert{{Org: "acme", Month: "2026-11", Level: 80, Used: 80, Limit: 100}}
	h.start()
	g := waitGot(t, rv, 1, 10*time.Second)
	var ev struct {
		Type string         `json:"type"`
		Data map[string]any `json:"data"`
	}
	if err := json.Unmarshal(g[0].body, &ev); err != nil || ev.Type != schemas.EventQuotaWarning ||
		fmt.Sprint(ev.Data) != "map[limit:100 percent:80 period:2026-11 used:80]" {
		t.Fatalf("event %s (%v)", g[0].body, err)
	}
	time.Sleep(2500 * time.Millisecond)
	h.dir.mu.Lock()
	defer h.dir.mu.Unlock()
	if len(rv.received()) != 1 || !slices.Equal(h.dir.announced, []string{"acme 2026-11 80"}) {
		t.Fatalf("%d deliveries, announced %v", len(rv.received()), h.dir.announced)
	}
}

// A scheduled report whose period ended makes one report.ready event,
// with the link that answers the report over that period, then is marked
// announced.
func TestReportReady(t *testing.T) {
	h := newHarness(t, nil)
	rv := newReceiver(t, nil)
	h.dir.add(rv.endpoint("ep_1", "acme", schemas.EventReportReady))
	from := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	h.dir.due = []DueReport{{Org: "acme", ID: "rpt_1", Name: "Daily", Schedule: "daily", Period: "2026-11-26", From: from, To: from.AddDate(0, 0, 1)}}
	h.start()
	g := waitGot(t, rv, 1, 10*time.Second)
	var ev struct {
		Type string         `json:"type"`
		Data map[string]any `json:"data"`
	}
	if err := json.Unmarshal(g[0].body, &ev); err != nil || ev.Type != schemas.EventReportReady || ev.Data["period"] != "2026-11-26" ||
		ev.Data["url"] != "/v1/reports/rpt_1/run?from=2026-11-26T00:00:00Z&to=2026-11-27T00:00:00Z" || ev.Data["name"] != "Daily" {
		t.Fatalf("event %s (%v)", g[0].body, err)
	}
	if err := conforms(g[0].body); err != nil {
		t.Fatalf("the event does not match its schema: %v", err)
	}
	time.Sleep(2500 * time.Millisecond)
	h.dir.mu.Lock()
	defer h.dir.mu.Unlock()
	if len(rv.received()) != 1 || !slices.Equal(h.dir.announced, []string{"acme rpt_1 2026-11-26"}) {
		t.Fatalf("%d deliveries, announced %v", len(rv.received()), h.dir.announced)
	}
}

// A bulk job's done record makes one job.completed event, whichever
// ingest node wrote it; a single request's record and an unfinished job
// make none.
func TestJobCompleted(t *testing.T) {
	h := newHarness(t, nil)
	rv := newReceiver(t, nil)
	h.dir.add(rv.endpoint("ep_1", "acme", schemas.EventJobCompleted))
	h.start()
	now := time.Now().UTC()
	job := schemas.Job{V: 1, ID: "job_1", Tenant: "acme", Kind: schemas.KindSign, State: schemas.JobRunning, LinesRead: 4, Total: 3, CreatedAt: now}
	h.produce(h.topics.Jobs, "job_1", job)
	job.State, job.Done, job.Valid, job.Failed, job.FinishedAt = schemas.JobDone, 3, 2, 1, now
	job.Rejected = []schemas.RejectedLine{{Line: 4, Code: "invalid_json", Message: "x"}}
	h.produce(h.topics.Jobs, "job_1", job)
	h.produce(h.topics.Jobs, "job_1", job) // a second node wrote it too
	single := schemas.Job{V: 1, ID: "job_2", Tenant: "acme", Kind: schemas.KindSign, State: schemas.JobDone, Single: true, CreatedAt: now}
	h.produce(h.topics.Jobs, "job_2", single)
	g := waitGot(t, rv, 1, 10*time.Second)
	time.Sleep(time.Second)
	if g = rv.received(); len(g) != 1 || !strings.Contains(string(g[0].body), `"lines_rejected":1`) || !strings.Contains(string(g[0].body), `"valid":2`) {
		t.Fatalf("deliveries %d: %s", len(g), g[0].body)
	}
}

// Records on the internal topics without the internal secret's MAC are
// refused: a message or event forged there is never signed and sent, and
// a forged attempt hides nothing.
func TestForgedInternalRecordsAreRefused(t *testing.T) {
	h := newHarness(t, nil)
	rv := newReceiver(t, nil)
	h.dir.add(rv.endpoint("ep_1", "acme"))
	forge := func(topic, key string, v any) {
		val, _ := json.Marshal(v)
		if err := h.cl.ProduceSync(context.Background(), &kgo.Record{Topic: topic, Key: []byte(key), Value: val,
			Headers: []kgo.RecordHeader{{Key: schemas.HeaderIngestMAC, Value: []byte("00000000:deadbeef")}}}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	forged := &schemas.WebhookMessage{V: 1, ID: "msg_forged", Org: "acme", EndpointID: "ep_1", EventType: schemas.EventWebhookTest,
		EventID: "evt_forged", Body: []byte(`{"type":"webhook.test","forged":true}`), CreatedAt: time.Now(), DueAt: time.Now()}
	forge(h.topics.Webhooks, "ep_1", forged)
	forge(h.topics.Events, "acme", &schemas.EventRecord{V: 1, ID: "evt_forged2", Org: "acme",
		Event: schemas.WebhookEvent{Type: schemas.EventWebhookTest, Timestamp: time.Now(), Data: []byte(`{"forged":true}`)}})
	// A forged "delivered" attempt for the next real message.
	real := h.resultValue("acme", "req_real")
	real.Kid, real.ReceiptID, real.ReceivedAt = "kid_1", "r_real", time.Now()
	id := schemas.MessageID(schemas.ResultEventID(real), "ep_1")
	forge(h.topics.WebhookAttempts, "acme", &schemas.WebhookAttempt{V: 1, ID: "att_forged", MessageID: id, Org: "acme",
		EndpointID: "ep_1", At: time.Now(), Attempt: 1, Outcome: schemas.OutcomeDelivered})
	h.start()
	h.produce(h.topics.Receipts, "acme", real)
	g := waitGot(t, rv, 1, 10*time.Second)
	time.Sleep(time.Second)
	if g = rv.received(); len(g) != 1 || g[0].id != id {
		t.Fatalf("deliveries %+v: want only the real message %s", g, id)
	}
}
