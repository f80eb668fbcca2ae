//go:build integration

package main

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/certnode/certnode/internal/interop"
	"github.com/certnode/certnode/schemas"
)

// Payloads that stress canonicalization: ECMAScript numbers, integers past
// 2^53, UTF-16 key order with astral characters, escapes and U+2028.
var edgePayloads = []string{
	`{"n":[1e21,1e20,1e-7,0.000001,-0,5e-324,1.7976931348623157e308,4.5,333333333.33333329,0.1,-1e-300]}`,
	`{"big":[9007199254740993,12345678901234567890,-9007199254740993,1e23]}`,
	"{\"\U0001F600\":1,\"\ue000\":2,\"\uff61\":3,\"a\":4,\"\u00e9\":5,\"\u20ac\":6,\"\":7}",
	`{"s":"\u2028\u2029 <script>&amp; \"quoted\" \\ \/ \u0000\u001f\u007f é 😀 \ud83d\ude00"}`,
	`{"nested":{"z":[{"b":null,"a":true}],"a":{"c":false}},"null":null,"empty":{},"arr":[]}`,
	`{"order":42,"tenant":"acme","items":[{"sku":"A-1","qty":2,"price":19.99}],"total":39.98}`,
}

var algs = []string{schemas.AlgES256, schemas.AlgEdDSA}

// otherAlg is the algorithm of the other key type.
func otherAlg(alg string) string {
	if alg == schemas.AlgES256 {
		return schemas.AlgEdDSA
	}
	return schemas.AlgES256
}

// batch is the receipts of edgePayloads from one signer with one key.
type batch struct {
	name     string // signer, algorithm, whose key
	alg      string
	jwk      schemas.JWK    // the key as the signer published it
	raw      jsontext.Value // the same, verbatim
	receipts []string
}

// keyOf returns the key whose type signs alg from a JWKS of n keys, as
// decoded and verbatim.
func keyOf(t *testing.T, data []byte, n int, alg string) (schemas.JWK, jsontext.Value) {
	t.Helper()
	var set struct {
		Keys []jsontext.Value `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil || len(set.Keys) != n {
		t.Fatalf("want a JWKS of %d keys: %v: %s", n, err, data)
	}
	for _, raw := range set.Keys {
		var jwk schemas.JWK
		if err := json.Unmarshal(raw, &jwk); err != nil {
			t.Fatal(err)
		}
		if jwk.KeyAlg() == alg {
			return jwk, raw
		}
	}
	t.Fatalf("no %s key in %s", alg, data)
	return schemas.JWK{}, nil
}

// interopBatches signs edgePayloads, for each algorithm: in Go with a
// software key, and in every other implementation with a key of its own
// and with the Go key; and in Go with a key ring rotated from ES256 to
// EdDSA, whose JWKS publishes both. It checks what they publish and sign:
// kids are the RFC 7638 thumbprints Go computes (the same JWK for the same
// key), the protected header is byte-identical to Go's, and Ed25519 being
// deterministic, the same key and payload give byte-identical receipts.
func interopBatches(t *testing.T) []batch {
	dir, _, _ := setup(t)
	payloads := strings.Join(edgePayloads, "\n")
	goSign := func(keyFlag, key string) []string {
		r := certnode(t, payloads, "sign", keyFlag, key, "--ndjson")
		if r.code != 0 {
			t.Fatalf("sign %s %s: %+v", keyFlag, key, r)
		}
		return interop.Lines([]byte(r.stdout))
	}
	goJWKS := func(keyFlag, key string) []byte {
		r := certnode(t, "", "jwks", keyFlag, key)
		if r.code != 0 {
			t.Fatalf("jwks %s %s: %+v", keyFlag, key, r)
		}
		return []byte(r.stdout)
	}
	var batches []batch
	ring := filepath.Join(dir, "ring")
	for i, alg := range algs {
		key := filepath.Join(dir, alg+".pem")
		ringCmd := []string{"keys", "generate", "--keyring", ring, "--alg", alg}
		if i > 0 {
			ringCmd[1] = "rotate"
		}
		for _, args := range [][]string{{"keys", "generate", "--out", key, "--alg", alg}, ringCmd} {
			if r := certnode(t, "", args...); r.code != 0 {
				t.Fatalf("%v: %+v", args, r)
			}
		}
		goBatch := batch{name: "go " + alg, alg: alg, receipts: goSign("--key", key)}
		goBatch.jwk, goBatch.raw = keyOf(t, goJWKS("--key", key), 1, alg)
		batches = append(batches, goBatch, batch{name: "go ring " + alg, alg: alg, receipts: goSign("--keyring", ring)})
		for _, im := range interop.Impls {
			for _, keyPEM := range []string{"", key} {
				b := batch{name: im.Name + " " + alg, alg: alg}
				if keyPEM != "" {
					b.name += " with the go key"
				}
				out := filepath.Join(dir, strings.ReplaceAll(b.name, " ", "-")+".jwks")
				b.receipts = interop.Lines(im.Sign(t, out, alg, keyPEM, []byte(payloads)))
				b.jwk, b.raw = keyOf(t, mustRead(t, out), 1, alg)
				if keyPEM != "" && b.jwk != goBatch.jwk {
					t.Errorf("%s publishes %+v, go %+v", b.name, b.jwk, goBatch.jwk)
				}
				if keyPEM != "" && alg == schemas.AlgEdDSA && !slices.Equal(b.receipts, goBatch.receipts) {
					t.Errorf("%s signs differently from go:\n%s\n%s", b.name, strings.Join(b.receipts, "\n"), strings.Join(goBatch.receipts, "\n"))
				}
				batches = append(batches, b)
			}
		}
	}
	ringJWKS := goJWKS("--keyring", ring)
	for i, b := range batches {
		if strings.HasPrefix(b.name, "go ring") {
			batches[i].jwk, batches[i].raw = keyOf(t, ringJWKS, len(algs), b.alg)
		}
	}
	for _, b := range batches {
		if b.jwk.Kid != b.jwk.Thumbprint() || b.jwk.KeyAlg() != b.alg || b.jwk.Alg != b.alg {
			t.Errorf("%s: kid %s, go's thumbprint %s, key type for %q, alg %q", b.name, b.jwk.Kid, b.jwk.Thumbprint(), b.jwk.KeyAlg(), b.jwk.Alg)
		}
		if len(b.receipts) != len(edgePayloads) {
			t.Fatalf("%s: %d receipts for %d payloads", b.name, len(b.receipts), len(edgePayloads))
		}
		for i, line := range b.receipts {
			var rc schemas.Receipt
			if err := json.Unmarshal([]byte(line), &rc); err != nil {
				t.Fatalf("%s receipt %d: %v", b.name, i+1, err)
			}
			if want := schemas.ProtectedHeader(b.alg, b.jwk.Kid); rc.Protected != want || rc.Kid != b.jwk.Kid {
				t.Errorf("%s receipt %d: protected %s kid %s, go %s", b.name, i+1, rc.Protected, rc.Kid, want)
			}
		}
	}
	return batches
}

// foreignKeys are an RSA and an X25519 JWK: a JWKS may publish them, and
// verifiers must skip them rather than refuse the set.
func foreignKeys(t *testing.T) (keys []jsontext.Value, kids []string) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	xKey, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []map[string]string{
		{"kty": "RSA", "n": schemas.B64U(rsaKey.N.Bytes()), "e": "AQAB"},
		{"kty": "OKP", "crv": "X25519", "x": schemas.B64U(xKey.PublicKey().Bytes())},
	} {
		// RFC 7638: the hash of the required members, which these are, in JCS.
		data, _ := json.Marshal(k)
		canon, _ := schemas.Canonicalize(data)
		sum := sha256.Sum256(canon)
		k["kid"] = schemas.B64U(sum[:])
		if k["kty"] == "RSA" {
			k["alg"], k["use"] = "RS256", "sig"
		}
		data, _ = json.Marshal(k)
		keys, kids = append(keys, data), append(kids, k["kid"])
	}
	return keys, kids
}

// goVerify runs certnode verify on NDJSON receipts and returns its verdicts
// in the form of the other implementations: "ok" or "fail: reason".
func goVerify(t *testing.T, jwks string, receipts []byte) []string {
	t.Helper()
	r := certnode(t, string(receipts), "verify", "--jwks", jwks)
	lines := interop.Lines([]byte(r.stdout))
	if len(lines) < 2 {
		t.Fatalf("certnode verify: %+v", r)
	}
	var verdicts []string
	valid := 0
	for i, l := range lines[:len(lines)-1] {
		v, ok := strings.CutPrefix(l, fmt.Sprintf("line %d: ", i+1))
		if !ok {
			t.Fatalf("certnode verify: line %d of output: %q", i+1, l)
		}
		if v == "valid" {
			valid++
			verdicts = append(verdicts, "ok")
			continue
		}
		reason, _, _ := strings.Cut(strings.TrimPrefix(v, "invalid: "), " ")
		verdicts = append(verdicts, "fail: "+reason)
	}
	summary := fmt.Sprintf("%d receipts: %d valid, %d invalid", len(verdicts), valid, len(verdicts)-valid)
	if lines[len(lines)-1] != summary || (r.code == 0) != (valid == len(verdicts)) {
		t.Fatalf("certnode verify: exit %d, summary %q, want %q", r.code, lines[len(lines)-1], summary)
	}
	return verdicts
}

// TestInteropReceipts: receipts of both algorithms made by Go, Node and
// Python, each verified by all three against one JWKS that holds every key
// verbatim as its signer published it, plus an RSA and an X25519 key to
// skip; and forgeries of each, rejected by all three for the same reason.
func TestInteropReceipts(t *testing.T) {
	batches := interopBatches(t)
	foreign, foreignKids := foreignKeys(t)
	set := struct {
		Keys []jsontext.Value `json:"keys"`
	}{Keys: foreign}
	seen := map[string]bool{}
	for _, b := range batches {
		if !seen[b.jwk.Kid] {
			seen[b.jwk.Kid] = true
			set.Keys = append(set.Keys, b.raw)
		}
	}
	data, _ := json.Marshal(set)
	jwks := filepath.Join(t.TempDir(), "mixed.jwks")
	os.WriteFile(jwks, data, 0o644)

	nobody := sha256.Sum256([]byte("no such key"))
	rekey := func(kid string) func(*schemas.Receipt, string) {
		return func(r *schemas.Receipt, alg string) { r.Kid, r.Protected = kid, schemas.ProtectedHeader(alg, kid) }
	}
	tamper := func(r *schemas.Receipt, _ string) {
		r.Payload = append(jsontext.Value(`{"tampered":1,`), r.Payload[1:]...)
	}
	forgeries := []struct {
		name string
		edit func(r *schemas.Receipt, alg string)
		want string
	}{
		{"tampered payload", tamper, "fail: payload_hash_mismatch"},
		{"tampered payload without its hash", func(r *schemas.Receipt, alg string) { tamper(r, alg); r.PayloadJCSSHA256 = "" }, "fail: bad_signature"},
		{"unknown kid", rekey(schemas.B64U(nobody[:])), "fail: unknown_kid"},
		{"kid of the RSA key", rekey(foreignKids[0]), "fail: unknown_kid"},
		{"kid of the X25519 key", rekey(foreignKids[1]), "fail: unknown_kid"},
		{"header alg of the other key type", func(r *schemas.Receipt, alg string) { r.Protected = schemas.ProtectedHeader(otherAlg(alg), r.Kid) }, "fail: alg_key_mismatch"},
	}
	var names, want []string
	var all bytes.Buffer
	add := func(name, receipt, verdict string) {
		names, want = append(names, name), append(want, verdict)
		all.WriteString(receipt + "\n")
	}
	for _, b := range batches {
		for i, r := range b.receipts {
			add(fmt.Sprintf("%s receipt %d", b.name, i+1), r, "ok")
		}
		for _, f := range forgeries {
			var rc schemas.Receipt
			if err := json.Unmarshal([]byte(b.receipts[0]), &rc); err != nil {
				t.Fatal(err)
			}
			f.edit(&rc, b.alg)
			forged, err := rc.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			add(b.name+" "+f.name, string(forged), f.want)
		}
	}

	type verifier struct {
		name   string
		verify func(t *testing.T, jwks string, receipts []byte) []string
	}
	verifiers := []verifier{{"go", goVerify}}
	for _, im := range interop.Impls {
		verifiers = append(verifiers, verifier{im.Name, func(t *testing.T, jwks string, receipts []byte) []string { return im.Verify(t, jwks, receipts) }})
	}
	for _, v := range verifiers {
		t.Run(v.name+" verifies", func(t *testing.T) {
			got := v.verify(t, jwks, all.Bytes())
			if len(got) != len(want) {
				t.Fatalf("%d verdicts for %d receipts", len(got), len(want))
			}
			for i := range want {
				if got[i] != want[i] {
					t.Errorf("%s: %s, want %s", names[i], got[i], want[i])
				}
			}
		})
	}
}

// TestInteropJCS compares our canonical forms with Node's and Python's on
// edgePayloads and on random doubles (all bit patterns, decimal-ish values,
// large integers), whose ECMAScript forms both of them implement.
func TestInteropJCS(t *testing.T) {
	rng := mrand.New(mrand.NewPCG(8785, 2))
	inputs := append([]string(nil), edgePayloads...)
	for len(inputs) < 20000 {
		var f float64
		switch len(inputs) % 3 {
		case 0:
			f = math.Float64frombits(rng.Uint64())
		case 1:
			f = (rng.Float64() - 0.5) * math.Pow(10, float64(rng.IntN(50)-25))
		default:
			f = float64(rng.Int64())
		}
		if math.IsNaN(f) || math.IsInf(f, 0) {
			continue
		}
		// More digits than needed: every side must round.
		inputs = append(inputs, "["+strconv.FormatFloat(f, 'g', 21, 64)+"]")
	}
	in := []byte(strings.Join(inputs, "\n"))
	for _, im := range interop.Impls {
		t.Run(im.Name, func(t *testing.T) {
			want := im.JCS(t, in)
			if len(want) != len(inputs) {
				t.Fatalf("%d lines for %d inputs", len(want), len(inputs))
			}
			for i, s := range inputs {
				got, err := schemas.Canonicalize([]byte(s))
				if err != nil {
					t.Fatalf("%s: %v", s, err)
				}
				if string(got) != want[i] {
					t.Fatalf("%s: go %s, %s %s", s, got, im.Name, want[i])
				}
			}
		})
	}
}
