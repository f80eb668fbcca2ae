//go:build integration

package main

import (
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/testenv"
)

// TestOpenAPIReceiptsClickHouse: with the ClickHouse sink, GET
// /v1/receipts/{receipt_id} answers the tenant's own receipt as it was
// signed, 404 for an unknown id, and to another tenant asking for it the
// same 404 as for an unknown id; every answer validated against the
// document. The in-process tests run without ClickHouse (503 only).
func TestOpenAPIReceiptsClickHouse(t *testing.T) {
	e := startDev(t, "--clickhouse", testenv.ClickHouseAddr(t))
	c := newContract(t, e)
	raw := make([]byte, 32)
	rand.Read(raw)
	a := &crossTenant{secret: "a-secret-" + base64.RawURLEncoding.EncodeToString(raw[:8])}
	unknown := base64.RawURLEncoding.EncodeToString(raw) // a well-formed id no receipt has

	receipt := strings.TrimSpace(c.expect(t, e, exchange{name: "A signs", method: "POST", path: "/v1/sign", key: e.key,
		ctype: "application/json", body: `{"payload":{"s":"` + a.secret + `"}}`, status: 200}).body)
	var rc struct {
		ReceiptID string `json:"receipt_id"`
	}
	json.Unmarshal([]byte(receipt), &rc, json.RejectUnknownMembers(false))

	// The row lands within the sink's batch window; 404 until then.
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := c.do(t, e, exchange{name: "A's receipt", method: "GET", path: "/v1/receipts/" + rc.ReceiptID, key: e.key})
		if r.status == 200 {
			if strings.TrimSpace(r.body) != receipt {
				t.Fatalf("stored receipt %s, signed %s", r.body, receipt)
			}
			break
		}
		if r.status != 404 || time.Now().After(deadline) {
			t.Fatalf("A's receipt: %d %s", r.status, r.body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.expect(t, e, exchange{name: "unknown receipt", method: "GET", path: "/v1/receipts/" + unknown, key: e.key, status: 404, code: "not_found"})

	// The 404 message repeats the id asked for: B's answer for A's id is
	// its answer for an unknown id, with that id.
	got := c.expect(t, e, exchange{name: "B on A's receipt", method: "GET", path: "/v1/receipts/" + rc.ReceiptID, key: e.other, status: 404, code: "not_found"}).body
	want := c.expect(t, e, exchange{name: "B on an unknown receipt", method: "GET", path: "/v1/receipts/" + unknown, key: e.other, status: 404, code: "not_found"}).body
	if strings.ReplaceAll(got, rc.ReceiptID, unknown) != want {
		t.Errorf("B tells A's receipt (%s) from an unknown one (%s)", got, want)
	}
	a.leaks(t, got)

	key := "GET /v1/receipts/{receipt_id}"
	if !c.success[key] || !c.failure[key] {
		t.Fatalf("%s: success validated %v, error validated %v", key, c.success[key], c.failure[key])
	}
}
