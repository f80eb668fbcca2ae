package webhook

import (
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// receipt.signed events carry the receipt or, where the organization (by
// default) or the endpoint (its own choice) omits it, its receipt_id and
// receipt_url for the consumer to fetch it; both bodies meet the event's
// schema and are signed for their endpoint.
func TestReceiptOmittedByOrgOrEndpoint(t *testing.T) {
	h := newHarness(t, nil)
	h.dir.receipt = map[string]string{"omitter": ReceiptOmit}
	rv := newReceiver(t, nil)
	with := func(ep *Endpoint, mode string) *Endpoint { ep.Receipt = mode; return ep }
	for _, ep := range []*Endpoint{
		rv.endpoint("ep_incdefault", "acme"),
		with(rv.endpoint("ep_omit", "acme"), ReceiptOmit),
		rv.endpoint("ep_orgomits", "omitter"),
		with(rv.endpoint("ep_include", "omitter"), ReceiptInclude),
	} {
		h.dir.add(ep)
	}
	h.start()
	h.result("acme", "req_a")
	h.result("omitter", "req_o")
	testenv.WaitFor(t, "four deliveries", 10*time.Second, func() (bool, string) { return len(rv.received()) >= 4, "" })
	byMessage := map[string]string{}
	for _, ep := range []struct{ id, org, req string }{{"ep_incdefault", "acme", "req_a"}, {"ep_omit", "acme", "req_a"},
		{"ep_orgomits", "omitter", "req_o"}, {"ep_include", "omitter", "req_o"}} {
		byMessage[schemas.MessageID(schemas.ResultEventID(&schemas.Result{ID: ep.req, Tenant: ep.org}), ep.id)] = ep.id
	}
	carried := map[string]bool{}
	for _, g := range rv.received() {
		if g.valid != nil || g.schemaErr != nil {
			t.Fatalf("%s: signature %v, schema %v", g.id, g.valid, g.schemaErr)
		}
		var ev struct {
			Data schemas.ReceiptEventData `json:"data"`
		}
		if err := json.Unmarshal(g.body, &ev, json.RejectUnknownMembers(false)); err != nil {
			t.Fatal(err)
		}
		ep := byMessage[g.id]
		carried[ep] = len(ev.Data.Receipt) > 0
		if !carried[ep] && (ev.Data.ReceiptURL == "" || ev.Data.ReceiptID == "") {
			t.Errorf("%s: no receipt and no reference: %s", ep, g.body)
		}
	}
	want := map[string]bool{"ep_incdefault": true, "ep_omit": false, "ep_orgomits": false, "ep_include": true}
	for ep, w := range want {
		if c, ok := carried[ep]; !ok || c != w {
			t.Errorf("%s: receipt carried %v (delivered %v), want %v", ep, c, ok, w)
		}
	}
}
