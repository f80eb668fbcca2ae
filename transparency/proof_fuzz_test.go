package transparency

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/schemas"
)

// FuzzVerifyInclusion: a proof (JSON from a file or an answer) never
// panics the checks, and one that passes proves what the valid proof
// proves: the same receipt, leaf, tree and hashes under the log's key.
func FuzzVerifyInclusion(f *testing.F) {
	l := newTestLog(f)
	c, err := NewClient(l.srv.URL, l.vkey, nil)
	if err != nil {
		f.Fatal(err)
	}
	ids := l.add(7)
	valid := proofOf(f, c, ids[3])
	seed, _ := json.Marshal(valid)
	f.Add(seed)
	f.Add([]byte(`{"receipt_id":"` + ids[3] + `","leaf_index":3,"tree_size":7,"root_hash":"","inclusion_proof":[],"checkpoint":""}`))
	f.Add([]byte(`{"checkpoint":"certnode\n1\nAAAA\n\n— x y\n"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var p schemas.InclusionProof
		if json.Unmarshal(b, &p) != nil {
			return
		}
		if _, err := VerifyInclusion(ids[3], &p, l.vkey); err == nil {
			if p.LeafIndex != valid.LeafIndex || p.TreeSize != valid.TreeSize || p.RootHash != valid.RootHash || !slices.Equal(p.Hashes, valid.Hashes) {
				t.Fatalf("a proof other than the log's verified: %+v", p)
			}
		}
		OpenCheckpoint([]byte(p.Checkpoint), l.vkey) // never panics
	})
}

// FuzzVerifyAuditExport: an audit export (a file someone hands an
// auditor) never panics the check, and one that passes holds exactly the
// valid export's events.
func FuzzVerifyAuditExport(f *testing.F) {
	l := newTestLog(f)
	c, err := NewClient(l.srv.URL, l.vkey, nil)
	if err != nil {
		f.Fatal(err)
	}
	base := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	var leaves, events [][]byte
	for i := range 12 {
		org := []string{"acme", "other"}[i%2]
		raw, leaf := auditEvent(f, org, fmt.Sprintf("ev-%d", i), base.Add(time.Duration(i)*time.Second))
		leaves = append(leaves, leaf)
		if org == "acme" {
			events = append(events, raw)
		}
	}
	l.appendLeaves(leaves)
	first := uint64(0)
	l.since = &first
	var seed []byte
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var buf bytes.Buffer
		err := c.WriteAuditExport(context.Background(), &buf, AuditSource{Org: "acme", Tags: []string{testTag("acme")}, From: base, To: base.Add(time.Minute),
			Each: func(_ context.Context, yield func([]byte) error) error {
				for _, e := range events {
					if err := yield(e); err != nil {
						return err
					}
				}
				return nil
			}})
		if err == nil && strings.Count(buf.String(), "certnode-audit-v1") == 12 {
			seed = buf.Bytes()
			break
		}
		if time.Now().After(deadline) {
			f.Fatalf("no export of 12 leaves: %v", err)
		}
	}
	f.Add(seed)
	f.Add([]byte(`{"format":"certnode-audit-export-v1","org":"acme","org_tags":["x"],"first_leaf":5,"left":["AAAA"],"leaves":["certnode-audit-v1\n"],"events":[{}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var x schemas.AuditExport
		if json.Unmarshal(b, &x) != nil {
			return
		}
		if rep, err := VerifyAuditExport(&x, l.vkey); err == nil && (rep.Org == "acme" && rep.Events != len(events) || rep.TreeSize != 12) {
			t.Fatalf("an export other than the log's verified: %+v", rep)
		}
	})
}
