package httpsec

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestHandler(t *testing.T) {
	h := Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/page" {
			w.Header().Set("Content-Security-Policy", "default-src 'self'")
		}
		w.Write([]byte("ok"))
	}))
	for path, csp := range map[string]string{"/api": "default-src 'none'; frame-ancestors 'none'", "/page": "default-src 'self'"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		got := rec.Result().Header
		if got.Get("X-Content-Type-Options") != "nosniff" || got.Get("X-Frame-Options") != "DENY" || got.Get("Referrer-Policy") != "no-referrer" {
			t.Errorf("%s: %v", path, got)
		}
		if v := got.Values("Content-Security-Policy"); len(v) != 1 || v[0] != csp {
			t.Errorf("%s: CSP %q, want %q", path, v, csp)
		}
		if got.Get("Strict-Transport-Security") != "" {
			t.Errorf("%s: HSTS without TLS", path)
		}
	}
	srv := httptest.NewTLSServer(h)
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/api")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("Strict-Transport-Security") != HSTS.Value {
		t.Errorf("HSTS over TLS: %v", resp.Header)
	}
}
