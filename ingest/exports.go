package ingest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/valyala/fasthttp"

	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
)

// Exports writes an organization's data as files (the exports package,
// over ClickHouse). Refusals of a request or cursor wrap
// schemas.ErrBadExport and come before anything is written.
type Exports interface {
	// Stream writes r's rows past cursor (""; from the start) up to and
	// including the row until names ("": to the end).
	Stream(ctx context.Context, w io.Writer, org string, r schemas.ExportRequest, cursor, until string) (schemas.ExportResult, error)
	// PageEnd is the cursor of the row rows past cursor; "" when fewer
	// rows follow.
	PageEnd(ctx context.Context, org string, r schemas.ExportRequest, cursor string, rows int64) (string, error)
	// Table writes rows of cols in a format: the exports that are not
	// ClickHouse's (audit events, report runs).
	Table(w io.Writer, format string, cols []schemas.ExportColumn) (TableWriter, error)
	// FileType is a format's content type and file name extension (with
	// its dot).
	FileType(format string) (contentType, ext string, err error)
}

// TableWriter writes the rows of a table; Close ends the file.
type TableWriter interface {
	Write(row []any) error
	Close() error
}

// ExportJobs runs exports in the background into files, downloaded by
// signed links that expire. Errors: schemas.ErrBadExport,
// ErrExportNotFound (also for another organization's job),
// ErrTooManyExports and ErrExportLink.
type ExportJobs interface {
	Start(org string, r schemas.ExportRequest) (schemas.ExportJob, error)
	List(org string) ([]schemas.ExportJob, error)
	Get(org, id string) (schemas.ExportJob, error)
	Cancel(org, id string) (schemas.ExportJob, error)
	// Open returns a done job's file if the link's expiry and signature
	// hold.
	Open(id, expires, signature string) (*os.File, schemas.ExportJob, error)
}

// auditKind is the export of the coordinator's audit trail rather than of
// ClickHouse: read with the caller's own credentials, as the dashboard's
// audit page is.
const auditKind = "audit_events"

// exportParams are the export routes' parameters; any other filters.
var exportParams = []string{"format", "from", "to", "cursor", "limit", "receipt", "bodies", "org"}

// maxExportPage bounds limit: a page is one HTTP answer.
const maxExportPage = 10_000_000

// exportRequest reads GET /v1/exports/{kind}'s parameters, answering 400
// itself. The range defaults to the last 24 hours and the format to CSV.
func exportRequest(ctx *fasthttp.RequestCtx, kind string, now time.Time) (r schemas.ExportRequest, cursor string, limit int64, ok bool) {
	args := ctx.QueryArgs()
	r = schemas.ExportRequest{Kind: kind, Format: string(args.Peek("format"))}
	if r.Format == "" {
		r.Format = "csv"
	}
	args.VisitAll(func(k, v []byte) {
		if !slices.Contains(exportParams, string(k)) {
			if r.Filters == nil {
				r.Filters = map[string]string{}
			}
			r.Filters[string(k)] = string(v)
		}
	})
	for name, into := range map[string]*bool{"receipt": &r.Receipt, "bodies": &r.Bodies} {
		if v := args.Peek(name); v != nil {
			b, err := strconv.ParseBool(string(v))
			if err != nil {
				apiError(ctx, fasthttp.StatusBadRequest, "invalid_"+name, name+" must be true or false")
				return r, "", 0, false
			}
			*into = b
		}
	}
	if !timeParam(ctx, "from", &r.From) || !timeParam(ctx, "to", &r.To) {
		return r, "", 0, false
	}
	cursor = string(args.Peek("cursor"))
	if cursor != "" && (r.From.IsZero() || r.To.IsZero()) {
		// Their defaults move with the clock, and a cursor fits one range.
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_export", "a cursor resumes the export of one range: give the from and to of the page before (its Link header names them)")
		return r, "", 0, false
	}
	if r.To.IsZero() {
		r.To = now
	}
	if r.From.IsZero() {
		r.From = r.To.Add(-24 * time.Hour)
	}
	if v := args.Peek("limit"); v != nil {
		n, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil || n < 1 || n > maxExportPage {
			apiError(ctx, fasthttp.StatusBadRequest, "invalid_limit", fmt.Sprintf("limit must be 1 to %d rows", maxExportPage))
			return r, "", 0, false
		}
		limit = n
	}
	return r, cursor, limit, true
}

// exportsReady answers 503 when no export store is configured.
func (s *Server) exportsReady(ctx *fasthttp.RequestCtx) bool {
	if s.deps.Exports == nil {
		apiError(ctx, fasthttp.StatusServiceUnavailable, "exports_unavailable", "the export store (ClickHouse) is not configured on this server")
		return false
	}
	return true
}

// pdfFormat draws tables (audit events, report runs) as PDFs for people to
// read; the other formats are for programs and hold any number of rows.
const pdfFormat = "pdf"

// fileType answers 400 for an unknown format.
func (s *Server) fileType(ctx *fasthttp.RequestCtx, format string) (contentType, ext string, ok bool) {
	if format == pdfFormat && s.deps.Compliance != nil {
		return "application/pdf", ".pdf", true
	}
	contentType, ext, err := s.deps.Exports.FileType(format)
	if err != nil {
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_format", err.Error())
		return "", "", false
	}
	return contentType, ext, true
}

// export answers GET /v1/exports/{kind}: the organization's rows streamed
// as a file, whatever their number, in constant memory. With limit, the
// answer is a page: Certnode-Next-Cursor (and a Link rel="next"), present
// when rows follow, says how to ask for the next one, and is known before
// the first byte, so that a page broken off is asked for again whole with
// the same cursor.
func (s *Server) export(ctx *fasthttp.RequestCtx, t *tenants.Tenant, params []string) {
	kind := params[0]
	r, cursor, limit, ok := exportRequest(ctx, kind, time.Now().UTC())
	if !ok || !s.exportsReady(ctx) {
		return
	}
	ctype, ext, ok := s.fileType(ctx, r.Format)
	if !ok {
		return
	}
	name := schemas.ExportFileName(kind, t.ID, r.From, r.To, ext)
	if r.Format == pdfFormat && kind != auditKind {
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_format", "pdf is for audit events and report runs; export "+kind+" as csv, ndjson, json, arrow or parquet")
		return
	}
	if kind == auditKind {
		s.exportAudit(ctx, t, r, cursor, limit, ctype, name)
		return
	}
	var until string
	if limit > 0 {
		var err error
		// The next page is named only when rows follow this one.
		var more string
		if until, err = s.deps.Exports.PageEnd(s.life, t.ID, r, cursor, limit); err == nil && until != "" {
			more, err = s.deps.Exports.PageEnd(s.life, t.ID, r, until, 1)
		}
		if err != nil {
			s.exportFailed(ctx, err)
			return
		}
		if more != "" {
			var next fasthttp.Args
			ctx.QueryArgs().CopyTo(&next)
			next.Set("from", r.From.Format(time.RFC3339))
			next.Set("to", r.To.Format(time.RFC3339))
			next.Set("cursor", until)
			ctx.Response.Header.Set("Certnode-Next-Cursor", until)
			ctx.Response.Header.Set("Link", "<"+string(ctx.Path())+"?"+next.String()+`>; rel="next"`)
		}
	}
	s.streamFile(ctx, name, ctype, func(c context.Context, w io.Writer) error {
		_, err := s.deps.Exports.Stream(c, w, t.ID, r, cursor, until)
		return err
	})
}

// exportFailed answers an export that failed before its first byte.
func (s *Server) exportFailed(ctx *fasthttp.RequestCtx, err error) {
	ctx.Response.Header.Del("Certnode-Next-Cursor")
	ctx.Response.Header.Del("Link")
	var refused *accountsRefusal
	switch {
	case errors.As(err, &refused):
		ctx.SetStatusCode(refused.code)
		ctx.SetContentType("application/json")
		ctx.SetBody(refused.body) // the coordinator's own refusal (403 forbidden_role, 503)
	case errors.Is(err, schemas.ErrBadExport):
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_export", err.Error())
	default:
		s.log.Warn("export failed", "err", err)
		apiError(ctx, fasthttp.StatusServiceUnavailable, "exports_unavailable", "the export store is unavailable; retry later")
	}
}

// streamFile answers with what produce writes, as an attachment. produce
// starts before the answer's status is chosen, so that a refusal found
// before its first byte (a bad cursor, a store down) is an error answer
// rather than a broken file. A failure after the first byte closes the
// connection mid-transfer, so that the client sees a cut transfer, not a
// file that looks whole; a client gone stops produce.
func (s *Server) streamFile(ctx *fasthttp.RequestCtx, name, contentType string, produce func(context.Context, io.Writer) error) {
	pctx, cancel := context.WithTimeout(context.Background(), maxStream)
	go func() {
		select {
		case <-s.stopping:
			cancel()
		case <-pctx.Done():
		}
	}()
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(produce(pctx, pw)) }()
	first := make([]byte, 32<<10)
	var n int
	var err error
	for n == 0 && err == nil { // an empty write is no first byte
		n, err = pr.Read(first)
	}
	if n == 0 && err != nil && err != io.EOF {
		cancel()
		s.exportFailed(ctx, err)
		return
	}
	ctx.SetContentType(contentType)
	ctx.Response.Header.Set("Content-Disposition", `attachment; filename="`+name+`"`)
	ctx.Response.Header.Set("Cache-Control", "no-store")
	switch {
	case ctx.IsHead(): // its status and headers are known now
		cancel()
		pr.CloseWithError(context.Canceled)
		ctx.Response.Header.SetContentLength(-1)
		return
	case err == io.EOF:
		cancel()
		ctx.SetBody(first[:n])
		return
	}
	conn := ctx.Conn()
	s.m.exports.Inc()
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		defer s.m.exports.Dec()
		defer cancel()
		_, err := w.Write(first[:n])
		if err == nil {
			_, err = io.Copy(w, pr)
		}
		if err == nil {
			err = w.Flush()
		}
		if err != nil {
			pr.CloseWithError(err) // a client gone stops produce
			s.log.Info("export cut off", "file", name, "err", err)
			conn.Close()
		}
	})
}

// accountsRefusal is the coordinator's refusal of what an export asked it.
type accountsRefusal struct {
	code int
	body []byte
}

func (e *accountsRefusal) Error() string {
	return fmt.Sprintf("the coordinator answered %d: %s", e.code, e.body)
}

// auditColumns are an audit events export's columns.
var auditColumns = []schemas.ExportColumn{
	{Name: "seq", Type: "uint64"}, {Name: "at", Type: "timestamp"}, {Name: "action", Type: "string"}, {Name: "target", Type: "string"},
	{Name: "actor_kind", Type: "string"}, {Name: "actor_id", Type: "string"}, {Name: "actor_addr", Type: "string"},
}

// auditPage is the coordinator's largest page of audit events.
const auditPage = 1000

// exportAudit streams the organization's audit events in [from, to), in
// the order they were applied, asking the coordinator a page at a time
// with the caller's credentials (owners and admins, or an admin-scope key,
// may read them). The cursor is the last sequence number exported.
func (s *Server) exportAudit(ctx *fasthttp.RequestCtx, t *tenants.Tenant, r schemas.ExportRequest, cursor string, limit int64, ctype, name string) {
	switch {
	case len(r.Filters) > 0 || r.Receipt || r.Bodies:
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_export", "audit events take no filters, receipt or bodies")
		return
	case limit > 0:
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_export", "audit events are exported whole (the trail keeps at most 100,000 events); cursor=SEQ resumes after an event")
		return
	case !r.From.Before(r.To):
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_export", "from must be before to")
		return
	}
	if s.deps.Accounts == nil {
		apiError(ctx, fasthttp.StatusServiceUnavailable, "accounts_unavailable", "this server has no coordinator to read audit events from")
		return
	}
	var after uint64
	if cursor != "" {
		var err error
		if after, err = strconv.ParseUint(cursor, 10, 64); err != nil {
			apiError(ctx, fasthttp.StatusBadRequest, "invalid_export", "an audit events cursor is the seq of the last event exported")
			return
		}
	}
	ask := s.accountsAsker(ctx)
	path := "/v1/orgs/" + url.PathEscape(t.ID) + "/audit?limit=" + strconv.Itoa(auditPage) + "&after="
	type event struct {
		Seq   uint64    `json:"seq"`
		At    time.Time `json:"at"`
		Actor struct {
			Kind string `json:"kind"`
			ID   string `json:"id"`
			Addr string `json:"addr"`
		} `json:"actor"`
		Action string `json:"action"`
		Target string `json:"target"`
	}
	page := func(c context.Context) ([]event, error) {
		code, body := ask(c, path+strconv.FormatUint(after, 10))
		if code != http.StatusOK {
			return nil, &accountsRefusal{code, body}
		}
		var p struct {
			Events []event `json:"events"`
		}
		if err := json.Unmarshal(body, &p, json.RejectUnknownMembers(false)); err != nil {
			return nil, fmt.Errorf("the coordinator's audit page did not parse: %w", err)
		}
		return p.Events, nil
	}
	s.streamFile(ctx, name, ctype, func(c context.Context, w io.Writer) error {
		events, err := page(c) // before the first byte: a refusal is the answer
		if err != nil {
			return err
		}
		tw, err := s.writeTable(w, r.Format, "Audit events of "+t.ID, period(r.From, r.To), auditColumns)
		if err != nil {
			return err
		}
		for {
			for _, e := range events {
				after = e.Seq
				if !e.At.Before(r.To) {
					return tw.Close()
				}
				if e.At.Before(r.From) {
					continue
				}
				if err := tw.Write([]any{e.Seq, e.At, e.Action, e.Target, e.Actor.Kind, e.Actor.ID, e.Actor.Addr}); err != nil {
					return err
				}
			}
			if len(events) < auditPage {
				return tw.Close()
			}
			if events, err = page(c); err != nil {
				return err
			}
		}
	})
}

// writeTable writes a table in format: a PDF by Deps.Compliance, the others by
// Deps.Exports.
func (s *Server) writeTable(w io.Writer, format, title, subtitle string, cols []schemas.ExportColumn) (TableWriter, error) {
	if format == pdfFormat {
		return s.deps.Compliance.Table(w, title, subtitle, time.Now().UTC().Truncate(time.Second), cols)
	}
	return s.deps.Exports.Table(w, format, cols)
}

// period is a range as a PDF's subtitle says it.
func period(from, to time.Time) string {
	return from.UTC().Format(time.RFC3339) + " to " + to.UTC().Format(time.RFC3339) + " (UTC)"
}

// reportTable writes a report run as a table: a row per bucket (and
// group), a column per metric.
func reportTable(tw TableWriter, series *schemas.AnalyticsSeries) error {
	var groups []string
	metrics := []string{}
	at := map[[2]string]*schemas.AnalyticsLine{}
	for i := range series.Series {
		l := &series.Series[i]
		if !slices.Contains(groups, l.Group) {
			groups = append(groups, l.Group)
		}
		if !slices.Contains(metrics, l.Metric) {
			metrics = append(metrics, l.Metric)
		}
		at[[2]string{l.Group, l.Metric}] = l
	}
	for _, g := range groups {
		for i, ts := range series.Timestamps {
			row := []any{ts}
			if series.GroupBy != "" {
				row = append(row, g)
			}
			for _, m := range metrics {
				var v any
				if l := at[[2]string{g, m}]; l != nil && i < len(l.Values) && l.Values[i] != nil {
					v = *l.Values[i]
				}
				row = append(row, v)
			}
			if err := tw.Write(row); err != nil {
				return err
			}
		}
	}
	return tw.Close()
}

// reportColumns are a report run's columns: time, the group, the metrics.
func reportColumns(series *schemas.AnalyticsSeries) []schemas.ExportColumn {
	cols := []schemas.ExportColumn{{Name: "time", Type: "timestamp"}}
	if series.GroupBy != "" {
		cols = append(cols, schemas.ExportColumn{Name: series.GroupBy, Type: "string"})
	}
	var seen []string
	for _, l := range series.Series {
		if !slices.Contains(seen, l.Metric) {
			seen = append(seen, l.Metric)
			cols = append(cols, schemas.ExportColumn{Name: l.Metric, Type: "float64"})
		}
	}
	return cols
}

// exportJobsReady answers 503 when this server runs no export jobs.
func (s *Server) exportJobsReady(ctx *fasthttp.RequestCtx) bool {
	if s.deps.ExportJobs == nil {
		apiError(ctx, fasthttp.StatusServiceUnavailable, "exports_unavailable", "this server runs no export jobs (no ClickHouse or no export directory)")
		return false
	}
	return true
}

// exportJobAnswer writes a job, its download link made absolute, or the
// error that stopped it.
func (s *Server) exportJobAnswer(ctx *fasthttp.RequestCtx, status int, job schemas.ExportJob, err error) {
	switch {
	case errors.Is(err, schemas.ErrBadExport):
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_export", err.Error())
	case errors.Is(err, schemas.ErrExportNotFound):
		apiError(ctx, fasthttp.StatusNotFound, "not_found", "no such export for this organization")
	case errors.Is(err, schemas.ErrTooManyExports):
		ctx.Response.Header.Set("Retry-After", "60")
		apiError(ctx, fasthttp.StatusTooManyRequests, "too_many_exports", err.Error())
	case err != nil:
		s.log.Warn("export jobs", "err", err)
		apiError(ctx, fasthttp.StatusServiceUnavailable, "exports_unavailable", "export jobs are unavailable; retry later")
	default:
		s.absoluteLink(ctx, &job)
		writeJSON(ctx, status, job)
	}
}

// absoluteLink makes a job's download link absolute, on the host the
// client asked.
func (s *Server) absoluteLink(ctx *fasthttp.RequestCtx, job *schemas.ExportJob) {
	if strings.HasPrefix(job.DownloadURL, "/") {
		// Behind a TLS proxy the link must be https: the proxy says so.
		scheme := "http://"
		if ctx.IsTLS() || string(ctx.Request.Header.Peek("X-Forwarded-Proto")) == "https" {
			scheme = "https://"
		}
		job.DownloadURL = scheme + string(ctx.Host()) + job.DownloadURL
	}
}

// createExportJob answers POST /v1/export-jobs: 202 and the queued job,
// whose progress GET /v1/export-jobs/{id} follows.
func (s *Server) createExportJob(ctx *fasthttp.RequestCtx, t *tenants.Tenant, _ []string) {
	raw, ok := s.readBody(ctx, 64<<10)
	if !ok || !s.exportJobsReady(ctx) {
		return
	}
	var r schemas.ExportRequest
	if err := json.Unmarshal(raw, &r, json.RejectUnknownMembers(true)); err != nil {
		apiError(ctx, fasthttp.StatusBadRequest, "malformed_json", "body must be an export request: "+err.Error())
		return
	}
	if r.Format == "" {
		r.Format = "csv"
	}
	if r.To.IsZero() {
		r.To = time.Now().UTC()
	}
	if r.From.IsZero() {
		r.From = r.To.Add(-24 * time.Hour)
	}
	if r.Kind == auditKind {
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_export", "audit events are exported at once: GET /v1/exports/audit_events")
		return
	}
	job, err := s.deps.ExportJobs.Start(t.ID, r)
	if err == nil {
		ctx.Response.Header.Set("Location", "/v1/export-jobs/"+job.ID)
	}
	s.exportJobAnswer(ctx, fasthttp.StatusAccepted, job, err)
}

func (s *Server) listExportJobs(ctx *fasthttp.RequestCtx, t *tenants.Tenant, _ []string) {
	if !s.exportJobsReady(ctx) {
		return
	}
	jobs, err := s.deps.ExportJobs.List(t.ID)
	if err != nil {
		s.exportJobAnswer(ctx, 0, schemas.ExportJob{}, err)
		return
	}
	for i := range jobs {
		s.absoluteLink(ctx, &jobs[i])
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"exports": jobs})
}

func (s *Server) getExportJob(ctx *fasthttp.RequestCtx, t *tenants.Tenant, params []string) {
	if s.exportJobsReady(ctx) {
		job, err := s.deps.ExportJobs.Get(t.ID, params[0])
		s.exportJobAnswer(ctx, fasthttp.StatusOK, job, err)
	}
}

func (s *Server) cancelExportJob(ctx *fasthttp.RequestCtx, t *tenants.Tenant, params []string) {
	if s.exportJobsReady(ctx) {
		job, err := s.deps.ExportJobs.Cancel(t.ID, params[0])
		s.exportJobAnswer(ctx, fasthttp.StatusOK, job, err)
	}
}

// downloadExport answers GET /v1/export-jobs/{id}/file: the file of a done
// job to whoever holds a link that has not expired (no key: the link is
// the credential, as a presigned URL is). Range requests resume a
// download.
func (s *Server) downloadExport(ctx *fasthttp.RequestCtx) {
	if !s.exportJobsReady(ctx) {
		return
	}
	parts := strings.Split(string(ctx.Path()), "/")
	args := ctx.QueryArgs()
	f, job, err := s.deps.ExportJobs.Open(parts[3], string(args.Peek("expires")), string(args.Peek("signature")))
	if err != nil {
		if !errors.Is(err, schemas.ErrExportLink) {
			s.log.Warn("export download", "err", err)
		}
		apiError(ctx, fasthttp.StatusForbidden, "invalid_link", "this download link is invalid or has expired; ask GET /v1/export-jobs/{id} for a fresh one")
		return
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		apiError(ctx, fasthttp.StatusInternalServerError, "internal", "the export file cannot be read")
		return
	}
	ctype, _, err := s.deps.Exports.FileType(job.Request.Format)
	if err != nil {
		ctype = "application/octet-stream"
	}
	size, etag := st.Size(), fmt.Sprintf(`"%s-%d"`, job.ID, st.Size())
	h := &ctx.Response.Header
	h.Set("Accept-Ranges", "bytes")
	h.Set("ETag", etag)
	h.Set("Cache-Control", "private, no-store")
	h.Set("Content-Disposition", `attachment; filename="`+job.FileName+`"`)
	h.SetLastModified(st.ModTime())
	ctx.SetContentType(ctype)
	rng := string(ctx.Request.Header.Peek("Range"))
	ifRange := string(ctx.Request.Header.Peek("If-Range"))
	// Several ranges at once, and ranges in units other than bytes, are
	// answered whole, as RFC 9110 allows.
	if !strings.HasPrefix(rng, "bytes=") || strings.Contains(rng, ",") || (ifRange != "" && ifRange != etag) {
		ctx.SetBodyStream(f, int(size))
		return
	}
	start, end, err := fasthttp.ParseByteRange([]byte(rng), int(size))
	if err != nil {
		f.Close()
		h.Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
		apiError(ctx, fasthttp.StatusRequestedRangeNotSatisfiable, "invalid_range", "the range is outside the file's "+strconv.FormatInt(size, 10)+" bytes")
		return
	}
	h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, size))
	ctx.SetStatusCode(fasthttp.StatusPartialContent)
	ctx.SetBodyStream(sectionCloser{io.NewSectionReader(f, int64(start), int64(end-start+1)), f}, end-start+1)
}

// sectionCloser is a range of a file that closes the file when the answer
// has been sent.
type sectionCloser struct {
	io.Reader
	io.Closer
}
