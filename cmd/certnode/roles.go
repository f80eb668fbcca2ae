package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/certnode/certnode/analytics"
	"github.com/certnode/certnode/billing"
	"github.com/certnode/certnode/console"
	"github.com/certnode/certnode/coordinator"
	"github.com/certnode/certnode/deliveries"
	"github.com/certnode/certnode/ingest"
	"github.com/certnode/certnode/internal/audit"
	"github.com/certnode/certnode/internal/chconn"
	"github.com/certnode/certnode/internal/envelope"
	"github.com/certnode/certnode/internal/httpsec"
	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/recordauth"
	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/internal/tlsconf"
	"github.com/certnode/certnode/pipeline"
	"github.com/certnode/certnode/privacy"
	"github.com/certnode/certnode/schemas"
	"github.com/certnode/certnode/signer"
	chsink "github.com/certnode/certnode/sinks/clickhouse"
	usagesink "github.com/certnode/certnode/sinks/usage"
	"github.com/certnode/certnode/transparency"
	"github.com/certnode/certnode/verifypage"
)

// kafkaFlags are shared by every role.
type kafkaFlags struct {
	brokers    string
	partitions int32
	rf         int16
	prefix     string
	tls        bool
	ca         string
	mechanism  string
	user       string
}

func (k *kafkaFlags) register(fs *pflag.FlagSet, required bool) {
	usage := "Kafka bootstrap brokers, comma separated"
	if !required {
		usage += " (default: an embedded broker)"
	}
	fs.StringVar(&k.brokers, "kafka", "", usage)
	bindEnv(fs, "kafka", "CERTNODE_KAFKA")
	fs.Int32Var(&k.partitions, "partitions", 8, "partitions for topics this process creates")
	bindEnv(fs, "partitions", "CERTNODE_KAFKA_PARTITIONS")
	fs.Int16Var(&k.rf, "replication-factor", 1, "replication factor for topics this process creates")
	bindEnv(fs, "replication-factor", "CERTNODE_KAFKA_REPLICATION_FACTOR")
	fs.StringVar(&k.prefix, "topic-prefix", schemas.DefaultTopicPrefix, "topic names PREFIX.requests, PREFIX.receipts, PREFIX.dlq, PREFIX.jobs, PREFIX.usage; consumer groups PREFIX-workers, PREFIX-sink-clickhouse, PREFIX-sink-usage")
	bindEnv(fs, "topic-prefix", "CERTNODE_TOPIC_PREFIX")
	fs.BoolVar(&k.tls, "kafka-tls", false, "connect to the brokers over TLS 1.2+")
	bindEnv(fs, "kafka-tls", "CERTNODE_KAFKA_TLS")
	fs.StringVar(&k.ca, "kafka-ca", "", "the CA certificates (PEM) the brokers' certificates are checked against (default: the system's)")
	bindEnv(fs, "kafka-ca", "CERTNODE_KAFKA_CA")
	fs.StringVar(&k.mechanism, "kafka-sasl-mechanism", "", "authenticate to the brokers: SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN (password from $CERTNODE_KAFKA_SASL_PASSWORD or its _FILE)")
	bindEnv(fs, "kafka-sasl-mechanism", "CERTNODE_KAFKA_SASL_MECHANISM")
	fs.StringVar(&k.user, "kafka-sasl-user", "", "the SASL user: one per role, each granted only its topics by the brokers' ACLs")
	bindEnv(fs, "kafka-sasl-user", "CERTNODE_KAFKA_SASL_USER")
}

func (k *kafkaFlags) config() kafka.Config {
	var brokers []string
	for _, b := range strings.Split(k.brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			brokers = append(brokers, b)
		}
	}
	return kafka.Config{Brokers: brokers, Partitions: k.partitions, ReplicationFactor: k.rf, TopicPrefix: k.prefix,
		TLS: k.tls || k.ca != "", CAFile: k.ca, SASLMechanism: k.mechanism, SASLUser: k.user}
}

// clickhouseFlags are the ClickHouse connection of the roles that use it.
type clickhouseFlags struct {
	addr, user, ca string
	tls            bool
}

// register adds --clickhouse (default def, for what usage says) and the
// flags of its connection.
func (c *clickhouseFlags) register(fs *pflag.FlagSet, def, usage string) {
	fs.StringVar(&c.addr, "clickhouse", def, usage+" (password from $"+chconn.PasswordEnv+" or $"+chconn.PasswordEnv+"_FILE)")
	bindEnv(fs, "clickhouse", "CERTNODE_CLICKHOUSE")
	fs.StringVar(&c.user, "clickhouse-user", "default", "the ClickHouse user")
	bindEnv(fs, "clickhouse-user", "CERTNODE_CLICKHOUSE_USER")
	fs.BoolVar(&c.tls, "clickhouse-tls", false, "connect to ClickHouse over TLS 1.2+ (its secure native port, tcp_port_secure)")
	bindEnv(fs, "clickhouse-tls", "CERTNODE_CLICKHOUSE_TLS")
	fs.StringVar(&c.ca, "clickhouse-ca", "", "the CA certificates (PEM) ClickHouse's certificate is checked against (default: the system's); implies --clickhouse-tls")
	bindEnv(fs, "clickhouse-ca", "CERTNODE_CLICKHOUSE_CA")
}

// options are the connection settings, the password read from the
// environment.
func (c *clickhouseFlags) options() (chconn.Options, error) {
	password, err := chconn.PasswordFromEnv()
	if err != nil {
		return chconn.Options{}, usageErr("%v", err)
	}
	o := chconn.Options{Addr: []string{c.addr}, User: c.user, Password: password, TLS: c.tls || c.ca != "", CAFile: c.ca}
	if err := o.Validate(); err != nil {
		return chconn.Options{}, usageErr("%v", err)
	}
	return o, nil
}

// newRegistry is the process's metrics registry, with Go and process metrics.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// metricsFlags name the listener of a role without an HTTP API, and its
// certificate.
type metricsFlags struct {
	addr string
	tls  tlsFlags
}

func (m *metricsFlags) register(fs *pflag.FlagSet, def string) {
	fs.StringVar(&m.addr, "metrics", def, "address for /metrics, /healthz and /readyz (HTTPS with --tls-cert)")
	bindEnv(fs, "metrics", "CERTNODE_METRICS")
	m.tls.register(fs)
}

// server serves /metrics, /healthz (503 while health fails) and /readyz
// (503 while health or a ready check fails).
func (m *metricsFlags) server(g prometheus.Gatherer, health func() error, ready ...func(context.Context) error) (func(context.Context) error, error) {
	cfg, err := m.tls.config()
	if err != nil {
		return nil, err
	}
	return serveTLS(m.addr, metricsMux(g, health, ready...), cfg), nil
}

// metricsMux serves /metrics, /healthz and /readyz.
func metricsMux(g prometheus.Gatherer, health func() error, ready ...func(context.Context) error) *http.ServeMux {
	answer := func(w http.ResponseWriter, errs ...error) {
		var problems []string
		for _, err := range errs {
			if err != nil {
				problems = append(problems, err.Error())
			}
		}
		w.Header().Set("Content-Type", "application/json")
		if len(problems) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			json.MarshalWrite(w, map[string]any{"status": "unavailable", "problems": problems})
			return
		}
		w.Write([]byte(`{"status":"ok"}` + "\n"))
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { answer(w, health()) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		errs := []error{health()}
		for _, check := range ready {
			errs = append(errs, check(r.Context()))
		}
		answer(w, errs...)
	})
	return mux
}

// serveTLS serves h on addr over TLS with cfg (nil: plain HTTP) until ctx
// ends.
func serveTLS(addr string, h http.Handler, cfg *tls.Config) func(context.Context) error {
	return func(ctx context.Context) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		if cfg != nil {
			ln = tls.NewListener(ln, cfg)
		}
		return serveOn(ln, h)(ctx)
	}
}

// tlsFlags name a listener's certificate files.
type tlsFlags struct{ files tlsconf.Files }

func (f *tlsFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.files.Cert, "tls-cert", "", "serve HTTPS (TLS 1.2+) with this PEM certificate chain, read again when it changes")
	bindEnv(fs, "tls-cert", "CERTNODE_TLS_CERT")
	fs.StringVar(&f.files.Key, "tls-key", "", "the private key of --tls-cert (PEM)")
	bindEnv(fs, "tls-key", "CERTNODE_TLS_KEY")
}

// config is the listener's TLS configuration (nil: none named).
func (f *tlsFlags) config() (*tls.Config, error) {
	cfg, err := f.files.Server()
	if err != nil {
		return nil, usageErr("%v", err)
	}
	return cfg, nil
}

// serveOn serves h on ln until ctx ends.
func serveOn(ln net.Listener, h http.Handler) func(context.Context) error {
	return func(ctx context.Context) error {
		srv := &http.Server{Handler: httpsec.Handler(h), ReadHeaderTimeout: 5 * time.Second}
		go func() { <-ctx.Done(); srv.Shutdown(context.WithoutCancel(ctx)) }()
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}
}

// ensureTopics creates the topics with the configured partitions, if no
// other process did yet. Every role calls it before it starts.
func ensureTopics(ctx context.Context, kcfg kafka.Config) error {
	cl, err := kafka.NewClient(kcfg)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := kafka.EnsureTopics(ctx, cl, kcfg); err != nil {
		return &exitError{code: exitUsage, err: err}
	}
	return nil
}

// loadTenants reads the --tenants file, which every role that
// authenticates needs until the coordinator serves tenants.
func loadTenants(path string) (*tenants.FileStore, error) {
	if path == "" {
		return nil, errors.New("--tenants FILE is required (JSON: {\"tenants\":[{\"id\":...,\"api_key_hashes\":[\"sha256:...\"]}]})")
	}
	s, err := tenants.LoadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--tenants: %w", err)
	}
	return s, nil
}

func newIngestCmd() *cobra.Command {
	var kf kafkaFlags
	var addr, tenantsFile, keyringDir, exportsDir, logURL, logKey, auditURL, auditKey string
	var cf coordinatorFlags
	var tf tlsFlags
	var chf clickhouseFlags
	var kek kekFlags
	var df domainFlags
	maxStale := coordinator.DefaultMaxStale
	cfg := ingest.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "ingest",
		Short: "Run the HTTP API tier (produces to Kafka, reads results back)",
		Long: "Runs the HTTP API: produces requests to Kafka and reads the workers' results back. It serves\n" +
			"the key ring's public keys (--keyring DIR, only ring.json is read) at /.well-known/jwks.json.\n" +
			"API keys come from a tenants file (--tenants), whose rate limits hold per process, or from the\n" +
			"coordinator cluster (--coordinator ADDR,...), whose state ingest copies and follows. Then limits\n" +
			"hold across the cluster: each ingest node admits the share of an organization's rate the\n" +
			"coordinator lends it, renewed twice a second; only an organization's first request after an\n" +
			"idle second on this node waits for that, one round trip.\n\n" +
			internalSecretHelp + "\nWith --coordinator: $CERTNODE_NODE_TOKEN (or $CERTNODE_NODE_TOKEN_FILE), the coordinator's node token.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var errs []error
			cfg.Addr, cfg.Kafka, cfg.ShutdownTimeout = addr, kf.config(), drainTimeout()
			if err := cfg.Validate(); err != nil {
				errs = append(errs, err)
			}
			var err error
			if cfg.TLS, err = tf.config(); err != nil {
				errs = append(errs, err)
			}
			reg := newRegistry()
			parts := map[string]func(context.Context) error{}
			var ready []ingest.Check
			var auth ingest.Authenticator
			var accounts http.Handler
			var plans ingest.PlanSource
			var limiter ingest.Limiter
			var endpoints ingest.EndpointSource
			var orgs ingest.OrgLimits
			var reports ingest.ReportSource
			var blocks ingest.Blocklist
			var pointers ingest.SubjectPointers
			var replica *coordinator.Replica
			switch {
			case cf.addrs != "" && tenantsFile != "":
				errs = append(errs, errors.New("use either --tenants or --coordinator, not both"))
			case cf.addrs != "":
				r, l, err := followCoordinator(cf, maxStale, reg, parts)
				if err != nil {
					errs = append(errs, err)
					break
				}
				defer l.Close()
				auth, plans, limiter, ready, accounts, replica = r, r, l, append(ready, r.Ready), r.Accounts(), r
				endpoints, orgs, reports, blocks, pointers = endpointInfos{r}, r, r, blocklist{r}, r
				parts["coordinator"] = r.Run
			default:
				store, err := loadTenants(tenantsFile)
				if err != nil {
					errs = append(errs, fmt.Errorf("%w (or --coordinator ADDR)", err))
					break
				}
				// A tenants file's limits hold per process.
				auth, plans, limiter = store, tenants.UnmeteredPlans{}, tenants.NewLocalLimiter(store.Limits)
			}
			keys, err := publishedKeys(keyringDir)
			if err != nil {
				errs = append(errs, err)
			}
			mac, err := recordauth.SecretsFromEnv()
			if err != nil {
				errs = append(errs, err)
			}
			if err := errors.Join(errs...); err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			cfg.Registerer, cfg.Gatherer = reg, reg
			deps := ingest.Deps{Auth: auth, Limiter: limiter, Keys: keys, Plans: plans, MAC: mac, Ready: ready, Accounts: accounts, Endpoints: endpoints, Orgs: orgs, Reports: reports, Compliance: pdfRenderer{}, Blocks: blocks, SubjectPointers: pointers}
			if replica != nil {
				// Requests on a custom domain are bound to its organization,
				// whoever terminates their TLS.
				deps.Domains, deps.API = replica, replica
			}
			if replica != nil {
				if deps.OrgKeys, err = publishedOrgKeys(keys, replica); err != nil {
					return &exitError{code: exitUsage, err: err}
				}
			}
			vcfg := verifypage.Config{}
			if orgs != nil { // the dashboard signs in with the coordinator's users
				if deps.Console, err = console.New(); err != nil {
					return &exitError{code: exitUsage, err: err}
				}
				deps.Brands, vcfg.Brand, vcfg.OrgForHost = replica, replica.Brand, replica.DomainOrg
			}
			if deps.VerifyPage, err = verifypage.New(vcfg); err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			if logURL != "" {
				if logKey != "" {
					if logKey, err = readVerifierKey(logKey); err != nil {
						return usageErr("%v", err)
					}
				}
				if deps.Log, err = transparency.NewClient(logURL, logKey, nil); err != nil {
					return usageErr("%v", err)
				}
			}
			if auditURL != "" {
				if auditKey != "" {
					if auditKey, err = readVerifierKey(auditKey); err != nil {
						return usageErr("%v", err)
					}
				}
				c, err := transparency.NewClient(auditURL, auditKey, nil)
				if err != nil {
					return usageErr("--audit-log: %v", err)
				}
				deps.AuditLog = auditLog{Client: c, mac: mac}
			}
			events, err := audit.NewPublisher(cfg.Kafka, "ingest", mac, reg)
			if err != nil {
				return usageErr("%v", err)
			}
			defer events.Close()
			deps.Audit = events
			var env *envelope.Envelope
			if chf.addr != "" || df.enabled() {
				var closeKEKs func()
				if env, closeKEKs, err = kek.open(); err != nil {
					return err
				}
				defer closeKEKs()
			}
			if df.enabled() {
				m, err := df.open(replica, env, &cfg)
				if err != nil {
					return err
				}
				defer m.Close()
				parts["certificates"] = m.Run
			}
			if chf.addr != "" {
				cho, err := chf.options()
				if err != nil {
					return err
				}
				st, err := openStores(cmd.Context(), cho, env)
				if err != nil {
					return &exitError{code: exitUsage, err: err}
				}
				defer st.Close()
				st.fill(&deps)
				host, _ := os.Hostname()
				closeExports, err := openExports(cmd.Context(), cho, env, mac, exportsDir, host+"/"+addr, parts, &deps)
				if err != nil {
					return &exitError{code: exitUsage, err: err}
				}
				defer closeExports()
			}
			if err := ensureTopics(cmd.Context(), cfg.Kafka); err != nil {
				return err
			}
			srv, err := ingest.New(cmd.Context(), cfg, deps)
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			defer srv.Close()
			slog.Info("ingest listening", "addr", srv.Addr(), "custom_domains", srv.DomainsAddr())
			parts["ingest"], parts["keyring"] = srv.Run, signer.NewRingWatcher(keys, ringPoll).Run
			return runErr(runParts(cmd.Context(), parts))
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&addr, "http", "127.0.0.1:8080", "listen address")
	bindEnv(fs, "http", "CERTNODE_HTTP")
	fs.StringVar(&tenantsFile, "tenants", "", "tenants file (JSON with hashed API keys)")
	bindEnv(fs, "tenants", "CERTNODE_TENANTS_FILE")
	fs.StringVar(&keyringDir, "keyring", "", "the workers' key ring directory: its ring.json is published as the JWKS and reloaded when it changes")
	bindEnv(fs, "keyring", "CERTNODE_KEYRING")
	chf.register(fs, "", "ClickHouse native address for GET /v1/receipts, /v1/usage, /v1/invoices, /v1/webhooks/deliveries, /v1/analytics and /v1/exports")
	kek.register(fs)
	df.register(fs)
	fs.StringVar(&logURL, "log", "", "the transparency log's address (certnode log serve --http), for /v1/log/... and /v1/receipts/{id}/proof")
	bindEnv(fs, "log", "CERTNODE_LOG_URL")
	fs.StringVar(&logKey, "log-key", "", "the log's verifier key, or a file holding it (default: the one the log serves)")
	bindEnv(fs, "log-key", "CERTNODE_LOG_KEY")
	fs.StringVar(&auditURL, "audit-log", "", "the audit log's address (certnode log serve --kind audit --http), for /v1/audit/...")
	bindEnv(fs, "audit-log", "CERTNODE_AUDIT_LOG_URL")
	fs.StringVar(&auditKey, "audit-log-key", "", "the audit log's verifier key, or a file holding it (default: the one the log serves)")
	bindEnv(fs, "audit-log-key", "CERTNODE_AUDIT_LOG_KEY")
	fs.StringVar(&exportsDir, "exports-dir", "", "folder for the files of background exports (POST /v1/export-jobs; with --clickhouse); share it between ingest nodes so that any serves any link")
	bindEnv(fs, "exports-dir", "CERTNODE_EXPORTS_DIR")
	cf.register(fs, "", "coordinator HTTP addresses (comma-separated) to take organizations and API keys from, instead of --tenants")
	fs.DurationVar(&maxStale, "coordinator-max-stale", maxStale, "how long to keep serving known keys while the coordinator is unreachable; then every key is refused")
	bindEnv(fs, "coordinator-max-stale", "CERTNODE_COORDINATOR_MAX_STALE")
	ingestLimitFlags(fs, &cfg)
	tf.register(fs)
	kf.register(fs, true)
	return cmd
}

// ingestLimitFlags exposes the ingest limits and waits.
func ingestLimitFlags(fs *pflag.FlagSet, cfg *ingest.Config) {
	fs.IntVar(&cfg.MaxBodyBytes, "max-body-bytes", cfg.MaxBodyBytes, "largest /v1/sign or /v1/verify body")
	bindEnv(fs, "max-body-bytes", "CERTNODE_MAX_BODY_BYTES")
	fs.IntVar(&cfg.MaxLineBytes, "max-line-bytes", cfg.MaxLineBytes, "largest line of a bulk job")
	bindEnv(fs, "max-line-bytes", "CERTNODE_MAX_LINE_BYTES")
	fs.Int64Var(&cfg.MaxJobLines, "max-job-lines", cfg.MaxJobLines, "most lines in one bulk job")
	bindEnv(fs, "max-job-lines", "CERTNODE_MAX_JOB_LINES")
	fs.DurationVar(&cfg.SignWait, "sign-wait", cfg.SignWait, "how long /v1/sign and /v1/verify wait before 504 with a job id")
	bindEnv(fs, "sign-wait", "CERTNODE_SIGN_WAIT")
	fs.DurationVar(&cfg.ProduceTimeout, "produce-timeout", cfg.ProduceTimeout, "how long to wait for Kafka's acknowledgement before 503")
	bindEnv(fs, "produce-timeout", "CERTNODE_PRODUCE_TIMEOUT")
	fs.DurationVar(&cfg.UploadTimeout, "upload-timeout", cfg.UploadTimeout, "longest bulk upload; a job still uploading after it is abandoned")
	bindEnv(fs, "upload-timeout", "CERTNODE_UPLOAD_TIMEOUT")
	fs.DurationVar(&cfg.JobRetention, "job-retention", cfg.JobRetention, "how long finished jobs stay answerable")
	bindEnv(fs, "job-retention", "CERTNODE_JOB_RETENTION")
}

func newWorkerCmd() *cobra.Command {
	var kf kafkaFlags
	var keys keyFlags
	var tenantsFile string
	var cf coordinatorFlags
	var mf metricsFlags
	var concurrency int
	maxStale := coordinator.DefaultMaxStale
	maxHeld := pipeline.DefaultConfig().MaxHeldBytes
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run a pipeline worker (consumes requests, signs or verifies, produces results)",
		Long: "Runs a pipeline worker: consumes requests, signs with the active key of --keyring DIR (or a\n" +
			"lone --key or HSM key) and verifies against every key of the ring; a rotated ring.json is\n" +
			"picked up within seconds. The producer keys that sign records written straight into Kafka\n" +
			"come from a tenants file (--tenants) or from the coordinator cluster (--coordinator ADDR,...),\n" +
			"whose state the worker copies and follows; it consumes nothing until it has that state.\n" +
			"Those records are held to their organization's rate, burst and monthly allowance (with\n" +
			"--coordinator, across the cluster and together with its HTTP requests; with --tenants, per\n" +
			"process): over the rate they wait, never dropped, while other tenants on the partition go on.\n" +
			"With --coordinator, organizations with signing keys of their own have their requests signed\n" +
			"with their active key; the worker makes the keys the coordinator asks for, in the HSM\n" +
			"(--pkcs11-module, --token) or else as files beside ring.json.\n\n" +
			internalSecretHelp + "\nWith --coordinator: $CERTNODE_NODE_TOKEN (or $CERTNODE_NODE_TOKEN_FILE), the coordinator's node token.\n" + pinHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var errs []error
			cfg := pipeline.DefaultConfig()
			cfg.Kafka, cfg.Group = kf.config(), kafka.Group(kf.prefix, kafka.RoleWorker)
			cfg.DrainTimeout = drainTimeout()
			if concurrency > 0 {
				cfg.Concurrency = concurrency
			}
			cfg.MaxHeldBytes = maxHeld
			if err := cfg.Validate(); err != nil {
				errs = append(errs, err)
			}
			reg := newRegistry()
			var producers pipeline.ProducerKeys
			var limiter pipeline.Limiter
			var replica *coordinator.Replica
			parts := map[string]func(context.Context) error{}
			switch {
			case cf.addrs != "" && tenantsFile != "":
				errs = append(errs, errors.New("use either --tenants or --coordinator, not both"))
			case cf.addrs != "":
				// Producers' records draw on the same cluster-wide
				// shares as the organization's HTTP requests.
				r, l, err := followCoordinator(cf, maxStale, reg, parts)
				if err != nil {
					errs = append(errs, err)
					break
				}
				defer l.Close()
				producers, replica, limiter = r, r, l
			default:
				store, err := loadTenants(tenantsFile)
				if err != nil {
					errs = append(errs, fmt.Errorf("%w (or --coordinator ADDR)", err))
					break
				}
				// A tenants file's limits hold per process.
				producers, limiter = store, tenants.NewLocalLimiter(store.Limits)
			}
			mac, err := recordauth.SecretsFromEnv()
			if err != nil {
				errs = append(errs, err)
			}
			if err := errors.Join(errs...); err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			ring, release, err := keys.ring()
			if err != nil {
				return err
			}
			defer release()
			if err := ensureTopics(cmd.Context(), cfg.Kafka); err != nil {
				return err
			}
			events, err := audit.NewPublisher(cfg.Kafka, "worker", mac, reg)
			if err != nil {
				return usageErr("%v", err)
			}
			defer events.Close()
			cfg.Registerer, cfg.Limiter, cfg.Audit = reg, limiter, events
			if replica != nil {
				cfg.API = replica
				if cfg.OrgKeys, err = workerOrgKeys(&keys, ring, replica, parts); err != nil {
					return &exitError{code: exitUsage, err: err}
				}
			}
			keys.registerPoolMetrics(reg)
			w, err := pipeline.New(cfg, ring, producers, mac)
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			defer w.Close()
			slog.Info("worker started", "kid", ring.ActiveKID(), "alg", ring.ActiveAlg(), "concurrency", cfg.Concurrency)
			parts["worker"], parts["keyring"] = w.Run, signer.NewRingWatcher(ring, ringPoll).Run
			var ready []func(context.Context) error
			if replica != nil {
				parts["worker"], parts["coordinator"], ready = afterReady(replica.Ready, w.Run), replica.Run, append(ready, replica.Ready)
			}
			if parts["metrics"], err = mf.server(reg, w.Healthy, ready...); err != nil {
				return err
			}
			return runErr(runParts(cmd.Context(), parts))
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&tenantsFile, "tenants", "", "tenants file (JSON with hashed API keys)")
	bindEnv(fs, "tenants", "CERTNODE_TENANTS_FILE")
	cf.register(fs, "", "coordinator HTTP addresses (comma-separated) to take producer keys from, instead of --tenants")
	fs.DurationVar(&maxStale, "coordinator-max-stale", maxStale, "how long to keep using known producer keys while the coordinator is unreachable; then every producer record is refused")
	bindEnv(fs, "coordinator-max-stale", "CERTNODE_COORDINATOR_MAX_STALE")
	fs.IntVar(&concurrency, "concurrency", 0, "requests processed at once (default 2 x cores)")
	bindEnv(fs, "concurrency", "CERTNODE_WORKER_CONCURRENCY")
	fs.IntVar(&maxHeld, "max-held-bytes", maxHeld, "bytes of records held for quota per partition before its fetching pauses")
	bindEnv(fs, "max-held-bytes", "CERTNODE_WORKER_MAX_HELD_BYTES")
	mf.register(fs, "127.0.0.1:9101")
	kf.register(fs, true)
	keys.register(fs, true)
	return cmd
}

// afterReady runs run once ready passes: a worker judges no record before
// it holds the producer keys, lest it refuse a valid one.
func afterReady(ready func(context.Context) error, run func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error {
		for ready(ctx) != nil {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(50 * time.Millisecond):
			}
		}
		return run(ctx)
	}
}

func newSinkCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "sink", Short: "Run a sink"}
	var kf kafkaFlags
	var chf clickhouseFlags
	var cf coordinatorFlags
	var mf metricsFlags
	var kek kekFlags
	seal := true
	retentionEvery := time.Hour
	cfg := chsink.DefaultConfig()
	ch := &cobra.Command{
		Use:   "clickhouse",
		Short: "Write every result into ClickHouse (batched, idempotent)",
		Long: "Writes results, usage events, webhook attempts and audit events into ClickHouse. With --coordinator\n" +
			"it also erases, every --retention-every, each organization's rows older than its retention\n" +
			"(the organization's retention_days setting), recording each erasure in the audit log.\n\n" +
			"With --coordinator: $CERTNODE_NODE_TOKEN and the internal secret ($CERTNODE_INTERNAL_SECRET).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if cfg.ClickHouse, err = chf.options(); err != nil {
				return err
			}
			cfg.Kafka, cfg.Group = kf.config(), kafka.Group(kf.prefix, kafka.RoleSinkClickHouse)
			env, closeKEKs, err := kek.open()
			if err != nil {
				return err
			}
			defer closeKEKs()
			cfg.Sealer = env
			if err := cfg.Validate(); err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			if err := ensureTopics(cmd.Context(), cfg.Kafka); err != nil {
				return err
			}
			reg := newRegistry()
			cfg.Registerer = reg
			s, err := chsink.New(cmd.Context(), cfg)
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			defer s.Close()
			parts := map[string]func(context.Context) error{"sink": s.Run}
			if parts["metrics"], err = mf.server(reg, func() error { return nil }); err != nil {
				return err
			}
			if seal {
				scfg := analytics.DefaultSealerConfig()
				scfg.ClickHouse, scfg.Registerer = cfg.ClickHouse, reg
				sealer, err := analytics.NewSealer(cmd.Context(), scfg)
				if err != nil {
					return &exitError{code: exitUsage, err: err}
				}
				defer sealer.Close()
				parts["sealer"] = sealer.Run
			}
			if cf.addrs != "" {
				retention, closeAll, err := openRetention(cmd.Context(), cfg, cf, retentionEvery, reg, parts)
				if err != nil {
					return &exitError{code: exitUsage, err: err}
				}
				defer closeAll()
				parts["retention"] = retention.Run
			}
			slog.Info("clickhouse sink started", "clickhouse", cfg.ClickHouse, "sealer", seal, "retention", cf.addrs != "")
			return runErr(runParts(cmd.Context(), parts))
		},
	}
	fs := ch.Flags()
	chf.register(fs, "127.0.0.1:9000", "ClickHouse native address")
	kek.register(fs)
	mf.register(fs, "127.0.0.1:9102")
	fs.IntVar(&cfg.BatchRows, "batch-rows", cfg.BatchRows, "rows per insert at most")
	bindEnv(fs, "batch-rows", "CERTNODE_SINK_BATCH_ROWS")
	fs.DurationVar(&cfg.BatchWait, "batch-wait", cfg.BatchWait, "longest wait before a partial batch is inserted")
	bindEnv(fs, "batch-wait", "CERTNODE_SINK_BATCH_WAIT")
	fs.BoolVar(&seal, "seal", seal, "also seal the analytics rollups' hours (any number of sinks may; queries stay exact without, only slower)")
	bindEnv(fs, "seal", "CERTNODE_SINK_SEAL")
	cf.register(fs, "", "coordinator HTTP addresses (comma-separated), whose organizations' retention settings this sink enforces")
	fs.DurationVar(&retentionEvery, "retention-every", retentionEvery, "how often retention runs")
	bindEnv(fs, "retention-every", "CERTNODE_RETENTION_EVERY")
	kf.register(fs, true)
	cmd.AddCommand(ch, newUsageSinkCmd())
	return cmd
}

// openRetention follows the coordinator's organizations (parts gets the
// copy's loop) and returns their retention, erasing through its own
// ClickHouse connection and recording erasures in the audit log.
func openRetention(ctx context.Context, cfg chsink.Config, cf coordinatorFlags, every time.Duration, reg prometheus.Registerer,
	parts map[string]func(context.Context) error) (*chsink.Retention, func(), error) {
	if every < time.Minute {
		return nil, nil, errors.New("--retention-every: at least a minute")
	}
	mac, err := recordauth.SecretsFromEnv()
	if err != nil {
		return nil, nil, err
	}
	replica, err := coordinatorReplica(cf, coordinator.DefaultMaxStale, nil)
	if err != nil {
		return nil, nil, err
	}
	conn, err := chconn.Open(ctx, cfg.ClickHouse)
	if err != nil {
		return nil, nil, err
	}
	events, err := audit.NewPublisher(cfg.Kafka, "retention", mac, reg)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	parts["coordinator"] = replica.Run
	r := chsink.NewRetention(conn, replica, events, every, reg)
	return r, func() { events.Close(); conn.Close() }, nil
}

func newUsageSinkCmd() *cobra.Command {
	var kf kafkaFlags
	var mf metricsFlags
	cfg := usagesink.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "usage",
		Short: "Publish a usage event (CloudEvents, as OpenMeter ingests them) for every authenticated result",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Kafka, cfg.Group = kf.config(), kafka.Group(kf.prefix, kafka.RoleSinkUsage)
			if err := cfg.Validate(); err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			if err := ensureTopics(cmd.Context(), cfg.Kafka); err != nil {
				return err
			}
			reg := newRegistry()
			cfg.Registerer = reg
			s, err := usagesink.New(cfg)
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			defer s.Close()
			metrics, err := mf.server(reg, func() error { return nil })
			if err != nil {
				return err
			}
			slog.Info("usage sink started", "source", cfg.Source)
			return runErr(runParts(cmd.Context(), map[string]func(context.Context) error{"sink": s.Run, "metrics": metrics}))
		},
	}
	fs := cmd.Flags()
	mf.register(fs, "127.0.0.1:9103")
	fs.StringVar(&cfg.Source, "source", cfg.Source, "base of the events' source: SOURCE/orgs/ORG")
	bindEnv(fs, "source", "CERTNODE_USAGE_SOURCE")
	fs.IntVar(&cfg.BatchRecords, "batch-records", cfg.BatchRecords, "results handled at once at most")
	bindEnv(fs, "batch-records", "CERTNODE_USAGE_BATCH_RECORDS")
	kf.register(fs, true)
	return cmd
}

// stores are the ClickHouse readers of ingest: stored receipts, usage and
// invoices, webhook deliveries, and analytics.
type stores struct {
	receipts   *ingest.ClickHouseStore
	usage      *billing.Reader
	deliveries *deliveries.Reader
	analytics  *analytics.Reader
	privacy    *privacy.Store
}

// fill makes the stores d's readers.
func (s *stores) fill(d *ingest.Deps) {
	d.Store, d.Usage, d.Deliveries, d.Analytics, d.Privacy = s.receipts, s.usage, s.deliveries, s.analytics, s.privacy
}

func openStores(ctx context.Context, o chconn.Options, env *envelope.Envelope) (*stores, error) {
	var s stores
	var err error
	if s.receipts, err = ingest.OpenClickHouseStore(ctx, o, env); err != nil {
		return nil, err
	}
	if s.usage, err = billing.Open(ctx, o); err != nil {
		s.receipts.Close()
		return nil, err
	}
	if s.deliveries, err = deliveries.Open(ctx, o, env); err != nil {
		s.receipts.Close()
		s.usage.Close()
		return nil, err
	}
	if s.analytics, err = analytics.Open(ctx, o); err != nil {
		s.Close()
		return nil, err
	}
	if s.privacy, err = privacy.Open(ctx, o, env); err != nil {
		s.Close()
		return nil, err
	}
	return &s, nil
}

// Close closes the stores opened.
func (s *stores) Close() {
	s.receipts.Close()
	s.usage.Close()
	s.deliveries.Close()
	if s.analytics != nil {
		s.analytics.Close()
	}
	if s.privacy != nil {
		s.privacy.Close()
	}
}

// runErr turns a role's failure into exit status 1 with its message.
func runErr(err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code: exitInvalid, err: err}
}
