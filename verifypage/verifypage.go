// Package verifypage serves the hosted verification page: anyone drops or
// pastes a receipt and sees whether it is valid, which key and which
// organization signed it, and its transparency log inclusion proof. The
// page checks everything in the browser (WebCrypto against the published
// JWKS, RFC 8785 in its script): the receipt never leaves it. On an
// organization's custom domain the page wears that organization's
// branding; on the service's own host it is the service's, whatever the
// request says, so nobody can dress the service's origin in another
// organization's (or a made-up one's) look. cmd mounts it on ingest at
// Prefix.
package verifypage

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"errors"
	"html/template"
	"net/http"
	"strings"

	"github.com/certnode/certnode/internal/brand"
	"github.com/certnode/certnode/internal/hostname"
	"github.com/certnode/certnode/internal/webassets"
)

// Prefix is where the page is served.
const Prefix = "/verify"

//go:embed assets
var assets embed.FS

// Config is what the page needs to know of organizations.
type Config struct {
	// OrgForHost names the organization whose custom domain a Host is
	// (nil: no custom domains; every request gets the service's page).
	OrgForHost func(host string) (org string, ok bool)
	// Brand gives an organization's branding (nil: none).
	Brand func(org string) (brand.Org, bool)
}

// Handler serves the page and its assets.
type Handler struct {
	cfg    Config
	tmpl   *template.Template
	assets *webassets.Set
}

// New builds the handler.
func New(cfg Config) (*Handler, error) {
	set, err := webassets.Load(assets, "assets", Prefix+"/assets/")
	if err != nil {
		return nil, err
	}
	h := &Handler{cfg: cfg, assets: set}
	if h.tmpl, err = template.ParseFS(assets, "assets/index.html"); err != nil {
		return nil, err
	}
	if _, err := h.render(nil); err != nil {
		return nil, errors.New("verifypage: " + err.Error())
	}
	return h, nil
}

// page is what index.html shows.
type page struct {
	Title, OrgID, LogoURL, FaviconURL, SupportURL, SupportEmail string
	Branded                                                     bool
	Style                                                       template.CSS
	JS, CSS                                                     webassets.Ref
}

// render draws the page for o (nil: the service's), and returns it with
// the hash of its inline style, for the page's policy.
func (h *Handler) render(o *brand.Org) ([]byte, error) {
	p := page{Title: brand.ServiceName, JS: h.assets.Ref("verify.js"), CSS: h.assets.Ref("verify.css")}
	var b brand.Branding
	if o != nil {
		b = o.Branding
		p.Title, p.OrgID, p.LogoURL, p.FaviconURL, p.SupportURL, p.SupportEmail, p.Branded = o.Title(), o.ID, b.LogoURL, b.FaviconURL, b.SupportURL, b.SupportEmail, true
	}
	p.Style = template.CSS(brand.StyleSheet(&b))
	var out bytes.Buffer
	err := h.tmpl.Execute(&out, p)
	return out.Bytes(), err
}

// Preview is the page as o's would be, for POST /v1/branding/preview.
func (h *Handler) Preview(o *brand.Org) []byte {
	b, err := h.render(o)
	if err != nil { // the template is checked by New
		panic(err)
	}
	return b
}

// hostOrg is the organization of the request's custom domain, if any.
func (h *Handler) hostOrg(r *http.Request) *brand.Org {
	if h.cfg.OrgForHost == nil || h.cfg.Brand == nil {
		return nil
	}
	id, ok := h.cfg.OrgForHost(hostname.Of(r.Host))
	if !ok {
		return nil
	}
	o, ok := h.cfg.Brand(id)
	if !ok {
		return nil
	}
	return &o
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != "GET" && r.Method != "HEAD" {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	hdr := w.Header()
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "no-referrer")
	p := r.URL.Path
	switch {
	case p == Prefix || p == Prefix+"/":
		o := h.hostOrg(r)
		b, err := h.render(o)
		if err != nil {
			http.Error(w, "the page could not be drawn", http.StatusInternalServerError)
			return
		}
		var br brand.Branding
		if o != nil {
			br = o.Branding
		}
		sum := sha256.Sum256([]byte(brand.StyleSheet(&br)))
		// Its own script and styles only, its organization's style by
		// hash, images from anywhere over https (a logo), requests to this
		// site only (the JWKS, the log's proof and key).
		hdr.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self' 'sha256-"+
			base64.StdEncoding.EncodeToString(sum[:])+"'; img-src 'self' https: data:; connect-src 'self'; "+
			"frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		hdr.Set("X-Frame-Options", "DENY")
		hdr.Set("Content-Type", "text/html; charset=utf-8")
		hdr.Set("Cache-Control", "no-store")
		w.Write(b)
	case strings.HasPrefix(p, Prefix+"/assets/"):
		h.assets.Serve(w, r)
	default:
		http.NotFound(w, r)
	}
}
