// Package httpsec holds the security headers every HTTP answer of every
// role carries: no content sniffing, no referrer, no framing, a content
// policy that loads nothing (pages with content of their own, the
// dashboard, set their own), and HSTS over TLS.
package httpsec

import "net/http"

// Header is one security header.
type Header struct{ Name, Value string }

// Headers are the headers of every answer; HSTS is added over TLS.
var Headers = []Header{
	{"X-Content-Type-Options", "nosniff"},
	{"Referrer-Policy", "no-referrer"},
	{"X-Frame-Options", "DENY"},
	{"Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"},
}

// HSTS asks browsers to use TLS only, for two years.
var HSTS = Header{"Strict-Transport-Security", "max-age=63072000; includeSubDomains"}

// Add sets each header the answer does not have yet: has and set read and
// write the answer's headers (so that net/http and fasthttp share this).
func Add(has func(name string) bool, set func(name, value string), tls bool) {
	for _, h := range Headers {
		if !has(h.Name) {
			set(h.Name, h.Value)
		}
	}
	if tls && !has(HSTS.Name) {
		set(HSTS.Name, HSTS.Value)
	}
}

// Handler adds the headers to next's answers; next may replace them (its
// Header().Set wins, as they are set before it runs).
func Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		Add(func(n string) bool { return h.Get(n) != "" }, h.Set, r.TLS != nil)
		next.ServeHTTP(w, r)
	})
}
