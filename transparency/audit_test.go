package transparency

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/certnode/certnode/schemas"
)

// testTag is org's tag under a test key.
func testTag(org string) string { return schemas.AuditOrgTag("0a1b2c3d", []byte("test tag key"), org) }

// auditEvent is an event of org at at and its leaf, appended a second
// later.
func auditEvent(t testing.TB, org, id string, at time.Time) ([]byte, []byte) {
	t.Helper()
	ev := &schemas.AuditEvent{ID: id, At: at, Org: org, Actor: schemas.AuditActor{Kind: "user", ID: "usr_1", Addr: "127.0.0.7"},
		Action: "api_key.create", Target: "key_" + id, Result: schemas.AuditOK, Source: "coordinator"}
	raw, err := schemas.EncodeAuditEvent(ev)
	if err != nil {
		t.Fatal(err)
	}
	canon, err := schemas.CanonicalizeObject(raw)
	if err != nil {
		t.Fatal(err)
	}
	return raw, schemas.AuditLeaf(testTag(org), at, at.Add(time.Second), canon)
}

// export builds org's export of [from, to) from the log, as ingest does.
func export(t *testing.T, c *Client, org string, from, to time.Time, events [][]byte) *schemas.AuditExport {
	t.Helper()
	var buf bytes.Buffer
	err := c.WriteAuditExport(context.Background(), &buf, AuditSource{Org: org, Tags: []string{testTag(org)}, From: from, To: to,
		Each: func(_ context.Context, yield func([]byte) error) error {
			for _, e := range events {
				if err := yield(e); err != nil {
					return err
				}
			}
			return nil
		},
		Count: func(context.Context) (int, error) { return len(events), nil }})
	if err != nil {
		t.Fatal(err)
	}
	var x schemas.AuditExport
	if err := json.Unmarshal(buf.Bytes(), &x); err != nil {
		t.Fatalf("%v: %s", err, buf.Bytes())
	}
	return &x
}

// An organization's export verifies against the checkpoint when it holds
// exactly its events of the window, and names what was deleted, altered,
// added or moved otherwise; other organizations' leaves are seen only as
// tags and hashes.
func TestAuditExports(t *testing.T) {
	l := newTestLog(t)
	c, err := NewClient(l.srv.URL, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	// 300 leaves before the window (the compact range covers them), then
	// 300 mixing acme's, other organizations' and operator events.
	var early [][]byte
	for i := range 300 {
		_, leaf := auditEvent(t, "other", fmt.Sprintf("early-%d", i), base.Add(-time.Hour))
		early = append(early, leaf)
	}
	l.appendLeaves(early)
	first := uint64(300) // the first leaf appended since the window's reach
	l.since = &first
	var acme [][]byte
	var leaves [][]byte
	for i := range 300 {
		org := []string{"acme", "other", ""}[i%3]
		raw, leaf := auditEvent(t, org, fmt.Sprintf("ev-%d", i), base.Add(time.Duration(i)*time.Second+time.Duration(i)))
		if org == "acme" && i < 270 {
			acme = append(acme, raw)
		}
		leaves = append(leaves, leaf)
	}
	l.appendLeaves(leaves)
	from, to := base, base.Add(270*time.Second) // ev-270 on lie after the window
	var x *schemas.AuditExport
	deadline := time.Now().Add(10 * time.Second)
	for {
		x = export(t, c, "acme", from, to, acme)
		if len(x.Leaves) == 301 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	rep, err := VerifyAuditExport(x, l.vkey)
	if err != nil {
		t.Fatal(err)
	}
	// From the leaf before the first appended since: leaf 299, appended
	// an hour before the window.
	if rep.Events != 90 || rep.TreeSize != 600 || rep.FirstLeaf != 299 || !slices.Equal(rep.OrgTags, []string{testTag("acme")}) {
		t.Fatalf("report %+v", rep)
	}
	if _, err := VerifyAuditExport(x, l.vkey, testTag("acme")); err != nil {
		t.Fatalf("with its tag pinned: %v", err)
	}
	if _, err := VerifyAuditExport(x, l.vkey, testTag("other")); err == nil || !strings.Contains(err.Error(), "does not name the tag") {
		t.Fatalf("with another tag pinned: %v", err)
	}
	// The whole log, from leaf 0, proves the same.
	zero := uint64(0)
	l.since = &zero
	if _, err := VerifyAuditExport(export(t, c, "acme", from, to, acme), l.vkey); err != nil {
		t.Fatalf("from leaf 0: %v", err)
	}
	l.since = &first

	edit := func(raw []byte, from, to string) []byte {
		return []byte(strings.Replace(string(raw), from, to, 1))
	}
	otherRaw, _ := auditEvent(t, "other", "ev-1", base.Add(time.Second+1))
	for _, tc := range []struct {
		name string
		mut  func(x *schemas.AuditExport)
		want string
	}{
		{"an event deleted", func(x *schemas.AuditExport) { x.Events = append(x.Events[:5:5], x.Events[6:]...) },
			"leaf 315, an event of acme in the window, is missing"},
		{"an event edited", func(x *schemas.AuditExport) {
			x.Events[7] = edit(x.Events[7], "api_key.create", "api_key.revoke")
		}, "event ev-21 (api_key.revoke at 2026-11-27T12:00:21.000000021Z) is not in the log"},
		{"an event moved out of the window", func(x *schemas.AuditExport) {
			x.Events[0] = edit(x.Events[0], "2026-11-27T12:00:00Z", "2026-11-27T11:00:00Z")
		}, "event ev-0 at 2026-11-27T11:00:00Z is outside the window"},
		{"an event added twice", func(x *schemas.AuditExport) { x.Events = append(x.Events, x.Events[3]) }, "event ev-9 is in the export twice"},
		{"another organization's event", func(x *schemas.AuditExport) { x.Events = append(x.Events, otherRaw) }, `event ev-1 is of organization "other"`},
		{"a leaf changed", func(x *schemas.AuditExport) { x.Leaves[4] = strings.Replace(x.Leaves[4], "\n1", "\n2", 1) }, "the leaves are not the log's"},
		{"a leaf dropped", func(x *schemas.AuditExport) { x.Leaves = x.Leaves[1:]; x.FirstLeaf++ }, "left is not the tree before leaf 300"},
		// Leaves folded into the left range, with the events they held:
		// the root still matches, but the export no longer reaches back
		// before the window.
		{"leaves folded into the left range", func(x *schemas.AuditExport) {
			rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
			left, _ := decodeHashes(x.Left)
			r, err := rf.NewRange(0, x.FirstLeaf, left)
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range x.Leaves[:8] { // leaf 299 and ev-0 to ev-6: acme's ev-0, ev-3, ev-6
				r.Append(schemas.LeafHash([]byte(l)), nil)
			}
			x.Left, x.Leaves, x.FirstLeaf, x.Events = encodeHashes(r.Hashes()), x.Leaves[8:], x.FirstLeaf+8, x.Events[3:]
		}, "the export does not reach back far enough: its first leaf, 307"},
		{"no tag", func(x *schemas.AuditExport) { x.OrgTags = nil }, "names no tag"},
		{"another organization's tag", func(x *schemas.AuditExport) { x.OrgTags = []string{testTag("other")} }, "is not in the log"},
		{"the first leaf dropped", func(x *schemas.AuditExport) { x.Leaves = x.Leaves[1:] }, "do not end at the checkpoint"},
		{"the left range changed", func(x *schemas.AuditExport) { x.Left[0] = x.Left[1] }, "the leaves are not the log's"},
		{"another key's checkpoint", func(x *schemas.AuditExport) { x.Checkpoint = strings.Replace(x.Checkpoint, "600", "601", 1) }, "checkpoint"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := export(t, c, "acme", from, to, acme)
			tc.mut(x)
			_, err := VerifyAuditExport(x, l.vkey)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
			if !errors.Is(err, ErrAuditExport) && !errors.Is(err, ErrBadProof) {
				t.Fatalf("%v is neither ErrAuditExport nor ErrBadProof", err)
			}
		})
	}
}
