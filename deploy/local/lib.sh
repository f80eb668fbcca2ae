# Shared helpers for the local service scripts. Sourced, not run.
# Everything lives under $CERTNODE_LOCAL (default: <repo>/.local), which is git-ignored.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CERTNODE_LOCAL="${CERTNODE_LOCAL:-$REPO_ROOT/.local}"
mkdir -p "$CERTNODE_LOCAL"

log() { printf '[%s] %s\n' "$(basename "$0" .sh)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

apt_updated=0
# apt_install PKG... installs missing Debian packages (root is expected on these machines).
apt_install() {
  local missing=()
  # dpkg -s succeeds for removed packages whose config remains, so check the status.
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  if [ "$apt_updated" -eq 0 ]; then $sudo apt-get update -qq; apt_updated=1; fi
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# pid_alive FILE: the pid in FILE names a running process.
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_pid FILE NAME: TERM, wait up to 30 s, then KILL.
stop_pid() {
  local f=$1 name=$2 pid i
  if ! pid_alive "$f"; then rm -f "$f"; log "$name not running"; return 0; fi
  pid=$(cat "$f"); kill "$pid" 2>/dev/null || true
  for ((i = 0; i < 120; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"; log "$name stopped"
}

# wait_until NAME PIDFILE SECONDS CHECK [LOG...]: polls the CHECK command
# until it succeeds; fails early if the process died, and shows the logs.
wait_until() {
  local name=$1 pidf=$2 secs=$3 check=$4 i
  shift 4
  for ((i = 0; i < secs * 4; i++)); do
    if $check; then log "$name ready"; return 0; fi
    pid_alive "$pidf" || break
    sleep 0.25
  done
  tail -n 40 "$@" 2>/dev/null >&2 || true
  die "$name did not become ready within ${secs}s"
}

# service_cmd NAME PIDFILE PORT DIR VERB: the verbs every service shares.
service_cmd() {
  local name=$1 pidf=$2 port=$3 dir=$4
  case "$5" in
    stop) stop_pid "$pidf" "$name" ;;
    status)
      if pid_alive "$pidf" && port_open 127.0.0.1 "$port"; then
        echo "$name running on 127.0.0.1:$port (pid $(cat "$pidf"))"
      else
        echo "$name stopped"; exit 3
      fi ;;
    reset) stop_pid "$pidf" "$name"; rm -rf "$dir" ;;
    *) return 1 ;;
  esac
}

# --- Apache Kafka, shared by kafka.sh (one node) and kafka-cluster.sh (three) ---
KAFKA_LIBS="$REPO_ROOT/.cache/kafka/libs"

# kafka_fetch copies the broker's jars from Maven Central into $KAFKA_LIBS,
# once per version of deploy/local/kafka/pom.xml.
kafka_fetch() {
  local pom="$REPO_ROOT/deploy/local/kafka/pom.xml" stamp="$KAFKA_LIBS/.pom.sha256"
  local want; want=$(sha256sum "$pom" | cut -d' ' -f1)
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && return 0
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install maven
  log "fetching Kafka jars from Maven Central"
  rm -rf "$KAFKA_LIBS"; mkdir -p "$KAFKA_LIBS"
  mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS" >&2
  echo "$want" >"$stamp"
}

# kafka_log4j FILE LOGFILE writes a Log4j 2 config: warnings and up, to LOGFILE.
kafka_log4j() {
  cat >"$1" <<PROPS
rootLogger.level=WARN
rootLogger.appenderRef.f.ref=F
appender.f.type=File
appender.f.name=F
appender.f.fileName=$2
appender.f.layout.type=PatternLayout
appender.f.layout.pattern=[%d] %p %m (%c)%n
PROPS
}

# kafka_api_versions_ok PORT sends a Kafka ApiVersions v0 request (key 18,
# correlation id 1, client id "up") to 127.0.0.1:PORT and checks the reply's
# correlation id and error code: the broker is serving requests, not just
# listening.
kafka_api_versions_ok() {
  local reply
  reply=$(exec 2>/dev/null 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf '\x00\x00\x00\x0c\x00\x12\x00\x00\x00\x00\x00\x01\x00\x02up' >&3
    timeout 2 head -c 10 <&3 | od -An -tx1 | tr -d ' \n') 2>/dev/null || return 1
  [ "${reply:8:12}" = "000000010000" ]
}

# kafka_live_brokers PORT prints how many live (registered and unfenced)
# brokers the broker on 127.0.0.1:PORT knows of, from a Metadata v9 request
# (key 3, correlation id 2, client id "up") for no topics. The reply starts:
# size(4) correlation id(4) header tags(1) throttle(4) brokers(compact
# array: count + 1, one byte while under 127).
kafka_live_brokers() {
  local reply
  reply=$(exec 2>/dev/null 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf '\x00\x00\x00\x12\x00\x03\x00\x09\x00\x00\x00\x02\x00\x02up\x00\x01\x00\x00\x00\x00' >&3
    timeout 2 head -c 14 <&3 | od -An -tx1 | tr -d ' \n') 2>/dev/null || return 1
  [ "${reply:8:8}" = "00000002" ] || return 1
  echo $((16#${reply:26:2} - 1))
}

# kafka_common_props DATA_DIR REPLICAS MIN_ISR prints the server.properties
# lines every local broker shares (after its own node and listener lines).
kafka_common_props() {
  cat <<PROPS
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$1
num.partitions=4
offsets.topic.replication.factor=$2
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=$2
transaction.state.log.min.isr=$3
share.coordinator.state.topic.replication.factor=$2
share.coordinator.state.topic.min.isr=$3
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=24
PROPS
}

# go_tool installs the Go program pkg at version into $(go env GOPATH)/bin,
# unless it is there at that version already.
go_tool() {
  local pkg="$1" version="$2" bin
  bin="$(go env GOPATH)/bin/$(basename "$pkg")"
  if [ -x "$bin" ] && go version -m "$bin" 2>/dev/null | awk '$1 == "mod" { print $3 }' | grep -qx "$version"; then
    return
  fi
  log "installing $pkg@$version (Go module proxy)"
  (cd / && GOFLAGS=-mod=mod go install "$pkg@$version") >&2
}
