// Package mailtest serves what email tests need on loopback: an
// authoritative DNS server for TXT records (DKIM) on 127.0.0.1.
package mailtest

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"

	"github.com/certnode/certnode/internal/mail"
)

// DNS is a TXT server on 127.0.0.1 (UDP and TCP, one port) answering
// what Set put there; any other name is NXDOMAIN.
type DNS struct {
	Addr string
	mu   sync.Mutex
	txt  map[string][]string // by lower-case FQDN
}

// StartDNS starts a server for the test's lifetime.
func StartDNS(t testing.TB) *DNS {
	t.Helper()
	// UDP and TCP on one port: the UDP port the kernel gives may be taken
	// for TCP, so try a few.
	var pc net.PacketConn
	var ln net.Listener
	for i := 0; ln == nil; i++ {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err != nil {
			pc.Close()
			if i == 20 {
				t.Fatal(err)
			}
		}
	}
	d := &DNS{Addr: pc.LocalAddr().String(), txt: map[string][]string{}}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", d.serve)
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: mux}, {Listener: ln, Handler: mux}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
	return d
}

// Set publishes TXT values at name (none: removes it).
func (d *DNS) Set(name string, values ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.txt[strings.ToLower(dns.Fqdn(name))] = values
}

// LookupTXT asks the server over DNS, in the shape dkim.VerifyOptions
// takes.
func (d *DNS) LookupTXT(name string) ([]string, error) {
	return (&mail.Resolver{Addr: d.Addr}).LookupTXT(context.Background(), name)
}

func (d *DNS) serve(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	d.mu.Lock()
	for _, q := range req.Question {
		vals, ok := d.txt[strings.ToLower(q.Name)]
		if !ok {
			m.Rcode = dns.RcodeNameError
			continue
		}
		if q.Qtype != dns.TypeTXT {
			continue
		}
		for _, v := range vals {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: chunks(v)})
		}
	}
	d.mu.Unlock()
	if _, udp := w.LocalAddr().(*net.UDPAddr); udp {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
		m.Truncate(size) // sets TC: the client asks again over TCP
	}
	_ = w.WriteMsg(m)
}

// chunks splits a value into the 255-byte strings a TXT record holds.
func chunks(v string) []string {
	var out []string
	for len(v) > 255 {
		out, v = append(out, v[:255]), v[255:]
	}
	return append(out, v)
}
