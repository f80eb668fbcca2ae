package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"golang.org/x/mod/sumdb/note"
	"k8s.io/klog/v2"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/recordauth"
	"github.com/certnode/certnode/signer"
	"github.com/certnode/certnode/sinks/translog"
	"github.com/certnode/certnode/transparency"
)

// tessera logs through klog: its lines go to the default slog logger, as
// it is when each is written. Set once, before any log starts: klog's
// setting is a global its goroutines read.
func init() {
	klog.SetSlogLogger(slog.New(defaultHandler{attrs: []slog.Attr{slog.String("component", "tessera")}}))
}

// defaultHandler hands each record to slog.Default's handler.
type defaultHandler struct{ attrs []slog.Attr }

func (h defaultHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return slog.Default().Handler().Enabled(ctx, l)
}

func (h defaultHandler) Handle(ctx context.Context, r slog.Record) error {
	return slog.Default().Handler().WithAttrs(h.attrs).Handle(ctx, r)
}

func (h defaultHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return defaultHandler{attrs: append(slices.Clone(h.attrs), as...)}
}

func (h defaultHandler) WithGroup(string) slog.Handler { return h } // klog's keys stay flat

// noteSigner signs checkpoints with an Ed25519 key of the HSM (or a
// software key in dev): the C2SP note algorithm every verifier knows.
type noteSigner struct {
	name string
	hash uint32
	key  signer.Key
}

// newNoteSigner names key's checkpoints name (the log's origin) and
// returns the verifier key that checks them.
func newNoteSigner(name string, key signer.Key) (*noteSigner, string, error) {
	pub, ok := key.Public().(ed25519.PublicKey)
	if !ok {
		return nil, "", errors.New("the log's key must be Ed25519 (keys generate --alg EdDSA): its checkpoints are C2SP notes every verifier checks")
	}
	vkey, err := note.NewEd25519VerifierKey(name, pub)
	var v note.Verifier
	if err == nil {
		// The key is made whatever the name; a name with a space or a +
		// gives one no verifier parses, and checkpoints no one can sign.
		v, err = note.NewVerifier(vkey)
	}
	if err != nil {
		return nil, "", fmt.Errorf("the log's origin %q (a host and path, without spaces or +): %w", name, err)
	}
	return &noteSigner{name: name, hash: v.KeyHash(), key: key}, vkey, nil
}

func (s *noteSigner) Name() string    { return s.name }
func (s *noteSigner) KeyHash() uint32 { return s.hash }

// Sign is called once a checkpoint; the interface has no context.
func (s *noteSigner) Sign(msg []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return s.key.Sign(ctx, msg)
}

// noteSigner opens the selected lone key as the log's checkpoint signer
// under origin; the caller calls release.
func (k *keyFlags) noteSigner(origin string) (*noteSigner, string, error) {
	k.needsKey = true
	k.preferExplicit(false)
	if err := k.validate(); err != nil {
		return nil, "", err
	}
	key, err := k.open()
	if err != nil {
		return nil, "", err
	}
	s, vkey, err := newNoteSigner(origin, key)
	if err != nil {
		k.release()
		return nil, "", usageErr("%v", err)
	}
	return s, vkey, nil
}

func newLogCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "log", Short: "The transparency log of receipts: run it, print its key, monitor it"}
	cmd.AddCommand(newLogServeCmd(), newLogKeyCmd(), newLogMonitorCmd())
	return cmd
}

// defaultOrigin names the log in its checkpoints; a deployment names its
// own. The audit log's is defaultAuditOrigin.
const (
	defaultOrigin      = "certnode.local/receipts"
	defaultAuditOrigin = "certnode.local/audit"
)

func newLogServeCmd() *cobra.Command {
	var kf kafkaFlags
	var keys keyFlags
	var addr, origin, kind string
	var tf tlsFlags
	cfg := translog.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Append every signed receipt (or, --kind audit, every audit event) to its log and serve its tiles",
		Long: "Consumes certnode.receipts and appends each signed receipt (a hash of it, never its payload) to an\n" +
			"append-only Merkle log (RFC 6962 hashing; C2SP tlog-tiles written by transparency-dev/tessera in\n" +
			"--dir), with a checkpoint signed every --checkpoint-interval by an Ed25519 key: a lone software key\n" +
			"(--key) or, in production, an HSM key (--pkcs11-module, --token, --label). --http serves the\n" +
			"checkpoint, the tiles (static files: put them behind a CDN), the key (/key) and the receipt index\n" +
			"(/index/ID) that ingest (--log URL) builds proofs from, with /metrics. Run one per --dir.\n" +
			"With --kind audit it keeps the audit log instead: every role's audit events from certnode.audit\n" +
			"(a leaf is the event's hash, its organization's tag and time), which ingest (--audit-log URL)\n" +
			"exports verifiably; give it its own --dir, key and --http (default origin certnode.local/audit), and\n" +
			"the internal secret, which authenticates the events and keys the organizations' tags\n" +
			"($CERTNODE_INTERNAL_SECRET or $CERTNODE_INTERNAL_SECRET_FILE, as ingest's).\n\n" + pinHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Kind = translog.Kind(kind)
			tlsCfg, err := tf.config()
			if err != nil {
				return err
			}
			group := kafka.Group(kf.prefix, kafka.RoleLog)
			if cfg.Kind == translog.Audit {
				mac, err := recordauth.SecretsFromEnv()
				if err != nil {
					return usageErr("--kind audit: %v", err)
				}
				cfg.MAC = mac
				group = kafka.Group(kf.prefix, kafka.RoleAuditLog)
				if !cmd.Flags().Changed("origin") {
					origin = defaultAuditOrigin
				}
				if !cmd.Flags().Changed("http") {
					addr = "127.0.0.1:9107"
				}
			}
			s, vkey, err := keys.noteSigner(origin)
			if err != nil {
				return err
			}
			defer keys.release()
			cfg.Kafka, cfg.Group, cfg.Signer, cfg.VerifierKey = kf.config(), group, s, vkey
			reg := newRegistry()
			cfg.Registerer = reg
			if err := cfg.Validate(); err != nil {
				return usageErr("%v", err)
			}
			if err := ensureTopics(cmd.Context(), cfg.Kafka); err != nil {
				return err
			}
			sink, err := translog.New(cmd.Context(), cfg)
			if err != nil {
				return usageErr("%v", err)
			}
			defer sink.Close()
			mux := metricsMux(reg, func() error { return nil })
			mux.Handle("/", sink.Handler())
			slog.Info("log started", "kind", cfg.Kind, "dir", cfg.Dir, "http", addr, "origin", origin, "verifier_key", vkey)
			return runErr(runParts(cmd.Context(), map[string]func(context.Context) error{"log": sink.Run, "http": serveTLS(addr, mux, tlsCfg)}))
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&cfg.Dir, "dir", "", "the log's directory: tiles, checkpoint and receipt index (required)")
	bindEnv(fs, "dir", "CERTNODE_LOG_DIR")
	fs.StringVar(&kind, "kind", string(translog.Receipts), "what the log holds: receipts (the transparency log) or audit (the audit log)")
	bindEnv(fs, "kind", "CERTNODE_LOG_KIND")
	fs.StringVar(&addr, "http", "127.0.0.1:9106", "address serving the log's files, key, index and /metrics (audit: 127.0.0.1:9107)")
	bindEnv(fs, "http", "CERTNODE_LOG_HTTP")
	fs.StringVar(&origin, "origin", defaultOrigin, "the log's name in its checkpoints (a host and path, like example.com/receipts)")
	bindEnv(fs, "origin", "CERTNODE_LOG_ORIGIN")
	fs.DurationVar(&cfg.CheckpointInterval, "checkpoint-interval", cfg.CheckpointInterval, "how often a grown tree gets a signed checkpoint (at least 100ms)")
	bindEnv(fs, "checkpoint-interval", "CERTNODE_LOG_CHECKPOINT_INTERVAL")
	keys.register(fs, true)
	tf.register(fs)
	kf.register(fs, true)
	return cmd
}

func newLogKeyCmd() *cobra.Command {
	var keys keyFlags
	var origin string
	cmd := &cobra.Command{
		Use:   "key",
		Short: "Print the verifier key of the log's checkpoints (for verify --proof and log monitor)",
		Long: "Prints the C2SP note verifier key of the log's Ed25519 key (--key FILE, or --pkcs11-module,\n" +
			"--token and --label) under --origin: what certnode verify --proof and certnode log monitor take.\n\n" + pinHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, vkey, err := keys.noteSigner(origin)
			if err != nil {
				return err
			}
			defer keys.release()
			fmt.Fprintln(cmd.OutOrStdout(), vkey)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&origin, "origin", defaultOrigin, "the log's name in its checkpoints")
	bindEnv(fs, "origin", "CERTNODE_LOG_ORIGIN")
	keys.register(fs, true)
	return cmd
}

// readVerifierKey takes a verifier key, or the file holding one.
func readVerifierKey(v string) (string, error) {
	if v == "" {
		return "", errors.New("the log's verifier key is required (--log-key KEY or FILE; certnode log key prints it)")
	}
	b, err := os.ReadFile(v)
	if errors.Is(err, os.ErrNotExist) {
		return strings.TrimSpace(v), nil // the key itself
	}
	if err != nil {
		return "", fmt.Errorf("the log's verifier key: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

func newLogMonitorCmd() *cobra.Command {
	var cfg transparency.MonitorConfig
	var vkey string
	cmd := &cobra.Command{
		Use:   "monitor",
		Short: "Follow the log's checkpoints and fail loudly on a fork or a rewound tree",
		Long: "Polls GET /v1/log/checkpoint of --url every --interval, checks each checkpoint's signature with\n" +
			"--log-key (obtained out of band, never from the log watched), and checks each new one extends the\n" +
			"last: a larger tree by a consistency proof (GET /v1/log/consistency), the same size by the same\n" +
			"root. A fork or a smaller tree, both signed by the log's key, exits 1 with both checkpoints\n" +
			"printed; an answer that is no signed checkpoint is logged and asked again. --state keeps the last\n" +
			"one seen across restarts.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if cfg.VerifierKey, err = readVerifierKey(vkey); err != nil {
				return usageErr("%v", err)
			}
			m, err := transparency.NewMonitor(cfg)
			if err != nil {
				return usageErr("%v", err)
			}
			err = m.Run(cmd.Context())
			if errors.Is(err, transparency.ErrFork) || errors.Is(err, transparency.ErrRewound) {
				return &exitError{code: exitInvalid, err: err}
			}
			return err
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&cfg.URL, "url", "http://127.0.0.1:8080", "the API serving /v1/log/...")
	bindEnv(fs, "url", "CERTNODE_URL")
	fs.StringVar(&vkey, "log-key", "", "the log's verifier key, or a file holding it")
	bindEnv(fs, "log-key", "CERTNODE_LOG_KEY")
	fs.StringVar(&cfg.StateFile, "state", "", "file keeping the last checkpoint seen")
	bindEnv(fs, "state", "CERTNODE_LOG_MONITOR_STATE")
	fs.DurationVar(&cfg.Interval, "interval", 2*time.Second, "time between polls")
	bindEnv(fs, "interval", "CERTNODE_LOG_MONITOR_INTERVAL")
	return cmd
}

// devLog is a log of certnode dev, the transparency log (receipts) or the
// audit log: a software Ed25519 key kept in dir (log-key.pem,
// audit-log-key.pem), the log in dir/translog or dir/auditlog, served on a
// loopback port of its own, and the client ingest reads it with.
func devLog(ctx context.Context, kcfg kafka.Config, prefix, dir string, kind translog.Kind, mac *recordauth.Keyring, reg prometheus.Registerer) (*translog.Sink, *transparency.Client, func(context.Context) error, error) {
	keyFile, origin, group, sub := filepath.Join(dir, "log-key.pem"), defaultOrigin, kafka.Group(prefix, kafka.RoleLog), "translog"
	if kind == translog.Audit {
		keyFile, origin, group, sub = filepath.Join(dir, "audit-log-key.pem"), defaultAuditOrigin, kafka.Group(prefix, kafka.RoleAuditLog), "auditlog"
	}
	key, err := signer.LoadSoftware(keyFile)
	if errors.Is(err, os.ErrNotExist) {
		if key, err = signer.GenerateSoftware("EdDSA"); err == nil {
			err = key.WritePEM(keyFile)
		}
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("the log's key: %w", err)
	}
	s, vkey, err := newNoteSigner(origin, key)
	if err != nil {
		return nil, nil, nil, err
	}
	cfg := translog.DefaultConfig()
	cfg.Kind, cfg.Kafka, cfg.Group, cfg.Dir, cfg.Signer, cfg.VerifierKey, cfg.Registerer = kind, kcfg, group, filepath.Join(dir, sub), s, vkey, reg
	if kind == translog.Audit {
		cfg.MAC = mac
	}
	sink, err := translog.New(ctx, cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		sink.Close()
		return nil, nil, nil, err
	}
	c, err := transparency.NewClient("http://"+ln.Addr().String(), vkey, nil)
	if err != nil {
		sink.Close()
		ln.Close()
		return nil, nil, nil, err
	}
	return sink, c, serveOn(ln, sink.Handler()), nil
}
