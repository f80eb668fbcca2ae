// Package transparency reads and checks the transparency log of receipts
// (sinks/translog writes it): proofs for ingest's routes, built from the
// log's tiles; the offline checks of `certnode verify --proof`; and the
// monitor that follows the log's checkpoints and fails on a fork or a
// rewound tree.
package transparency

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"

	"github.com/transparency-dev/formats/log"
	fnote "github.com/transparency-dev/formats/note"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/certnode/certnode/schemas"
)

// ErrBadProof is wrapped by every proof or checkpoint that does not check.
var ErrBadProof = errors.New("transparency: bad proof")

// OpenCheckpoint checks a signed checkpoint against the log's verifier key
// (a C2SP note key: name+hash+key) and returns what it states; the origin
// is the key's name.
func OpenCheckpoint(raw []byte, vkey string) (*log.Checkpoint, error) {
	v, err := fnote.NewVerifier(vkey)
	if err != nil {
		return nil, fmt.Errorf("transparency: the log's key: %w", err)
	}
	cp, _, _, err := log.ParseCheckpoint(raw, v.Name(), v)
	if err != nil {
		return nil, fmt.Errorf("%w: the checkpoint: %v", ErrBadProof, err)
	}
	return cp, nil
}

// VerifyInclusion checks that p proves the receipt receiptID is in the log
// whose key is vkey, and returns the checkpoint it is proved against.
func VerifyInclusion(receiptID string, p *schemas.InclusionProof, vkey string) (*log.Checkpoint, error) {
	cp, err := OpenCheckpoint([]byte(p.Checkpoint), vkey)
	if err != nil {
		return nil, err
	}
	if cp.Size != p.TreeSize || base64.StdEncoding.EncodeToString(cp.Hash) != p.RootHash {
		return nil, fmt.Errorf("%w: the proof's tree (%d, %s) is not its checkpoint's (%d)", ErrBadProof, p.TreeSize, p.RootHash, cp.Size)
	}
	if receiptID != p.ReceiptID {
		return nil, fmt.Errorf("%w: the proof is of receipt %s, not %s", ErrBadProof, p.ReceiptID, receiptID)
	}
	hashes, err := decodeHashes(p.Hashes)
	if err != nil {
		return nil, err
	}
	leaf := schemas.LeafHash(schemas.ReceiptLeaf(receiptID))
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, p.LeafIndex, cp.Size, leaf, hashes, cp.Hash); err != nil {
		return nil, fmt.Errorf("%w: the receipt is not leaf %d of the checkpoint's tree: %v", ErrBadProof, p.LeafIndex, err)
	}
	return cp, nil
}

// VerifyConsistency checks that hashes prove the tree of older is a prefix
// of the tree of newer (both checked checkpoints of one log).
func VerifyConsistency(older, newer *log.Checkpoint, hashes []string) error {
	if older.Origin != newer.Origin {
		return fmt.Errorf("%w: checkpoints of two logs (%s, %s)", ErrBadProof, older.Origin, newer.Origin)
	}
	hs, err := decodeHashes(hashes)
	if err != nil {
		return err
	}
	if err := proof.VerifyConsistency(rfc6962.DefaultHasher, older.Size, newer.Size, hs, older.Hash, newer.Hash); err != nil {
		return fmt.Errorf("%w: tree %d is not a prefix of tree %d: %v", ErrBadProof, older.Size, newer.Size, err)
	}
	return nil
}

func decodeHashes(in []string) ([][]byte, error) {
	out := make([][]byte, len(in))
	for i, h := range in {
		b, err := base64.StdEncoding.DecodeString(h)
		if err != nil || len(b) != rfc6962.DefaultHasher.Size() {
			return nil, fmt.Errorf("%w: hash %d is not a base64 SHA-256", ErrBadProof, i)
		}
		out[i] = b
	}
	return out, nil
}

func encodeHashes(in [][]byte) []string {
	out := make([]string, len(in))
	for i, h := range in {
		out[i] = base64.StdEncoding.EncodeToString(h)
	}
	return out
}

// sameTree reports whether two checkpoints state the same tree.
func sameTree(a, b *log.Checkpoint) bool { return a.Size == b.Size && bytes.Equal(a.Hash, b.Hash) }
