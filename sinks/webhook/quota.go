package webhook

import (
	"context"
	"strconv"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/schemas"
)

// announceLoop sends a quota.warning event for each threshold the
// directory lists as pending, then marks it announced. An event is put on
// certnode.events before it is marked, so none is lost; dispatchers that
// see the same alert at once give the event the same id (and so the same
// webhook-id), which receivers deduplicate on.
func (d *Dispatcher) announceLoop(ctx context.Context) {
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	sent := map[string]bool{} // produced, not yet marked announced
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, a := range d.dir.PendingQuotaAlerts() {
			id := schemas.EventID(a.Org, "quota", a.Month, strconv.Itoa(a.Level))
			if !sent[id] {
				if err := d.produceQuotaEvent(ctx, id, a); err != nil {
					d.log.Warn("quota.warning not sent; retried", "org", a.Org, "err", err)
					continue
				}
				sent[id] = true
			}
			actx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := d.dir.AnnounceQuota(actx, a.Org, a.Month, a.Level)
			cancel()
			if err != nil {
				d.log.Warn("quota.warning sent, not yet marked announced; retried", "org", a.Org, "err", err)
				continue
			}
			delete(sent, id)
		}
	}
}

func (d *Dispatcher) produceQuotaEvent(ctx context.Context, id string, a QuotaAlert) error {
	data, _ := json.Marshal(map[string]any{"period": a.Month, "used": a.Used, "limit": a.Limit, "percent": a.Level})
	rec := schemas.EventRecord{V: schemas.EnvelopeVersion, ID: id, Org: a.Org,
		Event: schemas.WebhookEvent{Type: schemas.EventQuotaWarning, Timestamp: d.now().UTC(), Data: data}}
	val, err := json.Marshal(&rec)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return d.cl.ProduceSync(pctx, &kgo.Record{Topic: d.topics.Events, Key: []byte(a.Org), Value: val,
		Headers: []kgo.RecordHeader{{Key: schemas.HeaderIngestMAC, Value: d.mac.Header(val)}}}).FirstErr()
}
