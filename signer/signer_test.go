package signer

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/certnode/certnode/schemas"
)

func TestDERToP1363(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	d := sha256.Sum256([]byte("x"))
	for i := 0; i < 200; i++ { // covers r or s with leading zero bytes
		der, err := ecdsa.SignASN1(rand.Reader, k, d[:])
		if err != nil {
			t.Fatal(err)
		}
		sig, err := derToP1363(der)
		if err != nil {
			t.Fatal(err)
		}
		if len(sig) != 64 || !ecdsa.Verify(&k.PublicKey, d[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
			t.Fatal("converted signature does not verify")
		}
	}
	for _, bad := range [][]byte{nil, {0x30, 0x00}, []byte("not der"), append(mustDER(t, k, d[:]), 0)} {
		if _, err := derToP1363(bad); err == nil {
			t.Errorf("derToP1363(%x) accepted", bad)
		}
	}
}

func mustDER(t *testing.T, k *ecdsa.PrivateKey, d []byte) []byte {
	der, err := ecdsa.SignASN1(rand.Reader, k, d)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestSoftwarePEM(t *testing.T) {
	dir := t.TempDir()
	k, err := GenerateSoftware()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "key.pem")
	if err := k.WritePEM(path); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", st.Mode().Perm())
	}
	if err := k.WritePEM(path); err == nil {
		t.Fatal("WritePEM overwrote an existing key")
	}
	back, err := LoadSoftware(path)
	if err != nil {
		t.Fatal(err)
	}
	if !back.Public().Equal(k.Public()) {
		t.Fatal("key did not round-trip")
	}
	data, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(data), "-----BEGIN PRIVATE KEY-----") {
		t.Fatal("key is not PKCS#8 PEM")
	}

	// SEC 1 keys load too.
	sec1, _ := x509.MarshalECPrivateKey(k.priv)
	if _, err := ParseSoftwarePEM(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})); err != nil {
		t.Fatal(err)
	}

	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384der, _ := x509.MarshalPKCS8PrivateKey(p384)
	_, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	edDER, _ := x509.MarshalPKCS8PrivateKey(edPriv)
	cases := []struct {
		name string
		data []byte
		want error
	}{
		{"P-384", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p384der}), ErrWrongKeyType},
		{"Ed25519", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: edDER}), ErrWrongKeyType},
		{"certificate", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}}), ErrWrongKeyType},
		{"not PEM", []byte("hello"), nil},
		{"garbage DER", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2}}), nil},
	}
	for _, tc := range cases {
		_, err := ParseSoftwarePEM(tc.data)
		if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := LoadSoftware(filepath.Join(dir, "missing.pem")); err == nil {
		t.Error("missing file accepted")
	}
}

func TestRingOfOneKey(t *testing.T) {
	ctx := context.Background()
	k, _ := GenerateSoftware()
	ring, err := NewRing(k)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := ring.Sign(ctx, []byte(`{"n":1}`))
	if err != nil {
		t.Fatal(err)
	}
	jwks := ring.JWKS()
	if len(jwks.Keys) != 1 || jwks.Keys[0].Kid != rc.Kid || ring.ActiveKID() != rc.Kid {
		t.Fatalf("JWKS %+v, receipt kid %s", jwks, rc.Kid)
	}
	if err := ring.KeySet().VerifyReceipt(rc); err != nil {
		t.Fatal(err)
	}
	if _, err := ring.Sign(ctx, []byte(`[1]`)); !errors.Is(err, schemas.ErrNotObject) {
		t.Fatalf("array payload: %v", err)
	}
	if _, err := NewRing(nil); err == nil {
		t.Fatal("ring without a key accepted")
	}
}

func TestPKCS11ConfigValidateReportsEverything(t *testing.T) {
	c := PKCS11Config{Module: "/nonexistent/lib.so", Signers: -1}
	err := c.Validate()
	for _, want := range []string{"module /nonexistent/lib.so", "token label is required", "PIN is required", "signers must be positive"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, missing %q", err, want)
		}
	}
}

func TestPINFromEnv(t *testing.T) {
	t.Setenv("CERTNODE_PKCS11_PIN", "")
	t.Setenv("CERTNODE_PKCS11_PIN_FILE", "")
	if _, err := PINFromEnv(); err == nil {
		t.Fatal("no PIN accepted")
	}
	f := filepath.Join(t.TempDir(), "pin")
	os.WriteFile(f, []byte("s3cret\n"), 0o600)
	t.Setenv("CERTNODE_PKCS11_PIN_FILE", f)
	if pin, err := PINFromEnv(); err != nil || pin != "s3cret" {
		t.Fatalf("PIN file: %q %v", pin, err)
	}
	t.Setenv("CERTNODE_PKCS11_PIN", "direct")
	if pin, _ := PINFromEnv(); pin != "direct" {
		t.Fatalf("env PIN: %q", pin)
	}
}

func TestPKCS11ConfigNeverLogsPIN(t *testing.T) {
	var sb strings.Builder
	logger := slog.New(slog.NewTextHandler(&sb, nil))
	logger.Info("config", "pkcs11", PKCS11Config{Module: "m", TokenLabel: "t", PIN: "s3cret-pin"})
	if strings.Contains(sb.String(), "s3cret-pin") || !strings.Contains(sb.String(), "token=t") {
		t.Fatalf("log line: %s", sb.String())
	}
}
