package pipeline

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// fakeOrgKeys gives some organizations a key of their own (a memSigner);
// down makes an organization's key unusable, as a key a worker cannot
// open yet.
type fakeOrgKeys struct {
	keys map[string]*memSigner
	down map[string]*atomic.Bool
}

var errKeyDown = errors.New("key not on this worker's token yet")

func newFakeOrgKeys(t *testing.T, orgs ...string) *fakeOrgKeys {
	f := &fakeOrgKeys{keys: map[string]*memSigner{}, down: map[string]*atomic.Bool{}}
	for _, org := range orgs {
		f.keys[org], f.down[org] = newMemSigner(t), new(atomic.Bool)
	}
	return f
}

func (f *fakeOrgKeys) Sign(ctx context.Context, org string, payload []byte) (*schemas.Receipt, bool, error) {
	k := f.keys[org]
	if k == nil {
		return nil, false, nil
	}
	if f.down[org].Load() {
		return nil, true, errKeyDown
	}
	rc, err := k.Sign(ctx, payload)
	return rc, true, err
}

func (f *fakeOrgKeys) KeySet(org string) *schemas.KeySet {
	if k := f.keys[org]; k != nil {
		return k.ks
	}
	return nil
}

func (f *fakeOrgKeys) KidOrg(kid string) (string, bool) {
	for org, k := range f.keys {
		if k.kid == kid {
			return org, true
		}
	}
	return "", false
}

// An organization with a key of its own gets receipts with its kid, one
// without gets the service's. With the service's keys, a receipt verifies
// for its own organization only: another organization's receipt is
// refused with kid_other_org (its signature is good), while the service's
// receipts and the caller's own keep verifying, and a tampered own
// receipt is still caught.
func TestWorkerSignsWithOrgKeys(t *testing.T) {
	h := newHarness(t, 4)
	orgKeys := newFakeOrgKeys(t, "acme", "globex")
	ctx := context.Background()
	acmeRc, _, _ := orgKeys.Sign(ctx, "acme", []byte(`{"org":"acme"}`))
	acmeRaw, _ := acmeRc.Marshal()
	svcRc, _ := h.ring.Sign(ctx, []byte(`{"org":"service"}`))
	svcRaw, _ := svcRc.Marshal()
	tampered := []byte(string(acmeRaw[:len(acmeRaw)-3]) + `AA"}`)
	h.produce(
		h.request("acme", "s-acme", schemas.KindSign, `{"n":1}`, ""),
		h.request("globex", "s-globex", schemas.KindSign, `{"n":2}`, ""),
		h.request("initech", "s-initech", schemas.KindSign, `{"n":3}`, ""),
		h.request("acme", "s-bad", schemas.KindSign, `[1]`, ""),
		h.request("acme", "v-own", schemas.KindVerify, string(acmeRaw), ""),
		h.request("globex", "v-foreign", schemas.KindVerify, string(acmeRaw), ""),
		h.request("initech", "v-foreign-no-keys", schemas.KindVerify, string(acmeRaw), ""),
		h.request("acme", "v-service", schemas.KindVerify, string(svcRaw), ""),
		h.request("acme", "v-tampered", schemas.KindVerify, string(tampered), ""),
	)
	_, stop := h.workerWith(ctx, h.ring, func(c *Config) { c.OrgKeys = orgKeys })
	defer stop()
	res := results(t, h.consume(topics.Receipts, 9))

	for id, signer := range map[string]*memSigner{"s-acme": orgKeys.keys["acme"], "s-globex": orgKeys.keys["globex"], "s-initech": h.ring} {
		r := res[id]
		if r == nil || r.Status != schemas.StatusSigned || r.Kid != signer.kid {
			t.Fatalf("%s: %+v, want signed by %s", id, r, signer.kid)
		}
		if _, err := signer.ks.Verify(r.Receipt); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
	if r := res["s-bad"]; r.Status != schemas.StatusFailed || r.Reason != ReasonInvalidPayload {
		t.Fatalf("s-bad: %+v, want failed for its payload", r)
	}
	for id, want := range map[string]string{"v-own": "", "v-service": "", "v-foreign": string(schemas.ReasonKidOtherOrg),
		"v-foreign-no-keys": string(schemas.ReasonKidOtherOrg), "v-tampered": "*"} {
		r := res[id]
		switch {
		case want == "" && r.Status != schemas.StatusValid,
			want == "*" && (r.Status != schemas.StatusInvalid || r.Reason == string(schemas.ReasonKidOtherOrg)),
			want != "" && want != "*" && (r.Status != schemas.StatusInvalid || r.Reason != want):
			t.Errorf("%s: %+v, want %q", id, r, want)
		}
		if r.Keys != schemas.KeysService {
			t.Errorf("%s: keys %q", id, r.Keys)
		}
	}
}

// A worker that cannot use an organization's active key yet never signs
// its request with another key and, within OrgKeyWait, never sends it to
// the DLQ: it retries
// (certnode_worker_org_key_unavailable_total counts the tries) and
// produces nothing, and once the key can be used the request is signed
// with the organization's kid.
func TestWorkerWaitsForOrgKey(t *testing.T) {
	h := newHarness(t, 1)
	orgKeys := newFakeOrgKeys(t, "acme")
	orgKeys.down["acme"].Store(true)
	reg := prometheus.NewRegistry()
	h.produce(h.request("acme", "wait", schemas.KindSign, `{"n":1}`, ""))
	_, stop := h.workerWith(context.Background(), h.ring, func(c *Config) { c.OrgKeys, c.Registerer = orgKeys, reg })
	defer stop()
	testenv.WaitFor(t, "three tries", 10*time.Second, func() (bool, string) {
		return metric(t, reg, "certnode_worker_org_key_unavailable_total") >= 3, ""
	})
	ends, err := kadm.NewClient(h.client).ListEndOffsets(context.Background(), topics.Receipts, topics.DLQ)
	if err != nil {
		t.Fatal(err)
	}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset != 0 {
			t.Errorf("%s/%d has %d records while the key is unusable", o.Topic, o.Partition, o.Offset)
		}
	})
	orgKeys.down["acme"].Store(false)
	r := results(t, h.consume(topics.Receipts, 1))["wait"]
	if r == nil || r.Status != schemas.StatusSigned || r.Kid != orgKeys.keys["acme"].kid {
		t.Fatalf("once the key is usable: %+v, want signed by acme's own key", r)
	}
}

// An organization whose key never opens on this worker holds up its
// partition for OrgKeyWait at most: its requests then fail
// (org_key_unavailable, with a DLQ copy, counted), never signed with
// another key, while the other tenants of the partition are signed.
func TestWorkerOrgKeyUnavailableFails(t *testing.T) {
	h := newHarness(t, 1)
	orgKeys := newFakeOrgKeys(t, "acme", "globex")
	orgKeys.down["acme"].Store(true)
	reg := prometheus.NewRegistry()
	h.produce(
		h.request("acme", "a1", schemas.KindSign, `{"n":1}`, ""),
		h.request("globex", "g1", schemas.KindSign, `{"n":2}`, ""),
		h.request("initech", "i1", schemas.KindSign, `{"n":3}`, ""),
		h.request("acme", "a2", schemas.KindSign, `{"n":4}`, ""),
	)
	_, stop := h.workerWith(context.Background(), h.ring, func(c *Config) {
		c.OrgKeys, c.Registerer, c.OrgKeyWait = orgKeys, reg, 300*time.Millisecond
	})
	defer stop()
	res := results(t, h.consume(topics.Receipts, 4))
	for id, signer := range map[string]*memSigner{"g1": orgKeys.keys["globex"], "i1": h.ring} {
		if r := res[id]; r == nil || r.Status != schemas.StatusSigned || r.Kid != signer.kid {
			t.Errorf("%s: %+v, want signed by %s", id, r, signer.kid)
		}
	}
	for _, id := range []string{"a1", "a2"} {
		if r := res[id]; r == nil || r.Status != schemas.StatusFailed || r.Reason != ReasonOrgKeyUnavailable || r.Kid != "" || r.Receipt != nil {
			t.Errorf("%s: %+v, want failed with %s", id, r, ReasonOrgKeyUnavailable)
		}
	}
	dlq := h.consume(topics.DLQ, 2)
	for _, r := range dlq {
		if string(r.Key) != "acme" || kafka.Header(r, schemas.HeaderDLQReason) != ReasonOrgKeyUnavailable {
			t.Errorf("DLQ copy of %q with reason %q", r.Key, kafka.Header(r, schemas.HeaderDLQReason))
		}
	}
	if n := metric(t, reg, "certnode_worker_org_key_unavailable_total"); n < 2 {
		t.Errorf("%v unusable-key attempts counted, want at least 2", n)
	}
}
