package main

import (
	"errors"

	"github.com/spf13/pflag"

	"github.com/certnode/certnode/internal/envelope"
	"github.com/certnode/certnode/signer"
)

// kekFlags select where the organizations' key-encryption keys live, for
// the roles that store payloads sealed (the ClickHouse sink) or read them
// (ingest with --clickhouse): a PKCS#11 token, or a folder of files.
type kekFlags struct{ dir, module, token string }

func (k *kekFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&k.token, "kek-token", "", "PKCS#11 token holding the organizations' key-encryption keys (payloads are stored encrypted; the PIN as for signing keys)")
	bindEnv(fs, "kek-token", "CERTNODE_KEK_TOKEN")
	fs.StringVar(&k.module, "kek-pkcs11-module", "", "PKCS#11 module of --kek-token")
	bindEnv(fs, "kek-pkcs11-module", "CERTNODE_KEK_PKCS11_MODULE")
	fs.StringVar(&k.dir, "kek-dir", "", "folder of software key-encryption keys, instead of a token (development: a token keeps them out of reach)")
	bindEnv(fs, "kek-dir", "CERTNODE_KEK_DIR")
}

// open returns the envelope over the configured KEKs, and what closes it.
func (k *kekFlags) open() (*envelope.Envelope, func(), error) {
	switch {
	case k.dir != "" && (k.token != "" || k.module != ""):
		return nil, nil, usageErr("give --kek-dir or --kek-token, not both")
	case k.dir != "":
		keks, err := envelope.NewDirKEKs(k.dir)
		if err != nil {
			return nil, nil, err
		}
		return envelope.New(keks), func() {}, nil
	case k.token == "" || k.module == "":
		return nil, nil, usageErr("payloads are stored encrypted: give --kek-token and --kek-pkcs11-module (an HSM), or --kek-dir")
	}
	pin, err := signer.PINFromEnv()
	if err != nil {
		return nil, nil, &exitError{code: exitUsage, err: err}
	}
	h, err := signer.OpenHSM(signer.PKCS11Config{Module: k.module, TokenLabel: k.token, PIN: pin, Signers: 4})
	if err != nil {
		return nil, nil, &exitError{code: exitUsage, err: errors.Join(errors.New("key-encryption keys"), err)}
	}
	return envelope.New(h.KEKs()), func() { h.Close() }, nil
}
