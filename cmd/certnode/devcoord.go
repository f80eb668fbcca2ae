package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/coordinator"
	"github.com/certnode/certnode/internal/tenants"
)

// openDevCoordinator opens certnode dev's embedded coordinator: one node,
// its state in DIR/coordinator, bootstrapped alone on first start. Raft
// takes any free port: a cluster of one never dials its own address.
// Webhook test deliveries may reach this machine (a developer's local
// receiver), and nothing else that is not public. Its audit events go to
// events. Links in email previews point under publicURL; res checks the
// TXT records of custom and sending domains (nil: the system's).
func openDevCoordinator(dir, httpAddr, publicURL string, creds *credentials, events coordinator.AuditPublisher, res coordinator.Resolver) (*coordinator.Server, error) {
	return coordinator.NewServer(coordinator.Config{ID: "dev", RaftAddr: "127.0.0.1:0", HTTPAddr: httpAddr,
		DataDir: filepath.Join(dir, "coordinator"), Bootstrap: true, AdminToken: creds.AdminToken, NodeToken: creds.NodeToken,
		WebhookAllow: devWebhookAllow, Audit: events, PublicURL: publicURL, ReservedDomains: reservedDomains(nil, publicURL), Resolver: res,
		OrgKeyActivationDelay: devOrgKeyActivationDelay})
}

// devOrgKeyActivationDelay is how long an organization's new key is
// published before it signs, in certnode dev: short, for trying it out.
const devOrgKeyActivationDelay = 5 * time.Second

// devWebhookAllow is the loopback networks, which certnode dev lets
// webhook deliveries reach.
var devWebhookAllow = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// devKey is an API or producer key as the admin API lists or creates it.
type devKey struct {
	ID        string    `json:"id"`
	Key       string    `json:"key"`    // an API key, in the answer that creates it
	Secret    string    `json:"secret"` // a producer key's, likewise
	ExpiresAt time.Time `json:"expires_at"`
	RevokedAt time.Time `json:"revoked_at"`
}

// devProvisioner sets up the demo organization through the embedded
// node's admin API, as an operator would.
type devProvisioner struct {
	s      *coordinator.Server
	api    adminClient
	token  string
	stderr io.Writer
}

// provisionDev makes sure the coordinator holds the demo organization with
// a usable API key and producer key, and creds holds them: on first start
// it creates them; a folder from before the coordinator (DIR/tenants.json)
// is migrated first. A key of creds the coordinator does not know, or no
// longer accepts, is replaced, and stderr says so.
func provisionDev(ctx context.Context, s *coordinator.Server, dir string, creds *credentials, stderr io.Writer) error {
	p := &devProvisioner{s: s, api: adminClient{addr: s.Addr(), http: &http.Client{Timeout: 30 * time.Second}},
		token: creds.AdminToken, stderr: stderr}
	if err := p.waitLeader(ctx); err != nil {
		return err
	}
	tenFile := filepath.Join(dir, "tenants.json")
	if _, err := os.Stat(tenFile); err == nil {
		if err := p.migrate(ctx, tenFile, creds.Tenant); err != nil {
			return fmt.Errorf("migrating %s: %w", tenFile, err)
		}
	}
	org := creds.Tenant
	orgs, err := p.orgs(ctx)
	if err != nil {
		return err
	}
	if !slices.Contains(orgs, org) {
		if err := p.do(ctx, "POST", "/v1/admin/orgs", map[string]string{"id": org, "name": "Demo"}, nil); err != nil {
			return err
		}
	}
	var keys struct {
		Keys []devKey `json:"keys"`
	}
	if err := p.do(ctx, "GET", "/v1/admin/orgs/"+org+"/keys", nil, &keys); err != nil {
		return err
	}
	if id, _, _ := strings.Cut(creds.APIKey, "."); !usable(keys.Keys, id) {
		var k devKey
		if err := p.do(ctx, "POST", "/v1/admin/orgs/"+org+"/keys", map[string]any{"name": "certnode dev", "scopes": tenants.Scopes}, &k); err != nil {
			return err
		}
		if creds.APIKey != "" {
			fmt.Fprintf(stderr, "certnode dev: the API key in %s is not one the coordinator accepts (a key from before it, "+
				"revoked, or its data removed); a new one replaces it there, and the old one no longer works\n", filepath.Join(dir, "credentials.json"))
		}
		creds.APIKey = k.Key
	}
	var pks struct {
		Keys []devKey `json:"producer_keys"`
	}
	if err := p.do(ctx, "GET", "/v1/admin/orgs/"+org+"/producer-keys", nil, &pks); err != nil {
		return err
	}
	if !usable(pks.Keys, creds.ProducerKeyID) {
		var k devKey
		if err := p.do(ctx, "POST", "/v1/admin/orgs/"+org+"/producer-keys", nil, &k); err != nil {
			return err
		}
		if creds.ProducerKeyID != "" {
			fmt.Fprintf(stderr, "certnode dev: producer key %s is revoked or unknown to the coordinator; %s replaces it in credentials.json\n", creds.ProducerKeyID, k.ID)
		}
		creds.ProducerKeyID, creds.ProducerSecret = k.ID, k.Secret
	}
	return p.demoUser(ctx, org, creds)
}

// demoEmail is the demo organization's owner, who signs in to the dashboard.
const demoEmail = "demo@certnode.local"

// demoUser makes sure demoEmail exists, owns org, and has the password in
// creds: a new user gets a new password, and one whose password creds
// lacks gets a new one through a reset.
func (p *devProvisioner) demoUser(ctx context.Context, org string, creds *credentials) error {
	type membership struct {
		Org  string `json:"org"`
		Role string `json:"role"`
	}
	type user struct {
		ID          string       `json:"id"`
		Email       string       `json:"email"`
		Memberships []membership `json:"memberships"`
	}
	var list struct {
		Users []user `json:"users"`
	}
	if err := p.do(ctx, "GET", "/v1/admin/users", nil, &list); err != nil {
		return err
	}
	i := slices.IndexFunc(list.Users, func(u user) bool { return u.Email == demoEmail })
	var u user
	switch {
	case i < 0:
		pw := rand.Text()
		if err := p.do(ctx, "POST", "/v1/admin/users", map[string]string{"email": demoEmail, "name": "Demo Owner", "password": pw}, &u); err != nil {
			return err
		}
		creds.UserPassword = pw
	case creds.UserPassword == "" || creds.UserEmail != demoEmail:
		u = list.Users[i]
		var reset struct {
			Token string `json:"token"`
		}
		if err := p.do(ctx, "POST", "/v1/admin/users/"+u.ID+"/password-reset", nil, &reset); err != nil {
			return err
		}
		pw := rand.Text()
		if err := p.do(ctx, "POST", "/v1/auth/password-reset", map[string]string{"token": reset.Token, "password": pw}, nil); err != nil {
			return err
		}
		creds.UserPassword = pw
	default:
		u = list.Users[i]
	}
	creds.UserEmail = demoEmail
	if !slices.Contains(u.Memberships, membership{Org: org, Role: "owner"}) {
		return p.do(ctx, "PUT", "/v1/orgs/"+org+"/members/"+u.ID, map[string]string{"role": "owner"}, nil)
	}
	return nil
}

// usable reports whether id names a key of keys that is neither revoked
// nor expired.
func usable(keys []devKey, id string) bool {
	return slices.ContainsFunc(keys, func(k devKey) bool {
		return k.ID == id && k.RevokedAt.IsZero() && (k.ExpiresAt.IsZero() || time.Now().Before(k.ExpiresAt))
	})
}

// waitLeader waits for the node to elect itself, which a node of one
// does within a few election timeouts, and to apply its log: a restarted
// node leads before it has replayed the entries it holds.
func (p *devProvisioner) waitLeader(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for !p.s.Node().IsLeader() || p.s.Node().Consistent() != nil {
		select {
		case <-ctx.Done():
			return errors.New("the embedded coordinator did not become leader within 30 s")
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// do calls the admin API and decodes its answer into out (when not nil).
func (p *devProvisioner) do(ctx context.Context, method, path string, body, out any) error {
	b, err := p.api.call(ctx, p.token, method, path, body)
	if err != nil {
		return fmt.Errorf("embedded coordinator: %s %s: %w", method, path, err)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(b, out, json.RejectUnknownMembers(false))
}

func (p *devProvisioner) orgs(ctx context.Context) ([]string, error) {
	var list struct {
		Orgs []struct {
			ID string `json:"id"`
		} `json:"orgs"`
	}
	if err := p.do(ctx, "GET", "/v1/admin/orgs", nil, &list); err != nil {
		return nil, err
	}
	var ids []string
	for _, o := range list.Orgs {
		ids = append(ids, o.ID)
	}
	return ids, nil
}

// migrate moves a tenants file from before the coordinator into it, then
// renames it (.migrated) so it is done once. Each tenant becomes an
// organization with its limits, and its producer keys are
// imported with their secrets, so producers keep working. API keys cannot
// move: the file holds only SHA-256 hex of keys of the old format, which
// lack the id the coordinator finds keys by. The demo tenant gets a new key
// (provisionDev); stderr names the other tenants whose keys are gone.
func (p *devProvisioner) migrate(ctx context.Context, path, demo string) error {
	var file tenants.File
	data, err := os.ReadFile(path)
	if err == nil {
		err = json.Unmarshal(data, &file)
	}
	if err != nil {
		return err
	}
	have, err := p.orgs(ctx)
	if err != nil {
		return err
	}
	var migrated []string
	for _, t := range file.Tenants {
		if !slices.Contains(have, t.ID) {
			err := p.do(ctx, "POST", "/v1/admin/orgs", map[string]any{"id": t.ID, "name": t.ID, "limits": t.Limits}, nil)
			if err != nil && t.ID == demo {
				return err
			}
			if err != nil {
				fmt.Fprintf(p.stderr, "certnode dev: tenant %q of %s is not migrated: %v\n", t.ID, path, err)
				continue
			}
		}
		for _, pk := range t.ProducerKeys {
			_, err := p.s.Node().Propose(&coordinator.PutProducerKey{Create: true,
				Key: coordinator.ProducerKey{ID: pk.ID, Org: t.ID, Secret: pk.Secret, CreatedAt: time.Now().UTC()}})
			if err != nil && !errors.Is(err, coordinator.ErrConflict) { // a conflict: imported by an interrupted start
				fmt.Fprintf(p.stderr, "certnode dev: producer key %s of tenant %q is not migrated: %v\n", pk.ID, t.ID, err)
			}
		}
		if t.ID != demo && len(t.APIKeyHashes) > 0 {
			fmt.Fprintf(p.stderr, "certnode dev: tenant %q's API keys cannot move to the coordinator (only their old-format hashes are known): "+
				"make new ones with certnode admin keys create %s\n", t.ID, t.ID)
		}
		migrated = append(migrated, t.ID)
	}
	if err := os.Rename(path, path+".migrated"); err != nil {
		return err
	}
	fmt.Fprintf(p.stderr, "certnode dev: tenants now live in the embedded coordinator: migrated %s (organizations %s, with their producer keys); "+
		"it is kept as %s.migrated and no longer read\n", path, strings.Join(migrated, ", "), filepath.Base(path))
	return nil
}
