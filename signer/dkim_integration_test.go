//go:build integration

package signer

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"net/mail"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/miekg/pkcs11"

	cnmail "github.com/certnode/certnode/internal/mail"
)

// A DKIM key made on SoftHSM2: RSA-2048, the private half sensitive and
// not extractable; mail signed with it verifies against the record its
// public half makes; another client of the token finds the same key; a
// key that does not exist is not made unless asked.
func TestHSMDKIMKeys(t *testing.T) {
	h := openTestHSM(t, 2)
	name := cnmail.KeyName("s"+strings.ToLower(testLabel(t)[len(testLabel(t))-12:]), "mail.example.test")
	label := DKIMLabelPrefix + name
	t.Cleanup(func() { destroyLabelled(t, h, label) })
	ctx := context.Background()
	if _, err := h.DKIMKeys().Key(ctx, name, false); !errors.Is(err, ErrNoDKIMKey) {
		t.Fatalf("a missing key: %v", err)
	}
	k, err := h.DKIMKeys().Key(ctx, name, true)
	if err != nil {
		t.Fatal(err)
	}
	again, err := openTestHSM(t, 1).DKIMKeys().Key(ctx, name, true)
	if err != nil || !bytes.Equal(cnmailRecord(t, again), cnmailRecord(t, k)) {
		t.Fatalf("the key through another client: %v", err)
	}
	_ = h.with(ctx, func(s session) error {
		privs, _ := h.find(s, pkcs11.CKO_PRIVATE_KEY, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
		attrs, err := h.mod.p.GetAttributeValue(s.h, privs[0], []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil), pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, nil)})
		if err == nil && (attrs[0].Value[0] != 1 || attrs[1].Value[0] != 0) {
			t.Errorf("the private key is not sensitive and unextractable: %v", attrs)
		}
		return nil
	})

	msg := cnmail.Message{ID: "m1", From: mail.Address{Name: "Acme", Address: "no-reply@mail.example.test"}, To: "ada@example.test",
		Rendered: cnmail.Rendered{Subject: "Hello", Text: "Hello.\n", HTML: "<p>Hello.</p>"}, Date: time.Now()}
	raw, err := msg.Build()
	if err != nil {
		t.Fatal(err)
	}
	sel, domain, _ := strings.Cut(name, "._domainkey.")
	signed, err := cnmail.Sign(raw, cnmail.DKIMKey{Domain: domain, Selector: sel, Signer: k})
	if err != nil {
		t.Fatal(err)
	}
	record := string(cnmailRecord(t, k))
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(signed), &dkim.VerifyOptions{LookupTXT: func(q string) ([]string, error) {
		if q != name {
			t.Errorf("looked up %q, want %q", q, name)
		}
		return []string{record}, nil
	}})
	if err != nil || len(vs) != 1 || vs[0].Err != nil {
		t.Fatalf("verify: %v %+v", err, vs)
	}
}

// Two mailers on one token making the same domain's key at once end with
// one pair under its label, and both sign with it.
func TestHSMDKIMKeysConcurrentMake(t *testing.T) {
	name := cnmail.KeyName("c"+strings.ToLower(testLabel(t)[len(testLabel(t))-12:]), "mail.example.test")
	label := DKIMLabelPrefix + name
	hs := []*HSM{openTestHSM(t, 1), openTestHSM(t, 1)}
	t.Cleanup(func() { destroyLabelled(t, hs[0], label) })
	keys := make([]crypto.Signer, len(hs))
	errs := make([]error, len(hs))
	var wg sync.WaitGroup
	for i, h := range hs {
		wg.Go(func() { keys[i], errs[i] = h.DKIMKeys().Key(context.Background(), name, true) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cnmailRecord(t, keys[0]), cnmailRecord(t, keys[1])) {
		t.Fatal("the two makers got different keys")
	}
	_ = hs[0].with(context.Background(), func(s session) error {
		for _, class := range []uint{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
			if objs, err := hs[0].find(s, class, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)); err != nil || len(objs) != 1 {
				t.Errorf("class %d: %d objects labelled %q (%v), want 1", class, len(objs), label, err)
			}
		}
		return nil
	})
	if _, err := hs[1].DKIMKeys().Key(context.Background(), name, false); err != nil {
		t.Fatalf("the key read back: %v", err)
	}
}

func cnmailRecord(t *testing.T, k crypto.Signer) []byte {
	t.Helper()
	r, err := cnmail.RecordValue(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return []byte(r)
}

// destroyLabelled removes what a test made on the token.
func destroyLabelled(t *testing.T, h *HSM, label string) {
	_ = h.with(context.Background(), func(s session) error {
		for _, class := range []uint{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
			objs, _ := h.find(s, class, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
			for _, o := range objs {
				if err := h.mod.p.DestroyObject(s.h, o); err != nil {
					t.Logf("destroy %s: %v", label, err)
				}
			}
		}
		return nil
	})
}
