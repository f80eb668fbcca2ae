package egress

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"
)

// Config configures NewClient.
type Config struct {
	// Timeout bounds a whole request, connect to last body byte.
	Timeout time.Duration
	// Allow lists prefixes reachable although a refused range holds them
	// (certnode dev allows 127.0.0.0/8 for local receivers).
	Allow []netip.Prefix
	// Resolver looks names up (nil: the system's). Whatever it answers,
	// the guard judges the address connected to.
	Resolver *net.Resolver
}

// DefaultConfig returns the webhook defaults: 15 s per request, nothing
// allowed beyond public addresses.
func DefaultConfig() Config {
	return Config{Timeout: 15 * time.Second}
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if c.Timeout <= 0 {
		errs = append(errs, errors.New("egress: timeout must be positive"))
	}
	for i, p := range c.Allow {
		if !p.IsValid() {
			errs = append(errs, fmt.Errorf("egress: allow-list entry %d is not a valid prefix", i))
		}
	}
	return errors.Join(errs...)
}

// NewClient returns a client whose every connection passes the guard. It
// follows no redirects: a 3xx comes back to the caller as the response,
// since a redirect is the endpoint's answer, not a new address to trust.
// It ignores HTTP_PROXY and friends: a proxy connects on our behalf, past
// the guard.
func NewClient(c Config) (*http.Client, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	dialer := &net.Dialer{
		KeepAlive: 30 * time.Second,
		Resolver:  c.Resolver,
		Control:   NewGuard(c.Allow).Control,
	}
	transport := &http.Transport{
		Proxy:                 nil,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true, // a custom DialContext turns HTTP/2 off otherwise
		MaxIdleConns:          100,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &http.Client{
		Transport: transport,
		Timeout:   c.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}, nil
}
