package main

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/certnode/certnode/compliance"
	"github.com/certnode/certnode/exports"
	"github.com/certnode/certnode/ingest"
	"github.com/certnode/certnode/internal/chconn"
	"github.com/certnode/certnode/internal/envelope"
	"github.com/certnode/certnode/internal/recordauth"
	"github.com/certnode/certnode/schemas"
	"github.com/certnode/certnode/sinks/detect"
	"github.com/certnode/certnode/transparency"
)

// exportService is exports.Service as ingest calls it.
type exportService struct{ *exports.Service }

func (s exportService) Table(w io.Writer, format string, cols []schemas.ExportColumn) (ingest.TableWriter, error) {
	tw, err := s.Service.Table(w, format, cols)
	if err != nil {
		return nil, err
	}
	return tw, nil
}

// pdfRenderer is compliance.Renderer as ingest calls it.
type pdfRenderer struct{ compliance.Renderer }

func (r pdfRenderer) Table(w io.Writer, title, subtitle string, at time.Time, cols []schemas.ExportColumn) (ingest.TableWriter, error) {
	tw, err := r.Renderer.Table(w, title, subtitle, at, cols)
	if err != nil {
		return nil, err
	}
	return tw, nil
}

// auditLog is the audit log as ingest serves it: the log's checkpoints and
// key, and exports of the events ClickHouse holds (events; nil: exports
// fail, as every export does without ClickHouse), naming the
// organization's tags under each internal secret of mac.
type auditLog struct {
	*transparency.Client
	mac    *recordauth.Keyring
	events *exports.Exporter
}

// errNoEventStore: no ClickHouse to read audit events from.
var errNoEventStore = errors.New("no ClickHouse holds the audit events here")

func (a auditLog) Export(ctx context.Context, w io.Writer, org string, from, to time.Time) error {
	if a.events == nil {
		return errNoEventStore
	}
	q := exports.AuditQuery{Org: org, From: from, To: to}
	var tags []string
	for _, kid := range a.mac.KeyIDs() {
		key, _ := a.mac.Derive(kid, []byte(schemas.AuditTagLabel))
		tags = append(tags, schemas.AuditOrgTag(kid, key, org))
	}
	return a.WriteAuditExport(ctx, w, transparency.AuditSource{Org: org, Tags: tags, From: from, To: to,
		Each:  func(ctx context.Context, yield func([]byte) error) error { return a.events.AuditEvents(ctx, q, yield) },
		Count: func(ctx context.Context) (int, error) { return a.events.AuditCount(ctx, q) }})
}

// securityAlerts are the threat detector's findings as ingest lists them.
type securityAlerts struct{ *exports.Exporter }

func (s securityAlerts) Alerts(ctx context.Context, org string, from, to time.Time, limit int) ([]jsontext.Value, error) {
	out := []jsontext.Value{}
	err := s.AuditEvents(ctx, exports.AuditQuery{Org: org, From: from, To: to, Action: detect.ActionAlert, Limit: limit}, func(ev []byte) error {
		out = append(out, jsontext.Value(ev))
		return nil
	})
	return out, err
}

// openExports serves exports out of ClickHouse at o (and the audit log's
// exports, when d has an audit log) and, with dir, runs export jobs there
// (parts["exports"]) as node, which names this process
// among those sharing dir across its restarts. The cursor and link keys derive
// from the internal secret, so that every ingest node holding it resumes
// the others' cursors and serves their links (from a shared dir); a
// rotated secret voids cursors and links made before, which live minutes.
func openExports(ctx context.Context, o chconn.Options, env *envelope.Envelope, mac *recordauth.Keyring, dir, node string,
	parts map[string]func(context.Context) error, d *ingest.Deps) (closeAll func(), err error) {
	kid := mac.SignKeyID()
	cursorKey, _ := mac.Derive(kid, []byte("certnode-export-cursor"))
	linkKey, _ := mac.Derive(kid, []byte("certnode-export-link"))
	ex, err := exports.Open(ctx, o, exports.Config{CursorKey: cursorKey, Opener: env})
	if err != nil {
		return nil, err
	}
	d.Exports = exportService{exports.NewService(ex)}
	if a, ok := d.AuditLog.(auditLog); ok {
		a.events = ex
		d.AuditLog = a
	}
	d.Alerts = securityAlerts{ex}
	if dir == "" {
		return func() { ex.Close() }, nil
	}
	jobs, err := exports.NewJobs(ex, exports.JobsConfig{Dir: dir, LinkKey: linkKey, Node: node})
	if err != nil {
		ex.Close()
		return nil, err
	}
	d.ExportJobs, parts["exports"] = jobs, jobs.Run
	return func() { jobs.Close(); ex.Close() }, nil
}
