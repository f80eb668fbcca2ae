package ingest

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/valyala/fasthttp"

	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
)

// Privacy answers data subject access and erases data (the privacy
// package over ClickHouse).
type Privacy interface {
	Subject(ctx context.Context, org, pointer, value string) (*schemas.SubjectData, error)
	Erase(ctx context.Context, org string, r schemas.ErasureRequest, pointer string) (*schemas.Erasure, error)
}

// SubjectPointers give each organization's subject pointer (the
// coordinator's settings).
type SubjectPointers interface {
	SubjectPointer(org string) string
}

// privacyReady answers 503 without a privacy store, and 400 when the
// organization names no subject pointer and one is needed; it returns the
// pointer.
func (s *Server) privacyReady(ctx *fasthttp.RequestCtx, t *tenants.Tenant, needPointer bool) (string, bool) {
	if s.deps.Privacy == nil {
		apiError(ctx, fasthttp.StatusServiceUnavailable, "storage_unavailable", "receipt storage (ClickHouse) is not configured")
		return "", false
	}
	pointer := ""
	if s.deps.SubjectPointers != nil {
		pointer = s.deps.SubjectPointers.SubjectPointer(t.ID)
	}
	if needPointer && pointer == "" {
		apiError(ctx, fasthttp.StatusBadRequest, "no_subject_pointer",
			`the organization names no subject_pointer: set where payloads hold a subject's identifier (PATCH /v1/orgs/{org} {"settings":{"subject_pointer":"/customer/email"}})`)
		return "", false
	}
	return pointer, true
}

// subjectTag stands for a subject in the audit log, which must not hold
// the identifier itself: an HMAC under a key derived from the internal
// secret, so that no dictionary of addresses finds it.
func (s *Server) subjectTag(org, subject string) string {
	kid := s.deps.MAC.SignKeyID()
	key, _ := s.deps.MAC.Derive(kid, []byte("certnode-subject-tag"))
	h := hmac.New(sha256.New, key)
	h.Write([]byte(org + "\n" + subject))
	return "hmac:" + kid + ":" + hex.EncodeToString(h.Sum(nil)[:12])
}

// privacyTimeout bounds a subject access or erasure: it reads every
// receipt of the organization that holds the subject's text.
const privacyTimeout = 2 * time.Minute

// subjectAccess answers POST /v1/privacy/subjects {"subject"}: everything
// held about a data subject, as JSON. The subject travels in the body,
// out of the logs of proxies.
func (s *Server) subjectAccess(ctx *fasthttp.RequestCtx, t *tenants.Tenant, _ []string) {
	raw, ok := s.readBody(ctx, 4096)
	if !ok {
		return
	}
	var body struct {
		Subject string `json:"subject"`
	}
	if err := json.Unmarshal(raw, &body, json.RejectUnknownMembers(true)); err != nil {
		apiError(ctx, fasthttp.StatusBadRequest, "malformed_json", `body must be {"subject":...}: `+err.Error())
		return
	}
	subject := body.Subject
	if subject == "" || len(subject) > 1024 {
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_subject", "subject is required: the identifier, up to 1024 bytes")
		return
	}
	pointer, ok := s.privacyReady(ctx, t, true)
	if !ok {
		return
	}
	c, cancel := context.WithTimeout(s.life, privacyTimeout)
	defer cancel()
	data, err := s.deps.Privacy.Subject(c, t.ID, pointer, subject)
	if err != nil {
		s.log.Warn("privacy store", "err", err)
		apiError(ctx, fasthttp.StatusServiceUnavailable, "storage_unavailable", "receipt storage is unavailable; retry later")
		return
	}
	s.recordPrivacy(ctx, t, "privacy.subject_access", s.subjectTag(t.ID, subject), fmt.Sprintf("%d receipts", len(data.Receipts)))
	ctx.Response.Header.Set("Cache-Control", "no-store")
	writeJSON(ctx, fasthttp.StatusOK, data)
}

// erase answers POST /v1/privacy/erasures: a subject's payloads, a
// window's, or all of the organization's data. 202: ClickHouse applies the
// rewrite within seconds.
func (s *Server) erase(ctx *fasthttp.RequestCtx, t *tenants.Tenant, _ []string) {
	raw, ok := s.readBody(ctx, 4096)
	if !ok {
		return
	}
	var r schemas.ErasureRequest
	if err := json.Unmarshal(raw, &r, json.RejectUnknownMembers(true)); err != nil {
		apiError(ctx, fasthttp.StatusBadRequest, "malformed_json", `body must be {"subject":...}, {"from":...,"to":...} or {"all":true}: `+err.Error())
		return
	}
	mode, err := r.Mode()
	if err != nil {
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_erasure", err.Error())
		return
	}
	pointer, ok := s.privacyReady(ctx, t, mode == schemas.ErasureSubject)
	if !ok {
		return
	}
	c, cancel := context.WithTimeout(s.life, privacyTimeout)
	defer cancel()
	done, err := s.deps.Privacy.Erase(c, t.ID, r, pointer)
	if err != nil {
		s.log.Warn("privacy store", "err", err)
		apiError(ctx, fasthttp.StatusServiceUnavailable, "storage_unavailable", "receipt storage is unavailable; retry later")
		return
	}
	target := "all"
	switch mode {
	case schemas.ErasureSubject:
		target = s.subjectTag(t.ID, r.Subject)
	case schemas.ErasureRange:
		target = r.From.UTC().Format(time.RFC3339) + " to " + r.To.UTC().Format(time.RFC3339)
	}
	var rows []string
	for _, table := range slices.Sorted(maps.Keys(done.Rows)) {
		rows = append(rows, fmt.Sprintf("%s: %d", table, done.Rows[table]))
	}
	s.recordPrivacy(ctx, t, "erasure."+mode, target, "rows rewritten or deleted: "+strings.Join(rows, ", "))
	writeJSON(ctx, fasthttp.StatusAccepted, done)
}

// recordPrivacy sends a data subject request or an erasure to the audit
// log.
func (s *Server) recordPrivacy(ctx *fasthttp.RequestCtx, t *tenants.Tenant, action, target, detail string) {
	if s.deps.Audit == nil {
		return
	}
	kind := schemas.ActorKey
	if len(ctx.Request.Header.Peek("Authorization")) == 0 {
		kind = schemas.ActorUser
	}
	if len(detail) > 1000 {
		detail = detail[:1000]
	}
	s.deps.Audit.Record(schemas.AuditEvent{At: time.Now().UTC(), Org: t.ID, Actor: schemas.AuditActor{Kind: kind, ID: t.KeyID, Addr: clientIP(ctx)},
		Action: action, Target: target, Result: schemas.AuditOK, Source: "ingest", Detail: detail})
}
