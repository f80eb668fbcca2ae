package hostname

import "testing"

func TestOf(t *testing.T) {
	for in, want := range map[string]string{
		"api.example.com":        "api.example.com",
		"API.Example.com.:8443":  "api.example.com",
		"api.example.com.":       "api.example.com",
		"[::1]:443":              "::1",
		"127.0.0.1:8080":         "127.0.0.1",
		"":                       "",
		"Verify.Globex.Test:443": "verify.globex.test",
	} {
		if got := Of(in); got != want {
			t.Errorf("Of(%q) = %q, want %q", in, got, want)
		}
	}
}
