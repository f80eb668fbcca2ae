package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/schemas"
)

type result struct {
	code           int
	stdout, stderr string
}

func certnode(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errb)
	return result{code, out.String(), errb.String()}
}

// setup makes a key and its JWKS in a temp dir. It clears the key-source
// variables `make test` exports for the HSM tests, so the software-key
// tests see only what they set themselves.
func setup(t *testing.T) (dir, key, jwks string) { return setupAlg(t, schemas.AlgES256) }

// setupAlg is setup with a key for alg.
func setupAlg(t *testing.T, alg string) (dir, key, jwks string) {
	for _, v := range []string{"CERTNODE_KEY", "CERTNODE_KEYRING", "CERTNODE_PKCS11_MODULE", "CERTNODE_PKCS11_TOKEN", "CERTNODE_PKCS11_KEY_LABEL"} {
		t.Setenv(v, "")
	}
	dir = t.TempDir()
	key, jwks = filepath.Join(dir, "key.pem"), filepath.Join(dir, "jwks.json")
	if r := certnode(t, "", "keys", "generate", "--out", key, "--alg", alg); r.code != 0 {
		t.Fatalf("keys generate: %+v", r)
	}
	r := certnode(t, "", "jwks", "--key", key)
	if r.code != 0 {
		t.Fatalf("jwks: %+v", r)
	}
	os.WriteFile(jwks, []byte(r.stdout), 0o644)
	return dir, key, jwks
}

func TestSignVerifyRoundTrip(t *testing.T) {
	dir, key, jwks := setup(t)
	r := certnode(t, `{"z":1,"a":{"y":[1e21,-0]}}`, "sign", "--key", key)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("sign: %+v", r)
	}
	if !strings.Contains(r.stdout, `"payload":{"a":{"y":[1e+21,0]},"z":1}`) {
		t.Fatalf("payload not canonical in %s", r.stdout)
	}
	receipt := filepath.Join(dir, "r.json")
	os.WriteFile(receipt, []byte(r.stdout), 0o644)
	if v := certnode(t, "", "verify", "--jwks", jwks, "--receipt", receipt); v.code != 0 || v.stdout != "valid\n" {
		t.Fatalf("verify: %+v", v)
	}
	// Pretty-printed receipts on stdin are one document, not NDJSON.
	pretty := strings.Replace(strings.Replace(r.stdout, `,"signature"`, ",\n  \"signature\"", 1), `{"protected"`, "{\n  \"protected\"", 1)
	if v := certnode(t, pretty, "verify", "--jwks", jwks); v.code != 0 || v.stdout != "valid\n" {
		t.Fatalf("verify pretty: %+v", v)
	}
	tampered := strings.Replace(r.stdout, `"z":1`, `"z":2`, 1)
	if v := certnode(t, tampered, "verify", "--jwks", jwks); v.code != 1 || v.stdout != "invalid: payload_hash_mismatch\n" {
		t.Fatalf("verify tampered: %+v", v)
	}
	// A different key's JWKS does not know the kid.
	_, _, otherJWKS := setup(t)
	if v := certnode(t, r.stdout, "verify", "--jwks", otherJWKS); v.code != 1 || !strings.HasPrefix(v.stdout, "invalid: unknown_kid") {
		t.Fatalf("verify other jwks: %+v", v)
	}
}

// EdDSA keys sign from the CLI, and a JWKS mixing EC and OKP keys (and
// keys of types CertNode does not use, skipped with one note each)
// verifies receipts of both algorithms.
func TestMixedJWKS(t *testing.T) {
	_, ecKey, ecJWKS := setupAlg(t, schemas.AlgES256)
	_, edKey, edJWKS := setupAlg(t, schemas.AlgEdDSA)
	var mixed schemas.JWKS
	for _, f := range []string{ecJWKS, edJWKS} {
		var one schemas.JWKS
		if err := json.Unmarshal(mustRead(t, f), &one); err != nil || len(one.Keys) != 1 {
			t.Fatalf("%s: %v", f, err)
		}
		mixed.Keys = append(mixed.Keys, one.Keys[0])
	}
	if mixed.Keys[1].Kty != "OKP" || mixed.Keys[1].Alg != schemas.AlgEdDSA {
		t.Fatalf("EdDSA JWK %+v", mixed.Keys[1])
	}
	doc, _ := json.Marshal(mixed)
	doc = bytes.Replace(doc, []byte(`{"keys":[`), []byte(`{"keys":[{"kty":"RSA","kid":"rsa","n":"AQAB","e":"AQAB"},`), 1)
	jwks := filepath.Join(t.TempDir(), "mixed.json")
	os.WriteFile(jwks, doc, 0o644)

	es := certnode(t, `{"n":1}`, "sign", "--key", ecKey)
	ed := certnode(t, `{"n":1}`, "sign", "--key", edKey)
	ed2 := certnode(t, `{ "n" : 1.0 }`, "sign", "--key", edKey)
	if es.code != 0 || ed.code != 0 || !strings.Contains(ed.stdout, `"protected":"`+schemas.ProtectedHeader(schemas.AlgEdDSA, mixed.Keys[1].Kid)+`"`) {
		t.Fatalf("sign: %+v %+v", es, ed)
	}
	if ed2.stdout != ed.stdout {
		t.Fatalf("Ed25519 receipts of one payload differ:\n%s%s", ed.stdout, ed2.stdout)
	}
	var rc schemas.Receipt
	json.Unmarshal([]byte(ed.stdout), &rc)
	rc.Protected = schemas.ProtectedHeader(schemas.AlgES256, rc.Kid)
	swapped, _ := rc.Marshal()
	v := certnode(t, es.stdout+ed.stdout+string(swapped)+"\n", "verify", "--jwks", jwks)
	want := "line 1: valid\nline 2: valid\nline 3: invalid: alg_key_mismatch"
	if v.code != 1 || !strings.HasPrefix(v.stdout, want) || !strings.HasSuffix(v.stdout, "3 receipts: 2 valid, 1 invalid\n") {
		t.Fatalf("verify with a mixed JWKS: %+v", v)
	}
	if strings.Count(v.stderr, "skipped") != 1 || !strings.Contains(v.stderr, `jwks key 0 (kid "rsa", kty "RSA", crv "") skipped: unsupported_key_type`) {
		t.Fatalf("skipped RSA key reported as %q", v.stderr)
	}
	if r := certnode(t, "", "keys", "generate", "--out", filepath.Join(t.TempDir(), "k.pem"), "--alg", "RS256"); r.code != 2 || !strings.Contains(r.stderr, "--alg") {
		t.Fatalf("keys generate --alg RS256: %+v", r)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestNDJSON(t *testing.T) {
	_, key, jwks := setup(t)
	r := certnode(t, "{\"n\":1}\n\n{\"n\":2}\n[3]\n{\"n\":4}", "sign", "--key", key, "--ndjson")
	if r.code != 1 || !strings.Contains(r.stderr, "line 4: payload rejected: payload must be a JSON object") {
		t.Fatalf("sign ndjson: %+v", r)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 3 {
		t.Fatalf("want 3 receipts, got %d", len(lines))
	}
	good := certnode(t, "\n\n"+r.stdout, "verify", "--jwks", jwks)
	// Leading blank lines count in the line numbers, as in sign's errors.
	if good.code != 0 || !strings.HasPrefix(good.stdout, "line 3: valid") || !strings.HasSuffix(good.stdout, "3 receipts: 3 valid, 0 invalid\n") {
		t.Fatalf("verify ndjson: %+v", good)
	}
	lines[1] = strings.Replace(lines[1], `"signature":"`, `"signature":"A`, 1)
	lines = append(lines, "not json")
	bad := certnode(t, strings.Join(lines, "\n"), "verify", "--jwks", jwks)
	want := []string{"line 1: valid", "line 2: invalid: bad_signature", "line 3: valid", "line 4: invalid: malformed", "4 receipts: 2 valid, 2 invalid"}
	for _, w := range want {
		if !strings.Contains(bad.stdout, w) {
			t.Errorf("verify output lacks %q:\n%s", w, bad.stdout)
		}
	}
	if bad.code != 1 {
		t.Fatalf("exit %d, want 1", bad.code)
	}
}

func TestBadInput(t *testing.T) {
	dir, key, jwks := setup(t)
	notPEM := filepath.Join(dir, "not.pem")
	os.WriteFile(notPEM, []byte("hello"), 0o600)
	rsa := filepath.Join(dir, "rsa.pem")
	os.WriteFile(rsa, []byte("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"), 0o600)
	cases := []struct {
		name  string
		stdin string
		args  []string
		code  int
		msg   string
	}{
		{"payload not JSON", "{nope", []string{"sign", "--key", key}, 1, "payload rejected: invalid JSON"},
		{"payload not an object", `"str"`, []string{"sign", "--key", key}, 1, "payload must be a JSON object"},
		{"duplicate keys", `{"a":1,"a":2}`, []string{"sign", "--key", key}, 1, "duplicate object key"},
		{"empty payload", "", []string{"sign", "--key", key}, 1, "invalid JSON"},
		{"no key", "{}", []string{"sign"}, 2, "no key"},
		{"key and HSM", "{}", []string{"sign", "--key", key, "--pkcs11-module", "/x.so", "--token", "t", "--label", "l"}, 2, "not both"},
		{"HSM without label", "{}", []string{"sign", "--pkcs11-module", "/x.so", "--token", "t"}, 2, "--label is required"},
		{"missing key file", "{}", []string{"sign", "--key", filepath.Join(dir, "missing.pem")}, 2, "no such file"},
		{"key not PEM", "{}", []string{"sign", "--key", notPEM}, 2, "not PEM"},
		{"wrong key type", "{}", []string{"sign", "--key", rsa}, 2, "wrong key type"},
		{"missing payload file", "", []string{"sign", "--key", key, "--payload", filepath.Join(dir, "nope.json")}, 2, "no such file"},
		{"verify without jwks", "{}", []string{"verify"}, 2, "--jwks FILE is required"},
		{"jwks not JSON", "{}", []string{"verify", "--jwks", key}, 2, "jwks"},
		{"verify empty input", "\n\n", []string{"verify", "--jwks", jwks}, 2, "no receipt on input"},
		{"verify not JSON", "garbage", []string{"verify", "--jwks", jwks}, 1, ""},
		{"unknown command", "", []string{"frobnicate"}, 2, "unknown command"},
		{"unknown flag", "", []string{"sign", "--frob"}, 2, "unknown flag"},
		{"stray argument", "", []string{"verify", "extra"}, 2, "unknown command"},
		{"generate without target", "", []string{"keys", "generate"}, 2, "give --keyring DIR for a key ring, --out FILE"},
		{"keys list without target", "", []string{"keys", "list"}, 2, "needs --keyring DIR, or --pkcs11-module and --token"},
		{"rotate without ring", "", []string{"keys", "rotate"}, 2, "--keyring DIR is required"},
		{"rotate a missing ring", "", []string{"keys", "rotate", "--keyring", filepath.Join(dir, "nope")}, 2, "has no key ring yet"},
		{"keyring and key", "{}", []string{"sign", "--keyring", dir, "--key", key}, 2, "either --keyring or --key"},
		{"keyring and label", "{}", []string{"sign", "--keyring", dir, "--label", "l"}, 2, "leave --label out"},
		{"sign with a missing ring", "{}", []string{"sign", "--keyring", filepath.Join(dir, "nope")}, 2, "ring.json: no such file"},
		{"generate --out into a ring", "", []string{"keys", "generate", "--out", filepath.Join(dir, "x.pem"), "--keyring", dir}, 2, "without --keyring"},
		{"generate overwrites", "", []string{"keys", "generate", "--out", key}, 2, "file exists"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := certnode(t, tc.stdin, tc.args...)
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d: %+v", r.code, tc.code, r)
			}
			if tc.code == 2 && (!strings.Contains(r.stderr, tc.msg) || strings.Count(r.stderr, "\n") != 1) {
				t.Fatalf("stderr %q, want one line containing %q", r.stderr, tc.msg)
			}
			if tc.code == 1 && tc.msg != "" && !strings.Contains(r.stderr, tc.msg) {
				t.Fatalf("stderr %q, want %q", r.stderr, tc.msg)
			}
			if strings.Contains(r.stderr, "goroutine") || strings.Contains(r.stderr, "panic") {
				t.Fatalf("stack trace on stderr: %s", r.stderr)
			}
		})
	}
}

func TestEnvConfiguresFlags(t *testing.T) {
	_, key, _ := setup(t)
	t.Setenv("CERTNODE_KEY", key)
	if r := certnode(t, `{"a":1}`, "sign"); r.code != 0 {
		t.Fatalf("sign with CERTNODE_KEY: %+v", r)
	}
}

// Explicit flags choose the key source over environment of the other one.
func TestExplicitKeySourceBeatsEnvironment(t *testing.T) {
	dir, key, _ := setup(t)
	t.Setenv("CERTNODE_PKCS11_MODULE", "/nonexistent/module.so")
	t.Setenv("CERTNODE_PKCS11_TOKEN", "env-token")
	t.Setenv("CERTNODE_PKCS11_KEY_LABEL", "env-label")
	if r := certnode(t, `{"a":1}`, "sign", "--key", key); r.code != 0 {
		t.Fatalf("--key with PKCS#11 env: %+v", r)
	}
	if r := certnode(t, "", "keys", "generate", "--out", filepath.Join(dir, "k2.pem")); r.code != 0 {
		t.Fatalf("generate --out with PKCS#11 env: %+v", r)
	}
	// Without an explicit choice the environment's HSM is used (and fails
	// here, clearly, because the module does not exist).
	t.Setenv("CERTNODE_PKCS11_PIN", "x")
	if r := certnode(t, `{"a":1}`, "sign"); r.code != 2 || !strings.Contains(r.stderr, "/nonexistent/module.so") {
		t.Fatalf("env HSM: %+v", r)
	}
	// Both sources from the environment: refuse to guess.
	t.Setenv("CERTNODE_KEY", key)
	if r := certnode(t, `{"a":1}`, "sign"); r.code != 2 || !strings.Contains(r.stderr, "not both") {
		t.Fatalf("both sources in env: %+v", r)
	}
}

// The coordinator refuses a bad start with every problem on stderr and
// exit 2, before it opens anything.
func TestCoordinatorBadInput(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("CERTNODE_ADMIN_TOKEN", "")
	t.Setenv("CERTNODE_NODE_TOKEN", "")
	r := certnode(t, "", "coordinator", "--id", "c1", "--data", dir)
	if r.code != 2 || !strings.Contains(r.stderr, "$CERTNODE_ADMIN_TOKEN (or $CERTNODE_ADMIN_TOKEN_FILE) is required") ||
		!strings.Contains(r.stderr, "$CERTNODE_NODE_TOKEN") {
		t.Fatalf("without tokens: %+v", r)
	}
	t.Setenv("CERTNODE_ADMIN_TOKEN", "short")
	t.Setenv("CERTNODE_NODE_TOKEN", "node-token-0123456789")
	r = certnode(t, "", "coordinator", "--id", "Bad ID", "--raft", "nowhere", "--bootstrap", "--join", "127.0.0.1:1", "--webhook-allow", "127.0.0.0/8,loopback",
		"--dns-resolver", "127.0.0.1")
	for _, want := range []string{"--id", "--raft \"nowhere\"", "--data DIR is required", "exclude each other", "at least 16 bytes",
		"--webhook-allow \"loopback\": want a CIDR prefix", "--dns-resolver \"127.0.0.1\": want host:port"} {
		if r.code != 2 || !strings.Contains(r.stderr, want) {
			t.Errorf("bad flags: stderr lacks %q: %+v", want, r)
		}
	}
	if strings.Contains(r.stderr, "node-token-0123456789") {
		t.Fatal("a token is printed")
	}
	for _, bad := range []string{"dns.example", ":53", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:dns", "[::1]:70000"} {
		if _, err := dnsResolver(bad); err == nil {
			t.Errorf("--dns-resolver %q accepted", bad)
		}
	}
	for _, good := range []string{"127.0.0.1:53", "[::1]:5353", "dns.example:53"} {
		if _, err := dnsResolver(good); err != nil {
			t.Errorf("--dns-resolver %q: %v", good, err)
		}
	}
}

// certnode dev refuses a --dns-resolver that is not host:port before it
// starts anything.
func TestDevBadResolver(t *testing.T) {
	r := certnode(t, "", "dev", "--data", t.TempDir(), "--dns-resolver", "127.0.0.1")
	if r.code != exitUsage || !strings.Contains(r.stderr, "--dns-resolver \"127.0.0.1\": want host:port") {
		t.Fatalf("got %+v", r)
	}
}
