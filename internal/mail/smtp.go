package mail

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	gomail "github.com/wneessen/go-mail"
)

// SMTPConfig is the relay mail goes through. The password comes from the
// environment ($CERTNODE_SMTP_PASSWORD or its _FILE), never a flag, and is
// never printed: LogValue and String leave it out.
type SMTPConfig struct {
	Addr     string // host:port of the relay (587: submission with STARTTLS)
	Username string
	Password string
	// RootCAs checks the relay's certificate (nil: the system's roots).
	RootCAs *x509.CertPool
	HELO    string // the name this client gives (default: the host name)
	Timeout time.Duration
	// RequireTLS requires STARTTLS on loopback too (it always is off it).
	RequireTLS bool
}

// PasswordEnv names the variable holding the SMTP password.
const PasswordEnv = "CERTNODE_SMTP_PASSWORD"

// LogValue keeps the password out of logs.
func (c SMTPConfig) LogValue() slog.Value {
	return slog.GroupValue(slog.String("addr", c.Addr), slog.String("username", c.Username), slog.Bool("password", c.Password != ""),
		slog.Bool("starttls_required", c.tlsRequired()))
}

// String keeps the password out of fmt output (%v and %+v).
func (c SMTPConfig) String() string {
	return fmt.Sprintf("smtp{addr=%s username=%s password_set=%t}", c.Addr, c.Username, c.Password != "")
}

// GoString keeps the password out of %#v.
func (c SMTPConfig) GoString() string { return c.String() }

// tlsRequired: STARTTLS is required unless the relay is on this machine,
// as for ClickHouse (internal/chconn): credentials and mail never cross a
// network in the clear.
func (c SMTPConfig) tlsRequired() bool {
	if c.RequireTLS {
		return true
	}
	host, _, _ := net.SplitHostPort(c.Addr)
	ip := net.ParseIP(host)
	return host != "localhost" && (ip == nil || !ip.IsLoopback())
}

// Validate reports every problem at once.
func (c *SMTPConfig) Validate() error {
	var errs []error
	host, port, err := net.SplitHostPort(c.Addr)
	if p, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || p < 1 || p > 65535 {
		errs = append(errs, fmt.Errorf("smtp: --smtp %q: want host:port", c.Addr))
	}
	if (c.Username == "") != (c.Password == "") {
		errs = append(errs, errors.New("smtp: give both a username (--smtp-username) and a password ($"+PasswordEnv+"), or neither"))
	}
	return errors.Join(errs...)
}

// SMTP sends raw messages through a relay: a connection per message
// (mail is rare; no idle connection to keep alive or lose).
type SMTP struct{ cfg SMTPConfig }

// NewSMTP checks cfg.
func NewSMTP(cfg SMTPConfig) (*SMTP, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	return &SMTP{cfg: cfg}, nil
}

// Send delivers raw (a built, possibly signed, message) from from to to.
// Its errors never hold the password.
func (s *SMTP) Send(ctx context.Context, from, to string, raw []byte) error {
	host, port, _ := net.SplitHostPort(s.cfg.Addr)
	p, _ := strconv.Atoi(port)
	policy := gomail.TLSMandatory
	if !s.cfg.tlsRequired() {
		policy = gomail.TLSOpportunistic
	}
	opts := []gomail.Option{gomail.WithPort(p), gomail.WithTimeout(s.cfg.Timeout), gomail.WithTLSPolicy(policy),
		gomail.WithTLSConfig(&tls.Config{ServerName: host, RootCAs: s.cfg.RootCAs, MinVersion: tls.VersionTLS12})}
	if s.cfg.HELO != "" {
		opts = append(opts, gomail.WithHELO(s.cfg.HELO))
	}
	if s.cfg.Username != "" {
		opts = append(opts, gomail.WithSMTPAuth(gomail.SMTPAuthAutoDiscover), gomail.WithUsername(s.cfg.Username),
			gomail.WithPassword(s.cfg.Password))
	}
	c, err := gomail.NewClient(host, opts...)
	if err != nil {
		return s.scrub(fmt.Errorf("smtp client: %w", err))
	}
	sc, err := c.DialToSMTPClientWithContext(ctx)
	if err != nil {
		return s.scrub(fmt.Errorf("smtp %s: %w", s.cfg.Addr, err))
	}
	defer c.CloseWithSMTPClient(sc)
	if err := sc.Mail("<" + from + ">"); err != nil {
		return s.scrub(fmt.Errorf("smtp MAIL FROM: %w", err))
	}
	if err := sc.Rcpt("<" + to + ">"); err != nil {
		return s.scrub(fmt.Errorf("smtp RCPT TO: %w", err))
	}
	w, err := sc.Data()
	if err != nil {
		return s.scrub(fmt.Errorf("smtp DATA: %w", err))
	}
	if _, err := w.Write(raw); err != nil {
		w.Close()
		return s.scrub(fmt.Errorf("smtp DATA: %w", err))
	}
	if err := w.Close(); err != nil {
		return s.scrub(fmt.Errorf("smtp DATA: %w", err))
	}
	return nil
}

// scrub removes the password from an error's text, should a server or a
// library ever echo it.
func (s *SMTP) scrub(err error) error {
	if s.cfg.Password == "" || !strings.Contains(err.Error(), s.cfg.Password) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), s.cfg.Password, "[redacted]"))
}
