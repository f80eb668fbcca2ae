package main

import (
	"crypto/rand"
	"encoding/hex"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/ingest"
	"github.com/certnode/certnode/internal/testenv"
)

// crossTenant is what tenant A ("demo") owns and tenant B ("other") must
// never see: its ids and the secret in its payloads.
type crossTenant struct {
	secret    string // in every payload A sends
	receiptID string
	receipt   string
	jobID     string // a finished bulk job
	abandoned string // a job whose upload never finished
	single    string // a /v1/sign request that answered 504, polled as a job
	endpoint  string // a webhook endpoint
	message   string // the id a delivery of one of A's events to it has
	report    string // a saved report
}

// leaks fails when body holds anything of A's.
func (a *crossTenant) leaks(t *testing.T, body string) {
	t.Helper()
	for _, s := range []string{a.secret, `"demo"`, a.receiptID, a.jobID, a.abandoned, a.single, a.endpoint, a.message, a.report} {
		if s != "" && strings.Contains(body, s) {
			t.Errorf("tenant B's answer holds %q of tenant A's: %s", s, body)
		}
	}
}

// newCrossTenant is tenant A's side of a cross-tenant test, with a secret
// of its own that no answer to B may hold.
func newCrossTenant() *crossTenant {
	raw := make([]byte, 8)
	rand.Read(raw)
	return &crossTenant{secret: "a-secret-" + hex.EncodeToString(raw)}
}

// keyID is the id of the demo organization's API key (the part before the
// dot), as results and analytics name it.
func (e *devEnv) keyID() string {
	id, _, _ := strings.Cut(e.key, ".")
	return id
}

// notFound checks B's answer for A's id: the same 404 B gets for an id
// that does not exist, so it tells nothing, not even that the id exists.
func (a *crossTenant) notFound(t *testing.T, c *contract, e *devEnv, path, unknownPath string) {
	t.Helper()
	got := c.expect(t, e, exchange{name: "B on A's " + path, method: "GET", path: path, key: e.other, status: 404, code: "not_found"})
	want := c.expect(t, e, exchange{name: "B on " + unknownPath, method: "GET", path: unknownPath, key: e.other, status: 404, code: "not_found"})
	if got.body != want.body {
		t.Errorf("B tells A's %s (%s) from an unknown id (%s)", path, got.body, want.body)
	}
	a.leaks(t, got.body)
}

// sameAnswer checks that B and A get the same answer on path, which holds
// nothing of A's.
func sameAnswer(t *testing.T, c *contract, e *devEnv, a *crossTenant, path string, status int, code string) {
	t.Helper()
	asB := c.expect(t, e, exchange{name: "B on " + path, method: "GET", path: path, key: e.other, status: status, code: code, offSpec: status == 400})
	asA := c.expect(t, e, exchange{name: "A on " + path, method: "GET", path: path, key: e.key, status: status, code: code, offSpec: status == 400})
	if asB.body != asA.body {
		t.Errorf("B's answer %s differs from A's %s", asB.body, asA.body)
	}
	a.leaks(t, asB.body)
}

// jobResultOwned waits for a single request's job to be done as seen with
// key, and reports whether its result answers that very request: the job
// is visible only to its tenant, so the result is attributed to it.
func jobResultOwned(t *testing.T, e *devEnv, key, id string) bool {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body := e.do("GET", "/v1/jobs/"+id, key, "", "")
		var st struct {
			State  string `json:"state"`
			Result struct {
				ID     string `json:"id"`
				Status string `json:"status"`
			} `json:"result"`
		}
		json.Unmarshal([]byte(body), &st, json.RejectUnknownMembers(false))
		if code == 200 && st.State == "done" {
			return st.Result.ID == id && st.Result.Status != ""
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s: %d %s", id, code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func jobIDIn(body string) string {
	var b struct {
		JobID string `json:"job_id"`
	}
	json.Unmarshal([]byte(body), &b, json.RejectUnknownMembers(false))
	return b.JobID
}

// TestCrossTenant calls every tenant route with tenant B's key and tenant
// A's ids: each answers as for ids that do not exist, with nothing of A's.
// Routes that create are checked the other way: what B creates is B's,
// never A's. A tenant route without a case here fails the test.
func TestCrossTenant(t *testing.T) {
	e := startDev(t)
	c := newContract(t, e)
	// Requests there answer 504 at once and are polled as jobs.
	polled := startDev(t, "--sign-wait", "1ns")
	pc := newContract(t, polled)
	const js = "application/json"

	a := newCrossTenant()
	a.receipt = strings.TrimSpace(c.expect(t, e, exchange{name: "A signs", method: "POST", path: "/v1/sign", key: e.key, ctype: js,
		body: `{"payload":{"s":"` + a.secret + `"}}`, status: 200}).body)
	var rc struct {
		ReceiptID string `json:"receipt_id"`
	}
	json.Unmarshal([]byte(a.receipt), &rc, json.RejectUnknownMembers(false))
	a.receiptID = rc.ReceiptID
	a.jobID = e.submit("sign", `{"s":"`+a.secret+`"}`+"\n")
	e.waitDone(a.jobID)
	a.abandoned = e.injectAbandonedJob("demo")
	a.single = pc.timedOut(t, polled, exchange{name: "A signs, polled", method: "POST", path: "/v1/sign", key: polled.key, ctype: js,
		body: `{"payload":{"s":"` + a.secret + `"}}`})
	if !jobResultOwned(t, polled, polled.key, a.single) {
		t.Fatal("A's polled request does not show its own result")
	}

	cases := map[string]func(t *testing.T){
		"POST /v1/compliance/reports": func(t *testing.T) {
			// Without ClickHouse (as here) both get the same 503; the
			// reports with data are TestComplianceReport's (integration).
			body := `{"from":"2026-01-01T00:00:00Z","to":"2026-02-01T00:00:00Z"}`
			asB := c.expect(t, e, exchange{name: "B's compliance report", method: "POST", path: "/v1/compliance/reports", key: e.other, ctype: js, body: body, status: 503, code: "analytics_unavailable"})
			asA := c.expect(t, e, exchange{name: "A's compliance report", method: "POST", path: "/v1/compliance/reports", key: e.key, ctype: js, body: body, status: 503, code: "analytics_unavailable"})
			if asA.body != asB.body {
				t.Errorf("B's answer %s differs from A's %s", asB.body, asA.body)
			}
			a.leaks(t, asB.body)
		},
		// Without ClickHouse (as here) every export route answers the same
		// 503 to both; the exports with data are
		// TestOpenAPIExportsClickHouse's (integration).
		"GET /v1/exports/{kind}": func(t *testing.T) {
			sameAnswer(t, c, e, a, "/v1/exports/results?format=ndjson&receipt=true", 503, "exports_unavailable")
		},
		// The audit export reads the events from ClickHouse: here both get
		// the same 503. B never sees A's events in its own export:
		// TestAuditLog (integration).
		"GET /v1/audit/export": func(t *testing.T) {
			sameAnswer(t, c, e, a, "/v1/audit/export?from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z", 503, "exports_unavailable")
		},
		// Alerts come from ClickHouse: both get the same 503 here; B never
		// lists A's: TestThreatDetection (integration).
		"GET /v1/security/alerts": func(t *testing.T) {
			sameAnswer(t, c, e, a, "/v1/security/alerts", 503, "storage_unavailable")
		},
		// Privacy reads and rewrites ClickHouse: both get the same 503
		// here; B neither sees nor erases A's: TestPrivacy (integration).
		"POST /v1/privacy/subjects": func(t *testing.T) {
			for _, key := range []string{e.other, e.key} {
				a.leaks(t, c.expect(t, e, exchange{name: "a subject access", method: "POST", path: "/v1/privacy/subjects", key: key, ctype: js, body: `{"subject":"ada@example.com"}`, status: 503, code: "storage_unavailable"}).body)
			}
		},
		"POST /v1/privacy/erasures": func(t *testing.T) {
			for _, key := range []string{e.other, e.key} {
				a.leaks(t, c.expect(t, e, exchange{name: "an erasure", method: "POST", path: "/v1/privacy/erasures", key: key, ctype: js, body: `{"all":true}`, status: 503, code: "storage_unavailable"}).body)
			}
		},
		"GET /v1/export-jobs": func(t *testing.T) {
			sameAnswer(t, c, e, a, "/v1/export-jobs", 503, "exports_unavailable")
		},
		"GET /v1/export-jobs/{export_id}": func(t *testing.T) {
			sameAnswer(t, c, e, a, "/v1/export-jobs/exp_x", 503, "exports_unavailable")
		},
		"POST /v1/export-jobs": func(t *testing.T) {
			for _, key := range []string{e.other, e.key} {
				a.leaks(t, c.expect(t, e, exchange{name: "an export job", method: "POST", path: "/v1/export-jobs", key: key, ctype: js, body: `{"kind":"results"}`, status: 503, code: "exports_unavailable"}).body)
			}
		},
		"DELETE /v1/export-jobs/{export_id}": func(t *testing.T) {
			for _, key := range []string{e.other, e.key} {
				a.leaks(t, c.expect(t, e, exchange{name: "an export canceled", method: "DELETE", path: "/v1/export-jobs/exp_x", key: key, status: 503, code: "exports_unavailable"}).body)
			}
		},
		"GET /v1/receipts/{receipt_id}/proof": func(t *testing.T) {
			// Without ClickHouse (as here) both get the same 503; B's 404
			// for A's receipt is TestTransparencyLog's (integration).
			sameAnswer(t, c, e, a, "/v1/receipts/"+a.receiptID+"/proof", 503, "storage_unavailable")
		},
		"GET /v1/reports/{report_id}/run": func(t *testing.T) {
			a.report = e.newReport("demo")
			a.notFound(t, c, e, "/v1/reports/"+a.report+"/run", "/v1/reports/rpt_nope/run")
		},
		"GET /v1/jobs": func(t *testing.T) {
			asA := c.expect(t, e, exchange{name: "A lists its jobs", method: "GET", path: "/v1/jobs", key: e.key, status: 200}).body
			if !strings.Contains(asA, a.jobID) {
				t.Errorf("A's list lacks its job %s: %s", a.jobID, asA)
			}
			for _, q := range []string{"", "?state=done", "?state=abandoned&limit=100"} {
				a.leaks(t, c.expect(t, e, exchange{name: "B lists its jobs" + q, method: "GET", path: "/v1/jobs" + q, key: e.other, status: 200}).body)
			}
		},
		"GET /v1/jobs/{job_id}": func(t *testing.T) {
			a.notFound(t, c, e, "/v1/jobs/"+a.jobID, "/v1/jobs/job_nope")
			a.notFound(t, c, e, "/v1/jobs/"+a.abandoned, "/v1/jobs/job_nope")
			a.notFound(t, pc, polled, "/v1/jobs/"+a.single, "/v1/jobs/req_nope")
		},
		"GET /v1/jobs/{job_id}/results": func(t *testing.T) {
			a.notFound(t, c, e, "/v1/jobs/"+a.jobID+"/results", "/v1/jobs/job_nope/results")
			a.notFound(t, c, e, "/v1/jobs/"+a.jobID+"/results?after_line=1", "/v1/jobs/job_nope/results?after_line=1")
			// A 409 would tell B the job exists.
			a.notFound(t, c, e, "/v1/jobs/"+a.abandoned+"/results", "/v1/jobs/job_nope/results")
			a.notFound(t, pc, polled, "/v1/jobs/"+a.single+"/results", "/v1/jobs/req_nope/results")
		},
		"GET /v1/receipts/{receipt_id}": func(t *testing.T) {
			// Without ClickHouse (as here) every tenant gets the same 503,
			// which says nothing of A's receipt; the 404 B gets from a real
			// store is TestOpenAPIReceiptsClickHouse's (integration).
			asB := c.expect(t, e, exchange{name: "B on A's receipt", method: "GET", path: "/v1/receipts/" + a.receiptID, key: e.other, status: 503, code: "storage_unavailable"})
			asA := c.expect(t, e, exchange{name: "A on its receipt", method: "GET", path: "/v1/receipts/" + a.receiptID, key: e.key, status: 503, code: "storage_unavailable"})
			if asB.body != asA.body {
				t.Errorf("B's answer %s differs from A's %s", asB.body, asA.body)
			}
			a.leaks(t, asB.body)
		},
		// Usage and invoices are the caller's organization's, never named
		// by an id: without ClickHouse (as here) both get the same 503; the
		// answers with real data are TestOpenAPIUsageClickHouse's.
		"GET /v1/usage": func(t *testing.T) {
			sameAnswer(t, c, e, a, "/v1/usage?granularity=hour&group_by=key", 503, "storage_unavailable")
		},
		"GET /v1/invoices": func(t *testing.T) {
			sameAnswer(t, c, e, a, "/v1/invoices", 503, "storage_unavailable")
		},
		// Analytics too: the same 503 here; TestOpenAPIAnalyticsClickHouse
		// checks B's answers hold none of A's rows.
		"GET /v1/analytics/series": func(t *testing.T) {
			sameAnswer(t, c, e, a, "/v1/analytics/series?group_by=key_id", 503, "analytics_unavailable")
		},
		"GET /v1/analytics/top": func(t *testing.T) {
			sameAnswer(t, c, e, a, "/v1/analytics/top?group_by=job_id", 503, "analytics_unavailable")
		},
		"GET /v1/analytics/summary": func(t *testing.T) {
			sameAnswer(t, c, e, a, "/v1/analytics/summary", 503, "analytics_unavailable")
		},
		"GET /v1/analytics/requests": func(t *testing.T) {
			sameAnswer(t, c, e, a, "/v1/analytics/requests?status=failed", 503, "analytics_unavailable")
		},
		"GET /v1/invoices/{period}": func(t *testing.T) {
			sameAnswer(t, c, e, a, "/v1/invoices/"+time.Now().UTC().Format("2006-01"), 503, "storage_unavailable")
			sameAnswer(t, c, e, a, "/v1/invoices/1999-13", 400, "invalid_period")
		},
		"POST /v1/sign": func(t *testing.T) {
			b := pc.timedOut(t, polled, exchange{name: "B signs, polled", method: "POST", path: "/v1/sign", key: polled.other, ctype: js,
				body: `{"payload":{"b":1}}`})
			if !jobResultOwned(t, polled, polled.other, b) {
				t.Error("B's polled request does not show its own result")
			}
			pc.expect(t, polled, exchange{name: "A on B's request", method: "GET", path: "/v1/jobs/" + b, key: polled.key, status: 404, code: "not_found"})
			pc.expect(t, polled, exchange{name: "A on B's results", method: "GET", path: "/v1/jobs/" + b + "/results", key: polled.key, status: 404, code: "not_found"})
		},
		"POST /v1/verify": func(t *testing.T) {
			// Receipts verify with the public keys, whoever holds them.
			v := c.expect(t, e, exchange{name: "B verifies A's receipt", method: "POST", path: "/v1/verify", key: e.other, ctype: js,
				body: `{"receipt":` + a.receipt + `}`, status: 200}).body
			if !strings.Contains(v, `"valid":true`) {
				t.Errorf("B could not verify A's receipt: %s", v)
			}
			b := pc.timedOut(t, polled, exchange{name: "B verifies, polled", method: "POST", path: "/v1/verify", key: polled.other, ctype: js,
				body: `{"receipt":` + a.receipt + `}`})
			if !jobResultOwned(t, polled, polled.other, b) {
				t.Error("B's polled verification does not show its own result")
			}
			pc.expect(t, polled, exchange{name: "A on B's verification", method: "GET", path: "/v1/jobs/" + b, key: polled.key, status: 404, code: "not_found"})
		},
		"POST /v1/jobs": func(t *testing.T) {
			b := jobIDIn(c.expect(t, e, exchange{name: "B's job", method: "POST", path: "/v1/jobs?type=verify", key: e.other, ctype: ndjson,
				body: a.receipt + "\n", status: 202}).body)
			got := c.expect(t, e, exchange{name: "B's job results", method: "GET", path: "/v1/jobs/" + b + "/results", key: e.other, status: 200}).body
			if !strings.Contains(got, `"status":"valid"`) {
				t.Errorf("B's verify job: %s", got)
			}
			c.expect(t, e, exchange{name: "A on B's job", method: "GET", path: "/v1/jobs/" + b, key: e.key, status: 404, code: "not_found"})
			c.expect(t, e, exchange{name: "A on B's job results", method: "GET", path: "/v1/jobs/" + b + "/results", key: e.key, status: 404, code: "not_found"})
		},
	}

	// Branding: B's style sheet and previews hold nothing of A's branding
	// (A's custom CSS carries A's secret).
	brandA := func(t *testing.T) {
		t.Helper()
		c.expect(t, e, exchange{name: "A's branding", method: "PUT", path: "/v1/orgs/demo/branding", key: e.key, ctype: js,
			body: `{"display_name":"Demo ` + a.secret + `","custom_css":"/* ` + a.secret + ` */ .cn-name { color: red }"}`, status: 200})
		testenv.WaitFor(t, "ingest has A's branding", 10*time.Second, func() (bool, string) {
			_, body := e.do("GET", "/v1/branding/style.css", e.key, "", "")
			return strings.Contains(body, a.secret), body
		})
	}
	cases["GET /v1/branding/style.css"] = func(t *testing.T) {
		brandA(t)
		a.leaks(t, c.expect(t, e, exchange{name: "B's style sheet", method: "GET", path: "/v1/branding/style.css", key: e.other, status: 200}).body)
		c.expect(t, e, exchange{name: "B names A's organization", method: "GET", path: "/v1/branding/style.css?org=demo", key: e.other, status: 400, code: "org_mismatch"})
	}
	cases["POST /v1/branding/preview"] = func(t *testing.T) {
		brandA(t)
		for _, page := range []string{"verify", "404", "maintenance"} {
			a.leaks(t, c.expect(t, e, exchange{name: "B previews " + page, method: "POST", path: "/v1/branding/preview", key: e.other, ctype: js,
				body: `{"page":"` + page + `","branding":{}}`, status: 200}).body)
		}
	}

	for key, run := range webhookCrossTenant(t, c, e, a) {
		cases[key] = run
	}

	tenantRoutes := map[string]bool{}
	for _, r := range ingest.Routes() {
		if r.Tenant {
			tenantRoutes[r.Method+" "+r.Path] = true
		}
	}
	for key := range tenantRoutes {
		if cases[key] == nil {
			t.Errorf("tenant route %s has no cross-tenant case", key)
		}
	}
	for key, run := range cases {
		if !tenantRoutes[key] {
			t.Errorf("cross-tenant case for %s, which is not a tenant route", key)
			continue
		}
		t.Run(key, run)
	}
}

// signIn signs in through ingest and returns the session cookie and the
// session's CSRF token.
func signIn(t *testing.T, e *devEnv, email, password string) (*http.Cookie, string) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"email": email, "password": password})
	resp, err := http.Post(e.base+"/v1/auth/login", "application/json", strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b struct {
		CSRF string `json:"csrf_token"`
	}
	raw, _ := io.ReadAll(resp.Body)
	json.Unmarshal(raw, &b, json.RejectUnknownMembers(false))
	for _, c := range resp.Cookies() {
		if c.Name == ingest.SessionCookie && resp.StatusCode == 200 && b.CSRF != "" {
			return c, b.CSRF
		}
	}
	t.Fatalf("sign in as %s: %d %s", email, resp.StatusCode, raw)
	return nil, ""
}

// sessionDo sends a request with a session, naming org, with its CSRF token.
func sessionDo(t *testing.T, e *devEnv, method, path string, cookie *http.Cookie, csrf, org string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, e.base+path, strings.NewReader(`{}`))
	req.AddCookie(cookie)
	req.Header.Set(ingest.CSRFHeader, csrf)
	req.Header.Set("Content-Type", "application/json")
	if org != "" {
		req.Header.Set(ingest.OrgHeader, org)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestCrossTenantSessions: a signed-in user of B who names A's
// organization on any tenant route gets the answer an organization that
// does not exist gets, before the route runs; A's owner (the demo user
// of the credentials file) acts in A.
func TestCrossTenantSessions(t *testing.T) {
	e := startDev(t)
	c := e.creds()
	owner, ownerCSRF := signIn(t, e, c.UserEmail, c.UserPassword)
	if code, body := e.admin("POST", "/v1/admin/users", `{"email":"b-owner@example.com","password":"correct horse battery staple"}`); code != 201 {
		t.Fatalf("create B's user: %d %s", code, body)
	} else {
		var u struct {
			ID string `json:"id"`
		}
		json.Unmarshal([]byte(body), &u, json.RejectUnknownMembers(false))
		if code, body := e.admin("PUT", "/v1/orgs/other/members/"+u.ID, `{"role":"owner"}`); code != 200 && code != 201 {
			t.Fatalf("make B's user an owner of other: %d %s", code, body)
		}
	}
	bUser, bCSRF := signIn(t, e, "b-owner@example.com", "correct horse battery staple")

	// Sessions work: each user acts in its own organization.
	if code, body := sessionDo(t, e, "GET", "/v1/jobs/job_none", owner, ownerCSRF, ""); code != 404 || !strings.Contains(body, "no such job") {
		t.Fatalf("A's owner on A: %d %s", code, body)
	}
	if code, body := sessionDo(t, e, "GET", "/v1/jobs/job_none", bUser, bCSRF, "other"); code != 404 || !strings.Contains(body, "no such job") {
		t.Fatalf("B's owner on B: %d %s", code, body)
	}
	params := strings.NewReplacer("{job_id}", "job_x", "{receipt_id}", "rid", "{period}", "2026-01", "{id}", "msg_x")
	for _, r := range ingest.Routes() {
		if !r.Tenant {
			continue
		}
		path := params.Replace(r.Path)
		code, got := sessionDo(t, e, r.Method, path, bUser, bCSRF, "demo")
		_, unknown := sessionDo(t, e, r.Method, path, bUser, bCSRF, "nope")
		if code != 404 || strings.ReplaceAll(unknown, "nope", "demo") != got {
			t.Errorf("%s %s as B's user naming A: %d %s (an unknown organization: %s)", r.Method, r.Path, code, got, unknown)
		}
	}
}
