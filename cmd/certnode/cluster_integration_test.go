//go:build integration

package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// kafkaCluster is a three-node KRaft cluster run by
// deploy/local/kafka-cluster.sh on free ports with its state in a temporary
// folder, so it shares nothing with the broker on 9092 or other tests.
type kafkaCluster struct {
	t     *testing.T
	local string
	ports []string // client ports of nodes 1, 2, 3
	env   []string
}

const clusterScript = "../../deploy/local/kafka-cluster.sh"

// startKafkaCluster starts the cluster and stops it when the test ends (it
// holds about 1.2 GB). Register it before anything that uses the cluster:
// cleanups run last-in, first-out.
func startKafkaCluster(t *testing.T) *kafkaCluster {
	t.Helper()
	// Six distinct free ports: three for clients, three for controllers.
	var ports []string
	seen := map[string]bool{}
	for i := 0; i < 100 && len(ports) < 6; i++ {
		if p := strings.Split(freeAddr(t), ":")[1]; !seen[p] {
			seen[p] = true
			ports = append(ports, p)
		}
	}
	if len(ports) < 6 {
		t.Fatalf("found only %d free ports", len(ports))
	}
	c := &kafkaCluster{t: t, local: t.TempDir(), ports: ports[:3]}
	c.env = append(os.Environ(), "CERTNODE_LOCAL="+c.local,
		"CERTNODE_KAFKA_CLUSTER_PORTS="+strings.Join(ports[:3], ","),
		"CERTNODE_KAFKA_CLUSTER_CONTROLLER_PORTS="+strings.Join(ports[3:], ","))
	t.Cleanup(func() {
		start := time.Now()
		if out, err := c.script(time.Minute, "stop"); err != nil {
			t.Errorf("kafka-cluster.sh stop: %v\n%s", err, out)
		}
		t.Logf("cluster stopped in %s", time.Since(start).Round(100*time.Millisecond))
		if t.Failed() {
			t.Logf("--- kafka cluster logs:\n%s", c.logs())
		}
	})
	// Generous: on a fresh machine this includes fetching the jars.
	c.run(5*time.Minute, "start")
	return c
}

func (c *kafkaCluster) script(limit time.Duration, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{clusterScript}, args...)...)
	cmd.Env = c.env
	cmd.WaitDelay = 5 * time.Second // a child left holding the output must not hang us
	return cmd.CombinedOutput()
}

// run runs the script and fails the test, with the brokers' logs, if it fails.
func (c *kafkaCluster) run(limit time.Duration, args ...string) {
	c.t.Helper()
	if out, err := c.script(limit, args...); err != nil {
		c.t.Fatalf("kafka-cluster.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (c *kafkaCluster) brokers() []string {
	out := make([]string, len(c.ports))
	for i, p := range c.ports {
		out[i] = "127.0.0.1:" + p
	}
	return out
}

func (c *kafkaCluster) logs() string {
	var b strings.Builder
	for n := 1; n <= 3; n++ {
		for _, f := range []string{"stdout.log", "server.log"} {
			out, _ := exec.Command("tail", "-n", "25", filepath.Join(c.local, "kafka-cluster", strconv.Itoa(n), f)).CombinedOutput()
			fmt.Fprintf(&b, "node %d %s:\n%s\n", n, f, out)
		}
	}
	return b.String()
}

// pid is node n's JVM process id (0 if it is not running).
func (c *kafkaCluster) pid(n int) int {
	b, _ := os.ReadFile(filepath.Join(c.local, "kafka-cluster", strconv.Itoa(n), "kafka.pid"))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// rss is the resident memory of the three JVMs ("?" for one not running).
func (c *kafkaCluster) rss() string {
	out := make([]string, 3)
	for n := 1; n <= 3; n++ {
		out[n-1] = "?"
		status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.pid(n)))
		for _, l := range strings.Split(string(status), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
				kb, _ := strconv.Atoi(f[1])
				out[n-1] = strconv.Itoa(kb / 1024)
			}
		}
	}
	return strings.Join(out, ", ") + " MB"
}

// TestClusterBrokerKilledMidJob: on three brokers (replication factor 3,
// min.insync.replicas=2), the broker leading the tenant's partition is
// SIGKILLed while a 200,000-line bulk sign job is being processed, and
// restarted; every line still gets exactly one signed result, and
// ClickHouse shows each request once.
func TestClusterBrokerKilledMidJob(t *testing.T) {
	const n = 200_000
	t0 := time.Now()
	since := func(t time.Time) string { return time.Since(t).Round(100 * time.Millisecond).String() }
	kc := startKafkaCluster(t)
	t.Logf("three brokers ready in %s", since(t0))

	e := newE2E(t, strings.Join(kc.brokers(), ","))
	// Without -race: at 200,000 lines the race-instrumented roles cost
	// about 150 CPU seconds (worker 72, ingest 59, sink 20) against 20 for
	// the plain build, which would push the test past its time budget on
	// two cores. The other end-to-end tests run the same roles with -race.
	e.bin = certnodeBinaryNoRace(t)
	rf := []string{"--replication-factor", "3"}
	sink := e.sink(rf...)
	// A long produce timeout keeps a busy CI machine from turning slow acks
	// into rejected lines: the upload is not what this test is about.
	ingest := e.ingest(append(rf, "--produce-timeout", "60s")...) // creates the topics before it answers /readyz
	t.Logf("roles ready at %s", since(t0))

	admCl, err := kgo.NewClient(kgo.SeedBrokers(kc.brokers()...))
	if err != nil {
		t.Fatal(err)
	}
	defer admCl.Close()
	adm := kadm.NewClient(admCl)
	topics := schemas.TopicsFor(e.prefix)
	checkReplication(t, adm, topics)

	body := strings.Join(payloads("cluster", n), "\n") + "\n"
	tUp := time.Now()
	job := e.postJob("sign", body, n, 3*time.Minute)
	t.Logf("upload of %d lines (%d MB) accepted in %s", n, len(body)>>20, since(tUp))
	// The worker starts after the upload, so the kill lands early in the
	// job on any machine: on many cores a worker keeping pace with the
	// upload would have little left in flight once the job id is known.
	worker := e.start("worker", append([]string{"worker", "--metrics", freeAddr(t), "--concurrency", "4"}, rf...)...)
	testenv.WaitFor(t, "first results", time.Minute, func() (bool, string) {
		s := e.jobStatus(job)
		return s.Done > 0, fmt.Sprintf("%+v", s)
	})

	part, leader := tenantPartition(t, adm, topics.Requests, n)
	if leader < 1 || leader > 3 {
		t.Fatalf("%s/%d has no leader to kill (%d)", topics.Requests, part, leader)
	}
	_, receiptsLeader := leaderOf(t, adm, topics.Receipts, part)
	before := e.jobStatus(job)
	rssAtKill := kc.rss()
	tKill := time.Now()
	kc.run(30*time.Second, "kill", strconv.Itoa(int(leader)))
	after := e.jobStatus(job)
	t.Logf("killed node %d (leader of %s/%d; %s/%d is led by node %d) with %d..%d of %d lines done, at %s",
		leader, topics.Requests, part, topics.Receipts, part, receiptsLeader, before.Done, after.Done, n, since(t0))
	// The premise: the job had started and was not finished when the broker died.
	if before.Done <= 0 || after.Done >= n || after.Total != n || after.State != "running" {
		t.Fatalf("broker not killed mid-job: done %d before the kill, %+v after", before.Done, after)
	}

	// The controller fences the dead broker (broker.session.timeout.ms, 9 s)
	// and moves its partitions to a surviving in-sync replica...
	testenv.WaitFor(t, "leadership moved off the killed broker", time.Minute, func() (bool, string) {
		_, l := leaderOf(t, adm, topics.Requests, part)
		return l >= 0 && l != leader, fmt.Sprintf("leader %d", l)
	})
	t.Logf("leadership of %s/%d moved %s after the kill; %d done", topics.Requests, part, since(tKill), e.jobStatus(job).Done)
	// ...and with two of three replicas in sync, acks=all writes go on: the
	// worker writes results it created after the kill (record timestamps
	// are the producer's clock, this machine's).
	var written int64
	testenv.WaitFor(t, "results written on two brokers", time.Minute, func() (bool, string) {
		written = recordsSince(adm, topics.Receipts, tKill)
		return written > 0, fmt.Sprintf("%d results stamped after the kill", written)
	})
	t.Logf("%d results written on two brokers %s after the kill; %d done", written, since(tKill), e.jobStatus(job).Done)
	kc.run(3*time.Minute, "restart", strconv.Itoa(int(leader)))
	t.Logf("node %d back %s after the kill; %d done", leader, since(tKill), e.jobStatus(job).Done)

	tRes := time.Now()
	got := e.streamResults(job, n, 3*time.Minute) // lines 1..n, each once, each signed
	t.Logf("results stream: %d lines, read to its end in %s", len(got), since(tRes))
	// Check a sample of the receipts end to end: verifying all 200,000 would
	// cost the race-instrumented test more than the rest of it.
	ks, err := schemas.ParseJWKS(mustRead(t, e.jwksFile))
	if err != nil {
		t.Fatal(err)
	}
	for line := int64(1); line <= n; line += 997 {
		rc, err := ks.Verify([]byte(got[line]))
		if err != nil || !strings.Contains(string(rc.Payload), `"src":"cluster"`) || !strings.Contains(string(rc.Payload), fmt.Sprintf(`"i":%d,`, line-1)) {
			t.Fatalf("line %d: %v %s", line, err, got[line])
		}
	}
	if s := e.jobStatus(job); s.State != "done" || s.Total != n || s.Done != n || s.Valid != n {
		t.Fatalf("job after the stream ended: %+v", s)
	}

	tCH := time.Now()
	conn := e.clickhouse()
	e.waitRows(conn, n, 2*time.Minute)
	_, _, raw := e.rowCounts(conn)
	t.Logf("ClickHouse: %d requests once each (%d rows before merging duplicates) %s after the stream; test took %s",
		n, raw, since(tCH), since(t0))
	t.Logf("broker RSS: %s at the kill, %s now", rssAtKill, kc.rss())
	// CPU time says more than wall time on a shared machine.
	t.Logf("CPU seconds: worker %.1f, ingest %.1f, sink %.1f, brokers %.1f %.1f %.1f (node %d since its restart), this test %.1f",
		cpuSeconds(worker.cmd.Process.Pid), cpuSeconds(ingest.cmd.Process.Pid), cpuSeconds(sink.cmd.Process.Pid),
		cpuSeconds(kc.pid(1)), cpuSeconds(kc.pid(2)), cpuSeconds(kc.pid(3)), leader, cpuSeconds(os.Getpid()))
}

// cpuSeconds is the user and system CPU time process pid has used (0 if
// unknown), from /proc/PID/stat (fields 14 and 15, in 1/100 s).
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	i := bytes.LastIndexByte(b, ')') // the command name may hold spaces
	if err != nil || i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	return float64(utime+stime) / 100
}

// checkReplication proves the premise that a broker can die without losing
// acknowledged records: every partition has three replicas and writes need
// two in sync.
func checkReplication(t *testing.T, adm *kadm.Client, topics schemas.Topics) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Created topics reach every broker's metadata a moment later: the
	// broker asked may not know the last ones yet.
	var details kadm.TopicDetails
	testenv.WaitFor(t, "every topic in the brokers' metadata", 30*time.Second, func() (bool, string) {
		var err error
		if details, err = adm.ListTopics(ctx, topics.All()...); err != nil {
			return false, err.Error()
		}
		for _, name := range topics.All() {
			if d, ok := details[name]; !ok || d.Err != nil || len(d.Partitions) == 0 {
				return false, fmt.Sprintf("topic %s: %v %v", name, ok, d.Err)
			}
		}
		return true, ""
	})
	for _, name := range topics.All() {
		d := details[name]
		for _, p := range d.Partitions {
			if len(p.Replicas) != 3 {
				t.Fatalf("%s/%d has replicas %v, want 3", name, p.Partition, p.Replicas)
			}
		}
	}
	// The broker asked may not host the topics yet either.
	var cfgs kadm.ResourceConfigs
	testenv.WaitFor(t, "the topics' configs", 30*time.Second, func() (bool, string) {
		var err error
		if cfgs, err = adm.DescribeTopicConfigs(ctx, topics.Requests, topics.Receipts); err != nil {
			return false, err.Error()
		}
		for _, rc := range cfgs {
			if rc.Err != nil {
				return false, fmt.Sprintf("%s: %v", rc.Name, rc.Err)
			}
		}
		return true, ""
	})
	for _, rc := range cfgs {
		minISR := "unset"
		for _, c := range rc.Configs {
			if c.Key == "min.insync.replicas" && c.Value != nil {
				minISR = *c.Value
			}
		}
		if rc.Err != nil || minISR != "2" {
			t.Fatalf("topic %s: min.insync.replicas %s (%v), want 2", rc.Name, minISR, rc.Err)
		}
	}
}

// tenantPartition returns the partition of topic that holds the job's
// records, and its leader. The topic is the test's own, so that is the one
// partition whose end offset is at least n.
func tenantPartition(t *testing.T, adm *kadm.Client, topic string, n int) (int32, int32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	part, found := int32(-1), 0
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err == nil && o.Offset >= int64(n) {
			part = o.Partition
			found++
		}
	})
	if found != 1 {
		t.Fatalf("%d partitions of %s hold the job's %d records, want 1", found, topic, n)
	}
	return leaderOf(t, adm, topic, part)
}

// recordsSince counts topic's records stamped after t (0 while the
// brokers cannot say). The end offsets are read first: a record stamped
// before t but appended later (a retried produce) then counts for nothing.
func recordsSince(adm *kadm.Client, topic string, t time.Time) int64 {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return 0
	}
	// The first offset stamped at or after t+1 ms, or the end offset.
	after, err := adm.ListOffsetsAfterMilli(ctx, t.UnixMilli()+1, topic)
	if err != nil {
		return 0
	}
	var n int64
	after.Each(func(o kadm.ListedOffset) {
		if end, ok := ends.Lookup(topic, o.Partition); ok && o.Err == nil && end.Err == nil && end.Offset > o.Offset {
			n += end.Offset - o.Offset
		}
	})
	return n
}

// leaderOf returns partition p of topic and its leader (-1 while none).
func leaderOf(t *testing.T, adm *kadm.Client, topic string, p int32) (int32, int32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	details, err := adm.ListTopics(ctx, topic)
	if err != nil {
		return p, -1 // the admin client's broker may be the one just killed
	}
	if pd, ok := details[topic].Partitions[p]; ok && pd.Err == nil {
		return p, pd.Leader
	}
	return p, -1
}

// longClient has no overall timeout: uploads and result streams of 200,000
// lines are bounded by their own contexts instead.
var longClient = &http.Client{}

// postJob uploads an NDJSON body as a bulk job and returns its id, after
// checking that every one of n lines was accepted.
func (e *e2e) postJob(kind, body string, n int, limit time.Duration) string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+e.http+"/v1/jobs?type="+kind, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+e.apiKey)
	req.Header.Set("Content-Type", "application/x-ndjson")
	resp, err := longClient.Do(req)
	if err != nil {
		e.t.Fatalf("upload: %v", err)
	}
	defer resp.Body.Close()
	var acc struct {
		JobID         string `json:"job_id"`
		LinesAccepted int    `json:"lines_accepted"`
		LinesRejected int    `json:"lines_rejected"`
	}
	if err := json.UnmarshalRead(resp.Body, &acc, json.RejectUnknownMembers(false)); err != nil || resp.StatusCode != 202 || acc.LinesAccepted != n {
		e.t.Fatalf("upload: %d %+v %v", resp.StatusCode, acc, err)
	}
	return acc.JobID
}

// streamResults reads GET /v1/jobs/{id}/results to its end and returns the
// receipt of every line, failing on a line out of range, a line streamed
// twice, a result that is not a signed receipt, or a count other than n:
// so every line 1..n has exactly one result.
func (e *e2e) streamResults(id string, n int, limit time.Duration) map[int64]string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+e.http+"/v1/jobs/"+id+"/results", nil)
	req.Header.Set("Authorization", "Bearer "+e.apiKey)
	resp, err := longClient.Do(req)
	if err != nil {
		e.t.Fatalf("results: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		e.t.Fatalf("results: %d", resp.StatusCode)
	}
	out := make(map[int64]string, n)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var r struct {
			Line    int64          `json:"line"`
			Status  string         `json:"status"`
			Receipt jsontext.Value `json:"receipt"`
		}
		if err := json.Unmarshal(sc.Bytes(), &r, json.RejectUnknownMembers(false)); err != nil {
			e.t.Fatalf("result line %q: %v", sc.Text(), err)
		}
		switch _, dup := out[r.Line]; {
		case r.Line < 1 || r.Line > int64(n):
			e.t.Fatalf("result for line %d of a %d-line job", r.Line, n)
		case dup:
			e.t.Fatalf("line %d streamed twice", r.Line)
		case r.Status != string(schemas.StatusSigned) || len(r.Receipt) == 0:
			e.t.Fatalf("line %d: %s", r.Line, sc.Text())
		}
		out[r.Line] = string(r.Receipt)
	}
	if err := sc.Err(); err != nil {
		e.t.Fatalf("results stream broke after %d lines: %v", len(out), err)
	}
	if len(out) != n {
		e.t.Fatalf("job %s streamed %d results, want %d", id, len(out), n)
	}
	return out
}
