//go:build integration

package signer

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThalesGroup/crypto11"
	"github.com/go-json-experiment/json"
	"github.com/miekg/pkcs11"

	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

func openTestHSM(t *testing.T, signers int) *HSM {
	t.Helper()
	module, token := testenv.PKCS11(t)
	pin, err := PINFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	h, err := OpenHSM(PKCS11Config{Module: module, TokenLabel: token, PIN: pin, Signers: signers, PoolWaitTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func testLabel(t *testing.T) string {
	var b [6]byte
	rand.Read(b[:])
	return fmt.Sprintf("test-%s-%x", strings.ReplaceAll(t.Name(), "/", "-"), b)
}

func verifyP1363(pub *ecdsa.PublicKey, digest, sig []byte) bool {
	return len(sig) == 64 && ecdsa.Verify(pub, digest, new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
}

func TestHSMConcurrentSigning(t *testing.T) {
	h := openTestHSM(t, 4)
	key, err := h.GenerateKey(testLabel(t))
	if err != nil {
		t.Fatal(err)
	}
	const goroutines, each = 64, 40
	var wg sync.WaitGroup
	var bad atomic.Int64
	errs := make(chan error, goroutines)
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				d := sha256.Sum256([]byte(fmt.Sprintf("%d/%d", g, i)))
				sig, err := key.SignDigest(context.Background(), d[:])
				if err != nil {
					errs <- err
					return
				}
				if !verifyP1363(key.Public(), d[:], sig) {
					bad.Add(1)
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := bad.Load(); n != 0 {
		t.Fatalf("%d of %d HSM signatures did not verify", n, goroutines*each)
	}
}

func TestHSMReceiptsThroughRing(t *testing.T) {
	h := openTestHSM(t, 2)
	key, err := h.GenerateKey(testLabel(t))
	if err != nil {
		t.Fatal(err)
	}
	ring, err := NewRing(key)
	if err != nil {
		t.Fatal(err)
	}
	ks := ring.KeySet()
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rc, err := ring.Sign(context.Background(), []byte(fmt.Sprintf(`{"g":%d,"s":"\u2028é😀","n":1e21}`, g)))
			if err != nil {
				errs <- err
				return
			}
			raw, _ := rc.Marshal()
			if _, err := ks.Verify(raw); err != nil {
				errs <- fmt.Errorf("receipt %d: %w", g, err)
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestHSMKeyManagement(t *testing.T) {
	h := openTestHSM(t, 2)
	label := testLabel(t)
	if _, err := h.Key(label); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("missing key: got %v, want ErrKeyNotFound", err)
	}
	k, err := h.GenerateKey(label)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.GenerateKey(label); !errors.Is(err, ErrKeyExists) {
		t.Fatalf("duplicate label: got %v, want ErrKeyExists", err)
	}
	again, err := h.Key(label)
	if err != nil || !again.Public().Equal(k.Public()) {
		t.Fatalf("lookup after generate: %v", err)
	}
	keys, err := h.ListKeys()
	if err != nil {
		t.Fatal(err)
	}
	jwk, _ := schemas.NewJWK(k.Public())
	found := false
	for _, ki := range keys {
		if ki.Label == label {
			found = ki.Kid == jwk.Kid && ki.Type == "EC P-256"
		}
	}
	if !found {
		t.Fatalf("ListKeys %+v lacks %s with kid %s", keys, label, jwk.Kid)
	}
}

func TestHSMUnavailable(t *testing.T) {
	module, token := testenv.PKCS11(t)
	pin, _ := PINFromEnv()
	cases := []struct {
		name string
		cfg  PKCS11Config
		want string
	}{
		{"wrong PIN", PKCS11Config{Module: module, TokenLabel: token, PIN: pin + "x"}, "PIN incorrect"},
		{"unknown token", PKCS11Config{Module: module, TokenLabel: "no-such-token", PIN: pin}, "token not found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h, err := OpenHSM(tc.cfg)
			if err == nil {
				h.Close()
				t.Fatal("opened")
			}
			if !errors.Is(err, ErrHSMUnavailable) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrHSMUnavailable mentioning %q", err, tc.want)
			}
			if strings.Contains(err.Error(), pin) {
				t.Fatal("error message contains the PIN")
			}
		})
	}
}

// TestHSMBusy holds every signing slot and checks the wait is bounded.
func TestHSMBusy(t *testing.T) {
	h := openTestHSM(t, 2)
	h.cfg.PoolWaitTimeout = 50 * time.Millisecond
	key, err := h.GenerateKey(testLabel(t))
	if err != nil {
		t.Fatal(err)
	}
	h.sem <- struct{}{}
	h.sem <- struct{}{}
	d := sha256.Sum256([]byte("x"))
	if _, err := key.SignDigest(context.Background(), d[:]); !errors.Is(err, ErrBusy) {
		t.Fatalf("all slots taken: got %v, want ErrBusy", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := key.SignDigest(ctx, d[:]); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: got %v", err)
	}
	<-h.sem
	sig, err := key.SignDigest(context.Background(), d[:])
	if err != nil || !verifyP1363(key.Public(), d[:], sig) {
		t.Fatalf("after a slot freed: %v (or signature invalid)", err)
	}
}

// TestHSMRecoversFromClosedSessions closes every session of the token behind
// crypto11's back (as a device reset or another process's C_CloseAllSessions
// would), then signs from many goroutines: the client must reopen once and
// every call must succeed.
func TestHSMRecoversFromClosedSessions(t *testing.T) {
	h := openTestHSM(t, 4)
	key, err := h.GenerateKey(testLabel(t))
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("before"))
	if sig, err := key.SignDigest(context.Background(), d[:]); err != nil || !verifyP1363(key.Public(), d[:], sig) {
		t.Fatalf("before: %v (or signature invalid)", err)
	}
	genBefore := h.gen

	module, token := testenv.PKCS11(t)
	p := pkcs11.New(module)
	if p == nil {
		t.Fatal("load module")
	}
	if err := p.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		t.Fatal(err)
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err == nil && ti.Label == token {
			if err := p.CloseAllSessions(s); err != nil {
				t.Fatal(err)
			}
			closed = true
		}
	}
	if !closed {
		t.Fatalf("token %q not found", token)
	}

	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			d := sha256.Sum256([]byte(fmt.Sprint(g)))
			sig, err := key.SignDigest(context.Background(), d[:])
			if err == nil && !verifyP1363(key.Public(), d[:], sig) {
				err = errors.New("signature does not verify")
			}
			if err != nil {
				errs <- err
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("after sessions were closed: %v", err)
	}
	if h.gen == genBefore {
		t.Fatal("client did not reopen its context")
	}
}

// TestHSMRingRotation runs a key ring on the token: keys generated inside
// it (non-extractable, labelled by the ring), rotation picked up by a
// running ring through Reload, and receipts of the retired key verifying
// afterwards. A software key can join the same ring.
func TestHSMRingRotation(t *testing.T) {
	h := openTestHSM(t, 2)
	dir := t.TempDir()
	first, err := AddRingKey(dir, h.KeyMaker(), false)
	if err != nil {
		t.Fatal(err)
	}
	label := strings.TrimPrefix(first.Source, "pkcs11:")
	if !strings.HasPrefix(first.Source, "pkcs11:certnode-"+time.Now().UTC().Format("20060102")+"-") {
		t.Fatalf("source %q, want pkcs11:certnode-<date>-...", first.Source)
	}
	// The private half can be used but never read out.
	err = h.with(func(ctx *crypto11.Context, keys map[string]crypto11.Signer) error {
		s, err := h.lookup(ctx, keys, label)
		if err != nil {
			return err
		}
		attrs, err := ctx.GetAttributes(s, []crypto11.AttributeType{crypto11.CkaExtractable, crypto11.CkaSensitive})
		if err != nil {
			return err
		}
		if ext, sens := attrs[crypto11.CkaExtractable].Value, attrs[crypto11.CkaSensitive].Value; len(ext) != 1 || ext[0] != 0 || len(sens) != 1 || sens[0] != 1 {
			return fmt.Errorf("CKA_EXTRACTABLE=%v CKA_SENSITIVE=%v, want false and true", ext, sens)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	opens := 0
	ring, err := OpenRing(dir, RingOptions{HSM: func() (*HSM, error) { opens++; return h, nil }})
	if err != nil {
		t.Fatal(err)
	}
	old, err := ring.Sign(context.Background(), []byte(`{"n":1}`))
	if err != nil || old.Kid != first.Kid {
		t.Fatalf("first receipt: %v (kid %v)", err, old)
	}

	second, err := AddRingKey(dir, h.KeyMaker(), true)
	if err != nil {
		t.Fatal(err)
	}
	if changed, err := ring.Reload(); !changed || err != nil {
		t.Fatalf("Reload after rotation: %v %v", changed, err)
	}
	fresh, err := ring.Sign(context.Background(), []byte(`{"n":2}`))
	if err != nil || fresh.Kid != second.Kid {
		t.Fatalf("after rotation: %v (kid %v)", err, fresh)
	}
	if opens != 1 {
		t.Fatalf("the token was opened %d times, want once", opens)
	}
	// Rotating to a software key: the HSM's keys stay published.
	third, err := AddRingKey(dir, SoftwareKeyMaker, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ring.Reload(); err != nil {
		t.Fatal(err)
	}
	soft, err := ring.Sign(context.Background(), []byte(`{"n":3}`))
	if err != nil || soft.Kid != third.Kid {
		t.Fatalf("software key in an HSM ring: %v (kid %v)", err, soft)
	}
	for _, rc := range []*schemas.Receipt{old, fresh, soft} {
		if err := ring.KeySet().VerifyReceipt(rc); err != nil {
			t.Errorf("receipt by %s: %v", rc.Kid, err)
		}
	}

	// A ring.json naming a label the token lacks is refused with the reason.
	if err := ActivateRingKey(dir, first.Kid, func() (*HSM, error) { return h, nil }); err != nil {
		t.Fatal(err)
	}
	f, _ := ReadRingFile(dir)
	for i := range f.Keys {
		if f.Keys[i].Kid == first.Kid {
			f.Keys[i].Source = "pkcs11:no-such-label-" + label
		}
	}
	data, _ := json.Marshal(f)
	if err := os.WriteFile(filepath.Join(dir, RingFileName), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenRing(dir, RingOptions{HSM: func() (*HSM, error) { return h, nil }}); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("missing label: %v, want ErrKeyNotFound", err)
	}
}
