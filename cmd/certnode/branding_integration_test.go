//go:build integration

package main

import (
	"strings"
	"testing"
	"time"

	"github.com/certnode/certnode/internal/testenv"
	"github.com/chromedp/chromedp"
)

// frameText is the HTML of the preview frame. The frame is sandboxed, so
// Chromium runs it in a process (a target) of its own: the dashboard's
// script cannot read it, and the test attaches to its target.
func (b *browser) frameText() string {
	b.t.Helper()
	targets, err := chromedp.Targets(b.ctx)
	if err != nil {
		b.t.Fatal(err)
	}
	for _, ti := range targets {
		if ti.Type != "iframe" || !strings.Contains(ti.URL, "/dashboard/preview") {
			continue
		}
		// Canceling a context attached to a target closes the target: keep
		// it until the browser ends.
		ctx, cancel := chromedp.NewContext(b.ctx, chromedp.WithTargetID(ti.TargetID))
		b.t.Cleanup(cancel)
		html, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.documentElement.outerHTML`))
		if err != nil {
			b.t.Logf("the preview frame: %v", err)
		}
		return html
	}
	return ""
}

// TestDashboardBranding: an owner proposes branding on the dashboard,
// sees it drawn in the preview (and a refusal naming what was refused)
// while nothing is saved, saves it, and the dashboard wears it: name,
// palette, custom CSS.
func TestDashboardBranding(t *testing.T) {
	e := startDev(t)
	c := e.creds()
	b := newBrowser(t, 1280, 1000)
	b.do("sign in", chromedp.Navigate(e.base+"/dashboard"), chromedp.WaitVisible(chromedp.CSS("#email")),
		chromedp.SendKeys(chromedp.CSS("#email"), c.UserEmail), chromedp.SendKeys(chromedp.CSS("#password"), c.UserPassword),
		chromedp.Click(chromedp.CSS("#login button[type=submit]")), chromedp.WaitVisible(chromedp.CSS("#nav-branding")))
	b.do("open branding", chromedp.Click(chromedp.CSS("#nav-branding")), chromedp.WaitVisible(chromedp.CSS(`section[data-page=branding][data-ready]`)))
	set := func(name, value string) {
		eval[bool](b, `(() => { document.querySelector('#branding-form [name=`+name+`]').value = `+jsString(value)+`; return true; })()`)
	}
	set("display_name", "Proposed Name")
	set("color_primary", "#aa0000")
	set("custom_css", "a { background: url(https://evil.test/x) }")
	b.do("preview refused CSS", chromedp.Click(chromedp.CSS("#branding-preview")))
	b.waitFor("the refusal names url()", `document.getElementById('branding-status').textContent.includes('url() is not allowed')`, 10*time.Second)

	set("custom_css", "#org-name { letter-spacing: 3px }")
	set("error_404", `<h1 class="custom404">{{.Org.Name}} lost {{.Path}}</h1>`)
	eval[bool](b, `(() => { document.querySelector('#branding-form [name=preview_page]').value = '404'; return true; })()`)
	b.do("preview", chromedp.Click(chromedp.CSS("#branding-preview")))
	b.waitFor("the preview is shown", `document.getElementById('branding-frame').dataset.shown === '404'`, 10*time.Second)
	testenv.WaitFor(t, "the preview frame shows the proposed template", 10*time.Second, func() (bool, string) {
		shown := b.frameText()
		return strings.Contains(shown, `<h1 class="custom404">Proposed Name lost /example</h1>`), shown
	})
	if _, body := e.do("GET", "/v1/orgs/demo/branding", e.key, "", ""); strings.Contains(body, "Proposed Name") {
		t.Fatalf("the preview saved the branding: %s", body)
	}
	eval[bool](b, `(() => { document.querySelector('#branding-form [name=preview_page]').value = 'verify'; return true; })()`)
	b.do("preview the verification page", chromedp.Click(chromedp.CSS("#branding-preview")))
	b.waitFor("the verification page preview is shown", `document.getElementById('branding-frame').dataset.shown === 'verify'`, 10*time.Second)

	b.do("save", chromedp.Click(chromedp.CSS("#branding-save")))
	b.waitFor("saved", `document.getElementById('branding-status').textContent === 'Saved.'`, 10*time.Second)
	if _, body := e.do("GET", "/v1/orgs/demo/branding", e.key, "", ""); !strings.Contains(body, `"display_name":"Proposed Name"`) || !strings.Contains(body, `"primary":"#aa0000"`) {
		t.Fatalf("the saved branding: %s", body)
	}
	b.waitFor("the dashboard wears it", `document.getElementById('org-name').textContent === 'Proposed Name' &&
		getComputedStyle(document.documentElement).getPropertyValue('--brand').trim() === '#aa0000'`, 10*time.Second)
	b.waitFor("its custom CSS applies", `getComputedStyle(document.getElementById('org-name')).letterSpacing === '3px'`, 10*time.Second)
}

// jsString quotes s for a script.
func jsString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `'`, `\'`, "\n", `\n`, "<", `\x3c`)
	return "'" + r.Replace(s) + "'"
}
