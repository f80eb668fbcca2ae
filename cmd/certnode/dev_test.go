package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

type devEnv struct {
	t      *testing.T
	base   string
	key    string // demo tenant
	slow   string // tenant limited to 1 request/s
	other  string // tenant "other", unlimited
	tight  string // tenant "tight": small payloads, short jobs, one job at a time
	dir    string
	stop   func() (exitCode int, took time.Duration)
	stderr func() string
}

// freeAddr finds a free loopback port for a server a test starts
// (testenv.FreeAddr).
func freeAddr(t *testing.T) string { return testenv.FreeAddr(t) }

// startDev runs `certnode dev` in-process on an embedded Kafka, with a
// second, rate-limited organization, a third, unlimited one, and a
// fourth with small limits on payloads and jobs, made through its
// coordinator.
func startDev(t *testing.T, extra ...string) *devEnv {
	t.Helper()
	e := startDevIn(t, t.TempDir(), freeAddr(t), extra...)
	e.key = e.creds().APIKey
	e.slow = e.newOrg("slow", tenants.Limits{RateLimit: 1, Burst: 1})
	e.other = e.newOrg("other", tenants.Limits{})
	e.tight = e.newOrg("tight", tenants.Limits{MaxPayloadBytes: 64, MaxJobLines: 3, MaxConcurrentJobs: 1})
	return e
}

// startDevIn runs `certnode dev` on dir (its coordinator on a free port)
// until stop is called, or the test ends; it must stop cleanly.
func startDevIn(t *testing.T, dir, addr string, extra ...string) *devEnv {
	t.Helper()
	for _, v := range []string{"CERTNODE_KEY", "CERTNODE_PKCS11_MODULE", "CERTNODE_PKCS11_TOKEN", "CERTNODE_PKCS11_KEY_LABEL", "CERTNODE_KAFKA"} {
		t.Setenv(v, "") // make test exports the SoftHSM2 token for other tests
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var stderr bytes.Buffer
	var mu sync.Mutex
	go func() {
		done <- runContext(ctx, append([]string{"dev", "--data", dir, "--http", addr, "--coordinator-http", "127.0.0.1:0", "--partitions", "3", "--clickhouse", "none"}, extra...),
			strings.NewReader(""), io.Discard, &lockedWriter{w: &stderr, mu: &mu})
	}()
	e := &devEnv{t: t, base: "http://" + addr, dir: dir}
	e.stderr = func() string {
		mu.Lock()
		defer mu.Unlock()
		return stderr.String()
	}
	var once sync.Once
	var code int
	var took time.Duration
	e.stop = func() (int, time.Duration) {
		once.Do(func() {
			start := time.Now()
			cancel()
			select {
			case code = <-done:
			case <-time.After(60 * time.Second):
				code = -1
			}
			took = time.Since(start)
		})
		return code, took
	}
	t.Cleanup(func() {
		if code, took := e.stop(); code != 0 || took > 30*time.Second {
			t.Errorf("dev exited %d after %s: %s", code, took, e.stderr())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if code, _ := e.do("GET", "/readyz", "", "", ""); code == 200 {
			return e
		}
		select {
		case c := <-done:
			t.Fatalf("dev exited %d: %s", c, e.stderr())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("dev not ready: %s", e.stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// creds reads the credentials dev wrote.
func (e *devEnv) creds() credentials {
	e.t.Helper()
	var c credentials
	b, err := os.ReadFile(filepath.Join(e.dir, "credentials.json"))
	if err == nil {
		err = json.Unmarshal(b, &c)
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// admin calls the admin API of dev's coordinator with the admin token of
// its credentials.
func (e *devEnv) admin(method, path, body string) (int, string) {
	c := e.creds()
	return request(method, "http://"+c.Coordinator+path, c.AdminToken, "", body)
}

// newOrg creates an organization with limits and an API key of every
// scope through dev's coordinator, and returns the key once dev admits it.
func (e *devEnv) newOrg(id string, limits tenants.Limits) string {
	e.t.Helper()
	body, _ := json.Marshal(map[string]any{"id": id, "name": id, "limits": limits})
	if code, resp := e.admin("POST", "/v1/admin/orgs", string(body)); code != 201 {
		e.t.Fatalf("create org %s: %d %s", id, code, resp)
	}
	code, resp := e.admin("POST", "/v1/admin/orgs/"+id+"/keys", `{"scopes":["sign","verify","jobs","read","admin"]}`)
	var k struct {
		Key string `json:"key"`
	}
	if code != 201 || json.Unmarshal([]byte(resp), &k, json.RejectUnknownMembers(false)) != nil {
		e.t.Fatalf("create key of %s: %d %s", id, code, resp)
	}
	testenv.WaitFor(e.t, "dev admits "+id+"'s key", 2*time.Second, func() (bool, string) {
		code, body := e.do("GET", "/v1/jobs/job_none", k.Key, "", "")
		return code == 404, body
	})
	return k.Key
}

// newReport saves a report of org through dev's coordinator and returns
// its id.
func (e *devEnv) newReport(org string) string {
	e.t.Helper()
	code, resp := e.admin("POST", "/v1/orgs/"+org+"/reports", `{"name":"Requests by status","query":{"metrics":["requests"],"group_by":"status","range":"last_24h"},"chart":"bar"}`)
	var r struct {
		ID string `json:"id"`
	}
	if code != 201 || json.Unmarshal([]byte(resp), &r, json.RejectUnknownMembers(false)) != nil {
		e.t.Fatalf("create a report of %s: %d %s", org, code, resp)
	}
	testenv.WaitFor(e.t, "dev knows report "+r.ID, 2*time.Second, func() (bool, string) {
		code, body := e.do("GET", "/v1/reports/"+r.ID+"/run", e.key, "", "")
		return code != 404, body
	})
	return r.ID
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (e *devEnv) do(method, path, key, ctype, body string) (int, string) {
	e.t.Helper()
	return request(method, e.base+path, key, ctype, body)
}

// request sends one HTTP request with an optional Bearer key and content
// type and returns the status and body (0 and the error on a transport
// failure, for the caller to report).
// requestWith sends a request with extra headers (name, value pairs) and
// gives the whole answer.
func requestWith(t *testing.T, method, url, key, ctype, body string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func request(method, url, key, ctype, body string) (int, string) {
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func errorCode(t *testing.T, body string) string {
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &e, json.RejectUnknownMembers(false)); err != nil || e.Error.Code == "" || e.Error.Message == "" {
		t.Fatalf("not a JSON error body: %s", body)
	}
	return e.Error.Code
}

func TestDevAPI(t *testing.T) {
	e := startDev(t)
	const js = "application/json"

	code, jwksBody := e.do("GET", "/.well-known/jwks.json", "", "", "")
	ks, err := schemas.ParseJWKS([]byte(jwksBody))
	if code != 200 || err != nil {
		t.Fatalf("jwks: %d %s %v", code, jwksBody, err)
	}

	t.Run("sign then verify", func(t *testing.T) {
		code, body := e.do("POST", "/v1/sign", e.key, js, `{"payload":{"b":1,"a":"\u2028","n":1e21}}`)
		if code != 200 {
			t.Fatalf("sign: %d %s", code, body)
		}
		rc, err := ks.Verify([]byte(body))
		if err != nil {
			t.Fatalf("receipt does not verify against the served JWKS: %v", err)
		}
		if string(rc.Payload) != "{\"a\":\"\u2028\",\"b\":1,\"n\":1e+21}" {
			t.Fatalf("payload %s", rc.Payload)
		}
		code, v := e.do("POST", "/v1/verify", e.key, js, `{"receipt":`+body+`}`)
		if code != 200 || !strings.Contains(v, `"valid":true`) || !strings.Contains(v, rc.Kid) {
			t.Fatalf("verify: %d %s", code, v)
		}
		tampered := strings.Replace(body, `"b":1`, `"b":2`, 1)
		code, v = e.do("POST", "/v1/verify", e.key, js, `{"receipt":`+tampered+`}`)
		if code != 200 || !strings.Contains(v, `"valid":false`) || !strings.Contains(v, `"reason":"payload_hash_mismatch"`) {
			t.Fatalf("verify tampered: %d %s", code, v)
		}
		// With the caller's own JWKS that lacks our key.
		other := `{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}`
		code, v = e.do("POST", "/v1/verify", e.key, js, `{"receipt":`+body+`,"jwks":`+other+`}`)
		if code != 200 || !strings.Contains(v, `"reason":"unknown_kid"`) {
			t.Fatalf("verify with other jwks: %d %s", code, v)
		}
	})

	t.Run("errors", func(t *testing.T) {
		cases := []struct {
			name, method, path, key, ctype, body string
			status                               int
			code                                 string
		}{
			{"no key", "POST", "/v1/sign", "", js, `{"payload":{}}`, 401, "unauthorized"},
			{"unknown key", "POST", "/v1/sign", "cn_nope", js, `{"payload":{}}`, 401, "unauthorized"},
			{"wrong content type", "POST", "/v1/sign", e.key, "text/plain", `{"payload":{}}`, 415, "unsupported_media_type"},
			{"not JSON", "POST", "/v1/sign", e.key, js, `{"payload":`, 400, "malformed_json"},
			{"duplicate body keys", "POST", "/v1/sign", e.key, js, `{"payload":{},"payload":{}}`, 400, "malformed_json"},
			{"missing payload", "POST", "/v1/sign", e.key, js, `{}`, 422, "invalid_payload"},
			{"payload not object", "POST", "/v1/sign", e.key, js, `{"payload":[1]}`, 422, "invalid_payload"},
			{"payload duplicate keys", "POST", "/v1/sign", e.key, js, `{"payload":{"a":1,"a":2}}`, 400, "malformed_json"},
			{"payload number overflow", "POST", "/v1/sign", e.key, js, `{"payload":{"a":1e999}}`, 422, "invalid_payload"},
			{"too large", "POST", "/v1/sign", e.key, js, `{"payload":{"a":"` + strings.Repeat("x", 4<<20) + `"}}`, 413, "too_large"},
			{"verify without receipt", "POST", "/v1/verify", e.key, js, `{}`, 422, "invalid_receipt"},
			{"verify receipt not object", "POST", "/v1/verify", e.key, js, `{"receipt":"x"}`, 422, "invalid_receipt"},
			{"verify bad jwks", "POST", "/v1/verify", e.key, js, `{"receipt":{},"jwks":{"keys":[]}}`, 422, "invalid_jwks"},
			{"job without type", "POST", "/v1/jobs", e.key, "application/x-ndjson", "{}\n", 400, "invalid_type"},
			{"job wrong content type", "POST", "/v1/jobs?type=sign", e.key, js, "{}\n", 415, "unsupported_media_type"},
			{"job all lines bad", "POST", "/v1/jobs?type=sign", e.key, "application/x-ndjson", "[1]\nnope\n", 422, "no_valid_lines"},
			{"unknown job", "GET", "/v1/jobs/job_nope", e.key, "", "", 404, "not_found"},
			{"method", "GET", "/v1/sign", e.key, "", "", 405, "method_not_allowed"},
			{"route", "GET", "/v2/nothing", e.key, "", "", 404, "not_found"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				code, body := e.do(tc.method, tc.path, tc.key, tc.ctype, tc.body)
				if code != tc.status || errorCode(t, body) != tc.code {
					t.Fatalf("got %d %s, want %d %s", code, body, tc.status, tc.code)
				}
			})
		}
		// 401 bodies are identical whether or not the key exists.
		_, a := e.do("POST", "/v1/sign", "", js, `{}`)
		_, b := e.do("POST", "/v1/sign", "cn_nope", js, `{}`)
		if a != b {
			t.Fatalf("401 bodies differ: %s vs %s", a, b)
		}
	})

	t.Run("quota", func(t *testing.T) {
		var got429 bool
		for i := 0; i < 5 && !got429; i++ {
			code, body := e.do("POST", "/v1/sign", e.slow, js, `{"payload":{"i":1}}`)
			if code == 429 {
				got429 = errorCode(t, body) == "over_quota"
			} else if code != 200 {
				t.Fatalf("slow tenant: %d %s", code, body)
			}
		}
		if !got429 {
			t.Fatal("a tenant limited to 1 request/s was never refused")
		}
		// Other tenants are unaffected.
		if code, body := e.do("POST", "/v1/sign", e.key, js, `{"payload":{"i":1}}`); code != 200 {
			t.Fatalf("demo tenant after slow tenant's 429: %d %s", code, body)
		}
	})

	t.Run("bulk sign job", func(t *testing.T) {
		var in strings.Builder
		const n = 500
		for i := 1; i <= n; i++ {
			switch i {
			case 7:
				in.WriteString("not json\n")
			case 9:
				in.WriteString("\n") // blank lines keep numbering
			default:
				fmt.Fprintf(&in, "{\"i\":%d}\n", i)
			}
		}
		code, body := e.do("POST", "/v1/jobs?type=sign", e.key, "application/x-ndjson", in.String())
		var acc struct {
			JobID         string `json:"job_id"`
			LinesAccepted int64  `json:"lines_accepted"`
			LinesRejected int64  `json:"lines_rejected"`
			Rejected      []struct {
				Line int64  `json:"line"`
				Code string `json:"code"`
			} `json:"rejected"`
		}
		if code != 202 || json.Unmarshal([]byte(body), &acc, json.RejectUnknownMembers(false)) != nil {
			t.Fatalf("create: %d %s", code, body)
		}
		if acc.LinesAccepted != n-2 || acc.LinesRejected != 1 || acc.Rejected[0].Line != 7 || acc.Rejected[0].Code != "invalid_payload" {
			t.Fatalf("accepted %+v", acc)
		}
		// Results stream until the job is done: one line per non-blank
		// input line, in input order, the rejected one included.
		code, stream := e.do("GET", "/v1/jobs/"+acc.JobID+"/results", e.key, "", "")
		lines := strings.Split(strings.TrimSpace(stream), "\n")
		if code != 200 || len(lines) != n-1 {
			t.Fatalf("results: %d, %d lines", code, len(lines))
		}
		prev := int64(0)
		for _, l := range lines {
			var r struct {
				Line    int64          `json:"line"`
				Status  string         `json:"status"`
				Code    string         `json:"code"`
				Receipt jsontext.Value `json:"receipt"`
			}
			if err := json.Unmarshal([]byte(l), &r, json.RejectUnknownMembers(false)); err != nil {
				t.Fatal(err)
			}
			if r.Line <= prev || r.Line == 9 {
				t.Fatalf("result line %s after line %d", l, prev)
			}
			prev = r.Line
			if r.Line == 7 {
				if r.Status != "rejected" || r.Code != "invalid_payload" {
					t.Fatalf("rejected line: %s", l)
				}
				continue
			}
			if r.Status != "signed" {
				t.Fatalf("result line %s", l)
			}
			rc, err := ks.Verify(r.Receipt)
			if err != nil || string(rc.Payload) != fmt.Sprintf(`{"i":%d}`, r.Line) {
				t.Fatalf("line %d: receipt %s does not match its input (%v)", r.Line, r.Receipt, err)
			}
		}
		code, st := e.do("GET", "/v1/jobs/"+acc.JobID, e.key, "", "")
		if code != 200 || !strings.Contains(st, `"state":"done"`) || !strings.Contains(st, fmt.Sprintf(`"done":%d`, n-2)) || !strings.Contains(st, fmt.Sprintf(`"valid":%d`, n-2)) {
			t.Fatalf("status: %d %s", code, st)
		}
		// Another tenant cannot see it.
		if code, _ := e.do("GET", "/v1/jobs/"+acc.JobID, e.slow, "", ""); code != 404 {
			t.Fatalf("other tenant sees the job: %d", code)
		}
	})

	t.Run("bulk verify job", func(t *testing.T) {
		_, good := e.do("POST", "/v1/sign", e.key, js, `{"payload":{"v":1}}`)
		bad := strings.Replace(good, `"v":1`, `"v":2`, 1)
		code, body := e.do("POST", "/v1/jobs?type=verify", e.key, "application/x-ndjson", good+bad)
		if code != 202 {
			t.Fatalf("%d %s", code, body)
		}
		var acc struct {
			JobID string `json:"job_id"`
		}
		json.Unmarshal([]byte(body), &acc, json.RejectUnknownMembers(false))
		_, stream := e.do("GET", "/v1/jobs/"+acc.JobID+"/results", e.key, "", "")
		if !strings.Contains(stream, `"line":1,`) || !strings.Contains(stream, `"status":"valid"`) || !strings.Contains(stream, `"reason":"payload_hash_mismatch"`) {
			t.Fatalf("verify results: %s", stream)
		}
		_, st := e.do("GET", "/v1/jobs/"+acc.JobID, e.key, "", "")
		if !strings.Contains(st, `"valid":1`) || !strings.Contains(st, `"invalid":1`) {
			t.Fatalf("status: %s", st)
		}
	})

	t.Run("ops endpoints", func(t *testing.T) {
		if code, body := e.do("GET", "/healthz", "", "", ""); code != 200 {
			t.Fatalf("healthz %d %s", code, body)
		}
		code, body := e.do("GET", "/metrics", "", "", "")
		for _, m := range []string{"certnode_http_requests_total", "certnode_worker_records_total", "certnode_ingest_result_lag_seconds"} {
			if code != 200 || !strings.Contains(body, m) {
				t.Fatalf("metrics lack %s", m)
			}
		}
		if strings.Contains(body, e.key) {
			t.Fatal("API key in metrics")
		}
		creds, _ := os.Stat(filepath.Join(e.dir, "credentials.json"))
		if creds.Mode().Perm() != 0o600 {
			t.Fatalf("credentials.json mode %v", creds.Mode().Perm())
		}
	})
}

// TestDevSignTimeout: when the result is slower than --sign-wait the call
// answers 504 with a job id, and the job then shows the result.
func TestDevSignTimeout(t *testing.T) {
	e := startDev(t, "--sign-wait", "1ns")
	job := e.timedOut(`{"slow":true}`)
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, st := e.do("GET", "/v1/jobs/"+job, e.key, "", "")
		if code == 200 && strings.Contains(st, `"state":"done"`) && strings.Contains(st, `"status":"signed"`) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("job never finished: %d %s", code, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
