// Package interop runs independent implementations of CertNode receipts
// for tests: Node (jose + canonicalize, node/receipts.mjs) and Python
// (cryptography + rfc8785, python/receipts.py). Both scripts take the same
// arguments:
//
//	sign JWKS_OUT [ES256|EdDSA] [KEY.pem] < payloads > receipts
//	verify JWKS                           < receipts > verdicts (ok | fail: reason)
//	jcs                                   < JSON texts > canonical forms
//
// WebhookNode and WebhookPython run the official Standard Webhooks
// libraries (npm and PyPI standardwebhooks; node/webhooks.mjs,
// python/webhooks.py): see SignWebhooks and VerifyWebhooks, and
// ServeWebhooks for a receiver built on the library.
//
// `make test` installs their packages (deploy/local/services.sh); a missing
// or mismatched install fails the calling test with the command that fixes it.
package interop

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
)

// Impl is one independent implementation: an interpreter running a script.
type Impl struct {
	Name   string // "node", "python", "node standardwebhooks", ...
	interp string
	script string
	ready  func() error // nil when its packages are installed
}

var dir = func() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}()

// nodeReady checks that the npm packages are installed.
func nodeReady(pkgs ...string) func() error {
	return sync.OnceValue(func() error {
		for _, pkg := range pkgs {
			if _, err := os.Stat(filepath.Join(dir, "node", "node_modules", pkg)); err != nil {
				return fmt.Errorf("npm package %s is not installed: run `npm ci --prefix %s` (or `make services`)", pkg, filepath.Join(dir, "node"))
			}
		}
		return nil
	})
}

// pythonReady runs receipts.py deps, which compares the installed packages
// with every pin of requirements.txt and names the install command when
// they differ.
var pythonReady = sync.OnceValue(func() error {
	var errb bytes.Buffer
	cmd := exec.Command("python3", filepath.Join(dir, "python", "receipts.py"), "deps")
	cmd.Stderr = &errb
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("python3 receipts.py deps: %v: %s", err, strings.TrimSpace(errb.String()))
	}
	return nil
})

var (
	Node = &Impl{Name: "node", interp: "node", script: filepath.Join(dir, "node", "receipts.mjs"),
		ready: nodeReady("jose", "canonicalize")}
	Python = &Impl{Name: "python", interp: "python3", script: filepath.Join(dir, "python", "receipts.py"),
		ready: pythonReady}
	// Impls is every independent implementation.
	Impls = []*Impl{Node, Python}

	WebhookNode = &Impl{Name: "node standardwebhooks", interp: "node", script: filepath.Join(dir, "node", "webhooks.mjs"),
		ready: nodeReady("standardwebhooks")}
	WebhookPython = &Impl{Name: "python standardwebhooks", interp: "python3", script: filepath.Join(dir, "python", "webhooks.py"),
		ready: pythonReady}
	// WebhookImpls is every official Standard Webhooks library run here.
	WebhookImpls = []*Impl{WebhookNode, WebhookPython}
)

// Run runs the script with args, feeding stdin, and returns its stdout.
func (im *Impl) Run(t testing.TB, stdin []byte, args ...string) []byte {
	t.Helper()
	if err := im.ready(); err != nil {
		t.Fatalf("%s interop implementation not usable: %v", im.Name, err)
	}
	cmd := exec.Command(im.interp, append([]string{im.script}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			t.Fatalf("%s interop implementation: %s is not installed: %v", im.Name, im.interp, err)
		}
		t.Fatalf("%s %s %v: %v\n%s", im.interp, filepath.Base(im.script), args, err, errb.String())
	}
	return out.Bytes()
}

// Sign signs NDJSON payloads with alg, with the PKCS#8 key in keyPEM or,
// when it is "", a key it makes; it writes that key's JWKS to jwksOut and
// returns NDJSON receipts.
func (im *Impl) Sign(t testing.TB, jwksOut, alg, keyPEM string, payloads []byte) []byte {
	t.Helper()
	args := []string{"sign", jwksOut, alg}
	if keyPEM != "" {
		args = append(args, keyPEM)
	}
	return im.Run(t, payloads, args...)
}

// Verify verifies NDJSON receipts against a JWKS file and returns one
// verdict per receipt ("ok" or "fail: reason").
func (im *Impl) Verify(t testing.TB, jwksFile string, receipts []byte) []string {
	t.Helper()
	return Lines(im.Run(t, receipts, "verify", jwksFile))
}

// JCS canonicalizes each line of in, one JSON text a line.
func (im *Impl) JCS(t testing.TB, in []byte) []string {
	t.Helper()
	return Lines(im.Run(t, in, "jcs"))
}

// Lines splits output into its non-empty lines.
func Lines(out []byte) []string {
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// WebhookRequest is one line of input to the webhook scripts. Sign reads
// Secrets, ID, Timestamp and Body; Verify reads Secret instead of Secrets,
// and Signature.
type WebhookRequest struct {
	Secrets   []string `json:"secrets,omitzero"`
	Secret    string   `json:"secret,omitzero"`
	ID        string   `json:"id"`
	Timestamp string   `json:"timestamp"`
	Signature string   `json:"signature,omitzero"`
	Body      string   `json:"body"`
}

// SignWebhooks returns the webhook-signature header the library makes for
// each request: one v1 entry per secret, space-separated.
func (im *Impl) SignWebhooks(t testing.TB, reqs []WebhookRequest) []string {
	t.Helper()
	return im.webhooks(t, "sign", reqs)
}

// VerifyWebhooks returns the library's verdict on each request ("ok" or
// "fail: message"), against this machine's clock.
func (im *Impl) VerifyWebhooks(t testing.TB, reqs []WebhookRequest) []string {
	t.Helper()
	return im.webhooks(t, "verify", reqs)
}

func (im *Impl) webhooks(t testing.TB, mode string, reqs []WebhookRequest) []string {
	t.Helper()
	var in bytes.Buffer
	for _, r := range reqs {
		if err := json.MarshalWrite(&in, r); err != nil {
			t.Fatal(err)
		}
		in.WriteByte('\n')
	}
	out := Lines(im.Run(t, in.Bytes(), mode))
	if len(out) != len(reqs) {
		t.Fatalf("%s %s: %d answers to %d requests: %q", im.Name, mode, len(out), len(reqs), out)
	}
	return out
}

// WebhookVerdict is what a library receiver made of one request: the
// webhook-id header and one verdict per secret, in the order given ("ok" or
// "fail: message").
type WebhookVerdict struct {
	ID       string   `json:"id"`
	Verdicts []string `json:"verdicts"`
}

// WebhookReceiver is a receiver built on the library (the script's serve
// mode): an HTTP server on 127.0.0.1 that checks every request with one
// library verifier per secret, each holding only that secret, and answers
// 204 when one of them accepts it, else 400.
type WebhookReceiver struct {
	Name string
	URL  string // http://127.0.0.1:PORT/
	mu   sync.Mutex
	seen []WebhookVerdict
	bad  []string // output lines that are not verdicts
}

// ServeWebhooks starts a receiver on 127.0.0.1 holding secrets; it stops
// when the test ends.
func (im *Impl) ServeWebhooks(t testing.TB, secrets ...string) *WebhookReceiver {
	t.Helper()
	if err := im.ready(); err != nil {
		t.Fatalf("%s interop implementation not usable: %v", im.Name, err)
	}
	cmd := exec.Command(im.interp, im.script, "serve")
	cmd.Env = append(os.Environ(), "WEBHOOK_SECRETS="+strings.Join(secrets, " "))
	stdin, err := cmd.StdinPipe() // the receiver exits when it closes
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s serve: %v", im.Name, err)
	}
	done := make(chan struct{})
	r := &WebhookReceiver{Name: im.Name}
	port := make(chan string, 1)
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if p, ok := strings.CutPrefix(line, "listening "); ok {
				port <- p
				continue
			}
			var v WebhookVerdict
			r.mu.Lock()
			if err := json.Unmarshal([]byte(line), &v); err != nil {
				r.bad = append(r.bad, line)
			} else {
				r.seen = append(r.seen, v)
			}
			r.mu.Unlock()
		}
		io.Copy(io.Discard, stdout)
		cmd.Wait()
	}()
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if bad := r.lines(); len(bad) > 0 {
			t.Errorf("%s receiver printed lines that are not verdicts: %q", im.Name, bad)
		}
		if t.Failed() && errb.Len() > 0 {
			t.Logf("%s receiver stderr:\n%s", im.Name, errb.String())
		}
	})
	select {
	case p := <-port:
		r.URL = "http://127.0.0.1:" + p + "/"
	case <-done:
		t.Fatalf("%s receiver exited: %s", im.Name, errb.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("%s receiver did not start listening within 30s", im.Name)
	}
	return r
}

// Seen returns the verdicts so far, in the order the requests came.
func (r *WebhookReceiver) Seen() []WebhookVerdict {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]WebhookVerdict(nil), r.seen...)
}

func (r *WebhookReceiver) lines() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.bad...)
}
