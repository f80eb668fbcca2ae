package main

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/spf13/pflag"

	"github.com/certnode/certnode/signer"
)

// keyFlags selects a signing key: a software PEM file, or a key on a
// PKCS#11 token. The PIN comes only from the environment.
type keyFlags struct {
	keyFile  string
	module   string
	token    string
	label    string
	signers  int
	needsKey bool // false for `keys list`, which needs only the token
	fs       *pflag.FlagSet
	hsm      *signer.HSM // set by open when the key is on a token
}

func (k *keyFlags) register(fs *pflag.FlagSet, withFile bool) {
	k.fs = fs
	if withFile {
		fs.StringVar(&k.keyFile, "key", "", "software key: PKCS#8 PEM file")
		bindEnv(fs, "key", "CERTNODE_KEY")
	}
	fs.StringVar(&k.module, "pkcs11-module", "", "PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so); PIN from $CERTNODE_PKCS11_PIN or $CERTNODE_PKCS11_PIN_FILE")
	bindEnv(fs, "pkcs11-module", "CERTNODE_PKCS11_MODULE")
	fs.StringVar(&k.token, "token", "", "PKCS#11 token label")
	bindEnv(fs, "token", "CERTNODE_PKCS11_TOKEN")
	fs.StringVar(&k.label, "label", "", "PKCS#11 key label")
	bindEnv(fs, "label", "CERTNODE_PKCS11_KEY_LABEL")
	fs.IntVar(&k.signers, "pkcs11-signers", signer.DefaultSigners, "concurrent HSM sign operations (sessions = this + 1)")
}

func (k *keyFlags) usePKCS11() bool { return k.module != "" || k.token != "" }

// preferExplicit drops environment-supplied settings of the other key source
// when the command line chose one: `--key k.pem` with CERTNODE_PKCS11_*
// exported signs with k.pem. software reports an explicit software choice
// (--key, or --out for keys generate).
func (k *keyFlags) preferExplicit(software bool) {
	changed := func(names ...string) bool {
		for _, n := range names {
			if k.fs.Lookup(n) != nil && k.fs.Changed(n) {
				return true
			}
		}
		return false
	}
	if software || changed("key") {
		for name, v := range map[string]*string{"pkcs11-module": &k.module, "token": &k.token, "label": &k.label} {
			if !changed(name) {
				*v = ""
			}
		}
	} else if changed("pkcs11-module", "token", "label") && !changed("key") {
		k.keyFile = ""
	}
}

func (k *keyFlags) validate() error {
	var errs []error
	switch {
	case k.keyFile != "" && k.usePKCS11():
		errs = append(errs, errors.New("use either --key or the --pkcs11-* flags, not both"))
	case k.usePKCS11():
		if k.module == "" {
			errs = append(errs, errors.New("--pkcs11-module is required with --token"))
		}
		if k.token == "" {
			errs = append(errs, errors.New("--token is required with --pkcs11-module"))
		}
		if k.needsKey && k.label == "" {
			errs = append(errs, errors.New("--label is required with --pkcs11-module"))
		}
	case k.keyFile == "":
		errs = append(errs, errors.New("no key: give --key FILE, or --pkcs11-module, --token and --label"))
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
	return h, nil
}

// open returns the selected key and a function that releases it.
func (k *keyFlags) open() (signer.Key, func(), error) {
	k.needsKey = true
	k.preferExplicit(false)
	if err := k.validate(); err != nil {
		return nil, nil, err
	}
	if !k.usePKCS11() {
		s, err := signer.LoadSoftware(k.keyFile)
		if err != nil {
			return nil, nil, &exitError{code: exitUsage, err: err}
		}
		return s, func() {}, nil
	}
	h, err := k.openHSM()
	if err != nil {
		return nil, nil, err
	}
	key, err := h.Key(k.label)
	if err != nil {
		h.Close()
		return nil, nil, &exitError{code: exitUsage, err: err}
	}
	k.hsm = h
	return key, func() { h.Close() }, nil
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

// ring opens the selected key as a signing ring.
func (k *keyFlags) ring() (*signer.Ring, func(), error) {
	key, release, err := k.open()
	if err != nil {
		return nil, nil, err
	}
	ring, err := signer.NewRing(key)
	if err != nil {
		release()
		return nil, nil, &exitError{code: exitUsage, err: err}
	}
	return ring, release, nil
}
