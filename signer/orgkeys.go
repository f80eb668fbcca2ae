package signer

import (
	"context"
	"crypto"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/certnode/certnode/schemas"
)

// Organizations' own signing keys. The coordinator lists them (public data
// and where each private half is, in the key ring's source notation);
// OrgKeys signs an organization's requests with its active key, and
// OrgKeyMaker makes the keys the coordinator asks for.

// OrgKeyDirectory lists organizations' own keys: the coordinator's
// replica.
type OrgKeyDirectory interface {
	OrgKeyRing(org string) *schemas.OrgKeyRing // nil: the organization has none
	OrgKeyRings() []*schemas.OrgKeyRing
	KidOrg(kid string) (string, bool)
}

// ErrOrgKeyUnavailable means an organization's active key cannot be used
// here now (its HSM object not found yet, the token unreachable): the
// request must wait, never be signed with another key.
var ErrOrgKeyUnavailable = errors.New("the organization's signing key cannot be used here")

// OrgKeysConfig says where organizations' keys are listed and how their
// private halves are reached.
type OrgKeysConfig struct {
	Directory OrgKeyDirectory
	// Service publishes the service's keys beside an organization's.
	Service *Ring
	// Dir is the key ring directory of file: keys; HSM opens the token of
	// pkcs11: keys (nil: this process has none). Neither: publish only.
	Dir string
	HSM func() (*HSM, error)
	// Now is the clock that decides which key is active (nil: time.Now).
	Now func() time.Time
}

// OrgKeys signs with and publishes organizations' own keys. Opened keys
// are kept by kid; Run opens each organization's coming and active keys
// ahead of need, so a key that activates finds every worker ready.
type OrgKeys struct {
	cfg OrgKeysConfig
	mu  sync.Mutex
	// keys are the opened private halves, by kid.
	keys map[string]Key
	// failed remembers the last error of each kid that would not open,
	// logged once.
	failed map[string]string
}

// NewOrgKeys checks cfg.
func NewOrgKeys(cfg OrgKeysConfig) (*OrgKeys, error) {
	if cfg.Directory == nil || cfg.Service == nil {
		return nil, errors.New("organization keys: a directory and the service's ring are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &OrgKeys{cfg: cfg, keys: map[string]Key{}, failed: map[string]string{}}, nil
}

// Sign signs payload with the organization's active key. ok is false when
// the organization has no active key: the caller signs with the
// service's. An error wrapping ErrOrgKeyUnavailable means it has one that
// cannot be used here now: the caller retries, and signs with no other.
func (o *OrgKeys) Sign(ctx context.Context, org string, payload []byte) (rc *schemas.Receipt, ok bool, err error) {
	ring := o.cfg.Directory.OrgKeyRing(org)
	if ring == nil {
		return nil, false, nil
	}
	k, ok := ring.Active(o.cfg.Now())
	if !ok {
		return nil, false, nil
	}
	key, err := o.open(k)
	if err != nil {
		return nil, true, err
	}
	u, err := schemas.NewUnsigned(k.JWK.KeyAlg(), k.Kid, payload)
	if err != nil {
		return nil, true, err
	}
	sig, err := key.Sign(ctx, u.Input())
	if err != nil {
		return nil, true, fmt.Errorf("%w: organization %s, key %s: %w", ErrOrgKeyUnavailable, org, k.Kid, err)
	}
	rc, err = u.Complete(sig)
	return rc, true, err
}

// open returns the private half of k, opening it on first use.
func (o *OrgKeys) open(k schemas.OrgKey) (Key, error) {
	o.mu.Lock()
	key := o.keys[k.Kid]
	o.mu.Unlock()
	if key != nil {
		return key, nil
	}
	if o.cfg.Dir == "" && o.cfg.HSM == nil {
		return nil, fmt.Errorf("%w: key %s (%s): this process has no key ring directory or HSM", ErrOrgKeyUnavailable, k.Kid, k.Source)
	}
	key, err := openRingKey(o.cfg.Dir, RingKey{Kid: k.Kid, Source: k.Source}, o.cfg.HSM)
	o.mu.Lock()
	defer o.mu.Unlock()
	if err != nil {
		if msg := err.Error(); o.failed[k.Kid] != msg {
			o.failed[k.Kid] = msg
			slog.Error("an organization's signing key does not open; its requests wait", "kid", k.Kid, "source", k.Source, "err", err)
		}
		return nil, fmt.Errorf("%w: %w", ErrOrgKeyUnavailable, err)
	}
	delete(o.failed, k.Kid)
	o.keys[k.Kid] = key
	return key, nil
}

// KeySet verifies receipts of the organization's own keys (nil: none).
func (o *OrgKeys) KeySet(org string) *schemas.KeySet {
	if ring := o.cfg.Directory.OrgKeyRing(org); ring != nil {
		return ring.KeySet()
	}
	return nil
}

// KidOrg names the organization whose own key kid is.
func (o *OrgKeys) KidOrg(kid string) (string, bool) { return o.cfg.Directory.KidOrg(kid) }

// JWKS is what verifies an organization's receipts: its own keys (the
// active one first, each marked with "org"), then the service's, which
// signed its receipts before it had keys of its own (and signs them
// again if it turns its keys off).
func (o *OrgKeys) JWKS(org string) schemas.JWKS {
	var out schemas.JWKS
	if ring := o.cfg.Directory.OrgKeyRing(org); ring != nil {
		out.Keys = ring.JWKS(o.cfg.Now())
	}
	out.Keys = append(out.Keys, o.cfg.Service.JWKS().Keys...)
	return out
}

// Run opens, every interval, the keys that sign or will (so a worker is
// ready before a key activates), and forgets the retired ones.
func (o *OrgKeys) Run(ctx context.Context, interval time.Duration) error {
	if o.cfg.Dir == "" && o.cfg.HSM == nil {
		return nil
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		o.prefetch()
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func (o *OrgKeys) prefetch() {
	now := o.cfg.Now()
	keep := map[string]bool{}
	for _, ring := range o.cfg.Directory.OrgKeyRings() {
		for _, k := range ring.Keys {
			if k.State(now) != schemas.OrgKeyRetired {
				keep[k.Kid] = true
				o.open(k) // a failure is logged; Sign tries again
			}
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for kid := range o.keys {
		if !keep[kid] {
			delete(o.keys, kid)
		}
	}
}

// OrgKeyRequests are the coordinator's requests for keys, and where a made
// key is reported: the coordinator's replica.
type OrgKeyRequests interface {
	PendingOrgKeys() []schemas.OrgKeyRequest
	// InstallOrgKey reports a key; installed false with no error: another
	// worker's key was installed (or the request is gone).
	InstallOrgKey(ctx context.Context, org, request string, key schemas.OrgKey) (installed bool, err error)
}

// OrgKeyStore makes organizations' keys and destroys the ones not
// installed: in the HSM, or (development) as files in a key ring
// directory.
type OrgKeyStore struct {
	// Dir holds file: keys; HSM, when set, makes pkcs11: keys instead.
	Dir string
	HSM func() (*HSM, error)
}

// Make makes a key for org and names its source. An HSM key is sensitive
// and never extractable, labelled certnode-org-<org>-<kid prefix>.
func (st OrgKeyStore) Make(org, alg string) (crypto.PublicKey, string, error) {
	if st.HSM == nil {
		s, err := GenerateSoftware(alg)
		if err != nil {
			return nil, "", err
		}
		jwk, err := schemas.NewJWK(s.Public())
		if err != nil {
			return nil, "", err
		}
		name := "org-" + org + "-" + jwk.Kid + ".pem"
		if err := os.MkdirAll(st.Dir, 0o755); err != nil {
			return nil, "", err
		}
		if err := s.WritePEM(filepath.Join(st.Dir, name)); err != nil {
			return nil, "", err
		}
		return s.Public(), sourceFile + name, nil
	}
	h, err := st.HSM()
	if err != nil {
		return nil, "", err
	}
	// The kid is known once the token made the key: it is made under a
	// label of its own, then given the one naming its organization and kid.
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, "", err
	}
	tmp := "certnode-org-new-" + hex.EncodeToString(b[:])
	k, err := h.GenerateKey(tmp, alg)
	if err != nil {
		return nil, "", err
	}
	jwk, err := schemas.NewJWK(k.Public())
	if err != nil {
		return nil, "", errors.Join(err, h.DestroyKey(tmp))
	}
	label := OrgKeyLabel(org, jwk.Kid)
	if err := h.Relabel(tmp, label); err != nil {
		return nil, "", errors.Join(err, h.DestroyKey(tmp))
	}
	return k.Public(), sourcePKCS11 + label, nil
}

// OrgKeyLabel is the HSM label of an organization's key.
func OrgKeyLabel(org, kid string) string {
	return "certnode-org-" + org + "-" + kid[:min(16, len(kid))]
}

// Destroy removes a key Make made.
func (st OrgKeyStore) Destroy(source string) error {
	kind, ref, err := splitSource(source)
	if err != nil {
		return err
	}
	if kind == sourceFile {
		return os.Remove(filepath.Join(st.Dir, ref))
	}
	if st.HSM == nil {
		return fmt.Errorf("key %s: no HSM configured", source)
	}
	h, err := st.HSM()
	if err != nil {
		return err
	}
	return h.DestroyKey(ref)
}

// OrgKeyMaker answers the coordinator's requests for organizations' keys.
// Every worker with a maker sees a request; each waits a random moment
// (up to Spread) and makes a key only if the request is still pending, so
// usually one does. The first report installs; a worker whose report is
// refused destroys its key, so no unused key is left in the HSM.
type OrgKeyMaker struct {
	requests OrgKeyRequests
	store    interface {
		Make(org, alg string) (crypto.PublicKey, string, error)
		Destroy(source string) error
	}
	interval, spread time.Duration
	log              *slog.Logger
	// due is when each request seen may be answered here; made holds the
	// keys made and not known installed or destroyed, by request.
	due  map[string]time.Time
	made map[string]madeKey
}

// madeKey is a key made for an organization's request.
type madeKey struct {
	org string
	key schemas.OrgKey
}

// NewOrgKeyMaker polls requests every interval.
func NewOrgKeyMaker(requests OrgKeyRequests, store OrgKeyStore, interval, spread time.Duration) *OrgKeyMaker {
	return &OrgKeyMaker{requests: requests, store: store, interval: interval, spread: spread,
		log: slog.With("role", "org-key-maker"), due: map[string]time.Time{}, made: map[string]madeKey{}}
}

// Run answers requests until ctx ends.
func (m *OrgKeyMaker) Run(ctx context.Context) error {
	tick := time.NewTicker(m.interval)
	defer tick.Stop()
	for {
		m.Step(ctx, time.Now())
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// Step does one round: reports the keys made and not yet reported, and
// makes keys for the pending requests due at now.
func (m *OrgKeyMaker) Step(ctx context.Context, now time.Time) {
	pending := map[string]schemas.OrgKeyRequest{}
	for _, r := range m.requests.PendingOrgKeys() {
		pending[r.ID] = r
	}
	for _, mk := range m.made {
		m.report(ctx, mk)
	}
	for id := range m.due {
		if _, ok := pending[id]; !ok {
			delete(m.due, id)
		}
	}
	for id, r := range pending {
		if _, ok := m.made[id]; ok {
			continue
		}
		due, seen := m.due[id]
		if !seen {
			due = now
			if m.spread > 0 {
				if n, err := rand.Int(rand.Reader, big.NewInt(int64(m.spread))); err == nil {
					due = now.Add(time.Duration(n.Int64()))
				}
			}
			m.due[id] = due
		}
		if now.Before(due) || ctx.Err() != nil {
			continue
		}
		pub, source, err := m.store.Make(r.Org, r.Alg)
		if err != nil {
			m.log.Error("could not make an organization's signing key; retrying", "org", r.Org, "request", id, "alg", r.Alg, "err", err)
			continue
		}
		jwk, err := schemas.NewJWK(pub)
		if err != nil {
			m.log.Error("the new key has no JWK", "org", r.Org, "err", err)
			continue
		}
		mk := madeKey{org: r.Org, key: schemas.OrgKey{Kid: jwk.Kid, JWK: jwk, Source: source, Request: id}}
		m.made[id] = mk
		m.log.Info("made an organization's signing key", "org", r.Org, "request", id, "kid", jwk.Kid, "source", source)
		m.report(ctx, mk)
	}
}

// report reports a made key. Installed or refused, it is done with; an
// error leaves it for the next round (the report is idempotent).
func (m *OrgKeyMaker) report(ctx context.Context, mk madeKey) {
	org, key := mk.org, mk.key
	installed, err := m.requests.InstallOrgKey(ctx, org, key.Request, key)
	switch {
	case err != nil:
		m.log.Warn("could not report an organization's signing key; retrying", "org", org, "kid", key.Kid, "err", err)
		return
	case installed:
		m.log.Info("installed an organization's signing key", "org", org, "kid", key.Kid)
	default:
		if err := m.store.Destroy(key.Source); err != nil {
			m.log.Error("could not destroy a signing key another worker's report superseded", "org", org, "kid", key.Kid, "source", key.Source, "err", err)
			return
		}
		m.log.Info("another worker's key was installed; destroyed this one", "org", org, "kid", key.Kid, "source", key.Source)
	}
	delete(m.made, key.Request)
}

// pairHandles finds the key pair labelled label: its private half, then
// its public half (by CKA_ID, else by label).
func (h *HSM) pairHandles(s session, label string) ([]pkcs11.ObjectHandle, error) {
	priv, err := h.private(s, label)
	if err != nil {
		return nil, err
	}
	pubs, err := h.publicHalves(s, priv, label)
	if err != nil {
		return nil, err
	}
	return append([]pkcs11.ObjectHandle{priv}, pubs...), nil
}

// forget drops a label's cached handles.
func (h *HSM) forget(label string) {
	h.mu.Lock()
	delete(h.keys, label)
	h.mu.Unlock()
}

// DestroyKey deletes the key pair labelled label from the token.
func (h *HSM) DestroyKey(label string) error {
	defer h.forget(label)
	return h.with(context.Background(), func(s session) error {
		objs, err := h.pairHandles(s, label)
		if err != nil {
			return err
		}
		for _, o := range objs {
			if err := h.mod.p.DestroyObject(s.h, o); err != nil {
				return fmt.Errorf("destroy %q: %w", label, err)
			}
		}
		return nil
	})
}

// Relabel gives the key pair labelled from the label to, which no key
// may have.
func (h *HSM) Relabel(from, to string) error {
	defer h.forget(from)
	return h.with(context.Background(), func(s session) error {
		taken, err := h.find(s, pkcs11.CKO_PRIVATE_KEY, pkcs11.NewAttribute(pkcs11.CKA_LABEL, to))
		if err != nil {
			return err
		}
		if len(taken) > 0 {
			return fmt.Errorf("%w: %q", ErrKeyExists, to)
		}
		objs, err := h.pairHandles(s, from)
		if err != nil {
			return err
		}
		for _, o := range objs {
			if err := h.mod.p.SetAttributeValue(s.h, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, to)}); err != nil {
				return fmt.Errorf("relabel %q: %w", from, err)
			}
		}
		return nil
	})
}

// KeyProtection is how the token guards a private key.
type KeyProtection struct {
	Sensitive        bool `json:"sensitive"`         // CKA_SENSITIVE: its value is never revealed
	Extractable      bool `json:"extractable"`       // CKA_EXTRACTABLE: it may be wrapped out
	AlwaysSensitive  bool `json:"always_sensitive"`  // CKA_ALWAYS_SENSITIVE
	NeverExtractable bool `json:"never_extractable"` // CKA_NEVER_EXTRACTABLE
}

// Protection reads the protection attributes of the private key labelled
// label, as the token reports them.
func (h *HSM) Protection(label string) (KeyProtection, error) {
	var p KeyProtection
	err := h.with(context.Background(), func(s session) error {
		objs, err := h.pairHandles(s, label)
		if err != nil {
			return err
		}
		attrs, err := h.mod.p.GetAttributeValue(s.h, objs[0], []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_ALWAYS_SENSITIVE, nil), pkcs11.NewAttribute(pkcs11.CKA_NEVER_EXTRACTABLE, nil)})
		if err != nil {
			return err
		}
		b := func(a *pkcs11.Attribute) bool { return len(a.Value) == 1 && a.Value[0] != 0 }
		p = KeyProtection{Sensitive: b(attrs[0]), Extractable: b(attrs[1]), AlwaysSensitive: b(attrs[2]), NeverExtractable: b(attrs[3])}
		return nil
	})
	return p, err
}
