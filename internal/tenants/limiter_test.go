package tenants

import (
	"testing"
	"time"
)

func TestLocalLimiter(t *testing.T) {
	limits := map[string]Limits{"slow": {RateLimit: 2, Burst: 3}}
	l := NewLocalLimiter(func(id string) (Limits, bool) { v, ok := limits[id]; return v, ok })
	for i := range 3 {
		if d, err := l.Take("slow", 1); d != 0 || err != nil {
			t.Fatalf("request %d within the burst: wait %v, %v", i, d, err)
		}
	}
	d, err := l.Take("slow", 1)
	if err != nil || d <= 0 || d > time.Second {
		t.Fatalf("over the burst: wait %v, %v; want about 0.5 s", d, err)
	}
	if d, _ := l.Take("fast", 1000); d != 0 {
		t.Fatalf("a tenant without a rate waited %v", d)
	}
	if d, _ := l.Take("slow", 10); d < 4*time.Second {
		t.Fatalf("10 over a burst of 3 at 2/s: wait %v, want at least 4 s", d)
	}
	// A changed limit takes effect at once.
	limits["slow"] = Limits{RateLimit: 1000, Burst: 1000}
	if d, _ := l.Take("slow", 500); d != 0 {
		t.Fatalf("after raising the limit: wait %v", d)
	}
}
