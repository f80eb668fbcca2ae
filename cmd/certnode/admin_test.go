package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/coordinator"
	"github.com/certnode/certnode/internal/testenv"
)

// The admin CLI drives a coordinator: organizations, keys (printed once,
// listed without secrets), suspension, the cluster view; refusals exit 1
// with the coordinator's code, usage errors 2.
// soloCoordinator runs a coordinator of one node until the test ends, with
// $CERTNODE_ADMIN_TOKEN its admin token.
func soloCoordinator(t *testing.T) *coordinator.Server {
	t.Helper()
	const admin = "admin-token-cli-0123456789"
	s, err := coordinator.NewServer(coordinator.Config{ID: "c1", RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", DataDir: t.TempDir(),
		Bootstrap: true, AdminToken: admin, NodeToken: "node-token-cli-0123456789"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; s.Close() })
	testenv.WaitFor(t, "leader", 10*time.Second, func() (bool, string) { return s.Node().IsLeader(), "" })
	t.Setenv("CERTNODE_ADMIN_TOKEN", admin)
	return s
}

func TestAdminCLI(t *testing.T) {
	s := soloCoordinator(t)
	admin := os.Getenv("CERTNODE_ADMIN_TOKEN")
	adm := func(args ...string) result {
		return certnode(t, "", append([]string{"admin", "--coordinator", s.Addr()}, args...)...)
	}
	if r := adm("orgs", "create", "acme", "--name", "Acme Inc"); r.code != 0 || !strings.Contains(r.stdout, `"status":"active"`) {
		t.Fatalf("orgs create: %+v", r)
	}
	if r := adm("orgs", "create", "acme", "--name", "Again"); r.code != 1 || !strings.Contains(r.stderr, "conflict: organization \"acme\" exists") {
		t.Fatalf("orgs create again: %+v", r)
	}
	r := adm("keys", "create", "acme", "--scopes", "sign,read", "--cidr", "10.0.0.0/8", "--expires", "24h")
	var key struct {
		ID        string    `json:"id"`
		Key       string    `json:"key"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &key, json.RejectUnknownMembers(false)) != nil || !strings.HasPrefix(key.Key, key.ID+".") ||
		key.ExpiresAt.Before(time.Now().Add(23*time.Hour)) {
		t.Fatalf("keys create: %+v", r)
	}
	list := adm("keys", "list", "acme")
	if list.code != 0 || !strings.Contains(list.stdout, key.ID) || strings.Contains(list.stdout, key.Key) || !strings.Contains(list.stdout, `"cidrs":["10.0.0.0/8"]`) {
		t.Fatalf("keys list: %+v", list)
	}
	if r := adm("keys", "create", "acme", "--scopes", "root"); r.code != 1 || !strings.Contains(r.stderr, `invalid: scope "root"`) {
		t.Fatalf("a key with an unknown scope: %+v", r)
	}
	if r := adm("keys", "revoke", "acme", key.ID); r.code != 0 {
		t.Fatalf("keys revoke: %+v", r)
	}
	if r := adm("keys", "list", "acme"); !strings.Contains(r.stdout, `"revoked_at"`) {
		t.Fatalf("revoked key not shown as revoked: %+v", r)
	}
	if r := adm("orgs", "suspend", "acme"); r.code != 0 || !strings.Contains(r.stdout, `"status":"suspended"`) {
		t.Fatalf("orgs suspend: %+v", r)
	}
	if r := adm("orgs", "get", "acme"); r.code != 0 || !strings.Contains(r.stdout, `"status":"suspended"`) {
		t.Fatalf("orgs get: %+v", r)
	}
	if r := adm("orgs", "get", "nope"); r.code != 1 || !strings.Contains(r.stderr, "not_found") {
		t.Fatalf("orgs get unknown: %+v", r)
	}
	if r := adm("cluster"); r.code != 0 || !strings.Contains(r.stdout, `"leader":"c1"`) {
		t.Fatalf("cluster: %+v", r)
	}
	// Blocks: added, listed, lifted; a bad address refused.
	if r := adm("blocks", "add", "127.0.0.5", "--for", "10m", "--reason", "a test"); r.code != 0 {
		t.Fatalf("blocks add: %+v", r)
	}
	if r := adm("blocks", "add", "not-an-address"); r.code != 1 || !strings.Contains(r.stderr, "an IP address") {
		t.Fatalf("blocks add a bad address: %+v", r)
	}
	if r := adm("blocks", "list"); r.code != 0 || !strings.Contains(r.stdout, `"addr":"127.0.0.5"`) || !strings.Contains(r.stdout, "a test") {
		t.Fatalf("blocks list: %+v", r)
	}
	if r := adm("blocks", "lift", "127.0.0.5"); r.code != 0 {
		t.Fatalf("blocks lift: %+v", r)
	}
	if r := adm("blocks", "list"); r.code != 0 || strings.Contains(r.stdout, "127.0.0.5") {
		t.Fatalf("blocks list after the lift: %+v", r)
	}

	// Plans, limits, users, members, invitations, producer keys, audit.
	if r := adm("plans", "put", "gold", "--name", "Gold", "--base-price", "9900", "--included-receipts", "100000", "--price-per-1000", "30", "--rate-limit", "200"); r.code != 0 {
		t.Fatalf("plans put: %+v", r)
	}
	if r := adm("orgs", "set", "acme", "--plan", "gold", "--burst", "500"); r.code != 0 || !strings.Contains(r.stdout, `"plan":"gold"`) || !strings.Contains(r.stdout, `"burst":500`) {
		t.Fatalf("orgs set: %+v", r)
	}
	if r := adm("orgs", "set", "acme"); r.code != 2 {
		t.Fatalf("orgs set without a change: %+v", r)
	}
	if r := adm("orgs", "set", "acme", "--plan", "nope"); r.code != 1 || !strings.Contains(r.stderr, "not_found") {
		t.Fatalf("orgs set to an unknown plan: %+v", r)
	}
	t.Setenv("CERTNODE_USER_PASSWORD", "a-password-for-ada")
	r = adm("users", "create", "--email", "ada@acme.test", "--name", "Ada")
	var user struct {
		ID string `json:"id"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &user, json.RejectUnknownMembers(false)) != nil || strings.Contains(r.stdout, "a-password-for-ada") {
		t.Fatalf("users create: %+v", r)
	}
	if r := adm("orgs", "activate", "acme"); r.code != 0 {
		t.Fatalf("orgs activate: %+v", r)
	}
	if r := adm("members", "set", "acme", user.ID, "--role", "owner"); r.code != 0 {
		t.Fatalf("members set: %+v", r)
	}
	if r := adm("members", "list", "acme"); !strings.Contains(r.stdout, `"email":"ada@acme.test"`) {
		t.Fatalf("members list: %+v", r)
	}
	if r := adm("members", "set", "acme", user.ID, "--role", "emperor"); r.code != 1 || !strings.Contains(r.stderr, "invalid") {
		t.Fatalf("an unknown role: %+v", r)
	}
	if r := adm("invitations", "create", "acme", "--email", "bob@acme.test", "--role", "developer"); r.code != 0 || !strings.Contains(r.stdout, `"token":"cni_`) {
		t.Fatalf("invitations create: %+v", r)
	}
	if r := adm("users", "reset-token", user.ID); r.code != 0 || !strings.Contains(r.stdout, `"token":"cnr_`) {
		t.Fatalf("users reset-token: %+v", r)
	}
	r = adm("producer-keys", "create", "acme")
	var pk struct {
		ID     string `json:"id"`
		Secret string `json:"secret"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &pk, json.RejectUnknownMembers(false)) != nil || pk.Secret == "" {
		t.Fatalf("producer-keys create: %+v", r)
	}
	if r := adm("producer-keys", "rotate", "acme", pk.ID, "--overlap", "1h"); r.code != 0 || strings.Contains(r.stdout, pk.Secret) {
		t.Fatalf("producer-keys rotate: %+v", r)
	}
	if r := adm("producer-keys", "list", "acme"); r.code != 0 || strings.Contains(r.stdout, pk.Secret) || strings.Count(r.stdout, `"id":"pk_`) != 2 || !strings.Contains(r.stdout, `"expires_at"`) {
		t.Fatalf("producer-keys list: %+v", r)
	}
	if r := adm("producer-keys", "revoke", "acme", pk.ID); r.code != 0 {
		t.Fatalf("producer-keys revoke: %+v", r)
	}
	r = adm("audit", "--org", "acme", "--limit", "1000")
	for _, action := range []string{"org.create", "api_key.create", "api_key.revoke", "member.put:owner", "invitation.create:developer", "producer_key.rotate", "producer_key.revoke"} {
		if !strings.Contains(r.stdout, `"action":"`+action+`"`) {
			t.Fatalf("audit lacks %s: %+v", action, r)
		}
	}
	if !strings.Contains(r.stdout, `"kind":"operator"`) || !strings.Contains(r.stdout, `"addr":"127.0.0.1"`) {
		t.Fatalf("audit actor: %s", r.stdout)
	}
	t.Setenv("CERTNODE_ADMIN_TOKEN", "wrong-token-0123456789")
	if r := adm("orgs", "list"); r.code != 1 || !strings.Contains(r.stderr, "unauthorized") || strings.Contains(r.stderr, admin) {
		t.Fatalf("wrong token: %+v", r)
	}
	t.Setenv("CERTNODE_ADMIN_TOKEN", "")
	if r := adm("orgs", "list"); r.code != 2 || !strings.Contains(r.stderr, "$CERTNODE_ADMIN_TOKEN") {
		t.Fatalf("no token: %+v", r)
	}
	t.Setenv("CERTNODE_ADMIN_TOKEN", admin)
	if r := certnode(t, "", "admin", "--coordinator", "127.0.0.1:1", "cluster"); r.code != 2 || !strings.Contains(r.stderr, "coordinator 127.0.0.1:1") {
		t.Fatalf("unreachable coordinator: %+v", r)
	}
}
