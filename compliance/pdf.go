// Package compliance draws an organization's signed compliance report
// (schemas.ComplianceReport, the payload of a CertNode receipt) as a PDF
// for auditors. The PDF states the receipt's id and the SHA-256 of the
// signed JSON, on its first page and in its Keywords, so that
// `certnode verify --pdf` ties a PDF to the receipt that proves its
// content. cmd gives it to ingest's compliance route.
package compliance

import (
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-pdf/fpdf"

	"github.com/certnode/certnode/schemas"
)

//go:embed fonts/*.ttf
var fonts embed.FS

// maxEventRows bounds the audit events the PDF lists; the signed JSON
// holds them all.
const maxEventRows = 300

// Renderer draws reports; it is stateless.
type Renderer struct{}

// Binding is what ties a PDF to its receipt: the receipt's id and the
// SHA-256 (hex) of the receipt's JSON as served.
type Binding struct {
	ReceiptID  string
	JSONSHA256 string
}

// keywords is how the binding is written into the PDF's Keywords.
func (b Binding) keywords() string {
	return "certnode-receipt-id:" + b.ReceiptID + " certnode-json-sha256:" + b.JSONSHA256
}

var keywordsPattern = regexp.MustCompile(`/Keywords \(certnode-receipt-id:([A-Za-z0-9_-]{43}) certnode-json-sha256:([0-9a-f]{64})\)`)

// BindingOf reads the binding a PDF made here carries.
func BindingOf(pdf []byte) (Binding, error) {
	m := keywordsPattern.FindSubmatch(pdf)
	if m == nil {
		return Binding{}, errors.New("the PDF names no CertNode receipt (not a compliance report made by CertNode)")
	}
	return Binding{ReceiptID: string(m[1]), JSONSHA256: string(m[2])}, nil
}

// BindingFor is the binding of a receipt's JSON, as served.
func BindingFor(receipt []byte) (Binding, error) {
	var r struct {
		ReceiptID string `json:"receipt_id"`
	}
	if err := json.Unmarshal(receipt, &r, json.RejectUnknownMembers(false)); err != nil || r.ReceiptID == "" {
		return Binding{}, fmt.Errorf("not a CertNode receipt: %v", err)
	}
	sum := sha256.Sum256(trimNewline(receipt))
	return Binding{ReceiptID: r.ReceiptID, JSONSHA256: hex.EncodeToString(sum[:])}, nil
}

func trimNewline(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// PDF draws rep, whose signed receipt is receipt, to w.
func (Renderer) PDF(w io.Writer, receipt []byte, rep *schemas.ComplianceReport) error {
	bind, err := BindingFor(receipt)
	if err != nil {
		return err
	}
	var payloadHash string
	var r struct {
		PayloadHash string `json:"payload_jcs_sha256"`
	}
	if json.Unmarshal(receipt, &r, json.RejectUnknownMembers(false)) == nil {
		if b, err := base64.RawURLEncoding.DecodeString(r.PayloadHash); err == nil {
			payloadHash = hex.EncodeToString(b)
		}
	}
	pdf, err := newDoc("P", "Compliance report of "+rep.Organization, fmt.Sprintf("%s to %s", day(rep.From), day(rep.To)), rep.GeneratedAt)
	if err != nil {
		return err
	}
	pdf.SetKeywords(bind.keywords(), false)
	pdf.SetFooterFunc(func() {
		pdf.SetY(-12)
		pdf.SetFont("dejavu", "", 7)
		pdf.CellFormat(0, 5, fmt.Sprintf("%s · receipt %s · page %d", rep.Organization, bind.ReceiptID, pdf.PageNo()), "", 0, "C", false, 0, "")
	})
	pdf.AddPage()

	h1 := func(s string) {
		pdf.SetFont("dejavu", "B", 16)
		pdf.MultiCell(0, 8, s, "", "L", false)
	}
	h2 := func(s string) {
		pdf.Ln(3)
		pdf.SetFont("dejavu", "B", 12)
		pdf.MultiCell(0, 7, s, "", "L", false)
		pdf.SetFont("dejavu", "", 9)
	}
	para := func(s string) {
		pdf.SetFont("dejavu", "", 9)
		pdf.MultiCell(0, 4.5, s, "", "L", false)
	}
	table := func(widths []float64, head []string, rows [][]string) {
		pdf.SetFont("dejavu", "B", 8)
		for i, c := range head {
			pdf.CellFormat(widths[i], 5.5, c, "B", 0, "L", false, 0, "")
		}
		pdf.Ln(-1)
		pdf.SetFont("dejavu", "", 8)
		if len(rows) == 0 {
			pdf.CellFormat(0, 5, "None.", "", 1, "L", false, 0, "")
		}
		for _, row := range rows {
			for i, c := range row {
				pdf.CellFormat(widths[i], 5, clip(pdf, c, widths[i]), "", 0, "L", false, 0, "")
			}
			pdf.Ln(-1)
		}
	}

	h1("Compliance report: " + rep.Organization)
	para(fmt.Sprintf("Period: %s to %s (UTC). Generated at %s by %s.", stamp(rep.From), stamp(rep.To), stamp(rep.GeneratedAt), rep.GeneratedBy))
	pdf.Ln(2)
	pdf.SetFillColor(240, 243, 247)
	pdf.SetFont("dejavu", "B", 9)
	pdf.MultiCell(0, 5, "This report is signed as a CertNode receipt", "LTR", "L", true)
	pdf.SetFont("dejavu", "", 8.5)
	pdf.MultiCell(0, 4.5, "Receipt id: "+bind.ReceiptID+"\nSHA-256 of the signed JSON (the receipt as GET /v1/receipts/"+bind.ReceiptID+
		" answers it): "+bind.JSONSHA256+"\nSHA-256 of the report (its RFC 8785 canonical JSON, the receipt's payload_jcs_sha256): "+payloadHash+
		"\nCheck it offline: certnode verify --jwks JWKS --pdf this.pdf receipt.json", "LBR", "L", true)

	s := rep.Requests
	h2("Requests")
	table([]float64{60, 40}, []string{"", "count"}, [][]string{
		{"requests", num(s.Requests)}, {"receipts signed", num(s.Signed)}, {"verified valid", num(s.Valid)},
		{"verification failures", num(s.Invalid)}, {"failed", num(s.Failed)},
		{"processed as asked (success ratio)", fmt.Sprintf("%.5f", rep.SuccessRatio)},
		{"latency p50 / p90 / p99 (ms)", pct(s.LatencyMillis)},
		{"webhook attempts: delivered / retrying / failed", fmt.Sprintf("%s / %s / %s", num(s.Webhooks.Delivered), num(s.Webhooks.Retrying), num(s.Webhooks.Failed))},
		{"webhook latency p50 / p90 / p99 (ms)", pct(s.Webhooks.LatencyMillis)},
	})
	h2("Receipts by signing key")
	para("Keys published now: " + strings.Join(rep.SigningKeys, ", ") + ". More than one key in the period is a key rotation.")
	table([]float64{130, 40}, []string{"kid", "receipts"}, counts(rep.ReceiptsByKid))
	h2("Verification failures by reason")
	table([]float64{130, 40}, []string{"reason", "requests"}, counts(rep.VerificationFailures))
	h2("Users and roles")
	table([]float64{60, 70, 40}, []string{"user", "email", "role"}, rows(rep.Users, "user", "email", "role"))
	h2("API keys")
	keys := rows(rep.APIKeys, "id", "name", "scopes", "last_used_at", "revoked_at")
	table([]float64{32, 30, 48, 35, 35}, []string{"key", "name", "scopes", "last used", "revoked"}, keys)
	h2("Admin and security events")
	events := rows(rep.AuditEvents, "at", "action", "actor", "target")
	if len(events) > maxEventRows {
		para(fmt.Sprintf("The newest %d of %d events; the signed JSON lists them all.", maxEventRows, len(events)))
		events = events[:maxEventRows]
	}
	if rep.AuditEventsOmitted > 0 {
		para(fmt.Sprintf("%d older events of the period are left out of the signed report (its size is bounded).", rep.AuditEventsOmitted))
	}
	table([]float64{38, 45, 55, 50}, []string{"at", "action", "actor", "target"}, events)
	if err := pdf.Error(); err != nil {
		return err
	}
	return pdf.Output(w)
}

// newDoc starts an A4 document in orientation ("P" or "L") with the
// embedded fonts; the same content at the same time draws the same bytes.
func newDoc(orientation, title, subject string, at time.Time) (*fpdf.Fpdf, error) {
	pdf := fpdf.New(orientation, "mm", "A4", "")
	regular, err := fonts.ReadFile("fonts/DejaVuSansCondensed.ttf")
	if err != nil {
		return nil, err
	}
	bold, err := fonts.ReadFile("fonts/DejaVuSansCondensed-Bold.ttf")
	if err != nil {
		return nil, err
	}
	pdf.AddUTF8FontFromBytes("dejavu", "", regular)
	pdf.AddUTF8FontFromBytes("dejavu", "B", bold)
	pdf.SetCreationDate(at)
	pdf.SetModificationDate(at)
	pdf.SetCatalogSort(true)
	pdf.SetTitle(title, true)
	pdf.SetAuthor("CertNode", true)
	pdf.SetSubject(subject, true)
	return pdf, nil
}

func day(t time.Time) string   { return t.UTC().Format("2006-01-02") }
func stamp(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") }
func num(n uint64) string      { return fmt.Sprint(n) }

func pct(p schemas.Percentiles) string {
	f := func(v *float64) string {
		if v == nil {
			return "–"
		}
		return fmt.Sprint(*v)
	}
	return f(p.P50) + " / " + f(p.P90) + " / " + f(p.P99)
}

func counts(cs []schemas.ComplianceCount) [][]string {
	out := make([][]string, len(cs))
	for i, c := range cs {
		v := c.Value
		if v == "" {
			v = "(none)"
		}
		out[i] = []string{v, num(c.Count)}
	}
	return out
}

// rows picks members of the coordinator's objects as text: nested ones
// (an actor) are shown as "kind id", lists joined by commas.
func rows(objs []map[string]any, members ...string) [][]string {
	out := make([][]string, len(objs))
	for i, o := range objs {
		row := make([]string, len(members))
		for j, m := range members {
			row[j] = text(o[m])
		}
		out[i] = row
	}
	return out
}

func text(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		return v
	case []any:
		parts := make([]string, len(v))
		for i, x := range v {
			parts[i] = text(x)
		}
		return strings.Join(parts, ", ")
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var parts []string
		for _, k := range keys {
			if s := text(v[k]); s != "" {
				parts = append(parts, s)
			}
		}
		return strings.Join(parts, " ")
	}
	return fmt.Sprint(v)
}

// clip shortens s to fit w millimetres in the current font.
func clip(pdf *fpdf.Fpdf, s string, w float64) string {
	if pdf.GetStringWidth(s) <= w-1 {
		return s
	}
	r := []rune(s)
	for len(r) > 1 && pdf.GetStringWidth(string(r)+"…") > w-1 {
		r = r[:len(r)-1]
	}
	return string(r) + "…"
}
