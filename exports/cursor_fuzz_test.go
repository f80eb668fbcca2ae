package exports

import (
	"errors"
	"slices"
	"testing"
)

var (
	fuzzKey      = []byte("0123456789abcdef0123456789abcdef")
	fuzzIdentity = Query{Org: "acme", Kind: Results, From: from, To: to}.identity()
)

// A cursor from a client either is ErrBadCursor or is exactly the cursor
// encodeCursor makes for a position (the MAC keeps the fuzzer out of the
// payload parser, which FuzzParsePayload reaches directly).
func FuzzDecodeCursor(f *testing.F) {
	for _, s := range []string{"", "!!", "AQA", "AQAA", encodeCursor(fuzzKey, fuzzIdentity, position{rows: 7, key: []string{"r", "i"}}),
		encodeCursor(fuzzKey, fuzzIdentity, position{rows: 1 << 40, key: []string{"", "\x00\xff"}})} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := decodeCursor(fuzzKey, fuzzIdentity, 2, s)
		if err != nil {
			if !errors.Is(err, ErrBadCursor) || !errors.Is(err, ErrBadQuery) {
				t.Fatalf("%q: %v, want ErrBadCursor", s, err)
			}
			return
		}
		if len(p.key) != 2 {
			t.Fatalf("%q decodes to %d key parts", s, len(p.key))
		}
		if again := encodeCursor(fuzzKey, fuzzIdentity, p); again != s {
			t.Fatalf("%q decodes to %+v, which encodes to %q", s, p, again)
		}
	})
}

// An authenticated payload parses only as encodePayload writes it.
func FuzzParsePayload(f *testing.F) {
	f.Add([]byte{1, 0}, uint8(0))
	f.Add([]byte{1, 5, 1, 'a', 0}, uint8(2))
	f.Add([]byte{1, 0x80, 0x00}, uint8(0)) // a varint of two bytes for 0
	f.Add(encodePayload(position{rows: 300, key: []string{"abc", "d"}}), uint8(2))
	f.Fuzz(func(t *testing.T, b []byte, parts uint8) {
		n := int(parts % 3)
		p, err := parsePayload(b, n)
		if err != nil {
			if !errors.Is(err, ErrBadCursor) {
				t.Fatalf("%x: %v", b, err)
			}
			return
		}
		if len(p.key) != n || !slices.Equal(encodePayload(p), b) {
			t.Fatalf("%x parses to %+v", b, p)
		}
	})
}

// Every position survives the round trip, and fits no other export or key.
func FuzzCursorRoundTrip(f *testing.F) {
	f.Add(uint64(0), "", "", "acme")
	f.Add(uint64(1_000_000), "receipt-id", "req-1", "acme2")
	f.Fuzz(func(t *testing.T, rows uint64, a, b, org string) {
		p := position{rows: rows, key: []string{a, b}}
		s := encodeCursor(fuzzKey, fuzzIdentity, p)
		got, err := decodeCursor(fuzzKey, fuzzIdentity, 2, s)
		if fits := len(s) <= maxCursor; fits && (err != nil || got.rows != rows || !slices.Equal(got.key, p.key)) {
			t.Fatalf("%+v decodes to %+v, %v", p, got, err)
		} else if !fits && !errors.Is(err, ErrBadCursor) {
			t.Fatalf("a cursor of %d bytes: %v", len(s), err)
		}
		other := Query{Org: org, Kind: Results, From: from, To: to}.identity()
		if string(other) != string(fuzzIdentity) {
			if _, err := decodeCursor(fuzzKey, other, 2, s); !errors.Is(err, ErrBadCursor) {
				t.Fatalf("a cursor of acme resumes an export of %q: %v", org, err)
			}
		}
		if _, err := decodeCursor([]byte("another key, also thirty-two bytes"), fuzzIdentity, 2, s); !errors.Is(err, ErrBadCursor) {
			t.Fatalf("a cursor decodes with another key: %v", err)
		}
	})
}
