package signer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/schemas"
)

func mustSign(t *testing.T, r *Ring, payload string) *schemas.Receipt {
	t.Helper()
	rc, err := r.Sign(context.Background(), []byte(payload))
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

func mustReload(t *testing.T, r *Ring) {
	t.Helper()
	if changed, err := r.Reload(); err != nil || !changed {
		t.Fatalf("Reload: changed=%v err=%v", changed, err)
	}
}

func readRing(t *testing.T, dir string) *RingFile {
	t.Helper()
	f, err := ReadRingFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestKeyRingRotation(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keyring")
	first, err := AddRingKey(dir, SoftwareKeyMaker(schemas.AlgES256), false)
	if err != nil {
		t.Fatal(err)
	}
	if f := readRing(t, dir); f.Active != first.Kid || f.State(f.Keys[0]) != StateActive {
		t.Fatalf("the first key of a new ring is not active: %+v", f)
	}
	for name, want := range map[string]os.FileMode{RingFileName: 0o644, first.Kid + ".pem": 0o600} {
		if st, err := os.Stat(filepath.Join(dir, name)); err != nil || st.Mode().Perm() != want {
			t.Fatalf("%s: %v mode %v, want %v", name, err, st.Mode().Perm(), want)
		}
	}
	ring, err := OpenRing(dir, RingOptions{})
	if err != nil {
		t.Fatal(err)
	}
	old := mustSign(t, ring, `{"n":1}`)
	if old.Kid != first.Kid {
		t.Fatalf("signed with %s, want %s", old.Kid, first.Kid)
	}
	if changed, err := ring.Reload(); changed || err != nil {
		t.Fatalf("Reload of an unchanged ring: changed=%v err=%v", changed, err)
	}

	second, err := AddRingKey(dir, SoftwareKeyMaker(schemas.AlgES256), true)
	if err != nil {
		t.Fatal(err)
	}
	mustReload(t, ring)
	fresh := mustSign(t, ring, `{"n":2}`)
	if fresh.Kid != second.Kid || ring.ActiveKID() != second.Kid {
		t.Fatalf("after rotation: receipt kid %s, active %s, want %s", fresh.Kid, ring.ActiveKID(), second.Kid)
	}
	f := readRing(t, dir)
	k1, _ := f.Key(first.Kid)
	if f.State(k1) != StateRetired || k1.RetiredAt.Before(k1.CreatedAt) {
		t.Fatalf("previous key after rotation: %+v (%s)", k1, f.State(k1))
	}

	// A standby key is published before it signs, then activated.
	third, err := AddRingKey(dir, SoftwareKeyMaker(schemas.AlgES256), false)
	if err != nil {
		t.Fatal(err)
	}
	mustReload(t, ring)
	if ring.ActiveKID() != second.Kid {
		t.Fatal("adding a standby key changed the signing key")
	}
	if !ring.KeySet().Has(third.Kid) {
		t.Fatal("standby key is not published")
	}
	if err := ActivateRingKey(dir, third.Kid, nil); err != nil {
		t.Fatal(err)
	}
	mustReload(t, ring)
	newest := mustSign(t, ring, `{"n":3}`)

	// Active first, then the others newest first; every receipt verifies
	// against the published set as a third party sees it.
	jwks := ring.JWKS()
	var kids []string
	for _, k := range jwks.Keys {
		kids = append(kids, k.Kid)
	}
	if want := []string{third.Kid, second.Kid, first.Kid}; fmt.Sprint(kids) != fmt.Sprint(want) {
		t.Fatalf("JWKS order %v, want %v", kids, want)
	}
	doc, _ := json.Marshal(jwks)
	ks, err := schemas.ParseJWKS(doc)
	if err != nil {
		t.Fatal(err)
	}
	for _, rc := range []*schemas.Receipt{old, fresh, newest} {
		if err := ks.VerifyReceipt(rc); err != nil {
			t.Errorf("receipt by %s: %v", rc.Kid, err)
		}
		if err := ring.KeySet().VerifyReceipt(rc); err != nil {
			t.Errorf("receipt by %s via Ring.KeySet: %v", rc.Kid, err)
		}
	}
	if fileJWKS, _ := readRing(t, dir).JWKS(); fmt.Sprint(fileJWKS) != fmt.Sprint(jwks) {
		t.Fatalf("ring.json JWKS %v differs from the ring's %v", fileJWKS, jwks)
	}

	// Temporary files of the atomic writes are gone; the PEM files stay 0600.
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		info, _ := e.Info()
		switch {
		case e.Name() == RingFileName || e.Name() == ringLockName:
		case strings.HasSuffix(e.Name(), ".pem") && !strings.HasPrefix(e.Name(), ".") && info.Mode().Perm() == 0o600:
		default:
			t.Errorf("unexpected file %s (%v) in the ring", e.Name(), info.Mode())
		}
	}

	// Activating the active key, or one not in the ring, is refused.
	if err := ActivateRingKey(dir, third.Kid, nil); err == nil {
		t.Fatal("activating the active key accepted")
	}
	if err := ActivateRingKey(dir, "no-such-kid", nil); err == nil || !strings.Contains(err.Error(), "not in the ring") {
		t.Fatalf("unknown kid: %v", err)
	}
}

// Ingest opens rings for their public keys: no PEM file is read.
func TestKeyRingPublicOnly(t *testing.T) {
	dir := t.TempDir()
	k, err := AddRingKey(dir, SoftwareKeyMaker(schemas.AlgES256), false)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, k.Kid+".pem")); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenRing(dir, RingOptions{}); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("signing ring without its PEM: %v", err)
	}
	pub, err := OpenRing(dir, RingOptions{PublicOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if pub.ActiveKID() != k.Kid || len(pub.JWKS().Keys) != 1 {
		t.Fatalf("public ring: kid %s, JWKS %+v", pub.ActiveKID(), pub.JWKS())
	}
	if _, err := pub.Sign(context.Background(), []byte(`{}`)); !errors.Is(err, ErrNoSigningKey) {
		t.Fatalf("Sign on a public ring: %v", err)
	}
}

// A key in an HSM is named by label; without an HSM the ring says what is
// missing instead of failing obscurely.
func TestKeyRingNeedsHSMForPKCS11Keys(t *testing.T) {
	dir := t.TempDir()
	k, _ := GenerateSoftware(schemas.AlgES256)
	jwk, _ := schemas.NewJWK(k.Public())
	writeRing(t, dir, RingFile{V: 1, Active: jwk.Kid, Keys: []RingKey{{Kid: jwk.Kid, JWK: jwk, Source: "pkcs11:receipts-1", CreatedAt: time.Now()}}})
	if _, err := OpenRing(dir, RingOptions{}); err == nil || !strings.Contains(err.Error(), "no HSM configured") {
		t.Fatalf("pkcs11 key without HSM: %v", err)
	}
	opened := 0
	_, err := OpenRing(dir, RingOptions{HSM: func() (*HSM, error) { opened++; return nil, errors.New("token unreachable") }})
	if err == nil || !strings.Contains(err.Error(), "token unreachable") || opened != 1 {
		t.Fatalf("HSM open failure: %v (opened %d times)", err, opened)
	}
	if _, err := OpenRing(dir, RingOptions{PublicOnly: true}); err != nil {
		t.Fatalf("public ring of an HSM key: %v", err)
	}
}

func writeRing(t *testing.T, dir string, f RingFile) {
	t.Helper()
	data, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, RingFileName), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestKeyRingTampering(t *testing.T) {
	dir := t.TempDir()
	k1, err := AddRingKey(dir, SoftwareKeyMaker(schemas.AlgES256), false)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := AddRingKey(dir, SoftwareKeyMaker(schemas.AlgES256), true)
	if err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(filepath.Join(dir, RingFileName))
	ring, err := OpenRing(dir, RingOptions{})
	if err != nil {
		t.Fatal(err)
	}
	base := readRing(t, dir)
	edit := func(f func(r *RingFile)) string {
		r := *base
		r.Keys = append([]RingKey(nil), base.Keys...)
		f(&r)
		b, _ := json.Marshal(r)
		return string(b)
	}
	other, _ := GenerateSoftware(schemas.AlgES256)
	otherJWK, _ := schemas.NewJWK(other.Public())
	cases := []struct{ name, content, want string }{
		{"garbage", "garbage", "not a ring.json"},
		{"empty", "", "not a ring.json"},
		{"truncated", string(good[:len(good)/2]), "not a ring.json"},
		{"unknown member", strings.Replace(string(good), `"retired_at"`, `"retierd_at"`, 1), "not a ring.json"},
		{"duplicate member", strings.Replace(string(good), `"v": 1`, `"v": 1, "v": 1`, 1), "not a ring.json"},
		{"version", edit(func(r *RingFile) { r.V = 2 }), "version 2, want 1"},
		{"no keys", edit(func(r *RingFile) { r.Keys = nil }), "no keys"},
		{"active unknown", edit(func(r *RingFile) { r.Active = "nope" }), `active kid "nope" is not among the keys`},
		{"kid not thumbprint", edit(func(r *RingFile) { r.Keys[0].Kid = otherJWK.Kid }), "key 0 (kid \"" + otherJWK.Kid + "\"): kid is not the RFC 7638 thumbprint"},
		{"jwk swapped", edit(func(r *RingFile) { r.Keys[1].JWK = otherJWK }), "key 1"},
		{"jwk off curve", edit(func(r *RingFile) { r.Keys[0].JWK.Y = r.Keys[0].JWK.X }), "key 0"},
		{"path in source", edit(func(r *RingFile) { r.Keys[1].Source = "file:../" + k2.Kid + ".pem" }), "a file beside ring.json"},
		{"absolute source", edit(func(r *RingFile) { r.Keys[1].Source = "file:/etc/key.pem" }), "a file beside ring.json"},
		{"unknown source", edit(func(r *RingFile) { r.Keys[1].Source = "kms:abc" }), "want file:<name>.pem or pkcs11:<label>"},
		{"duplicate key", edit(func(r *RingFile) { r.Keys = append(r.Keys, r.Keys[1]) }), "listed twice"},
		{"active retired", edit(func(r *RingFile) { r.Keys[1].RetiredAt = time.Now() }), "the active key is marked retired"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(dir, RingFileName), []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := OpenRing(dir, RingOptions{PublicOnly: true})
			if !errors.Is(err, ErrBadRing) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), filepath.Join(dir, RingFileName)) {
				t.Fatalf("OpenRing: %v\nwant ErrBadRing naming the file and %q", err, tc.want)
			}
			// A running ring keeps its keys and goes on signing.
			if _, err := ring.Reload(); err == nil {
				t.Fatal("Reload accepted a bad ring.json")
			}
			if rc := mustSign(t, ring, `{"still":"signing"}`); rc.Kid != k2.Kid || ring.KeySet().VerifyReceipt(rc) != nil {
				t.Fatalf("after a bad reload the ring signs with %s", rc.Kid)
			}
			// Changes refuse to build on a bad ring rather than replace it.
			if _, err := AddRingKey(dir, SoftwareKeyMaker(schemas.AlgES256), true); !errors.Is(err, ErrBadRing) {
				t.Fatalf("AddRingKey on a bad ring: %v", err)
			}
		})
	}

	// A PEM file replaced by another key is refused, not signed with.
	os.WriteFile(filepath.Join(dir, RingFileName), good, 0o644)
	pem := filepath.Join(dir, k1.Kid+".pem")
	os.Remove(pem)
	if err := other.WritePEM(pem); err != nil {
		t.Fatal(err)
	}
	if err := ActivateRingKey(dir, k1.Kid, nil); !errors.Is(err, ErrBadRing) || !strings.Contains(err.Error(), "holds a different key (kid "+otherJWK.Kid) {
		t.Fatalf("activating a swapped PEM: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, RingFileName)); !bytes.Equal(got, good) {
		t.Fatal("a refused activation changed ring.json")
	}
	if _, err := ReadRingFile(t.TempDir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing ring.json: %v", err)
	}
}

// Changes to one ring are serialized: a second writer fails fast instead
// of losing the first one's key.
func TestKeyRingLock(t *testing.T) {
	dir := t.TempDir()
	if _, err := AddRingKey(dir, SoftwareKeyMaker(schemas.AlgES256), false); err != nil {
		t.Fatal(err)
	}
	unlock, err := lockRing(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := AddRingKey(dir, SoftwareKeyMaker(schemas.AlgES256), true); !errors.Is(err, ErrRingBusy) {
		t.Fatalf("AddRingKey while locked: %v", err)
	}
	unlock()
	var wg sync.WaitGroup
	var mu sync.Mutex
	added := 0
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := AddRingKey(dir, SoftwareKeyMaker(schemas.AlgES256), true)
			if err != nil && !errors.Is(err, ErrRingBusy) {
				t.Error(err)
			}
			if err == nil {
				mu.Lock()
				added++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if f := readRing(t, dir); len(f.Keys) != 1+added {
		t.Fatalf("ring has %d keys after %d successful adds to 1", len(f.Keys), added)
	}
}

// The watcher brings a rotation into a running ring, survives a broken
// ring.json (logging it once), and picks up the repair.
func TestKeyRingWatcher(t *testing.T) {
	var logs bytes.Buffer
	var logMu sync.Mutex
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&lockedBuffer{b: &logs, mu: &logMu}, nil)))
	t.Cleanup(func() { slog.SetDefault(prev) })

	dir := t.TempDir()
	first, _ := AddRingKey(dir, SoftwareKeyMaker(schemas.AlgES256), false)
	ring, err := OpenRing(dir, RingOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NewRingWatcher(ring, 10*time.Millisecond).Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	// Signing goes on while the ring changes under it.
	stop := make(chan struct{})
	var signers sync.WaitGroup
	signers.Add(1)
	go func() {
		defer signers.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			rc, err := ring.Sign(context.Background(), []byte(`{"x":1}`))
			if err == nil {
				err = ring.KeySet().VerifyReceipt(rc)
			}
			if err != nil {
				t.Error(err)
				return
			}
		}
	}()
	defer func() { close(stop); signers.Wait() }()

	waitKid := func(want string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for ring.ActiveKID() != want {
			if time.Now().After(deadline) {
				t.Fatalf("active kid %s, want %s", ring.ActiveKID(), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	second, err := AddRingKey(dir, SoftwareKeyMaker(schemas.AlgES256), true)
	if err != nil {
		t.Fatal(err)
	}
	waitKid(second.Kid)

	good, _ := os.ReadFile(filepath.Join(dir, RingFileName))
	// Written atomically, so no poll sees it half-written; then many polls pass.
	writeFileAtomic(filepath.Join(dir, RingFileName), []byte("{broken"), 0o644)
	time.Sleep(200 * time.Millisecond)
	logMu.Lock()
	failures := strings.Count(logs.String(), "key ring reload failed")
	logMu.Unlock()
	if failures != 1 {
		t.Fatalf("%d reload failures logged for one broken file, want 1:\n%s", failures, logs.String())
	}
	if ring.ActiveKID() != second.Kid {
		t.Fatal("a broken ring.json changed the signing key")
	}
	writeFileAtomic(filepath.Join(dir, RingFileName), good, 0o644)
	if err := ActivateRingKey(dir, first.Kid, nil); err != nil {
		t.Fatal(err)
	}
	waitKid(first.Kid)
}

type lockedBuffer struct {
	b  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// Storing a key that is already in the ring directory is a no-op, so an
// interrupted import can run again; another key under that name is refused.
func TestWriteRingPEM(t *testing.T) {
	dir := t.TempDir()
	k, _ := GenerateSoftware(schemas.AlgES256)
	src, err := WriteRingPEM(dir, k)
	if err != nil {
		t.Fatal(err)
	}
	jwk, _ := schemas.NewJWK(k.Public())
	if src != "file:"+jwk.Kid+".pem" {
		t.Fatalf("source %q", src)
	}
	if again, err := WriteRingPEM(dir, k); err != nil || again != src {
		t.Fatalf("second write of the same key: %q %v", again, err)
	}
	other, _ := GenerateSoftware(schemas.AlgES256)
	path := filepath.Join(dir, jwk.Kid+".pem")
	os.Remove(path)
	other.WritePEM(path)
	if _, err := WriteRingPEM(dir, k); !errors.Is(err, os.ErrExist) {
		t.Fatalf("a different key under the name: %v", err)
	}
	if back, _ := LoadSoftware(path); !samePublic(back.Public(), other.Public()) {
		t.Fatal("the existing key file was overwritten")
	}
}
