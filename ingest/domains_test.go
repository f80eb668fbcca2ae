package ingest

import (
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/certnode/certnode/internal/hostname"
	"github.com/certnode/certnode/internal/testenv"
)

type fakeDomains map[string]string

func (f fakeDomains) DomainOrg(host string) (string, bool) {
	org, ok := f[hostname.Of(host)]
	return org, ok
}

// On an organization's custom domain only that organization acts: other
// keys, sessions and account routes get 403 domain_bound; a signed-in
// user's default organization there is the domain's; over TLS the Host
// must be the name the connection was opened for (421).
func TestDomainBinding(t *testing.T) {
	cert, _, _ := testenv.SelfSigned(t, "ingest")
	accounts := &fakeMe{sessions: map[string]string{tok("two"): me("usr_2", "a", "developer", "b", "viewer")}}
	ts := startServer(t, func(c *Config, d *Deps) {
		d.Domains, d.Accounts, d.Orgs = fakeDomains{"api.a.example": "a"}, accounts, fakeOrgs{"a": true, "b": true}
		c.DomainsAddr = "127.0.0.1:0"
		c.DomainsTLS = &tls.Config{MinVersion: tls.VersionTLS12,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil }}
	})
	list := "/v1/webhooks/deliveries"
	on := func(key string, headers ...string) answer {
		t.Helper()
		return ts.send("GET", list, "", append([]string{"Authorization", "Bearer " + key, "Host", "API.a.example:8443"}, headers...)...)
	}
	on(keyA).expect(t, "a's key on a's domain", 200, "")
	on(keyB).expect(t, "b's key on a's domain", 403, "domain_bound")
	ts.do("GET", list, keyB, "").expect(t, "b's key on the service's address", 200, "")
	cookie := (&http.Cookie{Name: SessionCookie, Value: tok("two")}).String()
	ts.send("GET", list, "", "Cookie", cookie).expect(t, "two memberships on the service's address", 400, "org_required")
	ts.send("GET", list, "", "Cookie", cookie, "Host", "api.a.example").expect(t, "two memberships on a's domain", 200, "")
	ts.send("GET", list, "", "Cookie", cookie, "Host", "api.a.example", OrgHeader, "b").expect(t, "b named on a's domain", 403, "domain_bound")
	ts.send("GET", "/v1/orgs/b/domains", "", "Authorization", "Bearer "+keyA, "Host", "api.a.example").expect(t, "b's account routes on a's domain", 403, "domain_bound")
	if a := ts.send("GET", "/v1/orgs/a/domains", "", "Host", "api.a.example"); a.status == 403 {
		t.Fatalf("a's account routes on a's domain: %d %s", a.status, a.body)
	}

	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, ServerName: "api.a.example"}}}
	send := func(host string) (int, string) {
		req, _ := http.NewRequest("GET", "https://"+ts.s.DomainsAddr()+list, nil)
		req.Host = host
		req.Header.Set("Authorization", "Bearer "+keyA)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := send("api.a.example"); code != 200 {
		t.Fatalf("over the domains' listener: %d %s", code, body)
	}
	if code, body := send("other.example"); code != 421 || !strings.Contains(body, "misdirected_request") {
		t.Fatalf("another Host on the connection: %d %s", code, body)
	}
}
