package signer

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"math/big"

	"github.com/miekg/pkcs11"
)

// DKIMLabelPrefix starts the label of each DKIM key on the token.
const DKIMLabelPrefix = "certnode-dkim-"

// DKIMKeys are the mailer's DKIM keys: RSA-2048 pairs made inside the
// token, sensitive and never extractable, that sign mail with
// CKM_RSA_PKCS (RSASSA-PKCS1-v1_5 over SHA-256, RFC 6376's rsa-sha256). It
// implements internal/mail's KeyStore.
type DKIMKeys struct{ h *HSM }

// DKIMKeys returns the token's DKIM keys.
func (h *HSM) DKIMKeys() *DKIMKeys { return &DKIMKeys{h: h} }

// ErrNoDKIMKey names a DKIM key the token does not hold.
var ErrNoDKIMKey = errors.New("no such DKIM key on the token")

// Key returns the signer of the key named name (a mail.KeyName), making
// it when create is set and there is none.
func (k *DKIMKeys) Key(ctx context.Context, name string, create bool) (crypto.Signer, error) {
	label := DKIMLabelPrefix + name
	pub, err := k.public(ctx, label)
	if errors.Is(err, ErrNoDKIMKey) && create {
		if err = k.generate(ctx, label); err == nil {
			pub, err = k.public(ctx, label)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("dkim key %q: %w", label, err)
	}
	return &dkimSigner{h: k.h, label: label, pub: pub}, nil
}

// public reads the public half of the pair labelled label.
func (k *DKIMKeys) public(ctx context.Context, label string) (*rsa.PublicKey, error) {
	var pub *rsa.PublicKey
	err := k.h.with(ctx, func(s session) error {
		if err := k.h.loggedIn(s); err != nil {
			return err
		}
		priv, err := k.h.find(s, pkcs11.CKO_PRIVATE_KEY, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
		if err != nil {
			return err
		}
		pubs, err := k.h.find(s, pkcs11.CKO_PUBLIC_KEY, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
		switch {
		case err != nil:
			return err
		case len(priv) == 0:
			return ErrNoDKIMKey
		case len(priv) > 1 || len(pubs) != 1:
			return fmt.Errorf("%d private and %d public keys are labelled %q; labels must be unique", len(priv), len(pubs), label)
		}
		attrs, err := k.h.mod.p.GetAttributeValue(s.h, pubs[0], []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil), pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, nil)})
		if err != nil {
			return fmt.Errorf("%w: not an RSA key (%v)", ErrWrongKeyType, err)
		}
		e := new(big.Int).SetBytes(attrs[1].Value)
		if !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31 {
			return fmt.Errorf("%w: RSA exponent", ErrWrongKeyType)
		}
		pub = &rsa.PublicKey{N: new(big.Int).SetBytes(attrs[0].Value), E: int(e.Int64())}
		return nil
	})
	return pub, err
}

// generate makes an RSA-2048 pair labelled label on the token.
func (k *DKIMKeys) generate(ctx context.Context, label string) error {
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return err
	}
	common := func(class uint) []*pkcs11.Attribute {
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		}
	}
	pubTmpl := append(common(pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, 2048),
		pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}))
	privTmpl := append(common(pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false))
	return k.h.with(ctx, func(s session) error {
		existing, err := k.h.find(s, pkcs11.CKO_PRIVATE_KEY, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
		if err != nil || len(existing) > 0 {
			return err // made meanwhile (by a retry of this call, or another mailer)
		}
		_, _, err = k.h.mod.p.GenerateKeyPair(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)}, pubTmpl, privTmpl)
		if err != nil {
			return fmt.Errorf("generate RSA key: %w", err)
		}
		return nil
	})
}

// dkimSigner signs with a DKIM key inside the token.
type dkimSigner struct {
	h     *HSM
	label string
	pub   *rsa.PublicKey
}

func (s *dkimSigner) Public() crypto.PublicKey { return s.pub }

// sha256DigestInfo is the DER prefix of a SHA-256 DigestInfo (RFC 8017
// §9.2 note 1): CKM_RSA_PKCS pads and signs what it is given, so the
// DigestInfo is built here.
var sha256DigestInfo = []byte{0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20}

// Sign signs a SHA-256 digest with RSASSA-PKCS1-v1_5.
func (s *dkimSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts.HashFunc() != crypto.SHA256 || len(digest) != 32 {
		return nil, fmt.Errorf("dkim key %q: only PKCS#1 v1.5 signatures over SHA-256", s.label)
	}
	if _, pss := opts.(*rsa.PSSOptions); pss {
		return nil, fmt.Errorf("dkim key %q: only PKCS#1 v1.5 signatures over SHA-256", s.label)
	}
	var sig []byte
	err := s.h.with(context.Background(), func(ss session) error {
		if err := s.h.loggedIn(ss); err != nil {
			return err
		}
		privs, err := s.h.find(ss, pkcs11.CKO_PRIVATE_KEY, pkcs11.NewAttribute(pkcs11.CKA_LABEL, s.label))
		if err != nil {
			return err
		}
		if len(privs) != 1 {
			return fmt.Errorf("%w: %d keys labelled %q", ErrNoDKIMKey, len(privs), s.label)
		}
		if err := s.h.mod.p.SignInit(ss.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil)}, privs[0]); err != nil {
			return err
		}
		sig, err = s.h.mod.p.Sign(ss.h, append(append([]byte{}, sha256DigestInfo...), digest...))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pkcs11 sign with %q: %w", s.label, err)
	}
	// A key replaced on the token since Public was read would sign with
	// a key receivers do not have: checked, as ES256 keys are.
	if err := rsa.VerifyPKCS1v15(s.pub, crypto.SHA256, digest, sig); err != nil {
		return nil, fmt.Errorf("%w: %q", ErrKeyReplaced, s.label)
	}
	return sig, nil
}
