// Package kafka builds franz-go clients the same way for every tier and
// creates the CertNode topics.
package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/certnode/certnode/internal/envsecret"
	"github.com/certnode/certnode/internal/tlsconf"
	"github.com/certnode/certnode/schemas"
)

// Config is the connection and topic layout shared by all roles.
type Config struct {
	Brokers []string
	// Partitions per topic when a topic has to be created.
	Partitions int32
	// ReplicationFactor for created topics (1 for a single local broker).
	ReplicationFactor int16
	// TopicPrefix names the topics (default "certnode": certnode.requests...).
	TopicPrefix string
	// TLS connects to the brokers over TLS 1.2 or later, trusting CAFile's
	// certificates (PEM; empty: the system's roots).
	TLS    bool
	CAFile string
	// SASLMechanism authenticates the client as SASLUser: SCRAM-SHA-256,
	// SCRAM-SHA-512 or PLAIN (empty: no authentication). The password is
	// never a flag: $CERTNODE_KAFKA_SASL_PASSWORD, or the file named by
	// $CERTNODE_KAFKA_SASL_PASSWORD_FILE.
	SASLMechanism string
	SASLUser      string
}

// SASLPasswordEnv names the variable holding the SASL password.
const SASLPasswordEnv = "CERTNODE_KAFKA_SASL_PASSWORD"

// Topics returns the topic names for this config.
func (c *Config) Topics() schemas.Topics {
	if c.TopicPrefix == "" {
		return schemas.TopicsFor(schemas.DefaultTopicPrefix)
	}
	return schemas.TopicsFor(c.TopicPrefix)
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("kafka: at least one broker is required"))
	}
	for _, b := range c.Brokers {
		if !strings.Contains(b, ":") {
			errs = append(errs, fmt.Errorf("kafka: broker %q must be host:port", b))
		}
	}
	if c.Partitions < 1 {
		errs = append(errs, errors.New("kafka: partitions must be at least 1"))
	}
	if c.ReplicationFactor < 1 {
		errs = append(errs, errors.New("kafka: replication factor must be at least 1"))
	}
	switch c.SASLMechanism {
	case "":
	case "SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN":
		if c.SASLUser == "" {
			errs = append(errs, errors.New("kafka: a SASL mechanism needs a user"))
		}
	default:
		errs = append(errs, fmt.Errorf("kafka: SASL mechanism %q: want SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN", c.SASLMechanism))
	}
	if c.CAFile != "" && !c.TLS {
		errs = append(errs, errors.New("kafka: a CA file is for TLS: set TLS too"))
	}
	return errors.Join(errs...)
}

// security returns the options that connect over TLS and authenticate.
func (c *Config) security() ([]kgo.Opt, error) {
	var opts []kgo.Opt
	if c.TLS {
		cfg, err := tlsconf.Client(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("kafka: %w", err)
		}
		opts = append(opts, kgo.DialTLSConfig(cfg))
	}
	if c.SASLMechanism == "" {
		return opts, nil
	}
	password, ok, err := envsecret.Read(SASLPasswordEnv)
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	if !ok || password == "" {
		return nil, fmt.Errorf("kafka: SASL needs $%s (or $%s_FILE)", SASLPasswordEnv, SASLPasswordEnv)
	}
	password = strings.TrimRight(password, "\r\n")
	switch c.SASLMechanism {
	case "SCRAM-SHA-256":
		opts = append(opts, kgo.SASL(scram.Auth{User: c.SASLUser, Pass: password}.AsSha256Mechanism()))
	case "SCRAM-SHA-512":
		opts = append(opts, kgo.SASL(scram.Auth{User: c.SASLUser, Pass: password}.AsSha512Mechanism()))
	case "PLAIN":
		opts = append(opts, kgo.SASL(plain.Auth{User: c.SASLUser, Pass: password}.AsMechanism()))
	}
	return opts, nil
}

// NewClient returns a client with CertNode's producer defaults: idempotent,
// acks=all, records keyed by tenant and partitioned with Kafka's murmur2
// (franz-go's default partitioner hashes keys exactly like the Java client),
// so every client that uses murmur2 puts a tenant on the same partition.
func NewClient(c Config, opts ...kgo.Opt) (*kgo.Client, error) {
	sec, err := c.security()
	if err != nil {
		return nil, err
	}
	base := []kgo.Opt{
		kgo.SeedBrokers(c.Brokers...),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(2 * time.Millisecond),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
		// A batch must fit the smallest topic limit the client writes to
		// (certnode.requests'); see ResultBatches for writers of results.
		kgo.ProducerBatchMaxBytes(schemas.MaxRequestBytes + 64<<10),
		kgo.WithLogger(kgoLogger{}),
	}
	return kgo.NewClient(append(append(base, sec...), opts...)...)
}

// LostMembership reports whether a commit failed because the group is
// moving partitions: retrying cannot succeed, and whoever owns them after
// the rebalance (maybe this member) starts from the last commit and redoes
// the batch, so the stage drops it and polls again (rejoining the group).
func LostMembership(err error) bool {
	return errors.Is(err, kerr.UnknownMemberID) || errors.Is(err, kerr.IllegalGeneration) ||
		errors.Is(err, kerr.FencedInstanceID) || errors.Is(err, kerr.RebalanceInProgress)
}

// ResultBatches lets a client that writes only to certnode.receipts and
// certnode.dlq (workers, sinks) send records as large as a result.
func ResultBatches() kgo.Opt { return kgo.ProducerBatchMaxBytes(schemas.MaxResultBytes + 64<<10) }

// RebalanceTimeout is how long a group waits for members to finish their
// batch when partitions move; a stage still busy after it has lost them.
const RebalanceTimeout = time.Minute

// GroupConsumer returns the options every consumer-group stage uses: it
// reads topics from the start, commits only what the stage commits itself,
// and holds a rebalance until the polled batch is finished (drain before
// revoke: AllowRebalance after each batch), so a handover neither loses nor
// repeats work. A member that dies without leaving holds its partitions
// until its session times out, so that is kept short.
func GroupConsumer(group string, topics ...string) []kgo.Opt {
	return []kgo.Opt{
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topics...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.FetchMaxWait(250 * time.Millisecond),
		kgo.SessionTimeout(10 * time.Second),
		kgo.HeartbeatInterval(time.Second),
		kgo.RebalanceTimeout(RebalanceTimeout),
	}
}

// topicConfigs sizes each topic for its largest record (a result carries
// its receipt, so results outgrow requests) and compacts the jobs topic,
// which holds the latest state of each job.
func topicConfigs(t schemas.Topics) map[string]map[string]*string {
	size := func(n int) *string { s := strconv.Itoa(n + 64<<10); return &s }
	compact := "compact"
	cfgs := map[string]map[string]*string{
		t.Requests: {"max.message.bytes": size(schemas.MaxRequestBytes)},
		t.Receipts: {"max.message.bytes": size(schemas.MaxResultBytes)},
		t.DLQ:      {"max.message.bytes": size(schemas.MaxResultBytes)},
		t.Jobs:     {"max.message.bytes": size(schemas.MaxResultBytes), "cleanup.policy": &compact},
		t.Usage:    {"max.message.bytes": size(schemas.MaxUsageEventBytes)},
		t.Audit:    {"max.message.bytes": size(schemas.MaxAuditEventBytes)},
	}
	for _, topic := range append([]string{t.Events, t.Webhooks, t.WebhookDLQ, t.WebhookAttempts}, t.WebhookDelays...) {
		cfgs[topic] = map[string]*string{"max.message.bytes": size(2 * schemas.MaxWebhookBody)}
	}
	return cfgs
}

// EnsureTopics creates the CertNode topics that do not exist yet.
// A role whose ACLs do not let it create topics goes on when the topic
// exists (an administrator made them).
func EnsureTopics(ctx context.Context, cl *kgo.Client, c Config) error {
	adm := kadm.NewClient(cl)
	for topic, cfg := range topicConfigs(c.Topics()) {
		res, err := adm.CreateTopic(ctx, c.Partitions, c.ReplicationFactor, cfg, topic)
		if err == nil {
			err = res.Err
		}
		if errors.Is(err, kerr.TopicAuthorizationFailed) || errors.Is(err, kerr.ClusterAuthorizationFailed) {
			err = topicExists(ctx, adm, topic, err)
		}
		if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("create topic %s: %w", topic, err)
		}
	}
	return nil
}

// topicExists answers nil when topic exists, else refused (the refusal to
// create it).
func topicExists(ctx context.Context, adm *kadm.Client, topic string, refused error) error {
	md, err := adm.Metadata(ctx, topic)
	if err != nil {
		return refused
	}
	if t, ok := md.Topics[topic]; ok && t.Err == nil {
		return nil
	}
	return fmt.Errorf("%w (and it does not exist: an administrator must create it)", refused)
}

// Header returns a record header's value ("" when absent).
func Header(rec *kgo.Record, key string) string {
	for _, h := range rec.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// kgoLogger sends franz-go's warnings and errors to slog.
type kgoLogger struct{}

func (kgoLogger) Level() kgo.LogLevel { return kgo.LogLevelWarn }
func (kgoLogger) Log(level kgo.LogLevel, msg string, kv ...any) {
	l := slog.LevelWarn
	if level == kgo.LogLevelError {
		l = slog.LevelError
	}
	slog.Log(context.Background(), l, "kafka: "+msg, kv...)
}

// Retry runs f until it succeeds, backing off between attempts (from
// 100 ms, doubling to 5 s) and logging each failure. Attempts go on while
// a service is away (each one bounded by f itself), and end when stop has
// ended.
func Retry(stop context.Context, log *slog.Logger, what string, f func() error) error {
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := f()
		if err == nil {
			return nil
		}
		log.Warn(what+" failed, retrying", "err", err, "attempt", attempt, "backoff", backoff)
		select {
		case <-stop.Done():
			return fmt.Errorf("stopping with an unfinished batch (%s): %w", what, err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// EachBatch polls up to max records at a time until ctx ends, and hands
// each batch to handle, which the group does not rebalance under: the
// loop of a sink that commits what it handled. handle runs on a context
// that outlives ctx, so that the batch in hand finishes; its error ends
// the loop.
func EachBatch(ctx context.Context, cl *kgo.Client, max int, log *slog.Logger, handle func(work context.Context, recs []*kgo.Record) error) error {
	work := context.WithoutCancel(ctx)
	for ctx.Err() == nil {
		fetches := cl.PollRecords(ctx, max)
		if fetches.IsClientClosed() {
			return nil
		}
		fetches.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				log.Warn("fetch error", "topic", t, "partition", p, "err", err)
			}
		})
		if recs := fetches.Records(); len(recs) > 0 {
			if err := handle(work, recs); err != nil {
				cl.AllowRebalance()
				return err
			}
		}
		cl.AllowRebalance()
	}
	return nil
}

// Commit commits recs, each attempt bounded by timeout, retrying until it
// succeeds or stop ends. Partitions that moved to another member meanwhile
// are not an error: the new owner handles those records again.
func Commit(ctx, stop context.Context, cl *kgo.Client, log *slog.Logger, timeout time.Duration, recs []*kgo.Record) error {
	return Retry(stop, log, "commit", func() error {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		err := cl.CommitRecords(cctx, recs...)
		if LostMembership(err) {
			log.Warn("partitions moved to another member before the commit", "records", len(recs), "err", err)
			return nil
		}
		return err
	})
}

// ProduceAcked produces *recs and waits for the broker's acknowledgement,
// calling acked for each record acknowledged and leaving in *recs only
// those that failed, for the next attempt.
func ProduceAcked(ctx context.Context, cl *kgo.Client, recs *[]*kgo.Record, acked func(*kgo.Record)) error {
	if len(*recs) == 0 {
		return nil
	}
	var failed []*kgo.Record
	var errs []error
	for _, r := range cl.ProduceSync(ctx, *recs...) {
		if r.Err != nil {
			// A fresh record: a produced one keeps its first context,
			// canceled by now, and would fail again at once.
			retry := &kgo.Record{Topic: r.Record.Topic, Key: r.Record.Key, Value: r.Record.Value, Headers: r.Record.Headers}
			failed, errs = append(failed, retry), append(errs, r.Err)
			continue
		}
		acked(r.Record)
	}
	*recs = failed
	if len(errs) > 0 {
		return fmt.Errorf("%d records not acknowledged: %w", len(failed), errs[0])
	}
	return nil
}
