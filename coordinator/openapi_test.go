package coordinator

import (
	"context"
	"errors"
	"maps"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/go-json-experiment/json"

	cnmail "github.com/certnode/certnode/internal/mail"
	"github.com/certnode/certnode/internal/mail/mailtest"
	"github.com/certnode/certnode/internal/oastest"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// accountsTag marks the document's operations the coordinator serves.
const accountsTag = "accounts"

// conformance checks exchanges with a node against the public OpenAPI
// document (the one ingest serves), and records which operations had a
// success and an error validated.
type conformance struct {
	doc              *oastest.Doc
	base             string
	success, failure map[string]bool
}

// newConformance checks exchanges with the server at base (a node, or the
// proxy ingest puts in front of the coordinator).
func newConformance(t *testing.T, base string) *conformance {
	t.Helper()
	data, err := schemas.OpenAPIJSON()
	if err != nil {
		t.Fatal(err)
	}
	return &conformance{doc: oastest.Load(t, data, base, credentialsPresent), base: base,
		success: map[string]bool{}, failure: map[string]bool{}}
}

// credentialsPresent is what the document can say about credentials: that
// the request carries them. Whether they are good is the server's answer.
func credentialsPresent(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	r := in.RequestValidationInput.Request
	switch in.SecuritySchemeName {
	case "apiKey":
		if h := r.Header.Get("Authorization"); strings.HasPrefix(h, "Bearer ") && len(h) > len("Bearer ") {
			return nil
		}
	case "session":
		if c, err := r.Cookie(SessionCookie); err == nil && c.Value != "" {
			return nil
		}
	case "csrf":
		if r.Header.Get(CSRFHeader) != "" {
			return nil
		}
	}
	return errors.New("no " + in.SecuritySchemeName + " credentials")
}

// call is one request to an operation of the document.
type call struct {
	name         string
	as           *client
	method, path string
	body         string
	hdr          map[string]string // set, or removed when ""
	// offSpec: the request breaks the document, and the server refuses it.
	offSpec bool
	status  int
	code    string // the error code, for an error status
}

// expect sends x as its client would (cookies, CSRF token, headers),
// validates both sides against the document, and checks the status and
// error code.
func (k *conformance) expect(t *testing.T, x call) oastest.Result {
	t.Helper()
	r := k.doc.Exchange(t, x.as.hc, k.request(x), x.name, x.offSpec)
	switch {
	case !r.Conforms:
	case r.Status < 400:
		k.success[r.Op] = true
	default:
		k.failure[r.Op] = true
	}
	if r.Status != x.status {
		t.Fatalf("%s: %d %s, want %d", x.name, r.Status, r.Body, x.status)
	}
	if x.code != "" {
		var e struct {
			Error struct {
				Code string `json:"code"`
			} `json:"error"`
		}
		if err := json.Unmarshal([]byte(r.Body), &e, json.RejectUnknownMembers(false)); err != nil || e.Error.Code != x.code {
			t.Fatalf("%s: %s, want the error code %q", x.name, r.Body, x.code)
		}
	}
	return r
}

// request is x as its client sends it, but for the cookies its jar adds.
func (k *conformance) request(x call) *http.Request {
	req, _ := http.NewRequest(x.method, k.base+x.path, strings.NewReader(x.body))
	if x.body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if x.as.csrf != "" {
		req.Header.Set(CSRFHeader, x.as.csrf)
	}
	for h, v := range x.as.hdr {
		req.Header.Set(h, v)
	}
	for h, v := range x.hdr {
		if v == "" {
			req.Header.Del(h)
		} else {
			req.Header.Set(h, v)
		}
	}
	return req
}

// userFacing reports whether a route is for an organization's users and
// keys, and so belongs in the public document.
func userFacing(rt route) bool {
	_, path, _ := strings.Cut(rt.pattern, " ")
	return rt.org || path == "/v1/me" || strings.HasPrefix(path, "/v1/auth/")
}

// operatorOrNode reports whether a path is the operator's or the nodes'.
func operatorOrNode(path string) bool {
	return strings.HasPrefix(path, "/v1/admin/") || strings.HasPrefix(path, "/v1/node/")
}

// checkRoutes fails when the document and routes() disagree: a
// user-facing route without an operation tagged accounts, an operation
// tagged accounts the coordinator does not serve, or an operator or node
// route in the document. A route of neither kind must be classified.
func (k *conformance) checkRoutes(t *testing.T, rs []route) {
	ops := k.doc.Operations()
	served := map[string]bool{}
	for _, rt := range rs {
		_, path, _ := strings.Cut(rt.pattern, " ")
		switch {
		case userFacing(rt):
			served[rt.pattern] = true
			op, ok := ops[rt.pattern]
			switch {
			case !ok:
				t.Errorf("%s is served to users but has no operation in the OpenAPI document", rt.pattern)
			case !slices.Contains(op.Tags, accountsTag):
				t.Errorf("%s: the operation is not tagged %s", rt.pattern, accountsTag)
			case op.Security == nil:
				// The document's default is a tenant API key of any scope.
				t.Errorf("%s: the operation inherits the document's default security", rt.pattern)
			}
		case path == "/metrics":
			// The coordinator's own metrics, for its operator: ingest does
			// not pass it on (its /metrics is ingest's, documented there).
		case operatorOrNode(path):
			if _, ok := ops[rt.pattern]; ok {
				t.Errorf("%s is the operator's or a node's, yet in the public document", rt.pattern)
			}
		default:
			t.Errorf("%s is neither user-facing nor the operator's or a node's: say whether the public document has it", rt.pattern)
		}
	}
	for key, op := range ops {
		_, path, _ := strings.Cut(key, " ")
		if operatorOrNode(path) {
			t.Errorf("the public document has %s, an operator or node route", key)
		}
		if slices.Contains(op.Tags, accountsTag) && !served[key] {
			t.Errorf("the document has the account operation %s, which the coordinator does not serve to users", key)
		}
	}
	if len(served) == 0 {
		t.Fatal("routes() has no user-facing route; is userFacing right?")
	}
}

// fill gives a route's path values.
func fill(pattern string, values map[string]string) (method, path string) {
	method, path, _ = strings.Cut(pattern, " ")
	for k, v := range values {
		path = strings.ReplaceAll(path, "{"+k+"}", v)
	}
	return method, path
}

// csrfOf reads the CSRF token of a sign-in or /v1/me answer.
func csrfOf(t *testing.T, body string) string {
	t.Helper()
	var v struct {
		CSRF string `json:"csrf_token"`
	}
	if err := json.Unmarshal([]byte(body), &v, json.RejectUnknownMembers(false)); err != nil || v.CSRF == "" {
		t.Fatalf("no csrf_token in %s", body)
	}
	return v.CSRF
}

// TestOpenAPIAccounts drives every user-facing route of a node and
// validates each request and answer, errors included, against the public
// OpenAPI document; every such route needs a validated success and error,
// and the document must have exactly these routes, and none of the
// operator's or the nodes'.
func TestOpenAPIAccounts(t *testing.T) {
	n := soloNode(t)
	k := newConformance(t, "http://"+n.Addr())
	t.Run("the document has exactly the user-facing routes", func(t *testing.T) { k.checkRoutes(t, n.routes()) })

	op := operator(t, n)
	for _, org := range []string{"acme", "globex"} {
		op.must(201, "POST", "/v1/admin/orgs", `{"id":"`+org+`","name":"`+org+`"}`)
	}
	ids := map[string]string{}
	for _, u := range []struct{ name, role string }{{"ada", RoleOwner}, {"dev", RoleDeveloper}, {"bill", RoleBilling}, {"tmp", RoleViewer}} {
		ids[u.name] = createUser(op, u.name+"@acme.test")
		op.must(200, "PUT", "/v1/orgs/acme/members/"+ids[u.name], `{"role":"`+u.role+`"}`)
	}
	ids["lock"] = createUser(op, "lock@acme.test")
	var adminKey, signKey keyView
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/acme/keys", `{"scopes":["admin"]}`)), &adminKey)
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/acme/keys", `{"scopes":["sign"]}`)), &signKey)
	anon, ada, dev, bill := newClient(t, n), newClient(t, n), newClient(t, n), newClient(t, n)
	key, weak := newClient(t, n), newClient(t, n)
	key.hdr["Authorization"] = "Bearer " + adminKey.Key
	weak.hdr["Authorization"] = "Bearer " + signKey.Key
	const pw = "password-of-"
	login := func(t *testing.T, c *client, email, password string) {
		t.Helper()
		r := k.expect(t, call{name: "login " + email, as: c, method: "POST", path: "/v1/auth/login",
			body: `{"email":"` + email + `","password":"` + password + `"}`, status: 200})
		c.csrf = csrfOf(t, r.Body)
	}

	// A body each write would take, so that a request the document
	// refuses is refused for its credentials alone.
	samples := map[string]string{
		"PATCH /v1/orgs/{org}":                                      `{"name":"Acme"}`,
		"PUT /v1/orgs/{org}/members/{user}":                         `{"role":"viewer"}`,
		"POST /v1/orgs/{org}/invitations":                           `{"email":"x@acme.test","role":"viewer"}`,
		"POST /v1/orgs/{org}/keys":                                  `{"scopes":["sign"]}`,
		"POST /v1/orgs/{org}/producer-keys":                         `{}`,
		"POST /v1/orgs/{org}/producer-keys/{key}/rotate":            `{"overlap":"1h"}`,
		"POST /v1/orgs/{org}/keys/{key}/suspend":                    `{"reason":"r"}`,
		"POST /v1/orgs/{org}/webhooks/endpoints":                    `{"url":"https://hooks.example.test/in"}`,
		"PATCH /v1/orgs/{org}/webhooks/endpoints/{id}":              `{"enabled":false}`,
		"POST /v1/orgs/{org}/webhooks/endpoints/{id}/rotate-secret": `{"overlap":"1h"}`,
		"POST /v1/orgs/{org}/webhooks/endpoints/{id}/test":          `{}`,
		"POST /v1/orgs/{org}/reports":                               `{"name":"r","query":{"metrics":["requests"],"range":"last_7d"}}`,
		"PUT /v1/orgs/{org}/branding":                               `{"display_name":"Acme"}`,
		"PUT /v1/orgs/{org}/maintenance":                            `{"message":"Back soon"}`,
		"PATCH /v1/orgs/{org}/reports/{id}":                         `{"name":"r2"}`,
		"POST /v1/orgs/{org}/domains":                               `{"name":"samples.acme.example"}`,
		"POST /v1/orgs/{org}/email/domains":                         `{"domain":"mail.acme.test"}`,
		"PUT /v1/orgs/{org}/signing-keys/settings":                  `{"enabled":false}`,
		"PATCH /v1/orgs/{org}/api-settings":                         `{"webhook_receipt":"include"}`,
		"PATCH /v1/orgs/{org}/keys/{key}":                           `{"defaults":{}}`,
	}
	// onlyCredentials fails unless x, made with credentials (ada's session
	// and CSRF token, or the admin-scope key), would conform.
	onlyCredentials := func(t *testing.T, x call) {
		t.Helper()
		var errs []error
		for _, c := range []*client{ada, key} {
			y := x
			y.as, y.hdr = c, nil
			err := k.doc.Conforms(t, c.hc, k.request(y))
			if err == nil {
				return
			}
			errs = append(errs, err)
		}
		t.Errorf("%s: with credentials too, the request breaks the document: %v", x.name, errors.Join(errs...))
	}
	login(t, ada, "ada@acme.test", pw+"ada@acme.test")

	t.Run("credentials are required exactly where the document says", func(t *testing.T) {
		vals := map[string]string{"org": "acme", "user": ids["dev"], "id": "inv_x", "key": "cnk_x", "template": "invitation", "domain": "mail.acme.test"}
		for _, rt := range n.routes() {
			if !userFacing(rt) {
				continue
			}
			method, path := fill(rt.pattern, vals)
			x := call{name: rt.pattern + " without credentials", as: anon, method: method, path: path, offSpec: true}
			if !k.secured(rt.pattern) {
				// Anonymous: no body is what the document refuses, and the
				// server too.
				x.status, x.code = 400, "invalid"
				k.expect(t, x)
				continue
			}
			x.body, x.status, x.code = samples[rt.pattern], 401, "unauthorized"
			if op := k.doc.Operations()[rt.pattern]; x.body == "" && op.RequestBody != nil && op.RequestBody.Value.Required {
				t.Errorf("%s: no sample body", rt.pattern)
			}
			onlyCredentials(t, x)
			k.expect(t, x)
		}
	})

	t.Run("sign-in", func(t *testing.T) {
		for _, x := range []call{
			{name: "wrong password", body: `{"email":"ada@acme.test","password":"not-the-password"}`, status: 401, code: "invalid_credentials"},
			{name: "unknown email", body: `{"email":"nobody@acme.test","password":"not-the-password"}`, status: 401, code: "invalid_credentials"},
			{name: "a member the schema lacks", body: `{"email":"ada@acme.test","password":"x","remember":true}`, offSpec: true, status: 400, code: "invalid"},
			{name: "not JSON", body: `{"email":`, offSpec: true, status: 400, code: "invalid"},
		} {
			x.as, x.method, x.path = anon, "POST", "/v1/auth/login"
			k.expect(t, x)
		}
		login(t, dev, "DEV@acme.test", pw+"dev@acme.test")
		login(t, bill, "bill@acme.test", pw+"bill@acme.test")
		for range MaxFailedLogins {
			k.expect(t, call{name: "lock: wrong password", as: anon, method: "POST", path: "/v1/auth/login",
				body: `{"email":"lock@acme.test","password":"not-the-password"}`, status: 401, code: "invalid_credentials"})
		}
		// The document requires Retry-After on this answer.
		k.expect(t, call{name: "locked", as: anon, method: "POST", path: "/v1/auth/login",
			body: `{"email":"lock@acme.test","password":"` + pw + `lock@acme.test"}`, status: 429, code: "account_locked"})

		me := k.expect(t, call{name: "me", as: ada, method: "GET", path: "/v1/me", status: 200})
		if !strings.Contains(me.Body, `"org":"acme","user":"`+ids["ada"]+`","role":"owner"`) || csrfOf(t, me.Body) != ada.csrf {
			t.Fatalf("me: %s", me.Body)
		}
		// An API key is no session.
		k.expect(t, call{name: "me with an API key", as: key, method: "GET", path: "/v1/me", offSpec: true, status: 401, code: "unauthorized"})

		other := newClient(t, n)
		login(t, other, "dev@acme.test", pw+"dev@acme.test")
		u, _ := url.Parse(k.base)
		cookies := other.hc.Jar.Cookies(u)
		k.expect(t, call{name: "logout without the CSRF token", as: other, method: "POST", path: "/v1/auth/logout",
			hdr: map[string]string{CSRFHeader: ""}, offSpec: true, status: 403, code: "csrf"})
		k.expect(t, call{name: "logout", as: other, method: "POST", path: "/v1/auth/logout", status: 204})
		if len(other.hc.Jar.Cookies(u)) != 0 {
			t.Fatal("logout left the session cookie")
		}
		// The ended session's cookie, sent again.
		other.hc.Jar.SetCookies(u, cookies)
		k.expect(t, call{name: "logout of an ended session", as: other, method: "POST", path: "/v1/auth/logout", status: 401, code: "unauthorized"})
		k.expect(t, call{name: "me of an ended session", as: other, method: "GET", path: "/v1/me", status: 401, code: "unauthorized"})
	})

	t.Run("a session's writes need its CSRF token", func(t *testing.T) {
		vals := map[string]string{"org": "acme", "user": ids["tmp"], "id": "inv_x", "key": "cnk_x", "template": "invitation", "domain": "mail.acme.test"}
		for _, rt := range n.routes() {
			method, path := fill(rt.pattern, vals)
			if !userFacing(rt) || safeMethod(method) || !k.secured(rt.pattern) {
				continue
			}
			x := call{name: rt.pattern + " without the CSRF token", as: ada, method: method, path: path, body: samples[rt.pattern],
				hdr: map[string]string{CSRFHeader: ""}, offSpec: true, status: 403, code: "csrf"}
			onlyCredentials(t, x)
			k.expect(t, x)
		}
		// The document cannot say where a request comes from: a session's
		// write from another origin conforms, and is refused.
		k.expect(t, call{name: "a write from another origin", as: ada, method: "PATCH", path: "/v1/orgs/acme",
			hdr: map[string]string{"Origin": "https://evil.test"}, body: `{"name":"pwned"}`, status: 403, code: "csrf"})
	})

	t.Run("organization", func(t *testing.T) {
		r := k.expect(t, call{name: "get as the owner", as: ada, method: "GET", path: "/v1/orgs/acme", status: 200})
		if !strings.Contains(r.Body, `"role":"owner"`) {
			t.Fatalf("org: %s", r.Body)
		}
		r = k.expect(t, call{name: "get with an admin-scope key", as: key, method: "GET", path: "/v1/orgs/acme", status: 200})
		if !strings.Contains(r.Body, `"role":"admin"`) {
			t.Fatalf("org: %s", r.Body)
		}
		for _, x := range []call{
			{name: "another organization", as: ada, method: "GET", path: "/v1/orgs/globex", status: 404, code: "not_found"},
			{name: "no such organization", as: key, method: "GET", path: "/v1/orgs/nothing", status: 404, code: "not_found"},
			{name: "a key without the admin scope", as: weak, method: "GET", path: "/v1/orgs/acme", status: 401, code: "unauthorized"},
			{name: "change", as: ada, method: "PATCH", path: "/v1/orgs/acme", status: 200,
				body: `{"name":"Acme Inc.","settings":{"display_name":"Acme","logo_url":"https://acme.test/logo.png","brand_color":"#112233","support_email":"help@acme.test","retention_days":30,"webhook_retry_schedule":["5s","1m"]}}`},
			{name: "change with a key", as: key, method: "PATCH", path: "/v1/orgs/acme", body: `{"name":"Acme"}`, status: 200},
			{name: "change the plan", as: ada, method: "PATCH", path: "/v1/orgs/acme", body: `{"plan":"enterprise"}`, offSpec: true, status: 400, code: "invalid"},
			{name: "a retry schedule that is not durations", as: ada, method: "PATCH", path: "/v1/orgs/acme",
				body: `{"settings":{"webhook_retry_schedule":["soon"]}}`, status: 400, code: "invalid"},
			{name: "change as a developer", as: dev, method: "PATCH", path: "/v1/orgs/acme", body: `{"name":"Dev's"}`, status: 403, code: "forbidden_role"},
			{name: "change another organization", as: ada, method: "PATCH", path: "/v1/orgs/globex", body: `{"name":"pwned"}`, status: 404, code: "not_found"},
			{name: "a body over 1 MiB", as: ada, method: "PATCH", path: "/v1/orgs/acme",
				body: `{"settings":{"webhook_retry_schedule":["` + strings.Repeat("1", maxBody) + `s"]}}`, status: 413, code: "too_large"},
			{name: "a logo that is not a URL", as: ada, method: "PATCH", path: "/v1/orgs/acme", body: `{"settings":{"logo_url":"logo.png"}}`, offSpec: true, status: 400, code: "invalid"},
		} {
			k.expect(t, x)
		}
		r = k.expect(t, call{name: "get as billing", as: bill, method: "GET", path: "/v1/orgs/acme", status: 200})
		var o orgView
		if err := json.Unmarshal([]byte(r.Body), &o); err != nil || o.Name != "Acme" || o.Settings.RetentionDays != 30 || o.Role != RoleBilling {
			t.Fatalf("org after the changes: %v %s", err, r.Body)
		}
	})

	t.Run("branding", func(t *testing.T) {
		full := `{"display_name":"Acme","logo_url":"https://acme.test/logo.png","favicon_url":"https://acme.test/favicon.ico",` +
			`"colors":{"primary":"#112233","accent":"#445566","background":"#ffffff","text":"#000000"},"support_email":"help@acme.test",` +
			`"support_url":"https://acme.test/help","support_message":"We answer within the hour.","custom_css":".cn-header { font-weight: 700 }",` +
			`"error_pages":{"404":"<h1>{{.Title}}</h1>","maintenance":"<p>{{.Message}}</p>"}}`
		r := k.expect(t, call{name: "replace", as: ada, method: "PUT", path: "/v1/orgs/acme/branding", body: full, status: 200})
		if !strings.Contains(r.Body, `"custom_css":".cn-header { font-weight: 700 }"`) {
			t.Fatalf("branding: %s", r.Body)
		}
		r = k.expect(t, call{name: "read as billing", as: bill, method: "GET", path: "/v1/orgs/acme/branding", status: 200})
		if !strings.Contains(r.Body, `"accent":"#445566"`) {
			t.Fatalf("branding: %s", r.Body)
		}
		// The organization's settings carry it, brand_color included; the
		// rest of the settings are untouched.
		r = k.expect(t, call{name: "the organization with its branding", as: ada, method: "GET", path: "/v1/orgs/acme", status: 200})
		if !strings.Contains(r.Body, `"brand_color":"#112233"`) || !strings.Contains(r.Body, `"retention_days":30`) {
			t.Fatalf("org: %s", r.Body)
		}
		for _, x := range []call{
			{name: "CSS that loads a URL", as: ada, method: "PUT", path: "/v1/orgs/acme/branding", body: `{"custom_css":"a { background: url(https://evil.test/x) }"}`, status: 400, code: "invalid"},
			{name: "a template that does not parse", as: ada, method: "PUT", path: "/v1/orgs/acme/branding", body: `{"error_pages":{"5xx":"{{.Title"}}`, status: 400, code: "invalid"},
			{name: "a colour that is not #rrggbb", as: ada, method: "PUT", path: "/v1/orgs/acme/branding", body: `{"colors":{"primary":"red"}}`, offSpec: true, status: 400, code: "invalid"},
			{name: "replace as a developer", as: dev, method: "PUT", path: "/v1/orgs/acme/branding", body: `{}`, status: 403, code: "forbidden_role"},
			{name: "another organization's", as: key, method: "GET", path: "/v1/orgs/globex/branding", status: 404, code: "not_found"},
		} {
			r := k.expect(t, x)
			if x.name == "CSS that loads a URL" && !strings.Contains(r.Body, "url() is not allowed") {
				t.Fatalf("the refusal does not say what: %s", r.Body)
			}
		}
		r = k.expect(t, call{name: "maintenance on", as: key, method: "PUT", path: "/v1/orgs/acme/maintenance",
			body: `{"message":"Upgrading the database","until":"` + time.Now().Add(time.Hour).UTC().Format(time.RFC3339) + `"}`, status: 200})
		if !strings.Contains(r.Body, `"since"`) {
			t.Fatalf("maintenance: %s", r.Body)
		}
		if r := k.expect(t, call{name: "the organization in maintenance", as: bill, method: "GET", path: "/v1/orgs/acme", status: 200}); !strings.Contains(r.Body, `"maintenance":{"message":"Upgrading the database"`) {
			t.Fatalf("org: %s", r.Body)
		}
		for _, x := range []call{
			{name: "maintenance that ended already", as: ada, method: "PUT", path: "/v1/orgs/acme/maintenance", body: `{"message":"x","until":"2001-01-01T00:00:00Z"}`, status: 400, code: "invalid"},
			{name: "maintenance without a message", as: ada, method: "PUT", path: "/v1/orgs/acme/maintenance", body: `{"message":""}`, offSpec: true, status: 400, code: "invalid"},
			{name: "maintenance as a developer", as: dev, method: "DELETE", path: "/v1/orgs/acme/maintenance", status: 403, code: "forbidden_role"},
			{name: "maintenance off", as: ada, method: "DELETE", path: "/v1/orgs/acme/maintenance", status: 204},
		} {
			k.expect(t, x)
		}
		if r := k.expect(t, call{name: "the organization after maintenance", as: bill, method: "GET", path: "/v1/orgs/acme", status: 200}); strings.Contains(r.Body, `"maintenance":{`) {
			t.Fatalf("org: %s", r.Body)
		}
	})

	t.Run("members", func(t *testing.T) {
		r := k.expect(t, call{name: "list as billing", as: bill, method: "GET", path: "/v1/orgs/acme/members", status: 200})
		if strings.Count(r.Body, `"user":"usr_`) != 4 {
			t.Fatalf("members: %s", r.Body)
		}
		k.expect(t, call{name: "list another organization's", as: key, method: "GET", path: "/v1/orgs/globex/members", status: 404, code: "not_found"})
		put := k.expect(t, call{name: "set a role", as: ada, method: "PUT", path: "/v1/orgs/acme/members/" + ids["tmp"], body: `{"role":"developer"}`, status: 200})
		// The answer is the membership as it is now kept.
		var got membershipView
		var listed struct {
			Members []membershipView `json:"members"`
		}
		json.Unmarshal([]byte(put.Body), &got)
		json.Unmarshal([]byte(k.expect(t, call{name: "list", as: ada, method: "GET", path: "/v1/orgs/acme/members", status: 200}).Body), &listed)
		i := slices.IndexFunc(listed.Members, func(m membershipView) bool { return m.User == ids["tmp"] })
		if i < 0 || got.Role != RoleDeveloper || !got.CreatedAt.Equal(listed.Members[i].CreatedAt) {
			t.Fatalf("PUT answered %s; the list has %+v", put.Body, listed.Members)
		}
		for _, x := range []call{
			{name: "a role that does not exist", as: ada, method: "PUT", path: "/v1/orgs/acme/members/" + ids["tmp"], body: `{"role":"boss"}`, offSpec: true, status: 400, code: "invalid"},
			{name: "someone not a member", as: ada, method: "PUT", path: "/v1/orgs/acme/members/" + ids["lock"], body: `{"role":"viewer"}`, status: 404, code: "not_found"},
			{name: "the last owner steps down", as: ada, method: "PUT", path: "/v1/orgs/acme/members/" + ids["ada"], body: `{"role":"admin"}`, status: 409, code: "conflict"},
			{name: "an admin makes an owner", as: key, method: "PUT", path: "/v1/orgs/acme/members/" + ids["tmp"], body: `{"role":"owner"}`, status: 403, code: "forbidden_role"},
			{name: "a developer sets a role", as: dev, method: "PUT", path: "/v1/orgs/acme/members/" + ids["tmp"], body: `{"role":"viewer"}`, status: 403, code: "forbidden_role"},
			{name: "an admin removes the owner", as: key, method: "DELETE", path: "/v1/orgs/acme/members/" + ids["ada"], status: 403, code: "forbidden_role"},
			{name: "the last owner leaves", as: ada, method: "DELETE", path: "/v1/orgs/acme/members/" + ids["ada"], status: 409, code: "conflict"},
			{name: "remove", as: key, method: "DELETE", path: "/v1/orgs/acme/members/" + ids["tmp"], status: 204},
			{name: "remove again", as: key, method: "DELETE", path: "/v1/orgs/acme/members/" + ids["tmp"], status: 404, code: "not_found"},
		} {
			k.expect(t, x)
		}
	})

	t.Run("invitations", func(t *testing.T) {
		var inv invitationView
		r := k.expect(t, call{name: "invite", as: ada, method: "POST", path: "/v1/orgs/acme/invitations", body: `{"email":"New@acme.test","role":"developer"}`, status: 201})
		json.Unmarshal([]byte(r.Body), &inv)
		for _, x := range []call{
			{name: "invite as a developer", as: dev, method: "POST", path: "/v1/orgs/acme/invitations", body: `{"email":"x@acme.test","role":"viewer"}`, status: 403, code: "forbidden_role"},
			{name: "an admin invites an owner", as: key, method: "POST", path: "/v1/orgs/acme/invitations", body: `{"email":"x@acme.test","role":"owner"}`, status: 403, code: "forbidden_role"},
			{name: "a role that does not exist", as: ada, method: "POST", path: "/v1/orgs/acme/invitations", body: `{"email":"x@acme.test","role":"boss"}`, offSpec: true, status: 400, code: "invalid"},
			{name: "not an email", as: ada, method: "POST", path: "/v1/orgs/acme/invitations", body: `{"email":"not an email","role":"viewer"}`, status: 400, code: "invalid"},
			{name: "list as billing", as: bill, method: "GET", path: "/v1/orgs/acme/invitations", status: 403, code: "forbidden_role"},
			// The document forbids a token in the list.
			{name: "list", as: key, method: "GET", path: "/v1/orgs/acme/invitations", status: 200},
			{name: "accept an unknown token", as: anon, method: "POST", path: "/v1/auth/invitations/accept",
				body: `{"token":"cni_nothing","name":"New","password":"` + pw + `new"}`, status: 404, code: "not_found"},
			{name: "accept with a short password", as: anon, method: "POST", path: "/v1/auth/invitations/accept",
				body: `{"token":"` + inv.Token + `","name":"New","password":"short"}`, offSpec: true, status: 400, code: "invalid"},
			{name: "accept as a new user", as: anon, method: "POST", path: "/v1/auth/invitations/accept",
				body: `{"token":"` + inv.Token + `","name":"New","password":"` + pw + `new"}`, status: 201},
			{name: "accept again", as: anon, method: "POST", path: "/v1/auth/invitations/accept",
				body: `{"token":"` + inv.Token + `","name":"New","password":"` + pw + `new"}`, status: 410, code: "gone"},
		} {
			k.expect(t, x)
		}
		newbie := newClient(t, n)
		login(t, newbie, "new@acme.test", pw+"new")
		k.expect(t, call{name: "the new member reads the organization", as: newbie, method: "GET", path: "/v1/orgs/acme", status: 200})

		// An existing user accepts with their own password; a member
		// already cannot.
		r = k.expect(t, call{name: "invite a member", as: ada, method: "POST", path: "/v1/orgs/acme/invitations", body: `{"email":"dev@acme.test","role":"viewer"}`, status: 201})
		json.Unmarshal([]byte(r.Body), &inv)
		for _, x := range []call{
			{name: "accept with another's password", body: `{"token":"` + inv.Token + `","password":"not-devs-password"}`, status: 401, code: "invalid_credentials"},
			{name: "accept as a member already", body: `{"token":"` + inv.Token + `","password":"` + pw + `dev@acme.test"}`, status: 409, code: "conflict"},
		} {
			x.as, x.method, x.path = anon, "POST", "/v1/auth/invitations/accept"
			k.expect(t, x)
		}
		for _, x := range []call{
			{name: "revoke", as: key, method: "DELETE", path: "/v1/orgs/acme/invitations/" + inv.ID, status: 204},
			{name: "revoke again", as: key, method: "DELETE", path: "/v1/orgs/acme/invitations/" + inv.ID, status: 409, code: "conflict"},
			{name: "revoke through another organization", as: op, method: "DELETE", path: "/v1/orgs/globex/invitations/" + inv.ID, status: 404, code: "not_found"},
			{name: "accept a revoked one", as: anon, method: "POST", path: "/v1/auth/invitations/accept",
				body: `{"token":"` + inv.Token + `","password":"` + pw + `dev@acme.test"}`, status: 410, code: "gone"},
		} {
			k.expect(t, x)
		}
	})

	t.Run("password reset", func(t *testing.T) {
		var reset struct {
			Token string `json:"token"`
		}
		json.Unmarshal([]byte(op.must(201, "POST", "/v1/admin/users/"+ids["bill"]+"/password-reset", "")), &reset, json.RejectUnknownMembers(false))
		for _, x := range []call{
			{name: "an unknown token", body: `{"token":"cnr_nothing","password":"a-new-password-for-bill"}`, status: 404, code: "not_found"},
			{name: "a short password", body: `{"token":"` + reset.Token + `","password":"short"}`, offSpec: true, status: 400, code: "invalid"},
			{name: "reset", body: `{"token":"` + reset.Token + `","password":"a-new-password-for-bill"}`, status: 204},
			{name: "reset again", body: `{"token":"` + reset.Token + `","password":"another-password-for-bill"}`, status: 410, code: "gone"},
		} {
			x.as, x.method, x.path = anon, "POST", "/v1/auth/password-reset"
			k.expect(t, x)
		}
		// The reset ended bill's session.
		k.expect(t, call{name: "me after the reset", as: bill, method: "GET", path: "/v1/me", status: 401, code: "unauthorized"})
		login(t, bill, "bill@acme.test", "a-new-password-for-bill")
	})

	t.Run("API keys", func(t *testing.T) {
		var created keyView
		r := k.expect(t, call{name: "create", as: dev, method: "POST", path: "/v1/orgs/acme/keys", status: 201,
			body: `{"name":"ci","scopes":["sign","verify"],"cidrs":["10.0.0.0/8"],"expires_at":"2099-01-01T00:00:00Z"}`})
		json.Unmarshal([]byte(r.Body), &created)
		for _, x := range []call{
			{name: "an admin-scope key as a developer", as: dev, method: "POST", path: "/v1/orgs/acme/keys", body: `{"scopes":["admin"]}`, status: 403, code: "forbidden_role"},
			{name: "create as billing", as: bill, method: "POST", path: "/v1/orgs/acme/keys", body: `{"scopes":["sign"]}`, status: 403, code: "forbidden_role"},
			{name: "no scope", as: dev, method: "POST", path: "/v1/orgs/acme/keys", body: `{"scopes":[]}`, offSpec: true, status: 400, code: "invalid"},
			{name: "a scope that does not exist", as: dev, method: "POST", path: "/v1/orgs/acme/keys", body: `{"scopes":["everything"]}`, offSpec: true, status: 400, code: "invalid"},
			{name: "not a CIDR", as: dev, method: "POST", path: "/v1/orgs/acme/keys", body: `{"scopes":["sign"],"cidrs":["nope"]}`, status: 400, code: "invalid"},
			{name: "list as billing", as: bill, method: "GET", path: "/v1/orgs/acme/keys", status: 403, code: "forbidden_role"},
			{name: "resume a key not suspended", as: dev, method: "POST", path: "/v1/orgs/acme/keys/" + created.ID + "/resume", status: 409, code: "conflict"},
			{name: "suspend", as: dev, method: "POST", path: "/v1/orgs/acme/keys/" + created.ID + "/suspend", body: `{"reason":"security.alert sa_1"}`, status: 200},
			{name: "suspend again", as: dev, method: "POST", path: "/v1/orgs/acme/keys/" + created.ID + "/suspend", status: 409, code: "conflict"},
			{name: "suspend as billing", as: bill, method: "POST", path: "/v1/orgs/acme/keys/" + created.ID + "/suspend", status: 403, code: "forbidden_role"},
			{name: "suspend an unknown key", as: dev, method: "POST", path: "/v1/orgs/acme/keys/cnk_nothing/suspend", status: 404, code: "not_found"},
			{name: "resume", as: dev, method: "POST", path: "/v1/orgs/acme/keys/" + created.ID + "/resume", status: 200},
			{name: "revoke", as: dev, method: "DELETE", path: "/v1/orgs/acme/keys/" + created.ID, status: 204},
			{name: "suspend a revoked key", as: dev, method: "POST", path: "/v1/orgs/acme/keys/" + created.ID + "/suspend", status: 409, code: "conflict"},
			{name: "revoke again", as: dev, method: "DELETE", path: "/v1/orgs/acme/keys/" + created.ID, status: 409, code: "conflict"},
			{name: "revoke an unknown key", as: dev, method: "DELETE", path: "/v1/orgs/acme/keys/cnk_nothing", status: 404, code: "not_found"},
		} {
			k.expect(t, x)
		}
		for _, path := range []string{"/v1/orgs/acme/keys", "/v1/orgs/acme/keys?consistent=true"} {
			// The document forbids a secret in the list.
			r := k.expect(t, call{name: "list " + path, as: dev, method: "GET", path: path, status: 200})
			if !strings.Contains(r.Body, created.ID) || !strings.Contains(r.Body, `"revoked_at"`) {
				t.Fatalf("keys: %s", r.Body)
			}
		}
	})

	t.Run("producer keys", func(t *testing.T) {
		var a, b producerKeyView
		json.Unmarshal([]byte(k.expect(t, call{name: "create without a body", as: ada, method: "POST", path: "/v1/orgs/acme/producer-keys", status: 201}).Body), &a)
		json.Unmarshal([]byte(k.expect(t, call{name: "create with {}", as: key, method: "POST", path: "/v1/orgs/acme/producer-keys", body: `{}`, status: 201}).Body), &b)
		var rotated producerKeyView
		r := k.expect(t, call{name: "rotate", as: ada, method: "POST", path: "/v1/orgs/acme/producer-keys/" + a.ID + "/rotate", body: `{"overlap":"1h"}`, status: 201})
		json.Unmarshal([]byte(r.Body), &rotated)
		for _, x := range []call{
			{name: "create with a member", as: ada, method: "POST", path: "/v1/orgs/acme/producer-keys", body: `{"name":"x"}`, offSpec: true, status: 400, code: "invalid"},
			{name: "create as a developer", as: dev, method: "POST", path: "/v1/orgs/acme/producer-keys", status: 403, code: "forbidden_role"},
			{name: "rotate without a body", as: ada, method: "POST", path: "/v1/orgs/acme/producer-keys/" + rotated.ID + "/rotate", status: 201},
			{name: "rotate with an overlap that is not a duration", as: ada, method: "POST", path: "/v1/orgs/acme/producer-keys/" + b.ID + "/rotate", body: `{"overlap":"forever"}`, status: 400, code: "invalid"},
			{name: "rotate an unknown key", as: ada, method: "POST", path: "/v1/orgs/acme/producer-keys/pk_nothing/rotate", status: 404, code: "not_found"},
			{name: "list as a developer", as: dev, method: "GET", path: "/v1/orgs/acme/producer-keys", status: 200},
			{name: "list as billing", as: bill, method: "GET", path: "/v1/orgs/acme/producer-keys?consistent=true", status: 403, code: "forbidden_role"},
			{name: "revoke", as: ada, method: "DELETE", path: "/v1/orgs/acme/producer-keys/" + b.ID, status: 204},
			{name: "revoke again", as: ada, method: "DELETE", path: "/v1/orgs/acme/producer-keys/" + b.ID, status: 409, code: "conflict"},
			{name: "rotate a revoked key", as: ada, method: "POST", path: "/v1/orgs/acme/producer-keys/" + b.ID + "/rotate", status: 409, code: "conflict"},
			{name: "revoke an unknown key", as: ada, method: "DELETE", path: "/v1/orgs/acme/producer-keys/pk_nothing", status: 404, code: "not_found"},
		} {
			k.expect(t, x)
		}
		r = k.expect(t, call{name: "list", as: key, method: "GET", path: "/v1/orgs/acme/producer-keys?consistent=true", status: 200})
		if strings.Count(r.Body, `"id":"pk_`) != 4 || !strings.Contains(r.Body, `"expires_at"`) {
			t.Fatalf("producer keys: %s", r.Body)
		}
	})

	t.Run("webhook endpoints", func(t *testing.T) {
		var a, b endpointView
		json.Unmarshal([]byte(k.expect(t, call{name: "create", as: ada, method: "POST", path: "/v1/orgs/acme/webhooks/endpoints",
			body: `{"url":"https://hooks.example.test/in","event_types":["receipt.signed"],"headers":{"X-Team":"billing"}}`, status: 201}).Body), &a)
		json.Unmarshal([]byte(k.expect(t, call{name: "create with a secret", as: key, method: "POST", path: "/v1/orgs/acme/webhooks/endpoints",
			body: `{"url":"http://127.0.0.1:9/b","secret":"whsec_MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIz"}`, status: 201}).Body), &b)
		if a.Secret == "" || b.Secret != "whsec_MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIz" {
			t.Fatalf("secrets: %q %q", a.Secret, b.Secret)
		}
		for _, x := range []call{
			{name: "create without a url", as: ada, method: "POST", path: "/v1/orgs/acme/webhooks/endpoints", body: `{}`, offSpec: true, status: 400, code: "invalid"},
			{name: "create with a bad url", as: ada, method: "POST", path: "/v1/orgs/acme/webhooks/endpoints", body: `{"url":"ftp://x"}`, status: 400, code: "invalid"},
			{name: "create with an unknown event type", as: ada, method: "POST", path: "/v1/orgs/acme/webhooks/endpoints", body: `{"url":"https://x.test","event_types":["nope"]}`, offSpec: true, status: 400, code: "invalid"},
			{name: "create with a reserved header", as: ada, method: "POST", path: "/v1/orgs/acme/webhooks/endpoints", body: `{"url":"https://x.test","headers":{"webhook-signature":"v1,x"}}`, status: 400, code: "invalid"},
			{name: "create as billing", as: bill, method: "POST", path: "/v1/orgs/acme/webhooks/endpoints", body: `{"url":"https://x.test"}`, status: 403, code: "forbidden_role"},
			{name: "list as billing", as: bill, method: "GET", path: "/v1/orgs/acme/webhooks/endpoints", status: 403, code: "forbidden_role"},
			{name: "get", as: dev, method: "GET", path: "/v1/orgs/acme/webhooks/endpoints/" + a.ID, status: 200},
			{name: "get an unknown one", as: dev, method: "GET", path: "/v1/orgs/acme/webhooks/endpoints/ep_nothing", status: 404, code: "not_found"},
			{name: "disable", as: dev, method: "PATCH", path: "/v1/orgs/acme/webhooks/endpoints/" + a.ID, body: `{"enabled":false,"description":"paused"}`, status: 200},
			{name: "change the secret by PATCH", as: dev, method: "PATCH", path: "/v1/orgs/acme/webhooks/endpoints/" + a.ID, body: `{"secret":"whsec_MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIz"}`, offSpec: true, status: 400, code: "invalid"},
			{name: "rotate", as: ada, method: "POST", path: "/v1/orgs/acme/webhooks/endpoints/" + a.ID + "/rotate-secret", body: `{"overlap":"1h"}`, status: 200},
			{name: "rotate without a body", as: ada, method: "POST", path: "/v1/orgs/acme/webhooks/endpoints/" + b.ID + "/rotate-secret", status: 200},
			{name: "rotate with a bad overlap", as: ada, method: "POST", path: "/v1/orgs/acme/webhooks/endpoints/" + a.ID + "/rotate-secret", body: `{"overlap":"forever"}`, status: 400, code: "invalid"},
			// Only loopback literals here: refused before any packet or lookup.
			{name: "test a loopback endpoint", as: dev, method: "POST", path: "/v1/orgs/acme/webhooks/endpoints/" + b.ID + "/test", status: 200},
			{name: "test with a member", as: dev, method: "POST", path: "/v1/orgs/acme/webhooks/endpoints/" + b.ID + "/test", body: `{"x":1}`, offSpec: true, status: 400, code: "invalid"},
			{name: "test an unknown endpoint", as: dev, method: "POST", path: "/v1/orgs/acme/webhooks/endpoints/ep_nothing/test", status: 404, code: "not_found"},
			{name: "delete", as: ada, method: "DELETE", path: "/v1/orgs/acme/webhooks/endpoints/" + b.ID, status: 204},
			{name: "delete again", as: ada, method: "DELETE", path: "/v1/orgs/acme/webhooks/endpoints/" + b.ID, status: 404, code: "not_found"},
		} {
			k.expect(t, x)
		}
		r := k.expect(t, call{name: "list", as: dev, method: "GET", path: "/v1/orgs/acme/webhooks/endpoints", status: 200})
		if strings.Count(r.Body, `"id":"ep_`) != 1 || !strings.Contains(r.Body, `"secret_rotation_ends_at"`) || strings.Contains(r.Body, "whsec_") {
			t.Fatalf("endpoints: %s", r.Body)
		}
	})

	t.Run("reports", func(t *testing.T) {
		var a struct {
			ID string `json:"id"`
		}
		json.Unmarshal([]byte(k.expect(t, call{name: "create", as: dev, method: "POST", path: "/v1/orgs/acme/reports",
			body:   `{"name":"Failures by reason","query":{"metrics":["requests"],"group_by":"reason","filters":[{"dim":"status","values":["invalid","failed"]}],"range":"last_7d"},"chart":"bar","schedule":"daily"}`,
			status: 201}).Body), &a, json.RejectUnknownMembers(false))
		for _, x := range []call{
			{name: "create with metrics of two sources", as: dev, method: "POST", path: "/v1/orgs/acme/reports", body: `{"name":"x","query":{"metrics":["requests","webhook_attempts"],"range":"last_7d"}}`, status: 400, code: "invalid"},
			{name: "create with an unknown range", as: dev, method: "POST", path: "/v1/orgs/acme/reports", body: `{"name":"x","query":{"metrics":["requests"],"range":"forever"}}`, offSpec: true, status: 400, code: "invalid"},
			{name: "create custom without from", as: dev, method: "POST", path: "/v1/orgs/acme/reports", body: `{"name":"x","query":{"metrics":["requests"],"range":"custom"}}`, status: 400, code: "invalid"},
			{name: "create without a name", as: dev, method: "POST", path: "/v1/orgs/acme/reports", body: `{"query":{"metrics":["requests"],"range":"last_7d"}}`, status: 400, code: "invalid"},
			{name: "create as billing", as: bill, method: "POST", path: "/v1/orgs/acme/reports", body: `{"name":"x","query":{"metrics":["requests"],"range":"last_7d"}}`, status: 403, code: "forbidden_role"},
			{name: "list as billing", as: bill, method: "GET", path: "/v1/orgs/acme/reports", status: 200},
			{name: "get", as: bill, method: "GET", path: "/v1/orgs/acme/reports/" + a.ID, status: 200},
			{name: "get an unknown one", as: dev, method: "GET", path: "/v1/orgs/acme/reports/rpt_nothing", status: 404, code: "not_found"},
			{name: "rename", as: dev, method: "PATCH", path: "/v1/orgs/acme/reports/" + a.ID, body: `{"name":"Reasons","schedule":"weekly"}`, status: 200},
			{name: "change to a bad chart", as: dev, method: "PATCH", path: "/v1/orgs/acme/reports/" + a.ID, body: `{"chart":"pie"}`, offSpec: true, status: 400, code: "invalid"},
			{name: "delete as billing", as: bill, method: "DELETE", path: "/v1/orgs/acme/reports/" + a.ID, status: 403, code: "forbidden_role"},
		} {
			k.expect(t, x)
		}
		r := k.expect(t, call{name: "list", as: dev, method: "GET", path: "/v1/orgs/acme/reports", status: 200})
		if !strings.Contains(r.Body, `"name":"Reasons"`) || !strings.Contains(r.Body, `"schedule":"weekly"`) || !strings.Contains(r.Body, `"group_by":"reason"`) {
			t.Fatalf("reports: %s", r.Body)
		}
		k.expect(t, call{name: "delete", as: ada, method: "DELETE", path: "/v1/orgs/acme/reports/" + a.ID, status: 204})
		k.expect(t, call{name: "delete again", as: ada, method: "DELETE", path: "/v1/orgs/acme/reports/" + a.ID, status: 404, code: "not_found"})
	})

	t.Run("domains", func(t *testing.T) {
		var d domainView
		json.Unmarshal([]byte(k.expect(t, call{name: "add", as: ada, method: "POST", path: "/v1/orgs/acme/domains", body: `{"name":"API.Conformance.Example"}`, status: 201}).Body), &d)
		for _, x := range []call{
			{name: "add a wildcard", as: ada, method: "POST", path: "/v1/orgs/acme/domains", body: `{"name":"*.conformance.example"}`, status: 400, code: "invalid"},
			{name: "add an unknown verification", as: ada, method: "POST", path: "/v1/orgs/acme/domains", body: `{"name":"x.conformance.example","verification":"email"}`, offSpec: true, status: 400, code: "invalid"},
			{name: "add it again", as: ada, method: "POST", path: "/v1/orgs/acme/domains", body: `{"name":"api.conformance.example"}`, status: 409, code: "conflict"},
			{name: "add as a developer", as: dev, method: "POST", path: "/v1/orgs/acme/domains", body: `{"name":"dev.conformance.example"}`, status: 403, code: "forbidden_role"},
			{name: "list as billing", as: bill, method: "GET", path: "/v1/orgs/acme/domains", status: 200},
			{name: "get", as: bill, method: "GET", path: "/v1/orgs/acme/domains/api.conformance.example", status: 200},
			{name: "get an unknown one", as: ada, method: "GET", path: "/v1/orgs/acme/domains/nothing.example", status: 404, code: "not_found"},
			{name: "verify without the record", as: key, method: "POST", path: "/v1/orgs/acme/domains/api.conformance.example/verify", status: 422, code: "verification_failed"},
			{name: "verify as a developer", as: dev, method: "POST", path: "/v1/orgs/acme/domains/api.conformance.example/verify", status: 403, code: "forbidden_role"},
		} {
			k.expect(t, x)
		}
		testDNS.set("_certnode-challenge.api.conformance.example", "certnode-verify="+d.Token)
		r := k.expect(t, call{name: "verify", as: ada, method: "POST", path: "/v1/orgs/acme/domains/api.conformance.example/verify", status: 200})
		if !strings.Contains(r.Body, `"state":"verified"`) {
			t.Fatalf("verify: %s", r.Body)
		}
		k.expect(t, call{name: "delete as billing", as: bill, method: "DELETE", path: "/v1/orgs/acme/domains/api.conformance.example", status: 403, code: "forbidden_role"})
		k.expect(t, call{name: "delete", as: ada, method: "DELETE", path: "/v1/orgs/acme/domains/api.conformance.example", status: 204})
		k.expect(t, call{name: "delete again", as: ada, method: "DELETE", path: "/v1/orgs/acme/domains/api.conformance.example", status: 404, code: "not_found"})
	})

	t.Run("email", func(t *testing.T) {
		n.node.cfg.Resolver = &cnmail.Resolver{Addr: mailtest.StartDNS(t).Addr}
		nodeC := nodeCaller(t, n)
		for _, x := range []call{
			{name: "preview", as: dev, method: "POST", path: "/v1/orgs/acme/email/templates/invitation/preview", status: 200},
			{name: "preview unsaved settings", as: ada, method: "POST", path: "/v1/orgs/acme/email/templates/quota_warning/preview",
				body: `{"settings":{"display_name":"Acme Rockets","brand_color":"#ff6600"}}`, status: 200},
			{name: "preview a bad colour", as: ada, method: "POST", path: "/v1/orgs/acme/email/templates/quota_warning/preview",
				body: `{"settings":{"brand_color":"red"}}`, offSpec: true, status: 400, code: "invalid"},
			{name: "preview an unknown template", as: ada, method: "POST", path: "/v1/orgs/acme/email/templates/nope/preview", offSpec: true, status: 404, code: "not_found"},
			{name: "invite by email", as: ada, method: "POST", path: "/v1/orgs/acme/invitations", body: `{"email":"mailed@acme.test","role":"viewer","send_email":true}`, status: 201},
			{name: "messages", as: ada, method: "GET", path: "/v1/orgs/acme/email/messages?status=queued", status: 200},
			{name: "messages, limit 0", as: ada, method: "GET", path: "/v1/orgs/acme/email/messages?limit=0", offSpec: true, status: 400, code: "invalid"},
			{name: "messages as a developer", as: dev, method: "GET", path: "/v1/orgs/acme/email/messages", status: 403, code: "forbidden_role"},
			{name: "add a domain", as: ada, method: "POST", path: "/v1/orgs/acme/email/domains", body: `{"domain":"mail.acme.test","from_local":"hello"}`, status: 201},
			{name: "add it again", as: key, method: "POST", path: "/v1/orgs/acme/email/domains", body: `{"domain":"mail.acme.test"}`, status: 409, code: "conflict"},
			{name: "add a bad domain", as: ada, method: "POST", path: "/v1/orgs/acme/email/domains", body: `{"domain":"not a domain"}`, status: 400, code: "invalid"},
			{name: "add as a developer", as: dev, method: "POST", path: "/v1/orgs/acme/email/domains", body: `{"domain":"x.acme.test"}`, status: 403, code: "forbidden_role"},
			{name: "list domains", as: dev, method: "GET", path: "/v1/orgs/acme/email/domains", status: 200},
			{name: "get a domain", as: key, method: "GET", path: "/v1/orgs/acme/email/domains/mail.acme.test", status: 200},
			{name: "get an unknown domain", as: key, method: "GET", path: "/v1/orgs/acme/email/domains/nope.acme.test", status: 404, code: "not_found"},
			{name: "verify before the key is made", as: ada, method: "POST", path: "/v1/orgs/acme/email/domains/mail.acme.test/verify", status: 409, code: "conflict"},
		} {
			k.expect(t, x)
		}
		var kr struct {
			Domains []cnmail.KeyRequest `json:"domains"`
		}
		json.Unmarshal([]byte(nodeC.must(200, "GET", "/v1/node/email/keys", "")), &kr)
		if len(kr.Domains) != 1 || kr.Domains[0].Domain != "mail.acme.test" {
			t.Fatalf("key requests: %+v", kr)
		}
		nodeC.must(204, "PUT", "/v1/node/email/domains/acme/mail.acme.test/key", `{"selector":"`+kr.Domains[0].Selector+`","record":"v=DKIM1; k=rsa; p=MIIB"}`)
		for _, x := range []call{
			{name: "verify with no record published", as: ada, method: "POST", path: "/v1/orgs/acme/email/domains/mail.acme.test/verify", status: 200},
			{name: "verify an unknown domain", as: ada, method: "POST", path: "/v1/orgs/acme/email/domains/nope.acme.test/verify", status: 404, code: "not_found"},
			{name: "delete as a developer", as: dev, method: "DELETE", path: "/v1/orgs/acme/email/domains/mail.acme.test", status: 403, code: "forbidden_role"},
			{name: "delete", as: ada, method: "DELETE", path: "/v1/orgs/acme/email/domains/mail.acme.test", status: 204},
			{name: "forgot password", as: anon, method: "POST", path: "/v1/auth/password-reset/request", body: `{"email":"dev@acme.test"}`, status: 202},
			{name: "forgot password of nobody", as: anon, method: "POST", path: "/v1/auth/password-reset/request", body: `{"email":"nobody@acme.test"}`, status: 202},
			{name: "forgot password, not an address", as: anon, method: "POST", path: "/v1/auth/password-reset/request", body: `{"email":"nope"}`, status: 400, code: "invalid"},
		} {
			k.expect(t, x)
		}
	})
	t.Run("signing keys", func(t *testing.T) { signingKeysConformance(t, k, n, ada, key, dev) })
	t.Run("API settings", func(t *testing.T) { apiSettingsConformance(t, k, ada, key, dev) })

	t.Run("idempotency", func(t *testing.T) {
		idem := map[string]string{IdempotencyHeader: "create-ci-key-1"}
		first := k.expect(t, call{name: "create", as: ada, hdr: idem, method: "POST", path: "/v1/orgs/acme/keys", body: `{"name":"ci","scopes":["sign"]}`, status: 201})
		again := k.expect(t, call{name: "retry", as: ada, hdr: idem, method: "POST", path: "/v1/orgs/acme/keys", body: `{"name":"ci","scopes":["sign"]}`, status: 201})
		if again.Body != first.Body || again.Header.Get("Idempotent-Replayed") != "true" || first.Header.Get("Idempotent-Replayed") != "" {
			t.Fatalf("retry: %v %s / %v %s", first.Header, first.Body, again.Header, again.Body)
		}
		k.expect(t, call{name: "the same key for another request", as: ada, hdr: idem, method: "POST", path: "/v1/orgs/acme/keys",
			body: `{"name":"other","scopes":["sign"]}`, status: 422, code: "idempotency_key_reused"})
		k.expect(t, call{name: "a key over 255 bytes", as: ada, hdr: map[string]string{IdempotencyHeader: strings.Repeat("k", 256)},
			method: "POST", path: "/v1/orgs/acme/keys", body: `{"scopes":["sign"]}`, offSpec: true, status: 400, code: "invalid"})
		var kv keyView
		json.Unmarshal([]byte(first.Body), &kv)
		idem = map[string]string{IdempotencyHeader: "revoke-ci-key-1"}
		k.expect(t, call{name: "revoke", as: key, hdr: idem, method: "DELETE", path: "/v1/orgs/acme/keys/" + kv.ID, status: 204})
		if r := k.expect(t, call{name: "revoke, retried", as: key, hdr: idem, method: "DELETE", path: "/v1/orgs/acme/keys/" + kv.ID, status: 204}); r.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("a retried revoke: %v", r.Header)
		}
	})

	t.Run("audit", func(t *testing.T) {
		var page struct {
			Events []AuditEvent `json:"events"`
		}
		r := k.expect(t, call{name: "the trail", as: ada, method: "GET", path: "/v1/orgs/acme/audit?limit=1000", status: 200})
		json.Unmarshal([]byte(r.Body), &page)
		if len(page.Events) < 10 || slices.ContainsFunc(page.Events, func(e AuditEvent) bool { return e.Org != "acme" }) {
			t.Fatalf("audit: %s", r.Body)
		}
		next := page.Events[1].Seq
		r = k.expect(t, call{name: "a page", as: key, method: "GET", path: "/v1/orgs/acme/audit?after=" + strconv.FormatUint(next, 10) + "&limit=2", status: 200})
		json.Unmarshal([]byte(r.Body), &page)
		if len(page.Events) != 2 || page.Events[0].Seq <= next {
			t.Fatalf("page after %d: %s", next, r.Body)
		}
		for _, x := range []call{
			{name: "limit 0", as: ada, method: "GET", path: "/v1/orgs/acme/audit?limit=0", offSpec: true, status: 400, code: "invalid"},
			{name: "after, not a number", as: ada, method: "GET", path: "/v1/orgs/acme/audit?after=x", offSpec: true, status: 400, code: "invalid"},
			{name: "as a developer", as: dev, method: "GET", path: "/v1/orgs/acme/audit", status: 403, code: "forbidden_role"},
			{name: "another organization's", as: key, method: "GET", path: "/v1/orgs/globex/audit", status: 404, code: "not_found"},
		} {
			k.expect(t, x)
		}
	})

	// Ingest serves these routes through AccountsProxy: its answers, and
	// its own when no coordinator answers, are the document's too.
	t.Run("through the proxy ingest uses", func(t *testing.T) {
		front := httptest.NewServer(NewAccountsProxy([]string{n.Addr()}, testNode, nil))
		defer front.Close()
		pk := newConformance(t, front.URL)
		jar, _ := cookiejar.New(nil)
		browser := &client{t: t, base: front.URL, hc: &http.Client{Jar: jar}, hdr: map[string]string{}}
		r := pk.expect(t, call{name: "login through the proxy", as: browser, method: "POST", path: "/v1/auth/login",
			body: `{"email":"ada@acme.test","password":"` + pw + `ada@acme.test"}`, status: 200})
		browser.csrf = csrfOf(t, r.Body)
		for _, x := range []call{
			{name: "me through the proxy", method: "GET", path: "/v1/me", status: 200},
			{name: "change through the proxy", method: "PATCH", path: "/v1/orgs/acme", body: `{"name":"Acme"}`, status: 200},
			{name: "another organization through the proxy", method: "GET", path: "/v1/orgs/globex", status: 404, code: "not_found"},
			{name: "logout through the proxy", method: "POST", path: "/v1/auth/logout", status: 204},
		} {
			x.as = browser
			pk.expect(t, x)
		}

		dead, _ := net.Listen("tcp", "127.0.0.1:0")
		deadAddr := dead.Addr().String()
		dead.Close()
		nowhere := httptest.NewServer(NewAccountsProxy([]string{deadAddr}, testNode, nil))
		defer nowhere.Close()
		nk := newConformance(t, nowhere.URL)
		nk.expect(t, call{name: "login with no coordinator", as: &client{t: t, hc: &http.Client{}}, method: "POST", path: "/v1/auth/login",
			body: `{"email":"ada@acme.test","password":"` + pw + `ada@acme.test"}`, status: 503, code: "no_coordinator"})
		for _, o := range []*conformance{pk, nk} {
			maps.Copy(k.success, o.success)
			maps.Copy(k.failure, o.failure)
		}
	})

	// Every user-facing route had a success and an error validated.
	for _, rt := range n.routes() {
		if !userFacing(rt) {
			continue
		}
		if !k.success[rt.pattern] {
			t.Errorf("%s: no success validated against the document", rt.pattern)
		}
		if !k.failure[rt.pattern] {
			t.Errorf("%s: no error validated against the document", rt.pattern)
		}
	}
}

// secured reports whether the document's operation takes credentials.
func (k *conformance) secured(pattern string) bool {
	op := k.doc.Operations()[pattern]
	return op != nil && op.Security != nil && len(*op.Security) > 0
}

// A write retried through a follower gets the Idempotent-Replayed header
// the document promises, as one sent to the leader does: a follower whose
// copy has not caught up forwards the retry, and the leader's answer keeps
// its header on the way back.
func TestReplayedThroughFollower(t *testing.T) {
	n1 := startNode(t, "n1", t.TempDir(), true, "")
	testenv.WaitFor(t, "n1 leads", 10*time.Second, func() (bool, string) { return n1.node.IsLeader(), "" })
	n2 := startNode(t, "n2", t.TempDir(), false, n1.Addr())
	testenv.WaitFor(t, "n2 knows the leader's API", 15*time.Second, func() (bool, string) {
		_, addr := n2.node.Leader()
		return addr == n1.Addr(), addr
	})
	if code, body := n1.do(t, "POST", "/v1/admin/orgs", testAdmin, `{"id":"acme","name":"Acme"}`); code != 201 {
		t.Fatalf("create org: %d %s", code, body)
	}
	const body = `{"name":"ci","scopes":["sign"]}`
	send := func() *http.Request {
		req := httptest.NewRequest("POST", "/v1/orgs/acme/keys", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testAdmin)
		req.Header.Set(IdempotencyHeader, "create-ci-key-1")
		return req
	}
	first := httptest.NewRecorder()
	n1.srv.Handler.ServeHTTP(first, send())
	if first.Code != 201 {
		t.Fatalf("create: %d %s", first.Code, first.Body)
	}
	// The follower's own copy may already answer the retry; what is
	// checked is the forward it makes when it does not.
	again := httptest.NewRecorder()
	n2.forward(again, send(), []byte(body))
	if again.Code != 201 || again.Body.String() != first.Body.String() || again.Header().Get(replayedHeader) != "true" {
		t.Fatalf("a retry forwarded to the leader: %d %v %s, want the first answer %s with %s: true",
			again.Code, again.Header(), again.Body, first.Body, replayedHeader)
	}
}
