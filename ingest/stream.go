package ingest

import (
	"bufio"
	"context"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/valyala/fasthttp"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
)

// resultLine is one line of GET /v1/jobs/{id}/results.
type resultLine struct {
	Line      int64          `json:"line"`
	ID        string         `json:"id"`
	Status    schemas.Status `json:"status"`
	Reason    string         `json:"reason,omitempty"`
	Kid       string         `json:"kid,omitempty"`
	ReceiptID string         `json:"receipt_id,omitempty"`
	Receipt   jsontext.Value `json:"receipt,omitempty"`
}

// maxStream bounds one results stream.
const maxStream = 6 * time.Hour

// jobResults streams a job's results as NDJSON as they complete, reading
// certnode.receipts from where it stood when the job began, and ends when
// every accepted line has its result. Redelivered results are dropped.
func (s *Server) jobResults(ctx *fasthttp.RequestCtx, t *tenants.Tenant, id string) {
	j, _, ok := s.res.snapshot(t.ID, id)
	if !ok || j.start == nil {
		apiError(ctx, fasthttp.StatusNotFound, "not_found", "no such bulk job")
		return
	}
	cl, err := kafka.NewClient(s.cfg.Kafka, consumeFrom(s.cfg.Kafka.Topics().Receipts, j.start), kgo.FetchMaxWait(200*time.Millisecond))
	if err != nil {
		apiError(ctx, fasthttp.StatusServiceUnavailable, "kafka_unavailable", err.Error())
		return
	}
	ctx.SetContentType("application/x-ndjson")
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		defer cl.Close()
		sctx, cancel := context.WithTimeout(context.Background(), maxStream)
		defer cancel()
		var seen bitset
		var sent int64
		for {
			cur, _, ok := s.res.snapshot(t.ID, id)
			if !ok || (cur.State != "uploading" && sent >= cur.Total) {
				return
			}
			pctx, pcancel := context.WithTimeout(sctx, time.Second)
			fetches := cl.PollFetches(pctx)
			pcancel()
			if sctx.Err() != nil || fetches.IsClientClosed() {
				return
			}
			var werr error
			fetches.EachRecord(func(rec *kgo.Record) {
				if werr != nil || header(rec, schemas.HeaderJobID) != id {
					return
				}
				res, err := schemas.DecodeResult(rec.Value)
				if err != nil || !seen.add(res.Line) {
					return
				}
				out := resultLine{Line: res.Line, ID: res.ID, Status: res.Status, Reason: res.Reason,
					Kid: res.Kid, ReceiptID: res.ReceiptID}
				if res.Kind == schemas.KindSign {
					out.Receipt = res.Receipt // verify callers already hold theirs
				}
				b, _ := json.Marshal(out)
				w.Write(b)
				werr = w.WriteByte('\n')
				sent++
			})
			if werr == nil {
				werr = w.Flush()
			}
			if werr != nil {
				return // the client went away
			}
		}
	})
}
