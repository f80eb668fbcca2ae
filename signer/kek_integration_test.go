//go:build integration

package signer

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/certnode/certnode/internal/envelope"
)

// Envelope encryption with the organizations' KEKs on SoftHSM2: the KEK is
// an AES key the token refuses to reveal, values open through another
// client of the token, a value of one organization does not open as
// another's, and destroying the KEK leaves its values unreadable.
func TestHSMKEKs(t *testing.T) {
	h := openTestHSM(t, 4)
	org := testLabel(t)
	e := envelope.New(h.KEKs())
	t.Cleanup(func() { // the token keeps what tests make: remove the KEKs
		for _, o := range []string{org, org + "-other"} {
			h.KEKs().Destroy(context.Background(), o)
		}
	})
	ctx := context.Background()
	at := time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)

	// Concurrent first seals of one organization may make two KEKs on the
	// token; every value still opens.
	var wg sync.WaitGroup
	sealed := make([]string, 8)
	errs := make([]error, len(sealed))
	for i := range sealed {
		wg.Go(func() {
			sealed[i], errs[i] = envelope.New(h.KEKs()).Seal(ctx, org, at, []byte(`{"email":"ada@example.com"}`))
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	readerKEKs := openTestHSM(t, 1).KEKs()
	reader := envelope.New(readerKEKs)
	for _, v := range sealed {
		if strings.Contains(v, "ada@") {
			t.Fatalf("plaintext in %s", v)
		}
		if got, err := reader.Open(ctx, org, v); err != nil || string(got) != `{"email":"ada@example.com"}` {
			t.Fatalf("open through another client: %q, %v", got, err)
		}
	}
	if _, err := reader.Open(ctx, org+"-never", sealed[0]); !errors.Is(err, envelope.ErrNoKEK) {
		t.Fatalf("opened as an organization without a KEK: %v", err)
	}
	other, err := e.Seal(ctx, org+"-other", at, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reader.Open(ctx, org, other); !errors.Is(err, envelope.ErrCorrupt) {
		t.Fatalf("another organization's value opened: %v", err)
	}
	// A bad tag is the value's fault, not the token's: the client does
	// not reconnect its pool (signing on it goes on).
	generation := func() uint64 { h.mu.Lock(); defer h.mu.Unlock(); return h.gen }
	gen := generation()
	if _, err := h.KEKs().Unwrap(ctx, org, make([]byte, 60), []byte("aad")); !errors.Is(err, envelope.ErrCorrupt) {
		t.Fatalf("unwrap of garbage: %v", err)
	}
	if generation() != gen {
		t.Fatal("a bad tag reopened the HSM's sessions")
	}

	// The token holds the KEK as a sensitive, non-extractable AES key.
	p, slot := rawToken(t)
	s, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer p.CloseSession(s)
	if err := p.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, KEKLabelPrefix+org)}); err != nil {
		t.Fatal(err)
	}
	objs, _, err := p.FindObjects(s, 16)
	p.FindObjectsFinal(s)
	if err != nil || len(objs) == 0 {
		t.Fatalf("KEK not on the token: %v", err)
	}
	attrs, err := p.GetAttributeValue(s, objs[0], []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil)})
	if err != nil {
		t.Fatal(err)
	}
	if attrs[0].Value[0] != pkcs11.CKK_AES || attrs[1].Value[0] != 0 || attrs[2].Value[0] != 1 {
		t.Fatalf("KEK attributes: type %x extractable %x sensitive %x", attrs[0].Value, attrs[1].Value, attrs[2].Value)
	}
	if _, err := p.GetAttributeValue(s, objs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)}); err == nil {
		t.Fatal("the token revealed the KEK's value")
	}

	// Another client holds the KEK's handle cached.
	wrapped, err := readerKEKs.Wrap(ctx, org, make([]byte, 32), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}

	if err := e.Destroy(ctx, org); err != nil {
		t.Fatal(err)
	}
	if _, err := readerKEKs.Unwrap(ctx, org, wrapped, []byte("aad")); !errors.Is(err, envelope.ErrDestroyed) {
		t.Fatalf("unwrap through a handle cached before the destruction: %v", err)
	}
	fresh := envelope.New(h.KEKs())
	for _, v := range sealed {
		if _, err := fresh.Open(ctx, org, v); !errors.Is(err, envelope.ErrDestroyed) {
			t.Fatalf("open after the KEK's destruction: %v", err)
		}
	}
	if err := h.KEKs().Destroy(ctx, org); !errors.Is(err, envelope.ErrNoKEK) {
		t.Fatalf("second destroy: %v", err)
	}
	// The organization goes on: a new KEK, and its old values stay erased.
	again, err := envelope.New(h.KEKs()).Seal(ctx, org, at, []byte("new"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := envelope.New(h.KEKs()).Open(ctx, org, again); err != nil || string(got) != "new" {
		t.Fatalf("after a new KEK: %q, %v", got, err)
	}
	if _, err := envelope.New(h.KEKs()).Open(ctx, org, sealed[0]); !errors.Is(err, envelope.ErrDestroyed) {
		t.Fatalf("an old value beside the new KEK: %v", err)
	}
}
