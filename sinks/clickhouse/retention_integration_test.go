//go:build integration

package clickhouse

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

type retentionOf map[string]int

func (r retentionOf) Retentions() map[string]int { return r }

type publishedEvents struct {
	mu  sync.Mutex
	evs []schemas.AuditEvent
}

func (p *publishedEvents) Publish(_ context.Context, evs []schemas.AuditEvent) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.evs = append(p.evs, evs...)
	return nil
}

// An organization's rows older than its retention go, in every erasable
// table, and the erasure is an audit event; its newer rows, its usage
// events (invoices are built from them) and the other organizations' rows
// stay.
func TestIntegrationRetention(t *testing.T) {
	conn := chConn(t)
	org, other := "ret-"+testenv.RandomSuffix(), "ret-other-"+testenv.RandomSuffix()
	now := time.Now().UTC().Truncate(time.Second)
	old, recent := now.AddDate(0, 0, -40), now.AddDate(0, 0, -2)
	ins := NewClickHouseInserter(conn, schemas.ClickHouseResultsTable)
	var rows []Row
	for i, at := range []time.Time{old, old, recent} {
		for _, tenant := range []string{org, other} {
			rows = append(rows, Row{Tenant: tenant, ID: fmt.Sprintf("req-%d", i), ReceiptID: fmt.Sprintf("rid-%d", i), Kind: "sign", Status: "signed",
				Auth: "ingest", ReceivedAt: at, ProcessedAt: at, Receipt: `{"payload":{"email":"ada@example.com"}}`})
		}
	}
	if err := ins.Insert(ctxT(t), rows); err != nil {
		t.Fatal(err)
	}
	usage := NewUsageInserter(conn, schemas.ClickHouseUsageTable)
	if err := usage.Insert(ctxT(t), []UsageRow{{Org: org, ID: "req-0", Source: "/certnode/orgs/" + org, Time: old, Kind: "sign", Status: "signed",
		Auth: "ingest", ProcessedAt: old}}); err != nil {
		t.Fatal(err)
	}
	count := func(table, col, tenant string) uint64 {
		var n uint64
		if err := conn.QueryRow(ctxT(t), "SELECT count() FROM "+table+" WHERE "+col+" = ?", tenant).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	events := &publishedEvents{}
	r := NewRetention(conn, retentionOf{org: 30}, events, time.Hour, nil)
	if err := r.Once(ctxT(t), now); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "the old rows erased", 60*time.Second, func() (bool, string) {
		n := count(schemas.ClickHouseResultsTable, "tenant", org)
		if n != 1 {
			// A run skips while other tests' mutations are pending, as
			// the hourly one would until its next hour.
			if err := r.Once(ctxT(t), now); err != nil {
				t.Fatal(err)
			}
		}
		return n == 1, fmt.Sprint(n)
	})
	if n := count(schemas.ClickHouseUsageTable, "org", org); n != 1 {
		t.Fatalf("usage events: %d, want the 1 invoices need", n)
	}
	if n := count(schemas.ClickHouseResultsTable, "tenant", other); n != 3 {
		t.Fatalf("the other organization's rows: %d, want 3", n)
	}
	events.mu.Lock()
	defer events.mu.Unlock()
	if len(events.evs) != 1 {
		t.Fatalf("audit events %+v", events.evs)
	}
	ev := events.evs[0]
	ev.ID = "ev_1" // the publisher's to give
	if ev.Org != org || ev.Action != "erasure.retention" || !strings.Contains(ev.Detail, schemas.ClickHouseResultsTable+": 2") || ev.Validate() != nil {
		t.Fatalf("erasure event %+v: %v", ev, ev.Validate())
	}
	// Nothing left to erase: no mutation, no event.
	events.mu.Unlock()
	if err := r.Once(ctxT(t), now); err != nil {
		t.Fatal(err)
	}
	events.mu.Lock()
	if len(events.evs) != 1 {
		t.Fatalf("a second run: %d events", len(events.evs))
	}
}
