package coordinator

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/certnode/certnode/internal/brand"
)

// Branding is the organization's look as the pages use it.
func (s *OrgSettings) Branding() brand.Branding {
	c := s.Colors
	if c.Primary == "" {
		c.Primary = s.BrandColor
	}
	return brand.Branding{DisplayName: s.DisplayName, LogoURL: s.LogoURL, FaviconURL: s.FaviconURL, Colors: c,
		SupportEmail: s.SupportEmail, SupportURL: s.SupportURL, SupportMessage: s.SupportMessage, CustomCSS: s.CustomCSS, ErrorPages: s.ErrorPages}
}

// setBranding replaces the branding fields, keeping brand_color and
// colors.primary one colour.
func (s *OrgSettings) setBranding(b brand.Branding) {
	s.DisplayName, s.LogoURL, s.FaviconURL, s.Colors, s.BrandColor = b.DisplayName, b.LogoURL, b.FaviconURL, b.Colors, b.Colors.Primary
	s.SupportEmail, s.SupportURL, s.SupportMessage, s.CustomCSS, s.ErrorPages = b.SupportEmail, b.SupportURL, b.SupportMessage, b.CustomCSS, b.ErrorPages
}

// checkBranding holds the branding fields to brand.Check.
func (s *OrgSettings) checkBranding() error {
	b := s.Branding()
	var problems []string
	if s.BrandColor != "" && s.Colors.Primary != "" && !strings.EqualFold(s.BrandColor, s.Colors.Primary) {
		problems = append(problems, "brand_color and colors.primary differ (they are one colour: set either)")
	}
	if s.Colors.Primary == "" && s.BrandColor != "" && !brand.ValidColor(s.BrandColor) {
		problems = append(problems, fmt.Sprintf("brand_color %q: want #rrggbb", s.BrandColor))
		b.Colors.Primary = ""
	}
	if err := brand.Check(&b); err != nil {
		problems = append(problems, err.Error())
	}
	if len(problems) > 0 {
		return invalid("%s", strings.Join(problems, "\n"))
	}
	return nil
}

// SetBranding replaces an organization's branding and nothing else of
// its settings, so saving the branding page never undoes another change.
type SetBranding struct {
	Meta     `json:"meta,omitzero"`
	Org      string         `json:"org"`
	Branding brand.Branding `json:"branding"`
	At       time.Time      `json:"at"`
}

func (*SetBranding) cmdType() cmdType { return cmdSetBranding }

func (c *SetBranding) patched(s *State) (Org, error) {
	old, ok := s.Orgs[c.Org]
	if !ok {
		return Org{}, fmt.Errorf("%w: organization %q", ErrNotFound, c.Org)
	}
	if c.At.IsZero() {
		return Org{}, invalid("at is required")
	}
	o := *old
	o.Settings.setBranding(c.Branding)
	o.UpdatedAt = c.At
	return o, o.check()
}
func (c *SetBranding) validate(s *State) error { _, err := c.patched(s); return err }
func (c *SetBranding) apply(s *State) {
	o, _ := c.patched(s)
	s.putOrg(o)
}
func (c *SetBranding) audit() (string, string, string) { return "org.branding.update", c.Org, c.Org }

// SetMaintenance turns an organization's maintenance mode on (with its
// message and expected end) or off (nil).
type SetMaintenance struct {
	Meta        `json:"meta,omitzero"`
	Org         string             `json:"org"`
	Maintenance *brand.Maintenance `json:"maintenance,omitempty"`
	At          time.Time          `json:"at"`
}

func (*SetMaintenance) cmdType() cmdType { return cmdSetMaintenance }
func (c *SetMaintenance) validate(s *State) error {
	if _, ok := s.Orgs[c.Org]; !ok {
		return fmt.Errorf("%w: organization %q", ErrNotFound, c.Org)
	}
	if c.At.IsZero() {
		return invalid("at is required")
	}
	if m := c.Maintenance; m != nil {
		if err := brand.CheckMaintenance(m, c.At); err != nil {
			return invalid("%v", err)
		}
		if !m.Since.Equal(c.At) {
			return invalid("since must be at")
		}
	}
	return nil
}
func (c *SetMaintenance) apply(s *State) {
	o := *s.Orgs[c.Org] // copy: readers may hold the old value
	o.Maintenance, o.UpdatedAt = c.Maintenance, c.At
	s.putOrg(o)
}
func (c *SetMaintenance) audit() (string, string, string) {
	if c.Maintenance == nil {
		return "org.maintenance.end", c.Org, c.Org
	}
	return "org.maintenance.start", c.Org, c.Org
}

func (s *Server) getBranding(w http.ResponseWriter, _ *http.Request, sc scope, _ []byte) {
	o, _ := s.org(sc.org)
	writeJSON(w, http.StatusOK, o.Settings.Branding())
}

// putBranding replaces the organization's branding; a refused custom CSS
// or template is a 400 naming what was refused.
func (s *Server) putBranding(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	var b brand.Branding
	if err := decodeBody(body, &b); err != nil {
		s.fail(w, err)
		return
	}
	c := &SetBranding{Org: sc.org, Branding: b, At: time.Now().UTC()}
	var o Org
	var err error
	s.node.fsm.View(func(st *State) { o, err = c.patched(st) })
	if err != nil {
		s.fail(w, err)
		return
	}
	s.write(w, r, body, c, http.StatusOK, o.Settings.Branding())
}

// putMaintenance turns maintenance mode on, or changes its message or
// end.
func (s *Server) putMaintenance(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	var b struct {
		Message string    `json:"message"`
		Until   time.Time `json:"until,omitzero"`
	}
	if err := decodeBody(body, &b); err != nil {
		s.fail(w, err)
		return
	}
	now := time.Now().UTC()
	m := &brand.Maintenance{Message: b.Message, Until: b.Until, Since: now}
	c := &SetMaintenance{Org: sc.org, Maintenance: m, At: now}
	var err error
	s.node.fsm.View(func(st *State) { err = c.validate(st) })
	if err != nil {
		s.fail(w, err)
		return
	}
	s.write(w, r, body, c, http.StatusOK, m)
}

// endMaintenance turns maintenance mode off (it may be off already).
func (s *Server) endMaintenance(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	s.write(w, r, body, &SetMaintenance{Org: sc.org, At: time.Now().UTC()}, http.StatusNoContent, nil)
}

// Brand is what an active organization's pages need: its name, branding
// and maintenance (ingest's error pages and the hosted pages).
func (r *Replica) Brand(org string) (brand.Org, bool) {
	st := r.current()
	if st == nil || st.orgs[org] == nil {
		return brand.Org{}, false
	}
	return st.orgs[org].brand, true
}
