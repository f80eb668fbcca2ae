package coordinator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/go-json-experiment/json"
)

// nodeClient sends other tiers' requests to the cluster's node routes
// with the node token: each address is tried until one answers (any
// member forwards writes to the leader); an answer under 500 is the
// cluster's and final, since another member would give the same.
type nodeClient struct {
	addrs  []string
	token  string
	client *http.Client
}

// StatusError is an answer of the cluster other than 200 or 204.
type StatusError struct {
	Addr   string
	Status int
	Body   []byte // its start
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s: status %d: %.300s", e.Addr, e.Status, e.Body)
}

// maxNodeAnswer bounds an answer read: a certificate store value with
// room for its encoding.
const maxNodeAnswer = 2 * maxCertValue

// call sends in (nil: no body) and decodes a 200 answer into out (nil:
// ignored). It returns the status of the last answer (0: none came); an
// answer other than 200 or 204 is a *StatusError in the error.
func (c *nodeClient) call(ctx context.Context, method, path string, in, out any) (int, error) {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return 0, err
		}
	}
	var errs []error
	status := 0
	for _, addr := range c.addrs {
		req, err := http.NewRequestWithContext(ctx, method, BaseURL(addr)+path, bytes.NewReader(body))
		if err != nil {
			return 0, err
		}
		req.Header.Set("Authorization", "Bearer "+c.token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.client.Do(req)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxNodeAnswer))
		resp.Body.Close()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		status = resp.StatusCode
		switch {
		case status == http.StatusOK && out != nil:
			if err := json.Unmarshal(b, out, json.RejectUnknownMembers(false)); err != nil {
				return status, fmt.Errorf("%s %s: %w", method, path, err)
			}
			return status, nil
		case status == http.StatusOK || status == http.StatusNoContent:
			return status, nil
		}
		errs = append(errs, &StatusError{Addr: addr, Status: status, Body: b[:min(len(b), 300)]})
		if status < 500 {
			break
		}
	}
	return status, fmt.Errorf("%s %s: %w", method, path, errors.Join(errs...))
}
