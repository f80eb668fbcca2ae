package pipeline

import (
	"errors"

	"github.com/certnode/certnode/internal/apicustom"
	"github.com/certnode/certnode/schemas"
)

// OrgAPI gives organizations' API settings (the coordinator's replica):
// their receipt metadata and pinned API versions.
type OrgAPI interface {
	APISettings(org string) (apicustom.Settings, bool)
}

// ReasonReservedMember refuses a payload that has the receipt metadata's
// member while its organization adds metadata (ingest refuses its own
// requests with 400 reserved_member; a producer's record reaches the DLQ).
const ReasonReservedMember = "reserved_member"

// payloadFor is the payload a sign request is signed as: with its
// organization's receipt metadata (schemas.ReceiptMetaMember) when the
// organization has some and the request's API version includes it (the
// version ingest applied, or for a producer's record the one it names,
// else its organization's pin).
func (w *Worker) payloadFor(req *schemas.Request) ([]byte, error) {
	if w.cfg.API == nil {
		return req.Payload, nil
	}
	a, ok := w.cfg.API.APISettings(req.Tenant)
	if !ok || !schemas.Present(a.ReceiptMetadata) {
		return req.Payload, nil
	}
	v := req.APIVersion
	if v == "" {
		v = a.APIVersion
	}
	if !schemas.APIVersionAtLeast(v, schemas.APIVersionWhiteLabel) {
		return req.Payload, nil
	}
	p, err := schemas.WithReceiptMeta(req.Payload, a.ReceiptMetadata)
	if errors.Is(err, schemas.ErrReservedMember) {
		return nil, refuse(ReasonReservedMember, err)
	}
	return p, err
}
