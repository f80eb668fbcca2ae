package bench

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/certnode/certnode/internal/envelope"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
	"github.com/certnode/certnode/signer"
)

// openHSM opens the SoftHSM2 token with a pool of 8 sessions until the
// benchmark ends.
func openHSM(b *testing.B) *signer.HSM {
	b.Helper()
	module, token := testenv.PKCS11(b)
	pin, err := signer.PINFromEnv()
	if err != nil {
		b.Fatal(err)
	}
	h, err := signer.OpenHSM(signer.PKCS11Config{Module: module, TokenLabel: token, PIN: pin, Signers: 8})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Close() })
	return h
}

// hsmEnvelope seals under a KEK on the SoftHSM2 token, as the ClickHouse
// sink does.
func hsmEnvelope(b *testing.B) (*envelope.Envelope, *signer.KEKs) {
	b.Helper()
	h := openHSM(b)
	return envelope.New(h.KEKs()), h.KEKs()
}

// reportAlgFree reports a figure that does not depend on the receipt
// algorithm against raw P-256 sign, and against each algorithm's in the
// summary.
func reportAlgFree(b *testing.B, name string) {
	ops := float64(b.N) / b.Elapsed().Seconds()
	b.ReportMetric(ops, "ops/s")
	b.ReportMetric(ops/raw[schemas.AlgES256].Sign, "x_raw_sign")
	for _, alg := range Algs {
		summary.set(name, alg, fmt.Sprintf("%9.0f/s %6.3f x raw sign", ops, ops/raw[alg].Sign))
	}
}

// BenchmarkSealPayload: the ClickHouse sink's cost of encryption at rest,
// per payload, once the month's data key is wrapped (AES-256-GCM in Go).
func BenchmarkSealPayload(b *testing.B) {
	e, _ := hsmEnvelope(b)
	at := time.Now()
	if _, err := e.Seal(context.Background(), "bench-org", at, payload); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(payload)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := e.Seal(context.Background(), "bench-org", at, payload); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportAlgFree(b, "Seal payload")
}

// BenchmarkOpenPayload: a reader's cost per payload, its data key cached.
func BenchmarkOpenPayload(b *testing.B) {
	e, _ := hsmEnvelope(b)
	v, err := e.Seal(context.Background(), "bench-org", time.Now(), payload)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(payload)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if got, err := e.Open(context.Background(), "bench-org", v); err != nil || len(got) != len(payload) {
				b.Errorf("open: %d bytes, %v", len(got), err)
				return
			}
		}
	})
	reportAlgFree(b, "Open payload")
}

// BenchmarkUnwrapDataKey: data keys unwrapped by the HSM (CKM_AES_GCM), the
// cost of a cache miss: once per organization, month and writer process.
func BenchmarkUnwrapDataKey(b *testing.B) {
	_, keks := hsmEnvelope(b)
	ctx := context.Background()
	aad := []byte("bench")
	wrapped, err := keks.Wrap(ctx, "bench-org", make([]byte, 32), aad)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := keks.Unwrap(ctx, "bench-org", wrapped, aad); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportAlgFree(b, "Unwrap data key (HSM)")
}
