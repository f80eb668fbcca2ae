//go:build integration

package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/interop"
	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

func payloads(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf(`{"src":%q,"i":%d,"amount":%d.5,"note":"\u2028 é 😀"}`, prefix, i, i)
	}
	return out
}

// results reads a job's result stream and returns the receipts by line.
func (e *e2e) jobReceipts(id string, want int) map[int64]string {
	e.t.Helper()
	code, body := e.do("GET", "/v1/jobs/"+id+"/results", "", "")
	if code != 200 {
		e.t.Fatalf("results: %d %s", code, body)
	}
	out := map[int64]string{}
	for _, l := range strings.Split(strings.TrimSpace(body), "\n") {
		var r struct {
			Line    int64          `json:"line"`
			Status  string         `json:"status"`
			Receipt jsontext.Value `json:"receipt"`
		}
		if err := json.Unmarshal([]byte(l), &r, json.RejectUnknownMembers(false)); err != nil {
			e.t.Fatalf("result line %q: %v", l, err)
		}
		if _, dup := out[r.Line]; dup {
			e.t.Fatalf("line %d streamed twice", r.Line)
		}
		out[r.Line] = string(r.Receipt)
	}
	if len(out) != want {
		e.t.Fatalf("job %s streamed %d results, want %d", id, len(out), want)
	}
	return out
}

// TestE2EExactlyOnceToClickHouse: 10,000 sign and 10,000 verify requests,
// through HTTP calls and bulk jobs, processed by two workers, land in
// ClickHouse once each; every receipt verifies with certnode verify and
// with Node's jose + canonicalize.
func TestE2EExactlyOnceToClickHouse(t *testing.T) {
	e := newE2E(t, "")
	e.sink()
	e.worker()
	e.worker()
	e.ingest()
	const viaHTTP, viaJob = 200, 9800

	var mu sync.Mutex
	var receipts []string
	var wg sync.WaitGroup
	errs := make(chan error, viaHTTP)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := g; i < viaHTTP; i += 8 {
				code, body := e.do("POST", "/v1/sign", "application/json", `{"payload":`+payloads("http", viaHTTP)[i]+`}`)
				if code != 200 {
					errs <- fmt.Errorf("sign %d: %d %s", i, code, body)
					return
				}
				mu.Lock()
				receipts = append(receipts, strings.TrimSpace(body))
				mu.Unlock()
			}
		}(g)
	}
	signJob := e.submitJob("sign", payloads("job", viaJob))
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	byLine := e.jobReceipts(signJob, viaJob)
	for _, r := range byLine {
		receipts = append(receipts, r)
	}
	if len(receipts) != 10000 {
		t.Fatalf("%d receipts", len(receipts))
	}

	// Verify: the HTTP-signed ones one by one, the job's in a bulk job.
	httpReceipts := receipts[:viaHTTP]
	for i, r := range httpReceipts {
		code, body := e.do("POST", "/v1/verify", "application/json", `{"receipt":`+r+`}`)
		if code != 200 || !strings.Contains(body, `"valid":true`) {
			t.Fatalf("verify %d: %d %s", i, code, body)
		}
	}
	verifyJob := e.submitJob("verify", receipts[viaHTTP:])
	testenv.WaitFor(t, "verify job", 2*time.Minute, func() (bool, string) {
		s := e.jobStatus(verifyJob)
		return s.State == "done" && s.Valid == viaJob, fmt.Sprintf("%+v", s)
	})

	conn := e.clickhouse()
	e.waitRows(conn, 20000, 2*time.Minute)
	var signed, valid uint64
	if err := conn.QueryRow(context.Background(), `SELECT countIf(status = 'signed'), countIf(status = 'valid')
		FROM certnode.requests WHERE tenant = ?`, e.tenant).Scan(&signed, &valid); err != nil {
		t.Fatal(err)
	}
	if signed != 10000 || valid != 10000 {
		t.Fatalf("ClickHouse: %d signed, %d valid", signed, valid)
	}

	// A stored receipt is served back to its tenant.
	var one schemas.Receipt
	json.Unmarshal([]byte(receipts[0]), &one)
	if code, body := e.do("GET", "/v1/receipts/"+one.ReceiptID, "", ""); code != 200 || strings.TrimSpace(body) != receipts[0] {
		t.Fatalf("GET receipt: %d %s", code, body)
	}

	// Independent verifiers: the CLI and Node's jose + canonicalize.
	all := strings.Join(receipts, "\n") + "\n"
	if r := certnode(t, all, "verify", "--jwks", e.jwksFile); r.code != 0 || !strings.Contains(r.stdout, "10000 receipts: 10000 valid, 0 invalid") {
		t.Fatalf("certnode verify: exit %d, %s", r.code, lastLine(r.stdout))
	}
	verdicts := interop.Node.Verify(t, e.jwksFile, []byte(all))
	bad := 0
	for _, v := range verdicts {
		if v != "ok" {
			bad++
		}
	}
	if len(verdicts) != 10000 || bad != 0 {
		t.Fatalf("node: %d verdicts, %d not ok", len(verdicts), bad)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestE2EWorkerKilled: a worker killed with SIGKILL mid-job, after it
// produced a batch's results and before it committed the batch, and
// replaced, loses nothing: the replacement signs that batch again. Both
// receipts of an ES256 request signed twice stay retrievable; Ed25519
// signatures are deterministic, so an EdDSA request signed twice gets
// byte-identical receipts.
func TestE2EWorkerKilled(t *testing.T) {
	for _, alg := range []string{schemas.AlgES256, schemas.AlgEdDSA} {
		t.Run(alg, func(t *testing.T) { testWorkerKilled(t, alg) })
	}
}

func testWorkerKilled(t *testing.T, alg string) {
	e := newE2E(t, "", "--alg", alg)
	e.sink()
	const n = 8000
	job, uncommitted := e.killWorkerMidJob("kill", n)
	e.worker()
	testenv.WaitFor(t, "job done after restart", 2*time.Minute, func() (bool, string) {
		s := e.jobStatus(job)
		return s.State == "done" && s.Done == n && s.Valid == n, fmt.Sprintf("%+v", s)
	})
	got := e.jobReceipts(job, n)
	ks, _ := schemas.ParseJWKS(mustRead(t, e.jwksFile))
	for line, r := range got {
		rc, err := ks.Verify([]byte(r))
		if err != nil || !strings.Contains(string(rc.Payload), fmt.Sprintf(`"i":%d,`, line-1)) || rc.Protected != schemas.ProtectedHeader(alg, rc.Kid) {
			t.Fatalf("line %d: %v %s", line, err, r)
		}
	}

	// The replay, read from the results topic: exactly the requests past
	// the committed offsets were signed twice.
	replayed := map[string][][]byte{}
	var twice []string // receipt ids of requests with different receipts
	differ := 0
	for id, rs := range e.topicReceipts() {
		if len(rs) < 2 {
			continue
		}
		replayed[id] = rs
		ids := map[string]bool{}
		for _, r := range rs {
			rc, err := ks.Verify(r)
			if err != nil || rc.Protected != schemas.ProtectedHeader(alg, rc.Kid) {
				t.Fatalf("request %s: %v %s", id, err, r)
			}
			if alg == schemas.AlgEdDSA && !bytes.Equal(r, rs[0]) {
				t.Fatalf("request %s signed twice with Ed25519 got different receipts:\n%s\n%s", id, rs[0], r)
			}
			ids[rc.ReceiptID] = true
		}
		if len(ids) > 1 {
			differ++
			for rid := range ids {
				twice = append(twice, rid)
			}
		}
	}
	if int64(len(replayed)) != uncommitted {
		t.Fatalf("%d requests were signed more than once, want the %d the killed worker produced results for and did not commit", len(replayed), uncommitted)
	}
	t.Logf("%d requests signed twice by the replay, %d of them with different receipts", len(replayed), differ)

	conn := e.clickhouse()
	e.waitRows(conn, n, 2*time.Minute)
	// Every receipt the service handed out stays in ClickHouse and
	// retrievable, including both receipts of an ES256 request the replay
	// signed twice; EdDSA has one receipt per request.
	slices.Sort(twice)
	var check []string
	testenv.WaitFor(t, "receipts of requests signed twice in ClickHouse", time.Minute, func() (bool, string) {
		rows, err := conn.Query(context.Background(), `SELECT DISTINCT receipt_id FROM certnode.results
			WHERE tenant = ? AND id IN (SELECT id FROM certnode.results WHERE tenant = ? GROUP BY id HAVING uniqExact(receipt_id) > 1)`,
			e.tenant, e.tenant)
		if err != nil {
			t.Fatal(err)
		}
		check = check[:0]
		for rows.Next() {
			var rid string
			rows.Scan(&rid)
			check = append(check, rid)
		}
		rows.Close()
		slices.Sort(check)
		return slices.Equal(check, twice), fmt.Sprintf("%d receipts in ClickHouse, %d on the topic", len(check), len(twice))
	})
	for line := int64(1); line <= n; line += n / 100 { // and a sample of the job's
		check = append(check, rcID(t, []byte(got[line])))
	}
	for _, rid := range check {
		if code, body := e.do("GET", "/v1/receipts/"+rid, "", ""); code != 200 || !strings.Contains(body, rid) {
			t.Fatalf("receipt %s: %d %s", rid, code, body)
		}
	}
}

// rcID is a receipt's receipt_id.
func rcID(t *testing.T, receipt []byte) string {
	var rc struct {
		ReceiptID string `json:"receipt_id"`
	}
	if err := json.Unmarshal(receipt, &rc, json.RejectUnknownMembers(false)); err != nil || rc.ReceiptID == "" {
		t.Fatalf("receipt %s: %v", receipt, err)
	}
	return rc.ReceiptID
}

// TestE2ESinkKilledMidBatch: the ClickHouse sink killed (SIGKILL) while it
// holds a batch it collected but neither inserted nor committed, and
// restarted, shows every request exactly once in the requests view.
func TestE2ESinkKilledMidBatch(t *testing.T) {
	e := newE2E(t, "")
	e.worker()
	e.ingest()
	conn := e.clickhouse()
	const first, second = 500, 300
	metrics := freeAddr(t)
	// The first job's results fill a batch of first rows, written at once;
	// the second job's then wait in a batch held for the 10-minute
	// batch-wait, long past the kill. (This --metrics overrides the
	// helper's.)
	sink := e.sink("--metrics", metrics, "--batch-rows", fmt.Sprint(first), "--batch-wait", "10m")
	e.submitJob("sign", payloads("sink-a", first))
	e.waitRows(conn, first, 2*time.Minute)
	job := e.submitJob("sign", payloads("sink-b", second))
	testenv.WaitFor(t, "second job signed", 2*time.Minute, func() (bool, string) {
		s := e.jobStatus(job)
		return s.State == "done" && s.Valid == second, fmt.Sprintf("%+v", s)
	})

	// The premise, observed: every result past the committed offsets is in
	// the sink's pending batch, and none of it is in ClickHouse.
	var pending float64
	var committed, produced int64
	testenv.WaitFor(t, "the sink holding the second job's results", time.Minute, func() (bool, string) {
		pending = scrapeGauge(t, metrics, "certnode_sink_clickhouse_pending_rows")
		committed, produced = e.sinkOffsets()
		return pending > 0 && int64(pending) == produced-committed && produced >= first+second,
			fmt.Sprintf("pending %v, committed %d of %d results", pending, committed, produced)
	})
	requests, _, _ := e.rowCounts(conn)
	if requests >= first+second {
		t.Fatalf("premise: %d requests already in ClickHouse with %v rows pending", requests, pending)
	}
	t.Logf("killing the sink with %v rows pending: %d of %d results committed, %d requests in ClickHouse", pending, committed, produced, requests)
	sink.kill()

	e.sink("--batch-rows", "300", "--batch-wait", "1s")
	e.waitRows(conn, first+second, 2*time.Minute)
}

// scrapeGauge reads a gauge from a /metrics page; -1 while it cannot.
func scrapeGauge(t *testing.T, addr, name string) float64 {
	t.Helper()
	resp, err := httpClient.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", l, err)
			}
			return f
		}
	}
	return -1
}

// sinkOffsets returns the ClickHouse sink group's committed offsets and
// the end offsets of the results topic, each summed over partitions.
func (e *e2e) sinkOffsets() (committed, produced int64) {
	e.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.kafka))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	topic := schemas.TopicsFor(e.prefix).Receipts
	offs, err := adm.FetchOffsets(ctx, e.prefix+"-sink-clickhouse")
	if err != nil {
		e.t.Fatalf("sink group offsets: %v", err)
	}
	for _, o := range offs[topic] {
		committed += max(o.At, 0)
	}
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		e.t.Fatalf("end offsets of %s: %v", topic, err)
	}
	ends.Each(func(o kadm.ListedOffset) { produced += o.Offset })
	return committed, produced
}

// TestE2EKafkaOutage: with the broker stopped, ingest answers 503 (nothing
// is silently dropped) and the pipeline resumes when the broker is back.
func TestE2EKafkaOutage(t *testing.T) {
	// Both ports are picked free: port+1 (the script's default controller
	// port) may belong to someone else.
	port, ctrl := strings.Split(freeAddr(t), ":")[1], strings.Split(freeAddr(t), ":")[1]
	local := t.TempDir()
	broker := func(verb string) {
		t.Helper()
		cmd := exec.Command("bash", "../../deploy/local/kafka.sh", verb)
		cmd.Env = append(os.Environ(), "CERTNODE_LOCAL="+local, "CERTNODE_KAFKA_PORT="+port, "CERTNODE_KAFKA_CONTROLLER_PORT="+ctrl)
		if out, err := cmd.CombinedOutput(); err != nil {
			logs, _ := exec.Command("tail", "-n", "30", local+"/kafka/stdout.log", local+"/kafka/server.log").CombinedOutput()
			t.Fatalf("kafka.sh %s: %v\n%s\n%s", verb, err, out, logs)
		}
	}
	broker("start")
	t.Cleanup(func() { broker("stop") })

	e := newE2E(t, "127.0.0.1:"+port)
	e.worker()
	e.ingest("--produce-timeout", "3s", "--sign-wait", "30s")
	before := e.submitJob("sign", payloads("before", 300))
	if code, body := e.do("POST", "/v1/sign", "application/json", `{"payload":{"phase":"before"}}`); code != 200 {
		t.Fatalf("sign before outage: %d %s", code, body)
	}

	broker("stop")
	code, body := e.do("POST", "/v1/sign", "application/json", `{"payload":{"phase":"during"}}`)
	if code != 503 || errorCode(t, body) != "kafka_unavailable" {
		t.Fatalf("sign during outage: %d %s", code, body)
	}
	code, body = e.do("POST", "/v1/jobs?type=sign", "application/x-ndjson", `{"phase":"during"}`+"\n")
	if code != 503 || errorCode(t, body) != "kafka_unavailable" {
		t.Fatalf("job during outage: %d %s", code, body)
	}
	if code, _ := e.do("GET", "/readyz", "", ""); code != 503 {
		t.Fatalf("readyz during outage: %d", code)
	}

	broker("start")
	testenv.WaitFor(t, "sign after the broker is back", 2*time.Minute, func() (bool, string) {
		code, body := e.do("POST", "/v1/sign", "application/json", `{"payload":{"phase":"after"}}`)
		return code == 200, fmt.Sprint(code, " ", body)
	})
	after := e.submitJob("sign", payloads("after", 300))
	for _, j := range []string{before, after} {
		testenv.WaitFor(t, "job "+j, 2*time.Minute, func() (bool, string) {
			s := e.jobStatus(j)
			return s.State == "done" && s.Valid == 300, fmt.Sprintf("%+v", s)
		})
	}
}

// TestE2ECustomerProducers: customer systems write requests straight into
// Kafka, each record signed with a producer key: with kcat (librdkafka) from
// the shell example in deploy/examples, and with Python's confluent-kafka.
// The worker signs them, each tenant lands on the partition franz-go (and
// the Java client) would choose, and records with a wrong signature or the
// retired plaintext API-key header go to the DLQ.
func TestE2ECustomerProducers(t *testing.T) {
	for _, tool := range []string{"kcat", "openssl", "python3"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (deploy/local/services.sh up installs it)", tool)
		}
	}
	e := newE2E(t, "")
	e.worker()
	e.ingest() // creates the topics
	topics := schemas.TopicsFor(e.prefix)
	envelopes := func(from string, n int) []byte {
		var b bytes.Buffer
		for i := 0; i < n; i++ {
			fmt.Fprintf(&b, "{\"v\":1,\"id\":\"%s-%d\",\"tenant\":%q,\"kind\":\"sign\",\"payload\":{\"from\":%q,\"i\":%d}}\n", from, i, e.tenant, from, i)
		}
		return b.Bytes()
	}
	run := func(input []byte, name string, args ...string) {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Stdin = bytes.NewReader(input)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", name, err, out)
		}
	}
	const n = 10
	run(envelopes("kcat", n), "bash", "../../deploy/examples/kcat-sign.sh", e.kafka, topics.Requests, e.tenant, e.producerKeyID, e.producerSecret)
	run(envelopes("python", n), "python3", "../../deploy/examples/produce.py", e.kafka, topics.Requests, e.tenant, e.producerKeyID, e.producerSecret)
	run(envelopes("wrong", 1), "bash", "../../deploy/examples/kcat-sign.sh", e.kafka, topics.Requests, e.tenant, e.producerKeyID, "not-the-secret-0123456789abcdef012345")
	run([]byte(e.tenant+"|"+string(envelopes("legacy", 1))), "kcat", "-P", "-b", e.kafka, "-t", topics.Requests, "-K", "|",
		"-H", "certnode-api-key="+e.apiKey, "-X", "partitioner=murmur2_random")

	cl, err := kgo.NewClient(kgo.SeedBrokers(e.kafka), kgo.ConsumeTopics(topics.Receipts, topics.Requests, topics.DLQ),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ks, _ := schemas.ParseJWKS(mustRead(t, e.jwksFile))
	signed, refused := map[string]bool{}, map[string]string{}
	partitions := map[int32]bool{}
	var requestRec *kgo.Record
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	requests, dlq := 0, 0
	for (len(signed)+len(refused) < 2*n+2 || dlq < 2 || requests < 2*n+2) && ctx.Err() == nil {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			switch r.Topic {
			case topics.Requests:
				partitions[r.Partition] = true
				requestRec = r
				requests++
			case topics.DLQ:
				if kafka.Header(r, schemas.HeaderDLQReason) == "unauthenticated" && kafka.Header(r, schemas.HeaderLegacyAPIKey) == "" {
					dlq++
				}
			case topics.Receipts:
				res, err := schemas.DecodeResult(r.Value)
				if err != nil {
					t.Fatalf("result %s: %v", r.Value, err)
				}
				if res.Status != schemas.StatusSigned {
					refused[res.ID] = res.Reason
					return
				}
				if _, err := ks.Verify(res.Receipt); err != nil || res.Auth != schemas.AuthProducer {
					t.Fatalf("receipt for %s (auth %s): %v", res.ID, res.Auth, err)
				}
				signed[res.ID] = true
			}
		})
	}
	if len(signed) != 2*n || dlq != 2 || refused["wrong-0"] != "unauthenticated" || refused["legacy-0"] != "unauthenticated" || requests != 2*n+2 {
		t.Fatalf("signed %d of %d, refused %v, DLQ unauthenticated %d, requests read %d", len(signed), 2*n, refused, dlq, requests)
	}
	if len(partitions) != 1 {
		t.Fatalf("one tenant's records landed on partitions %v", partitions)
	}
	want := kgo.StickyKeyPartitioner(nil).ForTopic(topics.Requests).Partition(&kgo.Record{Key: []byte(e.tenant)}, 4)
	if requestRec.Partition != int32(want) {
		t.Fatalf("the producers put tenant %s on partition %d, franz-go's murmur2 on %d", e.tenant, requestRec.Partition, want)
	}
}

// TestE2EJobsAnyIngest: a job accepted by one ingest process is answered,
// with its results, by another, and by a new one after the first is
// SIGKILLed: jobs live in Kafka, not in the memory of the process that
// took the upload.
func TestE2EJobsAnyIngest(t *testing.T) {
	e := newE2E(t, "")
	e.worker()
	a := e.ingest()
	other := func() *e2e {
		o := *e
		o.http = freeAddr(t)
		o.ingest()
		return &o
	}
	b := other()
	const n = 2000
	code, body := e.do("POST", "/v1/jobs?type=sign", "application/x-ndjson", strings.Join(append(payloads("any", n-1), "not json"), "\n"))
	var acc struct {
		JobID string `json:"job_id"`
	}
	if code != 202 || json.Unmarshal([]byte(body), &acc, json.RejectUnknownMembers(false)) != nil {
		t.Fatalf("job: %d %.300s", code, body)
	}
	job := acc.JobID
	testenv.WaitFor(t, "job done, seen from the other ingest", 2*time.Minute, func() (bool, string) {
		s := b.jobStatus(job)
		return s.State == "done" && s.Total == n-1 && s.Valid == n-1, fmt.Sprintf("%+v", s)
	})
	b.jobReceipts(job, n) // the rejected line too
	a.kill()
	c := other()
	if s := c.jobStatus(job); s.State != "done" || s.Total != n-1 || s.Valid != n-1 {
		t.Fatalf("a new ingest process answers %+v", s)
	}
	got := c.jobReceipts(job, n)
	if got[n] != "" || got[1] == "" {
		t.Fatalf("results from the new process: line 1 %q, line %d %q", got[1], n, got[n])
	}
}
