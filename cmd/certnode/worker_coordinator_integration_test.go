//go:build integration

package main

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// A worker process takes its producer keys from a coordinator process, on
// the real Kafka: a record signed with a producer key made through the
// admin API gets a signed result whose receipt verifies; a revoked key is
// refused within 2 s; with the coordinator gone past
// --coordinator-max-stale the worker's /readyz says so and it admits no
// producer key. Its producers are held to the organization's monthly
// allowance, counted across the cluster.
func TestE2EWorkerFollowsCoordinator(t *testing.T) {
	e := newE2E(t, "")
	const admin, node = "admin-token-worker-0123456789", "node-token-worker-0123456789"
	e.env = append(e.env, "CERTNODE_ADMIN_TOKEN="+admin, "CERTNODE_NODE_TOKEN="+node, "CERTNODE_TENANTS_FILE=")
	caddr := freeAddr(t)
	coord := e.start("coordinator", "coordinator", "--id", "c1", "--raft", freeAddr(t), "--http", caddr, "--data", t.TempDir(), "--bootstrap")
	call := func(method, path, body string) (int, string) {
		return request(method, "http://"+caddr+path, admin, "", body)
	}
	testenv.WaitFor(t, "the coordinator leads", 30*time.Second, func() (bool, string) {
		code, body := call("GET", "/v1/admin/cluster", "")
		return code == 200 && strings.Contains(body, `"state":"Leader"`), body
	})
	if code, body := call("POST", "/v1/admin/orgs", `{"id":"`+e.tenant+`","name":"E2E"}`); code != 201 {
		t.Fatalf("org: %d %s", code, body)
	}
	newProducerKey := func() (id, secret string) {
		code, body := call("POST", "/v1/admin/orgs/"+e.tenant+"/producer-keys", "")
		var k struct {
			ID     string `json:"id"`
			Secret string `json:"secret"`
		}
		if code != 201 || json.Unmarshal([]byte(body), &k, json.RejectUnknownMembers(false)) != nil || k.Secret == "" {
			t.Fatalf("producer key: %d %s", code, body)
		}
		return k.ID, k.Secret
	}
	id, secret := newProducerKey()

	metrics := freeAddr(t)
	w := e.start("worker", "worker", "--metrics", metrics, "--concurrency", "4", "--coordinator", caddr, "--coordinator-max-stale", "3s")
	ready := func() (int, string) { return request("GET", "http://"+metrics+"/readyz", "", "", "") }
	testenv.WaitFor(t, "the worker ready", 60*time.Second, func() (bool, string) {
		code, body := ready()
		return code == 200, fmt.Sprint(code, body, w.output())
	})

	p := newDirectProducer(t, e.kafka, e.prefix)
	res := p.sign(e.tenant, id, secret)
	if !admitted(res, id) {
		t.Fatalf("a record signed with a coordinator-made producer key: %+v", res)
	}
	jwks, err := os.ReadFile(e.jwksFile)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := schemas.ParseJWKS(jwks)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ks.Verify(res.Receipt); err != nil {
		t.Fatalf("the receipt does not verify: %v", err)
	}

	if code, body := call("DELETE", "/v1/admin/orgs/"+e.tenant+"/producer-keys/"+id, ""); code != 204 {
		t.Fatalf("revoke: %d %s", code, body)
	}
	testenv.WaitFor(t, "the revoked producer key refused", 2*time.Second, func() (bool, string) {
		res := p.sign(e.tenant, id, secret)
		return res.Status == schemas.StatusFailed && res.Auth == schemas.AuthNone, fmt.Sprintf("%+v", res)
	})

	id2, secret2 := newProducerKey()
	testenv.WaitFor(t, "a second producer key admitted", 2*time.Second, func() (bool, string) {
		res := p.sign(e.tenant, id2, secret2)
		return admitted(res, id2), fmt.Sprintf("%+v", res)
	})
	// The organization's monthly allowance holds for its producers too:
	// the worker draws on the cluster's shares and reports what it
	// admitted, so once the month's count passes the allowance its
	// records are answered failed, with the reason.
	if code, body := call("PATCH", "/v1/admin/orgs/"+e.tenant, `{"limits":{"monthly_receipts":1}}`); code != 200 {
		t.Fatalf("limits: %d %s", code, body)
	}
	testenv.WaitFor(t, "producer records past the monthly allowance refused", 15*time.Second, func() (bool, string) {
		res := p.sign(e.tenant, id2, secret2)
		return res.Status == schemas.StatusFailed && res.Reason == "monthly_quota_exceeded" && res.Auth == schemas.AuthProducer,
			fmt.Sprintf("%+v", res)
	})

	coord.kill()
	testenv.WaitFor(t, "the worker unready once its copy is older than 3s", 10*time.Second, func() (bool, string) {
		code, body := ready()
		return code == 503 && strings.Contains(body, "coordinator"), fmt.Sprint(code, body)
	})
	if res := p.sign(e.tenant, id2, secret2); res.Status != schemas.StatusFailed || res.Auth != schemas.AuthNone {
		t.Fatalf("a producer key admitted on a stale copy: %+v", res)
	}
	if code, body := request("GET", "http://"+metrics+"/healthz", "", "", ""); code != 200 {
		t.Fatalf("healthz with a stale copy: %d %s (liveness is the worker's own)", code, body)
	}
}
