//go:build integration

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/go-json-experiment/json"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// certnodeBinary is the binary the end-to-end tests run every role with,
// as its own process, as in production.
func certnodeBinary(t *testing.T) string { return testenv.CertnodeBinary(t, ".", true) }

// certnodeBinaryNoRace is built without the race detector, for tests whose
// volume the detector's several-fold CPU cost would push past their time
// limit. Every other test keeps -race.
func certnodeBinaryNoRace(t *testing.T) string { return testenv.CertnodeBinary(t, ".", false) }

// e2e is one isolated deployment on the shared real services: its own
// topic prefix (so topics and consumer groups), tenant, key and secret.
type e2e struct {
	t      *testing.T
	dir    string
	prefix string
	tenant string
	apiKey string
	// producerKeyID and producerSecret sign records the tests produce
	// straight into Kafka, as a customer system would.
	producerKeyID  string
	producerSecret string
	kafka          string
	ch             string
	http           string
	env            []string
	jwksFile       string
	// kekModule and kekToken hold the organizations' KEKs (SoftHSM2).
	kekModule, kekToken string
	// coordinator is the coordinated() cluster's address; ingestUp says
	// an ingest process follows it (newOrgKey then waits for its copy).
	coordinator string
	ingestUp    bool
	keyring     string
	bin         string // the certnode binary the roles run; empty: certnodeBinary
	// admin are the options of the cleanup's client that deletes the
	// topics (TLS and an administrator's credentials on a secure broker).
	admin []kgo.Opt
}

// newE2E sets up a deployment on the Kafka at kafkaAddr (empty: the shared
// one). keygen are extra flags for the `certnode keys generate` that makes
// its key ring, such as --alg EdDSA.
func newE2E(t *testing.T, kafkaAddr string, keygen ...string) *e2e {
	t.Helper()
	var b [5]byte
	rand.Read(b[:])
	suffix := fmt.Sprintf("%x", b)
	e := &e2e{t: t, dir: t.TempDir(), prefix: "e2e-" + suffix, tenant: "tenant-" + suffix,
		kafka: kafkaAddr, ch: testenv.ClickHouseAddr(t), http: freeAddr(t)}
	if e.kafka == "" {
		e.kafka = testenv.KafkaBrokers(t)[0]
	}
	t.Cleanup(func() { // after the processes stopped (cleanups run last-in, first-out)
		cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(strings.Split(e.kafka, ",")...)}, e.admin...)...)
		if err != nil {
			return
		}
		defer cl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		kadm.NewClient(cl).DeleteTopics(ctx, schemas.TopicsFor(e.prefix).All()...)
	})
	e.apiKey, _ = tenants.GenerateKey()
	e.producerKeyID, e.producerSecret = "pk_"+suffix, "ps_"+suffix+"_0123456789abcdef0123456789abcdef"
	tenFile := filepath.Join(e.dir, "tenants.json")
	if err := writeJSONFile(tenFile, tenants.File{Tenants: []tenants.Tenant{{ID: e.tenant, APIKeyHashes: []string{tenants.HashKey(e.apiKey)},
		ProducerKeys: []tenants.ProducerKey{{ID: e.producerKeyID, Secret: e.producerSecret}}}}}); err != nil {
		t.Fatal(err)
	}
	e.keyring, e.jwksFile = filepath.Join(e.dir, "keyring"), filepath.Join(e.dir, "jwks.json")
	// Payloads are sealed under KEKs on the SoftHSM2 token; the signing
	// keys are a software ring.
	e.kekModule, e.kekToken = testenv.PKCS11(t)
	t.Setenv("CERTNODE_PKCS11_MODULE", "") // a software ring, whatever make test exports
	t.Setenv("CERTNODE_PKCS11_TOKEN", "")
	if r := certnode(t, "", append([]string{"keys", "generate", "--keyring", e.keyring}, keygen...)...); r.code != 0 {
		t.Fatal(r.stderr)
	}
	e.writeJWKS()
	secret, _ := tenants.GenerateKey()
	e.env = append(os.Environ(),
		"CERTNODE_KAFKA="+e.kafka, "CERTNODE_TOPIC_PREFIX="+e.prefix, "CERTNODE_KAFKA_PARTITIONS=4",
		"CERTNODE_TENANTS_FILE="+tenFile, "CERTNODE_INTERNAL_SECRET="+secret,
		"CERTNODE_PKCS11_MODULE=", "CERTNODE_PKCS11_TOKEN=", "CERTNODE_KEYRING="+e.keyring,
		"CERTNODE_KEK_PKCS11_MODULE="+e.kekModule, "CERTNODE_KEK_TOKEN="+e.kekToken)
	return e
}

// writeJWKS publishes the key ring's JWKS to jwksFile, for the verifiers.
func (e *e2e) writeJWKS() {
	e.t.Helper()
	r := certnode(e.t, "", "jwks", "--keyring", e.keyring)
	if r.code != 0 {
		e.t.Fatalf("jwks: %+v", r)
	}
	if err := os.WriteFile(e.jwksFile, []byte(r.stdout), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

type proc struct {
	name string
	cmd  *exec.Cmd
	out  *bytes.Buffer
	mu   *sync.Mutex
	done chan struct{}
}

func (e *e2e) start(name string, args ...string) *proc {
	e.t.Helper()
	bin := e.bin
	if bin == "" {
		bin = certnodeBinary(e.t)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = e.env
	var mu sync.Mutex
	out := &bytes.Buffer{}
	w := &lockedWriter{w: out, mu: &mu}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	p := &proc{name: name, cmd: cmd, out: out, mu: &mu, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	e.t.Cleanup(func() {
		p.signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			p.signal(syscall.SIGKILL)
			<-p.done
		}
		if e.t.Failed() {
			e.t.Logf("--- %s output:\n%s", name, p.output())
		}
	})
	return p
}

func (p *proc) signal(s syscall.Signal) { p.cmd.Process.Signal(s) }

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// kill stops a process the hard way and waits for it.
func (p *proc) kill() {
	p.signal(syscall.SIGKILL)
	<-p.done
}

func (e *e2e) ingest(extra ...string) *proc {
	p := e.start("ingest", append([]string{"ingest", "--http", e.http, "--clickhouse", e.ch}, extra...)...)
	e.waitReady(p)
	e.ingestUp = true
	return p
}

func (e *e2e) worker() *proc {
	return e.start("worker", "worker", "--metrics", freeAddr(e.t), "--concurrency", "4")
}

func (e *e2e) sink(extra ...string) *proc {
	return e.start("sink", append([]string{"sink", "clickhouse", "--clickhouse", e.ch, "--metrics", freeAddr(e.t)}, extra...)...)
}

func (e *e2e) waitReady(p *proc) {
	e.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if code, _ := e.do("GET", "/readyz", "", ""); code == 200 {
			return
		}
		select {
		case <-p.done:
			e.t.Fatalf("%s exited: %s", p.name, p.output())
		case <-time.After(100 * time.Millisecond):
		}
	}
	e.t.Fatalf("%s not ready: %s", p.name, p.output())
}

var httpClient = &http.Client{Timeout: 60 * time.Second}

func (e *e2e) do(method, path, ctype, body string) (int, string) {
	req, _ := http.NewRequest(method, "http://"+e.http+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+e.apiKey)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

// submitJob posts NDJSON and returns the job id.
func (e *e2e) submitJob(kind string, lines []string) string {
	e.t.Helper()
	code, body := e.do("POST", "/v1/jobs?type="+kind, "application/x-ndjson", strings.Join(lines, "\n")+"\n")
	var acc struct {
		JobID         string `json:"job_id"`
		LinesAccepted int    `json:"lines_accepted"`
	}
	if code != 202 || json.Unmarshal([]byte(body), &acc, json.RejectUnknownMembers(false)) != nil || acc.LinesAccepted != len(lines) {
		e.t.Fatalf("job: %d %s", code, body)
	}
	return acc.JobID
}

type jobState struct {
	State string `json:"state"`
	Total int    `json:"total"`
	Done  int    `json:"done"`
	Valid int    `json:"valid"`
}

func (e *e2e) jobStatus(id string) jobState {
	_, body := e.do("GET", "/v1/jobs/"+id, "", "")
	var s jobState
	json.Unmarshal([]byte(body), &s, json.RejectUnknownMembers(false))
	return s
}

func (e *e2e) clickhouse() driver.Conn {
	e.t.Helper()
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{e.ch}})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	return conn
}

// rowCounts returns, for the tenant, requests as counting queries see them
// (the certnode.requests view), distinct request ids, and rows of
// certnode.results (with the receipts of re-signed replays and copies not
// merged yet).
func (e *e2e) rowCounts(conn driver.Conn) (requests, distinct, raw uint64) {
	e.t.Helper()
	ctx := context.Background()
	if err := conn.QueryRow(ctx, "SELECT count() FROM certnode.requests WHERE tenant = ?", e.tenant).Scan(&requests); err != nil {
		e.t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "SELECT uniqExact(id), count() FROM certnode.results WHERE tenant = ?", e.tenant).Scan(&distinct, &raw); err != nil {
		e.t.Fatal(err)
	}
	return
}

// waitRows waits until ClickHouse shows exactly n requests for the tenant,
// each once in query results.
func (e *e2e) waitRows(conn driver.Conn, n uint64, limit time.Duration) {
	e.t.Helper()
	testenv.WaitFor(e.t, "rows in ClickHouse", limit, func() (bool, string) {
		requests, distinct, raw := e.rowCounts(conn)
		return requests == n && distinct == n, fmt.Sprintf("requests %d, distinct ids %d, rows %d, want %d", requests, distinct, raw, n)
	})
}

// committedOffsets returns a consumer group's committed offsets on topic, by
// partition (0 where it committed none: the group then starts at the start).
func (e *e2e) committedOffsets(group, topic string) map[int32]int64 {
	e.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(e.kafka, ",")...))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	offs, err := kadm.NewClient(cl).FetchOffsets(ctx, group)
	if err != nil {
		e.t.Fatalf("offsets of group %s: %v", group, err)
	}
	out := map[int32]int64{}
	for p, o := range offs[topic] {
		out[p] = max(o.At, 0)
	}
	return out
}

// topicReceipts reads the results topic from its start to its current end
// and returns the receipts of the tenant's signed requests by request id,
// each request's in the order its results were produced: a request signed
// more than once has more than one.
func (e *e2e) topicReceipts() map[string][][]byte {
	e.t.Helper()
	topic := schemas.TopicsFor(e.prefix).Receipts
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(e.kafka, ",")...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		e.t.Fatalf("end offsets of %s: %v", topic, err)
	}
	left := map[int32]int64{} // partition -> end offset still to reach
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			left[o.Partition] = o.Offset
		}
	})
	out := map[string][][]byte{}
	for len(left) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			e.t.Fatalf("reading %s: still to read up to %v", topic, left)
		}
		fs.EachError(func(_ string, p int32, err error) { e.t.Fatalf("reading %s partition %d: %v", topic, p, err) })
		fs.EachRecord(func(r *kgo.Record) {
			if end, ok := left[r.Partition]; ok && r.Offset+1 >= end {
				delete(left, r.Partition)
			}
			res, err := schemas.DecodeResult(r.Value)
			if err != nil {
				e.t.Fatalf("result at %s/%d/%d: %v", topic, r.Partition, r.Offset, err)
			}
			if res.Tenant == e.tenant && res.Status == schemas.StatusSigned {
				out[res.ID] = append(out[res.ID], res.Receipt)
			}
		})
	}
	return out
}

// kafkaProxy stands between one process and Kafka: it forwards every
// request and response, pointing the broker addresses of Metadata,
// FindCoordinator and DescribeCluster responses at itself (a listener per
// broker), so the process reaches the cluster only through it. After
// holdCommits it holds the process's OffsetCommit requests: a worker is
// then stuck after producing a batch's results and before committing the
// batch, the window a crash replays. (Requests are assumed to be answered,
// in order: no acks=0 produces, which workers do not send.)
type kafkaProxy struct {
	t       *testing.T
	seed    string // the proxy of the upstream address it was made with
	holding atomic.Bool
	held    chan *kmsg.OffsetCommitRequest

	mu      sync.Mutex
	local   map[string]string // upstream broker -> its listener
	closers []io.Closer
	closed  bool
	err     error
}

func newKafkaProxy(t *testing.T, upstream string) *kafkaProxy {
	p := &kafkaProxy{t: t, held: make(chan *kmsg.OffsetCommitRequest, 16), local: map[string]string{}}
	t.Cleanup(func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.closed = true
		for _, c := range p.closers {
			c.Close()
		}
		if p.err != nil {
			t.Errorf("kafka proxy: %v", p.err)
		}
	})
	p.seed = p.listen(upstream)
	return p
}

// holdCommits holds every OffsetCommit from now on and returns the first
// one the process sends.
func (p *kafkaProxy) holdCommits(limit time.Duration) *kmsg.OffsetCommitRequest {
	p.t.Helper()
	p.holding.Store(true)
	select {
	case req := <-p.held:
		return req
	case <-time.After(limit):
		p.t.Fatalf("no offset commit within %s", limit)
		return nil
	}
}

func (p *kafkaProxy) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err == nil && !p.closed {
		p.err = err
	}
}

// track closes c with the proxy, or now if the proxy is closed.
func (p *kafkaProxy) track(c io.Closer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return
	}
	p.closers = append(p.closers, c)
}

// listen returns the address of upstream's listener, starting it on first use.
func (p *kafkaProxy) listen(upstream string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if a, ok := p.local[upstream]; ok {
		return a
	}
	if p.closed {
		return upstream
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		if p.err == nil {
			p.err = err
		}
		return upstream
	}
	p.local[upstream] = ln.Addr().String()
	p.closers = append(p.closers, ln)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.pipe(c, upstream)
		}
	}()
	return ln.Addr().String()
}

func (p *kafkaProxy) pipe(c net.Conn, upstream string) {
	p.track(c)
	u, err := net.Dial("tcp", upstream)
	if err != nil {
		p.fail(err)
		c.Close()
		return
	}
	p.track(u)
	type sent struct{ key, version int16 }
	inflight := make(chan sent, 256) // requests awaiting their responses, in order
	go func() {                      // requests
		defer u.Close()
		in := bufio.NewReader(c)
		for {
			frame, err := readKafkaFrame(in)
			if err != nil {
				return
			}
			if len(frame) < 12 {
				p.fail(fmt.Errorf("request of %d bytes", len(frame)))
				return
			}
			key, version := int16(binary.BigEndian.Uint16(frame[4:])), int16(binary.BigEndian.Uint16(frame[6:]))
			if key == 8 && p.holding.Load() { // OffsetCommit
				req := kmsg.NewPtrOffsetCommitRequest()
				req.SetVersion(version)
				body, err := requestBody(frame, req.IsFlexible())
				if err == nil {
					err = req.ReadFrom(body)
				}
				if err != nil {
					p.fail(fmt.Errorf("offset commit v%d: %v", version, err))
					return
				}
				select {
				case p.held <- req:
				default:
				}
				io.Copy(io.Discard, in) // nothing more passes, until the process hangs up
				return
			}
			inflight <- sent{key, version}
			if _, err := u.Write(frame); err != nil {
				return
			}
		}
	}()
	defer c.Close()
	in := bufio.NewReader(u)
	for {
		frame, err := readKafkaFrame(in)
		if err != nil {
			return
		}
		s := <-inflight
		if s.key == 3 || s.key == 10 || s.key == 60 { // Metadata, FindCoordinator, DescribeCluster
			if frame, err = p.rewrite(s.key, s.version, frame); err != nil {
				p.fail(fmt.Errorf("response to request key %d v%d: %v", s.key, s.version, err))
				return
			}
		}
		if _, err := c.Write(frame); err != nil {
			return
		}
	}
}

// rewrite points the broker addresses in a response frame at the proxy.
func (p *kafkaProxy) rewrite(key, version int16, frame []byte) ([]byte, error) {
	resp := kmsg.ResponseForKey(key)
	resp.SetVersion(version)
	hdr := 8 // size, correlation id
	if resp.IsFlexible() {
		n, err := tagsLen(frame[hdr:])
		if err != nil {
			return nil, err
		}
		hdr += n
	}
	if err := resp.ReadFrom(frame[hdr:]); err != nil {
		return nil, err
	}
	local := func(host *string, port *int32) {
		if *host == "" { // an error response
			return
		}
		h, pt, _ := net.SplitHostPort(p.listen(net.JoinHostPort(*host, fmt.Sprint(*port))))
		n, _ := strconv.Atoi(pt)
		*host, *port = h, int32(n)
	}
	switch r := resp.(type) {
	case *kmsg.MetadataResponse:
		for i := range r.Brokers {
			local(&r.Brokers[i].Host, &r.Brokers[i].Port)
		}
	case *kmsg.FindCoordinatorResponse:
		local(&r.Host, &r.Port)
		for i := range r.Coordinators {
			local(&r.Coordinators[i].Host, &r.Coordinators[i].Port)
		}
	case *kmsg.DescribeClusterResponse:
		for i := range r.Brokers {
			local(&r.Brokers[i].Host, &r.Brokers[i].Port)
		}
	}
	out := resp.AppendTo(append([]byte(nil), frame[:hdr]...))
	binary.BigEndian.PutUint32(out, uint32(len(out)-4))
	return out, nil
}

// readKafkaFrame reads one size-prefixed protocol message, prefix included.
func readKafkaFrame(r io.Reader) ([]byte, error) {
	var size [4]byte
	if _, err := io.ReadFull(r, size[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(size[:])
	if n > 1<<30 {
		return nil, fmt.Errorf("message of %d bytes", n)
	}
	frame := make([]byte, 4+n)
	copy(frame, size[:])
	_, err := io.ReadFull(r, frame[4:])
	return frame, err
}

// requestBody skips a request frame's size and header (key, version,
// correlation id, client id, and tagged fields when flexible).
func requestBody(frame []byte, flexible bool) ([]byte, error) {
	off := 14
	if len(frame) < off {
		return nil, io.ErrUnexpectedEOF
	}
	if n := int16(binary.BigEndian.Uint16(frame[12:])); n > 0 {
		off += int(n)
	}
	if flexible {
		if off > len(frame) {
			return nil, io.ErrUnexpectedEOF
		}
		n, err := tagsLen(frame[off:])
		if err != nil {
			return nil, err
		}
		off += n
	}
	if off > len(frame) {
		return nil, io.ErrUnexpectedEOF
	}
	return frame[off:], nil
}

// tagsLen is the length of the tagged fields (KIP-482) that b starts with.
func tagsLen(b []byte) (int, error) {
	count, off := binary.Uvarint(b)
	if off <= 0 {
		return 0, io.ErrUnexpectedEOF
	}
	for ; count > 0; count-- {
		_, n := binary.Uvarint(b[off:])
		if n <= 0 {
			return 0, io.ErrUnexpectedEOF
		}
		off += n
		size, n := binary.Uvarint(b[off:])
		if n <= 0 || uint64(len(b)-off-n) < size {
			return 0, io.ErrUnexpectedEOF
		}
		off += n + int(size)
	}
	return off, nil
}

// killWorkerMidJob runs a worker whose commits go through a proxy, and
// ingest; submits a sign job of n lines (payloads named label) and kills
// the worker while a commit is held: a worker commits a batch only once
// its results were produced, so it dies with results nobody committed,
// which its replacement must replay (a kill timed from outside would
// almost never land in that window). It fails the test unless that
// premise holds, and returns the job and how many requests are past the
// committed offsets. The caller starts the replacement.
func (e *e2e) killWorkerMidJob(label string, n int) (job string, uncommitted int64) {
	e.t.Helper()
	topics := schemas.TopicsFor(e.prefix)
	proxy := newKafkaProxy(e.t, strings.Split(e.kafka, ",")[0])
	w := e.start("worker", "worker", "--kafka", proxy.seed, "--metrics", freeAddr(e.t), "--concurrency", "1")
	e.ingest()
	job = e.submitJob("sign", payloads(label, n))
	testenv.WaitFor(e.t, "some progress", time.Minute, func() (bool, string) {
		s := e.jobStatus(job)
		return s.Done > 0, fmt.Sprintf("%+v", s)
	})
	held := proxy.holdCommits(time.Minute)
	w.kill()
	committed := e.committedOffsets(e.prefix+"-workers", topics.Requests)
	for _, tp := range held.Topics {
		for _, p := range tp.Partitions {
			if tp.Topic == topics.Requests {
				uncommitted += p.Offset - committed[p.Partition]
			}
		}
	}
	s := e.jobStatus(job)
	if s.Done >= n || uncommitted <= 0 {
		e.t.Fatalf("nothing was tested: the worker was killed with %d of %d lines done and %d requests past its committed offsets %v",
			s.Done, n, uncommitted, committed)
	}
	e.t.Logf("worker killed with the job at %d of %d lines and results produced for %d requests past its committed offsets %v",
		s.Done, n, uncommitted, committed)
	return job, uncommitted
}
