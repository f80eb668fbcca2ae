package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/spf13/cobra"

	"github.com/certnode/certnode/schemas"
	"github.com/certnode/certnode/signer"
)

func newKeysCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Create, rotate and list signing keys",
		Long: "A key ring (--keyring DIR) holds every signing key: ring.json (public, mode 0644) says which\n" +
			"key signs now and lists the retired ones, which stay published so older receipts keep\n" +
			"verifying; software keys sit beside it as PEM files (0600), HSM keys stay in the token.\n" +
			"Workers and ingest reload a changed ring.json within seconds.\n" +
			"Keys are ECDSA P-256 (ES256) or Ed25519 (EdDSA, deterministic signatures); the active key's\n" +
			"type is the algorithm receipts are signed with, and the JWKS publishes keys of both types.\n" +
			"  certnode keys generate --keyring ring       # new ring, or a standby key for an existing one\n" +
			"  certnode keys rotate --keyring ring         # a new key signs; the previous one is retired\n" +
			"  certnode keys rotate --keyring ring --alg EdDSA   # from now on receipts are EdDSA\n" +
			"  certnode keys list --keyring ring\n\n" + pinHelp,
	}
	cmd.AddCommand(newKeysGenerateCmd(), newKeysRotateCmd(), newKeysListCmd())
	return cmd
}

func newKeysGenerateCmd() *cobra.Command {
	var kf keyFlags
	var out, alg string
	cmd := &cobra.Command{
		Use:   "generate",
		Short: "Make a key: in a key ring (--keyring), a lone PEM file (--out) or a lone HSM key (--label)",
		Long: "Makes a signing key (--alg ES256: ECDSA P-256, or EdDSA: Ed25519) and prints its public\n" +
			"JWK (kid = RFC 7638 thumbprint). --alg defaults to the ring's active key's algorithm, and to\n" +
			"ES256 for a new ring or a lone key.\n" +
			"With --keyring, the key joins the ring (created if absent): the first key of a ring signs;\n" +
			"later ones are published on standby until keys rotate --to KID makes them sign. With\n" +
			"--pkcs11-module and --token the key is made inside the HSM (non-extractable), otherwise\n" +
			"it is a PEM file beside ring.json.\n" +
			"  certnode keys generate --keyring ring\n" +
			"  certnode keys generate --keyring ring --alg EdDSA\n" +
			"  certnode keys generate --keyring ring --pkcs11-module /usr/lib/softhsm/libsofthsm2.so --token T\n" +
			"  certnode keys generate --out key.pem\n" +
			"  certnode keys generate --pkcs11-module /usr/lib/softhsm/libsofthsm2.so --token T --label receipts-2026\n\n" +
			pinHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			kf.preferExplicit(cmd.Flags().Changed("out"))
			alg, err := keyAlg(alg, kf.keyring)
			if err != nil {
				return err
			}
			var key signer.Key
			switch {
			case out != "" && (kf.keyring != "" || kf.usePKCS11()):
				return usageErr("--out makes a lone key file: use it without --keyring and the --pkcs11-* flags")
			case out != "":
				s, err := signer.GenerateSoftware(alg)
				if err != nil {
					return &exitError{code: exitUsage, err: err}
				}
				if err := s.WritePEM(out); err != nil {
					return usageErr("write key: %w", err)
				}
				key = s
			case kf.keyring != "":
				k, err := kf.addRingKey(alg, false)
				if err != nil {
					return err
				}
				f, err := signer.ReadRingFile(kf.keyring)
				if err != nil {
					return &exitError{code: exitUsage, err: err}
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "certnode: %s key %s (%s) added to %s: %s\n", k.JWK.KeyAlg(), k.Kid, k.Source, kf.keyring, f.State(k))
				return printJSON(cmd, k.JWK)
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
				if key, err = h.GenerateKey(kf.label, alg); err != nil {
					return &exitError{code: exitUsage, err: err}
				}
			default:
				return usageErr("give --keyring DIR for a key ring, --out FILE for a lone software key, or --pkcs11-module, --token and --label for a lone HSM key")
			}
			jwk, err := schemas.NewJWK(key.Public())
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			return printJSON(cmd, jwk)
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "write a lone software key to this new PEM file (mode 0600, never overwritten)")
	bindEnv(cmd.Flags(), "out", "CERTNODE_KEY_OUT")
	registerAlg(cmd, &alg)
	kf.register(cmd.Flags(), false)
	return cmd
}

// registerAlg adds --alg, the type of key a command makes.
func registerAlg(cmd *cobra.Command, alg *string) {
	cmd.Flags().StringVar(alg, "alg", "", "key type: ES256 (ECDSA P-256) or EdDSA (Ed25519); default: the ring's active key's, else ES256")
	bindEnv(cmd.Flags(), "alg", "CERTNODE_KEY_ALG")
}

// keyAlg checks --alg, defaulting to the algorithm the ring in dir signs
// with now (ES256 when there is no ring).
func keyAlg(alg, dir string) (string, error) {
	if alg != "" {
		if err := signer.CheckAlg(alg); err != nil {
			return "", usageErr("--alg: %v", err)
		}
		return alg, nil
	}
	if dir != "" {
		f, err := signer.ReadRingFile(dir)
		switch {
		case err == nil:
			if k, ok := f.Key(f.Active); ok {
				return k.JWK.KeyAlg(), nil
			}
		case !errors.Is(err, os.ErrNotExist):
			return "", &exitError{code: exitUsage, err: err}
		}
	}
	return schemas.AlgES256, nil
}

func newKeysRotateCmd() *cobra.Command {
	var kf keyFlags
	var to, alg string
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Make a new key (or a standby one, --to) sign for a key ring; the previous key is retired",
		Long: "Creates a key in the ring and makes it the signing key, or with --to KID activates a key\n" +
			"already published on standby (see keys generate), after checking it opens. The previous\n" +
			"key is retired: it stays in the JWKS, so receipts it signed keep verifying. Running\n" +
			"workers and ingest pick the change up within seconds, without a restart. With\n" +
			"--pkcs11-module and --token the new key is made inside the HSM. --alg EdDSA (or ES256)\n" +
			"switches the algorithm receipts are signed with; the new key keeps the current one's\n" +
			"otherwise. Keys of both types stay published, so every receipt keeps verifying.\n" +
			"  certnode keys rotate --keyring ring\n" +
			"  certnode keys rotate --keyring ring --alg EdDSA\n" +
			"  certnode keys rotate --keyring ring --pkcs11-module /usr/lib/softhsm/libsofthsm2.so --token T\n\n" +
			pinHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			kf.preferExplicit(false)
			if kf.keyring == "" {
				return usageErr("--keyring DIR is required")
			}
			if err := kf.validate(); err != nil {
				return err
			}
			before, err := signer.ReadRingFile(kf.keyring)
			if errors.Is(err, os.ErrNotExist) {
				return usageErr("%s has no key ring yet: create it with certnode keys generate --keyring %s", kf.keyring, kf.keyring)
			}
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			switch {
			case to != "" && cmd.Flags().Changed("alg"):
				return usageErr("--to activates a key that exists, whose type is its own: leave --alg out")
			case to != "":
				err = signer.ActivateRingKey(kf.keyring, to, kf.hsmOpener())
				kf.release()
			default:
				var a string
				if a, err = keyAlg(alg, kf.keyring); err != nil {
					return err
				}
				_, err = kf.addRingKey(a, true)
			}
			if err != nil {
				return err
			}
			after, err := signer.ReadRingFile(kf.keyring)
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			active, _ := after.Key(after.Active)
			fmt.Fprintf(cmd.ErrOrStderr(), "certnode: %s: %s key %s (%s) signs now; %s is retired and stays published\n",
				kf.keyring, active.JWK.KeyAlg(), active.Kid, active.Source, before.Active)
			return printJSON(cmd, active.JWK)
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "activate this standby kid instead of making a new key")
	bindEnv(cmd.Flags(), "to", "CERTNODE_ROTATE_TO")
	registerAlg(cmd, &alg)
	kf.register(cmd.Flags(), false)
	return cmd
}

// addRingKey makes a key for alg (in the token when one is configured,
// else a PEM file) and adds it to the key ring.
func (k *keyFlags) addRingKey(alg string, activate bool) (signer.RingKey, error) {
	if err := k.validate(); err != nil {
		return signer.RingKey{}, err
	}
	mk := signer.SoftwareKeyMaker(alg)
	if k.usePKCS11() {
		h, err := k.openHSM()
		if err != nil {
			return signer.RingKey{}, err
		}
		defer k.release()
		mk = h.KeyMaker(alg)
	}
	key, err := signer.AddRingKey(k.keyring, mk, activate)
	if err != nil {
		return signer.RingKey{}, &exitError{code: exitUsage, err: err}
	}
	return key, nil
}

func newKeysListCmd() *cobra.Command {
	var kf keyFlags
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List a key ring's keys (--keyring), or the key pairs on a PKCS#11 token",
		Long:  "Lists a key ring's keys with their state (active, retired, standby), or with\n--pkcs11-module and --token the key pairs on the token.\n\n" + pinHelp,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			kf.preferExplicit(false)
			w := cmd.OutOrStdout()
			if kf.keyring != "" {
				f, err := signer.ReadRingFile(kf.keyring)
				if err != nil {
					return &exitError{code: exitUsage, err: err}
				}
				fmt.Fprintf(w, "%-43s  %-5s  %-7s  %-20s  %-20s  %s\n", "KID", "ALG", "STATE", "CREATED", "RETIRED", "SOURCE")
				for _, k := range f.Keys {
					retired := "-"
					if !k.RetiredAt.IsZero() {
						retired = k.RetiredAt.Format(time.RFC3339)
					}
					fmt.Fprintf(w, "%-43s  %-5s  %-7s  %-20s  %-20s  %s\n", k.Kid, k.JWK.KeyAlg(), f.State(k), k.CreatedAt.Format(time.RFC3339), retired, k.Source)
				}
				return nil
			}
			if !kf.usePKCS11() {
				return usageErr("keys list needs --keyring DIR, or --pkcs11-module and --token")
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
		Short: "Print the JWKS (public keys): every key of a key ring, active first, or a lone key's",
		Long: "Prints the JWKS verifiers need. With --keyring only ring.json is read (no private key, no\n" +
			"PIN): the active key first, then every retired and standby key.\n\n" + pinHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			kf.needsKey = true
			kf.preferExplicit(false)
			if err := kf.validate(); err != nil {
				return err
			}
			if kf.keyring != "" {
				ring, err := signer.OpenRing(kf.keyring, signer.RingOptions{PublicOnly: true})
				if err != nil {
					return &exitError{code: exitUsage, err: err}
				}
				return printJSON(cmd, ring.JWKS())
			}
			key, err := kf.open()
			defer kf.release()
			if err != nil {
				return err
			}
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
