package mail

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"net/mail"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
)

// The SMTP password never shows in a log line or in fmt output.
func TestSMTPConfigRedacted(t *testing.T) {
	const pw = "s3cret-smtp-password"
	c := SMTPConfig{Addr: "smtp.example.com:587", Username: "u", Password: pw}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("config", "smtp", c)
	for _, out := range []string{buf.String(), fmt.Sprint(c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c)} {
		if strings.Contains(out, pw) {
			t.Fatalf("password printed: %s", out)
		}
	}
	if !strings.Contains(buf.String(), `"starttls_required":true`) {
		t.Fatalf("log: %s", buf.String())
	}
}

// STARTTLS is required off loopback, and on it when asked; credentials
// come in pairs.
func TestSMTPConfigRules(t *testing.T) {
	for addr, want := range map[string]bool{"smtp.example.com:587": true, "10.0.0.1:25": true, "127.0.0.1:1025": false, "localhost:25": false, "[::1]:25": false} {
		if got := (SMTPConfig{Addr: addr}).tlsRequired(); got != want {
			t.Errorf("%s: STARTTLS required %v, want %v", addr, got, want)
		}
	}
	if !(SMTPConfig{Addr: "127.0.0.1:25", RequireTLS: true}).tlsRequired() {
		t.Error("RequireTLS ignored on loopback")
	}
	for _, c := range []SMTPConfig{{Addr: "nohost"}, {Addr: "h:0"}, {Addr: "h:25", Username: "u"}, {Addr: "h:25", Password: "p"}} {
		if c.Validate() == nil {
			t.Errorf("%v: valid", c)
		}
	}
}

// Links are absolute, carry the token in the fragment, and give it back.
func TestLinks(t *testing.T) {
	l := Links{Base: "https://certnode.example.com/"}
	got := l.For(TemplateInvitation, "cni_abc-_x", nil)
	if got != "https://certnode.example.com/dashboard/#/invitations/accept?token=cni_abc-_x" || TokenOf(got) != "cni_abc-_x" {
		t.Fatalf("invitation link %q", got)
	}
	if got := l.For(TemplateEndpointDisabled, "", map[string]string{"endpoint_id": "ep_1/../x"}); got != "https://certnode.example.com/dashboard/#/webhooks/ep_1%2F..%2Fx" {
		t.Fatalf("endpoint link %q", got)
	}
	for _, bad := range []string{"", "/relative", "ftp://x", "https://x/?q=1", "https://u:p@x"} {
		if CheckBaseURL(bad) == nil {
			t.Errorf("%q accepted as a public URL", bad)
		}
	}
}

// Every template renders both parts with the branding; what a field
// holds is escaped in HTML and cannot add a header through the subject.
func TestRender(t *testing.T) {
	b := Branding{Name: "Acme <b>Rockets</b>", Color: "#ff6600", LogoURL: "javascript:alert(1)", SupportEmail: "help@acme.test"}
	for _, name := range TemplateNames {
		d := SampleData(name, Links{Base: "https://c.example"}, b, "acme")
		for k := range d.Fields {
			d.Fields[k] = "x\r\nBcc: evil@example.com <script>alert(1)</script>"
		}
		r, err := Render(name, d)
		if err != nil {
			t.Fatal(err)
		}
		if strings.ContainsAny(r.Subject, "\r\n") || r.Subject == "" {
			t.Errorf("%s: subject %q", name, r.Subject)
		}
		if strings.Contains(r.HTML, "<script>") || strings.Contains(r.HTML, "<b>Rockets") || strings.Contains(r.HTML, "javascript:") {
			t.Errorf("%s: unescaped input in HTML:\n%s", name, r.HTML)
		}
		for part, body := range map[string]string{"text": r.Text, "html": r.HTML} {
			if !strings.Contains(body, "help@acme.test") || !strings.Contains(body, "https://c.example/dashboard/#/") {
				t.Errorf("%s %s: no support address or link:\n%s", name, part, body)
			}
		}
		if !strings.Contains(r.HTML, "#ff6600") {
			t.Errorf("%s: no brand colour", name)
		}
	}
	if _, err := Render("nope", Data{}); err == nil {
		t.Fatal("an unknown template rendered")
	}
	if r, _ := Render(TemplateQuotaWarning, Data{Brand: Branding{Color: "red"}}); !strings.Contains(r.HTML, DefaultBrandColor) || !strings.Contains(r.Text, DefaultBrandName) {
		t.Fatal("defaults not applied")
	}
}

// A message built and signed with a folder key verifies against the
// record its public half makes; with the record of another key it fails.
func TestSignVerify(t *testing.T) {
	dir := t.TempDir()
	name := KeyName("sel1", "mail.example.test")
	k, err := DirKeys{Dir: dir}.Key(context.Background(), name, true)
	if err != nil {
		t.Fatal(err)
	}
	again, err := DirKeys{Dir: dir}.Key(context.Background(), name, false)
	if err != nil || !again.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(k.Public()) {
		t.Fatalf("the key read back: %v", err)
	}
	if _, err := (DirKeys{Dir: dir}).Key(context.Background(), KeyName("sel2", "mail.example.test"), false); err == nil {
		t.Fatal("a missing key was found")
	}
	if _, err := (DirKeys{Dir: dir}).Key(context.Background(), "../../etc/passwd", true); err == nil {
		t.Fatal("a path was taken as a key name")
	}
	m := Message{ID: "abc", From: mail.Address{Name: "Acme", Address: "no-reply@mail.example.test"}, To: "ada@example.test",
		ReplyTo: "help@acme.test", Rendered: Rendered{Subject: "Hi", Text: "Hello.\n", HTML: "<p>Hello.</p>"}, Date: time.Now()}
	raw, err := m.Build()
	if err != nil {
		t.Fatal(err)
	}
	signed, err := Sign(raw, DKIMKey{Domain: "mail.example.test", Selector: "sel1", Signer: k})
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := RecordValue(k.Public())
	_, other, _ := ed25519.GenerateKey(nil)
	otherRec, _ := RecordValue(other.Public())
	for record, ok := range map[string]bool{rec: true, otherRec: false} {
		vs, err := dkim.VerifyWithOptions(bytes.NewReader(signed), &dkim.VerifyOptions{LookupTXT: func(q string) ([]string, error) {
			if q != "sel1._domainkey.mail.example.test" {
				t.Errorf("looked up %q", q)
			}
			return []string{record}, nil
		}})
		if err != nil || len(vs) != 1 || (vs[0].Err == nil) != ok {
			t.Errorf("record %.30s: %v %+v", record, err, vs)
		}
	}
	if err := CheckRecord([]string{"v=spf1 -all", rec}, rec); err != nil {
		t.Fatalf("check: %v", err)
	}
	if err := CheckRecord(nil, rec); err != ErrRecordMissing {
		t.Fatalf("check without a record: %v", err)
	}
	if err := CheckRecord([]string{otherRec}, rec); err == nil {
		t.Fatal("another key's record passed")
	}
}

func FuzzParseRecord(f *testing.F) {
	for _, s := range []string{"v=DKIM1; k=rsa; p=MIIB", "p=", "a=b;a=c", ";;", "k = ed25519 ; p = AA BB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tags, err := ParseRecord(s)
		if err != nil {
			return
		}
		for k, v := range tags {
			if k == "" || strings.ContainsAny(v, " \t\r\n") {
				t.Fatalf("%q: tag %q=%q", s, k, v)
			}
		}
		_ = CheckRecord([]string{s}, "v=DKIM1; k=rsa; p=MIIB")
	})
}

func FuzzFields(f *testing.F) {
	for _, s := range []string{`{"period":"2030-01","used":80000,"percent":80}`, `{"a":{"b":1},"c":[1],"d":true,"e":null}`, `[]`, `{"x":"` + strings.Repeat("é", 2000) + `"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fields, err := Fields(b)
		if err != nil {
			return
		}
		if len(fields) > maxFields {
			t.Fatalf("%d fields", len(fields))
		}
		for k, v := range fields {
			if len(k) > 64 || len(v) > maxFieldBytes {
				t.Fatalf("field %q of %d bytes", k, len(v))
			}
		}
	})
}

func FuzzRender(f *testing.F) {
	f.Add("Acme", "#123456", "https://a.test/l.png", "help@a.test", "80", "<script>")
	f.Fuzz(func(t *testing.T, name, color, logo, support, field, other string) {
		// Marked, so that the value is found only where it was put as is.
		marked := "ZQXJ" + other + "ZQXJ"
		d := Data{Brand: Branding{Name: name, Color: color, LogoURL: logo, SupportEmail: support}, Recipient: "a@b.test",
			Link: "https://c.test/dashboard/#/usage", Fields: map[string]string{"percent": field, "summary": marked, "name": marked}}
		for _, tmpl := range TemplateNames {
			r, err := Render(tmpl, d)
			if err != nil {
				t.Fatalf("%s: %v", tmpl, err)
			}
			if strings.ContainsAny(r.Subject, "\r\n") {
				t.Fatalf("%s: subject %q", tmpl, r.Subject)
			}
			if strings.ContainsAny(other, "<>\"'&") && strings.Contains(r.HTML, marked) {
				t.Fatalf("%s: %q unescaped in HTML", tmpl, other)
			}
		}
	})
}

// A From, To or Subject header added above a signed message (a second
// one, which readers may show) breaks the signature: they are over-signed.
func TestSignOverSigned(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(nil)
	rec, _ := RecordValue(key.Public())
	for _, replyTo := range []string{"", "help@acme.test"} {
		m := Message{ID: "abc", From: mail.Address{Name: "Acme", Address: "no-reply@mail.example.test"}, To: "ada@example.test",
			ReplyTo: replyTo, Rendered: Rendered{Subject: "Hi", Text: "Hello.\n", HTML: "<p>Hello.</p>"}, Date: time.Now()}
		raw, err := m.Build()
		if err != nil {
			t.Fatal(err)
		}
		signed, err := Sign(raw, DKIMKey{Domain: "mail.example.test", Selector: "sel1", Signer: key})
		if err != nil {
			t.Fatal(err)
		}
		verify := func(msg []byte) error {
			vs, err := dkim.VerifyWithOptions(bytes.NewReader(msg), &dkim.VerifyOptions{LookupTXT: func(string) ([]string, error) { return []string{rec}, nil }})
			if err != nil || len(vs) != 1 {
				t.Fatalf("verify: %v %+v", err, vs)
			}
			return vs[0].Err
		}
		if err := verify(signed); err != nil {
			t.Fatalf("reply-to %q: the signed message: %v", replyTo, err)
		}
		for _, added := range []string{"From: PayPal <security@paypal.example>", "To: eve@example.test", "Subject: Urgent", "Reply-To: eve@example.test"} {
			if verify(append([]byte(added+"\r\n"), signed...)) == nil {
				t.Errorf("reply-to %q: %q prepended after signing, and the signature verifies", replyTo, added)
			}
		}
	}
}
