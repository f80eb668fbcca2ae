package ingest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/valyala/fasthttp"
	"golang.org/x/time/rate"

	"github.com/certnode/certnode/internal/apicustom"
	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/internal/whsig"
	"github.com/certnode/certnode/schemas"
)

// GET /v1/webhooks/listen streams the caller's organization's webhook
// events as Server-Sent Events, signed with a secret made for the session,
// for `certnode webhooks listen` to forward to a developer's machine (no
// public URL needed, as `stripe listen`).
//
// One tail per ingest process reads certnode.receipts and certnode.events
// from their ends, without a consumer group, and fans the records out to
// the sessions of their organization (the records' key). It starts with
// the first session and stops once no session was open for listenIdle: a
// tail reads every result of the cluster, which a process without
// listeners should not pay for, while a listener that reconnects at once
// (a dropped connection, a restarted CLI) finds it running.

const (
	// listenHeartbeat is the interval of the SSE comments that keep idle
	// connections (and the proxies on their way) open, and that notice a
	// client that left.
	listenHeartbeat = 15 * time.Second
	// listenBuffer and listenBufferBytes bound the events waiting for one
	// session; past either, its events are dropped (and it is told so),
	// never blocking the tail or other sessions.
	listenBuffer      = 256
	listenBufferBytes = 16 << 20
	// maxListenersPerOrg bounds one organization's sessions on a process,
	// so that one cannot take every slot (Config.MaxListeners).
	maxListenersPerOrg = 5
	// listenIdle is how long the tail keeps running without sessions.
	listenIdle = 30 * time.Second
	// listenStartTimeout bounds finding the topics' ends for a new tail.
	listenStartTimeout = 10 * time.Second
	// ListenSecretHeader lets a client that reconnects keep its session
	// secret (the one the ready event of its first session gave).
	ListenSecretHeader = "Certnode-Listen-Secret"
	// ListenEndpointID is the endpoint part of a listened event's message
	// id: schemas.MessageID(eventID, ListenEndpointID).
	ListenEndpointID = "listen"
)

var (
	errTooManyListeners = errors.New("too many listeners")
	errListenStopped    = errors.New("stopping")
)

// listenEvent is one event of an organization, as every session of it
// gets it (the signature is each session's own).
type listenEvent struct {
	messageID string
	typ       string
	body      []byte
}

// listenSession is one open stream.
type listenSession struct {
	org    string
	types  []string // nil: every type
	ch     chan *listenEvent
	queued atomic.Int64 // bytes in ch
	// dropped counts events not queued since the session was last told.
	dropped atomic.Int64
}

// offer queues ev unless the session's buffer is full; it never blocks.
func (ls *listenSession) offer(ev *listenEvent) bool {
	if ls.types != nil && !slices.Contains(ls.types, ev.typ) {
		return true
	}
	n := int64(len(ev.body))
	if ls.queued.Add(n) > listenBufferBytes {
		ls.queued.Add(-n)
		ls.dropped.Add(1)
		return false
	}
	select {
	case ls.ch <- ev:
		return true
	default:
		ls.queued.Add(-n)
		ls.dropped.Add(1)
		return false
	}
}

// take is called for each event taken from ch.
func (ls *listenSession) take(ev *listenEvent) { ls.queued.Add(-int64(len(ev.body))) }

// listenHub holds the sessions of this process and the tail feeding them.
type listenHub struct {
	// api gives the organizations' choice of receipts in events (nil:
	// carried).
	api         OrgAPI
	kcfg        kafka.Config
	adm         *kadm.Client // finds the topics' ends
	topics      schemas.Topics
	max         int
	maxPerOrg   int
	idle        time.Duration
	maxReceipt  int
	log         *slog.Logger
	m           *metrics
	badLog      rate.Sometimes
	startTail   func(ctx context.Context) (*hubTail, error) // tests replace it
	startMu     sync.Mutex                                  // one tail start at a time
	mu          sync.RWMutex
	sessions    map[string]map[*listenSession]struct{}
	n           int
	tail        *hubTail
	idleTimer   *time.Timer
	closed      bool
	stopIdleGen int // bumped on each join, so a stale idle timer does nothing
}

// hubTail is a running tail.
type hubTail struct {
	cl     *kgo.Client
	cancel context.CancelFunc
	done   chan struct{}
}

func (t *hubTail) stop() {
	t.cancel()
	<-t.done
	if t.cl != nil {
		t.cl.Close()
	}
}

func newListenHub(kcfg kafka.Config, adm *kadm.Client, max, maxReceipt int, m *metrics) *listenHub {
	h := &listenHub{kcfg: kcfg, adm: adm, topics: kcfg.Topics(), max: max, maxPerOrg: maxListenersPerOrg, idle: listenIdle,
		maxReceipt: maxReceipt, log: slog.With("role", "ingest", "part", "webhooks-listen"), m: m,
		badLog: rate.Sometimes{Interval: 10 * time.Second}, sessions: map[string]map[*listenSession]struct{}{}}
	h.startTail = h.startKafkaTail
	return h
}

// join opens a session for org, starting the tail if none runs.
func (h *listenHub) join(ctx context.Context, org string, types []string) (*listenSession, error) {
	h.startMu.Lock()
	defer h.startMu.Unlock()
	h.mu.Lock()
	switch {
	case h.closed:
		h.mu.Unlock()
		return nil, errListenStopped
	case h.n >= h.max || len(h.sessions[org]) >= h.maxPerOrg:
		h.mu.Unlock()
		return nil, errTooManyListeners
	}
	running := h.tail != nil
	h.mu.Unlock()
	if !running {
		sctx, cancel := context.WithTimeout(ctx, listenStartTimeout)
		tail, err := h.startTail(sctx)
		cancel()
		if err != nil {
			return nil, err
		}
		h.mu.Lock()
		if h.closed {
			h.mu.Unlock()
			tail.stop()
			return nil, errListenStopped
		}
		h.tail = tail
		h.mu.Unlock()
	}
	ls := &listenSession{org: org, types: types, ch: make(chan *listenEvent, listenBuffer)}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.sessions[org] == nil {
		h.sessions[org] = map[*listenSession]struct{}{}
	}
	h.sessions[org][ls] = struct{}{}
	h.n++
	h.stopIdleGen++
	if h.idleTimer != nil {
		h.idleTimer.Stop()
		h.idleTimer = nil
	}
	h.m.listeners.Set(float64(h.n))
	return ls, nil
}

// leave closes a session; the tail stops once none opened for h.idle.
func (h *listenHub) leave(ls *listenSession) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.sessions[ls.org][ls]; !ok {
		return
	}
	delete(h.sessions[ls.org], ls)
	if len(h.sessions[ls.org]) == 0 {
		delete(h.sessions, ls.org)
	}
	h.n--
	h.m.listeners.Set(float64(h.n))
	if h.n == 0 && h.tail != nil && !h.closed {
		gen := h.stopIdleGen
		h.idleTimer = time.AfterFunc(h.idle, func() { h.stopIfIdle(gen) })
	}
}

func (h *listenHub) stopIfIdle(gen int) {
	h.mu.Lock()
	if h.n > 0 || h.tail == nil || gen != h.stopIdleGen {
		h.mu.Unlock()
		return
	}
	tail := h.tail
	h.tail, h.idleTimer = nil, nil
	h.mu.Unlock()
	tail.stop()
}

// running reports whether a tail runs (for tests).
func (h *listenHub) running() bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.tail != nil
}

// close stops the tail; sessions end as the server stops.
func (h *listenHub) close() {
	h.mu.Lock()
	h.closed = true
	tail := h.tail
	h.tail = nil
	if h.idleTimer != nil {
		h.idleTimer.Stop()
	}
	h.mu.Unlock()
	if tail != nil {
		tail.stop()
	}
}

// startKafkaTail reads both topics from their current ends: their ends
// are found first, so every record written after join returns is seen.
func (h *listenHub) startKafkaTail(ctx context.Context) (*hubTail, error) {
	parts := map[string]map[int32]kgo.Offset{}
	for _, topic := range []string{h.topics.Receipts, h.topics.Events} {
		ends, err := endOffsets(ctx, h.adm, topic)
		if err != nil {
			return nil, err
		}
		parts[topic] = map[int32]kgo.Offset{}
		for p, o := range ends {
			parts[topic][p] = kgo.NewOffset().At(o)
		}
	}
	cl, err := kafka.NewClient(h.kcfg, kgo.ConsumePartitions(parts), kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		return nil, err
	}
	tctx, cancel := context.WithCancel(context.Background())
	t := &hubTail{cl: cl, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(t.done)
		for tctx.Err() == nil {
			fetches := cl.PollFetches(tctx)
			if fetches.IsClientClosed() {
				return
			}
			fetches.EachError(func(topic string, p int32, err error) {
				if tctx.Err() == nil && !errors.Is(err, context.Canceled) {
					h.badLog.Do(func() { h.log.Warn("fetch error", "topic", topic, "partition", p, "err", err) })
				}
			})
			fetches.EachRecord(h.fanOut)
		}
	}()
	return t, nil
}

// fanOut offers a record's event to the sessions of its organization.
// Records of organizations without a session are not decoded.
func (h *listenHub) fanOut(rec *kgo.Record) {
	org := string(rec.Key)
	h.mu.RLock()
	n := len(h.sessions[org])
	h.mu.RUnlock()
	if n == 0 {
		return
	}
	ev, err := h.event(rec, org)
	if err != nil {
		h.badLog.Do(func() {
			h.log.Warn("record not listened to", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "err", err)
		})
		return
	}
	if ev == nil {
		return
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	for ls := range h.sessions[org] {
		if !ls.offer(ev) {
			h.m.listenDropped.Inc()
		}
	}
}

// event is the event a record of org makes (nil: none).
func (h *listenHub) event(rec *kgo.Record, org string) (*listenEvent, error) {
	var eventID string
	var we *schemas.WebhookEvent
	switch rec.Topic {
	case h.topics.Receipts:
		res, err := schemas.DecodeResult(rec.Value)
		if err != nil {
			return nil, err
		}
		if res.Tenant != org {
			return nil, fmt.Errorf("a result of %q keyed %q", res.Tenant, org)
		}
		ev, ok, err := schemas.EventForResult(res, h.receiptLimit(org))
		if err != nil || !ok {
			return nil, err
		}
		eventID, we = schemas.ResultEventID(res), ev
	case h.topics.Events:
		r, err := schemas.DecodeEventRecord(rec.Value)
		if err != nil {
			return nil, err
		}
		if r.Org != org {
			return nil, fmt.Errorf("an event of %q keyed %q", r.Org, org)
		}
		eventID, we = r.ID, &r.Event
	default:
		return nil, nil
	}
	body, err := json.Marshal(we)
	if err != nil {
		return nil, err
	}
	return &listenEvent{messageID: schemas.MessageID(eventID, ListenEndpointID), typ: we.Type, body: body}, nil
}

// listenWebhook is the data of an SSE `webhook` event: a delivery as the
// dispatcher would make it, signed with the session's secret. Body is
// exactly the bytes signed.
type listenWebhook struct {
	ID        string `json:"id"`
	Timestamp int64  `json:"timestamp"`
	Signature string `json:"signature"`
	Type      string `json:"type"`
	Body      string `json:"body"`
}

// writeSSE writes one Server-Sent Event: each line of data (JSON has none
// but its own) gets its "data:" field, and a blank line ends the event.
func writeSSE(w *bufio.Writer, event, id string, data []byte) {
	if event != "" {
		w.WriteString("event: " + event + "\n")
	}
	if id != "" {
		w.WriteString("id: " + id + "\n")
	}
	for _, line := range strings.Split(strings.ReplaceAll(string(data), "\r\n", "\n"), "\n") {
		w.WriteString("data: " + strings.TrimSuffix(line, "\r") + "\n")
	}
	w.WriteString("\n")
}

// listenTypes reads ?events=a,b (none: every type), answering 400 itself.
func listenTypes(ctx *fasthttp.RequestCtx) ([]string, bool) {
	v := string(ctx.QueryArgs().Peek("events"))
	if v == "" {
		return nil, true
	}
	var types []string
	for _, t := range strings.Split(v, ",") {
		t = strings.TrimSpace(t)
		if !slices.Contains(schemas.EventTypes, t) {
			apiError(ctx, fasthttp.StatusBadRequest, "invalid_events",
				fmt.Sprintf("events must be a comma-separated list of %s; %q is not one", strings.Join(schemas.EventTypes, ", "), t))
			return nil, false
		}
		if !slices.Contains(types, t) {
			types = append(types, t)
		}
	}
	return types, true
}

func (s *Server) listen(ctx *fasthttp.RequestCtx, t *tenants.Tenant, _ []string) {
	types, ok := listenTypes(ctx)
	if !ok {
		return
	}
	secret := whsig.NewSecret()
	if h := ctx.Request.Header.Peek(ListenSecretHeader); len(h) > 0 {
		sec, err := whsig.ParseSecret(string(h))
		if err != nil {
			apiError(ctx, fasthttp.StatusBadRequest, "invalid_secret", ListenSecretHeader+": "+err.Error())
			return
		}
		secret = sec
	}
	if stopping(s.stopping) {
		apiError(ctx, fasthttp.StatusServiceUnavailable, "stopping", "this server is stopping; reconnect")
		return
	}
	ls, err := s.hub.join(s.life, t.ID, types)
	switch {
	case errors.Is(err, errTooManyListeners):
		ctx.Response.Header.Set("Retry-After", "5")
		apiError(ctx, fasthttp.StatusTooManyRequests, "too_many_listeners",
			fmt.Sprintf("at most %d listeners per server, %d per organization, at once; retry later", s.cfg.MaxListeners, maxListenersPerOrg))
		return
	case errors.Is(err, errListenStopped):
		apiError(ctx, fasthttp.StatusServiceUnavailable, "stopping", "this server is stopping; reconnect")
		return
	case err != nil:
		s.log.Warn("webhooks listen: the tail did not start", "err", err)
		apiError(ctx, fasthttp.StatusServiceUnavailable, "kafka_unavailable", "the events cannot be read now; retry later")
		return
	}
	ctx.SetContentType("text/event-stream")
	ctx.Response.Header.Set("Cache-Control", "no-store")
	ctx.Response.Header.Set("X-Accel-Buffering", "no")
	if ctx.IsHead() {
		s.hub.leave(ls)
		return
	}
	gone := watchClient(ctx.Conn())
	ctx.SetConnectionClose() // the watcher read from the connection
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		defer s.hub.leave(ls)
		defer gone.stop()
		deadline := time.NewTimer(maxStream)
		defer deadline.Stop()
		heartbeat := time.NewTicker(s.listenHeartbeat)
		defer heartbeat.Stop()
		ready, _ := json.Marshal(map[string]string{"secret": secret.Encode()})
		writeSSE(w, "ready", "", ready)
		if w.Flush() != nil {
			return
		}
		for {
			select {
			case ev := <-ls.ch:
				ls.take(ev)
				now := time.Now()
				data, _ := json.Marshal(listenWebhook{ID: ev.messageID, Timestamp: now.Unix(),
					Signature: whsig.Sign(ev.messageID, now, ev.body, secret), Type: ev.typ, Body: string(ev.body)})
				writeSSE(w, "webhook", ev.messageID, data)
			case <-heartbeat.C:
				w.WriteString(": heartbeat\n\n")
			case <-gone.ch:
				return
			case <-deadline.C:
				return
			case <-s.stopping:
				return
			}
			if n := ls.dropped.Swap(0); n > 0 {
				data, _ := json.Marshal(map[string]int64{"dropped": n})
				writeSSE(w, "dropped", "", data)
			}
			if w.Flush() != nil {
				return
			}
		}
	})
}

// receiptLimit is the largest receipt org's listened events carry: none
// when it leaves receipts out of its events, as its endpoints get them.
func (h *listenHub) receiptLimit(org string) int {
	if h.api != nil {
		if a, ok := h.api.APISettings(org); ok && a.WebhookReceipt == apicustom.ReceiptOmit {
			return 0
		}
	}
	return h.maxReceipt
}
