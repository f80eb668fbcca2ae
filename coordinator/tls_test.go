package coordinator

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/internal/tlsconf"
)

// testTLS writes a certificate for 127.0.0.1 (its own CA) and returns the
// API's configuration, and a client's that trusts it.
func testTLS(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	_, certPEM, keyPEM := testenv.SelfSigned(t, "coordinator")
	dir := t.TempDir()
	f := tlsconf.Files{Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem")}
	os.WriteFile(f.Cert, certPEM, 0o600)
	os.WriteFile(f.Key, keyPEM, 0o600)
	server, err := f.Server()
	if err != nil {
		t.Fatal(err)
	}
	if client, err = tlsconf.Client(f.Cert); err != nil {
		t.Fatal(err)
	}
	return server, client
}

// A cluster serving its API over TLS: members announce https:// URLs, join
// and forward writes to the leader over TLS checked against their CA;
// another tier's replica, limiter and accounts proxy reach it with the CA
// and are refused without it; the API refuses TLS 1.1 and plain HTTP.
func TestClusterTLS(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	start := func(id string, bootstrap bool, join string) *testServer {
		return startNodeCfg(t, Config{ID: id, RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", DataDir: t.TempDir(),
			Bootstrap: bootstrap, Join: join, TLS: serverTLS, PeerTLS: clientTLS})
	}
	n1 := start("n1", true, "")
	testenv.WaitFor(t, "n1 leads", 10*time.Second, func() (bool, string) { return n1.node.IsLeader(), n1.cluster(t).State })
	if !strings.HasPrefix(n1.URL(), "https://127.0.0.1:") {
		t.Fatalf("URL %q", n1.URL())
	}
	n2 := start("n2", false, n1.URL())
	testenv.WaitFor(t, "two members, each known by its https URL", 15*time.Second, func() (bool, string) {
		c := n2.cluster(t)
		urls := map[string]string{}
		for _, m := range c.Members {
			urls[m.ID] = m.HTTP
		}
		return len(c.Members) == 2 && urls["n1"] == n1.URL() && urls["n2"] == n2.URL(), fmt.Sprintf("%+v", c)
	})

	call := func(c *http.Client, method, url, body string) (int, string, error) {
		req, _ := http.NewRequest(method, url, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testAdmin)
		resp, err := c.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	trusting := HTTPClient(clientTLS, 10*time.Second)
	if code, body, err := call(trusting, "POST", n2.URL()+"/v1/admin/orgs", `{"id":"acme","name":"Acme"}`); code != 201 {
		t.Fatalf("a write through the follower, forwarded to the leader over TLS: %d %s %v", code, body, err)
	}

	// Another tier: its copy of the state, its quota leases and the
	// account routes it proxies.
	r := runReplicaWith(t, ReplicaConfig{Addrs: []string{n2.URL()}, TLS: clientTLS, Token: testNode, Wait: time.Second})
	ctx := context.Background()
	testenv.WaitFor(t, "the replica holds acme", 10*time.Second, func() (bool, string) {
		_, ok := r.Limits("acme")
		return ok, fmt.Sprint(r.Ready(ctx))
	})
	l, err := NewLimiter(r, LimiterConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.renew(ctx, n1.URL(), false); err != nil {
		t.Fatalf("a lease renewal over TLS: %v", err)
	}
	front := httptest.NewServer(r.Accounts())
	defer front.Close()
	if code, body, _ := call(http.DefaultClient, "GET", front.URL+"/v1/me", ""); code != 401 || !strings.Contains(body, `"code":"unauthorized"`) {
		t.Fatalf("the accounts proxy: %d %s, want the coordinator's refusal", code, body)
	}

	// Without the CA: the system's roots do not know it.
	untrusting, err := NewReplica(ReplicaConfig{Addrs: []string{n1.URL()}, Token: testNode, Wait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := untrusting.fetch(ctx, n1.URL(), 0); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Fatalf("a replica without the CA: %v", err)
	}
	blind := httptest.NewServer(NewAccountsProxy([]string{n1.URL()}, testNode, nil))
	defer blind.Close()
	if code, _, _ := call(http.DefaultClient, "GET", blind.URL+"/v1/me", ""); code != http.StatusBadGateway {
		t.Fatalf("an accounts proxy without the CA: %d", code)
	}
	if _, _, err := call(HTTPClient(nil, 5*time.Second), "GET", n1.URL()+"/v1/admin/orgs", ""); err == nil ||
		!strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Fatalf("a client without the CA: %v", err)
	}

	// TLS 1.1, and plain HTTP on the TLS port.
	c, err := tls.Dial("tcp", n1.Addr(), &tls.Config{RootCAs: clientTLS.RootCAs, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11})
	if err == nil {
		c.Close()
		t.Fatal("TLS 1.1 accepted")
	}
	if !strings.Contains(err.Error(), "protocol version") {
		t.Fatalf("TLS 1.1: %v", err)
	}
	if code, _, err := call(http.DefaultClient, "GET", "http://"+n1.Addr()+"/v1/admin/orgs", ""); code != http.StatusBadRequest {
		t.Fatalf("plain HTTP to the TLS port: %d %v", code, err)
	}
}

func TestBaseURL(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:7101":           "http://127.0.0.1:7101",
		"https://c1.example:7101":  "https://c1.example:7101",
		"https://c1.example:7101/": "https://c1.example:7101",
		"http://[::1]:7101":        "http://[::1]:7101",
	} {
		if got := BaseURL(in); got != want {
			t.Errorf("BaseURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// With RaftTLS the log replicates between members over TLS, each checking
// the other's certificate: a client without one, or with one of another
// CA, is refused.
func TestRaftTLS(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	start := func(id string, bootstrap bool, join string) *testServer {
		return startNodeCfg(t, Config{ID: id, RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", DataDir: t.TempDir(),
			Bootstrap: bootstrap, Join: join, TLS: serverTLS, PeerTLS: clientTLS, RaftTLS: true})
	}
	n1 := start("n1", true, "")
	testenv.WaitFor(t, "n1 leads", 10*time.Second, func() (bool, string) { return n1.node.IsLeader(), n1.cluster(t).State })
	n2 := start("n2", false, n1.URL())
	if _, err := n1.node.Propose(&PutOrg{Org: Org{ID: "acme", Name: "Acme", Status: OrgActive, Plan: DefaultPlan, CreatedAt: time.Now().UTC(), UpdatedAt: time.Now().UTC()}, Create: true}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "the organization replicated to n2", 15*time.Second, func() (bool, string) {
		var ok bool
		n2.node.fsm.View(func(st *State) { _, ok = st.Orgs["acme"] })
		return ok, fmt.Sprintf("%+v", n2.cluster(t))
	})

	_, otherCert, otherKey := testenv.SelfSigned(t, "not a member")
	stranger, err := tls.X509KeyPair(otherCert, otherKey)
	if err != nil {
		t.Fatal(err)
	}
	for name, cert := range map[string]*tls.Certificate{"no certificate": {}, "another CA's": &stranger} {
		c, err := tls.Dial("tcp", n1.node.RaftAddr(), &tls.Config{RootCAs: clientTLS.RootCAs,
			// sent whatever CAs the member asks for
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }})
		if err == nil {
			// TLS 1.3: the server's verdict on the client comes with the
			// first read.
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Errorf("%s: %v, want the member's refusal", name, err)
		}
	}

	cfg := Config{ID: "n3", RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", DataDir: t.TempDir(), AdminToken: testAdmin, NodeToken: testNode, RaftTLS: true}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "needs the API's certificate") || !strings.Contains(err.Error(), "needs the members' CA") {
		t.Errorf("RaftTLS without a certificate or a CA: %v", err)
	}
}
