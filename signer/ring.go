package signer

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"sync"

	"github.com/certnode/certnode/schemas"
)

// Ring issues receipts with its active key and publishes every key it has
// held, so receipts signed before a rotation keep verifying.
type Ring struct {
	mu     sync.RWMutex
	active Key
	kid    string
	jwks   schemas.JWKS // active first, then retired, newest first
	keySet *schemas.KeySet
}

// NewRing starts a ring with an active key and any retired public keys that
// must stay published.
func NewRing(active Key, retired ...*ecdsa.PublicKey) (*Ring, error) {
	if active == nil {
		return nil, errors.New("ring needs an active key")
	}
	r := &Ring{}
	for i := len(retired) - 1; i >= 0; i-- {
		if err := r.publish(retired[i]); err != nil {
			return nil, fmt.Errorf("retired key %d: %w", i, err)
		}
	}
	if err := r.activate(active); err != nil {
		return nil, fmt.Errorf("active key: %w", err)
	}
	return r, nil
}

// Rotate makes next the signing key. The previous key stays in the JWKS.
func (r *Ring) Rotate(next Key) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.activate(next)
}

func (r *Ring) activate(k Key) error {
	jwk, err := schemas.NewJWK(k.Public())
	if err != nil {
		return err
	}
	if err := r.publish(k.Public()); err != nil {
		return err
	}
	r.active, r.kid = k, jwk.Kid
	return nil
}

// publish puts pub at the front of the JWKS (moving it there if present).
func (r *Ring) publish(pub *ecdsa.PublicKey) error {
	jwk, err := schemas.NewJWK(pub)
	if err != nil {
		return err
	}
	keys := []schemas.JWK{jwk}
	for _, k := range r.jwks.Keys {
		if k.Kid != jwk.Kid {
			keys = append(keys, k)
		}
	}
	ks, err := schemas.NewKeySet(schemas.JWKS{Keys: keys})
	if err != nil {
		return err
	}
	r.jwks, r.keySet = schemas.JWKS{Keys: keys}, ks
	return nil
}

// ActiveKID is the kid receipts are signed with now.
func (r *Ring) ActiveKID() string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.kid
}

// JWKS returns every published key, the active one first.
func (r *Ring) JWKS() schemas.JWKS {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return schemas.JWKS{Keys: append([]schemas.JWK(nil), r.jwks.Keys...)}
}

// KeySet returns the published keys ready for verification.
func (r *Ring) KeySet() *schemas.KeySet {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.keySet
}

// Sign canonicalizes payload (a JSON object) and signs it with the active key.
func (r *Ring) Sign(ctx context.Context, payload []byte) (*schemas.Receipt, error) {
	r.mu.RLock()
	key, kid := r.active, r.kid
	r.mu.RUnlock()
	u, err := schemas.NewUnsigned(kid, payload)
	if err != nil {
		return nil, err
	}
	d := u.Digest()
	sig, err := key.SignDigest(ctx, d[:])
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	return u.Complete(sig)
}
