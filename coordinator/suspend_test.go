package coordinator

import (
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/testenv"
)

// A suspended key is refused by the other tiers' copies until resumed, and
// both are in the audit trail with the reason.
func TestSuspendKey(t *testing.T) {
	n := soloNode(t)
	op := operator(t, n)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"Acme"}`)
	var k keyView
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/acme/keys", `{"scopes":["sign"]}`)), &k)
	r := runReplica(t, n)
	admitted := func(want bool, what string) {
		t.Helper()
		testenv.WaitFor(t, what, 5*time.Second, func() (bool, string) {
			_, ok := r.Authenticate(k.Key)
			return ok == want, ""
		})
	}
	admitted(true, "the key admitted")
	var v keyView
	json.Unmarshal([]byte(op.must(200, "POST", "/v1/orgs/acme/keys/"+k.ID+"/suspend", `{"reason":"security.alert sa_1"}`)), &v)
	if v.SuspendedAt.IsZero() || v.SuspendedFor != "security.alert sa_1" || v.Key != "" {
		t.Fatalf("suspended key %+v", v)
	}
	admitted(false, "the suspended key refused")
	op.must(200, "POST", "/v1/orgs/acme/keys/"+k.ID+"/resume", "")
	admitted(true, "the resumed key admitted")
	trail := op.must(200, "GET", "/v1/orgs/acme/audit", "")
	for _, a := range []string{`"action":"api_key.suspend"`, `"action":"api_key.resume"`} {
		if !strings.Contains(trail, a) {
			t.Errorf("no %s in %s", a, trail)
		}
	}
}
