// Package bench measures CertNode's hot paths for both receipt algorithms,
// ES256 (ECDSA P-256) and EdDSA (Ed25519). Every figure is printed next to
// its ratio against the raw crypto rate of its own algorithm measured in the
// same run (x_raw_sign, x_raw_verify), because this machine is shared and
// noisy; a summary puts the two algorithms side by side at the end.
//
//	make bench
package bench

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certnode/certnode/schemas"
	"github.com/certnode/certnode/signer"
)

// A ~400-byte receipt payload, the size DESIGN.md's limits assume.
var payload = []byte(`{"tenant":"acme-corp","order_id":"ord_8f3a2c91d7","items":[{"sku":"A-1001","qty":2,"price":19.99},{"sku":"B-2002","qty":1,"price":249.5}],"customer":{"id":"cus_12345","email":"buyer@example.com","country":"DE"},"total":289.48,"currency":"EUR","created_at":"2026-11-26T12:00:00Z","tags":["priority","gift"],"meta":{"ip":"203.0.113.7","ua":"Mozilla/5.0"}}`)

// raw holds each algorithm's sign and verify ops/s on all cores, measured
// once per run by TestMain (testing.Benchmark cannot run inside a
// benchmark).
var raw map[string]Raw

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.bench"); f != nil && f.Value.String() != "" {
		raw = MeasureRaw(2 * time.Second)
	}
	code := m.Run()
	summary.print(os.Stdout)
	os.Exit(code)
}

// forEachAlg runs bench as the sub-benchmark alg=ES256, then alg=EdDSA.
func forEachAlg(b *testing.B, bench func(b *testing.B, alg string)) {
	for _, alg := range Algs {
		b.Run("alg="+alg, func(b *testing.B) { bench(b, alg) })
	}
}

// report adds ops/s and the ratio to alg's same-run raw rate for op ("sign"
// or "verify"), and records both for the summary.
func report(b *testing.B, alg, op string) {
	ops := float64(b.N) / b.Elapsed().Seconds()
	ratio := ops / raw[alg].Of(op)
	b.ReportMetric(ops, "ops/s")
	b.ReportMetric(ratio, "x_raw_"+op)
	summary.set(row(b, alg), alg, fmt.Sprintf("%9.0f/s %6.3f x raw %s", ops, ratio, op))
}

// row names b in the summary: its name without Benchmark and alg=.
func row(b *testing.B, alg string) string {
	return strings.TrimPrefix(strings.Replace(b.Name(), "/alg="+alg, "", 1), "Benchmark")
}

func BenchmarkRaw(b *testing.B) {
	forEachAlg(b, func(b *testing.B, alg string) {
		r, p256 := raw[alg], raw[schemas.AlgES256]
		b.ReportMetric(r.Sign, "sign/s")
		b.ReportMetric(r.Verify, "verify/s")
		b.ReportMetric(r.Sign/p256.Sign, "x_p256_sign")
		b.ReportMetric(r.Verify/p256.Verify, "x_p256_verify")
		summary.set("Raw sign", alg, fmt.Sprintf("%9.0f/s %6.3f x P-256", r.Sign, r.Sign/p256.Sign))
		summary.set("Raw verify", alg, fmt.Sprintf("%9.0f/s %6.3f x P-256", r.Verify, r.Verify/p256.Verify))
	})
}

// BenchmarkJCS does not depend on the algorithm; its ratio is to raw P-256
// sign, and the summary shows it against each algorithm's raw sign.
func BenchmarkJCS(b *testing.B) {
	b.SetBytes(int64(len(payload)))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := schemas.Canonicalize(payload); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportAlgFree(b, "JCS")
}

func BenchmarkSoftwareSignReceipt(b *testing.B) {
	forEachAlg(b, func(b *testing.B, alg string) {
		ring := softwareRing(b, alg)
		ctx := context.Background()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				rc, err := ring.Sign(ctx, payload)
				if err != nil {
					b.Error(err)
					return
				}
				if _, err := rc.Marshal(); err != nil {
					b.Error(err)
					return
				}
			}
		})
		report(b, alg, "sign")
	})
}

func BenchmarkVerifyReceipt(b *testing.B) {
	forEachAlg(b, func(b *testing.B, alg string) {
		ring := softwareRing(b, alg)
		rc, err := ring.Sign(context.Background(), payload)
		if err != nil {
			b.Fatal(err)
		}
		raw, err := rc.Marshal()
		if err != nil {
			b.Fatal(err)
		}
		ks := ring.KeySet()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := ks.Verify(raw); err != nil {
					b.Error(err)
					return
				}
			}
		})
		report(b, alg, "verify")
	})
}

func softwareRing(b *testing.B, alg string) *signer.Ring {
	key, err := signer.GenerateSoftware(alg)
	if err != nil {
		b.Fatal(err)
	}
	ring, err := signer.NewRing(key)
	if err != nil {
		b.Fatal(err)
	}
	return ring
}

// hsmLabels name the benchmark's key of each algorithm on the token; they
// are made on first use and kept.
var hsmLabels = map[string]string{schemas.AlgES256: "bench-p256", schemas.AlgEdDSA: "bench-ed25519"}

// BenchmarkPKCS11Sign signs the payload through the SoftHSM2 pool (8
// signers) with a key of each algorithm, from 1, 2, 8 and 32 concurrent
// callers, checking every signature.
func BenchmarkPKCS11Sign(b *testing.B) {
	h := openHSM(b)
	forEachAlg(b, func(b *testing.B, alg string) {
		key, err := h.Key(hsmLabels[alg])
		if errors.Is(err, signer.ErrKeyNotFound) {
			key, err = h.GenerateKey(hsmLabels[alg], alg)
		}
		if err != nil {
			b.Fatal(err)
		}
		if got, err := schemas.AlgOf(key.Public()); err != nil || got != alg {
			b.Fatalf("token key %q is %s (%v), want %s", hsmLabels[alg], got, err, alg)
		}
		for _, callers := range []int{1, 2, 8, 32} {
			b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
				var next atomic.Int64
				var wg sync.WaitGroup
				b.ResetTimer()
				for c := 0; c < callers; c++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for next.Add(1) <= int64(b.N) {
							sig, err := key.Sign(context.Background(), payload)
							if err != nil {
								b.Error(err)
								return
							}
							if !verifySig(key.Public(), payload, sig) {
								b.Error("HSM signature does not verify")
								return
							}
						}
					}()
				}
				wg.Wait()
				report(b, alg, "sign")
			})
		}
	})
}

// verifySig checks a 64-byte signature the way receipts are checked: r||s
// over the input's SHA-256 for P-256, RFC 8032 over the input for Ed25519.
func verifySig(pub crypto.PublicKey, input, sig []byte) bool {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		d := sha256.Sum256(input)
		return len(sig) == 64 && ecdsa.Verify(k, d[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
	case ed25519.PublicKey:
		return ed25519.Verify(k, input, sig)
	}
	return false
}

// summary keeps the last figure of each benchmark per algorithm, rows in
// the order they first ran, and prints them side by side after the run.
var summary table

type table struct {
	mu    sync.Mutex
	rows  []string
	cells map[string]map[string]string
}

// set records cell in row, alg's column.
func (t *table) set(row, alg, cell string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cells == nil {
		t.cells = map[string]map[string]string{}
	}
	if t.cells[row] == nil {
		t.rows = append(t.rows, row)
		t.cells[row] = map[string]string{}
	}
	t.cells[row][alg] = cell
}

func (t *table) print(w io.Writer) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\n== same-run summary: ops/s on all cores, each beside its ratio to the raw rate of its own algorithm\n")
	fmt.Fprintf(w, "%-28s", "")
	for _, alg := range Algs {
		fmt.Fprintf(w, " | %-32s", alg+" ("+Curve(alg)+")")
	}
	fmt.Fprintln(w)
	for _, row := range t.rows {
		fmt.Fprintf(w, "%-28s", row)
		for _, alg := range Algs {
			cell := t.cells[row][alg]
			if cell == "" {
				cell = "-"
			}
			fmt.Fprintf(w, " | %-32s", cell)
		}
		fmt.Fprintln(w)
	}
}
