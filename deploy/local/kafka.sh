#!/usr/bin/env bash
# Apache Kafka 4.x, single KRaft node on 127.0.0.1, from its Maven Central jars.
# usage: kafka.sh start|stop|status|wait|reset
#   CERTNODE_KAFKA_PORT (default 9092), CERTNODE_KAFKA_CONTROLLER_PORT (default port+1),
#   CERTNODE_LOCAL (state folder)
source "$(dirname "$0")/lib.sh"
PORT="${CERTNODE_KAFKA_PORT:-9092}"
CTRL_PORT="${CERTNODE_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
KDIR="$CERTNODE_LOCAL/kafka"
PIDF="$KDIR/kafka.pid"

configure() {
  mkdir -p "$KDIR/data"
  cat >"$KDIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CTRL_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CTRL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
PROPS
  kafka_common_props "$KDIR/data" 1 1 >>"$KDIR/server.properties"
  kafka_log4j "$KDIR/log4j2.properties" "$KDIR/server.log"
}

java_cmd=(java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true
  -Dlog4j2.configurationFile="$KDIR/log4j2.properties" -cp "$KAFKA_LIBS/*")

start() {
  if pid_alive "$PIDF"; then log "already running (pid $(cat "$PIDF")) on 127.0.0.1:$PORT"; wait_ready; return; fi
  port_open 127.0.0.1 "$PORT" && die "127.0.0.1:$PORT is taken by another process"
  kafka_fetch; configure
  if [ ! -f "$KDIR/data/meta.properties" ]; then
    "${java_cmd[@]}" kafka.tools.StorageTool format --standalone -t "$("${java_cmd[@]}" kafka.tools.StorageTool random-uuid)" \
      -c "$KDIR/server.properties" >"$KDIR/format.log" 2>&1 || { cat "$KDIR/format.log" >&2; die "storage format failed"; }
  fi
  log "starting on 127.0.0.1:$PORT"
  nohup "${java_cmd[@]}" kafka.Kafka "$KDIR/server.properties" >"$KDIR/stdout.log" 2>&1 &
  echo $! >"$PIDF"
  wait_ready
}

api_versions_ok() { kafka_api_versions_ok "$PORT"; }

wait_ready() {
  wait_until "kafka on 127.0.0.1:$PORT" "$PIDF" 90 api_versions_ok "$KDIR/stdout.log" "$KDIR/server.log"
}

case "${1:-}" in
  start) start ;;
  wait) wait_ready ;;
  fetch) kafka_fetch ;;
  *) service_cmd kafka "$PIDF" "$PORT" "$KDIR" "${1:-}" ||
    { echo "usage: $0 start|stop|status|wait|reset|fetch" >&2; exit 2; } ;;
esac
