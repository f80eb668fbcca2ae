package coordinator

import (
	"crypto/sha256"
	"encoding/base64"
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
// other tiers read): it may hold a secret shown once, for that long.
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
	Body    string    `json:"body,omitempty"`
	At      time.Time `json:"at"`
}

func hashParts(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:%s", len(p), p)
	}
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil))
}

// idemKeys are the record key and request hash of r, or "" when r carries
// no Idempotency-Key.
func idemKeys(r *http.Request, body []byte) (key, request string) {
	k := r.Header.Get(IdempotencyHeader)
	p := principalOf(r)
	if k == "" || p == nil || p.actor.Kind == ActorAnonymous {
		return "", ""
	}
	return hashParts(p.actor.Kind, p.actor.ID, k), hashParts(r.Method, r.URL.Path, string(body))
}

// replay answers a retried write from its kept answer, and refuses a key
// reused for another request. It reports whether it answered.
func (s *Server) replay(w http.ResponseWriter, r *http.Request, body []byte) bool {
	if safeMethod(r.Method) {
		return false
	}
	key, request := idemKeys(r, body)
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
		w.Header().Set(replayedHeader, "true")
		if rec.Body == "" {
			w.WriteHeader(rec.Status)
		} else {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(rec.Status)
			w.Write([]byte(rec.Body))
		}
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
	if key, request := idemKeys(r, body); key != "" && isAudited {
		a.metadata().Idem = &IdemRecord{Key: key, Request: request, Status: status, Body: string(out), At: time.Now().UTC()}
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
