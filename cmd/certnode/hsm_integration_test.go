//go:build integration

package main

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

func TestCLIWithSoftHSM(t *testing.T) {
	for alg, keyType := range map[string]string{schemas.AlgES256: "EC P-256", schemas.AlgEdDSA: "Ed25519"} {
		t.Run(alg, func(t *testing.T) { testCLIWithSoftHSM(t, alg, keyType) })
	}
}

func testCLIWithSoftHSM(t *testing.T, alg, keyType string) {
	module, token := testenv.PKCS11(t)
	var b [6]byte
	rand.Read(b[:])
	label := fmt.Sprintf("cli-%x", b)
	p11 := []string{"--pkcs11-module", module, "--token", token}

	gen := certnode(t, "", append([]string{"keys", "generate", "--label", label, "--alg", alg}, p11...)...)
	if gen.code != 0 || !strings.Contains(gen.stdout, `"kid":"`) || !strings.Contains(gen.stdout, `"alg":"`+alg+`"`) {
		t.Fatalf("keys generate: %+v", gen)
	}
	if again := certnode(t, "", append([]string{"keys", "generate", "--label", label, "--alg", alg}, p11...)...); again.code != 2 || !strings.Contains(again.stderr, "already exists") {
		t.Fatalf("second generate: %+v", again)
	}
	list := certnode(t, "", append([]string{"keys", "list"}, p11...)...)
	if list.code != 0 || !strings.Contains(lineWith(list.stdout, label), keyType) {
		t.Fatalf("keys list: %+v", list)
	}

	withKey := append([]string{"--label", label}, p11...)
	jwks := certnode(t, "", append([]string{"jwks"}, withKey...)...)
	if jwks.code != 0 {
		t.Fatalf("jwks: %+v", jwks)
	}
	jwksFile := filepath.Join(t.TempDir(), "jwks.json")
	os.WriteFile(jwksFile, []byte(jwks.stdout), 0o644)

	sign := certnode(t, "{\"n\":1}\n{\"n\":2,\"s\":\"\u2028\"}\n", append([]string{"sign", "--ndjson"}, withKey...)...)
	if sign.code != 0 || strings.Count(sign.stdout, "\n") != 2 {
		t.Fatalf("sign: %+v", sign)
	}
	if v := certnode(t, sign.stdout, "verify", "--jwks", jwksFile); v.code != 0 || !strings.Contains(v.stdout, "2 receipts: 2 valid, 0 invalid") ||
		!strings.Contains(sign.stdout, `"protected":"`+schemas.ProtectedHeader(alg, jwksKids(t, jwks.stdout)[0])+`"`) {
		t.Fatalf("verify: %+v (receipts %s)", v, sign.stdout)
	}

	// Wrong PIN and missing key: one clear line, exit 2, PIN never echoed.
	t.Setenv("CERTNODE_PKCS11_PIN", "definitely-wrong-pin")
	bad := certnode(t, "{}", append([]string{"sign"}, withKey...)...)
	if bad.code != 2 || !strings.Contains(bad.stderr, "PIN incorrect") || strings.Contains(bad.stderr, "definitely-wrong-pin") {
		t.Fatalf("wrong PIN: %+v", bad)
	}
	t.Setenv("CERTNODE_PKCS11_PIN", "")
	missing := certnode(t, "{}", append([]string{"sign", "--label", "no-such-key"}, p11...)...)
	if missing.code != 2 || !strings.Contains(missing.stderr, "key not found") {
		t.Fatalf("missing key: %+v", missing)
	}
}

// TestCLIKeyRingWithSoftHSM rotates a key ring whose keys live in the
// token: receipts signed before the rotation verify after it, and the
// JWKS comes from ring.json alone, without the PIN.
func TestCLIKeyRingWithSoftHSM(t *testing.T) {
	module, token := testenv.PKCS11(t)
	t.Setenv("CERTNODE_KEYRING", "")
	t.Setenv("CERTNODE_KEY", "")
	t.Setenv("CERTNODE_PKCS11_KEY_LABEL", "")
	dir := t.TempDir()
	ring := filepath.Join(dir, "ring")
	p11 := []string{"--keyring", ring, "--pkcs11-module", module, "--token", token}

	gen := mustRun(t, "", append([]string{"keys", "generate"}, p11...)...)
	kid1 := kidOf(t, gen.stdout)
	before := mustRun(t, "{\"n\":1}\n{\"n\":2}\n", append([]string{"sign", "--ndjson"}, p11...)...).stdout
	rot := mustRun(t, "", append([]string{"keys", "rotate", "--alg", "EdDSA"}, p11...)...)
	kid2 := kidOf(t, rot.stdout)
	if kid2 == kid1 || !strings.Contains(rot.stderr, "EdDSA key "+kid2+" (pkcs11:certnode-") {
		t.Fatalf("rotate: %+v", rot)
	}
	after := mustRun(t, `{"n":3}`, append([]string{"sign"}, p11...)...).stdout
	if kidOf(t, after) != kid2 || !strings.Contains(after, schemas.ProtectedHeader(schemas.AlgEdDSA, kid2)) {
		t.Fatalf("after rotation the receipt is %s, want EdDSA by %s", after, kid2)
	}
	// Both keys are on the token under the labels ring.json records.
	list := mustRun(t, "", "keys", "list", "--keyring", ring).stdout
	tokenList := mustRun(t, "", "keys", "list", "--pkcs11-module", module, "--token", token).stdout
	for kid, state := range map[string]string{kid1: "retired", kid2: "active"} {
		line := lineWith(list, kid)
		label := strings.TrimPrefix(line[strings.LastIndex(line, " ")+1:], "pkcs11:")
		if !strings.Contains(line, " "+state+" ") || !strings.Contains(lineWith(tokenList, label), kid) {
			t.Errorf("key %s: ring says %q; token says %q", kid, line, lineWith(tokenList, label))
		}
	}

	t.Setenv("CERTNODE_PKCS11_PIN", "")
	t.Setenv("CERTNODE_PKCS11_PIN_FILE", "")
	jwks := mustRun(t, "", "jwks", "--keyring", ring).stdout
	if kids := jwksKids(t, jwks); len(kids) != 2 || kids[0] != kid2 || kids[1] != kid1 {
		t.Fatalf("jwks --keyring: %v", kids)
	}
	jwksFile := filepath.Join(dir, "jwks.json")
	os.WriteFile(jwksFile, []byte(jwks), 0o644)
	if v := certnode(t, before+after, "verify", "--jwks", jwksFile); v.code != 0 || !strings.Contains(v.stdout, "3 receipts: 3 valid, 0 invalid") {
		t.Fatalf("verify across the rotation: %+v", v)
	}
	// Signing needs the PIN; the error says where it comes from.
	if r := certnode(t, "{}", append([]string{"sign"}, p11...)...); r.code != 2 || !strings.Contains(r.stderr, "CERTNODE_PKCS11_PIN") {
		t.Fatalf("sign without PIN: %+v", r)
	}
}
