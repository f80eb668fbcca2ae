package coordinator

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/testenv"
)

// The local copy admits a key within 2 s of its creation and refuses it
// within 2 s of its revocation or its organization's suspension; without
// the coordinator it serves the last known state for MaxStale, then
// refuses every key, and it recovers when the coordinator returns.
func TestReplicaFollowsTheCluster(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, "solo", dir, true, "")
	testenv.WaitFor(t, "leader", 10*time.Second, func() (bool, string) { return n.node.IsLeader(), "" })
	if code, body := n.do(t, "POST", "/v1/admin/orgs", testAdmin, `{"id":"acme","name":"Acme"}`); code != 201 {
		t.Fatalf("org: %d %s", code, body)
	}
	r, err := NewReplica(ReplicaConfig{Addrs: []string{"127.0.0.1:1", n.Addr()}, Token: testNode, MaxStale: 1500 * time.Millisecond, Wait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if err := r.Ready(ctx); err == nil {
		t.Fatal("ready before any state")
	}

	newKey := func() (id, key string) {
		code, body := n.do(t, "POST", "/v1/admin/orgs/acme/keys", testAdmin, `{"scopes":["sign"]}`)
		var v keyView
		if code != 201 || json.Unmarshal([]byte(body), &v) != nil {
			t.Fatalf("key: %d %s", code, body)
		}
		return v.ID, v.Key
	}
	within := func(what string, want bool, key string, limit time.Duration) {
		t.Helper()
		start := time.Now()
		testenv.WaitFor(t, what, limit, func() (bool, string) {
			_, ok := r.Authenticate("Bearer " + key)
			return ok == want, ""
		})
		t.Logf("%s after %s", what, time.Since(start).Round(time.Millisecond))
	}
	id, key := newKey()
	within("a new key admitted", true, key, 2*time.Second)
	if tn, _ := r.Authenticate(key); tn.ID != "acme" {
		t.Fatalf("tenant %+v", tn)
	}
	for _, bad := range []string{"", "cnk_nothing", id, id + ".wrong-secret", strings.Replace(key, id, "cnk_AAAAAAAAAAAA", 1)} {
		if _, ok := r.Authenticate(bad); ok {
			t.Fatalf("admitted %q", bad)
		}
	}
	n.do(t, "DELETE", "/v1/admin/orgs/acme/keys/"+id, testAdmin, "")
	within("a revoked key refused", false, key, 2*time.Second)

	_, key2 := newKey()
	within("a second key admitted", true, key2, 2*time.Second)
	n.do(t, "PATCH", "/v1/admin/orgs/acme", testAdmin, `{"status":"suspended"}`)
	within("a suspended organization's key refused", false, key2, 2*time.Second)
	n.do(t, "PATCH", "/v1/admin/orgs/acme", testAdmin, `{"status":"active"}`)
	within("the key admitted again after reactivation", true, key2, 2*time.Second)

	// The coordinator goes away: known keys keep working for MaxStale.
	httpAddr, raftAddr := n.Addr(), n.node.RaftAddr()
	n.stop()
	if _, ok := r.Authenticate(key2); !ok || r.Ready(ctx) != nil {
		t.Fatalf("the last known state stopped serving at once (ready: %v)", r.Ready(ctx))
	}
	testenv.WaitFor(t, "fail closed after MaxStale", 5*time.Second, func() (bool, string) {
		_, ok := r.Authenticate(key2)
		return !ok, ""
	})
	if err := r.Ready(ctx); err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("ready while stale: %v", err)
	}
	// It comes back (same addresses, same data): so does the copy.
	startNodeCfg(t, Config{ID: "solo", RaftAddr: raftAddr, HTTPAddr: httpAddr, DataDir: dir})
	within("served again once the coordinator is back", true, key2, 15*time.Second)
	if err := r.Ready(ctx); err != nil {
		t.Fatalf("ready after recovery: %v", err)
	}
}

// follow runs a replica until the test ends.
func follow(t *testing.T, cfg ReplicaConfig) (*Replica, context.Context) {
	t.Helper()
	r, err := NewReplica(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return r, ctx
}
