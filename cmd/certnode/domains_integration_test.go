//go:build integration

package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/testenv"
)

// TestCustomDomains runs two ingest processes against a real ACME CA
// (Pebble, every name resolving to 127.0.0.1): a domain is served only
// once proved (DNS TXT through the coordinator's resolver, or the CA's
// HTTP-01 challenge); its certificate is ordered once for both nodes,
// served by SNI with a chain a client trusting the CA's root accepts,
// renewed once for both, and revoked when the domain is removed; requests
// on it are bound to its organization.
func TestCustomDomains(t *testing.T) {
	ca := testenv.StartACME(t)
	e := newE2E(t, "")
	caddr, call := e.coordinated("--dns-resolver", ca.DNS, "--org-key-activation-delay", "1s")
	e.start("worker", "worker", "--coordinator", caddr, "--metrics", freeAddr(t), "--concurrency", "4")
	port := strconv.Itoa(ca.HTTPPort)
	domA, domB, httpB := freeAddr(t), freeAddr(t), freeAddr(t)
	common := []string{"--coordinator", caddr, "--acme-ca", ca.Directory, "--acme-ca-root", ca.ServerCA,
		"--acme-email", "ops@example.test", "--acme-renewal-window", "0.95", "--acme-renew-check", "2s"}
	e.ingest(append([]string{"--domains-listen", domA, "--acme-http", "127.0.0.1:" + port}, common...)...)
	// The second node takes the CA's requests on no address of its own
	// (127.0.0.2 is not what the names resolve to): what it orders is
	// validated through the first, from the shared store.
	b := e.start("ingest-b", append([]string{"ingest", "--http", httpB, "--clickhouse", e.ch, "--domains-listen", domB,
		"--acme-http", "127.0.0.2:" + port}, common...)...)
	testenv.WaitFor(t, "the second ingest node", 60*time.Second, func() (bool, string) {
		code, body := request("GET", "http://"+httpB+"/readyz", "", "", "")
		return code == 200, body + b.output()
	})
	acme, acmeKey := e.newOrgKey(call, "acme", `["sign","read"]`)
	globex, globexKey := e.newOrgKey(call, "globex", `["sign","read"]`)
	roots := ca.Roots(t)

	domain := func(org, name string) (d struct {
		State, Reason, Token, CertSerial string
		CertNotAfter                     time.Time
	}) {
		t.Helper()
		code, body := call("GET", "/v1/orgs/"+org+"/domains/"+name, "")
		if code != 200 || json.Unmarshal([]byte(body), &d, json.RejectUnknownMembers(false), json.MatchCaseInsensitiveNames(true)) != nil {
			t.Fatalf("domain %s: %d %s", name, code, body)
		}
		return d
	}
	waitState := func(org, name, state string) {
		t.Helper()
		testenv.WaitFor(t, name+" "+state, 90*time.Second, func() (bool, string) {
			d := domain(org, name)
			return d.State == state, fmt.Sprintf("%+v", d)
		})
	}
	// served is the serial of the certificate a node serves for name,
	// after checking its chain to the CA's root.
	served := func(addr, name string) (string, error) {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{ServerName: name, RootCAs: roots})
		if err != nil {
			return "", err
		}
		defer c.Close()
		return fmt.Sprintf("%x", c.ConnectionState().PeerCertificates[0].SerialNumber), nil
	}
	// on sends a request to name over a node's custom domains listener.
	on := func(addr, name, method, path, key, host, body string) (int, string) {
		t.Helper()
		hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: name},
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			},
		}}
		req, _ := http.NewRequest(method, "https://"+name+path, strings.NewReader(body))
		req.Host = host
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s on %s: %v", method, path, name, err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(out)
	}

	// A domain nobody proved gets no certificate: its handshake fails, and
	// nothing is ordered.
	if code, body := call("POST", "/v1/orgs/"+acme+"/domains", `{"name":"pending.acme.test"}`); code != 201 {
		t.Fatalf("add pending: %d %s", code, body)
	}
	code, body := call("POST", "/v1/orgs/"+acme+"/domains", `{"name":"API.acme.test"}`)
	if code != 201 {
		t.Fatalf("add: %d %s", code, body)
	}
	if code, body := call("POST", "/v1/orgs/"+acme+"/domains/api.acme.test/verify", ""); code != 422 || !strings.Contains(body, "no TXT record at _certnode-challenge.api.acme.test") {
		t.Fatalf("verify without the record: %d %s", code, body)
	}
	ca.SetTXT(t, "_certnode-challenge.api.acme.test", "certnode-verify="+domain(acme, "api.acme.test").Token)
	if code, body := call("POST", "/v1/orgs/"+acme+"/domains/api.acme.test/verify", ""); code != 200 || !strings.Contains(body, `"state":"verified"`) {
		t.Fatalf("verify: %d %s", code, body)
	}
	waitState(acme, "api.acme.test", "active")
	d := domain(acme, "api.acme.test")
	for _, addr := range []string{domA, domB} {
		testenv.WaitFor(t, "node "+addr+" serves the certificate", 30*time.Second, func() (bool, string) {
			s, err := served(addr, "api.acme.test")
			return err == nil && s == d.CertSerial, fmt.Sprint(s, err)
		})
	}
	if n := ca.Issued(); n != 1 {
		t.Fatalf("two nodes ordered %d certificates for one domain:\n%s", n, ca.Log())
	}
	if left := time.Until(d.CertNotAfter); left <= 0 || left > testenv.ACMEValidity() {
		t.Fatalf("not after: %v", d.CertNotAfter)
	}
	if _, err := served(domA, "pending.acme.test"); err == nil {
		t.Fatal("an unproved domain served")
	}
	if domain(acme, "pending.acme.test").State != "pending" || ca.Issued() != 1 {
		t.Fatal("an unproved domain ordered")
	}

	// Bound to its organization: acme's key signs there, globex's is
	// refused; a Host other than the connection's name is misdirected.
	if code, body := on(domB, "api.acme.test", "POST", "/v1/sign", acmeKey, "api.acme.test", `{"payload":{"on":"custom domain"}}`); code != 200 || !strings.Contains(body, `"receipt_id"`) {
		t.Fatalf("sign on the domain: %d %s", code, body)
	}
	if code, body := on(domA, "api.acme.test", "POST", "/v1/sign", globexKey, "api.acme.test", `{"payload":{"x":1}}`); code != 403 || !strings.Contains(body, `"domain_bound"`) {
		t.Fatalf("another organization's key: %d %s", code, body)
	}
	if code, body := on(domA, "api.acme.test", "GET", "/v1/orgs/"+globex+"/domains", acmeKey, "api.acme.test", ""); code != 403 || !strings.Contains(body, `"domain_bound"`) {
		t.Fatalf("another organization's account routes: %d %s", code, body)
	}
	if code, body := on(domA, "api.acme.test", "POST", "/v1/sign", acmeKey, "elsewhere.test", `{"payload":{"x":1}}`); code != 421 || !strings.Contains(body, `"misdirected_request"`) {
		t.Fatalf("another Host: %d %s", code, body)
	}
	if code, _ := e.do("POST", "/v1/sign", "application/json", `{"payload":{"x":1}}`); code != 401 {
		t.Fatalf("the service's own address: %d", code)
	}
	// The organization's own signing key: its JWKS on its domain (with
	// the service's keys, which signed its earlier receipts), its kid on
	// what it signs there.
	if code, body := call("PUT", "/v1/orgs/"+acme+"/signing-keys/settings", `{"enabled":true}`); code != 200 {
		t.Fatalf("signing keys on: %d %s", code, body)
	}
	var ring struct {
		ActiveKid string `json:"active_kid"`
	}
	testenv.WaitFor(t, "acme's own key active", 60*time.Second, func() (bool, string) {
		_, body := call("GET", "/v1/orgs/"+acme+"/signing-keys", "")
		json.Unmarshal([]byte(body), &ring, json.RejectUnknownMembers(false))
		return ring.ActiveKid != "", body
	})
	testenv.WaitFor(t, "acme's key signs on its domain", 60*time.Second, func() (bool, string) {
		code, body := on(domA, "api.acme.test", "POST", "/v1/sign", acmeKey, "api.acme.test", `{"payload":{"signed":"by acme"}}`)
		return code == 200 && strings.Contains(body, `"kid":"`+ring.ActiveKid+`"`), body
	})
	code, body = on(domB, "api.acme.test", "GET", "/.well-known/jwks.json", "", "api.acme.test", "")
	if code != 200 || !strings.Contains(body, `"kid":"`+ring.ActiveKid+`"`) || !strings.Contains(body, `"org":"`+acme+`"`) {
		t.Fatalf("acme's JWKS on its domain: %d %s", code, body)
	}
	if _, body := e.do("GET", "/.well-known/jwks.json", "", ""); strings.Contains(body, ring.ActiveKid) {
		t.Fatalf("acme's key in the service's JWKS: %s", body)
	}

	// Plain HTTP on the name goes to HTTPS.
	noRedirect := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest("GET", "http://127.0.0.1:"+port+"/v1/jobs?x=1", nil)
	req.Host = "api.acme.test"
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if _, p, _ := net.SplitHostPort(domA); resp.StatusCode != 308 || resp.Header.Get("Location") != "https://api.acme.test:"+p+"/v1/jobs?x=1" {
		t.Fatalf("http: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}

	// Renewed when 95% of its life remains (the test CA's certificates
	// live 10 minutes): once, for both nodes.
	first := d.CertSerial
	testenv.WaitFor(t, "the renewed certificate in the coordinator", 90*time.Second, func() (bool, string) {
		d = domain(acme, "api.acme.test")
		return d.CertSerial != first && d.State == "active", fmt.Sprintf("%+v", d)
	})
	for _, addr := range []string{domA, domB} {
		testenv.WaitFor(t, "node "+addr+" serves the renewed certificate", 30*time.Second, func() (bool, string) {
			s, err := served(addr, "api.acme.test")
			return err == nil && s == d.CertSerial, fmt.Sprint(s, err)
		})
	}
	if n := ca.Issued(); n != 2 {
		t.Fatalf("%d certificates after one renewal by two nodes:\n%s", n, ca.Log())
	}

	// Removed: revoked at the CA, served by neither node.
	if code, body := call("DELETE", "/v1/orgs/"+acme+"/domains/api.acme.test", ""); code != 204 {
		t.Fatalf("delete: %d %s", code, body)
	}
	testenv.WaitFor(t, "the certificate revoked", 60*time.Second, func() (bool, string) {
		st := ca.CertStatus(t, d.CertSerial)
		return st == "Revoked", st
	})
	for _, addr := range []string{domA, domB} {
		testenv.WaitFor(t, "node "+addr+" stops serving the domain", 30*time.Second, func() (bool, string) {
			_, err := served(addr, "api.acme.test")
			return err != nil, ""
		})
	}

	// HTTP verification: the CA's challenge on the name is the proof.
	if code, body := call("POST", "/v1/orgs/"+globex+"/domains", `{"name":"verify.globex.test","verification":"http"}`); code != 201 {
		t.Fatalf("add http: %d %s", code, body)
	}
	if code, body := call("POST", "/v1/orgs/"+globex+"/domains/verify.globex.test/verify", ""); code != 200 || !strings.Contains(body, `"state":"issuing"`) {
		t.Fatalf("verify http: %d %s", code, body)
	}
	waitState(globex, "verify.globex.test", "active")
	h := domain(globex, "verify.globex.test")
	for _, addr := range []string{domA, domB} {
		testenv.WaitFor(t, "node "+addr+" serves the http-verified domain", 30*time.Second, func() (bool, string) {
			s, err := served(addr, "verify.globex.test")
			return err == nil && s == h.CertSerial, fmt.Sprint(s, err)
		})
	}
	if code, body := on(domB, "verify.globex.test", "POST", "/v1/sign", globexKey, "verify.globex.test", `{"payload":{"on":"globex"}}`); code != 200 {
		t.Fatalf("sign on the http-verified domain: %d %s", code, body)
	}
	if code, _ := on(domB, "verify.globex.test", "POST", "/v1/sign", acmeKey, "verify.globex.test", `{"payload":{"x":1}}`); code != 403 {
		t.Fatalf("acme's key on globex's domain: %d", code)
	}
}
