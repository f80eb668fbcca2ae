package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// LoadConfig drives a running CertNode API.
type LoadConfig struct {
	BaseURL  string // http://127.0.0.1:8080
	APIKey   string
	JobLines int           // lines per bulk job
	Rate     int           // requests/s for the latency runs
	Duration time.Duration // of each latency run
	Label    string        // printed with the figures
}

// Report holds one run's figures; Print writes them.
type Report struct {
	Label                    string
	RawSign, RawVerify       float64 // ECDSA P-256 ops/s on all cores, this run
	JobSign, JobVerify       float64 // receipts/s through bulk jobs, end to end
	SignP50, SignP99         time.Duration
	VerifyP50, VerifyP99     time.Duration
	SignErrors, VerifyErrors int
	Rate                     int
}

// RawECDSA measures P-256 sign and verify rates on all cores for d each.
func RawECDSA(d time.Duration) (sign, verify float64) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	digest := sha256.Sum256([]byte("certnode"))
	sig, _ := ecdsa.SignASN1(rand.Reader, key, digest[:])
	measure := func(op func()) float64 {
		var n atomic.Int64
		stop := time.Now().Add(d)
		var wg sync.WaitGroup
		for range runtime.GOMAXPROCS(0) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(stop) {
					op()
					n.Add(1)
				}
			}()
		}
		wg.Wait()
		return float64(n.Load()) / d.Seconds()
	}
	sign = measure(func() { ecdsa.SignASN1(rand.Reader, key, digest[:]) })
	verify = measure(func() { ecdsa.VerifyASN1(&key.PublicKey, digest[:], sig) })
	return sign, verify
}

// Load runs the bulk-job throughput and fixed-rate latency measurements.
func Load(ctx context.Context, cfg LoadConfig) (*Report, error) {
	r := &Report{Label: cfg.Label, Rate: cfg.Rate}
	r.RawSign, r.RawVerify = RawECDSA(time.Second)
	c := &client{base: strings.TrimRight(cfg.BaseURL, "/"), key: cfg.APIKey, http: &http.Client{Timeout: 5 * time.Minute}}

	var in bytes.Buffer
	for i := 0; i < cfg.JobLines; i++ {
		fmt.Fprintf(&in, `{"bench":true,"i":%d,"tenant_ref":"acct-%d","amount":%d.25,"items":[{"sku":"A-1","qty":2}]}`+"\n", i, i%97, i)
	}
	start := time.Now()
	receipts, err := c.job(ctx, "sign", in.Bytes(), cfg.JobLines)
	if err != nil {
		return nil, fmt.Errorf("sign job: %w", err)
	}
	r.JobSign = float64(cfg.JobLines) / time.Since(start).Seconds()

	start = time.Now()
	if _, err := c.job(ctx, "verify", bytes.Join(receipts, []byte("\n")), cfg.JobLines); err != nil {
		return nil, fmt.Errorf("verify job: %w", err)
	}
	r.JobVerify = float64(cfg.JobLines) / time.Since(start).Seconds()

	var signLat []time.Duration
	signLat, r.SignErrors = c.fixedRate(ctx, cfg.Rate, cfg.Duration, "/v1/sign", func(i int) string {
		return fmt.Sprintf(`{"payload":{"latency":true,"i":%d}}`, i)
	})
	var verifyLat []time.Duration
	verifyLat, r.VerifyErrors = c.fixedRate(ctx, cfg.Rate, cfg.Duration, "/v1/verify", func(i int) string {
		return `{"receipt":` + string(receipts[i%len(receipts)]) + `}`
	})
	r.SignP50, r.SignP99 = percentile(signLat, 50), percentile(signLat, 99)
	r.VerifyP50, r.VerifyP99 = percentile(verifyLat, 50), percentile(verifyLat, 99)
	return r, nil
}

// Print writes the figures, each throughput next to its same-run ratio.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "== %s\n", r.Label)
	fmt.Fprintf(w, "raw ECDSA P-256 (this run, all cores): sign %.0f/s, verify %.0f/s\n", r.RawSign, r.RawVerify)
	fmt.Fprintf(w, "bulk sign   : %9.0f receipts/min  (%.3f x raw sign)\n", r.JobSign*60, r.JobSign/r.RawSign)
	fmt.Fprintf(w, "bulk verify : %9.0f receipts/min  (%.3f x raw verify)\n", r.JobVerify*60, r.JobVerify/r.RawVerify)
	fmt.Fprintf(w, "POST /v1/sign   at %d req/s: p50 %v  p99 %v  errors %d\n", r.Rate, r.SignP50.Round(10*time.Microsecond), r.SignP99.Round(10*time.Microsecond), r.SignErrors)
	fmt.Fprintf(w, "POST /v1/verify at %d req/s: p50 %v  p99 %v  errors %d\n", r.Rate, r.VerifyP50.Round(10*time.Microsecond), r.VerifyP99.Round(10*time.Microsecond), r.VerifyErrors)
}

func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

type client struct {
	base, key string
	http      *http.Client
}

func (c *client) req(ctx context.Context, method, path, ctype string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	return c.http.Do(req)
}

// job submits NDJSON and reads the results stream to its end; for sign
// jobs it returns the receipts.
func (c *client) job(ctx context.Context, kind string, ndjson []byte, lines int) ([][]byte, error) {
	resp, err := c.req(ctx, "POST", "/v1/jobs?type="+kind, "application/x-ndjson", bytes.NewReader(ndjson))
	if err != nil {
		return nil, err
	}
	var acc struct {
		JobID         string `json:"job_id"`
		LinesAccepted int    `json:"lines_accepted"`
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 202 || json.Unmarshal(body, &acc, json.RejectUnknownMembers(false)) != nil || acc.LinesAccepted != lines {
		return nil, fmt.Errorf("submit: %d %s", resp.StatusCode, body)
	}
	resp, err = c.req(ctx, "GET", "/v1/jobs/"+acc.JobID+"/results", "", nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out [][]byte
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		if kind == "sign" {
			var r struct {
				Receipt jsontext.Value `json:"receipt"`
			}
			if err := json.Unmarshal(sc.Bytes(), &r, json.RejectUnknownMembers(false)); err != nil {
				return nil, err
			}
			out = append(out, slices.Clone(r.Receipt))
		}
	}
	if n != lines {
		return nil, fmt.Errorf("results stream had %d lines, want %d (%v)", n, lines, sc.Err())
	}
	return out, nil
}

// fixedRate sends requests at rate/s for d (an open loop: a slow answer
// does not delay the next request) and returns the latencies of successes.
func (c *client) fixedRate(ctx context.Context, rate int, d time.Duration, path string, body func(int) string) ([]time.Duration, int) {
	var mu sync.Mutex
	var lat []time.Duration
	var errs int
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	total := int(d.Seconds() * float64(rate))
	for i := 0; i < total; i++ {
		<-tick.C
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			start := time.Now()
			resp, err := c.req(ctx, "POST", path, "application/json", strings.NewReader(body(i)))
			ok := err == nil && resp.StatusCode == 200
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			mu.Lock()
			defer mu.Unlock()
			if ok {
				lat = append(lat, time.Since(start))
			} else {
				errs++
			}
		}(i)
	}
	wg.Wait()
	return lat, errs
}
