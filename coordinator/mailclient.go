package coordinator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	cnmail "github.com/certnode/certnode/internal/mail"
)

// MailClient is the mailer's client of the coordinator's outbox (the
// /v1/node/email routes): it implements mail.Queue and mail.Enqueuer.
type MailClient struct{ node *nodeClient }

// NewMailClient reaches the cluster at addrs (any member forwards writes
// to the leader) with the node token.
func NewMailClient(addrs []string, tlsCfg *tls.Config, token string) (*MailClient, error) {
	if len(addrs) == 0 || len(token) < 16 {
		return nil, errors.New("coordinator: the mailer needs the coordinator's addresses and the node token ($CERTNODE_NODE_TOKEN)")
	}
	return &MailClient{node: &nodeClient{addrs: addrs, token: token, client: HTTPClient(tlsCfg, 30*time.Second)}}, nil
}

var (
	_ cnmail.Queue    = (*MailClient)(nil)
	_ cnmail.Enqueuer = (*MailClient)(nil)
)

// call sends in (nil: no body) and decodes a 200 answer into out; it
// reports whether there was one (204: none). A refusal (4xx) wraps
// mail.ErrRefused when asking again cannot help.
func (c *MailClient) call(ctx context.Context, method, path string, in, out any) (bool, error) {
	status, err := c.node.call(ctx, method, path, in, out)
	var se *StatusError
	if errors.As(err, &se) && se.Status < 500 {
		// The same request gets the same answer, unless the answer is
		// about the mailer (its token, its pace): that is retried.
		switch se.Status {
		case http.StatusUnauthorized, http.StatusForbidden, http.StatusRequestTimeout, http.StatusTooManyRequests:
		default:
			err = fmt.Errorf("%w: %w", cnmail.ErrRefused, err)
		}
	}
	return err == nil && status == http.StatusOK, err
}

// Claim implements mail.Queue.
func (c *MailClient) Claim(ctx context.Context, cl cnmail.Claim) (*cnmail.Job, error) {
	var j cnmail.Job
	ok, err := c.call(ctx, "POST", "/v1/node/email/claim", cl, &j)
	if err != nil || !ok {
		return nil, err
	}
	return &j, nil
}

// Report implements mail.Queue.
func (c *MailClient) Report(ctx context.Context, id string, o cnmail.Outcome) error {
	_, err := c.call(ctx, "POST", "/v1/node/email/messages/"+url.PathEscape(id)+"/outcome", o, nil)
	return err
}

// KeyRequests implements mail.Queue.
func (c *MailClient) KeyRequests(ctx context.Context) ([]cnmail.KeyRequest, error) {
	var out struct {
		Domains []cnmail.KeyRequest `json:"domains"`
	}
	_, err := c.call(ctx, "GET", "/v1/node/email/keys", nil, &out)
	return out.Domains, err
}

// ReportKey implements mail.Queue.
func (c *MailClient) ReportKey(ctx context.Context, k cnmail.KeyRequest, record string) error {
	_, err := c.call(ctx, "PUT", "/v1/node/email/domains/"+url.PathEscape(k.Org)+"/"+url.PathEscape(k.Domain)+"/key",
		cnmail.KeyReport{Selector: k.Selector, Record: record}, nil)
	return err
}

// Enqueue implements mail.Enqueuer.
func (c *MailClient) Enqueue(ctx context.Context, e cnmail.EventEmail) error {
	_, err := c.call(ctx, "POST", "/v1/node/email/events", e, nil)
	return err
}
