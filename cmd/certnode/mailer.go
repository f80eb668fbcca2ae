package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/certnode/certnode/coordinator"
	"github.com/certnode/certnode/internal/envsecret"
	"github.com/certnode/certnode/internal/kafka"
	cnmail "github.com/certnode/certnode/internal/mail"
	"github.com/certnode/certnode/internal/recordauth"
	"github.com/certnode/certnode/signer"
)

// mailFlags configure sending: the SMTP relay, the sender, the public
// URL links point under, and where the DKIM keys live. The mailer role
// and certnode dev share them.
type mailFlags struct {
	smtp, user, ca, helo     string
	requireTLS               bool
	from, fromName           string
	publicURL                string
	dkimDir, dkimToken       string
	dkimModule               string
	dkimDomain, dkimSelector string
	backoff                  string
	poll                     time.Duration
}

func (m *mailFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&m.smtp, "smtp", "", "the SMTP relay (host:port, 587 for submission): STARTTLS is required unless it is on this machine; password from $"+cnmail.PasswordEnv+" or its _FILE")
	bindEnv(fs, "smtp", "CERTNODE_SMTP")
	fs.StringVar(&m.user, "smtp-username", "", "the relay's user name (with $"+cnmail.PasswordEnv+")")
	bindEnv(fs, "smtp-username", "CERTNODE_SMTP_USERNAME")
	fs.StringVar(&m.ca, "smtp-ca", "", "the CA certificates (PEM) the relay's certificate is checked against (default: the system's)")
	bindEnv(fs, "smtp-ca", "CERTNODE_SMTP_CA")
	fs.BoolVar(&m.requireTLS, "smtp-require-starttls", false, "require STARTTLS from a relay on this machine too (it always is from one off it)")
	bindEnv(fs, "smtp-require-starttls", "CERTNODE_SMTP_REQUIRE_STARTTLS")
	fs.StringVar(&m.helo, "smtp-helo", "", "the name this client gives the relay (default: the host name)")
	bindEnv(fs, "smtp-helo", "CERTNODE_SMTP_HELO")
	fs.StringVar(&m.from, "mail-from", "no-reply@certnode.localhost", "the service's own sender, for organizations without a verified sending domain")
	bindEnv(fs, "mail-from", "CERTNODE_MAIL_FROM")
	fs.StringVar(&m.fromName, "mail-from-name", "CertNode", "the name shown with --mail-from when an organization has no display name")
	bindEnv(fs, "mail-from-name", "CERTNODE_MAIL_FROM_NAME")
	fs.StringVar(&m.publicURL, "public-url", "http://127.0.0.1:8080", "the service's public base URL: links in email point under it")
	bindEnv(fs, "public-url", "CERTNODE_PUBLIC_URL")
	fs.StringVar(&m.dkimToken, "dkim-token", "", "PKCS#11 token the DKIM keys are made in (never extractable; the PIN as for signing keys)")
	bindEnv(fs, "dkim-token", "CERTNODE_DKIM_TOKEN")
	fs.StringVar(&m.dkimModule, "dkim-pkcs11-module", "", "PKCS#11 module of --dkim-token")
	bindEnv(fs, "dkim-pkcs11-module", "CERTNODE_DKIM_PKCS11_MODULE")
	fs.StringVar(&m.dkimDir, "dkim-dir", "", "folder of software DKIM keys, instead of a token (development)")
	bindEnv(fs, "dkim-dir", "CERTNODE_DKIM_DIR")
	fs.StringVar(&m.dkimDomain, "dkim-domain", "", "sign the service's own mail (--mail-from) for this domain; the mailer logs the DNS record to publish")
	bindEnv(fs, "dkim-domain", "CERTNODE_DKIM_DOMAIN")
	fs.StringVar(&m.dkimSelector, "dkim-selector", "certnode", "the selector of the service's DKIM key")
	bindEnv(fs, "dkim-selector", "CERTNODE_DKIM_SELECTOR")
	fs.StringVar(&m.backoff, "mail-retry-schedule", "", "delays before each retry of a failed send, comma-separated (default 30s,2m,10m,1h,4h,12h); past the last one a message is failed")
	bindEnv(fs, "mail-retry-schedule", "CERTNODE_MAIL_RETRY_SCHEDULE")
	fs.DurationVar(&m.poll, "mail-poll", 2*time.Second, "how often an idle mailer asks the coordinator for mail")
	bindEnv(fs, "mail-poll", "CERTNODE_MAIL_POLL")
}

// smtpPassword reads $CERTNODE_SMTP_PASSWORD or its file, without the
// file's final line break.
func smtpPassword() (string, error) {
	v, _, err := envsecret.Read(cnmail.PasswordEnv)
	return strings.TrimRight(v, "\r\n"), err
}

// keys opens the DKIM key store: a token, a folder, or none (no mail is
// signed and sending domains get no key).
func (m *mailFlags) keys() (cnmail.KeyStore, func(), error) {
	switch {
	case m.dkimDir != "" && (m.dkimToken != "" || m.dkimModule != ""):
		return nil, nil, usageErr("give --dkim-dir or --dkim-token, not both")
	case m.dkimDir != "":
		return cnmail.DirKeys{Dir: m.dkimDir}, func() {}, nil
	case m.dkimToken == "" && m.dkimModule == "":
		return nil, func() {}, nil
	case m.dkimToken == "" || m.dkimModule == "":
		return nil, nil, usageErr("--dkim-token and --dkim-pkcs11-module go together")
	}
	pin, err := signer.PINFromEnv()
	if err != nil {
		return nil, nil, &exitError{code: exitUsage, err: err}
	}
	h, err := signer.OpenHSM(signer.PKCS11Config{Module: m.dkimModule, TokenLabel: m.dkimToken, PIN: pin, Signers: 2})
	if err != nil {
		return nil, nil, &exitError{code: exitUsage, err: errors.Join(errors.New("DKIM keys"), err)}
	}
	return h.DKIMKeys(), func() { h.Close() }, nil
}

// mailer builds the mailer on queue; what it returns closes the key store.
func (m *mailFlags) mailer(queue cnmail.Queue, name string, reg prometheus.Registerer) (*cnmail.Mailer, func(), error) {
	password, err := smtpPassword()
	if err != nil {
		return nil, nil, usageErr("%v", err)
	}
	scfg := cnmail.SMTPConfig{Addr: m.smtp, Username: m.user, Password: password, HELO: m.helo, RequireTLS: m.requireTLS}
	var errs []error
	if m.ca != "" {
		pem, err := os.ReadFile(m.ca)
		scfg.RootCAs = x509.NewCertPool()
		if err != nil || !scfg.RootCAs.AppendCertsFromPEM(pem) {
			errs = append(errs, fmt.Errorf("--smtp-ca %s: no PEM certificates (%v)", m.ca, err))
		}
	}
	backoff := cnmail.DefaultBackoff
	if m.backoff != "" {
		backoff = nil
		for _, p := range strings.Split(m.backoff, ",") {
			d, err := time.ParseDuration(strings.TrimSpace(p))
			if err != nil || d < 0 {
				errs = append(errs, fmt.Errorf("--mail-retry-schedule %q: want durations such as 30s", p))
			}
			backoff = append(backoff, d)
		}
	}
	transport, err := cnmail.NewSMTP(scfg)
	errs = append(errs, err)
	keys, closeKeys, err := m.keys()
	if err != nil {
		return nil, nil, err
	}
	cfg := cnmail.Config{Name: name, Queue: queue, Transport: transport, Keys: keys, Links: cnmail.Links{Base: m.publicURL},
		From: mail.Address{Name: m.fromName, Address: m.from}, Backoff: backoff, Poll: m.poll, Metrics: reg}
	if m.dkimDomain != "" {
		cfg.ServiceDKIM = &cnmail.Sender{Domain: strings.ToLower(m.dkimDomain), Selector: m.dkimSelector}
	}
	if err := errors.Join(append(errs, cfg.Validate())...); err != nil {
		closeKeys()
		return nil, nil, &exitError{code: exitUsage, err: err}
	}
	ml, err := cnmail.NewMailer(cfg)
	if err != nil {
		closeKeys()
		return nil, nil, err
	}
	slog.Info("mail is on", "smtp", scfg, "from", m.from, "public_url", m.publicURL, "dkim_keys", keys != nil)
	return ml, closeKeys, nil
}

// mailerName names this mailer in its claims: the host and the process.
func mailerName() string {
	host, _ := os.Hostname()
	name := strings.ToLower(fmt.Sprintf("%s-%d", host, os.Getpid()))
	name = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '-'
	}, name)
	return strings.TrimLeft(name[:min(len(name), 63)], "-_")
}

func newMailerCmd() *cobra.Command {
	var mf mailFlags
	var cf coordinatorFlags
	var kf kafkaFlags
	var metrics metricsFlags
	cmd := &cobra.Command{
		Use:   "mailer",
		Short: "Send CertNode's branded email over SMTP, DKIM-signed",
		Long: "Runs a mailer: it takes due messages from the coordinator's outbox (invitations, password\n" +
			"resets, event notifications), renders them with the organization's branding, signs them with the\n" +
			"sending domain's DKIM key (made here, in --dkim-token's HSM, and reported to the coordinator by its\n" +
			"public half) and sends them through --smtp with STARTTLS and authentication; each outcome is recorded\n" +
			"in the coordinator (GET /v1/orgs/{org}/email/messages) and a failed send is retried. With --kafka it\n" +
			"also reads certnode.events and mails quota warnings, security alerts, disabled endpoints and\n" +
			"scheduled reports to each organization's notification addresses (or its owners and admins).\n" +
			"Any number of mailers can run: each message is claimed by one.\n\n" +
			"Required: $CERTNODE_NODE_TOKEN (or its _FILE); with --kafka, $CERTNODE_INTERNAL_SECRET (or its _FILE),\n" +
			"which authenticates the events. The SMTP password: $" + cnmail.PasswordEnv + " (or its _FILE).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cf.addrs == "" || mf.smtp == "" {
				return usageErr("--coordinator and --smtp are required")
			}
			token, err := requiredSecret("CERTNODE_NODE_TOKEN")
			if err != nil {
				return usageErr("%v", err)
			}
			tlsCfg, err := coordinatorTLS(cf.ca)
			if err != nil {
				return err
			}
			mc, err := coordinator.NewMailClient(splitList(cf.addrs), tlsCfg, token)
			if err != nil {
				return usageErr("%v", err)
			}
			reg := newRegistry()
			ml, closeKeys, err := mf.mailer(mc, mailerName(), reg)
			if err != nil {
				return err
			}
			defer closeKeys()
			parts := map[string]func(context.Context) error{"mailer": ml.Run}
			if kcfg := kf.config(); len(kcfg.Brokers) > 0 {
				mac, err := recordauth.SecretsFromEnv()
				if err != nil {
					return usageErr("with --kafka: %v", err)
				}
				if err := ensureTopics(cmd.Context(), kcfg); err != nil {
					return err
				}
				ev, err := cnmail.NewEvents(cnmail.EventsConfig{Kafka: kcfg, Group: kafka.Group(kcfg.TopicPrefix, kafka.RoleMailer), MAC: mac, Queue: mc})
				if err != nil {
					return usageErr("%v", err)
				}
				defer ev.Close()
				parts["events"] = ev.Run
			} else {
				slog.Warn("no --kafka: event notifications (quota, security, endpoints, reports) are not mailed; invitations and password resets are")
			}
			if parts["metrics"], err = metrics.server(reg, func() error { return nil }); err != nil {
				return err
			}
			return runErr(runParts(cmd.Context(), parts))
		},
	}
	fs := cmd.Flags()
	cf.register(fs, "", "coordinator HTTP addresses (comma-separated): the outbox and the sending domains live there")
	mf.register(fs)
	metrics.register(fs, "127.0.0.1:9109")
	kf.register(fs, true)
	k := fs.Lookup("kafka")
	k.Usage = strings.Replace(k.Usage, "comma separated", "comma separated, to mail the events of certnode.events (none: only account email)", 1)
	return cmd
}

// splitList splits a comma-separated list, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// devMail runs certnode dev's mailer when --smtp names a relay (DKIM
// keys in DIR/dkim unless a token is given), and says once that email is
// off otherwise.
func devMail(mf *mailFlags, dataDir, coordAddr, nodeToken string, kcfg kafka.Config, mac *recordauth.Keyring,
	reg prometheus.Registerer, parts map[string]func(context.Context) error, out io.Writer) error {
	if mf.smtp == "" {
		fmt.Fprintln(out, "certnode dev: email is off (give --smtp HOST:PORT, e.g. a local mailpit, to send invitations, resets and notifications)")
		return nil
	}
	if mf.dkimDir == "" && mf.dkimToken == "" {
		mf.dkimDir = filepath.Join(dataDir, "dkim")
	}
	mc, err := coordinator.NewMailClient([]string{coordAddr}, nil, nodeToken)
	if err != nil {
		return usageErr("%v", err)
	}
	ml, closeKeys, err := mf.mailer(mc, "dev", reg)
	if err != nil {
		return err
	}
	ev, err := cnmail.NewEvents(cnmail.EventsConfig{Kafka: kcfg, Group: kafka.Group(kcfg.TopicPrefix, kafka.RoleMailer), MAC: mac, Queue: mc})
	if err != nil {
		closeKeys()
		return usageErr("%v", err)
	}
	parts["mailer"] = func(ctx context.Context) error {
		defer closeKeys()
		defer ev.Close()
		return ml.Run(ctx)
	}
	parts["mail-events"] = ev.Run
	fmt.Fprintf(out, "certnode dev: email through %s, links under %s\n", mf.smtp, mf.publicURL)
	return nil
}
