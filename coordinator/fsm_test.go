package coordinator

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/hashicorp/raft"

	"github.com/certnode/certnode/internal/tenants"
)

var t0 = time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)

func testOrg(id string) Org {
	return Org{ID: id, Name: "Org " + id, Status: OrgActive, Plan: "free", CreatedAt: t0, UpdatedAt: t0}
}

func testKey(t *testing.T, org string) APIKey {
	t.Helper()
	id, _, hash, err := NewAPIKey()
	if err != nil {
		t.Fatal(err)
	}
	return APIKey{ID: id, Org: org, Hash: hash, Scopes: []string{tenants.ScopeSign}, CreatedAt: t0}
}

// applyTo appends c to f as the next log entry and returns its result.
func applyTo(t *testing.T, f *FSM, c Command) error {
	t.Helper()
	data, err := encode(c)
	if err != nil {
		t.Fatal(err)
	}
	return applyRaw(f, data)
}

func applyRaw(f *FSM, data []byte) error {
	f.mu.RLock()
	next := f.index + 1
	f.mu.RUnlock()
	return f.Apply(&raft.Log{Index: next, Type: raft.LogCommand, Data: data}).(applyResult).err
}

// Commands are checked against the state they apply to: a refused one
// changes nothing, and an entry of an unknown type (a newer release's)
// is skipped without stopping the node.
func TestFSMValidatesCommands(t *testing.T) {
	f := newFSM()
	key := testKey(t, "acme")
	bad := testOrg("Not An ID")
	bad.Settings.BrandColor = "red"
	cases := []struct {
		name string
		c    Command
		want error
	}{
		{"key of an unknown org", &CreateKey{Key: key}, ErrNotFound},
		{"org with a bad id and colour", &PutOrg{Org: bad, Create: true}, ErrInvalid},
		{"update of an unknown org", &PutOrg{Org: testOrg("ghost")}, ErrNotFound},
		{"create", &PutOrg{Org: testOrg("acme"), Create: true}, nil},
		{"create again", &PutOrg{Org: testOrg("acme"), Create: true}, ErrConflict},
		{"key", &CreateKey{Key: key}, nil},
		{"same key id again", &CreateKey{Key: key}, ErrConflict},
		{"key with an unknown scope", &CreateKey{Key: func() APIKey { k := testKey(t, "acme"); k.Scopes = []string{"root"}; return k }()}, ErrInvalid},
		{"key with a bad CIDR", &CreateKey{Key: func() APIKey { k := testKey(t, "acme"); k.CIDRs = []string{"10.0.0.0/33"}; return k }()}, ErrInvalid},
		{"revoke in another org", &RevokeKey{ID: key.ID, Org: "other", At: t0}, ErrNotFound},
		{"revoke", &RevokeKey{ID: key.ID, Org: "acme", At: t0.Add(time.Hour)}, nil},
		{"revoke again", &RevokeKey{ID: key.ID, Org: "acme", At: t0.Add(2 * time.Hour)}, ErrConflict},
	}
	for _, tc := range cases {
		if err := applyTo(t, f, tc.c); (tc.want == nil) != (err == nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	f.View(func(s *State) {
		if len(s.Orgs) != 1 || len(s.Keys) != 1 || !s.Keys[key.ID].RevokedAt.Equal(t0.Add(time.Hour)) {
			t.Fatalf("state %+v", s)
		}
	})

	before := f.View(func(*State) {})
	for _, raw := range [][]byte{nil, {99, '{', '}'}, append([]byte{byte(cmdPutOrg)}, `{"org":{},"create":true,"extra":1}`...)} {
		if err := applyRaw(f, raw); !errors.Is(err, ErrInvalid) {
			t.Errorf("entry %q: %v, want ErrInvalid", raw, err)
		}
	}
	if after := f.View(func(*State) {}); after != before+3 {
		t.Fatalf("index %d after 3 skipped entries from %d", after, before)
	}
	if _, err := decode([]byte{200}); err == nil || !strings.Contains(err.Error(), "unknown command type 200") {
		t.Fatalf("decode of an unknown type: %v", err)
	}
}

// A snapshot restores the same state at the same index, a version 1
// snapshot written by an earlier release loads, and one from a newer
// release is refused rather than misread.
func TestFSMSnapshots(t *testing.T) {
	f := newFSM()
	applyTo(t, f, &PutOrg{Org: testOrg("acme"), Create: true})
	key := testKey(t, "acme")
	applyTo(t, f, &CreateKey{Key: key})
	applyTo(t, f, &SetMember{ID: "n1", HTTP: "127.0.0.1:1"})
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var buf sinkBuffer
	if err := snap.Persist(&buf); err != nil {
		t.Fatal(err)
	}
	g := newFSM()
	if err := g.Restore(io.NopCloser(bytes.NewReader(buf.Bytes()))); err != nil {
		t.Fatal(err)
	}
	var got, want []byte
	gi := g.View(func(s *State) { got, _ = encodeState(s) })
	fi := f.View(func(s *State) { want, _ = encodeState(s) })
	if gi != fi || !bytes.Equal(got, want) {
		t.Fatalf("restored index %d state %s, want %d %s", gi, got, fi, want)
	}

	// Written by hand as release 1 writes it; "members" is left out, as a
	// snapshot from before a map existed would.
	v1 := append([]byte{1}, `{"index":7,"state":{"orgs":{"acme":{"id":"acme","name":"Acme","status":"suspended","plan":"pro","settings":{},"created_at":"2026-11-27T08:00:00Z","updated_at":"2026-11-27T08:00:00Z"}},"keys":{}}}`...)
	h := newFSM()
	if err := h.Restore(io.NopCloser(bytes.NewReader(v1))); err != nil {
		t.Fatal(err)
	}
	idx := h.View(func(s *State) {
		if s.Orgs["acme"].Status != OrgSuspended || s.Members == nil {
			t.Fatalf("v1 state %+v", s)
		}
	})
	if idx != 7 {
		t.Fatalf("v1 index %d", idx)
	}
	if err := newFSM().Restore(io.NopCloser(bytes.NewReader([]byte{9, '{', '}'}))); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("snapshot v9: %v", err)
	}
}

// WaitShared returns as soon as what other tiers copy changes past the
// index asked for, not on a change that is the coordinator's own (a
// sign-in), and when the context ends without a change.
func TestFSMWaitShared(t *testing.T) {
	f := newFSM()
	applyTo(t, f, &CreateUser{User: fuzzUser, Password: "$argon2id$x"})
	done := make(chan uint64)
	go func() { done <- f.WaitShared(context.Background(), 0) }()
	time.Sleep(20 * time.Millisecond)
	applyTo(t, f, &Login{Meta: Meta{At: t0}, User: fuzzUser.ID}) // index 2: the coordinator's own
	select {
	case got := <-done:
		t.Fatalf("woke at %d on a sign-in", got)
	case <-time.After(50 * time.Millisecond):
	}
	applyTo(t, f, &SetMember{ID: "n1", HTTP: "x"}) // index 3
	select {
	case got := <-done:
		if got != 3 {
			t.Fatalf("woke at index %d", got)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("WaitShared did not wake on a change")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if got := f.WaitShared(ctx, 3); got != 3 {
		t.Fatalf("timed-out wait returned %d", got)
	}
}

func encodeState(s *State) ([]byte, error) { return json.Marshal(s, json.Deterministic(true)) }

type sinkBuffer struct{ bytes.Buffer }

func (*sinkBuffer) ID() string    { return "test" }
func (*sinkBuffer) Cancel() error { return nil }
func (*sinkBuffer) Close() error  { return nil }
