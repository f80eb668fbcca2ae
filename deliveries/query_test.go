package deliveries

import (
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/certnode/certnode/schemas"
)

const (
	selectMessages = "SELECT message_id, endpoint_id, event_type, event_id, created_at, uniqExactMerge(attempts) AS m_attempts, " +
		"tupleElement(maxMerge(last_at), 1) AS m_at, tupleElement(maxMerge(last_at), 2) AS m_at_nanos, " +
		"argMaxMerge(last_outcome) AS m_outcome, argMaxMerge(last_status) AS m_status, argMaxMerge(last_next_attempt_at) AS m_next " +
		"FROM certnode.webhook_messages WHERE org = ?"
	groupMessages = " GROUP BY created_at, message_id, endpoint_id, event_type, event_id"
	newestFirst   = " ORDER BY created_at DESC, message_id DESC LIMIT ?"
	oldestFirst   = " ORDER BY created_at ASC, message_id ASC LIMIT ?"
)

func TestListSQL(t *testing.T) {
	since := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	until := time.Date(2026, 5, 2, 0, 0, 0, 0, time.UTC)
	cur := encodeCursor(cursor{createdAt: since.Unix() + 60, id: "msg_x"})
	for _, tc := range []struct {
		name     string
		org      string
		q        schemas.DeliveryQuery
		wantSQL  string
		wantArgs []any
		wantErr  error
	}{
		{
			name:     "no filter: the default page and one more",
			org:      "acme",
			wantSQL:  selectMessages + groupMessages + newestFirst,
			wantArgs: []any{"acme", DefaultPage + 1},
		},
		{
			name: "every filter and a cursor",
			org:  "acme",
			q: schemas.DeliveryQuery{Endpoint: "ep_1", EventType: "receipt.signed", Status: schemas.DeliveryFailed,
				Since: since, Until: until, Cursor: cur, Limit: 10},
			wantSQL: selectMessages + " AND endpoint_id = ? AND event_type = ? AND created_at >= toDateTime(?) AND created_at < toDateTime(?)" +
				" AND (created_at < toDateTime(?) OR (created_at = toDateTime(?) AND message_id < ?))" +
				groupMessages + " HAVING m_outcome NOT IN (?, ?)" + newestFirst,
			wantArgs: []any{"acme", "ep_1", "receipt.signed", since.Unix(), until.Unix(), since.Unix() + 60, since.Unix() + 60, "msg_x",
				"delivered", "retrying", 11},
		},
		{
			name:     "delivered",
			org:      "acme",
			q:        schemas.DeliveryQuery{Status: schemas.DeliveryDelivered, Limit: schemas.MaxDeliveryPage},
			wantSQL:  selectMessages + groupMessages + " HAVING m_outcome IN (?)" + newestFirst,
			wantArgs: []any{"acme", "delivered", schemas.MaxDeliveryPage + 1},
		},
		{
			name:     "pending",
			org:      "acme",
			q:        schemas.DeliveryQuery{Status: schemas.DeliveryPending, Limit: 1},
			wantSQL:  selectMessages + groupMessages + " HAVING m_outcome IN (?)" + newestFirst,
			wantArgs: []any{"acme", "retrying", 2},
		},
		{
			name:     "values that look like SQL are arguments",
			org:      "x'OR'1'='1",
			q:        schemas.DeliveryQuery{Endpoint: "'; DROP TABLE certnode.webhook_messages; --", EventType: `\'`},
			wantSQL:  selectMessages + " AND endpoint_id = ? AND event_type = ?" + groupMessages + newestFirst,
			wantArgs: []any{"x'OR'1'='1", "'; DROP TABLE certnode.webhook_messages; --", `\'`, DefaultPage + 1},
		},
		{
			name:     "times outside DateTime are clamped, not wrapped",
			org:      "acme",
			q:        schemas.DeliveryQuery{Since: time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC), Until: time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)},
			wantSQL:  selectMessages + " AND created_at >= toDateTime(?) AND created_at < toDateTime(?)" + groupMessages + newestFirst,
			wantArgs: []any{"acme", int64(0), int64(math.MaxUint32), DefaultPage + 1},
		},
		{name: "unknown status", org: "acme", q: schemas.DeliveryQuery{Status: "exhausted"}, wantErr: ErrBadQuery},
		{name: "page too large", org: "acme", q: schemas.DeliveryQuery{Limit: schemas.MaxDeliveryPage + 1}, wantErr: ErrBadQuery},
		{name: "negative page", org: "acme", q: schemas.DeliveryQuery{Limit: -1}, wantErr: ErrBadQuery},
		{name: "empty range", org: "acme", q: schemas.DeliveryQuery{Since: until, Until: until}, wantErr: ErrBadQuery},
		{name: "bad cursor", org: "acme", q: schemas.DeliveryQuery{Cursor: "not a cursor"}, wantErr: ErrBadCursor},
		{name: "no organization", q: schemas.DeliveryQuery{}, wantErr: errAny},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := listQuery(productionTables, tc.org, tc.q)
			var sql string
			var args []any
			if err == nil {
				sql, args, err = m.toSQL()
			}
			checkSQL(t, sql, args, err, tc.wantSQL, tc.wantArgs, tc.wantErr)
		})
	}
}

// errAny stands for any error.
var errAny = errors.New("any error")

func checkSQL(t *testing.T, sql string, args []any, err error, wantSQL string, wantArgs []any, wantErr error) {
	t.Helper()
	if wantErr != nil {
		if err == nil || (wantErr != errAny && !errors.Is(err, wantErr)) {
			t.Fatalf("got %v, want %v", err, wantErr)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if sql != wantSQL {
		t.Errorf("SQL\n %s\nwant\n %s", sql, wantSQL)
	}
	if !slices.Equal(args, wantArgs) {
		t.Errorf("args %#v, want %#v", args, wantArgs)
	}
}

func TestFailedSQL(t *testing.T) {
	since := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	until := since.Add(time.Hour)
	for _, tc := range []struct {
		name     string
		endpoint string
		all      bool
		limit    int
		wantSQL  string
		wantArgs []any
		wantErr  error
	}{
		{
			name: "failed only, oldest first", endpoint: "ep_1", limit: MaxFailed,
			wantSQL: selectMessages + " AND endpoint_id = ? AND created_at >= toDateTime(?) AND created_at < toDateTime(?)" +
				groupMessages + " HAVING m_outcome NOT IN (?, ?)" + oldestFirst,
			wantArgs: []any{"acme", "ep_1", since.Unix(), until.Unix(), "delivered", "retrying", MaxFailed},
		},
		{
			name: "all", endpoint: "ep_1", all: true, limit: 3,
			wantSQL:  selectMessages + " AND endpoint_id = ? AND created_at >= toDateTime(?) AND created_at < toDateTime(?)" + groupMessages + oldestFirst,
			wantArgs: []any{"acme", "ep_1", since.Unix(), until.Unix(), 3},
		},
		{name: "no endpoint", limit: 1, wantErr: ErrBadQuery},
		{name: "no limit", endpoint: "ep_1", wantErr: ErrBadQuery},
		{name: "limit too large", endpoint: "ep_1", limit: MaxFailed + 1, wantErr: ErrBadQuery},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := failedQuery(productionTables, "acme", tc.endpoint, since, until, tc.all, tc.limit)
			var sql string
			var args []any
			if err == nil {
				sql, args, err = m.toSQL()
			}
			checkSQL(t, sql, args, err, tc.wantSQL, tc.wantArgs, tc.wantErr)
		})
	}
}

// The one-message statements bind the organization first, like the list.
func TestMessageStatements(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{fmt.Sprintf(attemptsSelect, productionTables.attempts), "SELECT id, endpoint_id, event_type, event_id, body, message_created_at, attempt, " +
			"redelivery, round, held, at, at_nanos, url, status, latency_ms, response_headers, response_body, error, outcome, next_attempt_at " +
			"FROM certnode.webhook_attempts WHERE org = ? AND message_id = ? ORDER BY at, at_nanos, id LIMIT 1 BY id"},
		{fmt.Sprintf(bodiesSelect, productionTables.attempts), "SELECT message_id, argMax(body, (at, at_nanos, id)) AS m_body " +
			"FROM certnode.webhook_attempts WHERE org = ? AND message_id IN ? AND body != '' GROUP BY message_id"},
	} {
		if tc.got != tc.want {
			t.Errorf("SQL\n %s\nwant\n %s", tc.got, tc.want)
		}
	}
}

// The status filters select exactly the outcomes schemas.DeliveryStatus
// maps to each status.
func TestStatusFiltersMatchDeliveryStatus(t *testing.T) {
	outcomes := []string{schemas.OutcomeDelivered, schemas.OutcomeRetrying, schemas.OutcomeExhausted, schemas.OutcomeDisabled, "unknown"}
	if len(statusOutcomes) != 3 {
		t.Fatalf("%d status filters, want 3", len(statusOutcomes))
	}
	for status, f := range statusOutcomes {
		for _, o := range outcomes {
			if matches := f.not != slices.Contains(f.outcomes, o); matches != (schemas.DeliveryStatus(o) == status) {
				t.Errorf("status %s: outcome %s selected %v, DeliveryStatus says %s", status, o, matches, schemas.DeliveryStatus(o))
			}
		}
	}
}

func TestDeliveryFromAttempts(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	att := func(id string, n int, redelivery bool, at time.Duration, outcome, body string) schemas.WebhookAttempt {
		a := schemas.WebhookAttempt{ID: id, MessageID: "msg_1", EndpointID: "ep_1", EventType: "receipt.signed", EventID: "evt_1",
			MessageCreatedAt: t0, Attempt: n, Redelivery: redelivery, At: t0.Add(at), Status: 500, Outcome: outcome}
		if body != "" {
			a.Body = []byte(body)
		}
		return a
	}
	list := []schemas.WebhookAttempt{
		att("a1", 1, false, time.Second, schemas.OutcomeRetrying, `{"round":1}`),
		att("a2", 2, false, time.Minute, schemas.OutcomeExhausted, ""),
		att("a3", 1, true, time.Hour, schemas.OutcomeRetrying, `{"round":2}`),
	}
	list[2].NextAttemptAt = t0.Add(2 * time.Hour)
	d := delivery(list)
	if d.ID != "msg_1" || d.Status != schemas.DeliveryPending || d.Attempts != 3 || !d.CreatedAt.Equal(t0) || !d.LastAttemptAt.Equal(t0.Add(time.Hour)) ||
		!d.NextAttemptAt.Equal(t0.Add(2*time.Hour)) || d.LastHTTPStatus != 500 || string(d.Body) != `{"round":2}` {
		t.Errorf("delivery %+v", d)
	}
	for _, a := range d.AttemptList {
		if a.Body != nil {
			t.Errorf("attempt %s keeps its body", a.ID)
		}
	}
}

func TestCursor(t *testing.T) {
	for _, c := range []cursor{{0, "m"}, {1767225600, "msg_abcdefghijklmnopqrstuvwxyz"}, {math.MaxUint32, strings.Repeat("x", schemas.MaxIDBytes)},
		{5, "id:with:colons"}, {5, "\x00'\\"}} {
		s := encodeCursor(c)
		got, err := decodeCursor(s)
		if err != nil || got != c {
			t.Errorf("cursor %+v: %q decodes to %+v, %v", c, s, got, err)
		}
		if strings.ContainsAny(s, "+/=") {
			t.Errorf("cursor %q is not base64url without padding", s)
		}
	}
	b64 := func(raw string) string { return base64.RawURLEncoding.EncodeToString([]byte(raw)) }
	good := b64("5:ab")
	for name, s := range map[string]string{
		"empty":                 "",
		"not base64":            "!!!!",
		"standard alphabet":     base64.RawStdEncoding.EncodeToString([]byte("5:a>>?")),
		"padded":                base64.URLEncoding.EncodeToString([]byte("5:ab")),
		"non-zero padding bits": good[:len(good)-1] + "h",
		"no colon":              b64("5"),
		"no time":               b64(":ab"),
		"no id":                 b64("5:"),
		"negative time":         b64("-5:ab"),
		"plus sign":             b64("+5:ab"),
		"leading zero":          b64("05:ab"),
		"spaces":                b64(" 5:ab"),
		"after 2106":            b64("4294967296:ab"),
		"huge time":             b64("99999999999999999999999:ab"),
		"id too long":           b64("5:" + strings.Repeat("x", schemas.MaxIDBytes+1)),
		"far too long":          strings.Repeat("A", 1<<20),
		"with a newline":        good + "\n",
	} {
		if c, err := decodeCursor(s); !errors.Is(err, ErrBadCursor) || !errors.Is(err, ErrBadQuery) || c != (cursor{}) {
			t.Errorf("%s: %q decodes to %+v, %v; want ErrBadCursor", name, s, c, err)
		}
	}
}
