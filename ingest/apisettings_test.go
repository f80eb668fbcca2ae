package ingest

import (
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/apicustom"
	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
)

type fakeAPI map[string]apicustom.Settings

func (f fakeAPI) APISettings(org string) (apicustom.Settings, bool) { s, ok := f[org]; return s, ok }

// Keys of the API customization test: org a's pinned to the baseline, to
// the current version, and one with a default job type and results format.
const (
	keyOld     = "key-a-old"
	keyNew     = "key-a-new"
	keyDefault = "key-a-default"
)

func startAPIServer(t *testing.T) *testServer {
	return startServer(t, func(c *Config, d *Deps) {
		c.SignWait = 100 * time.Millisecond
		auth := d.Auth.(fakeAuth)
		auth[keyA].APIVersion = schemas.APIVersionWhiteLabel
		auth[keyOld] = &tenants.Tenant{ID: "a", KeyID: "k_old", APIVersion: schemas.APIVersionBaseline}
		auth[keyNew] = &tenants.Tenant{ID: "a", KeyID: "k_new", APIVersion: schemas.APIVersionWhiteLabel}
		auth[keyDefault] = &tenants.Tenant{ID: "a", KeyID: "k_def", APIVersion: schemas.APIVersionWhiteLabel,
			Defaults: apicustom.KeyDefaults{JobType: "sign", ResultFormat: apicustom.ResultsCompact}}
		d.Domains = fakeDomains{"api.a.example": "a"}
		d.API = fakeAPI{"a": {
			// Set-Cookie cannot be stored; the copy is checked again anyway.
			ResponseHeaders: map[string]string{"X-Acme-Tenant": "acme", "X-Powered-By": "Acme Trust", "Set-Cookie": "pwned=1"},
			ReceiptMetadata: []byte(`{"issuer":"Acme Corp"}`), APIVersion: schemas.APIVersionBaseline,
		}}
	})
}

// An organization's response headers are on every answer to its requests
// (errors too, and unauthenticated ones on its custom domain), on no
// other organization's, and never replace the service's headers.
func TestOrgResponseHeaders(t *testing.T) {
	ts := startAPIServer(t)
	for what, a := range map[string]answer{
		"a's list":                         ts.do("GET", "/v1/webhooks/deliveries", keyA, ""),
		"a's 404":                          ts.do("GET", "/v1/jobs/job_nothing", keyA, "").expect(t, "a's 404", 404, "not_found"),
		"a's domain without a key (401)":   ts.send("GET", "/v1/webhooks/deliveries", "", "Host", "api.a.example").expect(t, "401", 401, "unauthorized"),
		"a's 400 for an unknown version":   ts.send("GET", "/v1/webhooks/deliveries", "", "Authorization", "Bearer "+keyA, schemas.VersionHeader, "2001-01-01"),
		"a's domain, a public route (200)": ts.send("GET", "/v1/jwks", "", "Host", "api.a.example"),
	} {
		if what == "a's 400 for an unknown version" {
			// Refused before the caller is known: no organization's headers.
			if a.header.Get("X-Acme-Tenant") != "" {
				t.Errorf("%s: %v", what, a.header)
			}
			continue
		}
		if a.header.Get("X-Acme-Tenant") != "acme" || a.header.Get("X-Powered-By") != "Acme Trust" {
			t.Errorf("%s: headers %v", what, a.header)
		}
		if a.header.Get("Set-Cookie") != "" || a.header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: a refused header, or the service's replaced: %v", what, a.header)
		}
	}
	b := ts.do("GET", "/v1/webhooks/deliveries", keyB, "")
	if b.header.Get("X-Acme-Tenant") != "" {
		t.Fatalf("b's answer has a's headers: %v", b.header)
	}
}

// Each answer names the version applied: the one asked for, else the
// key's (its pin or its organization's), else the organization's (its
// custom domain), else the current one; an unknown one is a 400 listing
// the known ones. The version applied goes with the request to the worker.
func TestAPIVersions(t *testing.T) {
	ts := startAPIServer(t)
	latest := schemas.LatestAPIVersion()
	for what, c := range map[string]struct {
		a    answer
		want string
	}{
		"a key pinned to the baseline":   {ts.do("GET", "/v1/webhooks/deliveries", keyOld, ""), schemas.APIVersionBaseline},
		"a key pinned to the current":    {ts.do("GET", "/v1/webhooks/deliveries", keyNew, ""), schemas.APIVersionWhiteLabel},
		"a version asked for":            {ts.send("GET", "/v1/webhooks/deliveries", "", "Authorization", "Bearer "+keyNew, schemas.VersionHeader, schemas.APIVersionBaseline), schemas.APIVersionBaseline},
		"a tenant with no version":       {ts.do("GET", "/v1/webhooks/deliveries", keyB, ""), latest},
		"the organization of its domain": {ts.send("GET", "/v1/webhooks/deliveries", "", "Host", "api.a.example"), schemas.APIVersionBaseline},
		"a public route":                 {ts.send("GET", "/v1/jwks", ""), latest},
	} {
		if got := c.a.header.Get(schemas.VersionHeader); got != c.want {
			t.Errorf("%s: %s %q, want %q (%d %s)", what, schemas.VersionHeader, got, c.want, c.a.status, c.a.body)
		}
	}
	a := ts.send("GET", "/v1/webhooks/deliveries", "", "Authorization", "Bearer "+keyA, schemas.VersionHeader, "2026-13-45").
		expect(t, "an unknown version", 400, "unknown_api_version")
	var e errorBody
	json.Unmarshal([]byte(a.body), &e)
	if !slicesEqual(e.KnownVersions, schemas.KnownAPIVersions()) || !strings.Contains(e.Error.Message, schemas.APIVersionBaseline) {
		t.Fatalf("unknown version: %s", a.body)
	}

	// The worker is told the version: the pinned key's request goes as
	// the baseline, the other as the current version.
	ts.do("POST", "/v1/sign", keyOld, `{"payload":{"n":1}}`).expect(t, "sign, baseline", 504, "timeout")
	ts.send("POST", "/v1/sign", `{"payload":{"n":2}}`, "Authorization", "Bearer "+keyOld, "Content-Type", "application/json",
		schemas.VersionHeader, latest).expect(t, "sign, asking for the current", 504, "timeout")
	versions := map[string]string{}
	for _, rec := range ts.consume(ts.kcfg.Topics().Requests, 2) {
		req, err := schemas.DecodeRequest(rec.Value)
		if err != nil {
			t.Fatal(err)
		}
		versions[string(req.Payload)] = req.APIVersion
	}
	if versions[`{"n":1}`] != schemas.APIVersionBaseline || versions[`{"n":2}`] != latest {
		t.Fatalf("versions sent to the worker: %v", versions)
	}
}

func slicesEqual(a, b []string) bool { return strings.Join(a, ",") == strings.Join(b, ",") }

// While an organization adds receipt metadata, a payload with the
// reserved member is refused, from the version that adds it only: a
// client pinned to the baseline is not broken.
func TestReservedMember(t *testing.T) {
	ts := startAPIServer(t)
	const body = `{"payload":{"certnode_meta":{"mine":true},"n":1}}`
	a := ts.do("POST", "/v1/sign", keyNew, body).expect(t, "the reserved member", 400, "reserved_member")
	if !strings.Contains(a.body, schemas.ReceiptMetaMember) {
		t.Fatalf("message: %s", a.body)
	}
	ts.do("POST", "/v1/sign", keyOld, body).expect(t, "the member, pinned to the baseline", 504, "timeout")
	ts.do("POST", "/v1/sign", keyB, body).expect(t, "the member, an organization without metadata", 504, "timeout")
	ts.do("POST", "/v1/sign", keyNew, `{"payload":{"nested":{"certnode_meta":1}}}`).expect(t, "a nested member of that name", 504, "timeout")

	job := ts.send("POST", "/v1/jobs?type=sign", "{\"n\":1}\n{\"certnode_meta\":2}\n", "Authorization", "Bearer "+keyNew,
		"Content-Type", "application/x-ndjson").expect(t, "a job", 202, "")
	var j jobAccepted
	json.Unmarshal([]byte(job.body), &j)
	if j.LinesAccepted != 1 || len(j.Rejected) != 1 || j.Rejected[0].Line != 2 || j.Rejected[0].Code != "reserved_member" {
		t.Fatalf("job: %s", job.body)
	}
}

// A key's default job type applies when ?type= is left out, and its
// results format when ?format= is.
func TestKeyDefaults(t *testing.T) {
	ts := startAPIServer(t)
	nd := func(key, query string) answer {
		return ts.send("POST", "/v1/jobs"+query, "{\"n\":1}\n", "Authorization", "Bearer "+key, "Content-Type", "application/x-ndjson")
	}
	var j jobAccepted
	json.Unmarshal([]byte(nd(keyDefault, "").expect(t, "the default type", 202, "").body), &j)
	if j.Type != schemas.KindSign {
		t.Fatalf("type %q", j.Type)
	}
	nd(keyNew, "").expect(t, "no type and no default", 400, "invalid_type")
	json.Unmarshal([]byte(nd(keyDefault, "?type=verify").expect(t, "?type= over the default", 202, "").body), &j)
	if j.Type != schemas.KindVerify {
		t.Fatalf("?type= over the default: type %q", j.Type)
	}
	ts.do("GET", "/v1/jobs/"+j.JobID+"/results?format=xml", keyNew, "").expect(t, "an unknown format", 400, "invalid_format")

	res := &schemas.Result{ID: "req_1", Kind: schemas.KindSign, Status: schemas.StatusSigned, Kid: "k", ReceiptID: "r", Receipt: []byte(`{"payload":{}}`)}
	if full, compact := string(renderResult(res, 1, false)), string(renderResult(res, 1, true)); !strings.Contains(full, `"receipt":{`) ||
		strings.Contains(compact, `"receipt":`) || !strings.Contains(compact, `"receipt_id":"r"`) {
		t.Fatalf("full %s, compact %s", full, compact)
	}
}

// Listened receipt.signed events leave the receipt out for an organization
// that leaves it out of its webhook events.
func TestListenOmitsReceipts(t *testing.T) {
	h := &listenHub{topics: schemas.TopicsFor("t"), maxReceipt: 1 << 20,
		api: fakeAPI{"omits": {WebhookReceipt: apicustom.ReceiptOmit}, "carries": {}}}
	for org, carried := range map[string]bool{"omits": false, "carries": true} {
		res := schemas.Result{V: 1, ID: "req_1", Tenant: org, Kind: schemas.KindSign, Status: schemas.StatusSigned, Auth: schemas.AuthIngest,
			Kid: "k", ReceiptID: "r1", Receipt: []byte(`{"payload":{}}`), ProcessedAt: time.Now()}
		val, _ := json.Marshal(res)
		ev, err := h.event(&kgo.Record{Topic: h.topics.Receipts, Key: []byte(org), Value: val}, org)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(string(ev.body), `"receipt":{`); got != carried || !strings.Contains(string(ev.body), `"receipt_id":"r1"`) {
			t.Errorf("%s: %s", org, ev.body)
		}
	}
}
