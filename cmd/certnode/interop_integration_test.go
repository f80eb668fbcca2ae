//go:build integration

package main

import (
	"bytes"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/go-json-experiment/json"

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

func TestInteropGoSignsNodeVerifies(t *testing.T) {
	_, key, jwks := setup(t)
	r := certnode(t, strings.Join(edgePayloads, "\n"), "sign", "--key", key, "--ndjson")
	if r.code != 0 {
		t.Fatalf("sign: %+v", r)
	}
	verdicts := interop.NodeVerify(t, jwks, []byte(r.stdout))
	if len(verdicts) != len(edgePayloads) {
		t.Fatalf("node returned %d verdicts for %d receipts", len(verdicts), len(edgePayloads))
	}
	for i, v := range verdicts {
		if v != "ok" {
			t.Errorf("payload %d: node says %s", i+1, v)
		}
	}
	// And node rejects a tampered one, so "ok" means something.
	tampered := strings.Replace(strings.SplitN(r.stdout, "\n", 2)[0], `"n":[`, `"n":[2,`, 1)
	if v := interop.NodeVerify(t, jwks, []byte(tampered)); len(v) != 1 || v[0] == "ok" {
		t.Fatalf("node accepted a tampered receipt: %v", v)
	}
}

func TestInteropNodeSignsGoVerifies(t *testing.T) {
	jwks := filepath.Join(t.TempDir(), "node-jwks.json")
	receipts := interop.Node(t, []byte(strings.Join(edgePayloads, "\n")), "sign", jwks)
	r := certnode(t, string(receipts), "verify", "--jwks", jwks)
	if r.code != 0 || !strings.Contains(r.stdout, "6 receipts: 6 valid, 0 invalid") {
		t.Fatalf("verify node receipts: %+v", r)
	}
	// The protected header is byte-identical to ours for the same kid.
	for _, line := range bytes.Split(bytes.TrimSpace(receipts), []byte("\n")) {
		var rc schemas.Receipt
		if err := json.Unmarshal(line, &rc); err != nil {
			t.Fatal(err)
		}
		if rc.Protected != schemas.ProtectedHeader(schemas.AlgES256, rc.Kid) {
			t.Fatalf("protected header differs: node %s, go %s", rc.Protected, schemas.ProtectedHeader(schemas.AlgES256, rc.Kid))
		}
	}
	data, _ := os.ReadFile(jwks)
	var set schemas.JWKS
	json.Unmarshal(data, &set)
	if len(set.Keys) != 1 || set.Keys[0].Thumbprint() != set.Keys[0].Kid {
		t.Fatalf("jose's RFC 7638 thumbprint differs from ours: %+v", set.Keys)
	}
}

// TestInteropJCSNumbers compares our canonical numbers with ECMAScript's on
// random doubles (all bit patterns, decimal-ish values, large integers).
func TestInteropJCSNumbers(t *testing.T) {
	rng := rand.New(rand.NewPCG(8785, 2))
	var in bytes.Buffer
	var inputs []string
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
		s := strconv.FormatFloat(f, 'g', 21, 64) // more digits than needed: both sides must round
		inputs = append(inputs, s)
		in.WriteString("[" + s + "]\n")
	}
	want := strings.Split(strings.TrimSpace(string(interop.Node(t, in.Bytes(), "jcs"))), "\n")
	if len(want) != len(inputs) {
		t.Fatalf("node returned %d lines for %d inputs", len(want), len(inputs))
	}
	for i, s := range inputs {
		got, err := schemas.Canonicalize([]byte("[" + s + "]"))
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		if string(got) != want[i] {
			t.Fatalf("%s: go %s, ECMAScript %s", s, got, want[i])
		}
	}
}
