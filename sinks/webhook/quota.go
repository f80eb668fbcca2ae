package webhook

import (
	"context"
	"net/url"
	"strconv"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/schemas"
)

// announceLoop sends a quota.warning event for each threshold the
// directory lists as pending, and a report.ready event for each scheduled
// report whose period ended, then marks it announced. An event is put on
// certnode.events before it is marked, so none is lost; dispatchers that
// see the same announcement at once give the event the same id (and so
// the same webhook-id), which receivers deduplicate on.
func (d *Dispatcher) announceLoop(ctx context.Context) {
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	sent := map[string]bool{} // produced, not yet marked announced
	announce := func(org, id, what string, ev schemas.WebhookEvent, mark func(context.Context) error) {
		if !sent[id] {
			if err := d.produceEvent(ctx, id, org, ev); err != nil {
				d.log.Warn(what+" not sent; retried", "org", org, "err", err)
				return
			}
			sent[id] = true
		}
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := mark(actx)
		cancel()
		if err != nil {
			d.log.Warn(what+" sent, not yet marked announced; retried", "org", org, "err", err)
			return
		}
		delete(sent, id)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := d.now().UTC()
		for _, a := range d.dir.PendingQuotaAlerts() {
			data, _ := json.Marshal(map[string]any{"period": a.Month, "used": a.Used, "limit": a.Limit, "percent": a.Level})
			announce(a.Org, schemas.EventID(a.Org, "quota", a.Month, strconv.Itoa(a.Level)), schemas.EventQuotaWarning,
				schemas.WebhookEvent{Type: schemas.EventQuotaWarning, Timestamp: now, Data: data},
				func(ctx context.Context) error { return d.dir.AnnounceQuota(ctx, a.Org, a.Month, a.Level) })
		}
		for _, r := range d.dir.DueReports(now) {
			from, to := r.From.UTC().Format(time.RFC3339), r.To.UTC().Format(time.RFC3339)
			data, _ := json.Marshal(reportReady{ReportID: r.ID, Name: r.Name, Schedule: r.Schedule, Period: r.Period, From: from, To: to,
				URL: "/v1/reports/" + url.PathEscape(r.ID) + "/run?from=" + from + "&to=" + to})
			announce(r.Org, schemas.EventID(r.Org, "report", r.ID, r.Period), schemas.EventReportReady,
				schemas.WebhookEvent{Type: schemas.EventReportReady, Timestamp: now, Data: data},
				func(ctx context.Context) error { return d.dir.AnnounceReport(ctx, r.Org, r.ID, r.Period) })
		}
	}
}

// reportReady is the data of a report.ready event.
type reportReady struct {
	ReportID string `json:"report_id"`
	Name     string `json:"name"`
	Schedule string `json:"schedule"`
	Period   string `json:"period"`
	From     string `json:"from"`
	To       string `json:"to"`
	URL      string `json:"url"`
}

// produceEvent puts an event of org on certnode.events.
func (d *Dispatcher) produceEvent(ctx context.Context, id, org string, ev schemas.WebhookEvent) error {
	rec := schemas.EventRecord{V: schemas.EnvelopeVersion, ID: id, Org: org, Event: ev}
	val, err := json.Marshal(&rec)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return d.cl.ProduceSync(pctx, &kgo.Record{Topic: d.topics.Events, Key: []byte(org), Value: val,
		Headers: []kgo.RecordHeader{{Key: schemas.HeaderIngestMAC, Value: d.mac.Header(val)}}}).FirstErr()
}
