package coordinator

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/go-json-experiment/json"
	"github.com/hashicorp/raft"
)

// snapshotVersion is the first byte of every snapshot; Restore reads every
// version a release ever wrote.
const snapshotVersion = 1

// FSM applies commands to the State. Readers see a consistent state
// through View; WaitShared blocks until what other tiers copy passes an
// index, which is how their local copies follow changes without polling.
type FSM struct {
	mu    sync.RWMutex
	state *State
	index uint64 // raft index of the last applied entry
	// shared is the index of the last entry that changed what other tiers
	// copy (SharedState): sign-ins and the like do not wake their copies.
	shared  uint64
	changed chan struct{} // closed (and replaced) when shared moves
}

// coordinatorOnly marks a command that changes only what the coordinator
// keeps for itself (users, sessions, tokens), not SharedState.
type coordinatorOnly interface{ coordinatorOnly() }

func newFSM() *FSM {
	return &FSM{state: newState(), changed: make(chan struct{})}
}

// applyResult is what Apply returns through the ApplyFuture.
type applyResult struct {
	index uint64
	err   error
}

// Apply runs one log entry. A command that no longer validates (the state
// moved since it was proposed) changes nothing and reports why; an entry
// of an unknown type (from a newer release) is skipped the same way, so a
// log never stops a node from starting.
func (f *FSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	res := applyResult{index: l.Index}
	shared := false
	if l.Type == raft.LogCommand {
		c, err := decode(l.Data)
		if err == nil {
			err = c.validate(f.state)
		}
		if err == nil {
			err = f.state.checkIdem(c)
		}
		if err == nil {
			c.apply(f.state)
			f.state.record(l.Index, c)
			_, private := c.(coordinatorOnly)
			shared = !private
		}
		res.err = err
	}
	f.advance(l.Index, shared)
	return res
}

// advance records a new index, and wakes the waiters when what other
// tiers copy changed; mu is held.
func (f *FSM) advance(index uint64, shared bool) {
	f.index = index
	if shared {
		f.shared = index
		close(f.changed)
		f.changed = make(chan struct{})
	}
}

// View runs read on the current state and returns its index. read must
// not keep or change what it is given.
func (f *FSM) View(read func(s *State)) uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	read(f.state)
	return f.index
}

// WaitShared returns once what other tiers copy has changed past index,
// or ctx ends, with the index of its last change.
func (f *FSM) WaitShared(ctx context.Context, index uint64) uint64 {
	for {
		f.mu.RLock()
		cur, ch := f.shared, f.changed
		f.mu.RUnlock()
		if cur > index {
			return cur
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return cur
		}
	}
}

// snapshotV1 is the body of a version 1 snapshot.
type snapshotV1 struct {
	Index uint64 `json:"index"`
	// Shared is the FSM's shared index (absent from snapshots written
	// before it: then Index, which is never below it).
	Shared uint64 `json:"shared,omitzero"`
	State  *State `json:"state"`
}

// Snapshot copies the state by encoding it while the read lock is held.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	data, err := json.Marshal(snapshotV1{Index: f.index, Shared: f.shared, State: f.state}, json.Deterministic(true))
	if err != nil {
		return nil, err
	}
	return &snapshot{data: append([]byte{snapshotVersion}, data...)}, nil
}

// Restore replaces the state with a snapshot of any known version.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	r := bufio.NewReader(rc)
	v, err := r.ReadByte()
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	snap := snapshotV1{State: newState()}
	switch v {
	case 1:
		if err := json.UnmarshalRead(r, &snap); err != nil {
			return fmt.Errorf("snapshot v1: %w", err)
		}
	default:
		return fmt.Errorf("snapshot version %d is newer than this release reads", v)
	}
	st := snap.State
	if st == nil {
		return fmt.Errorf("snapshot v%d: no state", v)
	}
	// Maps added after a snapshot's version was written start empty.
	st.fill()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state = st
	f.advance(snap.Index, true)
	if snap.Shared != 0 {
		f.shared = snap.Shared
	}
	return nil
}

type snapshot struct{ data []byte }

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s.data); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *snapshot) Release() {}
