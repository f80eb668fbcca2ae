package coordinator

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// cmdBlockAddress and cmdUnblockAddress stand apart from the other
// commands' numbers.
const (
	cmdBlockAddress   cmdType = 26
	cmdUnblockAddress cmdType = 27
)

// Block keeps an address out of ingest until a time: a response to a
// security alert (the threat detector asks for it), or the operator's.
type Block struct {
	Addr   string    `json:"addr"`
	Until  time.Time `json:"until"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

// maxBlocks bounds the blocks kept; expired ones go first.
const maxBlocks = 10_000

// BlockAddress blocks Addr until Until; a later Until extends a block.
type BlockAddress struct {
	Meta  `json:"meta,omitzero"`
	Addr  string    `json:"addr"`
	Until time.Time `json:"until"`
	// Reason says why (the alert), for the operator and the answer ingest
	// gives the address.
	Reason string `json:"reason"`
}

func (*BlockAddress) cmdType() cmdType { return cmdBlockAddress }
func (c *BlockAddress) validate(s *State) error {
	a, err := netip.ParseAddr(c.Addr)
	switch {
	case err != nil || a.Unmap().String() != c.Addr:
		return invalid("addr %q: an IP address, in its canonical form", c.Addr)
	case !c.Until.After(c.Meta.At) || c.Until.Sub(c.Meta.At) > 30*24*time.Hour:
		return invalid("until must be in the next 30 days")
	case len(c.Reason) > 200:
		return invalid("reason is at most 200 bytes")
	case s.Blocks[c.Addr] == nil && s.blocksInForce(c.Meta.At) >= maxBlocks:
		return invalid("%d addresses are blocked already", maxBlocks)
	}
	return nil
}

// blocksInForce counts the blocks not expired at at (apply drops the
// others).
func (s *State) blocksInForce(at time.Time) int {
	n := 0
	for _, b := range s.Blocks {
		if b.Until.After(at) {
			n++
		}
	}
	return n
}
func (c *BlockAddress) apply(s *State) {
	for addr, b := range s.Blocks {
		if !b.Until.After(c.Meta.At) {
			delete(s.Blocks, addr)
		}
	}
	if b := s.Blocks[c.Addr]; b != nil && b.Until.After(c.Until) {
		return
	}
	s.Blocks[c.Addr] = &Block{Addr: c.Addr, Until: c.Until.UTC(), Reason: c.Reason, At: c.Meta.At}
}
func (c *BlockAddress) audit() (string, string, string) { return "address.block", "", c.Addr }

// UnblockAddress lifts a block.
type UnblockAddress struct {
	Meta `json:"meta,omitzero"`
	Addr string `json:"addr"`
}

func (*UnblockAddress) cmdType() cmdType { return cmdUnblockAddress }
func (c *UnblockAddress) validate(s *State) error {
	if s.Blocks[c.Addr] == nil {
		return fmt.Errorf("%w: no block of %q", ErrNotFound, c.Addr)
	}
	return nil
}
func (c *UnblockAddress) apply(s *State)                  { delete(s.Blocks, c.Addr) }
func (c *UnblockAddress) audit() (string, string, string) { return "address.unblock", "", c.Addr }

// block answers POST /v1/node/blocks (the detector) and
// /v1/admin/blocks (the operator): {"addr", "until", "reason"}.
func (s *Server) block(w http.ResponseWriter, r *http.Request, body []byte) {
	var c BlockAddress
	if err := decodeBody(body, &c); err != nil {
		s.fail(w, err)
		return
	}
	c.Meta.At = time.Now().UTC()
	s.write(w, r, body, &c, http.StatusNoContent, nil)
}

// listBlocks answers GET /v1/admin/blocks: the blocks in force.
func (s *Server) listBlocks(w http.ResponseWriter, _ *http.Request, _ []byte) {
	now := time.Now()
	out := []Block{}
	s.node.fsm.View(func(st *State) {
		for _, b := range st.Blocks {
			if b.Until.After(now) {
				out = append(out, *b)
			}
		}
	})
	slices.SortFunc(out, func(a, b Block) int { return strings.Compare(a.Addr, b.Addr) })
	writeJSON(w, http.StatusOK, map[string]any{"blocks": out})
}

// unblock answers DELETE /v1/admin/blocks/{addr}.
func (s *Server) unblock(w http.ResponseWriter, r *http.Request, body []byte) {
	s.write(w, r, body, &UnblockAddress{Addr: r.PathValue("addr")}, http.StatusNoContent, nil)
}

// Blocked reports whether addr is blocked now, and until when and why.
func (r *Replica) Blocked(addr netip.Addr) (Block, bool) {
	st := r.state.Load()
	if st == nil || len(st.blocks) == 0 {
		return Block{}, false
	}
	b, ok := st.blocks[addr.Unmap().String()]
	if !ok || !time.Now().Before(b.Until) {
		return Block{}, false
	}
	return b, true
}

// Block asks the cluster to block addr at ingest until a time (the threat
// detector's response to an alert).
func (r *Replica) Block(ctx context.Context, addr string, until time.Time, reason string) error {
	return r.postNode(ctx, "/v1/node/blocks", BlockAddress{Addr: addr, Until: until, Reason: reason})
}
