package coordinator

import (
	"strings"
	"testing"

	"github.com/go-json-experiment/json"
)

// Route by route, a caller of one organization reaches nothing of
// another: not the other organization's routes (404, as for an
// organization that does not exist), and not the other's keys, producer
// keys, invitations or members through its own organization's routes.
// A new organization route without a case here fails the test.
func TestCrossTenantRoutes(t *testing.T) {
	n := soloNode(t)
	op := operator(t, n)
	for _, org := range []string{"acme", "globex"} {
		op.must(201, "POST", "/v1/admin/orgs", `{"id":"`+org+`","name":"`+org+`"}`)
	}
	alice := createUser(op, "alice@acme.test")
	op.must(200, "PUT", "/v1/orgs/acme/members/"+alice, `{"role":"owner"}`)
	gus := createUser(op, "gus@globex.test")
	op.must(200, "PUT", "/v1/orgs/globex/members/"+gus, `{"role":"owner"}`)
	var gk keyView
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/globex/keys", `{"scopes":["admin"]}`)), &gk)
	var gpk producerKeyView
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/globex/producer-keys", "")), &gpk)
	var ginv invitationView
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/globex/invitations", `{"email":"x@globex.test","role":"viewer"}`)), &ginv)
	var gep endpointView
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/globex/webhooks/endpoints", `{"url":"https://globex.test/hook"}`)), &gep)
	const report = `{"name":"r","query":{"metrics":["requests"],"range":"last_7d"}}`
	var grep struct {
		ID string `json:"id"`
	}
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/globex/reports", report)), &grep, json.RejectUnknownMembers(false))
	op.must(201, "POST", "/v1/orgs/globex/domains", `{"name":"api.globex.example"}`)
	op.must(201, "POST", "/v1/orgs/globex/email/domains", `{"domain":"mail.globex.test"}`)
	// globex's keys are on, so that a rotation or a change would apply.
	op.must(200, "PUT", "/v1/orgs/globex/signing-keys/settings", `{"enabled":true}`)
	before := op.must(200, "GET", "/v1/admin/audit?org=globex&limit=1000", "")

	// Both of acme's kinds of callers: its owner's session and its
	// admin-scope key.
	session := newClient(t, n)
	session.login("alice@acme.test", "password-of-alice@acme.test")
	var ak keyView
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/acme/keys", `{"scopes":["admin"]}`)), &ak)
	key := newClient(t, n)
	key.hdr["Authorization"] = "Bearer " + ak.Key

	// Each org route: a body that would succeed, and the ids of globex's
	// resources its other path values take.
	cases := map[string]struct {
		body string
		ids  map[string]string
	}{
		"GET /v1/orgs/{org}":                                        {},
		"PATCH /v1/orgs/{org}":                                      {body: `{"name":"pwned"}`},
		"GET /v1/orgs/{org}/members":                                {},
		"PUT /v1/orgs/{org}/members/{user}":                         {body: `{"role":"viewer"}`, ids: map[string]string{"user": gus}},
		"DELETE /v1/orgs/{org}/members/{user}":                      {ids: map[string]string{"user": gus}},
		"POST /v1/orgs/{org}/invitations":                           {body: `{"email":"y@acme.test","role":"viewer"}`},
		"GET /v1/orgs/{org}/invitations":                            {},
		"DELETE /v1/orgs/{org}/invitations/{id}":                    {ids: map[string]string{"id": ginv.ID}},
		"POST /v1/orgs/{org}/keys":                                  {body: `{"scopes":["sign"]}`},
		"GET /v1/orgs/{org}/keys":                                   {},
		"DELETE /v1/orgs/{org}/keys/{key}":                          {ids: map[string]string{"key": gk.ID}},
		"POST /v1/orgs/{org}/keys/{key}/suspend":                    {body: `{"reason":"pwned"}`, ids: map[string]string{"key": gk.ID}},
		"POST /v1/orgs/{org}/keys/{key}/resume":                     {ids: map[string]string{"key": gk.ID}},
		"POST /v1/orgs/{org}/producer-keys":                         {},
		"GET /v1/orgs/{org}/producer-keys":                          {},
		"POST /v1/orgs/{org}/producer-keys/{key}/rotate":            {ids: map[string]string{"key": gpk.ID}},
		"DELETE /v1/orgs/{org}/producer-keys/{key}":                 {ids: map[string]string{"key": gpk.ID}},
		"GET /v1/orgs/{org}/audit":                                  {},
		"POST /v1/orgs/{org}/webhooks/endpoints":                    {body: `{"url":"https://acme.test/hook"}`},
		"GET /v1/orgs/{org}/webhooks/endpoints":                     {},
		"GET /v1/orgs/{org}/webhooks/endpoints/{id}":                {ids: map[string]string{"id": gep.ID}},
		"PATCH /v1/orgs/{org}/webhooks/endpoints/{id}":              {body: `{"url":"https://evil.test/x"}`, ids: map[string]string{"id": gep.ID}},
		"DELETE /v1/orgs/{org}/webhooks/endpoints/{id}":             {ids: map[string]string{"id": gep.ID}},
		"POST /v1/orgs/{org}/webhooks/endpoints/{id}/rotate-secret": {ids: map[string]string{"id": gep.ID}},
		"POST /v1/orgs/{org}/webhooks/endpoints/{id}/test":          {ids: map[string]string{"id": gep.ID}},
		"POST /v1/orgs/{org}/reports":                               {body: report},
		"GET /v1/orgs/{org}/reports":                                {},
		"GET /v1/orgs/{org}/reports/{id}":                           {ids: map[string]string{"id": grep.ID}},
		"PATCH /v1/orgs/{org}/reports/{id}":                         {body: `{"name":"mine now"}`, ids: map[string]string{"id": grep.ID}},
		"DELETE /v1/orgs/{org}/reports/{id}":                        {ids: map[string]string{"id": grep.ID}},
		"POST /v1/orgs/{org}/domains":                               {body: `{"name":"api.acme.example"}`},
		"GET /v1/orgs/{org}/domains":                                {},
		"GET /v1/orgs/{org}/domains/{name}":                         {ids: map[string]string{"name": "api.globex.example"}},
		"DELETE /v1/orgs/{org}/domains/{name}":                      {ids: map[string]string{"name": "api.globex.example"}},
		"POST /v1/orgs/{org}/domains/{name}/verify":                 {ids: map[string]string{"name": "api.globex.example"}},
		"POST /v1/orgs/{org}/email/templates/{template}/preview":    {body: `{"settings":{"display_name":"pwned"}}`},
		"GET /v1/orgs/{org}/email/messages":                         {},
		"POST /v1/orgs/{org}/email/domains":                         {body: `{"domain":"mail.acme.test"}`},
		"GET /v1/orgs/{org}/email/domains":                          {},
		"GET /v1/orgs/{org}/email/domains/{domain}":                 {ids: map[string]string{"domain": "mail.globex.test"}},
		"POST /v1/orgs/{org}/email/domains/{domain}/verify":         {ids: map[string]string{"domain": "mail.globex.test"}},
		"DELETE /v1/orgs/{org}/email/domains/{domain}":              {ids: map[string]string{"domain": "mail.globex.test"}},
		"GET /v1/orgs/{org}/signing-keys":                           {},
		"PUT /v1/orgs/{org}/signing-keys/settings":                  {body: `{"enabled":true}`},
		"POST /v1/orgs/{org}/signing-keys/rotate":                   {},
		"GET /v1/orgs/{org}/jwks":                                   {},
		"GET /v1/orgs/{org}/branding":                               {},
		"PUT /v1/orgs/{org}/branding":                               {body: `{"display_name":"pwned"}`},
		"PUT /v1/orgs/{org}/maintenance":                            {body: `{"message":"pwned"}`},
		"DELETE /v1/orgs/{org}/maintenance":                         {},
		"GET /v1/orgs/{org}/api-settings":                           {},
		"PATCH /v1/orgs/{org}/api-settings":                         {body: `{"response_headers":{"X-Pwned":"yes"}}`},
		"PATCH /v1/orgs/{org}/keys/{key}":                           {body: `{"defaults":{"job_type":"verify"}}`, ids: map[string]string{"key": gk.ID}},
	}
	seen := map[string]bool{}
	for _, rt := range n.routes() {
		if !rt.org {
			continue
		}
		seen[rt.pattern] = true
		tc, ok := cases[rt.pattern]
		if !ok {
			t.Errorf("organization route %s has no cross-tenant case", rt.pattern)
			continue
		}
		method, path, _ := strings.Cut(rt.pattern, " ")
		fill := func(org string, ids map[string]string) string {
			p := strings.ReplaceAll(path, "{org}", org)
			for k, v := range ids {
				p = strings.ReplaceAll(p, "{"+k+"}", v)
			}
			return p
		}
		for name, c := range map[string]*client{"session": session, "key": key} {
			// globex's routes, with globex's ids.
			if resp, body := c.do(method, fill("globex", tc.ids), tc.body); resp.StatusCode != 404 {
				t.Errorf("%s %s as acme's %s: %d %s, want 404", method, fill("globex", tc.ids), name, resp.StatusCode, body)
			}
			// acme's routes, with globex's ids.
			if len(tc.ids) > 0 {
				if resp, body := c.do(method, fill("acme", tc.ids), tc.body); resp.StatusCode != 404 {
					t.Errorf("%s %s as acme's %s: %d %s, want 404", method, fill("acme", tc.ids), name, resp.StatusCode, body)
				}
			}
		}
	}
	for p := range cases {
		if !seen[p] {
			t.Errorf("case %s names no route", p)
		}
	}
	// Nothing of globex's changed.
	if after := op.must(200, "GET", "/v1/admin/audit?org=globex&limit=1000", ""); after != before {
		t.Fatalf("globex changed:\nbefore %s\nafter  %s", before, after)
	}
	if keys := op.must(200, "GET", "/v1/orgs/globex/keys", ""); strings.Contains(keys, "revoked_at") {
		t.Fatalf("globex's key was revoked: %s", keys)
	}
}
