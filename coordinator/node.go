package coordinator

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"

	"github.com/certnode/certnode/internal/mail"
)

// Config configures one coordinator node.
type Config struct {
	ID       string // raft server id, stable across restarts
	RaftAddr string // host:port for raft traffic
	HTTPAddr string // host:port of the API
	// TLS serves the API over TLS (tlsconf.Files.Server); the node then
	// announces https://HTTPAddr to its peers. PeerTLS checks the peers'
	// certificates when this node joins through or forwards to one
	// (tlsconf.Client; nil: the system's roots).
	TLS     *tls.Config
	PeerTLS *tls.Config
	// RaftTLS carries Raft over TLS too, authenticated both ways: each
	// member presents TLS's certificate and checks the other's with
	// PeerTLS's roots (required), so only a holder of a certificate of
	// that CA reaches the log: give the members a CA of their own. Every
	// member must set it.
	RaftTLS bool
	DataDir string
	// Bootstrap makes a new cluster of this one node; Join is the HTTP
	// address of a member to join through. Neither: restart from DataDir.
	Bootstrap bool
	Join      string
	// AdminToken guards /v1/admin; NodeToken guards the state other tiers
	// read (it holds key hashes).
	AdminToken string
	NodeToken  string
	// ApplyTimeout bounds a write's wait for the cluster.
	ApplyTimeout time.Duration
	// WebhookAllow lists the non-public networks a webhook endpoint's test
	// delivery may reach (none by default: only public addresses).
	WebhookAllow []netip.Prefix
	// PublicURL is the service's public base URL, which links in email
	// previews point under (the mailer's --public-url).
	PublicURL string
	// Audit sends the audit events (applied changes, relayed by the leader,
	// and refused requests) to the audit log; nil: they stay in the state.
	Audit AuditPublisher
	// ReservedDomains are the service's own names (its public and API
	// hosts): no organization may claim them or a name under them.
	ReservedDomains []string
	// Resolver looks up the TXT records proving custom domains and the
	// sending domains' DKIM records (nil: the first server of
	// /etc/resolv.conf).
	Resolver Resolver
	// OrgKeyActivationDelay is how long an organization's new signing key
	// is published before it signs (0: DefaultOrgKeyActivationDelay).
	OrgKeyActivationDelay time.Duration
	// SnapshotThreshold is how many log entries trigger a snapshot (and
	// log compaction); tests lower it.
	SnapshotThreshold uint64
	// Raft timing; zero keeps the defaults below, chosen so a new leader
	// is elected within about a second of losing the old one.
	HeartbeatTimeout time.Duration
	ElectionTimeout  time.Duration
}

// Defaults for Config.
const (
	DefaultApplyTimeout      = 5 * time.Second
	DefaultSnapshotThreshold = 8192
	defaultHeartbeat         = 500 * time.Millisecond
)

// LogValue keeps the tokens out of logs.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(slog.String("id", c.ID), slog.String("raft", c.RaftAddr), slog.String("http", c.HTTPAddr), slog.Bool("tls", c.TLS != nil), slog.Bool("raft_tls", c.RaftTLS),
		slog.String("data", c.DataDir), slog.Bool("bootstrap", c.Bootstrap), slog.String("join", c.Join))
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if !idPattern.MatchString(c.ID) {
		errs = append(errs, fmt.Errorf("coordinator: --id %q: 1-63 characters a-z 0-9 _ -", c.ID))
	}
	for name, addr := range map[string]string{"--raft": c.RaftAddr, "--http": c.HTTPAddr} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("coordinator: %s %q: want host:port", name, addr))
		}
	}
	if c.OrgKeyActivationDelay < 0 {
		errs = append(errs, errors.New("coordinator: the organization key activation delay must not be negative"))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("coordinator: --data DIR is required"))
	}
	if c.RaftTLS && c.TLS == nil {
		errs = append(errs, errors.New("coordinator: Raft over TLS needs the API's certificate (--tls-cert, --tls-key)"))
	}
	// Without a CA of its own, Raft would admit any certificate the
	// system's roots vouch for: anyone could join the log.
	if c.RaftTLS && (c.PeerTLS == nil || c.PeerTLS.RootCAs == nil) {
		errs = append(errs, errors.New("coordinator: Raft over TLS needs the members' CA (--coordinator-ca): the system's roots would admit anyone's certificate"))
	}
	if c.PublicURL != "" {
		if err := mail.CheckBaseURL(c.PublicURL); err != nil {
			errs = append(errs, fmt.Errorf("coordinator: --public-url: %w", err))
		}
	}
	if c.Bootstrap && c.Join != "" {
		errs = append(errs, errors.New("coordinator: --bootstrap and --join exclude each other"))
	}
	for _, d := range c.ReservedDomains {
		if n, err := NormalizeDomain(d); err != nil || n != d {
			errs = append(errs, fmt.Errorf("coordinator: --reserved-domains %q: a lower-case domain name", d))
		}
	}
	if len(c.AdminToken) < 16 || len(c.NodeToken) < 16 {
		errs = append(errs, errors.New("coordinator: the admin and node tokens must be at least 16 bytes"))
	}
	return errors.Join(errs...)
}

// Node is one member of the coordinator cluster.
type Node struct {
	cfg   Config
	fsm   *FSM
	raft  *raft.Raft
	trans *raft.NetworkTransport
	logs  *raftboltdb.BoltStore
	log   *slog.Logger
	// barrierTerm is the term this node last passed a barrier in as leader
	// (Consistent).
	barrierTerm atomic.Value
}

// Open starts the raft node: its log and stable store (BoltDB), snapshots
// and transport, bootstrapping a new cluster when asked.
func Open(cfg Config) (*Node, error) {
	if cfg.ApplyTimeout == 0 {
		cfg.ApplyTimeout = DefaultApplyTimeout
	}
	if cfg.OrgKeyActivationDelay == 0 {
		cfg.OrgKeyActivationDelay = DefaultOrgKeyActivationDelay
	}
	if cfg.SnapshotThreshold == 0 {
		cfg.SnapshotThreshold = DefaultSnapshotThreshold
	}
	if cfg.HeartbeatTimeout == 0 {
		cfg.HeartbeatTimeout = defaultHeartbeat
	}
	if cfg.ElectionTimeout == 0 {
		cfg.ElectionTimeout = defaultHeartbeat
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, err
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.HeartbeatTimeout, rc.ElectionTimeout = cfg.HeartbeatTimeout, cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.HeartbeatTimeout / 2
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.TrailingLogs = cfg.SnapshotThreshold / 2
	rc.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: os.Stderr})
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("coordinator: raft config: %w", err)
	}
	n := &Node{cfg: cfg, fsm: newFSM(), log: slog.With("role", "coordinator", "id", cfg.ID)}
	var err error
	// A second process on the same directory fails at once instead of
	// waiting forever for BoltDB's file lock.
	n.logs, err = raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.DataDir, "raft.db"), BoltOptions: &bbolt.Options{Timeout: time.Second}})
	if err != nil {
		return nil, fmt.Errorf("coordinator: raft log %s (another node on this --data?): %w", cfg.DataDir, err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, rc.Logger)
	if err != nil {
		n.logs.Close()
		return nil, fmt.Errorf("coordinator: snapshots: %w", err)
	}
	addr, err := net.ResolveTCPAddr("tcp", cfg.RaftAddr)
	if err != nil {
		n.logs.Close()
		return nil, fmt.Errorf("coordinator: --raft: %w", err)
	}
	var advertise net.Addr = addr
	if addr.Port == 0 {
		advertise = nil // the listener's real address
	}
	if cfg.RaftTLS {
		n.trans, err = newTLSTransport(cfg, advertise, rc.Logger)
	} else {
		n.trans, err = raft.NewTCPTransportWithLogger(cfg.RaftAddr, advertise, 4, 10*time.Second, rc.Logger)
	}
	if err != nil {
		n.logs.Close()
		return nil, fmt.Errorf("coordinator: raft transport: %w", err)
	}
	if cfg.Bootstrap {
		has, err := raft.HasExistingState(n.logs, n.logs, snaps)
		if err != nil {
			n.close()
			return nil, err
		}
		if !has {
			boot := raft.Configuration{Servers: []raft.Server{{ID: rc.LocalID, Address: n.trans.LocalAddr()}}}
			if err := raft.BootstrapCluster(rc, n.logs, n.logs, snaps, n.trans, boot); err != nil {
				n.close()
				return nil, fmt.Errorf("coordinator: bootstrap: %w", err)
			}
		}
	}
	if n.raft, err = raft.NewRaft(rc, n.fsm, n.logs, n.logs, snaps, n.trans); err != nil {
		n.close()
		return nil, fmt.Errorf("coordinator: raft: %w", err)
	}
	return n, nil
}

func (n *Node) close() {
	if n.trans != nil {
		n.trans.Close()
	}
	if n.logs != nil {
		n.logs.Close()
	}
}

// Close leaves the node's state on disk and stops it.
func (n *Node) Close() error {
	err := n.raft.Shutdown().Error()
	n.close()
	return err
}

// RaftAddr is the address raft listens on (the port is real when the
// configured one was 0).
func (n *Node) RaftAddr() string { return string(n.trans.LocalAddr()) }

// IsLeader reports whether this node leads now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// ErrNotLeader is returned for writes on a follower; the HTTP layer
// forwards them.
var ErrNotLeader = errors.New("not the leader")

// Propose validates c against the current state and, on the leader,
// appends it to the log and waits until it is applied here. The result
// is the entry's index, or why the command was refused.
func (n *Node) Propose(c Command) (uint64, error) {
	if n.raft.State() != raft.Leader {
		return 0, ErrNotLeader
	}
	var verr error
	n.fsm.View(func(s *State) { verr = c.validate(s) })
	if verr != nil {
		return 0, verr
	}
	data, err := encode(c)
	if err != nil {
		return 0, err
	}
	f := n.raft.Apply(data, n.cfg.ApplyTimeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return 0, ErrNotLeader
		}
		return 0, err
	}
	res := f.Response().(applyResult)
	return res.index, res.err
}

// Consistent makes a read on this node linearizable: it confirms the
// node still leads (a round of heartbeats) and, once per term, waits for a
// barrier, so that entries of earlier terms are applied here. A barrier is
// a log entry: one per read would let anonymous readers write to the log.
// Later in the term every write this leader acknowledged is applied.
func (n *Node) Consistent() error {
	if err := n.raft.VerifyLeader().Error(); err != nil {
		return ErrNotLeader
	}
	term := n.raft.Stats()["term"]
	if t, _ := n.barrierTerm.Load().(string); t == term {
		return nil
	}
	if err := n.raft.Barrier(n.cfg.ApplyTimeout).Error(); err != nil {
		return err
	}
	n.barrierTerm.Store(term)
	return nil
}

// Leader returns the leader's id and HTTP address, if known.
func (n *Node) Leader() (id, httpAddr string) {
	_, lid := n.raft.LeaderWithID()
	n.fsm.View(func(s *State) { httpAddr = s.Members[string(lid)] })
	return string(lid), httpAddr
}

// Member is one server of the cluster configuration.
type Member struct {
	ID       string `json:"id"`
	Raft     string `json:"raft"`
	HTTP     string `json:"http,omitempty"`
	Voter    bool   `json:"voter"`
	IsLeader bool   `json:"leader"`
}

// Cluster describes the membership as this node sees it.
type Cluster struct {
	Leader       string   `json:"leader"`
	Members      []Member `json:"members"`
	State        string   `json:"state"` // this node's raft state
	LastIndex    uint64   `json:"last_index"`
	AppliedIndex uint64   `json:"applied_index"`
}

// Cluster reports the configuration, the leader and the indexes.
func (n *Node) Cluster() (Cluster, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return Cluster{}, err
	}
	leader, _ := n.Leader()
	c := Cluster{Leader: leader, State: n.raft.State().String(), LastIndex: n.raft.LastIndex(), AppliedIndex: n.raft.AppliedIndex()}
	n.fsm.View(func(s *State) {
		for _, srv := range f.Configuration().Servers {
			c.Members = append(c.Members, Member{ID: string(srv.ID), Raft: string(srv.Address), HTTP: s.Members[string(srv.ID)],
				Voter: srv.Suffrage == raft.Voter, IsLeader: string(srv.ID) == leader})
		}
	})
	return c, nil
}

// AddVoter makes a node a voting member and records its HTTP address; it
// runs on the leader.
func (n *Node) AddVoter(id, raftAddr, httpAddr string, by Meta) error {
	if n.raft.State() != raft.Leader {
		return ErrNotLeader
	}
	if err := n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(raftAddr), 0, n.cfg.ApplyTimeout).Error(); err != nil {
		return err
	}
	_, err := n.Propose(&SetMember{Meta: by, ID: id, HTTP: httpAddr})
	return err
}

// RemoveServer takes a node out of the cluster; it runs on the leader.
func (n *Node) RemoveServer(id string, by Meta) error {
	if n.raft.State() != raft.Leader {
		return ErrNotLeader
	}
	if err := n.raft.RemoveServer(raft.ServerID(id), 0, n.cfg.ApplyTimeout).Error(); err != nil {
		return err
	}
	_, err := n.Propose(&SetMember{Meta: by, ID: id})
	return err
}
