package envelope

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// DirKEKs keeps each organization's KEK in a file of a folder, for
// certnode dev and tests: the HSM's KEKs (signer.KEKs) are for production.
// Destroy removes the file; a filesystem that keeps old blocks (copy on
// write, backups) may keep it, which an HSM does not.
type DirKEKs struct {
	dir string
	mu  sync.Mutex // one creator of a KEK at a time
}

// NewDirKEKs keeps KEKs in dir, made with mode 0700 if missing.
func NewDirKEKs(dir string) (*DirKEKs, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil { // an existing folder too
		return nil, fmt.Errorf("envelope: %w", err)
	}
	return &DirKEKs{dir: dir}, nil
}

// path names org's file by its hex form, whatever characters it holds.
func (d *DirKEKs) path(org string) string {
	return filepath.Join(d.dir, hex.EncodeToString([]byte(org))+".kek")
}

func (d *DirKEKs) key(org string, create bool) ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	k, err := d.read(org)
	if err != ErrNoKEK || !create {
		return k, err
	}
	k = make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return nil, err
	}
	// O_EXCL: a second process making the same KEK reads the first's
	// rather than replacing it, whose DEKs would be lost.
	f, err := os.OpenFile(d.path(org), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return d.read(org)
	}
	if err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	_, err = f.Write(k)
	if err = errors.Join(err, f.Close()); err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	return k, nil
}

func (d *DirKEKs) read(org string) ([]byte, error) {
	k, err := os.ReadFile(d.path(org))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, ErrNoKEK
	case err != nil:
		return nil, fmt.Errorf("envelope: %w", err)
	case len(k) != 32:
		return nil, fmt.Errorf("envelope: KEK file of %s holds %d bytes, want 32", org, len(k))
	}
	return k, nil
}

// Wrap encrypts dek with AES-256-GCM under org's KEK: nonce, then the
// ciphertext and tag, as signer.KEKs does in the HSM.
func (d *DirKEKs) Wrap(_ context.Context, org string, dek, aad []byte) ([]byte, error) {
	k, err := d.key(org, true)
	if err != nil {
		return nil, err
	}
	aead, err := gcm(k)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return aead.Seal(nonce, nonce, dek, aad), nil
}

// Unwrap decrypts what Wrap returned.
func (d *DirKEKs) Unwrap(_ context.Context, org string, wrapped, aad []byte) ([]byte, error) {
	k, err := d.key(org, false)
	if err == nil {
		var aead cipher.AEAD
		if aead, err = gcm(k); err != nil {
			return nil, err
		}
		n := aead.NonceSize()
		if len(wrapped) < n {
			return nil, ErrCorrupt
		}
		var dek []byte
		if dek, err = aead.Open(nil, wrapped[:n], wrapped[n:], aad); err == nil {
			return dek, nil
		}
		err = ErrCorrupt
	}
	if !errors.Is(err, ErrNoKEK) && !errors.Is(err, ErrCorrupt) {
		return nil, err
	}
	if _, serr := os.Stat(d.tombstone(org)); serr == nil {
		return nil, ErrDestroyed
	}
	return nil, err
}

// tombstone records that org's KEK was destroyed.
func (d *DirKEKs) tombstone(org string) string {
	return filepath.Join(d.dir, hex.EncodeToString([]byte(org))+".destroyed")
}

// Destroy removes org's KEK file, leaving a tombstone.
func (d *DirKEKs) Destroy(_ context.Context, org string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	err := os.Remove(d.path(org))
	if errors.Is(err, fs.ErrNotExist) {
		return ErrNoKEK
	}
	if err != nil {
		return fmt.Errorf("envelope: %w", err)
	}
	return os.WriteFile(d.tombstone(org), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o600)
}
