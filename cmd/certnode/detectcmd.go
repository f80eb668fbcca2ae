package main

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"time"

	"github.com/spf13/cobra"

	"github.com/certnode/certnode/coordinator"
	"github.com/certnode/certnode/internal/audit"
	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/recordauth"
	"github.com/certnode/certnode/sinks/detect"
)

// blocklist is the coordinator's blocks as ingest checks them.
type blocklist struct{ r *coordinator.Replica }

func (b blocklist) Blocked(addr netip.Addr) (time.Time, bool) {
	blk, ok := b.r.Blocked(addr)
	return blk.Until, ok
}

func newDetectCmd() *cobra.Command {
	var kf kafkaFlags
	var cf coordinatorFlags
	var mf metricsFlags
	cfg := detect.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "detect",
		Short: "Run the threat detectors over the live event streams",
		Long: "Watches the audit events of every role, the results and the webhook attempts for bursts of refused\n" +
			"credentials (per address and per key id), credential stuffing on sign-in, keys used from new\n" +
			"addresses or far above their baseline, spikes of failed verifications, and webhook endpoints\n" +
			"changed then flooded. Each finding is a security event: in the audit log (security.alert), a\n" +
			"security.alert webhook to the organization, certnode_security_alerts_total on /metrics, and with\n" +
			"--coordinator and --block-for, a temporary block of the address at ingest. Its state is in memory:\n" +
			"run one per deployment.\n\n" + internalSecretHelp +
			"\nWith --coordinator: $CERTNODE_NODE_TOKEN (or $CERTNODE_NODE_TOKEN_FILE), the coordinator's node token.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Kafka, cfg.Group = kf.config(), kafka.Group(kf.prefix, kafka.RoleDetect)
			errs := []error{cfg.Validate()}
			mac, err := recordauth.SecretsFromEnv()
			errs = append(errs, err)
			reg := newRegistry()
			var blocker detect.Blocker
			if cf.addrs != "" {
				r, err := coordinatorReplica(cf, coordinator.DefaultMaxStale, nil)
				errs = append(errs, err)
				blocker = r
			} else if cfg.BlockFor > 0 {
				errs = append(errs, errors.New("--block-for needs --coordinator, which keeps the blocks"))
			}
			if err := errors.Join(errs...); err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			if err := ensureTopics(cmd.Context(), cfg.Kafka); err != nil {
				return err
			}
			events, err := audit.NewPublisher(cfg.Kafka, "detector", mac, reg)
			if err != nil {
				return usageErr("%v", err)
			}
			defer events.Close()
			cfg.Registerer = reg
			d, err := detect.New(cfg, events, blocker, mac)
			if err != nil {
				return usageErr("%v", err)
			}
			defer d.Close()
			metrics, err := mf.server(reg, func() error { return nil })
			if err != nil {
				return err
			}
			slog.Info("threat detection started", "block_for", cfg.BlockFor, "thresholds", cfg.Thresholds)
			return runErr(runParts(cmd.Context(), map[string]func(context.Context) error{"detect": d.Run, "metrics": metrics}))
		},
	}
	fs := cmd.Flags()
	cf.register(fs, "", "coordinator HTTP addresses (comma-separated), which keep the blocks of --block-for")
	fs.DurationVar(&cfg.BlockFor, "block-for", 0, "block an address flagged by a burst of refused credentials or sign-ins at ingest this long (0: never)")
	bindEnv(fs, "block-for", "CERTNODE_DETECT_BLOCK_FOR")
	t := &cfg.Thresholds
	fs.Int64Var(&t.AuthFailures, "auth-failures", t.AuthFailures, "refused requests per address, or naming one key id, within --auth-window that make an alert")
	bindEnv(fs, "auth-failures", "CERTNODE_DETECT_AUTH_FAILURES")
	fs.DurationVar(&t.AuthWindow, "auth-window", t.AuthWindow, "window of --auth-failures")
	bindEnv(fs, "auth-window", "CERTNODE_DETECT_AUTH_WINDOW")
	fs.Int64Var(&t.LoginFailures, "login-failures", t.LoginFailures, "failed sign-ins from one address within --login-window that make an alert")
	bindEnv(fs, "login-failures", "CERTNODE_DETECT_LOGIN_FAILURES")
	fs.DurationVar(&t.LoginWindow, "login-window", t.LoginWindow, "window of --login-failures")
	bindEnv(fs, "login-window", "CERTNODE_DETECT_LOGIN_WINDOW")
	fs.Int64Var(&t.SpikeMin, "spike-min", t.SpikeMin, "a key's requests in a minute, at least, for a volume alert")
	bindEnv(fs, "spike-min", "CERTNODE_DETECT_SPIKE_MIN")
	fs.Float64Var(&t.SpikeFactor, "spike-factor", t.SpikeFactor, "times its baseline, at least, for a volume alert")
	bindEnv(fs, "spike-factor", "CERTNODE_DETECT_SPIKE_FACTOR")
	fs.Int64Var(&t.VerifyFailuresMin, "verify-failures-min", t.VerifyFailuresMin, "an organization's failed verifications in a minute, at least, for an alert")
	bindEnv(fs, "verify-failures-min", "CERTNODE_DETECT_VERIFY_FAILURES_MIN")
	fs.Float64Var(&t.VerifyFactor, "verify-factor", t.VerifyFactor, "times their baseline, at least, for an alert")
	bindEnv(fs, "verify-factor", "CERTNODE_DETECT_VERIFY_FACTOR")
	fs.IntVar(&t.WarmupMinutes, "warmup-minutes", t.WarmupMinutes, "minutes of history before the baseline detectors alert")
	bindEnv(fs, "warmup-minutes", "CERTNODE_DETECT_WARMUP_MINUTES")
	fs.Int64Var(&t.FloodDeliveries, "flood-deliveries", t.FloodDeliveries, "deliveries to an endpoint within --flood-after of its change that make an alert")
	bindEnv(fs, "flood-deliveries", "CERTNODE_DETECT_FLOOD_DELIVERIES")
	fs.DurationVar(&t.FloodAfter, "flood-after", t.FloodAfter, "window of --flood-deliveries")
	bindEnv(fs, "flood-after", "CERTNODE_DETECT_FLOOD_AFTER")
	mf.register(fs, "127.0.0.1:9108")
	kf.register(fs, true)
	return cmd
}
