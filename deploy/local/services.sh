#!/usr/bin/env bash
# Starts (or stops) everything the integration tests use: Kafka, the secure
# Kafka (TLS, SCRAM, ACLs), ClickHouse, the SoftHSM2 token, the SMTP server
# (mailpit) and the Node and Python interop packages. Idempotent.
# usage: services.sh up|down|status
source "$(dirname "$0")/lib.sh"
here="$(dirname "$0")"

node_deps() {
  local dir="$REPO_ROOT/internal/interop/node" stamp
  stamp="$dir/node_modules/.lock.sha256"
  command -v node >/dev/null || apt_install nodejs npm
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)" ]; then
    log "installing Node interop packages"
    npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >&2
    sha256sum "$dir/package-lock.json" | cut -d' ' -f1 >"$stamp"
  fi
}

# py_deps installs the Python packages the tests use: the Kafka client of the
# producer interop test, the exact versions internal/interop/python/
# requirements.txt pins for the Python receipts implementation and the
# Standard Webhooks library (`receipts.py deps` says whether they are
# installed), and the pyarrow exports/testdata/requirements.txt pins, the
# independent Parquet and Arrow reader of the exports tests (`readback.py
# deps`).
py_deps() {
  local dir="$REPO_ROOT/internal/interop/python" exports="$REPO_ROOT/exports/testdata"
  local pip=(python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore)
  if ! python3 -c 'import confluent_kafka' 2>/dev/null; then
    log "installing confluent-kafka (PyPI)"
    "${pip[@]}" confluent-kafka >&2
  fi
  if ! python3 "$dir/receipts.py" deps 2>/dev/null; then
    log "installing the Python interop packages (PyPI): $(tr '\n' ' ' <"$dir/requirements.txt")"
    "${pip[@]}" -r "$dir/requirements.txt" >&2
  fi
  if ! python3 "$exports/readback.py" deps 2>/dev/null; then
    log "installing the exports tests' reader (PyPI): $(tr '\n' ' ' <"$exports/requirements.txt")"
    "${pip[@]}" -r "$exports/requirements.txt" >&2
  fi
}

case "${1:-}" in
  up)
    apt_install kcat openssl # the non-Go Kafka producer of the integration tests, and its HMAC
    apt_install chromium poppler-utils # the dashboard's tests drive Chromium headless; pdftotext reads the PDFs
    py_deps
    # The ACME CA of the custom domains' tests, and its DNS server (the
    # tests start both, bound to 127.0.0.1).
    go_tool github.com/letsencrypt/pebble/v2/cmd/pebble v2.10.3
    go_tool github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv v2.10.3
    bash "$here/softhsm.sh" init
    bash "$here/clickhouse.sh" start
    bash "$here/kafka.sh" start
    bash "$here/kafka-secure.sh" start
    bash "$here/mailpit.sh" start
    node_deps
    ;;
  down)
    bash "$here/kafka.sh" stop
    bash "$here/kafka-secure.sh" stop
    bash "$here/clickhouse.sh" stop
    bash "$here/mailpit.sh" stop
    ;;
  status)
    rc=0
    bash "$here/kafka.sh" status || rc=1
    bash "$here/kafka-secure.sh" status || rc=1
    bash "$here/clickhouse.sh" status || rc=1
    bash "$here/mailpit.sh" status || rc=1
    exit $rc
    ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
