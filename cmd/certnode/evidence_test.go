package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/coordinator"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

func TestParsePeriod(t *testing.T) {
	for p, want := range map[string][2]string{
		"2026-Q3": {"2026-07-01", "2026-10-01"},
		"2026-11": {"2026-11-01", "2026-12-01"},
		"2025":    {"2025-01-01", "2026-01-01"},
	} {
		from, to, err := parsePeriod(p)
		if err != nil || from.Format(time.DateOnly) != want[0] || to.Format(time.DateOnly) != want[1] {
			t.Errorf("%s: %v %v %v", p, from, to, err)
		}
	}
	for _, bad := range []string{"", "2026-Q5", "2026-13", "26-11", "2999", "2026-11-01"} {
		if _, _, err := parsePeriod(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// The evidence bundle is a receipt that verifies, whose payload holds the
// access review as the coordinator has it (keys with their last use), the
// ring's keys, and names the sources it was not given.
func TestComplianceEvidence(t *testing.T) {
	dir, key, jwks := setup(t)
	const admin = "admin-token-evidence-0123456789"
	s, err := coordinator.NewServer(coordinator.Config{ID: "c1", RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", DataDir: t.TempDir(),
		Bootstrap: true, AdminToken: admin, NodeToken: "node-token-evidence-0123456789"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; s.Close() })
	testenv.WaitFor(t, "leader", 10*time.Second, func() (bool, string) { return s.Node().IsLeader(), "" })
	t.Setenv("CERTNODE_ADMIN_TOKEN", admin)
	if r := certnode(t, "", "admin", "--coordinator", s.Addr(), "orgs", "create", "acme", "--name", "Acme"); r.code != 0 {
		t.Fatalf("orgs create: %+v", r)
	}
	if r := certnode(t, "", "admin", "--coordinator", s.Addr(), "keys", "create", "acme", "--scopes", "sign"); r.code != 0 {
		t.Fatalf("keys create: %+v", r)
	}
	ring := filepath.Join(dir, "ring")
	if r := certnode(t, "", "keys", "generate", "--keyring", ring); r.code != 0 {
		t.Fatalf("ring: %+v", r)
	}
	out := filepath.Join(dir, "evidence.json")
	period := time.Now().UTC().Format("2006-01")
	r := certnode(t, "", "compliance", "evidence", "--period", period, "--coordinator", s.Addr(), "--workers-keyring", ring, "--key", key, "--out", out)
	if r.code != 0 {
		t.Fatalf("evidence: %+v", r)
	}
	if v := certnode(t, "", "verify", "--jwks", jwks, "--receipt", out); v.code != 0 {
		t.Fatalf("the bundle does not verify: %+v", v)
	}
	raw, _ := os.ReadFile(out)
	var rc struct {
		Payload schemas.EvidenceBundle `json:"payload"`
	}
	if err := json.Unmarshal(raw, &rc, json.RejectUnknownMembers(false)); err != nil {
		t.Fatal(err)
	}
	b := rc.Payload
	if b.Type != schemas.EvidenceBundleType || b.Period != period || len(b.AccessReview.Organizations) != 1 || len(b.AccessReview.APIKeys) != 1 ||
		len(b.KeyRotations) != 1 || b.KeyRotations[0].State != "active" {
		t.Fatalf("bundle %+v", b)
	}
	if k := b.AccessReview.APIKeys[0]; k["org"] != "acme" || k["key"] != nil || k["hash"] != nil {
		t.Fatalf("key %v: no secret, no hash", k)
	}
	if m := strings.Join(b.Missing, "; "); !strings.Contains(m, "clickhouse") || !strings.Contains(m, "audit_log") {
		t.Fatalf("missing %v", b.Missing)
	}
	if r := certnode(t, "", "compliance", "evidence", "--period", "2026-Q9", "--coordinator", s.Addr(), "--key", key); r.code != 2 || !strings.Contains(r.stderr, "--period") {
		t.Fatalf("a bad period: %+v", r)
	}
}
