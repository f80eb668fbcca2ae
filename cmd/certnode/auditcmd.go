package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/spf13/cobra"

	"github.com/certnode/certnode/schemas"
	"github.com/certnode/certnode/transparency"
)

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "The audit log: verify an organization's export"}
	cmd.AddCommand(newAuditVerifyCmd())
	return cmd
}

func newAuditVerifyCmd() *cobra.Command {
	var file, logKey string
	var pinned []string
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Prove an audit export (GET /v1/audit/export) complete and unaltered against the audit log",
		Long: "Checks an organization's audit export offline: the checkpoint's signature under the audit log's\n" +
			"key (--audit-log-key: the key, or a file holding it; take it from a source other than the export), that\n" +
			"the export's leaves rebuild the checkpoint's root, that each of the organization's leaves timed in\n" +
			"the window is an exported event, and that each event is one of its leaves. An event deleted or\n" +
			"edited where the events are stored (ClickHouse) fails the check, which names it; exit 1. The\n" +
			"organization's leaves are told apart by its tags, which the export names: note them the first\n" +
			"time and pin them (--org-tag), so that an export naming other tags fails.\n" +
			"  certnode audit verify --export audit.json --audit-log-key audit.vkey --org-tag 1a2b3c4d:9f...",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" || logKey == "" {
				return usageErr("--export and --audit-log-key are required")
			}
			vkey, err := readVerifierKey(logKey)
			if err != nil {
				return usageErr("%v", err)
			}
			b, err := os.ReadFile(file)
			if err != nil {
				return usageErr("%v", err)
			}
			var x schemas.AuditExport
			if err := json.Unmarshal(b, &x, json.RejectUnknownMembers(true)); err != nil {
				return &exitError{code: exitInvalid, err: fmt.Errorf("%s is not an audit export: %w", file, err)}
			}
			rep, err := transparency.VerifyAuditExport(&x, vkey, pinned...)
			if err != nil {
				if errors.Is(err, transparency.ErrAuditExport) || errors.Is(err, transparency.ErrBadProof) {
					return &exitError{code: exitInvalid, err: fmt.Errorf("%s: %w", file, err)}
				}
				return usageErr("%v", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "verified: %d events of %s from %s to %s, complete and unaltered against the audit log's checkpoint of %d leaves (leaves %d on checked)\n",
				rep.Events, rep.Org, rep.From.Format(time.RFC3339), rep.To.Format(time.RFC3339), rep.TreeSize, rep.FirstLeaf)
			fmt.Fprintf(cmd.OutOrStdout(), "organization tags: %s\n", strings.Join(rep.OrgTags, " "))
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&file, "export", "", "the export (GET /v1/audit/export), a JSON file")
	bindEnv(fs, "export", "CERTNODE_AUDIT_EXPORT_FILE")
	fs.StringVar(&logKey, "audit-log-key", "", "the audit log's verifier key (certnode log key --origin certnode.local/audit ...), or a file holding it")
	bindEnv(fs, "audit-log-key", "CERTNODE_AUDIT_LOG_KEY")
	fs.StringSliceVar(&pinned, "org-tag", nil, "a tag of the organization's the export must name (from an earlier export you trust); repeatable")
	bindEnv(fs, "org-tag", "CERTNODE_AUDIT_ORG_TAGS")
	return cmd
}
