//go:build integration

package whsig_test

import (
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/certnode/certnode/internal/interop"
	"github.com/certnode/certnode/internal/whsig"
)

// Bodies as deliveries carry them: compact JSON, non-ASCII text, a
// trailing newline, and nothing at all.
var interopBodies = []string{
	`{"type":"receipt.signed","timestamp":"2026-01-02T03:04:05Z","data":{"receipt_id":"x1","payload":{"n":1e21}}}`,
	"{\"name\":\"Zoë ✓ \U0001F600\",\"s\":\"\\u2028 \\\"q\\\"\"}\n",
	``,
}

func secretOfLen(n int) whsig.Secret {
	key := make([]byte, n)
	for i := range key {
		key[i] = byte(i*7 + 3)
	}
	s, err := whsig.ParseSecret("whsec_" + base64.StdEncoding.EncodeToString(key))
	if err != nil {
		panic(err)
	}
	return s
}

// TestWebhookInteropStandardLibraries: the official npm and PyPI
// standardwebhooks libraries accept what Sign makes, one secret or two
// during a rotation (each receiver holding either secret), and reject it
// once tampered with; Verify accepts what they sign, and they sign exactly
// what Sign does.
func TestWebhookInteropStandardLibraries(t *testing.T) {
	old, cur := secretOfLen(24), whsig.NewSecret()
	long, stranger := secretOfLen(64), whsig.NewSecret()
	now := time.Now()
	ts := strconv.FormatInt(now.Unix(), 10)
	stale := strconv.FormatInt(now.Add(-10*time.Minute).Unix(), 10)

	type delivery struct {
		name    string
		signers []whsig.Secret
		id      string
		body    string
	}
	var deliveries []delivery
	for i, body := range interopBodies {
		id := "msg_" + strconv.Itoa(i) + "_2mPq9ZyX"
		deliveries = append(deliveries,
			delivery{"one secret, body " + strconv.Itoa(i), []whsig.Secret{cur}, id, body},
			delivery{"64-byte secret, body " + strconv.Itoa(i), []whsig.Secret{long}, id, body},
			delivery{"rotation, body " + strconv.Itoa(i), []whsig.Secret{old, cur}, id, body},
		)
	}

	for _, lib := range interop.WebhookImpls {
		t.Run(lib.Name, func(t *testing.T) {
			// Ours, verified by the library: every request below lists the
			// verdict the library must give.
			var reqs []interop.WebhookRequest
			var want []string
			var names []string
			add := func(name string, r interop.WebhookRequest, ok bool) {
				reqs, names = append(reqs, r), append(names, name)
				if ok {
					want = append(want, "ok")
				} else {
					want = append(want, "fail")
				}
			}
			for _, d := range deliveries {
				sig := whsig.Sign(d.id, now, []byte(d.body), d.signers...)
				for j, s := range d.signers {
					add(d.name+", receiver with secret "+strconv.Itoa(j+1), interop.WebhookRequest{Secret: s.Encode(), ID: d.id, Timestamp: ts, Signature: sig, Body: d.body}, true)
				}
				add(d.name+", stranger", interop.WebhookRequest{Secret: stranger.Encode(), ID: d.id, Timestamp: ts, Signature: sig, Body: d.body}, false)
				add(d.name+", body tampered", interop.WebhookRequest{Secret: d.signers[0].Encode(), ID: d.id, Timestamp: ts, Signature: sig, Body: d.body + " "}, false)
				staleSig := whsig.Sign(d.id, now.Add(-10*time.Minute), []byte(d.body), d.signers...)
				add(d.name+", 10 minutes old", interop.WebhookRequest{Secret: d.signers[0].Encode(), ID: d.id, Timestamp: stale, Signature: staleSig, Body: d.body}, false)
			}
			for i, got := range lib.VerifyWebhooks(t, reqs) {
				if got != want[i] && !(want[i] == "fail" && strings.HasPrefix(got, "fail: ")) {
					t.Errorf("%s verifying ours, %s: %q, want %s", lib.Name, names[i], got, want[i])
				}
			}

			// Theirs, verified by Verify.
			reqs = reqs[:0]
			for _, d := range deliveries {
				var secrets []string
				for _, s := range d.signers {
					secrets = append(secrets, s.Encode())
				}
				reqs = append(reqs, interop.WebhookRequest{Secrets: secrets, ID: d.id, Timestamp: ts, Body: d.body})
			}
			for i, sig := range lib.SignWebhooks(t, reqs) {
				d := deliveries[i]
				if ours := whsig.Sign(d.id, now, []byte(d.body), d.signers...); sig != ours {
					t.Errorf("%s, %s: signs %q, we sign %q", lib.Name, d.name, sig, ours)
				}
				h := http.Header{}
				h.Set(whsig.HeaderID, d.id)
				h.Set(whsig.HeaderTimestamp, ts)
				h.Set(whsig.HeaderSignature, sig)
				for j, s := range d.signers {
					if err := whsig.Verify(h, []byte(d.body), []whsig.Secret{s}, 0, time.Now()); err != nil {
						t.Errorf("%s, %s: Verify with secret %d: %v", lib.Name, d.name, j+1, err)
					}
				}
				if err := whsig.Verify(h, []byte(d.body), []whsig.Secret{stranger}, 0, time.Now()); !errors.Is(err, whsig.ErrNoMatchingSignature) {
					t.Errorf("%s, %s: Verify with a stranger's secret: %v", lib.Name, d.name, err)
				}
			}
		})
	}
}
