package schemas

import (
	"errors"
	"strings"
	"testing"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// FuzzParseJWKS: a caller's JWKS never panics the parser; a set comes back
// only with a usable key, every usable key is indexed by its own
// thumbprint, every other entry is listed as skipped with a published
// reason, and a refusal is one of the documented errors.
func FuzzParseJWKS(f *testing.F) {
	ec, ed, _ := fuzzKeys(f)
	ecJWK, _ := NewJWK(&ec.PublicKey)
	edJWK, _ := NewJWK(ed.Public())
	good, _ := json.Marshal(JWKS{Keys: []JWK{ecJWK, edJWK}})
	f.Add(good)
	f.Add([]byte(`{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"},{"kty":"OKP","crv":"X25519","x":"AA"},"x",7,null]}`))
	f.Add([]byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA","use":"enc","alg":"ES384"}]}`))
	f.Add([]byte(`{"keys":[]}`))
	f.Add([]byte(`{"keys":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ks, err := ParseJWKS(data)
		if err != nil {
			if ks != nil {
				t.Fatal("a refused JWKS returned a key set")
			}
			if !errors.Is(err, ErrNoUsableKeys) && !errors.Is(err, ErrKidNotThumbprint) && !strings.HasPrefix(err.Error(), "jwks: ") {
				t.Fatalf("undocumented error: %v", err)
			}
			return
		}
		if len(ks.keys) == 0 {
			t.Fatal("a key set without a usable key")
		}
		var doc struct {
			Keys []jsontext.Value `json:"keys"`
		}
		if err := json.Unmarshal(data, &doc); err != nil {
			t.Fatalf("accepted a document that does not decode: %v", err)
		}
		skipped := map[int]bool{}
		for _, s := range ks.Skipped() {
			switch s.Reason {
			case SkipUnsupportedType, SkipNotForSigning, SkipAlgMismatch, SkipInvalidKey, SkipMalformed:
			default:
				t.Fatalf("unpublished skip reason %q", s.Reason)
			}
			if s.Index < 0 || s.Index >= len(doc.Keys) || skipped[s.Index] {
				t.Fatalf("skipped index %d of %d keys, or listed twice", s.Index, len(doc.Keys))
			}
			skipped[s.Index] = true
		}
		used := map[string]bool{}
		for i, raw := range doc.Keys {
			if skipped[i] {
				continue
			}
			var k JWK
			if err := json.Unmarshal(raw, &k); err != nil {
				t.Fatalf("key %d neither decodes nor is skipped: %v", i, err)
			}
			if !ks.Has(k.Thumbprint()) || (k.Kid != "" && k.Kid != k.Thumbprint()) {
				t.Fatalf("key %d (%+v) is neither skipped nor indexed by its thumbprint", i, k)
			}
			used[k.Thumbprint()] = true
		}
		if len(used) != len(ks.keys) {
			t.Fatalf("%d keys indexed, %d used entries", len(ks.keys), len(used))
		}
	})
}
