//go:build integration

package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"math"
	mrand "math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// foreignReceipt is a well-formed receipt signed by a P-256 key no JWKS
// here publishes.
func foreignReceipt(t *testing.T, payload string) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwk, err := schemas.NewJWK(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	u, err := schemas.NewUnsigned(schemas.AlgES256, jwk.Thumbprint(), []byte(payload))
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(u.Input())
	r, s, err := ecdsa.Sign(rand.Reader, k, d[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	rc, err := u.Complete(sig)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(rc)
	return string(b)
}

// randomJSON is a JSON text of the kinds JCS must get right: numbers of
// every magnitude, keys that sort differently by UTF-16 and by code
// point, escapes.
func randomJSON(r *mrand.Rand, depth int) string {
	switch n := r.IntN(7); {
	case depth > 3 || n == 0:
		f := math.Float64frombits(r.Uint64())
		if math.IsNaN(f) || math.IsInf(f, 0) {
			f = float64(r.IntN(1000)) / 8
		}
		return strconv.FormatFloat(f, 'g', -1, 64)
	case n == 1:
		return strconv.FormatFloat(float64(r.Int64N(1<<60))*math.Pow10(r.IntN(50)-25), 'e', -1, 64)
	case n == 2:
		return []string{"true", "false", "null", `"\u00e9\n\u2028"`, `"\ud83d\ude00 <b>&"`, `"\u001f\/"`}[r.IntN(6)]
	case n == 3:
		parts := make([]string, r.IntN(4))
		for i := range parts {
			parts[i] = randomJSON(r, depth+1)
		}
		return "[" + strings.Join(parts, ",") + "]"
	default:
		keys := []string{"a", "B", "\u00e9", "\U0001F600", "\uff61", "\ue000", "10", "1", "", "aa"}
		r.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
		parts := make([]string, r.IntN(5))
		for i := range parts {
			k, _ := json.Marshal(keys[i])
			parts[i] = string(k) + ":" + randomJSON(r, depth+1)
		}
		return "{" + strings.Join(parts, ",") + "}"
	}
}

// TestVerifyPage drives the hosted verification page in Chromium against
// dev: a valid receipt (with its inclusion proof), a tampered one and a
// foreign one, each pasted and each given as a file (input and drop); the
// page's JCS agrees with Go's on the RFC 8785 vectors and on random JSON;
// and the browser sends nothing but GETs of the page, its assets, the
// JWKS and the log's proof and key, none carrying the receipt.
func TestVerifyPage(t *testing.T) {
	e := startDev(t)
	payload := `{"order":42,"note":"caf\u00e9 \u2615 verified in the browser","amount":19.99,"big":1e21,"tiny":1e-7,"nested":{"b":[1,2],"a":null}}`
	code, valid := e.do("POST", "/v1/sign", e.key, "application/json", `{"payload":`+payload+`}`)
	if code != 200 {
		t.Fatalf("sign: %d %s", code, valid)
	}
	valid = strings.TrimSpace(valid)
	var rc schemas.Receipt
	if err := json.Unmarshal([]byte(valid), &rc); err != nil {
		t.Fatal(err)
	}
	tampered := strings.Replace(valid, `"order":42`, `"order":43`, 1)
	if tampered == valid {
		t.Fatalf("the payload was not found to tamper with: %s", valid)
	}
	foreign := foreignReceipt(t, payload)
	// The receipt is in a checkpoint before the page asks for its proof.
	testenv.WaitFor(t, "the receipt in the transparency log", 30*time.Second, func() (bool, string) {
		code, body := e.do("GET", "/v1/log/proof/"+rc.ReceiptID, "", "", "")
		return code == 200, body
	})

	b := newBrowser(t, 1100, 900)
	var mu sync.Mutex
	var sent []*network.Request
	if err := chromedp.Listen(b.ctx, func(ev any) {
		if r, ok := ev.(*network.EventRequestWillBeSent); ok {
			mu.Lock()
			sent = append(sent, r.Request)
			mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	b.do("network events", chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		_, err := chromedp.Call(ctx, network.Enable, network.EnableParams{})
		return err
	}))
	b.do("open the page", chromedp.Navigate(e.base+"/verify"), chromedp.WaitVisible(chromedp.CSS("#paste")))
	if !eval[bool](b, `document.getElementById('private').textContent.includes('never uploaded')`) {
		t.Fatal("the page does not say the receipt stays in the browser")
	}

	// The page's JCS is RFC 8785's, as Go's is.
	var vectors struct {
		Vectors []struct {
			Name string `json:"name"`
			In   string `json:"in"`
			Want string `json:"want"`
		} `json:"vectors"`
		Numbers []struct {
			Bits string `json:"bits"`
			Want string `json:"want"`
		} `json:"numbers"`
	}
	data, err := os.ReadFile(filepath.Join("..", "..", "schemas", "testdata", "jcs", "rfc8785.json"))
	if err != nil || json.Unmarshal(data, &vectors) != nil {
		t.Fatalf("the JCS vectors: %v", err)
	}
	var inputs []string
	for _, v := range vectors.Vectors {
		inputs = append(inputs, v.In)
	}
	for _, n := range vectors.Numbers {
		bits, _ := strconv.ParseUint(strings.TrimPrefix(n.Bits, "0x"), 16, 64)
		inputs = append(inputs, "["+strconv.FormatFloat(math.Float64frombits(bits), 'g', -1, 64)+"]")
	}
	rnd := mrand.New(mrand.NewPCG(1, 2))
	for range 300 {
		inputs = append(inputs, randomJSON(rnd, 0))
	}
	in, _ := json.Marshal(inputs)
	got := eval[[]string](b, `(() => { const out = []; for (const s of `+string(in)+`) { try { out.push(CertNodeVerify.jcs(s)); } catch (e) { out.push('error: ' + e.message); } } return out; })()`)
	for i, s := range inputs {
		want, err := schemas.Canonicalize([]byte(s))
		if err != nil {
			t.Fatalf("Go refuses %q: %v", s, err)
		}
		if got[i] != string(want) {
			t.Errorf("JCS of %q: the page %q, Go %q", s, got[i], want)
		}
	}
	for i, v := range vectors.Vectors {
		if got[i] != v.Want {
			t.Errorf("vector %s: the page %q, want %q", v.Name, got[i], v.Want)
		}
	}
	for i, n := range vectors.Numbers {
		if w := "[" + n.Want + "]"; got[len(vectors.Vectors)+i] != w {
			t.Errorf("number %s: the page %q, want %q", n.Bits, got[len(vectors.Vectors)+i], w)
		}
	}
	// What Go refuses the page refuses.
	for _, bad := range []string{`{"a":1,"a":2}`, `[1e400]`, `{"a":"\ud800"}`, `[01]`, `{"a":1,}`, `[1] x`} {
		if r := eval[string](b, `(() => { try { return CertNodeVerify.jcs(`+strconv.Quote(bad)+`); } catch (e) { return 'refused'; } })()`); r != "refused" {
			t.Errorf("the page accepts %s: %s", bad, r)
		}
		if _, err := schemas.Canonicalize([]byte(bad)); err == nil {
			t.Errorf("Go accepts %s", bad)
		}
	}

	result := `(() => { const r = document.getElementById('result'); return r.hidden ? '' : r.dataset.state + '/' + r.dataset.reason; })()`
	expect := func(how, name, want, reason string) {
		t.Helper()
		b.waitFor(how+" "+name, result+` === '`+want+`/`+reason+`'`, 15*time.Second)
	}
	clear := func() {
		eval[bool](b, `(() => { const r = document.getElementById('result'); r.hidden = true; r.dataset.state = ''; document.getElementById('paste').value = ''; return true; })()`)
	}
	paste := func(receipt string) {
		clear()
		b.do("paste", chromedp.SetValue(chromedp.CSS("#paste"), receipt), chromedp.Click(chromedp.CSS("#check")))
	}
	dir := t.TempDir()
	file := func(name, receipt string) {
		clear()
		p := filepath.Join(dir, name+".json")
		os.WriteFile(p, []byte(receipt), 0o600)
		b.do("choose "+p, chromedp.SetUploadFiles(chromedp.CSS("#file"), []string{p}))
	}
	drop := func(receipt string) {
		clear()
		eval[bool](b, `(() => { const dt = new DataTransfer(); dt.items.add(new File([`+strconv.Quote(receipt)+`], 'receipt.json', {type: 'application/json'}));
			document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true})); return true; })()`)
	}
	for how, give := range map[string]func(string){"pasted": paste, "dropped": drop} {
		give(valid)
		expect(how, "valid", "valid", "")
		give(tampered)
		expect(how, "tampered", "invalid", "payload_hash_mismatch")
		give(foreign)
		expect(how, "foreign", "unknown_key", "unknown_kid")
	}
	for name, r := range map[string]string{"valid": valid, "tampered": tampered, "foreign": foreign} {
		file(name, r)
		expect("chosen", name, map[string]string{"valid": "valid", "tampered": "invalid", "foreign": "unknown_key"}[name],
			map[string]string{"valid": "", "tampered": "payload_hash_mismatch", "foreign": "unknown_kid"}[name])
	}
	// A tampered receipt without its payload hash fails on the signature.
	var m map[string]any
	json.Unmarshal([]byte(tampered), &m)
	delete(m, "payload_jcs_sha256")
	noHash, _ := json.Marshal(m)
	paste(string(noHash))
	expect("pasted", "tampered without its hash", "invalid", "bad_signature")

	// The valid one shows its key, its signer and its inclusion proof.
	paste(valid)
	expect("pasted", "valid again", "valid", "")
	b.waitFor("the proof looked up", `['included', 'not_logged', 'unavailable', 'bad_proof'].includes((document.getElementById('log') || {dataset: {}}).dataset.state)`, 15*time.Second)
	if log := eval[string](b, `document.getElementById('log').dataset.state + ': ' + document.getElementById('log').textContent`); !strings.HasPrefix(log, "included") {
		t.Fatalf("the inclusion proof: %s", log)
	}
	shown := eval[map[string]string](b, `({kid: document.getElementById('kid').textContent, by: document.getElementById('signed-by').textContent,
		id: document.getElementById('receipt-id').textContent, log: document.getElementById('log').textContent})`)
	if shown["kid"] != rc.Kid || shown["id"] != rc.ReceiptID || !strings.HasPrefix(shown["by"], "the service") || !strings.Contains(shown["log"], "signature checked") {
		t.Fatalf("the page shows %v for receipt %s kid %s", shown, rc.ReceiptID, rc.Kid)
	}

	// Nothing but GETs of the page, its assets, the keys and the proof;
	// no request carries the receipt.
	mu.Lock()
	defer mu.Unlock()
	allowed := map[string]bool{"/verify": true, "/verify/assets/verify.js": true, "/verify/assets/verify.css": true, "/.well-known/jwks.json": true,
		"/v1/log/key": true, "/v1/log/proof/" + rc.ReceiptID: true}
	t.Logf("%d requests, %d JCS inputs checked", len(sent), len(inputs))
	if len(sent) < 5 {
		t.Fatalf("only %d requests recorded: the recorder is not working", len(sent))
	}
	for _, r := range sent {
		u, err := url.Parse(r.URL)
		if r.URL == "data:," {
			continue
		}
		if err != nil || r.Method != "GET" || r.HasPostData || !allowed[u.Path] || !strings.HasPrefix(r.URL, e.base) {
			t.Errorf("the page sent %s %s (post data %v)", r.Method, r.URL, r.HasPostData)
		}
		for _, secret := range []string{rc.Signature, "verified in the browser", "verified%20in", url.QueryEscape(rc.Signature)} {
			if strings.Contains(r.URL, secret) {
				t.Errorf("a request carries the receipt: %s", r.URL)
			}
		}
	}
}
