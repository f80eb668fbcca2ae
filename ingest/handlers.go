package ingest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/valyala/fasthttp"

	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
)

// mediaType returns the request's content type without parameters.
func mediaType(ctx *fasthttp.RequestCtx) string {
	mt, _, _ := mime.ParseMediaType(string(ctx.Request.Header.ContentType()))
	return mt
}

// readBody reads at most limit bytes, answering 413 itself when over.
func (s *Server) readBody(ctx *fasthttp.RequestCtx, limit int) ([]byte, bool) {
	var r io.Reader = bytes.NewReader(ctx.PostBody())
	if st := ctx.RequestBodyStream(); st != nil {
		r = st
	}
	tooLarge := func(msg string) {
		// Read (a bounded amount of) what the client is still sending:
		// closing a socket with unread data resets it, and the client would
		// see a broken connection instead of this answer.
		io.CopyN(io.Discard, r, drainLimit)
		apiError(ctx, fasthttp.StatusRequestEntityTooLarge, "too_large", msg)
	}
	if cl := ctx.Request.Header.ContentLength(); cl > limit {
		tooLarge(fmt.Sprintf("body is %d bytes; the limit is %d", cl, limit))
		return nil, false
	}
	b, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		apiError(ctx, fasthttp.StatusBadRequest, "read_failed", "could not read the body: "+err.Error())
		return nil, false
	}
	if len(b) > limit {
		tooLarge(fmt.Sprintf("body is over the %d-byte limit", limit))
		return nil, false
	}
	return b, true
}

// drainLimit bounds what is read and dropped from a refused body.
const drainLimit = 16 << 20

// quota answers 429 itself when the tenant is over its rate.
func (s *Server) quota(ctx *fasthttp.RequestCtx, t *tenants.Tenant) bool {
	l := s.limiter(t)
	if l == nil {
		return true
	}
	r := l.Reserve()
	if d := r.Delay(); d > 0 {
		r.Cancel()
		ctx.Response.Header.Set("Retry-After", strconv.Itoa(int(d/time.Second)+1))
		apiError(ctx, fasthttp.StatusTooManyRequests, "over_quota", fmt.Sprintf("tenant is over its quota of %g requests/s", t.RateLimit))
		return false
	}
	return true
}

type singleBody struct {
	Payload jsontext.Value `json:"payload"`
	Receipt jsontext.Value `json:"receipt"`
	JWKS    jsontext.Value `json:"jwks"`
}

// checkInput validates one sign payload or verify receipt the way the
// worker will read it, so that bad input is refused here with a clear
// message instead of reaching the DLQ.
func checkInput(kind schemas.Kind, v jsontext.Value) (code string, err error) {
	if kind == schemas.KindSign {
		if len(v) == 0 {
			return "invalid_payload", errors.New("payload is required")
		}
		if _, err := schemas.CanonicalizeObject(v); err != nil {
			return "invalid_payload", err
		}
		return "", nil
	}
	if len(v) == 0 {
		return "invalid_receipt", errors.New("receipt is required")
	}
	if !v.IsValid() || v.Kind() != '{' {
		return "invalid_receipt", errors.New("receipt must be a JSON object")
	}
	return "", nil
}

func (s *Server) envelope(t *tenants.Tenant, kind schemas.Kind, id, jobID string, line int64, body jsontext.Value, jwks jsontext.Value) (*kgo.Record, error) {
	req := schemas.Request{V: schemas.EnvelopeVersion, ID: id, Tenant: t.ID, Kind: kind, JobID: jobID, Line: line,
		JWKS: jwks, ReceivedAt: time.Now().UTC()}
	if kind == schemas.KindSign {
		req.Payload = body
	} else {
		req.Receipt = body
	}
	val, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	return &kgo.Record{Topic: s.cfg.Kafka.Topics().Requests, Key: []byte(t.ID), Value: val,
		Headers: []kgo.RecordHeader{{Key: schemas.HeaderIngestMAC, Value: []byte(s.mac.Sum(t.ID, id))}}}, nil
}

// single handles /v1/sign and /v1/verify: produce, then wait for the result.
func (s *Server) single(ctx *fasthttp.RequestCtx, t *tenants.Tenant, kind schemas.Kind) {
	if mediaType(ctx) != "application/json" {
		apiError(ctx, fasthttp.StatusUnsupportedMediaType, "unsupported_media_type", "send Content-Type: application/json")
		return
	}
	raw, ok := s.readBody(ctx, s.cfg.MaxBodyBytes)
	if !ok || !s.quota(ctx, t) {
		return
	}
	var body singleBody
	if err := json.Unmarshal(raw, &body); err != nil {
		apiError(ctx, fasthttp.StatusBadRequest, "malformed_json", "body is not a valid JSON object: "+err.Error())
		return
	}
	input := body.Payload
	if kind == schemas.KindVerify {
		input = body.Receipt
		if len(body.JWKS) > 0 {
			if _, err := schemas.ParseJWKS(body.JWKS); err != nil {
				apiError(ctx, fasthttp.StatusUnprocessableEntity, "invalid_jwks", err.Error())
				return
			}
		}
	}
	if code, err := checkInput(kind, input); err != nil {
		apiError(ctx, fasthttp.StatusUnprocessableEntity, code, err.Error())
		return
	}
	id := newID("req_")
	rec, err := s.envelope(t, kind, id, "", 0, input, body.JWKS)
	if err != nil {
		apiError(ctx, fasthttp.StatusInternalServerError, "internal", err.Error())
		return
	}
	if err := s.res.track(ctx, &job{ID: id, Tenant: t.ID, Kind: kind, State: "running", Total: 1}, false); err != nil {
		apiError(ctx, fasthttp.StatusServiceUnavailable, "kafka_unavailable", err.Error())
		return
	}
	ch := s.res.wait(id)
	pctx, cancel := context.WithTimeout(ctx, s.cfg.ProduceTimeout)
	err = s.prod.ProduceSync(pctx, rec).FirstErr()
	cancel()
	if err != nil {
		s.res.cancel(id)
		s.res.forget(id)
		s.m.produced.WithLabelValues("failed").Inc()
		s.log.Warn("produce failed", "tenant", t.ID, "err", err)
		apiError(ctx, fasthttp.StatusServiceUnavailable, "kafka_unavailable", "the request was not accepted: the message broker is unavailable; retry later")
		return
	}
	s.m.produced.WithLabelValues("ok").Inc()
	timer := time.NewTimer(s.cfg.SignWait)
	defer timer.Stop()
	select {
	case res := <-ch:
		s.m.waiting.Dec()
		s.res.forget(id) // answered: only timed-out requests stay pollable
		writeResult(ctx, res)
	case <-timer.C:
		s.res.cancel(id)
		writeJSON(ctx, fasthttp.StatusGatewayTimeout, errorBody{
			Error: errorDetail{"timeout", "accepted, but no result yet; poll GET /v1/jobs/" + id}, JobID: id})
	}
}

func writeResult(ctx *fasthttp.RequestCtx, res *schemas.Result) {
	switch {
	case res.Status == schemas.StatusFailed:
		apiError(ctx, fasthttp.StatusUnprocessableEntity, res.Reason, "the request could not be processed: "+res.Reason)
	case res.Kind == schemas.KindSign:
		ctx.SetStatusCode(fasthttp.StatusOK)
		ctx.SetContentType("application/json")
		ctx.SetBody(append(append([]byte(nil), res.Receipt...), '\n'))
	default:
		writeJSON(ctx, fasthttp.StatusOK, verifyAnswer{Valid: res.Status == schemas.StatusValid, Reason: res.Reason,
			Kid: res.Kid, ReceiptID: res.ReceiptID})
	}
}

type verifyAnswer struct {
	Valid     bool   `json:"valid"`
	Reason    string `json:"reason,omitempty"`
	Kid       string `json:"kid,omitempty"`
	ReceiptID string `json:"receipt_id,omitempty"`
}

type rejectedLine struct {
	Line    int64  `json:"line"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

type jobAccepted struct {
	JobID             string         `json:"job_id"`
	Type              schemas.Kind   `json:"type"`
	LinesAccepted     int64          `json:"lines_accepted"`
	LinesRejected     int64          `json:"lines_rejected"`
	Rejected          []rejectedLine `json:"rejected"`
	RejectedTruncated bool           `json:"rejected_truncated,omitempty"`
}

const maxRejectedListed = 1000

// createJob streams an NDJSON body into Kafka line by line.
func (s *Server) createJob(ctx *fasthttp.RequestCtx, t *tenants.Tenant) {
	kind := schemas.Kind(ctx.QueryArgs().Peek("type"))
	if kind != schemas.KindSign && kind != schemas.KindVerify {
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_type", "query parameter type must be sign or verify")
		return
	}
	switch mediaType(ctx) {
	case "application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines":
	default:
		apiError(ctx, fasthttp.StatusUnsupportedMediaType, "unsupported_media_type", "send Content-Type: application/x-ndjson, one JSON document per line")
		return
	}
	j := &job{ID: newID("job_"), Tenant: t.ID, Kind: kind, State: "uploading"}
	if err := s.res.track(ctx, j, true); err != nil {
		apiError(ctx, fasthttp.StatusServiceUnavailable, "kafka_unavailable", err.Error())
		return
	}
	var body io.Reader = bytes.NewReader(ctx.PostBody())
	if st := ctx.RequestBodyStream(); st != nil {
		body = st
	}
	out := jobAccepted{JobID: j.ID, Type: kind, Rejected: []rejectedLine{}}
	var mu sync.Mutex
	reject := func(line int64, code, msg string) {
		mu.Lock()
		defer mu.Unlock()
		out.LinesRejected++
		s.m.lines.WithLabelValues(code).Inc()
		if len(out.Rejected) < maxRejectedListed {
			out.Rejected = append(out.Rejected, rejectedLine{line, code, msg})
		} else {
			out.RejectedTruncated = true
		}
	}
	var acked, failed atomic.Int64
	var inflight sync.WaitGroup
	limiter := s.limiter(t)
	br := bufio.NewReaderSize(body, s.cfg.MaxLineBytes+1)
	var produced int64
	for n := int64(1); ; n++ {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			reject(n, "line_too_long", fmt.Sprintf("line is over the %d-byte limit", s.cfg.MaxLineBytes))
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			if err == io.EOF {
				break
			}
			continue
		}
		if err != nil && err != io.EOF {
			reject(n, "read_failed", "upload interrupted: "+err.Error())
			break
		}
		if doc := bytes.TrimSpace(line); len(doc) > 0 {
			if produced >= s.cfg.MaxJobLines {
				reject(n, "too_many_lines", fmt.Sprintf("a job takes at most %d lines; the rest of the upload was not read", s.cfg.MaxJobLines))
				break
			}
			if code, verr := checkInput(kind, doc); verr != nil {
				reject(n, code, verr.Error())
			} else {
				if limiter != nil {
					if werr := limiter.Wait(ctx); werr != nil {
						reject(n, "over_quota", werr.Error())
						break
					}
				}
				rec, eerr := s.envelope(t, kind, newID("req_"), j.ID, n, append(jsontext.Value(nil), doc...), nil)
				if eerr != nil {
					reject(n, "internal", eerr.Error())
				} else {
					produced++
					inflight.Add(1)
					s.prod.Produce(context.Background(), rec, func(_ *kgo.Record, err error) {
						defer inflight.Done()
						if err != nil {
							failed.Add(1)
							reject(n, "kafka_unavailable", "not accepted: "+err.Error())
							return
						}
						acked.Add(1)
					})
				}
			}
		}
		if err == io.EOF {
			break
		}
	}
	// Every record ends acknowledged or failed within the delivery timeout.
	inflight.Wait()
	out.LinesAccepted = acked.Load()
	s.m.lines.WithLabelValues("accepted").Add(float64(out.LinesAccepted))
	s.res.update(j.ID, func(j *job) { j.State, j.Total = "running", out.LinesAccepted })
	switch {
	case out.LinesAccepted == 0 && failed.Load() > 0:
		writeJSON(ctx, fasthttp.StatusServiceUnavailable, errorBody{
			Error: errorDetail{"kafka_unavailable", "no line was accepted: the message broker is unavailable; retry later"}, Job: out})
	case out.LinesAccepted == 0:
		writeJSON(ctx, fasthttp.StatusUnprocessableEntity, errorBody{
			Error: errorDetail{"no_valid_lines", "the upload had no valid line"}, Job: out})
	default:
		writeJSON(ctx, fasthttp.StatusAccepted, out)
	}
}

func (s *Server) jobStatus(ctx *fasthttp.RequestCtx, t *tenants.Tenant, id string) {
	j, _, ok := s.res.snapshot(t.ID, id)
	if !ok {
		apiError(ctx, fasthttp.StatusNotFound, "not_found", "no such job")
		return
	}
	type status struct {
		job    `json:",inline"`
		Result *schemas.Result `json:"result,omitempty"`
	}
	writeJSON(ctx, fasthttp.StatusOK, status{job: j, Result: j.result})
}

func (s *Server) getReceipt(ctx *fasthttp.RequestCtx, t *tenants.Tenant, receiptID string) {
	if s.store == nil {
		apiError(ctx, fasthttp.StatusServiceUnavailable, "storage_unavailable", "receipt storage (ClickHouse) is not configured")
		return
	}
	rc, err := s.store.Receipt(ctx, t.ID, receiptID)
	switch {
	case errors.Is(err, ErrNotFound):
		apiError(ctx, fasthttp.StatusNotFound, "not_found", "no receipt "+receiptID+" for this tenant")
	case err != nil:
		apiError(ctx, fasthttp.StatusServiceUnavailable, "storage_unavailable", err.Error())
	default:
		ctx.SetContentType("application/json")
		ctx.SetBody(append(rc, '\n'))
	}
}
