//go:build integration

package main

import (
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// TestTransparencyLog: on real Kafka, ClickHouse and SoftHSM2, every
// receipt signed is in the log within seconds, its proof checks offline
// against the checkpoint the HSM's Ed25519 key signed, an altered proof or
// another receipt does not, another organization gets no proof of it, a
// bulk job's receipts all land, and a monitor follows the log growing.
func TestTransparencyLog(t *testing.T) {
	module, token := testenv.PKCS11(t) // before newE2E clears them for its key ring
	e := newE2E(t, "")
	var b [5]byte
	rand.Read(b[:])
	label, origin := fmt.Sprintf("log-%x", b), "test.certnode/receipts"
	hsm := []string{"--pkcs11-module", module, "--token", token, "--label", label}
	if r := certnode(t, "", append([]string{"keys", "generate", "--alg", "EdDSA"}, hsm...)...); r.code != 0 {
		t.Fatalf("keys generate: %+v", r)
	}
	r := certnode(t, "", append([]string{"log", "key", "--origin", origin}, hsm...)...)
	if r.code != 0 || !strings.HasPrefix(r.stdout, origin+"+") {
		t.Fatalf("log key: %+v", r)
	}
	vkey := strings.TrimSpace(r.stdout)

	// A second organization, B, on the same deployment.
	keyB, _ := tenants.GenerateKey()
	tenFile := filepath.Join(e.dir, "tenants.json")
	if err := writeJSONFile(tenFile, tenants.File{Tenants: []tenants.Tenant{
		{ID: e.tenant, APIKeyHashes: []string{tenants.HashKey(e.apiKey)}},
		{ID: e.tenant + "-b", APIKeyHashes: []string{tenants.HashKey(keyB)}}}}); err != nil {
		t.Fatal(err)
	}
	logAddr := freeAddr(t)
	e.start("log", append([]string{"log", "serve", "--dir", filepath.Join(e.dir, "translog"), "--http", logAddr, "--origin", origin}, hsm...)...)
	e.worker()
	e.sink()
	e.ingest("--log", "http://"+logAddr, "--log-key", vkey)

	// Single receipts, each timed from its signing to its proof.
	const n = 20
	var lat []time.Duration
	var ids []string
	dir := t.TempDir()
	for i := range n {
		code, body := e.do("POST", "/v1/sign", "application/json", fmt.Sprintf(`{"payload":{"n":%d}}`, i))
		signed := time.Now()
		var rc struct {
			ReceiptID string `json:"receipt_id"`
		}
		if code != 200 || json.Unmarshal([]byte(body), &rc, json.RejectUnknownMembers(false)) != nil {
			t.Fatalf("sign: %d %s", code, body)
		}
		proof := waitProof(t, e, rc.ReceiptID, 30*time.Second)
		lat = append(lat, time.Since(signed))
		ids = append(ids, rc.ReceiptID)
		if i < 3 { // offline, with the CLI
			rf, pf := filepath.Join(dir, rc.ReceiptID+".json"), filepath.Join(dir, rc.ReceiptID+".proof")
			os.WriteFile(rf, []byte(body), 0o600)
			os.WriteFile(pf, []byte(proof), 0o600)
			v := certnode(t, "", "verify", "--jwks", e.jwksFile, "--receipt", rf, "--proof", pf, "--log-key", vkey)
			if v.code != 0 || !strings.Contains(v.stdout, "log: leaf ") || !strings.Contains(v.stdout, origin) {
				t.Fatalf("verify --proof: %+v", v)
			}
			if i == 0 {
				checkBadProofs(t, e, rf, pf, proof, vkey, dir)
			}
		}
	}
	slices.Sort(lat)
	t.Logf("signed -> proof with a signed checkpoint, %d receipts: p50 %v, p99 %v (max)", n, lat[n/2], lat[n-1])

	// B gets no proof of A's receipt: the answer for an unknown one.
	other := func(path string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+e.http+path, nil)
		req.Header.Set("Authorization", "Bearer "+keyB)
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, asB := other("/v1/receipts/" + ids[0] + "/proof")
	unknown := strings.Repeat("A", 43)
	code2, unknownB := other("/v1/receipts/" + unknown + "/proof")
	if code != 404 || code2 != 404 || strings.ReplaceAll(asB, ids[0], unknown) != unknownB {
		t.Fatalf("B on A's proof: %d %s; on an unknown one: %d %s", code, asB, code2, unknownB)
	}

	// A monitor follows the log while a bulk job's receipts land.
	state := filepath.Join(dir, "monitor.checkpoint")
	mon := e.start("monitor", "log", "monitor", "--url", "http://"+e.http, "--log-key", vkey, "--state", state, "--interval", "200ms")
	before := logSize(t, e)
	lines := make([]string, 2000)
	for i := range lines {
		lines[i] = fmt.Sprintf(`{"bulk":%d}`, i)
	}
	start := time.Now()
	job := e.submitJob("sign", lines)
	testenv.WaitFor(t, "the job is done", 120*time.Second, func() (bool, string) {
		s := e.jobStatus(job)
		return s.State == "done", fmt.Sprint(s)
	})
	signedIn := time.Since(start)
	testenv.WaitFor(t, "the log holds the job's receipts", 60*time.Second, func() (bool, string) {
		size := logSize(t, e)
		return size >= before+uint64(len(lines)), fmt.Sprintf("size %d, before %d", size, before)
	})
	loggedIn := time.Since(start)
	t.Logf("a bulk job of %d: signed in %v (%.0f/s), all in a signed checkpoint in %v (%.0f/s)", len(lines), signedIn,
		float64(len(lines))/signedIn.Seconds(), loggedIn, float64(len(lines))/loggedIn.Seconds())
	testenv.WaitFor(t, "the monitor checked the grown tree", 20*time.Second, func() (bool, string) {
		out := mon.output()
		return strings.Contains(out, "consistent=true") && strings.Contains(out, "size="+strconv.FormatUint(logSize(t, e), 10)), out
	})
	select {
	case <-mon.done:
		t.Fatalf("the monitor stopped: %s", mon.output())
	default:
	}
	if raw, err := os.ReadFile(state); err != nil || !strings.HasPrefix(string(raw), origin+"\n") {
		t.Fatalf("the monitor's state: %q %v", raw, err)
	}
}

// waitProof polls a receipt's proof until the log has it.
func waitProof(t *testing.T, e *e2e, id string, limit time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		code, body := e.do("GET", "/v1/receipts/"+id+"/proof", "", "")
		if code == 200 {
			return body
		}
		if (code != 404 && code != 503) || time.Now().After(deadline) {
			t.Fatalf("proof of %s: %d %s", id, code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkBadProofs: verify --proof refuses an altered proof, a proof of
// another leaf, and a checkpoint under another key.
func checkBadProofs(t *testing.T, e *e2e, receiptFile, proofFile, proof, vkey, dir string) {
	t.Helper()
	var p schemas.InclusionProof
	json.Unmarshal([]byte(proof), &p, json.RejectUnknownMembers(false))
	write := func(name string, mod func(*schemas.InclusionProof)) string {
		q := p
		q.Hashes = slices.Clone(p.Hashes)
		mod(&q)
		b, _ := json.Marshal(q)
		f := filepath.Join(dir, name)
		os.WriteFile(f, b, 0o600)
		return f
	}
	for name, f := range map[string]string{
		"another leaf":      write("leaf.proof", func(q *schemas.InclusionProof) { q.LeafIndex++ }),
		"another tree size": write("size.proof", func(q *schemas.InclusionProof) { q.TreeSize++ }),
		"an altered checkpoint": write("cp.proof", func(q *schemas.InclusionProof) {
			q.Checkpoint = strings.Replace(q.Checkpoint, "\n"+strconv.FormatUint(q.TreeSize, 10)+"\n", "\n"+strconv.FormatUint(q.TreeSize+1, 10)+"\n", 1)
		}),
	} {
		if v := certnode(t, "", "verify", "--jwks", e.jwksFile, "--receipt", receiptFile, "--proof", f, "--log-key", vkey); v.code != 1 || !strings.Contains(v.stdout, "log: invalid") {
			t.Errorf("verify --proof with %s: %+v", name, v)
		}
	}
	if len(p.Hashes) > 0 {
		f := write("hash.proof", func(q *schemas.InclusionProof) { q.Hashes[0] = strings.Repeat("A", 43) + "=" })
		if v := certnode(t, "", "verify", "--jwks", e.jwksFile, "--receipt", receiptFile, "--proof", f, "--log-key", vkey); v.code != 1 {
			t.Errorf("verify --proof with an altered hash: %+v", v)
		}
	}
	otherKey := "test.certnode/receipts+01234567+AcAHnbnq6TUSxYWIavFxnOVqYS3MOc4LEA5ADOxd9JAb"
	if v := certnode(t, "", "verify", "--jwks", e.jwksFile, "--receipt", receiptFile, "--proof", proofFile, "--log-key", otherKey); v.code == 0 {
		t.Errorf("verify --proof with another log's key: %+v", v)
	}
}

// logSize is the tree size of the log's latest checkpoint.
func logSize(t *testing.T, e *e2e) uint64 {
	t.Helper()
	code, body := e.do("GET", "/v1/log/checkpoint", "", "")
	lines := strings.Split(body, "\n")
	if code != 200 || len(lines) < 3 {
		return 0
	}
	n, _ := strconv.ParseUint(lines[1], 10, 64)
	return n
}
