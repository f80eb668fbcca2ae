package ingest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/valyala/fasthttp"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/recordauth"
	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
)

// Keys of the test server: org a holds endpoints and deliveries, org b
// none; the read and admin keys are a's with one scope each.
const (
	keyA     = "key-a"
	keyB     = "key-b"
	keyRead  = "key-a-read"
	keyAdmin = "key-a-admin"
)

type fakeAuth map[string]*tenants.Tenant

func (f fakeAuth) Authenticate(k string) (*tenants.Tenant, bool) { t, ok := f[k]; return t, ok }

type noLimit struct{}

func (noLimit) Take(string, int) (time.Duration, error) { return 0, nil }

type noKeys struct{}

func (noKeys) JWKS() schemas.JWKS { return schemas.JWKS{} }

// fakeDeliveries holds deliveries by organization, and the queries made.
type fakeDeliveries struct {
	mu      sync.Mutex
	by      map[string][]schemas.WebhookDelivery
	queries []schemas.DeliveryQuery
	failed  []string // "org endpoint since until all limit" of each Failed call
	err     error
}

func (f *fakeDeliveries) List(_ context.Context, org string, q schemas.DeliveryQuery) (*schemas.DeliveryPage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.queries = append(f.queries, q)
	if f.err != nil {
		return nil, f.err
	}
	if q.Cursor == "bad" {
		return nil, fmt.Errorf("deliveries: cursor: %w", schemas.ErrBadCursor)
	}
	page := &schemas.DeliveryPage{}
	for _, d := range f.by[org] {
		if q.Endpoint == "" || q.Endpoint == d.EndpointID {
			d.Body, d.AttemptList = nil, nil
			page.Data = append(page.Data, d)
		}
	}
	if len(page.Data) > q.Limit {
		page.Data, page.HasMore, page.NextCursor = page.Data[:q.Limit], true, "next"
	}
	return page, nil
}

func (f *fakeDeliveries) Get(_ context.Context, org, id string) (*schemas.WebhookDelivery, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, false, f.err
	}
	for _, d := range f.by[org] {
		if d.ID == id {
			return &d, true, nil
		}
	}
	return nil, false, nil
}

func (f *fakeDeliveries) Failed(_ context.Context, org, ep string, since, until time.Time, all bool, limit int) ([]schemas.WebhookDelivery, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failed = append(f.failed, fmt.Sprintf("%s %s %s %s %v %d", org, ep, since.Format(time.RFC3339), until.Format(time.RFC3339), all, limit))
	var out []schemas.WebhookDelivery
	for _, d := range f.by[org] {
		if d.EndpointID == ep && (all || d.Status == schemas.DeliveryFailed) && !d.CreatedAt.Before(since) && d.CreatedAt.Before(until) && len(out) < limit {
			out = append(out, d)
		}
	}
	return out, nil
}

type fakeEndpoints map[string][]EndpointInfo

func (f fakeEndpoints) Endpoints(org string) []EndpointInfo { return f[org] }

// delivery is a failed delivery of org a to endpoint ep.
func delivery(n int, ep string, at time.Time) schemas.WebhookDelivery {
	eventID := fmt.Sprintf("evt_%026d", n)
	return schemas.WebhookDelivery{ID: schemas.MessageID(eventID, ep), EndpointID: ep, EventType: schemas.EventWebhookTest,
		EventID: eventID, Status: schemas.DeliveryFailed, Attempts: 8, CreatedAt: at, LastAttemptAt: at.Add(time.Hour),
		LastHTTPStatus: 500, Body: jsontext.Value(fmt.Sprintf(`{"type":"webhook.test","timestamp":"%s","data":{"n":%d}}`, at.Format(time.RFC3339), n)),
		AttemptList: []schemas.WebhookAttempt{{V: 1, ID: "att_1", MessageID: schemas.MessageID(eventID, ep), Org: "a", EndpointID: ep,
			EventType: schemas.EventWebhookTest, EventID: eventID, At: at, Attempt: 1, URL: "https://hooks.example.test/in",
			Status: 500, LatencyMillis: 12, Outcome: schemas.OutcomeExhausted, Body: jsontext.Value(`{"type":"webhook.test"}`)}}}
}

// testServer is an ingest server on an embedded Kafka.
type testServer struct {
	t       *testing.T
	s       *Server
	base    string
	kcfg    kafka.Config
	deliv   *fakeDeliveries
	stop    context.CancelFunc
	stopped chan struct{}
}

type serverOpt func(*Config, *Deps)

func withoutStores(_ *Config, d *Deps) { d.Deliveries, d.Endpoints = nil, nil }

func startServer(t *testing.T, opts ...serverOpt) *testServer {
	t.Helper()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	cfg := DefaultConfig()
	cfg.Addr = "127.0.0.1:0"
	cfg.Kafka = kafka.Config{Brokers: cluster.ListenAddrs(), Partitions: 3, ReplicationFactor: 1}
	cfg.ShutdownTimeout = 5 * time.Second
	cl, err := kafka.NewClient(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	if err := kafka.EnsureTopics(context.Background(), cl, cfg.Kafka); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	mac, _ := recordauth.NewKeyring([]byte(strings.Repeat("s", 32)))
	t0 := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	deliv := &fakeDeliveries{by: map[string][]schemas.WebhookDelivery{"a": {
		delivery(1, "ep_one", t0), delivery(2, "ep_one", t0.Add(time.Minute)), delivery(3, "ep_off", t0), delivery(4, "ep_gone", t0),
	}}}
	nobody := delivery(5, "ep_one", t0)
	nobody.Body = nil
	deliv.by["a"] = append(deliv.by["a"], nobody)
	deps := Deps{
		Auth: fakeAuth{keyA: {ID: "a"}, keyB: {ID: "b"}, keyRead: {ID: "a", KeyID: "key_read", Scopes: []string{tenants.ScopeRead}},
			keyAdmin: {ID: "a", Scopes: []string{tenants.ScopeAdmin}}},
		Limiter: noLimit{}, Keys: noKeys{}, MAC: mac, Deliveries: deliv,
		Endpoints: fakeEndpoints{"a": {{ID: "ep_one", Enabled: true}, {ID: "ep_off"}}, "b": {{ID: "ep_bee", Enabled: true}}},
	}
	for _, o := range opts {
		o(&cfg, &deps)
	}
	s, err := New(context.Background(), cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{t: t, s: s, base: "http://" + s.Addr(), kcfg: cfg.Kafka, deliv: deliv, stop: cancel, stopped: make(chan struct{})}
	go func() {
		defer close(ts.stopped)
		if err := s.Run(ctx); err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-ts.stopped:
		case <-time.After(15 * time.Second):
			t.Error("the server did not stop")
		}
		s.Close()
	})
	return ts
}

var testClient = &http.Client{Timeout: 20 * time.Second}

type answer struct {
	status int
	header http.Header
	body   string
}

func (ts *testServer) do(method, path, key, body string) answer {
	ts.t.Helper()
	var headers []string
	if key != "" {
		headers = append(headers, "Authorization", "Bearer "+key)
	}
	if body != "" {
		headers = append(headers, "Content-Type", "application/json")
	}
	return ts.send(method, path, body, headers...)
}

// send sends a request with headers (name, value, ...) and reads the answer.
func (ts *testServer) send(method, path, body string, headers ...string) answer {
	ts.t.Helper()
	req, _ := http.NewRequest(method, ts.base+path, strings.NewReader(body))
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	if h := req.Header.Get("Host"); h != "" {
		req.Host = h // the client sends the request's Host, not the header
	}
	resp, err := testClient.Do(req)
	if err != nil {
		ts.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, string(b)}
}

// expect checks an answer's status and, for an error, its code.
func (a answer) expect(t *testing.T, what string, status int, code string) answer {
	t.Helper()
	if a.status != status {
		t.Fatalf("%s: %d %s, want %d", what, a.status, a.body, status)
	}
	if code != "" {
		var e errorBody
		if err := json.Unmarshal([]byte(a.body), &e); err != nil || e.Error.Code != code {
			t.Fatalf("%s: %s, want code %s", what, a.body, code)
		}
	}
	return a
}

// consume reads n records of topic from its start.
func (ts *testServer) consume(topic string, n int) []*kgo.Record {
	ts.t.Helper()
	cl, err := kafka.NewClient(ts.kcfg, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		ts.t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []*kgo.Record
	for len(out) < n {
		f := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			ts.t.Fatalf("%s: %d of %d records", topic, len(out), n)
		}
		out = append(out, f.Records()...)
	}
	return out
}

func TestDeliveryQuery(t *testing.T) {
	may := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		query string
		want  schemas.DeliveryQuery
		code  string
	}{
		{"", schemas.DeliveryQuery{Limit: 50}, ""},
		{"endpoint=ep_abc&event_type=receipt.signed&status=failed&since=2026-05-01T00:00:00Z&until=2026-05-02T00:00:00%2B00:00&cursor=xyz&limit=250",
			schemas.DeliveryQuery{Endpoint: "ep_abc", EventType: "receipt.signed", Status: "failed", Since: may, Until: may.AddDate(0, 0, 1), Cursor: "xyz", Limit: 250}, ""},
		{"since=2026-05-01T00:00:00Z", schemas.DeliveryQuery{Since: may, Limit: 50}, ""},
		{"endpoint=", schemas.DeliveryQuery{}, "invalid_endpoint"},
		{"endpoint=abc", schemas.DeliveryQuery{}, "invalid_endpoint"},
		{"endpoint=ep_a%20b", schemas.DeliveryQuery{}, "invalid_endpoint"},
		{"event_type=receipt.stamped", schemas.DeliveryQuery{}, "invalid_event_type"},
		{"status=lost", schemas.DeliveryQuery{}, "invalid_status"},
		{"status=", schemas.DeliveryQuery{}, "invalid_status"},
		{"cursor=", schemas.DeliveryQuery{}, "invalid_cursor"},
		{"cursor=" + strings.Repeat("c", 1025), schemas.DeliveryQuery{}, "invalid_cursor"},
		{"limit=0", schemas.DeliveryQuery{}, "invalid_limit"},
		{"limit=251", schemas.DeliveryQuery{}, "invalid_limit"},
		{"limit=ten", schemas.DeliveryQuery{}, "invalid_limit"},
		{"since=yesterday", schemas.DeliveryQuery{}, "invalid_since"},
		{"until=2026-05-02", schemas.DeliveryQuery{}, "invalid_until"},
		{"since=2026-05-02T00:00:00Z&until=2026-05-02T00:00:00Z", schemas.DeliveryQuery{}, "invalid_range"},
	} {
		t.Run(tc.query, func(t *testing.T) {
			var ctx fasthttp.RequestCtx
			ctx.Request.SetRequestURI("/v1/webhooks/deliveries?" + tc.query)
			q, ok := deliveryQuery(&ctx)
			if tc.code != "" {
				body := string(ctx.Response.Body())
				if ok || ctx.Response.StatusCode() != 400 || !strings.Contains(body, `"code":"`+tc.code+`"`) {
					t.Fatalf("got %v %d %s, want 400 %s", ok, ctx.Response.StatusCode(), body, tc.code)
				}
				return
			}
			if !ok || q != tc.want {
				t.Fatalf("got %v %+v, want %+v (%s)", ok, q, tc.want, ctx.Response.Body())
			}
		})
	}
}

// Without a deliveries store or endpoints, the routes say so (parameters
// are checked first); trigger without endpoint_id needs neither.
func TestWebhookRoutesUnconfigured(t *testing.T) {
	ts := startServer(t, withoutStores)
	ts.do("GET", "/v1/webhooks/deliveries?limit=0", keyA, "").expect(t, "bad limit", 400, "invalid_limit")
	ts.do("GET", "/v1/webhooks/deliveries", keyA, "").expect(t, "list", 503, "deliveries_unavailable")
	ts.do("GET", "/v1/webhooks/deliveries/msg_x", keyA, "").expect(t, "get", 503, "deliveries_unavailable")
	ts.do("POST", "/v1/webhooks/deliveries/msg_x/redeliver", keyA, "").expect(t, "redeliver", 503, "deliveries_unavailable")
	ts.do("POST", "/v1/webhooks/endpoints/ep_one/replay?all=maybe", keyA, "").expect(t, "replay bad all", 400, "invalid_all")
	ts.do("POST", "/v1/webhooks/endpoints/ep_one/replay", keyA, "").expect(t, "replay", 503, "deliveries_unavailable")
	ts.do("POST", "/v1/webhooks/trigger", keyA, `{"event_type":"webhook.test","endpoint_id":"ep_one"}`).expect(t, "trigger one", 503, "endpoints_unavailable")
	ts.do("POST", "/v1/webhooks/trigger", keyA, `{"event_type":"webhook.test"}`).expect(t, "trigger", 202, "")

	// Deliveries but no endpoints: the reads work, the writes do not.
	ts2 := startServer(t, func(_ *Config, d *Deps) { d.Endpoints = nil })
	ts2.do("GET", "/v1/webhooks/deliveries", keyA, "").expect(t, "list", 200, "")
	ts2.do("POST", "/v1/webhooks/deliveries/"+ts2.deliv.by["a"][0].ID+"/redeliver", keyA, "").expect(t, "redeliver", 503, "endpoints_unavailable")
	ts2.do("POST", "/v1/webhooks/endpoints/ep_one/replay", keyA, "").expect(t, "replay", 503, "endpoints_unavailable")
}

func TestWebhookDeliveriesRead(t *testing.T) {
	ts := startServer(t)
	mine := ts.deliv.by["a"][0]

	var page schemas.DeliveryPage
	a := ts.do("GET", "/v1/webhooks/deliveries?endpoint=ep_one&limit=1&status=failed", keyRead, "").expect(t, "list", 200, "")
	if err := json.Unmarshal([]byte(a.body), &page); err != nil || len(page.Data) != 1 || !page.HasMore || page.NextCursor != "next" ||
		page.Data[0].ID != mine.ID || page.Data[0].Body != nil || page.Data[0].AttemptList != nil {
		t.Fatalf("page: %v %s", err, a.body)
	}
	if q := ts.deliv.queries[len(ts.deliv.queries)-1]; q.Endpoint != "ep_one" || q.Limit != 1 || q.Status != "failed" {
		t.Fatalf("query passed on: %+v", q)
	}
	b := ts.do("GET", "/v1/webhooks/deliveries", keyB, "").expect(t, "b's list", 200, "")
	if strings.TrimSpace(b.body) != `{"data":[],"has_more":false}` {
		t.Fatalf("b's list: %s", b.body)
	}
	ts.do("GET", "/v1/webhooks/deliveries?cursor=bad", keyA, "").expect(t, "bad cursor", 400, "invalid_cursor")

	one := ts.do("GET", "/v1/webhooks/deliveries/"+mine.ID, keyRead, "").expect(t, "get", 200, "")
	var d schemas.WebhookDelivery
	if err := json.Unmarshal([]byte(one.body), &d); err != nil || d.ID != mine.ID || string(d.Body) != string(mine.Body) || len(d.AttemptList) != 1 ||
		d.AttemptList[0].Body != nil || d.AttemptList[0].Org != "a" {
		t.Fatalf("delivery: %v %s", err, one.body)
	}
	// Another organization's id answers as an unknown one, word for word.
	theirs := ts.do("GET", "/v1/webhooks/deliveries/"+mine.ID, keyB, "").expect(t, "b on a's delivery", 404, "not_found")
	unknown := ts.do("GET", "/v1/webhooks/deliveries/msg_"+strings.Repeat("a", 26), keyB, "").expect(t, "unknown", 404, "not_found")
	malformed := ts.do("GET", "/v1/webhooks/deliveries/msg.x", keyB, "").expect(t, "malformed", 404, "not_found")
	if theirs.body != unknown.body || malformed.body != unknown.body {
		t.Fatalf("answers differ: %s / %s / %s", theirs.body, unknown.body, malformed.body)
	}

	ts.deliv.err = errors.New("clickhouse down")
	ts.do("GET", "/v1/webhooks/deliveries", keyA, "").expect(t, "store down", 503, "deliveries_unavailable")
	ts.do("GET", "/v1/webhooks/deliveries/"+mine.ID, keyA, "").expect(t, "store down", 503, "deliveries_unavailable")
}

func TestWebhookScopes(t *testing.T) {
	ts := startServer(t)
	id := ts.deliv.by["a"][0].ID
	for _, c := range []struct {
		method, path, key, body string
	}{
		{"GET", "/v1/webhooks/deliveries", keyAdmin, ""},
		{"GET", "/v1/webhooks/deliveries/" + id, keyAdmin, ""},
		{"GET", "/v1/webhooks/listen", keyAdmin, ""},
		{"POST", "/v1/webhooks/deliveries/" + id + "/redeliver", keyRead, ""},
		{"POST", "/v1/webhooks/endpoints/ep_one/replay", keyRead, ""},
		{"POST", "/v1/webhooks/trigger", keyRead, `{"event_type":"webhook.test"}`},
	} {
		ts.do(c.method, c.path, c.key, c.body).expect(t, c.method+" "+c.path, 403, "forbidden_scope")
		ts.do(c.method, c.path, "", c.body).expect(t, c.method+" "+c.path+" without key", 401, "unauthorized")
	}
}

func TestRedeliver(t *testing.T) {
	ts := startServer(t)
	all := ts.deliv.by["a"]
	mine := all[0]
	before := time.Now()
	a := ts.do("POST", "/v1/webhooks/deliveries/"+mine.ID+"/redeliver", keyAdmin, "").expect(t, "redeliver", 202, "")
	if want := `{"message_id":"` + mine.ID + `","endpoint_id":"ep_one"}`; strings.TrimSpace(a.body) != want {
		t.Fatalf("answer %s, want %s", a.body, want)
	}
	rec := ts.consume(ts.kcfg.Topics().Webhooks, 1)[0]
	m, err := schemas.DecodeWebhookMessage(rec.Value)
	if err != nil {
		t.Fatal(err)
	}
	if string(rec.Key) != "ep_one" || m.ID != mine.ID || m.Org != "a" || m.EndpointID != "ep_one" || m.EventID != mine.EventID ||
		m.EventType != mine.EventType || string(m.Body) != string(mine.Body) || !m.CreatedAt.Equal(mine.CreatedAt) ||
		m.Attempt != 0 || !m.Redelivery || m.DueAt.Before(before.Add(-time.Second)) || m.DueAt.After(time.Now()) {
		t.Fatalf("message %+v (key %s)", m, rec.Key)
	}
	if ts.s.deps.MAC.(*recordauth.Keyring).Check(rec.Value, kafka.Header(rec, schemas.HeaderIngestMAC)) != nil {
		t.Fatal("the record does not carry ingest's MAC")
	}

	ts.do("POST", "/v1/webhooks/deliveries/"+mine.ID+"/redeliver", keyB, "").expect(t, "b on a's delivery", 404, "not_found")
	ts.do("POST", "/v1/webhooks/deliveries/msg_nope/redeliver", keyA, "").expect(t, "unknown", 404, "not_found")
	ts.do("POST", "/v1/webhooks/deliveries/"+all[2].ID+"/redeliver", keyA, "").expect(t, "disabled endpoint", 409, "endpoint_disabled")
	ts.do("POST", "/v1/webhooks/deliveries/"+all[3].ID+"/redeliver", keyA, "").expect(t, "deleted endpoint", 409, "endpoint_deleted")
	ts.do("POST", "/v1/webhooks/deliveries/"+all[4].ID+"/redeliver", keyA, "").expect(t, "no body", 409, "body_unavailable")
}

func TestReplay(t *testing.T) {
	ts := startServer(t)
	t0 := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	path := "/v1/webhooks/endpoints/ep_one/replay?since=2026-04-30T00:00:00Z&until=2026-05-02T00:00:00Z"
	var ans replayAnswer
	a := ts.do("POST", path, keyAdmin, "").expect(t, "replay", 202, "")
	if err := json.Unmarshal([]byte(a.body), &ans); err != nil || ans != (replayAnswer{EndpointID: "ep_one", Queued: 2}) {
		t.Fatalf("replay: %v %s", err, a.body)
	}
	if got := ts.deliv.failed[0]; got != "a ep_one 2026-04-30T00:00:00Z 2026-05-02T00:00:00Z false 10001" {
		t.Fatalf("Failed called with %q", got)
	}
	recs := ts.consume(ts.kcfg.Topics().Webhooks, 2)
	for i, rec := range recs {
		m, err := schemas.DecodeWebhookMessage(rec.Value)
		if err != nil || !m.Redelivery || string(rec.Key) != "ep_one" || m.EndpointID != "ep_one" {
			t.Fatalf("record %d: %v %+v", i, err, m)
		}
	}
	a = ts.do("POST", "/v1/webhooks/endpoints/ep_one/replay?all=true", keyA, "").expect(t, "default window", 202, "")
	if strings.TrimSpace(a.body) != `{"endpoint_id":"ep_one","queued":0,"has_more":false}` { // the deliveries are older
		t.Fatalf("replay of the last day: %s", a.body)
	}
	if got := ts.deliv.failed[1]; !strings.HasPrefix(got, "a ep_one ") || !strings.HasSuffix(got, " true 10001") {
		t.Fatalf("Failed called with %q", got)
	}

	ts.do("POST", "/v1/webhooks/endpoints/ep_one/replay", keyB, "").expect(t, "b on a's endpoint", 404, "not_found")
	ts.do("POST", "/v1/webhooks/endpoints/ep_bee/replay", keyA, "").expect(t, "a on b's endpoint", 404, "not_found")
	ts.do("POST", "/v1/webhooks/endpoints/nope/replay", keyA, "").expect(t, "not an endpoint id", 404, "not_found")
	ts.do("POST", "/v1/webhooks/endpoints/ep_off/replay", keyA, "").expect(t, "disabled", 409, "endpoint_disabled")
	ts.do("POST", "/v1/webhooks/endpoints/ep_one/replay?since=x", keyA, "").expect(t, "since", 400, "invalid_since")
	ts.do("POST", "/v1/webhooks/endpoints/ep_one/replay?until=x", keyA, "").expect(t, "until", 400, "invalid_until")
	ts.do("POST", "/v1/webhooks/endpoints/ep_one/replay?since=2026-05-02T00:00:00Z&until=2026-05-01T00:00:00Z", keyA, "").expect(t, "range", 400, "invalid_range")

	// More than one replay queues: the first 10,000, and where to go on.
	many := make([]schemas.WebhookDelivery, maxReplay+5)
	for i := range many {
		many[i] = delivery(100+i, "ep_one", t0.Add(time.Duration(i)*time.Millisecond))
	}
	ts.deliv.mu.Lock()
	ts.deliv.by["a"] = many
	ts.deliv.mu.Unlock()
	time.Sleep(time.Second) // the write budget refills
	a = ts.do("POST", path, keyA, "").expect(t, "big replay", 202, "")
	ans = replayAnswer{}
	if err := json.Unmarshal([]byte(a.body), &ans); err != nil || ans.Queued != maxReplay || !ans.HasMore ||
		!ans.NextSince.Equal(many[maxReplay-1].CreatedAt) {
		t.Fatalf("big replay: %v %s", err, a.body)
	}
	ts.consume(ts.kcfg.Topics().Webhooks, 2+maxReplay)
}

func TestTrigger(t *testing.T) {
	ts := startServer(t)
	examples, err := eventExamples()
	if err != nil {
		t.Fatal(err)
	}
	a := ts.do("POST", "/v1/webhooks/trigger", keyAdmin, `{"event_type":"receipt.signed"}`).expect(t, "trigger", 202, "")
	var ans struct {
		EventID string `json:"event_id"`
	}
	json.Unmarshal([]byte(a.body), &ans)
	b := ts.do("POST", "/v1/webhooks/trigger", keyA, `{"event_type":"quota.warning","endpoint_id":"ep_one"}`).expect(t, "trigger one", 202, "")
	recs := ts.consume(ts.kcfg.Topics().Events, 2)
	slices.SortFunc(recs, func(x, y *kgo.Record) int { return x.Timestamp.Compare(y.Timestamp) })
	r1, err1 := schemas.DecodeEventRecord(recs[0].Value)
	r2, err2 := schemas.DecodeEventRecord(recs[1].Value)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if !strings.HasPrefix(ans.EventID, "evt_") || len(ans.EventID) != 30 || r1.ID != ans.EventID || r1.Org != "a" || string(recs[0].Key) != "a" ||
		r1.Event.Type != "receipt.signed" || !sameJSON(r1.Event.Data, examples["receipt.signed"]) || r1.Endpoints != nil ||
		time.Since(r1.Event.Timestamp) > time.Minute {
		t.Fatalf("record %+v for %s", r1, a.body)
	}
	if !strings.Contains(b.body, r2.ID) || r2.ID == r1.ID || !slices.Equal(r2.Endpoints, []string{"ep_one"}) || r2.Event.Type != "quota.warning" {
		t.Fatalf("record %+v for %s", r2, b.body)
	}

	ts.do("POST", "/v1/webhooks/trigger", keyA, `{"event_type":"receipt.stamped"}`).expect(t, "unknown type", 400, "unknown_event_type")
	ts.do("POST", "/v1/webhooks/trigger", keyA, `{}`).expect(t, "no type", 400, "unknown_event_type")
	ts.do("POST", "/v1/webhooks/trigger", keyA, `{"event_type":`).expect(t, "not JSON", 400, "malformed_json")
	ts.do("POST", "/v1/webhooks/trigger", keyA, `{"event_type":"webhook.test","endpoint_id":"ep_bee"}`).expect(t, "b's endpoint", 404, "not_found")
	ts.do("POST", "/v1/webhooks/trigger", keyB, `{"event_type":"webhook.test","endpoint_id":"ep_one"}`).expect(t, "a's endpoint", 404, "not_found")
	ts.do("POST", "/v1/webhooks/trigger", keyA, `{"event_type":"webhook.test","endpoint_id":"ep_off"}`).expect(t, "disabled", 409, "endpoint_disabled")
	ts.do("POST", "/v1/webhooks/trigger", keyA, `{"event_type":"webhook.test","pad":"`+strings.Repeat("x", 70<<10)+`"}`).expect(t, "too large", 413, "too_large")
	req, _ := http.NewRequest("POST", ts.base+"/v1/webhooks/trigger", strings.NewReader(`{"event_type":"webhook.test"}`))
	req.Header.Set("Authorization", "Bearer "+keyA)
	req.Header.Set("Content-Type", "text/plain")
	if resp, err := testClient.Do(req); err != nil || resp.StatusCode != 415 {
		t.Fatalf("text/plain: %v %v", err, resp)
	} else {
		resp.Body.Close()
	}
}

// An organization's webhook writes are held to a rate; others' are not.
func TestWebhookWritesLimited(t *testing.T) {
	ts := startServer(t)
	limited := false
	for i := 0; i < 3*webhookWriteBurst && !limited; i++ {
		a := ts.do("POST", "/v1/webhooks/trigger", keyA, `{"event_type":"webhook.test"}`)
		switch a.status {
		case 429:
			a.expect(t, "over the rate", 429, "too_many_requests")
			if a.header.Get("Retry-After") == "" {
				t.Fatal("429 without Retry-After")
			}
			limited = true
		case 202:
		default:
			t.Fatalf("trigger: %d %s", a.status, a.body)
		}
	}
	if !limited {
		t.Fatal("never limited")
	}
	ts.do("POST", "/v1/webhooks/trigger", keyB, `{"event_type":"webhook.test"}`).expect(t, "another organization", 202, "")
}

// sseEvent is one parsed Server-Sent Event.
type sseEvent struct {
	event, id, data string
}

// sseReader reads events (comments are counted, not returned).
type sseReader struct {
	r        *bufio.Reader
	comments atomic.Int32
}

func (s *sseReader) next() (sseEvent, error) {
	var ev sseEvent
	var data []string
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return ev, err
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			if ev.event == "" && data == nil {
				continue
			}
			ev.data = strings.Join(data, "\n")
			return ev, nil
		case strings.HasPrefix(line, ":"):
			s.comments.Add(1)
		case strings.HasPrefix(line, "event: "):
			ev.event = line[len("event: "):]
		case strings.HasPrefix(line, "id: "):
			ev.id = line[len("id: "):]
		case strings.HasPrefix(line, "data: "):
			data = append(data, line[len("data: "):])
		}
	}
}

func TestWriteSSE(t *testing.T) {
	var b strings.Builder
	w := bufio.NewWriter(&b)
	writeSSE(w, "webhook", "msg_1", []byte(`{"a":1}`))
	writeSSE(w, "note", "", []byte("two\r\nlines\n"))
	w.Flush()
	want := "event: webhook\nid: msg_1\ndata: {\"a\":1}\n\nevent: note\ndata: two\ndata: lines\ndata: \n\n"
	if b.String() != want {
		t.Fatalf("got %q, want %q", b.String(), want)
	}
	r := &sseReader{r: bufio.NewReader(strings.NewReader(": hi\n\n" + want))}
	e1, err1 := r.next()
	e2, err2 := r.next()
	if err1 != nil || err2 != nil || e1 != (sseEvent{"webhook", "msg_1", `{"a":1}`}) || e2 != (sseEvent{"note", "", "two\nlines\n"}) || r.comments.Load() != 1 {
		t.Fatalf("%+v %+v %v %v %d", e1, e2, err1, err2, r.comments.Load())
	}
}

func sameJSON(a, b jsontext.Value) bool {
	a, b = a.Clone(), b.Clone()
	return a.Compact() == nil && b.Compact() == nil && string(a) == string(b)
}
