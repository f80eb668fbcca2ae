package coordinator

import (
	"fmt"
	"testing"
	"time"

	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// A scheduled report is due once its first period after it was made has
// ended, until a dispatcher announces that period; the next period makes
// it due again; a report without a schedule never is.
func TestDueReports(t *testing.T) {
	n := soloNode(t)
	op := operator(t, n)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"Acme"}`)
	made := time.Date(2026, 11, 20, 15, 0, 0, 0, time.UTC)
	put := func(id, schedule string) {
		t.Helper()
		r := Report{Report: schemas.Report{ID: id, Org: "acme", Name: id, Chart: "line", Schedule: schedule, CreatedAt: made, UpdatedAt: made,
			Query: schemas.ReportQuery{Metrics: []string{"requests"}, Range: schemas.RangeLast24h}}}
		if _, err := n.node.Propose(&PutReport{Report: r, Create: true}); err != nil {
			t.Fatal(err)
		}
	}
	put("rpt_daily", "daily")
	put("rpt_monthly", "monthly")
	put("rpt_never", "")
	r, ctx := follow(t, ReplicaConfig{Addrs: []string{n.Addr()}, Token: testNode, MaxStale: time.Minute, Wait: time.Second})
	due := func(now time.Time, want string) {
		t.Helper()
		testenv.WaitFor(t, "due at "+now.String(), 5*time.Second, func() (bool, string) {
			var got []string
			for _, d := range r.DueReports(now) {
				got = append(got, fmt.Sprintf("%s %s %s..%s", d.ID, d.Period, d.From.Format("01-02"), d.To.Format("01-02")))
			}
			return fmt.Sprint(got) == want, fmt.Sprint(got)
		})
	}
	due(made.Add(time.Hour), "[]") // the day it was made has not ended
	due(time.Date(2026, 11, 21, 0, 1, 0, 0, time.UTC), "[rpt_daily 2026-11-20 11-20..11-21]")
	if err := r.AnnounceReport(ctx, "acme", "rpt_daily", "2026-11-20"); err != nil {
		t.Fatal(err)
	}
	due(time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC), "[]")
	due(time.Date(2026, 12, 1, 0, 0, 5, 0, time.UTC), "[rpt_daily 2026-11-30 11-30..12-01 rpt_monthly 2026-11 11-01..12-01]")
	if err := r.AnnounceReport(ctx, "other", "rpt_daily", "2026-11-30"); err == nil {
		t.Fatal("another organization announced acme's report")
	}
}
