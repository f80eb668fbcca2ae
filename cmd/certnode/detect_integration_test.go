//go:build integration

package main

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// TestThreatDetection: on real Kafka and ClickHouse, with every role its
// own process and each client bound to an address of its own in
// 127.0.0.0/8, attack patterns replayed against ingest and the dashboard
// sign-in raise their alerts (counted in Prometheus; an organization's
// listed to it and sent to it as security.alert webhooks), the address
// behind a burst of bad keys is blocked at ingest, and ordinary traffic of
// the same volumes raises none.
func TestThreatDetection(t *testing.T) {
	e := newE2E(t, "")
	caddr, call := e.coordinated()
	e.sink()
	e.ingest("--coordinator", caddr)
	metrics := freeAddr(t)
	e.start("detect", "detect", "--coordinator", caddr, "--block-for", "2m", "--metrics", metrics)
	org, admin := e.newOrgKey(call, "acme", `["admin","read"]`)
	_, victim := e.newOrgKey(call, "acme", `["read"]`)
	victimID, _, _ := strings.Cut(victim, ".")
	if code, body := call("POST", "/v1/admin/users", `{"email":"sec@e2e.test","password":"a-password-for-sec"}`); code != 201 {
		t.Fatalf("user: %d %s", code, body)
	}
	testenv.WaitFor(t, "ingest knows the keys", 30*time.Second, func() (bool, string) {
		code := e.from("127.0.0.2", "GET", "/v1/jobs", admin, "")
		return code == 200, fmt.Sprint(code)
	})

	// Ordinary traffic first, of the attacks' volumes: 30 admitted
	// requests from one address; 25 refused ones from as many addresses,
	// each naming a key id of its own (typos); 12 wrong sign-ins from as
	// many addresses; a key used again from the address it knows.
	for range 30 {
		if code := e.from("127.0.0.2", "GET", "/v1/jobs", admin, ""); code != 200 {
			t.Fatalf("an ordinary request: %d", code)
		}
	}
	for i := range 25 {
		e.from(fmt.Sprintf("127.0.1.%d", i+1), "GET", "/v1/jobs", fmt.Sprintf("cnk_TYPO%08d.x", i), "")
	}
	for i := range 12 {
		e.from(fmt.Sprintf("127.0.2.%d", i+1), "POST", "/v1/auth/login", "", fmt.Sprintf(`{"email":"sec@e2e.test","password":"typo-%d"}`, i))
	}
	e.from("127.0.0.2", "GET", "/v1/jobs", admin, "")

	// The attacks: 30 unknown keys from 127.0.0.5; 25 wrong secrets for
	// the victim key's id from 25 addresses; 12 sign-ins to 12 accounts
	// from 127.0.0.9 (credential stuffing); the admin key from a new
	// address.
	for i := range 30 {
		e.from("127.0.0.5", "GET", "/v1/jobs", fmt.Sprintf("cnk_SPRAY%07d.x", i), "")
	}
	for i := range 25 {
		e.from(fmt.Sprintf("127.0.3.%d", i+1), "GET", "/v1/jobs", victimID+".wrong-secret", "")
	}
	for i := range 12 {
		e.from("127.0.0.9", "POST", "/v1/auth/login", "", fmt.Sprintf(`{"email":"user%d@e2e.test","password":"Summer2026!"}`, i))
	}
	e.from("127.0.0.77", "GET", "/v1/jobs", admin, "")

	// Prometheus counts every alert, the deployment's too; the ordinary
	// traffic added none.
	want := map[string]float64{"failed_auth_address": 1, "failed_auth_key": 1, "credential_stuffing": 1, "new_key_address": 1,
		"volume_spike": 0, "verification_failures": 0, "endpoint_flood": 0}
	sample := regexp.MustCompile(`(?m)^certnode_security_alerts_total\{detector="([a-z_]+)"\} (\S+)$`)
	testenv.WaitFor(t, "the four alerts counted", 60*time.Second, func() (bool, string) {
		_, body := request("GET", "http://"+metrics+"/metrics", "", "", "")
		got := map[string]float64{}
		for _, m := range sample.FindAllStringSubmatch(body, -1) {
			got[m[1]], _ = strconv.ParseFloat(m[2], 64)
		}
		for d, n := range want {
			if got[d] != n {
				return false, fmt.Sprint(got)
			}
		}
		return true, ""
	})
	// The address is blocked at ingest; its neighbours are not.
	testenv.WaitFor(t, "127.0.0.5 blocked", 30*time.Second, func() (bool, string) {
		code, body := e.fromBody("127.0.0.5", "GET", "/v1/jobs", admin, "")
		return code == 403 && strings.Contains(body, "address_blocked"), fmt.Sprint(code, body)
	})
	if code := e.from("127.0.0.6", "GET", "/v1/jobs", "cnk_NEIGHBOUR000.x", ""); code != 401 {
		t.Fatalf("a neighbour of the blocked address: %d, want the 401 of an unknown key", code)
	}
	if code, body := call("GET", "/v1/admin/blocks", ""); code != 200 || !strings.Contains(body, `"addr":"127.0.0.5"`) || !strings.Contains(body, "failed_auth_address") {
		t.Fatalf("blocks: %d %s", code, body)
	}

	// The organization's alerts (its key under attack, its key from a new
	// address) are listed to it, and sent to it as webhooks.
	var listed []string
	testenv.WaitFor(t, "the organization's alerts listed", 60*time.Second, func() (bool, string) {
		code, body := e.fromBody("127.0.0.2", "GET", "/v1/security/alerts", admin, "")
		var ans struct {
			Alerts []schemas.AuditEvent `json:"alerts"`
		}
		if code != 200 || json.Unmarshal([]byte(body), &ans) != nil {
			return false, fmt.Sprint(code, body)
		}
		listed = listed[:0]
		for _, a := range ans.Alerts {
			listed = append(listed, a.Reason+" "+a.Target)
			if a.Org != org || a.Action != "security.alert" || a.Result != schemas.AuditFlagged || a.Detail == "" {
				t.Errorf("alert %+v", a)
			}
		}
		slices.Sort(listed)
		return len(listed) == 2, fmt.Sprint(listed)
	})
	if w := []string{"failed_auth_key key:" + victimID, "new_key_address key:" + adminKeyID(admin)}; !slices.Equal(listed, w) {
		t.Fatalf("alerts %v, want %v", listed, w)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.kafka), kgo.ConsumeTopics(schemas.TopicsFor(e.prefix).Events), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var hooks []string
	testenv.WaitFor(t, "two security.alert webhooks", 30*time.Second, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		for _, r := range cl.PollFetches(ctx).Records() {
			var er schemas.EventRecord
			var data schemas.SecurityAlertData
			if json.Unmarshal(r.Value, &er) == nil && er.Event.Type == schemas.EventSecurityAlert && json.Unmarshal(er.Event.Data, &data) == nil {
				if er.Org != org {
					t.Errorf("a webhook of %s: %+v", er.Org, data)
				}
				hooks = append(hooks, data.Detector)
			}
		}
		slices.Sort(hooks)
		return slices.Equal(hooks, []string{"failed_auth_key", "new_key_address"}), fmt.Sprint(hooks)
	})

	// The month's evidence bundle holds them, the access review and the
	// organization's availability, signed.
	out := filepath.Join(t.TempDir(), "evidence.json")
	t.Setenv("CERTNODE_ADMIN_TOKEN", e2eAdminToken)
	r := certnode(t, "", "compliance", "evidence", "--period", time.Now().UTC().Format("2006-01"), "--coordinator", caddr, "--clickhouse", e.ch,
		"--workers-keyring", e.keyring, "--keyring", e.keyring, "--out", out)
	if r.code != 0 {
		t.Fatalf("evidence: %+v", r)
	}
	if v := certnode(t, "", "verify", "--jwks", e.jwksFile, "--receipt", out); v.code != 0 {
		t.Fatalf("the bundle does not verify: %+v", v)
	}
	b := readEvidence(t, out)
	var ours []string
	for _, ev := range b.SecurityEvents {
		if ev["org"] == org {
			ours = append(ours, fmt.Sprint(ev["reason"]))
		}
	}
	slices.Sort(ours)
	if !slices.Equal(ours, []string{"failed_auth_key", "new_key_address"}) {
		t.Errorf("the bundle's alerts of %s: %v", org, ours)
	}
	created := false
	for _, ev := range b.ChangeHistory {
		created = created || (ev["org"] == org && ev["action"] == "org.create")
	}
	avail := slices.IndexFunc(b.Availability, func(a schemas.EvidenceAvailability) bool { return a.Org == org })
	if !created || avail < 0 || len(b.KeyRotations) == 0 || !strings.Contains(strings.Join(b.Missing, " "), "audit_log") {
		t.Errorf("bundle: org.create %v, availability %v, keys %v, missing %v", created, avail, b.KeyRotations, b.Missing)
	}
}

// adminKeyID is the public id of an API key.
func adminKeyID(key string) string {
	id, _, _ := strings.Cut(key, ".")
	return id
}
