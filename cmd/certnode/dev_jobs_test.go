package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/schemas"
)

const ndjson = "application/x-ndjson"

// submit posts a bulk job and returns its id.
func (e *devEnv) submit(kind, body string) string {
	e.t.Helper()
	code, resp := e.do("POST", "/v1/jobs?type="+kind, e.key, ndjson, body)
	var acc struct {
		JobID string `json:"job_id"`
	}
	if code != 202 || json.Unmarshal([]byte(resp), &acc, json.RejectUnknownMembers(false)) != nil {
		e.t.Fatalf("job: %d %s", code, resp)
	}
	return acc.JobID
}

type streamLine struct {
	Line      int64          `json:"line"`
	ID        string         `json:"id"`
	Status    string         `json:"status"`
	Reason    string         `json:"reason"`
	Code      string         `json:"code"`
	Keys      string         `json:"keys"`
	ReceiptID string         `json:"receipt_id"`
	Receipt   jsontext.Value `json:"receipt"`
}

// results reads a whole results stream.
func (e *devEnv) results(id, query string) []streamLine {
	e.t.Helper()
	code, body := e.do("GET", "/v1/jobs/"+id+"/results"+query, e.key, "", "")
	if code != 200 {
		e.t.Fatalf("results: %d %s", code, body)
	}
	var out []streamLine
	for _, l := range strings.Split(strings.TrimSpace(body), "\n") {
		if l == "" {
			continue
		}
		var r streamLine
		if err := json.Unmarshal([]byte(l), &r, json.RejectUnknownMembers(false)); err != nil {
			e.t.Fatalf("result line %q: %v", l, err)
		}
		out = append(out, r)
	}
	return out
}

func (e *devEnv) status(id string) map[string]any {
	e.t.Helper()
	return e.statusAs(e.key, id)
}

// statusAs is a job's status as the tenant of key sees it.
func (e *devEnv) statusAs(key, id string) map[string]any {
	e.t.Helper()
	code, body := e.do("GET", "/v1/jobs/"+id, key, "", "")
	var st map[string]any
	if code != 200 || json.Unmarshal([]byte(body), &st) != nil {
		e.t.Fatalf("status: %d %s", code, body)
	}
	return st
}

func (e *devEnv) waitDone(id string) map[string]any {
	e.t.Helper()
	return e.waitDoneAs(e.key, id)
}

// waitDoneAs waits for a job of the tenant of key to be done.
func (e *devEnv) waitDoneAs(key, id string) map[string]any {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := e.statusAs(key, id)
		if st["state"] == "done" {
			return st
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("job %s not done: %v", id, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDevEmptyObjects: {} is a payload like any other, on every path.
func TestDevEmptyObjects(t *testing.T) {
	e := startDev(t)
	code, body := e.do("POST", "/v1/sign", e.key, "application/json", `{"payload":{}}`)
	if code != 200 || !strings.Contains(body, `"payload":{}`) {
		t.Fatalf("sign {}: %d %s", code, body)
	}
	code, body = e.do("POST", "/v1/verify", e.key, "application/json", `{"receipt":{}}`)
	if code != 200 || !strings.Contains(body, `"valid":false`) || !strings.Contains(body, `"reason":"malformed"`) {
		t.Fatalf("verify {}: %d %s", code, body)
	}
	job := e.submit("sign", "{}\n{\"a\":{}}\n")
	if st := e.waitDone(job); st["valid"] != 2.0 {
		t.Fatalf("job with {} lines: %v", st)
	}
	if got := e.results(job, ""); len(got) != 2 || got[0].Status != "signed" || got[1].Status != "signed" {
		t.Fatalf("results: %+v", got)
	}
}

// TestDevVerifyJobTakesSignResults: a sign job's results lines are a
// verify job's input as they are, and /v1/verify says which keys it used.
func TestDevVerifyJobTakesSignResults(t *testing.T) {
	e := startDev(t)
	sign := e.submit("sign", "{\"n\":1}\n{\"n\":2}\n")
	e.waitDone(sign)
	code, stream := e.do("GET", "/v1/jobs/"+sign+"/results", e.key, "", "")
	if code != 200 {
		t.Fatal(stream)
	}
	var receipt string
	for _, l := range strings.Split(strings.TrimSpace(stream), "\n") {
		var r streamLine
		json.Unmarshal([]byte(l), &r, json.RejectUnknownMembers(false))
		receipt = string(r.Receipt)
	}
	verify := e.submit("verify", stream+`{"receipt":`+receipt+"}\n"+receipt+"\n")
	e.waitDone(verify)
	got := e.results(verify, "")
	if len(got) != 4 {
		t.Fatalf("%d results", len(got))
	}
	for _, r := range got {
		if r.Status != "valid" || r.Keys != "service" {
			t.Fatalf("line %d: %+v", r.Line, r)
		}
	}
	_, jwks := e.do("GET", "/.well-known/jwks.json", "", "", "")
	code, body := e.do("POST", "/v1/verify", e.key, "application/json", `{"receipt":`+receipt+`,"jwks":`+jwks+`}`)
	if code != 200 || !strings.Contains(body, `"keys":"caller"`) || !strings.Contains(body, `"valid":true`) {
		t.Fatalf("verify with the caller's keys: %d %s", code, body)
	}
}

// TestDevResultsStream: one line per input line in input order, rejected
// lines with their code; resumable with after_line; the same answers for a
// single request that timed out; unknown jobs get the same 404 everywhere.
func TestDevResultsStream(t *testing.T) {
	e := startDev(t)
	job := e.submit("sign", "{\"n\":1}\n[1]\n\n{\"n\":4}\n{\"n\":5}\n")
	all := e.results(job, "")
	want := []struct {
		line   int64
		status string
	}{{1, "signed"}, {2, "rejected"}, {4, "signed"}, {5, "signed"}}
	if len(all) != len(want) {
		t.Fatalf("results: %+v", all)
	}
	for i, w := range want {
		if all[i].Line != w.line || all[i].Status != w.status {
			t.Fatalf("line %d: %+v, want %+v", i, all[i], w)
		}
	}
	if all[1].Code != "invalid_payload" {
		t.Fatalf("rejected line without its code: %+v", all[1])
	}
	if st := e.status(job); st["finished_at"] == nil || st["total"] != 3.0 || st["lines_rejected"] != 1.0 {
		t.Fatalf("status: %v", st)
	}
	if rest := e.results(job, "?after_line=2"); len(rest) != 2 || rest[0].Line != 4 || rest[0].Receipt == nil {
		t.Fatalf("resumed after line 2: %+v", rest)
	}
	if code, body := e.do("GET", "/v1/jobs/"+job+"/results?after_line=x", e.key, "", ""); code != 400 || errorCode(t, body) != "invalid_after_line" {
		t.Fatalf("bad after_line: %d %s", code, body)
	}
	for _, path := range []string{"/v1/jobs/job_nope", "/v1/jobs/job_nope/results"} {
		code, body := e.do("GET", path, e.key, "", "")
		if code != 404 || !strings.Contains(body, `"message":"no such job for this tenant"`) {
			t.Fatalf("%s: %d %s", path, code, body)
		}
	}
}

// timedOut signs until the answer is the 504 of a result slower than
// --sign-wait (with 1ns a result can still win the race) and returns the
// job id to poll.
func (e *devEnv) timedOut(payload string) string {
	e.t.Helper()
	for range 20 {
		code, body := e.do("POST", "/v1/sign", e.key, "application/json", `{"payload":`+payload+`}`)
		switch {
		case code == 504 && errorCode(e.t, body) == "timeout":
			var b struct {
				JobID string `json:"job_id"`
			}
			json.Unmarshal([]byte(body), &b, json.RejectUnknownMembers(false))
			return b.JobID
		case code != 200:
			e.t.Fatalf("sign: %d %s", code, body)
		}
	}
	e.t.Fatal("sign never answered 504")
	return ""
}

// TestDevSingleRequestPoll: a request whose result is slower than
// --sign-wait answers 504 with a job id that both job endpoints answer.
func TestDevSingleRequestPoll(t *testing.T) {
	e := startDev(t, "--sign-wait", "1ns")
	b := struct{ JobID string }{e.timedOut(`{"slow":true}`)}
	st := e.waitDone(b.JobID)
	if st["finished_at"] == nil || !strings.Contains(fmt.Sprint(st["result"]), "signed") {
		t.Fatalf("status: %v", st)
	}
	got := e.results(b.JobID, "")
	if len(got) != 1 || got[0].Line != 1 || got[0].Status != "signed" || got[0].ID != b.JobID {
		t.Fatalf("results of a single request: %+v", got)
	}
}

// TestDevJobsSurviveRestart: jobs (bulk, and a single request that was
// told to poll) are answered, with their results, after dev restarts.
func TestDevJobsSurviveRestart(t *testing.T) {
	e := startDev(t)
	job := e.submit("sign", "{\"n\":1}\n{\"n\":2}\nnope\n")
	before := e.waitDone(job)
	if code, took := e.stop(); code != 0 {
		t.Fatalf("stop: exit %d after %s: %s", code, took, e.stderr())
	}
	again := startDevIn(t, e.dir, strings.TrimPrefix(e.base, "http://"))
	again.key = e.key
	after := again.status(job)
	for _, k := range []string{"state", "total", "valid", "finished_at", "created_at"} {
		if fmt.Sprint(after[k]) != fmt.Sprint(before[k]) {
			t.Fatalf("%s after restart: %v, before: %v", k, after[k], before[k])
		}
	}
	if got := again.results(job, ""); len(got) != 3 || got[0].Status != "signed" || got[2].Code != "invalid_payload" {
		t.Fatalf("results after restart: %+v", got)
	}
}

// TestDevFolderLock: a second dev on the same folder refuses and changes
// nothing there.
func TestDevFolderLock(t *testing.T) {
	e := startDev(t)
	creds := filepath.Join(e.dir, "credentials.json")
	before, _ := os.ReadFile(creds)
	var stderr strings.Builder
	code := runContext(t.Context(), []string{"dev", "--data", e.dir, "--http", freeAddr(t), "--clickhouse", "none"},
		strings.NewReader(""), io.Discard, &stderr)
	if code != exitUsage || !strings.Contains(stderr.String(), "is in use by another certnode") {
		t.Fatalf("second dev: exit %d, %s", code, stderr.String())
	}
	if after, _ := os.ReadFile(creds); string(after) != string(before) {
		t.Fatal("the second dev rewrote credentials.json")
	}
}

// openJobID finds the job of an upload still in progress (its id reaches
// the client only with the 202) in the embedded Kafka's jobs topic.
func (e *devEnv) openJobID() string {
	e.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.creds().Kafka), kgo.ConsumeTopics(schemas.TopicsFor(schemas.DefaultTopicPrefix).Jobs),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		var id string
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			if j, err := schemas.DecodeJob(r.Value); err == nil && j.State == schemas.JobUploading {
				id = j.ID
			}
		})
		if id != "" {
			return id
		}
	}
	e.t.Fatal("no uploading job in the jobs topic")
	return ""
}

func (e *devEnv) gauge(name string) string {
	_, m := e.do("GET", "/metrics", "", "", "")
	for _, l := range strings.Split(m, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			return v
		}
	}
	return "missing"
}

// maxStreams is ingest's limit of open results streams per tenant.
const maxStreams = 16

// TestDevStopsWithOpenStreams: a stream whose client left is closed at
// once, a tenant cannot hold more than maxStreams open, and streams
// waiting on an unfinished job do not hold up a stop.
func TestDevStopsWithOpenStreams(t *testing.T) {
	e := startDev(t, "--shutdown-timeout", "3s")
	// An upload that stays open keeps its job unfinished.
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest("POST", e.base+"/v1/jobs?type=sign", pr)
	req.Header.Set("Authorization", "Bearer "+e.key)
	req.Header.Set("Content-Type", ndjson)
	go http.DefaultClient.Do(req)
	pw.Write([]byte("{\"n\":1}\n"))
	job := e.openJobID()

	open := func() context.CancelFunc {
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, "GET", e.base+"/v1/jobs/"+job+"/results", nil)
		req.Header.Set("Authorization", "Bearer "+e.key)
		go func() {
			if resp, err := http.DefaultClient.Do(req); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
		return cancel
	}
	waitGauge := func(want string) {
		deadline := time.Now().Add(5 * time.Second)
		for e.gauge("certnode_ingest_result_streams") != want {
			if time.Now().After(deadline) {
				t.Fatalf("open streams: %s, want %s", e.gauge("certnode_ingest_result_streams"), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	leave := open()
	waitGauge("1")
	leave()
	waitGauge("0") // the client hung up: its stream ended without a write failing
	for range maxStreams {
		open()
	}
	waitGauge(fmt.Sprint(maxStreams))
	// One more than a tenant may hold open is refused, not queued.
	if code, body := e.do("GET", "/v1/jobs/"+job+"/results", e.key, "", ""); code != 429 || errorCode(t, body) != "too_many_streams" {
		t.Fatalf("stream over the limit: %d %s", code, body)
	}
	code, took := e.stop()
	if code != 0 || took > 8*time.Second {
		t.Fatalf("dev with open streams stopped after %s, exit %d: %s", took, code, e.stderr())
	}
}

// waitLogged waits until the checkpoint at path checkpoint (the
// transparency log's or the audit log's) holds n leaves.
func (e *devEnv) waitLogged(checkpoint string, n uint64) {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body := e.do("GET", checkpoint, "", "", "")
		if lines := strings.Split(body, "\n"); code == 200 && len(lines) > 2 {
			if size, err := strconv.ParseUint(lines[1], 10, 64); err == nil && size >= n {
				return
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s never held %d leaves: %d %s", checkpoint, n, code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
