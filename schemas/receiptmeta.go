package schemas

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/go-json-experiment/json/jsontext"
)

// An organization may have static metadata added to every payload it
// signs (from APIVersionWhiteLabel on). It goes in the payload, under one
// reserved top-level member, so it is signed and the receipt stays v1:
// the protected header stays {"alg","kid"}, and any v1 verifier checks
// the payload as it checks any other. The caller's own members are never
// touched; a payload that already has the member is refused rather than
// merged, so a receipt's metadata is always the organization's.

// ReceiptMetaMember is the payload member holding the organization's
// metadata.
const ReceiptMetaMember = "certnode_meta"

// ErrReservedMember marks a payload that has ReceiptMetaMember itself
// while its organization adds metadata.
var ErrReservedMember = errors.New("reserved member")

// HasMember reports whether the JSON object obj has a top-level member
// named name (escapes in names are decoded).
func HasMember(obj []byte, name string) (bool, error) {
	dec := jsontext.NewDecoder(bytes.NewReader(obj))
	tok, err := dec.ReadToken()
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrInvalidJSON, err)
	}
	if tok.Kind() != '{' {
		return false, ErrNotObject
	}
	for dec.PeekKind() != '}' {
		tok, err := dec.ReadToken()
		if err != nil {
			return false, fmt.Errorf("%w: %w", ErrInvalidJSON, err)
		}
		if tok.String() == name {
			return true, nil
		}
		if err := dec.SkipValue(); err != nil {
			return false, fmt.Errorf("%w: %w", ErrInvalidJSON, err)
		}
	}
	return false, nil
}

// WithReceiptMeta is payload (a JSON object) with meta (a JSON object)
// under ReceiptMetaMember, in canonical (JCS) form; ErrReservedMember when
// the payload has that member already.
func WithReceiptMeta(payload, meta []byte) ([]byte, error) {
	canon, err := CanonicalizeObject(payload)
	if err != nil {
		return nil, err
	}
	if has, err := HasMember(canon, ReceiptMetaMember); err != nil || has {
		if err == nil {
			err = fmt.Errorf("%w: the payload has a top-level %q member, which holds the organization's receipt metadata", ErrReservedMember, ReceiptMetaMember)
		}
		return nil, err
	}
	out := make([]byte, 0, len(canon)+len(meta)+len(ReceiptMetaMember)+4)
	out = append(out, `{"`+ReceiptMetaMember+`":`...)
	out = append(out, meta...)
	if len(canon) > 2 {
		out = append(out, ',')
	}
	out = append(out, canon[1:]...)
	return CanonicalizeObject(out)
}
