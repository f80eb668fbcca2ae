package mail

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// RecordName is where a DKIM key's TXT record is published.
func RecordName(selector, domain string) string {
	return selector + "._domainkey." + strings.TrimSuffix(domain, ".")
}

// RecordValue is the TXT record that publishes pub (RFC 6376 §3.6.1; k=
// ed25519 per RFC 8463).
func RecordValue(pub crypto.PublicKey) (string, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			return "", err
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der), nil
	case ed25519.PublicKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(k), nil
	}
	return "", fmt.Errorf("dkim: key type %T: want RSA or Ed25519", pub)
}

// ParseRecord reads a DKIM key record's tag list (RFC 6376 §3.2): tags
// are name=value pairs separated by ';', white space around them ignored.
// A tag given twice or a malformed pair makes the record invalid.
func ParseRecord(txt string) (map[string]string, error) {
	tags := map[string]string{}
	for part := range strings.SplitSeq(txt, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" || strings.ContainsAny(k, " \t\r\n") {
			return nil, fmt.Errorf("dkim record: malformed tag %q", part)
		}
		if _, dup := tags[k]; dup {
			return nil, fmt.Errorf("dkim record: tag %q twice", k)
		}
		// White space inside a value (a long p= split over lines) is
		// not part of it.
		tags[k] = strings.Join(strings.Fields(v), "")
	}
	return tags, nil
}

// Errors of CheckRecord.
var (
	ErrRecordMissing  = errors.New("no DKIM record is published there")
	ErrRecordMismatch = errors.New("the published DKIM record does not hold this key")
)

// CheckRecord reports whether one of the TXT strings found at the
// record's name publishes the key of want (a RecordValue).
func CheckRecord(found []string, want string) error {
	wantTags, err := ParseRecord(want)
	if err != nil {
		return err
	}
	if len(found) == 0 {
		return ErrRecordMissing
	}
	var why error = ErrRecordMismatch
	for _, txt := range found {
		tags, err := ParseRecord(txt)
		if err != nil {
			why = fmt.Errorf("%w: %v", ErrRecordMismatch, err)
			continue
		}
		if v, ok := tags["v"]; ok && v != "DKIM1" {
			continue
		}
		k := tags["k"]
		if k == "" {
			k = "rsa"
		}
		if k == wantTags["k"] && tags["p"] == wantTags["p"] {
			return nil
		}
	}
	return why
}

// Resolver looks TXT records up through one DNS server (miekg/dns), so
// the server the coordinator trusts is configured, not whatever the host
// uses; tests point it at their own server.
type Resolver struct {
	Addr    string // host:port; "" uses the first server of /etc/resolv.conf
	Timeout time.Duration
}

// Server is the address queries go to.
func (r *Resolver) server() (string, error) {
	if r.Addr != "" {
		return r.Addr, nil
	}
	cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
	if err != nil || len(cc.Servers) == 0 {
		return "", fmt.Errorf("dns: no resolver configured and none in /etc/resolv.conf (%v)", err)
	}
	return net.JoinHostPort(cc.Servers[0], cc.Port), nil
}

// LookupTXT asks for name's TXT records over UDP, again over TCP when the
// answer was truncated. A name that does not exist has none (no error).
func (r *Resolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	server, err := r.server()
	if err != nil {
		return nil, err
	}
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeTXT)
	m.RecursionDesired = true
	// A 2048-bit key's record is over 400 bytes: ask for answers up to
	// 4096 bytes over UDP, and over TCP when still too large.
	m.SetEdns0(4096, false)
	in, _, err := (&dns.Client{Net: "udp", UDPSize: 4096, Timeout: timeout}).ExchangeContext(ctx, m, server)
	if err == nil && in.Truncated {
		in, _, err = (&dns.Client{Net: "tcp", Timeout: timeout}).ExchangeContext(ctx, m, server)
	}
	if err != nil {
		return nil, fmt.Errorf("dns %s TXT via %s: %w", name, server, err)
	}
	return TXTAnswers(in)
}

// TXTAnswers is the TXT strings of an answer, each record's strings
// joined (RFC 6376 §3.6.2.2); NXDOMAIN is no records.
func TXTAnswers(in *dns.Msg) ([]string, error) {
	switch in.Rcode {
	case dns.RcodeSuccess:
	case dns.RcodeNameError:
		return nil, nil
	default:
		return nil, fmt.Errorf("dns: the server answered %s", dns.RcodeToString[in.Rcode])
	}
	var out []string
	for _, rr := range in.Answer {
		if t, ok := rr.(*dns.TXT); ok {
			out = append(out, strings.Join(t.Txt, ""))
		}
	}
	return out, nil
}
