package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/spf13/cobra"

	"github.com/certnode/certnode/compliance"
	"github.com/certnode/certnode/schemas"
	"github.com/certnode/certnode/transparency"
)

func newVerifyCmd() *cobra.Command {
	var jwksFile, receiptFile, pdfFile, proofFile, logKey string
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Verify receipts (ES256 and EdDSA) against a JWKS",
		Long: "Reads one receipt (pretty-printed or not) or NDJSON of many, from --receipt FILE or stdin.\n" +
			"The JWKS may mix EC P-256 (ES256) and OKP Ed25519 (EdDSA) keys; keys of other types or uses\n" +
			"are skipped with a note on stderr.\n" +
			"Prints `valid` or `invalid: <reason>` for one receipt; for many, one line per receipt\n" +
			"(`line N: valid` ...) and a summary line.\n" +
			"A compliance report (POST /v1/compliance/reports) is a receipt: verify its JSON, and with --pdf\n" +
			"FILE check that the PDF names that very receipt and JSON (its id and SHA-256).\n" +
			"With --proof FILE (GET /v1/receipts/{id}/proof) and --log-key (certnode log key), also check\n" +
			"offline that the receipt is in the transparency log: the checkpoint's signature and the\n" +
			"inclusion proof of the receipt's leaf in the checkpoint's tree.\n" +
			"Exit status: 0 every receipt valid, 1 any invalid, 2 usage or I/O error.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if jwksFile == "" {
				return usageErr("--jwks FILE is required")
			}
			jwksData, err := os.ReadFile(jwksFile)
			if err != nil {
				return usageErr("%v", err)
			}
			ks, err := schemas.ParseJWKS(jwksData)
			if err != nil {
				return usageErr("%s: %v", jwksFile, err)
			}
			// Keys for other algorithms or uses do not stop verification;
			// the user hears of them once, not per receipt.
			for _, s := range ks.Skipped() {
				fmt.Fprintf(cmd.ErrOrStderr(), "certnode: %s: %s\n", jwksFile, s)
			}
			in, err := openInput(cmd, receiptFile)
			if err != nil {
				return err
			}
			defer in.Close()

			// One document (possibly pretty-printed), or NDJSON: NDJSON when
			// the first non-blank line is a complete JSON value and more follows.
			br := bufio.NewReaderSize(in, 1<<20)
			var head, first []byte // head keeps leading blank lines, so line numbers stay true
			for len(bytes.TrimSpace(first)) == 0 {
				first, err = br.ReadBytes('\n')
				head = append(head, first...)
				if err == io.EOF {
					break
				}
				if err != nil {
					return usageErr("read input: %v", err)
				}
			}
			if len(bytes.TrimSpace(first)) == 0 {
				return usageErr("no receipt on input")
			}
			all := io.MultiReader(bytes.NewReader(head), br)
			out := bufio.NewWriter(cmd.OutOrStdout())
			defer out.Flush()
			_, peekErr := br.Peek(1)
			if peekErr != nil || !jsontext.Value(bytes.TrimSpace(first)).IsValid() {
				doc, err := readDocument(all)
				if err != nil {
					return err
				}
				_, verr := ks.Verify(doc)
				fmt.Fprintln(out, verdict(verr))
				if verr != nil {
					return silentExit(exitInvalid)
				}
				if err := checkProof(out, doc, proofFile, logKey); err != nil {
					return err
				}
				return checkReport(out, doc, pdfFile)
			}
			if pdfFile != "" || proofFile != "" {
				return usageErr("--pdf and --proof go with one receipt, not NDJSON")
			}

			var total, valid int
			err = eachLine(all, func(n int, line []byte) error {
				total++
				_, verr := ks.Verify(line)
				if verr == nil {
					valid++
				}
				_, err := fmt.Fprintf(out, "line %d: %s\n", n, verdict(verr))
				return err
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "%d receipts: %d valid, %d invalid\n", total, valid, total-valid)
			if valid != total {
				return silentExit(exitInvalid)
			}
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&jwksFile, "jwks", "", "JWKS file with the signer's public keys, e.g. from certnode jwks --keyring (required)")
	bindEnv(fs, "jwks", "CERTNODE_JWKS_FILE")
	fs.StringVar(&receiptFile, "receipt", "", "receipt file, one receipt or NDJSON (default stdin)")
	bindEnv(fs, "receipt", "CERTNODE_RECEIPT_FILE")
	fs.StringVar(&pdfFile, "pdf", "", "the PDF of a compliance report whose signed JSON is the receipt: check it names that receipt")
	bindEnv(fs, "pdf", "CERTNODE_REPORT_PDF")
	fs.StringVar(&proofFile, "proof", "", "the receipt's inclusion proof (GET /v1/receipts/{id}/proof): check the receipt is in the transparency log")
	bindEnv(fs, "proof", "CERTNODE_PROOF_FILE")
	fs.StringVar(&logKey, "log-key", "", "the transparency log's verifier key, or a file holding it (with --proof)")
	bindEnv(fs, "log-key", "CERTNODE_LOG_KEY")
	return cmd
}

// checkProof checks, when proofFile is given, that the valid receipt doc
// is in the transparency log the key vkey signs for.
func checkProof(out io.Writer, doc []byte, proofFile, vkey string) error {
	if proofFile == "" {
		return nil
	}
	key, err := readVerifierKey(vkey)
	if err != nil {
		return usageErr("%v", err)
	}
	b, err := os.ReadFile(proofFile)
	if err != nil {
		return usageErr("%v", err)
	}
	var p schemas.InclusionProof
	if err := json.Unmarshal(b, &p, json.RejectUnknownMembers(false)); err != nil {
		return usageErr("%s: not an inclusion proof: %v", proofFile, err)
	}
	var r struct {
		ReceiptID string `json:"receipt_id"`
	}
	json.Unmarshal(doc, &r, json.RejectUnknownMembers(false))
	if r.ReceiptID == "" {
		fmt.Fprintln(out, "log: invalid: the receipt has no receipt_id, which its leaf is made of")
		return silentExit(exitInvalid)
	}
	cp, err := transparency.VerifyInclusion(r.ReceiptID, &p, key)
	if err != nil {
		fmt.Fprintf(out, "log: invalid: %v\n", err)
		return silentExit(exitInvalid)
	}
	fmt.Fprintf(out, "log: leaf %d of %s's tree of %d, in a checkpoint its key signed\n", p.LeafIndex, cp.Origin, cp.Size)
	return nil
}

// checkReport says what a valid receipt holds when it is a compliance
// report, and checks pdfFile (if any) names that very receipt and JSON.
func checkReport(out io.Writer, doc []byte, pdfFile string) error {
	var r struct {
		Payload schemas.ComplianceReport `json:"payload"`
	}
	if json.Unmarshal(doc, &r, json.RejectUnknownMembers(false)) == nil && r.Payload.Type == schemas.ComplianceReportType {
		fmt.Fprintf(out, "compliance report of %s, %s to %s, generated %s\n", r.Payload.Organization,
			r.Payload.From.Format(time.RFC3339), r.Payload.To.Format(time.RFC3339), r.Payload.GeneratedAt.Format(time.RFC3339))
	}
	if pdfFile == "" {
		return nil
	}
	pdf, err := os.ReadFile(pdfFile)
	if err != nil {
		return usageErr("%v", err)
	}
	want, err := compliance.BindingFor(doc)
	if err != nil {
		return usageErr("%v", err)
	}
	got, err := compliance.BindingOf(pdf)
	switch {
	case err != nil:
		fmt.Fprintf(out, "pdf: %v\n", err)
	case got.ReceiptID != want.ReceiptID:
		fmt.Fprintf(out, "pdf: names receipt %s, not this one (%s)\n", got.ReceiptID, want.ReceiptID)
	case got.JSONSHA256 != want.JSONSHA256:
		fmt.Fprintf(out, "pdf: names this receipt, but JSON with SHA-256 %s, not this file's %s (altered, or reformatted: take it from GET /v1/receipts/%s)\n",
			got.JSONSHA256, want.JSONSHA256, want.ReceiptID)
	default:
		fmt.Fprintf(out, "pdf: names this receipt (%s) and this JSON (SHA-256 %s)\n", want.ReceiptID, want.JSONSHA256)
		return nil
	}
	return silentExit(exitInvalid)
}

// verdict is the one-line result: `valid` or `invalid: <reason> (<detail>)`.
func verdict(err error) string {
	if err == nil {
		return "valid"
	}
	var ve *schemas.VerifyError
	if errors.As(err, &ve) {
		if ve.Detail != "" {
			return fmt.Sprintf("invalid: %s (%s)", ve.Reason, ve.Detail)
		}
		return "invalid: " + string(ve.Reason)
	}
	return "invalid: " + err.Error()
}
