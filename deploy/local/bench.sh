#!/usr/bin/env bash
# `make bench`, part two: loads the HTTP API of `certnode dev`, first on its
# embedded Kafka, then on the real local Kafka and ClickHouse, and prints
# each figure next to the raw rate of its algorithm (ES256 or EdDSA) measured in the same run.
# Webhooks are measured on both Kafkas: the embedded dispatcher
# delivers to a receiver `certnode bench webhooks` runs on 127.0.0.1. Last, the
# dashboard queries on ten million results (`certnode bench analytics`).
source "$(dirname "$0")/lib.sh"
bin="$REPO_ROOT/bin/certnode"
LINES="${BENCH_LINES:-20000}" RATE="${BENCH_RATE:-100}"
WEBHOOK_RATE="${BENCH_WEBHOOK_RATE:-1000}" WEBHOOK_DURATION="${BENCH_WEBHOOK_DURATION:-10s}" WEBHOOK_EVENTS="${BENCH_WEBHOOK_EVENTS:-20000}"
dir="$CERTNODE_LOCAL/bench-dev" port="${BENCH_PORT:-18090}" pid=

start_dev() { # dev flags...
  rm -rf "$dir"
  "$bin" dev --data "$dir" --http 127.0.0.1:$port --coordinator-http 127.0.0.1:$((port + 1)) "$@" >"$CERTNODE_LOCAL/bench-dev.log" 2>&1 &
  pid=$!
  local i
  for ((i = 0; i < 240; i++)); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    kill -0 $pid 2>/dev/null || { cat "$CERTNODE_LOCAL/bench-dev.log" >&2; die "certnode dev exited"; }
    sleep 0.25
  done
}

stop_dev() {
  kill $pid; wait $pid 2>/dev/null || true
}

run_dev() { # label, dev flags...
  local label=$1; shift
  start_dev "$@"
  "$bin" bench --url "http://127.0.0.1:$port" --credentials "$dir/credentials.json" \
    --lines "$LINES" --rate "$RATE" --label "$label" || { stop_dev; die "bench failed"; }
  stop_dev
}

run_dev_webhooks() { # label, dev flags...
  local label=$1; shift
  start_dev "$@"
  "$bin" bench webhooks --url "http://127.0.0.1:$port" --credentials "$dir/credentials.json" \
    --rate "$WEBHOOK_RATE" --duration "$WEBHOOK_DURATION" --events "$WEBHOOK_EVENTS" --label "$label" || { stop_dev; die "webhook bench failed"; }
  stop_dev
}

run_dev "certnode dev: embedded Kafka (kfake), software key, no ClickHouse" --clickhouse none
run_dev_webhooks "certnode dev: webhooks, embedded Kafka (kfake) and dispatcher, software key, no ClickHouse" --clickhouse none
bash "$(dirname "$0")/services.sh" up >/dev/null
run_dev "certnode dev: Apache Kafka + ClickHouse (deploy/local), software key" \
  --kafka 127.0.0.1:9092 --clickhouse 127.0.0.1:9000 --topic-prefix "bench-$(date +%s)"
run_dev_webhooks "certnode dev: webhooks, Apache Kafka + ClickHouse (deploy/local), software key" \
  --kafka 127.0.0.1:9092 --clickhouse 127.0.0.1:9000 --topic-prefix "bench-hooks-$(date +%s)"
# Dashboard queries on one organization with BENCH_ANALYTICS_ROWS results
# (generated in ClickHouse, deleted at the end).
"$bin" bench analytics --clickhouse 127.0.0.1:9000 --rows "${BENCH_ANALYTICS_ROWS:-10000000}" || die "analytics bench failed"
