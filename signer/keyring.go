package signer

import (
	"crypto"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/certnode/certnode/schemas"
)

// A key ring is a directory: ring.json (public data only, mode 0644) names
// every key ever used to sign and which one signs now; software keys sit
// beside it as PKCS#8 PEM files (0600), HSM keys stay in the token. Ingest
// reads only ring.json, so it needs neither private keys nor the HSM PIN.
const (
	RingFileName = "ring.json"
	ringLockName = ".ring.lock"
	ringVersion  = 1
)

// Sources of ring keys: "file:<name>.pem" beside ring.json, or
// "pkcs11:<label>" on the configured token.
const (
	sourceFile   = "file:"
	sourcePKCS11 = "pkcs11:"
)

// ErrBadRing marks a ring.json that cannot be used; the message says why.
var ErrBadRing = errors.New("bad key ring")

// ErrRingBusy means another process holds the ring's lock.
var ErrRingBusy = errors.New("key ring is being changed by another process; try again")

// RingFile is the content of ring.json.
type RingFile struct {
	V      int       `json:"v"`
	Active string    `json:"active"`
	Keys   []RingKey `json:"keys"`
}

// RingKey is one key of a ring. A key is active (it signs), retired (it
// signed once) or standby (published ahead of its activation, so verifiers
// already hold it when it starts signing).
type RingKey struct {
	Kid       string      `json:"kid"`
	JWK       schemas.JWK `json:"jwk"`
	Source    string      `json:"source"`
	CreatedAt time.Time   `json:"created_at"`
	RetiredAt time.Time   `json:"retired_at,omitzero"`
}

// Key states as `keys list` shows them.
const (
	StateActive  = "active"
	StateRetired = "retired"
	StateStandby = "standby"
)

// State says whether k is the active, a retired or a standby key of f.
func (f *RingFile) State(k RingKey) string {
	switch {
	case k.Kid == f.Active:
		return StateActive
	case !k.RetiredAt.IsZero():
		return StateRetired
	}
	return StateStandby
}

// ReadRingFile reads and checks DIR/ring.json. A missing file is reported
// with an error matching os.ErrNotExist.
func ReadRingFile(dir string) (*RingFile, error) {
	path := filepath.Join(dir, RingFileName)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key ring %s: %w", dir, err)
	}
	f, err := ParseRingFile(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// ParseRingFile decodes and checks ring.json. Unknown members are refused:
// a misspelt retired_at must not silently turn a retired key into a
// standby one.
func ParseRingFile(data []byte) (*RingFile, error) {
	var f RingFile
	if err := json.Unmarshal(data, &f, json.RejectUnknownMembers(true)); err != nil {
		return nil, fmt.Errorf("%w: not a ring.json: %v", ErrBadRing, err)
	}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return &f, nil
}

// Validate reports every problem at once, on one line.
func (f *RingFile) Validate() error {
	var errs []string
	if f.V != ringVersion {
		errs = append(errs, fmt.Sprintf("version %d, want %d", f.V, ringVersion))
	}
	if len(f.Keys) == 0 {
		errs = append(errs, "no keys")
	}
	seen := map[string]bool{}
	activeFound := false
	for i, k := range f.Keys {
		bad := func(format string, a ...any) {
			errs = append(errs, fmt.Sprintf("key %d (kid %q): ", i, k.Kid)+fmt.Sprintf(format, a...))
		}
		if _, err := k.JWK.PublicKey(); err != nil {
			bad("%v", err)
		} else if tp := k.JWK.Thumbprint(); k.Kid != tp || (k.JWK.Kid != "" && k.JWK.Kid != tp) {
			bad("kid is not the RFC 7638 thumbprint of its jwk (%s)", tp)
		}
		if seen[k.Kid] {
			bad("listed twice")
		}
		seen[k.Kid] = true
		if _, _, err := splitSource(k.Source); err != nil {
			bad("%v", err)
		}
		if k.CreatedAt.IsZero() {
			bad("created_at is missing")
		}
		if k.Kid == f.Active {
			activeFound = true
			if !k.RetiredAt.IsZero() {
				bad("the active key is marked retired")
			}
		}
	}
	if !activeFound && len(f.Keys) > 0 {
		errs = append(errs, fmt.Sprintf("active kid %q is not among the keys", f.Active))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %s", ErrBadRing, strings.Join(errs, "; "))
	}
	return nil
}

// splitSource parses a key's source. File names are bare names inside the
// ring directory, so a ring.json cannot point at files elsewhere.
func splitSource(s string) (kind, ref string, err error) {
	switch {
	case strings.HasPrefix(s, sourceFile):
		ref = strings.TrimPrefix(s, sourceFile)
		if ref != filepath.Base(ref) || !strings.HasSuffix(ref, ".pem") || strings.HasPrefix(ref, ".") {
			return "", "", fmt.Errorf("source %q: want file:<name>.pem, a file beside ring.json", s)
		}
		return sourceFile, ref, nil
	case strings.HasPrefix(s, sourcePKCS11) && len(s) > len(sourcePKCS11):
		return sourcePKCS11, strings.TrimPrefix(s, sourcePKCS11), nil
	}
	return "", "", fmt.Errorf("source %q: want file:<name>.pem or pkcs11:<label>", s)
}

// Key returns the ring's key kid.
func (f *RingFile) Key(kid string) (RingKey, bool) {
	for _, k := range f.Keys {
		if k.Kid == kid {
			return k, true
		}
	}
	return RingKey{}, false
}

// JWKS lists every key: the active one first, then the others newest
// first (keys are appended as they are made, so in reverse file order;
// created_at has whole seconds and cannot break ties). Entries are rebuilt
// from the public key, so what is published is always kid = thumbprint,
// the key type's alg (ES256 or EdDSA), use sig.
func (f *RingFile) JWKS() (schemas.JWKS, error) {
	keys := make([]RingKey, 0, len(f.Keys))
	if k, ok := f.Key(f.Active); ok {
		keys = append(keys, k)
	}
	for i := len(f.Keys) - 1; i >= 0; i-- {
		if f.Keys[i].Kid != f.Active {
			keys = append(keys, f.Keys[i])
		}
	}
	out := schemas.JWKS{Keys: make([]schemas.JWK, 0, len(keys))}
	for _, k := range keys {
		pub, err := k.JWK.PublicKey()
		if err != nil {
			return schemas.JWKS{}, fmt.Errorf("key %s: %w", k.Kid, err)
		}
		jwk, err := schemas.NewJWK(pub)
		if err != nil {
			return schemas.JWKS{}, fmt.Errorf("key %s: %w", k.Kid, err)
		}
		out.Keys = append(out.Keys, jwk)
	}
	return out, nil
}

// add puts a new key into the ring; the first key of a ring becomes active.
func (f *RingFile) add(pub crypto.PublicKey, source string, now time.Time) (RingKey, error) {
	jwk, err := schemas.NewJWK(pub)
	if err != nil {
		return RingKey{}, err
	}
	if _, dup := f.Key(jwk.Kid); dup {
		return RingKey{}, fmt.Errorf("key %s is already in the ring", jwk.Kid)
	}
	k := RingKey{Kid: jwk.Kid, JWK: jwk, Source: source, CreatedAt: now}
	f.Keys = append(f.Keys, k)
	if f.Active == "" {
		f.Active = k.Kid
	}
	return k, nil
}

// activate makes kid the signing key; the previous one is retired and
// stays published, so its receipts keep verifying.
func (f *RingFile) activate(kid string, now time.Time) error {
	if kid == f.Active {
		return fmt.Errorf("key %s is already active", kid)
	}
	found := false
	for i := range f.Keys {
		switch f.Keys[i].Kid {
		case f.Active:
			f.Keys[i].RetiredAt = now
		case kid:
			f.Keys[i].RetiredAt = time.Time{}
			found = true
		}
	}
	if !found {
		return fmt.Errorf("key %s is not in the ring", kid)
	}
	f.Active = kid
	return nil
}

// KeyMaker creates a new key for the ring in dir and names its source.
type KeyMaker func(dir string, now time.Time) (pub crypto.PublicKey, source string, err error)

// SoftwareKeyMaker writes a new software key for alg beside ring.json.
func SoftwareKeyMaker(alg string) KeyMaker {
	return func(dir string, _ time.Time) (crypto.PublicKey, string, error) {
		s, err := GenerateSoftware(alg)
		if err != nil {
			return nil, "", err
		}
		source, err := WriteRingPEM(dir, s)
		return s.Public(), source, err
	}
}

// WriteRingPEM stores a software key in the ring directory as <kid>.pem
// and returns its source. Storing the same key again is not an error, so
// an interrupted import can be repeated.
func WriteRingPEM(dir string, s *Software) (string, error) {
	jwk, err := schemas.NewJWK(s.Public())
	if err != nil {
		return "", err
	}
	name := jwk.Kid + ".pem"
	path := filepath.Join(dir, name)
	if err := s.WritePEM(path); errors.Is(err, os.ErrExist) {
		if old, lerr := LoadSoftware(path); lerr != nil || !samePublic(old.Public(), s.Public()) {
			return "", err
		}
	} else if err != nil {
		return "", err
	}
	return sourceFile + name, nil
}

// KeyMaker returns a KeyMaker that generates non-extractable key pairs for
// alg in the token, labelled certnode-<date>-<random>. The label cannot
// carry the kid: it is fixed before the token makes the key; ring.json and
// `keys list` pair labels with kids.
func (h *HSM) KeyMaker(alg string) KeyMaker {
	return func(_ string, now time.Time) (crypto.PublicKey, string, error) {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, "", err
		}
		label := "certnode-" + now.Format("20060102") + "-" + hex.EncodeToString(b[:])
		k, err := h.GenerateKey(label, alg)
		if err != nil {
			return nil, "", err
		}
		return k.Public(), sourcePKCS11 + label, nil
	}
}

// AddRingKey makes a key with mk and adds it to the ring in dir, creating
// the ring (and making the key active) when there is none. With activate,
// the new key signs from now on and the previous one is retired.
func AddRingKey(dir string, mk KeyMaker, activate bool) (RingKey, error) {
	var added RingKey
	err := updateRing(dir, func(f *RingFile, now time.Time) error {
		pub, source, err := mk(dir, now)
		if err != nil {
			return err
		}
		if added, err = f.add(pub, source, now); err != nil {
			return err
		}
		if activate && f.Active != added.Kid {
			return f.activate(added.Kid, now)
		}
		return nil
	})
	return added, err
}

// ActivateRingKey makes kid, already published in the ring, the signing
// key, once its private half is found to open (hsm may be nil for software
// keys): a rotation never points running workers at a key they cannot use.
func ActivateRingKey(dir, kid string, hsm func() (*HSM, error)) error {
	return updateRing(dir, func(f *RingFile, now time.Time) error {
		k, ok := f.Key(kid)
		if !ok {
			return fmt.Errorf("key %s is not in the ring", kid)
		}
		if _, err := openRingKey(dir, k, hsm); err != nil {
			return err
		}
		return f.activate(kid, now)
	})
}

// updateRing changes ring.json under an exclusive lock, so two concurrent
// changes cannot lose a key, and replaces it atomically (a reader sees the
// old or the new file, never a torn one). A missing ring starts empty.
func updateRing(dir string, change func(f *RingFile, now time.Time) error) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("key ring: %w", err)
	}
	unlock, err := lockRing(dir)
	if err != nil {
		return err
	}
	defer unlock()
	f, err := ReadRingFile(dir)
	if errors.Is(err, os.ErrNotExist) {
		f, err = &RingFile{V: ringVersion}, nil
	}
	if err != nil {
		return err
	}
	if err := change(f, time.Now().UTC().Truncate(time.Second)); err != nil {
		return err
	}
	if err := f.Validate(); err != nil {
		return err
	}
	data, err := json.Marshal(f, jsontext.WithIndent("  "))
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, RingFileName), append(data, '\n'), 0o644)
}

// lockRing takes the ring directory's lock without waiting; the kernel
// drops it if the process dies, so no stale lock is left behind.
func lockRing(dir string) (func(), error) {
	lf, err := os.OpenFile(filepath.Join(dir, ringLockName), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("key ring lock: %w", err)
	}
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lf.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w", dir, ErrRingBusy)
		}
		return nil, fmt.Errorf("key ring lock: %w", err)
	}
	return func() { lf.Close() }, nil
}

// writeFileAtomic replaces path with data through a synced temporary file
// in the same directory and a rename.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if err := writeSynced(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// writeSynced fills a new file, sets its mode, flushes it to disk and
// closes it.
func writeSynced(f *os.File, data []byte, mode os.FileMode) error {
	_, err := f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// syncDir makes a rename or link in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// samePublic compares two public keys of any supported type.
func samePublic(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}
