package console

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"html"
	"io"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

// The chart library is the release pinned, byte for byte (npm uplot@1.6.32).
func TestVendoredChartLibraryIsPinned(t *testing.T) {
	for name, want := range map[string]string{
		UPlotJS:  "19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f",
		UPlotCSS: "df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04",
	} {
		b, err := assets.ReadFile("assets/" + name)
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != want {
			t.Errorf("%s: sha256 %x, want %s", name, sum, want)
		}
	}
}

func get(t *testing.T, h *Handler, method, path string) (int, map[string]string, string) {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(method, path, nil))
	hdr := map[string]string{}
	for k := range w.Header() {
		hdr[k] = w.Header().Get(k)
	}
	b, _ := io.ReadAll(w.Body)
	return w.Code, hdr, string(b)
}

// The page loads only its own scripts and styles, each named with the
// integrity of the bytes served for it.
func TestPage(t *testing.T) {
	h, err := New()
	if err != nil {
		t.Fatal(err)
	}
	code, hdr, page := get(t, h, "GET", Prefix)
	if code != 200 || !strings.HasPrefix(hdr["Content-Type"], "text/html") || !strings.Contains(hdr["Content-Security-Policy"], "script-src 'self'") ||
		hdr["X-Frame-Options"] != "DENY" || hdr["Cache-Control"] != "no-store" {
		t.Fatalf("page: %d %v", code, hdr)
	}
	refs := regexp.MustCompile(`(?:src|href)="(/dashboard/assets/[^"?]+)\?v=[^"]+" integrity="(sha256-[^"]+)"`).FindAllStringSubmatch(page, -1)
	if len(refs) != 5 {
		t.Fatalf("the page names %d assets, want 5: %s", len(refs), page)
	}
	for _, r := range refs {
		code, hdr, body := get(t, h, "GET", r[1])
		sum := sha256.Sum256([]byte(body))
		if code != 200 || "sha256-"+base64.StdEncoding.EncodeToString(sum[:]) != html.UnescapeString(r[2]) || !strings.Contains(hdr["Cache-Control"], "immutable") {
			t.Errorf("%s: %d, integrity of what is served differs or not cached: %v", r[1], code, hdr)
		}
		if ct := hdr["Content-Type"]; !(strings.HasSuffix(r[1], ".js") && strings.Contains(ct, "javascript")) && !(strings.HasSuffix(r[1], ".css") && strings.HasPrefix(ct, "text/css")) {
			t.Errorf("%s: content type %q", r[1], ct)
		}
	}
	// The branding preview's frame: its own script, inline styles, framed
	// by the dashboard only.
	code, hdr, frame := get(t, h, "GET", Prefix+"/preview")
	if csp := hdr["Content-Security-Policy"]; code != 200 || !strings.Contains(csp, "style-src 'self' 'unsafe-inline'") || !strings.Contains(csp, "frame-ancestors 'self'") ||
		!strings.Contains(frame, Prefix+"/assets/preview.js?v=") {
		t.Errorf("preview frame: %d %v %s", code, hdr, frame)
	}
	for _, p := range []string{Prefix + "/assets/index.html", Prefix + "/assets/nope.js", Prefix + "/other", Prefix + "/assets/../console.go"} {
		if code, _, _ := get(t, h, "GET", p); code != 404 {
			t.Errorf("%s: %d, want 404", p, code)
		}
	}
	if code, hdr, _ := get(t, h, "POST", Prefix); code != 405 || hdr["Allow"] != "GET, HEAD" {
		t.Errorf("POST: %d %v", code, hdr)
	}
}
