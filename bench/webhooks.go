package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/whsig"
	"github.com/certnode/certnode/schemas"
)

// WebhookConfig drives the webhook part of the benchmark against a running
// CertNode API whose dispatcher may deliver to this machine (certnode dev).
type WebhookConfig struct {
	BaseURL  string // http://127.0.0.1:8080
	APIKey   string
	Org      string        // the key's organization, which gets the endpoint
	Rate     int           // signs/s for the latency run
	Duration time.Duration // of the latency run
	Events   int           // lines of the bulk sign job of the large throughput run
	Label    string
}

// WebhookReport holds the webhook figures of one run.
type WebhookReport struct {
	Label string
	Alg   string
	Raw   map[string]Raw
	// The latency run: Rate signs/s for Duration, each a receipt.signed
	// event; latency from the receipt signed (the event's timestamp, the
	// result's processed time) to the request at the receiver.
	Rate              int
	Duration          time.Duration
	Signed, Delivered int
	SignErrors        int
	P50, P99, Max     time.Duration
	SignP50, SignP99  time.Duration
	FromReceivedP50   time.Duration // from the API request received (data.received_at)
	Bursts            []Burst
	Duplicates        int // deliveries of a webhook-id already received, in every run
	BadSignatures     int
}

// Burst is one throughput run: the receipt.signed events of one bulk sign
// job, delivered to one endpoint.
type Burst struct {
	Events int
	Rate   float64       // deliveries/s, from the first delivery to the last
	Total  time.Duration // from the job's submission to the last delivery
}

// smallBurst fits the dispatcher's queue of one endpoint (1000 messages by
// default); a larger one shows what parking the overflow costs.
const smallBurst = 1000

// hookSink is the local receiver: it verifies each delivery's signature
// (as a real receiver would) and records when it came.
type hookSink struct {
	secret whsig.Secret
	tag    string // marks the payloads of the run under way
	mu     sync.Mutex
	seen   map[string]bool
	got    []hookEvent
	dups   int
	bad    int
}

type hookEvent struct {
	run             string    // the tag its payload carried
	signedAt, reqAt time.Time // the event's timestamp, the API request's receipt
	at              time.Time // received here
}

func (s *hookSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	at := time.Now()
	var ev struct {
		Type      string                   `json:"type"`
		Timestamp time.Time                `json:"timestamp"`
		Data      schemas.ReceiptEventData `json:"data"`
	}
	err := json.Unmarshal(body, &ev, json.RejectUnknownMembers(false))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.secret.Encode() != "" && whsig.Verify(r.Header, body, []whsig.Secret{s.secret}, 0, at) != nil {
		s.bad++
	}
	id := r.Header.Get(whsig.HeaderID)
	switch {
	case s.seen[id]:
		s.dups++
	case err == nil && ev.Type == schemas.EventReceiptSigned:
		s.seen[id] = true
		run := ""
		if s.tag != "" && bytes.Contains(ev.Data.Receipt, []byte(`"`+s.tag+`"`)) {
			run = s.tag
		}
		s.got = append(s.got, hookEvent{run: run, signedAt: ev.Timestamp,
			reqAt: ev.Data.ReceivedAt, at: at})
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *hookSink) events() []hookEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]hookEvent(nil), s.got...)
}

// start tags a new run: events whose payload carries the tag are its.
func (s *hookSink) start(name string) string {
	tag := fmt.Sprintf("webhook-%s-%d", name, time.Now().UnixNano())
	s.mu.Lock()
	s.tag = tag
	s.mu.Unlock()
	return tag
}

// of waits until n events of run arrived, and returns them.
func (s *hookSink) of(ctx context.Context, run string, n int, limit time.Duration) ([]hookEvent, error) {
	var out []hookEvent
	err := waitFor(ctx, limit, func() bool {
		out = out[:0]
		for _, e := range s.events() {
			if e.run == run {
				out = append(out, e)
			}
		}
		return len(out) >= n
	})
	if err != nil {
		return nil, fmt.Errorf("%d of %d events delivered: %w", len(out), n, err)
	}
	return out, nil
}

// Webhooks measures webhook delivery from a running API to a receiver on
// 127.0.0.1: latency at a fixed sign rate, then deliveries per second of a
// bulk sign job's events.
func Webhooks(ctx context.Context, cfg WebhookConfig) (*WebhookReport, error) {
	r := &WebhookReport{Label: cfg.Label, Rate: cfg.Rate, Duration: cfg.Duration}
	r.Raw = MeasureRaw(time.Second)
	c := &client{base: strings.TrimRight(cfg.BaseURL, "/"), key: cfg.APIKey, http: &http.Client{Timeout: 5 * time.Minute}}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	sink := &hookSink{seen: map[string]bool{}}
	srv := &http.Server{Handler: sink, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()

	body, _ := json.Marshal(map[string]any{"url": "http://" + ln.Addr().String() + "/hook", "event_types": []string{schemas.EventReceiptSigned},
		"description": "certnode bench webhooks"})
	resp, err := c.req(ctx, "POST", "/v1/orgs/"+cfg.Org+"/webhooks/endpoints", "application/json", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var ep struct {
		ID     string `json:"id"`
		Secret string `json:"secret"`
	}
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(answer, &ep, json.RejectUnknownMembers(false)) != nil {
		return nil, fmt.Errorf("webhook endpoint: %d %s", resp.StatusCode, answer)
	}
	defer func() {
		if resp, err := c.req(context.WithoutCancel(ctx), "DELETE", "/v1/orgs/"+cfg.Org+"/webhooks/endpoints/"+ep.ID, "", nil); err == nil {
			resp.Body.Close()
		}
	}()
	secret, err := whsig.ParseSecret(ep.Secret)
	if err != nil {
		return nil, fmt.Errorf("webhook endpoint secret: %w", err)
	}
	sink.mu.Lock()
	sink.secret = secret
	sink.mu.Unlock()

	// The dispatcher follows the coordinator: sign until a delivery shows
	// it knows the endpoint (an event before that would not be sent to it).
	warm := time.Now().Add(30 * time.Second)
	for i := 0; len(sink.events()) == 0; i++ {
		if time.Now().After(warm) {
			return nil, errors.New("no webhook delivered within 30s of creating the endpoint")
		}
		if i%10 == 0 {
			if resp, err := c.req(ctx, "POST", "/v1/sign", "application/json", strings.NewReader(`{"payload":{"warmup":true}}`)); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Latency at a fixed rate.
	tag := sink.start("latency")
	var signLat []time.Duration
	signLat, r.SignErrors = c.fixedRate(ctx, cfg.Rate, cfg.Duration, "/v1/sign", func(i int) string {
		return fmt.Sprintf(`{"payload":{"run":%q,"i":%d}}`, tag, i)
	})
	r.Signed = len(signLat)
	r.SignP50, r.SignP99 = percentile(signLat, 50), percentile(signLat, 99)
	got, err := sink.of(ctx, tag, r.Signed, time.Minute)
	if err != nil {
		return nil, fmt.Errorf("latency run: %w", err)
	}
	var lat, fromReq []time.Duration
	for _, e := range got {
		lat = append(lat, e.at.Sub(e.signedAt))
		fromReq = append(fromReq, e.at.Sub(e.reqAt))
	}
	r.Delivered = len(lat)
	r.P50, r.P99, r.Max = percentile(lat, 50), percentile(lat, 99), percentile(lat, 100)
	r.FromReceivedP50 = percentile(fromReq, 50)

	// Throughput: bulk sign jobs, each line a receipt.signed event.
	for _, n := range []int{min(smallBurst, cfg.Events), cfg.Events} {
		tag := sink.start(fmt.Sprintf("burst%d", n))
		var in bytes.Buffer
		for i := 0; i < n; i++ {
			fmt.Fprintf(&in, `{"run":%q,"i":%d}`+"\n", tag, i)
		}
		submitted := time.Now()
		receipts, err := c.job(ctx, "sign", in.Bytes(), n)
		if err != nil {
			return nil, fmt.Errorf("webhook burst: %w", err)
		}
		if r.Alg, err = receiptsAlg(receipts[:1]); err != nil {
			return nil, err
		}
		got, err := sink.of(ctx, tag, n, 5*time.Minute)
		if err != nil {
			return nil, fmt.Errorf("webhook burst of %d: %w", n, err)
		}
		first, last := got[0].at, got[0].at
		for _, e := range got {
			first, last = minTime(first, e.at), maxTime(last, e.at)
		}
		r.Bursts = append(r.Bursts, Burst{Events: len(got), Rate: float64(len(got)) / last.Sub(first).Seconds(), Total: last.Sub(submitted)})
		if n == cfg.Events {
			break
		}
	}
	sink.mu.Lock()
	r.Duplicates, r.BadSignatures = sink.dups, sink.bad
	sink.mu.Unlock()
	return r, nil
}

// Print writes the figures in the style of Report.Print.
func (r *WebhookReport) Print(w io.Writer) {
	fmt.Fprintf(w, "== %s, %s receipts\n", r.Label, r.Alg)
	fmt.Fprint(w, "raw (this run, all cores):")
	for _, alg := range Algs {
		fmt.Fprintf(w, " %s sign %.0f/s, verify %.0f/s;", Curve(alg), r.Raw[alg].Sign, r.Raw[alg].Verify)
	}
	fmt.Fprintln(w)
	raw, c := r.Raw[r.Alg], Curve(r.Alg)
	verdict := func(d, target time.Duration) string {
		if d < target {
			return "under the " + target.String() + " target"
		}
		return "OVER the " + target.String() + " target"
	}
	round := func(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }
	fmt.Fprintf(w, "webhooks at %d signs/s for %s: %d of %d signed receipts delivered; receipt signed -> webhook received p50 %v (%s)  p99 %v (%s)  max %v\n",
		r.Rate, r.Duration, r.Delivered, r.Signed, round(r.P50), verdict(r.P50, 50*time.Millisecond), round(r.P99), verdict(r.P99, 250*time.Millisecond), round(r.Max))
	fmt.Fprintf(w, "             (API request received -> webhook received p50 %v; POST /v1/sign p50 %v p99 %v, errors %d)\n",
		round(r.FromReceivedP50), round(r.SignP50), round(r.SignP99), r.SignErrors)
	for _, b := range r.Bursts {
		fmt.Fprintf(w, "webhook burst: %6d receipt.signed events of one bulk sign job to one endpoint: %6.0f deliveries/s  (%.3f x raw %s sign); the last delivered %v after the job was submitted\n",
			b.Events, b.Rate, b.Rate/raw.Sign, c, b.Total.Round(time.Millisecond))
	}
	fmt.Fprintf(w, "webhook checks: %d duplicate deliveries, %d signatures that did not verify\n", r.Duplicates, r.BadSignatures)
}

func waitFor(ctx context.Context, limit time.Duration, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("gave up after %s", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
