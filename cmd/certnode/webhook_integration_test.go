//go:build integration

package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/interop"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/internal/whsig"
	"github.com/certnode/certnode/schemas"
)

// Webhook delivery on real processes: a `certnode coordinator` holding the
// endpoints, `certnode dispatcher` processes on the real Kafka, results
// produced straight onto PREFIX.receipts as workers write them, and
// receivers on 127.0.0.1. Each test has its own topic prefix (so its own
// topics and consumer groups) and its own coordinator.

// The coordinator's tokens in these tests.
const (
	hookAdminToken = "webhook-admin-token-0123456789"
	hookNodeToken  = "webhook-node-token-0123456789"
)

// hookEnv is one isolated deployment: a coordinator, a topic prefix, and a
// Kafka client that produces results and reads what the dispatcher wrote.
type hookEnv struct {
	t      *testing.T
	e      *e2e // its process helpers, prefix and Kafka address
	suffix string
	coord  string // the coordinator's HTTP address
	topics schemas.Topics
	kcl    *kgo.Client
}

func newHookEnv(t *testing.T) *hookEnv {
	t.Helper()
	var b [5]byte
	rand.Read(b[:])
	suffix := fmt.Sprintf("%x", b)
	broker := testenv.KafkaBrokers(t)[0]
	prefix := "wh-" + suffix
	h := &hookEnv{t: t, suffix: suffix, topics: schemas.TopicsFor(prefix)}
	h.e = &e2e{t: t, dir: t.TempDir(), prefix: prefix, kafka: broker, env: append(os.Environ(),
		"CERTNODE_KAFKA="+broker, "CERTNODE_TOPIC_PREFIX="+prefix, "CERTNODE_KAFKA_PARTITIONS=4",
		"CERTNODE_ADMIN_TOKEN="+hookAdminToken, "CERTNODE_NODE_TOKEN="+hookNodeToken,
		"CERTNODE_INTERNAL_SECRET=webhook-tests-internal-secret-"+suffix+suffix,
		"CERTNODE_TENANTS_FILE=", "CERTNODE_PKCS11_MODULE=", "CERTNODE_PKCS11_TOKEN=")}
	var err error
	if h.kcl, err = kgo.NewClient(kgo.SeedBrokers(broker), kgo.ProducerLinger(2*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // after the processes stopped (cleanups run last-in, first-out)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		kadm.NewClient(h.kcl).DeleteTopics(ctx, h.topics.All()...)
		h.kcl.Close()
	})
	h.coord = freeAddr(t)
	p := h.e.start("coordinator", "coordinator", "--id", "c1", "--raft", freeAddr(t), "--http", h.coord,
		"--data", t.TempDir(), "--bootstrap")
	testenv.WaitFor(t, "the coordinator leads", 60*time.Second, func() (bool, string) {
		select {
		case <-p.done:
			t.Fatalf("the coordinator exited: %s", p.output())
		default:
		}
		code, body := h.call("GET", "/v1/admin/cluster", "")
		return code == 200 && strings.Contains(body, `"state":"Leader"`), body
	})
	return h
}

// call sends one request to the coordinator as its operator.
func (h *hookEnv) call(method, path, body string) (int, string) {
	ctype := ""
	if body != "" {
		ctype = "application/json"
	}
	return request(method, "http://"+h.coord+path, hookAdminToken, ctype, body)
}

// org creates an organization and returns its id.
func (h *hookEnv) org(name string) string {
	h.t.Helper()
	id := name + "-" + h.suffix
	if code, body := h.call("POST", "/v1/admin/orgs", `{"id":"`+id+`","name":"`+name+`"}`); code != 201 {
		h.t.Fatalf("org %s: %d %s", id, code, body)
	}
	return id
}

// endpoint creates an endpoint of org at url, subscribed to events (none:
// every type), signing with secret; it returns the endpoint's id.
func (h *hookEnv) endpoint(org, url string, secret whsig.Secret, events ...string) string {
	h.t.Helper()
	if events == nil {
		events = []string{}
	}
	body, _ := json.Marshal(map[string]any{"url": url, "event_types": events, "secret": secret.Encode()})
	code, resp := h.call("POST", "/v1/orgs/"+org+"/webhooks/endpoints", string(body))
	var ep struct {
		ID string `json:"id"`
	}
	if code != 201 || json.Unmarshal([]byte(resp), &ep, json.RejectUnknownMembers(false)) != nil || ep.ID == "" {
		h.t.Fatalf("endpoint %s: %d %s", url, code, resp)
	}
	return ep.ID
}

// dispatcher starts a dispatcher following the coordinator and waits until
// it is ready (its copy of the coordinator's state is current).
func (h *hookEnv) dispatcher(name string, args ...string) *proc {
	h.t.Helper()
	metrics := freeAddr(h.t)
	p := h.e.start(name, append([]string{"dispatcher", "--coordinator", h.coord, "--metrics", metrics}, args...)...)
	testenv.WaitFor(h.t, name+" ready", 60*time.Second, func() (bool, string) {
		select {
		case <-p.done:
			h.t.Fatalf("%s exited: %s", name, p.output())
		default:
		}
		code, body := request("GET", "http://"+metrics+"/readyz", "", "", "")
		return code == 200, body
	})
	return p
}

// result is a signed result of org's request id, as a worker writes it.
func hookResult(org, id string, at time.Time) *schemas.Result {
	receipt := fmt.Sprintf(`{"protected":"eyJhbGciOiJFUzI1NiIsImtpZCI6InRlc3Qta2lkIn0","payload":{"request":%q},"signature":"c2lnbmF0dXJl","kid":"test-kid"}`, id)
	return &schemas.Result{V: schemas.EnvelopeVersion, ID: id, Tenant: org, Kind: schemas.KindSign, Status: schemas.StatusSigned,
		Auth: schemas.AuthIngest, Kid: "test-kid", ReceiptID: "rc_" + id, Receipt: jsontext.Value(receipt), Size: 24,
		ReceivedAt: at.UTC(), ProcessedAt: at.UTC()}
}

// produce writes signed results of org's requests ids onto PREFIX.receipts
// (key: the organization) and waits for the broker's acknowledgement.
func (h *hookEnv) produce(org string, ids ...string) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	recs := make([]*kgo.Record, 0, len(ids))
	now := time.Now()
	for _, id := range ids {
		val, err := json.Marshal(hookResult(org, id, now))
		if err != nil {
			h.t.Fatal(err)
		}
		recs = append(recs, &kgo.Record{Topic: h.topics.Receipts, Key: []byte(org), Value: val})
	}
	if err := h.kcl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		h.t.Fatalf("produce results: %v", err)
	}
}

// messageID is the webhook-id of the receipt.signed event of org's request
// id sent to endpoint.
func messageID(org, id, endpoint string) string {
	return schemas.MessageID(schemas.ResultEventID(&schemas.Result{Tenant: org, ID: id}), endpoint)
}

func requestIDs(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%05d", prefix, i)
	}
	return out
}

// attemptLog follows PREFIX.webhooks.attempts from its start until the
// test ends.
type attemptLog struct {
	mu   sync.Mutex
	list []*schemas.WebhookAttempt
	bad  []string
}

func (h *hookEnv) watchAttempts() *attemptLog {
	h.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(h.e.kafka), kgo.ConsumeTopics(h.topics.WebhookAttempts),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(200*time.Millisecond))
	if err != nil {
		h.t.Fatal(err)
	}
	l := &attemptLog{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			fs := cl.PollFetches(ctx)
			fs.EachRecord(func(r *kgo.Record) {
				a, err := schemas.DecodeWebhookAttempt(r.Value)
				l.mu.Lock()
				defer l.mu.Unlock()
				if err != nil {
					l.bad = append(l.bad, fmt.Sprintf("offset %d: %v", r.Offset, err))
					return
				}
				l.list = append(l.list, a)
			})
		}
	}()
	h.t.Cleanup(func() {
		cancel()
		<-done
		cl.Close()
		if len(l.bad) > 0 {
			h.t.Errorf("attempt records that do not decode: %q", l.bad)
		}
	})
	return l
}

// of returns the attempts made to endpoint so far, in the order recorded.
func (l *attemptLog) of(endpoint string) []*schemas.WebhookAttempt {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*schemas.WebhookAttempt
	for _, a := range l.list {
		if a.EndpointID == endpoint {
			out = append(out, a)
		}
	}
	return out
}

// hookRequest is one request a receiver got.
type hookRequest struct {
	id     string // webhook-id
	path   string
	at     time.Time
	body   []byte
	sigs   int   // entries in webhook-signature
	err    error // whsig.Verify's verdict with the receiver's secrets
	status int   // what the receiver answered
}

// hookReceiver is an endpoint on 127.0.0.1 that records every request and
// verifies its signature with whsig; respond decides the answer to the
// n-th request (from 1) carrying a webhook-id, and may block.
type hookReceiver struct {
	srv     *httptest.Server
	url     string
	secrets []whsig.Secret
	respond func(r *http.Request, id string, n int) int

	mu    sync.Mutex
	reqs  []hookRequest
	count map[string]int
}

func newHookReceiver(t *testing.T, secrets []whsig.Secret, respond func(r *http.Request, id string, n int) int) *hookReceiver {
	t.Helper()
	rc := &hookReceiver{secrets: secrets, respond: respond, count: map[string]int{}}
	rc.srv = httptest.NewServer(http.HandlerFunc(rc.serve))
	rc.url = rc.srv.URL + "/hook"
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *hookReceiver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	at := time.Now()
	id := r.Header.Get(whsig.HeaderID)
	req := hookRequest{id: id, path: r.URL.Path, at: at, body: body, sigs: len(strings.Fields(r.Header.Get(whsig.HeaderSignature))),
		err: whsig.Verify(r.Header, body, rc.secrets, 0, at)}
	rc.mu.Lock()
	rc.count[id]++
	n := rc.count[id]
	rc.mu.Unlock()
	req.status = http.StatusNoContent
	if rc.respond != nil {
		req.status = rc.respond(r, id, n)
	}
	if req.status >= 300 && req.status < 400 {
		w.Header().Set("Location", "/moved")
	}
	w.WriteHeader(req.status)
	rc.mu.Lock()
	rc.reqs = append(rc.reqs, req)
	rc.mu.Unlock()
}

// requests returns the requests answered so far.
func (rc *hookReceiver) requests() []hookRequest {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.reqs)
}

// distinct is how many webhook-ids arrived.
func (rc *hookReceiver) distinct() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.count)
}

// checkSignatures fails the test for every request whose signature did not
// verify.
func (rc *hookReceiver) checkSignatures(t *testing.T, what string) {
	t.Helper()
	bad := 0
	for _, r := range rc.requests() {
		if r.err != nil {
			if bad++; bad <= 5 {
				t.Errorf("%s: delivery %s does not verify: %v", what, r.id, r.err)
			}
		}
	}
	if bad > 5 {
		t.Errorf("%s: %d deliveries in all do not verify", what, bad)
	}
}

// TestWebhookDispatcherSIGKILLBurst: 5,000 results for one endpoint; the
// dispatcher is SIGKILLed while delivering them and a new one started: every
// webhook-id arrives, each delivery verifies, and a webhook-id arrives twice
// only when the dead dispatcher had sent it without its attempt being
// recorded yet (in flight at the kill), with the same webhook-id.
func TestWebhookDispatcherSIGKILLBurst(t *testing.T) {
	t.Parallel()
	const total, killAfter = 5000, 1500
	h := newHookEnv(t)
	org := h.org("burst")
	secret := whsig.NewSecret()
	rc := newHookReceiver(t, []whsig.Secret{secret}, nil)
	ep := h.endpoint(org, rc.url, secret, schemas.EventReceiptSigned)
	args := []string{"--webhook-allow", "127.0.0.0/8"}
	d1 := h.dispatcher("dispatcher-1", args...)

	ids := requestIDs("burst", total)
	want := map[string]bool{}
	for _, id := range ids {
		want[messageID(org, id, ep)] = true
	}
	start := time.Now()
	h.produce(org, ids...)
	t.Logf("%d results produced in %s", total, time.Since(start).Round(time.Millisecond))
	testenv.WaitFor(t, fmt.Sprintf("%d deliveries before the kill", killAfter), 2*time.Minute, func() (bool, string) {
		n := rc.distinct()
		return n >= killAfter, fmt.Sprintf("%d distinct webhook-ids", n)
	})
	d1.kill()
	killedAt := time.Now()
	firstRound := killedAt.Sub(start)
	// A produce request the process finished sending before it died is
	// still appended: give the broker a moment before reading.
	time.Sleep(500 * time.Millisecond)
	before := rc.requests()

	// What the dead dispatcher left: the deliveries its attempt records
	// show, and the records past its committed offsets, which its
	// successor reads again.
	recorded := map[string]bool{}
	for _, r := range h.readFrom(h.topics.WebhookAttempts, nil) {
		a, err := schemas.DecodeWebhookAttempt(r.Value)
		if err != nil {
			t.Fatalf("attempt record at offset %d: %v", r.Offset, err)
		}
		if a.Outcome == schemas.OutcomeDelivered {
			recorded[a.MessageID] = true
		}
	}
	again := h.uncommitted(ep)

	h.dispatcher("dispatcher-2", args...)
	testenv.WaitFor(t, "every webhook-id delivered after the restart", 3*time.Minute, func() (bool, string) {
		n := rc.distinct()
		return n >= total, fmt.Sprintf("%d of %d distinct webhook-ids", n, total)
	})
	// A late duplicate (a message read again and queued behind others)
	// would still come: wait until the receiver has been quiet for 3 s.
	quietSince, last := time.Now(), len(rc.requests())
	testenv.WaitFor(t, "the receiver quiet for 3s", time.Minute, func() (bool, string) {
		if n := len(rc.requests()); n != last {
			quietSince, last = time.Now(), n
		}
		return time.Since(quietSince) >= 3*time.Second, fmt.Sprintf("%d requests", last)
	})
	all := rc.requests()
	rc.checkSignatures(t, "burst")

	deliveredBefore := map[string]int{}
	var window1s int
	for _, r := range before {
		if deliveredBefore[r.id]++; deliveredBefore[r.id] == 1 && killedAt.Sub(r.at) <= time.Second {
			window1s++
		}
	}
	inFlight := 0 // sent by the dead dispatcher, not recorded as delivered
	for id := range deliveredBefore {
		if !recorded[id] {
			inFlight++
		}
	}
	resendable := 0 // delivered, and carried by a record read again
	for id := range again {
		if deliveredBefore[id] > 0 {
			resendable++
		}
	}
	count := map[string]int{}
	for _, r := range all {
		count[r.id]++
		if !want[r.id] {
			t.Fatalf("a delivery with webhook-id %s, which no result made", r.id)
		}
	}
	if len(count) != total {
		t.Fatalf("%d distinct webhook-ids delivered, want %d", len(count), total)
	}
	duplicates, dupIDs, maxCopies, dupsBefore := 0, 0, 0, 0
	// Duplicates by what the kill left of them: which records past the
	// committed offsets carried the message, and whether the dead
	// dispatcher had sent it (recorded or not).
	kinds := map[string]int{}
	var examples []string
	for id, n := range count {
		if n == 1 {
			continue
		}
		duplicates += n - 1
		dupIDs++
		maxCopies = max(maxCopies, n)
		dupsBefore += max(0, deliveredBefore[id]-1)
		// A duplicate must carry the webhook-id of a message the dead
		// dispatcher had sent whose delivery was not recorded yet: its
		// successor cannot tell it was delivered. A recorded delivery read
		// again is skipped (the attempts topic says it is done), and a
		// message nobody had sent must be sent once.
		sentBy := "sent before the kill, unrecorded"
		switch {
		case deliveredBefore[id] == 0:
			sentBy = "not sent before the kill"
		case recorded[id]:
			sentBy = "recorded as delivered before the kill"
		}
		copies := slices.Sorted(slices.Values(again[id]))
		kind := fmt.Sprintf("%s; records past the commits: %v", sentBy, copies)
		if kinds[kind]++; kinds[kind] == 1 {
			examples = append(examples, fmt.Sprintf("%s (%d deliveries): %s", id, n, kind))
		}
		// Each record read again sends it at most once more.
		if n > 1+len(again[id]) {
			t.Errorf("webhook-id %s arrived %d times, but only %d records past the committed offsets carry it", id, n, len(again[id]))
		}
	}
	for kind, n := range kinds {
		t.Logf("%d duplicated webhook-ids: %s", n, kind)
		if !strings.HasPrefix(kind, "sent before the kill, unrecorded") {
			t.Errorf("%d webhook-ids delivered more than once that were not in flight at the kill: %s", n, kind)
		}
	}
	for _, e := range examples {
		t.Logf("e.g. %s", e)
	}
	t.Logf("first dispatcher: %d requests for %d webhook-ids (%d duplicates) in %s; %d webhook-ids arrived in the last second before the SIGKILL",
		len(before), len(deliveredBefore), dupsBefore, firstRound.Round(time.Millisecond), window1s)
	t.Logf("at the kill: %d sent but not recorded as delivered (in flight); %d already delivered but carried by records past the committed offsets "+
		"(sent again without the attempts-topic check)", inFlight, resendable)
	t.Logf("after the restart: %d requests for %d webhook-ids: %d duplicates (%d webhook-ids more than once, at most %d times)",
		len(all), len(count), duplicates, dupIDs, maxCopies)
	if resendable == 0 {
		t.Fatalf("nothing was tested: every delivery before the kill was committed")
	}
	// The bound: only what was in flight at the kill is sent twice. With
	// one endpoint at --concurrency 8 that is the 8 requests outstanding
	// plus the deliveries whose attempt record was still being produced
	// (a few ms on loopback Kafka), far below what arrived in the last
	// second.
	if duplicates > inFlight {
		t.Errorf("%d duplicates, more than the %d deliveries in flight (sent, not recorded) at the kill", duplicates, inFlight)
	}
	if inFlight > window1s+8 {
		t.Errorf("%d deliveries unrecorded at the kill, more than the %d that arrived in its last second plus 8 in flight: attempt records lag",
			inFlight, window1s)
	}
}

// uncommitted reads, for both consumer groups of the dispatcher, every
// record past the group's committed offsets (PREFIX.receipts and
// PREFIX.webhooks for the dispatcher, the delay topics for its delayer), and
// lists, for each message to endpoint, the topics of the records carrying
// it (one entry per record).
func (h *hookEnv) uncommitted(endpoint string) map[string][]string {
	h.t.Helper()
	out := map[string][]string{}
	groups := map[string][]string{
		h.e.prefix + "-dispatcher":       {h.topics.Receipts, h.topics.Webhooks},
		h.e.prefix + "-dispatcher-delay": h.topics.WebhookDelays,
	}
	for group, topics := range groups {
		for _, topic := range topics {
			short := strings.TrimPrefix(topic, h.e.prefix+".")
			for _, r := range h.readFrom(topic, h.e.committedOffsets(group, topic)) {
				if topic == h.topics.Receipts {
					res, err := schemas.DecodeResult(r.Value)
					if err != nil {
						h.t.Fatalf("%s offset %d: %v", topic, r.Offset, err)
					}
					id := messageID(res.Tenant, res.ID, endpoint)
					out[id] = append(out[id], short)
					continue
				}
				m, err := schemas.DecodeWebhookMessage(r.Value)
				if err != nil {
					h.t.Fatalf("%s offset %d: %v", topic, r.Offset, err)
				}
				out[m.ID] = append(out[m.ID], short)
			}
		}
	}
	return out
}

// readFrom reads topic from the offsets from (by partition; absent: the
// start) to its current end.
func (h *hookEnv) readFrom(topic string, from map[int32]int64) []*kgo.Record {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ends, err := kadm.NewClient(h.kcl).ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		h.t.Fatalf("end offsets of %s: %v", topic, err)
	}
	parts := map[int32]kgo.Offset{}
	left := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > from[o.Partition] {
			parts[o.Partition] = kgo.NewOffset().At(from[o.Partition])
			left[o.Partition] = o.Offset
		}
	})
	if len(parts) == 0 {
		return nil
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(h.e.kafka), kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: parts}))
	if err != nil {
		h.t.Fatal(err)
	}
	defer cl.Close()
	var out []*kgo.Record
	for len(left) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			h.t.Fatalf("reading %s: still to read up to %v", topic, left)
		}
		fs.EachError(func(_ string, p int32, err error) { h.t.Fatalf("reading %s partition %d: %v", topic, p, err) })
		fs.EachRecord(func(r *kgo.Record) {
			end, ok := left[r.Partition]
			if !ok || r.Offset >= end {
				return
			}
			out = append(out, r)
			if r.Offset+1 >= end {
				delete(left, r.Partition)
			}
		})
	}
	return out
}

// goLibReceiver is a receiver built on the official Go library
// (github.com/standard-webhooks/standard-webhooks/libraries/go): one
// verifier per secret, each holding only that secret; it answers 204 when
// one accepts the request, else 400.
func goLibReceiver(t *testing.T, secrets ...string) (url string, seen func() []interop.WebhookVerdict) {
	t.Helper()
	var hooks []*standardwebhooks.Webhook
	for _, s := range secrets {
		wh, err := standardwebhooks.NewWebhook(s)
		if err != nil {
			t.Fatal(err)
		}
		hooks = append(hooks, wh)
	}
	var mu sync.Mutex
	var got []interop.WebhookVerdict
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		v := interop.WebhookVerdict{ID: r.Header.Get(standardwebhooks.HeaderWebhookID)}
		status := http.StatusBadRequest
		for _, wh := range hooks {
			if err := wh.Verify(body, r.Header); err != nil {
				v.Verdicts = append(v.Verdicts, "fail: "+err.Error())
			} else {
				v.Verdicts, status = append(v.Verdicts, "ok"), http.StatusNoContent
			}
		}
		mu.Lock()
		got = append(got, v)
		mu.Unlock()
		w.WriteHeader(status)
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/", func() []interop.WebhookVerdict {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
}

// TestWebhookInteropReceivers: receivers built on the official Standard
// Webhooks libraries (npm standardwebhooks 1.1.x, PyPI standardwebhooks
// 1.1.x, the Go library) verify every delivery of a real dispatcher, before,
// during and after a secret rotation with overlap. Each receiver runs two
// verifiers, one holding only the old secret and one only the new one, and
// the library decides each verdict: before the rotation the old one accepts
// every delivery, during the overlap both do (a receiver not yet told of
// the new secret keeps working, one already switched works too), after it
// only the new one does.
func TestWebhookInteropReceivers(t *testing.T) {
	t.Parallel()
	h := newHookEnv(t)
	org := h.org("interop")
	oldSecret, newSecret := whsig.NewSecret(), whsig.NewSecret()
	secrets := []string{oldSecret.Encode(), newSecret.Encode()}

	type receiver struct {
		name string
		url  string
		seen func() []interop.WebhookVerdict
		ep   string
	}
	var rcs []*receiver
	for _, lib := range interop.WebhookImpls {
		r := lib.ServeWebhooks(t, secrets...)
		rcs = append(rcs, &receiver{name: lib.Name, url: r.URL, seen: r.Seen})
	}
	url, seen := goLibReceiver(t, secrets...)
	rcs = append(rcs, &receiver{name: "go standard-webhooks", url: url, seen: seen})
	for _, r := range rcs {
		r.ep = h.endpoint(org, r.url, oldSecret, schemas.EventReceiptSigned)
	}
	h.dispatcher("dispatcher", "--webhook-allow", "127.0.0.0/8")

	// verdicts waits for every receiver's verdicts on org's requests ids.
	verdicts := func(what string, ids []string) map[*receiver][]interop.WebhookVerdict {
		t.Helper()
		out := map[*receiver][]interop.WebhookVerdict{}
		testenv.WaitFor(t, what+": every delivery at every receiver", time.Minute, func() (bool, string) {
			for _, r := range rcs {
				byID := map[string]interop.WebhookVerdict{}
				for _, v := range r.seen() {
					byID[v.ID] = v
				}
				out[r] = out[r][:0]
				for _, id := range ids {
					v, ok := byID[messageID(org, id, r.ep)]
					if !ok {
						return false, fmt.Sprintf("%s has no delivery of %s", r.name, id)
					}
					out[r] = append(out[r], v)
				}
			}
			return true, ""
		})
		return out
	}
	// expect checks that the old-secret and new-secret verifiers of every
	// receiver gave the verdicts wanted, on every delivery of ids.
	expect := func(phase string, ids []string, oldOK, newOK bool) {
		t.Helper()
		for r, vs := range verdicts(phase, ids) {
			for i, v := range vs {
				if len(v.Verdicts) != 2 {
					t.Fatalf("%s, %s: %d verdicts on %s, want 2", phase, r.name, len(v.Verdicts), ids[i])
				}
				for j, want := range []bool{oldOK, newOK} {
					// A refusal must be for the signature (not, say, the
					// timestamp): every library says "no matching signature".
					if got := v.Verdicts[j] == "ok"; got != want || (!got && !strings.Contains(strings.ToLower(v.Verdicts[j]), "no matching signature")) {
						t.Errorf("%s, %s, the %s secret on %s: %q, want ok=%v", phase, r.name, []string{"old", "new"}[j], ids[i], v.Verdicts[j], want)
					}
				}
			}
			t.Logf("%s: %s checked %d deliveries (old secret ok=%v, new secret ok=%v)", phase, r.name, len(vs), oldOK, newOK)
		}
	}

	const n = 20
	first := requestIDs("before", n)
	h.produce(org, first...)
	expect("before the rotation", first, true, false)

	const overlap = 12 * time.Second
	rotated := map[string]bool{}
	for _, r := range rcs {
		body, _ := json.Marshal(map[string]string{"secret": newSecret.Encode(), "overlap": overlap.String()})
		if code, resp := h.call("POST", "/v1/orgs/"+org+"/webhooks/endpoints/"+r.ep+"/rotate-secret", string(body)); code != 200 {
			t.Fatalf("rotate %s: %d %s", r.ep, code, resp)
		}
	}
	overlapEnds := time.Now().Add(overlap) // the coordinator's expiry is no earlier
	// The dispatcher follows the coordinator: probe until every receiver
	// gets a delivery both of its verifiers accept.
	probes := 0
	testenv.WaitFor(t, "a delivery signed with both secrets at every receiver", 20*time.Second, func() (bool, string) {
		id := fmt.Sprintf("probe-%03d", probes)
		probes++
		h.produce(org, id)
		time.Sleep(200 * time.Millisecond)
		for _, r := range rcs {
			for _, v := range r.seen() {
				if len(v.Verdicts) == 2 && v.Verdicts[0] == "ok" && v.Verdicts[1] == "ok" {
					rotated[r.name] = true
				}
			}
		}
		return len(rotated) == len(rcs), fmt.Sprint(rotated)
	})
	during := requestIDs("during", n)
	h.produce(org, during...)
	expect("during the overlap", during, true, true)
	if left := time.Until(overlapEnds); left < 0 {
		t.Fatalf("the overlap phase took longer than the %s overlap: the test must allow more", overlap)
	} else {
		time.Sleep(left + time.Second)
	}
	after := requestIDs("after", n)
	h.produce(org, after...)
	expect("after the overlap", after, false, true)

	// No receiver refused anything: every request carried a signature its
	// library accepted with a live secret (a refusal would be retried, and
	// show as a verdict with no ok).
	for _, r := range rcs {
		for _, v := range r.seen() {
			if !slices.Contains(v.Verdicts, "ok") {
				t.Errorf("%s refused a delivery: %+v", r.name, v)
			}
		}
	}
}

// TestWebhookRetriesOnSchedule: with --retry-schedule 0s,1s,2s,1s,1h and a
// receiver failing the first 3 attempts of each message, each message is
// delivered at its 4th attempt (exactly 3 retries) with the same
// webhook-id, the gaps between attempts are at least the schedule's, and
// the attempt records say retrying, retrying, retrying, delivered.
func TestWebhookRetriesOnSchedule(t *testing.T) {
	t.Parallel()
	schedule := []time.Duration{0, time.Second, 2 * time.Second, time.Second, time.Hour}
	const failFirst, messages = 3, 5
	h := newHookEnv(t)
	org := h.org("retries")
	secret := whsig.NewSecret()
	rc := newHookReceiver(t, []whsig.Secret{secret}, func(_ *http.Request, _ string, n int) int {
		if n <= failFirst {
			return http.StatusInternalServerError
		}
		return http.StatusNoContent
	})
	ep := h.endpoint(org, rc.url, secret, schemas.EventReceiptSigned)
	attempts := h.watchAttempts()
	h.dispatcher("dispatcher", "--webhook-allow", "127.0.0.0/8", "--retry-schedule", "0s,1s,2s,1s,1h")
	ids := requestIDs("retry", messages)
	h.produce(org, ids...)

	testenv.WaitFor(t, "every message delivered at its 4th attempt", time.Minute, func() (bool, string) {
		got := map[string]int{}
		for _, r := range rc.requests() {
			if r.status == http.StatusNoContent {
				got[r.id]++
			}
		}
		return len(got) == messages, fmt.Sprintf("%d of %d delivered", len(got), messages)
	})
	// Every attempt is recorded; and no stray attempt follows a delivery
	// (give one a second and a half to show).
	testenv.WaitFor(t, "every attempt recorded", 10*time.Second, func() (bool, string) {
		n := len(attempts.of(ep))
		return n >= messages*(failFirst+1), fmt.Sprintf("%d attempt records", n)
	})
	time.Sleep(1500 * time.Millisecond)
	rc.checkSignatures(t, "retries")

	byID := map[string][]hookRequest{}
	for _, r := range rc.requests() {
		byID[r.id] = append(byID[r.id], r)
	}
	if len(byID) != messages {
		t.Fatalf("%d webhook-ids arrived, want %d", len(byID), messages)
	}
	for _, id := range ids {
		mid := messageID(org, id, ep)
		reqs := byID[mid]
		if len(reqs) != failFirst+1 {
			t.Errorf("%s: %d attempts, want %d (3 failures, then the delivery)", mid, len(reqs), failFirst+1)
			continue
		}
		var gaps []string
		for i := 1; i < len(reqs); i++ {
			gap := reqs[i].at.Sub(reqs[i-1].at)
			gaps = append(gaps, gap.Round(time.Millisecond).String())
			// The dispatcher spreads each delay by up to ±10% (jitter); the
			// retry waits in a delay topic for its tier, then in memory for
			// what is left (under the shortest tier), so the gap is the
			// jittered delay plus fetch and forwarding waits.
			if gap < schedule[i]-schedule[i]/10-20*time.Millisecond || gap > schedule[i]+schedule[i]/10+1500*time.Millisecond {
				t.Errorf("%s: attempt %d came %s after attempt %d; the schedule says %s", mid, i+1, gap, i, schedule[i])
			}
		}
		t.Logf("%s: gaps between its 4 attempts %v (schedule 1s, 2s, 1s)", mid, gaps)

		recs := attempts.of(ep)
		var mine []*schemas.WebhookAttempt
		for _, a := range recs {
			if a.MessageID == mid {
				mine = append(mine, a)
			}
		}
		if len(mine) != failFirst+1 {
			t.Errorf("%s: %d attempt records, want %d", mid, len(mine), failFirst+1)
			continue
		}
		slices.SortFunc(mine, func(a, b *schemas.WebhookAttempt) int { return a.Attempt - b.Attempt })
		for i, a := range mine {
			wantOutcome, wantStatus := schemas.OutcomeRetrying, http.StatusInternalServerError
			if i == failFirst {
				wantOutcome, wantStatus = schemas.OutcomeDelivered, http.StatusNoContent
			}
			if a.Attempt != i+1 || a.Outcome != wantOutcome || a.Status != wantStatus || a.Org != org ||
				a.EventType != schemas.EventReceiptSigned || a.URL != rc.url {
				t.Errorf("%s: attempt record %d: %+v; want attempt %d, %s, status %d", mid, i, a, i+1, wantOutcome, wantStatus)
			}
			if wantOutcome == schemas.OutcomeRetrying {
				// The next attempt's time, as scheduled: the delay, within
				// the ±10% jitter.
				wait, d := a.NextAttemptAt.Sub(a.At), schedule[i+1]
				if wait < d-d/10-time.Millisecond || wait > d+d/10+time.Millisecond {
					t.Errorf("%s: attempt %d scheduled the next %s later, want %s ± 10%%", mid, i+1, wait, d)
				}
			} else if !a.NextAttemptAt.IsZero() {
				t.Errorf("%s: the delivered attempt schedules another at %s", mid, a.NextAttemptAt)
			}
			if (i == 0) != (len(a.Body) > 0) {
				t.Errorf("%s: attempt %d carries the body: %v (only the first of a round does)", mid, i+1, len(a.Body) > 0)
			}
		}
	}
}

// TestWebhookEndpointFailures: an endpoint answering 410 is disabled (the
// coordinator shows it with a reason, and the organization's endpoint
// subscribed to endpoint.disabled is told); a 302 is not followed and
// counts as a failure; a hung endpoint's attempts time out after --timeout
// while healthy endpoints beside it, in its organization and in another,
// keep receiving within a second.
func TestWebhookEndpointFailures(t *testing.T) {
	t.Parallel()
	h := newHookEnv(t)
	orgA, orgB := h.org("failing"), h.org("bystander")
	secret := whsig.NewSecret()
	secrets := []whsig.Secret{secret}
	stop := make(chan struct{})
	gone := newHookReceiver(t, secrets, func(*http.Request, string, int) int { return http.StatusGone })
	redirect := newHookReceiver(t, secrets, func(r *http.Request, _ string, _ int) int {
		if r.URL.Path == "/moved" {
			return http.StatusNoContent
		}
		return http.StatusFound
	})
	hung := newHookReceiver(t, secrets, func(r *http.Request, _ string, _ int) int {
		select { // hangs until the dispatcher gives up, or the test ends
		case <-r.Context().Done():
		case <-stop:
		case <-time.After(time.Minute):
		}
		return http.StatusNoContent
	})
	t.Cleanup(func() { close(stop) }) // before the servers close
	watcher := newHookReceiver(t, secrets, nil)
	healthyA := newHookReceiver(t, secrets, nil)
	healthyB := newHookReceiver(t, secrets, nil)

	signed := schemas.EventReceiptSigned
	goneEP := h.endpoint(orgA, gone.url, secret, signed)
	watcherEP := h.endpoint(orgA, watcher.url, secret, schemas.EventEndpointDisabled)
	redirectEP := h.endpoint(orgA, redirect.url, secret, signed)
	hungEP := h.endpoint(orgA, hung.url, secret, signed)
	healthyAEP := h.endpoint(orgA, healthyA.url, secret, signed)
	healthyBEP := h.endpoint(orgB, healthyB.url, secret, signed)
	attempts := h.watchAttempts()
	const timeout = 3 * time.Second
	h.dispatcher("dispatcher", "--webhook-allow", "127.0.0.0/8", "--timeout", timeout.String(), "--retry-schedule", "0s,1h")

	// 10 results a second for each organization, for 6 s: the hung
	// endpoint's first attempts time out while the others go on.
	produced := map[string]time.Time{} // request id -> produced at
	var idsA, idsB []string
	for i := range 60 {
		a, b := fmt.Sprintf("a-%03d", i), fmt.Sprintf("b-%03d", i)
		produced[a], produced[b] = time.Now(), time.Now()
		h.produce(orgA, a)
		h.produce(orgB, b)
		idsA, idsB = append(idsA, a), append(idsB, b)
		time.Sleep(100 * time.Millisecond)
	}

	// Healthy endpoints: every message, each within a second of its result.
	latencies := func(rc *hookReceiver, org, ep string, ids []string) {
		t.Helper()
		testenv.WaitFor(t, "every delivery at the healthy endpoint of "+org, 30*time.Second, func() (bool, string) {
			n := rc.distinct()
			return n >= len(ids), fmt.Sprintf("%d of %d", n, len(ids))
		})
		at := map[string]time.Time{}
		for _, r := range rc.requests() {
			if _, ok := at[r.id]; !ok {
				at[r.id] = r.at
			}
		}
		var lat []time.Duration
		for _, id := range ids {
			got, ok := at[messageID(org, id, ep)]
			if !ok {
				t.Fatalf("%s: no delivery of %s", org, id)
			}
			lat = append(lat, got.Sub(produced[id]))
		}
		slices.Sort(lat)
		t.Logf("healthy endpoint of %s beside a hung one: %d deliveries, latency from the result to the request p50 %s, p99 %s, max %s",
			org, len(lat), lat[len(lat)/2].Round(time.Millisecond), lat[len(lat)*99/100].Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond))
		if worst := lat[len(lat)-1]; worst >= time.Second {
			t.Errorf("%s: a healthy endpoint waited %s for a delivery beside a hung endpoint", org, worst)
		}
		rc.checkSignatures(t, "healthy endpoint of "+org)
	}
	latencies(healthyA, orgA, healthyAEP, idsA)
	latencies(healthyB, orgB, healthyBEP, idsB)

	// The hung endpoint's attempts end at the timeout.
	testenv.WaitFor(t, "timed-out attempts to the hung endpoint", 30*time.Second, func() (bool, string) {
		as := attempts.of(hungEP)
		return len(as) > 0, fmt.Sprintf("%d attempts", len(as))
	})
	for _, a := range attempts.of(hungEP) {
		if a.Outcome != schemas.OutcomeRetrying || a.Status != 0 || !strings.Contains(a.Error, "Timeout") ||
			time.Duration(a.LatencyMillis)*time.Millisecond < timeout-100*time.Millisecond || time.Duration(a.LatencyMillis)*time.Millisecond > timeout+2*time.Second {
			t.Errorf("an attempt to the hung endpoint: outcome %s, status %d, latency %dms, error %q; want a timeout after %s",
				a.Outcome, a.Status, a.LatencyMillis, a.Error, timeout)
		}
	}
	t.Logf("hung endpoint: %d requests reached it, %d attempts recorded so far, each timing out after ~%s",
		len(hung.requests()), len(attempts.of(hungEP)), timeout)

	// 410: disabled, with the reason, and announced.
	testenv.WaitFor(t, "the 410 endpoint disabled", 30*time.Second, func() (bool, string) {
		code, body := h.call("GET", "/v1/orgs/"+orgA+"/webhooks/endpoints/"+goneEP, "")
		var v struct {
			Enabled        bool   `json:"enabled"`
			DisabledReason string `json:"disabled_reason"`
		}
		ok := code == 200 && json.Unmarshal([]byte(body), &v, json.RejectUnknownMembers(false)) == nil &&
			!v.Enabled && strings.Contains(v.DisabledReason, "410")
		return ok, fmt.Sprint(code, " ", body)
	})
	testenv.WaitFor(t, "endpoint.disabled delivered to the watcher", 30*time.Second, func() (bool, string) {
		return len(watcher.requests()) > 0, "nothing yet"
	})
	var disabledIDs []string
	for _, r := range watcher.requests() {
		var ev struct {
			Type string `json:"type"`
			Data struct {
				EndpointID string `json:"endpoint_id"`
				Reason     string `json:"reason"`
			} `json:"data"`
		}
		if err := json.Unmarshal(r.body, &ev, json.RejectUnknownMembers(false)); err != nil || ev.Type != schemas.EventEndpointDisabled ||
			ev.Data.EndpointID != goneEP || !strings.Contains(ev.Data.Reason, "410") {
			t.Errorf("the watcher got %s, want endpoint.disabled for %s", r.body, goneEP)
		}
		disabledIDs = append(disabledIDs, r.id)
	}
	watcher.checkSignatures(t, "endpoint.disabled")
	slices.Sort(disabledIDs)
	t.Logf("the watcher got %d endpoint.disabled deliveries, webhook-ids %v; the 410 endpoint got %d requests before it was disabled",
		len(disabledIDs), slices.Compact(disabledIDs), len(gone.requests()))
	// Every attempt to it ends the message (to the webhook DLQ): those
	// that reached it got the 410, later ones were not sent.
	answered410 := 0
	for _, a := range attempts.of(goneEP) {
		switch {
		case a.Outcome != schemas.OutcomeDisabled:
			t.Errorf("an attempt to the 410 endpoint: outcome %s, want %s", a.Outcome, schemas.OutcomeDisabled)
		case a.Status == http.StatusGone:
			answered410++
		case a.Status != 0:
			t.Errorf("an attempt to the 410 endpoint: status %d", a.Status)
		}
	}
	if answered410 == 0 {
		t.Error("no attempt record shows the 410")
	}
	testenv.WaitFor(t, "the endpoint.disabled delivery recorded", 10*time.Second, func() (bool, string) {
		for _, a := range attempts.of(watcherEP) {
			if a.EventType == schemas.EventEndpointDisabled && a.Outcome == schemas.OutcomeDelivered {
				return true, ""
			}
		}
		return false, fmt.Sprint(len(attempts.of(watcherEP)), " attempts")
	})
	// Once the dispatcher knows, later messages are not sent to it.
	sent := len(gone.requests())
	h.produce(orgA, "a-after-disable")
	time.Sleep(time.Second)
	if n := len(gone.requests()); n != sent {
		t.Errorf("the disabled endpoint got %d more requests", n-sent)
	}

	// 302: a failure, not followed.
	testenv.WaitFor(t, "attempts to the redirecting endpoint", 30*time.Second, func() (bool, string) {
		return len(attempts.of(redirectEP)) >= len(idsA), fmt.Sprint(len(attempts.of(redirectEP)))
	})
	for _, a := range attempts.of(redirectEP) {
		if a.Status != http.StatusFound || a.Outcome != schemas.OutcomeRetrying || !strings.Contains(a.Error, "redirects are not followed") {
			t.Errorf("an attempt to the redirecting endpoint: status %d, outcome %s, error %q; want a 302 recorded as a failure",
				a.Status, a.Outcome, a.Error)
			break
		}
	}
	for _, r := range redirect.requests() {
		if r.path != "/hook" {
			t.Fatalf("the redirect was followed to %s", r.path)
		}
	}
}

// TestWebhookSSRFWithoutAllowList: a dispatcher without --webhook-allow
// refuses endpoints on this machine, by address and by a name resolving to
// it: the receiver (on 127.0.0.1) gets no request, and each attempt record
// says the address was refused. Only loopback is ever named here; the other
// refused ranges are checked through the guard's decision in
// internal/egress.
func TestWebhookSSRFWithoutAllowList(t *testing.T) {
	t.Parallel()
	h := newHookEnv(t)
	org := h.org("ssrf")
	secret := whsig.NewSecret()
	rc := newHookReceiver(t, []whsig.Secret{secret}, nil)
	_, port, _ := strings.Cut(strings.TrimPrefix(rc.srv.URL, "http://"), ":")
	urls := map[string]string{ // endpoint -> the address refused
		h.endpoint(org, "http://127.0.0.1:"+port+"/hook", secret):          "127.0.0.1",
		h.endpoint(org, "http://localhost:"+port+"/hook", secret):          "", // 127.0.0.1 or ::1
		h.endpoint(org, "http://[::1]:"+port+"/hook", secret):              "::1",
		h.endpoint(org, "http://[::ffff:127.0.0.1]:"+port+"/hook", secret): "127.0.0.1",
	}
	attempts := h.watchAttempts()
	h.dispatcher("dispatcher", "--retry-schedule", "0s")
	h.produce(org, "ssrf-1")
	for ep, addr := range urls {
		testenv.WaitFor(t, "the attempt to "+ep, 30*time.Second, func() (bool, string) {
			return len(attempts.of(ep)) > 0, "none yet"
		})
		for _, a := range attempts.of(ep) {
			if a.Outcome != schemas.OutcomeExhausted || a.Status != 0 || !strings.Contains(a.Error, "refusing to connect to "+addr) ||
				!strings.Contains(a.Error, "(loopback address)") {
				t.Errorf("%s (%s): outcome %s, status %d, error %q; want the loopback address refused", ep, a.URL, a.Outcome, a.Status, a.Error)
			}
			t.Logf("%s: %s", a.URL, a.Error)
		}
	}
	time.Sleep(500 * time.Millisecond)
	if n := len(rc.requests()); n != 0 {
		t.Fatalf("the receiver on 127.0.0.1 got %d requests through the guard", n)
	}
}
