//go:build integration

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/envelope"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
	"github.com/certnode/certnode/signer"
)

// hsmKEKs opens the token's KEKs as another process of the deployment
// would (a fresh cache).
func (e *e2e) hsmKEKs(t *testing.T) *envelope.Envelope {
	t.Helper()
	pin, err := signer.PINFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	h, err := signer.OpenHSM(signer.PKCS11Config{Module: e.kekModule, TokenLabel: e.kekToken, PIN: pin, Signers: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return envelope.New(h.KEKs())
}

// TestPrivacy: on real Kafka and ClickHouse, a data subject's receipts are
// found by the organization's subject pointer (and not by another
// organization), erasure rewrites them in ClickHouse so their payload is
// gone while the receipts handed out still verify, and each request is in
// the audit log with the subject hashed; erasing the organization deletes
// its rows and its key, so no copy of its payloads can be read; payloads
// are stored sealed under KEKs in SoftHSM2 throughout.
func TestPrivacy(t *testing.T) {
	e := newE2E(t, "")
	caddr, call := e.coordinated()
	e.start("worker", "worker", "--metrics", freeAddr(t), "--concurrency", "4", "--coordinator", caddr)
	e.sink()
	e.ingest("--coordinator", caddr)
	org, key := e.newOrgKey(call, "acme", `["admin","read","sign","verify"]`)
	globex, other := e.newOrgKey(call, "globex", `["admin","read","sign"]`)
	if code, body := call("PATCH", "/v1/orgs/"+org, `{"settings":{"subject_pointer":"/customer/email"}}`); code != 200 {
		t.Fatalf("subject pointer: %d %s", code, body)
	}
	if code, body := call("PATCH", "/v1/orgs/"+org, `{"settings":{"subject_pointer":"customer"}}`); code != 400 {
		t.Fatalf("a bad subject pointer: %d %s", code, body)
	}
	as := func(k, method, path, body string) (int, string) {
		return request(method, "http://"+e.http+path, k, "application/json", body)
	}
	sign := func(k, email string, n int) (id string, receipt []byte) {
		t.Helper()
		var code int
		var body string
		testenv.WaitFor(t, "signed", 30*time.Second, func() (bool, string) {
			code, body = as(k, "POST", "/v1/sign", fmt.Sprintf(`{"payload":{"customer":{"email":%q},"n":%d}}`, email, n))
			return code == 200, fmt.Sprint(code, body)
		})
		var rc struct {
			ReceiptID string `json:"receipt_id"`
		}
		json.Unmarshal([]byte(body), &rc, json.RejectUnknownMembers(false))
		return rc.ReceiptID, []byte(body)
	}
	ada1, ada1Receipt := sign(key, "ada@example.com", 1)
	ada2, _ := sign(key, "ada@example.com", 2)
	bob, _ := sign(key, "bob@example.com", 3)
	sign(other, "ada@example.com", 4) // another organization's
	for _, id := range []string{ada1, ada2, bob} {
		testenv.WaitFor(t, "the receipt stored", 30*time.Second, func() (bool, string) {
			code, body := as(key, "GET", "/v1/receipts/"+id, "")
			return code == 200, fmt.Sprint(code, body)
		})
	}

	// Stored sealed: no row of either organization holds a payload in
	// the clear.
	conn := e.clickhouse()
	var clear, sealed uint64
	if err := conn.QueryRow(context.Background(), "SELECT countIf(receipt != '' AND substring(receipt, 1, 5) != 'cne1:'), countIf(substring(receipt, 1, 5) = 'cne1:') FROM certnode.results WHERE tenant IN (?, ?)",
		org, globex).Scan(&clear, &sealed); err != nil || clear != 0 || sealed < 3 { // globex's may not be stored yet
		t.Fatalf("%d receipts stored in the clear, %d sealed (%v)", clear, sealed, err)
	}
	// A copy of bob's row, as a backup would keep it.
	var backup string
	if err := conn.QueryRow(context.Background(), schemas.ClickHouseSelectReceipt, org, bob).Scan(&backup); err != nil {
		t.Fatal(err)
	}

	// A verification of ada's first receipt stores it again, under
	// another request: the erasure must reach it too.
	if code, body := as(key, "POST", "/v1/verify", `{"receipt":`+strings.TrimSpace(string(ada1Receipt))+`}`); code != 200 {
		t.Fatalf("verify: %d %s", code, body)
	}
	testenv.WaitFor(t, "the verification stored", 30*time.Second, func() (bool, string) {
		var n uint64
		err := e.clickhouse().QueryRow(context.Background(), "SELECT count() FROM certnode.results WHERE tenant = ? AND receipt_id = ? AND kind = 'verify'", org, ada1).Scan(&n)
		return err == nil && n > 0, fmt.Sprint(n, err)
	})

	// Subject access: ada's two receipts, only the organization's.
	code, body := as(key, "POST", "/v1/privacy/subjects", `{"subject":"ada@example.com"}`)
	var data schemas.SubjectData
	if code != 200 || json.Unmarshal([]byte(body), &data) != nil || len(data.Receipts) != 2 || data.SubjectPointer != "/customer/email" {
		t.Fatalf("subject access: %d %s", code, body)
	}
	if code, body := as(other, "POST", "/v1/privacy/subjects", `{"subject":"ada@example.com"}`); code != 400 || !strings.Contains(body, "no_subject_pointer") {
		t.Fatalf("globex, with no subject pointer: %d %s", code, body)
	}

	// Erasure of ada: her receipts answer 410, bob's stays, and the rows
	// hold no trace of her; the receipt she was handed still verifies.
	code, body = as(key, "POST", "/v1/privacy/erasures", `{"subject":"ada@example.com"}`)
	var done schemas.Erasure
	if code != 202 || json.Unmarshal([]byte(body), &done) != nil || len(done.Requests) != 3 || done.Rows[schemas.ClickHouseResultsTable] < 3 { // two signs and the verification
		t.Fatalf("erasure: %d %s", code, body)
	}
	for _, id := range []string{ada1, ada2} {
		testenv.WaitFor(t, "the receipt erased", 60*time.Second, func() (bool, string) {
			code, body := as(key, "GET", "/v1/receipts/"+id, "")
			return code == 410 && strings.Contains(body, `"erased"`), fmt.Sprint(code, body)
		})
	}
	if code, _ := as(key, "GET", "/v1/receipts/"+bob, ""); code != 200 {
		t.Fatalf("bob's receipt: %d", code)
	}
	var left uint64
	testenv.WaitFor(t, "ada's rows blanked, the verification's included", 60*time.Second, func() (bool, string) {
		err := conn.QueryRow(context.Background(), "SELECT count() FROM certnode.results WHERE tenant = ? AND receipt_id IN (?, ?) AND receipt != ''", org, ada1, ada2).Scan(&left)
		return err == nil && left == 0, fmt.Sprint(left, err)
	})
	var theirs uint64
	if err := conn.QueryRow(context.Background(), "SELECT count() FROM certnode.results WHERE tenant = ? AND receipt != ''", globex).Scan(&theirs); err != nil || theirs == 0 {
		t.Fatalf("globex's receipt naming ada was erased too: %d %v", theirs, err)
	}
	f := filepath.Join(t.TempDir(), "ada1.json")
	os.WriteFile(f, ada1Receipt, 0o600)
	if v := certnode(t, "", "verify", "--jwks", e.jwksFile, "--receipt", f); v.code != 0 {
		t.Fatalf("the receipt handed out no longer verifies: %+v", v)
	}

	// Both requests are in the audit log, ada only by a hash.
	testenv.WaitFor(t, "the privacy requests audited", 30*time.Second, func() (bool, string) {
		rows, err := conn.Query(context.Background(), "SELECT event FROM certnode.audit_events WHERE org = ? AND action IN ('privacy.subject_access', 'erasure.subject')", org)
		if err != nil {
			return false, err.Error()
		}
		defer rows.Close()
		n := 0
		for rows.Next() {
			var ev string
			rows.Scan(&ev)
			if strings.Contains(ev, "ada@") {
				t.Fatalf("the subject in clear in %s", ev)
			}
			n++
		}
		return n == 2, fmt.Sprint(n)
	})

	// Erasing the organization deletes its rows and destroys its KEK in
	// the HSM: the backup copy of bob's receipt can never be read again.
	keks := e.hsmKEKs(t)
	if plain, err := keks.Open(context.Background(), org, backup); err != nil || !strings.Contains(string(plain), "bob@example.com") {
		t.Fatalf("the backup before the erasure: %q, %v", plain, err)
	}
	code, body = as(key, "POST", "/v1/privacy/erasures", `{"all":true}`)
	if code != 202 || json.Unmarshal([]byte(body), &done) != nil || !done.KeyDestroyed {
		t.Fatalf("erasure of the organization: %d %s", code, body)
	}
	if _, err := e.hsmKEKs(t).Open(context.Background(), org, backup); !errors.Is(err, envelope.ErrDestroyed) {
		t.Fatalf("the backup after the erasure: %v", err)
	}
	testenv.WaitFor(t, "the organization's rows deleted", 60*time.Second, func() (bool, string) {
		var n uint64
		err := conn.QueryRow(context.Background(), "SELECT count() FROM certnode.results WHERE tenant = ?", org).Scan(&n)
		return err == nil && n == 0, fmt.Sprint(n, err)
	})
	if code, _ := as(key, "GET", "/v1/receipts/"+bob, ""); code != 404 {
		t.Fatalf("bob's receipt after the organization's erasure: %d", code)
	}
}
