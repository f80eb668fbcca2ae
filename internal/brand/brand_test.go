package brand

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestCheckCSS(t *testing.T) {
	for _, ok := range []string{
		"", "a{color:red}", "/* a comment */ .cn-header { background: var(--brand); }",
		"@media (max-width: 600px) { .cn-header { display: none } }", "@supports (display:grid){main{display:grid}}",
		"@keyframes spin { from { transform: rotate(0deg) } to { transform: rotate(360deg) } }",
		"main:not(.x) > p:nth-child(2n+1)::before { content: \"»\"; color: rgb(1 2 3 / 50%); width: calc(100% - 2px) }",
		".a { background: linear-gradient(90deg, #fff, color-mix(in srgb, var(--brand) 40%, white)); }",
		".a{color:#fff!important;;}", "a[href^=\"https\"]{text-decoration:underline}",
	} {
		if err := CheckCSS(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for css, want := range map[string]string{
		"a{background:url(https://evil.test/x.png)}":      "url() is not allowed",
		"a{background:url('x')}":                          "url() is not allowed",
		"a{background:URL( \"x\" )}":                      "url() is not allowed",
		".x{--a: url(y)}":                                 "url() is not allowed",
		"a{background:image-set('x.png' 1x)}":             "image-set() is not allowed",
		"a{background:-webkit-image-set('x.png' 1x)}":     "-webkit-image-set() is not allowed",
		"@import 'https://evil.test/x.css';":              "@import is not allowed",
		"@IMPORT url(x);":                                 "@import is not allowed",
		"@font-face{font-family:x;src:local(y)}":          "@font-face is not allowed",
		"@namespace svg x;":                               "@namespace is not allowed",
		"a{width:expression(alert(1))}":                   "expression() is not allowed",
		"a{behavior:x}":                                   "behavior is not allowed",
		"a{-moz-binding:x}":                               "-moz-binding is not allowed",
		"a{content:'javascript:alert(1)'}":                "javascript:",
		"a{content:'x'}</style><script>alert(1)</script>": `"<" is not allowed`,
		"a{content:'</style'}":                            `"<" is not allowed`,
		"a{b:u\\72l(x)}":                                  "escapes",
		"a{color:red":                                     "not closed",
		"a{color:red}}":                                   "closes nothing",
		"a{content:'unterminated\n}":                      "unterminated string",
		"a{b:c}\x00":                                      "NUL",
		"a{b:c}\xff":                                      "UTF-8",
		"x y z":                                           "syntax",
		strings.Repeat("a{}", MaxCSSBytes/3+1):            "over the limit",
	} {
		err := CheckCSS(css)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%.60q: %v, want an error with %q", css, err, want)
		}
	}
	// Problems say where they are.
	if err := CheckCSS("a{}\n.b { color: red;\n  background: url(x) }"); err == nil || !strings.Contains(err.Error(), "line 3 col 15") {
		t.Errorf("position: %v", err)
	}
}

func TestCheckBranding(t *testing.T) {
	good := Branding{DisplayName: "Acme", LogoURL: "https://acme.test/logo.svg", FaviconURL: "https://acme.test/f.ico",
		Colors: Palette{Primary: "#112233", Accent: "#aabbcc", Background: "#FFFFFF", Text: "#000000"}, SupportEmail: "help@acme.test",
		SupportURL: "https://acme.test/help", SupportMessage: "Write to us", CustomCSS: ".cn-header{font-weight:700}",
		ErrorPages: map[string]string{KindNotFound: "<h1>{{.Title}}</h1>"}}
	if err := Check(&good); err != nil {
		t.Fatal(err)
	}
	bad := Branding{DisplayName: strings.Repeat("x", 201), LogoURL: "javascript:alert(1)", FaviconURL: "/f.ico", SupportURL: "ftp://x",
		Colors: Palette{Primary: "red", Accent: "#12345", Background: "#gggggg", Text: "#1234567"}, SupportEmail: "not an address",
		SupportMessage: strings.Repeat("m", 501), CustomCSS: "@import 'x';", ErrorPages: map[string]string{"418": "x", KindServer: "{{.Nope}}"}}
	err := Check(&bad)
	for _, want := range []string{"display_name", "logo_url", "favicon_url", "support_url", "colors.primary", "colors.accent", "colors.background",
		"colors.text", "support_email", "support_message", "custom_css: line 1 col 1: @import", `"418" is not a kind`, "error_pages.5xx"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want a problem naming %s in: %v", want, err)
		}
	}
}

func TestCheckMaintenance(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := CheckMaintenance(&Maintenance{Message: "Upgrading", Until: now.Add(time.Hour)}, now); err != nil {
		t.Fatal(err)
	}
	if err := CheckMaintenance(&Maintenance{Message: "Upgrading"}, now); err != nil {
		t.Fatal(err)
	}
	err := CheckMaintenance(&Maintenance{Message: " ", Until: now.Add(-time.Second)}, now)
	if err == nil || !strings.Contains(err.Error(), "message") || !strings.Contains(err.Error(), "until") {
		t.Fatalf("%v", err)
	}
	m := Maintenance{Message: "x", Until: now.Add(90*time.Second + time.Millisecond)}
	if got := m.RetryAfter(now); got != 91 {
		t.Errorf("retry after %d, want 91 (rounded up)", got)
	}
	if got := m.RetryAfter(now.Add(time.Hour)); got != int(DefaultRetryAfter/time.Second) {
		t.Errorf("retry after the end %d, want the default", got)
	}
	if got := (&Maintenance{Message: "x"}).RetryAfter(now); got != int(DefaultRetryAfter/time.Second) {
		t.Errorf("no end: %d", got)
	}
}

func TestStyleSheet(t *testing.T) {
	got := StyleSheet(&Branding{Colors: Palette{Primary: "#010203", Text: "bad}<"}, CustomCSS: ".x{color:red}"})
	if want := ":root{--brand:#010203;--accent:#0a7ea4;--bg:#ffffff;--fg:#1b1f24}\n.x{color:red}\n"; got != want {
		t.Fatalf("%q, want %q", got, want)
	}
	// CSS that would not pass is left out, whatever was stored.
	if got := StyleSheet(&Branding{CustomCSS: "a{b:url(x)}"}); strings.Contains(got, "url") {
		t.Fatalf("%q", got)
	}
}

func TestErrorPageTemplates(t *testing.T) {
	for _, ok := range []string{
		"plain text", "<h1>{{.Title}}</h1><p>{{.Message}}</p>{{if .Org.LogoURL}}<img src=\"{{.Org.LogoURL}}\">{{end}}",
		"{{with .Org}}<a href=\"{{.SupportURL}}\">{{.Name}}</a>{{end}}{{if and (eq .Status 503) (gt .RetryAfter 0)}}wait{{else}}no{{end}}",
		"<style>{{.Style}}</style>{{/* a comment */}}{{$o := .Org}}{{$o.Name}}", defaultSource,
	} {
		if err := CheckErrorPages(map[string]string{KindNotFound: ok}); err != nil {
			t.Errorf("%.60q refused: %v", ok, err)
		}
	}
	for src, want := range map[string]string{
		"{{.Title":                              "unclosed action",
		"{{range .Title}}x{{end}}":              "range is not allowed",
		"{{range 1000000000}}{{end}}":           "range is not allowed",
		"{{define \"x\"}}y{{end}}":              "define and block are not allowed",
		"{{block \"x\" .}}y{{end}}":             "define and block are not allowed",
		"{{template \"page\" .}}":               "template is not allowed",
		"{{printf \"%0999999999d\" 1}}":         "printf is not allowed",
		"{{call .Title}}":                       "call is not allowed",
		"{{html .Title}}":                       "html is not allowed",
		"{{.Secret}}":                           ".Secret is not a field",
		"{{if false}}{{.Org.APIKey}}{{end}}":    ".APIKey is not a field",
		"<a href=\"{{.Path}}":                   "", // an escaping problem, found by the trial run
		strings.Repeat("x", MaxTemplateBytes+1): "over the limit",
	} {
		err := CheckErrorPages(map[string]string{KindServer: src})
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "error_pages.5xx") {
			t.Errorf("%.60q: %v, want an error naming error_pages.5xx and %q", src, err, want)
		}
	}
}

func TestRender(t *testing.T) {
	if k, ok := KindOf(404, false); !ok || k != KindNotFound {
		t.Error(k)
	}
	if k, ok := KindOf(503, true); !ok || k != KindMaintenance {
		t.Error(k)
	}
	if k, ok := KindOf(502, false); !ok || k != KindServer {
		t.Error(k)
	}
	if _, ok := KindOf(401, false); ok {
		t.Error("401 has no page")
	}
	// The built-in page, for the service: clear, with the code and path,
	// and the path escaped.
	page := string(Render(nil, ErrorPage{Kind: KindNotFound, Status: 404, Code: "not_found", Message: "no such endpoint", Path: "/x<script>"}))
	for _, want := range []string{"Page not found", "no such endpoint", "not_found", "/x&lt;script&gt;", ServiceName, "--brand:#1f5fbf"} {
		if !strings.Contains(page, want) {
			t.Errorf("default page lacks %q:\n%s", want, page)
		}
	}
	org := &Org{ID: "acme", Name: "Acme Corp", Branding: Branding{DisplayName: "Acme", LogoURL: "https://acme.test/l.png", SupportURL: "https://acme.test/help",
		SupportMessage: "Call us", Colors: Palette{Primary: "#aa0000"}, CustomCSS: ".cn-name{letter-spacing:1px}",
		ErrorPages: map[string]string{KindMaintenance: "<h1>{{.Org.Name}} is away</h1><p>{{.Message}} {{.RetryAfter}}s</p>", KindServer: "{{.Nope}}"}}}
	page = string(Render(org, ErrorPage{Kind: KindTooMany, Status: 429, Code: "rate_limited", Message: "slow down", RetryAfter: 3}))
	for _, want := range []string{"Acme", "https://acme.test/l.png", "https://acme.test/help", "Call us", "--brand:#aa0000", "letter-spacing:1px", "try again in 3 seconds"} {
		if !strings.Contains(page, want) {
			t.Errorf("branded page lacks %q:\n%s", want, page)
		}
	}
	page = string(Render(org, ErrorPage{Kind: KindMaintenance, Status: 503, Message: "Upgrading", RetryAfter: 60}))
	if page != "<h1>Acme is away</h1><p>Upgrading 60s</p>" {
		t.Errorf("custom template: %s", page)
	}
	// A template that no longer passes falls back to the built-in page.
	if page := string(Render(org, ErrorPage{Kind: KindServer, Status: 500, Code: "internal"})); !strings.Contains(page, "Something went wrong") {
		t.Errorf("fallback: %s", page)
	}
}

func TestLimitedBuffer(t *testing.T) {
	var b limitedBuffer
	if _, err := b.Write(make([]byte, maxPageBytes+1)); !errors.Is(err, errPageTooLarge) {
		t.Fatal(err)
	}
}
