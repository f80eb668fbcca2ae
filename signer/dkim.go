package signer

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"time"

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

// errLabelShared: two pairs have a DKIM key's label, for the moment two
// mailers making it at once take to settle (generate).
var errLabelShared = errors.New("labels must be unique")

// Key returns the signer of the key named name (a mail.KeyName), making
// it when create is set and there is none.
func (k *DKIMKeys) Key(ctx context.Context, name string, create bool) (crypto.Signer, error) {
	label := DKIMLabelPrefix + name
	pub, err := k.public(ctx, label)
	// Mailers making the key at once settle on one pair, or all yield:
	// tried again after a random moment, a few times.
	for try := 0; try < 4 && (errors.Is(err, errLabelShared) || create && errors.Is(err, ErrNoDKIMKey)); try++ {
		if try > 0 || errors.Is(err, errLabelShared) {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Duration(mrand.Int64N(int64(500 * time.Millisecond)))):
			}
		}
		if errors.Is(err, ErrNoDKIMKey) {
			if pub, err = k.generate(ctx, label); err != nil || pub != nil {
				break
			}
		}
		pub, err = k.public(ctx, label)
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
			return fmt.Errorf("%d private and %d public keys are labelled %q; %w", len(priv), len(pubs), label, errLabelShared)
		}
		pub, err = k.rsaPublic(s, pubs[0])
		return err
	})
	return pub, err
}

// rsaPublic reads an RSA public key object.
func (k *DKIMKeys) rsaPublic(s session, obj pkcs11.ObjectHandle) (*rsa.PublicKey, error) {
	attrs, err := k.h.mod.p.GetAttributeValue(s.h, obj, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil), pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, nil)})
	if err != nil {
		return nil, fmt.Errorf("%w: not an RSA key (%v)", ErrWrongKeyType, err)
	}
	e := new(big.Int).SetBytes(attrs[1].Value)
	if !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31 {
		return nil, fmt.Errorf("%w: RSA exponent", ErrWrongKeyType)
	}
	return &rsa.PublicKey{N: new(big.Int).SetBytes(attrs[0].Value), E: int(e.Int64())}, nil
}

// generate makes an RSA-2048 pair labelled label on the token and returns
// its public half, or nil when another pair has the label (made by
// another mailer meanwhile): that one is the key. PKCS#11 cannot claim a
// label atomically, and making a pair takes long: it is made under a
// label of its own, given label only if no key has it (Relabel), and
// destroyed again if another pair got label at the same moment. So no
// more than one pair keeps the label; when all yield, none does.
func (k *DKIMKeys) generate(ctx context.Context, label string) (*rsa.PublicKey, error) {
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	tmp := DKIMLabelPrefix + "new-" + hex.EncodeToString(id)
	common := func(class uint) []*pkcs11.Attribute {
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, tmp),
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
	var pub *rsa.PublicKey
	made := false
	err := k.h.with(ctx, func(s session) error {
		pubObj, _, err := k.h.mod.p.GenerateKeyPair(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)}, pubTmpl, privTmpl)
		if err != nil {
			return fmt.Errorf("generate RSA key: %w", err)
		}
		made = true
		pub, err = k.rsaPublic(s, pubObj)
		return err
	})
	if err != nil && made {
		err = errors.Join(err, k.h.DestroyKey(tmp))
	}
	if err != nil {
		return nil, err
	}
	if err := k.h.Relabel(tmp, label); err != nil {
		destroyed := k.h.DestroyKey(tmp)
		if errors.Is(err, ErrKeyExists) {
			return nil, destroyed
		}
		return nil, errors.Join(err, destroyed)
	}
	err = k.h.with(ctx, func(s session) error {
		privs, err := k.h.find(s, pkcs11.CKO_PRIVATE_KEY, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
		if err != nil || len(privs) == 1 {
			return err
		}
		pub = nil // another pair got the label too: this one yields
		for _, class := range []uint{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
			objs, err := k.h.find(s, class, pkcs11.NewAttribute(pkcs11.CKA_ID, id))
			if err != nil {
				return err
			}
			for _, o := range objs {
				if err := k.h.mod.p.DestroyObject(s.h, o); err != nil {
					return fmt.Errorf("destroy the DKIM key made for %q: %w", label, err)
				}
			}
		}
		return nil
	})
	return pub, err
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
