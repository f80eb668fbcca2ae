#!/usr/bin/env bash
# `make bench`, part two: loads the HTTP API of `certnode dev`, first on its
# embedded Kafka, then on the real local Kafka and ClickHouse, and prints
# each figure next to the raw rate of its algorithm (ES256 or EdDSA) measured in the same run.
source "$(dirname "$0")/lib.sh"
bin="$REPO_ROOT/bin/certnode"
LINES="${BENCH_LINES:-20000}" RATE="${BENCH_RATE:-100}"

run_dev() { # label, dev flags...
  local label=$1; shift
  local dir="$CERTNODE_LOCAL/bench-dev" port=18090 pid
  rm -rf "$dir"
  "$bin" dev --data "$dir" --http 127.0.0.1:$port --coordinator-http 127.0.0.1:$((port + 1)) "$@" >"$CERTNODE_LOCAL/bench-dev.log" 2>&1 &
  pid=$!
  local i
  for ((i = 0; i < 240; i++)); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    kill -0 $pid 2>/dev/null || { cat "$CERTNODE_LOCAL/bench-dev.log" >&2; die "certnode dev exited"; }
    sleep 0.25
  done
  "$bin" bench --url "http://127.0.0.1:$port" --credentials "$dir/credentials.json" \
    --lines "$LINES" --rate "$RATE" --label "$label" || { kill $pid; die "bench failed"; }
  kill $pid; wait $pid 2>/dev/null || true
}

run_dev "certnode dev: embedded Kafka (kfake), software key, no ClickHouse" --clickhouse none
bash "$(dirname "$0")/services.sh" up >/dev/null
run_dev "certnode dev: Apache Kafka + ClickHouse (deploy/local), software key" \
  --kafka 127.0.0.1:9092 --clickhouse 127.0.0.1:9000 --topic-prefix "bench-$(date +%s)"
