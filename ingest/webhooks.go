package ingest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/valyala/fasthttp"
	"golang.org/x/time/rate"

	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
)

// DeliveryReader reads an organization's webhook deliveries and their
// attempts (deliveries.Reader, on ClickHouse). The routes always pass the
// caller's organization, the only one a key may read; a delivery of
// another organization is one the reader does not find.
type DeliveryReader interface {
	// List is one page of deliveries, newest first. A cursor the reader
	// cannot read fails with an error wrapping schemas.ErrBadCursor.
	List(ctx context.Context, org string, q schemas.DeliveryQuery) (*schemas.DeliveryPage, error)
	// Get is one delivery with its Body and AttemptList.
	Get(ctx context.Context, org, messageID string) (*schemas.WebhookDelivery, bool, error)
	// Failed lists an endpoint's deliveries created in [since, until),
	// oldest first, with their Body: the failed ones, or every one with
	// all; at most limit.
	Failed(ctx context.Context, org, endpointID string, since, until time.Time, all bool, limit int) ([]schemas.WebhookDelivery, error)
}

// EndpointInfo is what ingest needs of a webhook endpoint.
type EndpointInfo struct {
	ID         string
	EventTypes []string // none: every type
	Enabled    bool
}

// EndpointSource gives an organization's webhook endpoints (the
// coordinator's Replica, from its copy of the state).
type EndpointSource interface {
	Endpoints(org string) []EndpointInfo
}

const (
	// defaultDeliveryPage is a page of deliveries without ?limit.
	defaultDeliveryPage = 50
	// maxReplay bounds the messages one replay queues; the answer says
	// whether more matched, and from when to go on.
	maxReplay = 10_000
	// replayBatch bounds the records produced at once by a replay.
	replayBatch = 500
	// defaultReplaySpan is a replay's window without ?since.
	defaultReplaySpan = 24 * time.Hour
	// maxCursorBytes bounds ?cursor; the reader's cursors are far shorter.
	maxCursorBytes = 1024
	// maxTriggerBody bounds POST /v1/webhooks/trigger's body.
	maxTriggerBody = 64 << 10
	// Webhook writes (trigger, redeliver, replay) of one organization are
	// held to webhookWriteRate per second on each ingest process, with
	// bursts of webhookWriteBurst; a replay costs replayCost of them.
	webhookWriteRate  = 10
	webhookWriteBurst = 20
	replayCost        = 10
	// maxWriteLimiters bounds the organizations whose write rate is
	// remembered; past it the memory starts over.
	maxWriteLimiters = 10_000
)

const (
	noSuchDelivery = "no such delivery for this organization"
	noSuchEndpoint = "no such webhook endpoint for this organization"
)

// validEndpointID reports whether id can be a webhook endpoint's id (the
// coordinator's ids are "ep_" and lower-case base32).
func validEndpointID(id string) bool {
	return strings.HasPrefix(id, "ep_") && len(id) > 3 && len(id) <= schemas.MaxIDBytes && idChars(id)
}

// validMessageID reports whether id can be a message id (schemas.MessageID).
func validMessageID(id string) bool {
	return strings.HasPrefix(id, "msg_") && len(id) > 4 && len(id) <= schemas.MaxIDBytes && idChars(id)
}

func idChars(id string) bool {
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// timeParam reads an optional RFC 3339 query parameter, answering 400
// invalid_<name> itself.
func timeParam(ctx *fasthttp.RequestCtx, name string, t *time.Time) bool {
	v := ctx.QueryArgs().Peek(name)
	if v == nil {
		return true
	}
	p, err := time.Parse(time.RFC3339Nano, string(v))
	if err != nil {
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_"+name, name+" must be an RFC 3339 time, such as 2026-05-01T00:00:00Z")
		return false
	}
	*t = p.UTC()
	return true
}

// deliveryQuery reads GET /v1/webhooks/deliveries' parameters, answering
// 400 itself: endpoint, event_type, status, since and until (RFC 3339),
// cursor (the next_cursor of the page before) and limit (1 to 250,
// default 50).
func deliveryQuery(ctx *fasthttp.RequestCtx) (schemas.DeliveryQuery, bool) {
	args := ctx.QueryArgs()
	q := schemas.DeliveryQuery{Endpoint: string(args.Peek("endpoint")), EventType: string(args.Peek("event_type")),
		Status: string(args.Peek("status")), Cursor: string(args.Peek("cursor")), Limit: defaultDeliveryPage}
	switch {
	case args.Has("endpoint") && !validEndpointID(q.Endpoint):
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_endpoint", "endpoint must be a webhook endpoint id (ep_...)")
		return q, false
	case args.Has("event_type") && !slices.Contains(schemas.EventTypes, q.EventType):
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_event_type", "event_type must be one of "+strings.Join(schemas.EventTypes, ", "))
		return q, false
	case args.Has("status") && q.Status != schemas.DeliveryDelivered && q.Status != schemas.DeliveryPending && q.Status != schemas.DeliveryFailed:
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_status", "status must be delivered, pending or failed")
		return q, false
	case args.Has("cursor") && (q.Cursor == "" || len(q.Cursor) > maxCursorBytes):
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_cursor", "cursor must be the next_cursor of a previous page")
		return q, false
	}
	if v := args.Peek("limit"); v != nil {
		n, err := strconv.Atoi(string(v))
		if err != nil || n < 1 || n > schemas.MaxDeliveryPage {
			apiError(ctx, fasthttp.StatusBadRequest, "invalid_limit", fmt.Sprintf("limit must be from 1 to %d", schemas.MaxDeliveryPage))
			return q, false
		}
		q.Limit = n
	}
	if !timeParam(ctx, "since", &q.Since) || !timeParam(ctx, "until", &q.Until) {
		return q, false
	}
	if !q.Since.IsZero() && !q.Until.IsZero() && !q.Since.Before(q.Until) {
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_range", "since must be before until")
		return q, false
	}
	return q, true
}

// deliveriesReady answers 503 when no deliveries store is configured, or,
// with endpoints, when this server does not know the endpoints.
func (s *Server) deliveriesReady(ctx *fasthttp.RequestCtx, endpoints bool) bool {
	switch {
	case s.deps.Deliveries == nil:
		apiError(ctx, fasthttp.StatusServiceUnavailable, "deliveries_unavailable", "the webhook deliveries store (ClickHouse) is not configured on this server")
		return false
	case endpoints:
		return s.endpointsReady(ctx)
	}
	return true
}

func (s *Server) endpointsReady(ctx *fasthttp.RequestCtx) bool {
	if s.deps.Endpoints == nil {
		apiError(ctx, fasthttp.StatusServiceUnavailable, "endpoints_unavailable", "this server does not know the webhook endpoints (no coordinator)")
		return false
	}
	return true
}

// deliveriesFailed answers 503 when a read of the deliveries failed.
func (s *Server) deliveriesFailed(ctx *fasthttp.RequestCtx, err error) {
	s.log.Warn("webhook deliveries store", "err", err)
	apiError(ctx, fasthttp.StatusServiceUnavailable, "deliveries_unavailable", "the webhook deliveries store is unavailable; retry later")
}

// endpoint finds one of the organization's endpoints.
func (s *Server) endpoint(org, id string) (EndpointInfo, bool) {
	for _, e := range s.deps.Endpoints.Endpoints(org) {
		if e.ID == id {
			return e, true
		}
	}
	return EndpointInfo{}, false
}

func (s *Server) listDeliveries(ctx *fasthttp.RequestCtx, t *tenants.Tenant, _ []string) {
	q, ok := deliveryQuery(ctx)
	if !ok || !s.deliveriesReady(ctx, false) {
		return
	}
	page, err := s.deps.Deliveries.List(s.life, t.ID, q)
	switch {
	case errors.Is(err, schemas.ErrBadCursor):
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_cursor", "cursor must be the next_cursor of a previous page of the same query")
	case err != nil:
		s.deliveriesFailed(ctx, err)
	default:
		if page.Data == nil {
			page.Data = []schemas.WebhookDelivery{}
		}
		for i := range page.Data { // a list shows neither bodies nor attempts
			page.Data[i].Body, page.Data[i].AttemptList = nil, nil
		}
		writeJSON(ctx, fasthttp.StatusOK, page)
	}
}

// delivery reads the organization's delivery named by the path, answering
// 404 (the same for another organization's id as for an unknown one) or
// 503 itself.
func (s *Server) delivery(ctx *fasthttp.RequestCtx, org, id string) (*schemas.WebhookDelivery, bool) {
	if !validMessageID(id) {
		apiError(ctx, fasthttp.StatusNotFound, "not_found", noSuchDelivery)
		return nil, false
	}
	d, found, err := s.deps.Deliveries.Get(s.life, org, id)
	switch {
	case err != nil:
		s.deliveriesFailed(ctx, err)
		return nil, false
	case !found || d == nil || d.ID != id:
		apiError(ctx, fasthttp.StatusNotFound, "not_found", noSuchDelivery)
		return nil, false
	}
	return d, true
}

func (s *Server) getDelivery(ctx *fasthttp.RequestCtx, t *tenants.Tenant, params []string) {
	if !s.deliveriesReady(ctx, false) {
		return
	}
	if d, ok := s.delivery(ctx, t.ID, params[0]); ok {
		for i := range d.AttemptList {
			a := &d.AttemptList[i]
			// The delivery's body is shown once, beside the attempts.
			a.V, a.Org, a.Body = schemas.EnvelopeVersion, t.ID, nil
		}
		writeJSON(ctx, fasthttp.StatusOK, d)
	}
}

// usableEndpoint answers 409 itself when a redelivery to e could not be
// made: a disabled endpoint would park it in the webhook DLQ at once.
func usableEndpoint(ctx *fasthttp.RequestCtx, e EndpointInfo) bool {
	if !e.Enabled {
		apiError(ctx, fasthttp.StatusConflict, "endpoint_disabled", "the endpoint "+e.ID+" is disabled; enable it first")
		return false
	}
	return true
}

// redeliveryMessage is a new round of d for its endpoint: the same id,
// event and body, due now.
func redeliveryMessage(org string, d *schemas.WebhookDelivery, now time.Time) *schemas.WebhookMessage {
	return &schemas.WebhookMessage{V: schemas.EnvelopeVersion, ID: d.ID, Org: org, EndpointID: d.EndpointID,
		EventType: d.EventType, EventID: d.EventID, Body: d.Body, CreatedAt: d.CreatedAt.UTC(), Attempt: 0,
		DueAt: now.UTC(), Redelivery: true, Round: newID("rd_")}
}

// webhookRecord is the certnode.webhooks record of m, keyed by endpoint.
func (s *Server) webhookRecord(m *schemas.WebhookMessage) (*kgo.Record, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	val, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return &kgo.Record{Topic: s.cfg.Kafka.Topics().Webhooks, Key: []byte(m.EndpointID), Value: val,
		Headers: []kgo.RecordHeader{{Key: schemas.HeaderIngestMAC, Value: s.deps.MAC.Header(val)}}}, nil
}

// produceAll writes records with acks=all, answering 503 itself when the
// broker did not acknowledge them all.
func (s *Server) produceAll(ctx *fasthttp.RequestCtx, org string, recs []*kgo.Record) bool {
	pctx, cancel := context.WithTimeout(s.life, s.cfg.ProduceTimeout)
	defer cancel()
	if err := s.prod.ProduceSync(pctx, recs...).FirstErr(); err != nil {
		s.m.produced.WithLabelValues("failed").Inc()
		s.log.Warn("produce failed", "tenant", org, "err", err)
		apiError(ctx, fasthttp.StatusServiceUnavailable, "kafka_unavailable", "nothing was queued: the message broker is unavailable; retry later")
		return false
	}
	return true
}

func (s *Server) redeliver(ctx *fasthttp.RequestCtx, t *tenants.Tenant, params []string) {
	if !s.deliveriesReady(ctx, true) {
		return
	}
	d, ok := s.delivery(ctx, t.ID, params[0])
	if !ok {
		return
	}
	e, found := s.endpoint(t.ID, d.EndpointID)
	switch {
	case !found:
		apiError(ctx, fasthttp.StatusConflict, "endpoint_deleted", "the delivery's endpoint "+d.EndpointID+" no longer exists")
		return
	case !usableEndpoint(ctx, e):
		return
	case !schemas.Present(d.Body):
		apiError(ctx, fasthttp.StatusConflict, "body_unavailable", "the delivery's body is no longer stored; it cannot be sent again")
		return
	case !s.writeAllowed(ctx, t.ID, 1):
		return
	}
	rec, err := s.webhookRecord(redeliveryMessage(t.ID, d, time.Now()))
	if err != nil {
		s.log.Error("redeliver: stored delivery is not a valid message", "tenant", t.ID, "id", d.ID, "err", err)
		apiError(ctx, fasthttp.StatusInternalServerError, "internal", "the stored delivery cannot be sent again")
		return
	}
	if s.produceAll(ctx, t.ID, []*kgo.Record{rec}) {
		s.m.produced.WithLabelValues("ok").Inc()
		writeJSON(ctx, fasthttp.StatusAccepted, struct {
			MessageID  string `json:"message_id"`
			EndpointID string `json:"endpoint_id"`
		}{d.ID, d.EndpointID})
	}
}

// replayAnswer is POST /v1/webhooks/endpoints/{id}/replay's answer.
type replayAnswer struct {
	EndpointID string `json:"endpoint_id"`
	Queued     int    `json:"queued"`
	// HasMore: more deliveries matched than one replay queues; replay
	// again from NextSince.
	HasMore   bool      `json:"has_more"`
	NextSince time.Time `json:"next_since,omitzero"`
}

// replay queues a new round of an endpoint's failed deliveries (every
// delivery with all=true) created in [since, until): by default the last
// 24 hours.
func (s *Server) replay(ctx *fasthttp.RequestCtx, t *tenants.Tenant, params []string) {
	now := time.Now().UTC()
	until := now
	var since time.Time
	if !timeParam(ctx, "since", &since) || !timeParam(ctx, "until", &until) {
		return
	}
	if since.IsZero() {
		since = until.Add(-defaultReplaySpan)
	}
	if !since.Before(until) {
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_range", "since must be before until")
		return
	}
	all := false
	if v := ctx.QueryArgs().Peek("all"); v != nil {
		b, err := strconv.ParseBool(string(v))
		if err != nil {
			apiError(ctx, fasthttp.StatusBadRequest, "invalid_all", "all must be true or false")
			return
		}
		all = b
	}
	if !s.deliveriesReady(ctx, true) {
		return
	}
	id := params[0]
	e, found := EndpointInfo{}, false
	if validEndpointID(id) {
		e, found = s.endpoint(t.ID, id)
	}
	if !found {
		apiError(ctx, fasthttp.StatusNotFound, "not_found", noSuchEndpoint)
		return
	}
	if !usableEndpoint(ctx, e) || !s.writeAllowed(ctx, t.ID, replayCost) {
		return
	}
	ds, err := s.deps.Deliveries.Failed(s.life, t.ID, id, since, until, all, maxReplay+1)
	if err != nil {
		s.deliveriesFailed(ctx, err)
		return
	}
	ans := replayAnswer{EndpointID: id}
	if len(ds) > maxReplay {
		ds, ans.HasMore = ds[:maxReplay], true
	}
	var batch []*kgo.Record
	for i := range ds {
		d := &ds[i]
		if d.EndpointID != id || !schemas.Present(d.Body) {
			continue // not redeliverable: the body is no longer stored
		}
		rec, err := s.webhookRecord(redeliveryMessage(t.ID, d, now))
		if err != nil {
			s.log.Warn("replay: stored delivery is not a valid message", "tenant", t.ID, "id", d.ID, "err", err)
			continue
		}
		if batch = append(batch, rec); len(batch) == replayBatch {
			if !s.produceAll(ctx, t.ID, batch) {
				return // queueing again is harmless: the same webhook-ids
			}
			ans.Queued += len(batch)
			batch = batch[:0]
		}
	}
	if len(batch) > 0 {
		if !s.produceAll(ctx, t.ID, batch) {
			return
		}
		ans.Queued += len(batch)
	}
	if ans.HasMore {
		ans.NextSince = ds[len(ds)-1].CreatedAt.UTC()
	}
	s.m.produced.WithLabelValues("ok").Add(float64(ans.Queued))
	writeJSON(ctx, fasthttp.StatusAccepted, ans)
}

// triggerBody is POST /v1/webhooks/trigger's body.
type triggerBody struct {
	EventType  string `json:"event_type"`
	EndpointID string `json:"endpoint_id"`
}

// eventExamples holds each event type's example data, from the catalog.
var eventExamples = sync.OnceValues(func() (map[string]jsontext.Value, error) {
	cat, err := schemas.EventCatalog()
	if err != nil {
		return nil, err
	}
	out := map[string]jsontext.Value{}
	for _, e := range cat {
		var ex struct {
			Data jsontext.Value `json:"data"`
		}
		if err := json.Unmarshal(e.Example, &ex, json.RejectUnknownMembers(false)); err != nil || !schemas.Present(ex.Data) {
			return nil, fmt.Errorf("the example of %s has no data: %v", e.Type, err)
		}
		out[e.Type] = ex.Data
	}
	return out, nil
})

// newEventID is a fresh event id, in the form of schemas.ResultEventID's.
func newEventID() string {
	return "evt_" + strings.ToLower(rand.Text()[:26])
}

// trigger sends the catalog's example of an event type as an event of the
// caller's organization: to every endpoint subscribed to it, or only to
// endpoint_id; webhooks listen sessions see it too.
func (s *Server) trigger(ctx *fasthttp.RequestCtx, t *tenants.Tenant, _ []string) {
	if mediaType(ctx) != "application/json" {
		apiError(ctx, fasthttp.StatusUnsupportedMediaType, "unsupported_media_type", "send Content-Type: application/json")
		return
	}
	raw, ok := s.readBody(ctx, maxTriggerBody)
	if !ok {
		return
	}
	var body triggerBody
	if err := json.Unmarshal(raw, &body); err != nil {
		apiError(ctx, fasthttp.StatusBadRequest, "malformed_json", "body is not a valid JSON object: "+err.Error())
		return
	}
	examples, err := eventExamples()
	if err != nil {
		apiError(ctx, fasthttp.StatusInternalServerError, "internal", err.Error())
		return
	}
	data, known := examples[body.EventType]
	if !known {
		apiError(ctx, fasthttp.StatusBadRequest, "unknown_event_type", fmt.Sprintf("event_type %q is not one of %s", body.EventType, strings.Join(schemas.EventTypes, ", ")))
		return
	}
	rec := schemas.EventRecord{V: schemas.EnvelopeVersion, ID: newEventID(), Org: t.ID,
		Event: schemas.WebhookEvent{Type: body.EventType, Timestamp: time.Now().UTC(), Data: data}}
	if body.EndpointID != "" {
		if !s.endpointsReady(ctx) {
			return
		}
		e, found := EndpointInfo{}, false
		if validEndpointID(body.EndpointID) {
			e, found = s.endpoint(t.ID, body.EndpointID)
		}
		if !found {
			apiError(ctx, fasthttp.StatusNotFound, "not_found", noSuchEndpoint)
			return
		}
		if !usableEndpoint(ctx, e) {
			return
		}
		rec.Endpoints = []string{e.ID}
	}
	if !s.writeAllowed(ctx, t.ID, 1) {
		return
	}
	if err := rec.Validate(); err != nil {
		apiError(ctx, fasthttp.StatusInternalServerError, "internal", err.Error())
		return
	}
	val, err := json.Marshal(rec)
	if err != nil {
		apiError(ctx, fasthttp.StatusInternalServerError, "internal", err.Error())
		return
	}
	r := &kgo.Record{Topic: s.cfg.Kafka.Topics().Events, Key: []byte(t.ID), Value: val,
		Headers: []kgo.RecordHeader{{Key: schemas.HeaderIngestMAC, Value: s.deps.MAC.Header(val)}}}
	if s.produceAll(ctx, t.ID, []*kgo.Record{r}) {
		s.m.produced.WithLabelValues("ok").Inc()
		writeJSON(ctx, fasthttp.StatusAccepted, map[string]string{"event_id": rec.ID})
	}
}

// writeLimiter holds each organization's webhook writes to a rate on this
// process: every one of them produces, and a replay produces thousands.
type writeLimiter struct {
	mu sync.Mutex
	by map[string]*rate.Limiter
}

// writeAllowed takes cost from the organization's webhook write budget,
// or answers 429 itself.
func (s *Server) writeAllowed(ctx *fasthttp.RequestCtx, org string, cost int) bool {
	l := &s.writes
	l.mu.Lock()
	if l.by == nil || len(l.by) >= maxWriteLimiters {
		l.by = map[string]*rate.Limiter{}
	}
	lim := l.by[org]
	if lim == nil {
		lim = rate.NewLimiter(webhookWriteRate, webhookWriteBurst)
		l.by[org] = lim
	}
	l.mu.Unlock()
	r := lim.ReserveN(time.Now(), cost)
	if wait := r.Delay(); wait > 0 {
		r.Cancel()
		ctx.Response.Header.Set("Retry-After", retryAfter(wait))
		apiError(ctx, fasthttp.StatusTooManyRequests, "too_many_requests",
			fmt.Sprintf("at most %d webhook trigger, redeliver or replay requests per second (a replay counts %d); retry later", webhookWriteRate, replayCost))
		return false
	}
	return true
}
