package envelope

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// counting counts the KEK operations of the keks it wraps.
type counting struct {
	KEKs
	wraps, unwraps atomic.Int32
}

func (c *counting) Wrap(ctx context.Context, org string, dek, aad []byte) ([]byte, error) {
	c.wraps.Add(1)
	return c.KEKs.Wrap(ctx, org, dek, aad)
}

func (c *counting) Unwrap(ctx context.Context, org string, wrapped, aad []byte) ([]byte, error) {
	c.unwraps.Add(1)
	return c.KEKs.Unwrap(ctx, org, wrapped, aad)
}

func newEnvelope(t *testing.T) (*Envelope, *counting) {
	t.Helper()
	d, err := NewDirKEKs(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := &counting{KEKs: d}
	return New(c), c
}

var (
	ctx = context.Background()
	nov = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
)

func TestSealOpen(t *testing.T) {
	e, keks := newEnvelope(t)
	plain := `{"payload":{"email":"ada@example.com"}}`
	var sealed []string
	for range 3 {
		v, err := e.Seal(ctx, "acme", nov, []byte(plain))
		if err != nil {
			t.Fatal(err)
		}
		if !Sealed(v) || strings.Contains(v, "ada@example.com") {
			t.Fatalf("not sealed: %s", v)
		}
		sealed = append(sealed, v)
	}
	if sealed[0] == sealed[1] {
		t.Fatal("two seals of one value are equal: the nonce repeats")
	}
	if n := keks.wraps.Load(); n != 1 {
		t.Fatalf("%d DEKs wrapped for one organization and month", n)
	}
	for _, v := range sealed {
		got, err := e.Open(ctx, "acme", v)
		if err != nil || string(got) != plain {
			t.Fatalf("open: %q, %v", got, err)
		}
	}
	if n := keks.unwraps.Load(); n != 1 {
		t.Fatalf("%d unwraps for one DEK", n)
	}

	// Another reader (a fresh process) opens it with the KEKs alone.
	other := New(keks.KEKs)
	if got, err := other.Open(ctx, "acme", sealed[0]); err != nil || string(got) != plain {
		t.Fatalf("another reader: %q, %v", got, err)
	}

	// A new month is a new DEK; another organization another KEK.
	if _, err := e.Seal(ctx, "acme", nov.AddDate(0, 1, 0), []byte(plain)); err != nil {
		t.Fatal(err)
	}
	globex, err := e.Seal(ctx, "globex", nov, []byte(plain))
	if err != nil {
		t.Fatal(err)
	}
	if n := keks.wraps.Load(); n != 3 {
		t.Fatalf("%d DEKs wrapped; want one per organization and month", n)
	}
	// Past CacheTTL the writer checks its DEK with the KEK and keeps it.
	later := time.Now().Add(CacheTTL)
	e.now = func() time.Time { return later }
	unwraps := keks.unwraps.Load()
	if _, err := e.Seal(ctx, "acme", nov, []byte(plain)); err != nil {
		t.Fatal(err)
	}
	if w, u := keks.wraps.Load(), keks.unwraps.Load(); w != 3 || u != unwraps+1 {
		t.Fatalf("after CacheTTL: %d wraps, %d unwraps; want the DEK checked once and kept", w, u-unwraps)
	}
	// A value moved to another organization's row does not open there.
	if _, err := e.Open(ctx, "globex", sealed[0]); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("acme's value opened as globex's: %v", err)
	}
	if _, err := other.Open(ctx, "acme", globex); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("globex's value opened as acme's: %v", err)
	}
}

func TestOpenPlainAndCorrupt(t *testing.T) {
	e, _ := newEnvelope(t)
	for _, v := range []string{"", `{"v":1}`} {
		if got, err := e.Open(ctx, "acme", v); err != nil || string(got) != v {
			t.Fatalf("a value stored before encryption: %q, %v", got, err)
		}
	}
	v, err := e.Seal(ctx, "acme", nov, []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	flip := []byte(v)
	flip[len(flip)-3] ^= 1
	for _, bad := range []string{string(flip), v[:len(v)-10], prefix, prefix + "!!", prefix + "AAAA"} {
		if _, err := e.Open(ctx, "acme", bad); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%q: %v", bad, err)
		}
	}
}

// Destroying an organization's KEK makes its values unreadable by every
// reader, from a cache too once CacheTTL passed, and leaves the others'.
func TestDestroy(t *testing.T) {
	e, keks := newEnvelope(t)
	acme, _ := e.Seal(ctx, "acme", nov, []byte("acme's"))
	globex, _ := e.Seal(ctx, "globex", nov, []byte("globex's"))
	reader := New(keks.KEKs)
	now := time.Now()
	reader.now = func() time.Time { return now }
	if _, err := reader.Open(ctx, "acme", acme); err != nil {
		t.Fatal(err)
	}
	if err := e.Destroy(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Open(ctx, "acme", acme); !errors.Is(err, ErrDestroyed) {
		t.Fatalf("open after destroy: %v", err)
	}
	now = now.Add(CacheTTL)
	if _, err := reader.Open(ctx, "acme", acme); !errors.Is(err, ErrDestroyed) {
		t.Fatalf("another reader, CacheTTL later: %v", err)
	}
	if got, err := reader.Open(ctx, "globex", globex); err != nil || string(got) != "globex's" {
		t.Fatalf("globex after acme's erasure: %q, %v", got, err)
	}
	// New data is sealed under a new KEK, also by a writer that cached
	// its DEK before the destruction, once CacheTTL passed.
	writer := New(keks.KEKs)
	writer.now = func() time.Time { return now }
	if _, err := writer.Seal(ctx, "globex", nov, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := e.Destroy(ctx, "globex"); err != nil {
		t.Fatal(err)
	}
	now = now.Add(CacheTTL)
	late, err := writer.Seal(ctx, "globex", nov, []byte("after"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := New(keks.KEKs).Open(ctx, "globex", late); err != nil || string(got) != "after" {
		t.Fatalf("sealed after the destruction by a writer with a cached DEK: %q, %v", got, err)
	}
	again, err := e.Seal(ctx, "acme", nov, []byte("new"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := reader.Open(ctx, "acme", again); err != nil || string(got) != "new" {
		t.Fatalf("after a new KEK: %q, %v", got, err)
	}
	if err := keks.Destroy(ctx, "initech"); !errors.Is(err, ErrNoKEK) {
		t.Fatalf("destroying a KEK never made: %v", err)
	}
	// A reader pointed at another key store fails loudly: its values
	// were not erased.
	elsewhere, err := NewDirKEKs(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(elsewhere).Open(ctx, "globex", globex); !errors.Is(err, ErrNoKEK) || errors.Is(err, ErrDestroyed) {
		t.Fatalf("another key store: %v", err)
	}
}

// FuzzOpen: no stored value makes Open panic, and whatever opens under
// acme's KEK is what was sealed.
func FuzzOpen(f *testing.F) {
	d, err := NewDirKEKs(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	e := New(d)
	v, err := e.Seal(ctx, "acme", nov, []byte("sealed"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(v)
	f.Add(prefix + "AQ")
	f.Add(`{"v":1}`)
	f.Fuzz(func(t *testing.T, s string) {
		got, err := e.Open(ctx, "acme", s)
		if err == nil && Sealed(s) && string(got) != "sealed" {
			t.Fatalf("%q opened to %q", s, got)
		}
	})
}
