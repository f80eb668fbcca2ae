package main

import (
	"errors"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/certnode/certnode/bench"
)

func newBenchCmd() *cobra.Command {
	cfg := bench.LoadConfig{JobLines: 20000, Rate: 100, Duration: 5 * time.Second}
	var api benchTarget
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load a running CertNode API: bulk throughput and fixed-rate latency, as ratios to the raw signing rate of the receipts' algorithm",
		Long: "Measures raw P-256 sign/verify on this machine, then a bulk sign job and a bulk verify job\n" +
			"end to end (receipts/min), then /v1/sign and /v1/verify latency at a fixed request rate.\n" +
			"The API key comes from $CERTNODE_API_KEY or --credentials (the file `certnode dev` writes).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var errs []error
			var err error
			if cfg.BaseURL, cfg.APIKey, _, err = api.resolve(false); err != nil {
				errs = append(errs, err)
			}
			if cfg.JobLines < 1 || cfg.Rate < 1 || cfg.Duration <= 0 {
				errs = append(errs, errors.New("--lines, --rate and --duration must be positive"))
			}
			if err := errors.Join(errs...); err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			r, err := bench.Load(cmd.Context(), cfg)
			if err != nil {
				return &exitError{code: exitInvalid, err: err}
			}
			r.Print(cmd.OutOrStdout())
			return nil
		},
	}
	fs := cmd.Flags()
	api.register(fs, false)
	fs.IntVar(&cfg.JobLines, "lines", cfg.JobLines, "lines per bulk job")
	bindEnv(fs, "lines", "CERTNODE_BENCH_LINES")
	fs.IntVar(&cfg.Rate, "rate", cfg.Rate, "requests/s for the latency runs")
	bindEnv(fs, "rate", "CERTNODE_BENCH_RATE")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "length of each latency run")
	bindEnv(fs, "duration", "CERTNODE_BENCH_DURATION")
	fs.StringVar(&cfg.Label, "label", "certnode", "label printed with the figures")
	bindEnv(fs, "label", "CERTNODE_BENCH_LABEL")
	cmd.AddCommand(newBenchWebhooksCmd(), newBenchAnalyticsCmd())
	return cmd
}

func newBenchAnalyticsCmd() *cobra.Command {
	cfg := bench.AnalyticsConfig{Rows: 10_000_000, Days: 30, Repeat: 50}
	var chf clickhouseFlags
	cmd := &cobra.Command{
		Use:   "analytics",
		Short: "Dashboard query latency (p50, p99) on an organization with --rows results in ClickHouse",
		Long: "Writes --rows results of the organization bench-analytics-ROWS over --days days into ClickHouse (INSERT ... SELECT,\n" +
			"which fills the rollups as the sink's inserts do; deleted at the end), runs each of the dashboard's\n" +
			"queries once with no hour sealed, seals every hour, then runs each --repeat times and prints p50 and p99.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if cfg.ClickHouse, err = chf.options(); err != nil {
				return err
			}
			if cfg.Rows < 1 || cfg.Days < 1 || cfg.Repeat < 1 {
				return usageErr("--rows, --days and --repeat must be positive")
			}
			r, err := bench.Analytics(cmd.Context(), cfg)
			if err != nil {
				return &exitError{code: exitInvalid, err: err}
			}
			r.Print(cmd.OutOrStdout())
			return nil
		},
	}
	fs := cmd.Flags()
	chf.register(fs, "127.0.0.1:9000", "ClickHouse native address")
	fs.IntVar(&cfg.Rows, "rows", cfg.Rows, "results of the benchmark's organization")
	bindEnv(fs, "rows", "CERTNODE_BENCH_ANALYTICS_ROWS")
	fs.IntVar(&cfg.Days, "days", cfg.Days, "days the rows spread over, ending an hour ago")
	bindEnv(fs, "days", "CERTNODE_BENCH_ANALYTICS_DAYS")
	fs.IntVar(&cfg.Repeat, "repeat", cfg.Repeat, "runs of each query after sealing")
	bindEnv(fs, "repeat", "CERTNODE_BENCH_ANALYTICS_REPEAT")
	fs.BoolVar(&cfg.Keep, "keep", false, "leave the rows in ClickHouse at the end (to look into queries; other tests' scans of certnode.results slow down)")
	bindEnv(fs, "keep", "CERTNODE_BENCH_ANALYTICS_KEEP")
	return cmd
}

func newBenchWebhooksCmd() *cobra.Command {
	cfg := bench.WebhookConfig{Rate: 1000, Duration: 10 * time.Second, Events: 20000}
	var api benchTarget
	cmd := &cobra.Command{
		Use:   "webhooks",
		Short: "Webhook delivery to a local receiver: latency from receipt signed to webhook received at a fixed sign rate, and deliveries per second",
		Long: "Starts a receiver on 127.0.0.1, creates a receipt.signed endpoint for it in the API key's organization\n" +
			"(the dispatcher must be allowed to reach loopback, as certnode dev's is), signs at --rate for --duration\n" +
			"and measures, at the receiver, the time from each receipt signed (the event's timestamp) to its\n" +
			"delivery (p50, p99); then sends a bulk sign job of --events lines and measures deliveries per second,\n" +
			"as a ratio to the raw signing rate of the receipts' algorithm measured in the same run. The endpoint\n" +
			"is deleted at the end. The API key and organization come from --credentials (the file `certnode dev`\n" +
			"writes), or $CERTNODE_API_KEY and --org.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var errs []error
			var err error
			if cfg.BaseURL, cfg.APIKey, cfg.Org, err = api.resolve(true); err != nil {
				errs = append(errs, err)
			}
			if cfg.Rate < 1 || cfg.Events < 1 || cfg.Duration <= 0 {
				errs = append(errs, errors.New("--rate, --events and --duration must be positive"))
			}
			if err := errors.Join(errs...); err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			r, err := bench.Webhooks(cmd.Context(), cfg)
			if err != nil {
				return &exitError{code: exitInvalid, err: err}
			}
			r.Print(cmd.OutOrStdout())
			return nil
		},
	}
	fs := cmd.Flags()
	api.register(fs, true)
	fs.IntVar(&cfg.Rate, "rate", cfg.Rate, "signs/s for the latency run")
	bindEnv(fs, "rate", "CERTNODE_BENCH_WEBHOOK_RATE")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "length of the latency run")
	bindEnv(fs, "duration", "CERTNODE_BENCH_WEBHOOK_DURATION")
	fs.IntVar(&cfg.Events, "events", cfg.Events, "lines of the bulk sign job whose deliveries are counted")
	bindEnv(fs, "events", "CERTNODE_BENCH_WEBHOOK_EVENTS")
	fs.StringVar(&cfg.Label, "label", "certnode", "label printed with the figures")
	bindEnv(fs, "label", "CERTNODE_BENCH_LABEL")
	return cmd
}

// benchTarget is the running API a bench drives: its URL, and the API key
// (and organization) from $CERTNODE_API_KEY and --org or from the
// credentials file certnode dev writes.
type benchTarget struct{ url, credFile, org string }

func (b *benchTarget) register(fs *pflag.FlagSet, withOrg bool) {
	fs.StringVar(&b.url, "url", "http://127.0.0.1:8080", "API base URL")
	bindEnv(fs, "url", "CERTNODE_BENCH_URL")
	fs.StringVar(&b.credFile, "credentials", "", "credentials.json written by certnode dev")
	bindEnv(fs, "credentials", "CERTNODE_CREDENTIALS_FILE")
	if withOrg {
		fs.StringVar(&b.org, "org", "", "organization of the API key (default: the credentials' tenant)")
		bindEnv(fs, "org", "CERTNODE_BENCH_ORG")
	}
}

// resolve returns the URL, the key and (needOrg) the organization.
func (b *benchTarget) resolve(needOrg bool) (url, key, org string, err error) {
	key, org = os.Getenv("CERTNODE_API_KEY"), b.org
	if b.credFile != "" {
		c, err := readCredentials(b.credFile)
		if err != nil {
			return "", "", "", err
		}
		key = c.APIKey
		if org == "" {
			org = c.Tenant
		}
	}
	switch {
	case key == "":
		return "", "", "", errors.New("no API key: set --credentials FILE, or CERTNODE_API_KEY")
	case needOrg && org == "":
		return "", "", "", errors.New("no organization: set --credentials FILE, or --org")
	}
	return b.url, key, org, nil
}
