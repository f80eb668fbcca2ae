package coordinator

import (
	"crypto/tls"
	"net/http"
	"strings"
	"time"
)

// BaseURL is the URL of a coordinator address: the address itself when it
// names a scheme (https://host:port for a coordinator serving TLS), else
// http://addr.
func BaseURL(addr string) string {
	if strings.Contains(addr, "://") {
		return strings.TrimSuffix(addr, "/")
	}
	return "http://" + addr
}

// HTTPClient is how members and other tiers call the coordinator's API:
// an https:// address's certificate is checked with tlsCfg (see
// tlsconf.Client; nil: TLS 1.2+ and the system's roots), and redirects are
// not followed, so a token goes nowhere else. Each request takes at most
// timeout.
func HTTPClient(tlsCfg *tls.Config, timeout time.Duration) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if tlsCfg != nil {
		// Each transport its own copy: a transport sets up HTTP/2 by
		// writing to its config on first use.
		tr.TLSClientConfig = tlsCfg.Clone()
	}
	return &http.Client{Transport: tr, Timeout: timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}
