package schemas

import "encoding/base64"

// b64u is base64url without padding, the only encoding receipts use. It
// decodes strictly: unused trailing bits must be zero, so each byte string
// has exactly one accepted encoding (otherwise one signature could be
// written 16 ways, each with its own receipt_id).
var b64u = base64.RawURLEncoding.Strict()

// B64U encodes b as base64url without padding.
func B64U(b []byte) string { return b64u.EncodeToString(b) }
