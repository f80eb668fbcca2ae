// Package brand is an organization's look on the pages the service shows
// for it (the dashboard, the hosted verification page, error pages): the
// branding it sets, checked here wherever it is set or previewed, its
// custom CSS held to an allow-list of CSS tokens, and its error page
// templates held to a small template language over a fixed data set.
// The coordinator stores it; ingest and the read-side pages render it.
package brand

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"
)

// Branding is what an organization sets about how its pages look.
type Branding struct {
	DisplayName string  `json:"display_name,omitempty"`
	LogoURL     string  `json:"logo_url,omitempty"`
	FaviconURL  string  `json:"favicon_url,omitempty"`
	Colors      Palette `json:"colors,omitzero"`
	// SupportEmail, SupportURL and SupportMessage tell the organization's
	// users where to get help: on its error pages, and (message and URL)
	// in the API's JSON errors to its callers.
	SupportEmail   string `json:"support_email,omitempty"`
	SupportURL     string `json:"support_url,omitempty"`
	SupportMessage string `json:"support_message,omitempty"`
	// CustomCSS is added after the pages' own styles (CheckCSS).
	CustomCSS string `json:"custom_css,omitempty"`
	// ErrorPages are templates by kind (Kinds), replacing the built-in
	// page for that kind.
	ErrorPages map[string]string `json:"error_pages,omitempty"`
}

// Palette holds the organization's colours, each #rrggbb; an empty one
// is the service's (DefaultPalette).
type Palette struct {
	Primary    string `json:"primary,omitempty"`
	Accent     string `json:"accent,omitempty"`
	Background string `json:"background,omitempty"`
	Text       string `json:"text,omitempty"`
}

// DefaultPalette is the service's own look.
var DefaultPalette = Palette{Primary: "#1f5fbf", Accent: "#0a7ea4", Background: "#ffffff", Text: "#1b1f24"}

// WithDefaults fills each colour that is empty (or not #rrggbb) from
// DefaultPalette.
func (p Palette) WithDefaults() Palette {
	or := func(v, d string) string {
		if !colorPat.MatchString(v) {
			return d
		}
		return v
	}
	return Palette{Primary: or(p.Primary, DefaultPalette.Primary), Accent: or(p.Accent, DefaultPalette.Accent),
		Background: or(p.Background, DefaultPalette.Background), Text: or(p.Text, DefaultPalette.Text)}
}

// Maintenance is an organization's maintenance window: while it is on,
// its requests answer 503 with Message and Retry-After.
type Maintenance struct {
	Message string `json:"message"`
	// Until is when it is expected to end (zero: not said; Retry-After is
	// then DefaultRetryAfter).
	Until time.Time `json:"until,omitzero"`
	Since time.Time `json:"since"`
}

// DefaultRetryAfter is the Retry-After of a maintenance with no end time,
// and of one whose end has passed but which is still on.
const DefaultRetryAfter = 5 * time.Minute

// RetryAfter is how long a client should wait at now, in whole seconds (at
// least 1).
func (m *Maintenance) RetryAfter(now time.Time) int {
	d := DefaultRetryAfter
	if !m.Until.IsZero() && m.Until.After(now) {
		d = m.Until.Sub(now)
	}
	return max(1, int((d+time.Second-1)/time.Second))
}

// Limits on what an organization sets.
const (
	MaxNameBytes        = 200
	MaxURLBytes         = 2048
	MaxMessageBytes     = 500
	MaxCSSBytes         = 32 << 10
	MaxTemplateBytes    = 16 << 10
	MaxMaintenanceBytes = 1000
)

var colorPat = regexp.MustCompile(`^#[0-9a-fA-F]{6}$`)

// ValidColor reports whether c is #rrggbb.
func ValidColor(c string) bool { return colorPat.MatchString(c) }

// Org is what the pages need of an organization.
type Org struct {
	ID          string
	Name        string // the organization's name, shown without a display name
	Branding    Branding
	Maintenance *Maintenance // nil: not in maintenance
}

// Title is the name its pages show.
func (o *Org) Title() string {
	if o.Branding.DisplayName != "" {
		return o.Branding.DisplayName
	}
	return o.Name
}

// Check reports every problem of b at once, each naming its field.
func Check(b *Branding) error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if len(b.DisplayName) > MaxNameBytes || !utf8.ValidString(b.DisplayName) {
		bad("display_name: at most %d bytes of UTF-8", MaxNameBytes)
	}
	for _, u := range []struct{ name, v string }{{"logo_url", b.LogoURL}, {"favicon_url", b.FaviconURL}, {"support_url", b.SupportURL}} {
		if u.v != "" && !webURL(u.v) {
			bad("%s %q: an http(s) URL up to %d bytes", u.name, u.v, MaxURLBytes)
		}
	}
	for _, c := range []struct{ name, v string }{{"primary", b.Colors.Primary}, {"accent", b.Colors.Accent},
		{"background", b.Colors.Background}, {"text", b.Colors.Text}} {
		if c.v != "" && !colorPat.MatchString(c.v) {
			bad("colors.%s %q: want #rrggbb", c.name, c.v)
		}
	}
	if len(b.SupportMessage) > MaxMessageBytes || !utf8.ValidString(b.SupportMessage) {
		bad("support_message: at most %d bytes of UTF-8", MaxMessageBytes)
	}
	if e := b.SupportEmail; e != "" && (len(e) > 254 || strings.Count(e, "@") != 1 || strings.ContainsAny(e, " <>\"\r\n") ||
		strings.HasPrefix(e, "@") || strings.HasSuffix(e, "@")) {
		bad("support_email %q: an email address", e)
	}
	if err := CheckCSS(b.CustomCSS); err != nil {
		bad("custom_css: %w", err)
	}
	if err := CheckErrorPages(b.ErrorPages); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// CheckMaintenance reports what is wrong with a maintenance window set at
// now.
func CheckMaintenance(m *Maintenance, now time.Time) error {
	var errs []error
	if strings.TrimSpace(m.Message) == "" || len(m.Message) > MaxMaintenanceBytes || !utf8.ValidString(m.Message) {
		errs = append(errs, fmt.Errorf("message: 1-%d bytes of UTF-8", MaxMaintenanceBytes))
	}
	if !m.Until.IsZero() && !m.Until.After(now) {
		errs = append(errs, errors.New("until: must be in the future"))
	}
	return errors.Join(errs...)
}

// webURL reports whether u is an absolute http(s) URL of bounded length.
func webURL(u string) bool {
	p, err := url.Parse(u)
	return err == nil && (p.Scheme == "https" || p.Scheme == "http") && p.Host != "" && len(u) <= MaxURLBytes
}

// StyleSheet is the CSS the organization's pages add after their own: its
// palette as the custom properties the pages use (--brand, --accent, --bg,
// --fg), then its custom CSS. Both are checked again here (whatever was
// stored), so the sheet holds no "<" and may sit inside a style element.
func StyleSheet(b *Branding) string {
	p := b.Colors.WithDefaults()
	css := fmt.Sprintf(":root{--brand:%s;--accent:%s;--bg:%s;--fg:%s}\n", p.Primary, p.Accent, p.Background, p.Text)
	if b.CustomCSS != "" && CheckCSS(b.CustomCSS) == nil {
		css += b.CustomCSS + "\n"
	}
	return css
}
