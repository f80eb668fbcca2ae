package main

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// API customization through `certnode dev`: an organization's response
// headers, its receipt metadata signed in its receipts (current version)
// and not in those of a key pinned to the baseline, the reserved member
// refused, a key's default job type and compact results, and
// Certnode-Version on every answer.
func TestDevAPICustomization(t *testing.T) {
	e := startDev(t)
	key := e.newOrg("acme", tenants.Limits{})
	if code, body := e.admin("PATCH", "/v1/orgs/acme/api-settings",
		`{"response_headers":{"X-Acme-Tenant":"acme"},"receipt_metadata":{"issuer":"Acme Corp","environment":"prod"}}`); code != 200 {
		t.Fatalf("api settings: %d %s", code, body)
	}
	code, body := e.admin("POST", "/v1/orgs/acme/keys",
		`{"scopes":["sign","jobs","read"],"defaults":{"job_type":"sign","result_format":"compact","api_version":"`+schemas.APIVersionBaseline+`"}}`)
	var pinned struct {
		Key string `json:"key"`
	}
	if code != 201 || json.Unmarshal([]byte(body), &pinned, json.RejectUnknownMembers(false)) != nil {
		t.Fatalf("pinned key: %d %s", code, body)
	}
	send := func(method, path, key, ctype, body string, hdr ...string) (*http.Response, string) {
		t.Helper()
		return requestWith(t, method, e.base+path, key, ctype, body, hdr...)
	}
	testenv.WaitFor(t, "dev applies the settings and the pinned key", 5*time.Second, func() (bool, string) {
		resp, body := send("GET", "/v1/jobs/job_none", pinned.Key, "", "")
		return resp.StatusCode == 404 && resp.Header.Get("X-Acme-Tenant") == "acme", body
	})

	ks := func() *schemas.KeySet {
		_, jwks := send("GET", "/v1/jwks", key, "", "")
		s, err := schemas.ParseJWKS([]byte(jwks))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}()
	signed := func(k string, hdr ...string) (*http.Response, *schemas.Receipt) {
		t.Helper()
		resp, body := send("POST", "/v1/sign", k, "application/json", `{"payload":{"order":42}}`, hdr...)
		if resp.StatusCode != 200 {
			t.Fatalf("sign: %d %s", resp.StatusCode, body)
		}
		rc, err := ks.Verify([]byte(body))
		if err != nil {
			t.Fatalf("the receipt does not verify: %v", err)
		}
		return resp, rc
	}
	resp, rc := signed(key)
	if got := string(rc.Payload); got != `{"certnode_meta":{"environment":"prod","issuer":"Acme Corp"},"order":42}` {
		t.Fatalf("payload at the current version: %s", got)
	}
	if resp.Header.Get(schemas.VersionHeader) != schemas.LatestAPIVersion() || resp.Header.Get("X-Acme-Tenant") != "acme" {
		t.Fatalf("headers: %v", resp.Header)
	}
	resp, rc = signed(pinned.Key)
	if string(rc.Payload) != `{"order":42}` || resp.Header.Get(schemas.VersionHeader) != schemas.APIVersionBaseline {
		t.Fatalf("pinned to the baseline: %s %v", rc.Payload, resp.Header)
	}
	// The pinned key's caller asks for the current version on one request.
	if _, rc = signed(pinned.Key, schemas.VersionHeader, schemas.LatestAPIVersion()); !strings.Contains(string(rc.Payload), schemas.ReceiptMetaMember) {
		t.Fatalf("asking for the current version: %s", rc.Payload)
	}
	if resp, body := send("POST", "/v1/sign", key, "application/json", `{"payload":{"certnode_meta":"mine"}}`); resp.StatusCode != 400 || !strings.Contains(body, "reserved_member") {
		t.Fatalf("the reserved member: %d %s", resp.StatusCode, body)
	}
	if resp, body := send("GET", "/v1/jobs", key, "", "", schemas.VersionHeader, "2019-01-01"); resp.StatusCode != 400 || !strings.Contains(body, schemas.APIVersionBaseline) {
		t.Fatalf("an unknown version: %d %s", resp.StatusCode, body)
	}
	if resp, _ := send("GET", "/v1/jobs", e.key, "", ""); resp.Header.Get("X-Acme-Tenant") != "" {
		t.Fatalf("another organization's answer has acme's headers: %v", resp.Header)
	}

	resp, body = send("POST", "/v1/jobs", pinned.Key, "application/x-ndjson", "{\"n\":1}\n{\"n\":2}\n")
	var job struct {
		JobID string `json:"job_id"`
		Type  string `json:"type"`
	}
	if resp.StatusCode != 202 || json.Unmarshal([]byte(body), &job, json.RejectUnknownMembers(false)) != nil || job.Type != "sign" {
		t.Fatalf("a job with the key's default type: %d %s", resp.StatusCode, body)
	}
	_, results := send("GET", "/v1/jobs/"+job.JobID+"/results", pinned.Key, "", "")
	if strings.Count(results, `"status":"signed"`) != 2 || strings.Contains(results, `"receipt":`) || !strings.Contains(results, `"receipt_id":`) {
		t.Fatalf("compact results: %s", results)
	}
	if _, full := send("GET", "/v1/jobs/"+job.JobID+"/results?format=full", pinned.Key, "", ""); strings.Count(full, `"receipt":{`) != 2 {
		t.Fatalf("full results: %s", full)
	}
}
