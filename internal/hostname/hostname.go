// Package hostname reads the name of a Host header or an SNI, as every
// tier that maps a custom domain to its organization compares it.
package hostname

import (
	"net"
	"strings"
)

// Of is host's name: without its port or a trailing dot, in lower case
// ("API.Example.com.:8443" is "api.example.com").
func Of(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return strings.ToLower(strings.TrimSuffix(host, "."))
}
