package coordinator

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/go-json-experiment/json"
)

// A write retried after a lost answer (a leader that died after
// committing, a dropped connection) must not happen twice: a client that
// sends an Idempotency-Key gets, for IdempotencyTTL, the first answer
// again instead of a second key or a 409. The answer is kept with the
// command that made it, in the coordinator's own state (never in the copy
// other tiers read), sealed with a key derived from the client's
// Idempotency-Key, which is never stored: an answer that shows a secret
// once cannot be read from the log or a snapshot.
const (
	IdempotencyHeader = "Idempotency-Key"
	IdempotencyTTL    = 24 * time.Hour
	replayedHeader    = "Idempotent-Replayed"
)

// IdemRecord is a kept answer.
type IdemRecord struct {
	Key     string    `json:"key"`     // hash of the caller and their key
	Request string    `json:"request"` // hash of method, path and body
	Status  int       `json:"status"`
	Sealed  []byte    `json:"sealed,omitempty"` // the answer's body, AES-GCM, nonce first
	At      time.Time `json:"at"`
}

func hashParts(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:%s", len(p), p)
	}
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil))
}

// idemKeys are the record key, request hash and sealing key of r, or ""
// when r carries no Idempotency-Key.
func idemKeys(r *http.Request, body []byte) (key, request string, seal []byte) {
	k := r.Header.Get(IdempotencyHeader)
	p := principalOf(r)
	if k == "" || p == nil || p.actor.Kind == ActorAnonymous {
		return "", "", nil
	}
	m := hmac.New(sha256.New, []byte(k))
	m.Write([]byte("certnode idempotency seal v1\x00" + p.actor.Kind + "\x00" + p.actor.ID))
	return hashParts(p.actor.Kind, p.actor.ID, k), hashParts(r.Method, r.URL.Path, string(body)), m.Sum(nil)
}

func sealBody(key, body []byte) ([]byte, error) {
	g, err := gcm(key)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, g.NonceSize(), g.NonceSize()+len(body)+g.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return g.Seal(nonce, nonce, body, nil), nil
}

func openBody(key, sealed []byte) ([]byte, error) {
	g, err := gcm(key)
	if err != nil {
		return nil, err
	}
	if len(sealed) < g.NonceSize() {
		return nil, errors.New("sealed answer too short")
	}
	return g.Open(nil, sealed[:g.NonceSize()], sealed[g.NonceSize():], nil)
}

func gcm(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// replay answers a retried write from its kept answer, and refuses a key
// reused for another request. It reports whether it answered.
func (s *Server) replay(w http.ResponseWriter, r *http.Request, body []byte) bool {
	if safeMethod(r.Method) {
		return false
	}
	key, request, seal := idemKeys(r, body)
	if key == "" {
		return false
	}
	if k := r.Header.Get(IdempotencyHeader); len(k) > 255 {
		writeError(w, http.StatusBadRequest, "invalid", "Idempotency-Key is over 255 bytes")
		return true
	}
	var rec *IdemRecord
	s.node.fsm.View(func(st *State) {
		if p := st.Idempotency[key]; p != nil && time.Since(p.At) < IdempotencyTTL {
			c := *p
			rec = &c
		}
	})
	switch {
	case rec == nil:
		return false
	case rec.Request != request:
		writeError(w, http.StatusUnprocessableEntity, "idempotency_key_reused", "this Idempotency-Key was used for another request")
	default:
		var out []byte
		if len(rec.Sealed) > 0 {
			var err error
			if out, err = openBody(seal, rec.Sealed); err != nil {
				s.fail(w, fmt.Errorf("kept answer: %w", err))
				return true
			}
		}
		w.Header().Set(replayedHeader, "true")
		if len(out) > 0 {
			w.Header().Set("Content-Type", "application/json")
		}
		w.WriteHeader(rec.Status)
		w.Write(out)
	}
	return true
}

// write proposes c for the caller of r and answers status with v (no
// body when v is nil), keeping the answer when r has an Idempotency-Key.
func (s *Server) write(w http.ResponseWriter, r *http.Request, body []byte, c Command, status int, v any) {
	var out []byte
	if v != nil {
		b, err := json.Marshal(v)
		if err != nil {
			s.fail(w, err)
			return
		}
		out = append(b, '\n')
	}
	a, isAudited := c.(audited)
	if key, request, seal := idemKeys(r, body); key != "" && isAudited {
		rec := &IdemRecord{Key: key, Request: request, Status: status, At: time.Now().UTC()}
		if len(out) > 0 {
			var err error
			if rec.Sealed, err = sealBody(seal, out); err != nil {
				s.fail(w, err)
				return
			}
		}
		a.metadata().Idem = rec
	}
	if !s.commit(w, r, c) {
		return
	}
	if out == nil {
		w.WriteHeader(status)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(out)
}

// keep stores a command's kept answer and forgets expired ones; it runs
// in apply, with the command's own time.
func (s *State) keep(rec *IdemRecord) {
	for k, old := range s.Idempotency {
		if rec.At.Sub(old.At) >= IdempotencyTTL {
			delete(s.Idempotency, k)
		}
	}
	r := *rec
	s.Idempotency[r.Key] = &r
}

// checkIdem refuses a second command with the same kept-answer key (two
// retries racing past the replay check).
func (s *State) checkIdem(c Command) error {
	if a, ok := c.(audited); ok && a.metadata().Idem != nil {
		if old := s.Idempotency[a.metadata().Idem.Key]; old != nil && a.metadata().Idem.At.Sub(old.At) < IdempotencyTTL {
			return fmt.Errorf("%w: a request with this Idempotency-Key is already applied", ErrConflict)
		}
	}
	return nil
}
