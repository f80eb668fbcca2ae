package schemas

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/go-json-experiment/json/jsontext"
)

// Errors returned by Canonicalize and CanonicalizeObject. They wrap the
// decoder's error, which carries the byte offset of the problem.
var (
	ErrInvalidJSON  = errors.New("invalid JSON")
	ErrDuplicateKey = errors.New("duplicate object key")
	ErrNotObject    = errors.New("payload must be a JSON object")
)

// Canonicalize returns the RFC 8785 (JCS) form of a JSON text: object members
// sorted by UTF-16 code units, numbers as IEEE-754 doubles in ECMAScript form,
// minimal string escaping, no insignificant whitespace. Duplicate keys and
// invalid UTF-8 are rejected because they make the canonical form ambiguous.
//
// The work is done by go-json-experiment's jsontext, whose Canonicalize is an
// RFC 8785 implementation maintained by the authors of Go's encoding/json/v2.
func Canonicalize(in []byte) ([]byte, error) {
	v := jsontext.Value(append([]byte(nil), in...))
	if err := v.Canonicalize(); err != nil {
		if errors.Is(err, jsontext.ErrDuplicateName) {
			return nil, fmt.Errorf("%w: %w", ErrDuplicateKey, err)
		}
		return nil, fmt.Errorf("%w: %w", ErrInvalidJSON, err)
	}
	// jsontext clamps numbers beyond the double range to ±MaxFloat64, which
	// would sign a different number than the client sent; ECMAScript reads
	// them as Infinity, which JCS cannot express. Only clamped output can
	// hide one, so the input is rescanned only then.
	if bytes.Contains(v, maxDouble) {
		if err := rejectOverflow(in); err != nil {
			return nil, err
		}
	}
	return v, nil
}

var maxDouble = []byte("1.7976931348623157e+308")

func rejectOverflow(in []byte) error {
	dec := jsontext.NewDecoder(bytes.NewReader(in))
	for {
		tok, err := dec.ReadToken()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidJSON, err)
		}
		if tok.Kind() == '0' {
			if _, err := strconv.ParseFloat(tok.String(), 64); err != nil {
				return fmt.Errorf("%w: number %s is outside the IEEE-754 double range", ErrInvalidJSON, tok.String())
			}
		}
	}
}

// CanonicalizeObject is Canonicalize for receipt payloads, which must be
// JSON objects.
func CanonicalizeObject(in []byte) ([]byte, error) {
	out, err := Canonicalize(in)
	if err != nil {
		return nil, err
	}
	if jsontext.Value(out).Kind() != '{' {
		return nil, ErrNotObject
	}
	return out, nil
}
