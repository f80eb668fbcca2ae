package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/go-json-experiment/json"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/ingest"
	"github.com/certnode/certnode/internal/mail/mailtest"
	"github.com/certnode/certnode/internal/oastest"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// The document describes NDJSON bodies as the array of their lines, as
// sequential media types are described; this decoder reads them so, and
// kin-openapi then validates every line against the item schema.
func init() {
	for _, mt := range []string{"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"} {
		openapi3filter.RegisterBodyDecoder(mt, ndjsonLines)
	}
	for _, mt := range []string{"application/vnd.apache.arrow.stream", "application/vnd.apache.parquet"} {
		openapi3filter.RegisterBodyDecoder(mt, openapi3filter.FileBodyDecoder)
	}
}

func ndjsonLines(body io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
	lines := []any{}
	sc := bufio.NewScanner(body)
	sc.Buffer(nil, 16<<20)
	for n := 1; sc.Scan(); n++ {
		l := bytes.TrimSpace(sc.Bytes())
		if len(l) == 0 {
			continue // blank input lines are skipped, keeping the numbering
		}
		var v any
		if err := json.Unmarshal(l, &v); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		lines = append(lines, v)
	}
	return lines, sc.Err()
}

// apiClient bounds every exchange, so that a stream that never ends (a
// results stream of a job the server cannot finish) fails the test
// instead of hanging it.
var apiClient = &http.Client{Timeout: 30 * time.Second}

// contract checks exchanges with a running server against the OpenAPI
// document that server publishes, and records which routes had a success
// and an error validated.
type contract struct {
	oas    *oastest.Doc
	doc    *openapi3.T
	router routers.Router
	// "METHOD PATH" of the routes with a success and an error validated.
	success, failure map[string]bool
}

func newContract(t *testing.T, e *devEnv) *contract {
	t.Helper()
	code, body := e.do("GET", "/openapi.json", "", "", "")
	if code != 200 {
		t.Fatalf("GET /openapi.json: %d %s", code, body)
	}
	oas := oastest.Load(t, []byte(body), e.base, bearerPresent)
	return &contract{oas: oas, doc: oas.T, router: oas.Router, success: map[string]bool{}, failure: map[string]bool{}}
}

// bearerPresent is what the document can say about a request's key: that
// it has one. Whether the key is known is the server's answer (401).
func bearerPresent(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	h := in.RequestValidationInput.Request.Header.Get("Authorization")
	if in.SecuritySchemeName != "apiKey" || len(h) <= len("Bearer ") || !strings.HasPrefix(h, "Bearer ") {
		return errors.New("no bearer API key")
	}
	return nil
}

// exchange is one request to an operation of the document.
type exchange struct {
	name                           string
	method, path, key, ctype, body string
	host                           string // the request's Host, if not the server's address
	// offSpec: the request breaks the document (the server must refuse
	// it, or accept only the part it can, as a bulk upload does).
	offSpec bool
	status  int
	code    string // the error code, for an error status
	version string // Certnode-Version, when set
}

type response struct {
	status int
	header http.Header
	body   string
}

func (x exchange) request(base string) *http.Request {
	req, _ := http.NewRequest(x.method, base+x.path, strings.NewReader(x.body))
	if x.key != "" {
		req.Header.Set("Authorization", "Bearer "+x.key)
	}
	if x.ctype != "" {
		req.Header.Set("Content-Type", x.ctype)
	}
	if x.host != "" {
		req.Host = x.host
	}
	if x.version != "" {
		req.Header.Set(schemas.VersionHeader, x.version)
	}
	return req
}

// do sends x, checks the request against the document (it must conform
// unless x.offSpec) and the response (status, headers, body) against the
// operation's responses, undocumented statuses included.
func (c *contract) do(t *testing.T, e *devEnv, x exchange) response {
	t.Helper()
	r := c.oas.Exchange(t, apiClient, x.request(e.base), x.name, x.offSpec)
	switch {
	case !r.Conforms:
	case r.Status < 400:
		c.success[r.Op] = true
	default:
		c.failure[r.Op] = true
	}
	return response{r.Status, r.Header, r.Body}
}

// expect is do, then the status and error code x names.
func (c *contract) expect(t *testing.T, e *devEnv, x exchange) response {
	t.Helper()
	r := c.do(t, e, x)
	if r.status != x.status {
		t.Fatalf("%s: got %d %s, want %d", x.name, r.status, r.body, x.status)
	}
	if x.code != "" {
		if got := errorCode(t, r.body); got != x.code {
			t.Fatalf("%s: error code %q, want %q", x.name, got, x.code)
		}
	}
	return r
}

// timedOut sends x, a /v1/sign or /v1/verify to a server with a 1ns sign
// wait, until it answers 504, and returns the job id to poll. A result
// already back when the wait begins is answered at once (200), which the
// document allows too.
func (c *contract) timedOut(t *testing.T, e *devEnv, x exchange) string {
	t.Helper()
	for range 20 {
		r := c.do(t, e, x)
		switch {
		case r.status == 504 && errorCode(t, r.body) == "timeout":
			return jobIDIn(r.body)
		case r.status != 200:
			t.Fatalf("%s: %d %s", x.name, r.status, r.body)
		}
	}
	t.Fatalf("%s: never answered 504", x.name)
	return ""
}

// outsideOperations checks answers to requests that match no operation:
// an unknown path is a 404 and a method the path lacks a 405 whose Allow
// header lists the document's methods; both bodies are the Error schema.
// The 405 is the only error some public routes can be made to answer, so
// it counts as their error case.
func (c *contract) outsideOperations(t *testing.T, e *devEnv) {
	errSchema := c.doc.Components.Schemas["Error"].Value
	check := func(method, path string, status int, code string, routeErr error) {
		t.Helper()
		req, _ := http.NewRequest(method, e.base+path, nil)
		if _, _, err := c.router.FindRoute(req); err != routeErr {
			t.Fatalf("%s %s: the document's router says %v, want %v", method, path, err, routeErr)
		}
		resp, err := apiClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var v any
		if resp.StatusCode != status || json.Unmarshal(b, &v) != nil || errorCode(t, string(b)) != code {
			t.Fatalf("%s %s: %d %s, want %d %s", method, path, resp.StatusCode, b, status, code)
		}
		if err := errSchema.VisitJSON(v, openapi3.EnableJSONSchema2020()); err != nil {
			t.Fatalf("%s %s: body is not an Error: %v", method, path, err)
		}
		if status != 405 {
			return
		}
		var want []string
		for p, item := range c.doc.Paths.Map() {
			if concrete(p) == path {
				for m := range item.Operations() {
					want = append(want, m)
				}
			}
		}
		slices.Sort(want)
		if got := resp.Header.Get("Allow"); got != strings.Join(want, ", ") {
			t.Fatalf("%s %s: Allow %q, the document has %v", method, path, got, want)
		}
		for _, r := range ingest.Routes() {
			if concrete(r.Path) == path && !r.Tenant {
				c.failure[r.Method+" "+r.Path] = true
			}
		}
	}
	check("GET", "/v2/nothing", 404, "not_found", routers.ErrPathNotFound)
	check("GET", "/v1/jobs/x/y/z", 404, "not_found", routers.ErrPathNotFound)
	methods := map[string][]string{} // of each path
	for _, r := range ingest.Routes() {
		methods[r.Path] = append(methods[r.Path], r.Method)
	}
	for path, has := range methods {
		other := "DELETE"
		if slices.Contains(has, other) {
			other = "PATCH"
		}
		check(other, concrete(path), 405, "method_not_allowed", routers.ErrMethodNotAllowed)
	}
}

// concrete fills a path template's parameters with "x".
func concrete(template string) string {
	segs := strings.Split(template, "/")
	for i, s := range segs {
		if strings.HasPrefix(s, "{") {
			segs[i] = "x"
		}
	}
	return strings.Join(segs, "/")
}

// checkRoutes fails when the document and ingest.Routes() disagree on the
// operations, or on which of them need an API key. Operations tagged
// accounts are the coordinator's, which ingest passes on to it (they are
// not in ingest.Routes()); coordinator/openapi_test.go checks them against
// the coordinator's routes, directly and through that proxy.
func (c *contract) checkRoutes(t *testing.T) {
	ops := c.oas.Operations()
	served := map[string]bool{}
	for _, r := range ingest.Routes() {
		key := r.Method + " " + r.Path
		served[key] = true
		op, ok := ops[key]
		if !ok {
			t.Errorf("%s is served but not in the OpenAPI document", key)
			continue
		}
		sec := c.doc.Security
		if op.Security != nil {
			sec = *op.Security
		}
		keyed := slices.ContainsFunc(sec, func(req openapi3.SecurityRequirement) bool { _, ok := req["apiKey"]; return ok })
		if keyed != r.Tenant || (!r.Tenant && len(sec) != 0) {
			t.Errorf("%s: the document's security %v does not match the route's Tenant=%v", key, sec, r.Tenant)
		}
	}
	for key, op := range ops {
		if !served[key] && !slices.Contains(op.Tags, "accounts") {
			t.Errorf("the OpenAPI document has %s, which the server does not serve", key)
		}
	}
}

// needServices lists routes whose success the in-process dev cannot give,
// with the test that validates it against real services.
var needServices = map[string]string{
	"GET /v1/receipts/{receipt_id}":        "needs ClickHouse: TestOpenAPIReceiptsClickHouse (integration)",
	"GET /v1/usage":                        "needs ClickHouse: TestOpenAPIUsageClickHouse (integration)",
	"GET /v1/invoices":                     "needs ClickHouse: TestOpenAPIUsageClickHouse (integration)",
	"GET /v1/invoices/{period}":            "needs ClickHouse: TestOpenAPIUsageClickHouse (integration)",
	"GET /v1/analytics/series":             "needs ClickHouse: TestOpenAPIAnalyticsClickHouse (integration)",
	"GET /v1/analytics/top":                "needs ClickHouse: TestOpenAPIAnalyticsClickHouse (integration)",
	"GET /v1/analytics/summary":            "needs ClickHouse: TestOpenAPIAnalyticsClickHouse (integration)",
	"GET /v1/analytics/requests":           "needs ClickHouse: TestOpenAPIAnalyticsClickHouse (integration)",
	"GET /v1/reports/{report_id}/run":      "needs ClickHouse: TestOpenAPIAnalyticsClickHouse (integration)",
	"POST /v1/compliance/reports":          "needs ClickHouse: TestComplianceReport (integration)",
	"GET /v1/receipts/{receipt_id}/proof":  "needs ClickHouse (whose receipt it is): TestTransparencyLog (integration)",
	"GET /v1/audit/export":                 "needs ClickHouse (the events): TestAuditLog (integration)",
	"GET /v1/security/alerts":              "needs ClickHouse (the alerts): TestThreatDetection (integration)",
	"POST /v1/privacy/subjects":            "needs ClickHouse: TestPrivacy (integration)",
	"POST /v1/privacy/erasures":            "needs ClickHouse: TestPrivacy (integration)",
	"GET /v1/exports/{kind}":               exportStore,
	"POST /v1/export-jobs":                 exportStore,
	"GET /v1/export-jobs":                  exportStore,
	"GET /v1/export-jobs/{export_id}":      exportStore,
	"DELETE /v1/export-jobs/{export_id}":   exportStore,
	"GET /v1/export-jobs/{export_id}/file": exportStore,
	// dev runs without the deliveries store here, and the webhook writes
	// need it and the coordinator's endpoints.
	"GET /v1/webhooks/deliveries":                 webhookStore,
	"GET /v1/webhooks/deliveries/{id}":            webhookStore,
	"POST /v1/webhooks/deliveries/{id}/redeliver": webhookStore,
	"POST /v1/webhooks/endpoints/{id}/replay":     webhookStore,
}

const exportStore = "needs ClickHouse: TestOpenAPIExportsClickHouse (integration)"

const webhookStore = "needs the deliveries store (ClickHouse) and the coordinator's endpoints: ingest's TestWebhookRoutesConform validates its answers with fakes"

// checkCoverage fails for every route without a validated success and a
// validated error, so that a new route needs its cases here.
func (c *contract) checkCoverage(t *testing.T) {
	for _, r := range ingest.Routes() {
		key := r.Method + " " + r.Path
		if _, elsewhere := needServices[key]; !c.success[key] && !elsewhere {
			t.Errorf("%s: no success validated against the document", key)
		}
		if !c.failure[key] {
			t.Errorf("%s: no error validated against the document", key)
		}
	}
}

// TestOpenAPIContract drives every route of a running `certnode dev` and
// validates requests and responses, errors included, against the document.
func TestOpenAPIContract(t *testing.T) {
	ns := mailtest.StartDNS(t) // proves the demo organization's custom domain
	e := startDev(t, "--dns-resolver", ns.Addr)
	c := newContract(t, e)
	const js = "application/json"
	t.Run("the document has exactly the served routes", c.checkRoutes)
	t.Run("the served JSON is the embedded YAML", func(t *testing.T) {
		// Read as other tools read YAML (kin-openapi's own YAML loader), so
		// the conversion lost or changed nothing.
		fromYAML, err := openapi3.NewLoader().LoadFromData(schemas.OpenAPIYAML())
		if err != nil {
			t.Fatal(err)
		}
		fromYAML.Servers = c.doc.Servers
		a, _ := json.Marshal(fromYAML, json.Deterministic(true))
		b, _ := json.Marshal(c.doc, json.Deterministic(true))
		if !bytes.Equal(a, b) {
			t.Fatal("GET /openapi.json differs from schemas/openapi.yaml")
		}
	})

	signed := c.expect(t, e, exchange{name: "sign", method: "POST", path: "/v1/sign", key: e.key, ctype: js,
		body: `{"payload":{"order":42,"amount":19.99}}`, status: 200}).body
	receipt := strings.TrimSpace(signed)
	var rc struct {
		ReceiptID string `json:"receipt_id"`
	}
	json.Unmarshal([]byte(receipt), &rc, json.RejectUnknownMembers(false))
	_, jwks := e.do("GET", "/.well-known/jwks.json", "", "", "")

	// The demo organization's custom domain, proved by DNS.
	code, body := e.admin("POST", "/v1/orgs/"+e.creds().Tenant+"/domains", `{"name":"api.contract.test"}`)
	var dom struct {
		Token string `json:"token"`
	}
	if json.Unmarshal([]byte(body), &dom, json.RejectUnknownMembers(false)); code != 201 {
		t.Fatalf("add a domain: %d %s", code, body)
	}
	ns.Set("_certnode-challenge.api.contract.test", "certnode-verify="+dom.Token)
	if code, body := e.admin("POST", "/v1/orgs/"+e.creds().Tenant+"/domains/api.contract.test/verify", ""); code != 200 {
		t.Fatalf("verify the domain: %d %s", code, body)
	}
	testenv.WaitFor(t, "ingest binds the domain", 10*time.Second, func() (bool, string) {
		r := exchange{method: "GET", path: "/v1/branding/host", host: "api.contract.test"}.request(e.base)
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status
	})

	job := c.expect(t, e, exchange{name: "sign job", method: "POST", path: "/v1/jobs?type=sign", key: e.key, ctype: ndjson,
		body: "{\"n\":1}\n\n{\"n\":3}\n", status: 202}).body
	var acc struct {
		JobID string `json:"job_id"`
	}
	json.Unmarshal([]byte(job), &acc, json.RejectUnknownMembers(false))
	e.waitDone(acc.JobID)
	// A rejected line is off the document, yet the job goes on without it.
	mixed := e.submit("sign", "{\"n\":1}\n[1]\n{\"n\":3}\n")
	e.waitDone(mixed)
	signResults := c.expect(t, e, exchange{name: "sign results", method: "GET", path: "/v1/jobs/" + acc.JobID + "/results", key: e.key,
		status: 200}).body
	abandoned := e.injectAbandonedJob("demo")
	e.waitLogged("/v1/log/checkpoint", 1)
	e.waitLogged("/v1/audit/checkpoint", 1) // the demo organization's set-up

	cases := []exchange{
		// Public routes.
		{name: "healthz", method: "GET", path: "/healthz", status: 200},
		{name: "readyz", method: "GET", path: "/readyz", status: 200},
		{name: "metrics", method: "GET", path: "/metrics", status: 200},
		{name: "jwks", method: "GET", path: "/.well-known/jwks.json", status: 200},
		{name: "jwks v1", method: "GET", path: "/v1/jwks", status: 200},
		{name: "webhook event types", method: "GET", path: "/v1/webhooks/event-types", status: 200},
		{name: "openapi", method: "GET", path: "/openapi.json", status: 200},
		{name: "log checkpoint", method: "GET", path: "/v1/log/checkpoint", status: 200},
		{name: "log key", method: "GET", path: "/v1/log/key", status: 200},
		{name: "log consistency", method: "GET", path: "/v1/log/consistency?from=1", status: 200},
		{name: "log consistency from 0", method: "GET", path: "/v1/log/consistency?from=0", offSpec: true, status: 400, code: "invalid_from"},
		{name: "log consistency past the tree", method: "GET", path: "/v1/log/consistency?from=1&to=99999999", status: 400, code: "invalid_tree_size"},
		{name: "audit log checkpoint", method: "GET", path: "/v1/audit/checkpoint", status: 200},
		{name: "audit log key", method: "GET", path: "/v1/audit/key", status: 200},
		{name: "audit export without storage", method: "GET", path: "/v1/audit/export?from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z", key: e.key, status: 503, code: "exports_unavailable"},
		{name: "audit export without a window", method: "GET", path: "/v1/audit/export", key: e.key, offSpec: true, status: 400, code: "invalid_range"},
		{name: "audit export backwards", method: "GET", path: "/v1/audit/export?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", key: e.key, status: 400, code: "invalid_range"},
		{name: "subject access without storage", method: "POST", path: "/v1/privacy/subjects", key: e.key, ctype: js, body: `{"subject":"ada@example.com"}`, status: 503, code: "storage_unavailable"},
		{name: "subject access without a subject", method: "POST", path: "/v1/privacy/subjects", key: e.key, ctype: js, body: `{}`, offSpec: true, status: 400, code: "invalid_subject"},
		{name: "erasure without storage", method: "POST", path: "/v1/privacy/erasures", key: e.key, ctype: js, body: `{"all":true}`, status: 503, code: "storage_unavailable"},
		{name: "erasure of two kinds", method: "POST", path: "/v1/privacy/erasures", key: e.key, ctype: js, body: `{"all":true,"subject":"x"}`, status: 400, code: "invalid_erasure"},
		{name: "alerts without storage", method: "GET", path: "/v1/security/alerts", key: e.key, status: 503, code: "storage_unavailable"},
		{name: "alerts bad limit", method: "GET", path: "/v1/security/alerts?limit=0", key: e.key, offSpec: true, status: 400, code: "invalid_limit"},
		{name: "alerts backwards", method: "GET", path: "/v1/security/alerts?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", key: e.key, status: 400, code: "invalid_range"},
		{name: "audit export bad time", method: "GET", path: "/v1/audit/export?from=yesterday&to=2026-01-01T00:00:00Z", key: e.key, offSpec: true, status: 400, code: "invalid_from"},
		// The proof needs to know whose receipt it is: ClickHouse (off here).
		{name: "proof without storage", method: "GET", path: "/v1/receipts/" + rc.ReceiptID + "/proof", key: e.key, status: 503, code: "storage_unavailable"},
		{name: "proof unknown key", method: "GET", path: "/v1/receipts/" + rc.ReceiptID + "/proof", key: "cn_nope", status: 401, code: "unauthorized"},
		// The public proof, for the verification page.
		{name: "public proof", method: "GET", path: "/v1/log/proof/" + rc.ReceiptID, status: 200},
		{name: "public proof of an unknown receipt", method: "GET", path: "/v1/log/proof/" + strings.Repeat("A", 43), status: 404, code: "not_logged"},
		{name: "public proof of no receipt id", method: "GET", path: "/v1/log/proof/x", status: 400, code: "invalid_receipt_id"},

		// Branding previews and style sheet.
		{name: "preview an error page", method: "POST", path: "/v1/branding/preview", key: e.key, ctype: js,
			body: `{"page":"404","branding":{"display_name":"Demo","colors":{"primary":"#112233"}}}`, status: 200},
		{name: "preview the verification page", method: "POST", path: "/v1/branding/preview", key: e.key, ctype: js, body: `{"branding":{"custom_css":".cn-name{font-weight:700}"}}`, status: 200},
		{name: "preview CSS that loads a URL", method: "POST", path: "/v1/branding/preview", key: e.key, ctype: js,
			body: `{"branding":{"custom_css":"a{background:url(https://evil.test/x)}"}}`, status: 400, code: "invalid_branding"},
		{name: "preview a page that is none", method: "POST", path: "/v1/branding/preview", key: e.key, ctype: js, body: `{"page":"teapot","branding":{}}`, offSpec: true, status: 400, code: "invalid_page"},
		{name: "preview unknown key", method: "POST", path: "/v1/branding/preview", key: "cn_nope", ctype: js, body: `{"branding":{}}`, status: 401, code: "unauthorized"},
		{name: "style sheet", method: "GET", path: "/v1/branding/style.css", key: e.key, status: 200},
		{name: "style sheet unknown key", method: "GET", path: "/v1/branding/style.css", key: "cn_nope", status: 401, code: "unauthorized"},
		{name: "a custom domain's face", method: "GET", path: "/v1/branding/host", host: "api.contract.test", status: 200},
		{name: "the service's own host has none", method: "GET", path: "/v1/branding/host", status: 404, code: "not_custom_domain"},

		// Auth is the same on every tenant route: a missing key breaks the
		// document, an unknown one is the server's to refuse.
		{name: "sign without key", method: "POST", path: "/v1/sign", ctype: js, body: `{"payload":{}}`, offSpec: true, status: 401, code: "unauthorized"},
		{name: "sign unknown key", method: "POST", path: "/v1/sign", key: "cn_nope", ctype: js, body: `{"payload":{}}`, status: 401, code: "unauthorized"},
		{name: "verify unknown key", method: "POST", path: "/v1/verify", key: "cn_nope", ctype: js, body: `{"receipt":{}}`, status: 401, code: "unauthorized"},
		{name: "jobs unknown key", method: "POST", path: "/v1/jobs?type=sign", key: "cn_nope", ctype: ndjson, body: "{}\n", status: 401, code: "unauthorized"},
		{name: "job unknown key", method: "GET", path: "/v1/jobs/" + acc.JobID, key: "cn_nope", status: 401, code: "unauthorized"},
		{name: "results without key", method: "GET", path: "/v1/jobs/" + acc.JobID + "/results", offSpec: true, status: 401, code: "unauthorized"},
		{name: "receipt unknown key", method: "GET", path: "/v1/receipts/" + rc.ReceiptID, key: "cn_nope", status: 401, code: "unauthorized"},

		// POST /v1/sign
		{name: "sign empty object", method: "POST", path: "/v1/sign", key: e.key, ctype: js, body: `{"payload":{}}`, status: 200},
		{name: "sign wrong content type", method: "POST", path: "/v1/sign", key: e.key, ctype: "text/plain", body: `{"payload":{}}`, offSpec: true, status: 415, code: "unsupported_media_type"},
		{name: "sign not JSON", method: "POST", path: "/v1/sign", key: e.key, ctype: js, body: `{"payload":`, offSpec: true, status: 400, code: "malformed_json"},
		{name: "sign without payload", method: "POST", path: "/v1/sign", key: e.key, ctype: js, body: `{}`, offSpec: true, status: 422, code: "invalid_payload"},
		{name: "sign payload not object", method: "POST", path: "/v1/sign", key: e.key, ctype: js, body: `{"payload":[1]}`, offSpec: true, status: 422, code: "invalid_payload"},
		{name: "sign too large", method: "POST", path: "/v1/sign", key: e.key, ctype: js, body: `{"payload":{"a":"` + strings.Repeat("x", 2<<20) + `"}}`, status: 413, code: "too_large"},

		// POST /v1/verify
		{name: "verify", method: "POST", path: "/v1/verify", key: e.key, ctype: js, body: `{"receipt":` + receipt + `}`, status: 200},
		{name: "verify tampered", method: "POST", path: "/v1/verify", key: e.key, ctype: js, body: `{"receipt":` + strings.Replace(receipt, `"order":42`, `"order":43`, 1) + `}`, status: 200},
		{name: "verify malformed receipt", method: "POST", path: "/v1/verify", key: e.key, ctype: js, body: `{"receipt":{}}`, status: 200},
		{name: "verify with caller keys", method: "POST", path: "/v1/verify", key: e.key, ctype: js, body: `{"receipt":` + receipt + `,"jwks":` + jwks + `}`, status: 200},
		{name: "verify with caller keys, some skipped", method: "POST", path: "/v1/verify", key: e.key, ctype: js, status: 200,
			body: `{"receipt":` + receipt + `,"jwks":` + strings.Replace(jwks, `{"keys":[`, `{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"},"x",`, 1) + `}`},
		{name: "verify wrong content type", method: "POST", path: "/v1/verify", key: e.key, ctype: "text/plain", body: `{}`, offSpec: true, status: 415, code: "unsupported_media_type"},
		{name: "verify not JSON", method: "POST", path: "/v1/verify", key: e.key, ctype: js, body: `[`, offSpec: true, status: 400, code: "malformed_json"},
		{name: "verify receipt not object", method: "POST", path: "/v1/verify", key: e.key, ctype: js, body: `{"receipt":"x"}`, offSpec: true, status: 422, code: "invalid_receipt"},
		{name: "verify empty jwks", method: "POST", path: "/v1/verify", key: e.key, ctype: js, body: `{"receipt":{},"jwks":{"keys":[]}}`, offSpec: true, status: 422, code: "invalid_jwks"},
		{name: "verify too large", method: "POST", path: "/v1/verify", key: e.key, ctype: js, body: `{"receipt":{"a":"` + strings.Repeat("x", 2<<20) + `"}}`, status: 413, code: "too_large"},

		// POST /v1/jobs
		{name: "verify job of sign results", method: "POST", path: "/v1/jobs?type=verify", key: e.key, ctype: "application/jsonl", body: signResults, status: 202},
		{name: "verify job with caller keys", method: "POST", path: "/v1/jobs?type=verify", key: e.key, ctype: ndjson, status: 202,
			body: `{"receipt":` + receipt + `,"jwks":` + strings.Replace(strings.TrimSpace(jwks), `{"keys":[`, `{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"},`, 1) + "}\n" +
				`{"receipt":` + receipt + `,"jwks":{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}}` + "\n"},
		{name: "job with a rejected line", method: "POST", path: "/v1/jobs?type=sign", key: e.key, ctype: "application/x-jsonlines", body: "{}\nnope\n", offSpec: true, status: 202},
		{name: "job without type, and no default job type for the key", method: "POST", path: "/v1/jobs", key: e.key, ctype: ndjson, body: "{}\n", status: 400, code: "invalid_type"},
		{name: "job unknown type", method: "POST", path: "/v1/jobs?type=stamp", key: e.key, ctype: ndjson, body: "{}\n", offSpec: true, status: 400, code: "invalid_type"},
		{name: "job wrong content type", method: "POST", path: "/v1/jobs?type=sign", key: e.key, ctype: js, body: "{}\n", offSpec: true, status: 415, code: "unsupported_media_type"},
		{name: "job of no valid line", method: "POST", path: "/v1/jobs?type=sign", key: e.key, ctype: "application/ndjson", body: "[1]\nnope\n", offSpec: true, status: 422, code: "no_valid_lines"},

		// GET /v1/jobs/{job_id}
		{name: "job status", method: "GET", path: "/v1/jobs/" + acc.JobID, key: e.key, status: 200},
		{name: "abandoned job status", method: "GET", path: "/v1/jobs/" + abandoned, key: e.key, status: 200},
		{name: "unknown job", method: "GET", path: "/v1/jobs/job_nope", key: e.key, status: 404, code: "not_found"},

		// GET /v1/jobs
		{name: "jobs listed", method: "GET", path: "/v1/jobs?state=done&limit=5", key: e.key, status: 200},
		{name: "jobs limit 0", method: "GET", path: "/v1/jobs?limit=0", key: e.key, offSpec: true, status: 400, code: "invalid_limit"},
		{name: "jobs of no state", method: "GET", path: "/v1/jobs?state=lost", key: e.key, offSpec: true, status: 400, code: "invalid_state"},

		// GET /v1/jobs/{job_id}/results
		{name: "results with a rejected line", method: "GET", path: "/v1/jobs/" + mixed + "/results", key: e.key, status: 200},
		{name: "results resumed", method: "GET", path: "/v1/jobs/" + mixed + "/results?after_line=1", key: e.key, status: 200},
		{name: "results bad after_line", method: "GET", path: "/v1/jobs/" + acc.JobID + "/results?after_line=x", key: e.key, offSpec: true, status: 400, code: "invalid_after_line"},
		{name: "results negative after_line", method: "GET", path: "/v1/jobs/" + acc.JobID + "/results?after_line=-1", key: e.key, offSpec: true, status: 400, code: "invalid_after_line"},
		{name: "results of unknown job", method: "GET", path: "/v1/jobs/job_nope/results", key: e.key, status: 404, code: "not_found"},
		{name: "results of abandoned job", method: "GET", path: "/v1/jobs/" + abandoned + "/results", key: e.key, status: 409, code: "job_abandoned"},
		{name: "results compact", method: "GET", path: "/v1/jobs/" + mixed + "/results?format=compact", key: e.key, status: 200},
		{name: "results in no format", method: "GET", path: "/v1/jobs/" + mixed + "/results?format=xml", key: e.key, offSpec: true, status: 400, code: "invalid_format"},
		{name: "job in an unknown API version", method: "POST", path: "/v1/jobs?type=sign", key: e.key, ctype: ndjson, body: "{}\n", version: "2001-02-03", status: 400, code: "unknown_api_version"},
		{name: "sign in an unknown API version", method: "POST", path: "/v1/sign", key: e.key, ctype: js, body: `{"payload":{}}`, version: "1999-01-01", status: 400, code: "unknown_api_version"},
		{name: "sign in the baseline version", method: "POST", path: "/v1/sign", key: e.key, ctype: js, body: `{"payload":{}}`, version: schemas.APIVersionBaseline, status: 200},

		// GET /v1/receipts/{receipt_id}: dev runs without ClickHouse here.
		{name: "receipt without storage", method: "GET", path: "/v1/receipts/" + rc.ReceiptID, key: e.key, status: 503, code: "storage_unavailable"},
		{name: "receipt id not a digest", method: "GET", path: "/v1/receipts/nope", key: e.key, offSpec: true, status: 503, code: "storage_unavailable"},

		// GET /v1/usage, /v1/invoices, /v1/invoices/{period}: parameters
		// are checked first, then storage (ClickHouse is off here).
		{name: "usage without storage", method: "GET", path: "/v1/usage?granularity=hour&group_by=key&from=2026-05-01T00:00:00Z&to=2026-05-02T00:00:00Z", key: e.key, status: 503, code: "storage_unavailable"},
		{name: "usage unknown key", method: "GET", path: "/v1/usage", key: "cn_nope", status: 401, code: "unauthorized"},
		{name: "usage by week", method: "GET", path: "/v1/usage?granularity=week", key: e.key, offSpec: true, status: 400, code: "invalid_granularity"},
		{name: "usage by org", method: "GET", path: "/v1/usage?group_by=org", key: e.key, offSpec: true, status: 400, code: "invalid_group_by"},
		{name: "usage from not a time", method: "GET", path: "/v1/usage?from=yesterday", key: e.key, offSpec: true, status: 400, code: "invalid_from"},
		{name: "usage to not a time", method: "GET", path: "/v1/usage?to=2026-05", key: e.key, offSpec: true, status: 400, code: "invalid_to"},
		{name: "usage range inverted", method: "GET", path: "/v1/usage?from=2026-05-02T00:00:00Z&to=2026-05-01T00:00:00Z", key: e.key, status: 400, code: "invalid_range"},
		{name: "usage range too large", method: "GET", path: "/v1/usage?granularity=hour&from=2026-01-01T00:00:00Z&to=2026-05-01T00:00:00Z", key: e.key, status: 400, code: "range_too_large"},
		{name: "invoices without storage", method: "GET", path: "/v1/invoices", key: e.key, status: 503, code: "storage_unavailable"},
		{name: "invoice without storage", method: "GET", path: "/v1/invoices/2026-05?format=csv", key: e.key, status: 503, code: "storage_unavailable"},
		{name: "invoice period not a month", method: "GET", path: "/v1/invoices/2026-5", key: e.key, offSpec: true, status: 400, code: "invalid_period"},
		{name: "invoice in another format", method: "GET", path: "/v1/invoices/2026-05?format=pdf", key: e.key, offSpec: true, status: 400, code: "invalid_format"},

		// The analytics routes: parameters are checked first, then the
		// store (off here); the reader's own checks need it.
		{name: "series without storage", method: "GET", path: "/v1/analytics/series?metric=requests,latency_p99&group_by=status&granularity=hour&status=invalid,failed&from=2026-05-01T00:00:00Z&to=2026-05-02T00:00:00Z", key: e.key, status: 503, code: "analytics_unavailable"},
		{name: "series unknown parameter", method: "GET", path: "/v1/analytics/series?tenant=other", key: e.key, status: 400, code: "unknown_parameter"},
		{name: "series from not a time", method: "GET", path: "/v1/analytics/series?from=yesterday", key: e.key, offSpec: true, status: 400, code: "invalid_from"},
		{name: "top without storage", method: "GET", path: "/v1/analytics/top?group_by=reason&limit=5", key: e.key, status: 503, code: "analytics_unavailable"},
		{name: "top limit 0", method: "GET", path: "/v1/analytics/top?group_by=reason&limit=0", key: e.key, offSpec: true, status: 400, code: "invalid_limit"},
		{name: "summary without storage", method: "GET", path: "/v1/analytics/summary?from=2026-05-01T00:00:00Z", key: e.key, status: 503, code: "analytics_unavailable"},
		{name: "summary grouped", method: "GET", path: "/v1/analytics/summary?group_by=status", key: e.key, status: 400, code: "invalid_query"},
		{name: "summary unknown key", method: "GET", path: "/v1/analytics/summary", key: "cn_nope", status: 401, code: "unauthorized"},
		{name: "drill-down without storage", method: "GET", path: "/v1/analytics/requests?status=failed&limit=10", key: e.key, status: 503, code: "analytics_unavailable"},
		{name: "drill-down with an unknown parameter", method: "GET", path: "/v1/analytics/requests?sort=size", key: e.key, status: 400, code: "unknown_parameter"},

		// POST /v1/compliance/reports: the period is checked, then the store.
		{name: "compliance report without storage", method: "POST", path: "/v1/compliance/reports", key: e.key, ctype: "application/json", body: `{"from":"2026-01-01T00:00:00Z","to":"2026-02-01T00:00:00Z"}`, status: 503, code: "analytics_unavailable"},
		{name: "compliance report backwards", method: "POST", path: "/v1/compliance/reports", key: e.key, ctype: "application/json", body: `{"from":"2026-02-01T00:00:00Z","to":"2026-01-01T00:00:00Z"}`, status: 400, code: "invalid_range"},

		// GET /v1/reports/{report_id}/run: the report is found, then the
		// store (off here).
		{name: "report run without storage", method: "GET", path: "/v1/reports/" + e.newReport("demo") + "/run", key: e.key, status: 503, code: "analytics_unavailable"},
		{name: "an unknown report", method: "GET", path: "/v1/reports/rpt_nope/run", key: e.key, status: 404, code: "not_found"},

		// The export routes: parameters are checked first, then the store
		// (off here).
		{name: "export without storage", method: "GET", path: "/v1/exports/results?format=parquet&status=signed&from=2026-05-01T00:00:00Z&limit=100", key: e.key, status: 503, code: "exports_unavailable"},
		{name: "export from not a time", method: "GET", path: "/v1/exports/results?from=yesterday", key: e.key, offSpec: true, status: 400, code: "invalid_from"},
		{name: "export receipt not a bool", method: "GET", path: "/v1/exports/results?receipt=maybe", key: e.key, offSpec: true, status: 400, code: "invalid_receipt"},
		{name: "export limit 0", method: "GET", path: "/v1/exports/results?limit=0", key: e.key, offSpec: true, status: 400, code: "invalid_limit"},
		{name: "export job without storage", method: "POST", path: "/v1/export-jobs", key: e.key, ctype: "application/json", body: `{"kind":"results","format":"arrow"}`, status: 503, code: "exports_unavailable"},
		{name: "export jobs without storage", method: "GET", path: "/v1/export-jobs", key: e.key, status: 503, code: "exports_unavailable"},
		{name: "export job status without storage", method: "GET", path: "/v1/export-jobs/exp_x", key: e.key, status: 503, code: "exports_unavailable"},
		{name: "export job cancel without storage", method: "DELETE", path: "/v1/export-jobs/exp_x", key: e.key, status: 503, code: "exports_unavailable"},
		{name: "export download without storage", method: "GET", path: "/v1/export-jobs/exp_x/file?expires=1&signature=x", status: 503, code: "exports_unavailable"},

		// The webhook routes: parameters are checked first, then the
		// deliveries store (off here).
		{name: "deliveries without storage", method: "GET", path: "/v1/webhooks/deliveries?endpoint=ep_x&event_type=receipt.signed&status=failed&since=2026-05-01T00:00:00Z&limit=10", key: e.key, status: 503, code: "deliveries_unavailable"},
		{name: "deliveries unknown key", method: "GET", path: "/v1/webhooks/deliveries", key: "cn_nope", status: 401, code: "unauthorized"},
		{name: "deliveries limit 0", method: "GET", path: "/v1/webhooks/deliveries?limit=0", key: e.key, offSpec: true, status: 400, code: "invalid_limit"},
		{name: "deliveries unknown status", method: "GET", path: "/v1/webhooks/deliveries?status=lost", key: e.key, offSpec: true, status: 400, code: "invalid_status"},
		{name: "deliveries range inverted", method: "GET", path: "/v1/webhooks/deliveries?since=2026-05-02T00:00:00Z&until=2026-05-01T00:00:00Z", key: e.key, status: 400, code: "invalid_range"},
		{name: "delivery without storage", method: "GET", path: "/v1/webhooks/deliveries/msg_x", key: e.key, status: 503, code: "deliveries_unavailable"},
		{name: "delivery unknown key", method: "GET", path: "/v1/webhooks/deliveries/msg_x", key: "cn_nope", status: 401, code: "unauthorized"},
		{name: "redeliver without storage", method: "POST", path: "/v1/webhooks/deliveries/msg_x/redeliver", key: e.key, status: 503, code: "deliveries_unavailable"},
		{name: "replay without storage", method: "POST", path: "/v1/webhooks/endpoints/ep_x/replay?since=2026-05-01T00:00:00Z&all=true", key: e.key, status: 503, code: "deliveries_unavailable"},
		{name: "replay all maybe", method: "POST", path: "/v1/webhooks/endpoints/ep_x/replay?all=maybe", key: e.key, offSpec: true, status: 400, code: "invalid_all"},
		{name: "trigger", method: "POST", path: "/v1/webhooks/trigger", key: e.key, ctype: js, body: `{"event_type":"receipt.verified"}`, status: 202},
		{name: "trigger unknown type", method: "POST", path: "/v1/webhooks/trigger", key: e.key, ctype: js, body: `{"event_type":"receipt.stamped"}`, offSpec: true, status: 400, code: "unknown_event_type"},
		{name: "trigger not JSON", method: "POST", path: "/v1/webhooks/trigger", key: e.key, ctype: js, body: `{"event_type"`, offSpec: true, status: 400, code: "malformed_json"},
		{name: "trigger wrong content type", method: "POST", path: "/v1/webhooks/trigger", key: e.key, ctype: "text/plain", body: `{}`, offSpec: true, status: 415, code: "unsupported_media_type"},
		{name: "trigger without key", method: "POST", path: "/v1/webhooks/trigger", ctype: js, body: `{"event_type":"webhook.test"}`, offSpec: true, status: 401, code: "unauthorized"},
		{name: "listen unknown type", method: "GET", path: "/v1/webhooks/listen?events=receipt.signed,nope", key: e.key, status: 400, code: "invalid_events"},
		{name: "listen unknown key", method: "GET", path: "/v1/webhooks/listen", key: "cn_nope", status: 401, code: "unauthorized"},
	}
	for _, x := range cases {
		t.Run(x.name, func(t *testing.T) { c.expect(t, e, x) })
	}

	t.Run("429 over quota", func(t *testing.T) {
		for range 5 {
			r := c.do(t, e, exchange{name: "slow sign", method: "POST", path: "/v1/sign", key: e.slow, ctype: js, body: `{"payload":{}}`})
			if r.status == 429 {
				return // the document requires Retry-After and the over_quota code
			}
		}
		t.Fatal("a tenant limited to 1 request/s was never refused")
	})
	t.Run("verify over quota", func(t *testing.T) {
		for range 5 {
			r := c.do(t, e, exchange{name: "slow verify", method: "POST", path: "/v1/verify", key: e.slow, ctype: js, body: `{"receipt":{}}`})
			if r.status == 429 {
				return
			}
		}
		t.Fatal("a tenant limited to 1 request/s was never refused")
	})

	t.Run("organization limits", func(t *testing.T) {
		big := `{"a":"` + strings.Repeat("x", 64) + `"}`
		for _, x := range []exchange{
			{name: "sign over the payload limit", method: "POST", path: "/v1/sign", key: e.tight, ctype: js, body: `{"payload":` + big + `}`, status: 413, code: "payload_too_large"},
			{name: "verify over the payload limit", method: "POST", path: "/v1/verify", key: e.tight, ctype: js, body: `{"receipt":` + big + `}`, status: 413, code: "payload_too_large"},
			{name: "sign within the payload limit", method: "POST", path: "/v1/sign", key: e.tight, ctype: js, body: `{"payload":{"a":1}}`, status: 200},
		} {
			c.expect(t, e, x)
		}
		// Lines past the organization's job lines, or over its payload
		// limit, are rejected; the rest of the job goes on.
		r := c.expect(t, e, exchange{name: "job over the line limit", method: "POST", path: "/v1/jobs?type=sign", key: e.tight, ctype: ndjson,
			body: "{\"n\":1}\n" + big + "\n{\"n\":3}\n{\"n\":4}\n{\"n\":5}\n", status: 202})
		var acc struct {
			JobID    string                 `json:"job_id"`
			Accepted int                    `json:"lines_accepted"`
			Rejected []schemas.RejectedLine `json:"rejected"`
		}
		if err := json.Unmarshal([]byte(r.body), &acc); err != nil || acc.Accepted != 2 || len(acc.Rejected) != 2 ||
			acc.Rejected[0].Code != "payload_too_large" || acc.Rejected[1] != (schemas.RejectedLine{Line: 4, Code: "too_many_lines", Message: acc.Rejected[1].Message}) {
			t.Fatalf("job of the tight tenant: %v %s", err, r.body)
		}
		e.waitDoneAs(e.tight, acc.JobID)
		// One job at a time: a second one is refused while the first
		// uploads, and starts once it finished. The first is held open by
		// a body still being written; should the second reach the server
		// first (a loaded machine), the roles swap, and the test retries.
		jobID := func(resp *http.Response) string {
			var acc struct {
				JobID string `json:"job_id"`
			}
			json.UnmarshalRead(resp.Body, &acc, json.RejectUnknownMembers(false))
			resp.Body.Close()
			return acc.JobID
		}
		for attempt := 1; ; attempt++ {
			pr, pw := io.Pipe()
			req, _ := http.NewRequest("POST", e.base+"/v1/jobs?type=sign", pr)
			req.Header.Set("Authorization", "Bearer "+e.tight)
			req.Header.Set("Content-Type", ndjson)
			first := make(chan *http.Response, 1)
			go func() {
				resp, err := apiClient.Do(req)
				if err != nil {
					t.Error(err)
				}
				first <- resp
			}()
			pw.Write([]byte("{\"n\":1}\n"))
			time.Sleep(100 * time.Millisecond)
			r := c.do(t, e, exchange{name: "second job at once", method: "POST", path: "/v1/jobs?type=sign", key: e.tight, ctype: ndjson, body: "{\"n\":2}\n"})
			pw.Close()
			resp := <-first
			if resp == nil {
				t.FailNow()
			}
			if r.status == 429 && errorCode(t, r.body) == "too_many_jobs" && resp.StatusCode == 202 {
				e.waitDoneAs(e.tight, jobID(resp))
				break
			}
			resp.Body.Close()
			if attempt == 5 || r.status != 202 {
				t.Fatalf("a second job of an organization allowed one at a time: %d %s (the first: %d)", r.status, r.body, resp.StatusCode)
			}
			var second struct {
				JobID string `json:"job_id"`
			}
			json.Unmarshal([]byte(r.body), &second)
			e.waitDoneAs(e.tight, second.JobID)
		}
		c.expect(t, e, exchange{name: "a job after the other finished", method: "POST", path: "/v1/jobs?type=sign", key: e.tight, ctype: ndjson, body: "{\"n\":3}\n", status: 202})
	})

	t.Run("504, polled as a job", func(t *testing.T) {
		slow := startDev(t, "--sign-wait", "1ns")
		sc := newContract(t, slow)
		for _, x := range []exchange{
			{name: "sign timeout", method: "POST", path: "/v1/sign", key: slow.key, ctype: js, body: `{"payload":{"late":true}}`},
			{name: "verify timeout", method: "POST", path: "/v1/verify", key: slow.key, ctype: js, body: `{"receipt":` + receipt + `}`},
		} {
			id := sc.timedOut(t, slow, x)
			slow.waitDone(id)
			sc.expect(t, slow, exchange{name: x.name + " status", method: "GET", path: "/v1/jobs/" + id, key: slow.key, status: 200})
			sc.expect(t, slow, exchange{name: x.name + " results", method: "GET", path: "/v1/jobs/" + id + "/results", key: slow.key, status: 200})
		}
		// A job whose results the results topic no longer holds.
		old := slow.submit("sign", "{\"n\":1}\n")
		slow.waitDone(old)
		slow.expireResults()
		sc.expect(t, slow, exchange{name: "expired results", method: "GET", path: "/v1/jobs/" + old + "/results", key: slow.key, status: 410, code: "results_expired"})
		c.merge(sc)
	})

	t.Run("webhooks listen", func(t *testing.T) { c.listenContract(t, e) })
	t.Run("outside the operations", func(t *testing.T) { c.outsideOperations(t, e) })
	c.checkCoverage(t)
}

// merge adds what another server's contract validated.
func (c *contract) merge(o *contract) {
	for k := range o.success {
		c.success[k] = true
	}
	for k := range o.failure {
		c.failure[k] = true
	}
}

// kafkaClient connects to the dev's embedded Kafka.
func (e *devEnv) kafkaClient(opts ...kgo.Opt) *kgo.Client {
	e.t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(e.creds().Kafka)}, opts...)...)
	if err != nil {
		e.t.Fatal(err)
	}
	return cl
}

// injectAbandonedJob writes the first record of a bulk job whose upload
// began an hour ago and never finished, as an ingest process that died
// mid-upload leaves it, and waits until the server knows the job.
func (e *devEnv) injectAbandonedJob(tenant string) string {
	e.t.Helper()
	nonce := make([]byte, 16)
	rand.Read(nonce)
	id := "job_abandoned" + base64.RawURLEncoding.EncodeToString(nonce[:6])
	val, _ := json.Marshal(schemas.Job{V: schemas.EnvelopeVersion, ID: id, Tenant: tenant, Kind: schemas.KindSign,
		State: schemas.JobUploading, Nonce: base64.RawURLEncoding.EncodeToString(nonce),
		Start: map[int32]int64{0: 0, 1: 0, 2: 0}, CreatedAt: time.Now().Add(-time.Hour).UTC()})
	cl := e.kafkaClient()
	defer cl.Close()
	topic := schemas.TopicsFor(schemas.DefaultTopicPrefix).Jobs
	if err := cl.ProduceSync(context.Background(), &kgo.Record{Topic: topic, Key: []byte(id), Value: val}).FirstErr(); err != nil {
		e.t.Fatal(err)
	}
	key := map[string]string{"demo": e.key, "slow": e.slow, "other": e.other, "tight": e.tight}[tenant]
	deadline := time.Now().Add(10 * time.Second)
	for {
		if code, body := e.do("GET", "/v1/jobs/"+id, key, "", ""); code == 200 && strings.Contains(body, `"state":"abandoned"`) {
			return id
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("the injected job %s never showed", id)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// expireResults deletes every record of the results topic, as retention
// eventually does.
func (e *devEnv) expireResults() {
	e.t.Helper()
	cl := e.kafkaClient()
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx := context.Background()
	ends, err := adm.ListEndOffsets(ctx, schemas.TopicsFor(schemas.DefaultTopicPrefix).Receipts)
	if err == nil {
		_, err = adm.DeleteRecords(ctx, ends.Offsets())
	}
	if err != nil {
		e.t.Fatal(err)
	}
}
