package webhook

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/certnode/certnode/schemas"
)

type metrics struct {
	deliveries     *prometheus.CounterVec
	events         *prometheus.CounterVec
	skipped        *prometheus.CounterVec
	dropped        *prometheus.CounterVec
	parked         prometheus.Counter
	disabled       prometheus.Counter
	attemptSeconds prometheus.Histogram
	firstAttempt   prometheus.Histogram
}

func newMetrics() *metrics {
	m := &metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "certnode_webhook_attempts_total",
			Help: "Delivery attempts by outcome (delivered, retrying, exhausted, endpoint_disabled)."}, []string{"outcome"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "certnode_webhook_events_total",
			Help: "Events read, by type (each makes a message per subscribed endpoint)."}, []string{"type"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "certnode_webhook_records_skipped_total",
			Help: "Records that were not valid events or messages, by topic."}, []string{"topic"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "certnode_webhook_messages_dropped_total",
			Help: "Messages not sent, by reason (endpoint_deleted; already_sent: read again after its attempt was recorded; in_progress: a copy of one held here)."}, []string{"reason"}),
		parked: prometheus.NewCounter(prometheus.CounterOpts{Name: "certnode_webhook_messages_parked_total",
			Help: "Messages moved to a delay topic because their endpoint was slow or its queue full."}),
		disabled: prometheus.NewCounter(prometheus.CounterOpts{Name: "certnode_webhook_endpoints_disabled_total",
			Help: "Endpoints disabled (410 Gone, or failing for too long)."}),
		attemptSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "certnode_webhook_attempt_seconds",
			Help: "Duration of delivery attempts.", Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 14)}),
		firstAttempt: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "certnode_webhook_first_attempt_delay_seconds",
			Help:    "Time from the event (a receipt signed) to its first delivery attempt.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 14)}),
	}
	for _, o := range []string{schemas.OutcomeDelivered, schemas.OutcomeRetrying, schemas.OutcomeExhausted, schemas.OutcomeDisabled} {
		m.deliveries.WithLabelValues(o)
	}
	return m
}

func (m *metrics) register(r prometheus.Registerer, d *Dispatcher) {
	r.MustRegister(m.deliveries, m.events, m.skipped, m.dropped, m.parked, m.disabled, m.attemptSeconds, m.firstAttempt,
		&queueCollector{d: d}, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "certnode_webhook_seen_attempts",
			Help: "Recent attempts remembered to avoid sending a message read again."}, func() float64 { return float64(d.seen.size()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "certnode_webhook_messages_pending",
			Help: "Messages held in memory (queued or in flight)."}, func() float64 { return float64(d.pending.Load()) }))
}

// queueCollector reports each endpoint's queue when scraped, so an
// endpoint that is gone leaves no stale series.
type queueCollector struct{ d *Dispatcher }

var (
	queueDepth = prometheus.NewDesc("certnode_webhook_queue_depth", "Messages waiting or in flight for an endpoint.",
		[]string{"endpoint"}, nil)
	queueAge = prometheus.NewDesc("certnode_webhook_queue_oldest_seconds", "Age of the oldest message waiting for an endpoint.",
		[]string{"endpoint"}, nil)
)

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) { ch <- queueDepth; ch <- queueAge }

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.now()
	for id, q := range d.eps {
		if len(q.items) == 0 && q.inflight == 0 {
			continue
		}
		ch <- prometheus.MustNewConstMetric(queueDepth, prometheus.GaugeValue, float64(len(q.items)+q.inflight), id)
		age := 0.0
		if len(q.items) > 0 {
			age = now.Sub(q.items[0].since).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(queueAge, prometheus.GaugeValue, age, id)
	}
}
