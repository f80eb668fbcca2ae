package coordinator

import (
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// An organization's API settings: a new organization is pinned to the
// current version, an old one reads as the baseline; refused headers get
// a 400 naming them; the replica gives the tiers the settings and each
// key's defaults and version (its own pin, else its organization's).
func TestAPISettings(t *testing.T) {
	n := soloNode(t)
	op := operator(t, n)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"Acme"}`)
	var v apiSettingsView
	json.Unmarshal([]byte(op.must(200, "GET", "/v1/orgs/acme/api-settings", "")), &v)
	if v.APIVersion != schemas.LatestAPIVersion() || v.WebhookReceipt != "include" || len(v.Versions) != len(schemas.APIVersions) {
		t.Fatalf("a new organization's settings: %+v", v)
	}
	// An organization from before dated versions (no api member) reads as
	// the baseline.
	old := testOrg("legacy")
	if _, err := n.node.Propose(&PutOrg{Org: old, Create: true}); err != nil {
		t.Fatal(err)
	}
	json.Unmarshal([]byte(op.must(200, "GET", "/v1/orgs/legacy/api-settings", "")), &v)
	if v.APIVersion != schemas.APIVersionBaseline {
		t.Fatalf("an old organization's version: %+v", v)
	}

	for body, want := range map[string]string{
		`{"response_headers":{"Strict-Transport-Security":"max-age=0"}}`: `"Strict-Transport-Security"`,
		`{"response_headers":{"access-control-allow-origin":"*"}}`:       `"access-control-allow-origin"`,
		`{"response_headers":{"Certnode-Version":"x"}}`:                  `"Certnode-Version"`,
		`{"response_headers":{"X-Ok":"a\r\nSet-Cookie: x=1"}}`:           `"X-Ok"`,
		`{"response_headers":{"Bad Name":"x"}}`:                          `"Bad Name"`,
		`{"receipt_metadata":{"nested":{"a":1}}}`:                        `"nested"`,
		`{"receipt_metadata":[1]}`:                                       "receipt_metadata",
		`{"webhook_receipt":"sometimes"}`:                                `"sometimes"`,
		`{"api_version":"2020-01-01"}`:                                   `"2020-01-01"`,
		`{"api_version":""}`:                                             "api_version",
	} {
		resp, out := op.do("PATCH", "/v1/orgs/acme/api-settings", body)
		if resp.StatusCode != 400 || !strings.Contains(out, `"code":"invalid"`) || !strings.Contains(out, strings.ReplaceAll(want, `"`, `\"`)) {
			t.Errorf("%s: %d %s, want 400 naming %s", body, resp.StatusCode, out, want)
		}
	}
	out := op.must(200, "PATCH", "/v1/orgs/acme/api-settings",
		`{"response_headers":{"X-Acme-Tenant":"acme","X-Request-Source":"certnode"},"webhook_receipt":"omit",`+
			`"receipt_metadata":{"issuer":"Acme Corp","environment":"prod","tier":2},"api_version":"`+schemas.APIVersionBaseline+`"}`)
	json.Unmarshal([]byte(out), &v)
	if string(v.ReceiptMetadata) != `{"environment":"prod","issuer":"Acme Corp","tier":2}` || v.APIVersion != schemas.APIVersionBaseline {
		t.Fatalf("settings after the change: %s", out)
	}
	// Absent members keep their value; null removes the metadata.
	json.Unmarshal([]byte(op.must(200, "PATCH", "/v1/orgs/acme/api-settings", `{"webhook_receipt":"include"}`)), &v)
	if v.ResponseHeaders["X-Acme-Tenant"] != "acme" || v.ReceiptMetadata == nil || v.WebhookReceipt != "include" {
		t.Fatalf("a partial change: %+v", v)
	}
	op.must(200, "PATCH", "/v1/orgs/acme/api-settings", `{"webhook_receipt":"omit","receipt_metadata":{"issuer":"Acme Corp"}}`)

	var pinned, plain keyView
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/acme/keys",
		`{"scopes":["jobs","sign","read"],"defaults":{"job_type":"sign","result_format":"compact","api_version":"`+schemas.APIVersionWhiteLabel+`"}}`)), &pinned)
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/acme/keys", `{"scopes":["sign"]}`)), &plain)
	if pinned.Defaults.JobType != "sign" || pinned.Defaults.ResultFormat != "compact" {
		t.Fatalf("created key: %+v", pinned)
	}
	op.must(400, "POST", "/v1/orgs/acme/keys", `{"scopes":["sign"],"defaults":{"job_type":"everything"}}`)
	op.must(400, "PATCH", "/v1/orgs/acme/keys/"+plain.ID, `{"defaults":{"result_format":"xml"}}`)
	op.must(400, "PATCH", "/v1/orgs/acme/keys/"+plain.ID, `{}`)
	op.must(404, "PATCH", "/v1/orgs/acme/keys/cnk_nothing00000", `{"defaults":{}}`)
	out = op.must(200, "PATCH", "/v1/orgs/acme/keys/"+plain.ID, `{"defaults":{"job_type":"verify"}}`)
	if !strings.Contains(out, `"defaults":{"job_type":"verify"}`) || strings.Contains(out, `"key":`) {
		t.Fatalf("changed key: %s", out)
	}

	r, _ := follow(t, ReplicaConfig{Addrs: []string{n.Addr()}, Token: testNode, Wait: time.Second})
	testenv.WaitFor(t, "the replica has the key defaults", 5*time.Second, func() (bool, string) {
		tn, ok := r.Authenticate(plain.Key)
		return ok && tn.Defaults.JobType == "verify", ""
	})
	tp, _ := r.Authenticate(pinned.Key)
	tn, _ := r.Authenticate(plain.Key)
	if tp.APIVersion != schemas.APIVersionWhiteLabel || tn.APIVersion != schemas.APIVersionBaseline || tp.Defaults.ResultFormat != "compact" {
		t.Fatalf("tenants: pinned %+v, plain %+v", tp, tn)
	}
	s, ok := r.APISettings("acme")
	if !ok || s.WebhookReceipt != "omit" || string(s.ReceiptMetadata) != `{"issuer":"Acme Corp"}` || s.ResponseHeaders["X-Request-Source"] != "certnode" {
		t.Fatalf("replica settings: %v %+v", ok, s)
	}
	if s, _ := r.APISettings("legacy"); s.APIVersion != schemas.APIVersionBaseline {
		t.Fatalf("legacy: %+v", s)
	}
	if _, ok := r.APISettings("nobody"); ok {
		t.Fatal("settings of an unknown organization")
	}
}

// apiSettingsConformance checks the API settings routes and the key
// defaults route against the OpenAPI document.
func apiSettingsConformance(t *testing.T, k *conformance, admin, key, dev *client) {
	var created keyView
	json.Unmarshal([]byte(k.expect(t, call{name: "a key with defaults", as: dev, method: "POST", path: "/v1/orgs/acme/keys", status: 201,
		body: `{"scopes":["jobs","read"],"defaults":{"job_type":"verify","result_format":"compact","api_version":"` + schemas.APIVersionBaseline + `"}}`}).Body), &created)
	for _, x := range []call{
		{name: "the settings", as: dev, method: "GET", path: "/v1/orgs/acme/api-settings", status: 200},
		{name: "another organization's settings", as: key, method: "GET", path: "/v1/orgs/globex/api-settings", status: 404, code: "not_found"},
		{name: "change them", as: admin, method: "PATCH", path: "/v1/orgs/acme/api-settings", status: 200,
			body: `{"response_headers":{"X-Acme":"1"},"webhook_receipt":"omit","receipt_metadata":{"issuer":"Acme Corp","prod":true},"api_version":"` + schemas.LatestAPIVersion() + `"}`},
		{name: "remove the metadata", as: key, method: "PATCH", path: "/v1/orgs/acme/api-settings", body: `{"receipt_metadata":null}`, status: 200},
		{name: "a refused header", as: admin, method: "PATCH", path: "/v1/orgs/acme/api-settings", body: `{"response_headers":{"Set-Cookie":"a=b"}}`, status: 400, code: "invalid"},
		{name: "an unknown version", as: admin, method: "PATCH", path: "/v1/orgs/acme/api-settings", body: `{"api_version":"1999-01-01"}`, status: 400, code: "invalid"},
		{name: "change them as a developer", as: dev, method: "PATCH", path: "/v1/orgs/acme/api-settings", body: `{"webhook_receipt":"include"}`, status: 403, code: "forbidden_role"},
		{name: "change a key's defaults", as: dev, method: "PATCH", path: "/v1/orgs/acme/keys/" + created.ID, body: `{"defaults":{"job_type":"sign"}}`, status: 200},
		{name: "a default that does not exist", as: dev, method: "PATCH", path: "/v1/orgs/acme/keys/" + created.ID, body: `{"defaults":{"job_type":"both"}}`, offSpec: true, status: 400, code: "invalid"},
		{name: "defaults of an unknown key", as: dev, method: "PATCH", path: "/v1/orgs/acme/keys/cnk_nothing", body: `{"defaults":{}}`, status: 404, code: "not_found"},
	} {
		k.expect(t, x)
	}
}
