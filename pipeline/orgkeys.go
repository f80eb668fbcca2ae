package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/certnode/certnode/schemas"
)

// OrgKeys are organizations' own signing keys (signer.OrgKeys).
type OrgKeys interface {
	// Sign signs with the organization's active key; ok is false when it
	// has none (the service's key signs). An error with ok means it has
	// one this worker cannot use now.
	Sign(ctx context.Context, org string, payload []byte) (rc *schemas.Receipt, ok bool, err error)
	// KeySet verifies the organization's own receipts (nil: none).
	KeySet(org string) *schemas.KeySet
	// KidOrg names the organization whose own key kid is.
	KidOrg(kid string) (string, bool)
}

// ReasonOrgKeyUnavailable fails a sign request whose organization's
// active key this worker could not use for Config.OrgKeyWait.
const ReasonOrgKeyUnavailable = "org_key_unavailable"

// signFor signs a request with its organization's active key when it has
// one, else with the service's. An organization's request is never signed
// with another key than its own: when its key cannot be used here the
// error is transient and the record is retried (the key is published
// before it activates, so every worker has normally opened it), until the
// key has failed here for OrgKeyWait; then the request fails, so that the
// other tenants of its partition are not held up behind it.
func (w *Worker) signFor(ctx context.Context, req *schemas.Request) (*schemas.Receipt, error) {
	if w.cfg.OrgKeys != nil {
		rc, ok, err := w.cfg.OrgKeys.Sign(ctx, req.Tenant, req.Payload)
		if ok {
			if err != nil && !invalidPayload(err) {
				w.m.orgKeyWaits.Inc()
				if w.orgKeysDown.failing(req.Tenant) >= w.cfg.OrgKeyWait {
					return nil, refuse(ReasonOrgKeyUnavailable, err)
				}
			} else {
				w.orgKeysDown.works(req.Tenant)
			}
			return rc, err
		}
	}
	return w.signer.Sign(ctx, req.Payload)
}

// keysDown keeps since when each organization's key has failed here.
type keysDown struct {
	mu    sync.Mutex
	since map[string]time.Time
}

// failing records a failure of org's key and says how long it has failed.
func (d *keysDown) failing(org string) time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	since, ok := d.since[org]
	if !ok {
		if d.since == nil {
			d.since = map[string]time.Time{}
		}
		since = time.Now()
		d.since[org] = since
	}
	return time.Since(since)
}

// works records that org's key signed.
func (d *keysDown) works(org string) {
	d.mu.Lock()
	delete(d.since, org)
	d.mu.Unlock()
}

// invalidPayload reports an error that is the payload's, not the key's.
func invalidPayload(err error) bool {
	return errors.Is(err, schemas.ErrInvalidJSON) || errors.Is(err, schemas.ErrNotObject) || errors.Is(err, schemas.ErrDuplicateKey)
}

// verifyService verifies a receipt with the service's keys: those of the
// service's ring, and the tenant's own organization's. A receipt signed by
// another organization's key is not valid for this tenant
// (kid_other_org), whether or not its signature is good.
func (w *Worker) verifyService(tenant string, receipt []byte) (*schemas.Receipt, error) {
	rc, err := w.signer.KeySet().Verify(receipt)
	if w.cfg.OrgKeys == nil || rc == nil || !errors.Is(err, schemas.ErrUnknownKid) {
		return rc, err
	}
	if own := w.cfg.OrgKeys.KeySet(tenant); own != nil && own.Has(rc.Kid) {
		return rc, own.VerifyReceipt(rc)
	}
	if org, ok := w.cfg.OrgKeys.KidOrg(rc.Kid); ok && org != tenant {
		return rc, &schemas.VerifyError{Reason: schemas.ReasonKidOtherOrg, Detail: fmt.Sprintf("kid %q is another organization's key", rc.Kid)}
	}
	return rc, err
}
