package ingest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"slices"
	"strconv"
	"sync"
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

// bodyReader reads the request body as it arrives (bulk jobs are never
// held whole).
func bodyReader(ctx *fasthttp.RequestCtx) io.Reader {
	if st := ctx.RequestBodyStream(); st != nil {
		return st
	}
	return bytes.NewReader(ctx.Request.Body())
}

// readBody reads at most limit bytes, answering 413 itself when over.
func (s *Server) readBody(ctx *fasthttp.RequestCtx, limit int) ([]byte, bool) {
	r := bodyReader(ctx)
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

// quota answers 429 itself when the tenant is over its rate or its
// monthly allowance.
func (s *Server) quota(ctx *fasthttp.RequestCtx, t *tenants.Tenant) bool {
	wait, err := s.deps.Limiter.Take(t.ID, 1)
	switch {
	case errors.Is(err, tenants.ErrMonthlyQuota):
		monthlyQuota(ctx, t, nil)
	case err != nil:
		s.log.Error("quota", "tenant", t.ID, "err", err)
		apiError(ctx, fasthttp.StatusInternalServerError, "internal", "the quota could not be checked")
	case wait > 0:
		ctx.Response.Header.Set("Retry-After", retryAfter(wait))
		apiError(ctx, fasthttp.StatusTooManyRequests, "over_quota", fmt.Sprintf("tenant is over its quota of %g requests/s", t.RateLimit))
	default:
		return true
	}
	return false
}

// monthlyQuota answers 429 monthly_quota_exceeded, retrying at the start
// of the next month; job, when set, is a bulk upload none of whose lines
// was accepted.
func monthlyQuota(ctx *fasthttp.RequestCtx, t *tenants.Tenant, job any) {
	now := time.Now().UTC()
	next := time.Date(now.Year(), now.Month()+1, 1, 0, 0, 0, 0, time.UTC)
	ctx.Response.Header.Set("Retry-After", retryAfter(next.Sub(now)))
	writeJSON(ctx, fasthttp.StatusTooManyRequests, errorBody{Error: errorDetail{"monthly_quota_exceeded",
		monthlyMessage(t)}, Job: job})
}

func monthlyMessage(t *tenants.Tenant) string {
	return fmt.Sprintf("the organization's %d requests for this month are used up; more are admitted from the 1st of next month (UTC)", t.MonthlyReceipts)
}

// retryAfter is a wait in whole seconds, rounded up, at least 1.
func retryAfter(d time.Duration) string {
	return strconv.FormatInt(max(1, int64((d+time.Second-1)/time.Second)), 10)
}

// payloadTooLarge reports a payload or receipt over the tenant's limit.
func payloadTooLarge(t *tenants.Tenant, kind schemas.Kind, v jsontext.Value) error {
	if t.MaxPayloadBytes <= 0 || len(v) <= t.MaxPayloadBytes {
		return nil
	}
	what := "payload"
	if kind == schemas.KindVerify {
		what = "receipt"
	}
	return fmt.Errorf("the %s is %d bytes; this organization's limit is %d", what, len(v), t.MaxPayloadBytes)
}

// admitLine waits until the tenant's rate admits one more line of a bulk
// job (bulk jobs are slowed down, not refused). It fails with
// tenants.ErrMonthlyQuota, or errStopping when the server stops.
func (s *Server) admitLine(ctx context.Context, tenant string) error {
	for {
		wait, err := s.deps.Limiter.Take(tenant, 1)
		if err != nil || wait == 0 {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-s.stopping:
			t.Stop()
			return errStopping
		case <-ctx.Done():
			t.Stop()
			return errStopping
		}
	}
}

var errStopping = errors.New("the server is stopping")

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

// unwrapReceipt lets a verify job take a sign job's results as they are: a
// line holding {"receipt":{...}} (a results line, or a /v1/verify body) is
// read as the receipt it carries, with the "jwks" it names to verify with
// (nil for the service's keys); a bare receipt has "protected".
func unwrapReceipt(doc []byte) (receipt, jwks jsontext.Value) {
	var probe struct {
		Protected jsontext.Value `json:"protected"`
		Receipt   jsontext.Value `json:"receipt"`
		JWKS      jsontext.Value `json:"jwks"`
	}
	if json.Unmarshal(doc, &probe) != nil || len(probe.Protected) > 0 || len(probe.Receipt) == 0 || probe.Receipt.Kind() != '{' {
		return doc, nil
	}
	if !schemas.Present(probe.JWKS) {
		probe.JWKS = nil
	}
	return probe.Receipt, probe.JWKS
}

// callerKeys checks the JWKS lines of one upload name, once per distinct
// JWKS: jobs usually repeat one on every line.
type callerKeys struct {
	seen    map[string]error
	skipped []lineSkippedKey
}

// lineSkippedKey is a key of a line's JWKS that verification will not use,
// reported once per upload with the first line naming that JWKS.
type lineSkippedKey struct {
	Line               int64 `json:"line"`
	schemas.SkippedKey `json:",inline"`
}

// Bounds per upload: distinct JWKS remembered, skipped keys reported.
const (
	maxJWKSSeen    = 64
	maxJWKSSkipped = 100
)

func (c *callerKeys) check(line int64, jwks jsontext.Value) error {
	if err, ok := c.seen[string(jwks)]; ok {
		return err
	}
	ks, err := schemas.ParseJWKS(jwks)
	if err == nil {
		for _, sk := range ks.Skipped() {
			if len(c.skipped) < maxJWKSSkipped {
				c.skipped = append(c.skipped, lineSkippedKey{Line: line, SkippedKey: sk})
			}
		}
	}
	if c.seen == nil {
		c.seen = map[string]error{}
	}
	if len(c.seen) < maxJWKSSeen {
		c.seen[string(jwks)] = err
	}
	return err
}

// envelope builds the certnode.requests record for one request.
func (s *Server) envelope(ctx *fasthttp.RequestCtx, t *tenants.Tenant, kind schemas.Kind, id, jobID string, line int64, body, jwks jsontext.Value) (*kgo.Record, error) {
	req := schemas.Request{V: schemas.EnvelopeVersion, ID: id, Tenant: t.ID, Kind: kind, JobID: jobID, Line: line,
		JWKS: jwks, ReceivedAt: time.Now().UTC(), KeyID: t.KeyID, APIVersion: apiVersion(ctx)}
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
		Headers: []kgo.RecordHeader{{Key: schemas.HeaderIngestMAC, Value: s.deps.MAC.Header(val)}}}, nil
}

func (s *Server) sign(ctx *fasthttp.RequestCtx, t *tenants.Tenant, _ []string) {
	s.single(ctx, t, schemas.KindSign)
}

func (s *Server) verify(ctx *fasthttp.RequestCtx, t *tenants.Tenant, _ []string) {
	s.single(ctx, t, schemas.KindVerify)
}

// single handles /v1/sign and /v1/verify: produce, then wait for the
// result. A result that does not come within SignWait leaves a job to poll.
func (s *Server) single(ctx *fasthttp.RequestCtx, t *tenants.Tenant, kind schemas.Kind) {
	if mediaType(ctx) != "application/json" {
		apiError(ctx, fasthttp.StatusUnsupportedMediaType, "unsupported_media_type", "send Content-Type: application/json")
		return
	}
	raw, ok := s.readBody(ctx, s.cfg.MaxBodyBytes)
	if !ok {
		return
	}
	var body singleBody
	if err := json.Unmarshal(raw, &body); err != nil {
		apiError(ctx, fasthttp.StatusBadRequest, "malformed_json", "body is not a valid JSON object: "+err.Error())
		return
	}
	input := body.Payload
	var skipped []schemas.SkippedKey
	if kind == schemas.KindVerify {
		input = body.Receipt
		if !schemas.Present(body.JWKS) {
			body.JWKS = nil
		} else {
			ks, err := schemas.ParseJWKS(body.JWKS)
			if err != nil {
				apiError(ctx, fasthttp.StatusUnprocessableEntity, "invalid_jwks", err.Error())
				return
			}
			skipped = ks.Skipped()
		}
	}
	if code, err := checkInput(kind, input); err != nil {
		apiError(ctx, fasthttp.StatusUnprocessableEntity, code, err.Error())
		return
	}
	if kind == schemas.KindSign {
		if err := s.reservedMember(ctx, t, input); err != nil {
			apiError(ctx, fasthttp.StatusBadRequest, "reserved_member", err.Error())
			return
		}
	}
	if err := payloadTooLarge(t, kind, input); err != nil {
		apiError(ctx, fasthttp.StatusRequestEntityTooLarge, "payload_too_large", err.Error())
		return
	}
	// Only requests that go on count against the rate and the month.
	if !s.quota(ctx, t) {
		return
	}
	res, pending, err := s.process(ctx, t, kind, input, body.JWKS)
	switch {
	case errors.Is(err, errKafkaUnavailable):
		apiError(ctx, fasthttp.StatusServiceUnavailable, "kafka_unavailable", "the request was not accepted: the message broker is unavailable; retry later")
	case err != nil:
		apiError(ctx, fasthttp.StatusInternalServerError, "internal", err.Error())
	case res == nil:
		writeJSON(ctx, fasthttp.StatusGatewayTimeout, errorBody{
			Error: errorDetail{"timeout", "accepted, but no result yet; poll GET /v1/jobs/" + pending}, JobID: pending})
	default:
		writeResult(ctx, res, skipped)
	}
}

// errKafkaUnavailable: the broker did not take a request.
var errKafkaUnavailable = errors.New("the message broker is unavailable")

// process sends one request into the pipeline and waits up to SignWait
// for its result. Without one by then it leaves a job that any ingest
// process answers and returns its id (pending) instead.
func (s *Server) process(ctx *fasthttp.RequestCtx, t *tenants.Tenant, kind schemas.Kind, input, jwks jsontext.Value) (res *schemas.Result, pending string, err error) {
	id := newID("req_")
	rec, err := s.envelope(ctx, t, kind, id, "", 0, input, jwks)
	if err != nil {
		return nil, "", err
	}
	start := s.jobs.positions() // before producing: the result comes after
	ch := s.jobs.wait(t.ID, id)
	pctx, cancel := context.WithTimeout(s.life, s.cfg.ProduceTimeout)
	err = s.prod.ProduceSync(pctx, rec).FirstErr()
	cancel()
	if err != nil {
		s.jobs.cancel(id)
		s.m.produced.WithLabelValues("failed").Inc()
		s.log.Warn("produce failed", "tenant", t.ID, "err", err)
		return nil, "", errKafkaUnavailable
	}
	s.m.produced.WithLabelValues("ok").Inc()
	timer := time.NewTimer(s.cfg.SignWait)
	defer timer.Stop()
	select {
	case res := <-ch:
		s.m.waiting.Dec()
		return res, "", nil
	case <-timer.C:
	case <-s.stopping:
	}
	// Leave a job that any ingest process answers. A result that arrives
	// meanwhile is counted for the job.
	j, err := s.jobs.start(ctx, schemas.Job{ID: id, Tenant: t.ID, Kind: kind, Single: true, State: schemas.JobRunning,
		Start: start, LinesRead: 1, Total: 1}, 0)
	s.jobs.cancel(id)
	select {
	case res := <-ch:
		if j != nil {
			s.jobs.countFor(j, res)
		}
	default:
	}
	if err != nil {
		s.log.Warn("could not record a pending request", "id", id, "err", err)
	}
	return nil, id, nil
}

// writeResult answers a single request; skipped lists the keys of the
// caller's JWKS that could not be used, reported with the verdict.
func writeResult(ctx *fasthttp.RequestCtx, res *schemas.Result, skipped []schemas.SkippedKey) {
	switch {
	case res.Status == schemas.StatusFailed:
		apiError(ctx, fasthttp.StatusUnprocessableEntity, res.Reason, "the request could not be processed: "+res.Reason)
	case res.Kind == schemas.KindSign:
		ctx.SetStatusCode(fasthttp.StatusOK)
		ctx.SetContentType("application/json")
		ctx.SetBody(append(append([]byte(nil), res.Receipt...), '\n'))
	default:
		writeJSON(ctx, fasthttp.StatusOK, verifyAnswer{Valid: res.Status == schemas.StatusValid, Reason: res.Reason,
			Keys: res.Keys, Kid: res.Kid, ReceiptID: res.ReceiptID, JWKSSkipped: skipped})
	}
}

type verifyAnswer struct {
	Valid     bool   `json:"valid"`
	Reason    string `json:"reason,omitempty"`
	Keys      string `json:"keys"` // service or caller
	Kid       string `json:"kid,omitempty"`
	ReceiptID string `json:"receipt_id,omitempty"`
	// JWKSSkipped lists the keys of the caller's JWKS that were not used.
	JWKSSkipped []schemas.SkippedKey `json:"jwks_skipped,omitempty"`
}

type jobAccepted struct {
	JobID         string                 `json:"job_id"`
	Type          schemas.Kind           `json:"type"`
	LinesRead     int64                  `json:"lines_read"`
	LinesAccepted int64                  `json:"lines_accepted"`
	LinesRejected int64                  `json:"lines_rejected"`
	Rejected      []schemas.RejectedLine `json:"rejected"`
	// JWKSSkipped lists the keys of the lines' JWKS that were not used.
	JWKSSkipped []lineSkippedKey `json:"jwks_skipped,omitempty"`
}

// Upload limits: past them the rest of an upload is not read, so a job's
// record (which lists them) stays well under a Kafka record's size.
const (
	maxRejected  = 1000
	maxBlankRuns = 1000
	maxMessage   = 256
	// maxInflight bounds an upload's lines waiting for the broker: they are
	// all rejected if it stops acknowledging.
	maxInflight = 1000
	nonceBytes  = 16
)

// upload is the state of one bulk upload.
type upload struct {
	mu       sync.Mutex
	rejected []schemas.RejectedLine
	skipped  []schemas.LineRange
	// acked and failed count the produces the broker acknowledged or not.
	acked, failed int64
}

func (u *upload) reject(line int64, code, msg string) {
	if len(msg) > maxMessage {
		msg = msg[:maxMessage]
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.rejected = append(u.rejected, schemas.RejectedLine{Line: line, Code: code, Message: msg})
}

// brokerFailing reports whether a line's produce failed: the broker is not
// taking lines, and reading more would only reject them one by one.
func (u *upload) brokerFailing() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.failed > 0
}

func (u *upload) full() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.rejected) >= maxRejected || len(u.skipped) >= maxBlankRuns
}

func (u *upload) skip(line int64) {
	if n := len(u.skipped); n > 0 && u.skipped[n-1].To == line-1 {
		u.skipped[n-1].To = line
		return
	}
	u.skipped = append(u.skipped, schemas.LineRange{From: line, To: line})
}

// createJob streams an NDJSON body into Kafka line by line.
func (s *Server) createJob(ctx *fasthttp.RequestCtx, t *tenants.Tenant, _ []string) {
	kind := jobKind(ctx, t)
	if kind != schemas.KindSign && kind != schemas.KindVerify {
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_type", "query parameter type must be sign or verify (it may be left out for an API key with a default job type)")
		return
	}
	if s.forbidden(ctx, t, string(kind)) != "" { // a job signs or verifies: it needs that scope too
		return
	}
	switch mediaType(ctx) {
	case "application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines":
	default:
		apiError(ctx, fasthttp.StatusUnsupportedMediaType, "unsupported_media_type", "send Content-Type: application/x-ndjson, one JSON document per line")
		return
	}
	nonce := make([]byte, nonceBytes)
	rand.Read(nonce)
	meta := schemas.Job{ID: newID("job_"), Tenant: t.ID, Kind: kind, State: schemas.JobUploading,
		Nonce: base64.RawURLEncoding.EncodeToString(nonce), KeyID: s.deps.MAC.SignKeyID(), Start: s.jobs.positions()}
	j, err := s.jobs.start(ctx, meta, t.MaxConcurrentJobs)
	if errors.Is(err, errTooManyJobs) {
		io.CopyN(io.Discard, bodyReader(ctx), drainLimit) // so the client reads this answer, not a reset
		apiError(ctx, fasthttp.StatusTooManyRequests, "too_many_jobs",
			fmt.Sprintf("this organization may have %d jobs uploading or running at once; start this one when another has finished", t.MaxConcurrentJobs))
		return
	}
	if err != nil {
		apiError(ctx, fasthttp.StatusServiceUnavailable, "kafka_unavailable", "the job was not accepted: the message broker is unavailable; retry later")
		return
	}
	maxLines := s.cfg.MaxJobLines
	if t.MaxJobLines > 0 {
		maxLines = min(maxLines, t.MaxJobLines)
	}
	// A stopping server ends the upload where it is: lines read so far
	// are kept, and the client learns where it was cut off.
	uploading := make(chan struct{})
	defer close(uploading)
	conn := ctx.Conn()
	go func() {
		select {
		case <-s.stopping:
			conn.SetReadDeadline(time.Now())
		case <-uploading:
		}
	}()
	var up upload
	slots := make(chan struct{}, maxInflight)
	var inflight sync.WaitGroup
	lr := newLineReader(bodyReader(ctx), s.cfg.MaxLineBytes)
	var keys callerKeys
	var last int64
	monthly := false // the month's allowance ran out during the upload
	for {
		l, err := lr.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			code, msg := "read_failed", "upload interrupted: "+err.Error()
			if stopping(s.stopping) {
				code, msg = "server_stopping", "the server is stopping: the rest of the upload was not read; send it again as a new job"
			}
			up.reject(lr.n+1, code, msg)
			last = lr.n + 1
			break
		}
		last = l.n
		if l.n > maxLines {
			up.reject(l.n, "too_many_lines", fmt.Sprintf("a job takes at most %d lines; the rest of the upload was not read", maxLines))
			break
		}
		if up.brokerFailing() {
			up.reject(l.n, "kafka_unavailable", "the message broker stopped acknowledging lines; the rest of the upload was not read")
			break
		}
		if up.full() {
			code, msg := "too_many_rejected", fmt.Sprintf("over %d rejected lines or %d runs of blank lines; the rest of the upload was not read", maxRejected, maxBlankRuns)
			if monthly {
				code, msg = "monthly_quota_exceeded", monthlyMessage(t)+"; the rest of the upload was not read"
			}
			up.reject(l.n, code, msg)
			break
		}
		switch {
		case l.tooLong:
			up.reject(l.n, "line_too_long", fmt.Sprintf("line is over the %d-byte limit", s.cfg.MaxLineBytes))
			continue
		case len(l.doc) == 0:
			up.mu.Lock()
			up.skip(l.n)
			up.mu.Unlock()
			continue
		}
		doc, jwks := l.doc, jsontext.Value(nil)
		if kind == schemas.KindVerify {
			doc, jwks = unwrapReceipt(doc)
		}
		if code, verr := checkInput(kind, doc); verr != nil {
			up.reject(l.n, code, verr.Error())
			continue
		}
		if kind == schemas.KindSign {
			if rerr := s.reservedMember(ctx, t, doc); rerr != nil {
				up.reject(l.n, "reserved_member", rerr.Error())
				continue
			}
		}
		if perr := payloadTooLarge(t, kind, doc); perr != nil {
			up.reject(l.n, "payload_too_large", perr.Error())
			continue
		}
		if jwks != nil {
			if jerr := keys.check(l.n, jwks); jerr != nil {
				up.reject(l.n, "invalid_jwks", jerr.Error())
				continue
			}
		}
		if !monthly {
			if werr := s.admitLine(ctx, t.ID); errors.Is(werr, tenants.ErrMonthlyQuota) {
				monthly = true
			} else if werr != nil {
				up.reject(l.n, "server_stopping", "the server is stopping: the rest of the upload was not read; send it again as a new job")
				break
			}
		}
		if monthly { // every line left is refused on its own, as invalid ones are
			up.reject(l.n, "monthly_quota_exceeded", monthlyMessage(t))
			continue
		}
		rec, eerr := s.envelope(ctx, t, kind, lineID(j.lineKey, meta.ID, l.n), meta.ID, l.n, append(jsontext.Value(nil), doc...), append(jsontext.Value(nil), jwks...))
		if eerr != nil {
			up.reject(l.n, "internal", eerr.Error())
			continue
		}
		inflight.Add(1)
		slots <- struct{}{}
		n := l.n
		s.prod.Produce(context.Background(), rec, func(_ *kgo.Record, err error) {
			defer inflight.Done()
			defer func() { <-slots }()
			if err != nil {
				up.reject(n, "kafka_unavailable", "not accepted: "+err.Error())
				up.mu.Lock()
				up.failed++
				up.mu.Unlock()
				return
			}
			up.mu.Lock()
			up.acked++
			up.mu.Unlock()
		})
	}
	// Every record ends acknowledged or failed within the delivery timeout.
	inflight.Wait()
	acked, failed := up.acked, up.failed
	slices.SortFunc(up.rejected, func(a, b schemas.RejectedLine) int { return int(a.Line - b.Line) })
	meta.State, meta.LinesRead, meta.Total = schemas.JobRunning, last, acked
	meta.Rejected, meta.Skipped, meta.UploadedAt = up.rejected, up.skipped, time.Now().UTC()
	meta.CreatedAt = j.meta.CreatedAt
	meta.V = schemas.EnvelopeVersion
	if err := s.jobs.finishUpload(ctx, j, meta); err != nil {
		apiError(ctx, fasthttp.StatusServiceUnavailable, "kafka_unavailable", "the job's lines were sent but its record was not written; retry later")
		return
	}
	s.m.lines.WithLabelValues("accepted").Add(float64(acked))
	s.m.lines.WithLabelValues("rejected").Add(float64(len(up.rejected)))
	out := jobAccepted{JobID: meta.ID, Type: kind, LinesRead: last, LinesAccepted: acked,
		LinesRejected: int64(len(up.rejected)), Rejected: up.rejected, JWKSSkipped: keys.skipped}
	if out.Rejected == nil {
		out.Rejected = []schemas.RejectedLine{}
	}
	switch {
	case acked == 0 && monthly:
		monthlyQuota(ctx, t, out)
	case acked == 0 && failed > 0:
		writeJSON(ctx, fasthttp.StatusServiceUnavailable, errorBody{
			Error: errorDetail{"kafka_unavailable", "no line was accepted: the message broker is unavailable; retry later"}, Job: out})
	case acked == 0:
		writeJSON(ctx, fasthttp.StatusUnprocessableEntity, errorBody{
			Error: errorDetail{"no_valid_lines", "the upload had no valid line"}, Job: out})
	default:
		writeJSON(ctx, fasthttp.StatusAccepted, out)
	}
}

// jobStatus is GET /v1/jobs/{job_id}.
type jobStatus struct {
	JobID         string       `json:"job_id"`
	Type          schemas.Kind `json:"type"`
	State         string       `json:"state"`
	Total         int64        `json:"total"`
	Done          int64        `json:"done"`
	Valid         int64        `json:"valid"`
	Invalid       int64        `json:"invalid"`
	Failed        int64        `json:"failed"`
	LinesRejected int          `json:"lines_rejected"`
	CreatedAt     time.Time    `json:"created_at"`
	UploadedAt    time.Time    `json:"uploaded_at,omitzero"`
	FinishedAt    time.Time    `json:"finished_at,omitzero"`
	// Result is a single request's result, shaped as its results line.
	Result jsontext.Value `json:"result,omitzero"`
}

// The 404 texts are fixed: another tenant's ids get the very same answer
// as ids that do not exist.
const (
	noSuchJob     = "no such job for this tenant"
	noSuchReceipt = "no such receipt for this tenant"
)

func (s *Server) jobStatus(ctx *fasthttp.RequestCtx, t *tenants.Tenant, params []string) {
	j, _, ok := s.jobs.lookup(t.ID, params[0])
	if !ok {
		apiError(ctx, fasthttp.StatusNotFound, "not_found", noSuchJob)
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, statusOf(j))
}

func statusOf(j schemas.Job) jobStatus {
	st := jobStatus{JobID: j.ID, Type: j.Kind, State: string(j.State), Total: j.Total,
		Done: j.Done, Valid: j.Valid, Invalid: j.Invalid, Failed: j.Failed, LinesRejected: len(j.Rejected),
		CreatedAt: j.CreatedAt, UploadedAt: j.UploadedAt, FinishedAt: j.FinishedAt}
	if j.Result != nil {
		st.Result = bytes.TrimSuffix(renderResult(j.Result, 1, false), []byte("\n"))
	}
	return st
}

// Pages of GET /v1/jobs.
const (
	defaultJobsPage = 20
	maxJobsPage     = 100
)

// listJobs answers the tenant's latest bulk jobs, newest first (limit,
// default 20, at most 100), of one state when asked.
func (s *Server) listJobs(ctx *fasthttp.RequestCtx, t *tenants.Tenant, _ []string) {
	args := ctx.QueryArgs()
	limit := defaultJobsPage
	if v := args.Peek("limit"); v != nil {
		n, err := strconv.Atoi(string(v))
		if err != nil || n < 1 || n > maxJobsPage {
			apiError(ctx, fasthttp.StatusBadRequest, "invalid_limit", fmt.Sprintf("limit must be from 1 to %d", maxJobsPage))
			return
		}
		limit = n
	}
	state := schemas.JobState(args.Peek("state"))
	switch state {
	case "", schemas.JobUploading, schemas.JobRunning, schemas.JobDone, schemas.JobAbandoned:
	default:
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_state", "state must be uploading, running, done or abandoned")
		return
	}
	out := []jobStatus{}
	for _, j := range s.jobs.list(t.ID, state, limit) {
		out = append(out, statusOf(j))
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"data": out})
}

func (s *Server) getReceipt(ctx *fasthttp.RequestCtx, t *tenants.Tenant, params []string) {
	receiptID := params[0]
	if s.deps.Store == nil {
		apiError(ctx, fasthttp.StatusServiceUnavailable, "storage_unavailable", "receipt storage (ClickHouse) is not configured")
		return
	}
	rc, err := s.deps.Store.Receipt(s.life, t.ID, receiptID)
	switch {
	case errors.Is(err, ErrNotFound):
		apiError(ctx, fasthttp.StatusNotFound, "not_found", noSuchReceipt)
	case errors.Is(err, ErrErased):
		apiError(ctx, fasthttp.StatusGone, "erased", "the receipt's payload was erased at the organization's request; its proof in the transparency log stays valid")
	case err != nil:
		s.log.Warn("receipt store", "err", err)
		apiError(ctx, fasthttp.StatusServiceUnavailable, "storage_unavailable", "receipt storage is unavailable; retry later")
	default:
		ctx.SetContentType("application/json")
		ctx.SetBody(append(rc, '\n'))
	}
}

// stopping reports whether ch is closed.
func stopping(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
