package schemas

// ClickHouseDDL creates the analytics table and view. It is valid on
// Debian's ClickHouse 18.16 and on current releases: DateTime (not
// DateTime64), String (not LowCardinality), the ENGINE = ... ORDER BY
// syntax, and a view whose output names differ from the columns it
// aggregates (18.16 resolves a name to a SELECT alias before a column).
//
// certnode.results keeps every result the sink read, and so every receipt
// the service issued: a request replayed after a worker died is signed
// again with a new random signature, hence a new receipt_id, and the
// client may hold either. ReplacingMergeTree on (tenant, receipt_id, id)
// merges rows only when both ids match: copies of one result (the sink
// reading an offset range twice, a verify request verified again).
// receipt_id leads id so that GET /v1/receipts/{receipt_id} uses the
// primary index. Rows are partitioned by received_at, which a
// replayed record does not change, so its copies share a partition.
//
// certnode.requests is one row per (tenant, id): the request as first
// processed (earliest processed_at, ties broken by receipt_id so that
// every column comes from the same result), and results, the number of
// distinct results it had. Queries that count requests read the view.
//
// certnode.usage_events holds the usage events of certnode.usage (see
// UsageEvent), one row per (org, id) once merged: copies of an event
// (replays) share the sort key and, since an event's time is the request's
// received time, their partition. ReplacingMergeTree keeps the row of the
// highest ver, which falls as processed_at rises, so merges keep the
// request as first processed, as certnode.requests reports it; queries
// pick the same row among copies not merged yet (argMin by processed_at).
//
// certnode.webhook_attempts holds the attempt records of
// certnode.webhooks.attempts (WebhookAttempt), one row per attempt id once
// merged: ReplacingMergeTree on (org, message_id, id) merges the copies
// at-least-once delivery makes, which share the partition since it is
// the message's created time (the same on every attempt of a message, so
// its attempts stay together too); queries collapse copies not merged yet
// (LIMIT 1 BY id, uniqExact, argMax). DateTime keeps whole seconds, and
// attempts of one message can be closer than that, so at_nanos keeps the
// rest: a message's latest attempt is the greatest (at, at_nanos, id).
// response_headers is a JSON object: it is shown back whole and never
// filtered on, 18.16 has no Map, and Nested arrays would only be zipped
// back into the map. body is the message's body on the first attempt of
// each round and empty on the others. A zero time (no next attempt) is 0.
//
// certnode.webhook_messages is one row per message once merged, for
// listing: the view certnode.webhook_messages_mv adds to it on every insert
// into certnode.webhook_attempts, and AggregatingMergeTree merges states
// that a copy of an attempt, or an insert retried whole, leaves unchanged
// (uniqExact of attempt ids; max and argMax by (at, at_nanos, id)).
// Queries GROUP BY the sort key and -Merge the states. The sort key leads
// with (org, created_at, message_id), the order of a listing; endpoint_id,
// event_type and event_id follow it so that filters on them apply before
// aggregating: all three, like created_at, are the same on every attempt
// of a message (its id derives from its event and endpoint). The view
// starts with the table (no POPULATE, which would lose concurrent inserts):
// both are created before the sink writes any attempt.
//
// key_id, the API key or producer key of the request, was added to
// certnode.results after its first release (ClickHouseAddedColumns).
//
// certnode.audit_events holds the audit events of certnode.audit, one
// row per id once merged (copies share the sort key and partition);
// queries collapse copies not merged yet (LIMIT 1 BY id). event is the
// event's canonical JSON, which the audit log's leaf commits to: what
// queries and exports show comes from it, and the other columns only
// select rows, so editing them or the event is found by an export's
// check against the log.
//
// The rollups (schemas.Rollups) follow: tables and views over
// certnode.results and certnode.webhook_attempts that keep analytics fast.
//
// certnode.receipts, the table of earlier releases keyed on (tenant, id),
// lost re-signed receipts; it is no longer written nor created, and is left
// in place on existing installs.
var ClickHouseDDL = []string{
	`CREATE DATABASE IF NOT EXISTS certnode`,
	`CREATE TABLE IF NOT EXISTS certnode.results (
		tenant String,
		id String,
		receipt_id String,
		kind String,
		status String,
		valid UInt8,
		reason String,
		auth String,
		keys String,
		kid String,
		payload_hash String,
		job_id String,
		line Int64,
		size UInt32,
		received_at DateTime,
		processed_at DateTime,
		latency_ms UInt32,
		receipt String,
		key_id String
	) ENGINE = ReplacingMergeTree()
	PARTITION BY toYYYYMM(received_at)
	ORDER BY (tenant, receipt_id, id)`,
	`CREATE VIEW IF NOT EXISTS certnode.requests AS
	SELECT
		tenant,
		id,
		argMin(r_receipt_id, r_order) AS receipt_id,
		argMin(r_kind, r_order) AS kind,
		argMin(r_status, r_order) AS status,
		argMin(r_valid, r_order) AS valid,
		argMin(r_reason, r_order) AS reason,
		argMin(r_auth, r_order) AS auth,
		argMin(r_keys, r_order) AS keys,
		argMin(r_kid, r_order) AS kid,
		argMin(r_payload_hash, r_order) AS payload_hash,
		argMin(r_job_id, r_order) AS job_id,
		argMin(r_line, r_order) AS line,
		argMin(r_size, r_order) AS size,
		argMin(r_received_at, r_order) AS received_at,
		min(r_processed_at) AS processed_at,
		argMin(r_latency_ms, r_order) AS latency_ms,
		uniqExact(r_receipt_id) AS results
	FROM (
		SELECT tenant, id, receipt_id AS r_receipt_id, kind AS r_kind, status AS r_status,
			valid AS r_valid, reason AS r_reason, auth AS r_auth, keys AS r_keys, kid AS r_kid,
			payload_hash AS r_payload_hash, job_id AS r_job_id, line AS r_line, size AS r_size,
			received_at AS r_received_at, processed_at AS r_processed_at, latency_ms AS r_latency_ms,
			(processed_at, receipt_id) AS r_order
		FROM certnode.results
	)
	GROUP BY tenant, id`,
	`CREATE TABLE IF NOT EXISTS certnode.usage_events (
		org String,
		id String,
		source String,
		time DateTime,
		kind String,
		status String,
		auth String,
		key_id String,
		bytes UInt64,
		job_id String,
		processed_at DateTime,
		ver UInt32 MATERIALIZED toUInt32(4294967295 - toUInt32(processed_at))
	) ENGINE = ReplacingMergeTree(ver)
	PARTITION BY toYYYYMM(time)
	ORDER BY (org, id)`,
	`CREATE TABLE IF NOT EXISTS certnode.webhook_attempts (
		org String,
		message_id String,
		id String,
		endpoint_id String,
		event_type String,
		event_id String,
		message_created_at DateTime,
		attempt UInt16,
		redelivery UInt8,
		round String,
		held UInt8,
		at DateTime,
		at_nanos UInt32,
		url String,
		status UInt16,
		latency_ms UInt32,
		response_headers String,
		response_body String,
		error String,
		outcome String,
		next_attempt_at DateTime,
		body String
	) ENGINE = ReplacingMergeTree()
	PARTITION BY toYYYYMM(message_created_at)
	ORDER BY (org, message_id, id)`,
	`CREATE TABLE IF NOT EXISTS certnode.audit_events (
		org String,
		id String,
		at DateTime,
		at_nanos UInt32,
		action String,
		actor_kind String,
		actor_id String,
		addr String,
		result String,
		source String,
		event String
	) ENGINE = ReplacingMergeTree()
	PARTITION BY toYYYYMM(at)
	ORDER BY (org, at, at_nanos, id)`,
	`CREATE TABLE IF NOT EXISTS certnode.webhook_messages (
		org String,
		created_at DateTime,
		message_id String,
		endpoint_id String,
		event_type String,
		event_id String,
		attempts AggregateFunction(uniqExact, String),
		last_at AggregateFunction(max, Tuple(DateTime, UInt32, String)),
		last_outcome AggregateFunction(argMax, String, Tuple(DateTime, UInt32, String)),
		last_status AggregateFunction(argMax, UInt16, Tuple(DateTime, UInt32, String)),
		last_next_attempt_at AggregateFunction(argMax, DateTime, Tuple(DateTime, UInt32, String))
	) ENGINE = AggregatingMergeTree()
	PARTITION BY toYYYYMM(created_at)
	ORDER BY (org, created_at, message_id, endpoint_id, event_type, event_id)`,
	`CREATE MATERIALIZED VIEW IF NOT EXISTS certnode.webhook_messages_mv TO certnode.webhook_messages AS
	SELECT
		org,
		message_created_at AS created_at,
		message_id,
		endpoint_id,
		event_type,
		event_id,
		uniqExactState(id) AS attempts,
		maxState((at, at_nanos, id)) AS last_at,
		argMaxState(outcome, (at, at_nanos, id)) AS last_outcome,
		argMaxState(status, (at, at_nanos, id)) AS last_status,
		argMaxState(next_attempt_at, (at, at_nanos, id)) AS last_next_attempt_at
	FROM certnode.webhook_attempts
	GROUP BY org, created_at, message_id, endpoint_id, event_type, event_id`,
}

func init() {
	for _, r := range Rollups {
		ClickHouseDDL = append(ClickHouseDDL, r.ddl()...)
	}
}

// ClickHouseColumn is a column of a table.
type ClickHouseColumn struct{ Table, Name, Type string }

// ClickHouseAddedColumns are columns added to tables after their first
// release. CREATE TABLE IF NOT EXISTS leaves an existing table as it was,
// and 18.16 has no ADD COLUMN IF NOT EXISTS, so chconn.Migrate adds each
// one an existing table lacks before it runs the DDL, whose views read
// them.
var ClickHouseAddedColumns = []ClickHouseColumn{{Table: ClickHouseResultsTable, Name: "key_id", Type: "String"}}

// ClickHouseWebhookAttemptsTable is the table webhook attempts are
// written to.
const ClickHouseWebhookAttemptsTable = "certnode.webhook_attempts"

// ClickHouseWebhookAttemptColumns lists the columns of an insert into
// certnode.webhook_attempts, in order.
const ClickHouseWebhookAttemptColumns = "org, message_id, id, endpoint_id, event_type, event_id, message_created_at, attempt, redelivery, round, held, " +
	"at, at_nanos, url, status, latency_ms, response_headers, response_body, error, outcome, next_attempt_at, body"

// ClickHouseAuditTable is the table audit events are written to.
const ClickHouseAuditTable = "certnode.audit_events"

// ClickHouseAuditColumns lists the columns of an insert into
// certnode.audit_events, in order.
const ClickHouseAuditColumns = "org, id, at, at_nanos, action, actor_kind, actor_id, addr, result, source, event"

// ClickHouseWebhookMessagesTable is the per-message table the view fills
// from certnode.webhook_attempts (never inserted into directly).
const ClickHouseWebhookMessagesTable = "certnode.webhook_messages"

// ClickHouseUsageTable is the table usage events are written to.
const ClickHouseUsageTable = "certnode.usage_events"

// ClickHouseUsageColumns lists the columns of an insert into
// certnode.usage_events, in order (ver is computed).
const ClickHouseUsageColumns = "org, id, source, time, kind, status, auth, key_id, bytes, job_id, processed_at"

// ClickHouseResultsTable is the table the sink writes.
const ClickHouseResultsTable = "certnode.results"

// ClickHouseResultColumns lists the columns of an insert into
// certnode.results, in order; 18.16 requires an explicit column list.
const ClickHouseResultColumns = "tenant, id, receipt_id, kind, status, valid, reason, auth, keys, kid, payload_hash, job_id, line, size, received_at, processed_at, latency_ms, receipt, key_id"

// ClickHouseSelectReceipt returns a receipt the service signed, by tenant
// and exact receipt_id. Verify results also carry a receipt_id, of the
// receipt they checked, which anyone may have made: they never answer.
const ClickHouseSelectReceipt = `SELECT receipt FROM certnode.results
	WHERE tenant = ? AND receipt_id = ? AND kind = 'sign' AND status = 'signed' LIMIT 1`
