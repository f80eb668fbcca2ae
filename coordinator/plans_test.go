package coordinator

import (
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/internal/testenv"
)

// Plans set an organization's limits (overridable field by field), a plan
// change is kept in the organization's history with the terms of the
// time, and producer keys are created, rotated with an overlap and
// revoked; the local copy follows all of it.
func TestPlansLimitsAndProducerKeys(t *testing.T) {
	n := startNode(t, "solo", t.TempDir(), true, "")
	testenv.WaitFor(t, "leader", 10*time.Second, func() (bool, string) { return n.node.IsLeader(), "" })
	must := func(want int, method, path, body string) string {
		t.Helper()
		code, out := n.do(t, method, path, testAdmin, body)
		if code != want {
			t.Fatalf("%s %s: %d %s (want %d)", method, path, code, out, want)
		}
		return out
	}
	must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"Acme"}`)
	must(404, "PATCH", "/v1/admin/orgs/acme", `{"plan":"no-such-plan"}`)
	must(400, "PUT", "/v1/admin/plans/gold", `{"name":"Gold","currency":"usd"}`)
	must(400, "PUT", "/v1/admin/plans/gold", `{"id":"silver","name":"Gold","currency":"USD"}`)
	must(200, "PUT", "/v1/admin/plans/gold", `{"name":"Gold","currency":"USD","base_price":1000,"included_receipts":5000,"price_per_1000":50,"limits":{"rate_limit":100,"burst":150,"monthly_receipts":9000}}`)
	must(200, "PATCH", "/v1/admin/orgs/acme", `{"plan":"gold","limits":{"burst":300}}`)
	must(400, "PATCH", "/v1/admin/orgs/acme", `{"limits":{"rate_limit":-1}}`)
	// New terms for the plan: the organization moves to them.
	must(200, "PUT", "/v1/admin/plans/gold", `{"name":"Gold","currency":"USD","base_price":2000,"included_receipts":5000,"price_per_1000":50,"limits":{"rate_limit":200,"burst":150}}`)

	var org Org
	if err := json.Unmarshal([]byte(must(200, "GET", "/v1/admin/orgs/acme", "")), &org); err != nil {
		t.Fatal(err)
	}
	h := org.PlanHistory
	if len(h) != 3 || h[0].Plan.ID != DefaultPlan || h[1].Plan.BasePrice != 1000 || h[2].Plan.BasePrice != 2000 ||
		!h[1].From.Before(h[2].From) {
		t.Fatalf("plan history %+v", h)
	}
	if got := org.EffectiveLimits(); got != (tenants.Limits{RateLimit: 200, Burst: 300}) {
		t.Fatalf("effective limits %+v", got)
	}

	var pk producerKeyView
	if err := json.Unmarshal([]byte(must(201, "POST", "/v1/admin/orgs/acme/producer-keys", "")), &pk); err != nil || len(pk.Secret) < 32 {
		t.Fatalf("producer key %+v %v", pk, err)
	}
	must(404, "POST", "/v1/admin/orgs/globex/producer-keys", "")
	must(404, "POST", "/v1/admin/orgs/acme/producer-keys/pk_nothere/rotate", "")
	must(400, "POST", "/v1/admin/orgs/acme/producer-keys/"+pk.ID+"/rotate", `{"overlap":"forever"}`)
	var next producerKeyView
	json.Unmarshal([]byte(must(201, "POST", "/v1/admin/orgs/acme/producer-keys/"+pk.ID+"/rotate", `{"overlap":"1s"}`)), &next)
	if list := must(200, "GET", "/v1/admin/orgs/acme/producer-keys", ""); json.Unmarshal([]byte(list), &struct{}{}) != nil ||
		strings.Contains(list, pk.Secret) || strings.Contains(list, next.Secret) {
		t.Fatalf("the list shows a secret: %s", list)
	}

	r, _ := follow(t, ReplicaConfig{Addrs: []string{n.Addr()}, Token: testNode, Wait: time.Second})
	testenv.WaitFor(t, "the copy has the new key", 2*time.Second, func() (bool, string) {
		_, ok := r.ProducerSecret("acme", next.ID)
		return ok, ""
	})
	if l, ok := r.Limits("acme"); !ok || l.RateLimit != 200 || l.Burst != 300 {
		t.Fatalf("replica limits %+v %v", l, ok)
	}
	if p := r.Plans("acme"); len(p) != 3 {
		t.Fatalf("replica plans %+v", p)
	}
	if s, ok := r.ProducerSecret("acme", pk.ID); !ok || string(s) != pk.Secret {
		t.Fatal("the rotated key stopped before its overlap ended")
	}
	testenv.WaitFor(t, "the rotated key ends after its overlap", 3*time.Second, func() (bool, string) {
		_, ok := r.ProducerSecret("acme", pk.ID)
		return !ok, ""
	})
	if _, ok := r.ProducerSecret("globex", next.ID); ok {
		t.Fatal("another organization's name admitted the key")
	}
	must(204, "DELETE", "/v1/admin/orgs/acme/producer-keys/"+next.ID, "")
	must(409, "DELETE", "/v1/admin/orgs/acme/producer-keys/"+next.ID, "")
	testenv.WaitFor(t, "a revoked producer key refused", 2*time.Second, func() (bool, string) {
		_, ok := r.ProducerSecret("acme", next.ID)
		return !ok, ""
	})
}

// Settings are checked: a logo is an http(s) URL, a support email an
// address, a colour #rrggbb, a retry schedule durations.
func TestOrgSettingsChecked(t *testing.T) {
	n := soloNode(t)
	op := operator(t, n)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"Acme"}`)
	for _, bad := range []string{
		`{"settings":{"logo_url":"javascript:alert(1)"}}`, `{"settings":{"support_email":"not-an-address"}}`,
		`{"settings":{"brand_color":"red"}}`, `{"settings":{"webhook_retry_schedule":["soon"]}}`,
		`{"settings":{"retention_days":-1}}`,
	} {
		op.must(400, "PATCH", "/v1/orgs/acme", bad)
	}
	body := op.must(200, "PATCH", "/v1/orgs/acme", `{"settings":{"display_name":"Acme Inc.","logo_url":"https://acme.test/logo.svg","brand_color":"#0a84ff","support_email":"help@acme.test","retention_days":90,"webhook_retry_schedule":["0s","5s","5m"]}}`)
	if !strings.Contains(body, `"display_name":"Acme Inc."`) || !strings.Contains(body, `"role":"owner"`) {
		t.Fatalf("settings: %s", body)
	}
}
