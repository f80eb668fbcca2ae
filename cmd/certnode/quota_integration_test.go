//go:build integration

package main

import (
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// Two ingest processes share one coordinator (and Kafka and a worker):
// a tenant limited to 100 requests/s with a burst of 50, sending 400/s
// for 10 s over both, has 100/s x 10 s + 50 admitted in total, within 10%;
// another tenant, limited far above what it sends at the same time, has
// every request admitted; a
// tenant past its monthly allowance is refused with
// monthly_quota_exceeded on both nodes, singly and in bulk; a tenant
// allowed one job at a time, with one uploading through a node, is
// refused another through the other node.
func TestE2EClusterWideQuotas(t *testing.T) {
	e := newE2E(t, "")
	const admin, node = "admin-token-quota-0123456789", "node-token-quota-0123456789"
	e.env = append(e.env, "CERTNODE_ADMIN_TOKEN="+admin, "CERTNODE_NODE_TOKEN="+node, "CERTNODE_TENANTS_FILE=")
	caddr := freeAddr(t)
	e.start("coordinator", "coordinator", "--id", "c1", "--raft", freeAddr(t), "--http", caddr, "--data", t.TempDir(), "--bootstrap")
	call := func(method, path, body string) (int, string) {
		return request(method, "http://"+caddr+path, admin, "application/json", body)
	}
	testenv.WaitFor(t, "the coordinator leads", 30*time.Second, func() (bool, string) {
		code, body := call("GET", "/v1/admin/cluster", "")
		return code == 200 && strings.Contains(body, `"state":"Leader"`), body
	})
	const rate, burst, monthly = 100, 50, 20
	newOrg := func(name, limits string) (org, key string) {
		org = name + "-" + strings.TrimPrefix(e.tenant, "tenant-")
		if code, body := call("POST", "/v1/admin/orgs", `{"id":"`+org+`","name":"`+name+`","limits":`+limits+`}`); code != 201 {
			t.Fatalf("org %s: %d %s", org, code, body)
		}
		code, body := call("POST", "/v1/admin/orgs/"+org+"/keys", `{"scopes":["sign","jobs","read"]}`)
		var k struct {
			Key string `json:"key"`
		}
		if code != 201 || json.Unmarshal([]byte(body), &k, json.RejectUnknownMembers(false)) != nil {
			t.Fatalf("key of %s: %d %s", org, code, body)
		}
		return org, k.Key
	}
	limited, limitedKey := newOrg("limited", fmt.Sprintf(`{"rate_limit":%d,"burst":%d}`, rate, burst))
	_, otherKey := newOrg("other", `{"rate_limit":1000,"burst":1000}`) // limited too, far above its traffic
	_, cappedKey := newOrg("capped", fmt.Sprintf(`{"monthly_receipts":%d}`, monthly))
	_, oneJobKey := newOrg("onejob", `{"max_concurrent_jobs":1}`)

	// The worker takes producer keys from a tenants file; the requests
	// ingest writes it authenticates by their MAC.
	e.start("worker", "worker", "--metrics", freeAddr(t), "--concurrency", "4", "--tenants", filepath.Join(e.dir, "tenants.json"))
	addrs := []string{freeAddr(t), freeAddr(t)}
	for i, a := range addrs {
		p := e.start(fmt.Sprintf("ingest-%d", i), "ingest", "--http", a, "--coordinator", caddr)
		testenv.WaitFor(t, "ingest ready", 60*time.Second, func() (bool, string) {
			code, body := request("GET", "http://"+a+"/readyz", "", "", "")
			return code == 200, fmt.Sprint(code, body, p.output())
		})
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 128}}
	sign := func(addr, key string, n int) (int, http.Header, string) {
		req, _ := http.NewRequest("POST", "http://"+addr+"/v1/sign", strings.NewReader(`{"payload":{"n":`+strconv.Itoa(n)+`}}`))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(b)
	}
	// A new coordinator leader lends nothing new for a lease's TTL (it
	// cannot know what a predecessor lent): wait until both nodes admit,
	// then until the burst is whole again.
	for _, a := range addrs {
		testenv.WaitFor(t, "the limited tenant admitted", 20*time.Second, func() (bool, string) {
			code, _, body := sign(a, limitedKey, 0)
			return code == 200, fmt.Sprint(code, body)
		})
	}
	time.Sleep(2 * time.Second)

	// 400/s of the limited tenant and 40/s of the other, alternating
	// between the nodes, from a bounded pool of senders.
	const seconds, limitedRate, otherRate = 10, 400, 40
	type result struct {
		org    string
		node   int
		status int
		code   string
		retry  string
	}
	type job struct {
		at       time.Duration
		node, n  int
		org, key string
	}
	var jobs []job
	for i := range seconds * limitedRate {
		jobs = append(jobs, job{at: time.Duration(i) * time.Second / limitedRate, node: i % 2, n: i, org: "limited", key: limitedKey})
		if i%(limitedRate/otherRate) == 0 {
			jobs = append(jobs, job{at: time.Duration(i) * time.Second / limitedRate, node: (i / 10) % 2, n: i, org: "other", key: otherKey})
		}
	}
	queue := make(chan job, len(jobs))
	results := make(chan result, len(jobs))
	var wg sync.WaitGroup
	var late atomic.Int64
	start := time.Now()
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range queue {
				time.Sleep(time.Until(start.Add(j.at)))
				if time.Since(start) > j.at+500*time.Millisecond {
					late.Add(1) // the senders fell behind the schedule
				}
				code, h, body := sign(addrs[j.node], j.key, j.n)
				r := result{org: j.org, node: j.node, status: code, retry: h.Get("Retry-After")}
				if code != 200 {
					var eb struct {
						Error struct {
							Code string `json:"code"`
						} `json:"error"`
					}
					json.Unmarshal([]byte(body), &eb, json.RejectUnknownMembers(false))
					r.code = eb.Error.Code
					if r.code == "" {
						r.code = body
					}
				}
				results <- r
			}
		}()
	}
	for _, j := range jobs {
		queue <- j
	}
	close(queue)
	wg.Wait()
	close(results)
	took := time.Since(start)
	admitted, otherAdmitted, otherSent := map[int]int{}, 0, 0
	for r := range results {
		switch {
		case r.org == "other":
			otherSent++
			if r.status == 200 {
				otherAdmitted++
			} else {
				t.Errorf("the other tenant was refused: %d %s", r.status, r.code)
			}
		case r.status == 200:
			admitted[r.node]++
		case r.status == 429 && r.code == "over_quota":
			if n, err := strconv.Atoi(r.retry); err != nil || n < 1 {
				t.Errorf("429 with Retry-After %q", r.retry)
			}
		default:
			t.Errorf("the limited tenant: %d %s", r.status, r.code)
		}
	}
	total := admitted[0] + admitted[1]
	want := float64(rate*seconds + burst)
	t.Logf("limited tenant (%d/s, burst %d): %d of %d requests admitted in %s (%d and %d on the two nodes); the limit allows %.0f: %+.1f%% (%+d); %d sends ran late",
		rate, burst, total, seconds*limitedRate, took.Round(time.Millisecond), admitted[0], admitted[1], want, 100*(float64(total)-want)/want, total-int(want), late.Load())
	t.Logf("other tenant: %d of %d admitted", otherAdmitted, otherSent)
	if float64(total) > 1.1*want || float64(total) < 0.9*want {
		t.Errorf("admitted %d; want %.0f within 10%%", total, want)
	}
	if late.Load() > int64(len(jobs)/20) {
		t.Errorf("%d of %d requests were sent over 0.5 s late: the load was not what the test says", late.Load(), len(jobs))
	}
	_, metrics := request("GET", "http://"+addrs[0]+"/metrics", "", "", "")
	if !strings.Contains(metrics, `certnode_quota_share{kind="rate",org="`+limited+`"}`) || !strings.Contains(metrics, `certnode_quota_requests_total{result="over_rate"}`) {
		t.Error("the quota metrics are missing from /metrics")
	}

	// The capped tenant, at 40 requests/s over both nodes: refused once its
	// 20 requests are used, on both nodes.
	capped := 0
	refusedOn := map[int]bool{}
	for i := 0; i < 200 && !(refusedOn[0] && refusedOn[1]); i++ {
		code, h, body := sign(addrs[i%2], cappedKey, i)
		switch {
		case code == 200:
			capped++
		case code == 429 && errorCode(t, body) == "monthly_quota_exceeded":
			if n, err := strconv.Atoi(h.Get("Retry-After")); err != nil || n < 1 || n > 31*24*3600 {
				t.Errorf("Retry-After %q for the month", h.Get("Retry-After"))
			}
			refusedOn[i%2] = true
		default:
			t.Fatalf("the capped tenant: %d %s", code, body)
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Logf("capped tenant (%d a month): %d admitted before both nodes refused", monthly, capped)
	if !refusedOn[0] || !refusedOn[1] || capped < monthly || capped > monthly+40 {
		t.Fatalf("capped tenant: %d admitted, refused on %v; want %d, and at most a second of its traffic more, then refusals on both",
			capped, refusedOn, monthly)
	}
	// A bulk job now has every line refused for the month.
	req, _ := http.NewRequest("POST", "http://"+addrs[1]+"/v1/jobs?type=sign", strings.NewReader("{\"n\":1}\n{\"n\":2}\n"))
	req.Header.Set("Authorization", "Bearer "+cappedKey)
	req.Header.Set("Content-Type", "application/x-ndjson")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var jb struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
		Job struct {
			Rejected []schemas.RejectedLine `json:"rejected"`
		} `json:"job"`
	}
	if json.UnmarshalRead(resp.Body, &jb, json.RejectUnknownMembers(false)) != nil || resp.StatusCode != 429 || jb.Error.Code != "monthly_quota_exceeded" ||
		len(jb.Job.Rejected) != 2 || jb.Job.Rejected[1].Code != "monthly_quota_exceeded" {
		t.Fatalf("a bulk job past the monthly allowance: %d %+v", resp.StatusCode, jb)
	}

	// Jobs at once count across the nodes: they share the jobs topic. A
	// probe that reaches the topic first swaps the roles: retry.
	for attempt := 1; ; attempt++ {
		pr, pw := io.Pipe()
		req, _ := http.NewRequest("POST", "http://"+addrs[0]+"/v1/jobs?type=sign", pr)
		req.Header.Set("Authorization", "Bearer "+oneJobKey)
		req.Header.Set("Content-Type", "application/x-ndjson")
		first := make(chan int, 1)
		go func() {
			resp, err := client.Do(req)
			if err != nil {
				first <- 0
				return
			}
			resp.Body.Close()
			first <- resp.StatusCode
		}()
		pw.Write([]byte("{\"n\":1}\n"))
		time.Sleep(500 * time.Millisecond) // the jobs topic carries the job to the other node
		code, body := request("POST", "http://"+addrs[1]+"/v1/jobs?type=sign", oneJobKey, "application/x-ndjson", "{\"n\":2}\n")
		pw.Close()
		held := <-first
		if code == 429 && errorCode(t, body) == "too_many_jobs" && held == 202 {
			break
		}
		if attempt == 3 || code != 202 {
			t.Fatalf("a second job through the other node: %d %s (the first: %d)", code, body, held)
		}
		time.Sleep(time.Second) // the probe's job finishes
	}
}
