package ingest

import (
	"github.com/go-json-experiment/json"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

// errorBody is the JSON of every API error; Job rides along where a
// partly processed bulk job explains the error.
type errorBody struct {
	Error errorDetail `json:"error"`
	JobID string      `json:"job_id,omitempty"`
	Job   any         `json:"job,omitempty"`
	// KnownVersions lists the API versions, for an unknown one.
	KnownVersions []string `json:"known_versions,omitempty"`
}

type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// apiError writes {"error":{"code":...,"message":...}}.
func apiError(ctx *fasthttp.RequestCtx, status int, code, msg string) {
	writeJSON(ctx, status, errorBody{Error: errorDetail{code, msg}})
}

func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = fasthttp.StatusInternalServerError, []byte(`{"error":{"code":"internal","message":"encoding failed"}}`)
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(append(b, '\n'))
}

type metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	produced *prometheus.CounterVec
	lines    *prometheus.CounterVec
	lag      prometheus.Gauge
	waiting  prometheus.Gauge
	// resultsDropped counts results refused for the job they name.
	resultsDropped *prometheus.CounterVec
	streams        prometheus.Gauge
	// exports: export files being streamed.
	exports prometheus.Gauge
	// listeners and listenDropped: webhooks listen sessions, and the
	// events dropped for sessions that fell behind.
	listeners     prometheus.Gauge
	listenDropped prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "certnode_http_requests_total",
			Help: "HTTP requests by route and status."}, []string{"route", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "certnode_http_request_seconds",
			Help: "HTTP request latency by route.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}, []string{"route"}),
		produced: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "certnode_ingest_produced_total",
			Help: "Requests produced to Kafka, by outcome."}, []string{"outcome"}),
		lines: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "certnode_ingest_job_lines_total",
			Help: "Bulk job lines, by outcome."}, []string{"outcome"}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{Name: "certnode_ingest_result_lag_seconds",
			Help: "Age of the newest result read back from certnode.receipts."}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{Name: "certnode_ingest_waiting_requests",
			Help: "Requests waiting for their result."}),
		resultsDropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "certnode_ingest_results_refused_total",
			Help: "Results not counted for the job they name, by reason (foreign, line_out_of_range, unknown_request, not_accepted, undecodable)."}, []string{"reason"}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{Name: "certnode_ingest_result_streams",
			Help: "Results streams open."}),
		exports: prometheus.NewGauge(prometheus.GaugeOpts{Name: "certnode_ingest_export_streams",
			Help: "GET /v1/exports files being streamed."}),
		listeners: prometheus.NewGauge(prometheus.GaugeOpts{Name: "certnode_ingest_webhook_listeners",
			Help: "GET /v1/webhooks/listen sessions open."}),
		listenDropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "certnode_ingest_webhook_listen_dropped_total",
			Help: "Events not sent to a webhooks listen session whose buffer was full."}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.latency, m.produced, m.lines, m.lag, m.waiting, m.resultsDropped, m.streams,
			m.exports, m.listeners, m.listenDropped)
	}
	return m
}
