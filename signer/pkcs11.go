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
	"crypto/subtle"
	"encoding/asn1"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/certnode/certnode/internal/envsecret"
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
	// ErrKeyReplaced means the token now holds another key under a label
	// this process opened: signing with it would issue receipts that do
	// not verify under the published key.
	ErrKeyReplaced = errors.New("the key under this label was replaced on the token")
	// ErrClosed is returned by operations on a closed client.
	ErrClosed = errors.New("HSM client closed")
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

// String and GoString keep the PIN out of fmt output (%v, %+v, %#v).
func (c PKCS11Config) String() string {
	return fmt.Sprintf("{Module:%s TokenLabel:%s PIN:<redacted> Signers:%d PoolWaitTimeout:%s}", c.Module, c.TokenLabel, c.Signers, c.PoolWaitTimeout)
}
func (c PKCS11Config) GoString() string { return "signer.PKCS11Config" + c.String() }

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
	pin, ok, err := envsecret.Read("CERTNODE_PKCS11_PIN")
	switch {
	case err != nil:
		return "", fmt.Errorf("read PIN: %w", err)
	case !ok:
		return "", errors.New("no PIN: set CERTNODE_PKCS11_PIN or CERTNODE_PKCS11_PIN_FILE")
	}
	return strings.TrimRight(pin, "\r\n"), nil
}

// PKCS#11 3.0 names for Ed25519, which miekg/pkcs11 v1.1 does not define.
const (
	ckkECEdwards           = 0x40   // CKK_EC_EDWARDS
	ckmECEdwardsKeyPairGen = 0x1055 // CKM_EC_EDWARDS_KEY_PAIR_GEN
	ckmEdDSA               = 0x1057 // CKM_EDDSA
)

// DER of the CKA_EC_PARAMS that name the two curves: the OIDs of P-256
// (1.2.840.10045.3.1.7) and Ed25519 (1.3.101.112). Tokens may also name
// Ed25519 by the printable string "edwards25519" (PKCS#11 3.0) or by the
// older GnuPG OID 1.3.6.1.4.1.11591.15.1 (OpenSC and older tokens).
var (
	paramsP256         = []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}
	paramsEd25519      = []byte{0x06, 0x03, 0x2b, 0x65, 0x70}
	paramsEd25519Name  = append([]byte{0x13, 0x0c}, "edwards25519"...)
	paramsEd25519GnuPG = []byte{0x06, 0x09, 0x2b, 0x06, 0x01, 0x04, 0x01, 0xda, 0x47, 0x0f, 0x01}
)

// HSM is a pooled client for one token, on miekg/pkcs11 directly: crypto11
// has no Ed25519 and does not share its sessions, so one pool here serves
// both algorithms with one login and one recovery path. At most Signers
// operations run at once, each on its own session, so a burst waits in Go
// instead of piling up inside the module. When the module reports a broken
// session or device, the sessions are reopened (logging in again) and the
// call retried once; a login refused for its PIN is never retried, as a
// token locks a PIN after a few wrong attempts.
type HSM struct {
	cfg   PKCS11Config  // with the PIN cleared
	pin   func() string // a closure, so printing an HSM cannot show the PIN
	mod   *moduleRef
	slots chan struct{} // one per concurrent operation

	closed   atomic.Bool
	closing  chan struct{} // closed by Close: callers waiting for a slot stop waiting
	reopenMu sync.Mutex    // one reconnection at a time

	// mu guards the fields below. It is never held across a call into the
	// module, so a hung token cannot block Close or other callers on it.
	mu   sync.Mutex
	gen  uint64 // bumped by every reconnection; sessions and handles belong to one
	slot uint
	// anchor is the session that logged in. It stays open for the whole
	// generation: closing an application's last session logs it out, and
	// operation sessions are closed freely.
	anchor   pkcs11.SessionHandle
	idle     []pkcs11.SessionHandle // sessions of gen not in use
	keys     map[string]*hsmObject  // label -> key pair, for gen
	failedAt time.Time              // last failed reconnection, for backoff
	failErr  error
	pinErr   error // a login refused for its PIN: final
}

// reopenBackoff spaces reconnection attempts to a failing token.
const reopenBackoff = time.Second

// errTokenNotFound: no slot holds a token with the configured label.
var errTokenNotFound = errors.New("token not found")

// A token missing at start is looked for again, for a bounded time: SoftHSM2
// reads its tokens once, in C_Initialize, and leaves out for the life of the
// process one it reads while another process writes it (SoftHSMv2#757); a
// network HSM may also list a token late after it comes up.
const (
	tokenRescans    = 8
	tokenRescanWait = 250 * time.Millisecond
)

// hsmObject is a key pair found on the token.
type hsmObject struct {
	priv pkcs11.ObjectHandle
	pub  crypto.PublicKey
	alg  string
}

// session is a pooled session and the generation it belongs to.
type session struct {
	h   pkcs11.SessionHandle
	gen uint64
}

// modules holds the PKCS#11 libraries loaded in this process, by real
// path: C_Initialize and C_Finalize are process-wide, so a library is
// finalised when its last client closes, and only when this package
// initialised it (not when another part of the process had).
var modules = struct {
	sync.Mutex
	m map[string]*moduleRef
}{m: map[string]*moduleRef{}}

type moduleRef struct {
	path  string
	p     *pkcs11.Ctx
	refs  int
	owned bool                // our C_Initialize succeeded
	pins  map[string][32]byte // token label -> SHA-256 of the PIN that logged it in
}

func loadModule(path string) (*moduleRef, error) {
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	modules.Lock()
	defer modules.Unlock()
	if ref, ok := modules.m[path]; ok {
		ref.refs++
		return ref, nil
	}
	p := pkcs11.New(path)
	if p == nil {
		return nil, fmt.Errorf("%w: cannot load PKCS#11 module %s", ErrHSMUnavailable, path)
	}
	ref := &moduleRef{path: path, p: p, refs: 1, pins: map[string][32]byte{}}
	if err := ref.initializeLocked(); err != nil {
		p.Destroy()
		return nil, fmt.Errorf("%w: initialize %s: %s", ErrHSMUnavailable, path, describeP11(err))
	}
	modules.m[path] = ref
	return ref, nil
}

// initialize (re)initialises the library, tolerating one that is set up.
func (m *moduleRef) initialize() error {
	modules.Lock()
	defer modules.Unlock()
	return m.initializeLocked()
}

func (m *moduleRef) initializeLocked() error {
	err := m.p.Initialize()
	switch {
	case err == nil:
		m.owned = true
	case errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)):
		err = nil
	}
	return err
}

// rescan re-initialises the library so that it reads its tokens again, when
// nothing else in the process uses it (C_Finalize would pull the sessions
// from under another client). It reports whether it did.
func (m *moduleRef) rescan() bool {
	modules.Lock()
	defer modules.Unlock()
	if m.refs != 1 || !m.owned {
		return false
	}
	_ = m.p.Finalize()
	m.owned = false
	return m.initializeLocked() == nil
}

func (m *moduleRef) release() {
	modules.Lock()
	defer modules.Unlock()
	if m.refs--; m.refs > 0 {
		return
	}
	delete(modules.m, m.path)
	if m.owned {
		_ = m.p.Finalize()
	}
	m.p.Destroy()
}

// login logs the application into the token on s. Logging in on one
// session logs in every session of the process, so a second client finds
// the token logged in already: its PIN is then checked against the one
// that logged in, so a wrong PIN never gets a working client.
func (m *moduleRef) login(s pkcs11.SessionHandle, token, pin string) error {
	sum := sha256.Sum256([]byte(pin))
	err := m.p.Login(s, pkcs11.CKU_USER, pin)
	modules.Lock()
	defer modules.Unlock()
	switch {
	case err == nil:
		m.pins[token] = sum
	case errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)):
		if known, ok := m.pins[token]; ok && subtle.ConstantTimeCompare(known[:], sum[:]) != 1 {
			return pkcs11.Error(pkcs11.CKR_PIN_INCORRECT)
		}
		err = nil
	}
	return err
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
	mod, err := loadModule(cfg.Module)
	if err != nil {
		return nil, err
	}
	pin := cfg.PIN
	cfg.PIN = ""
	h := &HSM{cfg: cfg, pin: func() string { return pin }, mod: mod, slots: make(chan struct{}, cfg.Signers), closing: make(chan struct{})}
	slot, s, err := h.connect()
	for i := 0; errors.Is(err, errTokenNotFound) && i < tokenRescans; i++ {
		time.Sleep(tokenRescanWait)
		if !mod.rescan() {
			break
		}
		slot, s, err = h.connect()
	}
	if err != nil {
		mod.release()
		return nil, fmt.Errorf("%w: %s", ErrHSMUnavailable, describeP11(err))
	}
	h.install(slot, s)
	return h, nil
}

// connect finds the token and opens a logged-in session.
func (h *HSM) connect() (uint, pkcs11.SessionHandle, error) {
	p := h.mod.p
	if err := h.mod.initialize(); err != nil {
		return 0, 0, err
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		return 0, 0, err
	}
	for _, slot := range slots {
		if ti, err := p.GetTokenInfo(slot); err != nil || ti.Label != h.cfg.TokenLabel {
			continue
		}
		s, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return 0, 0, err
		}
		if err := h.mod.login(s, h.cfg.TokenLabel, h.pin()); err != nil {
			_ = p.CloseSession(s)
			return 0, 0, err
		}
		return slot, s, nil
	}
	return 0, 0, fmt.Errorf("%w: no token labelled %q", errTokenNotFound, h.cfg.TokenLabel)
}

// install starts a new generation on a freshly logged-in session.
func (h *HSM) install(slot uint, anchor pkcs11.SessionHandle) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gen++
	h.slot, h.anchor, h.idle, h.keys = slot, anchor, nil, map[string]*hsmObject{}
	h.failedAt, h.failErr = time.Time{}, nil
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
		case pkcs11.CKR_PIN_EXPIRED:
			return "login failed: PIN expired"
		}
	}
	return err.Error()
}

// pinRefused reports a login refused for its PIN: retrying it would only
// bring the token closer to locking the PIN.
func pinRefused(err error) bool {
	var pe pkcs11.Error
	if errors.As(err, &pe) {
		switch pe {
		case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_LOCKED, pkcs11.CKR_PIN_EXPIRED,
			pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE:
			return true
		}
	}
	return false
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

// reopen closes the idle sessions of generation gen and connects again,
// unless another caller already did. A failed reconnection is not tried
// again for reopenBackoff, and one refused for its PIN never is.
func (h *HSM) reopen(gen uint64, cause error) error {
	h.reopenMu.Lock()
	defer h.reopenMu.Unlock()
	if h.closed.Load() {
		return ErrClosed
	}
	h.mu.Lock()
	switch {
	case h.gen != gen:
		h.mu.Unlock()
		return nil
	case h.pinErr != nil:
		err := h.pinErr
		h.mu.Unlock()
		return err
	case time.Since(h.failedAt) < reopenBackoff:
		err := h.failErr
		h.mu.Unlock()
		return err
	}
	old := append(h.idle, h.anchor)
	h.idle, h.keys = nil, map[string]*hsmObject{} // no handle of the broken generation is used again
	h.mu.Unlock()
	for _, s := range old {
		_ = h.mod.p.CloseSession(s)
	}
	slog.Warn("pkcs11: reopening HSM sessions", "cause", cause.Error(), "token", h.cfg.TokenLabel)
	slot, s, err := h.connect()
	if err == nil {
		h.install(slot, s)
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.failedAt, h.failErr = time.Now(), fmt.Errorf("%s", describeP11(err))
	if pinRefused(err) {
		h.pinErr = fmt.Errorf("%s; not logging in again until restart, so the token does not lock the PIN", describeP11(err))
		slog.Error("pkcs11: login refused; the HSM client stops logging in", "token", h.cfg.TokenLabel, "err", describeP11(err))
		return h.pinErr
	}
	return h.failErr
}

// with runs f on a session of the pool, waiting at most PoolWaitTimeout for
// one, and reopens and retries once when the module reports a recoverable
// error.
func (h *HSM) with(ctx context.Context, f func(s session) error) error {
	if h.closed.Load() {
		return ErrClosed
	}
	wait := time.NewTimer(h.cfg.PoolWaitTimeout)
	defer wait.Stop()
	select {
	case h.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-h.closing:
		return ErrClosed
	case <-wait.C:
		return fmt.Errorf("%w: no session free within %s", ErrBusy, h.cfg.PoolWaitTimeout)
	}
	defer func() { <-h.slots }()
	for attempt := 0; ; attempt++ {
		if h.closed.Load() {
			return ErrClosed
		}
		s, err := h.session()
		if err == nil {
			err = f(s)
			h.release(s, err)
		}
		if err == nil || attempt > 0 || !recoverable(err) {
			return err
		}
		if rerr := h.reopen(s.gen, err); rerr != nil {
			return fmt.Errorf("%w (recovery failed: %w)", err, rerr)
		}
	}
}

// session takes an idle session or opens one; the caller holds a slot, so
// at most Signers sessions exist.
func (h *HSM) session() (session, error) {
	h.mu.Lock()
	s := session{gen: h.gen}
	if n := len(h.idle); n > 0 {
		s.h = h.idle[n-1]
		h.idle = h.idle[:n-1]
		h.mu.Unlock()
		return s, nil
	}
	slot := h.slot
	h.mu.Unlock()
	var err error
	s.h, err = h.mod.p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	return s, err
}

// release returns a session to the pool after a success. After any error
// it is closed: an operation left active on it would fail every later
// call, and opening a session is cheap.
func (h *HSM) release(s session, err error) {
	h.mu.Lock()
	keep := err == nil && s.gen == h.gen && !h.closed.Load()
	if keep {
		h.idle = append(h.idle, s.h)
	}
	h.mu.Unlock()
	if !keep {
		_ = h.mod.p.CloseSession(s.h)
	}
}

// object returns the key pair labelled label, from the cache of s's
// generation or the token.
func (h *HSM) object(s session, label string) (*hsmObject, error) {
	h.mu.Lock()
	o, ok := h.keys[label]
	cached := ok && s.gen == h.gen
	h.mu.Unlock()
	if cached {
		return o, nil
	}
	priv, err := h.private(s, label)
	if err != nil {
		return nil, err
	}
	o, err = h.pair(s, priv, label)
	if err != nil {
		return nil, fmt.Errorf("key %q: %w", label, err)
	}
	h.mu.Lock()
	if s.gen == h.gen { // a handle of an older generation is never cached
		h.keys[label] = o
	}
	h.mu.Unlock()
	return o, nil
}

// private finds the one private key labelled label.
func (h *HSM) private(s session, label string) (pkcs11.ObjectHandle, error) {
	// Checked first: a logged-out session sees no private key at all, and
	// a login by another caller meanwhile would make "not found" a lie.
	if err := h.loggedIn(s); err != nil {
		return 0, err
	}
	privs, err := h.find(s, pkcs11.CKO_PRIVATE_KEY, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
	switch {
	case err != nil:
		return 0, err
	case len(privs) == 0:
		return 0, fmt.Errorf("%w: %q on token %q", ErrKeyNotFound, label, h.cfg.TokenLabel)
	case len(privs) > 1:
		// Signing with either would be a guess.
		return 0, fmt.Errorf("%d private keys are labelled %q; labels must be unique", len(privs), label)
	}
	return privs[0], nil
}

// loggedIn fails with CKR_USER_NOT_LOGGED_IN (recoverable) when s is a
// public session: the token logged out (a reset, or another client closing
// every session), and private objects are invisible rather than refused.
func (h *HSM) loggedIn(s session) error {
	info, err := h.mod.p.GetSessionInfo(s.h)
	if err != nil {
		return err
	}
	if info.State == pkcs11.CKS_RO_PUBLIC_SESSION || info.State == pkcs11.CKS_RW_PUBLIC_SESSION {
		return pkcs11.Error(pkcs11.CKR_USER_NOT_LOGGED_IN)
	}
	return nil
}

// pair reads the public half of the private key priv: the public key
// object with the same CKA_ID, or the same label when there is none.
func (h *HSM) pair(s session, priv pkcs11.ObjectHandle, label string) (*hsmObject, error) {
	p := h.mod.p
	pubs, err := h.publicHalves(s, priv, label)
	if err != nil {
		return nil, err
	}
	if len(pubs) != 1 {
		return nil, fmt.Errorf("%d public keys pair with it, want 1", len(pubs))
	}
	attrs, err := p.GetAttributeValue(s.h, pubs[0], []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil), pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	if errors.Is(err, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_TYPE_INVALID)) {
		return nil, fmt.Errorf("%w: not an elliptic-curve key", ErrWrongKeyType)
	}
	if err != nil {
		return nil, err
	}
	pub, alg, err := decodePublic(attrs[0].Value, attrs[1].Value)
	if err != nil {
		return nil, err
	}
	return &hsmObject{priv: priv, pub: pub, alg: alg}, nil
}

// publicHalves finds the public key objects of the private key priv: the
// ones with its CKA_ID, or its label when there are none.
func (h *HSM) publicHalves(s session, priv pkcs11.ObjectHandle, label string) ([]pkcs11.ObjectHandle, error) {
	attrs, err := h.mod.p.GetAttributeValue(s.h, priv, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil)})
	if err != nil {
		return nil, err
	}
	var pubs []pkcs11.ObjectHandle
	if id := attrs[0].Value; len(id) > 0 {
		if pubs, err = h.find(s, pkcs11.CKO_PUBLIC_KEY, pkcs11.NewAttribute(pkcs11.CKA_ID, id)); err != nil {
			return nil, err
		}
	}
	if len(pubs) == 0 {
		pubs, err = h.find(s, pkcs11.CKO_PUBLIC_KEY, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
	}
	return pubs, err
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
	case bytes.Equal(params, paramsEd25519), bytes.Equal(params, paramsEd25519Name), bytes.Equal(params, paramsEd25519GnuPG):
		if x := unwrap(ed25519.PublicKeySize); len(x) == ed25519.PublicKeySize {
			return ed25519.PublicKey(bytes.Clone(x)), schemas.AlgEdDSA, nil
		}
		return nil, "", errors.New("Ed25519 point is not 32 bytes")
	}
	return nil, "", fmt.Errorf("%w: curve parameters %x", ErrWrongKeyType, params)
}

// find lists the objects of class matching one more attribute.
func (h *HSM) find(s session, class uint, match *pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	p := h.mod.p
	tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class)}
	if match != nil {
		tmpl = append(tmpl, match)
	}
	if err := p.FindObjectsInit(s.h, tmpl); err != nil {
		return nil, err
	}
	var out []pkcs11.ObjectHandle
	for {
		objs, _, err := p.FindObjects(s.h, 64)
		if err != nil {
			_ = p.FindObjectsFinal(s.h)
			return nil, err
		}
		if len(objs) == 0 {
			break
		}
		out = append(out, objs...)
	}
	return out, p.FindObjectsFinal(s.h)
}

// Key returns the key pair labelled label.
func (h *HSM) Key(label string) (*HSMKey, error) {
	var o *hsmObject
	err := h.with(context.Background(), func(s session) (err error) {
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
	err := h.with(context.Background(), func(s session) error {
		existing, err := h.find(s, pkcs11.CKO_PRIVATE_KEY, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
		if err != nil {
			return err
		}
		if len(existing) > 0 {
			// A retry after a broken session finds the key its first
			// attempt made, by the CKA_ID only that attempt used.
			attrs, err := h.mod.p.GetAttributeValue(s.h, existing[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil)})
			if err == nil && len(existing) == 1 && bytes.Equal(attrs[0].Value, id) {
				return nil
			}
			return fmt.Errorf("%w: %q", ErrKeyExists, label)
		}
		_, _, err = h.mod.p.GenerateKeyPair(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, pubTmpl, privTmpl)
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
	err := h.with(context.Background(), func(s session) error {
		out = out[:0]
		if err := h.loggedIn(s); err != nil {
			return err
		}
		privs, err := h.find(s, pkcs11.CKO_PRIVATE_KEY, nil)
		if err != nil {
			return err
		}
		for _, priv := range privs {
			attrs, err := h.mod.p.GetAttributeValue(s.h, priv, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)})
			if err != nil {
				return err
			}
			info := KeyInfo{Label: string(attrs[0].Value)}
			o, err := h.pair(s, priv, info.Label)
			switch {
			case recoverable(err):
				return err
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

// Close waits (at most PoolWaitTimeout) for operations in flight, closes
// the sessions and releases the module. When operations are still running
// the module stays loaded: unloading it under them would crash the
// process, and it is about to exit anyway.
func (h *HSM) Close() error {
	if h.closed.Swap(true) {
		return nil
	}
	close(h.closing)
	wait := time.NewTimer(h.cfg.PoolWaitTimeout)
	defer wait.Stop()
	running := 0
	for i := 0; i < cap(h.slots); i++ {
		select {
		case h.slots <- struct{}{}:
		case <-wait.C:
			running = cap(h.slots) - i
			i = cap(h.slots)
		}
	}
	h.mu.Lock()
	idle, anchor := h.idle, h.anchor
	h.idle = nil
	h.mu.Unlock()
	for _, s := range idle {
		_ = h.mod.p.CloseSession(s)
	}
	if running > 0 {
		// The anchor stays open too: closing it would log out the
		// operations still running.
		return fmt.Errorf("pkcs11: %d operations still running after %s; the module stays loaded", running, h.cfg.PoolWaitTimeout)
	}
	_ = h.mod.p.CloseSession(anchor)
	h.mod.release()
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
	err := k.h.with(ctx, func(s session) error {
		o, err := k.h.object(s, k.label)
		if err != nil {
			return err
		}
		if !samePublic(o.pub, k.pub) {
			return fmt.Errorf("%w: %q", ErrKeyReplaced, k.label)
		}
		if err := k.h.mod.p.SignInit(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, o.priv); err != nil {
			return err
		}
		sig, err = k.h.mod.p.Sign(s.h, msg)
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
