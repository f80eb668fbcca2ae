package ingest

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/certnode/certnode/schemas"
)

func readAll(t testing.TB, input []byte, max int, chunked bool) []line {
	var r io.Reader = bytes.NewReader(input)
	if chunked {
		r = iotest.OneByteReader(r)
	}
	lr := newLineReader(r, max)
	var out []line
	for {
		l, err := lr.next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		l.doc = append([]byte(nil), l.doc...)
		out = append(out, l)
	}
}

func TestLineReader(t *testing.T) {
	long := bytes.Repeat([]byte("x"), 40)
	in := []byte("{\"a\":1}\n\n  \r\n" + string(long) + "\n{\"b\":2}")
	got := readAll(t, in, 16, false)
	want := []line{{n: 1, doc: []byte(`{"a":1}`)}, {n: 2, doc: []byte{}}, {n: 3, doc: []byte{}}, {n: 4, tooLong: true}, {n: 5, doc: []byte(`{"b":2}`)}}
	if len(got) != len(want) {
		t.Fatalf("got %d lines, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i].n != want[i].n || got[i].tooLong != want[i].tooLong || !bytes.Equal(got[i].doc, want[i].doc) {
			t.Errorf("line %d: got %+v, want %+v", i+1, got[i], want[i])
		}
	}
	if n := len(readAll(t, []byte("a\n"), 16, false)); n != 1 {
		t.Errorf("a trailing newline made %d lines", n)
	}
	broken := newLineReader(iotest.ErrReader(errors.New("reset")), 16)
	if _, err := broken.next(); err == nil || err == io.EOF {
		t.Errorf("a broken upload read as %v", err)
	}
}

// FuzzLineReader checks that any upload splits into consecutively numbered
// lines, none longer than the limit, that together hold every byte of the
// input that is not whitespace around a line or inside an over-long line,
// however the bytes arrive.
func FuzzLineReader(f *testing.F) {
	f.Add([]byte("{\"a\":1}\n\n{\"b\":2}"), uint8(16))
	f.Add([]byte("\n\n\n"), uint8(1))
	f.Add(bytes.Repeat([]byte("y"), 300), uint8(8))
	f.Fuzz(func(t *testing.T, input []byte, max uint8) {
		limit := int(max%64) + 1
		a, b := readAll(t, input, limit, false), readAll(t, input, limit, true)
		if len(a) != len(b) {
			t.Fatalf("chunking changed the line count: %d vs %d", len(a), len(b))
		}
		nl := int64(bytes.Count(input, []byte("\n")))
		if len(input) > 0 && input[len(input)-1] != '\n' {
			nl++
		}
		if int64(len(a)) != nl {
			t.Fatalf("%d lines for %d newline-separated lines", len(a), nl)
		}
		for i, l := range a {
			if l.n != int64(i+1) {
				t.Fatalf("line %d numbered %d", i+1, l.n)
			}
			if len(l.doc) > limit || (l.tooLong && len(l.doc) > 0) {
				t.Fatalf("line %d: %d bytes over the %d limit", l.n, len(l.doc), limit)
			}
			if !l.tooLong && !bytes.Equal(l.doc, b[i].doc) || l.tooLong != b[i].tooLong {
				t.Fatalf("line %d differs when read byte by byte", l.n)
			}
			if !bytes.Contains(input, l.doc) {
				t.Fatalf("line %d holds bytes not in the input", l.n)
			}
		}
	})
}

// FuzzUnwrapReceipt: a verify job's line is read as the receipt it wraps
// (with the JWKS it names) only when it is an object with an object
// "receipt" and no "protected"; otherwise the line itself is the receipt,
// with no JWKS. It never panics.
func FuzzUnwrapReceipt(f *testing.F) {
	f.Add([]byte(`{"receipt":{"protected":"x"}}`))
	f.Add([]byte(`{"receipt":{"protected":"x"},"jwks":{"keys":[]}}`))
	f.Add([]byte(`{"receipt":{"protected":"x"},"jwks":null}`))
	f.Add([]byte(`{"line":1,"status":"signed","receipt":{"a":1}}`))
	f.Add([]byte(`{"protected":"x","receipt":{},"jwks":{}}`))
	f.Add([]byte(`{"receipt":null}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, doc []byte) {
		got, jwks := unwrapReceipt(doc)
		if bytes.Equal(got, doc) {
			if jwks != nil {
				t.Fatalf("a line read as a bare receipt carries a JWKS %q", jwks)
			}
			return
		}
		v := jsontext.Value(got)
		if !v.IsValid() || v.Kind() != '{' || !bytes.Contains(doc, bytes.TrimSpace(got)) {
			t.Fatalf("unwrapped %q into %q, not an object it holds", doc, got)
		}
		if jwks != nil && (!jwks.IsValid() || !schemas.Present(jwks) || !bytes.Contains(doc, bytes.TrimSpace(jwks))) {
			t.Fatalf("unwrapped %q into the JWKS %q, not a value it holds", doc, jwks)
		}
	})
}
