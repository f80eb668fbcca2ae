package signer

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/certnode/certnode/internal/envelope"
)

// KEKLabelPrefix starts the label of each organization's key-encryption
// key on the token.
const KEKLabelPrefix = "certnode-kek-"

// KEKs are the organizations' key-encryption keys of envelope encryption
// (internal/envelope): AES-256 keys made inside the token, sensitive and
// never extractable, that wrap and unwrap data keys with CKM_AES_GCM.
type KEKs struct {
	h *HSM
	// handles caches each organization's key handles, found once per
	// connection generation: a search walks every object on the token. A
	// key destroyed by another process fails with an invalid handle,
	// after which the client reconnects (a new generation) and searches.
	mu      sync.Mutex
	handles map[string]kekHandles
}

type kekHandles struct {
	gen  uint64
	keys []pkcs11.ObjectHandle
}

// KEKs returns the token's key-encryption keys.
func (h *HSM) KEKs() *KEKs { return &KEKs{h: h, handles: map[string]kekHandles{}} }

var _ envelope.KEKs = (*KEKs)(nil)

const gcmNonce, gcmTagBits = 12, 128

func kekLabel(org string) *pkcs11.Attribute {
	return pkcs11.NewAttribute(pkcs11.CKA_LABEL, KEKLabelPrefix+org)
}

// keys lists org's KEKs: one, unless two processes made one at once;
// Wrap uses the first and Unwrap tries each, so neither is lost.
func (k *KEKs) keys(s session, org string) ([]pkcs11.ObjectHandle, error) {
	k.mu.Lock()
	c, ok := k.handles[org]
	k.mu.Unlock()
	if ok && c.gen == s.gen {
		return c.keys, nil
	}
	// Private objects are invisible, not refused, to a logged-out session.
	if err := k.h.loggedIn(s); err != nil {
		return nil, err
	}
	keys, err := k.h.find(s, pkcs11.CKO_SECRET_KEY, kekLabel(org))
	if err == nil && len(keys) > 0 {
		k.cache(org, s.gen, keys)
	}
	return keys, err
}

func (k *KEKs) forget(org string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.handles, org)
}

func (k *KEKs) cache(org string, gen uint64, keys []pkcs11.ObjectHandle) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.handles) >= 4096 {
		clear(k.handles)
	}
	k.handles[org] = kekHandles{gen: gen, keys: keys}
}

// Wrap encrypts dek under org's KEK, made first if org has none: a fresh
// 12-byte nonce, then the ciphertext and its 16-byte tag.
func (k *KEKs) Wrap(ctx context.Context, org string, dek, aad []byte) ([]byte, error) {
	nonce := make([]byte, gcmNonce)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	var out []byte
	err := k.h.with(ctx, func(s session) error {
		keys, err := k.keys(s, org)
		if err != nil {
			return err
		}
		if len(keys) == 0 {
			key, err := k.generate(s, org)
			if err != nil {
				return fmt.Errorf("generate the KEK of %s: %w", org, err)
			}
			keys = append(keys, key)
			k.cache(org, s.gen, keys)
		}
		params := pkcs11.NewGCMParams(nonce, aad, gcmTagBits)
		defer params.Free()
		if err := k.h.mod.p.EncryptInit(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, keys[0]); err != nil {
			return err
		}
		ct, err := k.h.mod.p.Encrypt(s.h, dek)
		out = append(nonce, ct...)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pkcs11 wrap: %w", err)
	}
	return out, nil
}

func (k *KEKs) generate(s session, org string) (pkcs11.ObjectHandle, error) {
	return k.h.mod.p.GenerateKey(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
		kekLabel(org),
	})
}

// Unwrap decrypts what Wrap returned: envelope.ErrDestroyed when none of
// org's KEKs opens it and the token records one destroyed,
// envelope.ErrNoKEK when org never had one here, envelope.ErrCorrupt when
// none authenticates it.
func (k *KEKs) Unwrap(ctx context.Context, org string, wrapped, aad []byte) ([]byte, error) {
	if len(wrapped) < gcmNonce+gcmTagBits/8 {
		return nil, envelope.ErrCorrupt
	}
	var dek []byte
	err := k.h.with(ctx, func(s session) error {
		tried := map[pkcs11.ObjectHandle]bool{}
		// Twice: the cached handles may miss a KEK another process made
		// at the same time as the first.
		for range 2 {
			keys, err := k.keys(s, org)
			if err != nil {
				return err
			}
			if len(keys) == 0 {
				return k.missing(s, org, envelope.ErrNoKEK)
			}
			for _, key := range keys {
				if tried[key] {
					continue
				}
				tried[key] = true
				if dek, err = k.decrypt(s, key, wrapped, aad); err == nil || !errors.Is(err, envelope.ErrCorrupt) {
					return err
				}
			}
			k.forget(org)
		}
		return k.missing(s, org, envelope.ErrCorrupt)
	})
	if err != nil && !errors.Is(err, envelope.ErrNoKEK) && !errors.Is(err, envelope.ErrCorrupt) && !errors.Is(err, envelope.ErrDestroyed) {
		err = fmt.Errorf("pkcs11 unwrap: %w", err)
	}
	return dek, err
}

// tombstone labels the token object recording that org's KEK was
// destroyed (a data object: no key search sees it).
func tombstone(org string) *pkcs11.Attribute {
	return pkcs11.NewAttribute(pkcs11.CKA_LABEL, KEKLabelPrefix+"destroyed-"+org)
}

// missing is why no KEK of org opened a value: ErrDestroyed when the token
// records org's KEK destroyed, otherwise err.
func (k *KEKs) missing(s session, org string, err error) error {
	found, ferr := k.h.find(s, pkcs11.CKO_DATA, tombstone(org))
	switch {
	case ferr != nil:
		return ferr
	case len(found) > 0:
		return envelope.ErrDestroyed
	}
	return err
}

// decrypt reports a tag that does not authenticate as ErrCorrupt rather
// than the module's error: SoftHSM answers CKR_GENERAL_ERROR, after which
// the client would reopen every session of the pool for a bad value.
func (k *KEKs) decrypt(s session, key pkcs11.ObjectHandle, wrapped, aad []byte) ([]byte, error) {
	params := pkcs11.NewGCMParams(wrapped[:gcmNonce], aad, gcmTagBits)
	defer params.Free()
	if err := k.h.mod.p.DecryptInit(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, key); err != nil {
		return nil, err
	}
	dek, err := k.h.mod.p.Decrypt(s.h, wrapped[gcmNonce:])
	var pe pkcs11.Error
	if errors.As(err, &pe) && (pe == pkcs11.CKR_ENCRYPTED_DATA_INVALID || pe == pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE || pe == pkcs11.CKR_GENERAL_ERROR) {
		return nil, fmt.Errorf("%w (%v)", envelope.ErrCorrupt, err)
	}
	return dek, err
}

// Destroy deletes every KEK of org from the token (C_DestroyObject).
func (k *KEKs) Destroy(ctx context.Context, org string) error {
	k.forget(org) // search afresh: another process may have made one
	return k.h.with(ctx, func(s session) error {
		keys, err := k.keys(s, org)
		if err != nil {
			return err
		}
		if len(keys) == 0 {
			return envelope.ErrNoKEK
		}
		defer k.forget(org)
		// The tombstone first: a crash between the two leaves the key,
		// and a retry destroys it.
		if err := k.missing(s, org, nil); err == nil {
			_, err = k.h.mod.p.CreateObject(s.h, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
				pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
				pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, "certnode"),
				pkcs11.NewAttribute(pkcs11.CKA_VALUE, []byte(time.Now().UTC().Format(time.RFC3339))),
				tombstone(org),
			})
			if err != nil {
				return fmt.Errorf("pkcs11 record the KEK of %s destroyed: %w", org, err)
			}
		} else if !errors.Is(err, envelope.ErrDestroyed) {
			return err
		}
		for _, key := range keys {
			if err := k.h.mod.p.DestroyObject(s.h, key); err != nil {
				return fmt.Errorf("pkcs11 destroy the KEK of %s: %w", org, err)
			}
		}
		return nil
	})
}
