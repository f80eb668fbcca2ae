package schemas

import (
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/go-json-experiment/json"
)

// TestOpenAPIDocument: the embedded document converts to JSON and is a
// valid OpenAPI 3.1 document for kin-openapi, whose JSON Schema 2020-12
// validator (the one openapi3filter uses for 3.1) enforces the 3.1-only
// keywords the document relies on.
func TestOpenAPIDocument(t *testing.T) {
	b, err := OpenAPIJSON()
	if err != nil {
		t.Fatal(err)
	}
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(b)
	if err != nil {
		t.Fatal(err)
	}
	if doc.OpenAPI != "3.1.0" || !doc.IsOpenAPI31OrLater() {
		t.Fatalf("openapi %q", doc.OpenAPI)
	}
	if err := doc.Validate(loader.Context); err != nil {
		t.Fatal(err)
	}

	unauthorized := doc.Paths.Value("/v1/sign").Post.Responses.Status(401).Value.Content.Get("application/json").Schema.Value
	resultLine := doc.Components.Schemas["ResultLine"].Value
	verifyAnswer := doc.Components.Schemas["VerifyAnswer"].Value
	cases := []struct {
		name   string
		schema *openapi3.Schema
		value  string
		valid  bool
	}{
		{"const next to $ref", unauthorized, `{"error":{"code":"unauthorized","message":"m"}}`, true},
		{"const next to $ref refuses", unauthorized, `{"error":{"code":"not_found","message":"m"}}`, false},
		{"then: rejected needs code", resultLine, `{"line":2,"status":"rejected","message":"m"}`, false},
		{"else: a result needs id", resultLine, `{"line":2,"status":"failed","reason":"too_large"}`, false},
		{"a failed result", resultLine, `{"line":2,"id":"req_1","status":"failed","reason":"too_large"}`, true},
		{"then: invalid needs reason", verifyAnswer, `{"valid":false,"keys":"service"}`, false},
		{"else: valid has no reason", verifyAnswer, `{"valid":true,"keys":"service","kid":"k","reason":"x"}`, false},
		{"a valid answer", verifyAnswer, `{"valid":true,"keys":"caller","kid":"k"}`, true},
	}
	for _, tc := range cases {
		var v any
		if err := json.Unmarshal([]byte(tc.value), &v); err != nil {
			t.Fatal(err)
		}
		err := tc.schema.VisitJSON(v, openapi3.EnableJSONSchema2020())
		if (err == nil) != tc.valid {
			t.Errorf("%s: %s validates: %v, want %v (%v)", tc.name, tc.value, err == nil, tc.valid, err)
		}
	}
}

// TestOpenAPIAccountSchemas: secrets are shown once in the document too.
// An invitation's token, an API key's secret and a producer key's secret
// are required in the answer that creates them and refused in lists; a
// session's writes need the CSRF token, an API key's do not.
func TestOpenAPIAccountSchemas(t *testing.T) {
	b, err := OpenAPIJSON()
	if err != nil {
		t.Fatal(err)
	}
	doc, err := openapi3.NewLoader().LoadFromData(b)
	if err != nil {
		t.Fatal(err)
	}
	answer := func(path, method string, status int) *openapi3.Schema {
		t.Helper()
		op := doc.Paths.Value(path).GetOperation(method)
		return op.Responses.Status(status).Value.Content.Get("application/json").Schema.Value
	}
	const (
		at  = `"created_at":"2026-05-01T00:00:00Z"`
		inv = `{"id":"inv_abc","org":"acme","email":"a@acme.test","role":"viewer",` + at + `,"expires_at":"2026-05-08T00:00:00Z"`
		key = `{"id":"cnk_abcdefghijkl","org":"acme","scopes":["sign"],` + at
		pk  = `{"id":"pk_abcdefghijklmnop","org":"acme",` + at
		tok = `,"token":"cni_0123456789012345678901234567890123456789012"`
		sec = `,"key":"cnk_abcdefghijkl.0123456789012345678901234567890123456789012"`
		psc = `,"secret":"0123456789012345678901234567890123456789012"`
	)
	cases := []struct {
		name   string
		schema *openapi3.Schema
		value  string
		valid  bool
	}{
		{"invitation created, with its token", answer("/v1/orgs/{org}/invitations", "POST", 201), inv + tok + `}`, true},
		{"invitation created, without it", answer("/v1/orgs/{org}/invitations", "POST", 201), inv + `}`, false},
		{"invitations listed", answer("/v1/orgs/{org}/invitations", "GET", 200), `{"invitations":[` + inv + `}]}`, true},
		{"invitations listed with a token", answer("/v1/orgs/{org}/invitations", "GET", 200), `{"invitations":[` + inv + tok + `}]}`, false},
		{"key created, with its secret", answer("/v1/orgs/{org}/keys", "POST", 201), key + sec + `}`, true},
		{"key created, without it", answer("/v1/orgs/{org}/keys", "POST", 201), key + `}`, false},
		{"keys listed", answer("/v1/orgs/{org}/keys", "GET", 200), `{"keys":[` + key + `}]}`, true},
		{"keys listed with a secret", answer("/v1/orgs/{org}/keys", "GET", 200), `{"keys":[` + key + sec + `}]}`, false},
		{"producer key created, with its secret", answer("/v1/orgs/{org}/producer-keys", "POST", 201), pk + psc + `}`, true},
		{"producer key rotated, without it", answer("/v1/orgs/{org}/producer-keys/{key}/rotate", "POST", 201), pk + `}`, false},
		{"producer keys listed with a secret", answer("/v1/orgs/{org}/producer-keys", "GET", 200), `{"producer_keys":[` + pk + psc + `}]}`, false},
		{"members listed without their email", answer("/v1/orgs/{org}/members", "GET", 200), `{"members":[{"org":"acme","user":"usr_a","role":"owner",` + at + `}]}`, false},
	}
	for _, tc := range cases {
		var v any
		if err := json.Unmarshal([]byte(tc.value), &v); err != nil {
			t.Fatal(err)
		}
		err := tc.schema.VisitJSON(v, openapi3.EnableJSONSchema2020())
		if (err == nil) != tc.valid {
			t.Errorf("%s: %s validates: %v, want %v (%v)", tc.name, tc.value, err == nil, tc.valid, err)
		}
	}

	// Every write that takes a session also takes the CSRF token with it,
	// and an API key alone.
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			if op.Security == nil || method == "GET" {
				continue
			}
			for _, req := range *op.Security {
				if _, session := req["session"]; session {
					if _, csrf := req["csrf"]; !csrf {
						t.Errorf("%s %s: a session without the CSRF token", method, path)
					}
				}
				if _, key := req["apiKey"]; key && len(req) != 1 {
					t.Errorf("%s %s: an API key needs more: %v", method, path, req)
				}
			}
		}
	}
}
