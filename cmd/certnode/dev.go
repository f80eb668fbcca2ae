package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/certnode/certnode/analytics"
	"github.com/certnode/certnode/console"
	"github.com/certnode/certnode/coordinator"
	"github.com/certnode/certnode/ingest"
	"github.com/certnode/certnode/internal/audit"
	"github.com/certnode/certnode/internal/chconn"
	"github.com/certnode/certnode/internal/envelope"
	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/recordauth"
	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/pipeline"
	"github.com/certnode/certnode/signer"
	chsink "github.com/certnode/certnode/sinks/clickhouse"
	"github.com/certnode/certnode/sinks/detect"
	"github.com/certnode/certnode/sinks/translog"
	usagesink "github.com/certnode/certnode/sinks/usage"
	"github.com/certnode/certnode/sinks/webhook"
	"github.com/certnode/certnode/verifypage"
)

// credentials is what `certnode dev` writes for the developer (mode 0600).
type credentials struct {
	HTTP   string `json:"http"`
	Kafka  string `json:"kafka"`
	Tenant string `json:"tenant"`
	APIKey string `json:"api_key"`
	// ProducerKeyID and ProducerSecret sign records produced straight into
	// Kafka (see README).
	ProducerKeyID  string `json:"producer_key_id"`
	ProducerSecret string `json:"producer_secret"`
	// Coordinator is the embedded coordinator's HTTP address; AdminToken
	// is for its admin API (certnode admin), NodeToken for the state the
	// other tiers copy.
	Coordinator string `json:"coordinator"`
	AdminToken  string `json:"admin_token"`
	NodeToken   string `json:"node_token"`
	// UserEmail and UserPassword sign in to the dashboard (at Dashboard)
	// as an owner of the demo organization.
	Dashboard    string `json:"dashboard,omitempty"`
	UserEmail    string `json:"user_email,omitempty"`
	UserPassword string `json:"user_password,omitempty"`
}

// readCredentials reads a credentials file certnode dev wrote.
func readCredentials(path string) (credentials, error) {
	var c credentials
	data, err := os.ReadFile(path)
	if err == nil {
		err = json.Unmarshal(data, &c, json.RejectUnknownMembers(false))
	}
	if err != nil {
		return c, fmt.Errorf("credentials %s: %w", path, err)
	}
	return c, nil
}

func newDevCmd() *cobra.Command {
	var kf kafkaFlags
	var keys keyFlags
	var addr, dataDir, clickhouse, coordAddr, resolver string
	var df domainFlags
	var tf tlsFlags
	var mf mailFlags
	icfg := ingest.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run every role in one process (embedded Kafka and a software key unless told otherwise)",
		Long: "Runs ingest, a worker, a coordinator node, the usage sink, the webhook dispatcher (which may\n" +
			"deliver to this machine's loopback addresses), the transparency and audit logs (software keys in\n" +
			"DIR), the threat detectors (alerting, blocking nothing) and (when ClickHouse is configured\n" +
			"or found on 127.0.0.1:9000) the ClickHouse sink, with retention, in one process. Kafka is embedded (franz-go's\n" +
			"kfake, persisted in DIR/kafka) unless --kafka names a cluster. Receipts are signed with the key\n" +
			"ring DIR/keyring (made on first start; rotate with certnode keys rotate --keyring DIR/keyring,\n" +
			"picked up live) unless --keyring, --key or --pkcs11-* name other keys. Organizations and keys\n" +
			"live in the embedded coordinator (DIR/coordinator); on first start it gets the demo\n" +
			"organization, whose API key and producer key are written to DIR/credentials.json (mode 0600)\n" +
			"with the coordinator's address and tokens (certnode admin takes the admin token), and its owner\n" +
			"demo@certnode.local, whose password there signs in to the dashboard.\n\n" + pinHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			tlsCfg, err := tf.config()
			if err != nil {
				return err
			}
			var res coordinator.Resolver
			if resolver != "" {
				r, err := dnsResolver(resolver)
				if err != nil {
					return usageErr("%v", err)
				}
				res = r
			}
			icfg.TLS = tlsCfg
			scheme := "http://"
			if tlsCfg != nil {
				scheme = "https://"
			}
			if err := os.MkdirAll(dataDir, 0o700); err != nil {
				return usageErr("--data: %v", err)
			}
			unlock, err := lockDir(dataDir)
			if err != nil {
				return usageErr("%v", err)
			}
			defer unlock()
			kcfg := kf.config()
			if len(kcfg.Brokers) == 0 {
				cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DataDir(filepath.Join(dataDir, "kafka")))
				if err != nil {
					return usageErr("embedded Kafka: %v", err)
				}
				defer cluster.Close()
				kcfg.Brokers = cluster.ListenAddrs()
			}
			if err := ensureTopics(ctx, kcfg); err != nil {
				return err
			}
			icfg.ShutdownTimeout = drainTimeout()
			ring, release, err := devRing(&keys, dataDir)
			if err != nil {
				return err
			}
			defer release()
			creds, mac, err := devSecrets(dataDir)
			if err != nil {
				return usageErr("%v", err)
			}
			// One publisher sends every embedded role's audit events.
			events, err := audit.NewPublisher(kcfg, "dev", mac, nil)
			if err != nil {
				return usageErr("%v", err)
			}
			defer events.Close()
			coord, err := openDevCoordinator(dataDir, coordAddr, mf.publicURL, creds, events, res)
			if err != nil {
				return usageErr("embedded coordinator (--coordinator-http): %v", err)
			}
			defer coord.Close()
			// It serves from now until dev returns (Close ends Run), not as
			// one of the parts: they need it from their start to their stop,
			// and the demo organization is set up through it first.
			coordDone := make(chan error, 1)
			go func() { coordDone <- coord.Run(ctx) }()
			if err := provisionDev(ctx, coord, dataDir, creds, cmd.ErrOrStderr()); err != nil {
				return usageErr("%v", err)
			}
			creds.HTTP, creds.Kafka, creds.Coordinator, creds.Dashboard = scheme+addr, kcfg.Brokers[0], coord.Addr(), scheme+addr+"/dashboard"
			credFile := filepath.Join(dataDir, "credentials.json")
			if err := writeJSONFile(credFile, creds); err != nil {
				return usageErr("%v", err)
			}

			reg := newRegistry()
			keys.registerPoolMetrics(reg)
			replica, err := coordinator.NewReplica(coordinator.ReplicaConfig{Addrs: []string{coord.Addr()}, Token: creds.NodeToken, Registerer: reg})
			if err != nil {
				return usageErr("%v", err)
			}
			parts := map[string]func(context.Context) error{
				"replica": replica.Run,
				"coordinator": func(ctx context.Context) error {
					select {
					case err := <-coordDone: // its API stopped serving
						return err
					case <-ctx.Done():
						return nil
					}
				},
			}
			wcfg := pipeline.DefaultConfig()
			wcfg.Kafka, wcfg.Group, wcfg.Registerer = kcfg, kafka.Group(kf.prefix, kafka.RoleWorker), reg
			// Limits hold as in a cluster: the embedded node lends them, and
			// producers' records share the budget of the HTTP requests.
			limiter, err := coordinator.NewLimiter(replica, coordinator.LimiterConfig{Registerer: reg})
			if err != nil {
				return usageErr("%v", err)
			}
			defer limiter.Close()
			parts["limiter"] = limiter.Run
			wcfg.Limiter, wcfg.Audit = limiter, events
			orgKeys, err := workerOrgKeys(&keys, ring, replica, parts)
			if err != nil {
				return usageErr("%v", err)
			}
			wcfg.OrgKeys, wcfg.API = orgKeys, replica
			wcfg.DrainTimeout = drainTimeout()
			w, err := pipeline.New(wcfg, ring, replica, mac)
			if err != nil {
				return usageErr("%v", err)
			}
			defer w.Close()
			parts["worker"] = afterReady(replica.Ready, w.Run)
			parts["keyring"] = signer.NewRingWatcher(ring, ringPoll).Run
			ucfg := usagesink.DefaultConfig()
			ucfg.Kafka, ucfg.Group, ucfg.Registerer = kcfg, kafka.Group(kf.prefix, kafka.RoleSinkUsage), reg
			us, err := usagesink.New(ucfg)
			if err != nil {
				return usageErr("%v", err)
			}
			defer us.Close()
			parts["usage"] = us.Run
			// Webhooks reach public addresses and this machine (a
			// developer's local receiver).
			dcfg := webhook.DefaultConfig()
			dcfg.Kafka, dcfg.Group, dcfg.Registerer = kcfg, kafka.Group(kf.prefix, kafka.RoleDispatcher), reg
			disp, err := newDispatcher(dcfg, replica, mac, 0, devWebhookAllow)
			if err != nil {
				return usageErr("%v", err)
			}
			defer disp.Close()
			parts["dispatcher"] = afterReady(replica.Ready, disp.Run)
			tlog, tlogClient, serveLog, err := devLog(ctx, kcfg, kf.prefix, dataDir, translog.Receipts, mac, reg)
			if err != nil {
				return usageErr("%v", err)
			}
			defer tlog.Close()
			parts["translog"], parts["translog-http"] = tlog.Run, serveLog
			alog, alogClient, serveAudit, err := devLog(ctx, kcfg, kf.prefix, dataDir, translog.Audit, mac, reg)
			if err != nil {
				return usageErr("%v", err)
			}
			defer alog.Close()
			parts["auditlog"], parts["auditlog-http"] = alog.Run, serveAudit
			// The detectors alert; they block no address here, where every
			// client is this machine.
			dtcfg := detect.DefaultConfig()
			dtcfg.Kafka, dtcfg.Group, dtcfg.Registerer = kcfg, kafka.Group(kf.prefix, kafka.RoleDetect), reg
			detector, err := detect.New(dtcfg, events, nil, mac)
			if err != nil {
				return usageErr("%v", err)
			}
			defer detector.Close()
			parts["detect"] = detector.Run

			var st *stores
			// Payloads and the custom domains' private keys are stored
			// sealed, under software KEKs here: a deployment keeps them in
			// the HSM (--kek-token).
			keks, err := envelope.NewDirKEKs(filepath.Join(dataDir, "keks"))
			if err != nil {
				return usageErr("%v", err)
			}
			env := envelope.New(keks)
			chAddr, chFound := clickhouse, clickhouse != "" && clickhouse != "none"
			if clickhouse == "" {
				chAddr, chFound = "127.0.0.1:9000", reachable("127.0.0.1:9000")
			}
			cho := chconn.Options{Addr: []string{chAddr}}
			if chFound {
				scfg := chsink.DefaultConfig()
				scfg.Kafka, scfg.ClickHouse, scfg.Group, scfg.Registerer, scfg.Sealer = kcfg, cho, kafka.Group(kf.prefix, kafka.RoleSinkClickHouse), reg, env
				sink, err := chsink.New(ctx, scfg)
				if err != nil {
					return usageErr("%v", err)
				}
				defer sink.Close()
				parts["sink"] = sink.Run
				rconn, err := chconn.Open(ctx, cho)
				if err != nil {
					return usageErr("%v", err)
				}
				defer rconn.Close()
				parts["retention"] = chsink.NewRetention(rconn, replica, events, time.Hour, reg).Run
				sealCfg := analytics.DefaultSealerConfig()
				sealCfg.ClickHouse, sealCfg.Registerer = cho, reg
				sealer, err := analytics.NewSealer(ctx, sealCfg)
				if err != nil {
					return usageErr("%v", err)
				}
				defer sealer.Close()
				parts["sealer"] = sealer.Run
				if st, err = openStores(ctx, cho, env); err != nil {
					return usageErr("%v", err)
				}
				defer st.Close()
			} else {
				slog.Warn("ClickHouse is off (none on 127.0.0.1:9000, or --clickhouse none): no analytics sink, and GET /v1/receipts, /v1/usage, /v1/invoices, /v1/webhooks/deliveries, /v1/analytics and /v1/exports answer 503")
			}

			icfg.Addr, icfg.Kafka, icfg.Registerer, icfg.Gatherer = addr, kcfg, reg, reg
			signerCheck := func(ctx context.Context) error {
				_, err := ring.Sign(ctx, []byte(`{"readyz":true}`))
				return err
			}
			dash, err := console.New()
			if err != nil {
				return usageErr("%v", err)
			}
			vpage, err := verifypage.New(verifypage.Config{Brand: replica.Brand, OrgForHost: replica.DomainOrg})
			if err != nil {
				return usageErr("%v", err)
			}
			// Requests on a custom domain are bound to its organization,
			// whoever terminates their TLS.
			deps := ingest.Deps{Auth: replica, Limiter: limiter, Keys: ring, Plans: replica, Domains: replica, API: replica,
				MAC: mac, Accounts: replica.Accounts(), Endpoints: endpointInfos{replica}, Orgs: replica, Reports: replica, Console: dash, VerifyPage: vpage, Brands: replica, Compliance: pdfRenderer{}, Log: tlogClient,
				AuditLog: auditLog{Client: alogClient, mac: mac}, Audit: events, Blocks: blocklist{replica}, SubjectPointers: replica, Ready: []ingest.Check{signerCheck, replica.Ready},
				Live: []ingest.Check{func(context.Context) error { return w.Healthy() }}}
			if df.enabled() {
				m, err := df.open(replica, env, &icfg)
				if err != nil {
					return err
				}
				defer m.Close()
				parts["certificates"] = m.Run
			}
			deps.OrgKeys = orgKeys // the worker's publish them too: one process
			if st != nil {
				st.fill(&deps)
				closeExports, err := openExports(ctx, cho, env, mac, filepath.Join(dataDir, "exports"), "dev", parts, &deps)
				if err != nil {
					return usageErr("%v", err)
				}
				defer closeExports()
			}
			srv, err := ingest.New(ctx, icfg, deps)
			if err != nil {
				return usageErr("%v", err)
			}
			defer srv.Close()
			parts["ingest"] = srv.Run
			if err := devMail(&mf, dataDir, coord.Addr(), creds.NodeToken, kcfg, mac, reg, parts, cmd.ErrOrStderr()); err != nil {
				return err
			}

			fmt.Fprintf(cmd.ErrOrStderr(), "certnode dev: API on %s%s  (Kafka %s, %s kid %s)\n", scheme, srv.Addr(), kcfg.Brokers[0], ring.ActiveAlg(), ring.ActiveKID())
			fmt.Fprintf(cmd.ErrOrStderr(), "certnode dev: demo organization %q; API key in %s\n", creds.Tenant, credFile)
			fmt.Fprintf(cmd.ErrOrStderr(), "certnode dev: dashboard on %s (sign in as %s, user_password in %s)\n", creds.Dashboard, creds.UserEmail, credFile)
			fmt.Fprintf(cmd.ErrOrStderr(), "certnode dev: coordinator on http://%s (data in %s; admin_token in %s)\n",
				coord.Addr(), filepath.Join(dataDir, "coordinator"), credFile)
			return runErr(runParts(ctx, parts))
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&addr, "http", "127.0.0.1:8080", "listen address")
	bindEnv(fs, "http", "CERTNODE_HTTP")
	fs.StringVar(&dataDir, "data", ".certnode", "folder for the key ring, credentials, embedded coordinator and embedded Kafka data")
	bindEnv(fs, "data", "CERTNODE_DATA")
	fs.StringVar(&clickhouse, "clickhouse", "", "ClickHouse native address (default: 127.0.0.1:9000 when reachable; none: off)")
	bindEnv(fs, "clickhouse", "CERTNODE_CLICKHOUSE")
	fs.StringVar(&coordAddr, "coordinator-http", "127.0.0.1:8081", "address of the embedded coordinator's API (certnode admin --coordinator ADDR)")
	bindEnv(fs, "coordinator-http", "CERTNODE_DEV_COORDINATOR_HTTP")
	fs.StringVar(&resolver, "dns-resolver", "", "DNS server (host:port) the embedded coordinator asks for the TXT records proving custom domains and sending domains' DKIM keys (default: the first of /etc/resolv.conf)")
	bindEnv(fs, "dns-resolver", "CERTNODE_DNS_RESOLVER")
	df.register(fs)
	ingestLimitFlags(fs, &icfg)
	tf.register(fs)
	kf.register(fs, false)
	keys.register(fs, true)
	mf.register(fs)
	return cmd
}

// devRing uses the configured keys, or the key ring DIR/keyring (made on
// first start).
func devRing(keys *keyFlags, dir string) (*signer.Ring, func(), error) {
	keys.preferExplicit(false)
	if keys.keyFile == "" && keys.keyring == "" && !keys.usePKCS11() {
		keys.keyring = filepath.Join(dir, "keyring")
		if err := devKeyring(keys.keyring, filepath.Join(dir, "key.pem")); err != nil {
			return nil, nil, usageErr("dev key ring: %v", err)
		}
	}
	return keys.ring()
}

// devSecrets reads DIR/credentials.json, with the tokens of the embedded
// coordinator (made on first start, or when a folder from before it lacks
// them), and the internal secret (DIR/internal.secret).
func devSecrets(dir string) (*credentials, *recordauth.Keyring, error) {
	credFile, secretFile := filepath.Join(dir, "credentials.json"), filepath.Join(dir, "internal.secret")
	creds := credentials{Tenant: "demo"}
	if data, err := os.ReadFile(credFile); err == nil {
		if err := json.Unmarshal(data, &creds, json.RejectUnknownMembers(false)); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", credFile, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, nil, err
	}
	for _, token := range []*string{&creds.AdminToken, &creds.NodeToken} {
		if len(*token) < 16 { // the coordinator's minimum
			t, err := tenants.GenerateKey()
			if err != nil {
				return nil, nil, err
			}
			*token = t
		}
	}
	secret, err := os.ReadFile(secretFile)
	if errors.Is(err, os.ErrNotExist) {
		s, gerr := tenants.GenerateKey()
		if gerr != nil {
			return nil, nil, gerr
		}
		secret, err = []byte(s), os.WriteFile(secretFile, []byte(s), 0o600)
	}
	if err != nil {
		return nil, nil, err
	}
	mac, err := recordauth.NewKeyring(secret)
	return &creds, mac, err
}

func writeJSONFile(path string, v any) error {
	b, err := json.Marshal(v, json.Deterministic(true))
	if err != nil {
		return err
	}
	tmp := path + ".tmp." + strconv.Itoa(os.Getpid())
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func reachable(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
