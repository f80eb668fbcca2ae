package deliveries

import (
	"errors"
	"math"
	"testing"

	"github.com/certnode/certnode/schemas"
)

// A cursor from a client either is ErrBadCursor or is exactly the cursor
// encodeCursor makes for a position a message can have.
func FuzzDecodeCursor(f *testing.F) {
	for _, s := range []string{"", "NTphYg", "NTphYh", "MDU6YWI", "LTU6YWI", "NDI5NDk2NzI5NjphYg", "!!", "NTphYg==",
		encodeCursor(cursor{1767225600, "msg_abcdefghijklmnopqrstuvwxyz"})} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := decodeCursor(s)
		if err != nil {
			if !errors.Is(err, ErrBadCursor) {
				t.Fatalf("%q: %v, want ErrBadCursor", s, err)
			}
			return
		}
		if c.createdAt < 0 || c.createdAt > math.MaxUint32 || c.id == "" || len(c.id) > schemas.MaxIDBytes {
			t.Fatalf("%q decodes to an impossible position %+v", s, c)
		}
		if again := encodeCursor(c); again != s {
			t.Fatalf("%q decodes to %+v, which encodes to %q", s, c, again)
		}
	})
}

// Every position a message can have survives the round trip.
func FuzzCursorRoundTrip(f *testing.F) {
	f.Add(int64(0), "m")
	f.Add(int64(math.MaxUint32), "msg_:x")
	f.Fuzz(func(t *testing.T, sec int64, id string) {
		c := cursor{createdAt: sec, id: id}
		got, err := decodeCursor(encodeCursor(c))
		valid := sec >= 0 && sec <= math.MaxUint32 && id != "" && len(id) <= schemas.MaxIDBytes
		if valid && (err != nil || got != c) {
			t.Fatalf("%+v decodes to %+v, %v", c, got, err)
		}
		if !valid && err == nil {
			t.Fatalf("impossible position %+v decoded", c)
		}
	})
}
