package schemas

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/asn1"
	"math/big"
	"testing"

	"github.com/go-json-experiment/json"
)

// fuzzKeys are fixed keys, one of each type, so that receipts saved in
// testdata/fuzz by an earlier run still verify (or fail) the same way.
// ES256 seeds are signed deterministically (RFC 6979) because the fuzzing
// engine's worker processes each rebuild them and must get the same bytes;
// Ed25519 is deterministic by itself.
func fuzzKeys(t testing.TB) (*ecdsa.PrivateKey, ed25519.PrivateKey, *KeySet) {
	t.Helper()
	d := sha256.Sum256([]byte("certnode fuzz test key"))
	key, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d[:])
	if err != nil {
		t.Fatal(err)
	}
	ed := ed25519.NewKeyFromSeed(d[:])
	ecJWK, err1 := NewJWK(&key.PublicKey)
	edJWK, err2 := NewJWK(ed.Public())
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	ks, err := NewKeySet(JWKS{Keys: []JWK{ecJWK, edJWK}})
	if err != nil {
		t.Fatal(err)
	}
	return key, ed, ks
}

// signedContent is what a signature covers: a verified receipt must carry
// exactly the content of a receipt the key signed.
type signedContent struct {
	protected, kid string
	payload, sig   []byte // canonical payload, decoded signature
}

func contentOf(t testing.TB, r *Receipt) signedContent {
	t.Helper()
	canon, err := CanonicalizeObject(r.Payload)
	if err != nil {
		t.Fatalf("verified receipt has a bad payload: %v", err)
	}
	sig, err := b64u.DecodeString(r.Signature)
	if err != nil {
		t.Fatalf("verified receipt has a bad signature: %v", err)
	}
	return signedContent{r.Protected, r.Kid, canon, sig}
}

func (c signedContent) equal(o signedContent) bool {
	return c.protected == o.protected && c.kid == o.kid && bytes.Equal(c.payload, o.payload) && bytes.Equal(c.sig, o.sig)
}

// checkVerifyError fails unless err is nil or a bare *VerifyError with one
// of the published reasons, and returns its reason ("" for nil).
func checkVerifyError(t *testing.T, err error) Reason {
	t.Helper()
	if err == nil {
		return ""
	}
	ve, ok := err.(*VerifyError)
	if !ok {
		t.Fatalf("error is %T, not *VerifyError: %v", err, err)
	}
	switch ve.Reason {
	case ReasonMalformed, ReasonUnsupportedAlg, ReasonUnknownKid, ReasonKidMismatch, ReasonAlgKeyMismatch,
		ReasonBadSignature, ReasonPayloadHashMismatch, ReasonReceiptIDMismatch:
	default:
		t.Fatalf("unpublished reason %q", ve.Reason)
	}
	return ve.Reason
}

// signDeterministic signs with RFC 6979-style nonces (crypto.Signer with a
// nil random source), so saved fuzz inputs replay the same way.
func signDeterministic(t testing.TB, key *ecdsa.PrivateKey, payload string) *Receipt {
	t.Helper()
	return signWith(t, key, payload, func(d []byte) (*big.Int, *big.Int, error) {
		der, err := key.Sign(nil, d, crypto.SHA256)
		if err != nil {
			return nil, nil, err
		}
		var rs struct{ R, S *big.Int }
		_, err = asn1.Unmarshal(der, &rs)
		return rs.R, rs.S, err
	})
}

// fuzzReceipts signs the seed receipts with each key: full, without the
// optional hashes, and (ES256) one whose payload is sent in a
// non-canonical but equivalent form (mutations there can keep the meaning
// and so must still verify). The full ES256 and EdDSA receipts of the
// second payload are at fuzzFullES256 and fuzzFullEdDSA; the loose one is last.
func fuzzReceipts(t testing.TB) (*KeySet, [][]byte, []signedContent) {
	key, ed, ks := fuzzKeys(t)
	var raws [][]byte
	var signed []signedContent
	signers := []func(p string) *Receipt{
		func(p string) *Receipt { return signDeterministic(t, key, p) },
		func(p string) *Receipt { return signEd25519(t, ed, p) },
	}
	for _, sign := range signers {
		for _, p := range []string{`{}`, `{"order":42,"items":["a","b"],"note":"x<y\u2028"}`, `{"a":[true],"n":1000,"s":"xé"}`} {
			rc := sign(p)
			raw, err := rc.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			raws = append(raws, raw)
			signed = append(signed, contentOf(t, rc))
			bare := *rc
			bare.PayloadJCSSHA256, bare.ReceiptID = "", ""
			b, err := bare.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			raws = append(raws, b)
		}
	}
	last := raws[4] // the ES256 receipt of the third payload
	loose := bytes.Replace(last, []byte(`{"a":[true],"n":1000,"s":"xé"}`), []byte(`{ "s" : "\u0078\u00E9",`+"\t"+`"n":1E3, "a":[ true ] }`), 1)
	if bytes.Equal(loose, last) {
		t.Fatal("payload not found in the seed receipt")
	}
	return ks, append(raws, loose), signed
}

const fuzzFullES256, fuzzFullEdDSA = 2, 8

// signEd25519 builds an EdDSA receipt with a plain Go key.
func signEd25519(t testing.TB, key ed25519.PrivateKey, payload string) *Receipt {
	t.Helper()
	jwk, err := NewJWK(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	u, err := NewUnsigned(AlgEdDSA, jwk.Kid, []byte(payload))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := u.Complete(ed25519.Sign(key, u.Input()))
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

// FuzzVerify: verification never panics, fails only with a *VerifyError,
// and passes only for content the key really signed. Re-encoding a decoded
// receipt does not change the verdict.
func FuzzVerify(f *testing.F) {
	ks, raws, signed := fuzzReceipts(f)
	for _, raw := range raws {
		f.Add(raw)
	}
	f.Add([]byte(`{"protected":"eyJhbGciOiJFUzI1NiJ9","payload":{},"signature":"","kid":"k"}`))
	f.Add(swapAlg(f, raws[fuzzFullEdDSA], AlgES256)) // an ES256 header on the Ed25519 key
	f.Add([]byte(`{"protected":1,"payload":null}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		r, err := ks.Verify(raw)
		reason := checkVerifyError(t, err)
		if r == nil {
			if reason != ReasonMalformed {
				t.Fatalf("no receipt returned, error %v", err)
			}
			return
		}
		if err == nil {
			got := contentOf(t, r)
			ok := false
			for _, s := range signed {
				ok = ok || got.equal(s)
			}
			if !ok {
				t.Fatalf("verified content the key never signed: %+v", got)
			}
		}
		again, merr := r.Marshal()
		if merr != nil {
			t.Fatalf("decoded receipt does not marshal: %v", merr)
		}
		_, err2 := ks.Verify(again)
		if reason2 := checkVerifyError(t, err2); reason2 != reason {
			t.Fatalf("re-encoded receipt %s: %v, original: %v", again, err2, err)
		}
	})
}

// TestVerifySingleByteChanges changes every byte of valid receipts to a
// spread of other values (see replacements). The result is a *VerifyError
// or a pass with the signed content unchanged; a change in the payload
// passes exactly when the payload keeps its canonical form; a change inside
// the protected, signature, kid or hash values never passes. (Renaming an
// optional member passes: it is then ignored, as an absent one is.)
func TestVerifySingleByteChanges(t *testing.T) {
	ks, raws, _ := fuzzReceipts(t)
	for _, raw := range [][]byte{raws[fuzzFullES256], raws[fuzzFullEdDSA], raws[len(raws)-1]} {
		r, err := ks.Verify(raw)
		if err != nil {
			t.Fatalf("seed does not verify: %v", err)
		}
		orig := contentOf(t, r)
		var fixed [][2]int // value spans that must never survive a change
		for _, name := range []string{"protected", "signature", "kid", "payload_jcs_sha256", "receipt_id"} {
			i := bytes.Index(raw, []byte(`"`+name+`":"`))
			if i < 0 {
				t.Fatalf("%s not in %s", name, raw)
			}
			start := i + len(name) + 4
			fixed = append(fixed, [2]int{start, start + bytes.IndexByte(raw[start:], '"')})
		}
		payloadStart := bytes.Index(raw, []byte(`"payload":`)) + len(`"payload":`)
		payloadEnd := bytes.Index(raw, []byte(`,"signature":`))
		mut := bytes.Clone(raw)
		tried, passes, payloadPasses := 0, 0, 0
		for i := range raw {
			for _, b := range replacements(raw[i]) {
				tried++
				mut[i] = b
				got, err := ks.Verify(mut)
				verified := checkVerifyError(t, err) == ""
				if payloadStart <= i && i < payloadEnd {
					canon, cerr := CanonicalizeObject(mut[payloadStart:payloadEnd])
					if same := cerr == nil && bytes.Equal(canon, orig.payload); verified != same {
						t.Fatalf("byte %d -> %q: verify error %v, but canonical payload unchanged=%v: %s", i, b, err, same, mut)
					}
					if verified {
						payloadPasses++
					}
				}
				if !verified {
					continue
				}
				passes++
				if c := contentOf(t, got); !c.equal(orig) {
					t.Fatalf("byte %d -> %q verifies with different content: %s", i, b, mut)
				}
				for _, s := range fixed {
					if s[0] <= i && i < s[1] {
						t.Fatalf("byte %d -> %q inside %q verifies: %s", i, b, raw[s[0]:s[1]], mut)
					}
				}
			}
			mut[i] = raw[i]
		}
		t.Logf("%d single-byte changes of %d verify (%d in the payload)", passes, tried, payloadPasses)
		// The loose payload has equivalent spellings one byte away (E/e,
		// hex digit case, other whitespace); the check above must have
		// seen some.
		if bytes.Contains(raw, []byte(`1E3`)) && payloadPasses == 0 {
			t.Fatal("no equivalent payload spelling verified")
		}
	}
}

// replacements gives, for byte c, every single-bit flip (neighbouring
// letters and digits, letter case, invalid UTF-8) and the bytes that matter
// to JSON and base64url. All 255 values take ten times as long, too slow
// for make test's -race run.
func replacements(c byte) []byte {
	var out []byte
	for bit := 0; bit < 8; bit++ {
		out = append(out, c^1<<bit)
	}
	for _, s := range []byte(" \t\n\"\\/0aAeE-_+.,:{}[]\x00") {
		if s != c && bytes.IndexByte(out, s) < 0 {
			out = append(out, s)
		}
	}
	return out
}

// swapAlg rewrites a receipt's protected header to name alg, keeping the
// rest: a receipt claiming the other algorithm for its key.
func swapAlg(t testing.TB, raw []byte, alg string) []byte {
	t.Helper()
	var r Receipt
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatal(err)
	}
	r.Protected = ProtectedHeader(alg, r.Kid)
	out, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return out
}
