// Package recordauth authenticates records on certnode.requests: those the
// ingest tier wrote (an HMAC over the whole value under the cluster's
// internal secret, named by a key id so the secret rotates without
// downtime) and those customers produce directly (an HMAC over the value
// under one of the tenant's producer secrets). No reusable credential is
// ever written to a topic.
package recordauth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/certnode/certnode/internal/envsecret"
)

// MinSecretBytes is the shortest secret accepted.
const MinSecretBytes = 32

// Sign is the hex HMAC-SHA256 of value under secret: the signature customer
// producers put in the certnode-signature header.
func Sign(secret, value []byte) string {
	h := hmac.New(sha256.New, secret)
	h.Write(value)
	return hex.EncodeToString(h.Sum(nil))
}

// Valid checks a Sign signature in constant time.
func Valid(secret, value []byte, sig string) bool {
	return hmac.Equal([]byte(Sign(secret, value)), []byte(strings.ToLower(sig)))
}

// Keyring holds the internal secrets: the first signs, every one verifies.
// A key id is derived from the secret itself, so operators rotate by
// adding the new secret on every worker, then putting it first on every
// ingest process, then removing the old one.
type Keyring struct {
	signKid string
	secrets map[string][]byte
}

// KeyID names a secret: the first 8 hex digits of SHA-256("certnode-kid\n"+secret).
func KeyID(secret []byte) string {
	sum := sha256.Sum256(append([]byte("certnode-kid\n"), secret...))
	return hex.EncodeToString(sum[:4])
}

// NewKeyring takes the secrets, the signing one first.
func NewKeyring(secrets ...[]byte) (*Keyring, error) {
	if len(secrets) == 0 {
		return nil, errors.New("internal secret: none given")
	}
	k := &Keyring{secrets: map[string][]byte{}}
	for i, s := range secrets {
		if len(s) < MinSecretBytes {
			return nil, fmt.Errorf("internal secret %d: must be at least %d bytes", i+1, MinSecretBytes)
		}
		id := KeyID(s)
		if i == 0 {
			k.signKid = id
		}
		k.secrets[id] = s
	}
	return k, nil
}

// SignKeyID names the secret that signs.
func (k *Keyring) SignKeyID() string { return k.signKid }

// KeyIDs names every secret, the signing one first.
func (k *Keyring) KeyIDs() []string {
	out := []string{k.signKid}
	for _, id := range slices.Sorted(maps.Keys(k.secrets)) {
		if id != k.signKid {
			out = append(out, id)
		}
	}
	return out
}

// Derive returns HMAC-SHA256(secret kid, label): a key for one purpose that
// only holders of the internal secret can compute.
func (k *Keyring) Derive(kid string, label []byte) ([]byte, bool) {
	secret, ok := k.secrets[kid]
	if !ok {
		return nil, false
	}
	h := hmac.New(sha256.New, secret)
	h.Write(label)
	return h.Sum(nil), true
}

// Header is the certnode-ingest-mac value for a record value.
func (k *Keyring) Header(value []byte) []byte {
	return []byte(k.signKid + ":" + Sign(k.secrets[k.signKid], value))
}

// Check verifies a certnode-ingest-mac header against value.
func (k *Keyring) Check(value []byte, header string) error {
	kid, sig, ok := strings.Cut(header, ":")
	if !ok {
		return errors.New("ingest MAC header is not kid:signature")
	}
	secret, ok := k.secrets[kid]
	if !ok {
		return fmt.Errorf("ingest MAC key %q is not configured on this worker", kid)
	}
	if !Valid(secret, value, sig) {
		return errors.New("ingest MAC does not match the record value")
	}
	return nil
}

// SecretsFromEnv reads the internal secrets from CERTNODE_INTERNAL_SECRET,
// or the file named by CERTNODE_INTERNAL_SECRET_FILE: one secret per line,
// the signing one first (blank lines and # comments ignored).
func SecretsFromEnv() (*Keyring, error) {
	text, ok, err := envsecret.Read("CERTNODE_INTERNAL_SECRET")
	switch {
	case err != nil:
		return nil, fmt.Errorf("internal secret: %w", err)
	case !ok:
		return nil, errors.New("no internal secret: set CERTNODE_INTERNAL_SECRET or CERTNODE_INTERNAL_SECRET_FILE (shared by ingest, the workers and the dispatchers)")
	}
	var secrets [][]byte
	for _, line := range strings.Split(text, "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			secrets = append(secrets, []byte(line))
		}
	}
	return NewKeyring(secrets...)
}
