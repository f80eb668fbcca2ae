package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/net/idna"

	"github.com/certnode/certnode/internal/hostname"
	"github.com/certnode/certnode/internal/mail"
	"github.com/certnode/certnode/internal/text"
)

// Custom domains: an organization serves its API, JWKS and pages on a
// name of its own once it proved it holds the name. The coordinator keeps
// each domain's state; ingest nodes obtain its certificate (ACME) and
// report back how that went.

// Domain states.
const (
	DomainPending  = "pending"  // waiting for the ownership proof
	DomainVerified = "verified" // proved by DNS; a certificate is due
	DomainIssuing  = "issuing"  // a certificate is being obtained
	DomainActive   = "active"   // served with a certificate
	DomainFailed   = "failed"   // the last proof or issuance failed (Reason)
)

// How a domain's ownership is proved: a DNS TXT record with the domain's
// token, or the ACME CA's HTTP-01 challenge on the name itself (the name
// already points at ingest; the first certificate is the proof).
const (
	VerifyDNS  = "dns"
	VerifyHTTP = "http"
)

// DomainChallengeLabel is prepended to a domain to name its TXT record.
const DomainChallengeLabel = "_certnode-challenge"

// maxDomainsPerOrg bounds an organization's domains.
const maxDomainsPerOrg = 50

// Domain is an organization's custom domain.
type Domain struct {
	Name         string `json:"name"` // lower-case A-labels, no trailing dot
	Org          string `json:"org"`
	Verification string `json:"verification"`
	State        string `json:"state"`
	// Reason says why the last check or issuance failed, or what a
	// pending domain still lacks.
	Reason string `json:"reason,omitempty"`
	// Token is the value the TXT record must hold (not a secret: it is
	// published in DNS, and names the organization nowhere).
	Token      string    `json:"token"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
	CheckedAt  time.Time `json:"checked_at,omitzero"`
	VerifiedAt time.Time `json:"verified_at,omitzero"`
	// The certificate being served, as an ingest node last reported it.
	CertSerial   string    `json:"cert_serial,omitempty"`
	CertNotAfter time.Time `json:"cert_not_after,omitzero"`
}

func (d *Domain) owner() string              { return d.Org }
func (d *Domain) created() time.Time         { return d.CreatedAt }
func domainsOf(st *State) map[string]*Domain { return st.Domains }

// ClaimTTL is how long a claim may stay unproved: then another
// organization may claim the name, so that nobody can hold a name by
// adding it and never proving it.
const ClaimTTL = 7 * 24 * time.Hour

// lapsed reports whether an unproved claim is past ClaimTTL at now.
func (d *Domain) lapsed(now time.Time) bool {
	return !d.Bound() && d.State != DomainIssuing && now.Sub(d.CreatedAt) > ClaimTTL
}

// Bound reports whether the domain's ownership is established, so that
// requests on it are bound to its organization: proved by DNS, or (HTTP
// verification) by its first certificate.
func (d *Domain) Bound() bool {
	return d.State == DomainVerified || d.State == DomainActive || !d.VerifiedAt.IsZero()
}

// Issuable reports whether ingest should hold a certificate for the
// domain: a bound one, or an HTTP-verified one its owner asked to prove.
func (d *Domain) Issuable() bool {
	return d.Bound() || d.Verification == VerifyHTTP && d.State == DomainIssuing
}

// TXTRecord is the DNS record that proves the domain's ownership.
func (d *Domain) TXTRecord() (name, value string) {
	return DomainChallengeLabel + "." + d.Name, "certnode-verify=" + d.Token
}

// NormalizeDomain checks a domain name and returns its canonical form:
// lower-case A-labels (IDNA 2008, so "bücher.example" becomes
// "xn--bcher-kva.example"), no trailing dot. It refuses IP addresses,
// wildcards, single labels and anything DNS could not hold.
func NormalizeDomain(name string) (string, error) {
	n := strings.TrimSuffix(strings.TrimSpace(name), ".")
	if n == "" {
		return "", invalid("domain name is required")
	}
	if _, err := netip.ParseAddr(strings.Trim(n, "[]")); err == nil {
		return "", invalid("domain %q: an IP address, not a name", name)
	}
	if strings.Contains(n, "*") {
		return "", invalid("domain %q: wildcards are not supported; add each name", name)
	}
	if !utf8.ValidString(n) {
		return "", invalid("domain %q: not UTF-8", name)
	}
	a, err := idna.Lookup.ToASCII(n)
	if err != nil {
		return "", invalid("domain %q: %v", name, err)
	}
	// A-labels that do not decode (punycode of nothing valid) are refused
	// too: the stored name must read back as itself.
	if again, err := idna.Lookup.ToASCII(strings.ToLower(a)); err != nil || again != strings.ToLower(a) {
		return "", invalid("domain %q: not a valid internationalized name", name)
	}
	a = strings.ToLower(a)
	labels := strings.Split(a, ".")
	if len(a) > 253 || len(labels) < 2 {
		return "", invalid("domain %q: a fully qualified name of at least two labels, at most 253 bytes", name)
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return "", invalid("domain %q: label %q", name, l)
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return "", invalid("domain %q: label %q has %q", name, l, c)
			}
		}
	}
	if _, err := netip.ParseAddr(a); err == nil {
		return "", invalid("domain %q: an IP address, not a name", name)
	}
	return a, nil
}

var domainStates = []string{DomainPending, DomainVerified, DomainIssuing, DomainActive, DomainFailed}

func (d *Domain) check() error {
	var errs []error
	if n, err := NormalizeDomain(d.Name); err != nil || n != d.Name {
		errs = append(errs, invalid("domain name %q is not canonical", d.Name))
	}
	if d.Verification != VerifyDNS && d.Verification != VerifyHTTP {
		errs = append(errs, invalid("verification %q: want dns or http", d.Verification))
	}
	if !slices.Contains(domainStates, d.State) {
		errs = append(errs, invalid("state %q", d.State))
	}
	if len(d.Token) < 16 || len(d.Token) > 64 {
		errs = append(errs, invalid("token must be 16-64 bytes"))
	}
	if len(d.Reason) > maxReason {
		errs = append(errs, invalid("reason is at most %d bytes", maxReason))
	}
	if d.CreatedAt.IsZero() || d.UpdatedAt.IsZero() {
		errs = append(errs, invalid("created_at and updated_at are required"))
	}
	return errors.Join(errs...)
}

const (
	cmdAddDomain      cmdType = 29
	cmdDeleteDomain   cmdType = 30
	cmdSetDomainState cmdType = 31
)

// AddDomain adds a domain to an organization. A name belongs to one
// organization at a time.
type AddDomain struct {
	Meta   `json:"meta,omitzero"`
	Domain Domain `json:"domain"`
}

func (*AddDomain) cmdType() cmdType { return cmdAddDomain }
func (c *AddDomain) validate(s *State) error {
	d := c.Domain
	if err := d.check(); err != nil {
		return err
	}
	if _, ok := s.Orgs[d.Org]; !ok {
		return fmt.Errorf("%w: organization %q", ErrNotFound, d.Org)
	}
	if old := s.Domains[d.Name]; old != nil && !old.lapsed(c.Meta.At) {
		// The same answer whoever holds it: it tells nobody which names
		// other organizations claim.
		return fmt.Errorf("%w: the domain %q is claimed already", ErrConflict, d.Name)
	}
	n := 0
	for _, o := range s.Domains {
		if o.Org == d.Org {
			n++
		}
	}
	if n >= maxDomainsPerOrg {
		return fmt.Errorf("%w: an organization has at most %d domains", ErrConflict, maxDomainsPerOrg)
	}
	return nil
}
func (c *AddDomain) apply(s *State) {
	d := c.Domain
	s.Domains[d.Name] = &d // a lapsed claim of another organization goes
}
func (c *AddDomain) audit() (string, string, string) {
	return "domain.add", c.Domain.Org, c.Domain.Name
}

// DeleteDomain removes a domain; ingest nodes stop serving it and revoke
// its certificate.
type DeleteDomain struct {
	Meta `json:"meta,omitzero"`
	Name string `json:"name"`
	Org  string `json:"org"`
}

func (*DeleteDomain) cmdType() cmdType { return cmdDeleteDomain }
func (c *DeleteDomain) validate(s *State) error {
	if d := s.Domains[c.Name]; d == nil || d.Org != c.Org {
		return fmt.Errorf("%w: domain %q", ErrNotFound, c.Name)
	}
	return nil
}
func (c *DeleteDomain) apply(s *State)                  { delete(s.Domains, c.Name) }
func (c *DeleteDomain) audit() (string, string, string) { return "domain.delete", c.Org, c.Name }

// SetDomainState records a check's or an issuance's outcome. From lists
// the states it may follow (empty: any), so a late report never undoes a
// newer one (an old failure after the success of a retry).
type SetDomainState struct {
	Meta   `json:"meta,omitzero"`
	Name   string   `json:"name"`
	Org    string   `json:"org"`
	State  string   `json:"state"`
	Reason string   `json:"reason,omitempty"`
	From   []string `json:"from,omitempty"`
	// Verified marks the ownership proved (at Meta.At).
	Verified bool `json:"verified,omitempty"`
	// The certificate served, with state active.
	Serial    string    `json:"serial,omitempty"`
	NotBefore time.Time `json:"not_before,omitzero"`
	NotAfter  time.Time `json:"not_after,omitzero"`
}

func (*SetDomainState) cmdType() cmdType { return cmdSetDomainState }
func (c *SetDomainState) validate(s *State) error {
	d := s.Domains[c.Name]
	switch {
	case d == nil || d.Org != c.Org:
		return fmt.Errorf("%w: domain %q", ErrNotFound, c.Name)
	case !slices.Contains(domainStates, c.State):
		return invalid("state %q", c.State)
	case len(c.From) > 0 && !slices.Contains(c.From, d.State):
		return fmt.Errorf("%w: domain %q is %s", ErrConflict, c.Name, d.State)
	case c.Meta.At.IsZero():
		return invalid("at is required")
	case len(c.Reason) > maxReason || len(c.Serial) > 128:
		return invalid("reason or serial too long")
	case c.State == DomainActive && !d.Bound() && c.NotBefore.Before(d.CreatedAt):
		// A certificate proves an HTTP-verified name only if the CA issued
		// it for this claim: not one left from an earlier holder.
		return fmt.Errorf("%w: the certificate of %q predates its claim", ErrConflict, c.Name)
	}
	return nil
}
func (c *SetDomainState) apply(s *State) {
	d := *s.Domains[c.Name] // copy: readers may hold the old value
	d.State, d.Reason, d.UpdatedAt, d.CheckedAt = c.State, c.Reason, c.Meta.At, c.Meta.At
	if (c.Verified || c.State == DomainActive) && d.VerifiedAt.IsZero() {
		d.VerifiedAt = c.Meta.At // an HTTP-verified domain is proved by its certificate
	}
	if c.State == DomainActive {
		d.CertSerial, d.CertNotAfter = c.Serial, c.NotAfter
	}
	s.Domains[c.Name] = &d
}
func (c *SetDomainState) audit() (string, string, string) {
	return "domain." + c.State, c.Org, c.Name
}

// domainView is a domain as the API shows it: with the record to publish.
type domainView struct {
	Domain
	DNSRecord *dnsRecord `json:"dns_record,omitempty"`
}

type dnsRecord struct {
	Type  string `json:"type"`
	Name  string `json:"name"`
	Value string `json:"value"`
}

func domainViewOf(_ *State, d *Domain) domainView {
	v := domainView{Domain: *d}
	if d.Verification == VerifyDNS {
		name, value := d.TXTRecord()
		v.DNSRecord = &dnsRecord{Type: "TXT", Name: name, Value: value}
	}
	return v
}

func (s *Server) addDomain(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	var b struct {
		Name         string `json:"name"`
		Verification string `json:"verification"`
	}
	if err := decodeBody(body, &b); err != nil {
		s.fail(w, err)
		return
	}
	name, err := NormalizeDomain(b.Name)
	if err != nil {
		s.fail(w, err)
		return
	}
	if r := reservedBy(name, s.node.cfg.ReservedDomains); r != "" {
		s.fail(w, invalid("domain %q: the service's own name %q and the names under it are reserved", name, r))
		return
	}
	if b.Verification == "" {
		b.Verification = VerifyDNS
	}
	token, err := newToken("")
	if err != nil {
		s.fail(w, err)
		return
	}
	now := time.Now().UTC()
	d := Domain{Name: name, Org: sc.org, Verification: b.Verification, State: DomainPending, Token: token[:32],
		CreatedAt: now, UpdatedAt: now}
	if d.Verification == VerifyDNS {
		rec, _ := d.TXTRecord()
		d.Reason = "publish the TXT record " + rec + ", then verify"
	} else {
		d.Reason = "point the name at ingest, then verify: the certificate's HTTP-01 challenge proves it"
	}
	s.write(w, r, body, &AddDomain{Domain: d}, http.StatusCreated, domainViewOf(nil, &d))
}

func (s *Server) listDomains(w http.ResponseWriter, _ *http.Request, sc scope, _ []byte) {
	writeJSON(w, http.StatusOK, map[string]any{"domains": ownedList(s, sc, domainsOf, domainViewOf)})
}

// domain finds a domain of the scope's organization, answering 404 itself
// when there is none.
func (s *Server) domain(w http.ResponseWriter, r *http.Request, sc scope) (Domain, bool) {
	name, err := NormalizeDomain(r.PathValue("name"))
	if err != nil {
		s.fail(w, fmt.Errorf("%w: domain %q", ErrNotFound, r.PathValue("name")))
		return Domain{}, false
	}
	d, ok := owned(s, sc, domainsOf, name)
	if !ok {
		s.fail(w, fmt.Errorf("%w: domain %q", ErrNotFound, name))
	}
	return d, ok
}

func (s *Server) getDomain(w http.ResponseWriter, r *http.Request, sc scope, _ []byte) {
	if d, ok := s.domain(w, r, sc); ok {
		writeJSON(w, http.StatusOK, domainViewOf(nil, &d))
	}
}

func (s *Server) deleteDomain(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	if d, ok := s.domain(w, r, sc); ok {
		s.write(w, r, body, &DeleteDomain{Name: d.Name, Org: sc.org}, http.StatusNoContent, nil)
	}
}

// verifyDomain checks a domain's ownership now: its TXT record through the
// configured resolver, or, for HTTP verification, starts the issuance
// whose challenge proves it. A DNS check that fails leaves the domain
// pending with the reason and answers 422 verification_failed.
func (s *Server) verifyDomain(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	d, ok := s.domain(w, r, sc)
	if !ok {
		return
	}
	now := time.Now().UTC()
	switch {
	case d.State == DomainVerified || d.State == DomainActive,
		d.State == DomainIssuing && now.Sub(d.UpdatedAt) < issuingStale:
		writeJSON(w, http.StatusOK, domainViewOf(nil, &d))
		return
	}
	// A domain issuing for long (no ingest node took it, or its outcome
	// was lost) may be asked again.
	c := &SetDomainState{Meta: Meta{At: now}, Name: d.Name, Org: sc.org, From: []string{DomainPending, DomainFailed, DomainIssuing}}
	var failure error
	switch {
	case d.Verification == VerifyHTTP:
		c.State = DomainIssuing
	case !d.VerifiedAt.IsZero():
		c.State = DomainVerified // proved before: a retry of a failed issuance
	default:
		ctx, cancel := context.WithTimeout(r.Context(), domainCheckTimeout)
		failure = checkTXT(ctx, s.node.resolver(), &d)
		cancel()
		c.State, c.Verified = DomainVerified, true
		if failure != nil {
			c.State, c.Verified, c.Reason = DomainPending, false, text.Clip(failure.Error(), maxReason)
		}
	}
	if !s.commit(w, r, c) {
		return
	}
	d.State, d.Reason, d.UpdatedAt, d.CheckedAt = c.State, c.Reason, c.Meta.At, c.Meta.At
	if c.Verified && d.VerifiedAt.IsZero() {
		d.VerifiedAt = c.Meta.At
	}
	if failure != nil {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"error": map[string]string{"code": "verification_failed", "message": failure.Error()},
			"domain": domainViewOf(nil, &d)})
		return
	}
	writeJSON(w, http.StatusOK, domainViewOf(nil, &d))
}

// maxReason bounds a domain's reason.
const maxReason = 500

// issuingStale is how long an issuance may go without news before its
// owner may ask again.
const issuingStale = 10 * time.Minute

// domainCheckTimeout bounds one TXT lookup.
const domainCheckTimeout = 10 * time.Second

// Resolver looks up TXT records (internal/mail.Resolver): a name without
// any has none, not an error.
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
}

// resolver is the configured resolver, or the first of /etc/resolv.conf.
func (n *Node) resolver() Resolver {
	if n.cfg.Resolver != nil {
		return n.cfg.Resolver
	}
	return &mail.Resolver{}
}

// checkTXT looks for the domain's token in its TXT record. The message of
// its error is what the domain's owner reads.
func checkTXT(ctx context.Context, res Resolver, d *Domain) error {
	name, want := d.TXTRecord()
	got, err := res.LookupTXT(ctx, name)
	switch {
	case err == nil && len(got) == 0:
		return fmt.Errorf("no TXT record at %s: publish %q there", name, want)
	case err != nil:
		return fmt.Errorf("looking up the TXT record at %s: %v", name, err)
	case slices.Contains(got, want):
		return nil
	}
	return fmt.Errorf("the TXT record at %s holds %q, not %q", name, strings.Join(got, `", "`), want)
}

// reportDomain takes an ingest node's word on a domain's certificate
// (POST /v1/node/domains/{name}/state).
func (s *Server) reportDomain(w http.ResponseWriter, r *http.Request, body []byte) {
	var c SetDomainState
	if err := decodeBody(body, &c); err != nil {
		s.fail(w, err)
		return
	}
	c.Name = r.PathValue("name")
	switch c.State {
	case DomainIssuing, DomainActive, DomainFailed:
	default:
		s.fail(w, invalid("a node reports issuing, active or failed, not %q", c.State))
		return
	}
	c.Meta.At = time.Now().UTC()
	s.write(w, r, body, &c, http.StatusNoContent, nil)
}

// DomainOrg is the organization a request on host is bound to: the owner
// of a proved custom domain of that name (host may carry a port).
func (r *Replica) DomainOrg(host string) (string, bool) {
	st := r.current()
	if st == nil || len(st.domains) == 0 {
		return "", false
	}
	d := st.domains[hostname.Of(host)]
	if d == nil || !d.Bound() || st.orgs[d.Org] == nil {
		return "", false
	}
	return d.Org, true
}

// Domains are the custom domains of every organization, by name; false
// until the replica first heard from the cluster.
func (r *Replica) Domains() (map[string]Domain, bool) {
	st := r.current()
	if st == nil {
		return nil, false
	}
	out := make(map[string]Domain, len(st.domains))
	for n, d := range st.domains {
		out[n] = *d
	}
	return out, true
}

// ReportDomain tells the cluster how a domain's certificate is doing.
func (r *Replica) ReportDomain(ctx context.Context, c SetDomainState) error {
	return r.postNode(ctx, "/v1/node/domains/"+url.PathEscape(c.Name)+"/state", c)
}

// reservedBy is the reserved name that name is or lies under ("": none).
func reservedBy(name string, reserved []string) string {
	for _, r := range reserved {
		if name == r || strings.HasSuffix(name, "."+r) {
			return r
		}
	}
	return ""
}
