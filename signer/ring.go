package signer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/certnode/certnode/schemas"
)

// ErrNoSigningKey is returned by Sign on a ring opened for its public keys.
var ErrNoSigningKey = errors.New("key ring opened for verification only: no signing key")

// Ring issues receipts with its active key and publishes every key it has
// held, so receipts signed before a rotation keep verifying. A ring is one
// key (NewRing) or a key ring directory (OpenRing), which Reload re-reads.
type Ring struct {
	mu     sync.RWMutex
	active Key // nil when opened public-only
	kid    string
	alg    string       // the active key's algorithm
	jwks   schemas.JWKS // active first, then the others, newest first
	keySet *schemas.KeySet

	dir      string // "" for a ring of one key
	opts     RingOptions
	reloadMu sync.Mutex // one Reload at a time; guards raw and hsm
	raw      []byte     // ring.json as last loaded
	hsm      *HSM
}

// RingOptions says how OpenRing reaches the keys' private halves.
type RingOptions struct {
	// PublicOnly loads ring.json alone (the ingest tier): no private key,
	// no HSM, and Sign fails with ErrNoSigningKey.
	PublicOnly bool
	// HSM opens the token holding pkcs11: keys. It is called when such a
	// key must sign, and may be nil when the ring holds only software keys.
	// The caller closes the HSM.
	HSM func() (*HSM, error)
}

// NewRing is a ring of one key.
func NewRing(active Key) (*Ring, error) {
	if active == nil {
		return nil, errors.New("ring needs an active key")
	}
	jwk, err := schemas.NewJWK(active.Public())
	if err != nil {
		return nil, fmt.Errorf("active key: %w", err)
	}
	jwks := schemas.JWKS{Keys: []schemas.JWK{jwk}}
	ks, err := schemas.NewKeySet(jwks)
	if err != nil {
		return nil, err
	}
	return &Ring{active: active, kid: jwk.Kid, alg: jwk.Alg, jwks: jwks, keySet: ks}, nil
}

// OpenRing loads the key ring in dir: every key's public half for
// verification and, unless opts.PublicOnly, the active key's private half.
func OpenRing(dir string, opts RingOptions) (*Ring, error) {
	r := &Ring{dir: dir, opts: opts}
	if _, err := r.Reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// Dir is the ring's directory, "" for a ring of one key.
func (r *Ring) Dir() string { return r.dir }

// Reload re-reads ring.json and reports whether it changed. On any error
// the ring keeps its current keys: a bad edit or an unreachable HSM must
// not stop signing.
func (r *Ring) Reload() (bool, error) {
	if r.dir == "" {
		return false, nil
	}
	r.reloadMu.Lock()
	defer r.reloadMu.Unlock()
	path := filepath.Join(r.dir, RingFileName)
	data, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("key ring %s: %w", r.dir, err)
	}
	if r.raw != nil && bytes.Equal(data, r.raw) {
		return false, nil
	}
	f, err := ParseRingFile(data)
	if err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	jwks, err := f.JWKS()
	if err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	ks, err := schemas.NewKeySet(jwks)
	if err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	r.mu.RLock()
	active := r.active
	same := r.kid == f.Active
	r.mu.RUnlock()
	activeKey, _ := f.Key(f.Active)
	if !r.opts.PublicOnly && !same {
		var hsm func() (*HSM, error)
		if r.opts.HSM != nil {
			hsm = r.openHSM
		}
		if active, err = openRingKey(r.dir, activeKey, hsm); err != nil {
			return false, err
		}
	}
	r.mu.Lock()
	r.active, r.kid, r.alg, r.jwks, r.keySet = active, f.Active, activeKey.JWK.KeyAlg(), jwks, ks
	r.mu.Unlock()
	r.raw = data
	return true, nil
}

// openHSM opens the token once, on first use; reloadMu is held.
func (r *Ring) openHSM() (*HSM, error) {
	if r.hsm != nil {
		return r.hsm, nil
	}
	h, err := r.opts.HSM()
	if err != nil {
		return nil, err
	}
	r.hsm = h
	return h, nil
}

// openRingKey opens a ring key's private half and checks that it is the
// key ring.json publishes: signing with another key would issue receipts
// nobody can verify.
func openRingKey(dir string, k RingKey, hsm func() (*HSM, error)) (Key, error) {
	kind, ref, err := splitSource(k.Source)
	if err != nil {
		return nil, err
	}
	var key Key
	switch kind {
	case sourceFile:
		key, err = LoadSoftware(filepath.Join(dir, ref))
	case sourcePKCS11:
		if hsm == nil {
			return nil, fmt.Errorf("key %s is %s: no HSM configured (give --pkcs11-module and --token)", k.Kid, k.Source)
		}
		var h *HSM
		if h, err = hsm(); err == nil {
			key, err = h.Key(ref)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("key %s (%s): %w", k.Kid, k.Source, err)
	}
	jwk, err := schemas.NewJWK(key.Public())
	if err != nil {
		return nil, fmt.Errorf("key %s (%s): %w", k.Kid, k.Source, err)
	}
	if jwk.Kid != k.Kid {
		return nil, fmt.Errorf("%w: key %s: %s holds a different key (kid %s)", ErrBadRing, k.Kid, k.Source, jwk.Kid)
	}
	return key, nil
}

// ActiveKID is the kid receipts are signed with now.
func (r *Ring) ActiveKID() string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.kid
}

// ActiveAlg is the algorithm receipts are signed with now: the active
// key's, so a deployment changes algorithm by rotating to a key of the
// other type.
func (r *Ring) ActiveAlg() string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.alg
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
	key, kid, alg := r.active, r.kid, r.alg
	r.mu.RUnlock()
	if key == nil {
		return nil, ErrNoSigningKey
	}
	u, err := schemas.NewUnsigned(alg, kid, payload)
	if err != nil {
		return nil, err
	}
	sig, err := key.Sign(ctx, u.Input())
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	return u.Complete(sig)
}

// RingWatcher reloads a key ring when its ring.json changes, so a rotation
// reaches running processes without a restart.
type RingWatcher struct {
	ring     *Ring
	interval time.Duration
}

// NewRingWatcher polls r's ring.json every interval.
func NewRingWatcher(r *Ring, interval time.Duration) *RingWatcher {
	return &RingWatcher{ring: r, interval: interval}
}

// Run polls until ctx ends. A failed reload is logged once per distinct
// error and retried on the next tick; the ring keeps its keys meanwhile.
func (w *RingWatcher) Run(ctx context.Context) error {
	if w.ring.dir == "" {
		return nil
	}
	path := filepath.Join(w.ring.dir, RingFileName)
	tick := time.NewTicker(w.interval)
	defer tick.Stop()
	var last os.FileInfo // every write renames a new file into place; hand edits change mtime
	var lastErr string
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		st, err := os.Stat(path)
		if err == nil && last != nil && os.SameFile(st, last) && st.ModTime().Equal(last.ModTime()) && st.Size() == last.Size() {
			continue
		}
		changed := false
		if err == nil {
			changed, err = w.ring.Reload()
		}
		if err != nil {
			if err.Error() != lastErr {
				slog.Error("key ring reload failed; keeping the current keys", "dir", w.ring.dir, "active_kid", w.ring.ActiveKID(), "err", err)
				lastErr = err.Error()
			}
			continue
		}
		last, lastErr = st, ""
		if changed {
			slog.Info("key ring reloaded", "dir", w.ring.dir, "active_kid", w.ring.ActiveKID(), "alg", w.ring.ActiveAlg(), "keys", len(w.ring.JWKS().Keys))
		}
	}
}
