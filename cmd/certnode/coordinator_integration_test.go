//go:build integration

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/coordinator"
	"github.com/certnode/certnode/internal/testenv"
)

// The coordinator's tokens in these tests (the same on every node).
const (
	coordAdminToken = "failover-admin-token-0123456789"
	coordNodeToken  = "failover-node-token-0123456789"
)

// maxFailover is the longest a surviving node may take to report a new
// leader after the old one is killed.
const maxFailover = 3 * time.Second

// coordNode is one coordinator process: its addresses and data directory
// stay the same across restarts.
type coordNode struct {
	id, raft, http, dir string
	p                   *proc
}

// coordCluster runs coordinator processes of the test binary on loopback.
type coordCluster struct {
	t      *testing.T
	e      *e2e // only its process helpers: no Kafka or ClickHouse
	nodes  []*coordNode
	client *http.Client
}

func newCoordCluster(t *testing.T, size int) *coordCluster {
	t.Helper()
	env := append(os.Environ(), "CERTNODE_ADMIN_TOKEN="+coordAdminToken, "CERTNODE_NODE_TOKEN="+coordNodeToken)
	c := &coordCluster{t: t, e: &e2e{t: t, dir: t.TempDir(), env: env},
		client: &http.Client{Timeout: 15 * time.Second}}
	for i := 1; i <= size; i++ {
		c.nodes = append(c.nodes, &coordNode{id: fmt.Sprintf("c%d", i), raft: freeAddr(t), http: freeAddr(t),
			dir: fmt.Sprintf("%s/c%d", c.e.dir, i)})
	}
	return c
}

// start runs n's process; extra is --bootstrap, --join ADDR or nothing (a
// restart from its data directory).
func (c *coordCluster) start(n *coordNode, name string, extra ...string) {
	c.t.Helper()
	args := append([]string{"coordinator", "--id", n.id, "--raft", n.raft, "--http", n.http, "--data", n.dir}, extra...)
	n.p = c.e.start(name, args...)
}

func (c *coordCluster) node(id string) *coordNode {
	for _, n := range c.nodes {
		if n.id == id {
			return n
		}
	}
	c.t.Fatalf("no node %q", id)
	return nil
}

// alive fails the test if a node that should run has exited.
func (c *coordCluster) alive(nodes ...*coordNode) {
	c.t.Helper()
	for _, n := range nodes {
		select {
		case <-n.p.done:
			c.t.Fatalf("%s exited: %s", n.id, n.p.output())
		default:
		}
	}
}

// do sends one request; index is the Certnode-Index header, if any.
func (c *coordCluster) do(ctx context.Context, method, addr, path, token, body string) (code int, resp string, index uint64, err error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+path, strings.NewReader(body))
	if err != nil {
		return 0, "", 0, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	r, err := c.client.Do(req)
	if err != nil {
		return 0, "", 0, err
	}
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return 0, "", 0, err
	}
	index, _ = strconv.ParseUint(r.Header.Get("Certnode-Index"), 10, 64)
	return r.StatusCode, string(b), index, nil
}

// cluster is n's view of the cluster.
func (c *coordCluster) cluster(n *coordNode) (coordinator.Cluster, error) {
	var cl coordinator.Cluster
	code, body, _, err := c.do(context.Background(), "GET", n.http, "/v1/admin/cluster", coordAdminToken, "")
	if err == nil && code != 200 {
		err = fmt.Errorf("status %d: %s", code, body)
	}
	if err == nil {
		err = json.Unmarshal([]byte(body), &cl)
	}
	return cl, err
}

// state is n's copy of the state: at once with index 0, else once it is
// past index or after wait.
func (c *coordCluster) state(n *coordNode, index uint64, wait time.Duration) (coordinator.NodeState, error) {
	var st coordinator.NodeState
	path := "/v1/node/state"
	if index > 0 {
		path += fmt.Sprintf("?index=%d&wait=%s", index, wait)
	}
	code, body, _, err := c.do(context.Background(), "GET", n.http, path, coordNodeToken, "")
	if err == nil && code != 200 {
		err = fmt.Errorf("status %d: %s", code, body)
	}
	if err == nil {
		err = json.Unmarshal([]byte(body), &st)
	}
	if err == nil && st.State == nil {
		err = errors.New("no state in the answer")
	}
	return st, err
}

// waitMembers waits until every node of nodes reports exactly want as
// voting members, each with its HTTP address, and a known leader.
func (c *coordCluster) waitMembers(what string, limit time.Duration, nodes []*coordNode, want []*coordNode) {
	c.t.Helper()
	testenv.WaitFor(c.t, what, limit, func() (bool, string) {
		c.alive(nodes...)
		for _, n := range nodes {
			cl, err := c.cluster(n)
			if err != nil {
				return false, fmt.Sprintf("%s: %v", n.id, err)
			}
			if cl.Leader == "" || len(cl.Members) != len(want) {
				return false, fmt.Sprintf("%s sees %+v", n.id, cl)
			}
			for _, w := range want {
				i := slices.IndexFunc(cl.Members, func(m coordinator.Member) bool { return m.ID == w.id })
				if i < 0 || !cl.Members[i].Voter || cl.Members[i].HTTP != w.http || cl.Members[i].Raft != w.raft {
					return false, fmt.Sprintf("%s sees %+v", n.id, cl)
				}
			}
		}
		return true, ""
	})
}

// leader is the leader as the live nodes report it, once they agree and it
// says it leads.
func (c *coordCluster) leader(live []*coordNode) *coordNode {
	c.t.Helper()
	var id string
	testenv.WaitFor(c.t, "an agreed leader", 15*time.Second, func() (bool, string) {
		c.alive(live...)
		id = ""
		for _, n := range live {
			cl, err := c.cluster(n)
			if err != nil || cl.Leader == "" || (id != "" && cl.Leader != id) {
				return false, fmt.Sprintf("%s: %+v %v", n.id, cl, err)
			}
			id = cl.Leader
		}
		l := c.node(id)
		if !slices.Contains(live, l) {
			return false, "the leader " + id + " is not a live node"
		}
		cl, err := c.cluster(l)
		return err == nil && cl.State == "Leader", fmt.Sprintf("%s: %+v %v", id, cl, err)
	})
	return c.node(id)
}

// ackedOrg is an organization whose creation was answered 201.
type ackedOrg struct {
	id    string
	index uint64    // its Certnode-Index
	sent  time.Time // when the request answered 201 was sent
	at    time.Time // when its answer came
}

// orgWriter keeps creating organizations through the nodes in turn,
// retrying one on a 503 or a connection error (bounded), and records every
// creation acknowledged with 201.
type orgWriter struct {
	c      *coordCluster
	prefix string
	addrs  []string
	ctx    context.Context
	cancel context.CancelFunc
	stopc  chan struct{}
	done   chan struct{}

	mu          sync.Mutex
	acked       []ackedOrg
	ambiguous   []string // a retry found it created (409): an earlier answer was lost
	unavailable int      // 503s and connection errors retried
	err         error
}

const (
	writerMaxOrgs     = 50000
	writerMaxAttempts = 1000
	writerOrgLimit    = 30 * time.Second // to settle one creation
	writerPause       = 5 * time.Millisecond
)

func (c *coordCluster) startWriter(prefix string) *orgWriter {
	w := &orgWriter{c: c, prefix: prefix, stopc: make(chan struct{}), done: make(chan struct{})}
	for _, n := range c.nodes {
		w.addrs = append(w.addrs, n.http)
	}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	c.t.Cleanup(func() { w.cancel(); <-w.done }) // before the processes stop
	go w.run()
	return w
}

func (w *orgWriter) run() {
	defer close(w.done)
	for i := range writerMaxOrgs {
		select {
		case <-w.stopc:
			return
		default:
		}
		if err := w.create(i); err != nil {
			w.mu.Lock()
			w.err = err
			w.mu.Unlock()
			return
		}
		time.Sleep(writerPause)
	}
	w.mu.Lock()
	w.err = fmt.Errorf("writer %s: stopped after %d organizations", w.prefix, writerMaxOrgs)
	w.mu.Unlock()
}

func (w *orgWriter) create(i int) error {
	id := fmt.Sprintf("%s-%05d", w.prefix, i)
	body := fmt.Sprintf(`{"id":%q,"name":"Failover %s"}`, id, id)
	deadline := time.Now().Add(writerOrgLimit)
	var unanswered []string // why the attempts so far went unanswered
	for attempt := 0; attempt < writerMaxAttempts && time.Now().Before(deadline); attempt++ {
		if w.ctx.Err() != nil {
			return w.ctx.Err()
		}
		sent := time.Now()
		code, resp, index, err := w.c.do(w.ctx, "POST", w.addrs[(i+attempt)%len(w.addrs)], "/v1/admin/orgs", coordAdminToken, body)
		switch {
		case err != nil || code == http.StatusServiceUnavailable:
			why := strings.TrimSpace(resp)
			if err != nil {
				why = err.Error()
			}
			if len(unanswered) < 5 {
				unanswered = append(unanswered, fmt.Sprintf("attempt %d: %s", attempt, why))
			}
			w.mu.Lock()
			w.unavailable++
			w.mu.Unlock()
			time.Sleep(20 * time.Millisecond)
			continue
		case code == http.StatusCreated:
			if index == 0 {
				return fmt.Errorf("create %s: 201 without Certnode-Index: %s", id, resp)
			}
			w.mu.Lock()
			w.acked = append(w.acked, ackedOrg{id: id, index: index, sent: sent, at: time.Now()})
			w.mu.Unlock()
			return nil
		case code == http.StatusConflict && attempt > 0:
			w.mu.Lock()
			w.ambiguous = append(w.ambiguous, id+" after "+strings.Join(unanswered, "; "))
			w.mu.Unlock()
			return nil
		default:
			return fmt.Errorf("create %s (attempt %d): %d %s", id, attempt, code, resp)
		}
	}
	return fmt.Errorf("create %s: no answer but 503 or connection errors within %s", id, writerOrgLimit)
}

// snapshot returns the acknowledged creations so far, and the writer's
// error if it stopped on one.
func (w *orgWriter) snapshot() ([]ackedOrg, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.acked), w.err
}

// stop lets the creation under way settle and stops the writer.
func (w *orgWriter) stop(t *testing.T) {
	t.Helper()
	close(w.stopc)
	select {
	case <-w.done:
	case <-time.After(writerOrgLimit + 5*time.Second):
		t.Fatalf("writer %s did not stop", w.prefix)
	}
}

// check fails the test if the writer stopped on an error.
func (w *orgWriter) check(t *testing.T) {
	t.Helper()
	if _, err := w.snapshot(); err != nil {
		t.Fatal(err)
	}
}

// ackedSince counts the creations sent after at and acknowledged, and
// returns when the first was.
func (w *orgWriter) ackedSince(at time.Time) (n int, first time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, a := range w.acked {
		if a.sent.After(at) {
			if n == 0 {
				first = a.at
			}
			n++
		}
	}
	return n, first
}

// checkConsistentReads reads every acknowledged organization from the
// leader with ?consistent=true.
func (c *coordCluster) checkConsistentReads(leader *coordNode, acked []ackedOrg) {
	c.t.Helper()
	const workers = 8
	jobs := make(chan ackedOrg)
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for a := range jobs {
				if err := c.consistentRead(leader, a.id); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	for _, a := range acked {
		jobs <- a
	}
	close(jobs)
	wg.Wait()
	if len(errs) > 0 {
		c.t.Fatalf("%d of %d acknowledged organizations not read back from the leader %s, as %v", len(errs), len(acked), leader.id, errors.Join(errs[:min(len(errs), 10)]...))
	}
}

func (c *coordCluster) consistentRead(n *coordNode, id string) error {
	var last string
	for range 50 { // a 503 while leadership moves
		code, body, _, err := c.do(context.Background(), "GET", n.http, "/v1/admin/orgs/"+id+"?consistent=true", coordAdminToken, "")
		switch {
		case err != nil:
			last = err.Error()
		case code == 200:
			var o coordinator.Org
			if err := json.Unmarshal([]byte(body), &o); err != nil || o.ID != id {
				return fmt.Errorf("%s: %s (%v)", id, body, err)
			}
			return nil
		case code != http.StatusServiceUnavailable:
			return fmt.Errorf("%s: %d %s", id, code, body)
		default:
			last = body
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s: %s", id, last)
}

// waitCaughtUp waits until n's state is at least at index and holds every
// organization of acked.
func (c *coordCluster) waitCaughtUp(what string, n *coordNode, index uint64, acked []ackedOrg) coordinator.NodeState {
	c.t.Helper()
	var st coordinator.NodeState
	testenv.WaitFor(c.t, what, 60*time.Second, func() (bool, string) {
		c.alive(n)
		var err error
		if st, err = c.state(n, max(index, 1)-1, 2*time.Second); err != nil {
			return false, err.Error()
		}
		if st.Index < index {
			return false, fmt.Sprintf("%s at index %d, want %d", n.id, st.Index, index)
		}
		if missing := missingOrgs(st.State, acked); len(missing) > 0 {
			return false, fmt.Sprintf("%s at index %d misses %d acknowledged organizations, as %v", n.id, st.Index, len(missing), missing[:min(len(missing), 5)])
		}
		return true, ""
	})
	return st
}

func missingOrgs(st *coordinator.State, acked []ackedOrg) []string {
	var missing []string
	for _, a := range acked {
		if o := st.Orgs[a.id]; o == nil || o.ID != a.id {
			missing = append(missing, a.id)
		}
	}
	return missing
}

// Three coordinator processes on loopback: the leader is killed (SIGKILL)
// under a steady stream of writes, a surviving node reports a new leader
// within maxFailover, writes go on, and no acknowledged write is lost. The
// killed node restarts from its data directory and catches up; then a
// follower is wiped (killed, removed from the cluster, its directory
// deleted) and joins again, empty, as a voter that catches up.
func TestCoordinatorFailover(t *testing.T) {
	c := newCoordCluster(t, 3)
	n1, n2, n3 := c.nodes[0], c.nodes[1], c.nodes[2]

	// 1. n1 bootstraps; n2 and n3 join through it.
	c.start(n1, n1.id, "--bootstrap")
	c.waitMembers("n1 leads a cluster of itself", 30*time.Second, c.nodes[:1], c.nodes[:1])
	c.start(n2, n2.id, "--join", n1.http)
	c.start(n3, n3.id, "--join", n1.http)
	c.waitMembers("three voting members with their APIs, seen by every node", 60*time.Second, c.nodes, c.nodes)

	// 2. Writers create organizations through every node in turn.
	writers := []*orgWriter{c.startWriter("wa"), c.startWriter("wb")}
	allAcked := func() ([]ackedOrg, uint64) {
		t.Helper()
		var out []ackedOrg
		var top uint64
		for _, w := range writers {
			acked, err := w.snapshot()
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, acked...)
			for _, a := range acked {
				top = max(top, a.index)
			}
		}
		return out, top
	}
	testenv.WaitFor(t, "writes before the failover", 30*time.Second, func() (bool, string) {
		acked, _ := allAcked()
		return len(acked) >= 100, fmt.Sprintf("%d acknowledged", len(acked))
	})

	// 3. Kill the leader; a survivor must report a new one in time.
	old := c.leader(c.nodes)
	var rest []*coordNode
	for _, n := range c.nodes {
		if n != old {
			rest = append(rest, n)
		}
	}
	before, _ := allAcked()
	killed := time.Now()
	old.p.kill()
	var newID, reporter string
	var failover time.Duration
	for deadline := killed.Add(15 * time.Second); newID == "" && time.Now().Before(deadline); {
		for _, n := range rest {
			if cl, err := c.cluster(n); err == nil && cl.Leader != "" && cl.Leader != old.id {
				failover, newID, reporter = time.Since(killed), cl.Leader, n.id
				break
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	if newID == "" {
		t.Fatalf("no new leader reported within 15s of killing %s", old.id)
	}
	t.Logf("FAILOVER: leader %s killed with %d writes acknowledged; %s reported the new leader %s after %s",
		old.id, len(before), reporter, newID, failover.Round(time.Millisecond))
	if failover >= maxFailover {
		t.Errorf("failover took %s, want under %s", failover.Round(time.Millisecond), maxFailover)
	}
	leader := c.leader(rest)
	if leader.id != newID {
		t.Logf("leadership moved again: %s reported %s, the survivors now agree on %s", reporter, newID, leader.id)
	}
	testenv.WaitFor(t, "writes go on after the failover", 30*time.Second, func() (bool, string) {
		c.alive(rest...)
		total := 0
		for _, w := range writers {
			w.check(t)
			n, _ := w.ackedSince(killed)
			total += n
		}
		return total >= 50, fmt.Sprintf("%d acknowledged since the kill", total)
	})
	var firstAfter time.Time
	for _, w := range writers {
		if _, first := w.ackedSince(killed); !first.IsZero() && (firstAfter.IsZero() || first.Before(firstAfter)) {
			firstAfter = first
		}
	}
	t.Logf("FAILOVER: first write sent after the kill acknowledged %s after it", firstAfter.Sub(killed).Round(time.Millisecond))

	// 4. Nothing acknowledged is lost: every creation answered 201 reads
	// back from the new leader with a consistent read.
	acked, _ := allAcked()
	c.checkConsistentReads(leader, acked)
	t.Logf("%d acknowledged organizations (%d before the kill) read back from the new leader %s", len(acked), len(before), leader.id)

	// 5. The killed node restarts from its data directory (neither
	// --bootstrap nor --join) and catches up with the leader.
	c.start(old, old.id+"-restarted")
	acked, _ = allAcked()
	lst, err := c.state(leader, 0, 0)
	if err != nil {
		t.Fatalf("leader state: %v", err)
	}
	c.waitMembers("the restarted node back as a voter", 60*time.Second, c.nodes, c.nodes)
	st := c.waitCaughtUp("the restarted node catches up", old, lst.Index, acked)
	t.Logf("restarted %s at index %d (the leader was at %d) with %d organizations", old.id, st.Index, lst.Index, len(st.State.Orgs))

	// 6. Wipe a follower: kill it, remove it, delete its data and start it
	// empty with --join; it comes back as a voter with everything.
	leader = c.leader(c.nodes)
	var wiped *coordNode
	for _, n := range c.nodes {
		if n != leader && (wiped == nil || wiped == old) {
			wiped = n
		}
	}
	var others []*coordNode
	for _, n := range c.nodes {
		if n != wiped {
			others = append(others, n)
		}
	}
	wiped.p.kill()
	testenv.WaitFor(t, "remove "+wiped.id, 30*time.Second, func() (bool, string) {
		code, body, _, err := c.do(context.Background(), "DELETE", leader.http, "/v1/admin/cluster/members/"+wiped.id, coordAdminToken, "")
		if err != nil || code == http.StatusServiceUnavailable {
			return false, fmt.Sprint(code, body, err)
		}
		if code != 200 {
			t.Fatalf("remove %s: %d %s", wiped.id, code, body)
		}
		return true, ""
	})
	c.waitMembers(wiped.id+" removed", 30*time.Second, others, others)
	if err := os.RemoveAll(wiped.dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(wiped.dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s still there: %v", wiped.dir, err)
	}
	c.start(wiped, wiped.id+"-wiped", "--join", leader.http)
	c.waitMembers(wiped.id+" rejoined as a voter", 60*time.Second, c.nodes, c.nodes)
	acked, _ = allAcked()
	if lst, err = c.state(leader, 0, 0); err != nil {
		t.Fatalf("leader state: %v", err)
	}
	st = c.waitCaughtUp("the wiped node catches up", wiped, lst.Index, acked)
	t.Logf("wiped %s rejoined at index %d (the leader was at %d) with %d organizations", wiped.id, st.Index, lst.Index, len(st.State.Orgs))

	// The writers stop; every node ends at the same index with every
	// acknowledged organization, and the leader reads each back.
	for _, w := range writers {
		w.stop(t)
		w.check(t)
	}
	acked, top := allAcked()
	leader = c.leader(c.nodes)
	c.checkConsistentReads(leader, acked)
	if lst, err = c.state(leader, 0, 0); err != nil {
		t.Fatalf("leader state: %v", err)
	}
	if lst.Index < top {
		t.Fatalf("leader %s at index %d, below an acknowledged write's %d", leader.id, lst.Index, top)
	}
	for _, n := range c.nodes {
		st := c.waitCaughtUp(n.id+" has everything", n, lst.Index, acked)
		if st.Index != lst.Index || len(st.State.Orgs) != len(lst.State.Orgs) {
			t.Fatalf("%s at index %d with %d organizations, the leader at %d with %d", n.id, st.Index, len(st.State.Orgs), lst.Index, len(lst.State.Orgs))
		}
	}
	var ambiguous []string
	var unavailable int
	for _, w := range writers {
		w.mu.Lock()
		ambiguous = append(ambiguous, w.ambiguous...)
		unavailable += w.unavailable
		w.mu.Unlock()
	}
	t.Logf("%d organizations acknowledged, %d more created with a lost answer, %d retries after a 503 or connection error; every node at index %d",
		len(acked), len(ambiguous), unavailable, lst.Index)
	for _, a := range ambiguous {
		t.Logf("created, answer lost: %s", a)
	}
}
