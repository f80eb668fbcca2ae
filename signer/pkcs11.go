package signer

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/certnode/certnode/schemas"
)

// Errors of the PKCS#11 signer.
var (
	// ErrHSMUnavailable wraps failures to load the module, find the token or
	// log in; the wrapped error says which.
	ErrHSMUnavailable = errors.New("HSM unavailable")
	// ErrKeyNotFound means no key pair with the label exists on the token.
	ErrKeyNotFound = errors.New("key not found on token")
	// ErrKeyExists refuses to create a second key with a label in use.
	ErrKeyExists = errors.New("a key with this label already exists on the token")
	// ErrBusy means every signing slot stayed taken for the whole wait.
	ErrBusy = errors.New("HSM signer busy")
)

// PKCS11Config configures the HSM client. The PIN is never taken from a
// flag: use PINFromEnv.
type PKCS11Config struct {
	Module     string // path to the PKCS#11 library
	TokenLabel string
	PIN        string
	// Signers bounds concurrent operations; each holds one session of the
	// pool while it runs.
	Signers int
	// PoolWaitTimeout bounds the wait for a free session.
	PoolWaitTimeout time.Duration
}

// Defaults for PKCS11Config.
const (
	DefaultSigners         = 8
	DefaultPoolWaitTimeout = 5 * time.Second
)

// LogValue keeps the PIN out of logs.
func (c PKCS11Config) LogValue() slog.Value {
	return slog.GroupValue(slog.String("module", c.Module), slog.String("token", c.TokenLabel),
		slog.Int("signers", c.Signers), slog.Duration("pool_wait_timeout", c.PoolWaitTimeout))
}

// Validate reports every problem at once.
func (c *PKCS11Config) Validate() error {
	var errs []error
	if c.Module == "" {
		errs = append(errs, errors.New("pkcs11: module path is required"))
	} else if _, err := os.Stat(c.Module); err != nil {
		errs = append(errs, fmt.Errorf("pkcs11: module %s: %w", c.Module, err))
	}
	if c.TokenLabel == "" {
		errs = append(errs, errors.New("pkcs11: token label is required"))
	}
	if c.PIN == "" {
		errs = append(errs, errors.New("pkcs11: PIN is required (CERTNODE_PKCS11_PIN or CERTNODE_PKCS11_PIN_FILE)"))
	}
	if c.Signers < 0 {
		errs = append(errs, errors.New("pkcs11: signers must be positive"))
	}
	if c.PoolWaitTimeout < 0 {
		errs = append(errs, errors.New("pkcs11: pool wait timeout must be positive"))
	}
	return errors.Join(errs...)
}

// PINFromEnv reads the PIN from CERTNODE_PKCS11_PIN, or from the file named
// by CERTNODE_PKCS11_PIN_FILE (trailing newline ignored).
func PINFromEnv() (string, error) {
	if pin := os.Getenv("CERTNODE_PKCS11_PIN"); pin != "" {
		return pin, nil
	}
	if f := os.Getenv("CERTNODE_PKCS11_PIN_FILE"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("read PIN file: %w", err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
	return "", errors.New("no PIN: set CERTNODE_PKCS11_PIN or CERTNODE_PKCS11_PIN_FILE")
}

// PKCS#11 3.0 names for Ed25519, which miekg/pkcs11 v1.1 does not define.
const (
	ckkECEdwards           = 0x40   // CKK_EC_EDWARDS
	ckmECEdwardsKeyPairGen = 0x1055 // CKM_EC_EDWARDS_KEY_PAIR_GEN
	ckmEdDSA               = 0x1057 // CKM_EDDSA
)

// DER of the CKA_EC_PARAMS that name the two curves: the OIDs of P-256
// (1.2.840.10045.3.1.7) and Ed25519 (1.3.101.112). Tokens may also name
// Ed25519 by the printable string "edwards25519" (PKCS#11 3.0).
var (
	paramsP256        = []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}
	paramsEd25519     = []byte{0x06, 0x03, 0x2b, 0x65, 0x70}
	paramsEd25519Name = append([]byte{0x13, 0x0c}, "edwards25519"...)
)

// HSM is a pooled client for one token, on miekg/pkcs11 directly: crypto11
// has no Ed25519 and does not share its sessions, so one pool here serves
// both algorithms with one login and one recovery path. At most Signers
// operations run at once, each on its own session, so a burst waits in Go
// instead of piling up inside the module. When the module reports a broken
// session or device, the sessions are reopened (logging in again) once and
// the call retried.
type HSM struct {
	cfg   PKCS11Config
	p     *pkcs11.Ctx
	slots chan struct{} // one per concurrent operation

	mu     sync.Mutex // guards the fields below
	gen    uint64     // bumped by every reopen; sessions and handles belong to one
	slot   uint
	idle   []pkcs11.SessionHandle // sessions of gen not in use
	keys   map[string]*hsmObject  // label -> key pair, for gen
	closed bool
}

// hsmObject is a key pair found on the token.
type hsmObject struct {
	priv pkcs11.ObjectHandle
	pub  crypto.PublicKey
	alg  string
}

// modules counts the HSM clients of each PKCS#11 library in this process:
// the library is initialised once per process and finalised when its last
// client closes, as C_Initialize and C_Finalize are process-wide.
var modules = struct {
	sync.Mutex
	m map[string]*moduleRef
}{m: map[string]*moduleRef{}}

type moduleRef struct {
	p    *pkcs11.Ctx
	refs int
}

func loadModule(path string) (*pkcs11.Ctx, error) {
	modules.Lock()
	defer modules.Unlock()
	if ref, ok := modules.m[path]; ok {
		ref.refs++
		return ref.p, nil
	}
	p := pkcs11.New(path)
	if p == nil {
		return nil, fmt.Errorf("%w: cannot load PKCS#11 module %s", ErrHSMUnavailable, path)
	}
	if err := initialize(p); err != nil {
		p.Destroy()
		return nil, fmt.Errorf("%w: initialize %s: %s", ErrHSMUnavailable, path, describeP11(err))
	}
	modules.m[path] = &moduleRef{p: p, refs: 1}
	return p, nil
}

func releaseModule(path string) {
	modules.Lock()
	defer modules.Unlock()
	ref := modules.m[path]
	if ref.refs--; ref.refs > 0 {
		return
	}
	delete(modules.m, path)
	_ = ref.p.Finalize()
	ref.p.Destroy()
}

// initialize tolerates a library another part of the process already set up.
func initialize(p *pkcs11.Ctx) error {
	if err := p.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		return err
	}
	return nil
}

// OpenHSM loads the module and logs into the token.
func OpenHSM(cfg PKCS11Config) (*HSM, error) {
	if cfg.Signers == 0 {
		cfg.Signers = DefaultSigners
	}
	if cfg.PoolWaitTimeout == 0 {
		cfg.PoolWaitTimeout = DefaultPoolWaitTimeout
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p, err := loadModule(cfg.Module)
	if err != nil {
		return nil, err
	}
	h := &HSM{cfg: cfg, p: p, slots: make(chan struct{}, cfg.Signers)}
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.connect(); err != nil {
		releaseModule(cfg.Module)
		return nil, fmt.Errorf("%w: %s", ErrHSMUnavailable, describeP11(err))
	}
	return h, nil
}

// connect finds the token and opens a logged-in session, starting a new
// generation; mu is held.
func (h *HSM) connect() error {
	if err := initialize(h.p); err != nil {
		return err
	}
	slots, err := h.p.GetSlotList(true)
	if err != nil {
		return err
	}
	found := false
	for _, s := range slots {
		if ti, err := h.p.GetTokenInfo(s); err == nil && ti.Label == h.cfg.TokenLabel {
			h.slot, found = s, true
			break
		}
	}
	if !found {
		return fmt.Errorf("token not found: no token labelled %q", h.cfg.TokenLabel)
	}
	s, err := h.p.OpenSession(h.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return err
	}
	// Logging in on one session logs the whole application in: sessions
	// opened later share it.
	if err := h.p.Login(s, pkcs11.CKU_USER, h.cfg.PIN); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
		_ = h.p.CloseSession(s)
		return err
	}
	h.idle, h.keys = append(h.idle[:0], s), map[string]*hsmObject{}
	h.gen++
	return nil
}

// describeP11 turns module errors into messages an operator can act on.
func describeP11(err error) string {
	var pe pkcs11.Error
	if errors.As(err, &pe) {
		switch pe {
		case pkcs11.CKR_PIN_INCORRECT:
			return "login failed: PIN incorrect"
		case pkcs11.CKR_PIN_LOCKED:
			return "login failed: PIN locked"
		}
	}
	return err.Error()
}

// recoverable lists module errors after which fresh sessions (a new login,
// new object handles) can succeed.
func recoverable(err error) bool {
	var pe pkcs11.Error
	if errors.As(err, &pe) {
		switch pe {
		case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED,
			pkcs11.CKR_USER_NOT_LOGGED_IN, pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_DEVICE_REMOVED,
			pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_KEY_HANDLE_INVALID,
			pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED,
			pkcs11.CKR_GENERAL_ERROR:
			return true
		}
	}
	return false
}

// reopen closes the sessions of generation gen and connects again, unless
// another caller already did.
func (h *HSM) reopen(gen uint64, cause error) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return errors.New("HSM client closed")
	}
	if h.gen != gen {
		return nil
	}
	slog.Warn("pkcs11: reopening HSM sessions", "cause", cause.Error(), "token", h.cfg.TokenLabel)
	for _, s := range h.idle {
		_ = h.p.CloseSession(s)
	}
	h.idle = h.idle[:0]
	return h.connect()
}

// with runs f on a session of the pool, waiting at most PoolWaitTimeout for
// one, and reopens and retries once when the module reports a recoverable
// error.
func (h *HSM) with(ctx context.Context, f func(s pkcs11.SessionHandle) error) error {
	wait := time.NewTimer(h.cfg.PoolWaitTimeout)
	defer wait.Stop()
	select {
	case h.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-wait.C:
		return fmt.Errorf("%w: no session free within %s", ErrBusy, h.cfg.PoolWaitTimeout)
	}
	defer func() { <-h.slots }()
	for attempt := 0; ; attempt++ {
		s, gen, err := h.session()
		if err == nil {
			err = f(s)
			h.release(s, gen, err)
		}
		if err == nil || attempt > 0 || !recoverable(err) {
			return err
		}
		if rerr := h.reopen(gen, err); rerr != nil {
			return fmt.Errorf("%w (recovery failed: %s)", err, describeP11(rerr))
		}
	}
}

// session takes an idle session or opens one; the caller holds a slot, so
// at most Signers sessions exist.
func (h *HSM) session() (pkcs11.SessionHandle, uint64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return 0, 0, errors.New("HSM client closed")
	}
	if n := len(h.idle); n > 0 {
		s := h.idle[n-1]
		h.idle = h.idle[:n-1]
		return s, h.gen, nil
	}
	s, err := h.p.OpenSession(h.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	return s, h.gen, err
}

// release returns a session to the pool, or closes it when it belongs to
// an older generation or failed in a way that may have broken it.
func (h *HSM) release(s pkcs11.SessionHandle, gen uint64, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed || gen != h.gen || recoverable(err) {
		_ = h.p.CloseSession(s)
		return
	}
	h.idle = append(h.idle, s)
}

// object returns the key pair labelled label, from the cache of the
// current generation or the token.
func (h *HSM) object(s pkcs11.SessionHandle, label string) (*hsmObject, error) {
	h.mu.Lock()
	o, ok := h.keys[label]
	h.mu.Unlock()
	if ok {
		return o, nil
	}
	privs, err := h.find(s, pkcs11.CKO_PRIVATE_KEY, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
	switch {
	case err != nil:
		return nil, err
	case len(privs) == 0:
		return nil, fmt.Errorf("%w: %q on token %q", ErrKeyNotFound, label, h.cfg.TokenLabel)
	case len(privs) > 1:
		// Signing with either would be a guess.
		return nil, fmt.Errorf("%d private keys are labelled %q; labels must be unique", len(privs), label)
	}
	o, err = h.pair(s, privs[0], label)
	if err != nil {
		return nil, fmt.Errorf("key %q: %w", label, err)
	}
	h.mu.Lock()
	h.keys[label] = o
	h.mu.Unlock()
	return o, nil
}

// pair reads the public half of the private key priv: the public key
// object with the same CKA_ID (or, lacking one, the same label).
func (h *HSM) pair(s pkcs11.SessionHandle, priv pkcs11.ObjectHandle, label string) (*hsmObject, error) {
	attrs, err := h.p.GetAttributeValue(s, priv, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil)})
	if err != nil {
		return nil, err
	}
	match := pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)
	if id := attrs[0].Value; len(id) > 0 {
		match = pkcs11.NewAttribute(pkcs11.CKA_ID, id)
	}
	pubs, err := h.find(s, pkcs11.CKO_PUBLIC_KEY, match)
	if err != nil {
		return nil, err
	}
	if len(pubs) != 1 {
		return nil, fmt.Errorf("%d public keys pair with it, want 1", len(pubs))
	}
	attrs, err = h.p.GetAttributeValue(s, pubs[0], []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil), pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrWrongKeyType, err)
	}
	pub, alg, err := decodePublic(attrs[0].Value, attrs[1].Value)
	if err != nil {
		return nil, err
	}
	return &hsmObject{priv: priv, pub: pub, alg: alg}, nil
}

// decodePublic reads CKA_EC_PARAMS and CKA_EC_POINT. Tokens give the
// point DER-wrapped in an OCTET STRING (as PKCS#11 says) or raw.
func decodePublic(params, point []byte) (crypto.PublicKey, string, error) {
	unwrap := func(n int) []byte {
		var inner []byte
		if len(point) != n {
			if rest, err := asn1.Unmarshal(point, &inner); err == nil && len(rest) == 0 {
				return inner
			}
		}
		return point
	}
	switch {
	case bytes.Equal(params, paramsP256):
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), unwrap(65))
		if err != nil {
			return nil, "", fmt.Errorf("EC point: %w", err)
		}
		return pub, schemas.AlgES256, nil
	case bytes.Equal(params, paramsEd25519), bytes.Equal(params, paramsEd25519Name):
		if x := unwrap(ed25519.PublicKeySize); len(x) == ed25519.PublicKeySize {
			return ed25519.PublicKey(bytes.Clone(x)), schemas.AlgEdDSA, nil
		}
		return nil, "", errors.New("Ed25519 point is not 32 bytes")
	}
	return nil, "", fmt.Errorf("%w: curve parameters %x", ErrWrongKeyType, params)
}

// find lists the objects of class matching one more attribute.
func (h *HSM) find(s pkcs11.SessionHandle, class uint, match *pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class)}
	if match != nil {
		tmpl = append(tmpl, match)
	}
	if err := h.p.FindObjectsInit(s, tmpl); err != nil {
		return nil, err
	}
	var out []pkcs11.ObjectHandle
	for {
		objs, _, err := h.p.FindObjects(s, 64)
		if err != nil {
			_ = h.p.FindObjectsFinal(s)
			return nil, err
		}
		if len(objs) == 0 {
			break
		}
		out = append(out, objs...)
	}
	return out, h.p.FindObjectsFinal(s)
}

// Key returns the key pair labelled label.
func (h *HSM) Key(label string) (*HSMKey, error) {
	var o *hsmObject
	err := h.with(context.Background(), func(s pkcs11.SessionHandle) (err error) {
		o, err = h.object(s, label)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &HSMKey{h: h, label: label, pub: o.pub, alg: o.alg}, nil
}

// GenerateKey creates a key pair for alg inside the token: sensitive and
// non-extractable, so its private half can sign but never leave.
func (h *HSM) GenerateKey(label, alg string) (*HSMKey, error) {
	if label == "" {
		return nil, errors.New("key label is required")
	}
	if err := CheckAlg(alg); err != nil {
		return nil, err
	}
	keyType, mech, params := uint(pkcs11.CKK_EC), uint(pkcs11.CKM_EC_KEY_PAIR_GEN), paramsP256
	if alg == schemas.AlgEdDSA {
		keyType, mech, params = ckkECEdwards, ckmECEdwardsKeyPairGen, paramsEd25519
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	// Both halves live on the token under one label and CKA_ID, which is
	// how the public half is found again.
	tmpl := func(class uint, extra ...*pkcs11.Attribute) []*pkcs11.Attribute {
		return append([]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		}, extra...)
	}
	pubTmpl := tmpl(pkcs11.CKO_PUBLIC_KEY,
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params))
	privTmpl := tmpl(pkcs11.CKO_PRIVATE_KEY,
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false))
	err := h.with(context.Background(), func(s pkcs11.SessionHandle) error {
		existing, err := h.find(s, pkcs11.CKO_PRIVATE_KEY, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
		if err != nil {
			return err
		}
		if len(existing) > 0 {
			return fmt.Errorf("%w: %q", ErrKeyExists, label)
		}
		_, _, err = h.p.GenerateKeyPair(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, pubTmpl, privTmpl)
		if err != nil {
			return fmt.Errorf("generate %s key: %w", alg, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return h.Key(label)
}

// KeyInfo describes one key pair on the token.
type KeyInfo struct {
	Label string `json:"label"`
	Kid   string `json:"kid,omitempty"`
	Type  string `json:"type"`
}

// ListKeys lists the private keys on the token with their public halves'
// kids; keys CertNode cannot use are listed with the reason as their type.
func (h *HSM) ListKeys() ([]KeyInfo, error) {
	var out []KeyInfo
	err := h.with(context.Background(), func(s pkcs11.SessionHandle) error {
		out = out[:0]
		privs, err := h.find(s, pkcs11.CKO_PRIVATE_KEY, nil)
		if err != nil {
			return err
		}
		for _, priv := range privs {
			attrs, err := h.p.GetAttributeValue(s, priv, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)})
			if err != nil {
				return err
			}
			info := KeyInfo{Label: string(attrs[0].Value)}
			o, err := h.pair(s, priv, info.Label)
			switch {
			case err != nil:
				info.Type = "unusable: " + err.Error()
			case o.alg == schemas.AlgEdDSA:
				info.Type = "Ed25519"
			default:
				info.Type = "EC P-256"
			}
			if err == nil {
				if jwk, err := schemas.NewJWK(o.pub); err == nil {
					info.Kid = jwk.Kid
				}
			}
			out = append(out, info)
		}
		return nil
	})
	return out, err
}

// InUse is how many operations hold a session now, and Capacity the
// sessions there can be: the pool's use, for metrics.
func (h *HSM) InUse() int    { return len(h.slots) }
func (h *HSM) Capacity() int { return cap(h.slots) }

// Close waits for operations in flight, closes the sessions and releases
// the module (finalised when no other client in the process uses it).
func (h *HSM) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true // operations not yet running fail from now on
	h.mu.Unlock()
	// Running ones end and close their sessions; a hung token does not
	// hold shutdown for more than the pool's wait.
	wait := time.NewTimer(h.cfg.PoolWaitTimeout)
	defer wait.Stop()
drain:
	for i := 0; i < cap(h.slots); i++ {
		select {
		case h.slots <- struct{}{}:
		case <-wait.C:
			break drain
		}
	}
	h.mu.Lock()
	for _, s := range h.idle {
		_ = h.p.CloseSession(s)
	}
	h.idle = nil
	h.mu.Unlock()
	releaseModule(h.cfg.Module)
	return nil
}

// HSMKey is a key pair on the token, usable as a Key.
type HSMKey struct {
	h     *HSM
	label string
	pub   crypto.PublicKey
	alg   string
}

// Public returns the public key.
func (k *HSMKey) Public() crypto.PublicKey { return k.pub }

// Sign signs a JWS signing input inside the HSM: CKM_ECDSA over its
// SHA-256 (the token returns r||s) or CKM_EDDSA over the input itself.
func (k *HSMKey) Sign(ctx context.Context, input []byte) ([]byte, error) {
	mech, msg := uint(pkcs11.CKM_ECDSA), input
	if k.alg == schemas.AlgEdDSA {
		mech = ckmEdDSA
	} else {
		d := sha256.Sum256(input)
		msg = d[:]
	}
	var sig []byte
	err := k.h.with(ctx, func(s pkcs11.SessionHandle) error {
		o, err := k.h.object(s, k.label)
		if err != nil {
			return err
		}
		if err := k.h.p.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, o.priv); err != nil {
			return err
		}
		sig, err = k.h.p.Sign(s, msg)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pkcs11 sign with %q: %w", k.label, err)
	}
	if len(sig) != 64 {
		return nil, fmt.Errorf("pkcs11 sign with %q: the token returned %d bytes, want 64", k.label, len(sig))
	}
	return sig, nil
}
