package billing

import (
	"slices"
	"testing"
	"time"

	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
)

var (
	may  = time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	june = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	pro  = tenants.Plan{ID: "pro", Name: "Pro", Currency: "EUR", BasePrice: 4900, IncludedReceipts: 10_000, PricePer1000: 150}
	free = tenants.Plan{ID: "free", Name: "Free", Currency: "EUR", IncludedReceipts: 1_000, PricePer1000: 500}
)

// signed is usage of n signed receipts (plus a failed request, never billed).
func signed(n int64) schemas.UsageCounts {
	return schemas.UsageCounts{Requests: n + 1, Signed: n, Failed: 1, Bytes: 100 * (n + 1)}
}

func TestPriceRounding(t *testing.T) {
	now := june.Add(48 * time.Hour) // May is closed
	plans := []tenants.PlanPeriod{{From: may, Plan: pro}}
	for _, tc := range []struct {
		name                string
		usage               schemas.UsageCounts
		included, overBlock int64
		total               int64
	}{
		{"nothing used: the base price", schemas.UsageCounts{}, 0, 0, 4900},
		{"under the allowance", signed(9_999), 9_999, 0, 4900},
		{"exactly the allowance", signed(10_000), 10_000, 0, 4900},
		{"one over: a started 1,000", signed(10_001), 10_000, 1, 4900 + 150},
		{"1,000 over: one", signed(11_000), 10_000, 1, 4900 + 150},
		{"1,001 over: two", signed(11_001), 10_000, 2, 4900 + 300},
		{"verifications count, valid or invalid", schemas.UsageCounts{Requests: 12_500, Valid: 6_000, Invalid: 6_000, Failed: 500}, 10_000, 2, 4900 + 300},
		{"failed requests are not billed", schemas.UsageCounts{Requests: 50_000, Failed: 50_000}, 0, 0, 4900},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inv, ok := Price("acme", may, plans, tc.usage, now)
			if !ok {
				t.Fatal("no invoice")
			}
			want := []schemas.InvoiceLine{
				{Type: "base", Description: "Base price, plan Pro", Quantity: 1, Unit: "month", UnitPrice: 4900, Amount: 4900},
				{Type: "included", Description: "Receipts included (10000 in the plan)", Quantity: tc.included, Unit: "receipt"},
				{Type: "overage", Description: inv.Lines[2].Description, Quantity: tc.overBlock, Unit: "1,000 receipts", UnitPrice: 150, Amount: tc.overBlock * 150},
			}
			if !slices.Equal(inv.Lines, want) {
				t.Errorf("lines %+v\nwant %+v", inv.Lines, want)
			}
			if inv.Total != tc.total || inv.Currency != "EUR" || inv.Usage != tc.usage {
				t.Errorf("total %d %s, usage %+v; want %d EUR", inv.Total, inv.Currency, inv.Usage, tc.total)
			}
		})
	}
}

// The plan in effect at the start of the period prices all of it; an
// organization whose first plan begins mid-month is billed on that plan.
func TestPricePlanChanges(t *testing.T) {
	now := time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC)
	midMay := may.Add(14 * 24 * time.Hour)
	plans := []tenants.PlanPeriod{ // out of order on purpose
		{From: june.Add(10 * 24 * time.Hour), Plan: free}, // downgrade in mid-June
		{From: midMay, Plan: pro},
	}
	for _, tc := range []struct {
		month time.Time
		plan  string
		ok    bool
	}{
		{may.AddDate(0, -1, 0), "", false}, // before any plan
		{may, "pro", true},                 // the first plan began mid-May
		{june, "pro", true},                // in effect on June 1st, though changed mid-June
		{june.AddDate(0, 1, 0), "free", true},
		{now.AddDate(0, 1, 0), "", false}, // not begun
	} {
		inv, ok := Price("acme", tc.month, plans, signed(10), now)
		if ok != tc.ok || (ok && inv.Plan.ID != tc.plan) {
			t.Errorf("%s: invoice %v on %+v, want %v on %q", tc.month.Format("2006-01"), ok, inv, tc.ok, tc.plan)
		}
	}
}

// A period stays open (a preview) until it ended and results can no
// longer be dated into it; then it is closed.
func TestPriceStatus(t *testing.T) {
	plans := []tenants.PlanPeriod{{From: may, Plan: pro}}
	for _, tc := range []struct {
		now     time.Time
		status  string
		preview bool
	}{
		{may.Add(time.Hour), "open", true},
		{june.Add(-time.Second), "open", true},
		{june.Add(schemas.ClaimedTimeBefore - time.Second), "open", true},
		{june.Add(schemas.ClaimedTimeBefore), "closed", false},
	} {
		inv, ok := Price("acme", may, plans, signed(1), tc.now)
		if !ok || inv.Status != tc.status || inv.Preview != tc.preview || !inv.ClosesAt.Equal(june.Add(schemas.ClaimedTimeBefore)) {
			t.Errorf("at %s: %v %+v, want %s", tc.now, ok, inv, tc.status)
		}
		if inv.Period != "2026-05" || !inv.PeriodStart.Equal(may) || !inv.PeriodEnd.Equal(june) {
			t.Errorf("period %s [%s, %s)", inv.Period, inv.PeriodStart, inv.PeriodEnd)
		}
	}
}

func TestInvoicesList(t *testing.T) {
	now := time.Date(2026, 8, 15, 0, 0, 0, 0, time.UTC)
	epoch := []tenants.PlanPeriod{{From: time.Unix(0, 0), Plan: tenants.Plan{ID: "unmetered", Name: "Unmetered", Currency: "USD"}}}
	usage := map[time.Time]schemas.UsageCounts{june: signed(5)}
	periods := func(list []schemas.Invoice) []string {
		var out []string
		for _, inv := range list {
			out = append(out, inv.Period+"/"+inv.Status)
		}
		return out
	}
	// A free plan since 1970: the months before the first usage are left
	// out, the current preview is always there.
	if got, want := periods(invoices("acme", epoch, usage, now)), []string{"2026-08/open", "2026-07/closed", "2026-06/closed"}; !slices.Equal(got, want) {
		t.Errorf("free plan: %v, want %v", got, want)
	}
	if got := periods(invoices("acme", epoch, nil, now)); !slices.Equal(got, []string{"2026-08/open"}) {
		t.Errorf("no usage: %v", got)
	}
	// A paid plan bills every month from its start, empty or not.
	paid := []tenants.PlanPeriod{{From: may.Add(time.Hour), Plan: pro}}
	if got, want := periods(invoices("acme", paid, nil, now)), []string{"2026-08/open", "2026-07/closed", "2026-06/closed", "2026-05/closed"}; !slices.Equal(got, want) {
		t.Errorf("paid plan: %v, want %v", got, want)
	}
	// At most MaxListedPeriods, the newest.
	old := []tenants.PlanPeriod{{From: time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), Plan: pro}}
	list := invoices("acme", old, nil, now)
	if len(list) != MaxListedPeriods || list[0].Period != "2026-08" || list[len(list)-1].Period != "2023-09" {
		t.Errorf("%d invoices from %s to %s", len(list), list[0].Period, list[len(list)-1].Period)
	}
	if got := invoices("acme", nil, usage, now); got == nil || len(got) != 0 {
		t.Errorf("no plans: %v", got)
	}
}
