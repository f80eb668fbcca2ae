package schemas

// ClickHouseDDL creates the analytics tables. It is valid on Debian's
// ClickHouse 18.16 and on current releases: DateTime (not DateTime64),
// String (not LowCardinality), and the ENGINE = ... ORDER BY syntax.
//
// Rows are deduplicated on (tenant, id), the request id, by
// ReplacingMergeTree: a replayed offset range writes the same rows again,
// and queries that say FINAL (or GROUP BY id) see each request once. The
// request id, not receipt_id, is the key because an HSM re-signing a
// replayed request makes a new signature and so a new receipt_id. Rows are
// partitioned by received_at, which replays do not change, so duplicates
// always share a partition and merge.
var ClickHouseDDL = []string{
	`CREATE DATABASE IF NOT EXISTS certnode`,
	`CREATE TABLE IF NOT EXISTS certnode.receipts (
		tenant String,
		id String,
		receipt_id String,
		kind String,
		status String,
		valid UInt8,
		reason String,
		kid String,
		payload_hash String,
		job_id String,
		line Int64,
		size UInt32,
		received_at DateTime,
		processed_at DateTime,
		latency_ms UInt32,
		receipt String
	) ENGINE = ReplacingMergeTree()
	PARTITION BY toYYYYMM(received_at)
	ORDER BY (tenant, id)`,
}

// ClickHouseInsertReceipts is the batch insert, with the explicit column
// list 18.16 requires.
const ClickHouseInsertReceipts = `INSERT INTO certnode.receipts (tenant, id, receipt_id, kind, status, valid, reason, kid, payload_hash, job_id, line, size, received_at, processed_at, latency_ms, receipt)`
