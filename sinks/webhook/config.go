// Package webhook is the dispatcher: it turns results (receipt.* events),
// event records and finished jobs into webhook messages, one per
// subscribed endpoint, and delivers them as the Standard Webhooks
// specification says, with durable retries.
//
// Nothing accepted is lost. A record read from Kafka is committed only
// once every message it made is settled: delivered, or handed back to
// Kafka (a delay topic for a retry or a parked message, the webhook DLQ)
// and acknowledged there. Retries wait in FIFO delay topics, one per
// fixed delay (schemas.WebhookDelayTiers), so a partition is always in due
// order and waiting costs no memory. A killed dispatcher's successor reads
// from the last commit, so only messages in flight at the kill are sent
// twice, with the same webhook-id.
//
// Endpoints are isolated: each has its own queue and concurrency limit,
// and messages that wait too long behind a slow or failing endpoint are
// parked in a delay topic, so they never hold back another endpoint's
// deliveries nor the commits of the partition they came from.
package webhook

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/whsig"
)

// Endpoint is an endpoint as the dispatcher sees it.
type Endpoint struct {
	ID         string
	Org        string
	URL        string
	EventTypes []string // none: every type
	Headers    map[string]string
	Enabled    bool
	Ordered    bool
	// Receipt is whether receipt.signed events carry the receipt here:
	// ReceiptInclude, ReceiptOmit, or "" for the organization's choice
	// (Directory.WebhookReceipt).
	Receipt   string
	Secrets   []Secret
	CreatedAt time.Time
	// FailingSince is the first failure since the last success, as the
	// cluster knows it.
	FailingSince time.Time
	// UpdatedAt changes with every change a user makes (and with the
	// service disabling it): a disable is judged on one version.
	UpdatedAt time.Time
}

// Secret is one signing secret; a rotated one signs until ExpiresAt.
type Secret struct {
	Key       whsig.Secret
	ExpiresAt time.Time
}

// Directory is where endpoints live (the coordinator's replica).
type Directory interface {
	// Endpoints are an organization's endpoints; ok is false while the
	// directory has no state yet (not the same as no endpoints).
	Endpoints(org string) (eps []*Endpoint, ok bool)
	// RetrySchedule is an organization's own schedule (nil: the default).
	RetrySchedule(org string) []time.Duration
	// WebhookReceipt is whether the organization's receipt.signed events
	// carry the receipt by default (ReceiptInclude, ReceiptOmit; "":
	// include).
	WebhookReceipt(org string) string
	// ReportHealth records when an endpoint started failing (zero: it
	// delivers again), or disables it with a reason, unless it changed
	// since ep was read.
	ReportHealth(ctx context.Context, ep *Endpoint, failingSince time.Time, disable bool, reason string) error
	// PendingQuotaAlerts are the monthly allowance thresholds crossed and
	// not announced yet; AnnounceQuota marks one announced.
	PendingQuotaAlerts() []QuotaAlert
	AnnounceQuota(ctx context.Context, org, month string, level int) error
	// DueReports are the scheduled reports whose last period ended and
	// was not announced; AnnounceReport marks one announced.
	DueReports(now time.Time) []DueReport
	AnnounceReport(ctx context.Context, org, id, period string) error
}

// Receipt modes of receipt.signed events: carried up to MaxReceiptBytes
// (beyond, linked), or always left out for receipt_id and receipt_url.
const (
	ReceiptInclude = "include"
	ReceiptOmit    = "omit"
)

// DueReport is a scheduled report's period to announce (report.ready).
type DueReport struct {
	Org, ID, Name, Schedule, Period string
	From, To                        time.Time
}

// QuotaAlert is an organization's admitted count crossing Level percent
// of its monthly allowance (Limit) in Month.
type QuotaAlert struct {
	Org         string
	Month       string
	Level       int
	Used, Limit int64
}

// MAC authenticates the records of the internal topics the dispatcher
// reads and writes (events, due and delayed messages, attempts) with the
// cluster's internal secret (recordauth.Keyring): a record on them that
// does not carry it is refused, so whoever can write a topic but lacks
// the secret cannot have an organization's endpoint sent a body signed
// with its secret, nor hide a message behind a forged attempt.
type MAC interface {
	Header(value []byte) []byte
	Check(value []byte, header string) error
}

// DefaultSchedule is the delay before each attempt: at once, then 5 s,
// 5 min, 30 min, 2 h, 5 h, 10 h and 10 h (about 28 hours in all).
var DefaultSchedule = []time.Duration{0, 5 * time.Second, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour,
	5 * time.Hour, 10 * time.Hour, 10 * time.Hour}

// Config configures a dispatcher.
type Config struct {
	Kafka kafka.Config
	Group string
	// Schedule is the default retry schedule; an organization's own
	// replaces it. Jitter spreads each delay by up to ±Jitter of itself.
	Schedule []time.Duration
	Jitter   float64
	// DisableAfter is how long an endpoint fails before it is disabled.
	DisableAfter time.Duration
	// MaxRetryAfter bounds the wait a Retry-After header can ask for.
	MaxRetryAfter time.Duration
	// Concurrency is the most attempts in flight per endpoint.
	Concurrency int
	// QueueLimit and ParkAfter bound what waits in memory for one
	// endpoint: beyond QueueLimit messages, or after waiting ParkAfter,
	// messages are parked in a delay topic.
	QueueLimit int
	ParkAfter  time.Duration
	// MaxPending bounds the messages held in memory in all; past it the
	// dispatcher stops reading until deliveries catch up.
	MaxPending int
	// MaxReceiptBytes: a larger receipt is linked, not carried.
	MaxReceiptBytes int
	// CommitInterval is how often settled offsets are committed.
	CommitInterval time.Duration
	// SeenLookback is how far back the recorded attempts are remembered,
	// so that a message read again is not sent again; it must cover how
	// long a record can wait uncommitted (ParkAfter, the request timeout
	// and CommitInterval, with room).
	SeenLookback time.Duration
	Registerer   prometheus.Registerer
}

// DefaultConfig returns a config with every field but the brokers set.
func DefaultConfig() Config {
	return Config{
		Kafka: kafka.Config{Partitions: 8, ReplicationFactor: 1}, Group: "certnode-dispatcher",
		Schedule: DefaultSchedule, Jitter: 0.1, DisableAfter: 5 * 24 * time.Hour, MaxRetryAfter: time.Hour,
		Concurrency: 8, QueueLimit: 10_000, ParkAfter: 5 * time.Second, MaxPending: 100_000,
		MaxReceiptBytes: 256 << 10, CommitInterval: time.Second, SeenLookback: 5 * time.Minute,
	}
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if err := c.Kafka.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Group == "" {
		errs = append(errs, errors.New("dispatcher: group is required"))
	}
	if err := CheckSchedule(c.Schedule); err != nil {
		errs = append(errs, err)
	}
	if c.Jitter < 0 || c.Jitter >= 1 {
		errs = append(errs, errors.New("dispatcher: jitter must be in [0, 1)"))
	}
	if c.DisableAfter <= 0 || c.MaxRetryAfter <= 0 || c.ParkAfter <= 0 || c.CommitInterval <= 0 || c.SeenLookback <= 0 {
		errs = append(errs, errors.New("dispatcher: disable after, max retry after, park after, commit interval and seen lookback must be positive"))
	}
	if c.Concurrency < 1 || c.QueueLimit < 1 || c.MaxPending < c.QueueLimit {
		errs = append(errs, errors.New("dispatcher: concurrency and queue limit must be positive, max pending at least the queue limit"))
	}
	if c.MaxReceiptBytes < 1 {
		errs = append(errs, errors.New("dispatcher: max receipt bytes must be positive"))
	}
	return errors.Join(errs...)
}

// CheckSchedule checks a retry schedule: 1 to 20 delays, none negative.
func CheckSchedule(s []time.Duration) error {
	if len(s) == 0 || len(s) > 20 {
		return errors.New("dispatcher: a retry schedule has 1 to 20 delays")
	}
	for _, d := range s {
		if d < 0 {
			return errors.New("dispatcher: a retry delay cannot be negative")
		}
	}
	return nil
}
