package exports

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"slices"
)

// ErrBadCursor is a cursor that is not one this export made: malformed,
// forged, or made for another organization, kind, range, filters or
// columns, or with another key.
var ErrBadCursor = fmt.Errorf("%w: bad cursor", ErrBadQuery)

// MinCursorKeyBytes is the shortest cursor key Config accepts.
const MinCursorKeyBytes = 32

// maxCursor bounds a cursor from a client. A key is two ids at most, and
// ids are bounded (schemas.MaxIDBytes), except the receipt_id of a verify
// result, which the client's receipt chose: this leaves it kilobytes.
const maxCursor = 16 << 10

const cursorVersion = 1

// position is where an export stands: past the row whose sort key is key,
// after rows rows since the export began.
type position struct {
	rows uint64
	key  []string
}

// cursorMAC authenticates a cursor's payload for one export: its
// identity (the organization, kind, range, filters and columns, as
// Query.identity encodes them) is in the MAC, not in the cursor, so that a
// cursor says nothing of them and fits no other export.
func cursorMAC(key, identity, payload []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("certnode exports cursor\x00"))
	m.Write(binary.AppendUvarint(nil, uint64(len(identity))))
	m.Write(identity)
	m.Write(payload)
	return m.Sum(nil)
}

// encodeCursor is base64url(payload || HMAC-SHA256), the payload being a
// version byte, the row count and each part of the key, length-prefixed
// (uvarints).
func encodeCursor(key, identity []byte, p position) string {
	b := encodePayload(p)
	return base64.RawURLEncoding.EncodeToString(append(b, cursorMAC(key, identity, b)...))
}

func encodePayload(p position) []byte {
	b := []byte{cursorVersion}
	b = binary.AppendUvarint(b, p.rows)
	for _, k := range p.key {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
	}
	return b
}

// decodeCursor returns the position of a cursor encodeCursor made with the
// same key for the same export, whose sort key has parts parts; anything
// else is ErrBadCursor.
func decodeCursor(key, identity []byte, parts int, s string) (position, error) {
	if len(s) == 0 || len(s) > maxCursor {
		return position{}, ErrBadCursor
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil || len(raw) < sha256.Size {
		return position{}, ErrBadCursor
	}
	payload, mac := raw[:len(raw)-sha256.Size], raw[len(raw)-sha256.Size:]
	if !hmac.Equal(mac, cursorMAC(key, identity, payload)) {
		return position{}, ErrBadCursor
	}
	return parsePayload(payload, parts)
}

// parsePayload reads an authenticated payload; it holds only what
// encodeCursor writes (one encoding per position), which the fuzz targets
// check without a MAC in the way.
func parsePayload(b []byte, parts int) (position, error) {
	if len(b) == 0 || b[0] != cursorVersion {
		return position{}, ErrBadCursor
	}
	rest := b[1:]
	next := func() (uint64, bool) {
		v, n := binary.Uvarint(rest)
		if n <= 0 {
			return 0, false
		}
		rest = rest[n:]
		return v, true
	}
	var p position
	var ok bool
	if p.rows, ok = next(); !ok {
		return position{}, ErrBadCursor
	}
	for range parts {
		n, ok := next()
		if !ok || n > uint64(len(rest)) {
			return position{}, ErrBadCursor
		}
		p.key, rest = append(p.key, string(rest[:n])), rest[n:]
	}
	if len(rest) != 0 || !slices.Equal(encodePayload(p), b) {
		return position{}, ErrBadCursor
	}
	return p, nil
}
