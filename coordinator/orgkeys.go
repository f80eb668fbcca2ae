package coordinator

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/certnode/certnode/schemas"
)

// An organization may sign its receipts with keys of its own. The
// coordinator has no HSM: it holds each organization's key metadata and
// asks for keys; workers, which have the HSM, make them:
//
//  1. An owner or admin turns the organization's keys on (or rotates, or
//     the schedule does): the state gets a pending request.
//  2. Every worker with a key maker sees it in its copy of the state and
//     makes a key in the HSM; the first to report it (InstallOrgKey)
//     installs it, and the request is gone, so a later report is refused
//     and its worker destroys the key it made: two workers never install
//     two keys for one request.
//  3. The key is published at once (every JWKS and /v1/verify know it) and
//     signs from ActivatesAt, a delay later (Config.OrgKeyActivationDelay),
//     so verifiers' cached JWKS hold it before the first receipt needs it
//     and every worker has opened it before it is needed. A worker that
//     still cannot open the active key retries the record; it never signs
//     an organization's request with another key.
//  4. The key it replaces retires when it activates and stays published,
//     so receipts it signed keep verifying.

const (
	cmdSetOrgKeySettings cmdType = 60
	cmdRequestOrgKey     cmdType = 61
	cmdInstallOrgKey     cmdType = 62
)

// Bounds and timings of organizations' keys.
const (
	// MaxOrgKeys bounds an organization's keys (every one stays
	// published); a rotation past it is refused.
	MaxOrgKeys = 100
	// OrgKeyRequestTimeout is how long a request waits for a worker
	// before another may replace it (a rotation, or the schedule).
	OrgKeyRequestTimeout = 10 * time.Minute
	// DefaultOrgKeyActivationDelay is the time between a key's
	// publication and its first signature: the JWKS's cache lifetime
	// (max-age=300), so no verifier's cached copy lacks it.
	DefaultOrgKeyActivationDelay = 5 * time.Minute
	// orgKeyScheduleTick is how often the leader looks for keys due for
	// their scheduled rotation.
	orgKeyScheduleTick = 30 * time.Second
)

// Why a key was asked for.
const (
	OrgKeyReasonEnable    = "enable"
	OrgKeyReasonManual    = "manual"
	OrgKeyReasonScheduled = "scheduled"
)

var orgKeyRequestPat = regexp.MustCompile(`^okr_[a-z2-7]{1,40}$`)

// OrgKeySettings are an organization's choices for its own keys.
type OrgKeySettings struct {
	// Enabled: the organization's receipts are signed with its own keys
	// (from when the first one activates). Off: with the service's keys;
	// its keys retire and stay published.
	Enabled bool `json:"enabled"`
	// Alg is the algorithm of the keys made from now on: ES256 or EdDSA.
	Alg string `json:"alg"`
	// RotationDays rotates the key this many days after it activated (0:
	// on demand only).
	RotationDays int `json:"rotation_days,omitzero"`
}

func (o *OrgKeySettings) check() error {
	var errs []error
	if o.Alg != schemas.AlgES256 && o.Alg != schemas.AlgEdDSA {
		errs = append(errs, invalid("alg %q: want %s or %s", o.Alg, schemas.AlgES256, schemas.AlgEdDSA))
	}
	if o.RotationDays < 0 || o.RotationDays > 3650 {
		errs = append(errs, invalid("rotation_days must be 0 (on demand) to 3650"))
	}
	return errors.Join(errs...)
}

// OrgSigningKeys is an organization's key ring: its settings, every key it
// has had (oldest first) and the request a worker is to answer.
type OrgSigningKeys struct {
	Org       string                 `json:"org"`
	Settings  OrgKeySettings         `json:"settings"`
	Keys      []schemas.OrgKey       `json:"keys"`
	Pending   *schemas.OrgKeyRequest `json:"pending,omitempty"`
	UpdatedAt time.Time              `json:"updated_at"`
}

// clone copies the ring so a command can change it: readers may hold the
// one in the state.
func (k *OrgSigningKeys) clone() *OrgSigningKeys {
	c := *k
	c.Keys = slices.Clone(k.Keys)
	if k.Pending != nil {
		p := *k.Pending
		c.Pending = &p
	}
	return &c
}

// live reports whether a key signs now or will: the ring has one that is
// not retired at t.
func (k *OrgSigningKeys) live(t time.Time) bool {
	return slices.ContainsFunc(k.Keys, func(key schemas.OrgKey) bool { return key.State(t) != schemas.OrgKeyRetired })
}

// canRequest says why a new request may not replace the ring's at t.
func (k *OrgSigningKeys) canRequest(t time.Time) error {
	switch {
	case !k.Settings.Enabled:
		return fmt.Errorf("%w: the organization's own signing keys are off: turn them on first", ErrConflict)
	case k.Pending != nil && t.Sub(k.Pending.RequestedAt) < OrgKeyRequestTimeout:
		return fmt.Errorf("%w: a key is being made (request %s of %s)", ErrConflict, k.Pending.ID, k.Pending.RequestedAt.Format(time.RFC3339))
	case len(k.Keys) >= MaxOrgKeys:
		return fmt.Errorf("%w: an organization has at most %d signing keys", ErrConflict, MaxOrgKeys)
	}
	return nil
}

// retire ends the signing of every key not retired by at.
func (k *OrgSigningKeys) retire(at time.Time) {
	for i := range k.Keys {
		if r := k.Keys[i].RetiredAt; r.IsZero() || r.After(at) {
			k.Keys[i].RetiredAt = at
		}
	}
}

func checkRequest(r *schemas.OrgKeyRequest, org string) error {
	switch {
	case !orgKeyRequestPat.MatchString(r.ID):
		return invalid("request id %q", r.ID)
	case r.Org != org:
		return invalid("request of organization %q, want %q", r.Org, org)
	case r.Alg != schemas.AlgES256 && r.Alg != schemas.AlgEdDSA:
		return invalid("request alg %q", r.Alg)
	case r.Reason != OrgKeyReasonEnable && r.Reason != OrgKeyReasonManual && r.Reason != OrgKeyReasonScheduled:
		return invalid("request reason %q", r.Reason)
	case r.RequestedAt.IsZero():
		return invalid("requested_at is required")
	}
	return nil
}

// ringOf is the organization's key ring, or a new empty one.
func ringOf(s *State, org string) (*OrgSigningKeys, error) {
	if _, ok := s.Orgs[org]; !ok {
		return nil, fmt.Errorf("%w: organization %q", ErrNotFound, org)
	}
	if k := s.SigningKeys[org]; k != nil {
		return k.clone(), nil
	}
	return &OrgSigningKeys{Org: org, Settings: OrgKeySettings{Alg: schemas.AlgES256}, Keys: []schemas.OrgKey{}}, nil
}

// SetOrgKeySettings changes an organization's key settings. Turning them
// off retires its keys at At and drops a pending request; Request asks
// for a key in the same entry (turning them on with no live key).
type SetOrgKeySettings struct {
	Meta     `json:"meta,omitzero"`
	Org      string                 `json:"org"`
	Settings OrgKeySettings         `json:"settings"`
	Request  *schemas.OrgKeyRequest `json:"request,omitempty"`
	At       time.Time              `json:"at"`
}

func (*SetOrgKeySettings) cmdType() cmdType { return cmdSetOrgKeySettings }
func (c *SetOrgKeySettings) next(s *State) (*OrgSigningKeys, error) {
	if c.At.IsZero() {
		return nil, invalid("at is required")
	}
	if err := c.Settings.check(); err != nil {
		return nil, err
	}
	k, err := ringOf(s, c.Org)
	if err != nil {
		return nil, err
	}
	k.Settings, k.UpdatedAt = c.Settings, c.At
	if !c.Settings.Enabled {
		if c.Request != nil {
			return nil, invalid("a key is asked for only with the keys on")
		}
		k.retire(c.At)
		k.Pending = nil
		return k, nil
	}
	if c.Request != nil {
		if err := checkRequest(c.Request, c.Org); err != nil {
			return nil, err
		}
		if err := k.canRequest(c.At); err != nil {
			return nil, err
		}
		r := *c.Request
		k.Pending = &r
	}
	return k, nil
}
func (c *SetOrgKeySettings) validate(s *State) error { _, err := c.next(s); return err }
func (c *SetOrgKeySettings) apply(s *State) {
	k, _ := c.next(s)
	s.SigningKeys[c.Org] = k
}
func (c *SetOrgKeySettings) audit() (string, string, string) {
	return "signing_keys.settings", c.Org, c.Org
}

// RequestOrgKey asks for a new key for an organization whose keys are on:
// a rotation, on demand or on schedule.
type RequestOrgKey struct {
	Meta    `json:"meta,omitzero"`
	Request schemas.OrgKeyRequest `json:"request"`
}

func (*RequestOrgKey) cmdType() cmdType { return cmdRequestOrgKey }
func (c *RequestOrgKey) next(s *State) (*OrgSigningKeys, error) {
	if err := checkRequest(&c.Request, c.Request.Org); err != nil {
		return nil, err
	}
	k, err := ringOf(s, c.Request.Org)
	if err != nil {
		return nil, err
	}
	if err := k.canRequest(c.Request.RequestedAt); err != nil {
		return nil, err
	}
	r := c.Request
	k.Pending, k.UpdatedAt = &r, r.RequestedAt
	return k, nil
}
func (c *RequestOrgKey) validate(s *State) error { _, err := c.next(s); return err }
func (c *RequestOrgKey) apply(s *State) {
	k, _ := c.next(s)
	s.SigningKeys[c.Request.Org] = k
}
func (c *RequestOrgKey) audit() (string, string, string) {
	return "signing_key.request", c.Request.Org, c.Request.ID
}

// InstallOrgKey records the key a worker made for a request. Only the
// pending request's first report installs: a later one (another worker's,
// or one for a request replaced meanwhile) is refused with ErrConflict,
// and its worker destroys its key. The same report again (a retry after a
// lost answer) changes nothing and succeeds, so a worker never destroys a
// key that was installed.
type InstallOrgKey struct {
	Meta `json:"meta,omitzero"`
	Org  string         `json:"org"`
	Key  schemas.OrgKey `json:"key"`
}

func (*InstallOrgKey) cmdType() cmdType { return cmdInstallOrgKey }

// next is the ring with the key, or (nil, nil) when it is there already.
func (c *InstallOrgKey) next(s *State) (*OrgSigningKeys, error) {
	key := c.Key
	if err := key.Check(); err != nil {
		return nil, invalid("%v", err)
	}
	if key.CreatedAt.IsZero() || key.ActivatesAt.Before(key.CreatedAt) || !key.RetiredAt.IsZero() {
		return nil, invalid("created_at is required, activates_at not before it, and retired_at absent")
	}
	k, err := ringOf(s, c.Org)
	if err != nil {
		return nil, err
	}
	for org, other := range s.SigningKeys {
		if org != c.Org && slices.ContainsFunc(other.Keys, func(o schemas.OrgKey) bool { return o.Kid == key.Kid }) {
			return nil, fmt.Errorf("%w: key %s is another organization's", ErrConflict, key.Kid)
		}
	}
	if i := slices.IndexFunc(k.Keys, func(o schemas.OrgKey) bool { return o.Kid == key.Kid }); i >= 0 {
		if k.Keys[i].Request == key.Request && k.Keys[i].Source == key.Source {
			return nil, nil
		}
		return nil, fmt.Errorf("%w: key %s is installed already", ErrConflict, key.Kid)
	}
	p := k.Pending
	switch {
	case p == nil || p.ID != key.Request:
		return nil, fmt.Errorf("%w: request %q is not pending (another worker's key was installed, or the request was replaced)", ErrConflict, key.Request)
	case key.JWK.KeyAlg() != p.Alg:
		return nil, invalid("the request is for %s, the key is %s", p.Alg, key.JWK.KeyAlg())
	}
	// The keys before it sign until it activates, then retire.
	for i := range k.Keys {
		if r := k.Keys[i].RetiredAt; r.IsZero() || r.After(key.ActivatesAt) {
			k.Keys[i].RetiredAt = key.ActivatesAt
		}
	}
	pub, _ := key.JWK.PublicKey()
	key.JWK, _ = schemas.NewJWK(pub) // published as rebuilt: kid, alg, use; nothing else
	k.Keys = append(k.Keys, key)
	k.Pending, k.UpdatedAt = nil, key.CreatedAt
	return k, nil
}
func (c *InstallOrgKey) validate(s *State) error { _, err := c.next(s); return err }
func (c *InstallOrgKey) apply(s *State) {
	if k, _ := c.next(s); k != nil {
		s.SigningKeys[c.Org] = k
	}
}
func (c *InstallOrgKey) audit() (string, string, string) {
	return "signing_key.install", c.Org, c.Key.Kid
}

// dueOrgKeyRequests are the scheduled rotations due at now: keys on, a
// rotation period, nothing pending (or a request left unanswered past
// OrgKeyRequestTimeout), and the newest key activated that many days ago.
func dueOrgKeyRequests(s *State, now time.Time) []*RequestOrgKey {
	var out []*RequestOrgKey
	for _, org := range slices.Sorted(maps.Keys(s.SigningKeys)) {
		k := s.SigningKeys[org]
		if k.Settings.RotationDays == 0 || len(k.Keys) == 0 || k.canRequest(now) != nil {
			continue
		}
		newest := k.Keys[len(k.Keys)-1]
		if newest.State(now) == schemas.OrgKeyRetired { // turned off and on: the next request is the owner's
			continue
		}
		if now.Before(newest.ActivatesAt.Add(time.Duration(k.Settings.RotationDays) * 24 * time.Hour)) {
			continue
		}
		id, err := newID("okr_")
		if err != nil {
			continue
		}
		out = append(out, &RequestOrgKey{Request: schemas.OrgKeyRequest{Org: org, ID: id, Alg: k.Settings.Alg,
			Reason: OrgKeyReasonScheduled, RequestedAt: now}})
	}
	return out
}

// rotateOrgKeys asks for the keys due for their scheduled rotation, while
// this node leads.
func (s *Server) rotateOrgKeys(ctx context.Context) {
	tick := time.NewTicker(orgKeyScheduleTick)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if s.node.IsLeader() {
			s.requestDueOrgKeys(time.Now().UTC())
		}
	}
}

// requestDueOrgKeys proposes the rotations due at now.
func (s *Server) requestDueOrgKeys(now time.Time) {
	var due []*RequestOrgKey
	s.node.fsm.View(func(st *State) { due = dueOrgKeyRequests(st, now) })
	for _, c := range due {
		c.Meta = Meta{At: now, By: Actor{Kind: ActorNode, ID: s.node.cfg.ID}}
		if _, err := s.node.Propose(c); err != nil {
			s.log.Warn("scheduled signing key rotation not asked for", "org", c.Request.Org, "err", err)
			continue
		}
		s.log.Info("scheduled signing key rotation asked for", "org", c.Request.Org, "request", c.Request.ID)
	}
}

// orgKeyView is a key as the organization's users see it: its source (an
// HSM label) is the operator's business.
type orgKeyView struct {
	Kid         string      `json:"kid"`
	Alg         string      `json:"alg"`
	State       string      `json:"state"`
	JWK         schemas.JWK `json:"jwk"`
	CreatedAt   time.Time   `json:"created_at"`
	ActivatesAt time.Time   `json:"activates_at"`
	RetiredAt   time.Time   `json:"retired_at,omitzero"`
}

// signingKeysView is an organization's key ring at a time: newest key
// first.
type signingKeysView struct {
	Org       string                 `json:"org"`
	Settings  OrgKeySettings         `json:"settings"`
	ActiveKid string                 `json:"active_kid,omitempty"`
	Pending   *schemas.OrgKeyRequest `json:"pending,omitempty"`
	Keys      []orgKeyView           `json:"keys"`
}

func signingKeysViewOf(k *OrgSigningKeys, now time.Time) signingKeysView {
	v := signingKeysView{Org: k.Org, Settings: k.Settings, Pending: k.Pending, Keys: []orgKeyView{}}
	for i := len(k.Keys) - 1; i >= 0; i-- {
		key := k.Keys[i]
		st := key.State(now)
		if st == schemas.OrgKeyActive && v.ActiveKid == "" {
			v.ActiveKid = key.Kid
		}
		v.Keys = append(v.Keys, orgKeyView{Kid: key.Kid, Alg: key.JWK.KeyAlg(), State: st, JWK: key.JWK,
			CreatedAt: key.CreatedAt, ActivatesAt: key.ActivatesAt, RetiredAt: key.RetiredAt})
	}
	return v
}

// signingKeys copies the organization's ring out of the state.
func (s *Server) signingKeys(org string) *OrgSigningKeys {
	var k *OrgSigningKeys
	s.node.fsm.View(func(st *State) { k, _ = ringOf(st, org) })
	return k
}

func (s *Server) getSigningKeys(w http.ResponseWriter, _ *http.Request, sc scope, _ []byte) {
	writeJSON(w, http.StatusOK, signingKeysViewOf(s.signingKeys(sc.org), time.Now().UTC()))
}

// orgJWKS is the organization's own keys as a JWKS (the service's keys,
// which the coordinator does not hold, are at /.well-known/jwks.json).
func (s *Server) orgJWKS(w http.ResponseWriter, _ *http.Request, sc scope, _ []byte) {
	k := s.signingKeys(sc.org)
	w.Header().Set("Cache-Control", "private, max-age=60")
	writeJSON(w, http.StatusOK, schemas.JWKS{Keys: schemas.NewOrgKeyRing(sc.org, k.Keys).JWKS(time.Now())})
}

func (s *Server) putSigningKeySettings(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	var b struct {
		Enabled      *bool  `json:"enabled"`
		Alg          string `json:"alg"`
		RotationDays int    `json:"rotation_days"`
	}
	if err := decodeBody(body, &b); err != nil {
		s.fail(w, err)
		return
	}
	if b.Enabled == nil {
		s.fail(w, invalid("enabled is required"))
		return
	}
	if b.Alg == "" {
		b.Alg = schemas.AlgES256
	}
	now := time.Now().UTC()
	c := &SetOrgKeySettings{Org: sc.org, Settings: OrgKeySettings{Enabled: *b.Enabled, Alg: b.Alg, RotationDays: b.RotationDays}, At: now}
	k := s.signingKeys(sc.org)
	// Turned on with no key that signs or will: one is asked for, unless
	// a worker is making one now.
	if fresh := k.Pending != nil && now.Sub(k.Pending.RequestedAt) < OrgKeyRequestTimeout; c.Settings.Enabled && !k.live(now) && !fresh {
		id, err := newID("okr_")
		if err != nil {
			s.fail(w, err)
			return
		}
		c.Request = &schemas.OrgKeyRequest{Org: sc.org, ID: id, Alg: b.Alg, Reason: OrgKeyReasonEnable, RequestedAt: now}
	}
	s.writeSigningKeys(w, r, body, c, http.StatusOK, now)
}

func (s *Server) rotateSigningKey(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	if err := decodeBody(orEmptyObject(body), &struct{}{}); err != nil {
		s.fail(w, err)
		return
	}
	id, err := newID("okr_")
	if err != nil {
		s.fail(w, err)
		return
	}
	now := time.Now().UTC()
	k := s.signingKeys(sc.org)
	c := &RequestOrgKey{Request: schemas.OrgKeyRequest{Org: sc.org, ID: id, Alg: k.Settings.Alg, Reason: OrgKeyReasonManual, RequestedAt: now}}
	s.writeSigningKeys(w, r, body, c, http.StatusAccepted, now)
}

// writeSigningKeys commits c and answers with the ring as c leaves it.
func (s *Server) writeSigningKeys(w http.ResponseWriter, r *http.Request, body []byte, c interface {
	Command
	next(*State) (*OrgSigningKeys, error)
}, status int, now time.Time) {
	var k *OrgSigningKeys
	var err error
	s.node.fsm.View(func(st *State) { k, err = c.next(st) })
	if err != nil {
		s.fail(w, err)
		return
	}
	s.write(w, r, body, c, status, signingKeysViewOf(k, now))
}

// OrgKeyReport is what a worker reports of the key it made: the request it
// answers, the key's public JWK and where its private half is.
type OrgKeyReport struct {
	Request string      `json:"request"`
	Kid     string      `json:"kid"`
	JWK     schemas.JWK `json:"jwk"`
	Source  string      `json:"source"`
}

// installOrgKey takes a worker's report of a key it made; a second report
// for a request gets 409, and its worker destroys its key.
func (s *Server) installOrgKey(w http.ResponseWriter, r *http.Request, body []byte) {
	c, err := s.installCommand(r.PathValue("org"), body, time.Now().UTC())
	if err != nil {
		s.fail(w, err)
		return
	}
	s.write(w, r, body, c, http.StatusNoContent, nil)
}

// installCommand decodes a worker's report into the command that installs
// it at now, activating after the configured delay, checked against the
// state.
func (s *Server) installCommand(org string, body []byte, now time.Time) (*InstallOrgKey, error) {
	c, err := reportCommand(org, body, now, s.node.cfg.OrgKeyActivationDelay)
	if err != nil {
		return nil, err
	}
	s.node.fsm.View(func(st *State) { _, err = c.next(st) })
	return c, err
}

// reportCommand decodes a worker's report (untrusted bytes: every member
// is checked by InstallOrgKey.next).
func reportCommand(org string, body []byte, now time.Time, delay time.Duration) (*InstallOrgKey, error) {
	var rep OrgKeyReport
	if err := decodeBody(body, &rep); err != nil {
		return nil, err
	}
	key := schemas.OrgKey{Kid: rep.Kid, JWK: rep.JWK, Source: rep.Source, Request: rep.Request,
		CreatedAt: now, ActivatesAt: now.Add(delay)}
	return &InstallOrgKey{Org: org, Key: key}, nil
}

// replicaOrgKeys is what the other tiers need of the organizations' keys,
// indexed once per state.
type replicaOrgKeys struct {
	rings   map[string]*schemas.OrgKeyRing // by organization
	kidOrg  map[string]string              // every organization key's kid -> its organization
	pending []schemas.OrgKeyRequest
	updated map[string]time.Time // each ring's UpdatedAt, to reuse a decoded ring
}

// newReplicaOrgKeys indexes the state's key rings, reusing the decoded
// rings of prev that did not change.
func newReplicaOrgKeys(rings map[string]*OrgSigningKeys, prev *replicaOrgKeys) replicaOrgKeys {
	out := replicaOrgKeys{rings: map[string]*schemas.OrgKeyRing{}, kidOrg: map[string]string{}, updated: map[string]time.Time{}}
	for org, k := range rings {
		if k.Pending != nil {
			out.pending = append(out.pending, *k.Pending)
		}
		if len(k.Keys) == 0 {
			continue
		}
		ring := (*schemas.OrgKeyRing)(nil)
		if prev != nil && prev.updated[org].Equal(k.UpdatedAt) {
			ring = prev.rings[org]
		}
		if ring == nil {
			ring = schemas.NewOrgKeyRing(org, k.Keys)
		}
		out.rings[org], out.updated[org] = ring, k.UpdatedAt
		for _, key := range k.Keys {
			out.kidOrg[key.Kid] = org
		}
	}
	slices.SortFunc(out.pending, func(a, b schemas.OrgKeyRequest) int { return strings.Compare(a.Org, b.Org) })
	return out
}

// OrgKeyRing is an organization's own keys (nil: it has none). A stale
// copy still answers: keys do not expire, and an organization whose copy
// went stale must not silently fall back to the service's key.
func (r *Replica) OrgKeyRing(org string) *schemas.OrgKeyRing {
	if st := r.state.Load(); st != nil {
		return st.orgKeys.rings[org]
	}
	return nil
}

// OrgKeyRings are every organization's own keys.
func (r *Replica) OrgKeyRings() []*schemas.OrgKeyRing {
	st := r.state.Load()
	if st == nil {
		return nil
	}
	out := make([]*schemas.OrgKeyRing, 0, len(st.orgKeys.rings))
	for _, ring := range st.orgKeys.rings {
		out = append(out, ring)
	}
	slices.SortFunc(out, func(a, b *schemas.OrgKeyRing) int { return strings.Compare(a.Org, b.Org) })
	return out
}

// KidOrg names the organization whose own key kid is.
func (r *Replica) KidOrg(kid string) (string, bool) {
	if st := r.state.Load(); st != nil {
		org, ok := st.orgKeys.kidOrg[kid]
		return org, ok
	}
	return "", false
}

// PendingOrgKeys are the key requests no worker has answered yet.
func (r *Replica) PendingOrgKeys() []schemas.OrgKeyRequest {
	if st := r.state.Load(); st != nil {
		return st.orgKeys.pending
	}
	return nil
}

// InstallOrgKey reports the key a worker made for a request. installed
// is false, with no error, when another report won (or the request is
// gone): the caller destroys its key. An error leaves the outcome unknown:
// report again.
func (r *Replica) InstallOrgKey(ctx context.Context, org, request string, key schemas.OrgKey) (installed bool, err error) {
	status, err := r.node().call(ctx, "POST", "/v1/node/orgs/"+url.PathEscape(org)+"/signing-keys",
		OrgKeyReport{Request: request, Kid: key.Kid, JWK: key.JWK, Source: key.Source}, nil)
	switch {
	case status == http.StatusNoContent:
		return true, nil
	case status == http.StatusConflict:
		return false, nil
	}
	return false, err
}
