package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/certnode/certnode/schemas"
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
	Alg                      string         // of the receipts the bulk sign job returned
	Raw                      map[string]Raw // per algorithm, this run
	JobSign, JobVerify       float64        // receipts/s through bulk jobs, end to end
	SignP50, SignP99         time.Duration
	VerifyP50, VerifyP99     time.Duration
	SignErrors, VerifyErrors int
	Rate                     int
	// Logged is the rate at which the bulk sign job's receipts were all in
	// a signed checkpoint of the transparency log, from the job's start;
	// LogP50 and LogP99 time single receipts from their signing to such a
	// checkpoint. Zero when the API serves no log.
	Logged         float64
	LogLag         time.Duration // from the job's last result to its last receipt in a checkpoint
	LogP50, LogP99 time.Duration
}

// Algs are the receipt algorithms, in the order their figures are printed.
var Algs = []string{schemas.AlgES256, schemas.AlgEdDSA}

// Curve names alg's key type.
func Curve(alg string) string {
	if alg == schemas.AlgEdDSA {
		return "Ed25519"
	}
	return "P-256"
}

// Raw is one algorithm's crypto limit on this machine: sign and verify
// operations per second on all cores.
type Raw struct{ Sign, Verify float64 }

// Of returns the sign or the verify rate.
func (r Raw) Of(op string) float64 {
	if op == "verify" {
		return r.Verify
	}
	return r.Sign
}

// MeasureRaw measures the sign and verify rates of every algorithm in Algs
// on all cores, straight on crypto/ecdsa and crypto/ed25519, for d per
// operation. The time is cut into rounds that take the algorithms in turn,
// so that a noisy neighbour weighs on both alike and their ratio holds.
func MeasureRaw(d time.Duration) map[string]Raw {
	const rounds = 8
	ops := make(map[string][2]func(), len(Algs))
	counts := make(map[string]*[2]int64, len(Algs))
	for _, alg := range Algs {
		sign, verify := rawOps(alg)
		ops[alg], counts[alg] = [2]func(){sign, verify}, new([2]int64)
	}
	for range rounds {
		for _, alg := range Algs {
			for i, op := range ops[alg] {
				counts[alg][i] += count(op, d/rounds)
			}
		}
	}
	m := make(map[string]Raw, len(Algs))
	for _, alg := range Algs {
		n := counts[alg]
		m[alg] = Raw{Sign: float64(n[0]) / d.Seconds(), Verify: float64(n[1]) / d.Seconds()}
	}
	return m
}

// rawOps sign and verify the same 32 bytes with a fresh key of alg: the
// digest an ES256 key signs, the message an Ed25519 key signs.
func rawOps(alg string) (sign, verify func()) {
	msg := sha256.Sum256([]byte("certnode"))
	if alg == schemas.AlgEdDSA {
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		sig := ed25519.Sign(priv, msg[:])
		return func() { ed25519.Sign(priv, msg[:]) }, func() { ed25519.Verify(pub, msg[:], sig) }
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sig, _ := ecdsa.SignASN1(rand.Reader, key, msg[:])
	return func() { ecdsa.SignASN1(rand.Reader, key, msg[:]) }, func() { ecdsa.VerifyASN1(&key.PublicKey, msg[:], sig) }
}

// count runs op on every core for d and returns how many times it ran.
func count(op func(), d time.Duration) int64 {
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
	return n.Load()
}

// Load runs the bulk-job throughput and fixed-rate latency measurements.
func Load(ctx context.Context, cfg LoadConfig) (*Report, error) {
	r := &Report{Label: cfg.Label, Rate: cfg.Rate}
	r.Raw = MeasureRaw(time.Second)
	c := &client{base: strings.TrimRight(cfg.BaseURL, "/"), key: cfg.APIKey, http: &http.Client{Timeout: 5 * time.Minute}}

	var in bytes.Buffer
	for i := 0; i < cfg.JobLines; i++ {
		fmt.Fprintf(&in, `{"bench":true,"i":%d,"tenant_ref":"acct-%d","amount":%d.25,"items":[{"sku":"A-1","qty":2}]}`+"\n", i, i%97, i)
	}
	logged, hasLog := c.logSize(ctx)
	start := time.Now()
	receipts, err := c.job(ctx, "sign", in.Bytes(), cfg.JobLines)
	if err != nil {
		return nil, fmt.Errorf("sign job: %w", err)
	}
	r.JobSign = float64(cfg.JobLines) / time.Since(start).Seconds()
	if hasLog {
		done := time.Now()
		if err := c.waitLogged(ctx, logged+uint64(cfg.JobLines), 2*time.Minute); err != nil {
			return nil, err
		}
		r.Logged, r.LogLag = float64(cfg.JobLines)/time.Since(start).Seconds(), time.Since(done)
		if r.LogP50, r.LogP99, err = c.logLatency(ctx, 20); err != nil {
			return nil, err
		}
	}
	if r.Alg, err = receiptsAlg(receipts); err != nil {
		return nil, fmt.Errorf("sign job: %w", err)
	}

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

// Print writes the figures, each throughput next to its ratio to the raw
// rate of its receipts' algorithm measured in the same run.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "== %s, %s receipts\n", r.Label, r.Alg)
	fmt.Fprint(w, "raw (this run, all cores):")
	for _, alg := range Algs {
		fmt.Fprintf(w, " %s sign %.0f/s, verify %.0f/s;", Curve(alg), r.Raw[alg].Sign, r.Raw[alg].Verify)
	}
	es, ed := r.Raw[schemas.AlgES256], r.Raw[schemas.AlgEdDSA]
	fmt.Fprintf(w, " Ed25519/P-256: sign %.2fx, verify %.2fx\n", ed.Sign/es.Sign, ed.Verify/es.Verify)
	raw, c := r.Raw[r.Alg], Curve(r.Alg)
	fmt.Fprintf(w, "bulk sign   : %9.0f receipts/min  (%.3f x raw %s sign)\n", r.JobSign*60, r.JobSign/raw.Sign, c)
	fmt.Fprintf(w, "bulk verify : %9.0f receipts/min  (%.3f x raw %s verify)\n", r.JobVerify*60, r.JobVerify/raw.Verify, c)
	if r.Logged > 0 {
		fmt.Fprintf(w, "transparency log: the bulk job's receipts all in a signed checkpoint %v after its last result (%.0f receipts/min from its start, %.3f x the bulk sign rate); one receipt from its signing to a checkpoint: p50 %v  p99 %v\n",
			r.LogLag.Round(time.Millisecond), r.Logged*60, r.Logged/r.JobSign, r.LogP50.Round(time.Millisecond), r.LogP99.Round(time.Millisecond))
	}
	fmt.Fprintf(w, "POST /v1/sign   at %d req/s: p50 %v  p99 %v  errors %d\n", r.Rate, r.SignP50.Round(10*time.Microsecond), r.SignP99.Round(10*time.Microsecond), r.SignErrors)
	fmt.Fprintf(w, "POST /v1/verify at %d req/s: p50 %v  p99 %v  errors %d\n", r.Rate, r.VerifyP50.Round(10*time.Microsecond), r.VerifyP99.Round(10*time.Microsecond), r.VerifyErrors)
}

// receiptsAlg is the algorithm in the protected headers of receipts, which
// must all name the same one (the key ring did not switch mid-job).
func receiptsAlg(receipts [][]byte) (string, error) {
	alg := ""
	for i, raw := range receipts {
		var rc struct {
			Protected string `json:"protected"`
		}
		var hdr struct {
			Alg string `json:"alg"`
		}
		err := json.Unmarshal(raw, &rc, json.RejectUnknownMembers(false))
		var prot []byte
		if err == nil {
			prot, err = base64.RawURLEncoding.DecodeString(rc.Protected)
		}
		if err == nil {
			err = json.Unmarshal(prot, &hdr, json.RejectUnknownMembers(false))
		}
		switch {
		case err != nil:
			return "", fmt.Errorf("receipt %d: %w", i, err)
		case i == 0:
			alg = hdr.Alg
		case hdr.Alg != alg:
			return "", fmt.Errorf("receipt %d is %s, receipt 0 %s: the key ring switched algorithm mid-job", i, hdr.Alg, alg)
		}
	}
	if !slices.Contains(Algs, alg) {
		return "", fmt.Errorf("receipts signed with %q, want one of %v", alg, Algs)
	}
	return alg, nil
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

// logSize is the tree size of the log's latest checkpoint; false when the
// API serves no log.
func (c *client) logSize(ctx context.Context) (uint64, bool) {
	resp, err := c.req(ctx, "GET", "/v1/log/checkpoint", "", nil)
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	lines := strings.Split(string(b), "\n")
	if resp.StatusCode != 200 || len(lines) < 3 {
		return 0, false
	}
	n, err := strconv.ParseUint(lines[1], 10, 64)
	return n, err == nil
}

// waitLogged waits until the log's checkpoint holds size leaves.
func (c *client) waitLogged(ctx context.Context, size uint64, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if n, _ := c.logSize(ctx); n >= size {
			return nil
		}
		if time.Now().After(deadline) {
			n, _ := c.logSize(ctx)
			return fmt.Errorf("the log holds %d leaves after %v, want %d", n, limit, size)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// logLatency signs n receipts one at a time and times each from its
// answer to the first checkpoint that holds it.
func (c *client) logLatency(ctx context.Context, n int) (p50, p99 time.Duration, err error) {
	var lat []time.Duration
	for i := range n {
		before, _ := c.logSize(ctx)
		resp, err := c.req(ctx, "POST", "/v1/sign", "application/json", strings.NewReader(fmt.Sprintf(`{"payload":{"log_latency":%d}}`, i)))
		if err != nil {
			return 0, 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		signed := time.Now()
		if resp.StatusCode != 200 {
			return 0, 0, fmt.Errorf("sign: %d", resp.StatusCode)
		}
		if err := c.waitLogged(ctx, before+1, time.Minute); err != nil {
			return 0, 0, err
		}
		lat = append(lat, time.Since(signed))
	}
	return percentile(lat, 50), percentile(lat, 99), nil
}
