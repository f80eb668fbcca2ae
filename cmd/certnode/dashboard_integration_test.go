//go:build integration

package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cdpbrowser "github.com/chromedp/cdproto/browser"
	"github.com/chromedp/chromedp"
	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/mail"
	"github.com/certnode/certnode/internal/mail/mailtest"
	"github.com/certnode/certnode/internal/testenv"
)

// browser is a headless Chromium (Debian's, which `make services`
// installs) showing one page; pages reach only loopback.
type browser struct {
	t   *testing.T
	ctx context.Context
}

func newBrowser(t *testing.T, width, height int) *browser {
	t.Helper()
	const bin = "/usr/bin/chromium"
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("Chromium is not installed (%v): run `make services`", err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin),
		// Names under .test (custom domains) are this machine; nothing else
		// resolves.
		chromedp.Flag("host-resolver-rules", "MAP *.test 127.0.0.1 , MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"),
		chromedp.WindowSize(width, height))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	ctx, cancelT := context.WithTimeout(ctx, 3*time.Minute)
	b := &browser{t: t, ctx: ctx}
	t.Cleanup(func() {
		if t.Failed() {
			b.screenshot("failed")
		}
		cancelT()
		cancel()
		cancelA()
	})
	return b
}

// screenshot writes the page to .local/dashboard-<test>-<name>.png.
func (b *browser) screenshot(name string) {
	png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Logf("screenshot: %v", err)
		return
	}
	dir := filepath.Join("..", "..", ".local")
	os.MkdirAll(dir, 0o755)
	path := filepath.Join(dir, "dashboard-"+strings.NewReplacer("/", "-", " ", "_").Replace(b.t.Name())+"-"+name+".png")
	if err := os.WriteFile(path, png, 0o644); err == nil {
		b.t.Logf("screenshot: %s", path)
	}
}

func (b *browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := chromedp.Do(b.ctx, steps...); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
}

// download clicks what starts a download and returns the file.
func (b *browser) download(click string) []byte {
	b.t.Helper()
	dir := b.t.TempDir()
	progress := chromedp.Events(b.ctx, cdpbrowser.DownloadProgress)
	b.do("download by "+click, chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		yes := true
		_, err := chromedp.Call(ctx, cdpbrowser.SetDownloadBehavior, cdpbrowser.SetDownloadBehaviorParams{
			Behavior: cdpbrowser.SetDownloadBehaviorBehaviorAllowAndName, DownloadPath: dir, EventsEnabled: &yes})
		return err
	}), chromedp.Click(chromedp.CSS(click)))
	for ev, err := range progress {
		if err != nil {
			b.t.Fatalf("download by %s: %v", click, err)
		}
		switch ev.State {
		case cdpbrowser.DownloadProgressStateCompleted:
			data, err := os.ReadFile(filepath.Join(dir, ev.GUID))
			if err != nil {
				b.t.Fatal(err)
			}
			return data
		case cdpbrowser.DownloadProgressStateCanceled:
			b.t.Fatalf("download by %s canceled", click)
		}
	}
	b.t.Fatalf("download by %s: no download", click)
	return nil
}

// eval runs a script in the page and decodes its value.
func eval[T any](b *browser, script string) T {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[T](script))
	if err != nil {
		b.t.Fatalf("%s: %v", script, err)
	}
	return v
}

// waitFor polls a script in the page until it is true.
func (b *browser) waitFor(what, script string, limit time.Duration) {
	b.t.Helper()
	if _, err := chromedp.Run(b.ctx, chromedp.Poll[bool](script, chromedp.WithPollingTimeout(limit))); err != nil {
		b.t.Fatalf("%s (%s): %v", what, script, err)
	}
}

func (b *browser) signIn(base, email, password string) {
	b.t.Helper()
	b.do("open the dashboard", chromedp.Navigate(base+"/dashboard"), chromedp.WaitVisible(chromedp.CSS("#email")))
	b.do("sign in", chromedp.SendKeys(chromedp.CSS("#email"), email), chromedp.SendKeys(chromedp.CSS("#password"), password),
		chromedp.Click(chromedp.CSS("#login button[type=submit]")), chromedp.WaitVisible(chromedp.CSS("[data-testid=requests-total]")))
}

// tiles reads the overview's numbers and its period.
const tilesJS = `(() => { const o = {}; document.querySelectorAll('[data-testid]').forEach(e => { if (e.dataset.value !== undefined) o[e.dataset.testid] = e.dataset.value; });
  const p = document.getElementById('overview-period'); o.from = p.dataset.from; o.to = p.dataset.to; return o; })()`

// TestDashboard drives the dashboard in Chromium against dev with
// ClickHouse: the demo owner of the credentials file signs in; the
// overview's numbers are the API's for the same period; a counter moves
// while a job runs, without reloading; the charts have data and draw it;
// every page of the owner's role opens without an error, at desktop and
// phone width; the user of another organization sees only its own.
func TestDashboard(t *testing.T) {
	ns := mailtest.StartDNS(t) // the custom domains' TXT records
	e := startDev(t, "--clickhouse", testenv.ClickHouseAddr(t), "--dns-resolver", ns.Addr)
	c := e.creds()
	for range 3 {
		if code, body := e.do("POST", "/v1/sign", e.key, "application/json", `{"payload":{"dashboard":true}}`); code != 200 {
			t.Fatalf("sign: %d %s", code, body)
		}
	}
	if code, body := e.do("POST", "/v1/verify", e.key, "application/json", `{"receipt":{}}`); code != 200 {
		t.Fatalf("verify: %d %s", code, body)
	}
	b := newBrowser(t, 1280, 900)
	b.signIn(e.base, c.UserEmail, c.UserPassword)
	b.waitFor("the overview shows the signed requests", `Number(document.querySelector('[data-testid=signed-total]').dataset.value) >= 3`, 30*time.Second)

	// The page's numbers are the API's for the period it shows; it
	// refreshes every two seconds, so compare until one refresh agrees.
	deadline := time.Now().Add(15 * time.Second)
	for {
		tiles := eval[map[string]string](b, tilesJS)
		code, body := e.do("GET", "/v1/analytics/summary?from="+tiles["from"]+"&to="+tiles["to"], e.key, "", "")
		var s struct {
			Requests int64 `json:"requests"`
			Signed   int64 `json:"signed"`
			Invalid  int64 `json:"invalid"`
			Failed   int64 `json:"failed"`
		}
		json.Unmarshal([]byte(body), &s, json.RejectUnknownMembers(false))
		page := fmt.Sprintf("%s %s %s %s", tiles["requests-total"], tiles["signed-total"], tiles["invalid-total"], tiles["failed-total"])
		api := fmt.Sprintf("%d %d %d %d", s.Requests, s.Signed, s.Invalid, s.Failed)
		if code == 200 && page == api {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the overview shows requests, signed, invalid, failed %s for %s..%s; the API says %s (%d %s)", page, tiles["from"], tiles["to"], api, code, body)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// A counter moves while a bulk job runs, with no reload.
	before := eval[string](b, `document.querySelector('[data-testid=signed-total]').dataset.value`)
	eval[bool](b, `window.__notReloaded = true`)
	var lines strings.Builder
	for i := range 300 {
		fmt.Fprintf(&lines, "{\"n\":%d}\n", i)
	}
	job := e.submit("sign", lines.String())
	b.waitFor("the signed counter moves while the job runs", `Number(document.querySelector('[data-testid=signed-total]').dataset.value) > `+before, 30*time.Second)
	e.waitDone(job)
	b.waitFor("the counter reaches the job's receipts", `Number(document.querySelector('[data-testid=signed-total]').dataset.value) >= `+before+` + 300`, 30*time.Second)
	if !eval[bool](b, `window.__notReloaded === true`) {
		t.Fatal("the page reloaded")
	}

	// The charts hold the numbers and draw them.
	b.waitFor("the requests chart has data", `Number(document.querySelector('[data-testid=chart-requests]').dataset.points) > 0`, 10*time.Second)
	if n := eval[int](b, `(() => { const c = document.querySelector('[data-testid=chart-requests] canvas'); if (!c) return 0;
		const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; })()`); n < 500 {
		t.Fatalf("the requests chart drew %d pixels: blank", n)
	}

	// The explorer lists the requests behind its charts.
	b.do("open requests", chromedp.Click(chromedp.CSS("#nav-requests")), chromedp.WaitVisible(chromedp.CSS(`section[data-page=requests][data-ready]`)))
	if n := eval[int](b, `document.querySelectorAll('[data-testid=request-row]').length`); n < 1 {
		t.Fatal("the requests explorer lists no request")
	}

	// The job's row shows its progress: all 300 lines done.
	b.do("open jobs", chromedp.Click(chromedp.CSS("#nav-jobs")), chromedp.WaitVisible(chromedp.CSS(`section[data-page=jobs][data-ready]`)))
	b.waitFor("the job's bar is full", `(() => { const r = document.querySelector('tr[data-job="`+job+`"] [role=progressbar]');
		return !!r && r.getAttribute('aria-valuenow') === '100' && r.dataset.done === '300' && r.dataset.total === '300'; })()`, 10*time.Second)

	// A report saved on its page opens as a chart with the data.
	b.do("open reports", chromedp.Click(chromedp.CSS("#nav-reports")), chromedp.WaitVisible(chromedp.CSS(`section[data-page=reports][data-ready]`)))
	b.do("save a report", chromedp.SendKeys(chromedp.CSS(`#report-form [name=name]`), "Signed by status"),
		chromedp.SetValue(chromedp.CSS(`#report-form [name=group_by]`), "status"), chromedp.SetValue(chromedp.CSS(`#report-form [name=chart]`), "bar"),
		chromedp.Click(chromedp.CSS(`#report-form button[type=submit]`)))
	b.waitFor("the report opens with its data", `Number((document.querySelector('#report-view [data-testid=chart-report]') || {dataset: {}}).dataset.points) > 0`, 15*time.Second)
	if rows := eval[int](b, `document.querySelectorAll('#report-list tr[data-report]').length`); rows < 1 {
		t.Fatal("the saved report is not listed")
	}
	if run := b.download("#report-csv"); !bytes.HasPrefix(run, []byte("time,status,requests\n")) || !bytes.Contains(run, []byte(",signed,")) {
		t.Fatalf("the report as CSV: %.300s", run)
	}
	if run := b.download("#report-parquet"); !bytes.HasPrefix(run, []byte("PAR1")) {
		t.Fatalf("the report as Parquet: %.100q", run)
	}
	if run := b.download("#report-pdf"); !bytes.HasPrefix(run, []byte("%PDF-")) || !strings.Contains(pdfText(t, run), "signed") {
		t.Fatalf("the report as PDF: %.100q", run)
	}

	// Every export format downloads from the exports page, and so does a
	// background export once its bar is full.
	b.do("open exports", chromedp.Click(chromedp.CSS("#nav-exports")), chromedp.WaitVisible(chromedp.CSS(`section[data-page=exports][data-ready]`)))
	pick := func(name, value string) {
		eval[bool](b, `(() => { const s = document.querySelector('#export-form [name=`+name+`]'); s.value = '`+value+`';
			s.dispatchEvent(new Event('change', {bubbles: true})); return true; })()`)
	}
	pick("kind", "results")
	var csvRows int
	for format, ok := range map[string]func([]byte) bool{
		"csv": func(d []byte) bool {
			recs, err := csv.NewReader(bytes.NewReader(d)).ReadAll()
			csvRows = len(recs) - 1
			return err == nil && len(recs) > 303 && recs[0][0] == "id"
		},
		"ndjson":  func(d []byte) bool { return bytes.Count(d, []byte("\n")) > 303 && bytes.HasPrefix(d, []byte(`{"id":`)) },
		"json":    func(d []byte) bool { var v []map[string]any; return json.Unmarshal(d, &v) == nil && len(v) > 303 },
		"arrow":   func(d []byte) bool { return bytes.HasPrefix(d, []byte("\xff\xff\xff\xff")) },
		"parquet": func(d []byte) bool { return bytes.HasPrefix(d, []byte("PAR1")) && bytes.HasSuffix(d, []byte("PAR1")) },
	} {
		pick("format", format)
		if d := b.download("#export-download"); !ok(d) {
			t.Fatalf("the %s export: %.300q", format, d)
		}
	}
	pick("format", "csv")
	b.do("export in the background", chromedp.Click(chromedp.CSS("#export-job")))
	b.waitFor("the export's bar is full", `(() => { const r = document.querySelector('#export-jobs tr[data-status=done] [role=progressbar]');
		return !!r && r.getAttribute('aria-valuenow') === '100'; })()`, 30*time.Second)
	if d := b.download("#export-jobs tr[data-status=done] [data-testid=export-file]"); bytes.Count(d, []byte("\n")) < csvRows+1 {
		t.Fatalf("the background export holds %d lines, the download %d rows", bytes.Count(d, []byte("\n")), csvRows)
	}

	// The compliance report downloads from the audit page, as signed JSON
	// and as the PDF that names its receipt.
	b.do("open audit", chromedp.Click(chromedp.CSS("#nav-audit")), chromedp.WaitVisible(chromedp.CSS(`section[data-page=audit][data-ready]`)))
	signed := b.download("#compliance-json")
	if !bytes.Contains(signed, []byte(`"type":"certnode.compliance_report"`)) || !bytes.Contains(signed, []byte(`"receipt_id"`)) {
		t.Fatalf("the signed JSON: %.300s", signed)
	}
	if pdf := b.download("#compliance-pdf"); !bytes.HasPrefix(pdf, []byte("%PDF-")) || !bytes.Contains(pdf, []byte("certnode-receipt-id:")) {
		t.Fatalf("the PDF: %.100q", pdf)
	}
	// Its events download as a table, for people and for programs.
	if events := b.download("#audit-pdf"); !strings.Contains(pdfText(t, events), "report.create") {
		t.Fatalf("the audit events PDF: %s", pdfText(t, events))
	}
	if events := b.download("#audit-csv"); !bytes.HasPrefix(events, []byte("seq,at,action,")) || !bytes.Contains(events, []byte("report.create")) {
		t.Fatalf("the audit events CSV: %.300s", events)
	}

	// A custom domain added on its page shows the record to publish; the
	// check says what is missing until it is published, then the domain is
	// verified; removed, it is gone.
	b.do("open domains", chromedp.Click(chromedp.CSS("#nav-domains")), chromedp.WaitVisible(chromedp.CSS(`section[data-page=domains][data-ready]`)))
	b.do("add a domain", chromedp.SendKeys(chromedp.CSS(`#domain-form [name=name]`), "Shop.Dash.test"), chromedp.Click(chromedp.CSS(`#domain-form button[type=submit]`)))
	row := `document.querySelector('tr[data-domain="shop.dash.test"]')`
	b.waitFor("the domain listed with its record", `(() => { const r = `+row+`; return !!r && r.dataset.state === 'pending' && r.textContent.includes('TXT _certnode-challenge.shop.dash.test "certnode-verify='); })()`, 10*time.Second)
	b.do("verify before publishing", chromedp.Click(chromedp.CSS(`tr[data-domain="shop.dash.test"] [data-testid=verify-domain]`)))
	b.waitFor("the page says what is missing", `document.getElementById('domains-status').textContent.includes('no TXT record at _certnode-challenge.shop.dash.test')`, 10*time.Second)
	_, body := e.admin("GET", "/v1/orgs/"+c.Tenant+"/domains/shop.dash.test", "")
	var dom struct {
		Token string `json:"token"`
	}
	json.Unmarshal([]byte(body), &dom, json.RejectUnknownMembers(false))
	ns.Set("_certnode-challenge.shop.dash.test", "certnode-verify="+dom.Token)
	b.do("verify", chromedp.Click(chromedp.CSS(`tr[data-domain="shop.dash.test"] [data-testid=verify-domain]`)))
	b.waitFor("the domain verified", `(() => { const r = `+row+`; return !!r && r.dataset.state === 'verified'; })()`, 10*time.Second)
	// On it, the sign-in page wears the organization's brand.
	if code, body := e.admin("PUT", "/v1/orgs/"+c.Tenant+"/branding", `{"display_name":"Dash Shop","colors":{"primary":"#aa3300"}}`); code != 200 {
		t.Fatalf("branding: %d %s", code, body)
	}
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(e.base, "http://"))
	bd := newBrowser(t, 1280, 900)
	bd.do("open the dashboard on the custom domain", chromedp.Navigate("http://shop.dash.test:"+port+"/dashboard"), chromedp.WaitVisible(chromedp.CSS("#email")))
	bd.waitFor("the sign-in page is the organization's", `document.body.dataset.hostBrand === '`+c.Tenant+`' && document.title.startsWith('Dash Shop') && document.getElementById('org-name').textContent === 'Dash Shop' &&
		getComputedStyle(document.documentElement).getPropertyValue('--brand').trim() === '#aa3300'`, 10*time.Second)
	bs := newBrowser(t, 1280, 900)
	bs.do("open the dashboard on the service's address", chromedp.Navigate(e.base+"/dashboard"), chromedp.WaitVisible(chromedp.CSS("#email")))
	bs.waitFor("the service's page asked for a brand", `document.body.dataset.hostBrand !== undefined`, 10*time.Second)
	if name := eval[string](bs, `document.getElementById('org-name').textContent + document.body.dataset.hostBrand`); name != "CertNode" {
		t.Fatalf("the service's own sign-in page shows %q", name)
	}
	eval[bool](b, `(window.confirm = () => true, true)`)
	b.do("remove the domain", chromedp.Click(chromedp.CSS(`tr[data-domain="shop.dash.test"] [data-testid=remove-domain]`)))
	b.waitFor("the domain gone", `!`+row+` && document.getElementById('domains-status').textContent.includes('removed')`, 10*time.Second)

	pages := []string{"requests", "jobs", "webhooks", "reports", "exports", "usage", "invoices", "keys", "domains", "audit", "overview"}
	open := func(width string) {
		for _, p := range pages {
			b.do("open "+p+" at "+width, chromedp.Click(chromedp.CSS("#nav-"+p)), chromedp.WaitVisible(chromedp.CSS(`section[data-page=`+p+`]`)))
			b.waitFor(p+" loaded", `!!document.querySelector('section[data-page=`+p+`][data-ready]') || !!document.getElementById('error')`, 10*time.Second)
			if msg := eval[string](b, `(document.getElementById('error') || {}).textContent || ''`); msg != "" {
				t.Fatalf("%s at %s: %s", p, width, msg)
			}
			if os.Getenv("CERTNODE_DASHBOARD_SCREENSHOTS") != "" { // to look at every page
				b.screenshot(p + "-" + width)
			}
			if over := eval[bool](b, `document.documentElement.scrollWidth > window.innerWidth + 1`); over {
				b.screenshot(p + "-" + width)
				t.Errorf("%s at %s is wider than the window", p, width)
			}
		}
	}
	open("desktop")
	b.do("phone width", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2)))
	open("phone")

	// Another organization's owner sees its own organization only.
	if code, body := e.admin("POST", "/v1/admin/users", `{"email":"dash-b@example.com","password":"correct horse battery staple"}`); code == 201 {
		var u struct {
			ID string `json:"id"`
		}
		json.Unmarshal([]byte(body), &u, json.RejectUnknownMembers(false))
		if code, body := e.admin("PUT", "/v1/orgs/other/members/"+u.ID, `{"role":"owner"}`); code != 200 && code != 201 {
			t.Fatalf("make B an owner of other: %d %s", code, body)
		}
	} else {
		t.Fatalf("create B: %d %s", code, body)
	}
	keyA := e.keyID()
	b2 := newBrowser(t, 1280, 900)
	b2.signIn(e.base, "dash-b@example.com", "correct horse battery staple")
	if orgs := eval[[]string](b2, `[...document.querySelectorAll('#org-select option')].map(o => o.value)`); len(orgs) != 1 || orgs[0] != "other" {
		t.Fatalf("B may pick %v", orgs)
	}
	tiles := eval[map[string]string](b2, tilesJS)
	_, body = e.do("GET", "/v1/analytics/summary?from="+tiles["from"]+"&to="+tiles["to"], e.other, "", "")
	var s struct {
		Requests int64 `json:"requests"`
	}
	json.Unmarshal([]byte(body), &s, json.RejectUnknownMembers(false))
	if tiles["requests-total"] != fmt.Sprint(s.Requests) {
		t.Errorf("B's overview shows %s requests, B's API %d", tiles["requests-total"], s.Requests)
	}
	for _, p := range pages {
		b2.do("B opens "+p, chromedp.Click(chromedp.CSS("#nav-"+p)), chromedp.WaitVisible(chromedp.CSS(`section[data-page=`+p+`]`)))
		b2.waitFor(p+" loaded", `!!document.querySelector('section[data-page=`+p+`][data-ready]')`, 10*time.Second)
		if text := eval[string](b2, `document.body.innerText`); strings.Contains(text, keyA) || strings.Contains(text, c.UserEmail) || strings.Contains(text, "Signed by status") {
			t.Errorf("B's %s page shows A's key, owner or report: %s", p, text)
		}
	}

	// The links invitation and reset emails carry (internal/mail's) open
	// their forms: a new user joins, signs in, later forgets the password
	// and sets another.
	code, body := e.admin("POST", "/v1/orgs/"+c.Tenant+"/invitations", `{"email":"joiner@example.com","role":"viewer"}`)
	var inv struct {
		Token string `json:"token"`
	}
	if json.Unmarshal([]byte(body), &inv, json.RejectUnknownMembers(false)); code != 201 || inv.Token == "" {
		t.Fatalf("invite: %d %s", code, body)
	}
	links := mail.Links{Base: e.base}
	b3 := newBrowser(t, 1280, 900)
	b3.do("follow the invitation link", chromedp.Navigate(links.For(mail.TemplateInvitation, inv.Token, nil)), chromedp.WaitVisible(chromedp.CSS("#account-form")))
	b3.do("accept", chromedp.SendKeys(chromedp.CSS(`#account-form [name=name]`), "Joiner"),
		chromedp.SendKeys(chromedp.CSS(`#account-form [name=password]`), "a long password for joiner"), chromedp.Click(chromedp.CSS(`#account-form button[type=submit]`)))
	b3.waitFor("joined", `document.getElementById('account-done').textContent.includes('You joined `+c.Tenant+` as viewer')`, 10*time.Second)
	b3.do("then sign in", chromedp.Click(chromedp.CSS("#to-sign-in")), chromedp.WaitVisible(chromedp.CSS("#email")),
		chromedp.SendKeys(chromedp.CSS("#email"), "joiner@example.com"), chromedp.SendKeys(chromedp.CSS("#password"), "a long password for joiner"),
		chromedp.Click(chromedp.CSS("#login button[type=submit]")), chromedp.WaitVisible(chromedp.CSS("[data-testid=requests-total]")))
	b3.do("sign out", chromedp.Click(chromedp.CSS("#sign-out")), chromedp.WaitVisible(chromedp.CSS("#forgot")))
	b3.do("forgot the password", chromedp.Click(chromedp.CSS("#forgot")), chromedp.WaitVisible(chromedp.CSS("#forgot-form")),
		chromedp.SendKeys(chromedp.CSS(`#forgot-form [name=email]`), "joiner@example.com"), chromedp.Click(chromedp.CSS(`#forgot-form button[type=submit]`)))
	b3.waitFor("the same answer for everyone", `document.getElementById('forgot-done').textContent.includes('If an account has this address')`, 10*time.Second)
	var joiner struct {
		Users []struct {
			ID    string `json:"id"`
			Email string `json:"email"`
		} `json:"users"`
	}
	_, body = e.admin("GET", "/v1/admin/users", "")
	json.Unmarshal([]byte(body), &joiner, json.RejectUnknownMembers(false))
	var reset struct {
		Token string `json:"token"`
	}
	for _, u := range joiner.Users {
		if u.Email == "joiner@example.com" {
			_, body = e.admin("POST", "/v1/admin/users/"+u.ID+"/password-reset", "")
			json.Unmarshal([]byte(body), &reset, json.RejectUnknownMembers(false))
		}
	}
	if reset.Token == "" {
		t.Fatalf("no reset token for joiner: %s", body)
	}
	b3.do("follow the reset link", chromedp.Navigate("about:blank"), chromedp.Navigate(links.For(mail.TemplatePasswordReset, reset.Token, nil)),
		chromedp.WaitVisible(chromedp.CSS("#account-form")), chromedp.SendKeys(chromedp.CSS(`#account-form [name=password]`), "another long password"),
		chromedp.Click(chromedp.CSS(`#account-form button[type=submit]`)))
	b3.waitFor("the password changed", `document.getElementById('account-done').textContent.includes('Your password is changed')`, 10*time.Second)
	if code, _ := request("POST", e.base+"/v1/auth/login", "", "application/json", `{"email":"joiner@example.com","password":"another long password"}`); code != 200 {
		t.Fatalf("sign in with the new password: %d", code)
	}
}
