package signer

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/ThalesGroup/crypto11"
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
	// Signers bounds concurrent sign operations; the session pool holds one
	// more session than this for crypto11's own login session.
	Signers int
	// PoolWaitTimeout bounds the wait for a free signer or session.
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

// HSM is a pooled client for one token. It holds one crypto11 context (one
// login) and bounds concurrent callers itself, so a burst waits in Go
// instead of piling up inside the module. When the module reports a broken
// session or device, the context is reopened once and the call retried.
type HSM struct {
	cfg PKCS11Config
	sem chan struct{}

	mu     sync.RWMutex // held for reading during every operation
	ctx    *crypto11.Context
	gen    uint64
	keys   map[string]crypto11.Signer // label -> key of the current context
	keysMu sync.Mutex                 // guards keys, which readers fill lazily
	closed bool
}

// OpenHSM logs into the token.
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
	h := &HSM{cfg: cfg, sem: make(chan struct{}, cfg.Signers)}
	if err := h.connect(); err != nil {
		return nil, err
	}
	return h, nil
}

// connect opens a fresh context; callers hold mu for writing (or own h).
func (h *HSM) connect() error {
	ctx, err := crypto11.Configure(&crypto11.Config{
		Path:            h.cfg.Module,
		TokenLabel:      h.cfg.TokenLabel,
		Pin:             h.cfg.PIN,
		MaxSessions:     h.cfg.Signers + 1,
		PoolWaitTimeout: h.cfg.PoolWaitTimeout,
	})
	if err != nil {
		return fmt.Errorf("%w: %s", ErrHSMUnavailable, describeP11(err))
	}
	h.ctx, h.keys = ctx, map[string]crypto11.Signer{}
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
	msg := err.Error()
	if strings.Contains(msg, "could not find PKCS#11 token") {
		return "token not found: " + msg
	}
	return msg
}

// recoverable lists module errors after which a fresh context (new
// sessions, new login, new object handles) can succeed.
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

// reopen replaces the context unless another caller already did since gen.
func (h *HSM) reopen(gen uint64, cause error) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return errors.New("HSM client closed")
	}
	if h.gen != gen {
		return nil
	}
	slog.Warn("pkcs11: reopening HSM context", "cause", cause.Error(), "token", h.cfg.TokenLabel)
	_ = h.ctx.Close() // waits for in-flight operations, which hold no lock
	return h.connect()
}

// with runs f on the current context, reopening and retrying once when the
// module reports a recoverable error.
func (h *HSM) with(f func(ctx *crypto11.Context, keys map[string]crypto11.Signer) error) error {
	for attempt := 0; ; attempt++ {
		h.mu.RLock()
		if h.closed {
			h.mu.RUnlock()
			return errors.New("HSM client closed")
		}
		ctx, keys, gen := h.ctx, h.keys, h.gen
		err := f(ctx, keys)
		h.mu.RUnlock()
		if err == nil || attempt > 0 || !recoverable(err) {
			return err
		}
		if rerr := h.reopen(gen, err); rerr != nil {
			return fmt.Errorf("%w (recovery failed: %w)", err, rerr)
		}
	}
}

// Key returns the key pair labelled label. Lookups are cached per context.
func (h *HSM) Key(label string) (*HSMKey, error) {
	var pub *ecdsa.PublicKey
	err := h.with(func(ctx *crypto11.Context, keys map[string]crypto11.Signer) error {
		s, err := h.lookup(ctx, keys, label)
		if err != nil {
			return err
		}
		p, ok := s.Public().(*ecdsa.PublicKey)
		if !ok || p.Curve != elliptic.P256() {
			return fmt.Errorf("%w: key %q is %T", ErrWrongKeyType, label, s.Public())
		}
		pub = p
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &HSMKey{h: h, label: label, pub: pub}, nil
}

func (h *HSM) lookup(ctx *crypto11.Context, keys map[string]crypto11.Signer, label string) (crypto11.Signer, error) {
	h.keysMu.Lock()
	s, ok := keys[label]
	h.keysMu.Unlock()
	if ok {
		return s, nil
	}
	s, err := findByLabel(ctx, label)
	if err != nil {
		return nil, err
	}
	if s == nil {
		return nil, fmt.Errorf("%w: %q on token %q", ErrKeyNotFound, label, h.cfg.TokenLabel)
	}
	h.keysMu.Lock()
	keys[label] = s
	h.keysMu.Unlock()
	return s, nil
}

// findByLabel returns the key pair labelled label, or nil when there is
// none. crypto11 versions differ on how FindKeyPair reports a missing key,
// so the plural form is used; two keys under one label are refused because
// signing with either would be a guess.
func findByLabel(ctx *crypto11.Context, label string) (crypto11.Signer, error) {
	all, err := ctx.FindKeyPairs(nil, []byte(label))
	switch {
	case err != nil:
		return nil, err
	case len(all) == 0:
		return nil, nil
	case len(all) > 1:
		return nil, fmt.Errorf("%d key pairs are labelled %q; labels must be unique", len(all), label)
	}
	return all[0], nil
}

// GenerateKey creates a P-256 key pair inside the token.
func (h *HSM) GenerateKey(label string) (*HSMKey, error) {
	if label == "" {
		return nil, errors.New("key label is required")
	}
	err := h.with(func(ctx *crypto11.Context, _ map[string]crypto11.Signer) error {
		existing, err := findByLabel(ctx, label)
		if err != nil {
			return err
		}
		if existing != nil {
			return fmt.Errorf("%w: %q", ErrKeyExists, label)
		}
		id := make([]byte, 16)
		if _, err := rand.Read(id); err != nil {
			return err
		}
		_, err = ctx.GenerateECDSAKeyPairWithLabel(id, []byte(label), elliptic.P256())
		return err
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

// ListKeys lists the key pairs on the token.
func (h *HSM) ListKeys() ([]KeyInfo, error) {
	var out []KeyInfo
	err := h.with(func(ctx *crypto11.Context, _ map[string]crypto11.Signer) error {
		out = out[:0]
		all, err := ctx.FindAllKeyPairs()
		if err != nil {
			return err
		}
		for _, s := range all {
			attr, err := ctx.GetAttribute(s, crypto11.CkaLabel)
			if err != nil {
				return err
			}
			info := KeyInfo{Label: string(attr.Value), Type: fmt.Sprintf("%T", s.Public())}
			if p, ok := s.Public().(*ecdsa.PublicKey); ok {
				info.Type = "EC " + p.Curve.Params().Name
				if jwk, err := schemas.NewJWK(p); err == nil {
					info.Kid = jwk.Kid
				}
			}
			out = append(out, info)
		}
		return nil
	})
	return out, err
}

// InUse is how many sign operations hold a signing slot now, and Capacity
// the slots there are: the pool's use, for metrics.
func (h *HSM) InUse() int    { return len(h.sem) }
func (h *HSM) Capacity() int { return cap(h.sem) }

// Close logs out and unloads the module once no other context uses it.
func (h *HSM) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil
	}
	h.closed = true
	return h.ctx.Close()
}

// HSMKey is a key pair on the token, usable as a Key.
type HSMKey struct {
	h     *HSM
	label string
	pub   *ecdsa.PublicKey
}

// Public returns the public key.
func (k *HSMKey) Public() *ecdsa.PublicKey { return k.pub }

// SignDigest signs a SHA-256 digest inside the HSM.
func (k *HSMKey) SignDigest(ctx context.Context, digest []byte) ([]byte, error) {
	wait := time.NewTimer(k.h.cfg.PoolWaitTimeout)
	defer wait.Stop()
	select {
	case k.h.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-wait.C:
		return nil, fmt.Errorf("%w: no signer free within %s", ErrBusy, k.h.cfg.PoolWaitTimeout)
	}
	defer func() { <-k.h.sem }()

	var der []byte
	err := k.h.with(func(c *crypto11.Context, keys map[string]crypto11.Signer) error {
		s, err := k.h.lookup(c, keys, k.label)
		if err != nil {
			return err
		}
		der, err = s.Sign(rand.Reader, digest, crypto.SHA256)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pkcs11 sign with %q: %w", k.label, err)
	}
	return derToP1363(der)
}
