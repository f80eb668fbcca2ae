package egress_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certnode/certnode/internal/egress"
)

// Every connection in these tests goes to 127.0.0.1 (or ::1), and names are
// resolved by loopbackDNS, never by the system's servers.

var allowLoopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}

// loopbackDNS answers every A question with 127.0.0.1 and every other
// question with no records, over UDP on 127.0.0.1. The resolver it returns
// sends all its queries there.
func loopbackDNS(t *testing.T) (*net.Resolver, *atomic.Int64) {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	var queries atomic.Int64
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if resp := answer(buf[:n]); resp != nil {
				queries.Add(1)
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
	}, &queries
}

// answer builds the response to a one-question query (RFC 1035 4.1).
func answer(q []byte) []byte {
	if len(q) < 12 || binary.BigEndian.Uint16(q[4:]) != 1 {
		return nil
	}
	end := 12
	for end < len(q) && q[end] != 0 {
		end += 1 + int(q[end])
	}
	end += 5 // the root label, QTYPE, QCLASS
	if end > len(q) {
		return nil
	}
	qtype := binary.BigEndian.Uint16(q[end-4:])
	resp := append([]byte(nil), q[:end]...)
	binary.BigEndian.PutUint16(resp[2:], 0x8180) // response, recursion desired and available
	binary.BigEndian.PutUint16(resp[8:], 0)      // no authority records
	binary.BigEndian.PutUint16(resp[10:], 0)     // nor additional (the query's EDNS0 option)
	if qtype != 1 {
		binary.BigEndian.PutUint16(resp[6:], 0)
		return resp
	}
	binary.BigEndian.PutUint16(resp[6:], 1)
	// Name by pointer to the question, type A, class IN, TTL 60, 4 bytes.
	return append(resp, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1)
}

// receiver is an httptest server on 127.0.0.1 that counts requests.
func receiver(t *testing.T, h http.HandlerFunc) (port string, hits *atomic.Int64) {
	t.Helper()
	hits = new(atomic.Int64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	_, port, _ = net.SplitHostPort(srv.Listener.Addr().String())
	return port, hits
}

func newClient(t *testing.T, allow []netip.Prefix, resolver *net.Resolver) *http.Client {
	t.Helper()
	c := egress.DefaultConfig()
	c.Allow, c.Resolver = allow, resolver
	client, err := egress.NewClient(c)
	if err != nil {
		t.Fatal(err)
	}
	return client
}

func TestLoopbackRefusedUnlessAllowed(t *testing.T) {
	port, hits := receiver(t, func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
	resolver, queries := loopbackDNS(t)
	urls := []string{
		"http://127.0.0.1:" + port + "/",
		"http://[::ffff:127.0.0.1]:" + port + "/",
		"http://hook.certnode.test:" + port + "/", // resolves to 127.0.0.1
	}

	guarded := newClient(t, nil, resolver)
	for _, u := range append(urls, "http://[::1]:"+port+"/") {
		resp, err := guarded.Get(u)
		if err == nil {
			resp.Body.Close()
		}
		var fe *egress.ForbiddenAddressError
		if !errors.Is(err, egress.ErrForbiddenAddress) || !errors.As(err, &fe) || fe.Reason != "loopback" {
			t.Errorf("%s: %v, want refused as loopback", u, err)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the receiver got %d requests through the guard", n)
	}
	if queries.Load() == 0 {
		t.Fatal("the name was never looked up: the refusal did not follow resolution")
	}

	allowed := newClient(t, allowLoopback, resolver)
	for _, u := range urls {
		resp, err := allowed.Get(u)
		if err != nil {
			t.Errorf("%s with 127.0.0.0/8 allowed: %v", u, err)
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "ok" {
			t.Errorf("%s: %d %q", u, resp.StatusCode, body)
		}
	}
	if n := hits.Load(); n != int64(len(urls)) {
		t.Errorf("the receiver got %d requests, want %d", n, len(urls))
	}
}

func TestRedirectNotFollowed(t *testing.T) {
	var followed atomic.Int64
	port, _ := receiver(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/moved" {
			followed.Add(1)
			return
		}
		http.Redirect(w, r, "/moved", http.StatusFound)
	})
	resp, err := newClient(t, allowLoopback, nil).Post("http://127.0.0.1:"+port+"/hook", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/moved" {
		t.Errorf("got %d, Location %q; want the 302 itself", resp.StatusCode, resp.Header.Get("Location"))
	}
	if followed.Load() != 0 {
		t.Error("the redirect was followed")
	}
}

// A proxy would make the connection on the client's behalf, so the guard
// would judge the proxy's address, not the endpoint's.
func TestEnvironmentProxyIgnored(t *testing.T) {
	if os.Getenv("EGRESS_TEST_PROXY_CHILD") == "" {
		// net/http reads the proxy variables once per process, at the first
		// request that asks: a process of its own makes sure it reads these.
		cmd := exec.Command(os.Args[0], "-test.run=^TestEnvironmentProxyIgnored$", "-test.count=1")
		cmd.Env = append(os.Environ(), "EGRESS_TEST_PROXY_CHILD=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return
	}
	proxy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	var proxied atomic.Int64
	go func() {
		for {
			c, err := proxy.Accept()
			if err != nil {
				return
			}
			proxied.Add(1)
			c.Close()
		}
	}()
	for _, k := range []string{"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"} {
		t.Setenv(k, "http://"+proxy.Addr().String())
	}
	for _, k := range []string{"NO_PROXY", "no_proxy", "REQUEST_METHOD"} {
		t.Setenv(k, "")
	}
	port, hits := receiver(t, func(http.ResponseWriter, *http.Request) {})
	resolver, _ := loopbackDNS(t)
	// Not a loopback literal: net/http never proxies those anyway.
	url := "http://hook.certnode.test:" + port + "/"
	resp, err := newClient(t, allowLoopback, resolver).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if hits.Load() != 1 || proxied.Load() != 0 {
		t.Errorf("receiver got %d requests, proxy %d connections; want 1 and 0", hits.Load(), proxied.Load())
	}
	// The same request through a client that honours the environment
	// reaches the proxy: the variables above are the ones read.
	honouring := &http.Client{Transport: &http.Transport{Proxy: http.ProxyFromEnvironment}}
	if resp, err := honouring.Get(url); err == nil {
		resp.Body.Close()
	}
	if proxied.Load() != 1 {
		t.Errorf("a client honouring the environment made %d proxy connections, want 1", proxied.Load())
	}
}

func TestConfig(t *testing.T) {
	client, err := egress.NewClient(egress.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if client.Timeout != 15*time.Second {
		t.Errorf("default timeout %s, want 15s", client.Timeout)
	}
	bad := egress.Config{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), {}}}
	err = bad.Validate()
	if err == nil || !strings.Contains(err.Error(), "timeout") || !strings.Contains(err.Error(), "entry 1") {
		t.Errorf("Validate: %v, want the timeout and allow-list entry 1 reported", err)
	}
	if _, err := egress.NewClient(bad); err == nil {
		t.Error("NewClient accepted an invalid config")
	}
}
