package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/certnode/certnode/coordinator"
	"github.com/certnode/certnode/internal/audit"
	"github.com/certnode/certnode/internal/envsecret"
	"github.com/certnode/certnode/internal/mail"
	"github.com/certnode/certnode/internal/recordauth"
	"github.com/certnode/certnode/internal/tlsconf"
)

// coordinatorSecretHelp names the coordinator's tokens in its help.
const coordinatorSecretHelp = "Required: $CERTNODE_ADMIN_TOKEN (the operator's, for /v1/admin) and $CERTNODE_NODE_TOKEN\n" +
	"(other tiers', for /v1/node/state), or the files named by $CERTNODE_ADMIN_TOKEN_FILE and\n" +
	"$CERTNODE_NODE_TOKEN_FILE; at least 16 bytes each, the same on every node. With --kafka, the internal\n" +
	"secret too ($CERTNODE_INTERNAL_SECRET or $CERTNODE_INTERNAL_SECRET_FILE), which authenticates audit events."

func newCoordinatorCmd() *cobra.Command {
	var cfg coordinator.Config
	var webhookAllow []string
	var kf kafkaFlags
	var tf tlsFlags
	var peerCA, resolver string
	var reserved []string
	cmd := &cobra.Command{
		Use:   "coordinator",
		Short: "Run a coordinator node (Raft): organizations, API keys and the cluster's membership",
		Long: "Runs one node of the coordinator cluster (1, 3 or 5 nodes). The first node of a new cluster\n" +
			"starts with --bootstrap; the others with --join ADDR (the HTTP address of any member). A\n" +
			"node restarted with its --data keeps its state and rejoins by itself.\n" +
			"  certnode coordinator --id c1 --raft 127.0.0.1:7001 --http 127.0.0.1:7101 --data c1 --bootstrap\n" +
			"  certnode coordinator --id c2 --raft 127.0.0.1:7002 --http 127.0.0.1:7102 --data c2 --join 127.0.0.1:7101\n" +
			"With --tls-cert and --tls-key the API serves TLS 1.2+ and the node announces https://; the other\n" +
			"members' certificates (--join https://..., forwarding to the leader) are checked against --coordinator-ca;\n" +
			"with --raft-tls too, Raft between members runs over TLS, each member's certificate checked by the other.\n\n" +
			coordinatorSecretHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err1, err2 error
			cfg.AdminToken, err1 = requiredSecret("CERTNODE_ADMIN_TOKEN")
			cfg.NodeToken, err2 = requiredSecret("CERTNODE_NODE_TOKEN")
			var err3, err4, err5, err6 error
			cfg.WebhookAllow, err3 = parsePrefixes("--webhook-allow", webhookAllow)
			cfg.TLS, err4 = tf.config()
			cfg.PeerTLS, err5 = coordinatorTLS(peerCA)
			if resolver != "" {
				cfg.Resolver, err6 = dnsResolver(resolver)
			}
			cfg.ReservedDomains = reservedDomains(reserved, cfg.PublicURL)
			if err := errors.Join(err1, err2, err3, err4, err5, err6, cfg.Validate()); err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			if cfg.OrgKeyActivationDelay < coordinator.DefaultOrgKeyActivationDelay {
				// Verifiers that cached the JWKS before a new key was
				// published may then refuse its first receipts.
				slog.Warn("--org-key-activation-delay is below the JWKS's cache lifetime: an organization's first receipts with a new key may not verify against a cached JWKS",
					"delay", cfg.OrgKeyActivationDelay, "jwks_cache", coordinator.DefaultOrgKeyActivationDelay)
			}
			if kcfg := kf.config(); len(kcfg.Brokers) > 0 {
				mac, err := recordauth.SecretsFromEnv()
				if err != nil {
					return usageErr("with --kafka: %v", err)
				}
				if err := ensureTopics(cmd.Context(), kcfg); err != nil {
					return err
				}
				events, err := audit.NewPublisher(kcfg, "coordinator", mac, nil)
				if err != nil {
					return usageErr("%v", err)
				}
				defer events.Close()
				cfg.Audit = events
			} else {
				slog.Warn("no --kafka: audit events stay in the coordinator's state, out of the audit log")
			}
			s, err := coordinator.NewServer(cfg)
			if err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			defer s.Close()
			slog.Info("coordinator started", "node", cfg, "api", s.URL(), "raft", s.Node().RaftAddr())
			return runErr(runParts(cmd.Context(), map[string]func(context.Context) error{"coordinator": s.Run}))
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&cfg.ID, "id", "", "this node's id, stable across restarts")
	bindEnv(fs, "id", "CERTNODE_COORDINATOR_ID")
	fs.StringVar(&cfg.RaftAddr, "raft", "127.0.0.1:7001", "address for Raft traffic between nodes")
	bindEnv(fs, "raft", "CERTNODE_COORDINATOR_RAFT")
	fs.StringVar(&cfg.HTTPAddr, "http", "127.0.0.1:7101", "address of the admin and node API")
	bindEnv(fs, "http", "CERTNODE_COORDINATOR_HTTP")
	fs.StringVar(&cfg.DataDir, "data", "", "directory for the Raft log, its snapshots and state")
	bindEnv(fs, "data", "CERTNODE_COORDINATOR_DATA")
	fs.BoolVar(&cfg.Bootstrap, "bootstrap", false, "start a new cluster with this node (ignored when --data holds state)")
	bindEnv(fs, "bootstrap", "CERTNODE_COORDINATOR_BOOTSTRAP")
	fs.StringVar(&cfg.Join, "join", "", "join the cluster through this member's HTTP address (https://host:port when it serves TLS)")
	bindEnv(fs, "join", "CERTNODE_COORDINATOR_JOIN")
	fs.StringSliceVar(&webhookAllow, "webhook-allow", nil, "networks (CIDR) a webhook endpoint's test delivery may reach although they are not public, e.g. 127.0.0.0/8 for a local receiver")
	bindEnv(fs, "webhook-allow", "CERTNODE_WEBHOOK_ALLOW")
	tf.register(fs)
	registerCoordinatorCA(fs, &peerCA)
	fs.BoolVar(&cfg.RaftTLS, "raft-tls", false, "Raft between members over TLS with --tls-cert, both ways: every member sets it, and its certificate must allow client authentication too")
	bindEnv(fs, "raft-tls", "CERTNODE_COORDINATOR_RAFT_TLS")
	fs.StringVar(&cfg.PublicURL, "public-url", "", "the service's public base URL, which links in email previews point under (the mailers' --public-url)")
	bindEnv(fs, "public-url", "CERTNODE_PUBLIC_URL")
	fs.StringSliceVar(&reserved, "reserved-domains", nil, "the service's own host names (its API's, its dashboard's): no organization may claim them or a name under them as a custom domain (--public-url's host is reserved too)")
	bindEnv(fs, "reserved-domains", "CERTNODE_RESERVED_DOMAINS")
	fs.StringVar(&resolver, "dns-resolver", "", "the DNS server (host:port) asked for the TXT records proving custom domains and sending domains' DKIM keys (default: the first of /etc/resolv.conf)")
	bindEnv(fs, "dns-resolver", "CERTNODE_DNS_RESOLVER")
	fs.DurationVar(&cfg.OrgKeyActivationDelay, "org-key-activation-delay", coordinator.DefaultOrgKeyActivationDelay,
		"how long an organization's new signing key is published before it signs (at least the JWKS's cache lifetime, 5m)")
	bindEnv(fs, "org-key-activation-delay", "CERTNODE_ORG_KEY_ACTIVATION_DELAY")
	kf.register(fs, true)
	k := fs.Lookup("kafka")
	k.Usage = strings.Replace(k.Usage, "comma separated", "comma separated, for the audit log's events (none: they stay in the coordinator's state only)", 1)
	return cmd
}

// dnsResolver is the DNS server --dns-resolver names (host:port).
func dnsResolver(addr string) (*mail.Resolver, error) {
	host, port, err := net.SplitHostPort(addr)
	if n, perr := strconv.ParseUint(port, 10, 16); err != nil || host == "" || perr != nil || n == 0 {
		return nil, fmt.Errorf("--dns-resolver %q: want host:port, such as 127.0.0.1:53", addr)
	}
	return &mail.Resolver{Addr: addr}, nil
}

// parsePrefixes reads CIDR prefixes given to flag.
func parsePrefixes(flag string, list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	var errs []error
	for _, c := range list {
		p, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %q: want a CIDR prefix such as 127.0.0.0/8", flag, c))
			continue
		}
		out = append(out, p.Masked())
	}
	return out, errors.Join(errs...)
}

// coordinatorFlags name the coordinator cluster a role follows or calls.
type coordinatorFlags struct{ addrs, ca string }

// register adds --coordinator (default def, for what usage says) and
// --coordinator-ca.
func (c *coordinatorFlags) register(fs *pflag.FlagSet, def, usage string) {
	fs.StringVar(&c.addrs, "coordinator", def, usage+"; https://host:port for a coordinator serving TLS")
	bindEnv(fs, "coordinator", "CERTNODE_COORDINATOR")
	registerCoordinatorCA(fs, &c.ca)
}

func registerCoordinatorCA(fs *pflag.FlagSet, ca *string) {
	fs.StringVar(ca, "coordinator-ca", "", "the CA certificates (PEM) an https:// coordinator's certificate is checked against (default: the system's)")
	bindEnv(fs, "coordinator-ca", "CERTNODE_COORDINATOR_CA")
}

// coordinatorTLS is the configuration https:// coordinators are checked
// with: TLS 1.2+, their certificates against the CA file ca.
func coordinatorTLS(ca string) (*tls.Config, error) {
	cfg, err := tlsconf.Client(ca)
	if err != nil {
		return nil, usageErr("--coordinator-ca: %v", err)
	}
	return cfg, nil
}

// admin is a client of the admin API of the first coordinator named.
func (c *coordinatorFlags) admin() (*adminClient, error) {
	addr, _, _ := strings.Cut(c.addrs, ",")
	a := &adminClient{addr: strings.TrimSpace(addr), ca: c.ca}
	return a, a.connect()
}

// coordinatorReplica makes the local copy of the coordinator's state a
// tier follows, with the node token from the environment.
func coordinatorReplica(c coordinatorFlags, maxStale time.Duration, reg prometheus.Registerer) (*coordinator.Replica, error) {
	token, err := requiredSecret("CERTNODE_NODE_TOKEN")
	if err != nil {
		return nil, fmt.Errorf("--coordinator: %w", err)
	}
	tlsCfg, err := coordinatorTLS(c.ca)
	if err != nil {
		return nil, err
	}
	return coordinator.NewReplica(coordinator.ReplicaConfig{Addrs: splitList(c.addrs), TLS: tlsCfg, Token: token, MaxStale: maxStale, Registerer: reg})
}

// followCoordinator makes the replica of the cluster's state and the
// limiter that draws on its cluster-wide shares, which a role serving
// organizations needs; it adds the limiter to parts (the caller runs the
// replica, which some roles wait on first) and the caller closes it.
func followCoordinator(c coordinatorFlags, maxStale time.Duration, reg prometheus.Registerer,
	parts map[string]func(context.Context) error) (*coordinator.Replica, *coordinator.Limiter, error) {
	r, err := coordinatorReplica(c, maxStale, reg)
	if err != nil {
		return nil, nil, err
	}
	l, err := coordinator.NewLimiter(r, coordinator.LimiterConfig{Registerer: reg})
	if err != nil {
		return nil, nil, err
	}
	parts["limiter"] = l.Run
	return r, l, nil
}

// requiredSecret reads $NAME or the file $NAME_FILE names, trimmed.
func requiredSecret(name string) (string, error) {
	v, ok, err := envsecret.Read(name)
	switch {
	case err != nil:
		return "", err
	case !ok:
		return "", fmt.Errorf("$%s (or $%s_FILE) is required", name, name)
	}
	return strings.TrimSpace(v), nil
}

// reservedDomains are the names no organization may claim: those given,
// lower-cased, and the host of the service's public URL when it is a
// name. A malformed one is left for Config.Validate to name.
func reservedDomains(names []string, publicURL string) []string {
	var out []string
	for _, n := range names {
		if n = strings.TrimSpace(n); n != "" {
			if c, err := coordinator.NormalizeDomain(n); err == nil {
				n = c
			}
			out = append(out, n)
		}
	}
	if u, err := url.Parse(publicURL); err == nil && u.Hostname() != "" {
		if c, err := coordinator.NormalizeDomain(u.Hostname()); err == nil && !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	return out
}
