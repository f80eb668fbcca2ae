package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/certnode/certnode/internal/kafka"
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
// access review as the coordinator has it (keys without their secret or
// hash), the ring's keys, and names the sources it was not given.
func TestComplianceEvidence(t *testing.T) {
	dir, key, jwks := setup(t)
	s := soloCoordinator(t)
	admin := os.Getenv("CERTNODE_ADMIN_TOKEN")
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
	b := readEvidence(t, out)
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

	// The record of processing: the topics with their retention, the
	// organization's retention and webhook recipients.
	if code, body := request("PATCH", "http://"+s.Addr()+"/v1/orgs/acme", admin, "application/json", `{"settings":{"retention_days":90}}`); code != 200 {
		t.Fatalf("retention: %d %s", code, body)
	}
	if code, body := request("POST", "http://"+s.Addr()+"/v1/orgs/acme/webhooks/endpoints", admin, "application/json", `{"url":"https://hooks.acme.example/in"}`); code != 201 {
		t.Fatalf("endpoint: %d %s", code, body)
	}
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	if err := ensureTopics(context.Background(), kafka.Config{Brokers: cluster.ListenAddrs(), Partitions: 1, ReplicationFactor: 1, TopicPrefix: "certnode"}); err != nil {
		t.Fatal(err)
	}
	r = certnode(t, "", "compliance", "processing", "--kafka", cluster.ListenAddrs()[0], "--coordinator", s.Addr())
	var rec ProcessingRecord
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &rec) != nil {
		t.Fatalf("processing: %+v", r)
	}
	if len(rec.Organizations) != 1 || rec.Organizations[0].RetentionDays != 90 || !slices.Equal(rec.Organizations[0].Recipients, []string{"hooks.acme.example"}) {
		t.Fatalf("organizations %+v", rec.Organizations)
	}
	var topics, personal int
	for _, st := range rec.Stores {
		if strings.HasPrefix(st.Name, "Kafka topic certnode.") {
			topics++
			if st.Retention == "" || strings.HasPrefix(st.Retention, "absent") {
				t.Errorf("topic %+v", st)
			}
		}
		if st.Personal {
			personal++
		}
	}
	if topics != 10+len(schemas.WebhookDelayTiers) || personal < 8 || !strings.Contains(strings.Join(rec.Missing, " "), "clickhouse") {
		t.Fatalf("%d topics, %d stores with personal data, missing %v: %+v", topics, personal, rec.Missing, rec.Stores)
	}
}

// readEvidence reads the payload of a signed evidence bundle.
func readEvidence(t *testing.T, path string) schemas.EvidenceBundle {
	t.Helper()
	raw, _ := os.ReadFile(path)
	var rc struct {
		Payload schemas.EvidenceBundle `json:"payload"`
	}
	if err := json.Unmarshal(raw, &rc, json.RejectUnknownMembers(false)); err != nil {
		t.Fatal(err)
	}
	return rc.Payload
}
