package coordinator

import (
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/apicustom"
	"github.com/certnode/certnode/internal/whsig"
	"github.com/certnode/certnode/schemas"
)

// WebhookEndpoint is where an organization's events are delivered. Its
// secrets sign each delivery (Standard Webhooks): more than one during a
// rotation, the older ones until their ExpiresAt. The dispatcher reads
// them from the state it copies, so they are kept, not hashed.
type WebhookEndpoint struct {
	ID          string            `json:"id"`
	Org         string            `json:"org"`
	URL         string            `json:"url"`
	Description string            `json:"description,omitempty"`
	EventTypes  []string          `json:"event_types,omitempty"` // none: every type
	Headers     map[string]string `json:"headers,omitempty"`
	Enabled     bool              `json:"enabled"`
	// Ordered: messages go one at a time, in order, a failing one holding
	// back the rest of this endpoint's (and only this endpoint's).
	Ordered bool `json:"ordered,omitempty"`
	// Receipt is whether receipt.signed events carry the receipt here
	// (apicustom.ReceiptInclude or ReceiptOmit; "": the organization's
	// webhook_receipt).
	Receipt string `json:"receipt,omitempty"`
	// DisabledReason says why the service disabled the endpoint (a 410,
	// or failing for too long); empty when a user did.
	DisabledReason string `json:"disabled_reason,omitempty"`
	// FailingSince is the first failed attempt since the last success,
	// as the dispatchers report it (SetEndpointHealth).
	FailingSince time.Time        `json:"failing_since,omitzero"`
	Secrets      []EndpointSecret `json:"secrets"`
	CreatedAt    time.Time        `json:"created_at"`
	UpdatedAt    time.Time        `json:"updated_at"`
}

// EndpointSecret is one signing secret, "whsec_" and base64.
type EndpointSecret struct {
	Secret    string    `json:"secret"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// Limits on what an endpoint holds.
const (
	maxEndpointURL     = 2048
	maxEndpointHeaders = 20
	maxHeaderValue     = 1024
	maxEndpointsPerOrg = 100
)

// reservedHeaders are set by the dispatcher (or the transport) on every
// delivery: an endpoint's own headers may not replace them.
var reservedHeaders = []string{"Webhook-Id", "Webhook-Timestamp", "Webhook-Signature", "Content-Type",
	"Content-Length", "Host", "Transfer-Encoding", "Connection", "User-Agent", "Authorization-Certnode"}

// checkWebhookSecret checks a secret's Standard Webhooks form.
func checkWebhookSecret(s string) error {
	if _, err := whsig.ParseSecret(s); err != nil {
		return invalid("secret: %v", err)
	}
	return nil
}

func (e *WebhookEndpoint) check() error {
	var errs []error
	if !strings.HasPrefix(e.ID, "ep_") || !idPattern.MatchString(strings.ToLower(e.ID[3:])) {
		errs = append(errs, invalid("endpoint id %q", e.ID))
	}
	if u, err := url.Parse(e.URL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" ||
		u.User != nil || u.Fragment != "" || len(e.URL) > maxEndpointURL {
		errs = append(errs, invalid("url %q: an absolute http(s) URL without credentials or fragment, up to %d bytes", e.URL, maxEndpointURL))
	}
	if len(e.Description) > 500 {
		errs = append(errs, invalid("description over 500 bytes"))
	}
	for _, t := range e.EventTypes {
		if !slices.Contains(schemas.EventTypes, t) {
			errs = append(errs, invalid("event type %q: want one of %v", t, schemas.EventTypes))
		}
	}
	if len(e.Headers) > maxEndpointHeaders {
		errs = append(errs, invalid("at most %d headers", maxEndpointHeaders))
	}
	for k, v := range e.Headers {
		canon := textproto.CanonicalMIMEHeaderKey(k)
		if !validHeaderName(k) || slices.Contains(reservedHeaders, canon) || strings.HasPrefix(canon, "Webhook-") {
			errs = append(errs, invalid("header %q: a token that is not one the delivery sets itself", k))
		}
		if len(v) > maxHeaderValue || strings.ContainsAny(v, "\r\n\x00") {
			errs = append(errs, invalid("header %q: a value up to %d bytes on one line", k, maxHeaderValue))
		}
	}
	if err := apicustom.CheckReceiptMode(e.Receipt); err != nil {
		errs = append(errs, invalid("receipt: %v", err))
	}
	if len(e.Secrets) == 0 || len(e.Secrets) > 5 {
		errs = append(errs, invalid("an endpoint has 1 to 5 secrets"))
	}
	for _, s := range e.Secrets {
		if err := checkWebhookSecret(s.Secret); err != nil {
			errs = append(errs, err)
		}
	}
	if e.CreatedAt.IsZero() || e.UpdatedAt.IsZero() {
		errs = append(errs, invalid("created_at and updated_at are required"))
	}
	return errors.Join(errs...)
}

// validHeaderName reports whether k is an HTTP token.
func validHeaderName(k string) bool {
	if k == "" || len(k) > 100 {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// PutEndpoint creates an endpoint (Create) or replaces one: an update, a
// secret rotation, the service disabling it.
type PutEndpoint struct {
	Meta     `json:"meta,omitzero"`
	Endpoint WebhookEndpoint `json:"endpoint"`
	Create   bool            `json:"create,omitempty"`
	// Expect is the UpdatedAt of the endpoint the change was made from:
	// a change made meanwhile (a rotation, a dispatcher disabling it) is
	// not overwritten unseen.
	Expect time.Time `json:"expect,omitzero"`
}

func (*PutEndpoint) cmdType() cmdType { return cmdPutEndpoint }
func (c *PutEndpoint) validate(s *State) error {
	e := c.Endpoint
	if err := e.check(); err != nil {
		return err
	}
	if _, ok := s.Orgs[e.Org]; !ok {
		return fmt.Errorf("%w: organization %q", ErrNotFound, e.Org)
	}
	old, exists := s.Endpoints[e.ID]
	switch {
	case c.Create && exists:
		return fmt.Errorf("%w: endpoint %q exists", ErrConflict, e.ID)
	case !c.Create && (!exists || old.Org != e.Org):
		return fmt.Errorf("%w: endpoint %q", ErrNotFound, e.ID)
	case !c.Create && !old.CreatedAt.Equal(e.CreatedAt):
		return invalid("created_at cannot change")
	case !c.Create && !c.Expect.IsZero() && !old.UpdatedAt.Equal(c.Expect):
		return fmt.Errorf("%w: endpoint %q changed meanwhile; read it again and retry", ErrConflict, e.ID)
	}
	if c.Create {
		n := 0
		for _, o := range s.Endpoints {
			if o.Org == e.Org {
				n++
			}
		}
		if n >= maxEndpointsPerOrg {
			return fmt.Errorf("%w: an organization has at most %d endpoints", ErrConflict, maxEndpointsPerOrg)
		}
	}
	return nil
}
func (c *PutEndpoint) apply(s *State) {
	e := c.Endpoint
	s.Endpoints[e.ID] = &e
}
func (c *PutEndpoint) audit() (string, string, string) {
	if c.Create {
		return "webhook_endpoint.create", c.Endpoint.Org, c.Endpoint.ID
	}
	return "webhook_endpoint.update", c.Endpoint.Org, c.Endpoint.ID
}

// DeleteEndpoint removes an endpoint.
type DeleteEndpoint struct {
	Meta `json:"meta,omitzero"`
	ID   string `json:"id"`
	Org  string `json:"org"`
}

func (*DeleteEndpoint) cmdType() cmdType { return cmdDeleteEndpoint }
func (c *DeleteEndpoint) validate(s *State) error {
	if e := s.Endpoints[c.ID]; e == nil || e.Org != c.Org {
		return fmt.Errorf("%w: endpoint %q", ErrNotFound, c.ID)
	}
	return nil
}
func (c *DeleteEndpoint) apply(s *State) { delete(s.Endpoints, c.ID) }
func (c *DeleteEndpoint) audit() (string, string, string) {
	return "webhook_endpoint.delete", c.Org, c.ID
}

// SetEndpointHealth records what the dispatchers saw of an endpoint: when
// it started failing (zero: it delivers again), and disables it (Disable,
// with the reason) after a 410 or once it has failed for too long.
type SetEndpointHealth struct {
	Meta         `json:"meta,omitzero"`
	ID           string    `json:"id"`
	Org          string    `json:"org"`
	FailingSince time.Time `json:"failing_since,omitzero"`
	Disable      bool      `json:"disable,omitempty"`
	Reason       string    `json:"reason,omitempty"`
	// Expect is the UpdatedAt of the endpoint the dispatcher judged: a
	// disable decided before a user changed it (enabled it again) is
	// refused.
	Expect time.Time `json:"expect,omitzero"`
}

func (*SetEndpointHealth) cmdType() cmdType { return cmdSetEndpointHealth }
func (c *SetEndpointHealth) validate(s *State) error {
	e := s.Endpoints[c.ID]
	switch {
	case e == nil || e.Org != c.Org:
		return fmt.Errorf("%w: endpoint %q", ErrNotFound, c.ID)
	case c.Disable && (c.Reason == "" || len(c.Reason) > 200):
		return invalid("disabling needs a reason of up to 200 bytes")
	case c.Disable && !e.UpdatedAt.Equal(c.Expect):
		return fmt.Errorf("%w: endpoint %q changed since it was judged", ErrConflict, c.ID)
	case !c.At.IsZero() && c.FailingSince.After(c.At.Add(time.Minute)):
		return invalid("failing_since is in the future")
	}
	return nil
}
func (c *SetEndpointHealth) apply(s *State) {
	e := *s.Endpoints[c.ID]
	e.FailingSince = c.FailingSince
	if c.Disable && e.Enabled {
		// A new version: a change made from the enabled one is refused.
		e.Enabled, e.DisabledReason = false, c.Reason
		if !c.At.IsZero() {
			e.UpdatedAt = c.At
		}
	}
	s.Endpoints[c.ID] = &e
}
func (c *SetEndpointHealth) audit() (string, string, string) {
	if c.Disable {
		return "webhook_endpoint.disable", c.Org, c.ID
	}
	return "webhook_endpoint.health", c.Org, c.ID
}

// EndpointHealth is the body of POST /v1/node/webhooks/endpoints/{id}/health.
type EndpointHealth struct {
	Org          string    `json:"org"`
	FailingSince time.Time `json:"failing_since,omitzero"`
	Disable      bool      `json:"disable,omitempty"`
	Reason       string    `json:"reason,omitempty"`
	Expect       time.Time `json:"expect,omitzero"` // the endpoint's updated_at when judged
}

// endpointHealth takes a dispatcher's report on an endpoint.
func (s *Server) endpointHealth(w http.ResponseWriter, r *http.Request, body []byte) {
	var h EndpointHealth
	if err := decodeBody(body, &h); err != nil {
		s.fail(w, err)
		return
	}
	s.write(w, r, body, &SetEndpointHealth{ID: r.PathValue("id"), Org: h.Org, FailingSince: h.FailingSince, Disable: h.Disable,
		Reason: h.Reason, Expect: h.Expect}, http.StatusNoContent, nil)
}

func (e *WebhookEndpoint) owner() string                { return e.Org }
func (e *WebhookEndpoint) created() time.Time           { return e.CreatedAt }
func endpointsOf(st *State) map[string]*WebhookEndpoint { return st.Endpoints }

// endpointView is an endpoint as the API shows it: its secrets only in the
// answers that make them (creation, rotation).
type endpointView struct {
	ID             string            `json:"id"`
	Org            string            `json:"org"`
	URL            string            `json:"url"`
	Description    string            `json:"description,omitempty"`
	EventTypes     []string          `json:"event_types"`
	Headers        map[string]string `json:"headers,omitempty"`
	Enabled        bool              `json:"enabled"`
	Ordered        bool              `json:"ordered"`
	Receipt        string            `json:"receipt,omitempty"`
	DisabledReason string            `json:"disabled_reason,omitempty"`
	FailingSince   time.Time         `json:"failing_since,omitzero"`
	CreatedAt      time.Time         `json:"created_at"`
	UpdatedAt      time.Time         `json:"updated_at"`
	// SecretsRotatingUntil is when the previous secret stops signing.
	SecretsRotatingUntil time.Time `json:"secret_rotation_ends_at,omitzero"`
	Secret               string    `json:"secret,omitempty"`
}

func endpointViewOf(e *WebhookEndpoint) endpointView {
	v := endpointView{ID: e.ID, Org: e.Org, URL: e.URL, Description: e.Description, EventTypes: e.EventTypes,
		Headers: e.Headers, Enabled: e.Enabled, Ordered: e.Ordered, Receipt: e.Receipt, DisabledReason: e.DisabledReason,
		FailingSince: e.FailingSince, CreatedAt: e.CreatedAt, UpdatedAt: e.UpdatedAt}
	if v.EventTypes == nil {
		v.EventTypes = []string{}
	}
	for _, s := range e.Secrets {
		if !s.ExpiresAt.IsZero() && s.ExpiresAt.After(v.SecretsRotatingUntil) {
			v.SecretsRotatingUntil = s.ExpiresAt
		}
	}
	return v
}

// endpointBody is what a caller sends to create or change an endpoint;
// absent members keep their value on PATCH.
type endpointBody struct {
	URL         *string            `json:"url"`
	Description *string            `json:"description"`
	EventTypes  *[]string          `json:"event_types"`
	Headers     *map[string]string `json:"headers"`
	Enabled     *bool              `json:"enabled"`
	Ordered     *bool              `json:"ordered"`
	Receipt     *string            `json:"receipt"`
	Secret      *string            `json:"secret"` // on creation only
}

func (b *endpointBody) applyTo(e *WebhookEndpoint) {
	if b.URL != nil {
		e.URL = *b.URL
	}
	if b.Description != nil {
		e.Description = *b.Description
	}
	if b.EventTypes != nil {
		e.EventTypes = *b.EventTypes
	}
	if b.Headers != nil {
		e.Headers = *b.Headers
	}
	if b.Enabled != nil {
		e.Enabled = *b.Enabled
		if e.Enabled {
			// A fresh start: the failing time that disabled it is over.
			e.DisabledReason, e.FailingSince = "", time.Time{}
		}
	}
	if b.Ordered != nil {
		e.Ordered = *b.Ordered
	}
	if b.Receipt != nil {
		e.Receipt = *b.Receipt
	}
}

func (s *Server) createEndpoint(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	var b endpointBody
	if err := decodeBody(body, &b); err != nil {
		s.fail(w, err)
		return
	}
	secret := ""
	if b.Secret != nil {
		secret = *b.Secret
	} else {
		secret = whsig.NewSecret().Encode()
	}
	id, err := newID("ep_")
	if err != nil {
		s.fail(w, err)
		return
	}
	now := time.Now().UTC()
	e := WebhookEndpoint{ID: id, Org: sc.org, Enabled: true,
		Secrets: []EndpointSecret{{Secret: secret, CreatedAt: now}}, CreatedAt: now, UpdatedAt: now}
	b.applyTo(&e)
	v := endpointViewOf(&e)
	v.Secret = secret
	s.write(w, r, body, &PutEndpoint{Endpoint: e, Create: true}, http.StatusCreated, v)
}

func (s *Server) listEndpoints(w http.ResponseWriter, _ *http.Request, sc scope, _ []byte) {
	out := ownedList(s, sc, endpointsOf, func(_ *State, e *WebhookEndpoint) endpointView { return endpointViewOf(e) })
	writeJSON(w, http.StatusOK, map[string]any{"endpoints": out})
}

// endpoint finds an endpoint of the scope's organization, answering 404
// itself when there is none.
func (s *Server) endpoint(w http.ResponseWriter, r *http.Request, sc scope) (WebhookEndpoint, bool) {
	e, ok := owned(s, sc, endpointsOf, r.PathValue("id"))
	if !ok {
		s.fail(w, fmt.Errorf("%w: endpoint %q", ErrNotFound, r.PathValue("id")))
	}
	return e, ok
}

func (s *Server) getEndpoint(w http.ResponseWriter, r *http.Request, sc scope, _ []byte) {
	if e, ok := s.endpoint(w, r, sc); ok {
		writeJSON(w, http.StatusOK, endpointViewOf(&e))
	}
}

func (s *Server) updateEndpoint(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	var b endpointBody
	if err := decodeBody(body, &b); err != nil {
		s.fail(w, err)
		return
	}
	if b.Secret != nil {
		s.fail(w, invalid("a secret changes only by rotation (POST .../rotate-secret)"))
		return
	}
	e, ok := s.endpoint(w, r, sc)
	if !ok {
		return
	}
	expect := e.UpdatedAt
	b.applyTo(&e)
	e.UpdatedAt = time.Now().UTC()
	s.write(w, r, body, &PutEndpoint{Endpoint: e, Expect: expect}, http.StatusOK, endpointViewOf(&e))
}

func (s *Server) deleteEndpoint(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	s.write(w, r, body, &DeleteEndpoint{ID: r.PathValue("id"), Org: sc.org}, http.StatusNoContent, nil)
}

// DefaultSecretOverlap is how long a rotated endpoint secret keeps
// signing beside its successor.
const DefaultSecretOverlap = 24 * time.Hour

// rotateEndpointSecret adds a new secret; the others keep signing for the
// overlap (every delivery carries a signature by each), then stop.
func (s *Server) rotateEndpointSecret(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	var b struct {
		Overlap string `json:"overlap"`
		Secret  string `json:"secret"`
	}
	if err := decodeBody(orEmptyObject(body), &b); err != nil {
		s.fail(w, err)
		return
	}
	overlap := DefaultSecretOverlap
	if b.Overlap != "" {
		d, err := time.ParseDuration(b.Overlap)
		if err != nil || d < 0 || d > 7*24*time.Hour {
			s.fail(w, invalid("overlap %q: a duration from 0 to 168h", b.Overlap))
			return
		}
		overlap = d
	}
	e, ok := s.endpoint(w, r, sc)
	if !ok {
		return
	}
	secret := b.Secret
	if secret == "" {
		secret = whsig.NewSecret().Encode()
	}
	now := time.Now().UTC()
	var kept []EndpointSecret
	for _, old := range e.Secrets {
		if old.ExpiresAt.IsZero() || old.ExpiresAt.After(now.Add(overlap)) {
			old.ExpiresAt = now.Add(overlap)
		}
		if old.ExpiresAt.After(now) {
			kept = append(kept, old)
		}
	}
	// The newest secrets first; at most five.
	e.Secrets = append([]EndpointSecret{{Secret: secret, CreatedAt: now}}, kept[:min(len(kept), 4)]...)
	expect := e.UpdatedAt
	e.UpdatedAt = now
	v := endpointViewOf(&e)
	v.Secret = secret
	s.write(w, r, body, &PutEndpoint{Endpoint: e, Expect: expect}, http.StatusOK, v)
}

// TestOutcome is the outcome of a test delivery.
type TestOutcome struct {
	MessageID string `json:"message_id"`
	// Delivered: the endpoint answered 2xx. A redirect is not followed
	// and counts as a failure, as in real deliveries.
	Delivered       bool              `json:"delivered"`
	Status          int               `json:"status,omitempty"`
	LatencyMillis   int64             `json:"latency_ms"`
	ResponseHeaders map[string]string `json:"response_headers,omitempty"`
	// ResponseBody is the first 4 KiB of the answer.
	ResponseBody string `json:"response_body,omitempty"`
	Error        string `json:"error,omitempty"`
}

// testEndpoint sends a webhook.test event to the endpoint now, signed with
// every secret it has, and answers with the attempt's outcome. It changes
// nothing, so any node runs it.
func (s *Server) testEndpoint(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	if err := decodeBody(orEmptyObject(body), &struct{}{}); err != nil {
		s.fail(w, err)
		return
	}
	e, ok := s.endpoint(w, r, sc)
	if !ok {
		return
	}
	now := time.Now().UTC()
	var secrets []whsig.Secret
	for _, es := range e.Secrets {
		if es.ExpiresAt.IsZero() || now.Before(es.ExpiresAt) {
			if sec, err := whsig.ParseSecret(es.Secret); err == nil { // checked when stored
				secrets = append(secrets, sec)
			}
		}
	}
	data, _ := json.Marshal(map[string]string{"endpoint_id": e.ID, "message": "A test event from CertNode."})
	event, err := json.Marshal(schemas.WebhookEvent{Type: schemas.EventWebhookTest, Timestamp: now, Data: data})
	msgID, err2 := newID("msg_")
	if err != nil || err2 != nil {
		s.fail(w, fmt.Errorf("test event: %v %v", err, err2))
		return
	}
	resp, err := whsig.Send(r.Context(), s.hooks, whsig.Delivery{URL: e.URL, ID: msgID, At: now, Body: event,
		Headers: e.Headers, Secrets: secrets})
	out := TestOutcome{MessageID: msgID, LatencyMillis: resp.Latency.Milliseconds(), Status: resp.Status,
		ResponseHeaders: resp.Headers, ResponseBody: resp.Body, Delivered: err == nil && resp.Status >= 200 && resp.Status < 300}
	if err != nil {
		out.Error = err.Error()
	}
	writeJSON(w, http.StatusOK, out)
}
