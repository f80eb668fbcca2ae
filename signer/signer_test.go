package signer

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/certnode/certnode/schemas"
)

// RFC 8032 section 7.1 test vectors 1, 2, 3 and SHA(abc), through the
// software signer: Ed25519 is deterministic, so signatures are byte-exact.
func TestSoftwareEd25519RFC8032Vectors(t *testing.T) {
	vectors := []struct{ name, seed, pub, msg, sig string }{
		{"TEST 1", "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
			"d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
			"e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"},
		{"TEST 2", "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
			"3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
			"92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"},
		{"TEST 3", "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
			"fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
			"6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"},
		{"TEST SHA(abc)", "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
			"ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
			"ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
			"dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704"},
	}
	unhex := func(s string) []byte {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, v := range vectors {
		t.Run(v.name, func(t *testing.T) {
			k, err := NewSoftware(ed25519.NewKeyFromSeed(unhex(v.seed)))
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(k.Public().(ed25519.PublicKey)); got != v.pub {
				t.Fatalf("public key %s, want %s", got, v.pub)
			}
			for i := 0; i < 2; i++ { // the same signature every time
				sig, err := k.Sign(context.Background(), unhex(v.msg))
				if err != nil {
					t.Fatal(err)
				}
				if got := hex.EncodeToString(sig); got != v.sig {
					t.Fatalf("signature %s, want %s", got, v.sig)
				}
			}
		})
	}
}

// decodePublic reads what tokens store in CKA_EC_PARAMS and CKA_EC_POINT:
// points DER-wrapped (as PKCS#11 says) or raw, curves by OID or name.
func TestDecodePublic(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecRaw, _ := ec.PublicKey.Bytes()
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	wrap := func(b []byte) []byte {
		der, err := asn1.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	ok := []struct {
		name          string
		params, point []byte
		want          crypto.PublicKey
		alg           string
	}{
		{"P-256 DER", paramsP256, wrap(ecRaw), &ec.PublicKey, schemas.AlgES256},
		{"P-256 raw", paramsP256, ecRaw, &ec.PublicKey, schemas.AlgES256},
		{"Ed25519 OID DER", paramsEd25519, wrap(edPub), edPub, schemas.AlgEdDSA},
		{"Ed25519 OID raw", paramsEd25519, edPub, edPub, schemas.AlgEdDSA},
		{"Ed25519 by name", paramsEd25519Name, wrap(edPub), edPub, schemas.AlgEdDSA},
		{"Ed25519 GnuPG OID", paramsEd25519GnuPG, wrap(edPub), edPub, schemas.AlgEdDSA},
	}
	for _, tc := range ok {
		pub, alg, err := decodePublic(tc.params, tc.point)
		if err != nil || alg != tc.alg || !samePublic(pub, tc.want) {
			t.Errorf("%s: %v %s %v", tc.name, pub, alg, err)
		}
	}
	p384 := []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22}
	bad := []struct {
		name          string
		params, point []byte
	}{
		{"P-384", p384, wrap(ecRaw)},
		{"P-256 point off the curve", paramsP256, wrap(append([]byte{4}, make([]byte, 64)...))},
		{"Ed25519 short point", paramsEd25519, wrap(edPub[:31])},
		{"no params", nil, edPub},
	}
	for _, tc := range bad {
		if pub, _, err := decodePublic(tc.params, tc.point); err == nil {
			t.Errorf("%s: accepted as %v", tc.name, pub)
		}
	}
}

func TestSoftwarePEM(t *testing.T) {
	dir := t.TempDir()
	for _, alg := range []string{schemas.AlgES256, schemas.AlgEdDSA} {
		k, err := GenerateSoftware(alg)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, alg+".pem")
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
		if got, _ := schemas.AlgOf(back.Public()); got != alg || !samePublic(back.Public(), k.Public()) {
			t.Fatalf("%s key did not round-trip (loaded as %s)", alg, got)
		}
		data, _ := os.ReadFile(path)
		if !strings.HasPrefix(string(data), "-----BEGIN PRIVATE KEY-----") {
			t.Fatal("key is not PKCS#8 PEM")
		}
	}
	if _, err := GenerateSoftware("RS256"); err == nil {
		t.Fatal("GenerateSoftware made an RS256 key")
	}

	// SEC 1 keys load too.
	k, _ := GenerateSoftware(schemas.AlgES256)
	sec1, _ := x509.MarshalECPrivateKey(k.priv.(*ecdsa.PrivateKey))
	if _, err := ParseSoftwarePEM(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})); err != nil {
		t.Fatal(err)
	}

	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384der, _ := x509.MarshalPKCS8PrivateKey(p384)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 1024)
	rsaDER, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	cases := []struct {
		name string
		data []byte
		want error
	}{
		{"P-384", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p384der}), ErrWrongKeyType},
		{"RSA", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: rsaDER}), ErrWrongKeyType},
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
	for _, alg := range []string{schemas.AlgES256, schemas.AlgEdDSA} {
		k, _ := GenerateSoftware(alg)
		ring, err := NewRing(k)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := ring.Sign(ctx, []byte(`{"n":1}`))
		if err != nil {
			t.Fatal(err)
		}
		jwks := ring.JWKS()
		if len(jwks.Keys) != 1 || jwks.Keys[0].Kid != rc.Kid || ring.ActiveKID() != rc.Kid || jwks.Keys[0].Alg != alg || ring.ActiveAlg() != alg {
			t.Fatalf("%s: JWKS %+v, receipt kid %s", alg, jwks, rc.Kid)
		}
		if rc.Protected != schemas.ProtectedHeader(alg, rc.Kid) {
			t.Fatalf("%s: protected header %s", alg, rc.Protected)
		}
		if err := ring.KeySet().VerifyReceipt(rc); err != nil {
			t.Fatal(err)
		}
		// EdDSA receipts are deterministic; ES256 ones are not.
		again, _ := ring.Sign(ctx, []byte(`{ "n" : 1 }`))
		if same := again.ReceiptID == rc.ReceiptID; same != (alg == schemas.AlgEdDSA) {
			t.Fatalf("%s: signing the same payload twice gave the same receipt_id: %v", alg, same)
		}
		if _, err := ring.Sign(ctx, []byte(`[1]`)); !errors.Is(err, schemas.ErrNotObject) {
			t.Fatalf("array payload: %v", err)
		}
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

// A ring reloaded after a rotation to a key of the other type signs with
// the new algorithm and still verifies the old one's receipts.
func TestRingReloadSwitchesAlgorithm(t *testing.T) {
	dir := t.TempDir()
	if _, err := AddRingKey(dir, SoftwareKeyMaker(schemas.AlgES256), false); err != nil {
		t.Fatal(err)
	}
	ring, err := OpenRing(dir, RingOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	before, err := ring.Sign(ctx, []byte(`{"n":1}`))
	if err != nil || ring.ActiveAlg() != schemas.AlgES256 {
		t.Fatalf("before: %v %s", err, ring.ActiveAlg())
	}
	ed, err := AddRingKey(dir, SoftwareKeyMaker(schemas.AlgEdDSA), true)
	if err != nil {
		t.Fatal(err)
	}
	if changed, err := ring.Reload(); !changed || err != nil {
		t.Fatalf("reload: %v %v", changed, err)
	}
	after, err := ring.Sign(ctx, []byte(`{"n":1}`))
	if err != nil || ring.ActiveAlg() != schemas.AlgEdDSA || after.Kid != ed.Kid || after.Protected != schemas.ProtectedHeader(schemas.AlgEdDSA, ed.Kid) {
		t.Fatalf("after: %v %s %+v", err, ring.ActiveAlg(), after)
	}
	for _, rc := range []*schemas.Receipt{before, after} {
		if err := ring.KeySet().VerifyReceipt(rc); err != nil {
			t.Fatalf("%s: %v", rc.Kid, err)
		}
	}
	if jwks := ring.JWKS(); len(jwks.Keys) != 2 || jwks.Keys[0].Kty != "OKP" || jwks.Keys[1].Kty != "EC" {
		t.Fatalf("JWKS %+v", jwks)
	}
}
