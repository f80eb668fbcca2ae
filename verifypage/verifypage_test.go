package verifypage

import (
	"crypto/sha256"
	"encoding/base64"
	"html"
	"io"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/certnode/certnode/internal/brand"
)

func get(t *testing.T, h *Handler, host, path string) (int, map[string]string, string) {
	t.Helper()
	w := httptest.NewRecorder()
	r := httptest.NewRequest("GET", path, nil)
	if host != "" {
		r.Host = host
	}
	h.ServeHTTP(w, r)
	hdr := map[string]string{}
	for k := range w.Header() {
		hdr[k] = w.Header().Get(k)
	}
	b, _ := io.ReadAll(w.Body)
	return w.Code, hdr, string(b)
}

var inlineStyle = regexp.MustCompile(`(?s)<style>(.*?)</style>`)

// The page is the service's on its own host, whatever is asked, and its
// organization's on a custom domain; its policy allows its own script and
// exactly its inline style; its assets are what it names.
func TestPage(t *testing.T) {
	acme := brand.Org{ID: "acme", Name: "Acme Corp", Branding: brand.Branding{DisplayName: "Acme", LogoURL: "https://acme.test/logo.png",
		FaviconURL: "https://acme.test/f.ico", Colors: brand.Palette{Primary: "#aa0000"}, CustomCSS: ".cn-name{letter-spacing:2px}", SupportURL: "https://acme.test/help"}}
	h, err := New(Config{
		OrgForHost: func(host string) (string, bool) { return "acme", host == "verify.acme.test" },
		Brand: func(org string) (brand.Org, bool) {
			return acme, org == "acme"
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	check := func(host, path string, branded bool) {
		t.Helper()
		code, hdr, page := get(t, h, host, path)
		csp := hdr["Content-Security-Policy"]
		if code != 200 || !strings.HasPrefix(hdr["Content-Type"], "text/html") || !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "connect-src 'self'") {
			t.Fatalf("%s%s: %d %v", host, path, code, hdr)
		}
		m := inlineStyle.FindStringSubmatch(page)
		sum := sha256.Sum256([]byte(m[1]))
		if !strings.Contains(csp, "'sha256-"+base64.StdEncoding.EncodeToString(sum[:])+"'") {
			t.Errorf("%s: the policy does not allow the inline style %q: %s", host, m[1], csp)
		}
		for _, s := range []string{"Acme", "https://acme.test/logo.png", "--brand:#aa0000", "letter-spacing:2px", `data-org="acme"`, "https://acme.test/help"} {
			if strings.Contains(page, s) != branded {
				t.Errorf("%s%s: has %q is %v, want %v", host, path, s, !branded, branded)
			}
		}
		if !strings.Contains(page, "never uploaded") {
			t.Errorf("the page does not say the receipt stays in the browser")
		}
	}
	check("verify.acme.test", "/verify", true)
	check("verify.acme.test:8443", "/verify/", true)
	check("certnode.example", "/verify?org=acme", false)

	_, _, page := get(t, h, "", "/verify")
	refs := regexp.MustCompile(`(?:src|href)="(/verify/assets/[^"?]+)\?v=[^"]+" integrity="(sha256-[^"]+)"`).FindAllStringSubmatch(page, -1)
	if len(refs) != 2 {
		t.Fatalf("the page names %d assets, want 2", len(refs))
	}
	for _, r := range refs {
		code, hdr, body := get(t, h, "", r[1])
		sum := sha256.Sum256([]byte(body))
		if code != 200 || "sha256-"+base64.StdEncoding.EncodeToString(sum[:]) != html.UnescapeString(r[2]) || !strings.Contains(hdr["Cache-Control"], "immutable") {
			t.Errorf("%s: %d, not what the page names", r[1], code)
		}
	}
	for _, p := range []string{"/verify/assets/index.html", "/verify/assets/nope.js", "/verify/other"} {
		if code, _, _ := get(t, h, "", p); code != 404 {
			t.Errorf("%s: %d, want 404", p, code)
		}
	}
	if p := string(h.Preview(&brand.Org{ID: "x", Name: "X", Branding: brand.Branding{DisplayName: "Proposed", Colors: brand.Palette{Accent: "#00ff00"}}})); !strings.Contains(p, "Proposed") || !strings.Contains(p, "--accent:#00ff00") {
		t.Fatalf("preview: %s", p)
	}
}
