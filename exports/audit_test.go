package exports

import (
	"fmt"
	"testing"
	"time"
)

// The audit queries' conditions, one per selection, every value an
// argument.
func TestAuditQueryWhere(t *testing.T) {
	from, to := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		q    AuditQuery
		sql  string
		args string
	}{
		{AuditQuery{Org: "acme", From: from, To: to}, "at >= toDateTime(?) AND at < toDateTime(?) AND org = ?", "[1793491200 1796083200 acme]"},
		{AuditQuery{Org: "acme", From: from, To: to, Action: "security.alert"}, "at >= toDateTime(?) AND at < toDateTime(?) AND org = ? AND action = ?",
			"[1793491200 1796083200 acme security.alert]"},
		{AuditQuery{AllOrgs: true, From: from, To: to, ActionPrefix: "erasure.", Source: "coordinator"},
			"at >= toDateTime(?) AND at < toDateTime(?) AND startsWith(action, ?) AND source = ?", "[1793491200 1796083200 erasure. coordinator]"},
	} {
		sql, args := tc.q.where()
		if sql != tc.sql || fmt.Sprint(args) != tc.args {
			t.Errorf("%+v: %s %v, want %s %s", tc.q, sql, args, tc.sql, tc.args)
		}
	}
}
