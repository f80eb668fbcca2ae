package schemas

import (
	"testing"
	"time"

	"github.com/go-json-experiment/json"
)

// The dispatcher and the ClickHouse sink decode records of the internal
// webhook topics; whatever a record holds, a decoder returns a valid value
// or an error, never both nor neither, and what it accepts round-trips.
func FuzzDecodeWebhookRecords(f *testing.F) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	for _, v := range []any{
		WebhookMessage{V: 1, ID: "msg_a", Org: "acme", EndpointID: "ep_a", EventType: EventReceiptSigned, EventID: "evt_a",
			Body: []byte(`{"type":"receipt.signed"}`), CreatedAt: now, Attempt: 2, DueAt: now, Round: "rd_1", Redelivery: true},
		EventRecord{V: 1, ID: "evt_b", Org: "acme", Event: WebhookEvent{Type: EventWebhookTest, Timestamp: now, Data: []byte(`{}`)},
			Endpoints: []string{"ep_a"}, Except: "ep_b"},
		WebhookAttempt{V: 1, ID: "att_c", MessageID: "msg_a", Org: "acme", EndpointID: "ep_a", At: now, Attempt: 1,
			Outcome: OutcomeRetrying, Status: 503, ResponseHeaders: map[string]string{"Retry-After": "5"}, NextAttemptAt: now},
	} {
		b, _ := json.Marshal(v)
		f.Add(b)
	}
	f.Add([]byte(`{"v":1,"id":"msg_x","body":null,"attempt":-1}`))
	f.Add([]byte(`{"v":1,"event":{"type":"nope"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, err := DecodeWebhookMessage(b); (m == nil) == (err == nil) {
			t.Fatalf("message %v with error %v", m, err)
		} else if m != nil {
			if m.Validate() != nil {
				t.Fatalf("accepted an invalid message %+v", m)
			}
			out, _ := json.Marshal(m)
			if _, err := DecodeWebhookMessage(out); err != nil {
				t.Fatalf("an accepted message does not decode again: %v\n%s", err, out)
			}
		}
		if r, err := DecodeEventRecord(b); (r == nil) == (err == nil) {
			t.Fatalf("event record %v with error %v", r, err)
		} else if r != nil {
			out, _ := json.Marshal(r)
			if _, err := DecodeEventRecord(out); err != nil {
				t.Fatalf("an accepted event record does not decode again: %v\n%s", err, out)
			}
		}
		if a, err := DecodeWebhookAttempt(b); (a == nil) == (err == nil) {
			t.Fatalf("attempt %v with error %v", a, err)
		} else if a != nil && DeliveryStatus(a.Outcome) == "" {
			t.Fatalf("an accepted attempt has no delivery status: %+v", a)
		}
	})
}
