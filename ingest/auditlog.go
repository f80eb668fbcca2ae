package ingest

import (
	"context"
	"io"
	"strconv"
	"time"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/valyala/fasthttp"

	"github.com/certnode/certnode/internal/tenants"
)

// AuditLog is the audit log: its signed checkpoints and key, and
// organizations' exports verifiable against them (the transparency
// package over the audit log's files, with the events ClickHouse holds).
type AuditLog interface {
	Checkpoint(ctx context.Context) ([]byte, error)
	VerifierKey(ctx context.Context) (string, error)
	// Export writes org's events in [from, to) (whole seconds) as a
	// schemas.AuditExport.
	Export(ctx context.Context, w io.Writer, org string, from, to time.Time) error
}

// auditCheckpoint answers GET /v1/audit/checkpoint: the audit log's
// latest signed checkpoint.
func (s *Server) auditCheckpoint(ctx *fasthttp.RequestCtx) {
	s.checkpoint(ctx, s.deps.AuditLog, "audit")
}

// auditKey answers GET /v1/audit/key: the audit log's verifier key.
func (s *Server) auditKey(ctx *fasthttp.RequestCtx) { s.verifierKey(ctx, s.deps.AuditLog, "audit") }

// auditExport answers GET /v1/audit/export?from=&to=: the caller's audit
// events in [from, to) with the leaves and signed checkpoint that prove
// them complete and unaltered (certnode audit verify checks it offline).
func (s *Server) auditExport(ctx *fasthttp.RequestCtx, t *tenants.Tenant, _ []string) {
	var from, to time.Time
	if !timeParam(ctx, "from", &from) || !timeParam(ctx, "to", &to) {
		return
	}
	switch {
	case from.IsZero() || to.IsZero():
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_range", "from and to are required: GET /v1/audit/export?from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z")
		return
	case !to.After(from) || from.Nanosecond() != 0 || to.Nanosecond() != 0:
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_range", "from and to are whole seconds, from before to")
		return
	}
	if s.deps.AuditLog == nil {
		apiError(ctx, fasthttp.StatusServiceUnavailable, "log_unavailable", "this server has no audit log configured")
		return
	}
	name := "audit-" + t.ID + "-" + from.Format("20060102T150405Z") + "-" + to.Format("20060102T150405Z") + ".json"
	s.streamFile(ctx, name, "application/json", func(c context.Context, w io.Writer) error {
		return s.deps.AuditLog.Export(c, w, t.ID, from, to)
	})
}

// AlertStore lists an organization's security alerts (the threat
// detector's findings, stored with the audit events), newest first.
type AlertStore interface {
	Alerts(ctx context.Context, org string, from, to time.Time, limit int) ([]jsontext.Value, error)
}

// securityAlerts answers GET /v1/security/alerts?from=&to=&limit=: the
// organization's alerts of [from, to) (default: the last 7 days), newest
// first, at most limit (default 100, at most 1000).
func (s *Server) securityAlerts(ctx *fasthttp.RequestCtx, t *tenants.Tenant, _ []string) {
	to := time.Now().UTC().Truncate(time.Second).Add(time.Second)
	from := to.Add(-7 * 24 * time.Hour)
	if !timeParam(ctx, "from", &from) || !timeParam(ctx, "to", &to) {
		return
	}
	if !to.After(from) {
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_range", "from must be before to")
		return
	}
	limit := 100
	if v := ctx.QueryArgs().Peek("limit"); v != nil {
		n, err := strconv.Atoi(string(v))
		if err != nil || n < 1 || n > 1000 {
			apiError(ctx, fasthttp.StatusBadRequest, "invalid_limit", "limit must be 1 to 1000")
			return
		}
		limit = n
	}
	if s.deps.Alerts == nil {
		apiError(ctx, fasthttp.StatusServiceUnavailable, "storage_unavailable", "alert storage (ClickHouse) is not configured")
		return
	}
	alerts, err := s.deps.Alerts.Alerts(s.life, t.ID, from, to, limit)
	if err != nil {
		s.log.Warn("alert store", "err", err)
		apiError(ctx, fasthttp.StatusServiceUnavailable, "storage_unavailable", "alert storage is unavailable; retry later")
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"alerts": alerts, "from": from, "to": to})
}
