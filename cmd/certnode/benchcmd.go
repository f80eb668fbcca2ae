package main

import (
	"errors"
	"os"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/spf13/cobra"

	"github.com/certnode/certnode/bench"
)

func newBenchCmd() *cobra.Command {
	cfg := bench.LoadConfig{BaseURL: "http://127.0.0.1:8080", JobLines: 20000, Rate: 100, Duration: 5 * time.Second}
	var credFile string
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load a running CertNode API: bulk throughput and fixed-rate latency, as ratios to the raw signing rate of the receipts' algorithm",
		Long: "Measures raw P-256 sign/verify on this machine, then a bulk sign job and a bulk verify job\n" +
			"end to end (receipts/min), then /v1/sign and /v1/verify latency at a fixed request rate.\n" +
			"The API key comes from $CERTNODE_API_KEY or --credentials (the file `certnode dev` writes).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.APIKey = os.Getenv("CERTNODE_API_KEY")
			if credFile != "" {
				data, err := os.ReadFile(credFile)
				if err != nil {
					return usageErr("%v", err)
				}
				var c credentials
				if err := json.Unmarshal(data, &c); err != nil {
					return usageErr("%s: %v", credFile, err)
				}
				cfg.APIKey = c.APIKey
			}
			var errs []error
			if cfg.APIKey == "" {
				errs = append(errs, errors.New("no API key: set CERTNODE_API_KEY or --credentials FILE"))
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
	fs.StringVar(&cfg.BaseURL, "url", cfg.BaseURL, "API base URL")
	bindEnv(fs, "url", "CERTNODE_BENCH_URL")
	fs.StringVar(&credFile, "credentials", "", "credentials.json written by certnode dev")
	bindEnv(fs, "credentials", "CERTNODE_CREDENTIALS_FILE")
	fs.IntVar(&cfg.JobLines, "lines", cfg.JobLines, "lines per bulk job")
	bindEnv(fs, "lines", "CERTNODE_BENCH_LINES")
	fs.IntVar(&cfg.Rate, "rate", cfg.Rate, "requests/s for the latency runs")
	bindEnv(fs, "rate", "CERTNODE_BENCH_RATE")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "length of each latency run")
	bindEnv(fs, "duration", "CERTNODE_BENCH_DURATION")
	fs.StringVar(&cfg.Label, "label", "certnode", "label printed with the figures")
	bindEnv(fs, "label", "CERTNODE_BENCH_LABEL")
	return cmd
}
