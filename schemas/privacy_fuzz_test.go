package schemas

import (
	"testing"

	"github.com/go-json-experiment/json"
)

func TestJSONPointer(t *testing.T) {
	var doc any
	json.Unmarshal([]byte(`{"customer":{"email":"ada@example.com","ids":["a","b"]},"a/b":{"m~n":1},"":2}`), &doc)
	for p, want := range map[string]any{
		"/customer/email":  "ada@example.com",
		"/customer/ids/1":  "b",
		"/a~1b/m~0n":       float64(1),
		"/":                float64(2),
		"/customer/ids/01": nil,
		"/customer/ids/2":  nil,
		"/nope":            nil,
	} {
		got, ok := JSONPointerGet(doc, p)
		if want == nil && ok || want != nil && got != want {
			t.Errorf("%s: %v %v, want %v", p, got, ok, want)
		}
	}
	for _, bad := range []string{"customer", "/a~2", "/a~"} {
		if CheckJSONPointer(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// Subject pointers are an organization's setting and payloads are
// anyone's: no pointer or document may panic.
func FuzzJSONPointer(f *testing.F) {
	f.Add(`{"customer":{"email":"ada@example.com"}}`, "/customer/email")
	f.Add(`[1,[2,{"~":3}]]`, "/1/1/~0")
	f.Fuzz(func(t *testing.T, doc, p string) {
		var v any
		if json.Unmarshal([]byte(doc), &v) != nil {
			return
		}
		if _, ok := JSONPointerGet(v, p); ok && CheckJSONPointer(p) != nil {
			t.Fatalf("%q found a value but is not a pointer", p)
		}
	})
}
