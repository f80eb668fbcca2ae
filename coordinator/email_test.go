package coordinator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/mail"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/brand"
	cnmail "github.com/certnode/certnode/internal/mail"
	"github.com/certnode/certnode/internal/mail/mailtest"
	"github.com/certnode/certnode/internal/testenv"
)

func nodeCaller(t *testing.T, n *testServer) *client {
	c := newClient(t, n)
	c.hdr["Authorization"] = "Bearer " + testNode
	return c
}

// outbox is a transport that keeps what it is given, or fails with fail.
type outbox struct {
	mu   sync.Mutex
	sent [][]byte
	fail error
}

func (o *outbox) Send(_ context.Context, _, _ string, raw []byte) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.fail != nil {
		return o.fail
	}
	o.sent = append(o.sent, bytes.Clone(raw))
	return nil
}

func (o *outbox) take() [][]byte {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := o.sent
	o.sent = nil
	return out
}

// The outbox end to end, with the real mailer on a transport that keeps
// what it sends: a sending domain gets its key from the mailer and is
// verified through the configured DNS server; an emailed invitation goes
// out from it, DKIM-signed and branded, and its link's token accepts the
// invitation; a failing relay is retried and then recorded as failed;
// an event is mailed once to each owner and admin however often it is
// queued; a forgotten password is reset through the emailed link.
func TestEmailOutbox(t *testing.T) {
	ns := mailtest.StartDNS(t)
	n := startNodeCfg(t, Config{ID: "solo", RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", DataDir: t.TempDir(), Bootstrap: true,
		PublicURL: "https://certnode.example.test", Resolver: &cnmail.Resolver{Addr: ns.Addr}})
	testenv.WaitFor(t, "leader", 10*time.Second, func() (bool, string) { return n.node.IsLeader(), "" })
	op := operator(t, n)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"Acme Inc"}`)
	op.must(200, "PATCH", "/v1/orgs/acme", `{"settings":{"display_name":"Acme Rockets","brand_color":"#ff6600","support_email":"help@acme.test","logo_url":"https://acme.test/logo.png"}}`)
	ada := createUser(op, "ada@acme.test")
	op.must(200, "PUT", "/v1/orgs/acme/members/"+ada, `{"role":"owner"}`)

	mc, err := NewMailClient([]string{n.Addr()}, nil, testNode)
	if err != nil {
		t.Fatal(err)
	}
	box := &outbox{}
	m, err := cnmail.NewMailer(cnmail.Config{Name: "m1", Queue: mc, Transport: box, Keys: cnmail.DirKeys{Dir: t.TempDir()},
		Links: cnmail.Links{Base: "https://certnode.example.test"}, From: mail.Address{Name: "CertNode", Address: "no-reply@certnode.test"},
		Backoff: []time.Duration{time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// step runs the mailer until it finds no work.
	step := func() {
		for i := 0; i < 20 && m.Step(ctx); i++ {
		}
	}

	// A sending domain: the mailer makes its key, DNS publishes it.
	var d sendingDomainView
	json.Unmarshal([]byte(op.must(201, "POST", "/v1/orgs/acme/email/domains", `{"domain":"mail.acme.test"}`)), &d)
	if d.Status != DomainPendingKey || d.DNS != nil {
		t.Fatalf("new domain: %+v", d)
	}
	op.must(409, "POST", "/v1/orgs/acme/email/domains/mail.acme.test/verify", "")
	step()
	json.Unmarshal([]byte(op.must(200, "GET", "/v1/orgs/acme/email/domains/mail.acme.test", "")), &d)
	if d.Status != DomainPendingDNS || d.DNS == nil || d.DNS.Name != d.Selector+"._domainkey.mail.acme.test" || !strings.HasPrefix(d.DNS.Value, "v=DKIM1; k=rsa; p=") {
		t.Fatalf("domain with its key: %+v", d)
	}
	json.Unmarshal([]byte(op.must(200, "POST", "/v1/orgs/acme/email/domains/mail.acme.test/verify", "")), &d)
	if d.Status != DomainFailed || !strings.Contains(d.Reason, "no DKIM record") {
		t.Fatalf("unpublished: %+v", d)
	}
	ns.Set(d.DNS.Name, "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAwrong")
	json.Unmarshal([]byte(op.must(200, "POST", "/v1/orgs/acme/email/domains/mail.acme.test/verify", "")), &d)
	if d.Status != DomainFailed || !strings.Contains(d.Reason, "does not hold this key") {
		t.Fatalf("another key published: %+v", d)
	}
	ns.Set(d.DNS.Name, d.DNS.Value)
	json.Unmarshal([]byte(op.must(200, "POST", "/v1/orgs/acme/email/domains/mail.acme.test/verify", "")), &d)
	if d.Status != DomainVerified || d.VerifiedAt.IsZero() {
		t.Fatalf("published: %+v", d)
	}

	// An invitation by email: no token in the answer; the email's is the
	// one that works.
	inv := op.must(201, "POST", "/v1/orgs/acme/invitations", `{"email":"grace@example.test","role":"developer","send_email":true}`)
	if strings.Contains(inv, "cni_") || !strings.Contains(inv, `"status":"queued"`) {
		t.Fatalf("invitation by email: %s", inv)
	}
	step()
	sent := box.take()
	if len(sent) != 1 {
		t.Fatalf("%d messages sent, want 1", len(sent))
	}
	raw := string(sent[0])
	verifications, err := dkim.VerifyWithOptions(bytes.NewReader(sent[0]), &dkim.VerifyOptions{LookupTXT: ns.LookupTXT})
	if err != nil || len(verifications) != 1 || verifications[0].Err != nil || verifications[0].Domain != "mail.acme.test" {
		t.Fatalf("dkim: %v %+v\n%s", err, verifications, raw)
	}
	msg, err := mail.ReadMessage(strings.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if from := msg.Header.Get("From"); from != `"Acme Rockets" <no-reply@mail.acme.test>` {
		t.Fatalf("from %q", from)
	}
	if !strings.HasPrefix(msg.Header.Get("Content-Type"), "multipart/alternative") {
		t.Fatalf("content type %q", msg.Header.Get("Content-Type"))
	}
	body, _ := io.ReadAll(msg.Body)
	token := cnmail.TokenOf(linkIn(t, string(body)))
	if !strings.HasPrefix(token, "cni_") {
		t.Fatalf("no token in the link:\n%s", body)
	}
	anon := newClient(t, n)
	anon.must(201, "POST", "/v1/auth/invitations/accept", `{"token":"`+token+`","name":"Grace","password":"password-of-grace"}`)

	var list struct {
		Messages []emailView `json:"messages"`
	}
	json.Unmarshal([]byte(op.must(200, "GET", "/v1/orgs/acme/email/messages", "")), &list)
	if len(list.Messages) != 1 || list.Messages[0].Status != EmailSent || list.Messages[0].DKIMDomain != "mail.acme.test" || list.Messages[0].Attempts != 1 {
		t.Fatalf("messages: %+v", list)
	}

	// A relay that refuses: retried once (the backoff has one step), then
	// failed with the relay's reason.
	box.fail = errors.New("smtp 127.0.0.1:2525: 535 5.7.8 authentication failed")
	op.must(201, "POST", "/v1/orgs/acme/invitations", `{"email":"hopper@example.test","role":"viewer","send_email":true}`)
	testenv.WaitFor(t, "the retry to fail", 5*time.Second, func() (bool, string) {
		step()
		json.Unmarshal([]byte(op.must(200, "GET", "/v1/orgs/acme/email/messages?status=failed", "")), &list)
		return len(list.Messages) == 1, ""
	})
	if len(list.Messages) != 1 || list.Messages[0].Attempts != 2 || !strings.Contains(list.Messages[0].LastError, "535 5.7.8") {
		t.Fatalf("failed messages: %+v", list)
	}
	box.fail = nil

	// An event queued twice is one message to each owner and admin.
	nc := nodeCaller(t, n)
	ev := `{"event_id":"evt_1","org":"acme","template":"quota_warning","fields":{"period":"2030-01","used":"80","limit":"100","percent":"80"}}`
	nc.must(204, "POST", "/v1/node/email/events", ev)
	nc.must(204, "POST", "/v1/node/email/events", ev)
	step()
	sent = box.take()
	if len(sent) != 1 || !strings.Contains(string(sent[0]), "To: <ada@acme.test>") || !strings.Contains(string(sent[0]), "80% of this month") {
		t.Fatalf("event mail: %d messages\n%s", len(sent), bytes.Join(sent, []byte("\n----\n")))
	}

	// Forgot password: the answer is the same for anyone; ada gets a link.
	anon.must(202, "POST", "/v1/auth/password-reset/request", `{"email":"ada@acme.test"}`)
	anon.must(202, "POST", "/v1/auth/password-reset/request", `{"email":"nobody@acme.test"}`)
	var reset []byte
	testenv.WaitFor(t, "the reset email", 5*time.Second, func() (bool, string) {
		step()
		if s := box.take(); len(s) > 0 {
			reset = s[0]
		}
		return reset != nil, ""
	})
	rmsg, _ := mail.ReadMessage(bytes.NewReader(reset))
	rbody, _ := io.ReadAll(rmsg.Body)
	rtoken := cnmail.TokenOf(linkIn(t, string(rbody)))
	anon.must(204, "POST", "/v1/auth/password-reset", `{"token":"`+rtoken+`","password":"a-new-password-for-ada"}`)
	anon.login("ada@acme.test", "a-new-password-for-ada")
	if len(box.take()) != 0 {
		t.Fatal("nobody@acme.test got mail")
	}
}

// linkIn is the first dashboard link of a text body (quoted-printable
// soft breaks undone).
func linkIn(t *testing.T, body string) string {
	t.Helper()
	body = strings.ReplaceAll(body, "=\r\n", "")
	body = strings.ReplaceAll(body, "=3D", "=")
	i := strings.Index(body, "https://certnode.example.test/dashboard/#/")
	if i < 0 {
		t.Fatalf("no link in\n%s", body)
	}
	end := strings.IndexAny(body[i:], " \r\n\"<")
	return body[i : i+end]
}

// An event of an organization with more owners and admins than one
// command holds is queued to all of them, in several commands.
func TestEventEmailManyRecipients(t *testing.T) {
	n := soloNode(t)
	op := operator(t, n)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"Acme"}`)
	const people = maxQueueEmails*2 + 5
	for i := range people {
		u := User{ID: fmt.Sprintf("usr_many%03d", i), Email: fmt.Sprintf("p%03d@acme.test", i), CreatedAt: t0}
		role := RoleAdmin
		if i == 0 {
			role = RoleOwner
		}
		for _, c := range []Command{&CreateUser{User: u, Password: "$argon2id$x"},
			&PutMembership{Membership: Membership{Org: "acme", User: u.ID, Role: role, CreatedAt: t0}}} {
			if _, err := n.node.Propose(c); err != nil {
				t.Fatal(err)
			}
		}
	}
	ev := `{"event_id":"evt_many","org":"acme","template":"security_alert","fields":{"summary":"s"}}`
	nodeCaller(t, n).must(204, "POST", "/v1/node/email/events", ev)
	nodeCaller(t, n).must(204, "POST", "/v1/node/email/events", ev)
	to := map[string]bool{}
	n.node.fsm.View(func(st *State) {
		for _, m := range st.EmailMessages {
			if m.Ref == "evt_many" {
				to[m.To] = true
			}
		}
	})
	if len(to) != people {
		t.Fatalf("%d recipients queued, want %d", len(to), people)
	}
}

// The mail client marks a refusal that asking again cannot change, so
// that the mailer drops the event; a failure of the coordinator, or an
// answer about the mailer's token or pace, is retried.
func TestMailClientRefusal(t *testing.T) {
	for status, refused := range map[int]bool{400: true, 404: true, 409: true, 401: false, 403: false, 429: false, 500: false, 503: false} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			writeError(w, status, "x", "no")
		}))
		mc, err := NewMailClient([]string{srv.URL}, nil, testNode)
		if err != nil {
			t.Fatal(err)
		}
		err = mc.Enqueue(context.Background(), cnmail.EventEmail{EventID: "evt_1", Org: "acme", Template: cnmail.TemplateSecurityAlert})
		if err == nil || errors.Is(err, cnmail.ErrRefused) != refused {
			t.Errorf("status %d: %v, want refused %v", status, err, refused)
		}
		srv.Close()
	}
}

// Password reset emails to one user are a minute apart, decided in the
// log: requests at once queue one message, and so do two commands that
// each passed the handler's check.
func TestResetRequestInterval(t *testing.T) {
	n := soloNode(t)
	op := operator(t, n)
	op.must(201, "POST", "/v1/admin/orgs", `{"id":"acme","name":"Acme"}`)
	ada := createUser(op, "ada@acme.test")
	bob := createUser(op, "bob@acme.test")
	resets := func(user string) int {
		count := 0
		n.node.fsm.View(func(st *State) {
			for _, m := range st.EmailMessages {
				if m.Template == cnmail.TemplatePasswordReset && m.Ref == user {
					count++
				}
			}
		})
		return count
	}

	anon := newClient(t, n)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { anon.must(202, "POST", "/v1/auth/password-reset/request", `{"email":"ada@acme.test"}`) })
	}
	wg.Wait()
	n.tasks.Wait()
	if got := resets(ada); got != 1 {
		t.Fatalf("%d reset emails queued for requests at once, want 1", got)
	}

	at := time.Now().UTC()
	reset := func(id string, at time.Time) error {
		_, err := n.node.Propose(&QueueEmails{Meta: Meta{At: at}, Messages: []EmailMessage{{ID: id, Template: cnmail.TemplatePasswordReset,
			To: "bob@acme.test", Ref: bob, Status: EmailQueued, CreatedAt: at}}})
		return err
	}
	if err := reset("eml_bobbobbobbobbobbobbob1", at); err != nil {
		t.Fatal(err)
	}
	if err := reset("eml_bobbobbobbobbobbobbob2", at.Add(ResetRequestInterval-time.Second)); !errors.Is(err, errResetTooSoon) {
		t.Fatalf("a second reset within the interval: %v", err)
	}
	if err := reset("eml_bobbobbobbobbobbobbob3", at.Add(ResetRequestInterval)); err != nil {
		t.Fatalf("a reset after the interval: %v", err)
	}
	if got := resets(bob); got != 2 {
		t.Fatalf("%d reset emails for bob, want 2", got)
	}
}

// Mail wears the branding the pages wear: the palette's primary colour,
// the display name (else the name), the support page.
func TestEmailBrandingIsThePages(t *testing.T) {
	o := &Org{ID: "acme", Name: "Acme Inc", Settings: OrgSettings{Colors: brand.Palette{Primary: "#123456"}, SupportURL: "https://help.acme.test",
		SupportEmail: "help@acme.test", LogoURL: "https://acme.test/logo.png"}}
	b := branding(o)
	if b.Name != "Acme Inc" || b.Color != "#123456" || b.SupportURL != "https://help.acme.test" || b.SupportEmail != "help@acme.test" || b.LogoURL != "https://acme.test/logo.png" {
		t.Fatalf("%+v", b)
	}
	o.Settings.DisplayName, o.Settings.Colors, o.Settings.BrandColor = "Acme", brand.Palette{}, "#abcdef"
	if b := branding(o); b.Name != "Acme" || b.Color != "#abcdef" {
		t.Fatalf("%+v", b)
	}
	r, err := cnmail.Render(cnmail.TemplateQuotaWarning, cnmail.Data{Brand: branding(o), Recipient: "x@acme.test", Link: "https://certnode.test/dashboard/#/usage"})
	if err != nil || !strings.Contains(r.HTML, "https://help.acme.test") || !strings.Contains(r.Text, "Help: https://help.acme.test") {
		t.Fatalf("%v\n%s\n%s", err, r.HTML, r.Text)
	}
}
