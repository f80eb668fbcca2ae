package coordinator

import (
	"net/http"
	"slices"
	"strings"
)

// QuotaAlert is where an organization stands against its monthly
// allowance: Level is the highest threshold its admitted count crossed
// this Month (80 or 100 percent), Announced the highest a dispatcher has
// sent a quota.warning event for. The FSM raises Level as counts come in
// (SetAdmitted); dispatchers announce what is pending and say so
// (AnnounceQuota), so each threshold is announced once, across restarts.
type QuotaAlert struct {
	Org       string `json:"org"`
	Month     string `json:"month"`
	Level     int    `json:"level"`
	Used      int64  `json:"used"`
	Limit     int64  `json:"limit"`
	Announced int    `json:"announced,omitzero"`
}

// quotaLevel is the threshold used crossed of limit: 100, 80 or 0.
func quotaLevel(used, limit int64) int {
	switch {
	case limit <= 0:
		return 0
	case used >= limit:
		return 100
	case used*5 >= limit*4:
		return 80
	}
	return 0
}

// raiseQuotaAlerts records the thresholds crossed by counts of month.
func (s *State) raiseQuotaAlerts(month string, counts map[string]int64) {
	for id, n := range counts {
		o := s.Orgs[id]
		if o == nil {
			continue
		}
		limit := o.EffectiveLimits().MonthlyReceipts
		level := quotaLevel(n, limit)
		a := s.QuotaAlerts[id]
		if a == nil || a.Month < month {
			a = &QuotaAlert{Org: id, Month: month}
		} else if a.Month > month {
			continue // a late count of a month gone by
		} else {
			c := *a
			a = &c
		}
		if level > a.Level {
			a.Level, a.Used, a.Limit = level, n, limit
			s.QuotaAlerts[id] = a
		}
	}
}

// cmdAnnounceQuota is AnnounceQuota's type.
const cmdAnnounceQuota cmdType = 21

// AnnounceQuota records that a quota.warning event for Level of Month was
// sent.
type AnnounceQuota struct {
	Org   string `json:"org"`
	Month string `json:"month"`
	Level int    `json:"level"`
}

func (*AnnounceQuota) cmdType() cmdType { return cmdAnnounceQuota }
func (c *AnnounceQuota) validate(s *State) error {
	if a := s.QuotaAlerts[c.Org]; a == nil || a.Month != c.Month || c.Level > a.Level || (c.Level != 80 && c.Level != 100) {
		return invalid("no quota alert of %s at %d%% for %q", c.Month, c.Level, c.Org)
	}
	return nil
}
func (c *AnnounceQuota) apply(s *State) {
	a := *s.QuotaAlerts[c.Org]
	a.Announced = max(a.Announced, c.Level)
	s.QuotaAlerts[c.Org] = &a
}

// announceQuota takes a dispatcher's word that it sent the event.
func (s *Server) announceQuota(w http.ResponseWriter, r *http.Request, body []byte) {
	var c AnnounceQuota
	if err := decodeBody(body, &c); err != nil {
		s.fail(w, err)
		return
	}
	c.Org = r.PathValue("org")
	s.write(w, r, body, &c, http.StatusNoContent, nil)
}

// PendingQuotaAlerts are the alerts not announced yet, by organization.
func (r *Replica) PendingQuotaAlerts() []QuotaAlert {
	st := r.state.Load()
	if st == nil {
		return nil
	}
	return st.quota
}

func pendingQuotaAlerts(alerts map[string]*QuotaAlert) []QuotaAlert {
	var out []QuotaAlert
	for _, a := range alerts {
		if a.Level > a.Announced {
			out = append(out, *a)
		}
	}
	slices.SortFunc(out, func(a, b QuotaAlert) int { return strings.Compare(a.Org, b.Org) })
	return out
}
