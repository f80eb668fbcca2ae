// Package interop runs the independent Node implementation of CertNode
// receipts (jose + canonicalize) for tests. `make test` installs its npm
// packages; a missing install fails the calling test.
package interop

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

func nodeDir(t testing.TB) string {
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(file), "node")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "jose")); err != nil {
		t.Fatalf("Node interop packages are not installed: run `make test` or `npm ci --prefix %s`", dir)
	}
	return dir
}

// Node runs receipts.mjs with args, feeding stdin, and returns its stdout.
func Node(t testing.TB, stdin []byte, args ...string) []byte {
	t.Helper()
	dir := nodeDir(t)
	cmd := exec.Command("node", append([]string{filepath.Join(dir, "receipts.mjs")}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("node receipts.mjs %v: %v\n%s", args, err, errb.String())
	}
	return out.Bytes()
}

// NodeVerify verifies NDJSON receipts with jose against a JWKS file and
// returns one verdict per receipt ("ok" or "fail: reason").
func NodeVerify(t testing.TB, jwksFile string, receipts []byte) []string {
	t.Helper()
	out := bytes.TrimSpace(Node(t, receipts, "verify", jwksFile))
	var verdicts []string
	for _, l := range bytes.Split(out, []byte("\n")) {
		if len(l) > 0 {
			verdicts = append(verdicts, string(l))
		}
	}
	return verdicts
}
