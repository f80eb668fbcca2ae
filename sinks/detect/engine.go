package detect

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// Detectors, as alerts name them.
const (
	FailedAuthAddress  = "failed_auth_address"   // a burst of refused credentials from one address
	FailedAuthKey      = "failed_auth_key"       // a burst of refusals naming one key id
	CredentialStuffing = "credential_stuffing"   // failed dashboard sign-ins from one address
	NewKeyAddress      = "new_key_address"       // a key used from an address never seen for it
	VolumeSpike        = "volume_spike"          // a key's requests far above its baseline
	VerifyFailures     = "verification_failures" // a spike of receipts failing verification
	EndpointFlood      = "endpoint_flood"        // a webhook endpoint changed, then flooded
)

// Detectors lists every detector.
var Detectors = []string{FailedAuthAddress, FailedAuthKey, CredentialStuffing, NewKeyAddress, VolumeSpike, VerifyFailures, EndpointFlood}

// Kind is what a signal reports.
type Kind int

// Signal kinds.
const (
	AuthFailure     Kind = iota + 1 // a request refused for its credentials: Addr, Key (the id it named, if any), Org
	LoginFailure                    // a failed dashboard sign-in: Addr
	KeyAddress                      // Key (of Org) used from Addr
	Request                         // one request of Key (of Org)
	Verification                    // one verification of Org; Bad when the receipt failed it
	EndpointChanged                 // webhook endpoint Target (of Org) created or changed
	Delivery                        // one delivery attempt to endpoint Target (of Org)
)

// Signal is one observation from the event streams, at its event time.
type Signal struct {
	At     time.Time
	Kind   Kind
	Org    string
	Addr   string
	Key    string
	Target string
	Bad    bool
}

// Alert is one finding.
type Alert struct {
	ID       string // the same for the same finding, however often replayed
	At       time.Time
	Org      string // empty: the deployment's (an address with no organization)
	Detector string
	// Subject is what the finding is about: "addr:IP", "key:ID",
	// "endpoint:ID".
	Subject string
	Addr    string // the address to block, for the address detectors
	Key     string // the key to suspend, for the key detectors
	Count   int64
	Window  time.Duration
	Summary string
}

// Thresholds are the detectors' thresholds. Bursts count events in a
// sliding window; spikes compare a minute with the subject's baseline (an
// average of its earlier minutes, from WarmupMinutes of history on).
type Thresholds struct {
	AuthFailures       int64 // per address, and per key id, in AuthWindow
	AuthWindow         time.Duration
	LoginFailures      int64 // per address in LoginWindow
	LoginWindow        time.Duration
	SpikeMin           int64   // a key's requests in a minute, at least
	SpikeFactor        float64 // times its baseline, at least
	VerifyFailuresMin  int64   // an organization's failed verifications in a minute, at least
	VerifyFactor       float64 // times its baseline, at least
	WarmupMinutes      int
	FloodDeliveries    int64         // deliveries to a changed endpoint within FloodAfter of the change
	FloodAfter         time.Duration //
	MaxSubjects        int           // bounds the state; past it new subjects are not tracked
	MaxAddressesPerKey int           // addresses remembered per key
}

// DefaultThresholds returns the thresholds the detectors ship with.
func DefaultThresholds() Thresholds {
	return Thresholds{AuthFailures: 20, AuthWindow: time.Minute, LoginFailures: 10, LoginWindow: 5 * time.Minute,
		SpikeMin: 600, SpikeFactor: 10, VerifyFailuresMin: 50, VerifyFactor: 10, WarmupMinutes: 5,
		FloodDeliveries: 100, FloodAfter: 5 * time.Minute, MaxSubjects: 100_000, MaxAddressesPerKey: 256}
}

// Validate reports every problem at once.
func (c *Thresholds) Validate() error {
	var errs []error
	if c.AuthFailures < 1 || c.LoginFailures < 1 || c.SpikeMin < 1 || c.VerifyFailuresMin < 1 || c.FloodDeliveries < 1 {
		errs = append(errs, errors.New("detect: every threshold must be at least 1"))
	}
	if c.AuthWindow < time.Second || c.LoginWindow < time.Second || c.FloodAfter < time.Second {
		errs = append(errs, errors.New("detect: windows must be at least a second"))
	}
	if c.SpikeFactor < 1 || c.VerifyFactor < 1 || c.WarmupMinutes < 1 {
		errs = append(errs, errors.New("detect: spike factors must be at least 1, and the warm-up a minute"))
	}
	if c.MaxSubjects < 1 || c.MaxAddressesPerKey < 1 {
		errs = append(errs, errors.New("detect: state bounds must be positive"))
	}
	return errors.Join(errs...)
}

// window counts events of one subject in a sliding window, by second.
type window struct {
	buckets []bucket
	sum     int64
	quiet   time.Time // no alert before this (one alert per window)
}

type bucket struct{ sec, n int64 }

// add counts n at at and returns the count of the window ending at at.
func (w *window) add(at time.Time, n int64, span time.Duration) int64 {
	sec := at.Unix()
	if k := len(w.buckets); k > 0 && w.buckets[k-1].sec >= sec {
		w.buckets[k-1].n += n // late events count in the latest second
	} else {
		w.buckets = append(w.buckets, bucket{sec, n})
	}
	w.sum += n
	from := sec - int64(span/time.Second)
	i := 0
	for i < len(w.buckets) && w.buckets[i].sec <= from {
		w.sum -= w.buckets[i].n
		i++
	}
	w.buckets = w.buckets[i:]
	return w.sum
}

// baseline compares a subject's current minute with the average of its
// earlier ones.
type baseline struct {
	minute  int64 // the current minute (Unix minutes)
	count   int64 // in it
	avg     float64
	minutes int // of history behind avg
	quiet   int64
}

// add counts n at at and reports whether the current minute is a spike:
// at least least, and at least factor times the baseline once warm.
func (b *baseline) add(at time.Time, n int64, least int64, factor float64, warmup int) (int64, bool) {
	m := at.Unix() / 60
	switch {
	case b.minutes == 0 && b.count == 0:
		b.minute = m
	case m > b.minute:
		// Close the minute, and every empty one since, into the average
		// (exponentially weighted: recent minutes count most).
		const alpha = 0.2
		b.avg = alpha*float64(b.count) + (1-alpha)*b.avg
		for gap := min(m-b.minute-1, 60); gap > 0; gap-- {
			b.avg *= 1 - alpha
		}
		b.minutes += int(m - b.minute)
		b.minute, b.count = m, 0
	}
	b.count += n
	spike := b.minutes >= warmup && b.count >= least && float64(b.count) >= factor*max(b.avg, 1) && b.quiet < m
	if spike {
		b.quiet = m
	}
	return b.count, spike
}

// keyAddrs is what the engine knows of a key's addresses.
type keyAddrs struct {
	seen map[string]bool
	full bool      // MaxAddressesPerKey reached: no more alerts for it
	last time.Time // its latest use
}

// Engine runs the detectors over signals, in event time. It is not safe
// for concurrent use.
type Engine struct {
	cfg       Thresholds
	authAddr  map[string]*window
	authKey   map[string]*window
	logins    map[string]*window
	requests  map[string]*baseline // org/key
	verifies  map[string]*baseline // org
	keys      map[string]*keyAddrs // org/key
	changed   map[string]time.Time // org/endpoint: when it last changed
	floods    map[string]*window   // org/endpoint
	untracked atomic.Int64         // signals of subjects past MaxSubjects
}

// NewEngine returns an engine with no history.
func NewEngine(cfg Thresholds) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Engine{cfg: cfg, authAddr: map[string]*window{}, authKey: map[string]*window{}, logins: map[string]*window{},
		requests: map[string]*baseline{}, verifies: map[string]*baseline{}, keys: map[string]*keyAddrs{},
		changed: map[string]time.Time{}, floods: map[string]*window{}}, nil
}

// Untracked counts the signals whose subject the state had no room for;
// it may be read while the engine runs.
func (e *Engine) Untracked() int64 { return e.untracked.Load() }

// entry returns m[k], made when there is room.
func entry[V any](e *Engine, m map[string]*V, k string) *V {
	if v := m[k]; v != nil {
		return v
	}
	if len(m) >= e.cfg.MaxSubjects {
		e.untracked.Add(1)
		return nil
	}
	v := new(V)
	m[k] = v
	return v
}

// Observe runs s through the detectors and returns their findings.
func (e *Engine) Observe(s Signal) []Alert {
	var out []Alert
	burst := func(m map[string]*window, key string, span time.Duration, limit int64, a Alert) {
		w := entry(e, m, key)
		if w == nil {
			return
		}
		if n := w.add(s.At, 1, span); n >= limit && !s.At.Before(w.quiet) {
			w.quiet = s.At.Add(span)
			a.Count, a.Window = n, span
			a.Summary = fmt.Sprintf("%d %s within %s", n, a.Summary, span)
			out = append(out, e.finish(a, s.At.Truncate(span)))
		}
	}
	switch s.Kind {
	case AuthFailure:
		// Refusals in an organization (a key of its used from a wrong
		// address, or beyond its scopes) are its own to hear of; refusals
		// of credentials nobody holds are the deployment's.
		if s.Addr != "" {
			burst(e.authAddr, s.Org+"/"+s.Addr, e.cfg.AuthWindow, e.cfg.AuthFailures, Alert{At: s.At, Org: s.Org, Detector: FailedAuthAddress,
				Subject: "addr:" + s.Addr, Addr: s.Addr, Summary: "requests with refused credentials from " + s.Addr})
		}
		if s.Key != "" {
			burst(e.authKey, s.Org+"/"+s.Key, e.cfg.AuthWindow, e.cfg.AuthFailures, Alert{At: s.At, Org: s.Org, Detector: FailedAuthKey,
				Subject: "key:" + s.Key, Key: s.Key, Summary: "requests refused naming key " + s.Key})
		}
	case LoginFailure:
		burst(e.logins, s.Addr, e.cfg.LoginWindow, e.cfg.LoginFailures, Alert{At: s.At, Detector: CredentialStuffing,
			Subject: "addr:" + s.Addr, Addr: s.Addr, Summary: "failed dashboard sign-ins from " + s.Addr})
	case KeyAddress:
		k := entry(e, e.keys, s.Org+"/"+s.Key)
		if k == nil {
			return nil
		}
		if s.At.After(k.last) {
			k.last = s.At
		}
		if k.full || k.seen[s.Addr] {
			return nil
		}
		if k.seen == nil {
			k.seen = map[string]bool{}
		}
		first := len(k.seen) == 0
		k.seen[s.Addr] = true
		if len(k.seen) >= e.cfg.MaxAddressesPerKey {
			// A key used from this many addresses (a fleet behind NAT
			// pools): no more alerts, and no more memory.
			k.full, k.seen = true, nil
		}
		if !first && !k.full {
			out = append(out, e.finish(Alert{At: s.At, Org: s.Org, Detector: NewKeyAddress, Subject: "key:" + s.Key, Addr: s.Addr, Key: s.Key,
				Count: int64(len(k.seen)), Summary: fmt.Sprintf("key %s used from %s, an address never seen for it (%d known)", s.Key, s.Addr, len(k.seen)-1)},
				time.Unix(0, 0))) // once per key and address

		}
	case Request:
		b := entry(e, e.requests, s.Org+"/"+s.Key)
		if b == nil {
			return nil
		}
		if n, spike := b.add(s.At, 1, e.cfg.SpikeMin, e.cfg.SpikeFactor, e.cfg.WarmupMinutes); spike {
			out = append(out, e.finish(Alert{At: s.At, Org: s.Org, Detector: VolumeSpike, Subject: "key:" + s.Key, Key: s.Key, Count: n, Window: time.Minute,
				Summary: fmt.Sprintf("key %s made %d requests in a minute, %.0f times its baseline of %.1f", s.Key, n, float64(n)/max(b.avg, 1), b.avg)},
				s.At.Truncate(time.Minute)))
		}
	case Verification:
		if !s.Bad {
			return nil
		}
		b := entry(e, e.verifies, s.Org)
		if b == nil {
			return nil
		}
		if n, spike := b.add(s.At, 1, e.cfg.VerifyFailuresMin, e.cfg.VerifyFactor, e.cfg.WarmupMinutes); spike {
			out = append(out, e.finish(Alert{At: s.At, Org: s.Org, Detector: VerifyFailures, Subject: "org:" + s.Org, Count: n, Window: time.Minute,
				Summary: fmt.Sprintf("%d receipts failed verification in a minute, %.0f times the baseline of %.1f: tampered or forged receipts", n, float64(n)/max(b.avg, 1), b.avg)},
				s.At.Truncate(time.Minute)))
		}
	case EndpointChanged:
		k := s.Org + "/" + s.Target
		e.changed[k] = s.At
		delete(e.floods, k)
		if len(e.changed) > e.cfg.MaxSubjects {
			for ck, at := range e.changed {
				if s.At.Sub(at) > e.cfg.FloodAfter {
					delete(e.changed, ck)
				}
			}
		}
	case Delivery:
		k := s.Org + "/" + s.Target
		at, ok := e.changed[k]
		if !ok || s.At.Before(at) || s.At.Sub(at) > e.cfg.FloodAfter {
			return nil
		}
		burst(e.floods, k, e.cfg.FloodAfter, e.cfg.FloodDeliveries, Alert{At: s.At, Org: s.Org, Detector: EndpointFlood,
			Subject: "endpoint:" + s.Target, Summary: fmt.Sprintf("deliveries to endpoint %s, changed at %s,", s.Target, at.UTC().Format(time.RFC3339))})
	}
	return out
}

// finish gives a an id from what it found and when (epoch): replaying the
// same events finds the same alert.
func (e *Engine) finish(a Alert, epoch time.Time) Alert {
	h := sha256.Sum256(fmt.Appendf(nil, "%s\n%s\n%s\n%s\n%d", a.Detector, a.Org, a.Subject, a.Addr, epoch.UnixNano()))
	a.ID = "sa_" + hex.EncodeToString(h[:12])
	return a
}

// Sweep forgets subjects idle for longer than their windows as of now
// (the wall clock, which a hostile event time cannot move): call it now and
// then to bound the state.
func (e *Engine) Sweep(now time.Time) {
	for _, m := range []struct {
		m    map[string]*window
		span time.Duration
	}{{e.authAddr, e.cfg.AuthWindow}, {e.authKey, e.cfg.AuthWindow}, {e.logins, e.cfg.LoginWindow}, {e.floods, e.cfg.FloodAfter}} {
		for k, w := range m.m {
			if n := len(w.buckets); n == 0 || now.Unix()-w.buckets[n-1].sec > int64(m.span/time.Second) && now.After(w.quiet) {
				delete(m.m, k)
			}
		}
	}
	for k, at := range e.changed {
		if now.Sub(at) > e.cfg.FloodAfter {
			delete(e.changed, k)
		}
	}
	// Baselines of subjects idle for a day start over; so do the
	// addresses of keys unused for a month.
	for _, m := range []map[string]*baseline{e.requests, e.verifies} {
		for k, b := range m {
			if now.Unix()/60-b.minute > 24*60 {
				delete(m, k)
			}
		}
	}
	for k, a := range e.keys {
		if now.Sub(a.last) > 30*24*time.Hour {
			delete(e.keys, k)
		}
	}
}
