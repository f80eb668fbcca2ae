// Package clickhouse writes every result from certnode.receipts into the
// ClickHouse receipts table, in batches by rows and time, committing Kafka
// offsets only after the insert succeeded. Replays are harmless: the table
// deduplicates on (tenant, request id), see schemas.ClickHouseDDL.
package clickhouse

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/internal/chconn"
	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/schemas"
)

// Config configures the sink.
type Config struct {
	Kafka kafka.Config
	Group string
	// Addr is the ClickHouse native address(es), host:port.
	Addr     []string
	Username string
	Password string
	// BatchRows and BatchWait bound a batch: it is written when either is
	// reached.
	BatchRows int
	BatchWait time.Duration
	// Registerer receives the sink's metrics (nil: not registered).
	Registerer prometheus.Registerer
}

// DefaultConfig returns a config with every field but the addresses set.
func DefaultConfig() Config {
	return Config{
		Kafka: kafka.Config{Partitions: 8, ReplicationFactor: 1},
		Group: "certnode-sink-clickhouse", Username: "default",
		BatchRows: 10000, BatchWait: time.Second,
	}
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if err := c.Kafka.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Group == "" {
		errs = append(errs, errors.New("clickhouse sink: group is required"))
	}
	if len(c.Addr) == 0 {
		errs = append(errs, errors.New("clickhouse sink: address is required"))
	}
	if c.BatchRows < 1 || c.BatchWait <= 0 {
		errs = append(errs, errors.New("clickhouse sink: batch rows and wait must be positive"))
	}
	return errors.Join(errs...)
}

// Sink is one ClickHouse writer; run several in a group to scale.
type Sink struct {
	cfg  Config
	cl   *kgo.Client
	conn driver.Conn
	log  *slog.Logger
	rows prometheus.Counter
	lag  prometheus.Histogram
}

// New connects to ClickHouse, applies the DDL and joins the consumer group.
func New(ctx context.Context, cfg Config, opts ...kgo.Opt) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	conn, err := open(ctx, cfg.Addr, cfg.Username, cfg.Password)
	if err != nil {
		return nil, err
	}
	s := &Sink{cfg: cfg, conn: conn, log: slog.With("role", "sink-clickhouse"),
		rows: prometheus.NewCounter(prometheus.CounterOpts{Name: "certnode_sink_clickhouse_rows_total", Help: "Rows inserted."}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "certnode_sink_clickhouse_flush_seconds",
			Help: "Time to insert and commit one batch.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(s.rows, s.lag)
	}
	base := kafka.GroupConsumer(cfg.Group, cfg.Kafka.Topics().Receipts)
	if s.cl, err = kafka.NewClient(cfg.Kafka, append(base, opts...)...); err != nil {
		conn.Close()
		return nil, err
	}
	return s, nil
}

// open connects to ClickHouse and applies the DDL.
func open(ctx context.Context, addr []string, user, password string) (driver.Conn, error) {
	conn, err := chconn.Open(ctx, addr, user, password)
	if err != nil {
		return nil, err
	}
	for _, ddl := range schemas.ClickHouseDDL {
		if err := conn.Exec(ctx, ddl); err != nil {
			conn.Close()
			return nil, fmt.Errorf("clickhouse DDL: %w", err)
		}
	}
	return conn, nil
}

// Run consumes and writes until ctx ends; the batch in hand is flushed first.
func (s *Sink) Run(ctx context.Context) error {
	work := context.WithoutCancel(ctx)
	for ctx.Err() == nil {
		recs, err := s.collect(ctx)
		if err != nil {
			return err
		}
		if len(recs) > 0 {
			if err := s.flush(work, ctx, recs); err != nil {
				s.cl.AllowRebalance()
				return err
			}
		}
		s.cl.AllowRebalance()
	}
	return nil
}

// collect polls until BatchRows records or BatchWait after the first one.
func (s *Sink) collect(ctx context.Context) ([]*kgo.Record, error) {
	var recs []*kgo.Record
	pollCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var timer *time.Timer
	for len(recs) < s.cfg.BatchRows {
		fetches := s.cl.PollRecords(pollCtx, s.cfg.BatchRows-len(recs))
		if fetches.IsClientClosed() {
			return recs, nil
		}
		fetches.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				s.log.Warn("fetch error", "topic", t, "partition", p, "err", err)
			}
		})
		recs = append(recs, fetches.Records()...)
		if len(recs) > 0 && timer == nil {
			timer = time.AfterFunc(s.cfg.BatchWait, cancel)
			defer timer.Stop()
		}
		if pollCtx.Err() != nil {
			return recs, nil
		}
	}
	return recs, nil
}

// flush inserts recs and then commits them, retrying until both succeed:
// a batch is never skipped. It gives up only when stop ends and the insert
// keeps failing, leaving the offsets uncommitted for the next owner.
func (s *Sink) flush(ctx, stop context.Context, recs []*kgo.Record) error {
	start := time.Now()
	backoff := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		err := s.insert(ctx, recs)
		if err == nil {
			err = s.cl.CommitRecords(ctx, recs...)
		}
		if err == nil {
			s.rows.Add(float64(len(recs)))
			s.lag.Observe(time.Since(start).Seconds())
			return nil
		}
		s.log.Warn("flush failed, retrying", "rows", len(recs), "err", err, "attempt", attempt)
		select {
		case <-stop.Done():
			return fmt.Errorf("stopping with an unwritten batch of %d rows: %w", len(recs), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (s *Sink) insert(ctx context.Context, recs []*kgo.Record) error {
	batch, err := s.conn.PrepareBatch(ctx, schemas.ClickHouseInsertReceipts)
	if err != nil {
		return err
	}
	for _, r := range recs {
		res, err := schemas.DecodeResult(r.Value)
		if err != nil {
			// Not ours to fix here: the topic only carries worker output.
			s.log.Error("skipping undecodable result", "partition", r.Partition, "offset", r.Offset, "err", err)
			continue
		}
		received := res.ReceivedAt
		if received.IsZero() {
			received = r.Timestamp
		}
		var valid uint8
		if res.Status == schemas.StatusValid || res.Status == schemas.StatusSigned {
			valid = 1
		}
		latency := res.ProcessedAt.Sub(received).Milliseconds()
		if latency < 0 {
			latency = 0
		}
		if err := batch.Append(res.Tenant, res.ID, res.ReceiptID, string(res.Kind), string(res.Status), valid,
			res.Reason, res.Kid, res.PayloadHash, res.JobID, res.Line, uint32(res.Size),
			received.UTC(), res.ProcessedAt.UTC(), uint32(latency), string(res.Receipt)); err != nil {
			return err
		}
	}
	return batch.Send()
}

// Close leaves the group and closes the connections.
func (s *Sink) Close() {
	s.cl.Close()
	s.conn.Close()
}
