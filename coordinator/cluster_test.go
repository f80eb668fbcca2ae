package coordinator

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/testenv"
)

const (
	testAdmin = "admin-token-0123456789"
	testNode  = "node-token-0123456789"
)

// testServer is one coordinator node of an in-process cluster. Raft runs
// over real TCP on loopback, as in production; only the processes are
// shared (the failover test with real processes is an integration test).
type testServer struct {
	*Server
	cancel context.CancelFunc
	done   chan error
	dir    string
}

func startNode(t *testing.T, id, dir string, bootstrap bool, join string) *testServer {
	t.Helper()
	return startNodeCfg(t, Config{ID: id, RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", DataDir: dir, Bootstrap: bootstrap, Join: join})
}

// startNodeCfg starts a node with the test tokens and fast elections.
func startNodeCfg(t *testing.T, cfg Config) *testServer {
	t.Helper()
	cfg.AdminToken, cfg.NodeToken = testAdmin, testNode
	if cfg.Resolver == nil {
		cfg.Resolver = testDNS
	}
	cfg.HeartbeatTimeout, cfg.ElectionTimeout = 200*time.Millisecond, 200*time.Millisecond
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := cfg.DataDir
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{Server: s, cancel: cancel, done: make(chan error, 1), dir: dir}
	go func() { ts.done <- s.Run(ctx) }()
	t.Cleanup(ts.stop)
	return ts
}

func (ts *testServer) stop() {
	if ts.cancel == nil {
		return
	}
	ts.cancel()
	<-ts.done
	ts.Close()
	ts.cancel = nil
}

func (ts *testServer) do(t *testing.T, method, path, token, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+ts.Addr()+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (ts *testServer) cluster(t *testing.T) Cluster {
	t.Helper()
	c, err := ts.node.Cluster()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A three-node cluster: nodes join through the API, writes sent to any
// node reach the leader, followers' copies follow through blocking
// queries, a read asking for consistency sees a revoke at once, and the
// cluster keeps taking writes after its leader stops.
func TestCluster(t *testing.T) {
	n1 := startNode(t, "n1", t.TempDir(), true, "")
	testenv.WaitFor(t, "n1 leads", 10*time.Second, func() (bool, string) { return n1.node.IsLeader(), n1.cluster(t).State })
	n2 := startNode(t, "n2", t.TempDir(), false, n1.Addr())
	n3 := startNode(t, "n3", t.TempDir(), false, n1.Addr())
	nodes := []*testServer{n1, n2, n3}
	testenv.WaitFor(t, "three members with their APIs known everywhere", 15*time.Second, func() (bool, string) {
		for _, n := range nodes {
			c := n.cluster(t)
			if len(c.Members) != 3 {
				return false, fmt.Sprintf("%s sees %+v", n.node.cfg.ID, c)
			}
			for _, m := range c.Members {
				if m.HTTP == "" || !m.Voter {
					return false, fmt.Sprintf("%s sees %+v", n.node.cfg.ID, c)
				}
			}
		}
		return true, ""
	})

	// Its answers carry the security headers.
	resp, err := http.Get("http://" + n2.Addr() + "/v1/admin/orgs")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("X-Content-Type-Options") != "nosniff" || resp.Header.Get("Content-Security-Policy") == "" {
		t.Fatalf("security headers: %v", resp.Header)
	}

	// Writes through a follower are forwarded to the leader.
	if code, body := n2.do(t, "POST", "/v1/admin/orgs", testAdmin, `{"id":"acme","name":"Acme","settings":{"brand_color":"#112233"}}`); code != 201 {
		t.Fatalf("create org via a follower: %d %s", code, body)
	}
	if code, body := n3.do(t, "POST", "/v1/admin/orgs", testAdmin, `{"id":"acme","name":"Again"}`); code != 409 || !strings.Contains(body, `"code":"conflict"`) {
		t.Fatalf("create it again: %d %s", code, body)
	}
	if code, body := n3.do(t, "POST", "/v1/admin/orgs", testAdmin, `{"id":"x","name":"X","colour":"red"}`); code != 400 || !strings.Contains(body, `"code":"invalid"`) {
		t.Fatalf("unknown member: %d %s", code, body)
	}
	code, body := n3.do(t, "POST", "/v1/admin/orgs/acme/keys", testAdmin, `{"name":"ci","scopes":["sign","verify"],"cidrs":["127.0.0.0/8"]}`)
	var created keyView
	if code != 201 || json.Unmarshal([]byte(body), &created) != nil || !strings.HasPrefix(created.Key, created.ID+".") {
		t.Fatalf("create key: %d %s", code, body)
	}

	// A browser works through a follower: its sign-in is forwarded, its
	// new session is found at once (the follower asks the leader about
	// credentials it does not know yet), and its writes pass the CSRF
	// check with the Origin of the host it talks to.
	follower := n2
	if n2.node.IsLeader() {
		follower = n3
	}
	op := operator(t, follower)
	uid := createUser(op, "ann@acme.test")
	op.must(200, "PUT", "/v1/orgs/acme/members/"+uid, `{"role":"admin"}`)
	browser := newClient(t, follower)
	browser.login("ann@acme.test", "password-of-ann@acme.test")
	browser.must(200, "GET", "/v1/me", "")
	browser.hdr["Origin"] = "http://" + follower.Addr()
	browser.must(201, "POST", "/v1/orgs/acme/keys", `{"name":"from-a-browser","scopes":["sign"]}`)

	// Every node's copy shows the key, by its hash only.
	for _, n := range nodes {
		code, body := n.do(t, "GET", "/v1/node/state?index=0&wait=5s", testNode, "")
		var st NodeState
		if code != 200 || json.Unmarshal([]byte(body), &st) != nil {
			t.Fatalf("%s state: %d %s", n.node.cfg.ID, code, body)
		}
		testenv.WaitFor(t, n.node.cfg.ID+" has the key", 5*time.Second, func() (bool, string) {
			_, body := n.do(t, "GET", fmt.Sprintf("/v1/node/state?index=%d&wait=2s", st.Index), testNode, "")
			json.Unmarshal([]byte(body), &st)
			k := st.State.Keys[created.ID]
			return k != nil && k.Hash == HashKey(created.Key), body
		})
		if strings.Contains(body, created.Key) {
			t.Fatalf("%s state holds the secret", n.node.cfg.ID)
		}
	}

	// A blocking query on a follower returns as soon as a write lands.
	_, body = n2.do(t, "GET", "/v1/node/state", testNode, "")
	var before NodeState
	json.Unmarshal([]byte(body), &before)
	woke := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		n2.do(t, "GET", fmt.Sprintf("/v1/node/state?index=%d&wait=20s", before.Index), testNode, "")
		woke <- time.Since(start)
	}()
	time.Sleep(200 * time.Millisecond)
	if code, body := n3.do(t, "DELETE", "/v1/admin/orgs/acme/keys/"+created.ID, testAdmin, ""); code != 204 {
		t.Fatalf("revoke: %d %s", code, body)
	}
	select {
	case d := <-woke:
		if d > 5*time.Second {
			t.Fatalf("blocking query woke after %s", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("blocking query did not wake on the revoke")
	}
	// Right after the revoke, a consistent read through any node sees it.
	for _, n := range nodes {
		code, body := n.do(t, "GET", "/v1/admin/orgs/acme/keys?consistent=true", testAdmin, "")
		if code != 200 || !strings.Contains(body, `"revoked_at"`) {
			t.Fatalf("%s consistent read after the revoke: %d %s", n.node.cfg.ID, code, body)
		}
	}

	// Tokens are not interchangeable, and a missing one is refused.
	for _, c := range []struct{ path, token string }{{"/v1/node/state", testAdmin}, {"/v1/admin/cluster", testNode}, {"/v1/admin/cluster", ""}} {
		if code, _ := n1.do(t, "GET", c.path, c.token, ""); code != 401 {
			t.Fatalf("GET %s with token %q: %d", c.path, c.token, code)
		}
	}

	// The leader stops: another is elected and writes go on.
	leader := nodes[0]
	for _, n := range nodes {
		if n.node.IsLeader() {
			leader = n
		}
	}
	leader.stop()
	var rest []*testServer
	for _, n := range nodes {
		if n != leader {
			rest = append(rest, n)
		}
	}
	start := time.Now()
	testenv.WaitFor(t, "a new leader", 10*time.Second, func() (bool, string) {
		for _, n := range rest {
			if n.node.IsLeader() {
				return true, ""
			}
		}
		return false, rest[0].cluster(t).State
	})
	t.Logf("new leader elected %s after the old one stopped", time.Since(start).Round(time.Millisecond))
	testenv.WaitFor(t, "a write after the failover", 10*time.Second, func() (bool, string) {
		code, body := rest[1].do(t, "PATCH", "/v1/admin/orgs/acme", testAdmin, `{"status":"suspended"}`)
		return code == 200 && strings.Contains(body, `"status":"suspended"`), fmt.Sprint(code, body)
	})

	// The old leader comes back from its data on another HTTP port: the
	// cluster learns the new address, so forwarding reaches it.
	back := startNodeCfg(t, Config{ID: leader.node.cfg.ID, RaftAddr: leader.node.RaftAddr(), HTTPAddr: "127.0.0.1:0", DataDir: leader.dir})
	testenv.WaitFor(t, "the restarted node's new address known", 15*time.Second, func() (bool, string) {
		for _, m := range rest[0].cluster(t).Members {
			if m.ID == leader.node.cfg.ID {
				return m.HTTP == back.Addr(), fmt.Sprintf("%+v, want %s", m, back.Addr())
			}
		}
		return false, "not a member"
	})
}

// A node restarted from its data directory comes back with the state,
// from its log and snapshot, without bootstrapping again.
func TestRestartFromDisk(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, "solo", dir, true, "")
	testenv.WaitFor(t, "leader", 10*time.Second, func() (bool, string) { return n.node.IsLeader(), "" })
	for i := range 20 {
		if code, body := n.do(t, "POST", "/v1/admin/orgs", testAdmin, fmt.Sprintf(`{"id":"org-%d","name":"Org %d"}`, i, i)); code != 201 {
			t.Fatalf("create: %d %s", code, body)
		}
		if i == 9 {
			if err := n.node.raft.Snapshot().Error(); err != nil {
				t.Fatal(err)
			}
		}
	}
	n.stop()
	again := startNode(t, "solo", dir, true, "") // --bootstrap on existing state is a restart
	// A leader applies the log after its snapshot once it commits in its
	// new term: the barrier waits for that.
	testenv.WaitFor(t, "restarted leader", 10*time.Second, func() (bool, string) {
		return again.node.IsLeader() && again.node.Consistent() == nil, ""
	})
	code, body := again.do(t, "GET", "/v1/admin/orgs", testAdmin, "")
	if code != 200 || strings.Count(body, `"id":"org-`) != 20 {
		t.Fatalf("orgs after a restart: %d %s", code, body)
	}
	if !bytes.Contains([]byte(body), []byte(`"org-19"`)) {
		t.Fatalf("the last write was lost: %s", body)
	}
}
