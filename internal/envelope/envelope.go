// Package envelope encrypts payloads at rest per organization (envelope
// encryption, as the AWS Encryption SDK and Google Tink do it): a data key
// (DEK) per organization and month, made by each writer process and
// wrapped by the organization's key-encryption key (KEK), which never
// leaves the HSM; the value carries its wrapped DEK. Nothing is shared
// between writers, so two sink processes never race to create a key and
// a reader needs only the KEKs.
//
// Destroying an organization's KEK makes everything sealed for it
// unreadable at once, in ClickHouse, its backups and any copy, while the
// receipts handed out and the logs' proofs stay valid (the logs commit to
// hashes). The store records the destruction, so readers tell an erased
// value (ErrDestroyed) from one they hold no key for (ErrNoKEK: the wrong
// store). Readers keep unwrapped DEKs, and writers use theirs, for
// CacheTTL before asking the KEK again, so a destruction takes effect
// everywhere within that time: what a writer sealed in it is erased too.
package envelope

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
)

// KEKs holds one key-encryption key per organization: an AES-256-GCM key
// in the HSM (signer.KEKs), or in files for certnode dev (DirKEKs).
type KEKs interface {
	// Wrap encrypts dek under org's KEK, making the KEK if org has none.
	Wrap(ctx context.Context, org string, dek, aad []byte) ([]byte, error)
	// Unwrap decrypts a wrapped DEK: ErrDestroyed when no KEK of org
	// opens it and org's KEK was destroyed, ErrNoKEK when org never had
	// one in this store, ErrCorrupt when none authenticates it.
	Unwrap(ctx context.Context, org string, wrapped, aad []byte) ([]byte, error)
	// Destroy deletes org's KEK, leaving a record that it did; what it
	// wrapped can never be read again.
	Destroy(ctx context.Context, org string) error
}

// Errors of sealing and opening.
var (
	// ErrNoKEK means the organization never had a key-encryption key in
	// this store: a reader pointed at another store than the writers'.
	ErrNoKEK = errors.New("the organization has no key-encryption key in this key store")
	// ErrDestroyed is returned by Open for a value whose KEK was destroyed:
	// its plaintext is gone for good.
	ErrDestroyed = errors.New("sealed with a destroyed key: the data was erased")
	// ErrCorrupt means a sealed value does not parse or authenticate.
	ErrCorrupt = errors.New("sealed value corrupt or not this organization's")
)

// prefix marks a sealed value; values without it were stored before
// encryption was turned on and are returned as they are.
const prefix = "cne1:"

// CacheTTL bounds how long an unwrapped DEK is used without asking the
// KEK again: a destroyed KEK stops every reader and writer within it.
const CacheTTL = time.Minute

// maxCached bounds the DEKs kept: past it the cache starts afresh.
const maxCached = 4096

// Envelope seals and opens values for every organization.
type Envelope struct {
	keks KEKs
	now  func() time.Time

	mu sync.Mutex
	// sealing holds this process's DEK per organization and month.
	sealing map[period]*dataKey
	// opened holds unwrapped DEKs by their wrapped form.
	opened map[string]*dataKey
	// destroys counts Destroy calls: a DEK wrapped while one ran may be
	// under the destroyed KEK, and is not used.
	destroys uint64
}

type period struct{ org, month string }

type dataKey struct {
	aead    cipher.AEAD
	wrapped []byte
	month   string
	at      time.Time // when it was made or unwrapped
}

// New returns an Envelope over keks.
func New(keks KEKs) *Envelope {
	return &Envelope{keks: keks, now: time.Now, sealing: map[period]*dataKey{}, opened: map[string]*dataKey{}}
}

// Sealed reports whether v is a sealed value.
func Sealed(v string) bool { return strings.HasPrefix(v, prefix) }

// Seal encrypts plain for org under the DEK of at's month. The value is
// bound to org (a value moved to another organization's row does not
// open), and carries the wrapped DEK.
func (e *Envelope) Seal(ctx context.Context, org string, at time.Time, plain []byte) (string, error) {
	k, err := e.sealKey(ctx, org, at.UTC().Format("2006-01"))
	if err != nil {
		return "", err
	}
	// header: month length, month, wrapped length (2 bytes), wrapped,
	// then the nonce and the ciphertext.
	raw := make([]byte, 0, 1+len(k.month)+2+len(k.wrapped)+k.aead.NonceSize()+len(plain)+k.aead.Overhead())
	raw = append(raw, byte(len(k.month)))
	raw = append(raw, k.month...)
	raw = binary.BigEndian.AppendUint16(raw, uint16(len(k.wrapped)))
	raw = append(raw, k.wrapped...)
	nonce := make([]byte, k.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	raw = append(raw, nonce...)
	raw = k.aead.Seal(raw, nonce, plain, dataAAD(org))
	return prefix + base64.RawStdEncoding.EncodeToString(raw), nil
}

// Open decrypts a value Seal made for org; a value that is not sealed is
// returned as it is, and an empty one stays empty (an erased payload).
func (e *Envelope) Open(ctx context.Context, org, v string) ([]byte, error) {
	if !Sealed(v) {
		return []byte(v), nil
	}
	raw, err := base64.RawStdEncoding.DecodeString(v[len(prefix):])
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	month, wrapped, rest, ok := parse(raw)
	if !ok {
		return nil, fmt.Errorf("%w: truncated header", ErrCorrupt)
	}
	k, err := e.openKey(ctx, org, month, wrapped)
	if err != nil {
		return nil, err
	}
	n := k.aead.NonceSize()
	if len(rest) < n {
		return nil, fmt.Errorf("%w: truncated", ErrCorrupt)
	}
	plain, err := k.aead.Open(nil, rest[:n], rest[n:], dataAAD(org))
	if err != nil {
		return nil, ErrCorrupt
	}
	return plain, nil
}

// Destroy destroys org's KEK and forgets its DEKs here.
func (e *Envelope) Destroy(ctx context.Context, org string) error {
	if err := e.keks.Destroy(ctx, org); err != nil && !errors.Is(err, ErrNoKEK) {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.destroys++
	for p := range e.sealing {
		if p.org == org {
			delete(e.sealing, p)
		}
	}
	// The opened cache is keyed by wrapped DEKs, which name no
	// organization: start it afresh.
	clear(e.opened)
	return nil
}

func parse(raw []byte) (month string, wrapped, rest []byte, ok bool) {
	if len(raw) < 1 {
		return
	}
	m := int(raw[0])
	if len(raw) < 1+m+2 {
		return
	}
	month, raw = string(raw[1:1+m]), raw[1+m:]
	w := int(binary.BigEndian.Uint16(raw))
	if len(raw) < 2+w {
		return
	}
	return month, raw[2 : 2+w], raw[2+w:], true
}

func dataAAD(org string) []byte { return []byte("certnode-data-v1\x00" + org) }

func dekAAD(org, month string) []byte { return []byte("certnode-dek-v1\x00" + org + "\x00" + month) }

// sealKey returns this process's DEK for org's month, making and wrapping
// one when it has none. Every CacheTTL it checks that the KEK still
// unwraps it, so that after the KEK's destruction new values are sealed
// under a new KEK within that time (and stay readable); one DEK serves
// the whole month otherwise, so readers unwrap few.
func (e *Envelope) sealKey(ctx context.Context, org, month string) (*dataKey, error) {
	p := period{org, month}
	e.mu.Lock()
	k, ok := e.sealing[p]
	destroys := e.destroys
	e.mu.Unlock()
	if ok && e.now().Sub(k.at) < CacheTTL {
		return k, nil
	}
	if ok {
		_, err := e.keks.Unwrap(ctx, org, k.wrapped, dekAAD(org, month))
		switch {
		case err == nil:
			checked := *k
			checked.at = e.now()
			e.mu.Lock()
			defer e.mu.Unlock()
			if e.destroys != destroys {
				return nil, fmt.Errorf("envelope: a KEK was destroyed while the data key of %s was checked: try again", org)
			}
			e.sealing[p] = &checked
			return &checked, nil
		case !errors.Is(err, ErrDestroyed) && !errors.Is(err, ErrNoKEK) && !errors.Is(err, ErrCorrupt):
			return nil, fmt.Errorf("envelope: check the KEK of %s: %w", org, err)
		}
		// Destroyed (and perhaps made again by another writer): a new DEK.
	}
	dek := make([]byte, 32)
	if _, err := rand.Read(dek); err != nil {
		return nil, err
	}
	wrapped, err := e.keks.Wrap(ctx, org, dek, dekAAD(org, month))
	if err != nil {
		return nil, fmt.Errorf("envelope: wrap a data key for %s: %w", org, err)
	}
	if len(wrapped) > 0xffff {
		return nil, fmt.Errorf("envelope: wrapped data key of %d bytes", len(wrapped))
	}
	k, err = newDataKey(dek, wrapped, month, e.now())
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.destroys != destroys {
		return nil, fmt.Errorf("envelope: a KEK was destroyed while a data key of %s was wrapped: try again", org)
	}
	if len(e.sealing) >= maxCached {
		clear(e.sealing)
	}
	e.sealing[p] = k
	return k, nil
}

// openKey returns the unwrapped DEK, from the cache when it is recent.
func (e *Envelope) openKey(ctx context.Context, org, month string, wrapped []byte) (*dataKey, error) {
	// The organization is part of the key: the same wrapped bytes under
	// another organization must go to the KEK (and fail there).
	id := org + "\x00" + string(wrapped)
	e.mu.Lock()
	k, ok := e.opened[id]
	e.mu.Unlock()
	if ok && e.now().Sub(k.at) < CacheTTL {
		return k, nil
	}
	dek, err := e.keks.Unwrap(ctx, org, wrapped, dekAAD(org, month))
	switch {
	case errors.Is(err, ErrDestroyed):
		return nil, ErrDestroyed
	case err != nil:
		return nil, fmt.Errorf("envelope: unwrap a data key of %s: %w", org, err)
	}
	k, err = newDataKey(dek, wrapped, month, e.now())
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	if len(e.opened) >= maxCached {
		clear(e.opened)
	}
	e.opened[id] = k
	e.mu.Unlock()
	return k, nil
}

func newDataKey(dek, wrapped []byte, month string, at time.Time) (*dataKey, error) {
	if len(dek) != 32 {
		return nil, fmt.Errorf("%w: data key of %d bytes", ErrCorrupt, len(dek))
	}
	aead, err := gcm(dek)
	if err != nil {
		return nil, err
	}
	return &dataKey{aead: aead, wrapped: wrapped, month: month, at: at}, nil
}

func gcm(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}
