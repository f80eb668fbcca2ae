package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/schemas"
	"github.com/certnode/certnode/signer"
)

func kidOf(t *testing.T, jsonDoc string) string {
	t.Helper()
	var v struct {
		Kid string `json:"kid"`
	}
	if err := json.Unmarshal([]byte(jsonDoc), &v, json.RejectUnknownMembers(false)); err != nil || v.Kid == "" {
		t.Fatalf("no kid in %q: %v", jsonDoc, err)
	}
	return v.Kid
}

func jwksKids(t *testing.T, doc string) []string {
	t.Helper()
	var j schemas.JWKS
	if err := json.Unmarshal([]byte(doc), &j); err != nil {
		t.Fatalf("JWKS %q: %v", doc, err)
	}
	var kids []string
	for _, k := range j.Keys {
		kids = append(kids, k.Kid)
	}
	return kids
}

func mustRun(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	r := certnode(t, stdin, args...)
	if r.code != 0 {
		t.Fatalf("certnode %s: %+v", strings.Join(args, " "), r)
	}
	return r
}

// A receipt signed before a rotation verifies after it, with the JWKS that
// certnode jwks prints from the ring.
func TestKeysRotateCLI(t *testing.T) {
	dir, _, _ := setup(t)
	ring := filepath.Join(dir, "ring")
	kid1 := kidOf(t, mustRun(t, "", "keys", "generate", "--keyring", ring).stdout)
	before := mustRun(t, `{"n":1}`, "sign", "--keyring", ring).stdout
	if kidOf(t, before) != kid1 {
		t.Fatalf("first receipt kid %s, want %s", kidOf(t, before), kid1)
	}
	oldJWKS := filepath.Join(dir, "old-jwks.json")
	os.WriteFile(oldJWKS, []byte(mustRun(t, "", "jwks", "--keyring", ring).stdout), 0o644)

	rot := mustRun(t, "", "keys", "rotate", "--keyring", ring)
	kid2 := kidOf(t, rot.stdout)
	if kid2 == kid1 || !strings.Contains(rot.stderr, kid1+" is retired and stays published") {
		t.Fatalf("rotate: %+v", rot)
	}
	after := mustRun(t, `{"n":2}`, "sign", "--keyring", ring).stdout
	if kidOf(t, after) != kid2 {
		t.Fatalf("after rotation the receipt kid is %s, want %s", kidOf(t, after), kid2)
	}
	jwks := mustRun(t, "", "jwks", "--keyring", ring).stdout
	if got := jwksKids(t, jwks); len(got) != 2 || got[0] != kid2 || got[1] != kid1 {
		t.Fatalf("jwks --keyring kids %v, want [%s %s]", got, kid2, kid1)
	}
	jwksFile := filepath.Join(dir, "jwks.json")
	os.WriteFile(jwksFile, []byte(jwks), 0o644)
	if v := certnode(t, before+after, "verify", "--jwks", jwksFile); v.code != 0 || !strings.Contains(v.stdout, "2 receipts: 2 valid, 0 invalid") {
		t.Fatalf("verify across the rotation: %+v", v)
	}
	// The JWKS from before the rotation does not know the new key: what
	// verifiers hold must be refreshed, which is why the ring keeps both.
	if v := certnode(t, after, "verify", "--jwks", oldJWKS); v.code != 1 || !strings.HasPrefix(v.stdout, "invalid: unknown_kid") {
		t.Fatalf("new receipt against the old JWKS: %+v", v)
	}

	// A standby key (Ed25519 beside the P-256 ones) is published first
	// and signs only once activated.
	gen := mustRun(t, "", "keys", "generate", "--keyring", ring, "--alg", "EdDSA")
	kid3 := kidOf(t, gen.stdout)
	if !strings.Contains(gen.stderr, "standby") {
		t.Fatalf("generate into an existing ring: %+v", gen)
	}
	if k := kidOf(t, mustRun(t, `{"n":3}`, "sign", "--keyring", ring).stdout); k != kid2 {
		t.Fatalf("a standby key signed (%s)", k)
	}
	if got := jwksKids(t, mustRun(t, "", "jwks", "--keyring", ring).stdout); len(got) != 3 || got[0] != kid2 || got[1] != kid3 {
		t.Fatalf("standby key not published after the active one: %v", got)
	}
	if r := certnode(t, "", "keys", "rotate", "--keyring", ring, "--to", kid3, "--alg", "EdDSA"); r.code != 2 || !strings.Contains(r.stderr, "leave --alg out") {
		t.Fatalf("rotate --to with --alg: %+v", r)
	}
	mustRun(t, "", "keys", "rotate", "--keyring", ring, "--to", kid3)
	if rc := mustRun(t, `{"n":4}`, "sign", "--keyring", ring).stdout; kidOf(t, rc) != kid3 || !strings.Contains(rc, schemas.ProtectedHeader(schemas.AlgEdDSA, kid3)) {
		t.Fatalf("after rotate --to the receipt is %s, want EdDSA by %s", rc, kid3)
	}
	// A rotation keeps the active key's algorithm unless told otherwise.
	kid4 := kidOf(t, mustRun(t, "", "keys", "rotate", "--keyring", ring).stdout)

	list := mustRun(t, "", "keys", "list", "--keyring", ring).stdout
	for kid, want := range map[string]string{kid1: "ES256  retired", kid2: "ES256  retired", kid3: "EdDSA  retired", kid4: "EdDSA  active"} {
		line := lineWith(list, kid)
		if !strings.Contains(line, " "+want+" ") || !strings.Contains(line, "file:"+kid+".pem") {
			t.Errorf("keys list line for %s: %q, want %s", kid, line, want)
		}
	}
	if r := certnode(t, "", "keys", "rotate", "--keyring", ring, "--to", kid4); r.code != 2 || !strings.Contains(r.stderr, "already active") {
		t.Fatalf("rotate --to the active key: %+v", r)
	}
	// The environment names the ring as well as the flag does.
	t.Setenv("CERTNODE_KEYRING", ring)
	if k := kidOf(t, mustRun(t, `{"n":5}`, "sign").stdout); k != kid4 {
		t.Fatalf("sign with CERTNODE_KEYRING: kid %s", k)
	}
}

func lineWith(text, sub string) string {
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

// A damaged ring.json stops every command with one line naming the file
// and the problem; nothing signs with a guess.
func TestKeysRingTamperedCLI(t *testing.T) {
	dir, _, _ := setup(t)
	ring := filepath.Join(dir, "ring")
	mustRun(t, "", "keys", "generate", "--keyring", ring)
	mustRun(t, "", "keys", "rotate", "--keyring", ring)
	path := filepath.Join(ring, signer.RingFileName)
	good, _ := os.ReadFile(path)
	f, _ := signer.ParseRingFile(good)
	cases := []struct{ name, content, want string }{
		{"garbage", "\x00garbage", "not a ring.json"},
		{"kid edited", strings.Replace(string(good), `"kid": "`+f.Keys[0].Kid, `"kid": "`+f.Keys[1].Kid, 1), "kid is not the RFC 7638 thumbprint"},
		{"active edited", strings.Replace(string(good), `"active": "`+f.Active, `"active": "x`, 1), "is not among the keys"},
		{"source escapes the ring", strings.Replace(string(good), `"source": "file:`, `"source": "file:../`, 1), "a file beside ring.json"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			os.WriteFile(path, []byte(tc.content), 0o644)
			for _, args := range [][]string{
				{"sign", "--keyring", ring},
				{"jwks", "--keyring", ring},
				{"keys", "list", "--keyring", ring},
				{"keys", "rotate", "--keyring", ring},
			} {
				r := certnode(t, "{}", args...)
				if r.code != 2 || !strings.Contains(r.stderr, path) || !strings.Contains(r.stderr, "bad key ring") ||
					!strings.Contains(r.stderr, tc.want) || strings.Count(r.stderr, "\n") != 1 {
					t.Errorf("%s: %+v\nwant one line naming %s and %q", strings.Join(args, " "), r, path, tc.want)
				}
			}
		})
	}
	os.WriteFile(path, good, 0o644)
	mustRun(t, "{}", "sign", "--keyring", ring)
}

func TestKeysIngestRequiresKeyring(t *testing.T) {
	setup(t)
	r := certnode(t, "", "ingest")
	if r.code != 2 || !strings.Contains(r.stderr, "--keyring DIR is required") || strings.Contains(r.stderr, "open :") {
		t.Fatalf("ingest without --keyring: %+v", r)
	}
	missing := filepath.Join(t.TempDir(), "nope")
	if r := certnode(t, "", "ingest", "--keyring", missing); r.code != 2 || !strings.Contains(r.stderr, "--keyring: key ring "+missing) || !strings.Contains(r.stderr, "no such file") {
		t.Fatalf("ingest with a missing ring: %+v", r)
	}
	if r := certnode(t, "", "ingest", "--jwks", "x.json"); r.code != 2 || !strings.Contains(r.stderr, "unknown flag: --jwks") {
		t.Fatalf("ingest --jwks: %+v", r)
	}
}

// An existing dev data dir keeps its kid: DIR/key.pem moves into the ring.
func TestKeysDevMigratesLegacyKey(t *testing.T) {
	dir := t.TempDir()
	legacy, _ := signer.GenerateSoftware(schemas.AlgES256)
	if err := legacy.WritePEM(filepath.Join(dir, "key.pem")); err != nil {
		t.Fatal(err)
	}
	legacyJWK, _ := schemas.NewJWK(legacy.Public())
	ringDir := filepath.Join(dir, "keyring")
	if err := devKeyring(ringDir, filepath.Join(dir, "key.pem")); err != nil {
		t.Fatal(err)
	}
	f, err := signer.ReadRingFile(ringDir)
	if err != nil {
		t.Fatal(err)
	}
	if f.Active != legacyJWK.Kid || len(f.Keys) != 1 || f.Keys[0].Source != "file:"+legacyJWK.Kid+".pem" {
		t.Fatalf("migrated ring %+v, want the legacy kid %s", f, legacyJWK.Kid)
	}
	if _, err := os.Stat(filepath.Join(dir, "key.pem")); !os.IsNotExist(err) {
		t.Fatalf("legacy key.pem still there: %v", err)
	}
	// Later starts leave the ring alone.
	if err := devKeyring(ringDir, filepath.Join(dir, "key.pem")); err != nil {
		t.Fatal(err)
	}
	if again, _ := signer.ReadRingFile(ringDir); len(again.Keys) != 1 {
		t.Fatalf("second start changed the ring: %+v", again)
	}
	// A fresh data dir gets a fresh ring.
	fresh := filepath.Join(t.TempDir(), "keyring")
	if err := devKeyring(fresh, filepath.Join(t.TempDir(), "key.pem")); err != nil {
		t.Fatal(err)
	}
	if ff, err := signer.ReadRingFile(fresh); err != nil || len(ff.Keys) != 1 || ff.Active == legacyJWK.Kid {
		t.Fatalf("fresh ring: %+v %v", ff, err)
	}
}

// certnode dev on a data dir from before key rings: the kid stays, and a
// rotation with certnode keys rotate (here to an Ed25519 key, switching
// the algorithm) reaches the running process, whose JWKS then serves both
// keys and verifies receipts of either, singly and in verify jobs.
func TestKeysRotateLiveInDev(t *testing.T) {
	dir := t.TempDir()
	legacy, _ := signer.GenerateSoftware(schemas.AlgES256)
	legacy.WritePEM(filepath.Join(dir, "key.pem"))
	legacyJWK, _ := schemas.NewJWK(legacy.Public())
	e := startDevIn(t, dir, freeAddr(t))
	creds := e.creds()
	const js = "application/json"
	sign := func() string {
		t.Helper()
		code, body := e.do("POST", "/v1/sign", creds.APIKey, js, `{"payload":{"at":"`+time.Now().String()+`"}}`)
		if code != 200 {
			t.Fatalf("sign: %d %s", code, body)
		}
		return body
	}
	old := sign()
	if kidOf(t, old) != legacyJWK.Kid {
		t.Fatalf("dev signs with %s, want the migrated %s", kidOf(t, old), legacyJWK.Kid)
	}
	kid2 := kidOf(t, mustRun(t, "", "keys", "rotate", "--keyring", filepath.Join(dir, "keyring"), "--alg", "EdDSA").stdout)

	deadline := time.Now().Add(10 * time.Second)
	for {
		_, body := e.do("GET", "/.well-known/jwks.json", "", "", "")
		if kids := jwksKids(t, body); len(kids) == 2 && kids[0] == kid2 && kids[1] == legacyJWK.Kid {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("served JWKS after rotation: %s", body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	fresh := sign()
	if k := kidOf(t, fresh); k != kid2 || !strings.Contains(fresh, `"protected":"`+schemas.ProtectedHeader(schemas.AlgEdDSA, kid2)+`"`) {
		t.Fatalf("after rotation dev signs %s, want EdDSA with %s", fresh, kid2)
	}
	if code, v := e.do("POST", "/v1/verify", creds.APIKey, js, `{"receipt":`+old+`}`); code != 200 || !strings.Contains(v, `"valid":true`) {
		t.Fatalf("receipt from before the rotation: %d %s", code, v)
	}
	e.key = creds.APIKey
	job := e.submit("verify", old+"\n"+fresh+"\n")
	if st := e.waitDone(job); st["valid"] != 2.0 {
		t.Fatalf("verify job of an ES256 and an EdDSA receipt: %v", st)
	}
	// A caller's JWKS may hold keys CertNode does not use: the answer
	// names them, and the keys it can use still verify.
	_, body := e.do("GET", "/.well-known/jwks.json", "", "", "")
	mixed := strings.Replace(body, `{"keys":[`, `{"keys":[{"kty":"OKP","crv":"X25519","kid":"dh","x":"AA"},`, 1)
	code, v := e.do("POST", "/v1/verify", creds.APIKey, js, `{"receipt":`+fresh+`,"jwks":`+mixed+`}`)
	if code != 200 || !strings.Contains(v, `"valid":true`) || !strings.Contains(v, `"keys":"caller"`) ||
		!strings.Contains(v, `"jwks_skipped":[{"index":0,"kid":"dh","kty":"OKP","crv":"X25519","reason":"unsupported_key_type"}]`) {
		t.Fatalf("verify with a mixed caller JWKS: %d %s", code, v)
	}
	// A verify job's lines may carry the JWKS to verify with, as the
	// /v1/verify body does; one without a usable key is rejected at upload.
	f, o, mx := strings.TrimSpace(fresh), strings.TrimSpace(old), strings.TrimSpace(mixed) // one line each
	lines := `{"receipt":` + f + `,"jwks":` + mx + "}\n" +
		`{"receipt":` + o + `,"jwks":{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}}` + "\n" +
		`{"receipt":` + o + `,"jwks":` + mx + "}\n" + o + "\n"
	code, v = e.do("POST", "/v1/jobs?type=verify", creds.APIKey, "application/x-ndjson", lines)
	if code != 202 || !strings.Contains(v, `"rejected":[{"line":2,"code":"invalid_jwks"`) ||
		!strings.Contains(v, `"jwks_skipped":[{"line":1,"index":0,"kid":"dh","kty":"OKP","crv":"X25519","reason":"unsupported_key_type"}]`) {
		t.Fatalf("verify job with caller keys: %d %s", code, v)
	}
	var acc struct {
		JobID string `json:"job_id"`
	}
	json.Unmarshal([]byte(v), &acc, json.RejectUnknownMembers(false))
	e.waitDone(acc.JobID)
	got := e.results(acc.JobID, "")
	want := []string{"1 valid caller", "2 rejected ", "3 valid caller", "4 valid service"}
	for i, r := range got {
		if i >= len(want) || fmt.Sprintf("%d %s %s", r.Line, r.Status, r.Keys) != want[i] {
			t.Fatalf("results %+v, want %v", got, want)
		}
	}
	// A caller's JWKS cannot present a key under another key's kid.
	forged := legacyJWK
	forged.Kid = kid2
	doc, _ := json.Marshal(schemas.JWKS{Keys: []schemas.JWK{forged}})
	code, v = e.do("POST", "/v1/verify", creds.APIKey, js, `{"receipt":`+old+`,"jwks":`+string(doc)+`}`)
	if code != 422 || errorCode(t, v) != "invalid_jwks" || !strings.Contains(v, "jwks key 0") {
		t.Fatalf("verify with a JWKS whose kid is not the thumbprint: %d %s", code, v)
	}
}
