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
)

func TestCLIWithSoftHSM(t *testing.T) {
	module, token := testenv.PKCS11(t)
	var b [6]byte
	rand.Read(b[:])
	label := fmt.Sprintf("cli-%x", b)
	p11 := []string{"--pkcs11-module", module, "--token", token}

	gen := certnode(t, "", append([]string{"keys", "generate", "--label", label}, p11...)...)
	if gen.code != 0 || !strings.Contains(gen.stdout, `"kid":"`) {
		t.Fatalf("keys generate: %+v", gen)
	}
	if again := certnode(t, "", append([]string{"keys", "generate", "--label", label}, p11...)...); again.code != 2 || !strings.Contains(again.stderr, "already exists") {
		t.Fatalf("second generate: %+v", again)
	}
	list := certnode(t, "", append([]string{"keys", "list"}, p11...)...)
	if list.code != 0 || !strings.Contains(list.stdout, label) || !strings.Contains(list.stdout, "EC P-256") {
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
	if v := certnode(t, sign.stdout, "verify", "--jwks", jwksFile); v.code != 0 || !strings.Contains(v.stdout, "2 receipts: 2 valid, 0 invalid") {
		t.Fatalf("verify: %+v", v)
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
