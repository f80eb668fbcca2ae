package egress_test

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/certnode/certnode/internal/egress"
)

// Decisions only: nothing here is dialed.
func TestGuardRefusesNonPublicRanges(t *testing.T) {
	refused := map[string]string{
		// The list.
		"127.0.0.1":        "loopback",
		"10.0.0.1":         "private",
		"169.254.169.254":  "link-local",
		"100.64.0.1":       "shared",
		"::1":              "loopback",
		"::ffff:127.0.0.1": "loopback",
		// IPv4 range edges and cloud metadata.
		"127.255.255.254":        "loopback",
		"0.0.0.0":                "unspecified",
		"0.1.2.3":                "this-network",
		"10.255.255.255":         "private",
		"172.16.0.1":             "private",
		"172.31.255.255":         "private",
		"192.168.1.1":            "private",
		"100.100.100.200":        "shared",
		"100.127.255.255":        "shared",
		"169.254.0.1":            "link-local",
		"192.0.0.192":            "reserved",
		"192.88.99.1":            "reserved",
		"198.18.0.1":             "benchmarking",
		"198.19.255.255":         "benchmarking",
		"192.0.2.1":              "documentation",
		"198.51.100.7":           "documentation",
		"203.0.113.9":            "documentation",
		"224.0.0.1":              "multicast",
		"239.255.255.250":        "multicast",
		"240.0.0.1":              "reserved",
		"255.255.255.255":        "broadcast",
		"::ffff:10.0.0.1":        "private",
		"::ffff:169.254.169.254": "link-local",
		"::ffff:100.64.0.1":      "shared",
		"::ffff:0.0.0.0":         "unspecified",
		// IPv6.
		"::":               "unspecified",
		"::127.0.0.1":      "reserved", // IPv4-compatible, deprecated
		"fc00::1":          "private",
		"fd00:ec2::254":    "private", // AWS metadata over IPv6
		"fe80::1":          "link-local",
		"fe80::1%eth0":     "link-local", // a zone must not hide the prefix
		"febf:ffff::1":     "link-local",
		"fec0::1":          "site-local",
		"ff02::1":          "multicast",
		"ff05::1:3":        "multicast",
		"100::1":           "reserved", // discard-only
		"fe7f::1":          "reserved", // unassigned, outside 2000::/3
		"64:ff9b:1::a00:1": "reserved", // local-use NAT64
		"2001::1":          "teredo",
		"2001:2::1":        "benchmarking",
		"2001:db8::1":      "documentation",
		"3fff::1":          "documentation",
		// NAT64 and 6to4 forms of refused IPv4.
		"64:ff9b::7f00:1":    "embedded loopback",
		"64:ff9b::a9fe:a9fe": "embedded link-local",
		"2002:7f00:1::1":     "embedded loopback",
		"2002:a00:1::":       "embedded private",
		"2002:6440:1::":      "embedded shared",
	}
	g := egress.NewGuard(nil)
	for s, reason := range refused {
		addr := netip.MustParseAddr(s)
		err := g.Check(addr)
		var fe *egress.ForbiddenAddressError
		if !errors.As(err, &fe) || !errors.Is(err, egress.ErrForbiddenAddress) {
			t.Errorf("%s: allowed (err %v), want refused as %s", s, err, reason)
			continue
		}
		if fe.Reason != reason || fe.Addr != addr {
			t.Errorf("%s: refused as %s for %s, want %s", s, fe.Addr, fe.Reason, reason)
		}
	}
	if g.Check(netip.Addr{}) == nil {
		t.Error("the zero address allowed")
	}
}

func TestGuardAllowsPublicAddresses(t *testing.T) {
	g := egress.NewGuard(nil)
	for _, s := range []string{
		"93.184.216.34", "1.1.1.1", "8.8.8.8", "11.0.0.1",
		// Just outside refused ranges.
		"9.255.255.255", "100.63.255.255", "100.128.0.0", "169.253.255.255",
		"172.15.255.255", "172.32.0.0", "192.167.255.255", "198.17.255.255",
		"198.20.0.0", "223.255.255.255",
		"2606:4700::1111", "2001:4860:4860::8888", "2a00:1450:4001::1",
		"::ffff:93.184.216.34",
		"64:ff9b::5db8:d822", // NAT64 of 93.184.216.34 (DNS64 networks)
		"2002:5db8:d822::1",  // 6to4 of the same
	} {
		if err := g.Check(netip.MustParseAddr(s)); err != nil {
			t.Errorf("%s refused: %v", s, err)
		}
	}
}

func TestGuardAllowList(t *testing.T) {
	g := egress.NewGuard([]netip.Prefix{
		netip.MustParsePrefix("127.0.0.0/8"),
		netip.MustParsePrefix("10.1.0.0/16"),
		netip.MustParsePrefix("fe80::/64"),
	})
	for _, s := range []string{"127.0.0.1", "127.3.2.1", "::ffff:127.0.0.1", "10.1.2.3", "fe80::1%eth0", "93.184.216.34"} {
		if err := g.Check(netip.MustParseAddr(s)); err != nil {
			t.Errorf("%s refused despite the allow-list: %v", s, err)
		}
	}
	// The allow-list overrides only what it names.
	for _, s := range []string{"::1", "10.2.0.1", "169.254.169.254", "64:ff9b::7f00:1", "fe80:0:0:1::1"} {
		if err := g.Check(netip.MustParseAddr(s)); !errors.Is(err, egress.ErrForbiddenAddress) {
			t.Errorf("%s: %v, want refused", s, err)
		}
	}
}

// The dialer's hook, called as the dialer would call it but with no
// socket: the connect never happens whatever the hook answers.
func TestControlJudgesTheDialedAddress(t *testing.T) {
	g := egress.NewGuard(nil)
	for _, c := range []struct{ network, address string }{
		{"tcp4", "127.0.0.1:80"},
		{"tcp4", "10.0.0.1:443"},
		{"tcp4", "169.254.169.254:80"},
		{"tcp4", "100.64.0.1:8080"},
		{"tcp6", "[::1]:80"},
		{"tcp6", "[::ffff:127.0.0.1]:80"},
		{"tcp6", "[fd00:ec2::254]:80"},
		{"tcp6", "[fe80::1%eth0]:80"},
		{"tcp4", "not-an-address:80"}, // fails closed
		{"tcp4", "127.0.0.1"},
	} {
		if err := g.Control(c.network, c.address, nil); !errors.Is(err, egress.ErrForbiddenAddress) {
			t.Errorf("%s %s: %v, want refused", c.network, c.address, err)
		}
	}
	for _, c := range []struct{ network, address string }{
		{"tcp4", "93.184.216.34:443"},
		{"tcp6", "[2606:4700::1111]:443"},
	} {
		if err := g.Control(c.network, c.address, nil); err != nil {
			t.Errorf("%s %s refused: %v", c.network, c.address, err)
		}
	}
}

// namedDNS answers A and AAAA questions for the names of records (one
// address each; the other type, and other names, get no records) over UDP
// on 127.0.0.1, and returns a resolver that sends all its queries there.
func namedDNS(t *testing.T, records map[string]netip.Addr) *net.Resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if resp := answerNamed(buf[:n], records); resp != nil {
				pc.WriteTo(resp, from)
			}
		}
	}()
	addr := pc.LocalAddr().String()
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
}

// answerNamed builds the response to a one-question query (RFC 1035 4.1).
func answerNamed(q []byte, records map[string]netip.Addr) []byte {
	if len(q) < 12 || binary.BigEndian.Uint16(q[4:]) != 1 {
		return nil
	}
	var labels []string
	end := 12
	for end < len(q) && q[end] != 0 {
		n := int(q[end])
		if end+1+n > len(q) {
			return nil
		}
		labels = append(labels, string(q[end+1:end+1+n]))
		end += 1 + n
	}
	end += 5 // the root label, QTYPE, QCLASS
	if end > len(q) {
		return nil
	}
	qtype := binary.BigEndian.Uint16(q[end-4:])
	resp := append([]byte(nil), q[:end]...)
	binary.BigEndian.PutUint16(resp[2:], 0x8180) // response, recursion desired and available
	binary.BigEndian.PutUint16(resp[6:], 0)
	binary.BigEndian.PutUint16(resp[8:], 0)  // no authority records
	binary.BigEndian.PutUint16(resp[10:], 0) // nor additional (the query's EDNS0 option)
	ip, ok := records[strings.ToLower(strings.Join(labels, "."))]
	if !ok {
		return resp
	}
	var rdata []byte
	switch {
	case qtype == 1 && ip.Is4():
		b := ip.As4()
		rdata = b[:]
	case qtype == 28 && ip.Is6():
		b := ip.As16()
		rdata = b[:]
	default:
		return resp
	}
	binary.BigEndian.PutUint16(resp[6:], 1)
	// Name by pointer to the question, the type asked, class IN, TTL 60.
	resp = append(resp, 0xc0, 12, byte(qtype>>8), byte(qtype), 0, 1, 0, 0, 0, 60, 0, byte(len(rdata)))
	return append(resp, rdata...)
}

// errNoConnect is what the wrapped hook below always answers, so that the
// dialer never connects, whatever the guard decided.
var errNoConnect = errors.New("test: the connect is replaced")

// Names a webhook URL may hold, resolving to the addresses the SSRF tests
// name: the guard judges the address each resolves to, in the dialer's
// hook, after resolution. The hook is the guard's wrapped so that the
// connect never happens: only the DNS stub on 127.0.0.1 is ever contacted,
// even if the guard were broken.
func TestWebhookGuardJudgesResolvedNames(t *testing.T) {
	cases := []struct {
		name   string
		addr   string
		dialed []string // what the hook may be given
		reason string   // "": allowed
	}{
		{"loopback.certnode.test", "127.0.0.1", []string{"127.0.0.1:80"}, "loopback"},
		{"private.certnode.test", "10.0.0.1", []string{"10.0.0.1:80"}, "private"},
		{"metadata.certnode.test", "169.254.169.254", []string{"169.254.169.254:80"}, "link-local"},
		{"cgnat.certnode.test", "100.64.0.1", []string{"100.64.0.1:80"}, "shared"},
		{"loopback6.certnode.test", "::1", []string{"[::1]:80"}, "loopback"},
		// An AAAA record holding an IPv4-mapped address: Go dials it as
		// IPv4, the kernel would too.
		{"mapped.certnode.test", "::ffff:127.0.0.1", []string{"127.0.0.1:80", "[::ffff:127.0.0.1]:80"}, "loopback"},
		{"metadata6.certnode.test", "fd00:ec2::254", []string{"[fd00:ec2::254]:80"}, "private"},
		{"public.certnode.test", "93.184.216.34", []string{"93.184.216.34:80"}, ""},
	}
	records := map[string]netip.Addr{}
	for _, c := range cases {
		records[c.name] = netip.MustParseAddr(c.addr)
	}
	resolver := namedDNS(t, records)
	g := egress.NewGuard(nil)
	for _, c := range cases {
		var mu sync.Mutex
		type decision struct {
			address string
			err     error
		}
		var got []decision
		d := &net.Dialer{Resolver: resolver, Control: func(network, address string, rc syscall.RawConn) error {
			err := g.Control(network, address, rc)
			mu.Lock()
			got = append(got, decision{address, err})
			mu.Unlock()
			return errNoConnect
		}}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := d.DialContext(ctx, "tcp", c.name+":80")
		cancel()
		if conn != nil {
			conn.Close()
			t.Fatalf("%s: connected", c.name)
		}
		if !errors.Is(err, errNoConnect) {
			t.Errorf("%s: %v; want the replaced connect's error (the name must resolve and reach the hook)", c.name, err)
			continue
		}
		mu.Lock()
		if len(got) != 1 || !slices.Contains(c.dialed, got[0].address) {
			t.Errorf("%s: the hook judged %+v, want one of %v", c.name, got, c.dialed)
		} else if c.reason == "" {
			if got[0].err != nil {
				t.Errorf("%s (%s): refused: %v", c.name, c.addr, got[0].err)
			}
		} else {
			var fe *egress.ForbiddenAddressError
			if !errors.As(got[0].err, &fe) || !errors.Is(got[0].err, egress.ErrForbiddenAddress) || fe.Reason != c.reason {
				t.Errorf("%s (%s): %v, want refused as %s", c.name, c.addr, got[0].err, c.reason)
			}
		}
		mu.Unlock()
	}
}
