package analytics

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/certnode/certnode/internal/chconn"
	"github.com/certnode/certnode/schemas"
)

// SealerConfig configures a Sealer.
type SealerConfig struct {
	ClickHouse chconn.Options
	// Interval between passes over the hours changed in the last Lookback;
	// every FullEvery (and on start) a pass looks at every hour, for rows
	// a sink wrote long after their time (a backlog, a backfill).
	Interval  time.Duration
	Lookback  time.Duration
	FullEvery time.Duration
	// Registerer takes the sealer's metrics (nil: none).
	Registerer prometheus.Registerer
}

// DefaultSealerConfig seals an hour within seconds of its last change.
func DefaultSealerConfig() SealerConfig {
	return SealerConfig{ClickHouse: chconn.Options{Addr: []string{"127.0.0.1:9000"}}, Interval: 5 * time.Second, Lookback: 48 * time.Hour, FullEvery: 30 * time.Minute}
}

// Validate reports every problem of the configuration at once.
func (c SealerConfig) Validate() error {
	var errs []error
	if err := c.ClickHouse.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Interval <= 0 || c.Lookback < time.Hour || c.FullEvery < c.Interval {
		errs = append(errs, fmt.Errorf("sealer: interval %v must be positive, lookback %v at least an hour, full pass every %v at least the interval",
			c.Interval, c.Lookback, c.FullEvery))
	}
	return errors.Join(errs...)
}

// Sealer keeps the rollups' hourly tables current: it writes the final
// counts of every hour whose minutes changed since its latest seal (see
// schemas.Rollup). Any number may run; two seals of one hour hold the
// same counts, and readers take the latest.
type Sealer struct {
	cfg    SealerConfig
	conn   driver.Conn
	log    *slog.Logger
	sealed *prometheus.CounterVec
	passes *prometheus.HistogramVec
}

// NewSealer connects to ClickHouse; the tables must exist (the ClickHouse
// sink creates them).
func NewSealer(ctx context.Context, cfg SealerConfig) (*Sealer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	conn, err := chconn.Open(ctx, cfg.ClickHouse)
	if err != nil {
		return nil, err
	}
	s := &Sealer{cfg: cfg, conn: conn, log: slog.With("role", "rollup-sealer"),
		sealed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "certnode_rollup_hours_sealed_total",
			Help: "Organization-hours whose final counts the sealer wrote, by rollup."}, []string{"rollup"}),
		passes: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "certnode_rollup_seal_pass_seconds",
			Help: "Duration of a sealing pass, by rollup.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}, []string{"rollup"}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(s.sealed, s.passes)
	}
	return s, nil
}

// Close closes the connection.
func (s *Sealer) Close() error { return s.conn.Close() }

// Run seals until ctx ends. A failed pass is logged and tried again on
// the next tick: readers stay exact meanwhile, only slower.
func (s *Sealer) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	var lastFull time.Time
	for {
		full := time.Since(lastFull) >= s.cfg.FullEvery
		ok := true
		for _, r := range schemas.Rollups {
			if err := s.Seal(ctx, r, full); err != nil && ctx.Err() == nil {
				s.log.Warn("sealing pass failed", "rollup", r.Name, "err", err)
				ok = false
			}
		}
		if full && ok {
			lastFull = time.Now()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Seal runs one pass over rollup r: every organization-hour (of the last
// Lookback, or all when full) whose latest change is at least SealMargin
// old and newer than its seal is sealed again.
func (s *Sealer) Seal(ctx context.Context, r schemas.Rollup, full bool) error {
	start := time.Now()
	var readAt time.Time
	if err := s.conn.QueryRow(ctx, "SELECT now()").Scan(&readAt); err != nil {
		return fmt.Errorf("server time: %w", err)
	}
	since := int64(0)
	if !full {
		since = readAt.Add(-s.cfg.Lookback).Truncate(time.Hour).Unix()
	}
	stale := map[time.Time][]any{} // hour -> organizations
	err := chconn.Each(ctx, s.conn, "stale hours", fmt.Sprintf("SELECT org, hour FROM "+
		"(SELECT org, hour, maxMerge(inserted) AS c_changed FROM %s WHERE hour >= toDateTime(?) GROUP BY org, hour) "+
		"ANY LEFT JOIN (SELECT org, hour, argMax(read_at, version) AS s_read FROM %s WHERE hour >= toDateTime(?) AND total = 1 GROUP BY org, hour) USING (org, hour) "+
		"WHERE s_read < c_changed + ? AND c_changed + ? <= toDateTime(?)", r.Changes(), r.Hours()),
		[]any{since, since, int64(SealMargin / time.Second), int64(SealMargin / time.Second), readAt.Unix()},
		func(rows driver.Rows) error {
			var org string
			var hour time.Time
			if err := rows.Scan(&org, &hour); err != nil {
				return err
			}
			stale[hour] = append(stale[hour], org)
			return nil
		})
	if err != nil {
		return err
	}
	hours := make([]time.Time, 0, len(stale))
	for h := range stale {
		hours = append(hours, h)
	}
	slices.SortFunc(hours, time.Time.Compare)
	for _, h := range hours {
		for orgs := range slices.Chunk(stale[h], sealChunk) {
			if err := s.sealHour(ctx, r, h, orgs, readAt); err != nil {
				return err
			}
			s.sealed.WithLabelValues(r.Name).Add(float64(len(orgs)))
		}
	}
	s.passes.WithLabelValues(r.Name).Observe(time.Since(start).Seconds())
	return nil
}

// sealChunk bounds the organizations sealed by one INSERT, so that its
// rows stay one block (min_insert_block_size_rows, a million by default).
const sealChunk = 200

// sealHour writes one hour's final counts for orgs in one INSERT, so one
// part: a reader sees all of the seal or none of it. The version orders
// seals by the time they read, ties broken at random.
func (s *Sealer) sealHour(ctx context.Context, r schemas.Rollup, hour time.Time, orgs []any, readAt time.Time) error {
	var rnd [4]byte
	rand.Read(rnd[:])
	version := uint64(readAt.Unix())<<32 | uint64(binary.BigEndian.Uint32(rnd[:]))
	dims := strings.Join(r.Dims, ", ")
	empty := strings.TrimSuffix(strings.Repeat("'', ", len(r.Dims)), ", ")
	cols, bytes, bytesOut, bytesSum := "org, hour, total, "+dims+", ids, ", "", "", ""
	if r.Bytes != "" {
		cols, bytes, bytesOut, bytesSum = cols+"bytes, ", "sumMerge(bytes) AS s_bytes, ", "s_bytes, ", "sum(s_bytes), "
	}
	// Each combination's final counts, then their total; one statement.
	inner := fmt.Sprintf("SELECT org, toStartOfHour(minute) AS s_hour, %s, uniqExactMerge(ids) AS s_ids, %squantilesTDigestMergeState(%s)(latency) AS s_latency "+
		"FROM %s WHERE org IN ? AND minute >= toDateTime(?) AND minute < toDateTime(?) GROUP BY org, s_hour, %s",
		dims, bytes, schemas.RollupQuantiles, r.Minutes(), dims)
	sql := fmt.Sprintf("INSERT INTO %s (%slatency, version, read_at) "+
		"SELECT org, s_hour, 0, %s, s_ids, %ss_latency, toUInt64(?), toDateTime(?) FROM (%s) "+
		"UNION ALL SELECT org, s_hour, 1, %s, sum(s_ids), %squantilesTDigestMergeState(%s)(s_latency), toUInt64(?), toDateTime(?) FROM (%s) GROUP BY org, s_hour",
		r.Hours(), cols, dims, bytesOut, inner, empty, bytesSum, schemas.RollupQuantiles, inner)
	innerArgs := []any{clickhouse.GroupSet{Value: orgs}, hour.Unix(), hour.Add(time.Hour).Unix()}
	args := append(append([]any{version, readAt.Unix()}, innerArgs...), version, readAt.Unix())
	args = append(args, innerArgs...)
	err := s.conn.Exec(ctx, sql, args...)
	if err != nil {
		return fmt.Errorf("seal %s %s: %w", r.Hours(), hour.UTC().Format(time.RFC3339), err)
	}
	return nil
}
