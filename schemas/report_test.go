package schemas

import (
	"testing"
	"time"
)

func TestReportPeriod(t *testing.T) {
	// Thursday 2026-11-26, 10:00 UTC.
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.FixedZone("x", 5*3600))
	for _, c := range []struct {
		schedule, label, from, to string
	}{
		{"daily", "2026-11-25", "2026-11-25", "2026-11-26"},
		{"weekly", "2026-W47", "2026-11-16", "2026-11-23"},
		{"monthly", "2026-10", "2026-10-01", "2026-11-01"},
	} {
		label, from, to, ok := ReportPeriod(c.schedule, now)
		if !ok || label != c.label || from.Format("2006-01-02") != c.from || to.Format("2006-01-02") != c.to || from.Location() != time.UTC {
			t.Errorf("%s: %v %s %v %v", c.schedule, ok, label, from, to)
		}
	}
	// On a Monday the week before is the one that ended.
	if label, _, to, _ := ReportPeriod("weekly", time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)); label != "2026-W47" || to.Day() != 23 {
		t.Errorf("Monday: %s %v", label, to)
	}
	if _, _, _, ok := ReportPeriod("", now); ok {
		t.Error("no schedule has a period")
	}
}

func TestReportCheck(t *testing.T) {
	good := Report{Name: "r", Chart: "line", Query: ReportQuery{Metrics: []string{"requests", "latency_p99"}, GroupBy: "status", Range: RangeLast7d,
		Filters: []AnalyticsFilter{{Dim: "kind", Values: []string{"sign"}}}}}
	if err := good.Check(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(r *Report){
		"no name":            func(r *Report) { r.Name = " " },
		"two sources":        func(r *Report) { r.Query.Metrics = []string{"requests", "webhook_attempts"} },
		"unknown metric":     func(r *Report) { r.Query.Metrics = []string{"tenants"} },
		"other source's dim": func(r *Report) { r.Query.GroupBy = "outcome" },
		"bad filter":         func(r *Report) { r.Query.Filters = []AnalyticsFilter{{Dim: "org", Values: []string{"x"}}} },
		"custom without to":  func(r *Report) { r.Query.Range = RangeCustom; r.Query.From = time.Now() },
		"from without custom": func(r *Report) {
			r.Query.From, r.Query.To = time.Now(), time.Now().Add(time.Hour)
		},
		"pie":    func(r *Report) { r.Chart = "pie" },
		"hourly": func(r *Report) { r.Schedule = "hourly" },
	} {
		r := good
		r.Query.Filters = append([]AnalyticsFilter(nil), good.Query.Filters...)
		mut(&r)
		if r.Check() == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
