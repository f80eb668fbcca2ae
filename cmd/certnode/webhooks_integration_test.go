//go:build integration

package main

import (
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/ingest"
	"github.com/certnode/certnode/internal/whsig"
	"github.com/certnode/certnode/schemas"
)

// `certnode webhooks listen` as a developer runs it, against ingest and a
// worker running as their own processes on the real Kafka: a receipt
// signed and an event triggered reach the local receiver as deliveries
// that the secret listen printed verifies; SIGINT ends it with exit 0.
func TestWebhooksListenE2E(t *testing.T) {
	clearAPIEnv(t)
	e := newE2E(t, "")
	e.ingest()
	e.worker()
	recv := newReceiver(t, 202)
	e.env = append(e.env, "CERTNODE_API_KEY="+e.apiKey)
	listen := e.start("listen", "webhooks", "listen", "--forward-to", recv.srv.URL+"/hook", "--api", "http://"+e.http,
		"--events", "receipt.signed,webhook.test")
	secretRE := regexp.MustCompile(`Ready! Your webhook signing secret is (whsec_[A-Za-z0-9+/=]+)`)
	var secret whsig.Secret
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if m := secretRE.FindStringSubmatch(listen.output()); m != nil {
			s, err := whsig.ParseSecret(m[1])
			if err != nil {
				t.Fatal(err)
			}
			secret = s
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("listen never got ready: %s", listen.output())
		}
	}

	code, receipt := e.do("POST", "/v1/sign", "application/json", `{"payload":{"order":"e2e-listen"}}`)
	if code != 200 {
		t.Fatalf("sign: %d %s", code, receipt)
	}
	var rc struct {
		ReceiptID string `json:"receipt_id"`
	}
	json.Unmarshal([]byte(receipt), &rc, json.RejectUnknownMembers(false))
	reqs, bodies := recv.wait(t, 1)
	verifyDelivery(t, reqs[0], bodies[0], secret)
	var ev schemas.WebhookEvent
	var data schemas.ReceiptEventData
	if json.Unmarshal([]byte(bodies[0]), &ev) != nil || ev.Type != schemas.EventReceiptSigned || json.Unmarshal(ev.Data, &data) != nil ||
		data.ReceiptID != rc.ReceiptID || !strings.Contains(string(data.Receipt), `"order":"e2e-listen"`) {
		t.Fatalf("forwarded receipt: %s (signed %s)", bodies[0], receipt)
	}

	t.Setenv("CERTNODE_API_KEY", e.apiKey)
	r := certnode(t, "", "webhooks", "trigger", "webhook.test", "--api", "http://"+e.http)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "evt_") {
		t.Fatalf("trigger: %+v", r)
	}
	reqs, bodies = recv.wait(t, 2)
	verifyDelivery(t, reqs[1], bodies[1], secret)
	if id := schemas.MessageID(strings.TrimSpace(r.stdout), ingest.ListenEndpointID); reqs[1].Header.Get(whsig.HeaderID) != id ||
		!strings.Contains(bodies[1], `"type":"webhook.test"`) {
		t.Fatalf("triggered: %v %s (want id %s)", reqs[1].Header, bodies[1], id)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(listen.output(), "webhook.test"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("listen printed no line for the triggered event: %s", listen.output())
		}
	}
	if out := listen.output(); !strings.Contains(out, "receipt.signed") || !strings.Contains(out, "-> 202 Accepted (") {
		t.Fatalf("listen's lines: %s", out)
	}

	listen.signal(syscall.SIGINT)
	select {
	case <-listen.done:
	case <-time.After(10 * time.Second):
		t.Fatal("listen did not stop on SIGINT")
	}
	if code := listen.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("listen exited %d: %s", code, listen.output())
	}
}
