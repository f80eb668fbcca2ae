//go:build integration

package clickhouse

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/chconn"
	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/kafkatest"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// chConn connects to the test ClickHouse with the DDL applied.
func chConn(t *testing.T) driver.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := open(ctx, chconn.Options{Addr: []string{testenv.ClickHouseAddr(t)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// lookup runs the GET /v1/receipts query; "" means no row.
func lookup(t *testing.T, conn driver.Conn, tenant, receiptID string) string {
	t.Helper()
	var receipt string
	err := conn.QueryRow(ctxT(t), schemas.ClickHouseSelectReceipt, tenant, receiptID).Scan(&receipt)
	if errors.Is(err, sql.ErrNoRows) {
		return ""
	}
	if err != nil {
		t.Fatalf("receipt %s: %v", receiptID, err)
	}
	return receipt
}

type requestRow struct {
	ID        string
	ReceiptID string
	Kind      string
	Results   uint64
}

// requests reads the tenant's rows of the certnode.requests view.
func requests(t *testing.T, conn driver.Conn, tenant string) []requestRow {
	t.Helper()
	rows, err := conn.Query(ctxT(t), `SELECT id, receipt_id, kind, results FROM certnode.requests WHERE tenant = ? ORDER BY id`, tenant)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []requestRow
	for rows.Next() {
		var r requestRow
		if err := rows.Scan(&r.ID, &r.ReceiptID, &r.Kind, &r.Results); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func countRows(t *testing.T, conn driver.Conn, tenant string) uint64 {
	t.Helper()
	var n uint64
	if err := conn.QueryRow(ctxT(t), `SELECT count() FROM certnode.results WHERE tenant = ?`, tenant).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Every receipt issued stays retrievable, verify rows never answer a
// receipt lookup, and the view counts each request once.
func TestIntegrationResultsQueries(t *testing.T) {
	conn := chConn(t)
	tenant := "sinktest-" + testenv.RandomSuffix()
	t0 := time.Now().Truncate(time.Second).UTC()
	row := func(id, kind, status, receiptID, receipt string, processed time.Time) Row {
		return Row{Tenant: tenant, ID: id, ReceiptID: receiptID, Kind: kind, Status: status, Auth: "ingest",
			ReceivedAt: t0, ProcessedAt: processed, Receipt: receipt}
	}
	replayed := row("req-5", "sign", "signed", "rid-E", `{"r":"E"}`, t0)
	ins := NewClickHouseInserter(conn, schemas.ClickHouseResultsTable)
	// Until the checks before merging are done, a background merge must
	// not collapse the replayed row.
	startMerges := func() {
		if err := conn.Exec(context.Background(), `SYSTEM START MERGES certnode.results`); err != nil {
			t.Error(err)
		}
	}
	if err := conn.Exec(ctxT(t), `SYSTEM STOP MERGES certnode.results`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(startMerges)
	// Separate inserts, as separate batches (and replays) are: each makes a
	// part of its own, merged later.
	for _, rows := range [][]Row{
		{row("req-1", "sign", "signed", "rid-A", `{"r":"A"}`, t0)},
		{row("req-1", "sign", "signed", "rid-B", `{"r":"B"}`, t0.Add(time.Second))}, // re-signed after a replay
		{row("req-2", "verify", "valid", "rid-A", `{"r":"A as sent to verify"}`, t0.Add(2*time.Second)),
			row("req-3", "verify", "valid", "rid-C", `{"r":"C, made elsewhere"}`, t0),
			row("req-4", "sign", "failed", "", "", t0),
			replayed},
		{replayed}, // the sink read the same record again
	} {
		if err := ins.Insert(ctxT(t), rows); err != nil {
			t.Fatal(err)
		}
	}

	check := func(stage string) {
		t.Helper()
		for rid, want := range map[string]string{"rid-A": `{"r":"A"}`, "rid-B": `{"r":"B"}`, "rid-E": `{"r":"E"}`, "rid-C": "", "rid-": "", "": ""} {
			if got := lookup(t, conn, tenant, rid); got != want {
				t.Errorf("%s: receipt %q = %q, want %q", stage, rid, got, want)
			}
		}
		if got := lookup(t, conn, tenant+"-other", "rid-A"); got != "" {
			t.Errorf("%s: another tenant got %q", stage, got)
		}
		want := []requestRow{{"req-1", "rid-A", "sign", 2}, {"req-2", "rid-A", "verify", 1}, {"req-3", "rid-C", "verify", 1},
			{"req-4", "", "sign", 1}, {"req-5", "rid-E", "sign", 1}}
		if got := requests(t, conn, tenant); !slices.Equal(got, want) {
			t.Errorf("%s: requests view\n%+v\nwant\n%+v", stage, got, want)
		}
		var signed, verified uint64
		if err := conn.QueryRow(ctxT(t), `SELECT countIf(status = 'signed'), countIf(kind = 'verify') FROM certnode.requests WHERE tenant = ?`,
			tenant).Scan(&signed, &verified); err != nil {
			t.Fatal(err)
		}
		if signed != 2 || verified != 2 {
			t.Errorf("%s: %d signed, %d verified requests, want 2 and 2", stage, signed, verified)
		}
	}
	if n := countRows(t, conn, tenant); n != 7 {
		t.Fatalf("%d rows before merging, want 7", n)
	}
	check("before merging")
	startMerges()

	var partition uint32
	if err := conn.QueryRow(ctxT(t), `SELECT toYYYYMM(received_at) FROM certnode.results WHERE tenant = ? LIMIT 1`, tenant).Scan(&partition); err != nil {
		t.Fatal(err)
	}
	if err := conn.Exec(ctxT(t), fmt.Sprintf(`OPTIMIZE TABLE certnode.results PARTITION %d FINAL`, partition)); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, conn, tenant); n != 6 {
		t.Fatalf("%d rows after merging, want 6: the replayed row collapses, both receipts of req-1 stay", n)
	}
	check("after merging")
}

// kafkaEnv is a topic prefix of its own on the test Kafka.
type kafkaEnv struct {
	cfg    Config
	topics schemas.Topics
	cl     *kgo.Client
	adm    *kadm.Client
}

func newKafkaEnv(t *testing.T) *kafkaEnv {
	t.Helper()
	prefix := "sinktest-" + testenv.RandomSuffix()
	cfg := DefaultConfig()
	cfg.Kafka = kafka.Config{Brokers: testenv.KafkaBrokers(t), Partitions: 2, ReplicationFactor: 1, TopicPrefix: prefix}
	cfg.ClickHouse.Addr, cfg.Group = []string{testenv.ClickHouseAddr(t)}, prefix+"-sink"
	cfg.Sealer = testSealer(t)
	cfg.BatchWait, cfg.AttemptTimeout = 300*time.Millisecond, 30*time.Second
	cl, err := kafka.NewClient(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	e := &kafkaEnv{cfg: cfg, topics: cfg.Kafka.Topics(), cl: cl, adm: kadm.NewClient(cl)}
	t.Cleanup(func() { // after the sink stopped (cleanups run last in, first out)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		e.adm.DeleteTopics(ctx, e.topics.All()...)
		cl.Close()
	})
	if err := kafka.EnsureTopics(ctxT(t), cl, cfg.Kafka); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *kafkaEnv) waitCommitted(t *testing.T, n int64) {
	t.Helper()
	kafkatest.WaitCommitted(t, e.adm, e.cfg.Group, e.topics.Receipts, n, time.Minute)
}

// The sink on the real Kafka and ClickHouse: wild times are replaced by
// the broker timestamp, replays count once, a re-signed receipt is kept,
// unauthenticated results stay out and undecodable ones go to the DLQ.
func TestIntegrationSinkWritesResults(t *testing.T) {
	e := newKafkaEnv(t)
	tenant := "sinktest-" + testenv.RandomSuffix()
	ts := time.Now().Truncate(time.Second)
	rec := func(res *schemas.Result) *kgo.Record { return resultRecord(t, e.topics.Receipts, res, ts) }
	var recs []*kgo.Record
	for i := range 3 {
		recs = append(recs, rec(signedResult(tenant, fmt.Sprintf("ok-%d", i), ts)))
	}
	wild := map[string]time.Time{"y1900": time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC),
		"y9999": time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC), "next-year": ts.AddDate(1, 0, 0)}
	for id, at := range wild {
		r := signedResult(tenant, id, ts)
		r.ReceivedAt = at
		recs = append(recs, rec(r))
	}
	late := signedResult(tenant, "processed-2150", ts)
	late.ProcessedAt = time.Date(2150, 1, 1, 0, 0, 0, 0, time.UTC)
	resigned := signedResult(tenant, "ok-0", ts)
	resigned.ReceiptID, resigned.Receipt = "ok-0-resigned", []byte(`{"receipt_id":"ok-0-resigned"}`)
	recs = append(recs, rec(late), rec(resigned), rec(signedResult(tenant, "ok-1", ts)), // ok-1 replayed as is
		rec(&schemas.Result{V: 1, ID: "spoof", Tenant: tenant, Kind: schemas.KindSign, Status: schemas.StatusFailed,
			Reason: "unauthenticated", Auth: schemas.AuthNone, ProcessedAt: ts}),
		&kgo.Record{Topic: e.topics.Receipts, Key: []byte(tenant), Value: []byte(`{"v":1,"id":"x"`), Timestamp: ts})
	produce(t, e.cl, recs...)

	s, err := New(ctxT(t), e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	runSink(t, s)
	e.waitCommitted(t, int64(len(recs)))

	conn := chConn(t)
	rows, err := conn.Query(ctxT(t), `SELECT id, receipt_id, received_at, processed_at FROM certnode.results WHERE tenant = ?`, tenant)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[string][]string{}
	for rows.Next() {
		var id, rid string
		var recv, proc time.Time
		if err := rows.Scan(&id, &rid, &recv, &proc); err != nil {
			t.Fatal(err)
		}
		got[id] = append(got[id], rid)
		if _, isWild := wild[id]; isWild && !recv.Equal(ts) {
			t.Errorf("%s: received_at %s, want the broker timestamp %s", id, recv, ts)
		}
		if id == "processed-2150" && !proc.Equal(ts) {
			t.Errorf("processed_at %s, want the broker timestamp %s", proc, ts)
		}
		if recv.Before(ts.Add(-schemas.ClaimedTimeBefore)) || recv.After(ts.Add(schemas.ClaimedTimeAfter)) || proc.Before(ts.Add(-schemas.ClaimedTimeBefore)) || proc.After(ts.Add(schemas.ClaimedTimeAfter)) {
			t.Errorf("%s: received_at %s, processed_at %s outside the window around %s", id, recv, proc, ts)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if _, ok := got["spoof"]; ok {
		t.Error("an unauthenticated result reached the table")
	}
	if r := got["ok-0"]; !slices.Contains(r, "ok-0-receipt") || !slices.Contains(r, "ok-0-resigned") {
		t.Errorf("ok-0 receipts %v: both must be kept", r)
	}
	// Stored sealed: the row holds no plaintext, and opens to the receipt.
	for _, rid := range []string{"ok-0-receipt", "ok-0-resigned"} {
		if got := opened(t, e.cfg.Sealer, tenant, lookup(t, conn, tenant, rid)); got != `{"receipt_id":"`+rid+`"}` {
			t.Errorf("receipt %s: %q", rid, got)
		}
	}
	view := requests(t, conn, tenant)
	if len(view) != 7 || slices.ContainsFunc(view, func(r requestRow) bool { return r.ID == "spoof" }) {
		t.Errorf("requests view: %+v, want the 7 authenticated requests once each", view)
	}

	dlq := readTopic(t, e.cfg.Kafka.Brokers, e.topics.DLQ, 1)
	if kafka.Header(dlq[0], schemas.HeaderDLQReason) != ReasonBadResult || !strings.HasPrefix(kafka.Header(dlq[0], schemas.HeaderDLQSource), e.topics.Receipts+"/") ||
		kafka.Header(dlq[0], schemas.HeaderDLQError) == "" || string(dlq[0].Value) != `{"v":1,"id":"x"` {
		t.Errorf("DLQ record %q headers %v", dlq[0].Value, dlq[0].Headers)
	}
	if v := value(t, s.m.unauthenticated); v != 1 {
		t.Errorf("unauthenticated metric %v", v)
	}
	if v := value(t, s.m.replaced.WithLabelValues(colReceivedAt)); v != 3 {
		t.Errorf("received_at replaced %v times, want 3", v)
	}
}

// A row the real server refuses (a table whose materialized column throws
// for it) is found by splitting the batch and goes to the DLQ with the
// server's message; the other rows are inserted.
func TestIntegrationRefusedRowsGoToDLQ(t *testing.T) {
	e := newKafkaEnv(t)
	conn := chConn(t)
	table := "certnode.sinktest_refusing_" + testenv.RandomSuffix()
	const results = "CREATE TABLE IF NOT EXISTS certnode.results ("
	if !strings.HasPrefix(schemas.ClickHouseDDL[1], results) {
		t.Fatalf("DDL[1] is not certnode.results: %.60s", schemas.ClickHouseDDL[1])
	}
	ddl := "CREATE TABLE " + table + " (refuse UInt8 MATERIALIZED throwIf(id LIKE 'refuse%'), " + strings.TrimPrefix(schemas.ClickHouseDDL[1], results)
	if err := conn.Exec(ctxT(t), ddl); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Exec(context.Background(), "DROP TABLE IF EXISTS "+table) })

	tenant := "sinktest-" + testenv.RandomSuffix()
	ts := time.Now().Truncate(time.Second)
	var recs []*kgo.Record
	refused := map[string]bool{}
	for i := range 20 {
		id := fmt.Sprintf("ok-%02d", i)
		if i == 0 || i == 7 || i == 8 || i == 19 {
			id = fmt.Sprintf("refuse-%02d", i)
			refused[id] = true
		}
		recs = append(recs, resultRecord(t, e.topics.Receipts, signedResult(tenant, id, ts), ts))
	}
	// One tenant, so one partition: the batch holds the 20 rows in order.
	produce(t, e.cl, recs...)
	e.cfg.BatchWait = 2 * time.Second
	s, err := New(ctxT(t), e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.ins = NewClickHouseInserter(s.conn, table)
	runSink(t, s)
	e.waitCommitted(t, int64(len(recs)))

	var ids []string
	rows, err := conn.Query(ctxT(t), "SELECT id FROM "+table+" WHERE tenant = ? ORDER BY id", tenant)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if len(ids) != 16 || slices.ContainsFunc(ids, func(id string) bool { return refused[id] }) {
		t.Fatalf("table holds %v, want the 16 ok rows once each", ids)
	}
	dlq := readTopic(t, e.cfg.Kafka.Brokers, e.topics.DLQ, len(refused))
	for _, d := range dlq {
		id := kafka.Header(d, schemas.HeaderRequestID)
		msg := kafka.Header(d, schemas.HeaderDLQError)
		if !refused[id] || kafka.Header(d, schemas.HeaderDLQReason) != ReasonRefused || !strings.Contains(msg, "code: 395") || !strings.Contains(msg, "throwIf") {
			t.Errorf("DLQ record %s: reason %q, error %q", id, kafka.Header(d, schemas.HeaderDLQReason), msg)
		}
		delete(refused, id)
	}
	if len(refused) != 0 {
		t.Errorf("not in the DLQ: %v", refused)
	}
	if v := value(t, s.m.inserted); v != 16 {
		t.Errorf("inserted metric %v, want 16", v)
	}
	if v := value(t, s.m.dlq.WithLabelValues(ReasonRefused)); v != 4 {
		t.Errorf("refused metric %v, want 4", v)
	}
}
