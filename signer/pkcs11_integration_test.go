//go:build integration

package signer

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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

// verifies checks a signature over a JWS signing input with the public
// key alone, as a receipt verifier would.
func verifies(pub crypto.PublicKey, input, sig []byte) bool {
	switch p := pub.(type) {
	case ed25519.PublicKey:
		return ed25519.Verify(p, input, sig)
	case *ecdsa.PublicKey:
		d := sha256.Sum256(input)
		return len(sig) == 64 && ecdsa.Verify(p, d[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
	}
	return false
}

var algs = []string{schemas.AlgES256, schemas.AlgEdDSA}

// TestHSMConcurrentSigning: 64 goroutines share a pool of 4 sessions with a
// key of each type; every signature verifies.
func TestHSMConcurrentSigning(t *testing.T) {
	h := openTestHSM(t, 4)
	for _, alg := range algs {
		t.Run(alg, func(t *testing.T) {
			key, err := h.GenerateKey(testLabel(t), alg)
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
						msg := []byte(fmt.Sprintf("%d/%d", g, i))
						sig, err := key.Sign(context.Background(), msg)
						if err != nil {
							errs <- err
							return
						}
						if !verifies(key.Public(), msg, sig) {
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
		})
	}
}

// Ed25519 in the token signs exactly as RFC 8032 says: the same input
// gives the same signature, which a software verifier accepts.
func TestHSMEd25519Deterministic(t *testing.T) {
	h := openTestHSM(t, 2)
	key, err := h.GenerateKey(testLabel(t), schemas.AlgEdDSA)
	if err != nil {
		t.Fatal(err)
	}
	in := []byte("eyJhbGciOiJFZERTQSJ9.e30")
	a, err1 := key.Sign(context.Background(), in)
	b, err2 := key.Sign(context.Background(), in)
	if err1 != nil || err2 != nil || !bytes.Equal(a, b) || !ed25519.Verify(key.Public().(ed25519.PublicKey), in, a) {
		t.Fatalf("signatures %x and %x (%v %v)", a, b, err1, err2)
	}
}

func TestHSMReceiptsThroughRing(t *testing.T) {
	h := openTestHSM(t, 2)
	for _, alg := range algs {
		t.Run(alg, func(t *testing.T) {
			key, err := h.GenerateKey(testLabel(t), alg)
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
					if rc.Protected != schemas.ProtectedHeader(alg, rc.Kid) {
						errs <- fmt.Errorf("receipt %d: header %s", g, rc.Protected)
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
		})
	}
}

func TestHSMKeyManagement(t *testing.T) {
	h := openTestHSM(t, 2)
	for _, alg := range algs {
		t.Run(alg, func(t *testing.T) {
			label := testLabel(t)
			if _, err := h.Key(label); !errors.Is(err, ErrKeyNotFound) {
				t.Fatalf("missing key: got %v, want ErrKeyNotFound", err)
			}
			k, err := h.GenerateKey(label, alg)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := h.GenerateKey(label, alg); !errors.Is(err, ErrKeyExists) {
				t.Fatalf("duplicate label: got %v, want ErrKeyExists", err)
			}
			again, err := h.Key(label)
			if err != nil || !samePublic(again.Public(), k.Public()) {
				t.Fatalf("lookup after generate: %v", err)
			}
			keys, err := h.ListKeys()
			if err != nil {
				t.Fatal(err)
			}
			jwk, _ := schemas.NewJWK(k.Public())
			want := map[string]string{schemas.AlgES256: "EC P-256", schemas.AlgEdDSA: "Ed25519"}[alg]
			found := false
			for _, ki := range keys {
				if ki.Label == label {
					found = ki.Kid == jwk.Kid && ki.Type == want
				}
			}
			if !found {
				t.Fatalf("ListKeys %+v lacks %s with kid %s and type %s", keys, label, jwk.Kid, want)
			}
			// The private half can be used but never read out.
			err = h.with(context.Background(), func(s session) error {
				o, err := h.object(s, label)
				if err != nil {
					return err
				}
				attrs, err := h.mod.p.GetAttributeValue(s.h, o.priv, []*pkcs11.Attribute{
					pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil)})
				if err != nil {
					return err
				}
				if ext, sens := attrs[0].Value, attrs[1].Value; len(ext) != 1 || ext[0] != 0 || len(sens) != 1 || sens[0] != 1 {
					return fmt.Errorf("CKA_EXTRACTABLE=%v CKA_SENSITIVE=%v, want false and true", ext, sens)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
	if _, err := h.GenerateKey(testLabel(t), "RS256"); err == nil {
		t.Fatal("GenerateKey made an RS256 key")
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

// TestHSMTokenListedLate: a token the library does not list when the client
// starts (SoftHSM2 leaves out one it read mid-write by another process) is
// found when it appears within the rescan window.
func TestHSMTokenListedLate(t *testing.T) {
	module, _ := testenv.PKCS11(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.MkdirAll(filepath.Join(dir, "tokens"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+filepath.Join(dir, "tokens")+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf) // read by C_Initialize; no other client is open in this test
	const pin = "late-token-pin"
	initialised := make(chan error, 1)
	go func() {
		time.Sleep(4 * tokenRescanWait)
		out, err := exec.Command("softhsm2-util", "--init-token", "--free", "--label", "late", "--pin", pin, "--so-pin", pin).CombinedOutput()
		if err != nil {
			err = fmt.Errorf("softhsm2-util: %v: %s", err, out)
		}
		initialised <- err
	}()
	h, err := OpenHSM(PKCS11Config{Module: module, TokenLabel: "late", PIN: pin})
	if ierr := <-initialised; ierr != nil {
		t.Fatal(ierr)
	}
	if err != nil {
		t.Fatalf("token initialised %v after start not found: %v", 4*tokenRescanWait, err)
	}
	h.Close()
}

// TestHSMBusy holds every signing slot and checks the wait is bounded.
func TestHSMBusy(t *testing.T) {
	h := openTestHSM(t, 2)
	h.cfg.PoolWaitTimeout = 50 * time.Millisecond
	key, err := h.GenerateKey(testLabel(t), schemas.AlgEdDSA)
	if err != nil {
		t.Fatal(err)
	}
	h.slots <- struct{}{}
	h.slots <- struct{}{}
	msg := []byte("x")
	if _, err := key.Sign(context.Background(), msg); !errors.Is(err, ErrBusy) {
		t.Fatalf("all slots taken: got %v, want ErrBusy", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := key.Sign(ctx, msg); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: got %v", err)
	}
	<-h.slots
	sig, err := key.Sign(context.Background(), msg)
	if err != nil || !verifies(key.Public(), msg, sig) {
		t.Fatalf("after a slot freed: %v (or signature invalid)", err)
	}
	<-h.slots
}

// TestHSMRecoversFromClosedSessions closes every session of the token behind
// the client's back (as a device reset or another client's
// C_CloseAllSessions would, logging the token out), then signs with a key
// of each type from many goroutines: the client must reopen and log in
// again, and every call must succeed.
func TestHSMRecoversFromClosedSessions(t *testing.T) {
	h := openTestHSM(t, 4)
	var keys []*HSMKey
	for _, alg := range algs {
		key, err := h.GenerateKey(testLabel(t), alg)
		if err != nil {
			t.Fatal(err)
		}
		msg := []byte("before")
		if sig, err := key.Sign(context.Background(), msg); err != nil || !verifies(key.Public(), msg, sig) {
			t.Fatalf("%s before: %v (or signature invalid)", alg, err)
		}
		keys = append(keys, key)
	}
	h.mu.Lock()
	genBefore := h.gen
	h.mu.Unlock()

	p, slot := rawToken(t)
	if err := p.CloseAllSessions(slot); err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			key, msg := keys[g%2], []byte(fmt.Sprint(g))
			sig, err := key.Sign(context.Background(), msg)
			if err == nil && !verifies(key.Public(), msg, sig) {
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
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gen == genBefore {
		t.Fatal("client did not reopen its sessions")
	}
}

// TestHSMRingRotation runs a key ring on the token: keys generated inside
// it (labelled by the ring), rotation picked up by a running ring through
// Reload (from an ES256 key to an EdDSA one, switching the algorithm), and
// receipts of the retired key verifying afterwards. A software key can join
// the same ring.
func TestHSMRingRotation(t *testing.T) {
	h := openTestHSM(t, 2)
	dir := t.TempDir()
	first, err := AddRingKey(dir, h.KeyMaker(schemas.AlgES256), false)
	if err != nil {
		t.Fatal(err)
	}
	label := strings.TrimPrefix(first.Source, "pkcs11:")
	if !strings.HasPrefix(first.Source, "pkcs11:certnode-"+time.Now().UTC().Format("20060102")+"-") {
		t.Fatalf("source %q, want pkcs11:certnode-<date>-...", first.Source)
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

	second, err := AddRingKey(dir, h.KeyMaker(schemas.AlgEdDSA), true)
	if err != nil {
		t.Fatal(err)
	}
	if changed, err := ring.Reload(); !changed || err != nil {
		t.Fatalf("Reload after rotation: %v %v", changed, err)
	}
	fresh, err := ring.Sign(context.Background(), []byte(`{"n":2}`))
	if err != nil || fresh.Kid != second.Kid || ring.ActiveAlg() != schemas.AlgEdDSA || fresh.Protected != schemas.ProtectedHeader(schemas.AlgEdDSA, second.Kid) {
		t.Fatalf("after rotation to EdDSA: %v (receipt %v)", err, fresh)
	}
	if opens != 1 {
		t.Fatalf("the token was opened %d times, want once", opens)
	}
	// Rotating to a software key: the HSM's keys stay published.
	third, err := AddRingKey(dir, SoftwareKeyMaker(schemas.AlgES256), true)
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

// rawToken opens the test token with a client of its own, as another part
// of the process (or a device reset) would touch it behind the HSM client.
func rawToken(t *testing.T) (*pkcs11.Ctx, uint) {
	t.Helper()
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
	for _, s := range slots {
		if ti, err := p.GetTokenInfo(s); err == nil && ti.Label == token {
			return p, s
		}
	}
	t.Fatalf("token %q not found", token)
	return nil, 0
}

// A key replaced on the token under the same label is never used to sign:
// its receipts would not verify under the key the process published.
func TestHSMKeyReplacedUnderItsLabel(t *testing.T) {
	h := openTestHSM(t, 2)
	label := testLabel(t)
	key, err := h.GenerateKey(label, schemas.AlgEdDSA)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := key.Sign(context.Background(), []byte("x")); err != nil {
		t.Fatal(err)
	}
	p, slot := rawToken(t)
	s, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer p.CloseSession(s)
	// The HSM client is logged in, so this session is too.
	for _, class := range []uint{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
		if err := p.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)}); err != nil {
			t.Fatal(err)
		}
		objs, _, err := p.FindObjects(s, 4)
		p.FindObjectsFinal(s)
		if err != nil || len(objs) != 1 {
			t.Fatalf("find %d: %v %v", class, objs, err)
		}
		if err := p.DestroyObject(s, objs[0]); err != nil {
			t.Fatal(err)
		}
	}
	h2 := openTestHSM(t, 1)
	if _, err := h2.GenerateKey(label, schemas.AlgEdDSA); err != nil {
		t.Fatal(err)
	}
	_, err = key.Sign(context.Background(), []byte("y"))
	if !errors.Is(err, ErrKeyReplaced) {
		t.Fatalf("sign after the key was replaced: %v, want ErrKeyReplaced", err)
	}
}

// Close with an operation in flight waits for it (bounded) and never
// unloads the module under it; calls after Close fail at once.
func TestHSMClose(t *testing.T) {
	module, token := testenv.PKCS11(t)
	pin, _ := PINFromEnv()
	h, err := OpenHSM(PKCS11Config{Module: module, TokenLabel: token, PIN: pin, Signers: 4, PoolWaitTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	key, err := h.GenerateKey(testLabel(t), schemas.AlgES256)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var signed atomic.Int64
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := key.Sign(context.Background(), []byte("busy")); err != nil {
					if !errors.Is(err, ErrClosed) {
						t.Errorf("sign during Close: %v", err)
					}
					return
				}
				signed.Add(1)
			}
		}()
	}
	for signed.Load() < 20 {
		time.Sleep(time.Millisecond)
	}
	if err := h.Close(); err != nil {
		t.Fatalf("Close with signers running: %v", err)
	}
	close(stop)
	wg.Wait()
	start := time.Now()
	if _, err := key.Sign(context.Background(), []byte("late")); !errors.Is(err, ErrClosed) || time.Since(start) > 100*time.Millisecond {
		t.Fatalf("sign after Close: %v after %s, want ErrClosed at once", err, time.Since(start))
	}
	if err := h.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// A second client of a token the process is logged into must still give
// the right PIN: the token's login state is shared, the PIN check is not
// skipped. The PIN never appears in printed configuration.
func TestHSMSecondClientPIN(t *testing.T) {
	module, token := testenv.PKCS11(t)
	pin, _ := PINFromEnv()
	openTestHSM(t, 1)
	if h, err := OpenHSM(PKCS11Config{Module: module, TokenLabel: token, PIN: pin + "x"}); err == nil {
		h.Close()
		t.Fatal("a second client opened with a wrong PIN")
	} else if !strings.Contains(err.Error(), "PIN incorrect") {
		t.Fatalf("wrong PIN: %v", err)
	}
	h2 := openTestHSM(t, 1)
	cfg := PKCS11Config{Module: module, TokenLabel: token, PIN: pin}
	for _, out := range []string{fmt.Sprintf("%v %+v %#v", cfg, cfg, cfg), fmt.Sprintf("%v %+v %#v", h2, h2, h2)} {
		if strings.Contains(out, pin) {
			t.Fatalf("the PIN is printed: %s", out)
		}
	}
}

// A login refused for its PIN while reconnecting is not tried again: a
// token locks a PIN after a few wrong attempts, and a signer retrying
// every request would lock it.
func TestHSMWrongPINNotRetried(t *testing.T) {
	h := openTestHSM(t, 2)
	key, err := h.GenerateKey(testLabel(t), schemas.AlgES256)
	if err != nil {
		t.Fatal(err)
	}
	right := h.pin
	h.pin = func() string { return "not-the-pin" }
	p, slot := rawToken(t)
	if err := p.CloseAllSessions(slot); err != nil { // logs the token out
		t.Fatal(err)
	}
	if _, err := key.Sign(context.Background(), []byte("x")); err == nil || !strings.Contains(err.Error(), "PIN incorrect") {
		t.Fatalf("sign after a reconnection with a wrong PIN: %v", err)
	}
	// Even with the right PIN back, no further login is attempted.
	h.pin = right
	time.Sleep(reopenBackoff + 100*time.Millisecond)
	if _, err := key.Sign(context.Background(), []byte("y")); err == nil || !strings.Contains(err.Error(), "not logging in again") {
		t.Fatalf("second sign: %v, want the refused login reported without a new attempt", err)
	}
}
