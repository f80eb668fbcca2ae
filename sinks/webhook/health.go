package webhook

import (
	"context"
	"net/url"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/certnode/certnode/schemas"
)

// healthMemo is what this dispatcher reported of one version of an
// endpoint (its UpdatedAt), so that each change is reported once rather
// than on every attempt. A new version (a user enabled it again, changed
// it) starts a new memo.
type healthMemo struct {
	version      time.Time
	failingSince time.Time
	disabled     bool
	cleared      time.Time // when a success was last reported
}

// memo is ep's memo for its current version; callers hold d.mu.
func (d *Dispatcher) memo(ep *Endpoint) healthMemo {
	m := d.health[ep.ID]
	if !m.version.Equal(ep.UpdatedAt) {
		m = healthMemo{version: ep.UpdatedAt}
	}
	return m
}

// failing notes a failed attempt; an endpoint failing for DisableAfter is
// disabled. The cluster's failing time wins over this dispatcher's, so
// every dispatcher counts from the same first failure; this dispatcher's
// own bridges the time until the cluster's copy shows its report.
func (d *Dispatcher) failing(ep *Endpoint, now time.Time) {
	d.mu.Lock()
	memo := d.memo(ep)
	since := ep.FailingSince
	if since.IsZero() {
		since = memo.failingSince
	}
	report := since.IsZero()
	if report {
		since = now
	}
	memo.failingSince = since
	disable := !memo.disabled && now.Sub(since) >= d.cfg.DisableAfter
	memo.disabled = memo.disabled || disable
	d.health[ep.ID] = memo
	d.mu.Unlock()
	switch {
	case disable:
		d.disable(ep, "failing since "+since.UTC().Format(time.RFC3339), since)
	case report:
		d.report(ep, since, false, "")
	}
}

// gone disables an endpoint that answered 410, once per version.
func (d *Dispatcher) gone(ep *Endpoint) {
	d.mu.Lock()
	memo := d.memo(ep)
	first := !memo.disabled
	memo.disabled = true
	d.health[ep.ID] = memo
	d.mu.Unlock()
	if first {
		d.disable(ep, "the endpoint answered 410 Gone", time.Time{})
	}
}

// healthy notes a delivery: an endpoint known to be failing is not now.
func (d *Dispatcher) healthy(ep *Endpoint) {
	d.mu.Lock()
	memo := d.memo(ep)
	now := d.now()
	// The cluster's copy may lag a report already sent: resend at most
	// every few seconds.
	report := !memo.failingSince.IsZero() || !ep.FailingSince.IsZero() && now.Sub(memo.cleared) > 5*time.Second
	if report {
		memo = healthMemo{version: ep.UpdatedAt, cleared: now}
	}
	d.health[ep.ID] = memo
	d.mu.Unlock()
	if report {
		d.report(ep, time.Time{}, false, "")
	}
}

// disable disables an endpoint in the cluster and announces it with an
// endpoint.disabled event to the organization's other endpoints. The
// event names the endpoint's host, not its URL: a URL's path or query is
// often a credential, and the other endpoints may be someone else's.
func (d *Dispatcher) disable(ep *Endpoint, reason string, since time.Time) {
	d.m.disabled.Inc()
	d.log.Warn("endpoint disabled", "org", ep.Org, "endpoint", ep.ID, "reason", reason)
	d.report(ep, since, true, reason)
	data := map[string]any{"endpoint_id": ep.ID, "url": redactURL(ep.URL), "reason": reason}
	if !since.IsZero() {
		data["failing_since"] = since.UTC()
	}
	raw, _ := json.Marshal(data)
	now := d.now().UTC()
	// Dispatchers that disable the same endpoint in the same minute make
	// one event id, so receivers see one event.
	rec := schemas.EventRecord{V: schemas.EnvelopeVersion,
		ID: schemas.EventID(ep.ID, "disabled", now.Truncate(time.Minute).Format(time.RFC3339)), Org: ep.Org,
		Event: schemas.WebhookEvent{Type: schemas.EventEndpointDisabled, Timestamp: now, Data: raw}, Except: ep.ID}
	val, _ := json.Marshal(&rec)
	d.send(&kgo.Record{Topic: d.topics.Events, Key: []byte(ep.Org), Value: val}, nil)
}

// redactURL keeps a URL's scheme and host.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return u.Scheme + "://" + u.Host + "/..."
}

// report sends a health report to the cluster in the background.
func (d *Dispatcher) report(ep *Endpoint, since time.Time, disable bool, reason string) {
	go func() {
		ctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
		defer cancel()
		if err := d.dir.ReportHealth(ctx, ep, since, disable, reason); err != nil {
			d.log.Warn("endpoint health not reported", "endpoint", ep.ID, "err", err)
		}
	}()
}
