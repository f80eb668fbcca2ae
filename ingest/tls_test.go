package ingest

import (
	"crypto/tls"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/certnode/certnode/internal/testenv"
)

// Over TLS (1.2 and later only) every answer carries HSTS; plain HTTP to
// the port gets nothing it can use.
func TestServesTLS(t *testing.T) {
	cert, _, _ := testenv.SelfSigned(t, "ingest")
	ts := startServer(t, func(c *Config, _ *Deps) {
		c.TLS = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	})
	addr := strings.TrimPrefix(ts.base, "http://")
	// The client offers TLS 1.0 and up (Go's default floor is 1.2): the
	// server is the one to refuse older versions.
	client := func(max uint16) *http.Client {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true,
			MinVersion: tls.VersionTLS10, MaxVersion: max}}}
	}
	resp, err := client(0).Get("https://" + addr + "/v1/jwks")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Strict-Transport-Security"), "max-age=") {
		t.Fatalf("over TLS: %d %v", resp.StatusCode, resp.Header)
	}
	if _, err := client(tls.VersionTLS11).Get("https://" + addr + "/v1/jwks"); err == nil || !strings.Contains(err.Error(), "protocol version") {
		t.Fatalf("TLS 1.1: %v, want the server's refusal", err)
	}
	if resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/v1/jwks"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plain HTTP served")
		}
	}
}
