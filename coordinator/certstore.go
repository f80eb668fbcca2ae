package coordinator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The certificate store: the ACME accounts, certificates and issuance
// locks every ingest node shares (ingest adapts it to certmagic's
// Storage), so N nodes obtain a certificate once and serve the same one.
// Reads are linearizable (on the leader, after a barrier): a node that
// takes a lock right after another released it must see what the other
// stored. Private keys arrive sealed (internal/envelope) by the nodes;
// the store holds bytes.

// CertObject is one stored value.
type CertObject struct {
	Value    []byte    `json:"value"`
	Modified time.Time `json:"modified"`
}

// CertLock is a lease on a name: held by Token until Expires, unless
// renewed. A node that dies lets it lapse.
type CertLock struct {
	Token   string    `json:"token"`
	Expires time.Time `json:"expires"`
}

// Bounds of the store: keys are paths of certmagic's layout.
const (
	maxCertKey    = 1024
	maxCertValue  = 256 << 10
	maxCertLockTT = 10 * time.Minute
)

const (
	cmdPutCertObject     cmdType = 32
	cmdDeleteCertObjects cmdType = 33
	cmdLockCert          cmdType = 34
	cmdUnlockCert        cmdType = 35
)

func checkCertKey(k string) error {
	if k == "" || len(k) > maxCertKey || strings.HasPrefix(k, "/") || strings.HasSuffix(k, "/") || strings.Contains(k, "//") {
		return invalid("certificate store key %q", k)
	}
	return nil
}

// PutCertObject stores a value.
type PutCertObject struct {
	Key    string     `json:"key"`
	Object CertObject `json:"object"`
}

func (*PutCertObject) cmdType() cmdType { return cmdPutCertObject }
func (c *PutCertObject) validate(*State) error {
	if err := checkCertKey(c.Key); err != nil {
		return err
	}
	if len(c.Object.Value) > maxCertValue || c.Object.Modified.IsZero() {
		return invalid("a value of at most %d bytes and its time", maxCertValue)
	}
	return nil
}
func (c *PutCertObject) apply(s *State) {
	o := c.Object
	s.CertObjects[c.Key] = &o
}

// DeleteCertObjects deletes a key and every key under it (a "directory").
type DeleteCertObjects struct {
	Key string `json:"key"`
}

func (*DeleteCertObjects) cmdType() cmdType        { return cmdDeleteCertObjects }
func (c *DeleteCertObjects) validate(*State) error { return checkCertKey(c.Key) }
func (c *DeleteCertObjects) apply(s *State) {
	for k := range s.CertObjects {
		if k == c.Key || strings.HasPrefix(k, c.Key+"/") {
			delete(s.CertObjects, k)
		}
	}
}

// LockCert takes (or, with Renew, extends) a lease on Name for Token, from
// Now until Until. A lease another token holds refuses it until it
// expires.
type LockCert struct {
	Name  string    `json:"name"`
	Token string    `json:"token"`
	Now   time.Time `json:"now"`
	Until time.Time `json:"until"`
	Renew bool      `json:"renew,omitempty"`
}

// ErrLocked is a lease held by another.
var ErrLocked = fmt.Errorf("%w: locked", ErrConflict)

func (*LockCert) cmdType() cmdType { return cmdLockCert }
func (c *LockCert) validate(s *State) error {
	switch {
	case c.Name == "" || len(c.Name) > maxCertKey || len(c.Token) < 16 || len(c.Token) > 64:
		return invalid("lock name and token")
	case c.Now.IsZero() || !c.Until.After(c.Now) || c.Until.Sub(c.Now) > maxCertLockTT:
		return invalid("lock time and a lease of up to %s", maxCertLockTT)
	}
	l := s.CertLocks[c.Name]
	switch {
	case c.Renew && (l == nil || l.Token != c.Token):
		return fmt.Errorf("%w: the lease on %q lapsed", ErrLocked, c.Name)
	case !c.Renew && l != nil && l.Token != c.Token && c.Now.Before(l.Expires):
		return ErrLocked
	}
	return nil
}
func (c *LockCert) apply(s *State) {
	// Lapsed leases of other names go with any lock change, so names once
	// locked do not pile up.
	for n, l := range s.CertLocks {
		if !c.Now.Before(l.Expires) {
			delete(s.CertLocks, n)
		}
	}
	s.CertLocks[c.Name] = &CertLock{Token: c.Token, Expires: c.Until}
}

// UnlockCert releases a lease Token holds; another's is left alone.
type UnlockCert struct {
	Name  string `json:"name"`
	Token string `json:"token"`
}

func (*UnlockCert) cmdType() cmdType { return cmdUnlockCert }
func (c *UnlockCert) validate(s *State) error {
	if l := s.CertLocks[c.Name]; l == nil || l.Token != c.Token {
		return fmt.Errorf("%w: lock %q is not held by this token", ErrNotFound, c.Name)
	}
	return nil
}
func (c *UnlockCert) apply(s *State) { delete(s.CertLocks, c.Name) }

// CertKeyInfo describes a key: a stored value (Terminal) or a prefix of
// some ("directory").
type CertKeyInfo struct {
	Key      string    `json:"key"`
	Modified time.Time `json:"modified,omitzero"`
	Size     int64     `json:"size"`
	Terminal bool      `json:"terminal"`
}

// certInfo finds key in the store.
func certInfo(st *State, key string) (CertKeyInfo, bool) {
	if o := st.CertObjects[key]; o != nil {
		return CertKeyInfo{Key: key, Modified: o.Modified, Size: int64(len(o.Value)), Terminal: true}, true
	}
	for k := range st.CertObjects {
		if strings.HasPrefix(k, key+"/") {
			return CertKeyInfo{Key: key}, true
		}
	}
	return CertKeyInfo{}, false
}

// certList is the keys directly under prefix (full keys), or all keys
// under it when recursive; ok is false when nothing is.
func certList(st *State, prefix string, recursive bool) ([]string, bool) {
	seen := map[string]bool{}
	for k := range st.CertObjects {
		rest, ok := strings.CutPrefix(k, prefix+"/")
		if prefix == "" {
			rest, ok = k, true
		}
		if !ok {
			continue
		}
		if !recursive {
			rest, _, _ = strings.Cut(rest, "/")
		}
		if prefix != "" {
			rest = prefix + "/" + rest
		}
		seen[rest] = true
	}
	if recursive {
		// The "directories" on the way are keys too.
		for k := range seen {
			for d := k; ; {
				i := strings.LastIndexByte(d, '/')
				if i <= len(prefix) {
					break
				}
				d = d[:i]
				seen[d] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	slices.Sort(out)
	return out, len(out) > 0
}

// certStore answers the nodes' store requests (/v1/node/certs/...): reads
// on the leader after a barrier, writes through the log.
func (s *Server) certStore(w http.ResponseWriter, r *http.Request, body []byte) {
	q := r.URL.Query()
	key := q.Get("key")
	var c Command
	switch r.Method + " " + r.PathValue("op") {
	case "GET object", "GET stat", "GET list":
		if err := s.node.Consistent(); err != nil {
			s.fail(w, err)
			return
		}
		var v any
		found := false
		s.node.fsm.View(func(st *State) {
			switch r.PathValue("op") {
			case "object":
				if o := st.CertObjects[key]; o != nil {
					v, found = o, true
				}
			case "stat":
				v, found = certInfo(st, key)
			case "list":
				var keys []string
				keys, found = certList(st, key, q.Get("recursive") == "true")
				v = map[string]any{"keys": keys}
			}
		})
		if !found {
			s.fail(w, fmt.Errorf("%w: %q", ErrNotFound, key))
			return
		}
		writeJSON(w, http.StatusOK, v)
		return
	case "PUT object":
		p := &PutCertObject{Key: key}
		if err := decodeBody(body, &p.Object); err != nil {
			s.fail(w, err)
			return
		}
		c = p
	case "DELETE object":
		c = &DeleteCertObjects{Key: key}
	case "POST lock":
		var b struct {
			Token string `json:"token"`
			TTLMs int64  `json:"ttl_ms"`
			Renew bool   `json:"renew"`
		}
		if err := decodeBody(body, &b); err != nil {
			s.fail(w, err)
			return
		}
		now := time.Now().UTC()
		c = &LockCert{Name: key, Token: b.Token, Now: now, Until: now.Add(time.Duration(b.TTLMs) * time.Millisecond), Renew: b.Renew}
	case "DELETE lock":
		c = &UnlockCert{Name: key, Token: q.Get("token")}
	default:
		writeError(w, http.StatusNotFound, "not_found", "no such store operation")
		return
	}
	if _, err := s.node.Propose(c); err != nil {
		if errors.Is(err, ErrLocked) {
			writeError(w, http.StatusConflict, "locked", err.Error())
			return
		}
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// CertStore is the client of the certificate store, for ingest nodes.
type CertStore struct{ r *Replica }

// CertStore returns the store of the cluster this replica follows.
func (r *Replica) CertStore() *CertStore { return &CertStore{r: r} }

// ErrCertNotFound is a key that is not in the store (fs.ErrNotExist, as
// certmagic's Storage wants it).
var ErrCertNotFound = fmt.Errorf("not in the certificate store: %w", fs.ErrNotExist)

// Load reads a value.
func (c *CertStore) Load(ctx context.Context, key string) ([]byte, error) {
	var o CertObject
	if err := c.r.nodeCall(ctx, "GET", "object", url.Values{"key": {key}}, nil, &o); err != nil {
		return nil, err
	}
	return o.Value, nil
}

// Store writes a value.
func (c *CertStore) Store(ctx context.Context, key string, value []byte) error {
	return c.r.nodeCall(ctx, "PUT", "object", url.Values{"key": {key}}, CertObject{Value: value, Modified: time.Now().UTC()}, nil)
}

// Delete removes a key and everything under it.
func (c *CertStore) Delete(ctx context.Context, key string) error {
	return c.r.nodeCall(ctx, "DELETE", "object", url.Values{"key": {key}}, nil, nil)
}

// Stat describes a key: a value (terminal) or a "directory".
func (c *CertStore) Stat(ctx context.Context, key string) (modified time.Time, size int64, terminal bool, err error) {
	var ki CertKeyInfo
	err = c.r.nodeCall(ctx, "GET", "stat", url.Values{"key": {key}}, nil, &ki)
	return ki.Modified, ki.Size, ki.Terminal, err
}

// List names the keys under prefix.
func (c *CertStore) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	var b struct {
		Keys []string `json:"keys"`
	}
	err := c.r.nodeCall(ctx, "GET", "list", url.Values{"key": {prefix}, "recursive": {strconv.FormatBool(recursive)}}, nil, &b)
	return b.Keys, err
}

// Lock takes (renew: extends) the lease on name for token; false while
// another holds it, or, renewing, once token's lease lapsed.
func (c *CertStore) Lock(ctx context.Context, name, token string, ttl time.Duration, renew bool) (bool, error) {
	err := c.r.nodeCall(ctx, "POST", "lock", url.Values{"key": {name}},
		map[string]any{"token": token, "ttl_ms": ttl.Milliseconds(), "renew": renew}, nil)
	if errors.Is(err, ErrLocked) {
		return false, nil
	}
	return err == nil, err
}

// Unlock releases the lease token holds on name.
func (c *CertStore) Unlock(ctx context.Context, name, token string) error {
	return c.r.nodeCall(ctx, "DELETE", "lock", url.Values{"key": {name}, "token": {token}}, nil, nil)
}

// nodeCall sends a store request to the cluster: 404 is
// ErrCertNotFound, 409 locked is ErrLocked.
func (r *Replica) nodeCall(ctx context.Context, method, op string, q url.Values, in, out any) error {
	_, err := r.node().call(ctx, method, "/v1/node/certs/"+op+"?"+q.Encode(), in, out)
	var se *StatusError
	switch {
	case !errors.As(err, &se):
	case se.Status == http.StatusNotFound:
		return ErrCertNotFound
	case se.Status == http.StatusConflict && bytes.Contains(se.Body, []byte(`"locked"`)):
		return ErrLocked
	}
	return err
}
