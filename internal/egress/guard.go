// Package egress makes HTTP requests to addresses customers choose (webhook
// endpoints) without letting them reach the network CertNode runs in: a
// guard judges every address a connection is about to be made to, after DNS
// resolution, and refuses loopback, private, link-local (cloud metadata),
// CGNAT, multicast and other non-public ranges unless an allow-list names
// them.
package egress

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
)

// ErrForbiddenAddress is what every refusal wraps: errors.Is finds it
// through the net.OpError and url.Error a refused request returns.
var ErrForbiddenAddress = errors.New("forbidden address")

// ForbiddenAddressError names the address refused and why.
type ForbiddenAddressError struct {
	Addr netip.Addr
	// Reason names the range, e.g. "loopback", "private", "link-local".
	Reason string
}

func (e *ForbiddenAddressError) Error() string {
	return fmt.Sprintf("egress: refusing to connect to %s (%s address)", e.Addr, e.Reason)
}

func (e *ForbiddenAddressError) Unwrap() error { return ErrForbiddenAddress }

type refusedRange struct {
	prefix netip.Prefix
	reason string
}

// refused lists the ranges no webhook may reach, first match naming the
// reason. IPv4 from the IANA IPv4 Special-Purpose Address Registry
// (RFC 6890) and Svix's list; IPv6 from the IPv6 Special-Purpose Address
// Registry. IPv4-mapped IPv6 addresses are judged as their IPv4 (see
// refusal), and 6to4 and NAT64 addresses by the IPv4 they embed.
var refused = func() []refusedRange {
	list := []struct{ prefix, reason string }{
		{"0.0.0.0/32", "unspecified"}, // reaches the local host on Linux
		{"0.0.0.0/8", "this-network"}, // RFC 1122
		{"10.0.0.0/8", "private"},     // RFC 1918
		{"100.64.0.0/10", "shared"},   // RFC 6598 CGNAT; Alibaba's metadata is 100.100.100.200
		{"127.0.0.0/8", "loopback"},
		{"169.254.0.0/16", "link-local"}, // RFC 3927; cloud metadata at 169.254.169.254
		{"172.16.0.0/12", "private"},
		{"192.0.0.0/24", "reserved"}, // RFC 6890 IETF protocol assignments
		{"192.0.2.0/24", "documentation"},
		{"192.88.99.0/24", "reserved"}, // RFC 7526: deprecated 6to4 relay anycast
		{"192.168.0.0/16", "private"},
		{"198.18.0.0/15", "benchmarking"}, // RFC 2544
		{"198.51.100.0/24", "documentation"},
		{"203.0.113.0/24", "documentation"},
		{"224.0.0.0/4", "multicast"},
		{"255.255.255.255/32", "broadcast"},
		{"240.0.0.0/4", "reserved"},
		{"::/128", "unspecified"},
		{"::1/128", "loopback"},
		{"2001::/32", "teredo"},            // RFC 4380: the client's IPv4 is obfuscated
		{"2001:2::/48", "benchmarking"},    // RFC 5180
		{"2001:db8::/32", "documentation"}, // RFC 3849
		{"3fff::/20", "documentation"},     // RFC 9637
		// Outside 2000::/3 only these are named; the rest is refused as
		// reserved below.
		{"fc00::/7", "private"},     // RFC 4193; AWS metadata at fd00:ec2::254
		{"fe80::/10", "link-local"}, // RFC 4291
		{"fec0::/10", "site-local"}, // RFC 3879, deprecated but still routed by some stacks
		{"ff00::/8", "multicast"},
	}
	out := make([]refusedRange, len(list))
	for i, r := range list {
		out[i] = refusedRange{netip.MustParsePrefix(r.prefix), r.reason}
	}
	return out
}()

var (
	nat64     = netip.MustParsePrefix("64:ff9b::/96") // RFC 6052: IPv4 in the last 32 bits
	sixToFour = netip.MustParsePrefix("2002::/16")    // RFC 3056: IPv4 in bits 16 to 47
	// RFC 4291 and the IANA IPv6 Address Space registry: all global
	// unicast is here; the IPv6 outside it is reserved, unassigned or local
	// (::/96 IPv4-compatible, 100::/64 discard, 64:ff9b:1::/48 local-use
	// NAT64 whose embedding the operator chooses).
	globalUnicast6 = netip.MustParsePrefix("2000::/3")
)

// refusal returns why ip must not be dialed, or "" when it may be.
func refusal(ip netip.Addr) string {
	if !ip.IsValid() {
		return "invalid"
	}
	// The kernel connects ::ffff:a.b.c.d to a.b.c.d, and netip prefixes of
	// one family never contain the other's addresses.
	ip = ip.Unmap()
	for _, r := range refused {
		if r.prefix.Contains(ip) {
			return r.reason
		}
	}
	// A NAT64 gateway or 6to4 relay forwards to the embedded IPv4, which
	// may be on its own network.
	b := ip.As16()
	var embedded netip.Addr
	switch {
	case nat64.Contains(ip):
		embedded = netip.AddrFrom4([4]byte(b[12:16]))
	case sixToFour.Contains(ip):
		embedded = netip.AddrFrom4([4]byte(b[2:6]))
	case ip.Is6() && !globalUnicast6.Contains(ip):
		return "reserved"
	default:
		return ""
	}
	if reason := refusal(embedded); reason != "" {
		return "embedded " + reason
	}
	return ""
}

// Guard decides which addresses outbound connections may reach.
type Guard struct {
	allow []netip.Prefix
}

// NewGuard returns a guard that permits allow's prefixes (e.g. 127.0.0.0/8
// for certnode dev) even where they lie in a refused range.
func NewGuard(allow []netip.Prefix) *Guard {
	return &Guard{allow: append([]netip.Prefix(nil), allow...)}
}

// Check returns nil when ip may be dialed, or a *ForbiddenAddressError.
func (g *Guard) Check(ip netip.Addr) error {
	// Prefix.Contains is false for any address with a zone (fe80::1%eth0).
	bare := ip.WithZone("")
	for _, p := range g.allow {
		if p.Contains(bare) || p.Contains(bare.Unmap()) {
			return nil
		}
	}
	if reason := refusal(bare); reason != "" {
		return &ForbiddenAddressError{Addr: ip, Reason: reason}
	}
	return nil
}

// Control is a net.Dialer Control hook: the dialer calls it with each
// resolved address just before connecting, so the address judged is the
// one connected to (no rebinding between a check and the connect).
func (g *Guard) Control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		// Fail closed: whatever this is, it was not judged.
		return fmt.Errorf("egress: dial address %q: %w", address, ErrForbiddenAddress)
	}
	return g.Check(ap.Addr())
}
