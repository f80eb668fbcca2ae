package coordinator

import (
	"fmt"
	"testing"
	"time"

	"github.com/certnode/certnode/internal/testenv"
)

// Crossing 80% and 100% of the monthly allowance raises an alert each,
// which replicas list until a dispatcher announces it; a new month starts
// over, and a late count of an old month changes nothing.
func TestQuotaAlerts(t *testing.T) {
	n := soloNode(t)
	op := operator(t, n)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"Acme","limits":{"monthly_receipts":100}}`)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"free","name":"Unlimited","limits":{"monthly_receipts":0}}`)
	r, ctx := follow(t, ReplicaConfig{Addrs: []string{n.Addr()}, Token: testNode, MaxStale: time.Minute, Wait: time.Second})
	admit := func(month string, counts map[string]int64) {
		t.Helper()
		if _, err := n.node.Propose(&SetAdmitted{Month: month, Counts: counts}); err != nil {
			t.Fatal(err)
		}
	}
	pending := func(want string) {
		t.Helper()
		testenv.WaitFor(t, "pending alerts "+want, 5*time.Second, func() (bool, string) {
			got := fmt.Sprint(r.PendingQuotaAlerts())
			return got == want, got
		})
	}
	admit("2026-11", map[string]int64{"acme": 79, "free": 1_000_000})
	pending("[]")
	admit("2026-11", map[string]int64{"acme": 80})
	pending("[{acme 2026-11 80 80 100 0}]")
	if err := r.AnnounceQuota(ctx, "acme", "2026-11", 100); err == nil {
		t.Fatal("announced a level not reached")
	}
	if err := r.AnnounceQuota(ctx, "acme", "2026-11", 80); err != nil {
		t.Fatal(err)
	}
	pending("[]")
	admit("2026-11", map[string]int64{"acme": 95})
	pending("[]")
	admit("2026-11", map[string]int64{"acme": 130})
	pending("[{acme 2026-11 100 130 100 80}]")
	if err := r.AnnounceQuota(ctx, "acme", "2026-11", 100); err != nil {
		t.Fatal(err)
	}
	admit("2026-12", map[string]int64{"acme": 90})
	pending("[{acme 2026-12 80 90 100 0}]")
	admit("2026-11", map[string]int64{"acme": 200})
	pending("[{acme 2026-12 80 90 100 0}]")
	op.must(401, "POST", "/v1/node/quota-alerts/acme", `{"month":"2026-12","level":80}`)
}
