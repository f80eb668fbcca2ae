package apicustom

import (
	"errors"
	"net/textproto"
	"slices"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/certnode/certnode/internal/httpsec"
	"github.com/certnode/certnode/schemas"
)

func TestCheckHeader(t *testing.T) {
	for _, ok := range [][2]string{{"X-Acme", "1"}, {"x-request-source", "certnode gateway/1.0"}, {"Acme-Trace", "a\tb"}, {"X-Powered-By", "Acme"}} {
		if err := CheckHeader(ok[0], ok[1]); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	refused := []string{"Connection", "keep-alive", "Transfer-Encoding", "TE", "Trailer", "Upgrade", "Proxy-Authenticate", "proxy-x",
		"Content-Type", "content-length", "Content-Security-Policy", "Set-Cookie", "Location", "Date", "Server",
		"Access-Control-Allow-Origin", "WWW-Authenticate", "Authorization", "Retry-After", "Certnode-Version", "certnode-anything",
		"Cache-Control", "Vary", "Alt-Svc", "Cross-Origin-Resource-Policy", "Sec-Fetch-Site", "X-Accel-Buffering", "Link", "Allow"}
	for _, h := range httpsec.Headers {
		refused = append(refused, h.Name)
	}
	refused = append(refused, httpsec.HSTS.Name)
	for _, name := range refused {
		err := CheckHeader(name, "x")
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), `"`+name+`"`) {
			t.Errorf("%s: %v, want refused naming it", name, err)
		}
	}
	for _, bad := range [][2]string{{"", "x"}, {"Bad Name", "x"}, {"X-A:", "x"}, {"X-Ünï", "x"}, {strings.Repeat("a", 65), "x"},
		{"X-A", "a\r\nSet-Cookie: x"}, {"X-A", "a\nb"}, {"X-A", "a\x00"}, {"X-A", ""}, {"X-A", " padded"}, {"X-A", "é"}, {"X-A", strings.Repeat("v", 513)}} {
		if err := CheckHeader(bad[0], bad[1]); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	many := map[string]string{}
	for i := range MaxHeaders + 1 {
		many["X-H"+string(rune('a'+i))] = "v"
	}
	if err := CheckResponseHeaders(many); err == nil {
		t.Error("too many headers accepted")
	}
	if err := CheckResponseHeaders(map[string]string{"X-A": "1", "x-a": "2"}); err == nil {
		t.Error("one header twice accepted")
	}
	big := map[string]string{}
	for i := range 9 {
		big["X-H"+string(rune('a'+i))] = strings.Repeat("v", 500)
	}
	if err := CheckResponseHeaders(big); err == nil {
		t.Error("over 4096 bytes accepted")
	}
}

// FuzzCheckHeader: a header CheckHeader accepts is an RFC 7230 token with a
// value on one line, is none the service refuses, and fasthttp carries it
// through as it is.
func FuzzCheckHeader(f *testing.F) {
	for _, s := range [][2]string{{"X-Acme", "1"}, {"Set-Cookie", "a"}, {"X-A", "a\r\nb"}, {"content-type", "x"}, {"X-A", "\t"}, {"certnode-x", "1"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, name, value string) {
		if CheckHeader(name, value) != nil {
			return
		}
		if !isToken(name) || strings.ContainsAny(value, "\r\n\x00") || strings.TrimSpace(value) != value {
			t.Fatalf("accepted %q: %q", name, value)
		}
		canon := textproto.CanonicalMIMEHeaderKey(name)
		if slices.Contains(refusedNames, canon) || slices.ContainsFunc(refusedPrefixes, func(p string) bool { return strings.HasPrefix(canon, p) }) {
			t.Fatalf("accepted the refused %q", name)
		}
		var h fasthttp.ResponseHeader
		h.Set(name, value)
		if got := string(h.Peek(name)); got != value {
			t.Fatalf("%q: fasthttp carries %q, not %q", name, got, value)
		}
	})
}

func TestNormalizeMetadata(t *testing.T) {
	got, err := NormalizeMetadata([]byte(` {"issuer":"Acme Corp", "environment":"prod","n":1.50,"ok":true,"none":null}`))
	if err != nil || string(got) != `{"environment":"prod","issuer":"Acme Corp","n":1.5,"none":null,"ok":true}` {
		t.Fatalf("%s %v", got, err)
	}
	if got, err := NormalizeMetadata([]byte("null")); got != nil || err != nil {
		t.Fatalf("null: %s %v", got, err)
	}
	for _, bad := range []string{`[]`, `"x"`, `{"a":{}}`, `{"a":[1]}`, `{"a":1,"a":2}`, `{"":1}`, `{"x":"` + strings.Repeat("v", MaxMetadataBytes) + `"}`, `{`} {
		if _, err := NormalizeMetadata([]byte(bad)); err == nil {
			t.Errorf("%.60s accepted", bad)
		}
	}
	var b strings.Builder
	b.WriteString("{")
	for i := range MaxMetadataFields + 1 {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`"k` + strings.Repeat("x", i) + `":1`)
	}
	b.WriteString("}")
	if _, err := NormalizeMetadata([]byte(b.String())); err == nil {
		t.Error("too many members accepted")
	}
}

// FuzzNormalizeMetadata: accepted metadata is canonical, bounded, flat,
// checks as settings, and goes into any payload without the member.
func FuzzNormalizeMetadata(f *testing.F) {
	for _, s := range []string{`{"issuer":"Acme"}`, `{"a":1e21,"b":-0}`, `{"a":{"b":1}}`, `null`, `{"\u00e9":"x"}`, `{"a":"\ud800"}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := NormalizeMetadata([]byte(in))
		if err != nil || got == nil {
			return
		}
		again, err := NormalizeMetadata(got)
		if err != nil || string(again) != string(got) || len(got) > MaxMetadataBytes {
			t.Fatalf("%q: %s then %s %v", in, got, again, err)
		}
		if err := (&Settings{ReceiptMetadata: got}).Check(); err != nil {
			t.Fatalf("%s: %v", got, err)
		}
		p, err := schemas.WithReceiptMeta([]byte(`{"z":1}`), got)
		if err != nil {
			t.Fatalf("%s: %v", got, err)
		}
		if has, _ := schemas.HasMember(p, schemas.ReceiptMetaMember); !has {
			t.Fatalf("%s: no member in %s", got, p)
		}
	})
}

func TestKeyDefaultsCheck(t *testing.T) {
	if err := (&KeyDefaults{JobType: "verify", ResultFormat: ResultsCompact, APIVersion: schemas.APIVersionBaseline}).Check(); err != nil {
		t.Fatal(err)
	}
	err := (&KeyDefaults{JobType: "both", ResultFormat: "xml", APIVersion: "2000-01-01"}).Check()
	for _, want := range []string{"both", "xml", "2000-01-01"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v does not name %s", err, want)
		}
	}
}
