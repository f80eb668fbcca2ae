#!/usr/bin/env bash
# Apache Kafka 4.x, a three-node KRaft cluster on 127.0.0.1 from the same
# Maven Central jars as kafka.sh. Every node is broker and controller
# (combined mode); topics default to replication factor 3 with
# min.insync.replicas=2, so the cluster keeps taking acks=all writes with one
# node down.
# usage: kafka-cluster.sh start|stop|status|wait|reset|brokers|kill N|restart N
#   kill N     SIGKILL node N (1-3): no shutdown, no flush
#   restart N  start node N again on its data, wait until the cluster is whole
#   brokers    print the bootstrap list (host:port,host:port,host:port)
# environment:
#   CERTNODE_KAFKA_CLUSTER_PORTS            client ports of nodes 1-3 (default 19092,19093,19094)
#   CERTNODE_KAFKA_CLUSTER_CONTROLLER_PORTS controller ports (default 19192,19193,19194)
#   CERTNODE_KAFKA_CLUSTER_HEAP             JVM heap per node (default 512m: three fit a small machine)
#   CERTNODE_LOCAL                          state folder; data in $CERTNODE_LOCAL/kafka-cluster/N
source "$(dirname "$0")/lib.sh"
IFS=, read -r -a PORTS <<<"${CERTNODE_KAFKA_CLUSTER_PORTS:-19092,19093,19094}"
IFS=, read -r -a CTRL_PORTS <<<"${CERTNODE_KAFKA_CLUSTER_CONTROLLER_PORTS:-19192,19193,19194}"
HEAP="${CERTNODE_KAFKA_CLUSTER_HEAP:-512m}"
CDIR="$CERTNODE_LOCAL/kafka-cluster"
NODES=(1 2 3)
READY_SECS=120 # three JVMs starting at once on two cores take a while
[ ${#PORTS[@]} -eq 3 ] && [ ${#CTRL_PORTS[@]} -eq 3 ] || die "need three client and three controller ports"

port() { echo "${PORTS[$1 - 1]}"; }
ndir() { echo "$CDIR/$1"; }
pidf() { echo "$CDIR/$1/kafka.pid"; }
brokers() { local IFS=,; echo "${PORTS[*]/#/127.0.0.1:}"; }

# java_cmd N sets JAVA to the command line of node N's JVM.
java_cmd() {
  JAVA=(java -Xms128m "-Xmx$HEAP" -XX:+UseG1GC -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$(ndir "$1")/log4j2.properties" -cp "$KAFKA_LIBS/*")
}

configure() {
  local n=$1 d voters="" i
  d=$(ndir "$n")
  for i in "${NODES[@]}"; do voters+="${voters:+,}$i@127.0.0.1:${CTRL_PORTS[$i - 1]}"; done
  mkdir -p "$d/data"
  # Static voters: the quorum is fixed at three, so formatting needs no
  # initial-controller directory ids.
  cat >"$d/server.properties" <<PROPS
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$(port "$n"),CONTROLLER://127.0.0.1:${CTRL_PORTS[$n - 1]}
advertised.listeners=PLAINTEXT://127.0.0.1:$(port "$n")
default.replication.factor=3
min.insync.replicas=2
unclean.leader.election.enable=false
PROPS
  kafka_common_props "$d/data" 3 2 >>"$d/server.properties"
  kafka_log4j "$d/log4j2.properties" "$d/server.log"
}

# new_cluster_id prints a Kafka cluster id: 16 random bytes, base64url
# without padding, like StorageTool random-uuid (without starting a JVM),
# which also avoids a leading '-' that command lines would take for a flag.
new_cluster_id() {
  local id i
  for ((i = 0; i < 100; i++)); do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    [ "${id:0:1}" != "-" ] && { echo "$id"; return 0; }
  done
  die "no cluster id"
}

# format N writes node N's storage with the cluster's one id.
format() {
  local n=$1 d
  d=$(ndir "$n")
  [ -f "$d/data/meta.properties" ] && return 0
  java_cmd "$n"
  "${JAVA[@]}" kafka.tools.StorageTool format -t "$(cat "$CDIR/cluster.id")" -c "$d/server.properties" \
    >"$d/format.log" 2>&1 || { cat "$d/format.log" >&2; die "node $n: storage format failed"; }
}

launch() {
  local n=$1 d
  d=$(ndir "$n")
  if pid_alive "$(pidf "$n")"; then log "node $n already running (pid $(cat "$(pidf "$n")"))"; return 0; fi
  port_open 127.0.0.1 "$(port "$n")" && die "127.0.0.1:$(port "$n") is taken by another process"
  port_open 127.0.0.1 "${CTRL_PORTS[$n - 1]}" && die "127.0.0.1:${CTRL_PORTS[$n - 1]} is taken by another process"
  configure "$n"
  format "$n"
  log "starting node $n on 127.0.0.1:$(port "$n") (controller ${CTRL_PORTS[$n - 1]})"
  java_cmd "$n"
  nohup "${JAVA[@]}" kafka.Kafka "$d/server.properties" >"$d/stdout.log" 2>&1 &
  echo $! >"$(pidf "$n")"
}

start() {
  kafka_fetch
  mkdir -p "$CDIR"
  [ -f "$CDIR/cluster.id" ] || new_cluster_id >"$CDIR/cluster.id"
  local n pids=()
  # Formatting starts a JVM per node: in parallel, it is a third of the wait.
  for n in "${NODES[@]}"; do mkdir -p "$(ndir "$n")"; configure "$n"; format "$n" & pids+=($!); done
  for n in "${pids[@]}"; do wait "$n" || die "storage format failed"; done
  for n in "${NODES[@]}"; do launch "$n"; done
  wait_ready
}

# ready: every node answers ApiVersions and sees three live brokers.
ready() {
  local n
  for n in "${NODES[@]}"; do
    kafka_api_versions_ok "$(port "$n")" || return 1
    [ "$(kafka_live_brokers "$(port "$n")")" = 3 ] || return 1
  done
}

wait_ready() {
  local n deadline=$((SECONDS + READY_SECS)) # by the clock: one round of checks may take seconds
  while ((SECONDS < deadline)); do
    if ready; then log "cluster ready on $(brokers)"; return 0; fi
    for n in "${NODES[@]}"; do
      pid_alive "$(pidf "$n")" || { tail -n 40 "$(ndir "$n")/stdout.log" "$(ndir "$n")/server.log" >&2 2>/dev/null || true; die "node $n is not running"; }
    done
    sleep 0.25
  done
  for n in "${NODES[@]}"; do
    echo "node $n: live brokers seen: $(kafka_live_brokers "$(port "$n")" || echo none)" >&2
    tail -n 20 "$(ndir "$n")/server.log" >&2 2>/dev/null || true
  done
  die "cluster not ready within ${READY_SECS}s"
}

# stop: TERM every node at once, then KILL what is left after 30 s. One at a
# time, the last node loses its controller quorum and hangs in shutdown.
stop() {
  local n i pids=()
  for n in "${NODES[@]}"; do
    if pid_alive "$(pidf "$n")"; then pids+=("$(cat "$(pidf "$n")")"); kill "${pids[-1]}" 2>/dev/null || true; fi
  done
  for ((i = 0; i < 120; i++)); do
    local alive=0
    for n in "${pids[@]}"; do kill -0 "$n" 2>/dev/null && alive=1; done
    [ $alive -eq 0 ] && break
    sleep 0.25
  done
  for n in "${pids[@]}"; do kill -0 "$n" 2>/dev/null && kill -9 "$n" 2>/dev/null || true; done
  for n in "${NODES[@]}"; do rm -f "$(pidf "$n")"; done
  log "cluster stopped (${#pids[@]} nodes were running)"
}

kill_node() {
  local n=$1 pid i
  pid_alive "$(pidf "$n")" || die "node $n is not running"
  pid=$(cat "$(pidf "$n")")
  kill -9 "$pid"
  for ((i = 0; i < 40; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$pid" 2>/dev/null && die "node $n (pid $pid) survived SIGKILL"
  rm -f "$(pidf "$n")"
  log "node $n (pid $pid) killed"
}

status() {
  local n rc=0
  for n in "${NODES[@]}"; do
    if ! pid_alive "$(pidf "$n")"; then
      echo "node $n stopped"; rc=3
    elif ! kafka_api_versions_ok "$(port "$n")"; then
      echo "node $n running (pid $(cat "$(pidf "$n")")) but not answering on 127.0.0.1:$(port "$n")"; rc=3
    else
      echo "node $n running on 127.0.0.1:$(port "$n") (pid $(cat "$(pidf "$n")")), sees $(kafka_live_brokers "$(port "$n")" || echo '?') live brokers"
    fi
  done
  return $rc
}

node_arg() {
  case "${1:-}" in 1 | 2 | 3) ;; *) die "node must be 1, 2 or 3" ;; esac
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  wait) wait_ready ;;
  reset) stop; rm -rf "$CDIR" ;;
  brokers) brokers ;;
  kill) node_arg "${2:-}"; kill_node "$2" ;;
  restart) node_arg "${2:-}"; kafka_fetch; launch "$2"; wait_ready ;;
  *) echo "usage: $0 start|stop|status|wait|reset|brokers|kill N|restart N" >&2; exit 2 ;;
esac
