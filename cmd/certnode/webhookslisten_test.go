package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/certnode/certnode/ingest"
	"github.com/certnode/certnode/internal/whsig"
	"github.com/certnode/certnode/schemas"
)

// clearAPIEnv keeps a developer's own API settings out of the tests.
func clearAPIEnv(t *testing.T) {
	clearWebhookEnv(t)
	for _, v := range []string{"CERTNODE_API_URL", "CERTNODE_API_KEY", "CERTNODE_API_KEY_FILE", "CERTNODE_CREDENTIALS_FILE",
		"CERTNODE_WEBHOOK_FORWARD_TO", "CERTNODE_WEBHOOK_EVENTS", "CERTNODE_WEBHOOK_ENDPOINT"} {
		t.Setenv(v, "")
	}
}

func TestWebhooksListenFlags(t *testing.T) {
	clearAPIEnv(t)
	creds := filepath.Join(t.TempDir(), "credentials.json")
	os.WriteFile(creds, []byte(`{"http":"http://127.0.0.1:1","api_key":"cn_fromfile"}`), 0o600)
	for _, c := range []struct {
		name string
		args []string
		want []string
	}{
		{"nothing", nil, []string{"--forward-to is required", "no API key"}},
		{"not http", []string{"--forward-to", "ftp://localhost/x", "--api-key", "k"}, []string{`--forward-to "ftp://localhost/x": an http or https URL is required`}},
		{"no host", []string{"--forward-to", "http:///x", "--api-key", "k"}, []string{"an http or https URL is required"}},
		{"unknown event", []string{"--forward-to", "http://localhost:3000/hook", "--api-key", "k", "--events", "receipt.signed,receipt.stamped"},
			[]string{`unknown event type "receipt.stamped"; valid types: receipt.signed,`}},
		{"bad api", []string{"--forward-to", "http://localhost:3000/hook", "--api-key", "k", "--api", "localhost:8080"}, []string{`--api "localhost:8080"`}},
		{"bad credentials", []string{"--forward-to", "http://localhost:3000/hook", "--credentials", creds + ".nope"}, []string{"--credentials:", "no API key"}},
		{"an argument", []string{"--forward-to", "http://localhost:3000/hook", "--api-key", "k", "extra"}, []string{"unknown command"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := certnode(t, "", append([]string{"webhooks", "listen"}, c.args...)...)
			if r.code != exitUsage {
				t.Fatalf("exit %d: %+v", r.code, r)
			}
			for _, w := range c.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q: %s", w, r.stderr)
				}
			}
		})
	}
}

func TestWebhooksTrigger(t *testing.T) {
	clearAPIEnv(t)
	var mu sync.Mutex
	var got []string
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, r.Method+" "+r.URL.Path+" "+r.Header.Get("Authorization")+" "+r.Header.Get("Content-Type")+" "+string(b))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if strings.Contains(string(b), "ep_theirs") {
			w.WriteHeader(404)
			io.WriteString(w, `{"error":{"code":"not_found","message":"no such webhook endpoint for this organization"}}`)
			return
		}
		w.WriteHeader(202)
		io.WriteString(w, `{"event_id":"evt_abc"}`+"\n")
	}))
	defer api.Close()

	r := certnode(t, "", "webhooks", "trigger", "receipt.signed", "--api", api.URL, "--api-key", "cn_k")
	if r.code != 0 || r.stdout != "evt_abc\n" {
		t.Fatalf("trigger: %+v", r)
	}
	t.Setenv("CERTNODE_API_KEY", "")
	keyFile := filepath.Join(t.TempDir(), "key")
	os.WriteFile(keyFile, []byte("cn_file\n"), 0o600)
	t.Setenv("CERTNODE_API_KEY_FILE", keyFile)
	if r := certnode(t, "", "webhooks", "trigger", "webhook.test", "--endpoint", "ep_mine", "--api", api.URL+"/"); r.code != 0 || r.stdout != "evt_abc\n" {
		t.Fatalf("trigger one endpoint: %+v", r)
	}
	want := []string{
		`POST /v1/webhooks/trigger Bearer cn_k application/json {"event_type":"receipt.signed"}`,
		`POST /v1/webhooks/trigger Bearer cn_file application/json {"event_type":"webhook.test","endpoint_id":"ep_mine"}`,
	}
	mu.Lock()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("requests:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	mu.Unlock()

	if r := certnode(t, "", "webhooks", "trigger", "webhook.test", "--endpoint", "ep_theirs", "--api", api.URL); r.code != exitInvalid ||
		!strings.Contains(r.stderr, "not_found: no such webhook endpoint") {
		t.Fatalf("refused: %+v", r)
	}
	r = certnode(t, "", "webhooks", "trigger", "receipt.stamped", "--api", api.URL)
	if r.code != exitUsage || !strings.Contains(r.stderr, `unknown event type "receipt.stamped"; valid types: `+strings.Join(schemas.EventTypes, ", ")) {
		t.Fatalf("unknown type: %+v", r)
	}
	if r := certnode(t, "", "webhooks", "trigger", "--api", api.URL); r.code != exitUsage {
		t.Fatalf("no type: %+v", r)
	}
	t.Setenv("CERTNODE_API_KEY_FILE", "")
	if r := certnode(t, "", "webhooks", "trigger", "webhook.test", "--api", "http://127.0.0.1:1"); r.code != exitUsage || !strings.Contains(r.stderr, "no API key") {
		t.Fatalf("no key: %+v", r)
	}
}

// runCLI runs certnode in the background until the returned stop is called.
type runningCLI struct {
	stdout, stderr *syncBuffer
	done           chan int
	cancel         context.CancelFunc
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startCLI(t *testing.T, args ...string) *runningCLI {
	ctx, cancel := context.WithCancel(context.Background())
	c := &runningCLI{stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan int, 1), cancel: cancel}
	go func() { c.done <- runContext(ctx, args, strings.NewReader(""), c.stdout, c.stderr) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			t.Error("the command did not stop")
		}
	})
	return c
}

// waitOutput waits until stdout holds want.
func (c *runningCLI) waitOutput(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(c.stdout.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("stdout lacks %q:\n%s\nstderr:\n%s", want, c.stdout, c.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop ends the command as ^C would and returns its exit code.
func (c *runningCLI) stop(t *testing.T, sigint bool) int {
	t.Helper()
	if sigint {
		syscall.Kill(os.Getpid(), syscall.SIGINT)
	} else {
		c.cancel()
	}
	select {
	case code := <-c.done:
		c.done <- code
		return code
	case <-time.After(10 * time.Second):
		t.Fatal("the command did not stop")
	}
	return -1
}

// receiver records what a local webhook receiver gets.
type receiver struct {
	mu   sync.Mutex
	got  []*http.Request
	body []string
	srv  *httptest.Server
}

func newReceiver(t *testing.T, status int) *receiver {
	rc := &receiver{}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rc.got, rc.body = append(rc.got, r), append(rc.body, string(b))
		rc.mu.Unlock()
		w.WriteHeader(status)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) wait(t *testing.T, n int) ([]*http.Request, []string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		rc.mu.Lock()
		if len(rc.got) >= n {
			defer rc.mu.Unlock()
			return rc.got, rc.body
		}
		rc.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("the receiver got fewer than %d deliveries", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// verifyDelivery checks a forwarded delivery as a receiver would.
func verifyDelivery(t *testing.T, r *http.Request, body string, secret whsig.Secret) {
	t.Helper()
	if r.Method != "POST" || r.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("delivery %s %v", r.Method, r.Header)
	}
	if err := whsig.Verify(r.Header, []byte(body), []whsig.Secret{secret}, whsig.DefaultTolerance, time.Now()); err != nil {
		t.Fatalf("delivery %s: %v (headers %v)", body, err, r.Header)
	}
}

// A fake API: a 503, then a stream that ends after one event, then one
// that stays open; the CLI reconnects, keeps its secret, forwards each
// event signed, and stops on SIGINT with exit 0.
func TestWebhooksListenForwards(t *testing.T) {
	clearAPIEnv(t)
	secret := whsig.NewSecret()
	recv := newReceiver(t, 204)
	var mu sync.Mutex
	var calls []string
	webhook := func(n int) string {
		body := fmt.Sprintf(`{"type":"webhook.test","timestamp":"2026-05-01T00:00:00Z","data":{"n":%d}}`, n)
		id := fmt.Sprintf("msg_%d", n)
		now := time.Now()
		return fmt.Sprintf(`{"id":%q,"timestamp":%d,"signature":%q,"type":"webhook.test","body":%s}`,
			id, now.Unix(), whsig.Sign(id, now, []byte(body), secret), strconv.Quote(body))
	}
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n := len(calls)
		calls = append(calls, r.URL.String()+" "+r.Header.Get("Authorization")+" "+r.Header.Get(ingest.ListenSecretHeader))
		mu.Unlock()
		if n == 0 {
			w.WriteHeader(503)
			io.WriteString(w, `{"error":{"code":"kafka_unavailable","message":"retry later"}}`)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fl := w.(http.Flusher)
		fmt.Fprintf(w, "event: ready\ndata: {\"secret\":%q}\n\n: heartbeat\n\n", secret.Encode())
		fmt.Fprintf(w, "event: webhook\nid: msg_%d\ndata: %s\n\n", n, webhook(n))
		fl.Flush()
		if n == 1 {
			return // the stream drops
		}
		fmt.Fprintf(w, "event: dropped\ndata: {\"dropped\":3}\n\n")
		fl.Flush()
		<-r.Context().Done()
	}))
	defer api.Close()

	cli := startCLI(t, "webhooks", "listen", "--forward-to", recv.srv.URL+"/hook", "--api", api.URL, "--api-key", "cn_k", "--events", "webhook.test")
	cli.waitOutput(t, "Ready! Your webhook signing secret is "+secret.Encode())
	reqs, bodies := recv.wait(t, 2)
	for i, r := range reqs {
		verifyDelivery(t, r, bodies[i], secret)
		if r.URL.Path != "/hook" || r.Header.Get(whsig.HeaderID) != fmt.Sprintf("msg_%d", i+1) {
			t.Fatalf("delivery %d: %s %v", i, r.URL, r.Header)
		}
	}
	cli.waitOutput(t, "3 event(s) dropped")
	out := cli.stdout.String()
	for _, want := range []string{"Reconnected.\n", "webhook.test                 msg_1  -> 204 No Content (", "msg_2  -> 204 No Content ("} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	if code := cli.stop(t, true); code != 0 {
		t.Fatalf("exit %d after SIGINT: %s", code, cli.stderr)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{"/v1/webhooks/listen?events=webhook.test Bearer cn_k ", "/v1/webhooks/listen?events=webhook.test Bearer cn_k ",
		"/v1/webhooks/listen?events=webhook.test Bearer cn_k " + secret.Encode()}
	if strings.Join(calls, "\n") != strings.Join(want, "\n") {
		t.Fatalf("calls:\n%s\nwant\n%s", strings.Join(calls, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(cli.stderr.String(), "kafka_unavailable: retry later; reconnecting in 1s") {
		t.Fatalf("stderr: %s", cli.stderr)
	}
}

// A refused key ends listen at once with a clear message and exit 1; a
// local answer that is not 2xx, or no answer, is shown.
func TestWebhooksListenRefusedAndLocalFailures(t *testing.T) {
	clearAPIEnv(t)
	for _, status := range []int{401, 403} {
		api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(status)
			io.WriteString(w, `{"error":{"code":"refused","message":"a valid API key is required"}}`)
		}))
		r := certnode(t, "", "webhooks", "listen", "--forward-to", "http://127.0.0.1:1/hook", "--api", api.URL, "--api-key", "cn_bad")
		api.Close()
		if r.code != exitInvalid || !strings.Contains(r.stderr, "the API refused to stream events: refused: a valid API key is required") {
			t.Fatalf("%d: %+v", status, r)
		}
	}

	secret := whsig.NewSecret()
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprintf(w, "event: ready\ndata: {\"secret\":%q}\n\n", secret.Encode())
		fmt.Fprintf(w, "event: webhook\ndata: {\"id\":\"msg_1\",\"timestamp\":1,\"signature\":\"v1,x\",\"type\":\"webhook.test\",\"body\":\"{}\"}\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	defer api.Close()
	redirect := newReceiver(t, 302)
	cli := startCLI(t, "webhooks", "listen", "--forward-to", redirect.srv.URL, "--api", api.URL, "--api-key", "cn_k")
	cli.waitOutput(t, "msg_1  -> 302 Found (")
	if cli.stop(t, false) != 0 {
		t.Fatal(cli.stderr)
	}
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	cli = startCLI(t, "webhooks", "listen", "--forward-to", closed.URL, "--api", api.URL, "--api-key", "cn_k")
	cli.waitOutput(t, "msg_1  -> error: ")
	if cli.stop(t, false) != 0 {
		t.Fatal(cli.stderr)
	}
}
