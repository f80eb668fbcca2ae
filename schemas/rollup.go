package schemas

import (
	"fmt"
	"strings"
)

// Rollup describes the tables ClickHouse keeps so that analytics over a
// long range reads a few thousand rows, not millions. Counts must stay
// exact although the raw tables hold copies (at-least-once delivery,
// replays), so each raw table feeds three tables:
//
//   - <name>_1m, filled by a view on every insert: per organization,
//     minute and dimensions, the distinct ids (uniqExact of their
//     sipHash64), the bytes and the latency t-digest. All copies of one id
//     share its minute (a replay keeps the request's time), so an exact
//     count over any whole minutes merges these states. Merging them is
//     what costs: ten million ids over a month take most of a second.
//   - <name>_changes, filled by a view: per organization and hour, the
//     server time of the latest insert that touched it.
//   - <name>_1h: a sealer (analytics.Sealer) writes an hour's final counts
//     (plain UInt64) there, every row of one seal with the same new
//     version and read_at, the server time before it read the minutes;
//     one INSERT per hour makes one part, so a seal is seen whole or not
//     at all. A reader uses an hour's latest seal when the hour's latest
//     change is older than its read_at by a margin, and the minute states
//     otherwise, so an answer is exact whether or not the sealer runs; the
//     sealer only makes it fast. Beside the rows of each combination of
//     dimensions (total = 0), a seal holds the hour's total (total = 1,
//     dimensions empty): a query with no filter and no grouping reads one
//     row an hour, which matters for percentiles, whose states are the
//     costly part to merge. A newer seal holds every key an older one
//     did (states only grow), so ReplacingMergeTree(version) may drop the
//     older rows.
//
// Sums and percentiles count every copy a replay made (they are rare).
type Rollup struct {
	Name   string // certnode.results_1m is Name + "_1m"
	Source string // the raw table
	Org    string // its organization column
	Time   string // the DateTime that dates a row
	ID     string // the id counted once
	Bytes  string // an expression of the bytes a row carries; "" for none
	// Latency is the UInt32 milliseconds column of the t-digest.
	Latency string
	// Dims are the columns kept; any other is summed over.
	Dims []string
}

// The rollups of results and webhook attempts.
var (
	ResultsRollup = Rollup{Name: "certnode.results", Source: ClickHouseResultsTable, Org: "tenant", Time: "received_at", ID: "id",
		Bytes: "toUInt64(size)", Latency: "latency_ms", Dims: []string{"kind", "status", "reason", "kid", "key_id", "job_id"}}
	WebhooksRollup = Rollup{Name: "certnode.webhook_attempts", Source: ClickHouseWebhookAttemptsTable, Org: "org", Time: "at", ID: "id",
		Latency: "latency_ms", Dims: []string{"endpoint_id", "event_type", "outcome"}}
	Rollups = []Rollup{ResultsRollup, WebhooksRollup}
)

// RollupQuantiles are the latency levels every rollup keeps, in the
// t-digest's type and in every -Merge of it.
const RollupQuantiles = "0.5, 0.9, 0.99"

// Table names.
func (r Rollup) Minutes() string { return r.Name + "_1m" }
func (r Rollup) Changes() string { return r.Name + "_changes" }
func (r Rollup) Hours() string   { return r.Name + "_1h" }

// ddl creates the rollup's tables and views, after its source exists.
func (r Rollup) ddl() []string {
	dims := strings.Join(r.Dims, ", ")
	cols := ""
	for _, d := range r.Dims {
		cols += d + " String,\n\t\t"
	}
	bytesState, bytesFinal := "", ""
	if r.Bytes != "" {
		bytesState = "bytes AggregateFunction(sum, UInt64),\n\t\t"
		bytesFinal = "bytes UInt64,\n\t\t"
	}
	return []string{
		fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s (
		org String,
		minute DateTime,
		%sids AggregateFunction(uniqExact, UInt64),
		%slatency AggregateFunction(quantilesTDigest(%s), UInt32)
	) ENGINE = AggregatingMergeTree()
	PARTITION BY toYYYYMM(minute)
	ORDER BY (org, minute, %s)`, r.Minutes(), cols, bytesState, RollupQuantiles, dims),
		fmt.Sprintf(`CREATE MATERIALIZED VIEW IF NOT EXISTS %s_mv TO %s AS %s`, r.Minutes(), r.Minutes(), r.minutesSelect("")),
		fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s (
		org String,
		hour DateTime,
		inserted AggregateFunction(max, DateTime)
	) ENGINE = AggregatingMergeTree()
	PARTITION BY toYYYYMM(hour)
	ORDER BY (org, hour)`, r.Changes()),
		fmt.Sprintf(`CREATE MATERIALIZED VIEW IF NOT EXISTS %s_mv TO %s AS %s`, r.Changes(), r.Changes(), r.changesSelect("")),
		fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s (
		org String,
		hour DateTime,
		total UInt8,
		%sids UInt64,
		%slatency AggregateFunction(quantilesTDigest(%s), UInt32),
		version UInt64,
		read_at DateTime
	) ENGINE = ReplacingMergeTree(version)
	PARTITION BY toYYYYMM(hour)
	ORDER BY (org, total, hour, %s)`, r.Hours(), cols, bytesFinal, RollupQuantiles, dims),
	}
}

// minutesSelect is what the minutes view adds on an insert into the
// source, and what a backfill inserts: where ("" for none) limits the rows
// read. Names of results differ from the source's columns (18.16 resolves a
// name to an alias first).
func (r Rollup) minutesSelect(where string) string {
	dims := strings.Join(r.Dims, ", ")
	bytes := ""
	if r.Bytes != "" {
		bytes = "sumState(" + r.Bytes + ") AS bytes, "
	}
	return fmt.Sprintf(`SELECT %s AS org, toStartOfMinute(%s) AS minute, %s,
		uniqExactState(sipHash64(%s)) AS ids, %squantilesTDigestState(%s)(%s) AS latency
	FROM %s%s
	GROUP BY org, minute, %s`, r.Org, r.Time, dims, r.ID, bytes, RollupQuantiles, r.Latency, r.Source, where, dims)
}

// changesSelect is what the changes view adds on an insert into the source.
func (r Rollup) changesSelect(where string) string {
	return fmt.Sprintf(`SELECT %s AS org, toStartOfHour(%s) AS hour, maxState(now()) AS inserted
	FROM %s%s
	GROUP BY org, hour`, r.Org, r.Time, r.Source, where)
}

// minutesColumns lists the columns of an insert into the minutes table.
func (r Rollup) minutesColumns() string {
	cols := "org, minute, " + strings.Join(r.Dims, ", ") + ", ids, "
	if r.Bytes != "" {
		cols += "bytes, "
	}
	return cols + "latency"
}

// Backfill returns the statements that add to the rollup the rows its
// source held before its views existed, one month (YYYYMM, the argument of
// each) at a time. Run once, when the views were just created: the counts
// of ids stay exact if a row is added twice, but sums and percentiles
// would count it twice.
func (r Rollup) Backfill() []string {
	where := " WHERE toYYYYMM(" + r.Time + ") = ?"
	return []string{
		"INSERT INTO " + r.Minutes() + " (" + r.minutesColumns() + ") " + r.minutesSelect(where),
		"INSERT INTO " + r.Changes() + " (org, hour, inserted) " + r.changesSelect(where),
	}
}
