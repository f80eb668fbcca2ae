package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/certnode/certnode/schemas"
)

// Report is a saved analytics report of an organization (schemas.Report):
// ingest runs it, the dispatcher on its schedule.
type Report struct {
	schemas.Report `json:",inline"`
	// Announced is the last period of its schedule a report.ready event
	// was sent for (AnnounceReport).
	Announced string `json:"announced,omitempty"`
}

const (
	cmdPutReport      cmdType = 22
	cmdDeleteReport   cmdType = 23
	cmdAnnounceReport cmdType = 24
)

// maxReportsPerOrg bounds an organization's saved reports.
const maxReportsPerOrg = 200

func (r *Report) check() error {
	var errs []error
	if !strings.HasPrefix(r.ID, "rpt_") || !idPattern.MatchString(r.ID[4:]) {
		errs = append(errs, invalid("report id %q", r.ID))
	}
	if err := r.Report.Check(); err != nil {
		errs = append(errs, invalid("%v", err))
	}
	if r.CreatedAt.IsZero() || r.UpdatedAt.IsZero() {
		errs = append(errs, invalid("created_at and updated_at are required"))
	}
	return errors.Join(errs...)
}

// PutReport saves a new report (Create) or replaces one.
type PutReport struct {
	Meta   `json:"meta,omitzero"`
	Report Report `json:"report"`
	Create bool   `json:"create,omitempty"`
	// Expect is the UpdatedAt the change was made from: a change made
	// meanwhile is not overwritten unseen.
	Expect time.Time `json:"expect,omitzero"`
}

func (*PutReport) cmdType() cmdType { return cmdPutReport }
func (c *PutReport) validate(s *State) error {
	r := c.Report
	if err := r.check(); err != nil {
		return err
	}
	if _, ok := s.Orgs[r.Org]; !ok {
		return fmt.Errorf("%w: organization %q", ErrNotFound, r.Org)
	}
	old, exists := s.Reports[r.ID]
	switch {
	case c.Create && exists:
		return fmt.Errorf("%w: report %q exists", ErrConflict, r.ID)
	case !c.Create && (!exists || old.Org != r.Org):
		return fmt.Errorf("%w: report %q", ErrNotFound, r.ID)
	case !c.Create && !c.Expect.IsZero() && !old.UpdatedAt.Equal(c.Expect):
		return fmt.Errorf("%w: report %q changed meanwhile; read it again and retry", ErrConflict, r.ID)
	}
	if c.Create {
		n := 0
		for _, o := range s.Reports {
			if o.Org == r.Org {
				n++
			}
		}
		if n >= maxReportsPerOrg {
			return fmt.Errorf("%w: an organization has at most %d reports", ErrConflict, maxReportsPerOrg)
		}
	}
	return nil
}
func (c *PutReport) apply(s *State) {
	r := c.Report
	s.Reports[r.ID] = &r
}
func (c *PutReport) audit() (string, string, string) {
	if c.Create {
		return "report.create", c.Report.Org, c.Report.ID
	}
	return "report.update", c.Report.Org, c.Report.ID
}

// DeleteReport removes a report.
type DeleteReport struct {
	Meta `json:"meta,omitzero"`
	ID   string `json:"id"`
	Org  string `json:"org"`
}

func (*DeleteReport) cmdType() cmdType { return cmdDeleteReport }
func (c *DeleteReport) validate(s *State) error {
	if r := s.Reports[c.ID]; r == nil || r.Org != c.Org {
		return fmt.Errorf("%w: report %q", ErrNotFound, c.ID)
	}
	return nil
}
func (c *DeleteReport) apply(s *State)                  { delete(s.Reports, c.ID) }
func (c *DeleteReport) audit() (string, string, string) { return "report.delete", c.Org, c.ID }

// AnnounceReport records that a report.ready event was sent for Period.
type AnnounceReport struct {
	ID     string `json:"id"`
	Org    string `json:"org"`
	Period string `json:"period"`
}

func (*AnnounceReport) cmdType() cmdType { return cmdAnnounceReport }
func (c *AnnounceReport) validate(s *State) error {
	r := s.Reports[c.ID]
	switch {
	case r == nil || r.Org != c.Org:
		return fmt.Errorf("%w: report %q", ErrNotFound, c.ID)
	case c.Period == "" || len(c.Period) > 20:
		return invalid("period %q", c.Period)
	}
	return nil
}
func (c *AnnounceReport) apply(s *State) {
	r := *s.Reports[c.ID]
	r.Announced = c.Period
	s.Reports[c.ID] = &r
}

// announceReport takes a dispatcher's word that it sent the event.
func (s *Server) announceReport(w http.ResponseWriter, r *http.Request, body []byte) {
	var c AnnounceReport
	if err := decodeBody(body, &c); err != nil {
		s.fail(w, err)
		return
	}
	c.ID = r.PathValue("id")
	s.write(w, r, body, &c, http.StatusNoContent, nil)
}

// DueReport is a scheduled report whose last period has no report.ready
// event yet.
type DueReport struct {
	schemas.Report
	Period   string
	From, To time.Time
}

// DueReports are the saved reports of active organizations due at now:
// the last whole period of their schedule ended after they were made,
// and was not announced.
func (r *Replica) DueReports(now time.Time) []DueReport {
	st := r.state.Load()
	if st == nil {
		return nil
	}
	var out []DueReport
	for _, rep := range st.reps {
		label, from, to, ok := schemas.ReportPeriod(rep.Schedule, now)
		if ok && to.After(rep.CreatedAt) && label != rep.Announced {
			out = append(out, DueReport{Report: rep.Report, Period: label, From: from, To: to})
		}
	}
	slices.SortFunc(out, func(a, b DueReport) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// AnnounceReport marks a report's period announced.
func (r *Replica) AnnounceReport(ctx context.Context, org, id, period string) error {
	return r.postNode(ctx, "/v1/node/reports/"+url.PathEscape(id)+"/announce", AnnounceReport{Org: org, Period: period})
}

func (r *Report) owner() string              { return r.Org }
func (r *Report) created() time.Time         { return r.CreatedAt }
func reportsOf(st *State) map[string]*Report { return st.Reports }

// reportBody is what a caller sends to save or change a report; absent
// members keep their value on PATCH.
type reportBody struct {
	Name        *string              `json:"name"`
	Description *string              `json:"description"`
	Query       *schemas.ReportQuery `json:"query"`
	Chart       *string              `json:"chart"`
	Schedule    *string              `json:"schedule"`
}

func (b *reportBody) applyTo(r *Report) {
	if b.Name != nil {
		r.Name = *b.Name
	}
	if b.Description != nil {
		r.Description = *b.Description
	}
	if b.Query != nil {
		r.Query = *b.Query
	}
	if b.Chart != nil {
		r.Chart = *b.Chart
	}
	if b.Schedule != nil {
		r.Schedule = *b.Schedule
	}
}

func (s *Server) createReport(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	var b reportBody
	if err := decodeBody(body, &b); err != nil {
		s.fail(w, err)
		return
	}
	id, err := newID("rpt_")
	if err != nil {
		s.fail(w, err)
		return
	}
	now := time.Now().UTC()
	rep := Report{Report: schemas.Report{ID: id, Org: sc.org, Chart: "line", CreatedAt: now, UpdatedAt: now}}
	b.applyTo(&rep)
	s.write(w, r, body, &PutReport{Report: rep, Create: true}, http.StatusCreated, rep.Report)
}

func (s *Server) listReports(w http.ResponseWriter, _ *http.Request, sc scope, _ []byte) {
	out := ownedList(s, sc, reportsOf, func(_ *State, r *Report) schemas.Report { return r.Report })
	writeJSON(w, http.StatusOK, map[string]any{"reports": out})
}

// report finds a report of the scope's organization, answering 404
// itself when there is none.
func (s *Server) report(w http.ResponseWriter, r *http.Request, sc scope) (Report, bool) {
	rep, ok := owned(s, sc, reportsOf, r.PathValue("id"))
	if !ok {
		s.fail(w, fmt.Errorf("%w: report %q", ErrNotFound, r.PathValue("id")))
	}
	return rep, ok
}

func (s *Server) getReport(w http.ResponseWriter, r *http.Request, sc scope, _ []byte) {
	if rep, ok := s.report(w, r, sc); ok {
		writeJSON(w, http.StatusOK, rep.Report)
	}
}

func (s *Server) updateReport(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	var b reportBody
	if err := decodeBody(body, &b); err != nil {
		s.fail(w, err)
		return
	}
	rep, ok := s.report(w, r, sc)
	if !ok {
		return
	}
	expect := rep.UpdatedAt
	b.applyTo(&rep)
	rep.UpdatedAt = time.Now().UTC()
	s.write(w, r, body, &PutReport{Report: rep, Expect: expect}, http.StatusOK, rep.Report)
}

func (s *Server) deleteReport(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	s.write(w, r, body, &DeleteReport{ID: r.PathValue("id"), Org: sc.org}, http.StatusNoContent, nil)
}
