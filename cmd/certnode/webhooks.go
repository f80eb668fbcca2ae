package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/certnode/certnode/internal/whsig"
)

func newWebhooksCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "webhooks",
		Short: "Tools for webhook receivers: verify signatures, receive events locally, trigger examples",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newWebhooksVerifyCmd(), newWebhooksListenCmd(), newWebhooksTriggerCmd())
	return cmd
}

// webhookSecretEnv holds an endpoint's signing secret; its _FILE form keeps
// the secret out of process listings, where --secret shows.
const webhookSecretEnv = "CERTNODE_WEBHOOK_SECRET"

func newWebhooksVerifyCmd() *cobra.Command {
	var secret, id, timestamp, signature, bodyFile string
	var tolerance time.Duration
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check one delivery's Standard Webhooks signature",
		Long: "Reads the delivery's body, exactly as received (a trailing newline counts), from --body FILE or stdin,\n" +
			"and checks it with the webhook-id, webhook-timestamp and webhook-signature headers given as flags.\n" +
			"The endpoint's secret: --secret, $" + webhookSecretEnv + ", or the file named by $" + webhookSecretEnv + "_FILE\n" +
			"(a flag shows in process listings; prefer the file).\n" +
			"Prints `valid`, or `invalid: <check> (<detail>)` where check is malformed_header,\n" +
			"timestamp_outside_tolerance or no_matching_signature.\n" +
			"Exit status: 0 valid, 1 invalid, 2 usage or I/O error.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var problems []error
			if secret == "" {
				s, err := requiredSecret(webhookSecretEnv)
				if err != nil {
					problems = append(problems, fmt.Errorf("--secret or %w", err))
				}
				secret = s
			}
			var key whsig.Secret
			if secret != "" {
				var err error
				if key, err = whsig.ParseSecret(secret); err != nil {
					problems = append(problems, err)
				}
			}
			for _, f := range []struct{ flag, value string }{{"id", id}, {"timestamp", timestamp}, {"signature", signature}} {
				if f.value == "" {
					problems = append(problems, fmt.Errorf("--%s is required", f.flag))
				}
			}
			if tolerance <= 0 {
				problems = append(problems, fmt.Errorf("--tolerance %s: must be positive", tolerance))
			}
			if len(problems) > 0 {
				return &exitError{code: exitUsage, err: errors.Join(problems...)}
			}

			in, err := openInput(cmd, bodyFile)
			if err != nil {
				return err
			}
			defer in.Close()
			body, err := io.ReadAll(io.LimitReader(in, maxDocument+1))
			if err != nil {
				return usageErr("read body: %v", err)
			}
			if len(body) > maxDocument {
				return usageErr("body is larger than %d MiB", maxDocument>>20)
			}
			h := http.Header{}
			h.Set(whsig.HeaderID, id)
			h.Set(whsig.HeaderTimestamp, timestamp)
			h.Set(whsig.HeaderSignature, signature)
			verr := whsig.Verify(h, body, []whsig.Secret{key}, tolerance, time.Now())
			if verr == nil {
				fmt.Fprintln(cmd.OutOrStdout(), "valid")
				return nil
			}
			var ve *whsig.VerifyError
			if !errors.As(verr, &ve) {
				return usageErr("%v", verr)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "invalid: %s (%s)\n", ve.Reason, ve.Detail)
			return silentExit(exitInvalid)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&secret, "secret", "", "the endpoint's whsec_ signing secret (prefer $"+webhookSecretEnv+"_FILE)")
	bindEnv(fs, "secret", webhookSecretEnv)
	fs.StringVar(&id, "id", "", "the webhook-id header (required)")
	bindEnv(fs, "id", "CERTNODE_WEBHOOK_ID")
	fs.StringVar(&timestamp, "timestamp", "", "the webhook-timestamp header, Unix seconds (required)")
	bindEnv(fs, "timestamp", "CERTNODE_WEBHOOK_TIMESTAMP")
	fs.StringVar(&signature, "signature", "", "the webhook-signature header, one or more space-separated v1,<base64> (required)")
	bindEnv(fs, "signature", "CERTNODE_WEBHOOK_SIGNATURE")
	fs.DurationVar(&tolerance, "tolerance", whsig.DefaultTolerance, "how far webhook-timestamp may be from this machine's clock, either way")
	bindEnv(fs, "tolerance", "CERTNODE_WEBHOOK_TOLERANCE")
	fs.StringVar(&bodyFile, "body", "", "file with the delivery's body (default stdin)")
	bindEnv(fs, "body", "CERTNODE_WEBHOOK_BODY_FILE")
	return cmd
}
