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

// AuditRange finds the leaves an export of events from from on must
// carry: those from the first appended at or after from less
// schemas.AuditClockSkew, up to the latest checkpoint.
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
}

// MaxAuditProblems bounds the problems a failed check lists.
const MaxAuditProblems = 20

// VerifyAuditExport checks an audit export against the audit log's key:
// the checkpoint's signature; that Left and Leaves rebuild its root; that
// every leaf of the organization timed in the window is an exported
// event; and that every event is the organization's, timed in the window,
// and a leaf. A failure wraps ErrAuditExport (or ErrBadProof for the
// checkpoint) and names the first problems found.
func VerifyAuditExport(x *schemas.AuditExport, vkey string) (*AuditReport, error) {
	if x.Format != schemas.AuditExportFormat {
		return nil, fmt.Errorf("%w: format %q, want %s", ErrAuditExport, x.Format, schemas.AuditExportFormat)
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
	// The organization's leaves in the window, by event hash (a leaf
	// appended twice matches one event).
	tag := schemas.AuditOrgTag(x.Org)
	own := map[string][]uint64{}
	for i, l := range x.Leaves {
		f, err := schemas.ParseAuditLeaf([]byte(l))
		if err != nil {
			problem("leaf %d is not an audit log leaf", x.FirstLeaf+uint64(i))
			continue
		}
		if f.OrgTag == tag && !f.At.Before(x.From) && f.At.Before(x.To) {
			own[f.EventHash] = append(own[f.EventHash], x.FirstLeaf+uint64(i))
		}
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
	return &AuditReport{Org: x.Org, From: x.From, To: x.To, TreeSize: cp.Size, FirstLeaf: x.FirstLeaf, Events: len(x.Events)}, nil
}

// WriteAuditExport streams org's export of [from, to) to w, as a
// schemas.AuditExport: the proof from the log, then each event events
// yields (the organization's events in the window, as stored). It reads
// the log first, so an event stored meanwhile is one the checkpoint does
// not hold yet: the export then fails to verify until it is exported again.
func (c *Client) WriteAuditExport(ctx context.Context, w io.Writer, org string, from, to time.Time,
	events func(ctx context.Context, yield func(event []byte) error) error) error {
	r, err := c.AuditRange(ctx, from)
	if err != nil {
		return err
	}
	enc := jsontext.NewEncoder(w)
	if err := writeTokens(enc, jsontext.BeginObject,
		jsontext.String("format"), jsontext.String(schemas.AuditExportFormat),
		jsontext.String("org"), jsontext.String(org),
		jsontext.String("from"), jsontext.String(from.UTC().Format(time.RFC3339Nano)),
		jsontext.String("to"), jsontext.String(to.UTC().Format(time.RFC3339Nano)),
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
	if err := c.Leaves(ctx, r.FirstLeaf, r.Size, func(leaf []byte) error { return enc.WriteToken(jsontext.String(string(leaf))) }); err != nil {
		return err
	}
	if err := writeTokens(enc, jsontext.EndArray, jsontext.String("events"), jsontext.BeginArray); err != nil {
		return err
	}
	if err := events(ctx, func(ev []byte) error { return enc.WriteValue(jsontext.Value(ev)) }); err != nil {
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
