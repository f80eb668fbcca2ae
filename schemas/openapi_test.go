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
