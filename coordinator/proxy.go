package coordinator

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// AccountsProxy passes the account routes (sign-in, the signed-in user,
// organization resources) from another tier's HTTP server to the
// coordinator, so customers and the dashboard's cookies see one API host.
// It tries each coordinator address in turn when one cannot be reached,
// and vouches for the client's address with the node token so the audit
// trail records the real caller.
type AccountsProxy struct {
	addrs  []string
	token  string
	next   atomic.Uint32 // index of the address to try first
	client *http.Client
}

// NewAccountsProxy proxies to the coordinator nodes at addrs, checking
// https:// ones with tlsCfg (see HTTPClient).
func NewAccountsProxy(addrs []string, nodeToken string, tlsCfg *tls.Config) *AccountsProxy {
	return &AccountsProxy{addrs: addrs, token: nodeToken, client: HTTPClient(tlsCfg, 30*time.Second)}
}

// internalHeaders are the coordinator's own: a client never sets them.
var internalHeaders = []string{clientAddrHeader, forwardAuthHeader, forwardedHeader}

func (p *AccountsProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, "too_large", "the body is over 1 MiB")
		return
	}
	client, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		client = r.RemoteAddr
	}
	proto := "http"
	if secureRequest(r) {
		proto = "https"
	}
	first := int(p.next.Load())
	for i := range p.addrs {
		n := (first + i) % len(p.addrs)
		req, err := http.NewRequestWithContext(r.Context(), r.Method, BaseURL(p.addrs[n])+r.URL.RequestURI(), bytes.NewReader(body))
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid", err.Error())
			return
		}
		req.Header = r.Header.Clone()
		for _, h := range internalHeaders {
			req.Header.Del(h)
		}
		req.Host = r.Host // the browser's, for the Origin check
		req.Header.Set(clientAddrHeader, client)
		req.Header.Set(forwardAuthHeader, "Bearer "+p.token)
		req.Header.Set("X-Forwarded-Proto", proto)
		resp, err := p.client.Do(req)
		if err != nil {
			var op *net.OpError
			if r.Context().Err() == nil && errors.As(err, &op) && op.Op == "dial" {
				slog.Warn("coordinator unreachable for an account request", "addr", p.addrs[n], "err", err)
				continue // nothing was sent: the next node may take it
			}
			// The request may have been applied: never send it twice.
			writeError(w, http.StatusBadGateway, "coordinator_failed",
				"the coordinator did not answer; the change may have been applied: retry with the same Idempotency-Key")
			return
		}
		p.next.Store(uint32(n))
		defer resp.Body.Close()
		for k, vs := range resp.Header {
			for _, v := range vs {
				w.Header().Add(k, v)
			}
		}
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
		return
	}
	w.Header().Set("Retry-After", "1")
	writeError(w, http.StatusServiceUnavailable, "no_coordinator", "no coordinator node answered; retry")
}
