package webhook

import (
	"testing"
	"time"
)

// Retry-After comes from an endpoint, which answers what it likes: the
// wait read from it is never negative and stays within about 12 days
// (1<<20 s), whatever MaxRetryAfter later caps it to.
func FuzzRetryAfter(f *testing.F) {
	for _, s := range []string{"", "5", " 120 ", "-3", "Wed, 21 Oct 2026 07:28:00 GMT", "99999999999999999999", "1e9"} {
		f.Add(s)
	}
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		d := retryAfter(v, now)
		if d < 0 {
			t.Fatalf("Retry-After %q gave %s", v, d)
		}
		if d > time.Duration(1<<20)*time.Second && !isDate(v) {
			t.Fatalf("Retry-After %q gave %s", v, d)
		}
	})
}

func isDate(v string) bool {
	_, err := time.Parse(time.RFC1123, v)
	_, err2 := time.Parse(time.RFC850, v)
	_, err3 := time.Parse(time.ANSIC, v)
	return err == nil || err2 == nil || err3 == nil
}
