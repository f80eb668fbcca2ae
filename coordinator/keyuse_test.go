package coordinator

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/testenv"
)

// A key used on a node shows its last-used time in the key list: the
// node's limiter reports it with a renewal, and the leader commits it
// (within a minute; here at once). Recording it wakes no copy of the
// state: it is the coordinator's own.
func TestKeyLastUsed(t *testing.T) {
	defer func(d time.Duration) { keyUseCommitEvery = d }(keyUseCommitEvery)
	keyUseCommitEvery = 0
	n := soloNode(t)
	op := operator(t, n)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"Acme"}`)
	var k keyView
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/acme/keys", `{"scopes":["sign"]}`)), &k)

	r, err := NewReplica(ReplicaConfig{Addrs: []string{n.Addr()}, Token: testNode, Wait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	l, err := NewLimiter(r, LimiterConfig{Renew: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	n.leases.commitEvery = 0
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { r.Run(ctx); done <- struct{}{} }()
	go func() { l.Run(ctx); done <- struct{}{} }()
	defer func() { cancel(); <-done; <-done }()
	testenv.WaitFor(t, "the copy has the key", 2*time.Second, func() (bool, string) {
		_, ok := r.Authenticate(k.Key)
		return ok, ""
	})
	indexes := func() (index, shared uint64) {
		index = n.node.fsm.View(func(*State) { shared = n.node.fsm.shared })
		return index, shared
	}
	indexBefore, sharedBefore := indexes()
	used := time.Now().Truncate(time.Second)
	r.Authenticate(k.Key)
	testenv.WaitFor(t, "the key's last use in the list", 5*time.Second, func() (bool, string) {
		var list struct {
			Keys []keyView `json:"keys"`
		}
		json.Unmarshal([]byte(op.must(200, "GET", "/v1/orgs/acme/keys", "")), &list)
		return len(list.Keys) == 1 && !list.Keys[0].LastUsedAt.Before(used), fmt.Sprint(list)
	})
	if index, shared := indexes(); index <= indexBefore || shared != sharedBefore {
		t.Fatalf("index %d -> %d, shared %d -> %d: key use must be applied without moving the shared index",
			indexBefore, index, sharedBefore, shared)
	}
}
