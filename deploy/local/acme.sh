#!/usr/bin/env bash
# A local ACME CA for trying custom domains by hand (the tests start their
# own): Pebble on https://127.0.0.1:14000/dir (management, whose
# /roots/0 is the root it issues under, on 15000) and pebble-challtestsrv,
# its DNS on 127.0.0.1:8053 (management on 8055), resolving every name to
# 127.0.0.1 so that validations reach this machine only. The CA dials
# HTTP-01 challenges on port 5002: give ingest --acme-http 127.0.0.1:5002.
# Pebble forgets everything when it stops; its root changes each start.
# usage: acme.sh start|stop|status
source "$(dirname "$0")/lib.sh"
ADIR="$CERTNODE_LOCAL/acme"
mkdir -p "$ADIR"

start() {
  go_tool github.com/letsencrypt/pebble/v2/cmd/pebble v2.10.3
  go_tool github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv v2.10.3
  local bin; bin="$(go env GOPATH)/bin"
  if [ ! -f "$ADIR/ca.pem" ]; then
    command -v openssl >/dev/null || apt_install openssl
    # Pebble's own TLS certificate (its listeners), which --acme-ca-root trusts.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 -subj "/CN=CertNode local Pebble" \
      -addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout "$ADIR/key.pem" -out "$ADIR/ca.pem" 2>/dev/null
  fi
  cat >"$ADIR/pebble.json" <<JSON
{"pebble": {"listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
  "certificate": "$ADIR/ca.pem", "privateKey": "$ADIR/key.pem", "httpPort": 5002, "tlsPort": 5001,
  "ocspResponderURL": "", "externalAccountBindingRequired": false, "keyAlgorithm": "ecdsa",
  "profiles": {"default": {"description": "local", "validityPeriod": 7776000}}}}
JSON
  if ! pid_alive "$ADIR/challtestsrv.pid"; then
    nohup "$bin/pebble-challtestsrv" -dnsserver 127.0.0.1:8053 -management 127.0.0.1:8055 -defaultIPv4 127.0.0.1 \
      -defaultIPv6 "" -http01 "" -https01 "" -tlsalpn01 "" -doh "" >"$ADIR/challtestsrv.log" 2>&1 &
    echo $! >"$ADIR/challtestsrv.pid"
  fi
  if ! pid_alive "$ADIR/pebble.pid"; then
    PEBBLE_VA_NOSLEEP=1 nohup "$bin/pebble" -config "$ADIR/pebble.json" -dnsserver 127.0.0.1:8053 >"$ADIR/pebble.log" 2>&1 &
    echo $! >"$ADIR/pebble.pid"
  fi
  wait_until "pebble on 127.0.0.1:14000" "$ADIR/pebble.pid" 30 "port_open 127.0.0.1 14000" "$ADIR/pebble.log"
  wait_until "pebble-challtestsrv on 127.0.0.1:8055" "$ADIR/challtestsrv.pid" 30 "port_open 127.0.0.1 8055" "$ADIR/challtestsrv.log"
}

case "${1:-}" in
  start) start ;;
  stop) stop_pid "$ADIR/pebble.pid" pebble; stop_pid "$ADIR/challtestsrv.pid" pebble-challtestsrv ;;
  status) pid_alive "$ADIR/pebble.pid" && pid_alive "$ADIR/challtestsrv.pid" ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
