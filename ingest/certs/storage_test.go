package certs

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/certnode/certnode/internal/testenv"
)

// memStore is a Store in memory, with leases as the coordinator keeps
// them.
type memStore struct {
	mu     sync.Mutex
	values map[string][]byte
	locks  map[string]string // name -> token
	renews int
}

func newMemStore() *memStore {
	return &memStore{values: map[string][]byte{}, locks: map[string]string{}}
}

func (m *memStore) Load(_ context.Context, key string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.values[key]
	if !ok {
		return nil, fs.ErrNotExist
	}
	return v, nil
}

func (m *memStore) Store(_ context.Context, key string, value []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.values[key] = value
	return nil
}

func (m *memStore) Delete(_ context.Context, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.values, key)
	return nil
}

func (m *memStore) Stat(_ context.Context, key string) (time.Time, int64, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v, ok := m.values[key]; ok {
		return time.Now(), int64(len(v)), true, nil
	}
	return time.Time{}, 0, false, fs.ErrNotExist
}

func (m *memStore) List(context.Context, string, bool) ([]string, error) { return nil, fs.ErrNotExist }

func (m *memStore) Lock(_ context.Context, name, token string, _ time.Duration, renew bool) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	held, ok := m.locks[name]
	switch {
	case renew && held != token:
		return false, nil
	case renew:
		m.renews++
		return true, nil
	case ok && held != token:
		return false, nil
	}
	m.locks[name] = token
	return true, nil
}

func (m *memStore) Unlock(_ context.Context, name, token string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.locks[name] != token {
		return fs.ErrNotExist
	}
	delete(m.locks, name)
	return nil
}

// rot13 "seals" by prefixing and rotating: enough to see that a value
// went through the sealer, and under which key-encryption key.
type rot13 struct{ orgs []string }

func (r *rot13) Seal(_ context.Context, org string, _ time.Time, plain []byte) (string, error) {
	r.orgs = append(r.orgs, org)
	return "sealed:" + strings.Map(rot, string(plain)), nil
}

func (r *rot13) Open(_ context.Context, org, v string) ([]byte, error) {
	s, ok := strings.CutPrefix(v, "sealed:")
	if !ok || org != sealOrg {
		return nil, errors.New("not sealed here")
	}
	return []byte(strings.Map(rot, s)), nil
}

func rot(r rune) rune {
	switch {
	case r >= 'a' && r <= 'z':
		return 'a' + (r-'a'+13)%26
	case r >= 'A' && r <= 'Z':
		return 'A' + (r-'A'+13)%26
	}
	return r
}

// Private keys leave the process sealed under the service's own KEK (not
// an organization's), and come back open; certificates and metadata are
// stored as they are.
func TestStorageSealsPrivateKeys(t *testing.T) {
	ms, seal := newMemStore(), &rot13{}
	s := newStorage(ms, seal, slog.Default())
	ctx := context.Background()
	key := []byte("-----BEGIN EC PRIVATE KEY-----\nsecret\n")
	for k, v := range map[string][]byte{
		"certificates/ca/a.example/a.example.key":  key,
		"acme/ca/users/ops@example.test/ops.key":   key,
		"certificates/ca/a.example/a.example.crt":  []byte("-----BEGIN CERTIFICATE-----"),
		"certificates/ca/a.example/a.example.json": []byte(`{"sans":["a.example"]}`),
	} {
		if err := s.Store(ctx, k, v); err != nil {
			t.Fatal(err)
		}
		stored := string(ms.values[k])
		if sealed := strings.HasSuffix(k, ".key"); sealed && (strings.Contains(stored, "secret") || !strings.HasPrefix(stored, "sealed:")) ||
			!sealed && stored != string(v) {
			t.Errorf("%s stored as %q", k, stored)
		}
		if got, err := s.Load(ctx, k); err != nil || string(got) != string(v) {
			t.Errorf("%s loaded as %q, %v", k, got, err)
		}
	}
	if len(seal.orgs) != 2 || seal.orgs[0] != sealOrg || seal.orgs[1] != sealOrg {
		t.Fatalf("sealed under %v", seal.orgs)
	}
	ms.values["certificates/ca/b.example/b.example.key"] = []byte("plain")
	if _, err := s.Load(ctx, "certificates/ca/b.example/b.example.key"); err == nil {
		t.Fatal("an unsealed private key loaded")
	}
	if _, err := s.Load(ctx, "nothing"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing: %v", err)
	}
	if s.Exists(ctx, "nothing") || !s.Exists(ctx, "certificates/ca/a.example/a.example.crt") {
		t.Fatal("exists")
	}
}

// Two goroutines of one process exclude each other; a held lease is
// renewed; Lock gives up when its context ends; release frees what is
// held.
func TestStorageLocks(t *testing.T) {
	ms := newMemStore()
	s := newStorage(ms, &rot13{}, slog.Default())
	ctx := context.Background()
	if err := s.Lock(ctx, "issue_cert_a.example"); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.TryLock(ctx, "issue_cert_a.example"); ok || err != nil {
		t.Fatalf("a second holder in the same process: %v %v", ok, err)
	}
	short, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel()
	if err := s.Lock(short, "issue_cert_a.example"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a wait past its context: %v", err)
	}
	got := make(chan error, 1)
	go func() { got <- s.Lock(ctx, "issue_cert_a.example") }()
	select {
	case err := <-got:
		t.Fatalf("a waiter got a held lock: %v", err)
	case <-time.After(1500 * time.Millisecond): // past one poll: it waits
	}
	if err := s.Unlock(ctx, "issue_cert_a.example"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter did not get the lock once released")
	}
	if err := s.Unlock(ctx, "not_held"); err == nil {
		t.Fatal("released a lock not held")
	}
	s.release()
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if len(ms.locks) != 0 {
		t.Fatalf("left after release: %v", ms.locks)
	}
}

// A lease that lapsed while held (another took it at the store) stops
// being renewed, and its holder's Unlock releases nothing of the other's.
func TestStorageLeaseLapses(t *testing.T) {
	ms := newMemStore()
	s := newStorage(ms, &rot13{}, slog.Default())
	s.renew = 50 * time.Millisecond
	ctx := context.Background()
	if err := s.Lock(ctx, "issue_cert_a.example"); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "a held lease renewed", 5*time.Second, func() (bool, string) {
		ms.mu.Lock()
		defer ms.mu.Unlock()
		return ms.renews > 0, ""
	})
	ms.mu.Lock()
	ms.locks["issue_cert_a.example"] = "another node's token"
	ms.mu.Unlock()
	l := s.held["issue_cert_a.example"]
	select {
	case <-l.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the renewals went on after the lease lapsed")
	}
	if err := s.Unlock(ctx, "issue_cert_a.example"); err != nil {
		t.Fatal(err)
	}
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if ms.locks["issue_cert_a.example"] != "another node's token" {
		t.Fatalf("the holder of a lapsed lease released another's: %v", ms.locks)
	}
}
