package ingest

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/valyala/fasthttp"

	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
)

// ComplianceRenderer draws a signed compliance report as a PDF that
// carries its receipt's id and the SHA-256 of its payload, and tables
// (audit events, report runs) as PDFs.
type ComplianceRenderer interface {
	PDF(w io.Writer, receipt []byte, report *schemas.ComplianceReport) error
	Table(w io.Writer, title, subtitle string, at time.Time, cols []schemas.ExportColumn) (TableWriter, error)
}

// maxCompliancePeriod bounds the period of one report.
const maxCompliancePeriod = 366 * 24 * time.Hour

// complianceReport answers POST /v1/compliance/reports {"from","to"}: the
// organization's compliance report for the period, signed as a CertNode
// receipt whose payload it is (JSON), or drawn as a PDF (Accept:
// application/pdf). The coordinator's parts (users, keys, audit events)
// are read with the caller's own credentials, so only those who may read
// the audit trail (owners and admins, or an admin-scope key) get a report.
func (s *Server) complianceReport(ctx *fasthttp.RequestCtx, t *tenants.Tenant, _ []string) {
	var body struct {
		From time.Time `json:"from"`
		To   time.Time `json:"to"`
	}
	raw, ok := s.readBody(ctx, 4096)
	if !ok {
		return
	}
	if err := json.Unmarshal(raw, &body); err != nil {
		apiError(ctx, fasthttp.StatusBadRequest, "malformed_json", "body must be {\"from\":RFC 3339,\"to\":RFC 3339}: "+err.Error())
		return
	}
	from, to, now := body.From.UTC(), body.To.UTC(), time.Now().UTC()
	if from.IsZero() || to.IsZero() || !from.Before(to) || to.Sub(from) > maxCompliancePeriod || from.After(now) {
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_range", "from and to are required, from before to and not in the future, at most 366 days apart")
		return
	}
	pdf := bytes.Contains(ctx.Request.Header.Peek("Accept"), []byte("application/pdf"))
	switch {
	case s.deps.Accounts == nil:
		apiError(ctx, fasthttp.StatusServiceUnavailable, "accounts_unavailable", "this server has no coordinator to read users, keys and audit events from")
		return
	case pdf && s.deps.Compliance == nil:
		apiError(ctx, fasthttp.StatusNotAcceptable, "not_acceptable", "this server draws no PDF; ask for application/json")
		return
	case !s.analyticsReady(ctx):
		return
	}
	rep := &schemas.ComplianceReport{Type: schemas.ComplianceReportType, Version: 1, Organization: t.ID, From: from, To: to,
		GeneratedAt: now, GeneratedBy: t.KeyID, SigningKeys: []string{}}
	for _, k := range s.deps.Keys.JWKS().Keys {
		rep.SigningKeys = append(rep.SigningKeys, k.Kid)
	}
	// The coordinator's parts, as the caller may read them.
	org := url.PathEscape(t.ID)
	for _, part := range []struct {
		path, member string
		into         *[]map[string]any
	}{
		{"/v1/orgs/" + org + "/members", "members", &rep.Users},
		{"/v1/orgs/" + org + "/keys", "keys", &rep.APIKeys},
		{"/v1/orgs/" + org + "/audit?limit=1000", "events", &rep.AuditEvents},
	} {
		code, answer := s.askAccounts(ctx, part.path)
		if code != http.StatusOK {
			ctx.SetStatusCode(code)
			ctx.SetContentType("application/json")
			ctx.SetBody(answer) // the coordinator's own refusal (403 forbidden_role, 404, 503)
			return
		}
		var list map[string][]map[string]any
		if err := json.Unmarshal(answer, &list, json.RejectUnknownMembers(false)); err != nil {
			apiError(ctx, fasthttp.StatusBadGateway, "coordinator_failed", "the coordinator's answer to "+part.path+" did not parse")
			return
		}
		*part.into = list[part.member]
		if *part.into == nil {
			*part.into = []map[string]any{}
		}
	}
	rep.AuditEvents = slices.DeleteFunc(rep.AuditEvents, func(e map[string]any) bool {
		at, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(e["at"]))
		return at.Before(from) || !at.Before(to)
	})
	// The analytics of the period.
	sum, err := s.deps.Analytics.Summary(s.life, t.ID, from, to)
	if err != nil {
		s.analyticsAnswer(ctx, nil, err)
		return
	}
	rep.Requests = *sum
	if sum.Requests > 0 {
		rep.SuccessRatio = float64(sum.Requests-sum.Failed) / float64(sum.Requests)
	}
	counts := func(dim string, filters ...schemas.AnalyticsFilter) ([]schemas.ComplianceCount, error) {
		top, err := s.deps.Analytics.Top(s.life, t.ID, schemas.AnalyticsQuery{Metrics: []string{"requests"}, GroupBy: dim, Filters: filters,
			From: from, To: to, Limit: 100})
		if err != nil {
			return nil, err
		}
		out := []schemas.ComplianceCount{}
		for _, r := range top.Rows {
			if r.Values[0] != nil {
				out = append(out, schemas.ComplianceCount{Value: r.Group, Count: uint64(*r.Values[0])})
			}
		}
		return out, nil
	}
	if rep.ReceiptsByKid, err = counts("kid", schemas.AnalyticsFilter{Dim: "kind", Values: []string{"sign"}},
		schemas.AnalyticsFilter{Dim: "status", Values: []string{"signed"}}); err == nil {
		rep.VerificationFailures, err = counts("reason", schemas.AnalyticsFilter{Dim: "status", Values: []string{"invalid", "failed"}})
	}
	if err != nil {
		s.analyticsAnswer(ctx, nil, err)
		return
	}
	// The newest events first; as many as the signed payload may hold.
	slices.Reverse(rep.AuditEvents)
	if n := len(rep.AuditEvents) - schemas.MaxComplianceEvents; n > 0 {
		rep.AuditEvents, rep.AuditEventsOmitted = rep.AuditEvents[:schemas.MaxComplianceEvents], n
	}
	limit := s.cfg.MaxBodyBytes - 64
	if t.MaxPayloadBytes > 0 && t.MaxPayloadBytes < limit {
		limit = t.MaxPayloadBytes
	}
	payload, err := json.Marshal(rep, json.Deterministic(true))
	for err == nil && len(payload) > limit && len(rep.AuditEvents) > 0 {
		keep := len(rep.AuditEvents) / 2
		rep.AuditEventsOmitted += len(rep.AuditEvents) - keep
		rep.AuditEvents = rep.AuditEvents[:keep]
		payload, err = json.Marshal(rep, json.Deterministic(true))
	}
	if err != nil || len(payload) > limit {
		apiError(ctx, fasthttp.StatusInternalServerError, "internal", fmt.Sprintf("the report does not fit a receipt (%d bytes): %v", len(payload), err))
		return
	}
	if !s.quota(ctx, t) {
		return
	}
	res, pending, err := s.process(ctx, t, schemas.KindSign, payload, nil)
	switch {
	case err != nil:
		apiError(ctx, fasthttp.StatusServiceUnavailable, "kafka_unavailable", "the report was not signed: "+err.Error())
		return
	case res == nil:
		writeJSON(ctx, fasthttp.StatusGatewayTimeout, errorBody{
			Error: errorDetail{"timeout", "the report is being signed; its receipt is the result of GET /v1/jobs/" + pending}, JobID: pending})
		return
	case res.Status != schemas.StatusSigned:
		apiError(ctx, fasthttp.StatusUnprocessableEntity, res.Reason, "the report could not be signed: "+res.Reason)
		return
	}
	name := fmt.Sprintf("compliance-%s-%s-%s", t.ID, from.Format("20060102T150405Z"), to.Format("20060102T150405Z"))
	ctx.Response.Header.Set("Certnode-Receipt-Id", res.ReceiptID)
	if pdf {
		var buf bytes.Buffer
		if err := s.deps.Compliance.PDF(&buf, res.Receipt, rep); err != nil {
			apiError(ctx, fasthttp.StatusInternalServerError, "internal", "drawing the PDF: "+err.Error())
			return
		}
		ctx.Response.Header.Set("Content-Disposition", `attachment; filename="`+name+`.pdf"`)
		ctx.SetContentType("application/pdf")
		ctx.SetBody(buf.Bytes())
		return
	}
	ctx.Response.Header.Set("Content-Disposition", `attachment; filename="`+name+`.json"`)
	ctx.SetContentType("application/json")
	ctx.SetBody(append(append([]byte(nil), res.Receipt...), '\n'))
}
