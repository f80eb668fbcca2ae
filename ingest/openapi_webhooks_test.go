package ingest

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/oastest"
	"github.com/certnode/certnode/schemas"
)

func bearer(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	if h := in.RequestValidationInput.Request.Header.Get("Authorization"); in.SecuritySchemeName != "apiKey" || !strings.HasPrefix(h, "Bearer ") {
		return errors.New("no bearer API key")
	}
	return nil
}

// TestWebhookRoutesConform validates the webhook routes' answers, with a
// deliveries store and endpoints (fakes here; certnode dev in the
// cmd/certnode contract test has neither), against the OpenAPI document.
func TestWebhookRoutesConform(t *testing.T) {
	ts := startServer(t)
	doc := oastest.Load(t, schemas.OpenAPIYAML(), ts.base, bearer)
	mine := ts.deliv.by["a"][0].ID
	type exchange struct {
		name, method, path, key, body string
		offSpec                       bool
		status                        int
	}
	run := func(x exchange) string {
		t.Helper()
		req, _ := http.NewRequest(x.method, ts.base+x.path, strings.NewReader(x.body))
		if x.key != "" {
			req.Header.Set("Authorization", "Bearer "+x.key)
		}
		if x.body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		r := doc.Exchange(t, testClient, req, x.name, x.offSpec)
		if r.Status != x.status {
			t.Errorf("%s: %d %s, want %d", x.name, r.Status, r.Body, x.status)
		}
		return r.Body
	}
	for _, x := range []exchange{
		{"list", "GET", "/v1/webhooks/deliveries?endpoint=ep_one&event_type=webhook.test&status=failed&since=2026-01-01T00:00:00Z&until=2027-01-01T00:00:00Z&limit=2", keyA, "", false, 200},
		{"list, a page", "GET", "/v1/webhooks/deliveries?limit=1&cursor=abc", keyA, "", false, 200},
		{"list, bad limit", "GET", "/v1/webhooks/deliveries?limit=0", keyA, "", true, 400},
		{"list, bad status", "GET", "/v1/webhooks/deliveries?status=lost", keyA, "", true, 400},
		{"list, bad range", "GET", "/v1/webhooks/deliveries?since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z", keyA, "", false, 400},
		{"list, bad cursor", "GET", "/v1/webhooks/deliveries?cursor=bad", keyA, "", false, 400},
		{"list, admin key", "GET", "/v1/webhooks/deliveries", keyAdmin, "", false, 403},
		{"get", "GET", "/v1/webhooks/deliveries/" + mine, keyA, "", false, 200},
		{"get, another's", "GET", "/v1/webhooks/deliveries/" + mine, keyB, "", false, 404},
		{"get, unknown key", "GET", "/v1/webhooks/deliveries/" + mine, "cn_nope", "", false, 401},
		{"redeliver", "POST", "/v1/webhooks/deliveries/" + mine + "/redeliver", keyA, "", false, 202},
		{"redeliver, another's", "POST", "/v1/webhooks/deliveries/" + mine + "/redeliver", keyB, "", false, 404},
		{"redeliver, disabled endpoint", "POST", "/v1/webhooks/deliveries/" + ts.deliv.by["a"][2].ID + "/redeliver", keyA, "", false, 409},
		{"redeliver, read key", "POST", "/v1/webhooks/deliveries/" + mine + "/redeliver", keyRead, "", false, 403},
		{"replay", "POST", "/v1/webhooks/endpoints/ep_one/replay?since=2026-01-01T00:00:00Z&until=2027-01-01T00:00:00Z&all=false", keyA, "", false, 202},
		{"replay, another's", "POST", "/v1/webhooks/endpoints/ep_one/replay", keyB, "", false, 404},
		{"replay, disabled", "POST", "/v1/webhooks/endpoints/ep_off/replay", keyA, "", false, 409},
		{"replay, bad all", "POST", "/v1/webhooks/endpoints/ep_one/replay?all=maybe", keyA, "", true, 400},
		{"trigger", "POST", "/v1/webhooks/trigger", keyA, `{"event_type":"job.completed"}`, false, 202},
		{"trigger one endpoint", "POST", "/v1/webhooks/trigger", keyA, `{"event_type":"job.completed","endpoint_id":"ep_one"}`, false, 202},
		{"trigger, another's endpoint", "POST", "/v1/webhooks/trigger", keyB, `{"event_type":"job.completed","endpoint_id":"ep_one"}`, false, 404},
		{"trigger, unknown type", "POST", "/v1/webhooks/trigger", keyA, `{"event_type":"nope"}`, true, 400},
		{"listen, unknown type", "GET", "/v1/webhooks/listen?events=nope", keyA, "", false, 400},
		{"listen, admin key", "GET", "/v1/webhooks/listen", keyAdmin, "", false, 403},
	} {
		run(x)
	}

	// The stream: its request conforms, and each event's data is the
	// schema the document names for it.
	req, _ := http.NewRequest("GET", ts.base+"/v1/webhooks/listen?events=webhook.test", nil)
	req.Header.Set("Authorization", "Bearer "+keyA)
	if err := doc.Conforms(t, testClient, req); err != nil {
		t.Fatal(err)
	}
	op := doc.Paths.Find("/v1/webhooks/listen").Get
	if op.Responses.Status(200).Value.Content.Get("text/event-stream") == nil {
		t.Fatal("the document's listen answers no text/event-stream")
	}
	l, _ := ts.listen(keyA, "?events=webhook.test")
	check := func(schema string, data string) {
		t.Helper()
		var v any
		if err := json.Unmarshal([]byte(data), &v); err != nil {
			t.Fatal(err)
		}
		if err := doc.Components.Schemas[schema].Value.VisitJSON(v, openapi3.EnableJSONSchema2020()); err != nil {
			t.Fatalf("%s: %v\n%s", schema, err, data)
		}
	}
	check("ListenReady", `{"secret":"`+l.secret.Encode()+`"}`)
	ts.trigger(keyA, "webhook.test")
	ev := l.next("webhook")
	check("ListenWebhook", ev.data)
	ts.s.hub.mu.RLock()
	for ls := range ts.s.hub.sessions["a"] {
		ls.dropped.Add(2)
	}
	ts.s.hub.mu.RUnlock()
	ts.trigger(keyA, "webhook.test")
	l.next("webhook")
	check("ListenDropped", l.next("dropped").data)
}
