package deliveries

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/chconn"
	"github.com/certnode/certnode/internal/envelope"
	"github.com/certnode/certnode/schemas"
)

// Reader answers deliveries questions from ClickHouse (the tables the
// ClickHouse sink creates and writes).
type Reader struct {
	conn driver.Conn
	t    tables
	open Opener
}

// Opener decrypts a payload of org's stored sealed (internal/envelope).
type Opener interface {
	Open(ctx context.Context, org, v string) ([]byte, error)
}

// Open connects to ClickHouse; bodies are opened with open.
func Open(ctx context.Context, o chconn.Options, open Opener) (*Reader, error) {
	conn, err := chconn.Open(ctx, o)
	if err != nil {
		return nil, err
	}
	return &Reader{conn: conn, t: productionTables, open: open}, nil
}

// body opens a stored body (or an endpoint's answer); none when it was
// erased (blanked, or sealed under a destroyed key).
func (r *Reader) body(ctx context.Context, org, v string) ([]byte, error) {
	if v == "" {
		return nil, nil
	}
	b, err := r.open.Open(ctx, org, v)
	if errors.Is(err, envelope.ErrDestroyed) {
		return nil, nil
	}
	return b, err
}

// Close closes the connection.
func (r *Reader) Close() error { return r.conn.Close() }

// List returns a page of org's deliveries, newest first by (created_at,
// id). Its NextCursor resumes after the page's last message however many
// messages arrive meanwhile (they are newer, so on earlier pages). A
// cursor that is not one gives ErrBadCursor, other bad queries ErrBadQuery.
// Times filter in whole seconds, as they are stored.
func (r *Reader) List(ctx context.Context, org string, q schemas.DeliveryQuery) (*schemas.DeliveryPage, error) {
	m, err := listQuery(r.t, org, q)
	if err != nil {
		return nil, err
	}
	ds, err := r.messages(ctx, m)
	if err != nil {
		return nil, err
	}
	page := &schemas.DeliveryPage{Data: ds}
	if size := m.limit - 1; len(ds) > size {
		last := ds[size-1]
		page.Data, page.HasMore, page.NextCursor = ds[:size], true, encodeCursor(cursor{createdAt: last.CreatedAt.Unix(), id: last.ID})
	}
	return page, nil
}

// Failed returns, for a replay, the messages of org's endpoint created in
// [since, until) (zero: unbounded) whose latest state is failed, or every
// one when all, oldest first, at most limit (1 to MaxFailed), each with
// its newest body (none if no attempt carried one).
func (r *Reader) Failed(ctx context.Context, org, endpointID string, since, until time.Time, all bool, limit int) ([]schemas.WebhookDelivery, error) {
	m, err := failedQuery(r.t, org, endpointID, since, until, all, limit)
	if err != nil {
		return nil, err
	}
	ds, err := r.messages(ctx, m)
	if err != nil {
		return nil, err
	}
	at := make(map[string]int, len(ds))
	ids := make([]any, len(ds))
	for i, d := range ds {
		at[d.ID], ids[i] = i, d.ID
	}
	for start := 0; start < len(ids); start += bodiesChunk {
		chunk := ids[start:min(start+bodiesChunk, len(ids))]
		if err := chconn.Each(ctx, r.conn, "bodies", fmt.Sprintf(bodiesSelect, r.t.attempts), []any{org, clickhouse.GroupSet{Value: chunk}},
			func(rows driver.Rows) error {
				var id, body string
				err := rows.Scan(&id, &body)
				if err != nil {
					return err
				}
				i, ok := at[id]
				if !ok {
					return nil
				}
				ds[i].Body, err = r.body(ctx, org, body)
				return err
			}); err != nil {
			return nil, err
		}
	}
	return ds, nil
}

// messages runs a messages query.
func (r *Reader) messages(ctx context.Context, m messagesQuery) ([]schemas.WebhookDelivery, error) {
	sql, args, err := m.toSQL()
	if err != nil {
		return nil, err
	}
	out := []schemas.WebhookDelivery{}
	err = chconn.Each(ctx, r.conn, "deliveries", sql, args, func(rows driver.Rows) error {
		var d schemas.WebhookDelivery
		var attempts uint64
		var nanos uint32
		var outcome string
		var status uint16
		var next time.Time
		if err := rows.Scan(&d.ID, &d.EndpointID, &d.EventType, &d.EventID, &d.CreatedAt, &attempts, &d.LastAttemptAt, &nanos,
			&outcome, &status, &next); err != nil {
			return err
		}
		d.Status, d.Attempts, d.LastHTTPStatus = schemas.DeliveryStatus(outcome), int(attempts), int(status)
		d.CreatedAt, d.LastAttemptAt, d.NextAttemptAt = d.CreatedAt.UTC(), d.LastAttemptAt.Add(time.Duration(nanos)).UTC(), stored(next)
		out = append(out, d)
		return nil
	})
	return out, err
}

// Get returns org's message messageID with its body (the newest one) and
// every attempt of every round in time order (without the body); false
// when org has no such message.
func (r *Reader) Get(ctx context.Context, org, messageID string) (*schemas.WebhookDelivery, bool, error) {
	if err := schemas.CheckTenantID(org); err != nil {
		return nil, false, fmt.Errorf("deliveries: %w", err)
	}
	if messageID == "" || len(messageID) > schemas.MaxIDBytes {
		return nil, false, nil // no message has such an id
	}
	var list []schemas.WebhookAttempt
	err := chconn.Each(ctx, r.conn, "attempts", fmt.Sprintf(attemptsSelect, r.t.attempts), []any{org, messageID}, func(rows driver.Rows) error {
		a := schemas.WebhookAttempt{V: schemas.EnvelopeVersion, MessageID: messageID, Org: org}
		var body, headers string
		var attempt, status uint16
		var redelivery, held uint8
		var nanos, latency uint32
		var next time.Time
		if err := rows.Scan(&a.ID, &a.EndpointID, &a.EventType, &a.EventID, &body, &a.MessageCreatedAt, &attempt, &redelivery,
			&a.Round, &held, &a.At, &nanos, &a.URL, &status, &latency, &headers, &a.ResponseBody, &a.Error, &a.Outcome, &next); err != nil {
			return err
		}
		if err := json.Unmarshal([]byte(headers), &a.ResponseHeaders); err != nil {
			return fmt.Errorf("attempt %s: response headers: %w", a.ID, err)
		}
		if len(a.ResponseHeaders) == 0 {
			a.ResponseHeaders = nil
		}
		a.Attempt, a.Redelivery, a.Held, a.Status, a.LatencyMillis = int(attempt), redelivery == 1, held == 1, int(status), int64(latency)
		a.MessageCreatedAt, a.At, a.NextAttemptAt = a.MessageCreatedAt.UTC(), a.At.Add(time.Duration(nanos)).UTC(), stored(next)
		var err error
		if a.Body, err = r.body(ctx, org, body); err != nil {
			return err
		}
		answer, err := r.body(ctx, org, a.ResponseBody)
		if err != nil {
			return err
		}
		a.ResponseBody = string(answer)
		list = append(list, a)
		return nil
	})
	if err != nil || len(list) == 0 {
		return nil, false, err
	}
	return delivery(list), true, nil
}

// delivery is the message whose attempts are list, in time order: its
// state is the last attempt's, its body the newest an attempt carried,
// moved out of the attempts.
func delivery(list []schemas.WebhookAttempt) *schemas.WebhookDelivery {
	last := list[len(list)-1]
	d := &schemas.WebhookDelivery{ID: last.MessageID, EndpointID: last.EndpointID, EventType: last.EventType, EventID: last.EventID,
		Status: schemas.DeliveryStatus(last.Outcome), Attempts: len(list), CreatedAt: last.MessageCreatedAt,
		LastAttemptAt: last.At, LastHTTPStatus: last.Status, NextAttemptAt: last.NextAttemptAt, AttemptList: list}
	for i := range list {
		if list[i].Body != nil {
			d.Body, list[i].Body = list[i].Body, nil
		}
	}
	return d
}

// stored is a DateTime read back: 0 stands for no time.
func stored(t time.Time) time.Time {
	if t.Unix() <= 0 {
		return time.Time{}
	}
	return t.UTC()
}
