package schemas

import (
	"crypto/sha256"
	"errors"
)

// The transparency log holds one leaf per receipt the service signed: a
// hash of the receipt, never its payload, so that the log shows nothing of
// any organization and erasing a payload leaves every proof valid. Its
// tree is RFC 6962's (SHA-256, 0x00 before a leaf, 0x01 before two
// children), its checkpoints C2SP signed notes.

// receiptLeafPrefix versions the leaf encoding.
const receiptLeafPrefix = "certnode-receipt-v1\n"

// ReceiptLeaf is the leaf of a receipt: its receipt_id, which is the
// SHA-256 of everything the receipt signs and its signature, so anyone
// holding the receipt can recompute it.
func ReceiptLeaf(receiptID string) []byte { return []byte(receiptLeafPrefix + receiptID) }

// LeafHash is RFC 6962's hash of a leaf.
func LeafHash(leaf []byte) []byte {
	h := sha256.New()
	h.Write([]byte{0})
	h.Write(leaf)
	return h.Sum(nil)
}

// InclusionProof proves a receipt is in the log: the leaf at LeafIndex of
// the tree of TreeSize leaves whose root the signed Checkpoint states.
// Hashes are base64 (standard, as in checkpoints).
type InclusionProof struct {
	ReceiptID string   `json:"receipt_id"`
	LeafIndex uint64   `json:"leaf_index"`
	TreeSize  uint64   `json:"tree_size"`
	RootHash  string   `json:"root_hash"`
	Hashes    []string `json:"inclusion_proof"`
	// Checkpoint is the signed note of TreeSize and RootHash.
	Checkpoint string `json:"checkpoint"`
}

// ConsistencyProof proves the tree of From leaves is a prefix of the tree
// of To leaves, whose signed checkpoint it carries.
type ConsistencyProof struct {
	From       uint64   `json:"from"`
	To         uint64   `json:"to"`
	Hashes     []string `json:"consistency_proof"`
	Checkpoint string   `json:"checkpoint,omitempty"`
}

// Transparency log errors.
var (
	// ErrNotLogged: the receipt is not in a published checkpoint yet (or
	// never was, or is another organization's).
	ErrNotLogged = errors.New("not in the transparency log")
	// ErrBadTreeSize: a consistency proof asked between sizes the log
	// cannot prove (from > to, or to past its size).
	ErrBadTreeSize = errors.New("bad tree sizes")
)
