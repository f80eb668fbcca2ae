package mail

import (
	"errors"
	"net/url"
	"strings"
)

// Links makes the absolute links messages carry, under the service's
// public base URL (--public-url): the dashboard's pages. A token goes in
// the fragment, which browsers never send to a server, so it stays out
// of access logs and Referer headers.
type Links struct {
	Base string // e.g. https://certnode.example.com
}

// CheckBaseURL checks a public base URL: absolute http(s), no query or
// fragment.
func CheckBaseURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return errors.New("the public URL must be an absolute http(s) URL without query, fragment or credentials, e.g. https://certnode.example.com")
	}
	return nil
}

// For is the link of a message of template name: token is the
// invitation's or reset's secret, fields the event's fields.
func (l Links) For(name, token string, fields map[string]string) string {
	base := strings.TrimRight(l.Base, "/") + "/dashboard/#/"
	q := func(path, k, v string) string { return base + path + "?" + url.Values{k: {v}}.Encode() }
	switch name {
	case TemplateInvitation:
		return q("invitations/accept", "token", token)
	case TemplatePasswordReset:
		return q("password-reset", "token", token)
	case TemplateQuotaWarning:
		return base + "usage"
	case TemplateSecurityAlert:
		return base + "security"
	case TemplateEndpointDisabled:
		return base + "webhooks/" + url.PathEscape(fields["endpoint_id"])
	case TemplateReportReady:
		return base + "reports/" + url.PathEscape(fields["report_id"])
	}
	return base
}

// TokenOf is the token of a link For made, for tests and tools that
// follow one.
func TokenOf(link string) string {
	_, frag, _ := strings.Cut(link, "#")
	_, query, _ := strings.Cut(frag, "?")
	v, _ := url.ParseQuery(query)
	return v.Get("token")
}
