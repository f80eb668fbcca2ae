package whsig

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Doer sends requests (the SSRF-guarded client of internal/egress).
type Doer interface {
	Do(*http.Request) (*http.Response, error)
}

// Delivery is one webhook to send: body exactly as signed, the endpoint's
// own headers, and the secrets that sign it (every live one during a
// rotation).
type Delivery struct {
	URL     string
	ID      string
	At      time.Time
	Body    []byte
	Headers map[string]string
	Secrets []Secret
}

// MaxResponseBody bounds the part of an endpoint's answer kept.
const MaxResponseBody = 4 << 10

// Response is what the endpoint answered, as kept for an attempt record:
// the first MaxResponseBody bytes and up to 50 headers, made valid UTF-8
// (an endpoint answers what it likes). Header is the answer's own.
type Response struct {
	Status  int
	Latency time.Duration
	Headers map[string]string
	Body    string
	Header  http.Header
}

// Send posts d signed as the specification says. The error is the
// transport's (no answer); any answer, 3xx included, is a Response.
func Send(ctx context.Context, client Doer, d Delivery) (Response, error) {
	req, err := http.NewRequestWithContext(ctx, "POST", d.URL, bytes.NewReader(d.Body))
	if err != nil {
		return Response{}, err
	}
	for k, v := range d.Headers {
		req.Header.Set(k, v)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "CertNode-Webhooks/1")
	req.Header.Set(HeaderID, d.ID)
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(d.At.Unix(), 10))
	req.Header.Set(HeaderSignature, Sign(d.ID, d.At, d.Body, d.Secrets...))
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return Response{Latency: time.Since(start)}, err
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBody))
	// Read a little more so the connection can be reused, then drop it.
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	r := Response{Status: resp.StatusCode, Latency: time.Since(start), Body: strings.ToValidUTF8(string(b), "\uFFFD"),
		Headers: map[string]string{}, Header: resp.Header}
	for k := range resp.Header {
		if len(r.Headers) == 50 {
			break
		}
		v := resp.Header.Get(k)
		if len(v) > 1024 {
			v = v[:1024]
		}
		r.Headers[strings.ToValidUTF8(k, "\uFFFD")] = strings.ToValidUTF8(v, "\uFFFD")
	}
	return r, nil
}
