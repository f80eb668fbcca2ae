//go:build integration

package main

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/certnode/certnode/internal/testenv"
)

// TestE2EKeysRotateWhileRunning rotates the key ring under a running worker
// and ingest, each its own process: ingest serves the new JWKS and the
// worker signs with the new key without a restart, and still verifies
// receipts of the retired key.
func TestE2EKeysRotateWhileRunning(t *testing.T) {
	e := newE2E(t, "")
	e.worker()
	e.ingest()
	sign := func() string {
		t.Helper()
		code, body := e.do("POST", "/v1/sign", "application/json", `{"payload":{"at":"`+time.Now().String()+`"}}`)
		if code != 200 {
			t.Fatalf("sign: %d %s", code, body)
		}
		return strings.TrimSpace(body)
	}
	old := sign()
	kid1 := kidOf(t, old)
	kid2 := kidOf(t, mustRun(t, "", "keys", "rotate", "--keyring", e.keyring).stdout)

	testenv.WaitFor(t, "ingest serving the rotated JWKS", 15*time.Second, func() (bool, string) {
		_, body := e.do("GET", "/.well-known/jwks.json", "", "")
		kids := jwksKids(t, body)
		return len(kids) == 2 && kids[0] == kid2 && kids[1] == kid1, body
	})
	var fresh string
	testenv.WaitFor(t, "the worker signing with the new key", 15*time.Second, func() (bool, string) {
		fresh = sign()
		return kidOf(t, fresh) == kid2, fresh
	})
	code, body := e.do("POST", "/v1/verify", "application/json", `{"receipt":`+old+`}`)
	if code != 200 || !strings.Contains(body, `"valid":true`) {
		t.Fatalf("verify a receipt of the retired key: %d %s", code, body)
	}
	e.writeJWKS()
	if r := certnode(t, old+"\n"+fresh+"\n", "verify", "--jwks", e.jwksFile); r.code != 0 || !strings.Contains(r.stdout, "2 receipts: 2 valid, 0 invalid") {
		t.Fatalf("certnode verify across the rotation: %+v", r)
	}
}

// TestCLIVersionFromMakeBuild: make build stamps the version and commit
// that certnode version reports.
func TestCLIVersionFromMakeBuild(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	git := func(args ...string) string {
		out, err := exec.Command("git", append([]string{"-C", root}, args...)...).Output()
		if err != nil {
			t.Fatalf("git %v: %v", args, err)
		}
		return strings.TrimSpace(string(out))
	}
	build := exec.Command("make", "-s", "build")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("make build: %v\n%s", err, out)
	}
	out, err := exec.Command(filepath.Join(root, "bin", "certnode"), "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("certnode %s\ncommit %s\n", git("describe", "--always", "--dirty"), git("rev-parse", "HEAD"))
	if !strings.HasPrefix(string(out), want) {
		t.Fatalf("bin/certnode version:\n%s\nwant it to start with:\n%s", out, want)
	}
}
