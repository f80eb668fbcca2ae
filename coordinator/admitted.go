package coordinator

import (
	"time"
)

// cmdSetAdmitted stands apart from the other commands' numbers so that
// commands added alongside it elsewhere do not take the same byte.
const cmdSetAdmitted cmdType = 16

// SetAdmitted records how many requests organizations had admitted
// cluster-wide in a month (UTC), as the leader counted them from its
// nodes' lease renewals, so the counts outlive a leader. Counts are totals
// that only ever raise what is stored: a commit retried after an unknown
// outcome, or one from a deposed leader, cannot count a request twice.
type SetAdmitted struct {
	Month  string           `json:"month"` // "2006-01"
	Counts map[string]int64 `json:"counts"`
}

func (*SetAdmitted) cmdType() cmdType { return cmdSetAdmitted }

func (c *SetAdmitted) validate(*State) error {
	if len(c.Counts) == 0 {
		return invalid("counts are required")
	}
	return checkAdmitted(c.Month, c.Counts)
}

func checkAdmitted(month string, counts map[string]int64) error {
	if _, err := time.Parse("2006-01", month); err != nil {
		return invalid("month %q: want YYYY-MM", month)
	}
	if len(counts) > maxLeaseOrgs {
		return invalid("at most %d organizations per count", maxLeaseOrgs)
	}
	for org, n := range counts {
		if !idPattern.MatchString(org) || n < 0 {
			return invalid("count of %q: an organization id and a non-negative number", org)
		}
	}
	return nil
}

// apply keeps the current and the previous month: older counts are
// neither enforced nor billed from here.
func (c *SetAdmitted) apply(s *State) {
	if s.Admitted == nil {
		s.Admitted = map[string]map[string]int64{}
	}
	m := s.Admitted[c.Month]
	if m == nil {
		m = map[string]int64{}
		s.Admitted[c.Month] = m
	}
	for org, n := range c.Counts {
		m[org] = max(m[org], n)
	}
	s.raiseQuotaAlerts(c.Month, m)
	newest := c.Month
	for month := range s.Admitted {
		newest = max(newest, month)
	}
	t, _ := time.Parse("2006-01", newest) // validated
	keep := monthOf(t.AddDate(0, -1, 0))
	for month := range s.Admitted {
		if month < keep {
			delete(s.Admitted, month)
		}
	}
}

// cmdSetKeysUsed, like cmdSetAdmitted, stands apart from the numbers of
// the other commands.
const cmdSetKeysUsed cmdType = 17

// SetKeysUsed records when API keys were last used (Unix seconds), as
// nodes reported them; a time only ever moves forward. It is the
// coordinator's own record: other tiers' copies do not change with it.
type SetKeysUsed struct {
	Used map[string]int64 `json:"used"`
}

func (*SetKeysUsed) cmdType() cmdType { return cmdSetKeysUsed }
func (*SetKeysUsed) coordinatorOnly() {}
func (c *SetKeysUsed) validate(*State) error {
	if len(c.Used) == 0 || len(c.Used) > 100_000 {
		return invalid("keys used: 1 to 100000 keys")
	}
	for id, at := range c.Used {
		if !keyIDPat.MatchString(id) || at <= 0 {
			return invalid("keys used: %q needs a key id and a positive time", id)
		}
	}
	return nil
}
func (c *SetKeysUsed) apply(s *State) {
	for id, at := range c.Used {
		if _, ok := s.Keys[id]; ok && at > s.KeyUse[id] {
			s.KeyUse[id] = at
		}
	}
}
