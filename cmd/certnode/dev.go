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

	"github.com/certnode/certnode/ingest"
	"github.com/certnode/certnode/internal/recordauth"
	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/pipeline"
	"github.com/certnode/certnode/signer"
	chsink "github.com/certnode/certnode/sinks/clickhouse"
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
	// AdminToken is for the coordinator's admin API, which arrives with the
	// coordinator; it is generated now so the file's shape is stable.
	AdminToken string `json:"admin_token"`
}

func newDevCmd() *cobra.Command {
	var kf kafkaFlags
	var keys keyFlags
	var addr, dataDir, clickhouse string
	icfg := ingest.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run every role in one process (embedded Kafka and a software key unless told otherwise)",
		Long: "Runs ingest, a worker and (when ClickHouse is configured or found on 127.0.0.1:9000) the\n" +
			"ClickHouse sink in one process. Kafka is embedded (franz-go's kfake, persisted in DIR/kafka)\n" +
			"unless --kafka names a cluster. Receipts are signed with the key ring DIR/keyring (made on\n" +
			"first start; rotate with certnode keys rotate --keyring DIR/keyring, picked up live) unless\n" +
			"--keyring, --key or --pkcs11-* name other keys. The demo tenant's API key is written to\n" +
			"DIR/credentials.json (mode 0600).\n\n" + pinHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
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
			store, creds, mac, err := devTenants(dataDir)
			if err != nil {
				return usageErr("%v", err)
			}
			creds.HTTP, creds.Kafka = "http://"+addr, kcfg.Brokers[0]
			credFile := filepath.Join(dataDir, "credentials.json")
			if err := writeJSONFile(credFile, creds); err != nil {
				return usageErr("%v", err)
			}

			reg := newRegistry()
			keys.registerPoolMetrics(reg)
			parts := map[string]func(context.Context) error{}
			wcfg := pipeline.DefaultConfig()
			wcfg.Kafka, wcfg.Group, wcfg.Registerer = kcfg, kf.prefix+"-workers", reg
			wcfg.DrainTimeout = drainTimeout()
			w, err := pipeline.New(wcfg, ring, store, mac)
			if err != nil {
				return usageErr("%v", err)
			}
			defer w.Close()
			parts["worker"] = w.Run
			parts["keyring"] = signer.NewRingWatcher(ring, ringPoll).Run

			var rs ingest.ReceiptStore
			chAddr, chFound := clickhouse, clickhouse != "" && clickhouse != "none"
			if clickhouse == "" {
				chAddr, chFound = "127.0.0.1:9000", reachable("127.0.0.1:9000")
			}
			if chFound {
				scfg := chsink.DefaultConfig()
				scfg.Kafka, scfg.Addr, scfg.Group, scfg.Registerer = kcfg, []string{chAddr}, kf.prefix+"-sink-clickhouse", reg
				sink, err := chsink.New(ctx, scfg)
				if err != nil {
					return usageErr("%v", err)
				}
				defer sink.Close()
				parts["sink"] = sink.Run
				chs, err := ingest.OpenClickHouseStore(ctx, []string{chAddr}, "default", "")
				if err != nil {
					return usageErr("%v", err)
				}
				defer chs.Close()
				rs = chs
			} else {
				slog.Warn("ClickHouse is off (none on 127.0.0.1:9000, or --clickhouse none): no analytics sink, and GET /v1/receipts answers 503")
			}

			icfg.Addr, icfg.Kafka, icfg.Registerer, icfg.Gatherer = addr, kcfg, reg, reg
			signerCheck := func(ctx context.Context) error {
				_, err := ring.Sign(ctx, []byte(`{"readyz":true}`))
				return err
			}
			srv, err := ingest.New(ctx, icfg, ingest.Deps{Auth: store, Limiter: tenants.NewLocalLimiter(store.Limits), Keys: ring, Store: rs, MAC: mac,
				Ready: []ingest.Check{signerCheck}, Live: []ingest.Check{func(context.Context) error { return w.Healthy() }}})
			if err != nil {
				return usageErr("%v", err)
			}
			defer srv.Close()
			parts["ingest"] = srv.Run

			fmt.Fprintf(cmd.ErrOrStderr(), "certnode dev: API on http://%s  (Kafka %s, %s kid %s)\n", srv.Addr(), kcfg.Brokers[0], ring.ActiveAlg(), ring.ActiveKID())
			fmt.Fprintf(cmd.ErrOrStderr(), "certnode dev: demo tenant %q; API key in %s\n", creds.Tenant, credFile)
			return runErr(runParts(ctx, parts))
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&addr, "http", "127.0.0.1:8080", "listen address")
	bindEnv(fs, "http", "CERTNODE_HTTP")
	fs.StringVar(&dataDir, "data", ".certnode", "folder for the key ring, tenants, credentials and embedded Kafka data")
	bindEnv(fs, "data", "CERTNODE_DATA")
	fs.StringVar(&clickhouse, "clickhouse", "", "ClickHouse native address (default: 127.0.0.1:9000 when reachable; none: off)")
	bindEnv(fs, "clickhouse", "CERTNODE_CLICKHOUSE")
	ingestLimitFlags(fs, &icfg)
	kf.register(fs, false)
	keys.register(fs, true)
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

// devTenants loads DIR/tenants.json, creating the demo tenant (its API key
// and producer key, written to the credentials) on first start, and the
// internal secret.
func devTenants(dir string) (*tenants.FileStore, *credentials, *recordauth.Keyring, error) {
	credFile, tenFile, secretFile := filepath.Join(dir, "credentials.json"), filepath.Join(dir, "tenants.json"), filepath.Join(dir, "internal.secret")
	var creds credentials
	var file tenants.File
	if data, err := os.ReadFile(credFile); err == nil {
		if err := json.Unmarshal(data, &creds, json.RejectUnknownMembers(false)); err != nil {
			return nil, nil, nil, fmt.Errorf("%s: %w", credFile, err)
		}
		data, err := os.ReadFile(tenFile)
		if err == nil {
			err = json.Unmarshal(data, &file)
		}
		if err != nil {
			return nil, nil, nil, fmt.Errorf("%s: %w", tenFile, err)
		}
	} else {
		creds.Tenant = "demo"
		var err1, err2 error
		creds.APIKey, err1 = tenants.GenerateKey()
		creds.AdminToken, err2 = tenants.GenerateKey()
		if err := errors.Join(err1, err2); err != nil {
			return nil, nil, nil, err
		}
		file.Tenants = []tenants.Tenant{{ID: creds.Tenant, APIKeyHashes: []string{tenants.HashKey(creds.APIKey)}}}
	}
	if creds.ProducerSecret == "" { // first start, or a folder from before producer keys
		secret, err := tenants.GenerateKey()
		if err != nil {
			return nil, nil, nil, err
		}
		creds.ProducerKeyID, creds.ProducerSecret = "pk_demo", secret
		for i := range file.Tenants {
			if file.Tenants[i].ID == creds.Tenant {
				file.Tenants[i].ProducerKeys = append(file.Tenants[i].ProducerKeys, tenants.ProducerKey{ID: creds.ProducerKeyID, Secret: secret})
			}
		}
		if err := writeJSONFile(tenFile, file); err != nil {
			return nil, nil, nil, err
		}
	}
	store, err := tenants.NewFileStore(file)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %w", tenFile, err)
	}
	secret, err := os.ReadFile(secretFile)
	if errors.Is(err, os.ErrNotExist) {
		s, gerr := tenants.GenerateKey()
		if gerr != nil {
			return nil, nil, nil, gerr
		}
		secret, err = []byte(s), os.WriteFile(secretFile, []byte(s), 0o600)
	}
	if err != nil {
		return nil, nil, nil, err
	}
	mac, err := recordauth.NewKeyring(secret)
	return store, &creds, mac, err
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
