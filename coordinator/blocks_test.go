package coordinator

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/certnode/certnode/internal/testenv"
)

// The detector blocks an address through the node API; the operator lists
// and lifts blocks; the other tiers' copies see them.
func TestBlocks(t *testing.T) {
	n := soloNode(t)
	until := time.Now().UTC().Add(10 * time.Minute).Format(time.RFC3339)
	if code, body := n.do(t, "POST", "/v1/node/blocks", testNode, `{"addr":"127.0.0.5","until":"`+until+`","reason":"credential_stuffing sa_1"}`); code != 204 {
		t.Fatalf("block: %d %s", code, body)
	}
	for _, bad := range []string{`{"addr":"127.0.0.05","until":"` + until + `"}`, `{"addr":"127.0.0.6","until":"2020-01-01T00:00:00Z"}`, `{"addr":"nope","until":"` + until + `"}`} {
		if code, body := n.do(t, "POST", "/v1/node/blocks", testNode, bad); code != 400 {
			t.Errorf("%s: %d %s", bad, code, body)
		}
	}
	if code, _ := n.do(t, "POST", "/v1/node/blocks", "wrong-token-0123456789", `{"addr":"127.0.0.7","until":"`+until+`"}`); code != 401 {
		t.Errorf("a block without the node token: %d", code)
	}
	code, body := n.do(t, "GET", "/v1/admin/blocks", testAdmin, "")
	if code != 200 || !strings.Contains(body, `"addr":"127.0.0.5"`) || !strings.Contains(body, "credential_stuffing") {
		t.Fatalf("blocks: %d %s", code, body)
	}
	r := runReplica(t, n)
	testenv.WaitFor(t, "the replica sees the block", 10*time.Second, func() (bool, string) {
		_, ok := r.Blocked(netip.MustParseAddr("127.0.0.5"))
		return ok, ""
	})
	if _, ok := r.Blocked(netip.MustParseAddr("127.0.0.6")); ok {
		t.Fatal("another address blocked")
	}
	if code, body := n.do(t, "DELETE", "/v1/admin/blocks/127.0.0.5", testAdmin, ""); code != 204 {
		t.Fatalf("unblock: %d %s", code, body)
	}
	testenv.WaitFor(t, "the replica sees the block lifted", 10*time.Second, func() (bool, string) {
		_, ok := r.Blocked(netip.MustParseAddr("127.0.0.5"))
		return !ok, ""
	})
}

// runReplica follows n's state until the test ends.
func runReplica(t *testing.T, n *testServer) *Replica {
	t.Helper()
	return runReplicaWith(t, ReplicaConfig{Addrs: []string{n.Addr()}, Token: testNode, Wait: time.Second})
}

// runReplicaWith runs a replica of cfg until the test ends.
func runReplicaWith(t *testing.T, cfg ReplicaConfig) *Replica {
	t.Helper()
	r, err := NewReplica(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}
