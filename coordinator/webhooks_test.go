package coordinator

import (
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
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
