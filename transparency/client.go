package transparency

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/tessera/client"

	"github.com/certnode/certnode/schemas"
)

// Client builds proofs from the log's files, which the log process serves
// (sinks/translog Handler) at a URL; ingest answers its proof routes with
// it. It checks every checkpoint against the log's key, and every proof it
// builds before handing it out.
type Client struct {
	base  *url.URL
	hc    *http.Client
	fetch *client.HTTPFetcher

	mu     sync.Mutex
	vkey   string
	cpRaw  []byte
	cp     *log.Checkpoint
	cpRead time.Time
}

// checkpointTTL is how long a checkpoint read is reused: the log publishes
// one a second.
const checkpointTTL = 250 * time.Millisecond

// NewClient reads the log at logURL. vkey is the checkpoints' verifier key;
// "" takes the one the log serves (/key) on first use.
func NewClient(logURL, vkey string, hc *http.Client) (*Client, error) {
	base, err := url.Parse(strings.TrimSuffix(logURL, "/") + "/")
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") {
		return nil, fmt.Errorf("transparency: the log's URL %q: want http(s)://host:port", logURL)
	}
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Second}
	}
	f, err := client.NewHTTPFetcher(base, hc)
	if err != nil {
		return nil, err
	}
	return &Client{base: base, hc: hc, fetch: f, vkey: vkey}, nil
}

func (c *Client) get(ctx context.Context, path string) ([]byte, int, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", c.base.JoinPath(path).String(), nil)
	if err != nil {
		return nil, 0, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("transparency: the log: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return b, resp.StatusCode, err
}

// VerifierKey is the key that checks the log's checkpoints.
func (c *Client) VerifierKey(ctx context.Context) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.vkey != "" {
		return c.vkey, nil
	}
	b, code, err := c.get(ctx, "key")
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("answered %d", code)
	}
	if err != nil {
		return "", fmt.Errorf("transparency: the log's key: %w", err)
	}
	c.vkey = strings.TrimSpace(string(b))
	return c.vkey, nil
}

// Checkpoint returns the log's latest signed checkpoint, checked.
func (c *Client) Checkpoint(ctx context.Context) ([]byte, error) {
	raw, _, err := c.checkpoint(ctx)
	return raw, err
}

func (c *Client) checkpoint(ctx context.Context) ([]byte, *log.Checkpoint, error) {
	vkey, err := c.VerifierKey(ctx)
	if err != nil {
		return nil, nil, err
	}
	c.mu.Lock()
	if c.cp != nil && time.Since(c.cpRead) < checkpointTTL {
		raw, cp := c.cpRaw, c.cp
		c.mu.Unlock()
		return raw, cp, nil
	}
	c.mu.Unlock()
	raw, err := c.fetch.ReadCheckpoint(ctx)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("%w: the log has no checkpoint yet", schemas.ErrNotLogged)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("transparency: the log's checkpoint: %w", err)
	}
	cp, err := OpenCheckpoint(raw, vkey)
	if err != nil {
		return nil, nil, err
	}
	// What the log serves, even a smaller tree: monitors reading it
	// through the API must see a log that went back.
	c.mu.Lock()
	c.cpRaw, c.cp, c.cpRead = raw, cp, time.Now()
	c.mu.Unlock()
	return raw, cp, nil
}

// Proof proves receiptID is in the log's latest checkpoint; ErrNotLogged
// when it is not (yet).
func (c *Client) Proof(ctx context.Context, receiptID string) (*schemas.InclusionProof, error) {
	b, code, err := c.get(ctx, "index/"+url.PathEscape(receiptID))
	switch {
	case err != nil:
		return nil, err
	case code == http.StatusNotFound:
		return nil, schemas.ErrNotLogged
	case code != http.StatusOK:
		return nil, fmt.Errorf("transparency: the log's index answered %d", code)
	}
	var at struct {
		Index uint64 `json:"index"`
	}
	if err := json.Unmarshal(b, &at); err != nil {
		return nil, fmt.Errorf("transparency: the log's index: %w", err)
	}
	raw, cp, err := c.checkpoint(ctx)
	if err != nil {
		return nil, err
	}
	if at.Index >= cp.Size {
		return nil, fmt.Errorf("%w: leaf %d is past the checkpoint's %d leaves; it is in the next one", schemas.ErrNotLogged, at.Index, cp.Size)
	}
	pb, err := client.NewProofBuilder(ctx, cp.Size, c.fetch.ReadTile)
	if err != nil {
		return nil, fmt.Errorf("transparency: %w", err)
	}
	hashes, err := pb.InclusionProof(ctx, at.Index)
	if err != nil {
		return nil, fmt.Errorf("transparency: proof of leaf %d: %w", at.Index, err)
	}
	p := &schemas.InclusionProof{ReceiptID: receiptID, LeafIndex: at.Index, TreeSize: cp.Size,
		RootHash: encodeHashes([][]byte{cp.Hash})[0], Hashes: encodeHashes(hashes), Checkpoint: string(raw)}
	vkey, _ := c.VerifierKey(ctx)
	if _, err := VerifyInclusion(receiptID, p, vkey); err != nil {
		// The index named a leaf that is not this receipt's.
		return nil, fmt.Errorf("transparency: the log's index is wrong for %s: %w", receiptID, err)
	}
	return p, nil
}

// Consistency proves the tree of from leaves is a prefix of the tree of to
// leaves; to 0 is the latest checkpoint, which the proof then carries.
func (c *Client) Consistency(ctx context.Context, from, to uint64) (*schemas.ConsistencyProof, error) {
	raw, cp, err := c.checkpoint(ctx)
	if err != nil {
		return nil, err
	}
	out := &schemas.ConsistencyProof{From: from, To: to}
	if to == 0 {
		out.To, out.Checkpoint = cp.Size, string(raw)
	}
	if from > out.To || out.To > cp.Size || from == 0 {
		return nil, fmt.Errorf("%w: from %d and to %d must be 1 <= from <= to <= %d, the log's size", schemas.ErrBadTreeSize, from, out.To, cp.Size)
	}
	pb, err := client.NewProofBuilder(ctx, out.To, c.fetch.ReadTile)
	if err != nil {
		return nil, fmt.Errorf("transparency: %w", err)
	}
	hashes, err := pb.ConsistencyProof(ctx, from, out.To)
	if err != nil {
		return nil, fmt.Errorf("transparency: consistency %d..%d: %w", from, out.To, err)
	}
	out.Hashes = encodeHashes(hashes)
	return out, nil
}
