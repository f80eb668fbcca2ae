// Package privacy finds and erases what the service holds about data
// subjects, in ClickHouse: the receipts whose payload names a subject at
// the organization's subject pointer, and the webhook attempts that
// carried them. Erasure rewrites the rows (payloads and bodies blanked) or
// deletes them by mutation, which replaces the parts that held them, so
// the ciphertext is gone from ClickHouse once it is applied; erasing an
// organization also destroys its key, so no copy of its payloads can be
// read again. Receipts handed out, and every log proof, stay valid (the
// logs hold hashes).
// Kafka topics keep what they hold for their retention.
package privacy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/certnode/certnode/internal/chconn"
	"github.com/certnode/certnode/internal/envelope"
	"github.com/certnode/certnode/schemas"
)

// Store reads and erases in ClickHouse.
type Store struct {
	conn driver.Conn
	keys Keys
}

// Keys open the payloads stored sealed, and destroy an organization's key
// (internal/envelope).
type Keys interface {
	Open(ctx context.Context, org, v string) ([]byte, error)
	Destroy(ctx context.Context, org string) error
}

// Open connects to ClickHouse.
func Open(ctx context.Context, o chconn.Options, keys Keys) (*Store, error) {
	conn, err := chconn.Open(ctx, o)
	if err != nil {
		return nil, err
	}
	return &Store{conn: conn, keys: keys}, nil
}

// Close closes the connection.
func (s *Store) Close() error { return s.conn.Close() }

// find calls yield with each of org's rows whose receipt's payload holds
// value at pointer: every row of such a receipt (a verification stores the
// receipt it checked, and an EdDSA receipt signed twice is one receipt).
// Receipts are stored sealed, so each of org's is opened and read here.
func (s *Store) find(ctx context.Context, org, pointer, value string, yield func(schemas.SubjectReceipt) error) error {
	rows, err := s.conn.Query(ctx, "SELECT id, receipt_id, received_at, receipt FROM "+schemas.ClickHouseResultsTable+
		" WHERE tenant = ? AND receipt != ''", org)
	if err != nil {
		return fmt.Errorf("privacy: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var m schemas.SubjectReceipt
		var stored string
		if err := rows.Scan(&m.RequestID, &m.ReceiptID, &m.ReceivedAt, &stored); err != nil {
			return fmt.Errorf("privacy: %w", err)
		}
		receipt, err := s.keys.Open(ctx, org, stored)
		if errors.Is(err, envelope.ErrDestroyed) {
			continue // erased with its key
		}
		if err != nil {
			return fmt.Errorf("privacy: receipt %s: %w", m.ReceiptID, err)
		}
		var rc struct {
			Payload any `json:"payload"`
		}
		if json.Unmarshal(receipt, &rc, json.RejectUnknownMembers(false)) != nil {
			continue
		}
		if v, ok := schemas.JSONPointerGet(rc.Payload, pointer); !ok || !equal(v, value) {
			continue
		}
		m.Receipt = jsontext.Value(receipt)
		if err := yield(m); err != nil {
			return err
		}
	}
	return rows.Err()
}

// equal reports whether a payload's value is the subject: a string equal
// to it, or a number (exact to 2^53) or boolean written as it.
func equal(v any, subject string) bool {
	switch x := v.(type) {
	case string:
		return x == subject
	case float64, bool:
		b, _ := json.Marshal(x)
		return string(b) == subject
	}
	return false
}

// maxSubjectBytes bounds the receipts a subject access answer carries.
const maxSubjectBytes = 64 << 20

// Subject answers a data subject access request: the receipts whose
// payload holds value at pointer (each once), and how many webhook
// attempts carried them.
func (s *Store) Subject(ctx context.Context, org, pointer, value string) (*schemas.SubjectData, error) {
	out := &schemas.SubjectData{SubjectPointer: pointer, Subject: value, Receipts: []schemas.SubjectReceipt{}}
	var events []string
	seen := map[string]bool{}
	size := 0
	err := s.find(ctx, org, pointer, value, func(m schemas.SubjectReceipt) error {
		events = append(events, schemas.EventID(org, m.RequestID))
		if seen[m.ReceiptID] {
			return nil
		}
		seen[m.ReceiptID] = true
		if len(out.Receipts) == schemas.MaxSubjectReceipts || size+len(m.Receipt) > maxSubjectBytes {
			out.Truncated = true
			return nil
		}
		size += len(m.Receipt)
		out.Receipts = append(out.Receipts, m)
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, chunk := range chunks(events) {
		var n uint64
		if err := s.conn.QueryRow(ctx, "SELECT count() FROM "+schemas.ClickHouseWebhookAttemptsTable+" WHERE org = ? AND event_id IN ("+chconn.Placeholders(len(chunk))+")",
			append([]any{org}, chunk...)...).Scan(&n); err != nil {
			return nil, fmt.Errorf("privacy: %w", err)
		}
		out.WebhookAttempts += n
	}
	return out, nil
}

// blank sets a table's payload columns to ”.
func blank(t schemas.ClickHouseOrgTable) string {
	sets := make([]string, len(t.Payloads))
	for i, c := range t.Payloads {
		sets[i] = c + " = ''"
	}
	return "UPDATE " + strings.Join(sets, ", ")
}

// Erase erases what r asks of org's data (pointer: the organization's
// subject pointer, for a subject): the payloads of a subject's receipts
// (every row of each) and of the webhook attempts that carried them, the
// payloads of a window, or every row of the organization.
func (s *Store) Erase(ctx context.Context, org string, r schemas.ErasureRequest, pointer string) (*schemas.Erasure, error) {
	mode, err := r.Mode()
	if err != nil {
		return nil, err
	}
	out := &schemas.Erasure{Mode: mode, Rows: map[string]uint64{}}
	results, attempts := schemas.ClickHouseErasable[0], schemas.ClickHouseErasable[1]
	switch mode {
	case schemas.ErasureSubject:
		receipts := map[string]bool{}
		var ids, events []string
		if err := s.find(ctx, org, pointer, r.Subject, func(m schemas.SubjectReceipt) error {
			receipts[m.ReceiptID] = true
			ids, events = append(ids, m.RequestID), append(events, schemas.EventID(org, m.RequestID))
			return nil
		}); err != nil {
			return nil, err
		}
		out.Requests = ids
		for _, chunk := range chunks(slices.Sorted(maps.Keys(receipts))) {
			if err := s.mutate(ctx, out, results.Table, blank(results), "tenant = ? AND receipt_id IN ("+chconn.Placeholders(len(chunk))+")", append([]any{org}, chunk...)); err != nil {
				return nil, err
			}
		}
		for _, chunk := range chunks(events) {
			if err := s.mutate(ctx, out, attempts.Table, blank(attempts), "org = ? AND event_id IN ("+chconn.Placeholders(len(chunk))+")", append([]any{org}, chunk...)); err != nil {
				return nil, err
			}
		}
	case schemas.ErasureRange:
		for _, t := range []schemas.ClickHouseOrgTable{results, attempts} {
			where := t.Org + " = ? AND " + t.Time + " >= toDateTime(?) AND " + t.Time + " < toDateTime(?)"
			if err := s.mutate(ctx, out, t.Table, blank(t), where, []any{org, r.From.Unix(), r.To.Unix()}); err != nil {
				return nil, err
			}
		}
	case schemas.ErasureOrganization:
		for _, t := range schemas.ClickHouseErasable {
			if err := s.mutate(ctx, out, t.Table, "DELETE", t.Org+" = ?", []any{org}); err != nil {
				return nil, err
			}
		}
		// Destroying the key also erases the copies the mutation cannot
		// reach: backups, detached parts, exported dumps of the tables.
		if err := s.keys.Destroy(ctx, org); err != nil {
			return nil, fmt.Errorf("privacy: destroy the organization's key: %w", err)
		}
		out.KeyDestroyed = true
	}
	return out, nil
}

// mutate counts the rows where holds, and rewrites or deletes them (what)
// when there are any.
func (s *Store) mutate(ctx context.Context, out *schemas.Erasure, table, what, where string, args []any) error {
	var n uint64
	if err := s.conn.QueryRow(ctx, "SELECT count() FROM "+table+" WHERE "+where, args...).Scan(&n); err != nil {
		return fmt.Errorf("privacy: %w", err)
	}
	if n == 0 {
		return nil
	}
	if err := s.conn.Exec(ctx, "ALTER TABLE "+table+" "+what+" WHERE "+where, args...); err != nil {
		return fmt.Errorf("privacy: %w", err)
	}
	out.Rows[table] += n
	return nil
}

// chunkSize bounds the ids of one mutation.
const chunkSize = 500

func chunks(ids []string) [][]any {
	var out [][]any
	for len(ids) > 0 {
		n := min(len(ids), chunkSize)
		c := make([]any, n)
		for i, id := range ids[:n] {
			c[i] = id
		}
		out, ids = append(out, c), ids[n:]
	}
	return out
}
