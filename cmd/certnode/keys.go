package main

import (
	"errors"
	"fmt"

	"github.com/go-json-experiment/json"
	"github.com/spf13/cobra"

	"github.com/certnode/certnode/schemas"
	"github.com/certnode/certnode/signer"
)

func newKeysCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "keys", Short: "Create and list signing keys"}
	cmd.AddCommand(newKeysGenerateCmd(), newKeysListCmd())
	return cmd
}

func newKeysGenerateCmd() *cobra.Command {
	var kf keyFlags
	var out string
	cmd := &cobra.Command{
		Use:   "generate",
		Short: "Make a P-256 key: a PEM file (--out) or a key inside the HSM (--pkcs11-module, --token, --label)",
		Long: "Makes a P-256 signing key and prints its public JWK (kid = RFC 7638 thumbprint).\n" +
			"  certnode keys generate --out key.pem\n" +
			"  CERTNODE_PKCS11_PIN=... certnode keys generate --pkcs11-module /usr/lib/softhsm/libsofthsm2.so --token T --label receipts-2026",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var key signer.Key
			kf.preferExplicit(cmd.Flags().Changed("out"))
			switch {
			case out != "" && kf.usePKCS11():
				return usageErr("use either --out or the --pkcs11-* flags, not both")
			case out != "":
				s, err := signer.GenerateSoftware()
				if err != nil {
					return &exitError{code: exitUsage, err: err}
				}
				if err := s.WritePEM(out); err != nil {
					return usageErr("write key: %w", err)
				}
				key = s
			case kf.usePKCS11():
				kf.needsKey = true
				if err := kf.validate(); err != nil {
					return err
				}
				h, err := kf.openHSM()
				if err != nil {
					return err
				}
				defer h.Close()
				k, err := h.GenerateKey(kf.label)
				if err != nil {
					return &exitError{code: exitUsage, err: err}
				}
				key = k
			default:
				return usageErr("give --out FILE for a software key, or --pkcs11-module, --token and --label for an HSM key")
			}
			jwk, err := schemas.NewJWK(key.Public())
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			return printJSON(cmd, jwk)
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "write a new software key to this PEM file (mode 0600, never overwritten)")
	kf.register(cmd.Flags(), false)
	return cmd
}

func newKeysListCmd() *cobra.Command {
	var kf keyFlags
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the key pairs on a PKCS#11 token",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			kf.preferExplicit(false)
			if !kf.usePKCS11() {
				return usageErr("keys list needs --pkcs11-module and --token")
			}
			if err := kf.validate(); err != nil {
				return err
			}
			h, err := kf.openHSM()
			if err != nil {
				return err
			}
			defer h.Close()
			keys, err := h.ListKeys()
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "%-32s %-10s %s\n", "LABEL", "TYPE", "KID")
			for _, k := range keys {
				fmt.Fprintf(w, "%-32s %-10s %s\n", k.Label, k.Type, k.Kid)
			}
			return nil
		},
	}
	kf.register(cmd.Flags(), false)
	return cmd
}

func newJWKSCmd() *cobra.Command {
	var kf keyFlags
	cmd := &cobra.Command{
		Use:   "jwks",
		Short: "Print the JWKS (public keys) for a signing key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, release, err := kf.open()
			if err != nil {
				return err
			}
			defer release()
			jwk, err := schemas.NewJWK(key.Public())
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			return printJSON(cmd, schemas.JWKS{Keys: []schemas.JWK{jwk}})
		},
	}
	kf.register(cmd.Flags(), true)
	return cmd
}

func printJSON(cmd *cobra.Command, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return &exitError{code: exitUsage, err: err}
	}
	_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n", b)
	if err != nil {
		return &exitError{code: exitUsage, err: errors.New("write output: " + err.Error())}
	}
	return nil
}
