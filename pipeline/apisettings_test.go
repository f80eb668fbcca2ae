package pipeline

import (
	"context"
	"testing"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/apicustom"
	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/schemas"
)

type fakeAPI map[string]apicustom.Settings

func (f fakeAPI) APISettings(org string) (apicustom.Settings, bool) { s, ok := f[org]; return s, ok }

// An organization's receipt metadata is signed in its payloads under the
// reserved member, from the API version that adds it: the version the
// request names (ingest's), else the organization's pin (a producer's
// record). The caller's members are kept as sent; a payload that has the
// member itself is refused (failed, and a DLQ copy with the reason); a
// request pinned to the baseline is signed as sent.
func TestWorkerAddsReceiptMetadata(t *testing.T) {
	h := newHarness(t, 4)
	meta := `{"environment":"prod","issuer":"Acme Corp"}`
	api := fakeAPI{
		"acme":   {ReceiptMetadata: []byte(meta), APIVersion: schemas.APIVersionWhiteLabel},
		"globex": {ReceiptMetadata: []byte(meta), APIVersion: schemas.APIVersionBaseline},
	}
	versioned := func(tenant, id, payload, version string) []byte {
		req := schemas.Request{V: 1, ID: id, Tenant: tenant, Kind: schemas.KindSign, Payload: []byte(payload), APIVersion: version}
		b, _ := json.Marshal(req)
		return b
	}
	h.produce(
		h.record("acme", versioned("acme", "new", `{"n":1,"z":"é"}`, schemas.APIVersionWhiteLabel), ""),
		h.record("acme", versioned("acme", "pinned-old", `{"n":2}`, schemas.APIVersionBaseline), ""),
		h.record("acme", versioned("acme", "reserved", `{"certnode_meta":{"mine":1}}`, schemas.APIVersionWhiteLabel), ""),
		h.record("acme", versioned("acme", "reserved-old", `{"certnode_meta":{"mine":1}}`, schemas.APIVersionBaseline), ""),
		// A producer's records name no version: the organization's pin.
		h.record("acme", versioned("acme", "producer", `{"n":3}`, ""), "pk1"),
		h.record("acme", versioned("acme", "producer-reserved", `{"certnode_meta":1}`, ""), "pk1"),
		h.record("globex", versioned("globex", "globex-producer", `{"n":4}`, ""), ""),
		h.record("initech", versioned("initech", "no-settings", `{"n":5}`, schemas.APIVersionWhiteLabel), ""),
	)
	_, stop := h.workerWith(context.Background(), h.ring, func(c *Config) { c.API = api })
	defer stop()
	res := results(t, h.consume(topics.Receipts, 8))
	payload := func(id string) string {
		t.Helper()
		r := res[id]
		if r == nil || r.Status != schemas.StatusSigned {
			t.Fatalf("%s: %+v, want signed", id, r)
		}
		rc, err := h.ring.KeySet().Verify(r.Receipt)
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		return string(rc.Payload)
	}
	for id, want := range map[string]string{
		"new":             `{"certnode_meta":` + meta + `,"n":1,"z":"é"}`,
		"producer":        `{"certnode_meta":` + meta + `,"n":3}`,
		"pinned-old":      `{"n":2}`,
		"reserved-old":    `{"certnode_meta":{"mine":1}}`,
		"globex-producer": `{"n":4}`,
		"no-settings":     `{"n":5}`,
	} {
		if got := payload(id); got != want {
			t.Errorf("%s: payload %s, want %s", id, got, want)
		}
	}
	for _, id := range []string{"reserved", "producer-reserved"} {
		if r := res[id]; r.Status != schemas.StatusFailed || r.Reason != ReasonReservedMember || len(r.Receipt) != 0 {
			t.Errorf("%s: %+v, want failed %s", id, r, ReasonReservedMember)
		}
	}
	reasons := map[string]int{}
	for _, rec := range h.consume(topics.DLQ, 2) {
		reasons[kafka.Header(rec, schemas.HeaderDLQReason)]++
	}
	if reasons[ReasonReservedMember] != 2 {
		t.Fatalf("DLQ reasons: %v", reasons)
	}
}
