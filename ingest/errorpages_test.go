package ingest

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/certnode/certnode/internal/brand"
)

type fakeBrands map[string]brand.Org

func (f fakeBrands) Brand(org string) (brand.Org, bool) { o, ok := f[org]; return o, ok }

func TestWantsHTML(t *testing.T) {
	for _, c := range []struct {
		method, accept string
		want           bool
	}{
		{"GET", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8", true}, // a browser's navigation
		{"HEAD", "text/html", true},
		{"GET", "*/*", false}, // fetch, curl
		{"GET", "", false},
		{"GET", "application/json", false},
		{"GET", "application/json, text/html;q=0.5", false},
		{"GET", "text/html;q=0.9, application/json;q=0.8", true},
		{"GET", "text/html;q=0", false},
		{"POST", "text/html", false}, // a form post is not a page a browser reaches by navigation here
	} {
		var ctx fasthttp.RequestCtx
		ctx.Request.Header.SetMethod(c.method)
		ctx.Request.Header.Set("Accept", c.accept)
		if got := wantsHTML(&ctx); got != c.want {
			t.Errorf("%s Accept %q: %v, want %v", c.method, c.accept, got, c.want)
		}
	}
}

const browserAccept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"

// request sends one request with a Host of the test's choosing.
func (ts *testServer) request(method, host, path, body string, headers ...string) answer {
	ts.t.Helper()
	req, _ := http.NewRequest(method, ts.base+path, strings.NewReader(body))
	if host != "" {
		req.Host = host
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := testClient.Do(req)
	if err != nil {
		ts.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, string(b)}
}

// Error pages, support details and maintenance mode, by organization: a
// browser gets a page (the organization's own template, or the built-in
// one), a script JSON with the organization's support details; an
// organization in maintenance answers 503 with its message and
// Retry-After on its API keys and its domain, and nobody else's requests
// are touched; what turns it off stays reachable.
func TestErrorPagesAndMaintenance(t *testing.T) {
	until := time.Now().Add(10 * time.Minute)
	brands := fakeBrands{
		"a": {ID: "a", Name: "Org A", Branding: brand.Branding{DisplayName: "Acme", SupportMessage: "Write to us", SupportURL: "https://acme.test/help",
			Colors:     brand.Palette{Primary: "#aa0000"},
			ErrorPages: map[string]string{brand.KindNotFound: `<h1 class="acme404">{{.Org.Name}}: {{.Title}}</h1>`}}},
		"b": {ID: "b", Name: "Org B", Maintenance: &brand.Maintenance{Message: "B is upgrading", Until: until}},
	}
	hosts := map[string]string{"verify.acme.test": "a", "api.globex.test": "b"}
	ts := startServer(t, func(_ *Config, d *Deps) {
		d.Brands = brands
		d.Domains = fakeDomains(hosts)
	})

	// The service's own host: the built-in page for a browser, JSON else.
	a := ts.request("GET", "", "/nothing", "", "Accept", browserAccept)
	if a.status != 404 || !strings.HasPrefix(a.header.Get("Content-Type"), "text/html") || !strings.Contains(a.body, "Page not found") ||
		!strings.Contains(a.body, brand.ServiceName) || !strings.Contains(a.header.Get("Content-Security-Policy"), "sandbox") {
		t.Fatalf("a browser's 404: %d %v %s", a.status, a.header, a.body)
	}
	ts.request("GET", "", "/nothing", "", "Accept", "*/*").expect(t, "a script's 404", 404, "not_found")

	// An organization's caller: its support details in JSON errors, its
	// page for a browser on its domain.
	a = ts.do("GET", "/v1/jobs/job_nothing", keyA, "").expect(t, "a's key, an unknown job", 404, "not_found")
	if !strings.Contains(a.body, `"support":{"message":"Write to us","url":"https://acme.test/help"}`) {
		t.Fatalf("no support details: %s", a.body)
	}
	a = ts.request("GET", "verify.acme.test", "/nothing", "", "Accept", browserAccept)
	if a.status != 404 || !strings.Contains(a.body, `<h1 class="acme404">Acme: Page not found</h1>`) {
		t.Fatalf("a's 404 page on its domain: %d %s", a.status, a.body)
	}
	a = ts.request("GET", "verify.acme.test:443", "/nothing", "", "Accept", "application/json")
	if a.status != 404 || !strings.Contains(a.body, `"support"`) {
		t.Fatalf("a's JSON 404 on its domain: %d %s", a.status, a.body)
	}

	// b is in maintenance: its key and its domain answer 503, JSON or a
	// page; a is untouched.
	a = ts.do("GET", "/v1/webhooks/deliveries", keyB, "").expect(t, "b's key in maintenance", 503, "maintenance")
	if ra := a.header.Get("Retry-After"); ra != "600" && ra != "599" || !strings.Contains(a.body, "B is upgrading") || strings.Contains(a.body, "support") {
		t.Fatalf("maintenance: Retry-After %q, %s", a.header.Get("Retry-After"), a.body)
	}
	ts.do("GET", "/v1/webhooks/deliveries", keyA, "").expect(t, "a's key while b is in maintenance", 200, "")
	a = ts.request("GET", "api.globex.test", "/v1/log/checkpoint", "", "Accept", browserAccept)
	if a.status != 503 || !strings.Contains(a.body, "Down for maintenance") || !strings.Contains(a.body, "B is upgrading") || a.header.Get("Retry-After") == "" {
		t.Fatalf("b's domain in maintenance: %d %v %s", a.status, a.header, a.body)
	}
	for _, p := range []string{"/healthz", "/.well-known/jwks.json", "/v1/me"} {
		if a := ts.request("GET", "api.globex.test", p, ""); a.status == 503 && strings.Contains(a.body, "maintenance") {
			t.Errorf("%s on b's domain in maintenance: %d %s", p, a.status, a.body)
		}
	}
}

// A preview draws a page with proposed branding, checked as saving it
// would be, and stores nothing; the style sheet is the caller's
// organization's.
func TestBrandingPreviewAndStyle(t *testing.T) {
	brands := fakeBrands{"a": {ID: "a", Name: "Org A", Branding: brand.Branding{Colors: brand.Palette{Primary: "#aa0000"}, CustomCSS: ".x{color:red}"}}}
	ts := startServer(t, func(_ *Config, d *Deps) { d.Brands = brands })
	a := ts.do("POST", "/v1/branding/preview", keyAdmin, `{"page":"maintenance","message":"Back at noon","branding":{"display_name":"Proposed","colors":{"primary":"#00aa00"}}}`)
	if a.status != 200 || !strings.Contains(a.body, "Proposed") || !strings.Contains(a.body, "Back at noon") || !strings.Contains(a.body, "--brand:#00aa00") ||
		!strings.Contains(a.header.Get("Content-Security-Policy"), "frame-ancestors 'self'") {
		t.Fatalf("preview: %d %v %s", a.status, a.header, a.body)
	}
	a = ts.do("POST", "/v1/branding/preview", keyAdmin, `{"page":"404","branding":{"custom_css":"a{background:url(https://evil.test/)}"}}`).expect(t, "CSS that loads a URL", 400, "invalid_branding")
	if !strings.Contains(a.body, "url() is not allowed") {
		t.Fatalf("the refusal does not say what: %s", a.body)
	}
	ts.do("POST", "/v1/branding/preview", keyAdmin, `{"page":"404","branding":{"error_pages":{"404":"{{range 9}}{{end}}"}}}`).expect(t, "a template with range", 400, "invalid_branding")
	ts.do("POST", "/v1/branding/preview", keyAdmin, `{"page":"teapot","branding":{}}`).expect(t, "a page that is none", 400, "invalid_page")
	ts.do("POST", "/v1/branding/preview", keyAdmin, `{"page":"verify","branding":{}}`).expect(t, "no verification page here", 503, "verify_page_unavailable")
	ts.do("POST", "/v1/branding/preview", keyRead, `{"branding":{}}`).expect(t, "a read-only key", 403, "forbidden_scope")
	if o := brands["a"]; o.Branding.Colors.Primary != "#aa0000" {
		t.Fatal("the preview changed the branding")
	}
	a = ts.do("GET", "/v1/branding/style.css", keyRead, "")
	if a.status != 200 || a.header.Get("Content-Type") != "text/css; charset=utf-8" || !strings.Contains(a.body, "--brand:#aa0000") || !strings.Contains(a.body, ".x{color:red}") {
		t.Fatalf("style: %d %v %s", a.status, a.header, a.body)
	}
	if a := ts.do("GET", "/v1/branding/style.css", keyB, ""); a.status != 200 || strings.Contains(a.body, "aa0000") {
		t.Fatalf("b's style: %d %s", a.status, a.body)
	}
	ts.do("GET", "/v1/log/proof/"+strings.Repeat("A", 43), "", "").expect(t, "no log", 503, "log_unavailable")
}
