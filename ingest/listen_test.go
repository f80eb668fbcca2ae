package ingest

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/whsig"
	"github.com/certnode/certnode/schemas"
)

// listener is an open GET /v1/webhooks/listen stream.
type listener struct {
	t      *testing.T
	resp   *http.Response
	sse    *sseReader
	secret whsig.Secret
	events chan sseEvent
	cancel context.CancelFunc
}

// listen opens a stream and reads its ready event; a refusal is returned
// as an answer instead.
func (ts *testServer) listen(key, query string, header ...string) (*listener, *answer) {
	ts.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", ts.base+"/v1/webhooks/listen"+query, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		ts.t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		defer cancel()
		defer resp.Body.Close()
		b := new(strings.Builder)
		bufio.NewReader(resp.Body).WriteTo(b)
		return nil, &answer{resp.StatusCode, resp.Header, b.String()}
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" || resp.Header.Get("Cache-Control") != "no-store" {
		ts.t.Fatalf("listen: content type %q, headers %v", ct, resp.Header)
	}
	l := &listener{t: ts.t, resp: resp, sse: &sseReader{r: bufio.NewReader(resp.Body)}, events: make(chan sseEvent, 1000), cancel: cancel}
	ready, err := l.sse.next()
	var r struct {
		Secret string `json:"secret"`
	}
	if err != nil || ready.event != "ready" || json.Unmarshal([]byte(ready.data), &r) != nil {
		ts.t.Fatalf("ready: %+v %v", ready, err)
	}
	if l.secret, err = whsig.ParseSecret(r.Secret); err != nil {
		ts.t.Fatal(err)
	}
	go func() {
		defer close(l.events)
		for {
			ev, err := l.sse.next()
			if err != nil {
				return
			}
			l.events <- ev
		}
	}()
	ts.t.Cleanup(l.close)
	return l, nil
}

func (l *listener) close() {
	l.cancel()
	l.resp.Body.Close()
}

// next waits for the next event.
func (l *listener) next(what string) sseEvent {
	l.t.Helper()
	select {
	case ev, ok := <-l.events:
		if !ok {
			l.t.Fatalf("%s: the stream ended", what)
		}
		return ev
	case <-time.After(10 * time.Second):
		l.t.Fatalf("%s: no event", what)
	}
	return sseEvent{}
}

// webhook waits for the next webhook event, checks its signature as a
// receiver would, and returns it.
func (l *listener) webhook(what string) listenWebhook {
	l.t.Helper()
	ev := l.next(what)
	var w listenWebhook
	if ev.event != "webhook" || json.Unmarshal([]byte(ev.data), &w) != nil || ev.id != w.ID {
		l.t.Fatalf("%s: %+v", what, ev)
	}
	h := http.Header{}
	h.Set(whsig.HeaderID, w.ID)
	h.Set(whsig.HeaderTimestamp, strconv.FormatInt(w.Timestamp, 10))
	h.Set(whsig.HeaderSignature, w.Signature)
	if err := whsig.Verify(h, []byte(w.Body), []whsig.Secret{l.secret}, whsig.DefaultTolerance, time.Now()); err != nil {
		l.t.Fatalf("%s: %v", what, err)
	}
	var body schemas.WebhookEvent
	if err := json.Unmarshal([]byte(w.Body), &body); err != nil || body.Type != w.Type {
		l.t.Fatalf("%s: body %s: %v", what, w.Body, err)
	}
	return w
}

// quiet checks that no event came.
func (l *listener) quiet(what string) {
	l.t.Helper()
	select {
	case ev := <-l.events:
		l.t.Fatalf("%s: got %+v", what, ev)
	default:
	}
}

// produceResult writes a result of org to certnode.receipts.
func (ts *testServer) produceResult(org, id string, auth schemas.Auth) *schemas.Result {
	ts.t.Helper()
	res := &schemas.Result{V: 1, ID: id, Tenant: org, Kind: schemas.KindSign, Status: schemas.StatusSigned, Auth: auth,
		Receipt: []byte(`{"payload":{"n":1}}`), ReceiptID: "rid", Kid: "kid", ProcessedAt: time.Now().UTC()}
	val, _ := json.Marshal(res)
	cl, err := kafka.NewClient(ts.kcfg)
	if err != nil {
		ts.t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(context.Background(), &kgo.Record{Topic: ts.kcfg.Topics().Receipts, Key: []byte(org), Value: val}).FirstErr(); err != nil {
		ts.t.Fatal(err)
	}
	return res
}

func (ts *testServer) trigger(key, typ string) string {
	ts.t.Helper()
	a := ts.do("POST", "/v1/webhooks/trigger", key, `{"event_type":"`+typ+`"}`).expect(ts.t, "trigger", 202, "")
	var ans struct {
		EventID string `json:"event_id"`
	}
	json.Unmarshal([]byte(a.body), &ans)
	return ans.EventID
}

func TestListen(t *testing.T) {
	ts := startServer(t)
	a, _ := ts.listen(keyRead, "")
	b, _ := ts.listen(keyB, "")
	only, _ := ts.listen(keyA, "?events=webhook.test,job.completed")

	res := ts.produceResult("a", "req_1", schemas.AuthIngest)
	ts.produceResult("a", "req_forged", schemas.AuthNone) // makes no event
	w := a.webhook("a's receipt")
	if w.Type != "receipt.signed" || w.ID != schemas.MessageID(schemas.ResultEventID(res), ListenEndpointID) || !strings.Contains(w.Body, `"request_id":"req_1"`) {
		t.Fatalf("a's receipt: %+v", w)
	}
	// b's result goes to b only: once b has it, a's marker comes next.
	ts.produceResult("b", "req_b", schemas.AuthIngest)
	if w := b.webhook("b's receipt"); !strings.Contains(w.Body, `"request_id":"req_b"`) {
		t.Fatalf("b's receipt: %+v", w)
	}
	id := ts.trigger(keyA, "webhook.test")
	w = a.webhook("a's trigger")
	if w.Type != "webhook.test" || w.ID != schemas.MessageID(id, ListenEndpointID) {
		t.Fatalf("a's trigger: %+v (event %s)", w, id)
	}
	// The filtered session saw only the type it asked for.
	if w := only.webhook("filtered"); w.Type != "webhook.test" || w.ID != schemas.MessageID(id, ListenEndpointID) {
		t.Fatalf("filtered: %+v", w)
	}
	a.quiet("after a's trigger")
	b.quiet("after a's trigger")
	only.quiet("after a's trigger")

	// Each session signs with its own secret; a client may keep its own.
	if a.secret.Encode() == only.secret.Encode() {
		t.Fatal("two sessions share a secret")
	}
	kept, _ := ts.listen(keyA, "", ListenSecretHeader, a.secret.Encode())
	if kept.secret.Encode() != a.secret.Encode() {
		t.Fatal("the secret sent back was not kept")
	}
	ts.trigger(keyA, "job.completed")
	kept.webhook("with the kept secret")

	// A session that fell behind is told how many events it lost.
	ts.s.hub.mu.RLock()
	for ls := range ts.s.hub.sessions["b"] {
		ls.dropped.Add(7)
	}
	ts.s.hub.mu.RUnlock()
	ts.trigger(keyB, "quota.warning")
	b.webhook("b's trigger")
	if ev := b.next("dropped"); ev.event != "dropped" || ev.data != `{"dropped":7}` {
		t.Fatalf("dropped notice: %+v", ev)
	}

	// HEAD answers the headers and holds no place.
	before := ts.s.hub.sessionsOf("a")
	if h := ts.do("HEAD", "/v1/webhooks/listen", keyA, ""); h.status != 200 || h.header.Get("Content-Type") != "text/event-stream" ||
		ts.s.hub.sessionsOf("a") != before {
		t.Fatalf("HEAD: %+v, %d sessions (was %d)", h, ts.s.hub.sessionsOf("a"), before)
	}

	_, refused := ts.listen(keyA, "?events=receipt.signed,receipt.stamped")
	refused.expect(t, "unknown type", 400, "invalid_events")
	_, refused = ts.listen(keyA, "", ListenSecretHeader, "whsec_short")
	refused.expect(t, "bad secret", 400, "invalid_secret")
}

func TestListenHeartbeat(t *testing.T) {
	ts := startServer(t)
	ts.s.listenHeartbeat = 20 * time.Millisecond
	l, _ := ts.listen(keyA, "")
	deadline := time.Now().Add(5 * time.Second)
	for l.sse.comments.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if l.sse.comments.Load() < 3 {
		t.Fatalf("%d heartbeats", l.sse.comments.Load())
	}
}

func TestListenLimits(t *testing.T) {
	ts := startServer(t, func(c *Config, _ *Deps) { c.MaxListeners = 7 })
	var open []*listener
	for range maxListenersPerOrg {
		l, refused := ts.listen(keyA, "")
		if refused != nil {
			t.Fatalf("listener %d: %+v", len(open), refused)
		}
		open = append(open, l)
	}
	_, refused := ts.listen(keyA, "")
	refused.expect(t, "over the organization's", 429, "too_many_listeners")
	if refused.header.Get("Retry-After") == "" {
		t.Fatal("429 without Retry-After")
	}
	ts.listen(keyB, "")
	ts.listen(keyB, "")
	_, refused = ts.listen(keyB, "")
	refused.expect(t, "over the server's", 429, "too_many_listeners")

	// A client that leaves frees its place.
	open[0].close()
	for i := 0; ; i++ {
		l, refused := ts.listen(keyA, "")
		if refused == nil {
			l.close()
			break
		}
		if i == 50 {
			t.Fatalf("the place of a closed stream was never freed: %+v", refused)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stopping the server ends open streams.
func TestListenEndsOnShutdown(t *testing.T) {
	ts := startServer(t)
	l, _ := ts.listen(keyA, "")
	start := time.Now()
	ts.stop()
	select {
	case _, ok := <-l.events:
		if ok {
			t.Fatal("an event instead of the end")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the stream did not end")
	}
	select {
	case <-ts.stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not stop")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("stopping took %s", took)
	}
}

// fakeTails makes tails that read nothing, counting starts and stops.
type fakeTails struct{ started, stopped atomic.Int32 }

func (f *fakeTails) start(context.Context) (*hubTail, error) {
	f.started.Add(1)
	done := make(chan struct{})
	close(done)
	return &hubTail{cancel: func() { f.stopped.Add(1) }, done: done}, nil
}

func newTestHub(max int) (*listenHub, *fakeTails) {
	kcfg := kafka.Config{}
	h := newListenHub(kcfg, nil, max, DefaultWebhookReceiptBytes, newMetrics(nil))
	f := &fakeTails{}
	h.startTail = f.start
	return h, f
}

func eventRecord(org string, n int) *kgo.Record {
	r := schemas.EventRecord{V: 1, ID: fmt.Sprintf("evt_%d", n), Org: org, Event: schemas.WebhookEvent{Type: schemas.EventWebhookTest,
		Timestamp: time.Now().UTC(), Data: []byte(`{"n":1}`)}}
	val, _ := json.Marshal(r)
	return &kgo.Record{Topic: schemas.TopicsFor(schemas.DefaultTopicPrefix).Events, Key: []byte(org), Value: val}
}

// A session that does not keep up loses events (and is told), never
// holding up the tail or the other sessions.
func TestListenSlowSession(t *testing.T) {
	h, _ := newTestHub(10)
	fast, _ := h.join(context.Background(), "a", nil)
	slow, _ := h.join(context.Background(), "a", nil)
	other, _ := h.join(context.Background(), "b", nil)
	const n = listenBuffer + 44
	got := 0
	start := time.Now()
	for i := range n {
		h.fanOut(eventRecord("a", i))
		select {
		case ev := <-fast.ch:
			fast.take(ev)
			got++
		default:
		}
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("the fan-out was held up")
	}
	if got != n || fast.dropped.Load() != 0 {
		t.Fatalf("the fast session got %d of %d (dropped %d)", got, n, fast.dropped.Load())
	}
	if len(slow.ch) != listenBuffer || slow.dropped.Load() != n-listenBuffer {
		t.Fatalf("the slow session holds %d and dropped %d", len(slow.ch), slow.dropped.Load())
	}
	if len(other.ch) != 0 {
		t.Fatal("another organization's session got a's events")
	}
	// The buffer is bounded in bytes too.
	big := &listenEvent{messageID: "msg_big", typ: schemas.EventWebhookTest, body: make([]byte, listenBufferBytes+1)}
	if other.offer(big) || other.dropped.Load() != 1 || other.queued.Load() != 0 {
		t.Fatal("an event over the byte bound was queued")
	}
	// Records that are not events of the organization make none.
	h.fanOut(&kgo.Record{Topic: h.topics.Events, Key: []byte("b"), Value: []byte(`{"v":1}`)})
	rec := eventRecord("a", 0)
	rec.Key = []byte("b") // a's record keyed b
	h.fanOut(rec)
	if len(other.ch) != 0 {
		t.Fatal("a bad record was fanned out")
	}
}

func (h *listenHub) sessionsOf(org string) int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.sessions[org])
}

// The tail starts with the first session and stops once none is left for
// the idle time; a session that comes back sooner finds it running.
func TestListenTailLifecycle(t *testing.T) {
	h, f := newTestHub(3)
	h.idle = 50 * time.Millisecond
	s1, err := h.join(context.Background(), "a", nil)
	if err != nil || f.started.Load() != 1 || !h.running() {
		t.Fatalf("first join: %v, %d starts", err, f.started.Load())
	}
	s2, _ := h.join(context.Background(), "b", nil)
	h.leave(s1)
	h.leave(s1) // twice is harmless
	h.leave(s2)
	s3, _ := h.join(context.Background(), "a", []string{schemas.EventWebhookTest})
	time.Sleep(3 * h.idle)
	if f.started.Load() != 1 || f.stopped.Load() != 0 || !h.running() {
		t.Fatalf("a session came back in time: %d starts, %d stops", f.started.Load(), f.stopped.Load())
	}
	h.join(context.Background(), "c", nil)
	h.join(context.Background(), "d", nil)
	if _, err := h.join(context.Background(), "e", nil); err != errTooManyListeners {
		t.Fatalf("a fourth session: %v", err)
	}
	h.mu.RLock()
	for _, m := range h.sessions {
		for ls := range m {
			defer h.leave(ls)
		}
	}
	h.mu.RUnlock()
	h.leave(s3)
	if h.sessionsOf("a") != 0 {
		t.Fatal("a's session is still listed")
	}
	h.close()
	if _, err := h.join(context.Background(), "a", nil); err != errListenStopped {
		t.Fatalf("join after close: %v", err)
	}

	h, f = newTestHub(3)
	h.idle = 20 * time.Millisecond
	s, _ := h.join(context.Background(), "a", nil)
	h.leave(s)
	deadline := time.Now().Add(5 * time.Second)
	for h.running() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if h.running() || f.stopped.Load() != 1 {
		t.Fatalf("the idle tail did not stop: %d stops", f.stopped.Load())
	}
	s, _ = h.join(context.Background(), "a", nil)
	if f.started.Load() != 2 || !h.running() {
		t.Fatalf("the tail did not start again: %d starts", f.started.Load())
	}
	h.leave(s)
	h.close()
}
