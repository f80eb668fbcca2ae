// Package deliveries is the read side of webhook delivery: an
// organization's messages and their attempts, from the tables the
// ClickHouse sink writes (certnode.webhook_messages to list,
// certnode.webhook_attempts for one message's attempts and bodies; see
// schemas.ClickHouseDDL). Every statement binds the organization first and
// every value from a caller as an argument, never as SQL text. It depends
// only on internal/ and schemas/; cmd mounts it on ingest's deliveries
// routes.
package deliveries

import (
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/certnode/certnode/internal/chconn"
	"github.com/certnode/certnode/schemas"
)

// Errors of a query the caller got wrong (HTTP 400); ErrBadCursor is one.
var (
	ErrBadQuery  = errors.New("deliveries: bad query")
	ErrBadCursor = fmt.Errorf("%w: bad cursor", ErrBadQuery)
)

// DefaultPage is the page size of a query that sets none.
const DefaultPage = 50

// MaxFailed bounds the messages Failed returns, bodies included.
const MaxFailed = 10000

// tables names the tables read (others in tests).
type tables struct{ attempts, messages string }

var productionTables = tables{attempts: schemas.ClickHouseWebhookAttemptsTable, messages: schemas.ClickHouseWebhookMessagesTable}

// messagesSelect lists messages from the per-message table: the WHERE
// clause (%s: the filters) holds only sort-key columns, so it applies
// before the states are merged, and the status filter (%s: HAVING) needs
// the merged latest outcome. Names of results differ from the columns
// (m_...) because ClickHouse 18.16 resolves a name to a SELECT alias
// before a column. The latest attempt's time is the first two parts of the
// greatest (at, at_nanos, id); the server computes maxMerge once.
const messagesSelect = `SELECT message_id, endpoint_id, event_type, event_id, created_at, uniqExactMerge(attempts) AS m_attempts, ` +
	`tupleElement(maxMerge(last_at), 1) AS m_at, tupleElement(maxMerge(last_at), 2) AS m_at_nanos, ` +
	`argMaxMerge(last_outcome) AS m_outcome, argMaxMerge(last_status) AS m_status, argMaxMerge(last_next_attempt_at) AS m_next ` +
	`FROM %s WHERE org = ?%s GROUP BY created_at, message_id, endpoint_id, event_type, event_id%s ` +
	`ORDER BY created_at %s, message_id %s LIMIT ?`

// statusOutcomes are the latest outcomes of each delivery status, as
// schemas.DeliveryStatus maps them (failed: any other outcome).
var statusOutcomes = map[string]struct {
	not      bool
	outcomes []string
}{
	schemas.DeliveryDelivered: {outcomes: []string{schemas.OutcomeDelivered}},
	schemas.DeliveryPending:   {outcomes: []string{schemas.OutcomeRetrying}},
	schemas.DeliveryFailed:    {not: true, outcomes: []string{schemas.OutcomeDelivered, schemas.OutcomeRetrying}},
}

// messagesQuery selects one organization's messages, newest first (or
// oldest first), by (created_at, message id).
type messagesQuery struct {
	tables
	org, endpoint, eventType, status string
	since, until                     time.Time // zero: unbounded
	after                            *cursor   // only messages past it, in the query's order
	oldestFirst                      bool
	limit                            int
}

// toSQL returns the statement and its arguments; its text depends only on
// which filters are set and on the order.
func (m messagesQuery) toSQL() (string, []any, error) {
	if err := schemas.CheckTenantID(m.org); err != nil {
		return "", nil, fmt.Errorf("deliveries: %w", err)
	}
	if m.limit < 1 {
		return "", nil, fmt.Errorf("%w: limit %d", ErrBadQuery, m.limit)
	}
	if !m.since.IsZero() && !m.until.IsZero() && !m.since.Before(m.until) {
		return "", nil, fmt.Errorf("%w: since must be before until", ErrBadQuery)
	}
	var where, having strings.Builder
	args := []any{m.org}
	filter := func(cond string, vals ...any) {
		where.WriteString(" AND " + cond)
		args = append(args, vals...)
	}
	if m.endpoint != "" {
		filter("endpoint_id = ?", m.endpoint)
	}
	if m.eventType != "" {
		filter("event_type = ?", m.eventType)
	}
	if !m.since.IsZero() {
		filter("created_at >= toDateTime(?)", seconds(m.since))
	}
	if !m.until.IsZero() {
		filter("created_at < toDateTime(?)", seconds(m.until))
	}
	order, past := "DESC", "<"
	if m.oldestFirst {
		order, past = "ASC", ">"
	}
	if m.after != nil {
		filter(fmt.Sprintf("(created_at %[1]s toDateTime(?) OR (created_at = toDateTime(?) AND message_id %[1]s ?))", past),
			m.after.createdAt, m.after.createdAt, m.after.id)
	}
	var statusArgs []any
	if m.status != "" {
		s, ok := statusOutcomes[m.status]
		if !ok {
			return "", nil, fmt.Errorf("%w: status %q", ErrBadQuery, m.status)
		}
		not := ""
		if s.not {
			not = "NOT "
		}
		having.WriteString(fmt.Sprintf(" HAVING m_outcome %sIN (%s)", not, chconn.Placeholders(len(s.outcomes))))
		for _, o := range s.outcomes {
			statusArgs = append(statusArgs, o)
		}
	}
	args = append(append(args, statusArgs...), m.limit)
	return fmt.Sprintf(messagesSelect, m.messages, where.String(), having.String(), order, order), args, nil
}

// seconds is t as a DateTime argument: whole seconds, clamped to the
// range DateTime holds (toDateTime wraps values outside it).
func seconds(t time.Time) int64 {
	return min(max(t.Unix(), 0), math.MaxUint32)
}

// listQuery is the query of one page of org's deliveries, one message more
// than the page so that the page knows whether more follow.
func listQuery(t tables, org string, q schemas.DeliveryQuery) (messagesQuery, error) {
	limit := q.Limit
	if limit == 0 {
		limit = DefaultPage
	}
	if limit < 0 || limit > schemas.MaxDeliveryPage {
		return messagesQuery{}, fmt.Errorf("%w: limit must be 1 to %d", ErrBadQuery, schemas.MaxDeliveryPage)
	}
	m := messagesQuery{tables: t, org: org, endpoint: q.Endpoint, eventType: q.EventType, status: q.Status,
		since: q.Since, until: q.Until, limit: limit + 1}
	if q.Cursor != "" {
		c, err := decodeCursor(q.Cursor)
		if err != nil {
			return messagesQuery{}, err
		}
		m.after = &c
	}
	return m, nil
}

// failedQuery is the query of Failed: the endpoint's messages created in
// [since, until) whose latest state is failed (every one when all), oldest
// first.
func failedQuery(t tables, org, endpoint string, since, until time.Time, all bool, limit int) (messagesQuery, error) {
	if endpoint == "" {
		return messagesQuery{}, fmt.Errorf("%w: an endpoint is required", ErrBadQuery)
	}
	if limit < 1 || limit > MaxFailed {
		return messagesQuery{}, fmt.Errorf("%w: limit must be 1 to %d", ErrBadQuery, MaxFailed)
	}
	m := messagesQuery{tables: t, org: org, endpoint: endpoint, since: since, until: until, oldestFirst: true, limit: limit}
	if !all {
		m.status = schemas.DeliveryFailed
	}
	return m, nil
}

// attemptsSelect returns one message's attempts in time order, each once
// (LIMIT 1 BY: copies not merged yet).
const attemptsSelect = `SELECT id, endpoint_id, event_type, event_id, body, message_created_at, attempt, redelivery, round, held, at, at_nanos, ` +
	`url, status, latency_ms, response_headers, response_body, error, outcome, next_attempt_at ` +
	`FROM %s WHERE org = ? AND message_id = ? ORDER BY at, at_nanos, id LIMIT 1 BY id`

// bodiesSelect returns the newest body of each message of a list.
const bodiesSelect = `SELECT message_id, argMax(body, (at, at_nanos, id)) AS m_body ` +
	`FROM %s WHERE org = ? AND message_id IN ? AND body != '' GROUP BY message_id`

// bodiesChunk bounds the ids of one bodies query, so that its text stays
// well under the server's max_query_size (256 KiB by default).
const bodiesChunk = 500

// cursor is the position of the last message of a page.
type cursor struct {
	createdAt int64 // seconds, as stored
	id        string
}

// maxCursor bounds an encoded cursor: 10 digits, a colon and the longest id.
var maxCursor = base64.RawURLEncoding.EncodedLen(len("4294967295:") + schemas.MaxIDBytes)

// encodeCursor is "<seconds>:<id>" in base64url: opaque to clients, and
// one string per position, which decodeCursor insists on.
func encodeCursor(c cursor) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(c.createdAt, 10) + ":" + c.id))
}

// decodeCursor parses a cursor from a client: anything but a cursor
// encodeCursor made for a message that may exist is ErrBadCursor.
func decodeCursor(s string) (cursor, error) {
	if len(s) == 0 || len(s) > maxCursor {
		return cursor{}, ErrBadCursor
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil {
		return cursor{}, ErrBadCursor
	}
	sec, id, ok := strings.Cut(string(raw), ":")
	n, err := strconv.ParseInt(sec, 10, 64)
	c := cursor{createdAt: n, id: id}
	if !ok || err != nil || n < 0 || n > math.MaxUint32 || id == "" || len(id) > schemas.MaxIDBytes || encodeCursor(c) != s {
		return cursor{}, ErrBadCursor
	}
	return c, nil
}
