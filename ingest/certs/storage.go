package certs

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
)

// Store is the shared store certmagic's Storage is built on: the
// coordinator's certificate store (coordinator.CertStore). Load, Stat and
// List answer fs.ErrNotExist for what is not there; Lock reports false
// while another token holds the lease, and for a renewal when this
// token's lease lapsed (and another may hold it).
type Store interface {
	Load(ctx context.Context, key string) ([]byte, error)
	Store(ctx context.Context, key string, value []byte) error
	Delete(ctx context.Context, key string) error
	Stat(ctx context.Context, key string) (modified time.Time, size int64, terminal bool, err error)
	List(ctx context.Context, prefix string, recursive bool) ([]string, error)
	Lock(ctx context.Context, name, token string, ttl time.Duration, renew bool) (bool, error)
	Unlock(ctx context.Context, name, token string) error
}

// Sealer encrypts private keys before they leave the process
// (internal/envelope.Envelope).
type Sealer interface {
	Seal(ctx context.Context, org string, at time.Time, plain []byte) (string, error)
	Open(ctx context.Context, org, v string) ([]byte, error)
}

// sealOrg names the key-encryption key of the stored private keys. It
// cannot be an organization's id (those start with a letter or digit),
// so erasing an organization never destroys it.
const sealOrg = "_acme"

// Lease timing: a lock is held for leaseTTL and renewed every
// leaseRenew while its holder runs, so a dead node's lock lapses within
// leaseTTL; a waiter tries again every lockPoll.
const (
	leaseTTL   = 30 * time.Second
	leaseRenew = leaseTTL / 3
	lockPoll   = time.Second
)

// storage adapts a Store to certmagic.Storage: private keys (the ACME
// accounts' and the certificates', every key ending in ".key") are
// sealed, and locks are leases kept alive while held.
type storage struct {
	st    Store
	seal  Sealer
	log   *slog.Logger
	renew time.Duration // how often a held lease is renewed (leaseRenew)
	mu    sync.Mutex
	held  map[string]*lease // by lock name: the leases this process holds
}

type lease struct {
	token  string
	stop   chan struct{}
	done   chan struct{}
	lapsed atomic.Bool // another holder took it: release nothing
}

var (
	_ certmagic.Storage   = (*storage)(nil)
	_ certmagic.TryLocker = (*storage)(nil)
)

func newStorage(st Store, seal Sealer, log *slog.Logger) *storage {
	return &storage{st: st, seal: seal, log: log, renew: leaseRenew, held: map[string]*lease{}}
}

func sealed(key string) bool { return strings.HasSuffix(key, ".key") }

func (s *storage) Store(ctx context.Context, key string, value []byte) error {
	if sealed(key) {
		v, err := s.seal.Seal(ctx, sealOrg, time.Now(), value)
		if err != nil {
			return fmt.Errorf("certs: sealing %s: %w", key, err)
		}
		value = []byte(v)
	}
	return s.st.Store(ctx, key, value)
}

func (s *storage) Load(ctx context.Context, key string) ([]byte, error) {
	v, err := s.st.Load(ctx, key)
	if err != nil || !sealed(key) {
		return v, err
	}
	plain, err := s.seal.Open(ctx, sealOrg, string(v))
	if err != nil {
		return nil, fmt.Errorf("certs: opening %s: %w", key, err)
	}
	return plain, nil
}

func (s *storage) Delete(ctx context.Context, key string) error { return s.st.Delete(ctx, key) }

func (s *storage) Exists(ctx context.Context, key string) bool {
	_, _, _, err := s.st.Stat(ctx, key)
	return err == nil
}

func (s *storage) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	return s.st.List(ctx, prefix, recursive)
}

func (s *storage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	mod, size, terminal, err := s.st.Stat(ctx, key)
	if err != nil {
		return certmagic.KeyInfo{}, err
	}
	return certmagic.KeyInfo{Key: key, Modified: mod, Size: size, IsTerminal: terminal}, nil
}

// Lock waits until this process holds the lease on name, or ctx ends.
// Two goroutines of one process exclude each other as two nodes do: each
// attempt has a token of its own.
func (s *storage) Lock(ctx context.Context, name string) error {
	for {
		ok, err := s.TryLock(ctx, name)
		if ok || err != nil && ctx.Err() != nil {
			return err
		}
		if err != nil {
			s.log.Warn("certificate lock", "name", name, "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(lockPoll):
		}
	}
}

// TryLock takes the lease on name if nobody holds it: not another node,
// and not this process (whose lease may have lapsed at the store while
// it still works under it).
func (s *storage) TryLock(ctx context.Context, name string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held[name] != nil {
		return false, nil
	}
	var b [18]byte
	rand.Read(b[:])
	token := base64.RawURLEncoding.EncodeToString(b[:])
	ok, err := s.st.Lock(ctx, name, token, leaseTTL, false)
	if !ok || err != nil {
		return false, err
	}
	l := &lease{token: token, stop: make(chan struct{}), done: make(chan struct{})}
	s.held[name] = l
	go s.keep(name, l)
	return true, nil
}

// keep renews a held lease until it is released, or until a renewal is
// refused (the lease lapsed and another took it): then it is no longer
// this process's to renew or release. certmagic re-checks the storage
// after its work, so the worst outcome is one extra order. A renewal that
// fails to reach the store is tried again at the next tick.
func (s *storage) keep(name string, l *lease) {
	defer close(l.done)
	t := time.NewTicker(s.renew)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), s.renew)
			ok, err := s.st.Lock(ctx, name, l.token, leaseTTL, true)
			cancel()
			switch {
			case err != nil:
				s.log.Warn("renewing a certificate lock", "name", name, "err", err)
			case !ok:
				s.log.Error("a certificate lock lapsed while held; another node may hold it now", "name", name)
				l.lapsed.Store(true)
				return
			}
		}
	}
}

// Unlock releases the lease this process holds on name (once lapsed and
// taken by another, there is nothing of it to release).
func (s *storage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	l := s.held[name]
	delete(s.held, name)
	s.mu.Unlock()
	if l == nil {
		return fmt.Errorf("certs: lock %q is not held here", name)
	}
	close(l.stop)
	<-l.done
	if l.lapsed.Load() {
		return nil
	}
	return s.st.Unlock(ctx, name, l.token)
}

// release gives up every lease still held (a stopping node), so others
// need not wait for them to lapse.
func (s *storage) release() {
	s.mu.Lock()
	names := make([]string, 0, len(s.held))
	for n := range s.held {
		names = append(names, n)
	}
	s.mu.Unlock()
	for _, n := range names {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := s.Unlock(ctx, n); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("releasing a certificate lock", "name", n, "err", err)
		}
		cancel()
	}
}
