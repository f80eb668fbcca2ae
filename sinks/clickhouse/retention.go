package clickhouse

import (
	"context"
	"errors"
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

// retained are the tables whose rows an organization's retention erases,
// with their organization and time columns. ClickHouse 18.16 has no TTL,
// and the monthly partitions hold every organization, so rows go by
// mutation. The rollups keep counts, no personal data; the audit events
// stay, as the record the audit log proves (an erasure is one of them).
var retained = []struct{ table, org, time string }{
	{schemas.ClickHouseResultsTable, "tenant", "received_at"},
	{schemas.ClickHouseUsageTable, "org", "time"},
	{schemas.ClickHouseWebhookAttemptsTable, "org", "message_created_at"},
	{schemas.ClickHouseWebhookMessagesTable, "org", "created_at"},
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
// now less it (whole days), in every retained table; an organization with
// rows to erase gets an erasure.retention audit event naming the tables
// and the row counts. It goes on past an organization it fails on.
func (r *Retention) Once(ctx context.Context, now time.Time) error {
	settings := r.orgs.Retentions()
	var errs []error
	for _, org := range slices.Sorted(maps.Keys(settings)) {
		days := settings[org]
		before := now.UTC().Truncate(24*time.Hour).AddDate(0, 0, -days)
		if err := r.erase(ctx, org, days, before); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", org, err))
		}
	}
	if len(errs) == 0 {
		r.lastRuns.SetToCurrentTime()
	}
	return errors.Join(errs...)
}

func (r *Retention) erase(ctx context.Context, org string, days int, before time.Time) error {
	var erased []string
	for _, t := range retained {
		var n uint64
		if err := r.conn.QueryRow(ctx, fmt.Sprintf("SELECT count() FROM %s WHERE %s = ? AND %s < toDateTime(?)", t.table, t.org, t.time),
			org, before.Unix()).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			continue
		}
		// A mutation rewrites the parts that hold the rows: once it is
		// done, the old parts, and the data, are gone.
		if err := r.conn.Exec(ctx, fmt.Sprintf("ALTER TABLE %s DELETE WHERE %s = ? AND %s < toDateTime(?)", t.table, t.org, t.time),
			org, before.Unix()); err != nil {
			return err
		}
		r.erased.WithLabelValues(t.table).Add(float64(n))
		erased = append(erased, fmt.Sprintf("%s: %d", t.table, n))
	}
	if len(erased) == 0 {
		return nil
	}
	ev := schemas.AuditEvent{At: time.Now().UTC(), Org: org, Actor: schemas.AuditActor{Kind: schemas.ActorNode, ID: "retention"},
		Action: "erasure.retention", Target: "before " + before.Format(time.RFC3339), Result: schemas.AuditOK, Source: "retention",
		Detail: fmt.Sprintf("rows older than %d days erased: %s", days, strings.Join(erased, ", "))}
	return r.audit.Publish(ctx, []schemas.AuditEvent{ev})
}
