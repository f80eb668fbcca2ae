//go:build integration

package signer

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/certnode/certnode/schemas"
)

// Organizations' keys in SoftHSM2: two workers' makers answer one request
// on one token; the installed key is labelled for its organization and
// kid, sensitive and never extractable as the token reports it, and signs;
// the other worker's key is destroyed (no object of the organization but
// the installed one is left), and the key's temporary label is gone.
func TestHSMOrgKeyMakers(t *testing.T) {
	h := openTestHSM(t, 4)
	opener := func() (*HSM, error) { return h, nil }
	base := "org" + strings.ToLower(strings.TrimPrefix(testLabel(t), "test-TestHSMOrgKeyMakers-"))
	t0 := time.Now().UTC()
	for _, alg := range algs {
		org := base + "-" + strings.ToLower(alg)
		c := &fakeCoordinator{now: t0, keys: map[string][]schemas.OrgKey{},
			pending: []schemas.OrgKeyRequest{{Org: org, ID: "okr_" + strings.ToLower(alg), Alg: alg, Reason: "enable", RequestedAt: t0}}}
		store := OrgKeyStore{HSM: opener}
		first := NewOrgKeyMaker(c, store, time.Second, 0)
		second := NewOrgKeyMaker(staleCopy{c, c.PendingOrgKeys()}, store, time.Second, 0)
		first.Step(context.Background(), t0)
		second.Step(context.Background(), t0)
		installed := c.keys[org]
		if len(installed) != 1 || installed[0].JWK.KeyAlg() != alg {
			t.Fatalf("%s: installed %+v", alg, installed)
		}
		kid := installed[0].Kid
		label := OrgKeyLabel(org, kid)
		if installed[0].Source != "pkcs11:"+label {
			t.Fatalf("%s: source %s, want pkcs11:%s", alg, installed[0].Source, label)
		}
		keys, err := h.ListKeys()
		if err != nil {
			t.Fatal(err)
		}
		var mine []KeyInfo
		for _, k := range keys {
			if k.Kid == kid && k.Label != label {
				t.Fatalf("%s: the key is on the token under %s too", alg, k.Label)
			}
			if strings.HasPrefix(k.Label, "certnode-org-"+org+"-") {
				mine = append(mine, k)
			}
		}
		if len(mine) != 1 || mine[0].Label != label || mine[0].Kid != kid {
			t.Fatalf("%s: the organization's objects on the token: %+v, want %s alone", alg, mine, label)
		}
		p, err := h.Protection(label)
		if err != nil || !p.Sensitive || p.Extractable || !p.NeverExtractable || !p.AlwaysSensitive {
			t.Fatalf("%s: protection %+v %v", alg, p, err)
		}
		ok, err := NewOrgKeys(OrgKeysConfig{Directory: c, Service: mustRing(t), HSM: opener, Now: func() time.Time { return t0 }})
		if err != nil {
			t.Fatal(err)
		}
		rc, own, err := ok.Sign(context.Background(), org, []byte(`{"hsm":true}`))
		if !own || err != nil || rc.Kid != kid {
			t.Fatalf("%s: sign: %v %v %+v", alg, own, err, rc)
		}
		if err := ok.KeySet(org).VerifyReceipt(rc); err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		t.Cleanup(func() { h.DestroyKey(label) })
	}
	if err := h.DestroyKey("certnode-org-none-" + base); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("destroying a missing key: %v", err)
	}
}

func mustRing(t *testing.T) *Ring {
	k, err := GenerateSoftware(schemas.AlgES256)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRing(k)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
