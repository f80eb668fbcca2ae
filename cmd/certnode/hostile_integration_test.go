//go:build integration

package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/recordauth"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// TestE2EHostileProducer: while an honest bulk job runs, a hostile producer
// writes every kind of bad record straight into certnode.requests (huge,
// negative and missing line numbers, the honest job's id, other tenants'
// ids, empty payloads, 1 MiB of garbage, wrong HMACs, forged ingest MACs,
// absurd timestamps). Ingest and workers stay up, the honest job completes
// with exactly its own lines, and nothing honest is lost.
func TestE2EHostileProducer(t *testing.T) {
	e := newE2E(t, "")
	e.sink()
	worker := e.worker()
	ing := e.ingest()
	topics := schemas.TopicsFor(e.prefix)
	const n = 3000
	job := e.submitJob("sign", payloads("honest", n))

	cl, err := kgo.NewClient(kgo.SeedBrokers(e.kafka), kgo.ProducerBatchMaxBytes(schemas.MaxRequestBytes))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	signed := func(value string) *kgo.Record {
		return &kgo.Record{Topic: topics.Requests, Key: []byte(e.tenant), Value: []byte(value), Headers: []kgo.RecordHeader{
			{Key: schemas.HeaderProducerKeyID, Value: []byte(e.producerKeyID)},
			{Key: schemas.HeaderSignature, Value: []byte(recordauth.Sign([]byte(e.producerSecret), []byte(value)))}}}
	}
	unsigned := func(key, value string, headers ...kgo.RecordHeader) *kgo.Record {
		return &kgo.Record{Topic: topics.Requests, Key: []byte(key), Value: []byte(value), Headers: headers}
	}
	env := func(id, extra string) string {
		return fmt.Sprintf(`{"v":1,"id":%q,"tenant":%q,"kind":"sign","payload":{"h":1}%s}`, id, e.tenant, extra)
	}
	garbage := make([]byte, 1<<20)
	rand.Read(garbage)
	var hostile []*kgo.Record
	for i := 0; i < 5; i++ {
		jobLine := fmt.Sprintf(`,"job_id":%q,"line":%d`, job, i+1)
		hostile = append(hostile,
			unsigned(e.tenant, env(fmt.Sprint("h-huge-", i), fmt.Sprintf(`,"job_id":%q,"line":4611686018427387904`, job))),
			unsigned(e.tenant, env(fmt.Sprint("h-neg-", i), fmt.Sprintf(`,"job_id":%q,"line":-1`, job))),
			unsigned(e.tenant, env(fmt.Sprint("h-noline-", i), fmt.Sprintf(`,"job_id":%q`, job))),
			unsigned(e.tenant, env(fmt.Sprint("h-job-", i), jobLine)), // unauthenticated, claims an honest line
			unsigned(e.tenant, env(fmt.Sprint("h-mac-", i), jobLine), kgo.RecordHeader{Key: schemas.HeaderIngestMAC, Value: []byte("00000000:" + strings.Repeat("ab", 32))}),
			signed(env(fmt.Sprint("h-signedjob-", i), jobLine)), // a real producer key cannot join a job
			signed(env(fmt.Sprint("h-huge-signed-", i), `,"job_id":"x","line":4611686018427387904`)),
			signed(fmt.Sprintf(`{"v":1,"id":"h-other-%d","tenant":"someone-else","kind":"sign","payload":{}}`, i)),
			unsigned("someone-else", env(fmt.Sprint("h-otherkey-", i), "")),
			unsigned(e.tenant, string(garbage)),
			signed(string(garbage[:1<<19])),
			unsigned(e.tenant, env(fmt.Sprint("h-badsig-", i), ""), kgo.RecordHeader{Key: schemas.HeaderProducerKeyID, Value: []byte(e.producerKeyID)},
				kgo.RecordHeader{Key: schemas.HeaderSignature, Value: []byte(strings.Repeat("0", 64))}),
			// Honest direct producers in the same stream: they must be signed.
			signed(fmt.Sprintf(`{"v":1,"id":"ok-empty-%d","tenant":%q,"kind":"sign","payload":{}}`, i, e.tenant)),
			signed(fmt.Sprintf(`{"v":1,"id":"ok-future-%d","tenant":%q,"kind":"sign","payload":{"t":1},"received_at":"9999-12-31T23:59:59Z"}`, i, e.tenant)),
			signed(fmt.Sprintf(`{"v":1,"id":"ok-past-%d","tenant":%q,"kind":"sign","payload":{"t":2},"received_at":"1900-01-01T00:00:00Z"}`, i, e.tenant)),
		)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := cl.ProduceSync(ctx, hostile...).FirstErr(); err != nil {
		t.Fatalf("producing the hostile records: %v", err)
	}

	// The premise: the hostile results reached ingest and were refused (5
	// unauthenticated claims of honest lines, 5 with a forged ingest MAC).
	testenv.WaitFor(t, "hostile results refused by ingest", 2*time.Minute, func() (bool, string) {
		_, metrics := e.do("GET", "/metrics", "", "")
		refused := sumMetric(metrics, "certnode_ingest_results_refused_total")
		return refused >= 10, fmt.Sprint(refused, " refused")
	})
	testenv.WaitFor(t, "honest job done", 3*time.Minute, func() (bool, string) {
		s := e.jobStatus(job)
		return s.State == "done", fmt.Sprintf("%+v", s)
	})
	if s := e.jobStatus(job); s.Total != n || s.Done != n || s.Valid != n {
		t.Fatalf("honest job counts: %+v, want %d lines, all signed", s, n)
	}
	got := e.jobReceipts(job, n)
	ks, _ := schemas.ParseJWKS(mustRead(t, e.jwksFile))
	for line := int64(1); line <= n; line++ {
		rc, err := ks.Verify([]byte(got[line]))
		if err != nil || !strings.Contains(string(rc.Payload), fmt.Sprintf(`"i":%d,`, line-1)) {
			t.Fatalf("line %d: %v %s", line, err, got[line])
		}
	}
	// fasthttp's per-request notice about streamed bodies is not logged.
	if strings.Contains(ing.output(), "entire stream") {
		t.Fatalf("ingest logs noise per request:\n%s", ing.output())
	}
	for _, p := range []*proc{worker, ing} {
		select {
		case <-p.done:
			t.Fatalf("%s died: %s", p.name, p.output())
		default:
		}
	}
	// ClickHouse holds the honest job and the honest direct producers once
	// each (with clamped times), and nothing unauthenticated.
	conn := e.clickhouse()
	// + 15 honest direct records, + 15 refused but authenticated (a signed
	// job claim, a huge line, another tenant in the envelope: failed rows).
	e.waitRows(conn, n+30, 2*time.Minute)
	var minT, maxT time.Time
	if err := conn.QueryRow(context.Background(), `SELECT min(received_at), max(received_at) FROM certnode.results WHERE tenant = ?`, e.tenant).Scan(&minT, &maxT); err != nil {
		t.Fatal(err)
	}
	if time.Since(minT) > time.Hour || time.Until(maxT) > time.Hour {
		t.Fatalf("received_at not clamped: %v .. %v", minT, maxT)
	}
}

var metricLine = regexp.MustCompile(`(?m)^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$`)

// sumMetric adds every series of a metric in a Prometheus text page.
func sumMetric(page, name string) float64 {
	var sum float64
	for _, m := range metricLine.FindAllStringSubmatch(page, -1) {
		if m[1] == name {
			v, _ := strconv.ParseFloat(m[3], 64)
			sum += v
		}
	}
	return sum
}
