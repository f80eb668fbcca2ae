package analytics

import (
	"errors"
	"testing"

	"github.com/certnode/certnode/schemas"
)

// A cursor from a client is one encode made, or refused as a bad query.
func FuzzRequestCursor(f *testing.F) {
	f.Add(requestCursor{at: 1793059200, id: "req_1", receiptID: "rid"}.encode())
	f.Add("WyIxIiwiYSIsIiJd")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := decodeRequestCursor(s)
		if err != nil {
			if !errors.Is(err, schemas.ErrBadAnalyticsQuery) {
				t.Fatalf("error %v is not a bad query", err)
			}
			return
		}
		if c.encode() != s || c.id == "" || c.at < 0 {
			t.Fatalf("accepted %q as %+v", s, c)
		}
	})
}
