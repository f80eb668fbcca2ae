package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// fakeAudit is an audit log that refuses Publish while down.
type fakeAudit struct {
	mu        sync.Mutex
	down      bool
	published []schemas.AuditEvent
	recorded  []schemas.AuditEvent
}

func (f *fakeAudit) Publish(_ context.Context, evs []schemas.AuditEvent) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return errors.New("broker away")
	}
	f.published = append(f.published, evs...)
	return nil
}

func (f *fakeAudit) Record(ev schemas.AuditEvent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.recorded = append(f.recorded, ev)
}

func (f *fakeAudit) snapshot() (published, recorded []schemas.AuditEvent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.published), slices.Clone(f.recorded)
}

func actions(evs []schemas.AuditEvent) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Action+"/"+e.Result)
	}
	return out
}

// Applied changes reach the audit log once each, in order, and after the
// broker was away; refused requests reach it as access events with the
// caller's address and the refusal's code, a wrong password once.
func TestAuditRelay(t *testing.T) {
	fa := &fakeAudit{}
	n := startNodeCfg(t, Config{ID: "solo", RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", DataDir: t.TempDir(), Bootstrap: true, Audit: fa})
	testenv.WaitFor(t, "leader", 10*time.Second, func() (bool, string) { return n.node.IsLeader(), "" })
	op := operator(t, n)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"Acme"}`)
	testenv.WaitFor(t, "org.create relayed", 10*time.Second, func() (bool, string) {
		p, _ := fa.snapshot()
		return slices.Contains(actions(p), "org.create/ok"), fmt.Sprint(actions(p))
	})

	fa.mu.Lock()
	fa.down = true
	fa.mu.Unlock()
	op.must(201, "POST", "/v1/orgs/acme/keys", `{"name":"k","scopes":["sign"]}`)
	createUser(op, "ann@example.com")
	time.Sleep(500 * time.Millisecond)
	fa.mu.Lock()
	fa.down = false
	fa.mu.Unlock()
	testenv.WaitFor(t, "the changes made while the broker was away relayed", 10*time.Second, func() (bool, string) {
		p, _ := fa.snapshot()
		a := actions(p)
		return slices.Contains(a, "api_key.create/ok") && slices.Contains(a, "user.create/ok"), fmt.Sprint(a)
	})

	anon := newClient(t, n)
	anon.must(401, "POST", "/v1/auth/login", `{"email":"ann@example.com","password":"wrong-password"}`)
	anon.must(401, "POST", "/v1/auth/login", `{"email":"nobody@example.com","password":"wrong-password"}`)
	anon.hdr["Authorization"] = "Bearer cnk_AAAAAAAAAAAA.not-a-secret"
	anon.must(401, "GET", "/v1/orgs/acme/keys", "")

	testenv.WaitFor(t, "the wrong password relayed", 10*time.Second, func() (bool, string) {
		p, _ := fa.snapshot()
		return slices.Contains(actions(p), "user.login_failed/denied"), fmt.Sprint(actions(p))
	})
	published, recorded := fa.snapshot()
	seen := map[string]bool{}
	var last uint64
	for _, e := range published {
		if seen[e.ID] {
			t.Errorf("event %s relayed twice", e.ID)
		}
		seen[e.ID] = true
		var seq, nanos uint64
		if _, err := fmt.Sscanf(e.ID, "c-%d-%d", &seq, &nanos); err != nil || seq <= last {
			t.Errorf("event id %q out of order after seq %d", e.ID, last)
		}
		last = seq
		if e.Source != "coordinator" || e.Validate() != nil {
			t.Errorf("event %+v: %v", e, e.Validate())
		}
	}
	if got, want := actions(recorded), []string{"user.login_failed/denied", "access.refused/denied"}; !slices.Equal(got, want) {
		t.Fatalf("access events %v, want %v (a known user's wrong password is relayed, not recorded twice)", got, want)
	}
	for _, e := range recorded {
		if e.Actor.Addr != "127.0.0.1" || e.Actor.Kind != ActorAnonymous {
			t.Errorf("access event actor %+v", e.Actor)
		}
	}
	// Unauthenticated, it names the organization at will: not its log.
	if r := recorded[1]; r.Reason != "unauthorized" || r.Org != "" || r.Target != "GET /v1/orgs/acme/keys" {
		t.Errorf("refusal event %+v", r)
	}
	var mark uint64
	n.node.fsm.View(func(st *State) { mark = st.AuditRelayed })
	if mark != last {
		t.Errorf("relayed mark %d, last relayed seq %d", mark, last)
	}
}
