package ingest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/valyala/fasthttp"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
)

// resultLine is one line of GET /v1/jobs/{id}/results.
type resultLine struct {
	Line      int64          `json:"line"`
	ID        string         `json:"id,omitempty"`
	Status    string         `json:"status"` // signed, valid, invalid, failed, or rejected (at upload)
	Reason    string         `json:"reason,omitempty"`
	Code      string         `json:"code,omitempty"`    // rejected: why
	Message   string         `json:"message,omitempty"` // rejected: details
	Keys      string         `json:"keys,omitempty"`
	Kid       string         `json:"kid,omitempty"`
	ReceiptID string         `json:"receipt_id,omitempty"`
	Receipt   jsontext.Value `json:"receipt,omitzero"`
}

// renderResult is a results line; compact leaves the receipt out (its
// receipt_id and kid stay).
func renderResult(res *schemas.Result, line int64, compact bool) []byte {
	out := resultLine{Line: line, ID: res.ID, Status: string(res.Status), Reason: res.Reason, Keys: res.Keys,
		Kid: res.Kid, ReceiptID: res.ReceiptID}
	if res.Kind == schemas.KindSign && !compact {
		out.Receipt = res.Receipt // verify callers already hold theirs
	}
	b, _ := json.Marshal(out)
	return append(b, '\n')
}

func renderRejected(r *schemas.RejectedLine) []byte {
	b, _ := json.Marshal(resultLine{Line: r.Line, Status: "rejected", Code: r.Code, Message: r.Message})
	return append(b, '\n')
}

const (
	// maxStream bounds one results stream; a client resumes with after_line.
	maxStream = 6 * time.Hour
	// maxAhead and maxAheadBytes bound the results held while an earlier
	// line's is missing: only lines within maxAhead of the next one are
	// held, and past either bound the stream reads the partition again
	// from the job's start once it has caught up.
	maxAhead      = 10_000
	maxAheadBytes = 64 << 20
	// maxStreamsPerTenant bounds a tenant's open results streams (each
	// reads Kafka) on one ingest process.
	maxStreamsPerTenant = 16
)

// jobResults streams a job's results as NDJSON, one line per input line in
// input order (rejected lines included, blank lines not), and ends when
// every line is answered. ?after_line=N resumes after line N. It reads only
// the partition holding the tenant's results, from where the job began.
func (s *Server) jobResults(ctx *fasthttp.RequestCtx, t *tenants.Tenant, params []string) {
	id := params[0]
	var after int64
	if a := ctx.QueryArgs().Peek("after_line"); a != nil {
		n, err := strconv.ParseInt(string(a), 10, 64)
		if err != nil || n < 0 {
			apiError(ctx, fasthttp.StatusBadRequest, "invalid_after_line", "after_line must be a line number (0 or more)")
			return
		}
		after = n
	}
	compact, ok := resultFormat(ctx, t)
	if !ok {
		return
	}
	j, _, ok := s.jobs.lookup(t.ID, id)
	if !ok {
		apiError(ctx, fasthttp.StatusNotFound, "not_found", noSuchJob)
		return
	}
	if j.State == schemas.JobAbandoned {
		apiError(ctx, fasthttp.StatusConflict, "job_abandoned", "the upload of this job did not finish; its results are incomplete (GET /v1/jobs/"+id+" shows its counts)")
		return
	}
	part, start, ok := s.resultsPartition(t.ID, j.Start)
	if !ok && !j.Single {
		apiError(ctx, fasthttp.StatusInternalServerError, "internal", "the job's results partition is unknown")
		return
	}
	if !j.Single {
		expired, err := s.expired(s.life, part, start)
		if err != nil {
			apiError(ctx, fasthttp.StatusServiceUnavailable, "kafka_unavailable", "the results cannot be read now; retry later")
			return
		}
		if expired {
			apiError(ctx, fasthttp.StatusGone, "results_expired", "this job's results have passed the results topic's retention")
			return
		}
	}
	if !s.openStream(t.ID) {
		apiError(ctx, fasthttp.StatusTooManyRequests, "too_many_streams",
			fmt.Sprintf("at most %d results streams per tenant at once on this server; close one, or resume later with after_line", maxStreamsPerTenant))
		return
	}
	gone := watchClient(ctx.Conn())
	ctx.SetConnectionClose() // the watcher read from the connection
	ctx.SetContentType("application/x-ndjson")
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		s.m.streams.Inc()
		defer s.m.streams.Dec()
		defer s.closeStream(t.ID)
		defer gone.stop()
		sctx, cancel := context.WithTimeout(context.Background(), maxStream)
		defer cancel()
		st := &stream{s: s, w: w, tenant: t.ID, id: id, next: after + 1, gone: gone.ch, deadline: sctx.Done(), compact: compact}
		st.run(part, start)
	})
}

// openStream counts a tenant's stream in, unless it has too many open.
func (s *Server) openStream(tenant string) bool {
	s.streamsMu.Lock()
	defer s.streamsMu.Unlock()
	if s.streams[tenant] >= maxStreamsPerTenant {
		return false
	}
	s.streams[tenant]++
	return true
}

func (s *Server) closeStream(tenant string) {
	s.streamsMu.Lock()
	defer s.streamsMu.Unlock()
	if s.streams[tenant]--; s.streams[tenant] <= 0 {
		delete(s.streams, tenant)
	}
}

// resultsPartition is the certnode.receipts partition the tenant's results
// go to (records are keyed by tenant, with Kafka's murmur2) and the job's
// start offset there.
func (s *Server) resultsPartition(tenant string, start map[int32]int64) (int32, int64, bool) {
	if len(start) == 0 {
		return 0, 0, false
	}
	topic := s.cfg.Kafka.Topics().Receipts
	p := int32(kgo.StickyKeyPartitioner(nil).ForTopic(topic).Partition(&kgo.Record{Topic: topic, Key: []byte(tenant)}, len(start)))
	o, ok := start[p]
	return p, o, ok
}

// expired reports whether the partition no longer holds offset start.
func (s *Server) expired(ctx context.Context, part int32, start int64) (bool, error) {
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	offs, err := kadm.NewClient(s.prod).ListStartOffsets(c, s.cfg.Kafka.Topics().Receipts)
	if err != nil {
		return false, err
	}
	o, ok := offs.Lookup(s.cfg.Kafka.Topics().Receipts, part)
	if !ok || o.Err != nil {
		return false, errors.Join(errors.New("no start offset"), o.Err)
	}
	return o.Offset > start, nil
}

// stream is one results stream in progress.
type stream struct {
	s          *Server
	w          *bufio.Writer
	tenant     string
	id         string
	next       int64 // the next line to write
	gone       <-chan struct{}
	deadline   <-chan struct{}
	ahead      map[int64][]byte
	aheadBytes int
	compact    bool // results lines without receipts (resultFormat)
}

// wait blocks until the job changes, its upload outlives the upload
// timeout (it is then abandoned, which no record announces), or the stream
// must end.
func (st *stream) wait(changed <-chan struct{}, j *schemas.Job) bool {
	var abandon <-chan time.Time
	if j.State == schemas.JobUploading {
		t := time.NewTimer(time.Until(j.CreatedAt.Add(st.s.cfg.UploadTimeout)) + time.Second)
		defer t.Stop()
		abandon = t.C
	}
	select {
	case <-changed:
		return true
	case <-abandon:
		return true
	case <-st.gone:
	case <-st.deadline:
	case <-st.s.stopping:
	}
	return false
}

func (st *stream) alive() bool {
	select {
	case <-st.gone:
	case <-st.deadline:
	case <-st.s.stopping:
	default:
		return true
	}
	return false
}

func (st *stream) run(part int32, start int64) {
	// Results are listed once the upload is complete: only then is every
	// line's fate known.
	var j schemas.Job
	for {
		cur, changed, ok := st.s.jobs.lookup(st.tenant, st.id)
		if !ok || cur.State == schemas.JobAbandoned {
			return
		}
		if cur.Single && cur.Result != nil {
			if st.next <= 1 {
				st.w.Write(renderResult(cur.Result, 1, st.compact))
			}
			return
		}
		if !cur.Single && cur.State != schemas.JobUploading {
			j = cur
			break
		}
		if !st.wait(changed, &cur) {
			return
		}
	}
	key := jobLineKey(st.s.deps.MAC, &j)
	idx := newLineIndex(&j)
	cl, err := kafka.NewClient(st.s.cfg.Kafka, kgo.FetchMaxWait(200*time.Millisecond),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{st.s.cfg.Kafka.Topics().Receipts: {part: kgo.NewOffset().At(start)}}))
	if err != nil {
		return
	}
	defer cl.Close()
	st.ahead = map[int64][]byte{}
	defer st.settle()
	overflow := false
	for st.flush(idx, j.LinesRead) && st.next <= j.LinesRead {
		pctx, cancel := context.WithTimeout(context.Background(), time.Second)
		fetches := cl.PollFetches(pctx)
		cancel()
		if fetches.IsClientClosed() || !st.alive() {
			return
		}
		n := 0
		fetches.EachRecord(func(rec *kgo.Record) {
			n++
			if kafka.Header(rec, schemas.HeaderJobID) != st.id {
				return
			}
			res, err := schemas.DecodeResult(rec.Value)
			if err != nil || res.Tenant != st.tenant || res.JobID != st.id || res.Line < st.next || res.Line > j.LinesRead ||
				key == nil || res.ID != lineID(key, st.id, res.Line) {
				return
			}
			if o, _ := idx.outcome(res.Line); o != lineAccepted {
				return
			}
			if _, dup := st.ahead[res.Line]; dup {
				return
			}
			// The next line is always taken, so the stream moves on.
			if res.Line != st.next && (res.Line >= st.next+maxAhead || st.aheadBytes >= maxAheadBytes) {
				overflow = true
				return
			}
			b := renderResult(res, res.Line, st.compact)
			st.ahead[res.Line], st.aheadBytes = b, st.aheadBytes+len(b)
		})
		if n == 0 && overflow {
			// Caught up with lines dropped: read the partition again.
			overflow = false
			cl.SetOffsets(map[string]map[int32]kgo.EpochOffset{st.s.cfg.Kafka.Topics().Receipts: {part: {Epoch: -1, Offset: start}}})
		}
	}
}

// settle holds the end of a complete stream until the job's status says
// done too (this process counts results apart from the stream), so a
// client that asks for the status next sees the counts it just read.
func (st *stream) settle() {
	for {
		cur, changed, ok := st.s.jobs.lookup(st.tenant, st.id)
		if !ok || cur.State == schemas.JobDone || cur.State == schemas.JobAbandoned || !st.wait(changed, &cur) {
			return
		}
	}
}

// flush writes every line it can in order and reports whether the client
// still listens.
func (st *stream) flush(idx *lineIndex, last int64) bool {
	for st.next <= last {
		o, rej := idx.outcome(st.next)
		switch o {
		case lineSkipped:
		case lineRejected:
			st.w.Write(renderRejected(rej))
		default:
			b, ok := st.ahead[st.next]
			if !ok {
				return st.w.Flush() == nil
			}
			delete(st.ahead, st.next)
			st.aheadBytes -= len(b)
			st.w.Write(b)
		}
		st.next++
	}
	return st.w.Flush() == nil
}

// clientWatch notices a client that hung up while its stream waits for
// results (nothing is being written then, so no write would fail).
type clientWatch struct {
	ch   chan struct{}
	done chan struct{}
}

func (c clientWatch) stop() { close(c.done) }

// watchClient reads from the connection, which carries nothing more once
// the request was read: a read that ends (EOF, reset) means the client left.
func watchClient(conn net.Conn) clientWatch {
	c := clientWatch{ch: make(chan struct{}), done: make(chan struct{})}
	go func() {
		buf := make([]byte, 512)
		for {
			select {
			case <-c.done:
				return
			default:
			}
			conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			_, err := conn.Read(buf)
			var ne net.Error
			if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
				close(c.ch)
				return
			}
		}
	}()
	return c
}
