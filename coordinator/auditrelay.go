package coordinator

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/certnode/certnode/schemas"
)

// AuditPublisher sends audit events to the audit log (internal/audit's
// Publisher): Publish waits for the broker, Record does not.
type AuditPublisher interface {
	Publish(ctx context.Context, evs []schemas.AuditEvent) error
	Record(ev schemas.AuditEvent)
}

// cmdRelayAudit stands apart from the other commands' numbers so that
// commands added alongside it elsewhere do not take the same byte.
const cmdRelayAudit cmdType = 25

// RelayAudit records that the audit events up to Seq reached the audit
// log, so a new leader relays from there. It is never audited itself.
type RelayAudit struct {
	Seq uint64 `json:"seq"`
}

func (*RelayAudit) cmdType() cmdType { return cmdRelayAudit }
func (*RelayAudit) coordinatorOnly() {}
func (c *RelayAudit) validate(*State) error {
	if c.Seq == 0 {
		return invalid("seq is required")
	}
	return nil
}

// apply only ever raises the mark: a deposed leader's late commit cannot
// send events again.
func (c *RelayAudit) apply(s *State) { s.AuditRelayed = max(s.AuditRelayed, c.Seq) }

// relayBatch bounds the events relayed at once.
const relayBatch = 500

// relayAudit sends the applied changes' audit events to the audit log
// while this node leads, then records how far it got. An event is sent
// again only when a leader fails between the two (the audit log and
// ClickHouse keep one copy per id).
func (s *Server) relayAudit(ctx context.Context) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for s.node.IsLeader() && ctx.Err() == nil {
			evs, last := s.unrelayed()
			if last == 0 {
				break
			}
			var err error
			if len(evs) > 0 {
				pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				err = s.node.cfg.Audit.Publish(pctx, evs)
				cancel()
			}
			if err == nil {
				_, err = s.node.Propose(&RelayAudit{Seq: last})
			}
			if err != nil {
				s.log.Warn("audit events not relayed yet", "events", len(evs), "err", err)
				break
			}
		}
	}
}

// unrelayed returns the events after the relayed mark (at most
// relayBatch) as the audit log takes them, and the last one's seq.
func (s *Server) unrelayed() ([]schemas.AuditEvent, uint64) {
	var out []schemas.AuditEvent
	var last uint64
	s.node.fsm.View(func(st *State) {
		i, _ := slices.BinarySearchFunc(st.Audit, st.AuditRelayed+1, func(e AuditEvent, seq uint64) int { return cmpUint(e.Seq, seq) })
		if i == 0 && len(st.Audit) > 0 && st.AuditRelayed > 0 && st.Audit[0].Seq > st.AuditRelayed+1 {
			s.log.Error("audit events were trimmed from the state before they were relayed", "relayed", st.AuditRelayed, "oldest", st.Audit[0].Seq)
		}
		for ; i < len(st.Audit) && len(out) < relayBatch; i++ {
			last = st.Audit[i].Seq
			ev := st.Audit[i].logged()
			if err := ev.Validate(); err != nil {
				// Never sendable: skipped, or it would hold up the rest.
				s.log.Error("audit event not relayable", "seq", last, "err", err)
				continue
			}
			out = append(out, ev)
		}
	})
	return out, last
}

// logged is e as the audit log takes it. Its id is the raft index and the
// time, which a rebuilt cluster does not repeat.
func (e *AuditEvent) logged() schemas.AuditEvent {
	result := schemas.AuditOK
	if strings.HasSuffix(e.Action, "_failed") {
		result = schemas.AuditDenied
	}
	return schemas.AuditEvent{ID: fmt.Sprintf("c-%d-%d", e.Seq, e.At.UnixNano()), At: e.At, Org: e.Org,
		Actor: schemas.AuditActor{Kind: e.Actor.Kind, ID: e.Actor.ID, Addr: e.Actor.Addr}, Action: e.Action, Target: e.Target,
		Result: result, Source: "coordinator"}
}

// recordRefusal sends a refused request to the audit log as an access
// event: who (as far as known), from where, what, and the refusal's code.
func (s *Server) recordRefusal(r *http.Request, org, code string) {
	if s.node.cfg.Audit == nil {
		return
	}
	actor := Actor{Kind: ActorAnonymous, Addr: s.clientAddr(r)}
	if p := principalOf(r); p != nil {
		actor = p.actor
	}
	// A caller who proved who they are was refused in the organization
	// of the path; an unauthenticated one names it at will, and may not
	// write into its log.
	if org == "" && actor.Kind != ActorAnonymous {
		org = r.PathValue("org")
		if !idPattern.MatchString(org) {
			org = ""
		}
	}
	action := "access.refused"
	if code == "invalid_credentials" || code == "account_locked" {
		action = "user.login_failed"
	}
	s.node.cfg.Audit.Record(schemas.AuditEvent{At: time.Now().UTC(), Org: org,
		Actor: schemas.AuditActor{Kind: actor.Kind, ID: actor.ID, Addr: actor.Addr}, Action: action,
		Target: schemas.AuditRequestTarget(r.Method, r.URL.Path), Result: schemas.AuditDenied, Reason: code, Source: "coordinator"})
}
