package coordinator

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/certnode/certnode/internal/apicustom"
	"github.com/certnode/certnode/internal/brand"
	"github.com/certnode/certnode/schemas"
)

// FuzzApply: no log entry panics the FSM, and whatever it applies leaves
// the state valid (every organization checks out, every key belongs to
// one and checks out): a command is checked before it changes anything.
func FuzzApply(f *testing.F) {
	key := APIKey{ID: "cnk_AAAAAAAAAAAA", Org: "acme", Hash: HashKey("x"), Scopes: []string{"sign"}, CreatedAt: t0}
	for _, c := range []Command{
		&PutOrg{Org: testOrg("acme"), Create: true}, &PutOrg{Org: testOrg("acme")}, &CreateKey{Key: key},
		&RevokeKey{ID: key.ID, Org: "acme", At: t0.Add(time.Hour)}, &SetMember{ID: "n1", HTTP: "127.0.0.1:1"},
		&PutPlan{Plan: BuiltinPlans["team"], At: t0},
		&PutProducerKey{Key: ProducerKey{ID: "pk_abcd", Org: "acme", Secret: strings.Repeat("s", 32), CreatedAt: t0}, Create: true},
		&CreateUser{User: fuzzUser, Password: "$argon2id$x"},
		&PutMembership{Membership: Membership{Org: "acme", User: fuzzUser.ID, Role: RoleOwner, CreatedAt: t0}},
		&PutInvitation{Invitation: Invitation{ID: "inv_1", Org: "acme", Email: "b@x.test", Role: RoleViewer, Hash: HashKey("i"), CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}, Create: true},
		&Login{Meta: Meta{At: t0}, User: fuzzUser.ID, Session: &Session{Hash: HashKey("s"), User: fuzzUser.ID, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}},
		&PatchOrg{ID: "acme", Patch: OrgPatch{Settings: &OrgSettings{DisplayName: "A"}}, At: t0.Add(time.Hour)},
		&PutEndpoint{Endpoint: WebhookEndpoint{ID: "ep_abc", Org: "acme", URL: "https://x.test/h", Enabled: true,
			Secrets: []EndpointSecret{{Secret: "whsec_MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIz", CreatedAt: t0}}, CreatedAt: t0, UpdatedAt: t0}, Create: true},
		&DeleteEndpoint{ID: "ep_abc", Org: "acme"},
		&SetAdmitted{Month: "2026-11", Counts: map[string]int64{"acme": 3}},
		&PutReport{Report: Report{Report: schemas.Report{ID: "rpt_abc", Org: "acme", Name: "r", Chart: "bar", Schedule: "daily", CreatedAt: t0, UpdatedAt: t0,
			Query: schemas.ReportQuery{Metrics: []string{"requests"}, GroupBy: "status", Range: schemas.RangeLast7d,
				Filters: []schemas.AnalyticsFilter{{Dim: "kind", Values: []string{"sign"}}}}}}, Create: true},
		&AnnounceReport{ID: "rpt_abc", Org: "acme", Period: "2026-11-26"},
		&DeleteReport{ID: "rpt_abc", Org: "acme"},
		&SetOrgKeySettings{Org: "acme", Settings: OrgKeySettings{Enabled: true, Alg: schemas.AlgES256, RotationDays: 30}, At: t0,
			Request: &schemas.OrgKeyRequest{Org: "acme", ID: "okr_fuzz", Alg: schemas.AlgES256, Reason: OrgKeyReasonEnable, RequestedAt: t0}},
		&RequestOrgKey{Request: schemas.OrgKeyRequest{Org: "acme", ID: "okr_two", Alg: schemas.AlgEdDSA, Reason: OrgKeyReasonManual, RequestedAt: t0}},
		installAt("acme", testOrgKey(f, schemas.AlgES256, "okr_fuzz"), t0),
		&SetBranding{Org: "acme", Branding: brand.Branding{DisplayName: "A", Colors: brand.Palette{Accent: "#010203"}, CustomCSS: "a{color:red}",
			ErrorPages: map[string]string{brand.KindNotFound: "<h1>{{.Title}}</h1>"}}, At: t0.Add(time.Hour)},
		&SetMaintenance{Org: "acme", Maintenance: &brand.Maintenance{Message: "m", Until: t0.Add(2 * time.Hour), Since: t0.Add(time.Hour)}, At: t0.Add(time.Hour)},
		&SetAPISettings{Org: "acme", At: t0, Settings: apicustom.Settings{ResponseHeaders: map[string]string{"X-Acme": "1"},
			WebhookReceipt: apicustom.ReceiptOmit, ReceiptMetadata: []byte(`{"env":"prod"}`), APIVersion: schemas.APIVersionBaseline}},
		&SetKeyDefaults{Org: "acme", Key: key.ID, Defaults: apicustom.KeyDefaults{JobType: "verify", ResultFormat: apicustom.ResultsCompact}},
	} {
		data, _ := encode(c)
		f.Add(data)
	}
	f.Add([]byte{0})
	f.Add([]byte{byte(cmdCreateKey), '{', '}'})
	f.Fuzz(func(t *testing.T, data []byte) {
		fsm := newFSM()
		seed, _ := encode(&PutOrg{Org: testOrg("acme"), Create: true})
		fsm.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: seed})
		seed, _ = encode(&CreateUser{User: fuzzUser, Password: "$argon2id$x"})
		fsm.Apply(&raft.Log{Index: 2, Type: raft.LogCommand, Data: seed})
		fsm.Apply(&raft.Log{Index: 3, Type: raft.LogCommand, Data: data})
		fsm.View(func(s *State) {
			for id, o := range s.Orgs {
				if o.ID != id || o.check() != nil {
					t.Fatalf("organization %q applied invalid: %+v", id, o)
				}
			}
			for id, k := range s.Keys {
				if k.ID != id || k.check() != nil || s.Orgs[k.Org] == nil {
					t.Fatalf("key %q applied invalid: %+v", id, k)
				}
			}
			for id, k := range s.ProducerKeys {
				if k.ID != id || k.check() != nil || s.Orgs[k.Org] == nil {
					t.Fatalf("producer key %q applied invalid: %+v", id, k)
				}
			}
			for id, u := range s.Users {
				if u.ID != id || u.check() != nil || s.Passwords[id] == "" {
					t.Fatalf("user %q applied invalid: %+v", id, u)
				}
			}
			for id, e := range s.Endpoints {
				if e.ID != id || e.check() != nil || s.Orgs[e.Org] == nil {
					t.Fatalf("endpoint %q applied invalid: %+v", id, e)
				}
			}
			for k, m := range s.Memberships {
				if k != membershipKey(m.Org, m.User) || s.Orgs[m.Org] == nil || s.Users[m.User] == nil || checkRole(m.Role) != nil {
					t.Fatalf("membership %q applied invalid: %+v", k, m)
				}
			}
			kids := map[string]bool{}
			for org, k := range s.SigningKeys {
				if k.Org != org || s.Orgs[org] == nil || k.Settings.check() != nil || (k.Pending != nil && checkRequest(k.Pending, org) != nil) {
					t.Fatalf("signing keys of %q applied invalid: %+v", org, k)
				}
				for _, key := range k.Keys {
					if key.Check() != nil || kids[key.Kid] {
						t.Fatalf("signing key of %q applied invalid or twice: %+v", org, key)
					}
					kids[key.Kid] = true
				}
			}
			for _, o := range s.Orgs {
				if len(o.PlanHistory) == 0 || o.PlanHistory[len(o.PlanHistory)-1].Plan.ID != o.Plan {
					t.Fatalf("organization %q: plan %q, history %+v", o.ID, o.Plan, o.PlanHistory)
				}
			}
		})
	})
}

var fuzzUser = User{ID: "usr_abc", Email: "a@x.test", CreatedAt: t0}

// FuzzRestore: no snapshot bytes panic Restore, and a restored state has
// all its maps.
func FuzzRestore(f *testing.F) {
	fsm := newFSM()
	seed, _ := encode(&PutOrg{Org: testOrg("acme"), Create: true})
	fsm.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: seed})
	snap, _ := fsm.Snapshot()
	var buf sinkBuffer
	snap.Persist(&buf)
	f.Add(buf.Bytes())
	f.Add([]byte{1, '{', '}'})
	f.Add([]byte{2})
	f.Fuzz(func(t *testing.T, data []byte) {
		g := newFSM()
		if g.Restore(io.NopCloser(bytes.NewReader(data))) != nil {
			return
		}
		g.View(func(s *State) {
			if s.Orgs == nil || s.Keys == nil || s.Members == nil {
				t.Fatalf("restored state lacks a map: %+v", s)
			}
		})
	})
}
