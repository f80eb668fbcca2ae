package kafka

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/certnode/certnode/schemas"
)

// Every grant names topics of its own prefix only, every role that
// consumes with a group is allowed that group, and an unknown role has no
// grant.
func TestGrants(t *testing.T) {
	all := schemas.TopicsFor("p").All()
	for _, role := range Roles() {
		g, err := GrantFor(role, "p")
		if err != nil {
			t.Fatalf("%s: %v", role, err)
		}
		if len(g.Read)+len(g.Write) == 0 {
			t.Errorf("%s: an empty grant", role)
		}
		for _, topic := range append(slices.Clone(g.Read), g.Write...) {
			if !slices.Contains(all, topic) {
				t.Errorf("%s: %s is not a topic of prefix p", role, topic)
			}
		}
		if group := Group("p", role); group != "" && (!slices.Contains(g.Groups, group) || !strings.HasPrefix(group, "p-")) {
			t.Errorf("%s: group %s, grant %v", role, group, g.Groups)
		}
	}
	if g, _ := GrantFor(RoleDispatcher, "p"); !slices.Contains(g.Groups, DelayGroup(Group("p", RoleDispatcher))) {
		t.Errorf("the dispatcher's delay group is not granted: %v", g.Groups)
	}
	if g, _ := GrantFor(RoleCoordinator, "p"); len(g.Read) != 0 || len(g.Groups) != 0 || !slices.Equal(g.Write, []string{"p.audit"}) {
		t.Errorf("coordinator: %+v", g)
	}
	if _, err := GrantFor("admin", "p"); err == nil || !strings.Contains(err.Error(), "unknown role") {
		t.Fatalf("an unknown role: %v", err)
	}
}

// A user's password shows in no formatting of it.
func TestSCRAMUserHidesPassword(t *testing.T) {
	var b strings.Builder
	u := SCRAMUser{Name: "ingest", Mechanism: "SCRAM-SHA-512", Password: "hunter2-secret"}
	slog.New(slog.NewTextHandler(&b, nil)).Info("user", "user", u)
	fmt.Fprintf(&b, "%v %+v %s", u, u, u)
	j, _ := json.Marshal(u)
	b.Write(j)
	if strings.Contains(b.String(), "hunter2") || !strings.Contains(b.String(), "ingest") {
		t.Fatalf("formatted: %s", b.String())
	}
}
