package mail

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/mail"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Queue is the coordinator's outbox as a mailer sees it.
type Queue interface {
	// Claim takes the next due message; nil when none is due.
	Claim(ctx context.Context, c Claim) (*Job, error)
	Report(ctx context.Context, id string, o Outcome) error
	KeyRequests(ctx context.Context) ([]KeyRequest, error)
	ReportKey(ctx context.Context, k KeyRequest, record string) error
}

// Transport delivers a built message (SMTP).
type Transport interface {
	Send(ctx context.Context, from, to string, raw []byte) error
}

// Config configures a Mailer.
type Config struct {
	Name      string // this mailer, as claims name it
	Queue     Queue
	Transport Transport
	// Keys holds the DKIM keys of sending domains and of the service;
	// nil: nothing is signed and sending domains get no key.
	Keys  KeyStore
	Links Links
	// From is the service's own sender, for organizations without a
	// verified sending domain; ServiceDKIM signs it when set.
	From        mail.Address
	ServiceDKIM *Sender
	// Backoff is the wait before each retry; an attempt past its length
	// is the last (so len(Backoff)+1 attempts in all).
	Backoff []time.Duration
	Poll    time.Duration // how often to ask for work when there was none
	Lease   time.Duration // how long a claim holds a message
	Metrics prometheus.Registerer
	Log     *slog.Logger
}

// DefaultBackoff waits longer after each failure: about a day in all.
var DefaultBackoff = []time.Duration{30 * time.Second, 2 * time.Minute, 10 * time.Minute, time.Hour, 4 * time.Hour, 12 * time.Hour}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if c.Name == "" || c.Queue == nil || c.Transport == nil {
		errs = append(errs, errors.New("mail: a mailer needs a name, a queue and a transport"))
	}
	if err := CheckBaseURL(c.Links.Base); err != nil {
		errs = append(errs, fmt.Errorf("mail: --public-url: %w", err))
	}
	if _, err := mail.ParseAddress(c.From.Address); err != nil || c.From.Address == "" {
		errs = append(errs, fmt.Errorf("mail: --mail-from %q is not an address", c.From.Address))
	}
	if c.ServiceDKIM != nil && c.Keys == nil {
		errs = append(errs, errors.New("mail: the service's DKIM key needs a key store"))
	}
	if len(c.Backoff) > 20 {
		errs = append(errs, errors.New("mail: at most 20 retries"))
	}
	return errors.Join(errs...)
}

// Mailer sends what the outbox holds and makes the DKIM keys sending
// domains need.
type Mailer struct {
	cfg    Config
	log    *slog.Logger
	sent   *prometheus.CounterVec
	failed *prometheus.CounterVec
}

// NewMailer checks cfg.
func NewMailer(cfg Config) (*Mailer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 2 * time.Second
	}
	if cfg.Lease <= 0 {
		cfg.Lease = 2 * time.Minute
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	m := &Mailer{cfg: cfg, log: cfg.Log.With("role", "mailer", "mailer", cfg.Name),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "certnode_mail_sent_total",
			Help: "Messages the relay accepted, by template."}, []string{"template"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "certnode_mail_failed_attempts_total",
			Help: "Attempts that failed, by template (a message retried counts each time)."}, []string{"template"})}
	if cfg.Metrics != nil {
		if err := errors.Join(cfg.Metrics.Register(m.sent), cfg.Metrics.Register(m.failed)); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Run makes the service's key, then sends until ctx ends.
func (m *Mailer) Run(ctx context.Context) error {
	if s := m.cfg.ServiceDKIM; s != nil {
		k, err := m.cfg.Keys.Key(ctx, KeyName(s.Selector, s.Domain), true)
		if err != nil {
			return fmt.Errorf("mail: the service's DKIM key: %w", err)
		}
		rec, err := RecordValue(k.Public())
		if err != nil {
			return err
		}
		m.log.Info("the service signs its mail: publish this DKIM record", "name", RecordName(s.Selector, s.Domain), "txt", rec)
	}
	for {
		worked := m.Step(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if !worked {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(m.cfg.Poll):
			}
		}
	}
}

// Step makes missing keys and sends one due message; it reports whether
// it found work, so Run asks again at once.
func (m *Mailer) Step(ctx context.Context) bool {
	worked := m.makeKeys(ctx)
	job, tokens, err := m.claim(ctx)
	if err != nil {
		if ctx.Err() == nil {
			m.log.Warn("asking the coordinator for mail failed; retried", "err", err)
		}
		return worked
	}
	if job == nil {
		return worked
	}
	m.deliver(ctx, job, tokens)
	return true
}

// makeKeys makes a DKIM key for each sending domain that has none and
// reports its public record.
func (m *Mailer) makeKeys(ctx context.Context) bool {
	if m.cfg.Keys == nil {
		return false
	}
	reqs, err := m.cfg.Queue.KeyRequests(ctx)
	if err != nil {
		if ctx.Err() == nil {
			m.log.Warn("asking the coordinator for sending domains failed; retried", "err", err)
		}
		return false
	}
	for _, r := range reqs {
		k, err := m.cfg.Keys.Key(ctx, KeyName(r.Selector, r.Domain), true)
		if err == nil {
			var rec string
			if rec, err = RecordValue(k.Public()); err == nil {
				err = m.cfg.Queue.ReportKey(ctx, r, rec)
			}
		}
		if err != nil {
			m.log.Warn("DKIM key of a sending domain not made; retried", "org", r.Org, "domain", r.Domain, "err", err)
			continue
		}
		m.log.Info("DKIM key made", "org", r.Org, "domain", r.Domain, "selector", r.Selector)
	}
	return len(reqs) > 0
}

// tokens are the secrets a claim registered the hashes of.
type tokens struct{ invitation, reset string }

func (m *Mailer) claim(ctx context.Context) (*Job, tokens, error) {
	var t tokens
	c := Claim{Mailer: m.cfg.Name, LeaseSeconds: int(m.cfg.Lease / time.Second)}
	var err1, err2 error
	t.invitation, c.InvitationHash, err1 = NewToken("cni_")
	t.reset, c.ResetHash, err2 = NewToken("cnr_")
	if err := errors.Join(err1, err2); err != nil {
		return nil, t, err
	}
	job, err := m.cfg.Queue.Claim(ctx, c)
	return job, t, err
}

// deliver renders, signs and sends one job and reports the outcome.
func (m *Mailer) deliver(ctx context.Context, job *Job, t tokens) {
	token := ""
	switch job.Template {
	case TemplateInvitation:
		token = t.invitation
	case TemplatePasswordReset:
		token = t.reset
	}
	o := Outcome{Mailer: m.cfg.Name}
	from, raw, dkimDomain, err := m.compose(ctx, job, token)
	o.From, o.DKIMDomain = from, dkimDomain
	if err == nil {
		err = m.cfg.Transport.Send(ctx, from, job.To, raw)
	}
	log := m.log.With("message", job.ID, "org", job.Org, "template", job.Template, "attempt", job.Attempt)
	if err == nil {
		o.Sent = true
		m.sent.WithLabelValues(job.Template).Inc()
		log.Info("mail sent", "dkim", dkimDomain)
	} else {
		// The error is recorded and logged; the token is in neither:
		// errors come from the relay and the signer, never the body.
		// Event templates have no token, and replacing "" would mark
		// every character.
		o.Error = err.Error()
		if token != "" {
			o.Error = strings.ReplaceAll(o.Error, token, "[token]")
		}
		if i := job.Attempt - 1; i < len(m.cfg.Backoff) {
			o.RetryAt = time.Now().UTC().Add(m.cfg.Backoff[i])
		}
		m.failed.WithLabelValues(job.Template).Inc()
		log.Warn("mail not sent", "err", o.Error, "retry_at", o.RetryAt)
	}
	// A report that does not arrive leaves the claim to lapse; the
	// message is then tried again.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := m.cfg.Queue.Report(rctx, job.ID, o); err != nil {
		log.Warn("outcome not recorded; the claim lapses and the message is tried again", "err", err)
	}
}

// compose builds the job's message, signed when a key is at hand: the
// sending domain's for an organization that verified one, else the
// service's.
func (m *Mailer) compose(ctx context.Context, job *Job, token string) (from string, raw []byte, dkimDomain string, err error) {
	d := Data{Brand: job.Brand, Org: job.Org, Recipient: job.To, Fields: job.Fields, ExpiresAt: job.ExpiresAt,
		Link: m.cfg.Links.For(job.Template, token, job.Fields)}
	r, err := Render(job.Template, d)
	if err != nil {
		return "", nil, "", err
	}
	addr, sign := m.cfg.From, m.cfg.ServiceDKIM
	if job.Sender != nil {
		addr, sign = mail.Address{Address: job.Sender.Local + "@" + job.Sender.Domain}, job.Sender
	}
	// The organization's name shows as the sender's, whichever address.
	if job.Brand.Name != "" {
		addr.Name = job.Brand.Name
	}
	msg := Message{ID: job.ID + "." + fmt.Sprint(job.Attempt), From: addr, To: job.To, ReplyTo: job.Brand.SupportEmail, Rendered: r,
		Date: time.Now().UTC()}
	raw, err = msg.Build()
	if err != nil {
		return addr.Address, nil, "", err
	}
	if sign == nil || m.cfg.Keys == nil {
		return addr.Address, raw, "", nil
	}
	k, err := m.cfg.Keys.Key(ctx, KeyName(sign.Selector, sign.Domain), false)
	if err != nil {
		return addr.Address, nil, "", fmt.Errorf("dkim key of %s: %w", sign.Domain, err)
	}
	raw, err = Sign(raw, DKIMKey{Domain: sign.Domain, Selector: sign.Selector, Signer: k})
	return addr.Address, raw, sign.Domain, err
}
