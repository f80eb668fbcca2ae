//go:build integration

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
	"github.com/certnode/certnode/signer"
)

// signingKeysState is what GET /v1/orgs/{org}/signing-keys answers.
type signingKeysState struct {
	ActiveKid string `json:"active_kid"`
	Pending   *struct {
		ID string `json:"id"`
	} `json:"pending"`
	Keys []struct {
		Kid   string `json:"kid"`
		Alg   string `json:"alg"`
		State string `json:"state"`
	} `json:"keys"`
}

// Organizations' own keys, end to end on the real Kafka, with two worker
// processes whose org keys live in SoftHSM2: an owner turns acme's keys
// on; a worker makes the key in the HSM (sensitive, never extractable, as
// PKCS#11 reports it), the first report installs it and no other key of
// acme is left on the token; once active, acme's receipts carry its kid
// while globex's carry the service's; /v1/verify with the service's keys
// takes acme's receipt for acme and refuses it for globex
// (kid_other_org); a rotation on demand makes a new key sign while the
// receipts of the old one keep verifying, online and offline (certnode
// verify with acme's JWKS); globex turns EdDSA keys on and gets EdDSA
// receipts from the HSM.
func TestE2EOrgSigningKeysInHSM(t *testing.T) {
	e := newE2E(t, "")
	module, token := e.kekModule, e.kekToken
	e.env = append(e.env, "CERTNODE_ORG_KEY_ACTIVATION_DELAY=2s")
	caddr, call := e.coordinated()
	hsm := []string{"--coordinator", caddr, "--pkcs11-module", module, "--token", token}
	for i := range 2 {
		metrics := freeAddr(t)
		w := e.start(fmt.Sprintf("worker%d", i), append([]string{"worker", "--metrics", metrics, "--concurrency", "4"}, hsm...)...)
		testenv.WaitFor(t, "a worker ready", 60*time.Second, func() (bool, string) {
			code, body := request("GET", "http://"+metrics+"/readyz", "", "", "")
			return code == 200, fmt.Sprint(code, body, w.output())
		})
	}
	e.ingest("--coordinator", caddr)
	acme, acmeKey := e.newOrgKey(call, "acme", `["admin","sign","verify"]`)
	globex, globexKey := e.newOrgKey(call, "globex", `["admin","sign","verify"]`)

	// Through ingest, as a customer does: its admin key reaches the
	// coordinator's organization routes.
	orgCall := func(key, method, path, body string) (int, string) {
		return request(method, "http://"+e.http+path, key, "application/json", body)
	}
	keysOf := func(org, key string) signingKeysState {
		code, body := orgCall(key, "GET", "/v1/orgs/"+org+"/signing-keys?consistent=true", "")
		var st signingKeysState
		if code != 200 || json.Unmarshal([]byte(body), &st, json.RejectUnknownMembers(false)) != nil {
			t.Fatalf("signing keys of %s: %d %s", org, code, body)
		}
		return st
	}
	waitActive := func(org, key, not string) string {
		var kid string
		testenv.WaitFor(t, org+"'s new key active", 60*time.Second, func() (bool, string) {
			st := keysOf(org, key)
			kid = st.ActiveKid
			return kid != "" && kid != not && st.Pending == nil, fmt.Sprintf("%+v", st)
		})
		return kid
	}
	sign := func(key, payload string) *schemas.Receipt {
		code, body := orgCall(key, "POST", "/v1/sign", `{"payload":`+payload+`}`)
		var rc schemas.Receipt
		if code != 200 || json.Unmarshal([]byte(body), &rc) != nil {
			t.Fatalf("sign: %d %s", code, body)
		}
		return &rc
	}
	verify := func(key string, rc *schemas.Receipt) (valid bool, reason string) {
		raw, _ := rc.Marshal()
		code, body := orgCall(key, "POST", "/v1/verify", `{"receipt":`+string(raw)+`}`)
		var v struct {
			Valid  bool   `json:"valid"`
			Reason string `json:"reason"`
		}
		if code != 200 || json.Unmarshal([]byte(body), &v, json.RejectUnknownMembers(false)) != nil {
			t.Fatalf("verify: %d %s", code, body)
		}
		return v.Valid, v.Reason
	}

	serviceKid := sign(acmeKey, `{"before":"own keys"}`).Kid
	if code, body := orgCall(acmeKey, "PUT", "/v1/orgs/"+acme+"/signing-keys/settings", `{"enabled":true,"rotation_days":90}`); code != 200 {
		t.Fatalf("turn acme's keys on: %d %s", code, body)
	}
	kid1 := waitActive(acme, acmeKey, "")

	// The key is the HSM's, labelled for acme and its kid, and the only one
	// of acme's there: a worker that lost the race destroyed its own.
	pin, err := signer.PINFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	h, err := signer.OpenHSM(signer.PKCS11Config{Module: module, TokenLabel: token, PIN: pin})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	acmeOnToken := func() map[string]string {
		keys, err := h.ListKeys()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, k := range keys {
			if strings.HasPrefix(k.Label, "certnode-org-"+acme+"-") {
				out[k.Kid] = k.Label
			}
		}
		return out
	}
	onToken := acmeOnToken()
	if len(onToken) != 1 || onToken[kid1] != signer.OrgKeyLabel(acme, kid1) {
		t.Fatalf("acme's keys on the token: %v, want %s alone", onToken, kid1)
	}
	prot, err := h.Protection(onToken[kid1])
	if err != nil || !prot.Sensitive || prot.Extractable || !prot.AlwaysSensitive || !prot.NeverExtractable {
		t.Fatalf("the key's protection: %+v %v, want sensitive and never extractable", prot, err)
	}

	r1 := sign(acmeKey, `{"signed":"by acme's first key"}`)
	if r1.Kid != kid1 || r1.Kid == serviceKid {
		t.Fatalf("acme's receipt names %s, want its own key %s", r1.Kid, kid1)
	}
	if g := sign(globexKey, `{"signed":"by the service"}`); g.Kid != serviceKid {
		t.Fatalf("globex's receipt names %s, want the service's %s", g.Kid, serviceKid)
	}
	if valid, reason := verify(acmeKey, r1); !valid {
		t.Fatalf("acme's receipt for acme: %s", reason)
	}
	if valid, reason := verify(globexKey, r1); valid || reason != string(schemas.ReasonKidOtherOrg) {
		t.Fatalf("acme's receipt for globex: valid=%v %s, want kid_other_org", valid, reason)
	}

	// Rotation on demand.
	if code, body := orgCall(acmeKey, "POST", "/v1/orgs/"+acme+"/signing-keys/rotate", ""); code != 202 {
		t.Fatalf("rotate: %d %s", code, body)
	}
	kid2 := waitActive(acme, acmeKey, kid1)
	r2 := sign(acmeKey, `{"signed":"by acme's second key"}`)
	if r2.Kid != kid2 {
		t.Fatalf("after the rotation acme's receipt names %s, want %s", r2.Kid, kid2)
	}
	for _, rc := range []*schemas.Receipt{r1, r2} {
		if valid, reason := verify(acmeKey, rc); !valid {
			t.Fatalf("acme's receipt by %s after the rotation: %s", rc.Kid, reason)
		}
	}
	st := keysOf(acme, acmeKey)
	if len(st.Keys) != 2 || st.Keys[0].Kid != kid2 || st.Keys[0].State != "active" || st.Keys[1].Kid != kid1 || st.Keys[1].State != "retired" {
		t.Fatalf("acme's keys after the rotation: %+v", st)
	}
	if onToken := acmeOnToken(); len(onToken) != 2 || onToken[kid2] == "" {
		t.Fatalf("acme's keys on the token after the rotation: %v", onToken)
	}

	// acme's JWKS (the tenant route) verifies both receipts offline.
	code, jwks := orgCall(acmeKey, "GET", "/v1/orgs/"+acme+"/jwks", "")
	if code != 200 || strings.Count(jwks, `"org":"`+acme+`"`) != 2 || strings.Index(jwks, kid2) > strings.Index(jwks, kid1) {
		t.Fatalf("acme's JWKS: %d %s", code, jwks)
	}
	jwksFile := filepath.Join(t.TempDir(), "acme.jwks.json")
	os.WriteFile(jwksFile, []byte(jwks), 0o644)
	raw1, _ := r1.Marshal()
	raw2, _ := r2.Marshal()
	if v := certnode(t, string(raw1)+"\n"+string(raw2)+"\n", "verify", "--jwks", jwksFile); v.code != 0 || !strings.Contains(v.stdout, "2 receipts: 2 valid, 0 invalid") {
		t.Fatalf("certnode verify with acme's JWKS: %+v", v)
	}
	if code, body := orgCall(globexKey, "GET", "/v1/orgs/"+acme+"/jwks", ""); code != 404 {
		t.Fatalf("acme's JWKS with globex's key: %d %s", code, body)
	}

	// EdDSA keys, made in the HSM too.
	if code, body := orgCall(globexKey, "PUT", "/v1/orgs/"+globex+"/signing-keys/settings", `{"enabled":true,"alg":"EdDSA"}`); code != 200 {
		t.Fatalf("turn globex's keys on: %d %s", code, body)
	}
	gkid := waitActive(globex, globexKey, "")
	g := sign(globexKey, `{"signed":"by globex's EdDSA key"}`)
	if g.Kid != gkid || g.Protected != schemas.ProtectedHeader(schemas.AlgEdDSA, gkid) {
		t.Fatalf("globex's receipt: %+v, want EdDSA by %s", g, gkid)
	}
	if valid, reason := verify(acmeKey, g); valid || reason != string(schemas.ReasonKidOtherOrg) {
		t.Fatalf("globex's receipt for acme: valid=%v %s", valid, reason)
	}
	keys, _ := h.ListKeys()
	if !slices.ContainsFunc(keys, func(k signer.KeyInfo) bool { return k.Kid == gkid && k.Type == "Ed25519" }) {
		t.Fatalf("globex's key is not an Ed25519 key of the token: %+v", keys)
	}
}
