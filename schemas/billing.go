package schemas

import (
	"bytes"
	"encoding/csv"
	"strconv"
	"strings"
	"time"
)

// The usage and invoice documents of GET /v1/usage and /v1/invoices (see
// openapi.yaml). The billing package computes them; prices are in the
// smallest unit of the currency (cents), as plans give them.

// UsageCounts are the requests of an organization, each counted once
// (by request id, whatever the replays), by outcome.
type UsageCounts struct {
	Requests int64 `json:"requests"`
	Signed   int64 `json:"signed"`
	Valid    int64 `json:"valid"`
	Invalid  int64 `json:"invalid"`
	Failed   int64 `json:"failed"`
	// Bytes is the size of the request records.
	Bytes int64 `json:"bytes"`
}

// Billable are the requests an invoice charges for: every request that
// was processed (signed, or verified valid or invalid); failed ones are
// not billed.
func (c UsageCounts) Billable() int64 { return c.Signed + c.Valid + c.Invalid }

// Add returns the sum of c and o.
func (c UsageCounts) Add(o UsageCounts) UsageCounts {
	return UsageCounts{Requests: c.Requests + o.Requests, Signed: c.Signed + o.Signed, Valid: c.Valid + o.Valid,
		Invalid: c.Invalid + o.Invalid, Failed: c.Failed + o.Failed, Bytes: c.Bytes + o.Bytes}
}

// Usage granularities and groupings.
const (
	GranularityHour = "hour"
	GranularityDay  = "day"
	GroupByKey      = "key"
)

// MaxUsageSpan bounds the range of one usage query by granularity, so an
// answer has at most 744 hourly or 366 daily rows per key.
var MaxUsageSpan = map[string]time.Duration{GranularityHour: 31 * 24 * time.Hour, GranularityDay: 366 * 24 * time.Hour}

// UsageQuery asks for an organization's usage over [From, To), by hour or
// day (UTC), with GroupBy "" or GroupByKey.
type UsageQuery struct {
	From        time.Time
	To          time.Time
	Granularity string
	GroupBy     string
}

// UsageRow is the usage of one hour or day (starting at Start, UTC), and
// with group_by=key of one API or producer key.
type UsageRow struct {
	Start time.Time `json:"start"`
	// KeyID is set when grouped by key; requests made with a key that has
	// no id (a tenants file's keys) have none.
	KeyID       string `json:"key_id,omitempty"`
	UsageCounts `json:",inline"`
}

// UsageReport is an organization's usage over [From, To).
type UsageReport struct {
	Organization string      `json:"organization"`
	From         time.Time   `json:"from"`
	To           time.Time   `json:"to"`
	Granularity  string      `json:"granularity"`
	GroupBy      string      `json:"group_by,omitempty"`
	Rows         []UsageRow  `json:"rows"`
	Totals       UsageCounts `json:"totals"`
}

// Invoice statuses.
const (
	// InvoiceOpen: the period has not ended, or ended less than
	// ClaimedTimeBefore ago (results may still be dated into it): the
	// invoice is a preview and may change.
	InvoiceOpen = "open"
	// InvoiceClosed: no request can be added to the period any more.
	InvoiceClosed = "closed"
)

// Invoice line types.
const (
	LineBase     = "base"
	LineIncluded = "included"
	LineOverage  = "overage"
)

// InvoicePlan names the plan an invoice is priced with.
type InvoicePlan struct {
	ID               string `json:"id"`
	Name             string `json:"name"`
	BasePrice        int64  `json:"base_price"`
	IncludedReceipts int64  `json:"included_receipts"`
	PricePer1000     int64  `json:"price_per_1000"`
}

// InvoiceLine is one line item: Quantity units at UnitPrice make Amount.
type InvoiceLine struct {
	Type        string `json:"type"`
	Description string `json:"description"`
	Quantity    int64  `json:"quantity"`
	Unit        string `json:"unit"`
	UnitPrice   int64  `json:"unit_price"`
	Amount      int64  `json:"amount"`
}

// Invoice is an organization's bill for one calendar month (UTC).
type Invoice struct {
	Organization string    `json:"organization"`
	Period       string    `json:"period"` // YYYY-MM
	PeriodStart  time.Time `json:"period_start"`
	PeriodEnd    time.Time `json:"period_end"`
	Status       string    `json:"status"`
	// Preview is true while the invoice is open.
	Preview bool `json:"preview"`
	// ClosesAt is when the invoice becomes closed (PeriodEnd plus
	// ClaimedTimeBefore).
	ClosesAt time.Time     `json:"closes_at"`
	Currency string        `json:"currency"`
	Plan     InvoicePlan   `json:"plan"`
	Usage    UsageCounts   `json:"usage"`
	Lines    []InvoiceLine `json:"lines"`
	Total    int64         `json:"total"`
}

// InvoiceList is an organization's invoices, newest period first.
type InvoiceList struct {
	Organization string    `json:"organization"`
	Invoices     []Invoice `json:"invoices"`
}

// InvoiceCSVHeader is the first line of an invoice as CSV.
var InvoiceCSVHeader = []string{"organization", "period", "status", "currency", "type", "description", "quantity", "unit", "unit_price", "amount"}

// CSV renders the invoice as CSV (RFC 4180): a header, one row per line
// item, and a last row of type total.
func (inv *Invoice) CSV() []byte {
	var buf bytes.Buffer
	w := csv.NewWriter(&buf)
	row := func(typ, desc, qty, unit, price string, amount int64) []string {
		return []string{csvText(inv.Organization), inv.Period, inv.Status, csvText(inv.Currency), typ, csvText(desc), qty, unit, price,
			strconv.FormatInt(amount, 10)}
	}
	w.Write(InvoiceCSVHeader)
	for _, l := range inv.Lines {
		w.Write(row(l.Type, l.Description, strconv.FormatInt(l.Quantity, 10), l.Unit, strconv.FormatInt(l.UnitPrice, 10), l.Amount))
	}
	w.Write(row("total", "", "", "", "", inv.Total))
	w.Flush() // a bytes.Buffer does not fail
	return buf.Bytes()
}

// csvText keeps a text cell from being read as a formula by spreadsheets
// (plan names and organization ids are configured, not fixed).
func csvText(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}
