package compliance

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/certnode/certnode/schemas"
)

const receipt = `{"protected":"x","payload":{},"signature":"y","kid":"k","payload_jcs_sha256":"47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU","receipt_id":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}`

func report() *schemas.ComplianceReport {
	at := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	return &schemas.ComplianceReport{Type: schemas.ComplianceReportType, Version: 1, Organization: "acme-ünïcode", From: at.AddDate(0, -1, 0), To: at,
		GeneratedAt: at, GeneratedBy: "usr_1", SigningKeys: []string{"k1"},
		ReceiptsByKid: []schemas.ComplianceCount{{Value: "k1", Count: 7}},
		Users:         []map[string]any{{"user": "usr_1", "email": "ana@例え.jp", "role": "owner"}},
		APIKeys:       []map[string]any{{"id": "cnk_1", "scopes": []any{"sign", "read"}}},
		AuditEvents:   []map[string]any{{"at": "2026-11-20T10:00:00Z", "action": "key.create", "actor": map[string]any{"kind": "user", "id": "usr_1"}}},
	}
}

// A PDF names its receipt in its Keywords; the same report draws the same
// bytes; any other receipt's binding differs.
func TestPDFBindsItsReceipt(t *testing.T) {
	var a, b bytes.Buffer
	if err := (Renderer{}).PDF(&a, []byte(receipt+"\n"), report()); err != nil {
		t.Fatal(err)
	}
	if err := (Renderer{}).PDF(&b, []byte(receipt), report()); err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(a.Bytes(), []byte("%PDF-")) || !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("the same report drew different PDFs")
	}
	got, err := BindingOf(a.Bytes())
	want, _ := BindingFor([]byte(receipt))
	if err != nil || got != want || got.ReceiptID != "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" || len(got.JSONSHA256) != 64 {
		t.Fatalf("binding %+v %v, want %+v", got, err, want)
	}
	other, _ := BindingFor([]byte(strings.Replace(receipt, `"y"`, `"z"`, 1)))
	if other == got {
		t.Fatal("another receipt's JSON binds the same")
	}
	if _, err := BindingOf([]byte("%PDF-1.3 nothing")); err == nil {
		t.Fatal("a PDF with no binding was read as bound")
	}
	if err := (Renderer{}).PDF(&a, []byte(`{"x":1}`), report()); err == nil {
		t.Fatal("drew a PDF for something that is not a receipt")
	}
}

// A table draws the same bytes for the same rows, and refuses a row of
// the wrong width.
func TestTablePDF(t *testing.T) {
	at := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	cols := []schemas.ExportColumn{{Name: "time", Type: "timestamp"}, {Name: "status", Type: "string"}, {Name: "requests", Type: "float64"}}
	draw := func() []byte {
		var out bytes.Buffer
		tw, err := (Renderer{}).Table(&out, "Report rpt_1 of acme", "2026-11-26 to 2026-11-27", at, cols)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 500 { // several pages
			if err := tw.Write([]any{at.Add(time.Duration(i) * time.Minute), "signed", float64(i) / 3}); err != nil {
				t.Fatal(err)
			}
		}
		if err := tw.Write([]any{at, "short"}); err == nil {
			t.Fatal("a row of two values for three columns was drawn")
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		return out.Bytes()
	}
	a, b := draw(), draw()
	if !bytes.HasPrefix(a, []byte("%PDF-")) || !bytes.Equal(a, b) || bytes.Count(a, []byte("/Type /Page\n")) < 10 {
		t.Fatalf("the table's PDF: %d bytes, %d pages, deterministic %v", len(a), bytes.Count(a, []byte("/Type /Page\n")), bytes.Equal(a, b))
	}
	if _, err := (Renderer{}).Table(&bytes.Buffer{}, "t", "s", at, nil); err == nil {
		t.Fatal("a table of no columns")
	}
}
