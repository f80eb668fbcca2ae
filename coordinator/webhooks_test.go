package coordinator

import (
	"context"
	"errors"
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

	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/internal/whsig"
)

// Endpoints: checked on the way in, secrets shown only when made, and a
// rotation keeps the previous secret signing for the overlap, then drops
// it; the state other tiers copy (the dispatcher's) holds the secrets.
func TestWebhookEndpoints(t *testing.T) {
	n := soloNode(t)
	op := operator(t, n)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"Acme"}`)
	for _, bad := range []string{
		`{"url":"https://user:pw@x.test/h"}`, `{"url":"https://x.test/h#frag"}`, `{"url":"/relative"}`,
		`{"url":"https://x.test","secret":"whsec_c2hvcnQ="}`, `{"url":"https://x.test","secret":"plain"}`,
		`{"url":"https://x.test","headers":{"Content-Type":"text/plain"}}`, `{"url":"https://x.test","headers":{"X-A":"a\nb"}}`,
		`{"url":"https://x.test","headers":{"bad header":"x"}}`, `{"url":"https://x.test","colour":"red"}`,
	} {
		op.must(400, "POST", "/v1/orgs/acme/webhooks/endpoints", bad)
	}
	var e endpointView
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/acme/webhooks/endpoints", `{"url":"https://x.test/h","event_types":["receipt.signed","job.completed"]}`)), &e)
	if !strings.HasPrefix(e.Secret, "whsec_") || !e.Enabled || len(e.EventTypes) != 2 {
		t.Fatalf("created %+v", e)
	}
	if got := op.must(200, "GET", "/v1/orgs/acme/webhooks/endpoints/"+e.ID, ""); strings.Contains(got, e.Secret) {
		t.Fatal("a GET shows the secret")
	}
	var rotated endpointView
	json.Unmarshal([]byte(op.must(200, "POST", "/v1/orgs/acme/webhooks/endpoints/"+e.ID+"/rotate-secret", `{"overlap":"2h"}`)), &rotated)
	if rotated.Secret == "" || rotated.Secret == e.Secret || rotated.SecretsRotatingUntil.Before(time.Now().Add(119*time.Minute)) {
		t.Fatalf("rotated %+v", rotated)
	}
	var stored WebhookEndpoint
	n.node.fsm.View(func(st *State) { stored = *st.Endpoints[e.ID] })
	if len(stored.Secrets) != 2 || stored.Secrets[0].Secret != rotated.Secret || stored.Secrets[1].Secret != e.Secret ||
		stored.Secrets[1].ExpiresAt.IsZero() || !stored.Secrets[0].ExpiresAt.IsZero() {
		t.Fatalf("secrets after a rotation: %+v", stored.Secrets)
	}
	// A rotation with no overlap drops the previous secret at once.
	op.must(200, "POST", "/v1/orgs/acme/webhooks/endpoints/"+e.ID+"/rotate-secret", `{"overlap":"0s"}`)
	n.node.fsm.View(func(st *State) { stored = *st.Endpoints[e.ID] })
	if len(stored.Secrets) != 1 {
		t.Fatalf("secrets after a rotation without overlap: %+v", stored.Secrets)
	}
	nodeC := newClient(t, n)
	nodeC.hdr["Authorization"] = "Bearer " + testNode
	if st := nodeC.must(200, "GET", "/v1/node/state", ""); !strings.Contains(st, stored.Secrets[0].Secret) {
		t.Fatal("the dispatcher's copy lacks the endpoint's secret")
	}
	// A disabled endpoint is enabled again, with the reason cleared.
	op.must(200, "PATCH", "/v1/orgs/acme/webhooks/endpoints/"+e.ID, `{"enabled":false}`)
	if got := op.must(200, "PATCH", "/v1/orgs/acme/webhooks/endpoints/"+e.ID, `{"enabled":true}`); !strings.Contains(got, `"enabled":true`) {
		t.Fatalf("re-enabled: %s", got)
	}
	for i := range maxEndpointsPerOrg - 1 {
		op.must(201, "POST", "/v1/orgs/acme/webhooks/endpoints", `{"url":"https://x.test/`+strings.Repeat("a", i%5+1)+`"}`)
	}
	op.must(409, "POST", "/v1/orgs/acme/webhooks/endpoints", `{"url":"https://x.test/one-too-many"}`)
}

// A test delivery is signed as the Standard Webhooks specification says
// (with every live secret during a rotation), carries the endpoint's
// headers, and its outcome comes back; without the allow-list a loopback
// endpoint is refused before any packet, and a redirect is a failure.
func TestWebhookEndpointTest(t *testing.T) {
	var got struct {
		sync.Mutex
		header http.Header
		body   []byte
	}
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/moved" {
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
			return
		}
		if r.URL.Path == "/binary" {
			w.Header().Set("X-Raw", "\xff\xfe")
			w.WriteHeader(http.StatusInternalServerError)
			w.Write([]byte{0xff, 0xfe, 'o', 'k'})
			return
		}
		b, _ := io.ReadAll(r.Body)
		got.Lock()
		got.header, got.body = r.Header.Clone(), b
		got.Unlock()
		w.Header().Set("X-Receiver", "ok")
		w.WriteHeader(http.StatusAccepted)
		io.WriteString(w, "thanks")
	}))
	defer recv.Close()
	n := startNodeCfg(t, Config{ID: "solo", RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", DataDir: t.TempDir(), Bootstrap: true,
		WebhookAllow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	testenv.WaitFor(t, "leader", 10*time.Second, func() (bool, string) { return n.node.IsLeader(), "" })
	op := operator(t, n)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"Acme"}`)
	var e endpointView
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/acme/webhooks/endpoints", `{"url":"`+recv.URL+`/hook","headers":{"X-Team":"billing"}}`)), &e)
	var rotated endpointView
	json.Unmarshal([]byte(op.must(200, "POST", "/v1/orgs/acme/webhooks/endpoints/"+e.ID+"/rotate-secret", "")), &rotated)

	var out TestOutcome
	json.Unmarshal([]byte(op.must(200, "POST", "/v1/orgs/acme/webhooks/endpoints/"+e.ID+"/test", "")), &out)
	if !out.Delivered || out.Status != 202 || out.ResponseBody != "thanks" || out.ResponseHeaders["X-Receiver"] != "ok" || out.Error != "" {
		t.Fatalf("outcome %+v", out)
	}
	got.Lock()
	h, body := got.header, got.body
	got.Unlock()
	if h.Get("Webhook-Id") != out.MessageID || h.Get("X-Team") != "billing" || !strings.Contains(string(body), `"type":"webhook.test"`) {
		t.Fatalf("delivery %v %s", h, body)
	}
	// Both the old and the new secret verify it, each on its own.
	for _, secret := range []string{e.Secret, rotated.Secret} {
		sec, err := whsig.ParseSecret(secret)
		if err != nil {
			t.Fatal(err)
		}
		if err := whsig.Verify(h, body, []whsig.Secret{sec}, 0, time.Now()); err != nil {
			t.Fatalf("a receiver holding one of the secrets: %v", err)
		}
	}

	// A redirect is not followed.
	op.must(200, "PATCH", "/v1/orgs/acme/webhooks/endpoints/"+e.ID, `{"url":"`+recv.URL+`/moved"}`)
	json.Unmarshal([]byte(op.must(200, "POST", "/v1/orgs/acme/webhooks/endpoints/"+e.ID+"/test", "")), &out)
	if out.Delivered || out.Status != 302 {
		t.Fatalf("a redirect: %+v", out)
	}

	// An answer that is not UTF-8 is shown, not a reason to fail.
	op.must(200, "PATCH", "/v1/orgs/acme/webhooks/endpoints/"+e.ID, `{"url":"`+recv.URL+`/binary"}`)
	out = TestOutcome{}
	json.Unmarshal([]byte(op.must(200, "POST", "/v1/orgs/acme/webhooks/endpoints/"+e.ID+"/test", "")), &out)
	if out.Delivered || out.Status != 500 || out.ResponseBody != "\uFFFDok" || out.ResponseHeaders["X-Raw"] != "\uFFFD" {
		t.Fatalf("a binary answer: %+v", out)
	}

	// Without the allow-list, loopback is refused before connecting.
	plain := soloNode(t)
	pop := operator(t, plain)
	pop.must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"Acme"}`)
	json.Unmarshal([]byte(pop.must(201, "POST", "/v1/orgs/acme/webhooks/endpoints", `{"url":"`+recv.URL+`/hook"}`)), &e)
	got.Lock()
	got.header = nil
	got.Unlock()
	json.Unmarshal([]byte(pop.must(200, "POST", "/v1/orgs/acme/webhooks/endpoints/"+e.ID+"/test", "")), &out)
	got.Lock()
	reached := got.header != nil
	got.Unlock()
	if out.Delivered || !strings.Contains(out.Error, "refusing to connect") || reached {
		t.Fatalf("loopback without the allow-list: %+v (reached: %v)", out, reached)
	}
}

// Dispatchers report an endpoint failing and then disable it; replicas see
// the endpoints, the health and the organization's retry schedule, and a
// user enabling it again clears both.
func TestEndpointHealthReports(t *testing.T) {
	n := soloNode(t)
	op := operator(t, n)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"Acme"}`)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"other","name":"Other"}`)
	op.must(200, "PATCH", "/v1/orgs/acme", `{"settings":{"webhook_retry_schedule":["0s","1s","1m"]}}`)
	var e endpointView
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/acme/webhooks/endpoints", `{"url":"https://x.test/h","ordered":true}`)), &e)
	if !e.Ordered {
		t.Fatalf("created %+v", e)
	}
	r, err := NewReplica(ReplicaConfig{Addrs: []string{n.Addr()}, Token: testNode, MaxStale: time.Minute, Wait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.WebhookEndpoints("acme"); ok {
		t.Fatal("endpoints known before any state")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	endpoint := func() *WebhookEndpoint {
		eps, ok := r.WebhookEndpoints("acme")
		if !ok || len(eps) != 1 {
			return nil
		}
		return eps[0]
	}
	testenv.WaitFor(t, "the replica has the endpoint", 5*time.Second, func() (bool, string) { return endpoint() != nil, "" })
	if got := r.WebhookRetrySchedule("acme"); !slices.Equal(got, []time.Duration{0, time.Second, time.Minute}) {
		t.Fatalf("schedule %v", got)
	}
	if eps, ok := r.WebhookEndpoints("other"); !ok || len(eps) != 0 || r.WebhookRetrySchedule("other") != nil {
		t.Fatalf("another organization's endpoints %v", eps)
	}

	since := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	// Only nodes report, and only about an endpoint of the organization named.
	op.must(401, "POST", "/v1/node/webhooks/endpoints/"+e.ID+"/health", `{"org":"acme"}`)
	if err := r.ReportEndpointHealth(ctx, e.ID, EndpointHealth{Org: "other", FailingSince: since}); err == nil {
		t.Fatal("a report naming another organization was taken")
	}
	if err := r.ReportEndpointHealth(ctx, e.ID, EndpointHealth{Org: "acme", Disable: true}); err == nil {
		t.Fatal("disabled without a reason")
	}
	if err := r.ReportEndpointHealth(ctx, e.ID, EndpointHealth{Org: "acme", FailingSince: since}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "failing_since reaches the replica", 5*time.Second, func() (bool, string) {
		ep := endpoint()
		return ep != nil && ep.FailingSince.Equal(since) && ep.Enabled, ""
	})
	// A disable judged on an older version (before a user's change) is refused.
	judged := endpoint().UpdatedAt
	if err := r.ReportEndpointHealth(ctx, e.ID, EndpointHealth{Org: "acme", FailingSince: since, Disable: true, Reason: "stale",
		Expect: judged.Add(-time.Second)}); err == nil || !strings.Contains(err.Error(), "409") {
		t.Fatalf("a stale disable: %v", err)
	}
	if err := r.ReportEndpointHealth(ctx, e.ID, EndpointHealth{Org: "acme", FailingSince: time.Now().Add(time.Hour)}); err == nil {
		t.Fatal("a failing time in the future was taken")
	}
	if err := r.ReportEndpointHealth(ctx, e.ID, EndpointHealth{Org: "acme", FailingSince: since, Disable: true, Reason: "failing for 5 days",
		Expect: judged}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "disabled", 5*time.Second, func() (bool, string) {
		ep := endpoint()
		return ep != nil && !ep.Enabled && ep.DisabledReason == "failing for 5 days", ""
	})
	if got := op.must(200, "GET", "/v1/orgs/acme/webhooks/endpoints/"+e.ID, ""); !strings.Contains(got, `"disabled_reason":"failing for 5 days"`) ||
		!strings.Contains(got, `"failing_since"`) {
		t.Fatalf("the API does not say why: %s", got)
	}
	// A change made from the version before the disable is refused, so it
	// cannot enable the endpoint again unseen.
	var stale WebhookEndpoint
	n.node.fsm.View(func(st *State) { stale = *st.Endpoints[e.ID] })
	stale.Enabled, stale.Description = true, "from an old read"
	if _, err := n.node.Propose(&PutEndpoint{Endpoint: stale, Expect: judged}); !errors.Is(err, ErrConflict) {
		t.Fatalf("a change from a stale version: %v", err)
	}
	if got := op.must(200, "GET", "/v1/orgs/acme/audit", ""); !strings.Contains(got, "webhook_endpoint.disable") {
		t.Fatalf("no audit event: %s", got)
	}
	op.must(200, "PATCH", "/v1/orgs/acme/webhooks/endpoints/"+e.ID, `{"enabled":true}`)
	testenv.WaitFor(t, "enabled afresh", 5*time.Second, func() (bool, string) {
		ep := endpoint()
		return ep != nil && ep.Enabled && ep.FailingSince.IsZero() && ep.DisabledReason == "", ""
	})
}
