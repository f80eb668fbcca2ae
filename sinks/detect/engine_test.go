package detect

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

// every returns n signals made by mk, the i-th at t0 + i*step.
func every(n int, step time.Duration, mk func(i int, at time.Time) Signal) []Signal {
	out := make([]Signal, n)
	for i := range out {
		out[i] = mk(i, t0.Add(time.Duration(i)*step))
	}
	return out
}

func concat(parts ...[]Signal) []Signal { return slices.Concat(parts...) }

func run(t *testing.T, sigs []Signal) []Alert {
	t.Helper()
	e, err := NewEngine(DefaultThresholds())
	if err != nil {
		t.Fatal(err)
	}
	var out []Alert
	for _, s := range sigs {
		out = append(out, e.Observe(s)...)
	}
	return out
}

// Each attack pattern raises its alert once, with the subject it is
// about; ordinary traffic of the same volume raises none.
func TestDetectors(t *testing.T) {
	addr := func(i int) string { return fmt.Sprintf("127.0.%d.%d", i/250, 1+i%250) }
	// A verifying organization's ordinary minutes: a few failures each.
	verifyBaseline := every(10*20, 3*time.Second, func(i int, at time.Time) Signal {
		return Signal{At: at, Kind: Verification, Org: "acme", Bad: i%10 == 0}
	})
	after := t0.Add(10 * time.Minute)
	for _, tc := range []struct {
		name           string
		attack, normal []Signal
		detector, subj string
	}{
		{name: "failed authentications from one address",
			attack: every(30, time.Second, func(i int, at time.Time) Signal { return Signal{At: at, Kind: AuthFailure, Addr: "127.0.0.5"} }),
			// The same failures, one a minute: typos, not a burst.
			normal:   every(30, time.Minute, func(i int, at time.Time) Signal { return Signal{At: at, Kind: AuthFailure, Addr: "127.0.0.5"} }),
			detector: FailedAuthAddress, subj: "addr:127.0.0.5"},
		{name: "failed authentications naming one key, from many addresses",
			attack: every(25, time.Second, func(i int, at time.Time) Signal {
				return Signal{At: at, Kind: AuthFailure, Addr: addr(i), Key: "cnk_AAAAAAAAAAAA"}
			}),
			normal: every(25, time.Second, func(i int, at time.Time) Signal {
				return Signal{At: at, Kind: AuthFailure, Addr: addr(i), Key: fmt.Sprintf("cnk_%012d", i)}
			}),
			detector: FailedAuthKey, subj: "key:cnk_AAAAAAAAAAAA"},
		{name: "credential stuffing on sign-in",
			attack:   every(12, 10*time.Second, func(i int, at time.Time) Signal { return Signal{At: at, Kind: LoginFailure, Addr: "127.0.0.9"} }),
			normal:   every(12, 10*time.Second, func(i int, at time.Time) Signal { return Signal{At: at, Kind: LoginFailure, Addr: addr(i)} }),
			detector: CredentialStuffing, subj: "addr:127.0.0.9"},
		{name: "a key used from a new address",
			attack: every(11, time.Second, func(i int, at time.Time) Signal {
				a := "127.0.0.2"
				if i == 10 {
					a = "127.0.0.66"
				}
				return Signal{At: at, Kind: KeyAddress, Org: "acme", Key: "key_1", Addr: a}
			}),
			normal: every(11, time.Second, func(i int, at time.Time) Signal {
				return Signal{At: at, Kind: KeyAddress, Org: "acme", Key: "key_1", Addr: "127.0.0.2"}
			}),
			detector: NewKeyAddress, subj: "key:key_1"},
		{name: "a key's volume far above its baseline",
			// 10 a minute for 10 minutes, then 1,000 in a minute.
			attack: concat(every(100, 6*time.Second, func(i int, at time.Time) Signal { return Signal{At: at, Kind: Request, Org: "acme", Key: "key_1"} }),
				every(1000, 50*time.Millisecond, func(i int, at time.Time) Signal {
					return Signal{At: at.Add(10 * time.Minute), Kind: Request, Org: "acme", Key: "key_1"}
				})),
			// The same 1,100 requests, 100 a minute.
			normal:   every(1100, 600*time.Millisecond, func(i int, at time.Time) Signal { return Signal{At: at, Kind: Request, Org: "acme", Key: "key_1"} }),
			detector: VolumeSpike, subj: "key:key_1"},
		{name: "a spike of verification failures",
			attack: concat(verifyBaseline, every(100, 500*time.Millisecond, func(i int, at time.Time) Signal {
				return Signal{At: after.Add(at.Sub(t0)), Kind: Verification, Org: "acme", Bad: true}
			})),
			// The same 100 verifications in that minute, valid ones.
			normal: concat(verifyBaseline, every(100, 500*time.Millisecond, func(i int, at time.Time) Signal {
				return Signal{At: after.Add(at.Sub(t0)), Kind: Verification, Org: "acme"}
			})),
			detector: VerifyFailures, subj: "org:acme"},
		{name: "an endpoint changed, then flooded",
			attack: concat([]Signal{{At: t0, Kind: EndpointChanged, Org: "acme", Target: "ep_1"}},
				every(150, 500*time.Millisecond, func(i int, at time.Time) Signal {
					return Signal{At: at.Add(time.Second), Kind: Delivery, Org: "acme", Target: "ep_1"}
				})),
			// The same deliveries to an endpoint changed an hour before.
			normal: concat([]Signal{{At: t0.Add(-time.Hour), Kind: EndpointChanged, Org: "acme", Target: "ep_1"}},
				every(150, 500*time.Millisecond, func(i int, at time.Time) Signal {
					return Signal{At: at.Add(time.Second), Kind: Delivery, Org: "acme", Target: "ep_1"}
				})),
			detector: EndpointFlood, subj: "endpoint:ep_1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.attack) < len(tc.normal)-1 || len(tc.attack) > len(tc.normal)+1 {
				t.Fatalf("the ordinary traffic (%d) is not the attack's volume (%d)", len(tc.normal), len(tc.attack))
			}
			alerts := run(t, tc.attack)
			if len(alerts) != 1 || alerts[0].Detector != tc.detector || alerts[0].Subject != tc.subj || alerts[0].ID == "" || alerts[0].Summary == "" {
				t.Fatalf("attack: alerts %+v, want one %s on %s", alerts, tc.detector, tc.subj)
			}
			t.Logf("%s: %s (%d)", alerts[0].Detector, alerts[0].Summary, alerts[0].Count)
			// Replayed, the same events find the same alert.
			if again := run(t, tc.attack); len(again) != 1 || again[0].ID != alerts[0].ID {
				t.Fatalf("replay: %+v, want %s", again, alerts[0].ID)
			}
			if alerts := run(t, tc.normal); len(alerts) != 0 {
				t.Fatalf("ordinary traffic of the same volume: %+v", alerts)
			}
		})
	}
}

// A burst that goes on raises one alert per window, not one per event.
func TestOneAlertPerWindow(t *testing.T) {
	alerts := run(t, every(600, 200*time.Millisecond, func(i int, at time.Time) Signal {
		return Signal{At: at, Kind: AuthFailure, Addr: "127.0.0.5"}
	}))
	if len(alerts) != 2 || alerts[0].ID == alerts[1].ID {
		t.Fatalf("two minutes of failures: %+v, want two alerts", alerts)
	}
}

// The state is bounded: subjects past MaxSubjects are counted, not kept,
// and idle ones are swept.
func TestStateIsBounded(t *testing.T) {
	cfg := DefaultThresholds()
	cfg.MaxSubjects = 100
	e, err := NewEngine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 1000 {
		e.Observe(Signal{At: t0, Kind: AuthFailure, Addr: fmt.Sprintf("10.0.%d.%d", i/250, i%250)})
	}
	if len(e.authAddr) != 100 || e.Untracked() != 900 {
		t.Fatalf("%d tracked, %d untracked", len(e.authAddr), e.Untracked())
	}
	e.Sweep(t0.Add(time.Hour))
	if len(e.authAddr) != 0 {
		t.Fatalf("%d subjects after a sweep an hour later", len(e.authAddr))
	}
	if err := (&Thresholds{}).Validate(); err == nil {
		t.Fatal("a zero config validated")
	}
}
