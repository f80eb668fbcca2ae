package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/spf13/cobra"

	"github.com/certnode/certnode/schemas"
)

func newVerifyCmd() *cobra.Command {
	var jwksFile, receiptFile string
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Verify receipts (ES256 and EdDSA) against a JWKS",
		Long: "Reads one receipt (pretty-printed or not) or NDJSON of many, from --receipt FILE or stdin.\n" +
			"The JWKS may mix EC P-256 (ES256) and OKP Ed25519 (EdDSA) keys; keys of other types or uses\n" +
			"are skipped with a note on stderr.\n" +
			"Prints `valid` or `invalid: <reason>` for one receipt; for many, one line per receipt\n" +
			"(`line N: valid` ...) and a summary line.\n" +
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
				return nil
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
	return cmd
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
