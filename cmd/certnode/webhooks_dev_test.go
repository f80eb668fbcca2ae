package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/ingest"
	"github.com/certnode/certnode/internal/whsig"
	"github.com/certnode/certnode/schemas"
)

// sse is one Server-Sent Event of a listen stream.
type sse struct{ event, data string }

// devListener is an open GET /v1/webhooks/listen stream of a dev server.
type devListener struct {
	t      *testing.T
	header http.Header
	ready  string // the data of its ready event
	events chan sse
	cancel context.CancelFunc
}

// listen opens a stream with key and reads its ready event.
func (e *devEnv) listen(key, query string) *devListener {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", e.base+"/v1/webhooks/listen"+query, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		e.t.Fatalf("listen: %d %s", resp.StatusCode, b)
	}
	l := &devListener{t: e.t, header: resp.Header, events: make(chan sse, 100), cancel: cancel}
	e.t.Cleanup(func() { cancel(); resp.Body.Close() })
	r := bufio.NewReader(resp.Body)
	next := func() (sse, error) {
		var ev sse
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return ev, err
			}
			switch line = strings.TrimSuffix(line, "\n"); {
			case line == "" && ev.event != "":
				return ev, nil
			case strings.HasPrefix(line, "event: "):
				ev.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.data += line[6:]
			}
		}
	}
	ready, err := next()
	if err != nil || ready.event != "ready" {
		e.t.Fatalf("ready: %+v %v", ready, err)
	}
	l.ready = ready.data
	go func() {
		defer close(l.events)
		for {
			ev, err := next()
			if err != nil {
				return
			}
			l.events <- ev
		}
	}()
	return l
}

// next waits for the next webhook event and returns its data.
func (l *devListener) next(what string) listenEvent {
	l.t.Helper()
	select {
	case ev, ok := <-l.events:
		var w listenEvent
		if !ok || ev.event != "webhook" || json.Unmarshal([]byte(ev.data), &w, json.RejectUnknownMembers(false)) != nil {
			l.t.Fatalf("%s: %+v (open %v)", what, ev, ok)
		}
		w.raw = ev.data
		return w
	case <-time.After(20 * time.Second):
		l.t.Fatalf("%s: no event", what)
	}
	return listenEvent{}
}

type listenEvent struct {
	ID   string `json:"id"`
	Type string `json:"type"`
	Body string `json:"body"`
	raw  string
}

// trigger sends an example event as key's organization; it returns the
// event id.
func (e *devEnv) trigger(c *contract, key, typ string) string {
	e.t.Helper()
	body := c.expect(e.t, e, exchange{name: "trigger " + typ, method: "POST", path: "/v1/webhooks/trigger", key: key,
		ctype: "application/json", body: `{"event_type":"` + typ + `"}`, status: 202}).body
	var ans struct {
		EventID string `json:"event_id"`
	}
	json.Unmarshal([]byte(body), &ans, json.RejectUnknownMembers(false))
	return ans.EventID
}

// newEndpoint makes a webhook endpoint of org with key, through ingest's
// account routes, and returns its id.
func (e *devEnv) newEndpoint(org, key string) string {
	e.t.Helper()
	code, body := e.do("POST", "/v1/orgs/"+org+"/webhooks/endpoints", key, "application/json", `{"url":"http://127.0.0.1:9/hook"}`)
	var ep struct {
		ID string `json:"id"`
	}
	if code != 201 || json.Unmarshal([]byte(body), &ep, json.RejectUnknownMembers(false)) != nil {
		e.t.Fatalf("endpoint of %s: %d %s", org, code, body)
	}
	return ep.ID
}

// hidden checks B's answer on A's id: the same as for an id that does not
// exist (404, or 503 where this server cannot look ids up), holding
// nothing of A's.
func (a *crossTenant) hidden(t *testing.T, c *contract, e *devEnv, method, path, unknownPath, body string) {
	t.Helper()
	ctype := ""
	if body != "" {
		ctype = "application/json"
	}
	got := c.do(t, e, exchange{name: "B on A's " + path, method: method, path: path, key: e.other, ctype: ctype, body: body})
	want := c.do(t, e, exchange{name: "B on " + unknownPath, method: method, path: unknownPath, key: e.other, ctype: ctype, body: strings.ReplaceAll(body, a.endpoint, "ep_nope")})
	if got.status != want.status || got.body != want.body {
		t.Errorf("B tells A's %s (%d %s) from an unknown id (%d %s)", path, got.status, got.body, want.status, want.body)
	}
	if got.status != 404 && got.status != 503 {
		t.Errorf("B on A's %s: %d %s", path, got.status, got.body)
	}
	a.leaks(t, got.body)
}

// webhookCrossTenant are the cross-tenant cases of the webhook routes.
// dev here has no deliveries store (ClickHouse is off), so the deliveries
// routes answer 503 to everyone; the 404s of a real store are ingest's
// TestWebhookDeliveriesRead and TestRedeliver (with fakes).
func webhookCrossTenant(t *testing.T, c *contract, e *devEnv, a *crossTenant) map[string]func(t *testing.T) {
	a.endpoint = e.newEndpoint("demo", e.key)
	a.message = schemas.MessageID(e.trigger(c, e.key, "webhook.test"), a.endpoint)
	unknownMsg := "msg_" + strings.Repeat("q", 26)
	return map[string]func(t *testing.T){
		"GET /v1/webhooks/deliveries": func(t *testing.T) {
			sameAnswer(t, c, e, a, "/v1/webhooks/deliveries?endpoint="+a.endpoint, 503, "deliveries_unavailable")
			sameAnswer(t, c, e, a, "/v1/webhooks/deliveries?endpoint=nope", 400, "invalid_endpoint")
		},
		"GET /v1/webhooks/deliveries/{id}": func(t *testing.T) {
			a.hidden(t, c, e, "GET", "/v1/webhooks/deliveries/"+a.message, "/v1/webhooks/deliveries/"+unknownMsg, "")
		},
		"POST /v1/webhooks/deliveries/{id}/redeliver": func(t *testing.T) {
			a.hidden(t, c, e, "POST", "/v1/webhooks/deliveries/"+a.message+"/redeliver", "/v1/webhooks/deliveries/"+unknownMsg+"/redeliver", "")
		},
		"POST /v1/webhooks/endpoints/{id}/replay": func(t *testing.T) {
			a.hidden(t, c, e, "POST", "/v1/webhooks/endpoints/"+a.endpoint+"/replay", "/v1/webhooks/endpoints/ep_nope/replay", "")
		},
		"POST /v1/webhooks/trigger": func(t *testing.T) {
			a.hidden(t, c, e, "POST", "/v1/webhooks/trigger", "/v1/webhooks/trigger", `{"event_type":"webhook.test","endpoint_id":"`+a.endpoint+`"}`)
			// What B triggers is B's: A's stream never shows it.
			la, lb := e.listen(e.key, ""), e.listen(e.other, "")
			bid := e.trigger(c, e.other, "quota.warning")
			if w := lb.next("B's event"); w.ID != schemas.MessageID(bid, ingest.ListenEndpointID) {
				t.Fatalf("B's stream: %+v", w)
			}
			aid := e.trigger(c, e.key, "job.completed")
			if w := la.next("A's event"); w.ID != schemas.MessageID(aid, ingest.ListenEndpointID) {
				t.Fatalf("A's stream shows %+v before its own event", w)
			}
		},
		"GET /v1/webhooks/listen": func(t *testing.T) {
			// A's receipt reaches A's stream, never B's; B's stream shows
			// B's next event first.
			la, lb := e.listen(e.key, "?events=receipt.signed"), e.listen(e.other, "")
			c.expect(t, e, exchange{name: "A signs", method: "POST", path: "/v1/sign", key: e.key, ctype: "application/json",
				body: `{"payload":{"s":"` + a.secret + `"}}`, status: 200})
			if w := la.next("A's receipt"); w.Type != "receipt.signed" || !strings.Contains(w.Body, a.secret) {
				t.Fatalf("A's stream: %+v", w)
			}
			bid := e.trigger(c, e.other, "webhook.test")
			w := lb.next("B's event")
			if w.ID != schemas.MessageID(bid, ingest.ListenEndpointID) {
				t.Fatalf("B's stream shows %+v before its own event", w)
			}
			a.leaks(t, w.raw+lb.ready)
		},
	}
}

// A developer's `certnode webhooks listen` against dev: each receipt signed
// and each event triggered is forwarded to the local receiver, signed with
// the secret listen printed.
func TestDevWebhooksListen(t *testing.T) {
	clearAPIEnv(t)
	e := startDev(t)
	recv := newReceiver(t, 200)
	cli := startCLI(t, "webhooks", "listen", "--forward-to", recv.srv.URL+"/hook", "--credentials", filepath.Join(e.dir, "credentials.json"),
		"--api", e.base)
	cli.waitOutput(t, "Ready! Your webhook signing secret is whsec_")
	secret, err := whsig.ParseSecret(regexp.MustCompile(`whsec_[A-Za-z0-9+/=]+`).FindString(cli.stdout.String()))
	if err != nil {
		t.Fatal(err)
	}
	code, receipt := e.do("POST", "/v1/sign", e.key, "application/json", `{"payload":{"hello":"listen"}}`)
	if code != 200 {
		t.Fatalf("sign: %d %s", code, receipt)
	}
	reqs, bodies := recv.wait(t, 1)
	verifyDelivery(t, reqs[0], bodies[0], secret)
	var ev schemas.WebhookEvent
	var data schemas.ReceiptEventData
	if json.Unmarshal([]byte(bodies[0]), &ev) != nil || ev.Type != "receipt.signed" || json.Unmarshal(ev.Data, &data) != nil ||
		!strings.Contains(receipt, data.ReceiptID) || !strings.Contains(string(data.Receipt), `"hello":"listen"`) {
		t.Fatalf("forwarded: %s", bodies[0])
	}

	r := certnode(t, "", "webhooks", "trigger", "job.completed", "--credentials", filepath.Join(e.dir, "credentials.json"), "--api", e.base)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "evt_") {
		t.Fatalf("trigger: %+v", r)
	}
	reqs, bodies = recv.wait(t, 2)
	verifyDelivery(t, reqs[1], bodies[1], secret)
	if id := schemas.MessageID(strings.TrimSpace(r.stdout), ingest.ListenEndpointID); reqs[1].Header.Get(whsig.HeaderID) != id ||
		!strings.Contains(bodies[1], `"type":"job.completed"`) {
		t.Fatalf("triggered: %v %s (want id %s)", reqs[1].Header, bodies[1], id)
	}
	cli.waitOutput(t, "job.completed")
	if code := cli.stop(t, false); code != 0 {
		t.Fatalf("exit %d: %s", code, cli.stderr)
	}
}

// listenContract validates a listen stream against the document: the
// request, the headers, and each event's data against the schema the
// document names for it; it counts as the route's validated success.
func (c *contract) listenContract(t *testing.T, e *devEnv) {
	req, _ := http.NewRequest("GET", e.base+"/v1/webhooks/listen?events=webhook.test", nil)
	req.Header.Set("Authorization", "Bearer "+e.key)
	if err := c.oas.Conforms(t, apiClient, req); err != nil {
		t.Fatal(err)
	}
	l := e.listen(e.key, "?events=webhook.test")
	resp := c.doc.Paths.Find("/v1/webhooks/listen").Get.Responses.Status(200).Value
	if resp.Content.Get(l.header.Get("Content-Type")) == nil || l.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("listen headers %v", l.header)
	}
	check := func(schema, data string) {
		t.Helper()
		var v any
		if err := json.Unmarshal([]byte(data), &v); err != nil {
			t.Fatal(err)
		}
		if err := c.doc.Components.Schemas[schema].Value.VisitJSON(v, openapi3.EnableJSONSchema2020()); err != nil {
			t.Fatalf("%s: %v\n%s", schema, err, data)
		}
	}
	check("ListenReady", l.ready)
	e.trigger(c, e.key, "webhook.test")
	check("ListenWebhook", l.next("the triggered event").raw)
	c.success["GET /v1/webhooks/listen"] = true
}
