package transparency

import (
	"slices"
	"testing"

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
