package transparency

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	tiles "github.com/transparency-dev/tessera/api"
	"github.com/transparency-dev/tessera/client"

	"github.com/certnode/certnode/schemas"
)

// AuditRange is what an export of the audit log proves against: a signed
// checkpoint of Size leaves, the first leaf of the export's window, and
// Left, the compact range of the leaves before it.
type AuditRange struct {
	Checkpoint []byte
	Size       uint64
	FirstLeaf  uint64
	Left       [][]byte
}

// MaxAuditExportLeaves bounds the leaves an export carries: a window
// further back than that many leaves is refused (schemas.ErrBadExport).
const MaxAuditExportLeaves = 2_000_000

// AuditRange finds the leaves an export of events from from on must
// carry: from the last one appended before from less
// schemas.AuditClockSkew (which the export's check needs to see), up to
// the latest checkpoint.
func (c *Client) AuditRange(ctx context.Context, from time.Time) (*AuditRange, error) {
	raw, cp, err := c.checkpoint(ctx)
	if err != nil {
		return nil, err
	}
	first := cp.Size
	b, code, err := c.get(ctx, "since/"+strconv.FormatInt(from.Add(-schemas.AuditClockSkew).Unix(), 10))
	switch {
	case err != nil:
		return nil, err
	case code == http.StatusOK:
		var at struct {
			Index uint64 `json:"index"`
		}
		if err := json.Unmarshal(b, &at); err != nil {
			return nil, fmt.Errorf("transparency: the log's time index: %w", err)
		}
		first = min(first, at.Index)
	case code != http.StatusNotFound:
		return nil, fmt.Errorf("transparency: the log's time index answered %d", code)
	}
	if first > 0 {
		first-- // the leaf before: appended before the window's reach
	}
	if cp.Size-first > MaxAuditExportLeaves {
		return nil, fmt.Errorf("%w: the log holds %d leaves since that window began, more than an export carries (%d): export a more recent window",
			schemas.ErrBadExport, cp.Size-first, MaxAuditExportLeaves)
	}
	left, err := client.FetchRangeNodes(ctx, first, c.fetch.ReadTile)
	if err != nil {
		return nil, fmt.Errorf("transparency: the tree before leaf %d: %w", first, err)
	}
	return &AuditRange{Checkpoint: raw, Size: cp.Size, FirstLeaf: first, Left: left}, nil
}

// Leaves calls yield with each leaf in [first, size), in order.
func (c *Client) Leaves(ctx context.Context, first, size uint64, yield func(leaf []byte) error) error {
	if first >= size {
		return nil
	}
	getSize := func(context.Context) (uint64, error) { return size, nil }
	unbundle := func(b []byte) ([][]byte, error) {
		var eb tiles.EntryBundle
		err := eb.UnmarshalText(b)
		return eb.Entries, err
	}
	next := first
	for e, err := range client.Entries(client.EntryBundles(ctx, 2, getSize, c.fetch.ReadEntryBundle, first, size-first), unbundle) {
		if err != nil {
			return fmt.Errorf("transparency: the log's leaves: %w", err)
		}
		if e.Index != next {
			return fmt.Errorf("transparency: the log's leaves: leaf %d where %d was due", e.Index, next)
		}
		next++
		if err := yield(e.Entry); err != nil {
			return err
		}
	}
	if next != size {
		return fmt.Errorf("transparency: the log's leaves stopped at %d of %d", next, size)
	}
	return nil
}

// ErrAuditExport: an audit export does not prove what it claims.
var ErrAuditExport = errors.New("the audit export does not verify")

// AuditReport is what a verified audit export proves.
type AuditReport struct {
	Org       string
	From, To  time.Time
	TreeSize  uint64
	FirstLeaf uint64
	// Events is the organization's events in the window, all in the log.
	Events int
	// OrgTags are the organization's tags the export named: pin them
	// (certnode audit verify --org-tag) to check later exports by them.
	OrgTags []string
}

// MaxAuditProblems bounds the problems a failed check lists.
const MaxAuditProblems = 20

// VerifyAuditExport checks an audit export against the audit log's key:
// the checkpoint's signature; that Left and Leaves rebuild its root; that
// the leaves reach back before the window (their append times never go
// back, and the first was appended before From less the clock skew, so no
// leaf before it holds an event of the window); that every leaf of the
// organization (a tag of OrgTags, each of which pinned must be) timed in
// the window is an exported event; and that every event is the
// organization's, timed in the window, and a leaf. A failure wraps
// ErrAuditExport (or ErrBadProof for the checkpoint) and names the first
// problems found.
func VerifyAuditExport(x *schemas.AuditExport, vkey string, pinned ...string) (*AuditReport, error) {
	if x.Format != schemas.AuditExportFormat {
		return nil, fmt.Errorf("%w: format %q, want %s", ErrAuditExport, x.Format, schemas.AuditExportFormat)
	}
	if len(x.OrgTags) == 0 {
		return nil, fmt.Errorf("%w: it names no tag of %s", ErrAuditExport, x.Org)
	}
	for _, tag := range pinned {
		if !slices.Contains(x.OrgTags, tag) {
			return nil, fmt.Errorf("%w: it does not name the tag %s as %s's: its tags are %v", ErrAuditExport, tag, x.Org, x.OrgTags)
		}
	}
	cp, err := OpenCheckpoint([]byte(x.Checkpoint), vkey)
	if err != nil {
		return nil, err
	}
	if x.FirstLeaf > cp.Size || uint64(len(x.Leaves)) != cp.Size-x.FirstLeaf {
		return nil, fmt.Errorf("%w: %d leaves from %d do not end at the checkpoint's %d", ErrAuditExport, len(x.Leaves), x.FirstLeaf, cp.Size)
	}
	left, err := decodeHashes(x.Left)
	if err != nil {
		return nil, fmt.Errorf("%w: left: %v", ErrAuditExport, err)
	}
	rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	r, err := rf.NewRange(0, x.FirstLeaf, left)
	if err != nil {
		return nil, fmt.Errorf("%w: left is not the tree before leaf %d: %v", ErrAuditExport, x.FirstLeaf, err)
	}
	for _, l := range x.Leaves {
		if err := r.Append(schemas.LeafHash([]byte(l)), nil); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrAuditExport, err)
		}
	}
	root, err := r.GetRootHash(nil)
	if x.FirstLeaf == 0 && cp.Size == 0 {
		root, err = rfc6962.DefaultHasher.EmptyRoot(), nil
	}
	if err != nil || !bytes.Equal(root, cp.Hash) {
		return nil, fmt.Errorf("%w: the leaves are not the log's: they do not rebuild the checkpoint's root", ErrAuditExport)
	}

	var problems []string
	found := 0
	problem := func(format string, args ...any) {
		if found++; found <= MaxAuditProblems {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	reach := x.From.Add(-schemas.AuditClockSkew)
	// The organization's leaves in the window, by event hash (a leaf
	// appended twice matches one event).
	own := map[string][]uint64{}
	var last time.Time
	for i, l := range x.Leaves {
		at := x.FirstLeaf + uint64(i)
		f, err := schemas.ParseAuditLeaf([]byte(l))
		if err != nil {
			problem("leaf %d is not an audit log leaf", at)
			continue
		}
		switch {
		case f.Appended.Before(last):
			problem("leaf %d was appended at %s, before the leaf ahead of it", at, f.Appended.Format(time.RFC3339Nano))
		case i == 0 && at > 0 && !f.Appended.Before(reach):
			problem("the export does not reach back far enough: its first leaf, %d, was appended at %s, not before %s (the window's start less %s)",
				at, f.Appended.Format(time.RFC3339Nano), reach.Format(time.RFC3339Nano), schemas.AuditClockSkew)
		}
		last = f.Appended
		if !slices.Contains(x.OrgTags, f.OrgTag) || f.At.Before(x.From) || !f.At.Before(x.To) {
			continue
		}
		if f.At.After(f.Appended.Add(schemas.AuditClockSkew)) {
			problem("leaf %d: its event's time %s is after its append time %s and the clock skew", at, f.At.Format(time.RFC3339Nano), f.Appended.Format(time.RFC3339Nano))
		}
		own[f.EventHash] = append(own[f.EventHash], at)
	}
	matched := map[string]bool{}
	for i, raw := range x.Events {
		ev, canon, err := schemas.DecodeAuditEvent(raw)
		if err != nil {
			problem("event %d does not parse: %v", i, err)
			continue
		}
		sum := sha256.Sum256(canon)
		h := hex.EncodeToString(sum[:])
		switch {
		case ev.Org != x.Org:
			problem("event %s is of organization %q", ev.ID, ev.Org)
		case ev.At.Before(x.From) || !ev.At.Before(x.To):
			problem("event %s at %s is outside the window", ev.ID, ev.At.Format(time.RFC3339Nano))
		case matched[h]:
			problem("event %s is in the export twice", ev.ID)
		case len(own[h]) == 0:
			problem("event %s (%s at %s) is not in the log: altered, or never logged", ev.ID, ev.Action, ev.At.Format(time.RFC3339Nano))
		}
		matched[h] = true
	}
	var missing []uint64
	for h, at := range own {
		if !matched[h] {
			missing = append(missing, at[0])
		}
	}
	slices.Sort(missing)
	for _, i := range missing {
		problem("leaf %d, an event of %s in the window, is missing from the export: deleted or altered", i, x.Org)
	}
	if found > 0 {
		return nil, fmt.Errorf("%w: %d problem(s):\n  %s", ErrAuditExport, found, strings.Join(problems, "\n  "))
	}
	return &AuditReport{Org: x.Org, From: x.From, To: x.To, TreeSize: cp.Size, FirstLeaf: x.FirstLeaf, Events: len(x.Events), OrgTags: x.OrgTags}, nil
}

// AuditSource is where an export's events come from.
type AuditSource struct {
	Org string
	// Tags are the organization's tags under each internal secret.
	Tags     []string
	From, To time.Time
	// Each calls yield with each of the organization's events in the
	// window, as stored.
	Each func(ctx context.Context, yield func(event []byte) error) error
	// Count is how many events of the window the store holds; the export
	// waits a while (MaxStoreLag) for it to hold as many as the log, so
	// that a store a moment behind the log does not look tampered with.
	Count func(ctx context.Context) (int, error)
}

// MaxStoreLag bounds the wait for the event store to catch up with the
// log, and storeStill ends it when the store stops growing (a row deleted
// by someone never comes back); then the export goes on, and its check
// says what is missing.
const (
	MaxStoreLag = 10 * time.Second
	storeStill  = 2 * time.Second
)

// WriteAuditExport streams src's export to w, as a schemas.AuditExport:
// the proof from the log, then the events. It reads the log first, and
// waits (MaxStoreLag at most) for the store to hold as many events of the
// window as the log has leaves.
func (c *Client) WriteAuditExport(ctx context.Context, w io.Writer, src AuditSource) error {
	r, err := c.AuditRange(ctx, src.From)
	if err != nil {
		return err
	}
	enc := jsontext.NewEncoder(w)
	if err := writeTokens(enc, jsontext.BeginObject,
		jsontext.String("format"), jsontext.String(schemas.AuditExportFormat),
		jsontext.String("org"), jsontext.String(src.Org),
		jsontext.String("org_tags"), jsontext.BeginArray); err != nil {
		return err
	}
	for _, tag := range src.Tags {
		if err := enc.WriteToken(jsontext.String(tag)); err != nil {
			return err
		}
	}
	if err := writeTokens(enc, jsontext.EndArray,
		jsontext.String("from"), jsontext.String(src.From.UTC().Format(time.RFC3339Nano)),
		jsontext.String("to"), jsontext.String(src.To.UTC().Format(time.RFC3339Nano)),
		jsontext.String("checkpoint"), jsontext.String(string(r.Checkpoint)),
		jsontext.String("first_leaf"), jsontext.Uint(r.FirstLeaf),
		jsontext.String("left"), jsontext.BeginArray); err != nil {
		return err
	}
	for _, h := range encodeHashes(r.Left) {
		if err := enc.WriteToken(jsontext.String(h)); err != nil {
			return err
		}
	}
	if err := writeTokens(enc, jsontext.EndArray, jsontext.String("leaves"), jsontext.BeginArray); err != nil {
		return err
	}
	own := map[string]bool{}
	if err := c.Leaves(ctx, r.FirstLeaf, r.Size, func(leaf []byte) error {
		if f, err := schemas.ParseAuditLeaf(leaf); err == nil && slices.Contains(src.Tags, f.OrgTag) && !f.At.Before(src.From) && f.At.Before(src.To) {
			own[f.EventHash] = true
		}
		return enc.WriteToken(jsontext.String(string(leaf)))
	}); err != nil {
		return err
	}
	if src.Count != nil {
		// Wait while the store catches up: it grows, or it is ahead.
		last, still := -1, time.Now()
		for deadline := time.Now().Add(MaxStoreLag); time.Now().Before(deadline) && time.Since(still) < storeStill; {
			n, err := src.Count(ctx)
			if err != nil || n >= len(own) {
				break
			}
			if n != last {
				last, still = n, time.Now()
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(250 * time.Millisecond):
			}
		}
	}
	if err := writeTokens(enc, jsontext.EndArray, jsontext.String("events"), jsontext.BeginArray); err != nil {
		return err
	}
	if err := src.Each(ctx, func(ev []byte) error { return enc.WriteValue(jsontext.Value(ev)) }); err != nil {
		return err
	}
	return writeTokens(enc, jsontext.EndArray, jsontext.EndObject)
}

func writeTokens(enc *jsontext.Encoder, toks ...jsontext.Token) error {
	for _, t := range toks {
		if err := enc.WriteToken(t); err != nil {
			return err
		}
	}
	return nil
}
