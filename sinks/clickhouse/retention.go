package clickhouse

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/certnode/certnode/schemas"
)

// Retentions gives each organization's retention in days (the
// coordinator's settings).
type Retentions interface {
	Retentions() map[string]int
}

// AuditPublisher sends audit events and waits for the broker
// (internal/audit's Publisher).
type AuditPublisher interface {
	Publish(ctx context.Context, evs []schemas.AuditEvent) error
}

// Retention erases, on a schedule, each organization's rows older than its
// retention, and records each erasure in the audit log.
type Retention struct {
	conn     driver.Conn
	orgs     Retentions
	audit    AuditPublisher
	every    time.Duration
	log      *slog.Logger
	erased   *prometheus.CounterVec
	lastRuns prometheus.Gauge
}

// NewRetention erases through conn every interval.
func NewRetention(conn driver.Conn, orgs Retentions, audit AuditPublisher, every time.Duration, reg prometheus.Registerer) *Retention {
	r := &Retention{conn: conn, orgs: orgs, audit: audit, every: every, log: slog.With("role", "retention"),
		erased: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "certnode_retention_rows_erased_total",
			Help: "Rows erased for organizations' retention, by table."}, []string{"table"}),
		lastRuns: prometheus.NewGauge(prometheus.GaugeOpts{Name: "certnode_retention_last_run_timestamp_seconds",
			Help: "When the retention last ran through every organization."})}
	if reg != nil {
		reg.MustRegister(r.erased, r.lastRuns)
	}
	return r
}

// Run erases now and then every interval until ctx ends.
func (r *Retention) Run(ctx context.Context) error {
	for {
		if err := r.Once(ctx, time.Now()); err != nil && ctx.Err() == nil {
			r.log.Warn("retention", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(r.every):
		}
	}
}

// Once erases, for each organization with a retention, the rows older than
// now less it (whole days), in every erasable table: one mutation per
// table for every organization at once (each rewrites the table's parts),
// none while an earlier one on the table is still running. An
// organization whose rows it erased gets an erasure.retention audit event
// naming the tables and the row counts.
func (r *Retention) Once(ctx context.Context, now time.Time) error {
	settings := r.orgs.Retentions()
	if len(settings) == 0 {
		return nil
	}
	orgs := slices.Sorted(maps.Keys(settings))
	cutoffs := make([]int64, len(orgs))
	for i, org := range orgs {
		cutoffs[i] = now.UTC().Truncate(24*time.Hour).AddDate(0, 0, -settings[org]).Unix()
	}
	erased := map[string][]string{}
	for _, t := range schemas.ClickHouseErasable {
		var running uint64
		if err := r.conn.QueryRow(ctx, "SELECT count() FROM system.mutations WHERE database = ? AND table = ? AND is_done = 0",
			dbOf(t.Table), tableOf(t.Table)).Scan(&running); err != nil {
			return err
		}
		if running > 0 {
			continue // the last run's is still being applied
		}
		// transform maps each organization to its cutoff, the others to 0.
		where := fmt.Sprintf("%s < toDateTime(transform(%s, ?, ?, toInt64(0)))", t.Time, t.Org)
		rows, err := r.conn.Query(ctx, fmt.Sprintf("SELECT %s, count() FROM %s WHERE %s GROUP BY %s", t.Org, t.Table, where, t.Org), orgs, cutoffs)
		if err != nil {
			return err
		}
		var total uint64
		for rows.Next() {
			var org string
			var n uint64
			if err := rows.Scan(&org, &n); err != nil {
				rows.Close()
				return err
			}
			total += n
			erased[org] = append(erased[org], fmt.Sprintf("%s: %d", t.Table, n))
		}
		rows.Close()
		if total == 0 {
			continue
		}
		// A mutation rewrites the parts that hold the rows: once it is
		// done, the old parts, and the data, are gone.
		if err := r.conn.Exec(ctx, fmt.Sprintf("ALTER TABLE %s DELETE WHERE %s", t.Table, where), orgs, cutoffs); err != nil {
			return err
		}
		r.erased.WithLabelValues(t.Table).Add(float64(total))
	}
	var evs []schemas.AuditEvent
	for _, org := range slices.Sorted(maps.Keys(erased)) {
		evs = append(evs, schemas.AuditEvent{At: time.Now().UTC(), Org: org, Actor: schemas.AuditActor{Kind: schemas.ActorNode, ID: "retention"},
			Action: "erasure.retention", Target: "before " + time.Unix(cutoffs[slices.Index(orgs, org)], 0).UTC().Format(time.RFC3339), Result: schemas.AuditOK,
			Source: "retention", Detail: fmt.Sprintf("rows older than %d days erased: %s", settings[org], strings.Join(erased[org], ", "))})
	}
	if len(evs) > 0 {
		if err := r.audit.Publish(ctx, evs); err != nil {
			return err
		}
	}
	r.lastRuns.SetToCurrentTime()
	return nil
}

func dbOf(table string) string    { db, _, _ := strings.Cut(table, "."); return db }
func tableOf(table string) string { _, t, _ := strings.Cut(table, "."); return t }
