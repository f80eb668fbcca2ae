package webhook

import (
	"context"
	"crypto/rand"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/text"
	"github.com/certnode/certnode/internal/whsig"
	"github.com/certnode/certnode/schemas"
)

// queue is one endpoint's deliveries: its own FIFO and concurrency, so
// that it never holds up another endpoint.
type queue struct {
	id       string
	ordered  bool
	items    []*delivery
	inflight int
	// limit is the attempts allowed in flight now: halved when the
	// endpoint asks to slow down (429, 502, 503, 504), grown back by one
	// per success.
	limit       int
	pausedUntil time.Time
	slow        time.Duration // the current slow-down pause
	timer       *time.Timer
}

type delivery struct {
	msg    *schemas.WebhookMessage
	settle func()
	since  time.Time // queued at
}

// enqueue queues a message for its endpoint; settle is called once it is
// delivered or handed back to Kafka.
func (d *Dispatcher) enqueue(m *schemas.WebhookMessage, settle func()) {
	d.pending.Add(1)
	dv := &delivery{msg: m, since: d.now(), settle: func() { d.pending.Add(-1); settle() }}
	ep, ok := d.lookup(m.Org, m.EndpointID)
	if !ok {
		d.m.dropped.WithLabelValues("endpoint_deleted").Inc()
		dv.settle()
		return
	}
	d.mu.Lock()
	q := d.eps[m.EndpointID]
	if q == nil {
		q = &queue{id: m.EndpointID, limit: d.cfg.Concurrency}
		d.eps[m.EndpointID] = q
	}
	if q.ordered = ep.Ordered; q.ordered {
		q.limit = 1
	}
	// A full queue takes no more, ordered or not: what waits in memory
	// for one endpoint stays bounded, and so what stops reading for all.
	if len(q.items) >= d.cfg.QueueLimit {
		due := d.parkedDue(q)
		d.mu.Unlock()
		d.park(dv, due)
		return
	}
	q.items = append(q.items, dv)
	d.pump(q)
	d.mu.Unlock()
}

// lookup finds an endpoint of org; false when it was deleted.
func (d *Dispatcher) lookup(org, id string) (*Endpoint, bool) {
	// The directory has its state: take waited for it.
	eps, _ := d.dir.Endpoints(org)
	for _, ep := range eps {
		if ep.ID == id {
			return ep, true
		}
	}
	return nil, false
}

// pump starts the attempts q allows now; callers hold d.mu.
func (d *Dispatcher) pump(q *queue) {
	now := d.now()
	for q.inflight < q.limit && len(q.items) > 0 {
		wait := q.pausedUntil.Sub(now)
		if q.ordered {
			// An ordered endpoint's head may be a retry waiting in place.
			wait = max(wait, q.items[0].msg.DueAt.Sub(now))
		}
		if wait > 0 {
			if q.timer == nil {
				q.timer = time.AfterFunc(wait, func() {
					d.mu.Lock()
					defer d.mu.Unlock()
					q.timer = nil
					d.pump(q)
				})
			}
			return
		}
		dv := q.items[0]
		q.items[0] = nil
		q.items = q.items[1:]
		q.inflight++
		d.flight.Add(1)
		go d.attempt(q, dv)
	}
}

// sweepLoop parks what has waited too long behind a slow endpoint, so the
// partitions it came from commit and other endpoints' messages go on.
func (d *Dispatcher) sweepLoop(ctx context.Context) {
	tick := time.NewTicker(min(time.Second, d.cfg.ParkAfter/2))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		type parked struct {
			dv  *delivery
			due time.Time
		}
		var out []parked
		d.mu.Lock()
		limit := d.now().Add(-d.cfg.ParkAfter)
		for _, q := range d.eps {
			if q.ordered {
				continue
			}
			n := 0
			for n < len(q.items) && q.items[n].since.Before(limit) {
				out = append(out, parked{q.items[n], d.parkedDue(q)})
				q.items[n] = nil
				n++
			}
			q.items = q.items[n:]
		}
		d.mu.Unlock()
		// Produced outside the lock: a full producer buffer blocks, and
		// the acknowledgements that free it need the lock.
		for _, p := range out {
			d.park(p.dv, p.due)
		}
	}
}

// parkedDue is when a message parked now comes back: after ParkAfter (a
// slow endpoint is not asked again at once), or when the endpoint's pause
// ends; callers hold d.mu.
func (d *Dispatcher) parkedDue(q *queue) time.Time {
	return maxTime(d.now().Add(d.cfg.ParkAfter), q.pausedUntil)
}

// park hands a message back to Kafka without an attempt, due at due.
func (d *Dispatcher) park(dv *delivery, due time.Time) {
	d.m.parked.Inc()
	m := *dv.msg
	m.DueAt = due
	d.delayMessage(&m, dv.settle)
}

// delayMessage puts m in the delay topic for the time until it is due.
func (d *Dispatcher) delayMessage(m *schemas.WebhookMessage, then func()) {
	val, _ := json.Marshal(m) // a message always encodes
	tier := schemas.DelayTier(m.DueAt.Sub(d.now()))
	d.send(&kgo.Record{Topic: d.topics.WebhookDelays[tier], Key: []byte(m.EndpointID), Value: val}, then)
}

// outcome is what an attempt got back.
type outcome struct {
	status     int
	latency    time.Duration
	headers    map[string]string
	body       string
	err        string
	retryAfter time.Duration
}

func (o *outcome) ok() bool { return o.err == "" && o.status >= 200 && o.status < 300 }

// slowDown: answers asking the sender to back off.
func (o *outcome) slowDown() bool {
	if o.status == 0 {
		return true // no answer: a timeout, a refused or reset connection
	}
	switch o.status {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// attempt sends one message and decides what comes next.
func (d *Dispatcher) attempt(q *queue, dv *delivery) {
	defer d.flight.Add(-1)
	m := dv.msg
	ep, ok := d.lookup(m.Org, m.EndpointID)
	if !ok {
		d.m.dropped.WithLabelValues("endpoint_deleted").Inc()
		dv.settle()
		d.finish(q, nil, true)
		return
	}
	now := d.now()
	rec := &schemas.WebhookAttempt{V: schemas.EnvelopeVersion, ID: newAttemptID(), MessageID: m.ID, Org: m.Org,
		EndpointID: m.EndpointID, EventType: m.EventType, EventID: m.EventID, MessageCreatedAt: m.CreatedAt,
		Attempt: m.Attempt + 1, Redelivery: m.Redelivery, Round: m.Round, At: now.UTC(), URL: ep.URL}
	if m.Attempt == 0 {
		rec.Body = m.Body
	}
	if !ep.Enabled {
		rec.Outcome, rec.Error = schemas.OutcomeDisabled, "the endpoint is disabled"
		d.dead(m, rec, dv.settle)
		d.finish(q, nil, true)
		return
	}
	if m.Attempt == 0 && !m.Redelivery {
		d.m.firstAttempt.Observe(max(0, now.Sub(m.CreatedAt).Seconds()))
	}
	o := d.post(ep, m, now)
	if d.ctx.Err() != nil {
		// Stopping cut the attempt short: it says nothing of the endpoint,
		// and the message, unsettled, is read again by the next owner.
		d.finish(q, nil, false)
		return
	}
	d.m.attemptSeconds.Observe(o.latency.Seconds())
	rec.Status, rec.LatencyMillis, rec.ResponseHeaders, rec.ResponseBody, rec.Error =
		o.status, o.latency.Milliseconds(), o.headers, o.body, o.err
	switch {
	case o.ok():
		rec.Outcome = schemas.OutcomeDelivered
		d.m.deliveries.WithLabelValues(rec.Outcome).Inc()
		d.record(rec, dv.settle)
		d.healthy(ep)
		d.finish(q, &o, true)
		return
	case o.status == http.StatusGone:
		rec.Outcome, rec.Error = schemas.OutcomeDisabled, "the endpoint answered 410 Gone: disabled"
		d.dead(m, rec, dv.settle)
		d.gone(ep)
		d.finish(q, &o, false)
		return
	}
	d.failing(ep, now)
	sched := d.schedule(m.Org)
	n := m.Attempt + 1
	if n >= len(sched) {
		rec.Outcome = schemas.OutcomeExhausted
		d.dead(m, rec, dv.settle)
		d.finish(q, &o, false)
		return
	}
	wait := d.jitter(sched[n])
	if o.retryAfter > 0 {
		wait = max(wait, min(o.retryAfter, d.cfg.MaxRetryAfter))
	}
	next := *m
	next.Attempt, next.DueAt = n, now.Add(wait)
	rec.Outcome, rec.NextAttemptAt = schemas.OutcomeRetrying, next.DueAt.UTC()
	d.m.deliveries.WithLabelValues(rec.Outcome).Inc()
	d.mu.Lock()
	ordered := q.ordered
	if ordered {
		// Retried in place: later messages wait behind it, and its record
		// stays uncommitted until it is settled.
		dv.msg = &next
		q.items = append([]*delivery{dv}, q.items...)
	}
	d.mu.Unlock()
	if ordered {
		rec.Held = true
		d.record(rec, nil)
	} else {
		// The attempt is recorded once the retry is in Kafka: a record
		// says the message is taken care of (see seen).
		d.delayMessage(&next, func() { d.record(rec, dv.settle) })
	}
	d.finish(q, &o, false)
}

// finish ends an attempt: the endpoint's concurrency follows its answers.
func (d *Dispatcher) finish(q *queue, o *outcome, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	q.inflight--
	switch {
	case ok && o != nil:
		q.limit, q.slow = min(q.limit+1, d.cfg.Concurrency), 0
	case o != nil && o.slowDown():
		q.slow = min(max(2*q.slow, time.Second), time.Minute)
		q.limit = max(1, q.limit/2)
		q.pausedUntil = d.now().Add(max(q.slow, min(o.retryAfter, d.cfg.MaxRetryAfter)))
	}
	if q.ordered {
		q.limit = 1
	}
	d.pump(q)
}

// dead sends a message to the webhook DLQ, then records its last attempt.
func (d *Dispatcher) dead(m *schemas.WebhookMessage, rec *schemas.WebhookAttempt, settle func()) {
	d.m.deliveries.WithLabelValues(rec.Outcome).Inc()
	last := *m
	last.Attempt = rec.Attempt
	val, _ := json.Marshal(&last)
	d.send(&kgo.Record{Topic: d.topics.WebhookDLQ, Key: []byte(m.EndpointID), Value: val,
		Headers: []kgo.RecordHeader{{Key: schemas.HeaderDLQReason, Value: []byte(rec.Outcome)}}},
		func() { d.record(rec, settle) })
}

// record produces an attempt record, then calls then (may be nil).
func (d *Dispatcher) record(a *schemas.WebhookAttempt, then func()) {
	val, _ := json.Marshal(a) // an attempt always encodes
	d.send(&kgo.Record{Topic: d.topics.WebhookAttempts, Key: []byte(a.Org), Value: val}, func() {
		d.seen.add(a, d.now())
		if then != nil {
			then()
		}
	})
}

// schedule is the organization's retry schedule, or the default.
func (d *Dispatcher) schedule(org string) []time.Duration {
	if s := d.dir.RetrySchedule(org); len(s) > 0 {
		return s
	}
	return d.cfg.Schedule
}

// jitter spreads a delay by up to ±Jitter of itself, so that messages
// failing together do not all come back together.
func (d *Dispatcher) jitter(w time.Duration) time.Duration {
	if d.cfg.Jitter == 0 || w == 0 {
		return w
	}
	f := 1 + d.cfg.Jitter*(2*mrand.Float64()-1)
	return time.Duration(math.Round(float64(w) * f))
}

// post makes one attempt: the body exactly as stored, signed with every
// live secret of the endpoint (several during a rotation).
func (d *Dispatcher) post(ep *Endpoint, m *schemas.WebhookMessage, now time.Time) outcome {
	var keys []whsig.Secret
	for _, s := range ep.Secrets {
		if s.ExpiresAt.IsZero() || now.Before(s.ExpiresAt) {
			keys = append(keys, s.Key)
		}
	}
	resp, err := whsig.Send(d.ctx, d.http, whsig.Delivery{URL: ep.URL, ID: m.ID, At: now, Body: m.Body, Headers: ep.Headers, Secrets: keys})
	o := outcome{status: resp.Status, latency: resp.Latency, headers: resp.Headers, body: resp.Body}
	switch {
	case err != nil:
		o.err = err.Error()
	case resp.Status >= 300 && resp.Status < 400:
		o.err = "redirects are not followed (Location: " + text.Clip(resp.Header.Get("Location"), 200) + ")"
	}
	if err == nil {
		o.retryAfter = retryAfter(resp.Header.Get("Retry-After"), now)
	}
	return o
}

// retryAfter reads a Retry-After header: seconds or an HTTP date.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && s > 0 {
		return time.Duration(min(s, 1<<20)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func newAttemptID() string {
	var b [16]byte
	rand.Read(b[:])
	return fmt.Sprintf("att_%x", b)
}
