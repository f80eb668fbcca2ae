//go:build integration

package main

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/testenv"
)

// post sends a JSON body with a key and an Accept header.
func post(t *testing.T, e *devEnv, path, key, accept, body string) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequest("POST", e.base+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// TestComplianceReport: with ClickHouse, an organization's compliance
// report is a receipt `certnode verify` accepts, whose payload counts the
// period's receipts per kid and holds its users, keys and audit events;
// an altered copy fails; its PDF names the receipt that proves it (read
// back by pdftotext), and `verify --pdf` ties the two and refuses another
// receipt's PDF; the other organization's report holds none of it.
func TestComplianceReport(t *testing.T) {
	e := startDev(t, "--clickhouse", testenv.ClickHouseAddr(t))
	c := newContract(t, e)
	for range 3 {
		if code, body := e.do("POST", "/v1/sign", e.key, "application/json", `{"payload":{"audit":true}}`); code != 200 {
			t.Fatalf("sign: %d %s", code, body)
		}
	}
	keyA := e.keyID()
	from, to := time.Now().UTC().Truncate(time.Hour), time.Now().UTC().Truncate(time.Hour).Add(time.Hour)
	period := `{"from":"` + from.Format(time.RFC3339) + `","to":"` + to.Format(time.RFC3339) + `"}`

	// The rows land within the sink's batch window.
	var receipt []byte
	var rep struct {
		Payload struct {
			Type          string `json:"type"`
			Organization  string `json:"organization"`
			ReceiptsByKid []struct {
				Value string `json:"value"`
				Count int    `json:"count"`
			} `json:"receipts_by_kid"`
			APIKeys     []map[string]any `json:"api_keys"`
			AuditEvents []map[string]any `json:"audit_events"`
			Requests    struct {
				Signed int `json:"signed"`
			} `json:"requests"`
		} `json:"payload"`
		ReceiptID string `json:"receipt_id"`
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		receipt = []byte(c.expect(t, e, exchange{name: "A's compliance report", method: "POST", path: "/v1/compliance/reports", key: e.key,
			ctype: "application/json", body: period, status: 200}).body)
		if err := json.Unmarshal(receipt, &rep, json.RejectUnknownMembers(false)); err != nil {
			t.Fatal(err)
		}
		if rep.Payload.Requests.Signed >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the report never counted the signs: %s", receipt)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if rep.Payload.Type != "certnode.compliance_report" || rep.Payload.Organization != "demo" || len(rep.Payload.ReceiptsByKid) == 0 ||
		rep.Payload.ReceiptsByKid[0].Count < 3 || len(rep.Payload.APIKeys) == 0 || !bytes.Contains(receipt, []byte(keyA)) {
		t.Fatalf("A's report: %s", receipt)
	}

	dir := t.TempDir()
	jwks := filepath.Join(dir, "jwks.json")
	_, body := e.do("GET", "/.well-known/jwks.json", "", "", "")
	os.WriteFile(jwks, []byte(body), 0o644)
	verify := func(args ...string) (int, string) {
		var out, errb bytes.Buffer
		code := run(append([]string{"verify", "--jwks", jwks}, args...), strings.NewReader(""), &out, &errb)
		return code, out.String() + errb.String()
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, b, 0o644)
		return p
	}
	jsonFile := write("report.json", receipt)
	if code, out := verify("--receipt", jsonFile); code != 0 || !strings.Contains(out, "valid\ncompliance report of demo") {
		t.Fatalf("verify: %d %s", code, out)
	}
	altered := bytes.Replace(receipt, []byte(`"organization":"demo"`), []byte(`"organization":"dem0"`), 1)
	if code, out := verify("--receipt", write("altered.json", altered)); code != 1 || !strings.Contains(out, "invalid") {
		t.Fatalf("verify an altered report: %d %s", code, out)
	}

	// The PDF: signed by a receipt of its own, served as JSON by
	// GET /v1/receipts/{id}.
	code, hdr, pdf := post(t, e, "/v1/compliance/reports", e.key, "application/pdf", period)
	if code != 200 || hdr.Get("Content-Type") != "application/pdf" || !bytes.HasPrefix(pdf, []byte("%PDF-")) {
		t.Fatalf("PDF: %d %v %.200s", code, hdr, pdf)
	}
	id := hdr.Get("Certnode-Receipt-Id")
	var pdfJSON []byte
	testenv.WaitFor(t, "the PDF's receipt is stored", 30*time.Second, func() (bool, string) {
		code, body := e.do("GET", "/v1/receipts/"+id, e.key, "", "")
		pdfJSON = []byte(body)
		return code == 200, body
	})
	pdfFile := write("report.pdf", pdf)
	if os.Getenv("CERTNODE_KEEP_PDF") != "" { // to look at it
		os.WriteFile(filepath.Join("..", "..", ".local", "compliance-report.pdf"), pdf, 0o644)
	}
	if code, out := verify("--receipt", write("pdf-receipt.json", pdfJSON), "--pdf", pdfFile); code != 0 || !strings.Contains(out, "pdf: names this receipt") {
		t.Fatalf("verify --pdf: %d %s", code, out)
	}
	if code, out := verify("--receipt", jsonFile, "--pdf", pdfFile); code != 1 || !strings.Contains(out, "not this one") {
		t.Fatalf("verify --pdf with another receipt: %d %s", code, out)
	}
	text := pdfText(t, pdf)
	for _, want := range []string{"Compliance report: demo", id, "Receipts by signing key", "Admin and security events", keyA} {
		if !strings.Contains(text, want) {
			t.Errorf("the PDF's text lacks %q:\n%s", want, text)
		}
	}

	// B's report is B's.
	code, _, b := post(t, e, "/v1/compliance/reports", e.other, "", period)
	if code != 200 || !bytes.Contains(b, []byte(`"organization":"other"`)) || bytes.Contains(b, []byte(keyA)) || bytes.Contains(b, []byte(`"organization":"demo"`)) {
		t.Fatalf("B's report: %d %s", code, b)
	}
	if !c.success["POST /v1/compliance/reports"] {
		t.Error("no success validated against the document")
	}
}

// pdfText is a PDF's text as Debian's pdftotext reads it: an independent
// reader of what the service draws.
func pdfText(t *testing.T, pdf []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "read.pdf")
	if err := os.WriteFile(path, pdf, 0o600); err != nil {
		t.Fatal(err)
	}
	text, err := exec.Command("pdftotext", "-layout", path, "-").Output()
	if err != nil {
		t.Fatalf("pdftotext (poppler-utils; run make services): %v", err)
	}
	return string(text)
}
