package main

import (
	"crypto"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/certnode/certnode/schemas"
	"github.com/certnode/certnode/signer"
)

// ringPoll is how often running roles look for a changed ring.json.
const ringPoll = 2 * time.Second

// publishedKeys opens the ingest tier's key ring for its public keys only:
// ingest serves the JWKS and never needs a private key or the HSM PIN.
func publishedKeys(dir string) (*signer.Ring, error) {
	if dir == "" {
		return nil, errors.New("--keyring DIR is required: the workers' key ring, whose ring.json lists the keys to publish")
	}
	r, err := signer.OpenRing(dir, signer.RingOptions{PublicOnly: true})
	if err != nil {
		return nil, fmt.Errorf("--keyring: %w", err)
	}
	return r, nil
}

// devKeyring makes `certnode dev`'s key ring on first start. A DIR/key.pem
// left by an older dev (which kept one lone key) becomes the ring's first
// key, so receipts made before keep their kid; the file is removed once
// the ring holds the key.
func devKeyring(ringDir, legacyPEM string) error {
	if _, err := signer.ReadRingFile(ringDir); !errors.Is(err, os.ErrNotExist) {
		return err // nil: the ring exists
	}
	mk := signer.SoftwareKeyMaker(schemas.AlgES256)
	legacy, err := signer.LoadSoftware(legacyPEM)
	switch {
	case err == nil:
		mk = func(dir string, _ time.Time) (crypto.PublicKey, string, error) {
			source, err := signer.WriteRingPEM(dir, legacy)
			return legacy.Public(), source, err
		}
	case !errors.Is(err, os.ErrNotExist):
		return err
	}
	if _, err := signer.AddRingKey(ringDir, mk, false); err != nil {
		return err
	}
	if legacy != nil {
		return os.Remove(legacyPEM)
	}
	return nil
}
