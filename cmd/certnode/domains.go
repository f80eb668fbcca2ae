package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/spf13/pflag"

	"github.com/certnode/certnode/coordinator"
	"github.com/certnode/certnode/ingest"
	"github.com/certnode/certnode/ingest/certs"
)

// domainFlags configure ingest's custom domains: their TLS listener and
// the ACME CA their certificates come from.
type domainFlags struct {
	listen, http, ca, caRoot, email string
	window                          float64
	check                           time.Duration
}

func (f *domainFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.listen, "domains-listen", "", "serve the organizations' custom domains over TLS on this address (e.g. :443), their certificates from --acme-ca; needs --coordinator and key-encryption keys (--kek-*)")
	bindEnv(fs, "domains-listen", "CERTNODE_DOMAINS_LISTEN")
	fs.StringVar(&f.ca, "acme-ca", "", "the ACME directory URL certificates are ordered from (Let's Encrypt: https://acme-v02.api.letsencrypt.org/directory)")
	bindEnv(fs, "acme-ca", "CERTNODE_ACME_CA")
	fs.StringVar(&f.caRoot, "acme-ca-root", "", "PEM file of the CA certificates the ACME server's own TLS is checked with (default: the system's)")
	bindEnv(fs, "acme-ca-root", "CERTNODE_ACME_CA_ROOT")
	fs.StringVar(&f.email, "acme-email", "", "the ACME account's contact address")
	bindEnv(fs, "acme-email", "CERTNODE_ACME_EMAIL")
	fs.StringVar(&f.http, "acme-http", ":80", "plain-HTTP listener for the CA's HTTP-01 challenges (port 80 of every ingest node); other requests on a custom domain are sent to HTTPS")
	bindEnv(fs, "acme-http", "CERTNODE_ACME_HTTP")
	fs.Float64Var(&f.window, "acme-renewal-window", 1.0/3, "renew a certificate when this fraction of its lifetime remains")
	bindEnv(fs, "acme-renewal-window", "CERTNODE_ACME_RENEWAL_WINDOW")
	fs.DurationVar(&f.check, "acme-renew-check", 10*time.Minute, "how often certificates are checked for renewal")
	bindEnv(fs, "acme-renew-check", "CERTNODE_ACME_RENEW_CHECK")
}

func (f *domainFlags) enabled() bool { return f.listen != "" }

// open makes the certificate manager, and sets ingest's custom domains'
// listener: its TLS picks their certificates, and the service's own
// (--tls-cert, if any) for other names.
func (f *domainFlags) open(r *coordinator.Replica, seal certs.Sealer, cfg *ingest.Config) (*certs.Manager, error) {
	if r == nil {
		return nil, usageErr("--domains-listen needs --coordinator: custom domains are the coordinator's")
	}
	if f.ca == "" {
		return nil, usageErr("--domains-listen needs --acme-ca, the ACME directory certificates come from")
	}
	c := certs.Config{CA: f.ca, Email: f.email, HTTPAddr: f.http, RenewalWindow: f.window, RenewCheck: f.check}
	if f.caRoot != "" {
		pem, err := os.ReadFile(f.caRoot)
		if err != nil {
			return nil, usageErr("--acme-ca-root: %v", err)
		}
		c.CARoots = x509.NewCertPool()
		if !c.CARoots.AppendCertsFromPEM(pem) {
			return nil, usageErr("--acme-ca-root %s: no PEM certificate", f.caRoot)
		}
	}
	_, port, err := net.SplitHostPort(f.listen)
	if err != nil {
		return nil, usageErr("--domains-listen %q: want host:port", f.listen)
	}
	if c.HTTPSPort, _ = strconv.Atoi(port); c.HTTPSPort == 0 {
		c.HTTPSPort = 443
	}
	m, err := certs.New(c, replicaDomains{r}, r.CertStore(), seal)
	if err != nil {
		return nil, &exitError{code: exitUsage, err: err}
	}
	var fallback func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	if cfg.TLS != nil {
		fallback = cfg.TLS.GetCertificate
	}
	cfg.DomainsAddr, cfg.DomainsTLS = f.listen, m.TLSConfig(fallback)
	return m, nil
}

// replicaDomains gives the certificate manager the coordinator's domains.
type replicaDomains struct{ r *coordinator.Replica }

func (d replicaDomains) CustomDomains() (map[string]certs.Domain, bool) {
	ds, ok := d.r.Domains()
	if !ok {
		return nil, false
	}
	out := make(map[string]certs.Domain, len(ds))
	for n, dom := range ds {
		_, active := d.r.Limits(dom.Org)
		out[n] = certs.Domain{Org: dom.Org, Serve: active && dom.Issuable(), State: dom.State, Serial: dom.CertSerial,
			Proved: dom.Bound(), Claimed: dom.CreatedAt}
	}
	return out, true
}

func (d replicaDomains) ReportDomain(ctx context.Context, r certs.Report) error {
	err := d.r.ReportDomain(ctx, coordinator.SetDomainState{Name: r.Name, Org: r.Org, State: r.State, Reason: r.Reason,
		From: r.From, Serial: r.Serial, NotBefore: r.NotBefore, NotAfter: r.NotAfter})
	if err != nil {
		return fmt.Errorf("domain %s: %w", r.Name, err)
	}
	return nil
}
