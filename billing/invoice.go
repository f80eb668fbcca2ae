package billing

import (
	"fmt"
	"slices"
	"time"

	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
)

// MaxListedPeriods bounds GET /v1/invoices to the newest periods.
const MaxListedPeriods = 36

// Line units.
const (
	unitMonth    = "month"
	unitReceipt  = "receipt"
	unitThousand = "1,000 receipts"
)

// sortedPlans returns plans ordered by start.
func sortedPlans(plans []tenants.PlanPeriod) []tenants.PlanPeriod {
	out := slices.Clone(plans)
	slices.SortStableFunc(out, func(a, b tenants.PlanPeriod) int { return a.From.Compare(b.From) })
	return out
}

// planFor returns the plan that prices the period [start, end): the one in
// effect at its start, or, for the period in which the organization's
// first plan begins, that plan. A period before any plan has none.
func planFor(sorted []tenants.PlanPeriod, start, end time.Time) (tenants.Plan, bool) {
	var plan tenants.Plan
	found := false
	for _, p := range sorted {
		if p.From.After(start) {
			if !found && p.From.Before(end) {
				return p.Plan, true
			}
			break
		}
		plan, found = p.Plan, true
	}
	return plan, found
}

// Price makes the invoice of the calendar month (UTC) that starts at
// month, from the organization's plans and the month's usage, as seen at
// now. Billable receipts (schemas.UsageCounts.Billable) up to the plan's
// allowance are included; each started 1,000 over it costs PricePer1000:
// 1 receipt over costs a full 1,000, 1,000 over cost one, 1,001 two. ok is
// false when no plan covers the month or the month has not begun.
func Price(org string, month time.Time, plans []tenants.PlanPeriod, usage schemas.UsageCounts, now time.Time) (*schemas.Invoice, bool) {
	start := monthStart(month)
	end := start.AddDate(0, 1, 0)
	plan, ok := planFor(sortedPlans(plans), start, end)
	if !ok || !start.Before(now) {
		return nil, false
	}
	billable := usage.Billable()
	included := min(billable, plan.IncludedReceipts)
	over := billable - included
	blocks := (over + 999) / 1000
	closes := end.Add(schemas.ClaimedTimeBefore)
	inv := &schemas.Invoice{
		Organization: org, Period: start.Format("2006-01"), PeriodStart: start, PeriodEnd: end,
		Status: schemas.InvoiceClosed, ClosesAt: closes, Currency: plan.Currency,
		Plan: schemas.InvoicePlan{ID: plan.ID, Name: plan.Name, BasePrice: plan.BasePrice,
			IncludedReceipts: plan.IncludedReceipts, PricePer1000: plan.PricePer1000},
		Usage: usage,
		Lines: []schemas.InvoiceLine{
			{Type: schemas.LineBase, Description: fmt.Sprintf("Base price, plan %s", plan.Name), Quantity: 1, Unit: unitMonth,
				UnitPrice: plan.BasePrice, Amount: plan.BasePrice},
			{Type: schemas.LineIncluded, Description: fmt.Sprintf("Receipts included (%d in the plan)", plan.IncludedReceipts),
				Quantity: included, Unit: unitReceipt},
			{Type: schemas.LineOverage, Description: fmt.Sprintf("%d receipts over the allowance, per started 1,000", over),
				Quantity: blocks, Unit: unitThousand, UnitPrice: plan.PricePer1000, Amount: blocks * plan.PricePer1000},
		},
	}
	if now.Before(closes) {
		inv.Status, inv.Preview = schemas.InvoiceOpen, true
	}
	for _, l := range inv.Lines {
		inv.Total += l.Amount
	}
	return inv, true
}

// listedMonths returns the months GET /v1/invoices may list, oldest
// first: from the month of the organization's first plan (or
// MaxListedPeriods back) to the current one.
func listedMonths(plans []tenants.PlanPeriod, now time.Time) []time.Time {
	if len(plans) == 0 {
		return nil
	}
	current := monthStart(now)
	first := monthStart(sortedPlans(plans)[0].From)
	if oldest := current.AddDate(0, 1-MaxListedPeriods, 0); first.Before(oldest) {
		first = oldest
	}
	var out []time.Time
	for m := first; !m.After(current); m = m.AddDate(0, 1, 0) {
		out = append(out, m)
	}
	return out
}

// invoices prices each listed month with its usage (by month start) and
// returns them newest first, leaving out the oldest past months that
// neither had usage nor cost anything (a free plan from long ago). The
// current month's preview is always there.
func invoices(org string, plans []tenants.PlanPeriod, usage map[time.Time]schemas.UsageCounts, now time.Time) []schemas.Invoice {
	out := []schemas.Invoice{}
	current := monthStart(now)
	for _, m := range listedMonths(plans, now) {
		inv, ok := Price(org, m, plans, usage[m], now)
		if !ok || (len(out) == 0 && m.Before(current) && inv.Total == 0 && inv.Usage.Requests == 0) {
			continue
		}
		out = append(out, *inv)
	}
	slices.Reverse(out)
	return out
}
