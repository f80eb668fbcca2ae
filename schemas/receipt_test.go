package schemas

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"testing"

	"filippo.io/edwards25519"
	"github.com/go-json-experiment/json"
)

// signForTest builds a receipt with a plain Go key, the way every signer does.
func signForTest(t testing.TB, key *ecdsa.PrivateKey, payload string) (*Receipt, []byte) {
	t.Helper()
	rc := signWith(t, key, payload, func(d []byte) (*big.Int, *big.Int, error) { return ecdsa.Sign(rand.Reader, key, d) })
	raw, err := rc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return rc, raw
}

// signWith builds a receipt whose P-256 signature sign makes from the digest.
func signWith(t testing.TB, key *ecdsa.PrivateKey, payload string, sign func(digest []byte) (r, s *big.Int, err error)) *Receipt {
	t.Helper()
	jwk, err := NewJWK(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	u, err := NewUnsigned(AlgES256, jwk.Kid, []byte(payload))
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(u.Input())
	r, s, err := sign(d[:])
	if err != nil {
		t.Fatal(err)
	}
	var p1363 [64]byte
	r.FillBytes(p1363[:32])
	s.FillBytes(p1363[32:])
	rc, err := u.Complete(p1363[:])
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

func newKey(t testing.TB) (*ecdsa.PrivateKey, *KeySet) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwk, _ := NewJWK(&key.PublicKey)
	ks, err := NewKeySet(JWKS{Keys: []JWK{jwk}})
	if err != nil {
		t.Fatal(err)
	}
	return key, ks
}

func TestReceiptFormat(t *testing.T) {
	key, ks := newKey(t)
	rc, raw := signForTest(t, key, `{"b":2,"a":"x<y","n":1E3}`)

	hdr, _ := base64.RawURLEncoding.DecodeString(rc.Protected)
	if want := `{"alg":"ES256","kid":"` + rc.Kid + `"}`; string(hdr) != want {
		t.Fatalf("protected header %s, want %s", hdr, want)
	}
	if string(rc.Payload) != `{"a":"x<y","b":2,"n":1000}` {
		t.Fatalf("payload not canonical: %s", rc.Payload)
	}
	sum := sha256.Sum256(rc.Payload)
	if rc.PayloadJCSSHA256 != B64U(sum[:]) {
		t.Fatal("payload_jcs_sha256 wrong")
	}
	id := sha256.Sum256([]byte(rc.Protected + "." + B64U(rc.Payload) + "." + rc.Signature))
	if rc.ReceiptID != B64U(id[:]) {
		t.Fatal("receipt_id wrong")
	}
	sig, _ := base64.RawURLEncoding.DecodeString(rc.Signature)
	if len(sig) != 64 {
		t.Fatalf("signature is %d bytes", len(sig))
	}
	wantOrder := []string{`"protected"`, `"payload"`, `"signature"`, `"kid"`, `"payload_jcs_sha256"`, `"receipt_id"`}
	last := -1
	for _, k := range wantOrder {
		i := strings.Index(string(raw), k)
		if i <= last {
			t.Fatalf("field %s out of order in %s", k, raw)
		}
		last = i
	}
	if strings.Contains(string(raw), `\u003c`) {
		t.Fatalf("receipt JSON is HTML-escaped: %s", raw)
	}
	if _, err := ks.Verify(raw); err != nil {
		t.Fatalf("fresh receipt does not verify: %v", err)
	}
}

func TestJWKThumbprintRFC7638(t *testing.T) {
	// RFC 7638 defines the thumbprint over {"crv","kty","x","y"}; check it
	// against an independent computation from the JWK's own JSON.
	key, _ := newKey(t)
	jwk, _ := NewJWK(&key.PublicKey)
	members, _ := json.Marshal(map[string]string{"crv": jwk.Crv, "kty": jwk.Kty, "x": jwk.X, "y": jwk.Y}, json.Deterministic(true))
	sum := sha256.Sum256(members)
	if jwk.Kid != B64U(sum[:]) {
		t.Fatalf("kid %s, thumbprint %s", jwk.Kid, B64U(sum[:]))
	}
	pub, err := jwk.PublicKey()
	if err != nil || !key.PublicKey.Equal(pub) {
		t.Fatalf("JWK does not round-trip: %v", err)
	}
	bad := jwk
	bad.Y = jwk.X // not on the curve (overwhelmingly likely)
	if _, err := bad.PublicKey(); err == nil {
		t.Fatal("point off the curve accepted")
	}
	if _, err := (JWK{Kty: "RSA"}).PublicKey(); !errors.Is(err, ErrUnsupportedKey) {
		t.Fatalf("RSA key: %v", err)
	}
}

func TestVerifyReasons(t *testing.T) {
	key, ks := newKey(t)
	otherKey, _ := newKey(t)
	good, _ := signForTest(t, key, `{"order":42,"items":["a","b"]}`)
	other, _ := signForTest(t, otherKey, `{"order":42,"items":["a","b"]}`)

	edit := func(f func(r *Receipt)) []byte {
		r := *good
		f(&r)
		b, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	hdr := func(s string) string { return B64U([]byte(s)) }
	cases := []struct {
		name string
		raw  []byte
		want error
	}{
		{"not JSON", []byte(`{"protected":`), ErrMalformed},
		{"duplicate top-level key", []byte(`{"kid":"a","kid":"b"}`), ErrMalformed},
		{"missing signature", edit(func(r *Receipt) { r.Signature = "" }), ErrMalformed},
		{"payload not an object", edit(func(r *Receipt) { r.Payload = []byte(`[1,2]`); r.PayloadJCSSHA256 = "" }), ErrMalformed},
		{"protected not base64url", edit(func(r *Receipt) { r.Protected = "***" }), ErrMalformed},
		{"alg none", edit(func(r *Receipt) { r.Protected = hdr(`{"alg":"none","kid":"` + r.Kid + `"}`) }), ErrUnsupportedAlg},
		{"alg RS256", edit(func(r *Receipt) { r.Protected = hdr(`{"alg":"RS256","kid":"` + r.Kid + `"}`) }), ErrUnsupportedAlg},
		{"header kid differs", edit(func(r *Receipt) { r.Protected = hdr(`{"alg":"ES256","kid":"someone-else"}`) }), ErrKidMismatch},
		{"header with crit", edit(func(r *Receipt) {
			r.Protected = hdr(`{"alg":"ES256","kid":"` + r.Kid + `","crit":["b64"],"b64":false}`)
		}), ErrMalformed},
		{"header reordered", edit(func(r *Receipt) { r.Protected = hdr(`{"kid":"` + r.Kid + `","alg":"ES256"}`) }), ErrMalformed},
		{"header with spaces", edit(func(r *Receipt) { r.Protected = hdr(`{"alg": "ES256", "kid": "` + r.Kid + `"}`) }), ErrMalformed},
		{"unknown kid", other.mustMarshal(t), ErrUnknownKid},
		{"payload edited", edit(func(r *Receipt) { r.Payload = []byte(`{"order":43,"items":["a","b"]}`) }), ErrPayloadHashMismatch},
		{"payload and hash edited", edit(func(r *Receipt) {
			r.Payload = []byte(`{"items":["a","b"],"order":43}`)
			s := sha256.Sum256(r.Payload)
			r.PayloadJCSSHA256 = B64U(s[:])
		}), ErrBadSignature},
		{"signature flipped", edit(func(r *Receipt) {
			s, _ := base64.RawURLEncoding.DecodeString(r.Signature)
			s[10] ^= 1
			r.Signature = B64U(s)
		}), ErrBadSignature},
		{"DER-length signature", edit(func(r *Receipt) { r.Signature = B64U(make([]byte, 70)) }), ErrBadSignature},
		{"receipt id edited", edit(func(r *Receipt) { r.ReceiptID = B64U(make([]byte, 32)) }), ErrReceiptIDMismatch},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ks.Verify(tc.raw)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			var ve *VerifyError
			if !errors.As(err, &ve) || ve.Reason == "" {
				t.Fatalf("error %v carries no reason", err)
			}
		})
	}

	t.Run("payload whitespace and key order do not matter", func(t *testing.T) {
		raw := edit(func(r *Receipt) { r.Payload = []byte(`{ "items" : [ "a", "b" ], "order" : 42.0 }`) })
		if _, err := ks.Verify(raw); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("optional hashes may be absent", func(t *testing.T) {
		raw := edit(func(r *Receipt) { r.PayloadJCSSHA256, r.ReceiptID = "", "" })
		if _, err := ks.Verify(raw); err != nil {
			t.Fatal(err)
		}
	})
}

func (r *Receipt) mustMarshal(t *testing.T) []byte {
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseJWKS(t *testing.T) {
	for _, bad := range []string{``, `{}`, `{"keys":[]}`, `{"keys":[{"kty":"EC","crv":"P-384","x":"AA","y":"AA"}]}`} {
		if _, err := ParseJWKS([]byte(bad)); err == nil {
			t.Errorf("ParseJWKS(%q) accepted", bad)
		}
	}
}

// The direct writer and the JSON encoder agree byte for byte, and odd
// strings (from receipts parsed off the wire) are escaped, not copied.
func TestReceiptMarshalMatchesEncoder(t *testing.T) {
	key, _ := newKey(t)
	rc, raw := signForTest(t, key, "{\"s\":\"<\u2028>\",\"n\":[1,2]}")
	want, err := json.Marshal(rc)
	if err != nil {
		t.Fatal(err)
	}
	if string(raw) != string(want) {
		t.Fatalf("direct %s\nencoder %s", raw, want)
	}
	odd := *rc
	odd.Kid = `a"b\c`
	out, err := odd.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var back Receipt
	if err := json.Unmarshal(out, &back); err != nil || back.Kid != odd.Kid {
		t.Fatalf("odd kid did not round-trip: %s %v", out, err)
	}
	partial := *rc
	partial.ReceiptID, partial.PayloadJCSSHA256 = "", ""
	out, _ = partial.Marshal()
	if strings.Contains(string(out), "receipt_id") || strings.Contains(string(out), "payload_jcs_sha256") {
		t.Fatalf("empty optional fields written: %s", out)
	}
}

// Marshal writes a decoded receipt back as it came, so that passing it on
// (a verify result carries it) does not change its verdict. A missing
// payload was once written as "payload":null (found by FuzzVerify).
func TestReceiptMarshalRoundTrip(t *testing.T) {
	key, ks := newKey(t)
	good, _ := signForTest(t, key, `{"a":1}`)
	prot := good.Protected
	cases := []struct {
		name, raw   string
		wantPayload string // as decoded, and again after Marshal
	}{
		{"payload missing", `{"protected":"eyJ0YCI6Ii0ifX","signature":"0","kid":"0"}`, ``},
		{"payload missing, valid header", `{"protected":"` + prot + `","signature":"` + good.Signature + `","kid":"` + good.Kid + `"}`, ``},
		{"payload null", `{"protected":"` + prot + `","payload":null,"signature":"` + good.Signature + `","kid":"` + good.Kid + `"}`, `null`},
		{"payload empty object", `{"protected":"` + prot + `","payload":{},"signature":"` + good.Signature + `","kid":"` + good.Kid + `"}`, `{}`},
		{"payload with spaces", `{"protected":"` + prot + `","payload":{ "a" : 1 },"signature":"` + good.Signature + `","kid":"` + good.Kid + `"}`, `{ "a" : 1 }`},
		{"escaped kid", `{"protected":"` + prot + `","payload":{"a":1},"signature":"` + good.Signature + `","kid":"\u0041"}`, `{"a":1}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r1, err1 := ks.Verify([]byte(tc.raw))
			if r1 == nil {
				t.Fatalf("not decoded: %v", err1)
			}
			out, err := r1.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			r2, err2 := ks.Verify(out)
			if r2 == nil {
				t.Fatalf("re-encoded receipt %s not decoded: %v", out, err2)
			}
			if string(r1.Payload) != tc.wantPayload || string(r2.Payload) != tc.wantPayload {
				t.Fatalf("payload %q, after Marshal %q (%s), want %q", string(r1.Payload), string(r2.Payload), out, tc.wantPayload)
			}
			if r1.Protected != r2.Protected || r1.Signature != r2.Signature || r1.Kid != r2.Kid {
				t.Fatalf("fields changed: %+v -> %+v", r1, r2)
			}
			if (err1 == nil) != (err2 == nil) || err1 != nil && !errors.Is(err2, err1) {
				t.Fatalf("verdict changed: %v -> %v", err1, err2)
			}
		})
	}
}

// A JWKS cannot make a key answer to a kid that is not its thumbprint:
// otherwise whoever supplies the JWKS could vouch for receipts under
// someone else's kid.
func TestKeySetKidMustBeThumbprint(t *testing.T) {
	victim, _ := newKey(t)
	attacker, _ := newKey(t)
	victimJWK, _ := NewJWK(&victim.PublicKey)
	attackerJWK, _ := NewJWK(&attacker.PublicKey)

	// The attacker's receipt claims the victim's kid.
	u, err := NewUnsigned(AlgES256, victimJWK.Kid, []byte(`{"pay":"attacker"}`))
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(u.Input())
	r, s, _ := ecdsa.Sign(rand.Reader, attacker, d[:])
	var sig [64]byte
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	forged, err := u.Complete(sig[:])
	if err != nil {
		t.Fatal(err)
	}

	claimed := attackerJWK
	claimed.Kid = victimJWK.Kid
	custom := victimJWK
	custom.Kid = "receipts-2026"
	cases := []struct {
		name  string
		keys  []JWK
		index string
	}{
		{"attacker key under the victim's kid", []JWK{victimJWK, claimed}, "jwks key 1"},
		{"attacker key alone under the victim's kid", []JWK{claimed}, "jwks key 0"},
		{"free-form kid", []JWK{custom}, "jwks key 0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ks, err := NewKeySet(JWKS{Keys: tc.keys})
			if !errors.Is(err, ErrKidNotThumbprint) || !strings.Contains(err.Error(), tc.index) {
				t.Fatalf("NewKeySet: %v, want ErrKidNotThumbprint naming %q", err, tc.index)
			}
			if ks != nil {
				t.Fatal("a refused JWKS still returned a key set")
			}
			doc, _ := json.Marshal(JWKS{Keys: tc.keys})
			if _, err := ParseJWKS(doc); !errors.Is(err, ErrKidNotThumbprint) {
				t.Fatalf("ParseJWKS: %v", err)
			}
		})
	}

	// Keys without kid are indexed by their thumbprint, and only by it.
	anon := attackerJWK
	anon.Kid = ""
	ks, err := NewKeySet(JWKS{Keys: []JWK{victimJWK, anon}})
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.VerifyReceipt(forged); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("forged receipt: %v, want bad_signature (checked against the victim's key)", err)
	}
	own, _ := signForTest(t, attacker, `{"pay":"own"}`)
	if err := ks.VerifyReceipt(own); err != nil {
		t.Fatalf("receipt of a kid-less key: %v", err)
	}
	if ks.Has("") {
		t.Fatal("a key answers to the empty kid")
	}
}

// A signature (or header) in a non-canonical base64url spelling, with
// nonzero unused bits in its last character, is malformed: accepting it
// would give one signature several encodings.
func TestNonCanonicalBase64Refused(t *testing.T) {
	key, ks := newKey(t)
	good, _ := signForTest(t, key, `{"a":1}`)
	good.ReceiptID, good.PayloadJCSSHA256 = "", "" // so only the signature's spelling differs
	sig := []byte(good.Signature)
	last := sig[len(sig)-1]
	// 64 bytes take 86 characters; the last one carries 4 unused bits.
	alphabet := "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	i := strings.IndexByte(alphabet, last)
	sig[len(sig)-1] = alphabet[i^1] // flips an unused bit
	bad := *good
	bad.Signature = string(sig)
	raw, _ := bad.Marshal()
	if _, err := ks.Verify(raw); !errors.Is(err, ErrMalformed) {
		t.Fatalf("a non-canonical signature encoding: %v, want malformed", err)
	}
	ok, _ := good.Marshal()
	if _, err := ks.Verify(ok); err != nil {
		t.Fatalf("the canonical encoding: %v", err)
	}
}

// RFC 8037 appendix A.3: the thumbprint of the Ed25519 key of RFC 8032's
// TEST 1, and our JWK for that key.
func TestOKPThumbprintRFC8037(t *testing.T) {
	pub, _ := hex.DecodeString("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
	jwk, err := NewJWK(ed25519.PublicKey(pub))
	if err != nil {
		t.Fatal(err)
	}
	want := JWK{Kty: "OKP", Crv: "Ed25519", X: "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
		Kid: "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k", Alg: AlgEdDSA, Use: "sig"}
	if jwk != want {
		t.Fatalf("JWK %+v, want %+v", jwk, want)
	}
	back, err := jwk.PublicKey()
	if err != nil || !ed25519.PublicKey(pub).Equal(back) {
		t.Fatalf("JWK does not round-trip: %v", err)
	}
	raw, _ := json.Marshal(jwk)
	if strings.Contains(string(raw), `"y"`) {
		t.Fatalf("OKP JWK carries y: %s", raw)
	}
}

func newEdKey(t testing.TB) (ed25519.PrivateKey, JWK) {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwk, err := NewJWK(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return key, jwk
}

// EdDSA receipts have the ES256 shape with another header and signature,
// verify beside ES256 ones in one key set, and fail with the same reasons;
// a header whose alg is not its key's type fails with alg_key_mismatch.
func TestEdDSAReceipts(t *testing.T) {
	ecKey, _ := newKey(t)
	edKey, edJWK := newEdKey(t)
	ecJWK, _ := NewJWK(&ecKey.PublicKey)
	ks, err := NewKeySet(JWKS{Keys: []JWK{ecJWK, edJWK}})
	if err != nil {
		t.Fatal(err)
	}
	ed := signEd25519(t, edKey, `{"b":2,"a":"x<y","n":1E3}`)
	ec, _ := signForTest(t, ecKey, `{"n":1}`)
	hdr, _ := base64.RawURLEncoding.DecodeString(ed.Protected)
	if want := `{"alg":"EdDSA","kid":"` + edJWK.Kid + `"}`; string(hdr) != want {
		t.Fatalf("protected header %s, want %s", hdr, want)
	}
	id := sha256.Sum256([]byte(ed.Protected + "." + B64U(ed.Payload) + "." + ed.Signature))
	if ed.Kid != edJWK.Kid || ed.ReceiptID != B64U(id[:]) || string(ed.Payload) != `{"a":"x<y","b":2,"n":1000}` {
		t.Fatalf("receipt %+v", ed)
	}
	if again := signEd25519(t, edKey, `{"n":1e3,"a":"x<y","b":2}`); again.Signature != ed.Signature || again.ReceiptID != ed.ReceiptID {
		t.Fatal("Ed25519 receipts of one payload differ")
	}
	for _, rc := range []*Receipt{ed, ec} {
		if err := ks.VerifyReceipt(rc); err != nil {
			t.Fatalf("%s receipt: %v", rc.Kid, err)
		}
	}

	edit := func(base *Receipt, f func(r *Receipt)) *Receipt {
		r := *base
		f(&r)
		return &r
	}
	otherKey, _ := newEdKey(t)
	cases := []struct {
		name string
		rc   *Receipt
		want error
	}{
		{"EdDSA header on an EC key", edit(ec, func(r *Receipt) { r.Protected = ProtectedHeader(AlgEdDSA, r.Kid) }), ErrAlgKeyMismatch},
		{"ES256 header on an Ed25519 key", edit(ed, func(r *Receipt) { r.Protected = ProtectedHeader(AlgES256, r.Kid) }), ErrAlgKeyMismatch},
		{"payload edited", edit(ed, func(r *Receipt) { r.Payload = []byte(`{"a":"x<y","b":3,"n":1000}`) }), ErrPayloadHashMismatch},
		{"payload and hash edited", edit(ed, func(r *Receipt) {
			r.Payload = []byte(`{"a":"x<y","b":3,"n":1000}`)
			s := sha256.Sum256(r.Payload)
			r.PayloadJCSSHA256 = B64U(s[:])
		}), ErrBadSignature},
		{"signature flipped", edit(ed, func(r *Receipt) {
			s, _ := base64.RawURLEncoding.DecodeString(r.Signature)
			s[40] ^= 1
			r.Signature = B64U(s)
		}), ErrBadSignature},
		{"short signature", edit(ed, func(r *Receipt) { r.Signature = B64U(make([]byte, 63)) }), ErrBadSignature},
		{"unknown kid", signEd25519(t, otherKey, `{}`), ErrUnknownKid},
		{"receipt id edited", edit(ed, func(r *Receipt) { r.ReceiptID = B64U(make([]byte, 32)) }), ErrReceiptIDMismatch},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := ks.VerifyReceipt(tc.rc); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := NewUnsigned("RS256", edJWK.Kid, []byte(`{}`)); err == nil {
		t.Fatal("NewUnsigned accepted RS256")
	}
}

// A JWKS may hold keys CertNode cannot use: they are skipped and listed,
// never fatal, and a receipt naming one is told why its kid is unknown.
// Only a set with no usable key, or a kid that lies about its key, is
// refused.
func TestKeySetSkipsKeysItCannotUse(t *testing.T) {
	ecKey, _ := newKey(t)
	edKey, edJWK := newEdKey(t)
	ecJWK, _ := NewJWK(&ecKey.PublicKey)
	smallOrder := JWK{Kty: "OKP", Crv: "Ed25519", X: B64U(append([]byte{1}, make([]byte, 31)...))} // the identity point
	offCurve := ecJWK
	offCurve.Y, offCurve.Kid = ecJWK.X, ""
	encKey := edJWK
	encKey.Use = "enc"
	wrongAlg := ecJWK
	wrongAlg.Alg = "ES384"
	doc := `{"keys":[` +
		`{"kty":"RSA","kid":"rsa-1","n":"sXch","e":"AQAB","alg":"RS256"},` +
		`{"kty":"OKP","crv":"X25519","kid":"x-1","x":"hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"},` +
		`{"kty":"EC","crv":"P-384","kid":"p384","x":"AA","y":"AA"},` +
		string(must(json.Marshal(encKey))) + `,` +
		string(must(json.Marshal(wrongAlg))) + `,` +
		string(must(json.Marshal(smallOrder))) + `,` +
		string(must(json.Marshal(offCurve))) + `,` +
		`"not a key",{"kty":7},` +
		string(must(json.Marshal(ecJWK))) + `,` + string(must(json.Marshal(edJWK))) + `]}`
	ks, err := ParseJWKS([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range ks.Skipped() {
		got = append(got, fmt.Sprintf("%d:%s", s.Index, s.Reason))
	}
	want := []string{"0:unsupported_key_type", "1:unsupported_key_type", "2:unsupported_key_type", "3:not_for_signing",
		"4:alg_mismatch", "5:invalid_key", "6:invalid_key", "7:malformed", "8:malformed"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("skipped %v, want %v", got, want)
	}
	ec, _ := signForTest(t, ecKey, `{"n":1}`)
	ed := signEd25519(t, edKey, `{"n":2}`)
	for _, rc := range []*Receipt{ec, ed} {
		if err := ks.VerifyReceipt(rc); err != nil {
			t.Fatalf("%s: %v", rc.Kid, err)
		}
	}
	// A receipt naming a skipped key says so. (The enc key is the
	// Ed25519 key itself, published once more for another use: skipping
	// that copy must not hide the signing one.)
	forged := *ed
	forged.Kid = "rsa-1"
	forged.Protected = ProtectedHeader(AlgEdDSA, "rsa-1")
	if err := ks.VerifyReceipt(&forged); !errors.Is(err, ErrUnknownKid) || !strings.Contains(err.Error(), "skipped: unsupported_key_type") {
		t.Fatalf("receipt naming a skipped key: %v", err)
	}

	_, err = ParseJWKS([]byte(`{"keys":[{"kty":"RSA","kid":"r","n":"x","e":"AQAB"},{"kty":"OKP","crv":"X25519","x":"AA"}]}`))
	if !errors.Is(err, ErrNoUsableKeys) || !strings.Contains(err.Error(), `jwks key 1 (kid "", kty "OKP", crv "X25519") skipped: unsupported_key_type`) {
		t.Fatalf("a set with no usable key: %v", err)
	}
	if _, err := ParseJWKS([]byte(`{"keys":[]}`)); !errors.Is(err, ErrNoUsableKeys) {
		t.Fatalf("empty set: %v", err)
	}
	liar := edJWK
	liar.Kid = ecJWK.Kid
	if _, err := NewKeySet(JWKS{Keys: []JWK{ecJWK, liar}}); !errors.Is(err, ErrKidNotThumbprint) {
		t.Fatalf("an OKP key under another key's kid: %v", err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// One Ed25519 point has one accepted encoding: y + p (which the curve
// library decodes to the same point) would give the key a second kid.
func TestEd25519NonCanonicalKeyRefused(t *testing.T) {
	p := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))
	le := func(n *big.Int) []byte {
		b := n.FillBytes(make([]byte, 32))
		slices.Reverse(b)
		return b
	}
	for y := int64(2); y < 19; y++ {
		canon := le(big.NewInt(y))
		pt, err := new(edwards25519.Point).SetBytes(canon)
		if err != nil || new(edwards25519.Point).MultByCofactor(pt).Equal(edwards25519.NewIdentityPoint()) == 1 {
			continue // not on the curve, or of small order
		}
		nonCanon := le(new(big.Int).Add(big.NewInt(y), p))
		if _, err := new(edwards25519.Point).SetBytes(nonCanon); err != nil {
			t.Fatalf("the curve library refuses y+p itself (%v): this test no longer tests anything", err)
		}
		if _, err := (JWK{Kty: "OKP", Crv: "Ed25519", X: B64U(canon)}).PublicKey(); err != nil {
			t.Fatalf("canonical y=%d: %v", y, err)
		}
		if _, err := (JWK{Kty: "OKP", Crv: "Ed25519", X: B64U(nonCanon)}).PublicKey(); err == nil {
			t.Fatalf("y=%d+p accepted", y)
		}
		return
	}
	t.Fatal("no point with a small y found")
}
