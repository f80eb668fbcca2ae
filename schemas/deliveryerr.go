package schemas

import "errors"

// ErrBadCursor is what a deliveries reader returns (wrapped) for a
// DeliveryQuery.Cursor it did not make, or cannot read any more: the
// deliveries API answers it with 400 invalid_cursor. It lives here so that
// the reader (deliveries/) and the API (ingest/) share it without importing
// each other.
var ErrBadCursor = errors.New("deliveries: bad cursor")
