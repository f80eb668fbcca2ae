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
