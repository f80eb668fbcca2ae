package coordinator

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/certnode/certnode/internal/testenv"
)

// An organization's branding and maintenance reach other tiers' copies;
// a settings change neither undoes the maintenance nor lets a second
// brand colour disagree with the palette; the operator's CLI route turns
// maintenance off.
func TestBrandingReachesReplicas(t *testing.T) {
	n := soloNode(t)
	must := operator(t, n).must
	must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"Acme Corp"}`)
	r, err := NewReplica(ReplicaConfig{Addrs: []string{n.Addr()}, Token: testNode, Wait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	must(200, "PUT", "/v1/orgs/acme/branding", `{"display_name":"Acme","colors":{"primary":"#aa0000"},"support_url":"https://acme.test/help","custom_css":"a{color:red}"}`)
	must(200, "PUT", "/v1/orgs/acme/maintenance", `{"message":"Upgrading"}`)
	testenv.WaitFor(t, "the replica has the branding and maintenance", 5*time.Second, func() (bool, string) {
		o, ok := r.Brand("acme")
		return ok && o.Title() == "Acme" && o.Branding.Colors.Primary == "#aa0000" && o.Maintenance != nil && o.Maintenance.Message == "Upgrading", ""
	})
	if _, ok := r.Brand("nothing"); ok {
		t.Fatal("an unknown organization has a brand")
	}

	// A settings change keeps the maintenance; brand_color and
	// colors.primary are one colour.
	out := must(200, "PATCH", "/v1/admin/orgs/acme", `{"settings":{"display_name":"Acme 2","brand_color":"#00aa00"}}`)
	if !strings.Contains(out, `"maintenance":{"message":"Upgrading"`) {
		t.Fatalf("the settings change ended the maintenance: %s", out)
	}
	if out := must(400, "PATCH", "/v1/admin/orgs/acme", `{"settings":{"brand_color":"#00aa00","colors":{"primary":"#0000aa"}}}`); !strings.Contains(out, "differ") {
		t.Fatalf("%s", out)
	}
	must(204, "DELETE", "/v1/admin/orgs/acme/maintenance", "")
	testenv.WaitFor(t, "the replica sees the maintenance end", 5*time.Second, func() (bool, string) {
		o, ok := r.Brand("acme")
		return ok && o.Maintenance == nil && o.Branding.Colors.Primary == "#00aa00", ""
	})
}
