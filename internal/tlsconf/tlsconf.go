// Package tlsconf makes the TLS configuration of the service's listeners
// from certificate files: TLS 1.2 or later, the files read again when they
// change (a renewal by certbot or an ACME client needs no restart); and
// that of its clients, which check a server against a CA file.
package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// Files names a PEM certificate chain and its private key.
type Files struct {
	Cert, Key string
}

// Enabled reports whether a file is named (Validate: then both are).
func (f Files) Enabled() bool { return f.Cert != "" || f.Key != "" }

// Validate reports a half-named pair.
func (f Files) Validate() error {
	if (f.Cert == "") != (f.Key == "") {
		return errors.New("tls: --tls-cert and --tls-key go together")
	}
	return nil
}

// Server returns the listeners' configuration, or nil when no files are
// named. The files are read now (an unusable pair is an error at start)
// and again on a handshake after either file changed.
func (f Files) Server() (*tls.Config, error) {
	if err := f.Validate(); err != nil || !f.Enabled() {
		return nil, err
	}
	r := &reloader{files: f}
	if _, err := r.load(); err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: r.get}, nil
}

// reloader holds the certificate as of the files' modification times.
type reloader struct {
	files  Files
	mu     sync.Mutex
	cert   *tls.Certificate
	mods   [2]time.Time
	failed [2]time.Time // the modification times of a pair that did not load
}

func (r *reloader) load() (*tls.Certificate, error) {
	var mods [2]time.Time
	for i, name := range []string{r.files.Cert, r.files.Key} {
		st, err := os.Stat(name)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		mods[i] = st.ModTime()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cert != nil && (mods == r.mods || mods == r.failed) {
		return r.cert, nil
	}
	c, err := tls.LoadX509KeyPair(r.files.Cert, r.files.Key)
	if err != nil {
		if r.cert != nil {
			// A renewal half written, or broken: keep serving the last good
			// pair, and read these files again only once they change.
			r.failed = mods
			slog.Warn("tls: the certificate files do not load; the last good pair goes on", "cert", r.files.Cert, "err", err)
			return r.cert, nil
		}
		return nil, fmt.Errorf("tls: %w", err)
	}
	r.cert, r.mods = &c, mods
	return r.cert, nil
}

func (r *reloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) { return r.load() }

// Client returns the configuration of a connection to a server: TLS 1.2 or
// later, the server's certificate checked against the PEM certificates of
// caFile (empty: the system's roots).
func Client(caFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile == "" {
		return cfg, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("tls: CA file: %w", err)
	}
	cfg.RootCAs = x509.NewCertPool()
	if !cfg.RootCAs.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("tls: CA file %s holds no PEM certificate", caFile)
	}
	return cfg, nil
}
