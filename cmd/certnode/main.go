// Command certnode is the CertNode pipeline: one binary whose subcommands
// are the roles and tools. This package only wires flags to packages.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Exit codes shared by every subcommand.
const (
	exitOK      = 0
	exitInvalid = 1 // the input was read, and some of it was rejected
	exitUsage   = 2 // bad flags, unreadable files, unusable keys
)

// exitError carries an exit code; its message (if any) goes to stderr.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErr(format string, a ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, a...)}
}

// silentExit ends with code after the command already reported everything.
type silentExit int

func (s silentExit) Error() string { return fmt.Sprintf("exit %d", int(s)) }

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return runContext(context.Background(), args, stdin, stdout, stderr)
}

func runContext(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := newRoot()
	root.SetContext(ctx)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.Execute()
	var se silentExit
	var ee *exitError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &se):
		return int(se)
	case errors.As(err, &ee):
		fmt.Fprintf(stderr, "certnode: %v\n", ee.err)
		return ee.code
	default:
		// Subcommands return exitError or silentExit; anything else is
		// cobra's own (unknown command, wrong arguments): a usage error.
		fmt.Fprintf(stderr, "certnode: %v\n", err)
		return exitUsage
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "certnode",
		Short:         "CertNode: sign and verify tamper-evident receipts (ES256 over RFC 8785 JSON)",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return applyEnv(cmd)
		},
	}
	root.PersistentFlags().DurationVar(&shutdownTimeout, "shutdown-timeout", shutdownTimeout,
		"how long a stopping role may take (SIGINT/SIGTERM; a second signal exits at once)")
	bindEnv(root.PersistentFlags(), "shutdown-timeout", "CERTNODE_SHUTDOWN_TIMEOUT")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &exitError{code: exitUsage, err: err}
	})
	// --version prints what the version command prints.
	root.Version = versionText()
	root.SetVersionTemplate("{{.Version}}")
	root.AddCommand(newKeysCmd(), newSignCmd(), newJWKSCmd(), newVerifyCmd(), newAuditCmd(),
		newDevCmd(), newIngestCmd(), newWorkerCmd(), newSinkCmd(), newDispatcherCmd(), newMailerCmd(), newCoordinatorCmd(), newAdminCmd(), newWebhooksCmd(), newLogCmd(), newDetectCmd(), newComplianceCmd(), newKafkaCmd(), newBenchCmd(), newVersionCmd())
	return root
}

// internalSecretHelp names the secret ingest, the workers and the
// dispatchers share.
const internalSecretHelp = "Required: $CERTNODE_INTERNAL_SECRET, or the file named by $CERTNODE_INTERNAL_SECRET_FILE:\n" +
	"at least 32 bytes shared by ingest, the workers, the dispatchers, the detector, the audit log and the coordinator\n" +
	"(with --kafka): it authenticates the records they write for each other."

// envAnnotation names the CERTNODE_* variable that fills a flag left unset.
const envAnnotation = "certnode_env"

func bindEnv(fs *pflag.FlagSet, flag, env string) {
	_ = fs.SetAnnotation(flag, envAnnotation, []string{env})
	f := fs.Lookup(flag)
	f.Usage += " [$" + env + "]"
}

// eachCommand calls f for c and every command below it.
func eachCommand(c *cobra.Command, f func(*cobra.Command)) {
	f(c)
	for _, sub := range c.Commands() {
		eachCommand(sub, f)
	}
}

// bindEnvAll binds every flag of fs not bound yet to CERTNODE_<PREFIX>_<FLAG>.
func bindEnvAll(fs *pflag.FlagSet, prefix string) {
	fs.VisitAll(func(f *pflag.Flag) {
		if len(f.Annotations[envAnnotation]) == 0 {
			bindEnv(fs, f.Name, "CERTNODE_"+prefix+"_"+strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_")))
		}
	})
}

// applyEnv fills unset flags from their environment variables, so every
// role can be configured either way; an explicit flag wins.
func applyEnv(cmd *cobra.Command) error {
	var errs []error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		names := f.Annotations[envAnnotation]
		if f.Changed || len(names) == 0 {
			return
		}
		if v, ok := os.LookupEnv(names[0]); ok && v != "" {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("$%s: %w", names[0], err))
			}
		}
	})
	if len(errs) > 0 {
		return &exitError{code: exitUsage, err: errors.Join(errs...)}
	}
	return nil
}
