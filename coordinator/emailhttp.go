package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	cnmail "github.com/certnode/certnode/internal/mail"
)

// ResetRequestInterval spaces the reset emails one address can be sent,
// so the anonymous route cannot flood a mailbox.
const ResetRequestInterval = time.Minute

// previewEmail renders a template with sample data and the organization's
// branding, or the settings in the body (to see a change before saving
// it).
func (s *Server) previewEmail(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	var b struct {
		Settings *OrgSettings `json:"settings"`
	}
	if err := decodeBody(orEmptyObject(body), &b); err != nil {
		s.fail(w, err)
		return
	}
	name := r.PathValue("template")
	if !slices.Contains(cnmail.TemplateNames, name) {
		s.fail(w, fmt.Errorf("%w: template %q (one of %v)", ErrNotFound, name, cnmail.TemplateNames))
		return
	}
	o, _ := s.org(sc.org)
	if b.Settings != nil {
		o.Settings = *b.Settings
		if err := o.check(); err != nil {
			s.fail(w, err)
			return
		}
	}
	var sender *cnmail.Sender
	s.node.fsm.View(func(st *State) { sender = st.sender(sc.org) })
	out, err := cnmail.Render(name, cnmail.SampleData(name, cnmail.Links{Base: s.publicURL()}, branding(&o), o.ID))
	if err != nil {
		s.fail(w, err)
		return
	}
	from := "the service's address"
	if sender != nil {
		from = sender.Local + "@" + sender.Domain
	}
	writeJSON(w, http.StatusOK, map[string]any{"template": name, "subject": out.Subject, "html": out.HTML, "text": out.Text, "from": from})
}

// publicURL is where links point; previews without one configured show
// an example host.
func (s *Server) publicURL() string {
	if s.node.cfg.PublicURL != "" {
		return s.node.cfg.PublicURL
	}
	return "https://certnode.example.com"
}

// emailView is a message as the API lists it: no token hash, no claim.
type emailView struct {
	ID            string            `json:"id"`
	Template      string            `json:"template"`
	To            string            `json:"to"`
	Ref           string            `json:"ref,omitempty"`
	Fields        map[string]string `json:"fields,omitempty"`
	Status        string            `json:"status"`
	Attempts      int               `json:"attempts"`
	LastError     string            `json:"last_error,omitempty"`
	NextAttemptAt time.Time         `json:"next_attempt_at,omitzero"`
	From          string            `json:"from,omitempty"`
	DKIMDomain    string            `json:"dkim_domain,omitempty"`
	CreatedAt     time.Time         `json:"created_at"`
	UpdatedAt     time.Time         `json:"updated_at"`
	SentAt        time.Time         `json:"sent_at,omitzero"`
}

func emailViewOf(m *EmailMessage) emailView {
	v := emailView{ID: m.ID, Template: m.Template, To: m.To, Ref: m.Ref, Fields: m.Fields, Status: m.Status, Attempts: m.Attempts,
		LastError: m.LastError, From: m.From, DKIMDomain: m.DKIMDomain, CreatedAt: m.CreatedAt, UpdatedAt: m.UpdatedAt, SentAt: m.SentAt}
	if m.Status == EmailQueued {
		v.NextAttemptAt = m.NextAttemptAt
	}
	return v
}

func emailsOf(st *State) map[string]*EmailMessage          { return st.EmailMessages }
func sendingDomainsOf(st *State) map[string]*SendingDomain { return st.SendingDomains }

// listEmails lists the organization's messages, newest first; ?status=
// keeps one status, ?limit= bounds the list (default 100, at most 1000).
func (s *Server) listEmails(w http.ResponseWriter, r *http.Request, sc scope, _ []byte) {
	q := r.URL.Query()
	status, limit := q.Get("status"), 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			s.fail(w, invalid("limit %q: 1 to 1000", v))
			return
		}
		limit = n
	}
	if status != "" && !slices.Contains([]string{EmailQueued, EmailSending, EmailSent, EmailFailed}, status) {
		s.fail(w, invalid("status %q: queued, sending, sent or failed", status))
		return
	}
	all := ownedList(s, sc, emailsOf, func(_ *State, m *EmailMessage) emailView { return emailViewOf(m) })
	out := []emailView{}
	for i := len(all) - 1; i >= 0 && len(out) < limit; i-- {
		if status == "" || all[i].Status == status {
			out = append(out, all[i])
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"messages": out})
}

// sendingDomainView is a sending domain with the DNS record to publish.
type sendingDomainView struct {
	Domain     string     `json:"domain"`
	Selector   string     `json:"selector"`
	From       string     `json:"from"`
	Status     string     `json:"status"`
	Reason     string     `json:"reason,omitempty"`
	DNS        *dnsRecord `json:"dns,omitempty"` // once the key is made
	CreatedAt  time.Time  `json:"created_at"`
	CheckedAt  time.Time  `json:"checked_at,omitzero"`
	VerifiedAt time.Time  `json:"verified_at,omitzero"`
}

func sendingDomainViewOf(d *SendingDomain) sendingDomainView {
	v := sendingDomainView{Domain: d.Domain, Selector: d.Selector, From: d.FromLocal + "@" + d.Domain, Status: d.Status, Reason: d.Reason,
		CreatedAt: d.CreatedAt, CheckedAt: d.CheckedAt, VerifiedAt: d.VerifiedAt}
	if d.Record != "" {
		v.DNS = &dnsRecord{Name: cnmail.RecordName(d.Selector, d.Domain), Type: "TXT", Value: d.Record}
	}
	return v
}

func (s *Server) createSendingDomain(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	var b struct {
		Domain    string `json:"domain"`
		FromLocal string `json:"from_local"`
	}
	if err := decodeBody(body, &b); err != nil {
		s.fail(w, err)
		return
	}
	if b.FromLocal == "" {
		b.FromLocal = "no-reply"
	}
	sel, err := newID("cn")
	if err != nil {
		s.fail(w, err)
		return
	}
	now := time.Now().UTC()
	d := SendingDomain{Org: sc.org, Domain: strings.TrimSuffix(strings.ToLower(b.Domain), "."), Selector: sel, FromLocal: b.FromLocal,
		Status: DomainPendingKey, CreatedAt: now, UpdatedAt: now}
	s.write(w, r, body, &PutSendingDomain{Domain: d, Create: true}, http.StatusCreated, sendingDomainViewOf(&d))
}

func (s *Server) listSendingDomains(w http.ResponseWriter, _ *http.Request, sc scope, _ []byte) {
	out := ownedList(s, sc, sendingDomainsOf, func(_ *State, d *SendingDomain) sendingDomainView { return sendingDomainViewOf(d) })
	writeJSON(w, http.StatusOK, map[string]any{"domains": out})
}

func (s *Server) getSendingDomain(w http.ResponseWriter, r *http.Request, sc scope, _ []byte) {
	d, ok := owned(s, sc, sendingDomainsOf, sendingDomainKey(sc.org, r.PathValue("domain")))
	if !ok {
		s.fail(w, fmt.Errorf("%w: sending domain %q", ErrNotFound, r.PathValue("domain")))
		return
	}
	writeJSON(w, http.StatusOK, sendingDomainViewOf(&d))
}

// verifySendingDomain looks the DKIM record up through the configured
// resolver and records the result: verified, or failed with the reason.
func (s *Server) verifySendingDomain(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	d, ok := owned(s, sc, sendingDomainsOf, sendingDomainKey(sc.org, r.PathValue("domain")))
	if !ok {
		s.fail(w, fmt.Errorf("%w: sending domain %q", ErrNotFound, r.PathValue("domain")))
		return
	}
	if d.Record == "" {
		s.fail(w, fmt.Errorf("%w: the DKIM key of %q is not made yet (is a mailer running?); try again shortly", ErrConflict, d.Domain))
		return
	}
	name := cnmail.RecordName(d.Selector, d.Domain)
	found, err := s.node.resolver().LookupTXT(r.Context(), name)
	if err == nil {
		err = cnmail.CheckRecord(found, d.Record)
	}
	now := time.Now().UTC()
	d.CheckedAt, d.UpdatedAt = now, now
	if err != nil {
		d.Status, d.Reason = DomainFailed, fmt.Sprintf("TXT %s: %v", name, err)
		if len(d.Reason) > 500 {
			d.Reason = d.Reason[:500]
		}
	} else {
		d.Status, d.Reason = DomainVerified, ""
		if d.VerifiedAt.IsZero() {
			d.VerifiedAt = now
		}
	}
	s.write(w, r, body, &PutSendingDomain{Domain: d}, http.StatusOK, sendingDomainViewOf(&d))
}

func (s *Server) deleteSendingDomain(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	d, ok := owned(s, sc, sendingDomainsOf, sendingDomainKey(sc.org, r.PathValue("domain")))
	if !ok {
		s.fail(w, fmt.Errorf("%w: sending domain %q", ErrNotFound, r.PathValue("domain")))
		return
	}
	s.write(w, r, body, &DeleteSendingDomain{Org: d.Org, Domain: d.Domain}, http.StatusNoContent, nil)
}

// requestReset is the anonymous "forgot password" route: it always
// answers 202 at once, whether or not the address has an account, and
// queues the reset email in the background, so neither the answer nor its
// timing tells who has one.
func (s *Server) requestReset(w http.ResponseWriter, r *http.Request, body []byte) {
	var b struct {
		Email string `json:"email"`
	}
	if err := decodeBody(body, &b); err != nil {
		s.fail(w, err)
		return
	}
	email, err := NormalizeEmail(b.Email)
	if err != nil {
		s.fail(w, err)
		return
	}
	meta := s.meta(r)
	s.background(func(ctx context.Context) {
		ctx, cancel := context.WithTimeout(ctx, 2*s.node.cfg.ApplyTimeout)
		defer cancel()
		if err := s.queueReset(ctx, email, meta); err != nil {
			s.log.Warn("password reset email not queued", "err", err)
		}
	})
	writeJSON(w, http.StatusAccepted, map[string]string{"status": "if the address has an account, a reset link is on its way"})
}

// queueReset queues a reset email for the user with email, if there is
// one and none was queued for them within ResetRequestInterval (which
// QueueEmails enforces, so that requests at once queue one). The
// message is branded by the user's organization when they have exactly
// one.
func (s *Server) queueReset(ctx context.Context, email string, meta Meta) error {
	id, err := newID("eml_")
	if err != nil {
		return err
	}
	var m *EmailMessage
	s.node.fsm.View(func(st *State) {
		u := st.userByEmail(email)
		if u == nil || st.resetQueued(u.ID, meta.At) {
			return
		}
		var orgs []string
		for _, ms := range st.Memberships {
			if ms.User == u.ID {
				orgs = append(orgs, ms.Org)
			}
		}
		m = &EmailMessage{ID: id, Template: cnmail.TemplatePasswordReset, To: u.Email, Ref: u.ID, Status: EmailQueued, CreatedAt: meta.At}
		if len(orgs) == 1 {
			m.Org = orgs[0]
		}
	})
	if m == nil {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	_, err = s.node.Propose(&QueueEmails{Meta: meta, Messages: []EmailMessage{*m}})
	if errors.Is(err, errResetTooSoon) {
		return nil
	}
	return err
}

// inviteByEmail creates an invitation and queues its email in one entry;
// the answer holds no token, which only the email carries.
func (s *Server) inviteByEmail(w http.ResponseWriter, r *http.Request, body []byte, in Invitation, invitedBy string) {
	// A hash nobody holds the token of: the mailer's claim replaces it.
	_, placeholder, err := cnmail.NewToken("cni_")
	id, err2 := newID("eml_")
	if err := errors.Join(err, err2); err != nil {
		s.fail(w, err)
		return
	}
	in.Hash = placeholder
	m := EmailMessage{ID: id, Org: in.Org, Template: cnmail.TemplateInvitation, To: in.Email, Ref: in.ID,
		Fields: map[string]string{"role": in.Role, "invited_by": invitedBy}, Status: EmailQueued, CreatedAt: in.CreatedAt, UpdatedAt: in.CreatedAt}
	v := struct {
		invitationView `json:",inline"`
		EmailMessage   emailView `json:"email_message"`
	}{invitationViewOf(&in), emailViewOf(&m)}
	s.write(w, r, body, &QueueEmails{Meta: Meta{At: in.CreatedAt}, Messages: []EmailMessage{m}, Invitation: &in}, http.StatusCreated, v)
}

// inviterName is how an invitation email names who sent it: the user's
// name or address, else the organization's administrators.
func (s *Server) inviterName(p *principal) string {
	name := "An administrator"
	s.node.fsm.View(func(st *State) {
		if u := st.Users[p.userID]; u != nil {
			name = u.Email
			if u.Name != "" {
				name = u.Name + " (" + u.Email + ")"
			}
		}
	})
	return name
}

// Node routes: the mailer's side of the outbox.

// keyRequests lists the sending domains waiting for a DKIM key.
func (s *Server) keyRequests(w http.ResponseWriter, _ *http.Request, _ []byte) {
	out := []cnmail.KeyRequest{}
	s.node.fsm.View(func(st *State) {
		for _, d := range st.SendingDomains {
			if d.Status == DomainPendingKey {
				out = append(out, cnmail.KeyRequest{Org: d.Org, Domain: d.Domain, Selector: d.Selector})
			}
		}
	})
	slices.SortFunc(out, func(a, b cnmail.KeyRequest) int { return strings.Compare(a.Org+"/"+a.Domain, b.Org+"/"+b.Domain) })
	writeJSON(w, http.StatusOK, map[string]any{"domains": out})
}

// putDomainKey records the public record of the key a mailer made.
func (s *Server) putDomainKey(w http.ResponseWriter, r *http.Request, body []byte) {
	var b cnmail.KeyReport
	if err := decodeBody(body, &b); err != nil {
		s.fail(w, err)
		return
	}
	var d SendingDomain
	var ok bool
	s.node.fsm.View(func(st *State) {
		if p := st.SendingDomains[sendingDomainKey(r.PathValue("org"), r.PathValue("domain"))]; p != nil {
			d, ok = *p, true
		}
	})
	switch {
	case !ok || d.Selector != b.Selector:
		s.fail(w, fmt.Errorf("%w: sending domain %q with selector %q", ErrNotFound, r.PathValue("domain"), b.Selector))
		return
	case d.Record == b.Record:
		w.WriteHeader(http.StatusNoContent) // reported twice
		return
	}
	d.Record, d.Status, d.UpdatedAt = b.Record, DomainPendingDNS, time.Now().UTC()
	s.write(w, r, body, &PutSendingDomain{Domain: d}, http.StatusNoContent, nil)
}

// claimEmail gives the calling mailer the next due message, oldest due
// first, with what it needs to render and send it; 204 when none is due.
// A message whose link can no longer work (its invitation was revoked)
// is marked failed on the way.
func (s *Server) claimEmail(w http.ResponseWriter, r *http.Request, body []byte) {
	var b cnmail.Claim
	if err := decodeBody(body, &b); err != nil {
		s.fail(w, err)
		return
	}
	if b.LeaseSeconds < 10 || b.LeaseSeconds > 3600 {
		s.fail(w, invalid("lease_seconds: 10 to 3600"))
		return
	}
	now := time.Now().UTC()
	var due []EmailMessage
	s.node.fsm.View(func(st *State) {
		for _, m := range st.EmailMessages {
			if m.due(now) {
				due = append(due, *m)
			}
		}
	})
	slices.SortFunc(due, func(a, b EmailMessage) int {
		if c := a.NextAttemptAt.Compare(b.NextAttemptAt); c != 0 {
			return c
		}
		return a.CreatedAt.Compare(b.CreatedAt)
	})
	for _, m := range due {
		c := &ClaimEmail{ID: m.ID, Mailer: b.Mailer, At: now, Until: now.Add(time.Duration(b.LeaseSeconds) * time.Second),
			InvitationHash: b.InvitationHash, ResetHash: b.ResetHash}
		_, err := s.node.Propose(c)
		if errors.Is(err, ErrGone) {
			_, err = s.node.Propose(&RecordEmail{ID: m.ID, At: now, Cancel: true, Outcome: cnmail.Outcome{Error: strings.TrimPrefix(err.Error(), "gone: ")}})
			if err == nil || errors.Is(err, ErrConflict) {
				continue
			}
		}
		if errors.Is(err, ErrConflict) {
			continue // another mailer took it
		}
		if err != nil {
			s.fail(w, err)
			return
		}
		var job cnmail.Job
		s.node.fsm.View(func(st *State) { job = st.job(st.EmailMessages[m.ID]) })
		writeJSON(w, http.StatusOK, job)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// job is what a mailer needs of a claimed message.
func (st *State) job(m *EmailMessage) cnmail.Job {
	j := cnmail.Job{ID: m.ID, Org: m.Org, Template: m.Template, To: m.To, Fields: m.Fields, Attempt: m.Attempts,
		Brand: branding(st.Orgs[m.Org]), Sender: st.sender(m.Org)}
	switch m.Template {
	case cnmail.TemplateInvitation:
		if in := st.Invitations[m.Ref]; in != nil {
			j.ExpiresAt = in.ExpiresAt
		}
	case cnmail.TemplatePasswordReset:
		if t := st.ResetTokens[m.TokenHash]; t != nil {
			j.ExpiresAt = t.ExpiresAt
		}
	}
	return j
}

// recordEmail records what came of the calling mailer's attempt.
func (s *Server) recordEmail(w http.ResponseWriter, r *http.Request, body []byte) {
	var o cnmail.Outcome
	if err := decodeBody(body, &o); err != nil {
		s.fail(w, err)
		return
	}
	if len(o.Error) > 1000 {
		o.Error = strings.ToValidUTF8(o.Error[:1000], "")
	}
	s.write(w, r, body, &RecordEmail{ID: r.PathValue("id"), At: time.Now().UTC(), Outcome: o}, http.StatusNoContent, nil)
}

// queueEventEmail queues an event's email to each of the organization's
// recipients; an event queued before makes nothing new.
func (s *Server) queueEventEmail(w http.ResponseWriter, r *http.Request, body []byte) {
	var e cnmail.EventEmail
	if err := decodeBody(body, &e); err != nil {
		s.fail(w, err)
		return
	}
	if !slices.Contains(cnmail.TemplateNames, e.Template) || e.Template == cnmail.TemplateInvitation || e.Template == cnmail.TemplatePasswordReset ||
		e.EventID == "" || len(e.EventID) > 200 {
		s.fail(w, invalid("an event email needs an event id and an event template"))
		return
	}
	now := time.Now().UTC()
	var msgs []EmailMessage
	var known bool
	s.node.fsm.View(func(st *State) {
		_, known = st.Orgs[e.Org]
		for _, to := range st.recipients(e.Org) {
			id := eventEmailID(e.EventID, to)
			if st.EmailMessages[id] == nil {
				msgs = append(msgs, EmailMessage{ID: id, Org: e.Org, Template: e.Template, To: to, Ref: e.EventID, Fields: e.Fields,
					Status: EmailQueued, CreatedAt: now})
			}
		}
	})
	if !known {
		// An organization deleted since: nobody to tell, nothing to retry.
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if len(msgs) == 0 {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	// Many recipients take several commands; after a failure the
	// mailer's retry queues those not queued yet.
	for len(msgs) > maxQueueEmails {
		if !s.commit(w, r, &QueueEmails{Meta: Meta{At: now}, Messages: msgs[:maxQueueEmails]}) {
			return
		}
		msgs = msgs[maxQueueEmails:]
	}
	s.write(w, r, body, &QueueEmails{Meta: Meta{At: now}, Messages: msgs}, http.StatusNoContent, nil)
}
