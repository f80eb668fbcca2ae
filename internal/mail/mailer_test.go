package mail

import (
	"context"
	"errors"
	"net/mail"
	"testing"
)

// queueOf hands out one job and keeps the outcome reported.
type queueOf struct {
	job     *Job
	outcome *Outcome
}

func (q *queueOf) Claim(context.Context, Claim) (*Job, error) {
	j := q.job
	q.job = nil
	return j, nil
}

func (q *queueOf) Report(_ context.Context, _ string, o Outcome) error {
	q.outcome = &o
	return nil
}

func (q *queueOf) KeyRequests(context.Context) ([]KeyRequest, error) { return nil, nil }

func (q *queueOf) ReportKey(context.Context, KeyRequest, string) error { return nil }

type failingTransport struct{ err error }

func (f failingTransport) Send(context.Context, string, string, []byte) error { return f.err }

// A failed send of an event's email (no token) records the relay's error
// as it is.
func TestEventSendFailureRecorded(t *testing.T) {
	const relay = "smtp 127.0.0.1:2525: 451 4.3.0 try later"
	q := &queueOf{job: &Job{ID: "em_1", Org: "acme", Template: TemplateQuotaWarning, To: "ada@acme.test", Attempt: 1,
		Fields: map[string]string{"percent": "80"}}}
	m, err := NewMailer(Config{Name: "m1", Queue: q, Transport: failingTransport{errors.New(relay)},
		Links: Links{Base: "https://c.example"}, From: mail.Address{Address: "no-reply@c.example"}})
	if err != nil {
		t.Fatal(err)
	}
	if !m.Step(context.Background()) {
		t.Fatal("no job taken")
	}
	if q.outcome == nil || q.outcome.Sent || q.outcome.Error != relay {
		t.Fatalf("outcome %+v, want error %q", q.outcome, relay)
	}
}
