package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// certnode dev with software keys: an organization turns its own keys on;
// dev's worker makes the key beside the key ring (a 0600 PEM file), and
// from its activation the organization's receipts carry its kid while the
// demo organization's carry the service's; the demo organization's
// /v1/verify refuses the other's receipt (kid_other_org). After a restart
// the organization still signs with its key.
func TestDevOrgSigningKeys(t *testing.T) {
	dir := t.TempDir()
	e := startDevIn(t, dir, freeAddr(t))
	demo := e.creds().APIKey
	acme := e.newOrg("acme", tenants.Limits{})
	if code, body := e.admin("PUT", "/v1/orgs/acme/signing-keys/settings", `{"enabled":true}`); code != 200 {
		t.Fatalf("turn acme's keys on: %d %s", code, body)
	}
	var kid string
	testenv.WaitFor(t, "acme's key active", 30*time.Second, func() (bool, string) {
		_, body := e.admin("GET", "/v1/orgs/acme/signing-keys", "")
		var st struct {
			ActiveKid string `json:"active_kid"`
		}
		json.Unmarshal([]byte(body), &st, json.RejectUnknownMembers(false))
		kid = st.ActiveKid
		return kid != "", body
	})
	fi, err := os.Stat(filepath.Join(dir, "keyring", "org-acme-"+kid+".pem"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("acme's key file: %v %v", fi, err)
	}
	sign := func(key string) *schemas.Receipt {
		t.Helper()
		code, body := e.do("POST", "/v1/sign", key, "application/json", `{"payload":{"n":1}}`)
		var rc schemas.Receipt
		if code != 200 || json.Unmarshal([]byte(body), &rc) != nil {
			t.Fatalf("sign: %d %s", code, body)
		}
		return &rc
	}
	rc := sign(acme)
	if rc.Kid != kid {
		t.Fatalf("acme's receipt names %s, want %s", rc.Kid, kid)
	}
	if d := sign(demo); d.Kid == kid {
		t.Fatal("the demo organization's receipt names acme's key")
	}
	raw, _ := rc.Marshal()
	for key, want := range map[string]string{acme: `"valid":true`, demo: `"reason":"kid_other_org"`} {
		code, body := e.do("POST", "/v1/verify", key, "application/json", `{"receipt":`+string(raw)+`}`)
		if code != 200 || !strings.Contains(body, want) {
			t.Fatalf("verify: %d %s, want %s", code, body, want)
		}
	}

	if code, _ := e.stop(); code != 0 {
		t.Fatalf("dev exited %d: %s", code, e.stderr())
	}
	e = startDevIn(t, dir, freeAddr(t))
	testenv.WaitFor(t, "acme signs with its key after a restart", 10*time.Second, func() (bool, string) {
		code, body := e.do("POST", "/v1/sign", acme, "application/json", `{"payload":{"n":2}}`)
		return code == 200 && strings.Contains(body, `"kid":"`+kid+`"`), body
	})
}
