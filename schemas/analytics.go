package schemas

import (
	"errors"
	"time"
)

// GranularityMinute is the finest granularity of an analytics series;
// GranularityHour and GranularityDay (shared with usage) are the others.
// Buckets start on whole minutes, hours and days, in UTC.
const GranularityMinute = "minute"

// ErrBadAnalyticsQuery is a query the caller got wrong (HTTP 400): an
// unknown metric or dimension, metrics of two sources, a range too long
// for its granularity.
var ErrBadAnalyticsQuery = errors.New("bad analytics query")

// AnalyticsFilter keeps the rows whose dimension Dim is one of Values.
type AnalyticsFilter struct {
	Dim    string   `json:"dim"`
	Values []string `json:"values"`
}

// DefaultGranularity fits a range: minutes up to 6 hours, hours up to 14
// days, days beyond.
func DefaultGranularity(span time.Duration) string {
	switch {
	case span <= 6*time.Hour:
		return GranularityMinute
	case span <= 14*24*time.Hour:
		return GranularityHour
	}
	return GranularityDay
}

// AnalyticsQuery is one analytics question over an organization's data in
// [From, To).
type AnalyticsQuery struct {
	// Metrics are what is measured, all of one source (see analytics).
	Metrics []string
	// GroupBy splits each metric by a dimension ("" for none).
	GroupBy string
	Filters []AnalyticsFilter
	From    time.Time
	To      time.Time
	// Granularity of a series; Top and totals ignore it.
	Granularity string
	// Limit keeps the groups of Top with the largest first metric.
	Limit int
}

// AnalyticsSeries answers a time series: one value per bucket in
// Timestamps for each line. Counts of an empty bucket are 0, latencies
// null.
type AnalyticsSeries struct {
	Granularity string          `json:"granularity"`
	From        time.Time       `json:"from"`
	To          time.Time       `json:"to"`
	GroupBy     string          `json:"group_by,omitempty"`
	Timestamps  []time.Time     `json:"timestamps"`
	Series      []AnalyticsLine `json:"series"`
}

// AnalyticsLine is one metric of one group over the buckets.
type AnalyticsLine struct {
	Metric string     `json:"metric"`
	Group  string     `json:"group,omitempty"`
	Values []*float64 `json:"values"`
}

// AnalyticsTop answers the groups of a dimension with the largest first
// metric, largest first.
type AnalyticsTop struct {
	From      time.Time         `json:"from"`
	To        time.Time         `json:"to"`
	Dimension string            `json:"dimension"`
	Metrics   []string          `json:"metrics"`
	Rows      []AnalyticsTopRow `json:"rows"`
}

// AnalyticsTopRow holds a group's values, in the order of Metrics.
type AnalyticsTopRow struct {
	Group  string     `json:"group"`
	Values []*float64 `json:"values"`
}

// AnalyticsSummary is an organization's totals over [From, To): what the
// dashboard's overview shows.
type AnalyticsSummary struct {
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
	// Requests counts every request once; the others split it by status.
	Requests uint64 `json:"requests"`
	Signed   uint64 `json:"signed"`
	Valid    uint64 `json:"valid"`
	Invalid  uint64 `json:"invalid"`
	Failed   uint64 `json:"failed"`
	Bytes    uint64 `json:"bytes"`
	// LatencyMillis is from the request's arrival to its result.
	LatencyMillis Percentiles     `json:"latency_ms"`
	Webhooks      WebhooksSummary `json:"webhooks"`
}

// WebhooksSummary counts webhook delivery attempts by outcome.
type WebhooksSummary struct {
	Attempts      uint64      `json:"attempts"`
	Delivered     uint64      `json:"delivered"`
	Retrying      uint64      `json:"retrying"`
	Failed        uint64      `json:"failed"`
	LatencyMillis Percentiles `json:"latency_ms"`
}

// Percentiles of a latency, null when nothing was measured.
type Percentiles struct {
	P50 *float64 `json:"p50"`
	P90 *float64 `json:"p90"`
	P99 *float64 `json:"p99"`
}

// AnalyticsRequest is one result as the drill-down lists it.
type AnalyticsRequest struct {
	ID          string    `json:"id"`
	ReceiptID   string    `json:"receipt_id,omitempty"`
	Kind        string    `json:"kind"`
	Status      string    `json:"status"`
	Reason      string    `json:"reason,omitempty"`
	Kid         string    `json:"kid,omitempty"`
	KeyID       string    `json:"key_id,omitempty"`
	JobID       string    `json:"job_id,omitempty"`
	Line        int64     `json:"line,omitempty"`
	Size        uint32    `json:"size"`
	ReceivedAt  time.Time `json:"received_at"`
	ProcessedAt time.Time `json:"processed_at"`
	LatencyMS   uint32    `json:"latency_ms"`
}

// AnalyticsRequestPage is a page of the drill-down, newest first.
type AnalyticsRequestPage struct {
	Data       []AnalyticsRequest `json:"data"`
	NextCursor string             `json:"next_cursor,omitempty"`
	HasMore    bool               `json:"has_more"`
}
