package tenants

import (
	"errors"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// ErrMonthlyQuota is what a limiter returns for a tenant whose monthly
// allowance is used up.
var ErrMonthlyQuota = errors.New("monthly quota exhausted")

// LocalLimiter holds each tenant to its rate and burst within one process
// (the tenants file's meaning of a limit). The coordinator's limiter holds
// them across the cluster with the same method.
type LocalLimiter struct {
	limits func(tenant string) (Limits, bool)
	mu     sync.Mutex
	byID   map[string]*localBucket
}

type localBucket struct {
	limits Limits
	lim    *rate.Limiter
}

// NewLocalLimiter limits each tenant by the Limits limits gives for it.
func NewLocalLimiter(limits func(tenant string) (Limits, bool)) *LocalLimiter {
	return &LocalLimiter{limits: limits, byID: map[string]*localBucket{}}
}

// Take admits n requests of tenant now (0), or takes nothing and says how
// long to wait before asking again. A tenant without a rate is not held.
func (l *LocalLimiter) Take(tenant string, n int) (time.Duration, error) {
	lim, ok := l.limits(tenant)
	if !ok || lim.RateLimit <= 0 {
		return 0, nil
	}
	l.mu.Lock()
	b := l.byID[tenant]
	if b == nil || b.limits != lim { // new, or its limits changed
		b = &localBucket{limits: lim, lim: rate.NewLimiter(rate.Limit(lim.RateLimit), lim.EffectiveBurst())}
		l.byID[tenant] = b
	}
	l.mu.Unlock()
	now := time.Now()
	r := b.lim.ReserveN(now, n)
	if !r.OK() { // n over the burst: never admissible at once
		return time.Duration(float64(n) / lim.RateLimit * float64(time.Second)), nil
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d, nil
	}
	return 0, nil
}

// EffectiveBurst is the bucket size: Burst, or one second of the rate.
func (l Limits) EffectiveBurst() int {
	if l.Burst > 0 {
		return l.Burst
	}
	return int(l.RateLimit) + 1
}
