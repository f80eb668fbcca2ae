package schemas

import "encoding/base64"

// b64u is base64url without padding, the only encoding receipts use.
var b64u = base64.RawURLEncoding

// B64U encodes b as base64url without padding.
func B64U(b []byte) string { return b64u.EncodeToString(b) }
