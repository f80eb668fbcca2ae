// Package mail renders CertNode's branded email and sends it: templates
// (HTML and plain text, one pair per kind of message) filled with an
// organization's branding, messages built as multipart/alternative,
// DKIM-signed (RFC 6376) with a key that may live in an HSM, and sent over
// SMTP with STARTTLS and authentication. The coordinator renders previews
// with it; the mailer role (certnode mailer) sends with it.
package mail

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"net/url"
	"regexp"
	"slices"
	"strings"
	texttemplate "text/template"
	"time"
)

// Templates, one per kind of message.
const (
	TemplateInvitation       = "invitation"
	TemplatePasswordReset    = "password_reset"
	TemplateQuotaWarning     = "quota_warning"
	TemplateSecurityAlert    = "security_alert"
	TemplateEndpointDisabled = "endpoint_disabled"
	TemplateReportReady      = "report_ready"
)

// TemplateNames lists every template.
var TemplateNames = []string{TemplateInvitation, TemplatePasswordReset, TemplateQuotaWarning, TemplateSecurityAlert,
	TemplateEndpointDisabled, TemplateReportReady}

// ErrUnknownTemplate names a template that does not exist.
var ErrUnknownTemplate = errors.New("unknown email template")

// Branding is how an organization looks in its email. Empty fields take
// the service's defaults.
type Branding struct {
	Name         string `json:"name,omitempty"` // display name
	LogoURL      string `json:"logo_url,omitempty"`
	Color        string `json:"color,omitempty"` // #rrggbb
	SupportEmail string `json:"support_email,omitempty"`
	SupportURL   string `json:"support_url,omitempty"` // an http(s) help page
}

// Defaults of Branding.
const (
	DefaultBrandName  = "CertNode"
	DefaultBrandColor = "#1f4fd1"
)

var colorPat = regexp.MustCompile(`^#[0-9a-fA-F]{6}$`)

// normalized is b with defaults filled and anything unusable dropped, so
// a template never has to guard a field: a colour that is not #rrggbb and
// a logo that is not an absolute http(s) URL are replaced or left out.
func (b Branding) normalized() Branding {
	b.Name = strings.TrimSpace(b.Name)
	if b.Name == "" {
		b.Name = DefaultBrandName
	}
	if !colorPat.MatchString(b.Color) {
		b.Color = DefaultBrandColor
	}
	if u, err := url.Parse(b.LogoURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		b.LogoURL = ""
	}
	if u, err := url.Parse(b.SupportURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		b.SupportURL = ""
	}
	return b
}

// Data is what a template is filled with.
type Data struct {
	Brand     Branding
	Org       string            // the organization's id ("" for the service's own mail)
	Recipient string            // the address it goes to
	Link      string            // the absolute link the message is about
	Fields    map[string]string // the event's fields (Fields of an EventRecord's data)
	ExpiresAt time.Time         // when Link stops working, if it does
}

// Rendered is a message's subject and its two bodies.
type Rendered struct {
	Subject string `json:"subject"`
	HTML    string `json:"html"`
	Text    string `json:"text"`
}

//go:embed templates
var files embed.FS

// set is the parsed templates: per name, the text template (subject and
// text body) and the HTML template (layout and body).
type set struct {
	text map[string]*texttemplate.Template
	html map[string]*htmltemplate.Template
}

var parsed = mustParse()

var funcs = map[string]any{
	"field": func(d Data, k string) string { return d.Fields[k] },
	"date":  func(t time.Time) string { return t.UTC().Format("2 January 2006 15:04 UTC") },
	"btn": func(d Data, label string) any {
		return struct {
			Data
			Label string
		}{d, label}
	},
}

func mustParse() set {
	s := set{text: map[string]*texttemplate.Template{}, html: map[string]*htmltemplate.Template{}}
	for _, name := range TemplateNames {
		s.text[name] = texttemplate.Must(texttemplate.New(name).Funcs(funcs).Option("missingkey=zero").
			ParseFS(files, "templates/layout.txt", "templates/"+name+".txt"))
		s.html[name] = htmltemplate.Must(htmltemplate.New(name).Funcs(funcs).Option("missingkey=zero").
			ParseFS(files, "templates/layout.html", "templates/"+name+".html"))
	}
	return s
}

// Render fills template name with d. Subjects are one line: a field
// holding a line break cannot add a header.
func Render(name string, d Data) (Rendered, error) {
	if !slices.Contains(TemplateNames, name) {
		return Rendered{}, fmt.Errorf("%w %q (want one of %v)", ErrUnknownTemplate, name, TemplateNames)
	}
	d.Brand = d.Brand.normalized()
	var subj, text, html bytes.Buffer
	t := parsed.text[name]
	if err := t.ExecuteTemplate(&subj, "subject", d); err != nil {
		return Rendered{}, fmt.Errorf("template %s subject: %w", name, err)
	}
	if err := t.ExecuteTemplate(&text, "layout", d); err != nil {
		return Rendered{}, fmt.Errorf("template %s text: %w", name, err)
	}
	if err := parsed.html[name].ExecuteTemplate(&html, "layout", d); err != nil {
		return Rendered{}, fmt.Errorf("template %s html: %w", name, err)
	}
	return Rendered{Subject: oneLine(subj.String()), HTML: html.String(), Text: text.String()}, nil
}

// oneLine folds every run of white space (line breaks included) into one
// space and bounds the length.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 200 {
		s = strings.ToValidUTF8(s[:200], "")
	}
	return s
}

// SampleData is what a preview of template name shows: made-up fields and
// a link with a placeholder token.
func SampleData(name string, links Links, brand Branding, org string) Data {
	d := Data{Brand: brand, Org: org, Recipient: "jane.doe@example.com", ExpiresAt: time.Date(2030, 1, 2, 15, 4, 0, 0, time.UTC)}
	switch name {
	case TemplateInvitation:
		d.Fields = map[string]string{"role": "developer", "invited_by": "alex@example.com"}
	case TemplateQuotaWarning:
		d.Fields = map[string]string{"period": "2030-01", "used": "80000", "limit": "100000", "percent": "80"}
	case TemplateSecurityAlert:
		d.Fields = map[string]string{"detector": "credential_stuffing", "summary": "1,204 failed sign-ins from 203.0.113.7 in 5 minutes",
			"response": "the address was blocked for an hour", "subject": "203.0.113.7"}
	case TemplateEndpointDisabled:
		d.Fields = map[string]string{"endpoint_id": "ep_sample", "url": "https://hooks.example.com/...", "reason": "the endpoint answered 410 Gone"}
	case TemplateReportReady:
		d.Fields = map[string]string{"report_id": "rpt_sample", "name": "Failures by reason", "schedule": "daily", "period": "2030-01-01"}
	}
	d.Link = links.For(name, "cn_sample_token", d.Fields)
	return d
}
