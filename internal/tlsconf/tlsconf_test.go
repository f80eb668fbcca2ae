package tlsconf

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/certnode/certnode/internal/testenv"
)

// selfSigned writes a certificate named cn and its key to dir.
func selfSigned(t *testing.T, dir, cn string) Files {
	t.Helper()
	_, cert, key := testenv.SelfSigned(t, cn)
	f := Files{Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem")}
	os.WriteFile(f.Cert, cert, 0o600)
	os.WriteFile(f.Key, key, 0o600)
	return f
}

// serve answers TLS handshakes with f's certificate on a loopback port
// until the test ends.
func serve(t *testing.T, f Files) net.Listener {
	t.Helper()
	cfg, err := f.Server()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	return ln
}

// A listener serves TLS 1.2 and later only, and a renewed certificate
// without a restart.
func TestServer(t *testing.T) {
	dir := t.TempDir()
	f := selfSigned(t, dir, "first")
	ln := serve(t, f)
	name := func(max uint16) (string, error) {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: max})
		if err != nil {
			return "", err
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Subject.CommonName, nil
	}
	if _, err := name(tls.VersionTLS11); err == nil || !strings.Contains(err.Error(), "protocol version") {
		t.Fatalf("TLS 1.1: %v, want the server's refusal", err)
	}
	if cn, err := name(tls.VersionTLS12); err != nil || cn != "first" {
		t.Fatalf("TLS 1.2: %q %v", cn, err)
	}
	time.Sleep(10 * time.Millisecond) // a later modification time
	selfSigned(t, dir, "renewed")
	now := time.Now().Add(time.Second)
	os.Chtimes(f.Cert, now, now)
	if cn, err := name(0); err != nil || cn != "renewed" {
		t.Fatalf("after the renewal: %q %v", cn, err)
	}
	if _, err := (Files{Cert: f.Cert}).Server(); err == nil {
		t.Fatal("a certificate without its key accepted")
	}
	if cfg, err := (Files{}).Server(); cfg != nil || err != nil {
		t.Fatalf("no files: %v %v", cfg, err)
	}
}

// A client trusts the CA file's certificates only, and offers TLS 1.2 or
// later.
func TestClient(t *testing.T) {
	dir := t.TempDir()
	f := selfSigned(t, dir, "server")
	ln := serve(t, f)
	other := selfSigned(t, t.TempDir(), "other")
	for _, tc := range []struct {
		ca      string
		wantErr string
	}{
		{f.Cert, ""},
		{other.Cert, "certificate signed by unknown authority"},
		{"", "certificate signed by unknown authority"}, // the system's roots
	} {
		ccfg, err := Client(tc.ca)
		if err != nil {
			t.Fatal(err)
		}
		if ccfg.MinVersion != tls.VersionTLS12 {
			t.Errorf("MinVersion %x", ccfg.MinVersion)
		}
		c, err := tls.Dial("tcp", ln.Addr().String(), ccfg)
		if err == nil {
			c.Close()
		}
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("CA %q: %v, want %q", tc.ca, err, tc.wantErr)
		}
	}
	if _, err := Client(filepath.Join(dir, "missing.pem")); err == nil {
		t.Error("a missing CA file accepted")
	}
	if _, err := Client(f.Key); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("a key as CA file: %v", err)
	}
}
