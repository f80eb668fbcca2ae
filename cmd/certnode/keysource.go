package main

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/spf13/pflag"

	"github.com/certnode/certnode/signer"
)

// keyFlags selects the signing keys: a key ring directory, a lone software
// PEM file, or a lone key on a PKCS#11 token. The PIN comes only from the
// environment.
type keyFlags struct {
	keyring  string
	keyFile  string
	module   string
	token    string
	label    string
	signers  int
	needsKey bool // false for `keys list`, which needs only the token
	fs       *pflag.FlagSet
	hsmMu    sync.Mutex
	hsm      *signer.HSM // set once the token is open
}

// pinHelp names the HSM PIN variables in the help of every command that
// can open a token.
const pinHelp = "The HSM PIN is read from $CERTNODE_PKCS11_PIN, or from the file named by\n" +
	"$CERTNODE_PKCS11_PIN_FILE; never from a flag, and it is never logged."

func (k *keyFlags) register(fs *pflag.FlagSet, withFile bool) {
	k.fs = fs
	fs.StringVar(&k.keyring, "keyring", "", "key ring directory (its ring.json lists the keys and the one that signs; software keys sit beside it)")
	bindEnv(fs, "keyring", "CERTNODE_KEYRING")
	if withFile {
		fs.StringVar(&k.keyFile, "key", "", "a lone software key: PKCS#8 PEM file")
		bindEnv(fs, "key", "CERTNODE_KEY")
	}
	fs.StringVar(&k.module, "pkcs11-module", "", "PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so)")
	bindEnv(fs, "pkcs11-module", "CERTNODE_PKCS11_MODULE")
	fs.StringVar(&k.token, "token", "", "PKCS#11 token label")
	bindEnv(fs, "token", "CERTNODE_PKCS11_TOKEN")
	fs.StringVar(&k.label, "label", "", "PKCS#11 label of a lone HSM key (key rings name their own keys)")
	bindEnv(fs, "label", "CERTNODE_PKCS11_KEY_LABEL")
	fs.IntVar(&k.signers, "pkcs11-signers", signer.DefaultSigners, "concurrent HSM operations, one session each")
	bindEnv(fs, "pkcs11-signers", "CERTNODE_PKCS11_SIGNERS")
}

func (k *keyFlags) usePKCS11() bool { return k.module != "" || k.token != "" }

// preferExplicit drops environment-supplied settings of another key source
// when the command line chose one: `--key k.pem` with CERTNODE_PKCS11_* or
// CERTNODE_KEYRING exported signs with k.pem. software reports an explicit
// software choice (--key, or --out for keys generate). The token stays
// with --keyring: it holds the ring's pkcs11: keys.
func (k *keyFlags) preferExplicit(software bool) {
	changed := func(names ...string) bool {
		for _, n := range names {
			if k.fs.Lookup(n) != nil && k.fs.Changed(n) {
				return true
			}
		}
		return false
	}
	clear := func(vals map[string]*string) {
		for name, v := range vals {
			if !changed(name) {
				*v = ""
			}
		}
	}
	switch {
	case software || changed("key"):
		clear(map[string]*string{"pkcs11-module": &k.module, "token": &k.token, "label": &k.label, "keyring": &k.keyring})
	case changed("keyring"):
		clear(map[string]*string{"key": &k.keyFile, "label": &k.label})
	case changed("label"):
		clear(map[string]*string{"key": &k.keyFile, "keyring": &k.keyring})
	case changed("pkcs11-module", "token"):
		clear(map[string]*string{"key": &k.keyFile})
	}
}

func (k *keyFlags) validate() error {
	var errs []error
	if k.usePKCS11() {
		if k.module == "" {
			errs = append(errs, errors.New("--pkcs11-module is required with --token"))
		}
		if k.token == "" {
			errs = append(errs, errors.New("--token is required with --pkcs11-module"))
		}
	}
	switch {
	case k.keyring != "" && k.keyFile != "":
		errs = append(errs, errors.New("use either --keyring or --key, not both"))
	case k.keyring != "" && k.label != "":
		errs = append(errs, errors.New("--label names a lone HSM key; a key ring names its own keys: leave --label out"))
	case k.keyring != "":
		// The ring names its keys; the token, if given, serves its pkcs11: keys.
	case k.keyFile != "" && k.usePKCS11():
		errs = append(errs, errors.New("use either --key or the --pkcs11-* flags, not both"))
	case k.usePKCS11():
		if k.needsKey && k.label == "" {
			errs = append(errs, errors.New("--label is required with --pkcs11-module"))
		}
	case k.keyFile == "":
		errs = append(errs, errors.New("no key: give --keyring DIR, --key FILE, or --pkcs11-module, --token and --label"))
	}
	if err := errors.Join(errs...); err != nil {
		return &exitError{code: exitUsage, err: err}
	}
	return nil
}

// openHSM logs into the configured token.
func (k *keyFlags) openHSM() (*signer.HSM, error) {
	pin, err := signer.PINFromEnv()
	if err != nil {
		return nil, &exitError{code: exitUsage, err: err}
	}
	h, err := signer.OpenHSM(signer.PKCS11Config{Module: k.module, TokenLabel: k.token, PIN: pin, Signers: k.signers})
	if err != nil {
		return nil, &exitError{code: exitUsage, err: err}
	}
	k.hsm = h
	return h, nil
}

// release closes the token, if it was opened.
func (k *keyFlags) release() {
	if k.hsm != nil {
		k.hsm.Close()
	}
}

// open returns the selected lone key; the caller calls release.
func (k *keyFlags) open() (signer.Key, error) {
	if !k.usePKCS11() {
		s, err := signer.LoadSoftware(k.keyFile)
		if err != nil {
			return nil, &exitError{code: exitUsage, err: err}
		}
		return s, nil
	}
	h, err := k.openHSM()
	if err != nil {
		return nil, err
	}
	key, err := h.Key(k.label)
	if err != nil {
		return nil, &exitError{code: exitUsage, err: err}
	}
	return key, nil
}

// registerPoolMetrics exposes the HSM session pool's use, when there is one.
func (k *keyFlags) registerPoolMetrics(reg prometheus.Registerer) {
	if k.hsm == nil {
		return
	}
	h := k.hsm
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "certnode_signer_pool_in_use", Help: "HSM sign operations in progress."},
			func() float64 { return float64(h.InUse()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "certnode_signer_pool_capacity", Help: "HSM sign operations allowed at once."},
			func() float64 { return float64(h.Capacity()) }))
}

// ring opens the selected keys for signing: the key ring, or a ring of the
// lone key.
func (k *keyFlags) ring() (*signer.Ring, func(), error) {
	k.needsKey = true
	k.preferExplicit(false)
	if err := k.validate(); err != nil {
		return nil, nil, err
	}
	if k.keyring != "" {
		ring, err := signer.OpenRing(k.keyring, signer.RingOptions{HSM: k.hsmOpener()})
		if err != nil {
			k.release()
			return nil, nil, &exitError{code: exitUsage, err: err}
		}
		return ring, k.release, nil
	}
	key, err := k.open()
	if err != nil {
		k.release()
		return nil, nil, err
	}
	ring, err := signer.NewRing(key)
	if err != nil {
		k.release()
		return nil, nil, &exitError{code: exitUsage, err: err}
	}
	return ring, k.release, nil
}

// hsmOpener lets a key ring (and organizations' keys) open the token when
// one of its pkcs11: keys must sign, so a ring of software keys never asks
// for the PIN. Every user shares one client of the token.
func (k *keyFlags) hsmOpener() func() (*signer.HSM, error) {
	if !k.usePKCS11() {
		return nil
	}
	return func() (*signer.HSM, error) {
		k.hsmMu.Lock()
		defer k.hsmMu.Unlock()
		if k.hsm != nil {
			return k.hsm, nil
		}
		return k.openHSM()
	}
}
