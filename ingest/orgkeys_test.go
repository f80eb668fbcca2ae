package ingest

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/schemas"
)

// orgJWKS publishes one key per organization, marked with it.
type orgJWKS map[string]string

func (o orgJWKS) JWKS(org string) schemas.JWKS {
	if kid, ok := o[org]; ok {
		return schemas.JWKS{Keys: []schemas.JWK{{Kty: "OKP", Crv: "Ed25519", Kid: kid, Org: org}}}
	}
	return schemas.JWKS{}
}

// On an organization's custom domain the JWKS routes serve its keys (with
// "org"); on any other host, or with no custom domains, the service's.
// The Host's port and case do not matter.
func TestJWKSOnCustomDomain(t *testing.T) {
	domains := map[string]string{"verify.acme.test": "acme", "keys.globex.test": "globex"}
	ts := startServer(t, func(_ *Config, d *Deps) {
		d.OrgKeys = orgJWKS{"acme": "acme-kid", "globex": "globex-kid"}
		d.Domains = fakeDomains(domains)
	})
	get := func(host, path string) schemas.JWKS {
		t.Helper()
		req, _ := http.NewRequest("GET", ts.base+path, nil)
		req.Host = host
		resp, err := testClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var jwks schemas.JWKS
		if resp.StatusCode != 200 || resp.Header.Get("Cache-Control") != "public, max-age=300" || json.Unmarshal(b, &jwks) != nil {
			t.Fatalf("%s%s: %d %v %s", host, path, resp.StatusCode, resp.Header, b)
		}
		return jwks
	}
	for _, path := range []string{"/.well-known/jwks.json", "/v1/jwks"} {
		for host, want := range map[string]string{"verify.acme.test": "acme-kid", "KEYS.globex.test:8443": "globex-kid", "api.certnode.test": ""} {
			jwks := get(host, path)
			got := ""
			if len(jwks.Keys) > 0 {
				got = jwks.Keys[0].Kid
			}
			if got != want || (want != "" && !strings.HasPrefix(want, jwks.Keys[0].Org)) {
				t.Errorf("%s%s: %+v, want %q", host, path, jwks, want)
			}
		}
	}
	// No custom domains: the service's keys, whatever the Host.
	plain := startServer(t)
	req, _ := http.NewRequest("GET", plain.base+"/.well-known/jwks.json", nil)
	req.Host = "verify.acme.test"
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.Contains(string(b), "acme") {
		t.Fatalf("without custom domains: %d %s", resp.StatusCode, b)
	}
}
