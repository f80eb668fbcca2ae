package ingest

import (
	"context"
	"errors"
	"strconv"

	"github.com/valyala/fasthttp"

	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
)

// TransparencyLog proves receipts are in the transparency log (the
// transparency package, over the log process's files).
type TransparencyLog interface {
	// Checkpoint is the latest signed checkpoint (a C2SP note).
	Checkpoint(ctx context.Context) ([]byte, error)
	// VerifierKey checks the checkpoints (a C2SP note verifier key).
	VerifierKey(ctx context.Context) (string, error)
	// Proof is schemas.ErrNotLogged while the receipt is in no checkpoint.
	Proof(ctx context.Context, receiptID string) (*schemas.InclusionProof, error)
	// Consistency proves tree from a prefix of tree to (0: the latest);
	// schemas.ErrBadTreeSize for sizes the log cannot prove.
	Consistency(ctx context.Context, from, to uint64) (*schemas.ConsistencyProof, error)
}

// signedLog is a log's checkpoints and their key: the transparency log's
// or the audit log's.
type signedLog interface {
	Checkpoint(ctx context.Context) ([]byte, error)
	VerifierKey(ctx context.Context) (string, error)
}

// logReady answers 503 when no transparency log is configured.
func (s *Server) logReady(ctx *fasthttp.RequestCtx) bool {
	if s.deps.Log == nil {
		apiError(ctx, fasthttp.StatusServiceUnavailable, "log_unavailable", "this server has no transparency log configured")
		return false
	}
	return true
}

// logFailed answers the log's failure to serve.
func (s *Server) logFailed(ctx *fasthttp.RequestCtx, err error) {
	s.log.Warn("transparency log", "err", err)
	apiError(ctx, fasthttp.StatusServiceUnavailable, "log_unavailable", "the log is unavailable; retry later")
}

// logCheckpoint answers GET /v1/log/checkpoint: the latest signed
// checkpoint, as monitors and witnesses read it.
func (s *Server) logCheckpoint(ctx *fasthttp.RequestCtx) {
	s.checkpoint(ctx, s.deps.Log, "transparency")
}

// logKey answers GET /v1/log/key: the checkpoints' verifier key. Monitors
// should get it out of band too: a log that answers it checks itself.
func (s *Server) logKey(ctx *fasthttp.RequestCtx) { s.verifierKey(ctx, s.deps.Log, "transparency") }

// checkpoint answers l's latest signed checkpoint (l nil: 503).
func (s *Server) checkpoint(ctx *fasthttp.RequestCtx, l signedLog, name string) {
	if l == nil {
		apiError(ctx, fasthttp.StatusServiceUnavailable, "log_unavailable", "this server has no "+name+" log configured")
		return
	}
	raw, err := l.Checkpoint(ctx)
	switch {
	case errors.Is(err, schemas.ErrNotLogged):
		apiError(ctx, fasthttp.StatusNotFound, "not_logged", "the log has no checkpoint yet")
	case err != nil:
		s.logFailed(ctx, err)
	default:
		ctx.SetContentType("text/plain; charset=utf-8")
		ctx.Response.Header.Set("Cache-Control", "no-cache")
		ctx.SetBody(raw)
	}
}

// verifierKey answers the key of l's checkpoints (l nil: 503).
func (s *Server) verifierKey(ctx *fasthttp.RequestCtx, l signedLog, name string) {
	if l == nil {
		apiError(ctx, fasthttp.StatusServiceUnavailable, "log_unavailable", "this server has no "+name+" log configured")
		return
	}
	vkey, err := l.VerifierKey(ctx)
	if err != nil {
		s.logFailed(ctx, err)
		return
	}
	ctx.SetContentType("text/plain; charset=utf-8")
	ctx.Response.Header.Set("Cache-Control", "public, max-age=300")
	ctx.SetBodyString(vkey + "\n")
}

// logConsistency answers GET /v1/log/consistency?from=&to=.
func (s *Server) logConsistency(ctx *fasthttp.RequestCtx) {
	args := ctx.QueryArgs()
	sizes := [2]uint64{}
	for i, name := range []string{"from", "to"} {
		v := args.Peek(name)
		if v == nil && name == "to" {
			continue
		}
		n, err := strconv.ParseUint(string(v), 10, 64)
		if err != nil || n == 0 {
			apiError(ctx, fasthttp.StatusBadRequest, "invalid_"+name, name+" must be a tree size: a positive number")
			return
		}
		sizes[i] = n
	}
	if !s.logReady(ctx) {
		return
	}
	p, err := s.deps.Log.Consistency(s.life, sizes[0], sizes[1])
	switch {
	case errors.Is(err, schemas.ErrBadTreeSize):
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_tree_size", err.Error())
	case errors.Is(err, schemas.ErrNotLogged):
		apiError(ctx, fasthttp.StatusNotFound, "not_logged", "the log has no checkpoint yet")
	case err != nil:
		s.logFailed(ctx, err)
	default:
		writeJSON(ctx, fasthttp.StatusOK, p)
	}
}

// receiptProof answers GET /v1/receipts/{receipt_id}/proof: the leaf, the
// inclusion proof and the signed checkpoint of one of the caller's
// receipts. Another organization's receipt answers as an unknown one.
func (s *Server) receiptProof(ctx *fasthttp.RequestCtx, t *tenants.Tenant, params []string) {
	if !s.logReady(ctx) {
		return
	}
	if s.deps.Store == nil {
		apiError(ctx, fasthttp.StatusServiceUnavailable, "storage_unavailable", "receipt storage (ClickHouse), which knows whose receipt it is, is not configured")
		return
	}
	if _, err := s.deps.Store.Receipt(s.life, t.ID, params[0]); err != nil && !errors.Is(err, ErrErased) {
		if errors.Is(err, ErrNotFound) {
			apiError(ctx, fasthttp.StatusNotFound, "not_found", noSuchReceipt)
		} else {
			s.log.Warn("receipt store", "err", err)
			apiError(ctx, fasthttp.StatusServiceUnavailable, "storage_unavailable", "receipt storage is unavailable; retry later")
		}
		return
	}
	p, err := s.deps.Log.Proof(s.life, params[0])
	switch {
	case errors.Is(err, schemas.ErrNotLogged):
		ctx.Response.Header.Set("Retry-After", "1")
		apiError(ctx, fasthttp.StatusNotFound, "not_logged", "the receipt is not in a published checkpoint yet; it is within seconds of its signing")
	case err != nil:
		s.logFailed(ctx, err)
	default:
		writeJSON(ctx, fasthttp.StatusOK, p)
	}
}
