//go:build integration

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/go-json-experiment/json"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// certnodeBinary builds the binary once per test run: the end-to-end tests
// run every role as its own process, as in production.
func certnodeBinary(t *testing.T) string {
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "certnode-e2e-bin")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "certnode")
		out, err := exec.Command("go", "build", "-race", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

var (
	plainBinOnce sync.Once
	plainBinPath string
	plainBinErr  error
)

// certnodeBinaryNoRace builds the binary without the race detector, once
// per test run, for tests whose volume the detector's several-fold CPU cost
// would push past their time limit. Every other test keeps -race.
func certnodeBinaryNoRace(t *testing.T) string {
	plainBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "certnode-e2e-bin")
		if err != nil {
			plainBinErr = err
			return
		}
		plainBinPath = filepath.Join(dir, "certnode")
		out, err := exec.Command("go", "build", "-o", plainBinPath, ".").CombinedOutput()
		if err != nil {
			plainBinErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if plainBinErr != nil {
		t.Fatal(plainBinErr)
	}
	return plainBinPath
}

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
	keyring        string
	bin            string // the certnode binary the roles run; empty: certnodeBinary
}

func newE2E(t *testing.T, kafkaAddr string) *e2e {
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
		cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(e.kafka, ",")...))
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
	t.Setenv("CERTNODE_PKCS11_MODULE", "") // a software ring, whatever make test exports
	t.Setenv("CERTNODE_PKCS11_TOKEN", "")
	if r := certnode(t, "", "keys", "generate", "--keyring", e.keyring); r.code != 0 {
		t.Fatal(r.stderr)
	}
	e.writeJWKS()
	secret, _ := tenants.GenerateKey()
	e.env = append(os.Environ(),
		"CERTNODE_KAFKA="+e.kafka, "CERTNODE_TOPIC_PREFIX="+e.prefix, "CERTNODE_KAFKA_PARTITIONS=4",
		"CERTNODE_TENANTS_FILE="+tenFile, "CERTNODE_INTERNAL_SECRET="+secret,
		"CERTNODE_PKCS11_MODULE=", "CERTNODE_PKCS11_TOKEN=", "CERTNODE_KEYRING="+e.keyring)
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
