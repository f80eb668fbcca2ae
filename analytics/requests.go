package analytics

import (
	"context"
	"encoding/base64"
	"fmt"
	"strconv"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/go-json-experiment/json"

	"github.com/certnode/certnode/internal/chconn"
	"github.com/certnode/certnode/schemas"
)

// Pages of the drill-down.
const (
	DefaultRequestsPage = 50
	MaxRequestsPage     = 200
)

// requestsSelect lists raw results newest first, past a position: the
// WHERE clause (%s) holds the scope, the filters and the cursor. Copies of
// one result not merged yet show once (LIMIT 1 BY); a replayed request
// shows each result it had.
const requestsSelect = `SELECT id, receipt_id, kind, status, reason, kid, key_id, job_id, line, size, received_at, processed_at, latency_ms ` +
	`FROM ` + schemas.ClickHouseResultsTable + ` WHERE %s ORDER BY received_at DESC, id DESC, receipt_id DESC LIMIT 1 BY receipt_id, id LIMIT ?`

// requestCursor is the position of the last row of a page.
type requestCursor struct {
	at            int64
	id, receiptID string
}

func (c requestCursor) encode() string {
	b, _ := json.Marshal([]string{strconv.FormatInt(c.at, 10), c.id, c.receiptID})
	return base64.RawURLEncoding.EncodeToString(b)
}

// decodeRequestCursor parses a cursor from a client: anything but one
// encode made is ErrBadAnalyticsQuery.
func decodeRequestCursor(s string) (requestCursor, error) {
	bad := fmt.Errorf("%w: cursor must be the next_cursor of a previous page", schemas.ErrBadAnalyticsQuery)
	raw, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil || len(s) > 1024 {
		return requestCursor{}, bad
	}
	var parts []string
	if json.Unmarshal(raw, &parts) != nil || len(parts) != 3 {
		return requestCursor{}, bad
	}
	at, err := strconv.ParseInt(parts[0], 10, 64)
	c := requestCursor{at: at, id: parts[1], receiptID: parts[2]}
	if err != nil || at < 0 || at > 1<<32-1 || c.id == "" || len(c.id) > schemas.MaxIDBytes || len(c.receiptID) > schemas.MaxIDBytes || c.encode() != s {
		return requestCursor{}, bad
	}
	return c, nil
}

// requestsSQL is the statement of one page of p's raw results past after.
func (p *plan) requestsSQL(after *requestCursor, limit int) (string, []any) {
	w := "tenant = ? AND received_at >= toDateTime(?) AND received_at < toDateTime(?)"
	args := []any{p.org, p.from.Unix(), p.to.Unix()}
	f, fa := p.filterSQL()
	w, args = w+f, append(args, fa...)
	if after != nil {
		w += " AND (received_at < toDateTime(?) OR (received_at = toDateTime(?) AND (id < ? OR (id = ? AND receipt_id < ?))))"
		args = append(args, after.at, after.at, after.id, after.id, after.receiptID)
	}
	return fmt.Sprintf(requestsSelect, w), append(args, limit)
}

// Requests lists org's raw results over q's range (to the second) that
// match its filters, newest first: the drill-down under a chart. cursor is
// the NextCursor of the page before ("" for the first).
func (r *Reader) Requests(ctx context.Context, org string, q schemas.AnalyticsQuery, cursor string) (*schemas.AnalyticsRequestPage, error) {
	if q.GroupBy != "" || len(q.Metrics) > 0 {
		return nil, fmt.Errorf("%w: the drill-down takes filters, a range, a limit and a cursor", schemas.ErrBadAnalyticsQuery)
	}
	q.Metrics = []string{"requests"}
	p, err := newPlan(org, q, false)
	if err != nil {
		return nil, err
	}
	p.from, p.to = q.From.UTC().Truncate(time.Second), q.To.UTC().Truncate(time.Second)
	limit := q.Limit
	switch {
	case limit == 0:
		limit = DefaultRequestsPage
	case limit < 0 || limit > MaxRequestsPage:
		return nil, fmt.Errorf("%w: limit must be 1 to %d", schemas.ErrBadAnalyticsQuery, MaxRequestsPage)
	}
	var after *requestCursor
	if cursor != "" {
		c, err := decodeRequestCursor(cursor)
		if err != nil {
			return nil, err
		}
		after = &c
	}
	sql, args := p.requestsSQL(after, limit+1)
	page := &schemas.AnalyticsRequestPage{Data: []schemas.AnalyticsRequest{}}
	err = chconn.Each(ctx, r.conn, "requests", sql, args, func(rows driver.Rows) error {
		var x schemas.AnalyticsRequest
		if err := rows.Scan(&x.ID, &x.ReceiptID, &x.Kind, &x.Status, &x.Reason, &x.Kid, &x.KeyID, &x.JobID, &x.Line, &x.Size,
			&x.ReceivedAt, &x.ProcessedAt, &x.LatencyMS); err != nil {
			return err
		}
		x.ReceivedAt, x.ProcessedAt = x.ReceivedAt.UTC(), x.ProcessedAt.UTC()
		page.Data = append(page.Data, x)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(page.Data) > limit {
		last := page.Data[limit-1]
		page.Data, page.HasMore = page.Data[:limit], true
		page.NextCursor = requestCursor{at: last.ReceivedAt.Unix(), id: last.ID, receiptID: last.ReceiptID}.encode()
	}
	return page, nil
}
