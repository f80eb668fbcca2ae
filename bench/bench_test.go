// Package bench measures CertNode's hot paths. Every figure is printed next
// to its ratio against the raw crypto/ecdsa rate measured in the same run
// (x_raw_sign, x_raw_verify), because this machine is shared and noisy.
//
//	make bench
package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
	"github.com/certnode/certnode/signer"
)

// A ~400-byte receipt payload, the size DESIGN.md's limits assume.
var payload = []byte(`{"tenant":"acme-corp","order_id":"ord_8f3a2c91d7","items":[{"sku":"A-1001","qty":2,"price":19.99},{"sku":"B-2002","qty":1,"price":249.5}],"customer":{"id":"cus_12345","email":"buyer@example.com","country":"DE"},"total":289.48,"currency":"EUR","created_at":"2026-11-26T12:00:00Z","tags":["priority","gift"],"meta":{"ip":"203.0.113.7","ua":"Mozilla/5.0"}}`)

// rawSign and rawVerify are P-256 ops/s on all cores, measured once per
// run by TestMain (testing.Benchmark cannot run inside a benchmark).
var rawSign, rawVerify float64

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.bench"); f != nil && f.Value.String() != "" {
		rawSign, rawVerify = RawECDSA(2 * time.Second)
	}
	os.Exit(m.Run())
}

// report adds ops/s and the ratio to a same-run raw rate.
func report(b *testing.B, unit string, raw float64) {
	ops := float64(b.N) / b.Elapsed().Seconds()
	b.ReportMetric(ops, "ops/s")
	b.ReportMetric(ops/raw, unit)
}

func BenchmarkRawECDSA(b *testing.B) {
	b.ReportMetric(rawSign, "sign/s")
	b.ReportMetric(rawVerify, "verify/s")
}

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
	report(b, "x_raw_sign", rawSign)
}

func BenchmarkSoftwareSignReceipt(b *testing.B) {
	key, _ := signer.GenerateSoftware(schemas.AlgES256)
	ring, _ := signer.NewRing(key)
	ctx := context.Background()
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
	report(b, "x_raw_sign", rawSign)
}

func BenchmarkVerifyReceipt(b *testing.B) {
	key, _ := signer.GenerateSoftware(schemas.AlgES256)
	ring, _ := signer.NewRing(key)
	rc, _ := ring.Sign(context.Background(), payload)
	raw, _ := rc.Marshal()
	ks := ring.KeySet()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := ks.Verify(raw); err != nil {
				b.Error(err)
				return
			}
		}
	})
	report(b, "x_raw_verify", rawVerify)
}

// BenchmarkPKCS11Sign signs digests through the SoftHSM2 pool (8 signers)
// from 1, 2, 8 and 32 concurrent callers, checking every signature.
func BenchmarkPKCS11Sign(b *testing.B) {
	module, token := testenv.PKCS11(b)
	pin, err := signer.PINFromEnv()
	if err != nil {
		b.Fatal(err)
	}
	h, err := signer.OpenHSM(signer.PKCS11Config{Module: module, TokenLabel: token, PIN: pin, Signers: 8})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	key, err := h.Key("bench-p256")
	if errors.Is(err, signer.ErrKeyNotFound) {
		key, err = h.GenerateKey("bench-p256", schemas.AlgES256)
	}
	if err != nil {
		b.Fatal(err)
	}
	d := sha256.Sum256(payload)
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
						if !ecdsa.Verify(key.Public().(*ecdsa.PublicKey), d[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
							b.Error("HSM signature does not verify")
							return
						}
					}
				}()
			}
			wg.Wait()
			report(b, "x_raw_sign", rawSign)
		})
	}
}
