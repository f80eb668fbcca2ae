package coordinator

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/crypto/argon2"
)

// Password hashing: argon2id with OWASP's minimum parameters (19 MiB,
// two passes, one lane), stored in the PHC string form so the parameters
// travel with each hash and can be raised later without breaking old
// ones.
const (
	argonTime    = 2
	argonMemory  = 19 * 1024 // KiB
	argonThreads = 1
	argonKeyLen  = 32
	argonSaltLen = 16

	// MinPasswordLen and MaxPasswordLen bound a password; the upper bound
	// keeps hashing cost fixed.
	MinPasswordLen = 12
	MaxPasswordLen = 256
)

// hashSlots bounds concurrent hashing: each takes argonMemory, so a burst
// of sign-ins cannot exhaust the node's memory; at most maxHashWaiting
// more wait for a slot, and the rest are told the node is busy.
var (
	hashSlots      = make(chan struct{}, 4)
	hashWaiting    atomic.Int32
	maxHashWaiting = int32(64)
)

// ErrBusy is returned when too many password checks are waiting already.
var ErrBusy = errors.New("too many password checks at once; retry")

// argon2id runs key derivation in a slot, waiting no longer than ctx.
func argon2id(ctx context.Context, password, salt []byte, t, m uint32, p uint8, n uint32) ([]byte, error) {
	if hashWaiting.Add(1) > maxHashWaiting {
		hashWaiting.Add(-1)
		return nil, ErrBusy
	}
	select {
	case hashSlots <- struct{}{}:
		hashWaiting.Add(-1)
	case <-ctx.Done():
		hashWaiting.Add(-1)
		return nil, ctx.Err()
	}
	defer func() { <-hashSlots }()
	return argon2.IDKey(password, salt, t, m, p, n), nil
}

// HashPassword returns the PHC string of password under a fresh salt.
func HashPassword(ctx context.Context, password string) (string, error) {
	if err := checkPassword(password); err != nil {
		return "", err
	}
	salt := make([]byte, argonSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	key, err := argon2id(ctx, []byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	if err != nil {
		return "", err
	}
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads,
		b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

func checkPassword(p string) error {
	if n := len([]rune(p)); n < MinPasswordLen || len(p) > MaxPasswordLen {
		return invalid("a password must be %d to %d bytes long", MinPasswordLen, MaxPasswordLen)
	}
	return nil
}

// errBadHash marks a stored hash this release cannot read.
var errBadHash = errors.New("unreadable password hash")

// VerifyPassword reports whether password matches the PHC string phc.
func VerifyPassword(ctx context.Context, phc, password string) (bool, error) {
	parts := strings.Split(phc, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false, errBadHash
	}
	var v int
	var m uint32
	var t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[2], "v=%d", &v); err != nil || v != argon2.Version {
		return false, errBadHash
	}
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil || m == 0 || m > 1<<20 || t == 0 || t > 10 || p == 0 {
		return false, errBadHash
	}
	b64 := base64.RawStdEncoding
	salt, err1 := b64.DecodeString(parts[4])
	want, err2 := b64.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(want) == 0 || len(want) > 64 {
		return false, errBadHash
	}
	if len(password) > MaxPasswordLen {
		return false, nil
	}
	got, err := argon2id(ctx, []byte(password), salt, t, m, p, uint32(len(want)))
	if err != nil {
		return false, err
	}
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

// dummyHash is verified against when no user has the email given, so a
// login takes as long for an unknown email as for a wrong password.
var dummyHash = sync.OnceValue(func() string {
	h, err := HashPassword(context.Background(), "no user has this password, ever")
	if err != nil {
		panic(err)
	}
	return h
})
