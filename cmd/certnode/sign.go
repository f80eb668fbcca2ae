package main

import (
	"bufio"
	"fmt"

	"github.com/spf13/cobra"
)

func newSignCmd() *cobra.Command {
	var kf keyFlags
	var payloadFile string
	var ndjson bool
	cmd := &cobra.Command{
		Use:   "sign",
		Short: "Sign a JSON object payload and print the receipt",
		Long: "Reads a JSON object (from --payload FILE, or stdin) and prints one CertNode receipt.\n" +
			"With --ndjson, reads one payload per line and prints one receipt per line; rejected lines\n" +
			"are reported on stderr with their line number and the exit code is 1. With --keyring DIR\n" +
			"the ring's active key signs.\n\n" + pinHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ring, release, err := kf.ring()
			if err != nil {
				return err
			}
			defer release()
			in, err := openInput(cmd, payloadFile)
			if err != nil {
				return err
			}
			defer in.Close()
			out := bufio.NewWriter(cmd.OutOrStdout())
			defer out.Flush()

			signOne := func(payload []byte) ([]byte, error) {
				rc, err := ring.Sign(cmd.Context(), payload)
				if err != nil {
					return nil, err
				}
				return rc.Marshal()
			}
			if !ndjson {
				doc, err := readDocument(in)
				if err != nil {
					return err
				}
				b, err := signOne(doc)
				if err != nil {
					return &exitError{code: exitInvalid, err: fmt.Errorf("payload rejected: %w", err)}
				}
				out.Write(b)
				out.WriteByte('\n')
				return nil
			}
			rejected := 0
			err = eachLine(in, func(n int, line []byte) error {
				b, err := signOne(line)
				if err != nil {
					rejected++
					fmt.Fprintf(cmd.ErrOrStderr(), "certnode: line %d: payload rejected: %v\n", n, err)
					return nil
				}
				out.Write(b)
				return out.WriteByte('\n')
			})
			if err != nil {
				return err
			}
			if rejected > 0 {
				out.Flush()
				fmt.Fprintf(cmd.ErrOrStderr(), "certnode: %d payload(s) rejected\n", rejected)
				return silentExit(exitInvalid)
			}
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&payloadFile, "payload", "", "payload file (default stdin)")
	bindEnv(fs, "payload", "CERTNODE_PAYLOAD_FILE")
	fs.BoolVar(&ndjson, "ndjson", false, "one payload per input line, one receipt per output line")
	bindEnv(fs, "ndjson", "CERTNODE_NDJSON")
	kf.register(fs, true)
	return cmd
}
