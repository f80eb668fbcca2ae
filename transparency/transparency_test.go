package transparency

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/storage/posix"
	"golang.org/x/mod/sumdb/note"

	"github.com/certnode/certnode/schemas"
)

// testLog is a log written by tessera in a directory, served as the log
// process serves it: its files, /key and /index/{receipt_id}.
type testLog struct {
	t       testing.TB
	app     *tessera.Appender
	signer  note.Signer
	vkey    string
	srv     *httptest.Server
	mu      sync.Mutex
	indexes map[string]uint64
	since   *uint64 // what /since/{t} answers (nil: 404, nothing appended since)
}

func newTestLog(t testing.TB) *testLog {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, "test.certnode/log")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "log")
	ctx := context.Background()
	drv, err := posix.New(ctx, posix.Config{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	app, shutdown, _, err := tessera.NewAppender(ctx, drv, tessera.NewAppendOptions().WithCheckpointSigner(signer).
		WithCheckpointInterval(100*time.Millisecond).WithBatching(64, 10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdown(context.Background()) })
	l := &testLog{t: t, app: app, signer: signer, vkey: vkey, indexes: map[string]uint64{}}
	mux := http.NewServeMux()
	mux.Handle("GET /", http.FileServer(http.Dir(dir)))
	mux.HandleFunc("GET /key", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, vkey) })
	mux.HandleFunc("GET /index/{id}", func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		at, ok := l.indexes[r.PathValue("id")]
		l.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		json.MarshalWrite(w, map[string]uint64{"index": at})
	})
	mux.HandleFunc("GET /since/{unix}", func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.since == nil {
			http.NotFound(w, r)
			return
		}
		json.MarshalWrite(w, map[string]uint64{"index": *l.since})
	})
	l.srv = httptest.NewServer(mux)
	t.Cleanup(l.srv.Close)
	return l
}

// add appends n receipts and returns their ids.
func (l *testLog) add(n int) []string {
	l.t.Helper()
	ids := make([]string, n)
	leaves := make([][]byte, n)
	for i := range n {
		b := make([]byte, 8)
		rand.Read(b)
		ids[i] = fmt.Sprintf("rcpt-%x", b)
		leaves[i] = schemas.ReceiptLeaf(ids[i])
	}
	for i, at := range l.appendLeaves(leaves) {
		l.mu.Lock()
		l.indexes[ids[i]] = at
		l.mu.Unlock()
	}
	return ids
}

// appendLeaves appends leaves and returns their indexes.
func (l *testLog) appendLeaves(leaves [][]byte) []uint64 {
	l.t.Helper()
	futures := make([]tessera.IndexFuture, len(leaves))
	for i, leaf := range leaves {
		futures[i] = l.app.Add(context.Background(), tessera.NewEntry(leaf))
	}
	out := make([]uint64, len(leaves))
	for i, f := range futures {
		at, err := f()
		if err != nil {
			l.t.Fatal(err)
		}
		out[i] = at.Index
	}
	return out
}

// proofOf waits for the receipt's checkpoint and returns its proof.
func proofOf(t testing.TB, c *Client, id string) *schemas.InclusionProof {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		p, err := c.Proof(context.Background(), id)
		if err == nil {
			return p
		}
		if !errors.Is(err, schemas.ErrNotLogged) || time.Now().After(deadline) {
			t.Fatalf("proof of %s: %v", id, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestProofs(t *testing.T) {
	l := newTestLog(t)
	c, err := NewClient(l.srv.URL, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	first := l.add(300) // more than a tile: proofs cross tiles
	p := proofOf(t, c, first[0])
	if _, err := VerifyInclusion(first[0], p, l.vkey); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{first[1], first[299]} {
		if _, err := VerifyInclusion(id, proofOf(t, c, id), l.vkey); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
	// Another receipt, another leaf, another key: refused.
	if _, err := VerifyInclusion(first[1], p, l.vkey); !errors.Is(err, ErrBadProof) {
		t.Fatalf("another receipt's proof: %v", err)
	}
	other := *p
	other.ReceiptID, other.LeafIndex = first[1], p.LeafIndex+1
	if _, err := VerifyInclusion(first[1], &other, l.vkey); !errors.Is(err, ErrBadProof) {
		t.Fatalf("a proof moved to another leaf: %v", err)
	}
	_, otherKey, _ := note.GenerateKey(rand.Reader, "test.certnode/log")
	if _, err := VerifyInclusion(first[0], p, otherKey); !errors.Is(err, ErrBadProof) {
		t.Fatalf("another log's key: %v", err)
	}
	if _, err := c.Proof(context.Background(), "rcpt-unknown"); !errors.Is(err, schemas.ErrNotLogged) {
		t.Fatalf("an unknown receipt: %v", err)
	}

	// The tree grows; the old one is a prefix of the new.
	old, err := OpenCheckpoint([]byte(p.Checkpoint), l.vkey)
	if err != nil {
		t.Fatal(err)
	}
	later := l.add(700)
	newer := proofOf(t, c, later[699])
	grown, _ := OpenCheckpoint([]byte(newer.Checkpoint), l.vkey)
	cons, err := c.Consistency(context.Background(), old.Size, 0)
	if err != nil {
		t.Fatal(err)
	}
	latest, _ := OpenCheckpoint([]byte(cons.Checkpoint), l.vkey)
	if latest.Size < grown.Size {
		t.Fatalf("the latest checkpoint %d is older than %d", latest.Size, grown.Size)
	}
	if err := VerifyConsistency(old, latest, cons.Hashes); err != nil {
		t.Fatal(err)
	}
	if len(cons.Hashes) > 1 {
		cons.Hashes[0] = cons.Hashes[1]
		if err := VerifyConsistency(old, latest, cons.Hashes); !errors.Is(err, ErrBadProof) {
			t.Fatalf("an altered consistency proof: %v", err)
		}
	}
	for _, sizes := range [][2]uint64{{0, 5}, {10, 5}, {1, latest.Size + 1}} {
		if _, err := c.Consistency(context.Background(), sizes[0], sizes[1]); !errors.Is(err, schemas.ErrBadTreeSize) {
			t.Fatalf("consistency %v: %v", sizes, err)
		}
	}
}

// api serves what the monitor reads: /v1/log/checkpoint and
// /v1/log/consistency, from the log, unless a checkpoint is forced.
type api struct {
	c      *Client
	mu     sync.Mutex
	forced []byte
}

func (a *api) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	forced := a.forced
	a.mu.Unlock()
	switch r.URL.Path {
	case "/v1/log/checkpoint":
		raw, err := a.c.Checkpoint(r.Context())
		if forced != nil {
			raw, err = forced, nil
		}
		if err != nil {
			http.Error(w, err.Error(), 503)
			return
		}
		w.Write(raw)
	case "/v1/log/consistency":
		from, _ := strconv.ParseUint(r.URL.Query().Get("from"), 10, 64)
		to, _ := strconv.ParseUint(r.URL.Query().Get("to"), 10, 64)
		p, err := a.c.Consistency(r.Context(), from, to)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		json.MarshalWrite(w, p)
	}
}

// sign makes a checkpoint of the log's origin with its key: what a log
// that misbehaves would publish.
func (l *testLog) sign(size uint64, root []byte) []byte {
	l.t.Helper()
	raw, err := note.Sign(&note.Note{Text: string(log.Checkpoint{Origin: l.signer.Name(), Size: size, Hash: root}.Marshal())}, l.signer)
	if err != nil {
		l.t.Fatal(err)
	}
	return raw
}

func TestMonitor(t *testing.T) {
	l := newTestLog(t)
	c, _ := NewClient(l.srv.URL, l.vkey, nil)
	a := &api{c: c}
	srv := httptest.NewServer(a)
	defer srv.Close()
	state := filepath.Join(t.TempDir(), "monitor.checkpoint")
	cfg := MonitorConfig{URL: srv.URL, VerifierKey: l.vkey, StateFile: state}
	m, err := NewMonitor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ids := l.add(10)
	proofOf(t, c, ids[9])
	if obs, err := m.Check(ctx); err != nil || obs.Size < 10 || obs.Previous != 0 {
		t.Fatalf("the first checkpoint: %+v %v", obs, err)
	}
	more := l.add(500)
	proofOf(t, c, more[499])
	obs, err := m.Check(ctx)
	if err != nil || !obs.Proved || obs.Size < 510 {
		t.Fatalf("a grown tree: %+v %v", obs, err)
	}

	// A restarted monitor remembers; the log signs a tree that went back,
	// then one of the same size with another root, then a larger one
	// that does not extend it.
	cp, _ := OpenCheckpoint(m.lastRaw, l.vkey)
	m2, err := NewMonitor(cfg)
	if err != nil || m2.last == nil || m2.last.Size != cp.Size {
		t.Fatalf("the state file: %+v %v", m2.last, err)
	}
	other := make([]byte, 32)
	rand.Read(other)
	grown := l.add(5)
	proofOf(t, c, grown[4])
	_, now, _ := c.checkpoint(ctx)
	for _, c := range []struct {
		name string
		raw  []byte
		want error
	}{
		{"rewound", l.sign(cp.Size-1, cp.Hash), ErrRewound},
		{"another root", l.sign(cp.Size, other), ErrFork},
		// The log proves its real tree, which this root is not.
		{"a larger tree not extending it", l.sign(now.Size, other), ErrFork},
	} {
		a.mu.Lock()
		a.forced = c.raw
		a.mu.Unlock()
		if _, err := m2.Check(ctx); !errors.Is(err, c.want) {
			t.Fatalf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	// An answer that is no checkpoint of the log proves nothing.
	a.mu.Lock()
	a.forced = []byte("<html>a proxy's error page</html>")
	a.mu.Unlock()
	if _, err := m2.Check(ctx); err == nil || errors.Is(err, ErrFork) || errors.Is(err, ErrRewound) {
		t.Fatalf("a page that is no checkpoint: %v", err)
	}
	// Run stops at once on a fork.
	a.mu.Lock()
	a.forced = l.sign(cp.Size, other)
	a.mu.Unlock()
	m3, _ := NewMonitor(cfg)
	done := make(chan error, 1)
	go func() { done <- m3.Run(ctx) }()
	select {
	case err := <-done:
		if !errors.Is(err, ErrFork) {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run goes on after a fork")
	}
}
