package schemas

import (
	"bytes"
	"strconv"
	"testing"
	"time"
)

// Audit events come from every role and leaves from the log's files: no
// input may panic, and what parses must round-trip.
func FuzzAuditEventAndLeaf(f *testing.F) {
	at := time.Date(2026, 11, 27, 12, 0, 0, 5, time.UTC)
	ev := &AuditEvent{ID: "ev_1", At: at, Org: "acme", Actor: AuditActor{Kind: "key", ID: "cnk_ABCDEFGHIJKL", Addr: "127.0.0.1"},
		Action: "access.refused", Target: "GET /v1/sign", Result: AuditDenied, Reason: "unauthorized", Source: "ingest"}
	raw, err := EncodeAuditEvent(ev)
	if err != nil {
		f.Fatal(err)
	}
	canon, err := CanonicalizeObject(raw)
	if err != nil {
		f.Fatal(err)
	}
	tag := AuditOrgTag("0a1b2c3d", []byte("key"), "acme")
	f.Add(raw, AuditLeaf(tag, at, at.Add(time.Second), canon))
	f.Add([]byte(`{"id":"x","at":"0001-01-01T00:00:00Z"}`), []byte("certnode-audit-v1\n\n\n\n"))
	f.Fuzz(func(t *testing.T, value, leaf []byte) {
		if e, canon, err := DecodeAuditEvent(value); err == nil {
			if e.Validate() != nil {
				t.Fatalf("decoded an invalid event %+v", e)
			}
			tag := AuditOrgTag("0a1b2c3d", []byte("key"), e.Org)
			l, err := ParseAuditLeaf(AuditLeaf(tag, e.At, e.At, canon))
			if err != nil || l.OrgTag != tag || !l.At.Equal(time.Unix(0, e.At.UnixNano())) || !l.Appended.Equal(l.At) {
				t.Fatalf("the leaf of %+v does not read back: %+v %v", e, l, err)
			}
		}
		if l, err := ParseAuditLeaf(leaf); err == nil {
			back := []byte(auditLeafPrefix + l.OrgTag + "\n" + strconv.FormatInt(l.At.UnixNano(), 10) + "\n" +
				strconv.FormatInt(l.Appended.UnixNano(), 10) + "\n" + l.EventHash)
			if !bytes.Equal(back, leaf) {
				t.Fatalf("leaf %q reads as %+v", leaf, l)
			}
		}
	})
}
