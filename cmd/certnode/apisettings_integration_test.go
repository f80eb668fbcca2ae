//go:build integration

package main

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/interop"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// API customization end to end on the real Kafka, with a coordinator, a
// worker and ingest as separate processes: an organization sets response
// headers, receipt metadata and its version through ingest with its own
// admin key; its answers carry the headers and Certnode-Version; its
// receipts carry the metadata in the signed payload and verify with
// `certnode verify` and with the Node (jose + canonicalize) and Python
// verifiers, unchanged v1 receipts; a key pinned to the baseline version
// gets receipts without metadata (a pinned client is not broken) and its
// default job type and compact results; an unknown version is a 400.
func TestE2EAPICustomization(t *testing.T) {
	e := newE2E(t, "")
	caddr, call := e.coordinated()
	metrics := freeAddr(t)
	w := e.start("worker", "worker", "--metrics", metrics, "--concurrency", "4", "--coordinator", caddr)
	testenv.WaitFor(t, "the worker ready", 60*time.Second, func() (bool, string) {
		code, body := request("GET", "http://"+metrics+"/readyz", "", "", "")
		return code == 200, body + w.output()
	})
	e.ingest("--coordinator", caddr)
	acme, acmeKey := e.newOrgKey(call, "acme", `["admin","sign","verify","jobs","read"]`)
	_, otherKey := e.newOrgKey(call, "other", `["sign","read"]`)

	send := func(key, method, path, ctype, body string, hdr ...string) (int, http.Header, string) {
		t.Helper()
		resp, b := requestWith(t, method, "http://"+e.http+path, key, ctype, body, hdr...)
		return resp.StatusCode, resp.Header, b
	}
	// Through ingest, as a customer does.
	if code, _, body := send(acmeKey, "PATCH", "/v1/orgs/"+acme+"/api-settings", "application/json",
		`{"response_headers":{"X-Acme-Tenant":"acme"},"receipt_metadata":{"issuer":"Acme Corp","environment":"prod"}}`); code != 200 {
		t.Fatalf("api settings: %d %s", code, body)
	}
	if code, _, body := send(acmeKey, "PATCH", "/v1/orgs/"+acme+"/api-settings", "application/json",
		`{"response_headers":{"Strict-Transport-Security":"max-age=0"}}`); code != 400 || !strings.Contains(body, "Strict-Transport-Security") {
		t.Fatalf("a refused header: %d %s", code, body)
	}
	code, _, body := send(acmeKey, "POST", "/v1/orgs/"+acme+"/keys", "application/json",
		`{"scopes":["sign","jobs","read"],"defaults":{"job_type":"sign","result_format":"compact","api_version":"`+schemas.APIVersionBaseline+`"}}`)
	var pinned struct {
		Key string `json:"key"`
	}
	if code != 201 || json.Unmarshal([]byte(body), &pinned, json.RejectUnknownMembers(false)) != nil {
		t.Fatalf("pinned key: %d %s", code, body)
	}
	e.synced()
	workerSynced(t, caddr, metrics)

	sign := func(key string, hdr ...string) (http.Header, []byte, *schemas.Receipt) {
		t.Helper()
		code, h, body := send(key, "POST", "/v1/sign", "application/json", `{"payload":{"order":42,"amount":19.99}}`, hdr...)
		if code != 200 {
			t.Fatalf("sign: %d %s", code, body)
		}
		var rc schemas.Receipt
		if err := json.Unmarshal([]byte(body), &rc); err != nil {
			t.Fatal(err)
		}
		return h, []byte(strings.TrimSpace(body)), &rc
	}
	h, withMeta, rc := sign(acmeKey)
	const meta = `{"amount":19.99,"certnode_meta":{"environment":"prod","issuer":"Acme Corp"},"order":42}`
	if string(rc.Payload) != meta {
		t.Fatalf("payload at the organization's version: %s", rc.Payload)
	}
	if h.Get("X-Acme-Tenant") != "acme" || h.Get(schemas.VersionHeader) != schemas.LatestAPIVersion() || h.Get("Strict-Transport-Security") != "" {
		t.Fatalf("answer headers: %v", h)
	}
	h, plain, rc := sign(pinned.Key)
	if string(rc.Payload) != `{"amount":19.99,"order":42}` || h.Get(schemas.VersionHeader) != schemas.APIVersionBaseline {
		t.Fatalf("pinned to the baseline: %s %v", rc.Payload, h)
	}
	if _, _, rc := sign(pinned.Key, schemas.VersionHeader, schemas.LatestAPIVersion()); string(rc.Payload) != meta {
		t.Fatalf("the pinned key asking for the current version: %s", rc.Payload)
	}
	if code, h, body := send(otherKey, "POST", "/v1/sign", "application/json", `{"payload":{"certnode_meta":1}}`); code != 200 || h.Get("X-Acme-Tenant") != "" {
		t.Fatalf("another organization: %d %v %s", code, h, body)
	}
	if code, _, body := send(acmeKey, "POST", "/v1/sign", "application/json", `{"payload":{"certnode_meta":1}}`); code != 400 || !strings.Contains(body, "reserved_member") {
		t.Fatalf("the reserved member: %d %s", code, body)
	}
	if code, _, body := send(acmeKey, "GET", "/v1/jobs", "", "", schemas.VersionHeader, "2020-02-30"); code != 400 || !strings.Contains(body, `"known_versions"`) {
		t.Fatalf("an unknown version: %d %s", code, body)
	}

	// The receipts are v1: CertNode's verifier and the independent ones
	// verify them with the service's JWKS.
	receipts := string(withMeta) + "\n" + string(plain) + "\n"
	if v := certnode(t, receipts, "verify", "--jwks", e.jwksFile); v.code != 0 || !strings.Contains(v.stdout, "2 receipts: 2 valid, 0 invalid") {
		t.Fatalf("certnode verify: %+v", v)
	}
	for _, im := range interop.Impls {
		if got := im.Verify(t, e.jwksFile, []byte(receipts)); len(got) != 2 || got[0] != "ok" || got[1] != "ok" {
			t.Fatalf("%s verifier: %v", im.Name, got)
		}
	}
	tampered := strings.Replace(string(withMeta), `"issuer":"Acme Corp"`, `"issuer":"Evil Corp"`, 1)
	if got := interop.Node.Verify(t, e.jwksFile, []byte(tampered+"\n")); len(got) != 1 || got[0] == "ok" {
		t.Fatalf("node verifier on tampered metadata: %v", got)
	}

	// The pinned key's default job type and results format.
	code, _, body = send(pinned.Key, "POST", "/v1/jobs", "application/x-ndjson", "{\"n\":1}\n{\"n\":2}\n")
	var job struct {
		JobID string `json:"job_id"`
		Type  string `json:"type"`
	}
	if code != 202 || json.Unmarshal([]byte(body), &job, json.RejectUnknownMembers(false)) != nil || job.Type != "sign" {
		t.Fatalf("a job without type: %d %s", code, body)
	}
	_, _, results := send(pinned.Key, "GET", "/v1/jobs/"+job.JobID+"/results", "", "")
	if strings.Count(results, `"status":"signed"`) != 2 || strings.Contains(results, `"receipt":`) {
		t.Fatalf("compact results: %s", results)
	}
}

// workerSynced waits until the worker whose metrics are at metrics holds
// the coordinator's state as it is now.
func workerSynced(t *testing.T, caddr, metrics string) {
	t.Helper()
	code, body := request("GET", "http://"+caddr+"/v1/node/state", e2eNodeToken, "", "")
	var st struct {
		Index uint64 `json:"index"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &st, json.RejectUnknownMembers(false)) != nil {
		t.Fatalf("the coordinator's state: %d", code)
	}
	testenv.WaitFor(t, "the worker's copy of the coordinator's state", 30*time.Second, func() (bool, string) {
		_, m := request("GET", "http://"+metrics+"/metrics", "", "", "")
		for line := range strings.Lines(m) {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "certnode_coordinator_state_index "); ok {
				index, err := strconv.ParseFloat(v, 64)
				return err == nil && uint64(index) >= st.Index, v
			}
		}
		return false, "no certnode_coordinator_state_index"
	})
}
