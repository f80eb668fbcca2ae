// Package console serves the dashboard: a page and its scripts, embedded
// in the binary (customers run it behind firewalls: no CDN), which sign
// in with the coordinator's users and read everything through the public
// API with the session, acting in the organization the user picks. The
// page holds no data of its own, so every organization's wall is the
// API's. cmd mounts it on ingest at Prefix.
package console

import (
	"bytes"
	"embed"
	"html/template"
	"net/http"
	"strings"

	"github.com/certnode/certnode/internal/webassets"
)

// Prefix is where the dashboard is served.
const Prefix = "/dashboard"

//go:embed assets
var assets embed.FS

// csp allows the page only its own scripts and styles; images may also be
// an organization's logo (https) or inline.
const csp = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: https:; connect-src 'self'; " +
	"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

// Handler serves the dashboard's page and assets.
type Handler struct {
	page []byte
	// preview is the branding preview's frame (assets/preview.js).
	preview []byte
	assets  *webassets.Set
}

// New builds the handler: the page names each script and style with its
// SHA-256 (subresource integrity) and a version for caches.
func New() (*Handler, error) {
	set, err := webassets.Load(assets, "assets", Prefix+"/assets/")
	if err != nil {
		return nil, err
	}
	h := &Handler{assets: set}
	tmpl, err := template.ParseFS(assets, "assets/index.html")
	if err != nil {
		return nil, err
	}
	asset := set.Ref
	var page bytes.Buffer
	if err := tmpl.Execute(&page, map[string]any{
		"UPlotJS": asset(UPlotJS), "UPlotCSS": asset(UPlotCSS), "AppJS": asset("app.js"), "AppCSS": asset("app.css"), "BrandingJS": asset("branding.js"),
	}); err != nil {
		return nil, err
	}
	h.page = page.Bytes()
	// No integrity on the frame's script: the sandboxed frame is an origin
	// of its own, so its request for the script is cross-origin, where
	// subresource integrity needs CORS.
	h.preview = []byte(`<!doctype html><meta charset="utf-8"><title>Preview</title><script src="` + asset("preview.js").URL + `"></script>`)
	return h, nil
}

// The chart library, pinned (its checksums are tested).
const (
	UPlotJS  = "vendor/uplot-1.6.32/uPlot.iife.min.js"
	UPlotCSS = "vendor/uplot-1.6.32/uPlot.min.css"
)

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != "GET" && r.Method != "HEAD" {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	hdr := w.Header()
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "same-origin")
	p := r.URL.Path
	switch {
	case p == Prefix || p == Prefix+"/":
		hdr.Set("Content-Security-Policy", csp)
		hdr.Set("X-Frame-Options", "DENY")
		hdr.Set("Content-Type", "text/html; charset=utf-8")
		hdr.Set("Cache-Control", "no-store")
		w.Write(h.page)
	case p == Prefix+"/preview":
		// The frame shows a page drawn with proposed branding: its inline
		// styles and https images, and its own script (the frame is
		// sandboxed by the dashboard, an origin of its own).
		hdr.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' https: data:; "+
			"frame-ancestors 'self'; base-uri 'none'; form-action 'none'")
		hdr.Set("Content-Type", "text/html; charset=utf-8")
		hdr.Set("Cache-Control", "no-store")
		w.Write(h.preview)
	case strings.HasPrefix(p, Prefix+"/assets/"):
		h.assets.Serve(w, r)
	default:
		http.NotFound(w, r)
	}
}
