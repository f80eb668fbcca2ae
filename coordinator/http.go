package coordinator

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/certnode/certnode/internal/apicustom"
	"github.com/certnode/certnode/internal/egress"
	"github.com/certnode/certnode/internal/httpsec"
	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/schemas"
)

// Server is a node with its HTTP API: the operator's admin routes under
// /v1/admin (admin token) and the state other tiers follow at
// /v1/node/state (node token). Writes sent to a follower are forwarded to
// the leader.
type Server struct {
	node    *Node
	leases  *leaseServer
	reg     *prometheus.Registry
	refused *prometheus.CounterVec // refusals by code, for /metrics
	pwLocks sync.Map               // user id -> *sync.Mutex: one password check at a time
	hooks   *http.Client           // test deliveries to customers' endpoints (SSRF-guarded)
	srv     *http.Server
	ln      net.Listener
	url     string // the API's base URL as peers reach it
	client  *http.Client
	log     *slog.Logger
	// Work a request leaves running after its answer lives as long as the
	// server: it ends with Run, and Close waits for it.
	bg     context.Context
	stopBG context.CancelFunc
	bgMu   sync.Mutex // orders background starts before Close's wait
	tasks  sync.WaitGroup
}

// forwardedHeader marks a request a follower sent on, so it is never
// forwarded twice.
const forwardedHeader = "Certnode-Forwarded"

// maxBody bounds admin request bodies.
const maxBody = 1 << 20

// NewServer opens the node and listens on its HTTP address.
func NewServer(cfg Config) (*Server, error) {
	n, err := Open(cfg)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("coordinator: --http: %w", err)
	}
	// Peers learn this node's address as it is reachable: the bound
	// port when the configured one was 0.
	n.cfg.HTTPAddr = ln.Addr().String()
	s := &Server{node: n, ln: ln, url: n.cfg.HTTPAddr, client: HTTPClient(cfg.PeerTLS, 2*n.cfg.ApplyTimeout), log: n.log}
	s.bg, s.stopBG = context.WithCancel(context.Background())
	if cfg.TLS != nil {
		s.ln, s.url = tls.NewListener(ln, cfg.TLS), "https://"+n.cfg.HTTPAddr
	}
	ecfg := egress.DefaultConfig()
	ecfg.Allow = cfg.WebhookAllow
	if s.hooks, err = egress.NewClient(ecfg); err != nil {
		n.Close()
		ln.Close()
		return nil, fmt.Errorf("coordinator: webhook allow-list: %w", err)
	}
	s.leases = newLeaseServer(s)
	s.reg = prometheus.NewRegistry()
	s.refused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "certnode_coordinator_refused_total",
		Help: "Requests the coordinator refused, by error code (unauthorized, forbidden_address, forbidden_role, csrf, account_locked)."},
		[]string{"code"})
	s.reg.MustRegister(s.refused, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	for _, rt := range s.routes() {
		mux.Handle(rt.pattern, rt.h)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no such route")
	})
	s.srv = &http.Server{Handler: httpsec.Handler(mux), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second}
	return s, nil
}

// Node is the server's raft node.
func (s *Server) Node() *Node { return s.node }

// Addr is the API's address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL is the API's base URL: https:// when it serves TLS.
func (s *Server) URL() string { return s.url }

// Run serves until ctx ends: the API, the announcement of this node's
// HTTP address and, for a node started with Join, its request to join.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	context.AfterFunc(ctx, s.stopBG)
	go s.announce(ctx)
	go s.rotateOrgKeys(ctx)
	if s.node.cfg.Audit != nil {
		go s.relayAudit(ctx)
	}
	if s.node.cfg.Join != "" {
		go s.join(ctx)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	return s.srv.Shutdown(sctx)
}

// Close stops the API, the work requests left running, and the node.
func (s *Server) Close() error {
	s.srv.Close()
	s.bgMu.Lock()
	s.stopBG()
	s.bgMu.Unlock()
	s.tasks.Wait()
	return s.node.Close()
}

// background runs f after the request that starts it, on a context that
// ends with the server; nothing starts once the server stopped.
func (s *Server) background(f func(ctx context.Context)) {
	s.bgMu.Lock()
	defer s.bgMu.Unlock()
	if s.bg.Err() != nil {
		return
	}
	s.tasks.Go(func() { f(s.bg) })
}

// join asks a member (forwarded to the leader) to add this node, until it
// is a member.
func (s *Server) join(ctx context.Context) {
	for wait := 200 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		err := s.addSelf(ctx, s.node.cfg.Join)
		if err == nil {
			s.log.Info("joined the cluster", "via", s.node.cfg.Join)
			return
		}
		s.log.Warn("join failed; retrying", "via", s.node.cfg.Join, "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// addSelf asks the member at addr to add this node with its addresses.
func (s *Server) addSelf(ctx context.Context, addr string) error {
	body, _ := json.Marshal(map[string]string{"id": s.node.cfg.ID, "raft": s.node.RaftAddr(), "http": s.url})
	req, err := http.NewRequestWithContext(ctx, "POST", BaseURL(addr)+"/v1/admin/cluster/members", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+s.node.cfg.AdminToken)
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// announce keeps this node's HTTP address in the state, so followers can
// forward to it: a leader records its own; a member restarted on another
// address asks the leader to record the new one. A node removed from the
// cluster is not added back.
func (s *Server) announce(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		var known string
		var present bool
		s.node.fsm.View(func(st *State) { known, present = st.Members[s.node.cfg.ID] })
		switch {
		case known == s.url:
		case s.node.IsLeader():
			c := &SetMember{Meta: Meta{At: time.Now().UTC(), By: Actor{Kind: ActorNode, ID: s.node.cfg.ID}}, ID: s.node.cfg.ID, HTTP: s.url}
			if _, err := s.node.Propose(c); err != nil {
				s.log.Warn("could not record this node's HTTP address", "err", err)
			}
		case present:
			if _, leader := s.node.Leader(); leader != "" {
				if err := s.addSelf(ctx, leader); err != nil {
					s.log.Warn("could not record this node's new HTTP address", "err", err)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// leader runs h on the leader, forwarding the request there from a
// follower.
func (s *Server) leader(h handler) handler {
	return func(w http.ResponseWriter, r *http.Request, body []byte) {
		if s.node.IsLeader() {
			h(w, r, body)
			return
		}
		s.forward(w, r, body)
	}
}

// consistent runs a read on the leader once it has applied everything
// committed before the request (forwarding from a follower), when the
// request asks for it with ?consistent=true.
func (s *Server) consistent(h handler) handler {
	return func(w http.ResponseWriter, r *http.Request, body []byte) {
		if r.URL.Query().Get("consistent") != "true" {
			h(w, r, body)
			return
		}
		if !s.node.IsLeader() {
			s.forward(w, r, body)
			return
		}
		if err := s.node.Consistent(); err != nil {
			s.fail(w, err)
			return
		}
		h(w, r, body)
	}
}

func (s *Server) forward(w http.ResponseWriter, r *http.Request, body []byte) {
	_, addr := s.node.Leader()
	if addr == "" || r.Header.Get(forwardedHeader) != "" {
		writeError(w, http.StatusServiceUnavailable, "no_leader", "the cluster has no leader this node can reach; retry")
		return
	}
	req, err := http.NewRequestWithContext(r.Context(), r.Method, BaseURL(addr)+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		s.fail(w, err)
		return
	}
	req.Header = r.Header.Clone()
	req.Host = r.Host // the client's, for the CSRF Origin check
	req.Header.Set(forwardedHeader, s.node.cfg.ID)
	req.Header.Set(clientAddrHeader, s.clientAddr(r))
	req.Header.Set(forwardAuthHeader, "Bearer "+s.node.cfg.NodeToken)
	resp, err := s.client.Do(req)
	if err != nil {
		s.log.Warn("forwarding to the leader failed", "leader", addr, "err", err)
		writeError(w, http.StatusServiceUnavailable, "no_leader", "forwarding to the leader failed; retry")
		return
	}
	defer resp.Body.Close()
	for _, k := range []string{"Content-Type", "Certnode-Index", "Retry-After", "Set-Cookie", replayedHeader} {
		if v := resp.Header.Get(k); v != "" {
			w.Header().Set(k, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

// refuse answers a refusal, counts it and sends it to the audit log (a
// wrong password is there already: the failed Login it commits).
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	s.refused.WithLabelValues(code).Inc()
	if code != "invalid_credentials" {
		s.recordRefusal(r, "", code)
	}
	writeError(w, status, code, msg)
}

// fail answers err with the status and code its kind calls for.
func (s *Server) fail(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrInvalid):
		writeError(w, http.StatusBadRequest, "invalid", err.Error())
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, ErrConflict):
		writeError(w, http.StatusConflict, "conflict", err.Error())
	case errors.Is(err, ErrGone):
		writeError(w, http.StatusGone, "gone", err.Error())
	case errors.Is(err, ErrBusy):
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "busy", err.Error())
	case errors.Is(err, context.Canceled):
		// The client went away: nobody reads an answer.
	case errors.Is(err, ErrNotLeader):
		writeError(w, http.StatusServiceUnavailable, "no_leader", "leadership changed during the request; retry")
	default:
		s.log.Error("request failed", "err", err)
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
	}
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":{"code":"internal","message":"encode"}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// decodeBody reads a JSON object, refusing unknown members (a misspelt
// field must not be silently ignored in an admin change).
func decodeBody(body []byte, v any) error {
	if err := json.Unmarshal(body, v, json.RejectUnknownMembers(true)); err != nil {
		return invalid("body: %v", err)
	}
	return nil
}

func (s *Server) cluster(w http.ResponseWriter, _ *http.Request, _ []byte) {
	c, err := s.node.Cluster()
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, c)
}

func (s *Server) addMember(w http.ResponseWriter, r *http.Request, body []byte) {
	var m struct {
		ID   string `json:"id"`
		Raft string `json:"raft"`
		HTTP string `json:"http"`
	}
	if err := decodeBody(body, &m); err != nil {
		s.fail(w, err)
		return
	}
	if !idPattern.MatchString(m.ID) || m.Raft == "" || m.HTTP == "" {
		s.fail(w, invalid("id, raft and http are required"))
		return
	}
	if err := s.node.AddVoter(m.ID, m.Raft, m.HTTP, s.meta(r)); err != nil {
		s.fail(w, err)
		return
	}
	s.cluster(w, nil, nil)
}

func (s *Server) removeMember(w http.ResponseWriter, r *http.Request, _ []byte) {
	if err := s.node.RemoveServer(r.PathValue("id"), s.meta(r)); err != nil {
		s.fail(w, err)
		return
	}
	s.cluster(w, nil, nil)
}

// orgBody is what an admin sends to create or change an organization;
// absent members keep their value on PATCH.
type orgBody struct {
	ID       string `json:"id"`
	OrgPatch `json:",inline"`
}

func (s *Server) createOrg(w http.ResponseWriter, r *http.Request, body []byte) {
	var b orgBody
	if err := decodeBody(body, &b); err != nil {
		s.fail(w, err)
		return
	}
	now := time.Now().UTC()
	// Pinned to the version current now (apisettings.go).
	o := Org{ID: b.ID, Status: OrgActive, Plan: DefaultPlan, CreatedAt: now, UpdatedAt: now, API: apicustom.Settings{APIVersion: schemas.LatestAPIVersion()}}
	b.OrgPatch.applyTo(&o)
	s.write(w, r, body, &PutOrg{Org: o, Create: true}, http.StatusCreated, o)
}

func (s *Server) updateOrg(w http.ResponseWriter, r *http.Request, body []byte) {
	var b orgBody
	if err := decodeBody(body, &b); err != nil {
		s.fail(w, err)
		return
	}
	if b.ID != "" && b.ID != r.PathValue("org") {
		s.fail(w, invalid("id cannot change"))
		return
	}
	s.patchOrg(w, r, body, r.PathValue("org"), b.OrgPatch, func(o *Org) any { return o })
}

// patchOrg changes an organization by a patch the FSM applies to the
// organization as it is then, so two changes never undo each other, and
// answers with view of the result.
func (s *Server) patchOrg(w http.ResponseWriter, r *http.Request, body []byte, id string, p OrgPatch, view func(*Org) any) {
	c := &PatchOrg{ID: id, Patch: p, At: time.Now().UTC()}
	var o Org
	var err error
	s.node.fsm.View(func(st *State) { o, err = c.patched(st) })
	if err != nil {
		s.fail(w, err)
		return
	}
	s.write(w, r, body, c, http.StatusOK, view(&o))
}

// commit proposes c for the caller of r and reports whether it was
// applied; if not, it has answered why. The index goes in Certnode-Index
// so a client can wait for other nodes to reach it.
func (s *Server) commit(w http.ResponseWriter, r *http.Request, c Command) bool {
	index, err := s.propose(r, c)
	if err != nil {
		s.fail(w, err)
		return false
	}
	w.Header().Set("Certnode-Index", strconv.FormatUint(index, 10))
	return true
}

// org copies an organization out of the state.
func (s *Server) org(id string) (Org, bool) {
	var o Org
	var ok bool
	s.node.fsm.View(func(st *State) {
		if p := st.Orgs[id]; p != nil {
			o, ok = *p, true
		}
	})
	return o, ok
}

func (s *Server) getOrg(w http.ResponseWriter, r *http.Request, _ []byte) {
	o, ok := s.org(r.PathValue("org"))
	if !ok {
		s.fail(w, fmt.Errorf("%w: organization %q", ErrNotFound, r.PathValue("org")))
		return
	}
	writeJSON(w, http.StatusOK, o)
}

func (s *Server) listOrgs(w http.ResponseWriter, _ *http.Request, _ []byte) {
	out := []Org{}
	s.node.fsm.View(func(st *State) {
		for _, o := range st.Orgs {
			out = append(out, *o)
		}
	})
	slices.SortFunc(out, func(a, b Org) int { return strings.Compare(a.ID, b.ID) })
	writeJSON(w, http.StatusOK, map[string]any{"orgs": out})
}

// keyView is a key as the API shows it: never its hash.
type keyView struct {
	ID        string    `json:"id"`
	Org       string    `json:"org"`
	Name      string    `json:"name,omitempty"`
	Scopes    []string  `json:"scopes"`
	CIDRs     []string  `json:"cidrs,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
	// SuspendedAt and SuspendedFor: see APIKey.
	SuspendedAt  time.Time `json:"suspended_at,omitzero"`
	SuspendedFor string    `json:"suspended_for,omitempty"`
	// Defaults: see APIKey.
	Defaults apicustom.KeyDefaults `json:"defaults"`
	// LastUsedAt is when an ingest node last admitted the key, to within
	// about a minute.
	LastUsedAt time.Time `json:"last_used_at,omitzero"`
	// Key is the secret, present only in the answer that creates it.
	Key string `json:"key,omitempty"`
}

func viewOf(k *APIKey) keyView {
	return keyView{ID: k.ID, Org: k.Org, Name: k.Name, Scopes: k.Scopes, CIDRs: k.CIDRs,
		CreatedAt: k.CreatedAt, ExpiresAt: k.ExpiresAt, RevokedAt: k.RevokedAt, SuspendedAt: k.SuspendedAt, SuspendedFor: k.SuspendedFor,
		Defaults: k.Defaults}
}

// NewAPIKey makes a key: a public id (cnk_ and 12 letters or digits) and
// a secret, joined by a dot. It returns the key and the hash to store.
func NewAPIKey() (id, key, hash string, err error) {
	const alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	var b [12 + 32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", "", err
	}
	idb := make([]byte, 12)
	for i := range idb {
		idb[i] = alnum[int(b[i])%len(alnum)]
	}
	id = "cnk_" + string(idb)
	key = id + "." + base64.RawURLEncoding.EncodeToString(b[12:])
	return id, key, HashKey(key), nil
}

// HashKey is the stored form of a key.
func HashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func (s *Server) createKey(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	var b struct {
		Name      string                `json:"name"`
		Scopes    []string              `json:"scopes"`
		CIDRs     []string              `json:"cidrs"`
		ExpiresAt time.Time             `json:"expires_at"`
		Defaults  apicustom.KeyDefaults `json:"defaults"`
	}
	if err := decodeBody(body, &b); err != nil {
		s.fail(w, err)
		return
	}
	id, secret, hash, err := NewAPIKey()
	if err != nil {
		s.fail(w, err)
		return
	}
	if slices.Contains(b.Scopes, tenants.ScopeAdmin) && sc.role != RoleOwner && sc.role != RoleAdmin {
		s.refuse(w, r, http.StatusForbidden, "forbidden_role", "only an owner or admin can create a key with the admin scope")
		return
	}
	k := APIKey{ID: id, Org: sc.org, Name: b.Name, Hash: hash, Scopes: b.Scopes, CIDRs: b.CIDRs,
		CreatedAt: time.Now().UTC(), ExpiresAt: b.ExpiresAt, Defaults: b.Defaults}
	v := viewOf(&k)
	v.Key = secret
	s.write(w, r, body, &CreateKey{Key: k}, http.StatusCreated, v)
}

func (s *Server) listKeys(w http.ResponseWriter, _ *http.Request, sc scope, _ []byte) {
	out := ownedList(s, sc, keysOf, func(st *State, k *APIKey) keyView {
		v := viewOf(k)
		if at := st.KeyUse[k.ID]; at > 0 {
			v.LastUsedAt = time.Unix(at, 0).UTC()
		}
		return v
	})
	writeJSON(w, http.StatusOK, map[string]any{"keys": out})
}

func (s *Server) revokeKey(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	k, _ := owned(s, sc, keysOf, r.PathValue("key"))
	if slices.Contains(k.Scopes, tenants.ScopeAdmin) && sc.role != RoleOwner && sc.role != RoleAdmin {
		s.refuse(w, r, http.StatusForbidden, "forbidden_role", "only an owner or admin can revoke a key with the admin scope")
		return
	}
	s.write(w, r, body, &RevokeKey{ID: r.PathValue("key"), Org: sc.org, At: time.Now().UTC()}, http.StatusNoContent, nil)
}

// NodeState is what other tiers copy: the whole state at an index.
type NodeState struct {
	Index uint64 `json:"index"`
	State *State `json:"state"`
}

// maxWait bounds a blocking query.
const maxWait = 60 * time.Second

// state answers with the state once its index passes ?index= (a blocking
// query, as Consul's), or after ?wait= (default 30 s) with the state as it
// is; without ?index= at once.
func (s *Server) state(w http.ResponseWriter, r *http.Request, _ []byte) {
	q := r.URL.Query()
	if idx := q.Get("index"); idx != "" {
		after, err := strconv.ParseUint(idx, 10, 64)
		if err != nil {
			s.fail(w, invalid("index %q", idx))
			return
		}
		wait := 30 * time.Second
		if ws := q.Get("wait"); ws != "" {
			if wait, err = time.ParseDuration(ws); err != nil || wait <= 0 || wait > maxWait {
				s.fail(w, invalid("wait %q: a duration up to %s", ws, maxWait))
				return
			}
		}
		ctx, cancel := context.WithTimeout(r.Context(), wait)
		s.node.fsm.WaitShared(ctx, after)
		cancel()
	}
	var data []byte
	var err error
	var index uint64
	s.node.fsm.View(func(st *State) {
		// Encoded under the read lock: the maps are not copied.
		index = s.node.fsm.shared
		data, err = json.Marshal(map[string]any{"index": index, "state": st.shared()})
	})
	if err != nil {
		s.fail(w, err)
		return
	}
	w.Header().Set("Certnode-Index", strconv.FormatUint(index, 10))
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(data, '\n'))
}

func (s *Server) listPlans(w http.ResponseWriter, _ *http.Request, _ []byte) {
	out := []tenants.Plan{}
	s.node.fsm.View(func(st *State) {
		for id := range BuiltinPlans {
			if st.Plans[id] == nil {
				out = append(out, BuiltinPlans[id])
			}
		}
		for _, p := range st.Plans {
			out = append(out, *p)
		}
	})
	slices.SortFunc(out, func(a, b tenants.Plan) int { return strings.Compare(a.ID, b.ID) })
	writeJSON(w, http.StatusOK, map[string]any{"plans": out})
}

func (s *Server) putPlan(w http.ResponseWriter, r *http.Request, body []byte) {
	var p tenants.Plan
	if err := decodeBody(body, &p); err != nil {
		s.fail(w, err)
		return
	}
	if p.ID == "" {
		p.ID = r.PathValue("plan")
	}
	if p.ID != r.PathValue("plan") {
		s.fail(w, invalid("id %q differs from the path's %q", p.ID, r.PathValue("plan")))
		return
	}
	s.write(w, r, body, &PutPlan{Plan: p, At: time.Now().UTC()}, http.StatusOK, p)
}

// DefaultRotationOverlap is how long a rotated producer key keeps
// working beside its successor.
const DefaultRotationOverlap = 24 * time.Hour

// producerKeyView is a producer key as the API lists it: the secret
// appears only in the answer that creates it.
type producerKeyView struct {
	ID        string    `json:"id"`
	Org       string    `json:"org"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
	Secret    string    `json:"secret,omitempty"`
}

func producerViewOf(k *ProducerKey) producerKeyView {
	return producerKeyView{ID: k.ID, Org: k.Org, CreatedAt: k.CreatedAt, ExpiresAt: k.ExpiresAt, RevokedAt: k.RevokedAt}
}

// newProducerKey makes a producer key for org: an id pk_ and 16 random
// characters, and a 32-byte random secret.
func newProducerKey(org string, now time.Time) (ProducerKey, error) {
	var b [12 + 32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return ProducerKey{}, err
	}
	return ProducerKey{ID: "pk_" + base64.RawURLEncoding.EncodeToString(b[:12]), Org: org,
		Secret: base64.RawURLEncoding.EncodeToString(b[12:]), CreatedAt: now}, nil
}

func (s *Server) createProducerKey(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	if err := decodeBody(orEmptyObject(body), &struct{}{}); err != nil {
		s.fail(w, err)
		return
	}
	s.proposeProducerKey(w, r, body, sc.org, "", 0)
}

func (s *Server) rotateProducerKey(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	var b struct {
		Overlap string `json:"overlap"`
	}
	if err := decodeBody(orEmptyObject(body), &b); err != nil {
		s.fail(w, err)
		return
	}
	overlap := DefaultRotationOverlap
	if b.Overlap != "" {
		d, err := time.ParseDuration(b.Overlap)
		if err != nil || d < 0 || d > 30*24*time.Hour {
			s.fail(w, invalid("overlap %q: a duration from 0 to 720h", b.Overlap))
			return
		}
		overlap = d
	}
	s.proposeProducerKey(w, r, body, sc.org, r.PathValue("key"), overlap)
}

// proposeProducerKey creates a key for org; with rotate, the key it
// succeeds keeps working for overlap.
func (s *Server) proposeProducerKey(w http.ResponseWriter, r *http.Request, body []byte, org, rotate string, overlap time.Duration) {
	now := time.Now().UTC()
	k, err := newProducerKey(org, now)
	if err != nil {
		s.fail(w, err)
		return
	}
	c := &PutProducerKey{Key: k, Create: true, Rotate: rotate}
	if rotate != "" {
		c.RotateUntil = now.Add(overlap)
	}
	v := producerViewOf(&k)
	v.Secret = k.Secret
	s.write(w, r, body, c, http.StatusCreated, v)
}

func (s *Server) listProducerKeys(w http.ResponseWriter, _ *http.Request, sc scope, _ []byte) {
	out := ownedList(s, sc, producerKeysOf, func(_ *State, k *ProducerKey) producerKeyView { return producerViewOf(k) })
	writeJSON(w, http.StatusOK, map[string]any{"producer_keys": out})
}

func (s *Server) revokeProducerKey(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	k, ok := owned(s, sc, producerKeysOf, r.PathValue("key"))
	switch {
	case !ok:
		s.fail(w, fmt.Errorf("%w: producer key %q", ErrNotFound, r.PathValue("key")))
		return
	case !k.RevokedAt.IsZero():
		s.fail(w, fmt.Errorf("%w: producer key %q is already revoked", ErrConflict, k.ID))
		return
	}
	k.RevokedAt = time.Now().UTC()
	s.write(w, r, body, &PutProducerKey{Key: k}, http.StatusNoContent, nil)
}

// orEmptyObject lets a POST without a body mean {}.
func orEmptyObject(body []byte) []byte {
	if len(bytes.TrimSpace(body)) == 0 {
		return []byte("{}")
	}
	return body
}
