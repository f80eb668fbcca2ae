package coordinator

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// FuzzApply: no log entry panics the FSM, and whatever it applies leaves
// the state valid (every organization checks out, every key belongs to
// one and checks out): a command is checked before it changes anything.
func FuzzApply(f *testing.F) {
	key := APIKey{ID: "cnk_AAAAAAAAAAAA", Org: "acme", Hash: HashKey("x"), Scopes: []string{"sign"}, CreatedAt: t0}
	for _, c := range []Command{
		&PutOrg{Org: testOrg("acme"), Create: true}, &PutOrg{Org: testOrg("acme")}, &CreateKey{Key: key},
		&RevokeKey{ID: key.ID, Org: "acme", At: t0.Add(time.Hour)}, &SetMember{ID: "n1", HTTP: "127.0.0.1:1"},
		&SetAdmitted{Month: "2026-11", Counts: map[string]int64{"acme": 3}},
	} {
		data, _ := encode(c)
		f.Add(data)
	}
	f.Add([]byte{0})
	f.Add([]byte{byte(cmdCreateKey), '{', '}'})
	f.Fuzz(func(t *testing.T, data []byte) {
		fsm := newFSM()
		seed, _ := encode(&PutOrg{Org: testOrg("acme"), Create: true})
		fsm.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: seed})
		fsm.Apply(&raft.Log{Index: 2, Type: raft.LogCommand, Data: data})
		fsm.View(func(s *State) {
			for id, o := range s.Orgs {
				if o.ID != id || o.check() != nil {
					t.Fatalf("organization %q applied invalid: %+v", id, o)
				}
			}
			for id, k := range s.Keys {
				if k.ID != id || k.check() != nil || s.Orgs[k.Org] == nil {
					t.Fatalf("key %q applied invalid: %+v", id, k)
				}
			}
		})
	})
}

// FuzzRestore: no snapshot bytes panic Restore, and a restored state has
// all its maps.
func FuzzRestore(f *testing.F) {
	fsm := newFSM()
	seed, _ := encode(&PutOrg{Org: testOrg("acme"), Create: true})
	fsm.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: seed})
	snap, _ := fsm.Snapshot()
	var buf sinkBuffer
	snap.Persist(&buf)
	f.Add(buf.Bytes())
	f.Add([]byte{1, '{', '}'})
	f.Add([]byte{2})
	f.Fuzz(func(t *testing.T, data []byte) {
		g := newFSM()
		if g.Restore(io.NopCloser(bytes.NewReader(data))) != nil {
			return
		}
		g.View(func(s *State) {
			if s.Orgs == nil || s.Keys == nil || s.Members == nil {
				t.Fatalf("restored state lacks a map: %+v", s)
			}
		})
	})
}
