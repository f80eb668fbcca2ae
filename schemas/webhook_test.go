package schemas

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// compileEventSchema compiles a catalog entry's JSON Schema.
func compileEventSchema(t *testing.T, info EventTypeInfo) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(info.Schema))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource(info.Type+".json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile(info.Type + ".json")
	if err != nil {
		t.Fatalf("%s: %v", info.Type, err)
	}
	return sch
}

func validate(t *testing.T, sch *jsonschema.Schema, v []byte) error {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(v))
	if err != nil {
		t.Fatal(err)
	}
	return sch.Validate(doc)
}

// The catalog has every event type, each with a JSON Schema its example
// meets; events made from results meet their type's schema, and a result
// of an unauthenticated record makes none.
func TestEventCatalog(t *testing.T) {
	cat, err := EventCatalog()
	if err != nil {
		t.Fatal(err)
	}
	schemas := map[string]*jsonschema.Schema{}
	for i, info := range cat {
		if info.Type != EventTypes[i] || info.Version != EventVersion || info.Description == "" {
			t.Fatalf("catalog entry %d: %+v", i, info)
		}
		schemas[info.Type] = compileEventSchema(t, info)
		if err := validate(t, schemas[info.Type], info.Example); err != nil {
			t.Fatalf("%s: its example does not meet its schema: %v", info.Type, err)
		}
		var ex map[string]any
		json.Unmarshal(info.Example, &ex)
		ex["type"] = "nope"
		other, _ := json.Marshal(ex)
		if err := validate(t, schemas[info.Type], other); err == nil {
			t.Fatalf("%s: the schema takes another type", info.Type)
		}
	}

	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	receipt := jsontext.Value(`{"protected":"eyJ9","payload":{"a":1},"signature":"c2ln","kid":"k1"}`)
	base := Result{V: 1, ID: "req_1", Tenant: "acme", Kind: KindSign, Auth: AuthIngest, KeyID: "cnk_AAAAAAAAAAAA",
		ReceivedAt: at.Add(-time.Second), ProcessedAt: at}
	cases := []struct {
		name   string
		mutate func(r *Result)
		typ    string
	}{
		{"signed", func(r *Result) { r.Status, r.ReceiptID, r.Kid, r.Receipt = StatusSigned, "rid", "k1", receipt }, EventReceiptSigned},
		{"signed in a job", func(r *Result) {
			r.Status, r.ReceiptID, r.Kid, r.Receipt, r.JobID, r.Line = StatusSigned, "rid", "k1", receipt, "job_1", 3
		}, EventReceiptSigned},
		{"valid", func(r *Result) {
			r.Kind, r.Status, r.ReceiptID, r.Kid, r.Keys = KindVerify, StatusValid, "rid", "k1", KeysService
		}, EventReceiptVerified},
		{"invalid", func(r *Result) { r.Kind, r.Status, r.Reason, r.Kid = KindVerify, StatusInvalid, "bad_signature", "k1" }, EventReceiptVerificationFailed},
		{"failed", func(r *Result) { r.Status, r.Reason, r.Auth = StatusFailed, "payload_not_object", AuthProducer }, EventReceiptVerificationFailed},
	}
	for _, c := range cases {
		r := base
		c.mutate(&r)
		ev, ok, err := EventForResult(&r, 1<<20)
		if err != nil || !ok || ev.Type != c.typ || !ev.Timestamp.Equal(at) {
			t.Fatalf("%s: %+v %v %v", c.name, ev, ok, err)
		}
		body, _ := json.Marshal(ev)
		if err := validate(t, schemas[c.typ], body); err != nil {
			t.Fatalf("%s: %s does not meet its schema: %v", c.name, body, err)
		}
	}
	// A large receipt is linked, not carried.
	r := base
	r.Status, r.ReceiptID, r.Kid, r.Receipt = StatusSigned, "rid", "k1", receipt
	ev, _, _ := EventForResult(&r, 10)
	if !strings.Contains(string(ev.Data), `"receipt_url":"/v1/receipts/rid"`) || strings.Contains(string(ev.Data), `"receipt":`) {
		t.Fatalf("a large receipt: %s", ev.Data)
	}
	r.Auth = AuthNone
	if _, ok, _ := EventForResult(&r, 1<<20); ok {
		t.Fatal("an unauthenticated record's result made an event")
	}
}
