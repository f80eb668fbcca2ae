// Package certs serves organizations' custom domains over TLS: it obtains
// each proved domain's certificate from an ACME CA (certmagic), keeps it
// in the store every ingest node shares, so N nodes order it once and
// serve the same one, renews it before it expires, revokes it when the
// domain is removed, and picks it by SNI. It reports each domain's state
// (issuing, active, failed with the CA's reason) to the coordinator.
package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/certnode/certnode/internal/hostname"
	"github.com/certnode/certnode/internal/text"
	"github.com/mholt/acmez/v3/acme"
)

// Domain is what the coordinator says of a custom domain.
type Domain struct {
	Org string
	// Serve: the domain is proved (or its owner asked the CA to prove it)
	// and its organization is active. A domain not served keeps its
	// certificate; one that is gone has it revoked.
	Serve bool
	// State as the coordinator holds it, and the certificate it knows.
	State  string
	Serial string
	// Proved: the ownership is established (an HTTP-verified domain is
	// not, until its first certificate); Claimed: when it was added.
	Proved  bool
	Claimed time.Time
}

// Domains is the coordinator's view of custom domains (a replica): every
// domain by name, ok false until the replica first synced (nothing is
// revoked on an empty view).
type Domains interface {
	CustomDomains() (map[string]Domain, bool)
	ReportDomain(ctx context.Context, r Report) error
}

// Report is a change of a domain's state, for the coordinator.
type Report struct {
	Name, Org, State, Reason string
	// From: the states it may follow (empty: any).
	From                []string
	Serial              string
	NotBefore, NotAfter time.Time
}

// Config configures certificate management.
type Config struct {
	// CA is the ACME directory URL (Let's Encrypt's:
	// https://acme-v02.api.letsencrypt.org/directory).
	CA string
	// Email is the ACME account's contact.
	Email string
	// CARoots are trusted for the ACME server's own TLS (nil: the
	// system's).
	CARoots *x509.CertPool
	// HTTPAddr is the plain-HTTP listener answering HTTP-01 challenges
	// (port 80 in production) and redirecting other requests on a custom
	// domain to HTTPS; HTTPSPort is the port named in those redirects.
	HTTPAddr  string
	HTTPSPort int
	// RenewalWindow renews a certificate when this fraction of its
	// lifetime remains (default 1/3); RenewCheck is how often that is
	// checked (default 10 minutes).
	RenewalWindow float64
	RenewCheck    time.Duration
	// Poll is how often the domains are compared with those managed.
	Poll time.Duration
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if u, err := url.Parse(c.CA); err != nil || u.Scheme != "https" || u.Host == "" {
		errs = append(errs, fmt.Errorf("certs: --acme-ca %q: the ACME directory's https URL", c.CA))
	}
	if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
		errs = append(errs, fmt.Errorf("certs: --acme-http %q: want host:port", c.HTTPAddr))
	}
	if c.HTTPSPort < 1 || c.HTTPSPort > 65535 {
		errs = append(errs, fmt.Errorf("certs: the HTTPS port %d", c.HTTPSPort))
	}
	if c.RenewalWindow <= 0 || c.RenewalWindow >= 1 {
		errs = append(errs, fmt.Errorf("certs: --acme-renewal-window %v: a fraction of the lifetime, between 0 and 1", c.RenewalWindow))
	}
	if c.RenewCheck < time.Second || c.Poll <= 0 {
		errs = append(errs, errors.New("certs: the renewal check (at least 1s) and poll intervals must be positive"))
	}
	return errors.Join(errs...)
}

// Domain states, as the coordinator names them.
const (
	stateVerified = "verified"
	stateIssuing  = "issuing"
	stateActive   = "active"
	stateFailed   = "failed"
)

// revokeReason is RFC 5280's cessationOfOperation: the organization let
// the name go.
const revokeReason = 5

// Manager obtains, serves, renews and revokes the custom domains'
// certificates.
type Manager struct {
	cfg     Config
	domains Domains
	cm      *certmagic.Config
	cache   *certmagic.Cache
	iss     *certmagic.ACMEIssuer
	store   *storage
	log     *slog.Logger
	reports chan Report
	ln      net.Listener
	http    *http.Server

	mu      sync.Mutex
	managed map[string]context.CancelFunc // names under management here
	served  map[string]bool               // names whose certificate is served
	// known are the names of the last view, sent the time an active
	// report was last queued for a name (re-sent when the coordinator's
	// state disagrees with what is served), and swept when the
	// certificates of domains that are gone were last looked for.
	known map[string]bool
	sent  map[string]time.Time
	swept time.Time
}

// New makes a manager; Run starts it. The HTTP-01 listener is bound here,
// so a taken port fails at start.
func New(cfg Config, domains Domains, st Store, seal Sealer) (*Manager, error) {
	if cfg.RenewalWindow == 0 {
		cfg.RenewalWindow = 1.0 / 3
	}
	if cfg.RenewCheck == 0 {
		cfg.RenewCheck = 10 * time.Minute
	}
	if cfg.Poll == 0 {
		cfg.Poll = time.Second
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if domains == nil || st == nil || seal == nil {
		return nil, errors.New("certs: the domains, the store and a sealer for private keys are required")
	}
	log := slog.With("role", "ingest", "part", "certificates")
	m := &Manager{cfg: cfg, domains: domains, store: newStorage(st, seal, log), log: log, reports: make(chan Report, 256),
		managed: map[string]context.CancelFunc{}, served: map[string]bool{}, known: map[string]bool{}, sent: map[string]time.Time{}}
	zl := zapLogger(log)
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   func(certmagic.Certificate) (*certmagic.Config, error) { return m.cm, nil },
		RenewCheckInterval: cfg.RenewCheck,
		Logger:             zl,
	})
	m.cm = certmagic.New(m.cache, certmagic.Config{
		Storage:            m.store,
		Logger:             zl,
		RenewalWindowRatio: cfg.RenewalWindow,
		OnEvent:            m.onEvent,
		// Renewal follows RenewalWindow, the same on every node; the CA's
		// suggested window (ARI) would pick a random moment in it.
		DisableARI: true,
		// The store is the coordinator's: its writes are checked by the
		// log, and a test write per order would only add entries.
		DisableStorageCheck: true,
	})
	host, port, _ := net.SplitHostPort(cfg.HTTPAddr)
	var err error
	if m.ln, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		return nil, fmt.Errorf("certs: --acme-http: %w", err)
	}
	p, _ := strconv.Atoi(port)
	if p == 0 {
		p = m.ln.Addr().(*net.TCPAddr).Port
	}
	m.iss = certmagic.NewACMEIssuer(m.cm, certmagic.ACMEIssuer{
		CA:           cfg.CA,
		Email:        cfg.Email,
		Agreed:       true,
		TrustedRoots: cfg.CARoots,
		// HTTP-01 only: the listener above answers it from the shared
		// store, so any node may receive the CA's request. TLS-ALPN-01
		// would need the CA to reach the node holding the order.
		DisableTLSALPNChallenge: true,
		ListenHost:              host,
		AltHTTPPort:             p,
		Logger:                  zl,
	})
	m.cm.Issuers = []certmagic.Issuer{m.iss}
	// Port 80 is open to anyone: every wait is bounded.
	m.http = &http.Server{Handler: http.HandlerFunc(m.serveHTTP), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	return m, nil
}

// HTTPAddr is the HTTP-01 listener's address.
func (m *Manager) HTTPAddr() string { return m.ln.Addr().String() }

// Serves reports whether name's certificate is served here.
func (m *Manager) Serves(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.served[hostname.Of(name)]
}

// TLSConfig serves the custom domains' certificates by SNI, and other
// names through fallback (the service's own certificate; nil: none).
// Custom domains are answered only while served: a removed one fails the
// handshake at once.
func (m *Manager) TLSConfig(fallback func(*tls.ClientHelloInfo) (*tls.Certificate, error)) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if m.Serves(h.ServerName) {
				return m.cm.GetCertificate(h)
			}
			if fallback != nil {
				return fallback(h)
			}
			return nil, fmt.Errorf("no certificate for %q", h.ServerName)
		},
	}
}

// Run manages the domains until ctx ends.
func (m *Manager) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- m.http.Serve(m.ln) }()
	go m.report(ctx)
	t := time.NewTicker(m.cfg.Poll)
	defer t.Stop()
	for {
		m.reconcile(ctx)
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return m.http.Shutdown(sctx)
		case err := <-errc:
			return fmt.Errorf("certs: the HTTP-01 listener: %w", err)
		case <-t.C:
		}
	}
}

// Close stops the renewals and releases the locks this node holds.
func (m *Manager) Close() {
	m.mu.Lock()
	for _, cancel := range m.managed {
		cancel()
	}
	m.managed = map[string]context.CancelFunc{}
	m.mu.Unlock()
	m.cache.Stop()
	m.store.release()
	m.ln.Close()
}

// reconcile starts managing the domains to serve, stops serving the
// others, re-sends what the coordinator does not know of what is served,
// and revokes the certificates of domains that are gone.
func (m *Manager) reconcile(ctx context.Context) {
	ds, ok := m.domains.CustomDomains()
	if !ok {
		return
	}
	m.mu.Lock()
	var start, stop []string
	for n, d := range ds {
		if d.Serve && m.managed[n] == nil {
			start = append(start, n)
		}
	}
	for n := range m.managed {
		if d, ok := ds[n]; !ok || !d.Serve {
			stop = append(stop, n)
		}
	}
	gone := m.swept.IsZero() || time.Since(m.swept) > sweepEvery
	for n := range m.known {
		if _, ok := ds[n]; !ok {
			gone = true
		}
	}
	m.known = make(map[string]bool, len(ds))
	for n := range ds {
		m.known[n] = true
	}
	m.mu.Unlock()
	for _, n := range start {
		m.start(ctx, n, ds[n])
	}
	m.mu.Lock()
	for _, n := range stop {
		m.managed[n]()
		delete(m.managed, n)
		delete(m.served, n)
		m.cache.RemoveManaged([]certmagic.SubjectIssuer{{Subject: n, IssuerKey: m.iss.IssuerKey()}})
	}
	m.mu.Unlock()
	for _, n := range stop {
		m.log.Info("custom domain no longer served", "domain", n)
	}
	m.resend(ds)
	if gone {
		m.swept = time.Now()
		m.revokeGone(ctx, ds)
	}
}

// sweepEvery is how often the store is looked through for certificates of
// domains that are gone, besides whenever one leaves the view: a removal
// made while every node was down is found then.
const sweepEvery = 10 * time.Minute

// start manages a domain's certificate. An HTTP-verified domain not yet
// proved must be proved by an order of its own: a certificate left in the
// store by an earlier holder of the name is deleted first.
func (m *Manager) start(ctx context.Context, n string, d Domain) {
	if !d.Proved {
		if cert, err := m.leaf(ctx, n); err == nil && cert.NotBefore.Before(d.Claimed) {
			if err := m.store.Delete(ctx, certmagic.StorageKeys.CertsSitePrefix(m.iss.IssuerKey(), n)); err != nil {
				m.log.Error("deleting an earlier holder's certificate", "domain", n, "err", err)
				return // next poll
			}
		}
	}
	nctx, cancel := context.WithCancel(ctx)
	m.mu.Lock()
	m.managed[n] = cancel
	m.mu.Unlock()
	if err := m.cm.ManageAsync(nctx, []string{n}); err != nil {
		m.log.Error("managing a domain's certificate", "domain", n, "err", err)
	}
}

// resend queues an active report for each name served here whose
// certificate the coordinator does not hold as active (a report lost, or
// refused while the coordinator was away), at most once a minute each.
func (m *Manager) resend(ds map[string]Domain) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for n := range m.served {
		d := ds[n]
		certs := m.cache.AllMatchingCertificates(n)
		if len(certs) == 0 || certs[0].Leaf == nil {
			continue
		}
		if d.State == stateActive && d.Serial == fmt.Sprintf("%x", certs[0].Leaf.SerialNumber) || time.Since(m.sent[n]) < time.Minute {
			continue
		}
		m.sent[n] = time.Now()
		m.queue(Report{Name: n, State: stateActive})
	}
}

// revokeGone revokes, once across the nodes, the stored certificates of
// domains that no longer exist: removed while this node ran, or while
// every node was down.
func (m *Manager) revokeGone(ctx context.Context, ds map[string]Domain) {
	prefix := certmagic.StorageKeys.CertsPrefix(m.iss.IssuerKey())
	names, err := m.store.List(ctx, prefix, false)
	if err != nil {
		return // nothing stored yet (fs.ErrNotExist), or the store is away: next sweep
	}
	for _, k := range names {
		n := k[strings.LastIndexByte(k, '/')+1:]
		if _, exists := ds[n]; exists {
			continue
		}
		if err := m.revoke(ctx, n); err != nil {
			m.log.Error("revoking the certificate of a removed domain", "domain", n, "err", err)
		}
	}
}

func (m *Manager) revoke(ctx context.Context, name string) error {
	lock := "revoke_" + name
	ok, err := m.store.TryLock(ctx, lock)
	if !ok || err != nil {
		return err // another node is at it
	}
	defer m.store.Unlock(context.WithoutCancel(ctx), lock)
	if ds, ok := m.domains.CustomDomains(); !ok {
		return nil
	} else if _, back := ds[name]; back {
		return nil // added again meanwhile
	}
	if !m.store.Exists(ctx, certmagic.StorageKeys.SiteCert(m.iss.IssuerKey(), name)) {
		return nil // revoked by another node
	}
	err = m.cm.RevokeCert(ctx, name, revokeReason, false)
	if err != nil && strings.Contains(err.Error(), "alreadyRevoked") {
		// certmagic wraps the CA's problem with %v: only its text says so.
		err = m.store.Delete(ctx, certmagic.StorageKeys.CertsSitePrefix(m.iss.IssuerKey(), name))
	}
	if err == nil {
		m.log.Info("certificate of a removed domain revoked", "domain", name)
	}
	return err
}

// onEvent follows certmagic's work on a certificate: it marks names
// served once their certificate is in this node's cache, and tells the
// coordinator. It must not block (it runs on certmagic's path).
func (m *Manager) onEvent(_ context.Context, event string, data map[string]any) error {
	name, _ := data["identifier"].(string)
	renewal, _ := data["renewal"].(bool)
	switch event {
	case "cert_obtaining":
		if !renewal {
			m.queue(Report{Name: name, State: stateIssuing, From: []string{stateVerified, stateFailed, stateIssuing}})
		}
	case "cert_obtained":
		m.queue(Report{Name: name, State: stateActive})
	case "cert_failed":
		err, _ := data["error"].(error)
		r := Report{Name: name, State: stateFailed, Reason: reason(err), From: []string{stateVerified, stateIssuing, stateFailed}}
		if renewal {
			// The certificate still serves: the domain stays active, with
			// the reason, until a renewal succeeds or it expires.
			r.State, r.From, r.Reason = stateActive, []string{stateActive}, "renewal failed, retrying: "+r.Reason
		}
		r.Reason = text.Clip(r.Reason, maxReason)
		m.queue(r)
	case "cached_managed_cert":
		sans, _ := data["sans"].([]string)
		m.mu.Lock()
		for _, n := range sans {
			if m.managed[n] != nil {
				m.served[n] = true
			}
		}
		m.mu.Unlock()
		for _, n := range sans {
			m.queue(Report{Name: n, State: stateActive}) // sent only if the coordinator does not know it yet
		}
	}
	return nil
}

func reason(err error) string {
	if err == nil {
		return "the CA refused the order"
	}
	var problem acme.Problem
	if errors.As(err, &problem) {
		s := problem.Detail
		for _, sub := range problem.Subproblems {
			s += "; " + sub.Detail
		}
		return strings.TrimSpace(s)
	}
	return err.Error()
}

// maxReason bounds a reason, as the coordinator does.
const maxReason = 500

func (m *Manager) queue(r Report) {
	select {
	case m.reports <- r:
	default:
		m.log.Warn("domain state reports backed up; one dropped", "domain", r.Name, "state", r.State)
	}
}

// report sends the queued reports in order, completing an active one
// with the certificate it names.
func (m *Manager) report(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-m.reports:
			ds, ok := m.domains.CustomDomains()
			d, exists := ds[r.Name]
			if !ok || !exists {
				continue
			}
			r.Org = d.Org
			if r.State == stateActive {
				cert, err := m.leaf(ctx, r.Name)
				if err != nil {
					m.log.Error("reading a domain's certificate", "domain", r.Name, "err", err)
					continue
				}
				r.Serial, r.NotBefore, r.NotAfter = fmt.Sprintf("%x", cert.SerialNumber), cert.NotBefore.UTC(), cert.NotAfter.UTC()
				if d.State == stateActive && d.Serial == r.Serial && r.Reason == "" {
					continue // known already
				}
			}
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := m.domains.ReportDomain(rctx, r)
			cancel()
			if err != nil && ctx.Err() == nil {
				m.log.Warn("reporting a domain's state", "domain", r.Name, "state", r.State, "err", err)
			}
		}
	}
}

// leaf is name's stored certificate.
func (m *Manager) leaf(ctx context.Context, name string) (*x509.Certificate, error) {
	b, err := m.store.Load(ctx, certmagic.StorageKeys.SiteCert(m.iss.IssuerKey(), name))
	if err != nil {
		return nil, err
	}
	p, _ := pem.Decode(b)
	if p == nil {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(p.Bytes)
}

// serveHTTP answers the CA's HTTP-01 requests from the shared store, and
// sends other requests on a served custom domain to HTTPS.
func (m *Manager) serveHTTP(w http.ResponseWriter, r *http.Request) {
	host := hostname.Of(r.Host)
	// Only the names of domains to serve reach the shared store: anyone
	// may send this port any request. The local view is asked, not what
	// this node manages: another node may have ordered a moment before
	// this one polled its view.
	ds, _ := m.domains.CustomDomains()
	if ds[host].Serve && m.iss.HandleHTTPChallenge(w, r) {
		return
	}
	if !m.Serves(host) {
		http.Error(w, `{"error":{"code":"not_found","message":"no custom domain of that name is served here"}}`, http.StatusNotFound)
		return
	}
	target := "https://" + host
	if m.cfg.HTTPSPort != 443 {
		target += ":" + strconv.Itoa(m.cfg.HTTPSPort)
	}
	http.Redirect(w, r, target+r.URL.RequestURI(), http.StatusPermanentRedirect)
}
