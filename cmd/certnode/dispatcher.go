package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/certnode/certnode/coordinator"
	"github.com/certnode/certnode/ingest"
	"github.com/certnode/certnode/internal/egress"
	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/recordauth"
	"github.com/certnode/certnode/internal/whsig"
	"github.com/certnode/certnode/sinks/webhook"
)

// hookDirectory gives the dispatcher the endpoints of the coordinator's
// state. Endpoints in a state copy never change (a change is a new copy),
// so each is converted once, and the cache starts over when it grows.
type hookDirectory struct {
	r     *coordinator.Replica
	mu    sync.Mutex
	cache map[*coordinator.WebhookEndpoint]*webhook.Endpoint
}

func newHookDirectory(r *coordinator.Replica) *hookDirectory {
	return &hookDirectory{r: r, cache: map[*coordinator.WebhookEndpoint]*webhook.Endpoint{}}
}

func (h *hookDirectory) Endpoints(org string) ([]*webhook.Endpoint, bool) {
	eps, ok := h.r.WebhookEndpoints(org)
	if !ok || len(eps) == 0 {
		return nil, ok
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.cache) > 100_000 {
		clear(h.cache)
	}
	out := make([]*webhook.Endpoint, 0, len(eps))
	for _, e := range eps {
		c := h.cache[e]
		if c == nil {
			c = &webhook.Endpoint{ID: e.ID, Org: e.Org, URL: e.URL, EventTypes: e.EventTypes, Headers: e.Headers,
				Enabled: e.Enabled, Ordered: e.Ordered, Receipt: e.Receipt, CreatedAt: e.CreatedAt, FailingSince: e.FailingSince, UpdatedAt: e.UpdatedAt}
			for _, s := range e.Secrets {
				if key, err := whsig.ParseSecret(s.Secret); err == nil { // checked when stored
					c.Secrets = append(c.Secrets, webhook.Secret{Key: key, ExpiresAt: s.ExpiresAt})
				}
			}
			h.cache[e] = c
		}
		out = append(out, c)
	}
	return out, true
}

func (h *hookDirectory) RetrySchedule(org string) []time.Duration {
	return h.r.WebhookRetrySchedule(org)
}

func (h *hookDirectory) WebhookReceipt(org string) string {
	a, _ := h.r.APISettings(org)
	return a.WebhookReceipt
}

func (h *hookDirectory) ReportHealth(ctx context.Context, ep *webhook.Endpoint, since time.Time, disable bool, reason string) error {
	return h.r.ReportEndpointHealth(ctx, ep.ID, coordinator.EndpointHealth{Org: ep.Org, FailingSince: since, Disable: disable,
		Reason: reason, Expect: ep.UpdatedAt})
}

func (h *hookDirectory) PendingQuotaAlerts() []webhook.QuotaAlert {
	var out []webhook.QuotaAlert
	for _, a := range h.r.PendingQuotaAlerts() {
		out = append(out, webhook.QuotaAlert{Org: a.Org, Month: a.Month, Level: a.Level, Used: a.Used, Limit: a.Limit})
	}
	return out
}

func (h *hookDirectory) AnnounceQuota(ctx context.Context, org, month string, level int) error {
	return h.r.AnnounceQuota(ctx, org, month, level)
}

func (h *hookDirectory) DueReports(now time.Time) []webhook.DueReport {
	var out []webhook.DueReport
	for _, d := range h.r.DueReports(now) {
		out = append(out, webhook.DueReport{Org: d.Org, ID: d.ID, Name: d.Name, Schedule: d.Schedule, Period: d.Period, From: d.From, To: d.To})
	}
	return out
}

func (h *hookDirectory) AnnounceReport(ctx context.Context, org, id, period string) error {
	return h.r.AnnounceReport(ctx, org, id, period)
}

// endpointInfos gives ingest the endpoints its redelivery, replay and
// trigger routes check.
type endpointInfos struct{ r *coordinator.Replica }

func (e endpointInfos) Endpoints(org string) []ingest.EndpointInfo {
	eps, _ := e.r.WebhookEndpoints(org)
	out := make([]ingest.EndpointInfo, 0, len(eps))
	for _, ep := range eps {
		out = append(out, ingest.EndpointInfo{ID: ep.ID, EventTypes: ep.EventTypes, Enabled: ep.Enabled})
	}
	return out
}

// newDispatcher builds a dispatcher on the coordinator's state, delivering
// through the SSRF guard (allow: the non-public networks it may reach).
func newDispatcher(cfg webhook.Config, r *coordinator.Replica, mac webhook.MAC, timeout time.Duration, allow []netip.Prefix) (*webhook.Dispatcher, error) {
	ecfg := egress.DefaultConfig()
	ecfg.Allow = allow
	if timeout > 0 {
		ecfg.Timeout = timeout
	}
	client, err := egress.NewClient(ecfg)
	if err != nil {
		return nil, err
	}
	return webhook.New(cfg, newHookDirectory(r), client, mac)
}

func newDispatcherCmd() *cobra.Command {
	var kf kafkaFlags
	var schedule string
	var cf coordinatorFlags
	var mf metricsFlags
	var allow []string
	timeout := egress.DefaultConfig().Timeout
	cfg := webhook.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "dispatcher",
		Short: "Deliver webhooks (Standard Webhooks signatures, durable retries, per-endpoint isolation)",
		Long: "Runs a webhook dispatcher: it reads results, events and finished jobs, and delivers each event\n" +
			"to the subscribed endpoints of its organization (endpoints live in the coordinator cluster, whose\n" +
			"state it follows). Retries wait in Kafka delay topics, so a restart loses nothing; each attempt\n" +
			"is recorded on PREFIX.webhooks.attempts (the ClickHouse sink stores them). Deliveries reach public\n" +
			"addresses only, unless --webhook-allow lists a network.\n\n" + internalSecretHelp +
			"\nRequired: $CERTNODE_NODE_TOKEN (or $CERTNODE_NODE_TOKEN_FILE), the coordinator's node token.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Kafka, cfg.Group = kf.config(), kafka.Group(kf.prefix, kafka.RoleDispatcher)
			var errs []error
			if schedule != "" {
				s, err := parseSchedule(schedule)
				errs = append(errs, err)
				cfg.Schedule = s
			}
			prefixes, err := parsePrefixes("--webhook-allow", allow)
			errs = append(errs, err, cfg.Validate())
			mac, err := recordauth.SecretsFromEnv()
			errs = append(errs, err)
			if cf.addrs == "" {
				errs = append(errs, errors.New("--coordinator is required: the endpoints live there"))
			}
			reg := newRegistry()
			parts := map[string]func(context.Context) error{}
			var replica *coordinator.Replica
			if cf.addrs != "" {
				replica, err = coordinatorReplica(cf, coordinator.DefaultMaxStale, reg)
				errs = append(errs, err)
			}
			if err := errors.Join(errs...); err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			if err := ensureTopics(cmd.Context(), cfg.Kafka); err != nil {
				return err
			}
			cfg.Registerer = reg
			d, err := newDispatcher(cfg, replica, mac, timeout, prefixes)
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			defer d.Close()
			slog.Info("dispatcher started", "schedule", cfg.Schedule, "allow", prefixes)
			parts["dispatcher"], parts["coordinator"] = afterReady(replica.Ready, d.Run), replica.Run
			if parts["metrics"], err = mf.server(reg, func() error { return nil }, replica.Ready); err != nil {
				return err
			}
			return runErr(runParts(cmd.Context(), parts))
		},
	}
	fs := cmd.Flags()
	cf.register(fs, "", "coordinator HTTP addresses (comma-separated): endpoints and secrets come from there")
	fs.StringSliceVar(&allow, "webhook-allow", nil, "networks (CIDR) deliveries may reach although they are not public, e.g. 127.0.0.0/8 for a local receiver")
	bindEnv(fs, "webhook-allow", "CERTNODE_WEBHOOK_ALLOW")
	fs.DurationVar(&timeout, "timeout", timeout, "time allowed for one delivery attempt")
	bindEnv(fs, "timeout", "CERTNODE_WEBHOOK_TIMEOUT")
	fs.StringVar(&schedule, "retry-schedule", "", "default delays before each attempt, comma-separated (default 0s,5s,5m,30m,2h,5h,10h,10h); an organization's setting replaces it")
	bindEnv(fs, "retry-schedule", "CERTNODE_WEBHOOK_RETRY_SCHEDULE")
	fs.DurationVar(&cfg.DisableAfter, "disable-after", cfg.DisableAfter, "how long an endpoint fails before it is disabled")
	bindEnv(fs, "disable-after", "CERTNODE_WEBHOOK_DISABLE_AFTER")
	fs.IntVar(&cfg.Concurrency, "concurrency", cfg.Concurrency, "attempts in flight per endpoint at most")
	bindEnv(fs, "concurrency", "CERTNODE_WEBHOOK_CONCURRENCY")
	fs.IntVar(&cfg.MaxReceiptBytes, "max-receipt-bytes", cfg.MaxReceiptBytes, "a larger receipt is linked (receipt_url), not carried in the event")
	bindEnv(fs, "max-receipt-bytes", "CERTNODE_WEBHOOK_MAX_RECEIPT_BYTES")
	mf.register(fs, "127.0.0.1:9104")
	kf.register(fs, true)
	return cmd
}

// parseSchedule reads a comma-separated list of delays.
func parseSchedule(s string) ([]time.Duration, error) {
	var out []time.Duration
	for _, part := range strings.Split(s, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(part))
		if err != nil {
			return nil, fmt.Errorf("--retry-schedule %q: %v", part, err)
		}
		out = append(out, d)
	}
	return out, webhook.CheckSchedule(out)
}
