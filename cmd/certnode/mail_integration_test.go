//go:build integration

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/go-json-experiment/json"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/coordinator"
	"github.com/certnode/certnode/internal/kafka"
	cnmail "github.com/certnode/certnode/internal/mail"
	"github.com/certnode/certnode/internal/mail/mailtest"
	"github.com/certnode/certnode/internal/recordauth"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// mailpitMessage is a message as mailpit's API shows it.
type mailpitMessage struct {
	ID   string `json:"ID"`
	From struct {
		Name    string `json:"Name"`
		Address string `json:"Address"`
	} `json:"From"`
	Subject string `json:"Subject"`
	Text    string `json:"Text"`
	HTML    string `json:"HTML"`
}

// fetchMail waits for the message to to arrive at mailpit and returns it
// with its raw source.
func fetchMail(t *testing.T, api, to string) (mailpitMessage, []byte) {
	t.Helper()
	get := func(path string) []byte {
		resp, err := http.Get(api + path)
		if err != nil {
			t.Fatalf("mailpit %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("mailpit %s: %d %s", path, resp.StatusCode, b)
		}
		return b
	}
	var id string
	testenv.WaitFor(t, "mail to "+to+" at mailpit", 30*time.Second, func() (bool, string) {
		var res struct {
			Messages []mailpitMessage `json:"messages"`
		}
		json.Unmarshal(get("/api/v1/search?query="+url.QueryEscape(`to:"`+to+`"`)), &res, json.RejectUnknownMembers(false))
		if len(res.Messages) > 0 {
			id = res.Messages[0].ID
		}
		return id != "", ""
	})
	var m mailpitMessage
	if err := json.Unmarshal(get("/api/v1/message/"+id), &m, json.RejectUnknownMembers(false)); err != nil {
		t.Fatal(err)
	}
	return m, get("/api/v1/message/" + id + "/raw")
}

// plainSMTP is an SMTP server on loopback that offers no STARTTLS.
func plainSMTP(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				io.WriteString(c, "220 plain.test ESMTP\r\n")
				for i := 0; i < 20; i++ {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					switch cmd := strings.ToUpper(strings.TrimSpace(line)); {
					case strings.HasPrefix(cmd, "EHLO"), strings.HasPrefix(cmd, "HELO"):
						io.WriteString(c, "250-plain.test\r\n250 AUTH PLAIN\r\n")
					case strings.HasPrefix(cmd, "QUIT"):
						io.WriteString(c, "221 bye\r\n")
						return
					default:
						io.WriteString(c, "502 not here\r\n")
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// Branded email end to end against mailpit (STARTTLS, authentication
// required) and real Kafka: a sending domain gets its DKIM key from the
// mailer and is verified through a DNS server on loopback; an invitation
// arrives branded in both parts, DKIM-signed (verified with go-msgauth
// against that DNS server), and its link's token accepts the invitation; a
// forgotten password is reset through the emailed link; a quota.warning
// put on certnode.events is mailed to the owner; a wrong SMTP password and
// a relay refusing STARTTLS are retried, then recorded as failed with the
// reason. No log line holds the SMTP password, a token or DKIM key
// material.
func TestMailerMailpit(t *testing.T) {
	mp := testenv.MailpitServer(t)
	ns := mailtest.StartDNS(t)
	logs := &syncBuffer{}
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	t.Cleanup(func() { slog.SetDefault(prev) })

	suffix := testenv.RandomSuffix()
	org, domain := "mail-"+suffix, "mail-"+suffix+".example.test"
	const public = "https://certnode.example.test"
	srv, err := coordinator.NewServer(coordinator.Config{ID: "mail", RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", DataDir: t.TempDir(),
		Bootstrap: true, AdminToken: e2eAdminToken, NodeToken: e2eNodeToken, PublicURL: public, Resolver: &cnmail.Resolver{Addr: ns.Addr}})
	if err != nil {
		t.Fatal(err)
	}
	testenv.RunUntilCleanup(t, srv.Run, func() { srv.Close() })
	testenv.WaitFor(t, "the coordinator leads", 10*time.Second, func() (bool, string) { return srv.Node().IsLeader(), "" })
	base := "http://" + srv.Addr()
	call := func(want int, method, path, token, body string) string {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, b, want)
		}
		return string(b)
	}
	op := func(want int, method, path, body string) string { return call(want, method, path, e2eAdminToken, body) }
	op(201, "POST", "/v1/admin/orgs", `{"id":"`+org+`","name":"Mail Test"}`)
	op(200, "PATCH", "/v1/orgs/"+org, `{"settings":{"display_name":"Globex Mail","brand_color":"#0a7c4e","support_email":"help@globex.test","logo_url":"https://globex.test/logo.png"}}`)
	owner := "owner-" + suffix + "@globex.test"
	var u struct {
		ID string `json:"id"`
	}
	json.Unmarshal([]byte(op(201, "POST", "/v1/admin/users", `{"email":"`+owner+`","password":"password-of-the-owner"}`)), &u, json.RejectUnknownMembers(false))
	op(200, "PUT", "/v1/orgs/"+org+"/members/"+u.ID, `{"role":"owner"}`)

	// The mailer, built from its flags as certnode mailer builds it.
	t.Setenv(cnmail.PasswordEnv, mp.Password)
	dkimDir := t.TempDir()
	mf := mailFlags{smtp: mp.SMTP, user: mp.Username, ca: mp.CAFile, from: "no-reply@certnode.example.test", fromName: "CertNode",
		publicURL: public, dkimDir: dkimDir, backoff: "10ms,10ms", poll: 50 * time.Millisecond}
	mc, err := coordinator.NewMailClient([]string{srv.Addr()}, nil, e2eNodeToken)
	if err != nil {
		t.Fatal(err)
	}
	good, closeKeys, err := mf.mailer(mc, "good", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeKeys()
	ctx := context.Background()
	drain := func(m *cnmail.Mailer) {
		for i := 0; i < 50 && m.Step(ctx); i++ {
		}
	}

	// The sending domain.
	op(201, "POST", "/v1/orgs/"+org+"/email/domains", `{"domain":"`+domain+`","from_local":"notify"}`)
	drain(good)
	var d struct {
		Status string `json:"status"`
		DNS    struct {
			Name  string `json:"name"`
			Value string `json:"value"`
		} `json:"dns"`
	}
	json.Unmarshal([]byte(op(200, "GET", "/v1/orgs/"+org+"/email/domains/"+domain, "")), &d, json.RejectUnknownMembers(false))
	if d.Status != "pending_dns" || d.DNS.Value == "" {
		t.Fatalf("domain after the mailer ran: %+v", d)
	}
	ns.Set(d.DNS.Name, d.DNS.Value)
	json.Unmarshal([]byte(op(200, "POST", "/v1/orgs/"+org+"/email/domains/"+domain+"/verify", "")), &d, json.RejectUnknownMembers(false))
	if d.Status != "verified" {
		t.Fatalf("verify: %+v", d)
	}

	// An invitation.
	invitee := "invitee-" + suffix + "@example.test"
	op(201, "POST", "/v1/orgs/"+org+"/invitations", `{"email":"`+invitee+`","role":"developer","send_email":true}`)
	drain(good)
	msg, raw := fetchMail(t, mp.API, invitee)
	if msg.From.Address != "notify@"+domain || msg.From.Name != "Globex Mail" || !strings.Contains(msg.Subject, "Globex Mail") {
		t.Fatalf("from %+v, subject %q", msg.From, msg.Subject)
	}
	for part, body := range map[string]string{"text": msg.Text, "html": msg.HTML} {
		if !strings.Contains(body, "Globex Mail") || !strings.Contains(body, "help@globex.test") || !strings.Contains(body, public+"/dashboard/#/invitations/accept?token=cni_") {
			t.Fatalf("%s part lacks the branding or the link:\n%s", part, body)
		}
	}
	if !strings.Contains(msg.HTML, "#0a7c4e") || !strings.Contains(msg.HTML, `src="https://globex.test/logo.png"`) {
		t.Fatalf("html part lacks the colour or the logo:\n%s", msg.HTML)
	}
	if !bytes.Contains(raw, []byte("multipart/alternative")) {
		t.Fatalf("not multipart/alternative:\n%s", raw)
	}
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(raw), &dkim.VerifyOptions{LookupTXT: ns.LookupTXT})
	if err != nil || len(vs) != 1 || vs[0].Err != nil || vs[0].Domain != domain {
		t.Fatalf("dkim: %v %+v", err, vs)
	}
	token := cnmail.TokenOf(firstLink(t, msg.Text, public))
	call(201, "POST", "/v1/auth/invitations/accept", "", `{"token":"`+token+`","name":"Invitee","password":"password-of-the-invitee"}`)

	// A forgotten password.
	call(202, "POST", "/v1/auth/password-reset/request", "", `{"email":"`+owner+`"}`)
	var reset mailpitMessage
	testenv.WaitFor(t, "the reset email", 30*time.Second, func() (bool, string) {
		drain(good)
		var res struct {
			Messages []mailpitMessage `json:"messages"`
		}
		resp, err := http.Get(mp.API + "/api/v1/search?query=" + url.QueryEscape(`to:"`+owner+`" subject:"Reset"`))
		if err == nil {
			json.UnmarshalRead(resp.Body, &res, json.RejectUnknownMembers(false))
			resp.Body.Close()
		}
		return len(res.Messages) > 0, ""
	})
	reset, _ = fetchMail(t, mp.API, owner)
	rtoken := cnmail.TokenOf(firstLink(t, reset.Text, public))
	if !strings.HasPrefix(rtoken, "cnr_") {
		t.Fatalf("reset link:\n%s", reset.Text)
	}
	call(204, "POST", "/v1/auth/password-reset", "", `{"token":"`+rtoken+`","password":"a-new-password-for-the-owner"}`)

	// A quota warning through certnode.events on real Kafka.
	kcfg := kafka.Config{Brokers: testenv.KafkaBrokers(t), TopicPrefix: "mail-" + suffix, Partitions: 1, ReplicationFactor: 1}
	if err := ensureTopics(ctx, kcfg); err != nil {
		t.Fatal(err)
	}
	mac, err := recordauth.NewKeyring([]byte("internal-secret-of-the-mail-test-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	ev, err := cnmail.NewEvents(cnmail.EventsConfig{Kafka: kcfg, Group: kafka.Group(kcfg.TopicPrefix, kafka.RoleMailer), MAC: mac, Queue: mc})
	if err != nil {
		t.Fatal(err)
	}
	testenv.RunUntilCleanup(t, ev.Run, ev.Close)
	rec := schemas.EventRecord{V: schemas.EnvelopeVersion, ID: schemas.EventID(org, "quota", "2030-01", "80"), Org: org,
		Event: schemas.WebhookEvent{Type: schemas.EventQuotaWarning, Timestamp: time.Now().UTC(), Data: []byte(`{"period":"2030-01","used":80000,"limit":100000,"percent":80}`)}}
	val, _ := json.Marshal(&rec)
	pcl, err := kafka.NewClient(kcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pcl.Close()
	if err := pcl.ProduceSync(ctx, &kgo.Record{Topic: kcfg.Topics().Events, Key: []byte(org), Value: val,
		Headers: []kgo.RecordHeader{{Key: schemas.HeaderIngestMAC, Value: mac.Header(val)}}}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	var quota mailpitMessage
	testenv.WaitFor(t, "the quota warning", 60*time.Second, func() (bool, string) {
		drain(good)
		resp, err := http.Get(mp.API + "/api/v1/search?query=" + url.QueryEscape(`to:"`+owner+`" subject:"receipts used"`))
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		var res struct {
			Messages []mailpitMessage `json:"messages"`
		}
		json.UnmarshalRead(resp.Body, &res, json.RejectUnknownMembers(false))
		if len(res.Messages) > 0 {
			quota = res.Messages[0]
		}
		return quota.ID != "", ""
	})
	if !strings.Contains(quota.Subject, "Globex Mail: 80% of this month") {
		t.Fatalf("quota mail subject %q", quota.Subject)
	}

	// A wrong password, then a relay without STARTTLS (required): each
	// message is retried (two retries), then failed with the reason.
	failing := func(name string, f mailFlags, password string) {
		t.Helper()
		t.Setenv(cnmail.PasswordEnv, password)
		m, closeBad, err := f.mailer(mc, name, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer closeBad()
		who := name + "-" + suffix + "@example.test"
		op(201, "POST", "/v1/orgs/"+org+"/invitations", `{"email":"`+who+`","role":"viewer","send_email":true}`)
		var list struct {
			Messages []struct {
				To        string `json:"to"`
				Status    string `json:"status"`
				Attempts  int    `json:"attempts"`
				LastError string `json:"last_error"`
			} `json:"messages"`
		}
		testenv.WaitFor(t, name+": the message fails", 30*time.Second, func() (bool, string) {
			drain(m)
			json.Unmarshal([]byte(op(200, "GET", "/v1/orgs/"+org+"/email/messages?status=failed", "")), &list, json.RejectUnknownMembers(false))
			for _, x := range list.Messages {
				if x.To == who {
					return true, ""
				}
			}
			return false, ""
		})
		for _, x := range list.Messages {
			if x.To == who {
				t.Logf("%s: %d attempts, %s", name, x.Attempts, x.LastError)
				if x.Attempts != 3 {
					t.Errorf("%s: %d attempts, want 3", name, x.Attempts)
				}
				if want := map[string]string{"wrong-password": "535", "no-starttls": "STARTTLS"}[name]; !strings.Contains(x.LastError, want) {
					t.Errorf("%s: last error %q does not say %q", name, x.LastError, want)
				}
			}
		}
	}
	failing("wrong-password", mf, "not-the-password")
	plain := mf
	plain.smtp, plain.requireTLS = plainSMTP(t), true
	failing("no-starttls", plain, mp.Password)

	// No secret in any log line.
	out := logs.String()
	secrets := map[string]string{"the SMTP password": mp.Password, "the invitation token": token, "the reset token": rtoken}
	keyFiles, _ := filepath.Glob(filepath.Join(dkimDir, "*.pem"))
	if len(keyFiles) == 0 {
		t.Fatal("no DKIM key file was made")
	}
	for _, f := range keyFiles {
		pem, _ := os.ReadFile(f)
		lines := strings.Split(strings.TrimSpace(string(pem)), "\n")
		secrets["DKIM key material of "+filepath.Base(f)] = lines[len(lines)/2]
		der, _ := base64.StdEncoding.DecodeString(strings.Join(lines[1:len(lines)-1], ""))
		secrets["DKIM key bytes (base64url) of "+filepath.Base(f)] = base64.RawURLEncoding.EncodeToString(der[40:80])
	}
	for what, s := range secrets {
		if s == "" || strings.Contains(out, s) {
			t.Errorf("%s appears in the logs (or is empty)", what)
		}
	}
	if !strings.Contains(out, "mail sent") || !strings.Contains(out, "mail not sent") {
		t.Fatalf("the logs do not show the sends:\n%s", out)
	}
}

// firstLink is the first link under public in a text part.
func firstLink(t *testing.T, text, public string) string {
	t.Helper()
	i := strings.Index(text, public+"/dashboard/#/")
	if i < 0 {
		t.Fatalf("no link in\n%s", text)
	}
	end := strings.IndexAny(text[i:], " \r\n")
	if end < 0 {
		end = len(text) - i
	}
	return text[i : i+end]
}
