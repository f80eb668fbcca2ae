#!/usr/bin/env bash
# Installs and starts mailpit, the SMTP server the email tests send to:
# on 127.0.0.1 only, STARTTLS with a certificate made here (its CA is the
# certificate itself), and authentication required (a user and a random
# password in an auth file). The tests read $CERTNODE_LOCAL/mailpit/env.
# usage: mailpit.sh start|stop|status|reset|env
source "$(dirname "$0")/lib.sh"

MAILPIT_VERSION=v1.33.1
SMTP_PORT=${CERTNODE_MAILPIT_SMTP_PORT:-1025}
API_PORT=${CERTNODE_MAILPIT_API_PORT:-8025}
dir="$CERTNODE_LOCAL/mailpit"
bin="$(go env GOPATH)/bin/mailpit"
pidf="$dir/mailpit.pid"

install() { go_tool github.com/axllent/mailpit "$MAILPIT_VERSION"; }

# setup makes the certificate, the auth file and the env file once.
setup() {
  mkdir -p "$dir"; chmod 700 "$dir"
  if [ ! -f "$dir/cert.pem" ]; then
    command -v openssl >/dev/null || apt_install openssl
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 -subj "/CN=localhost" \
      -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -addext "basicConstraints=critical,CA:TRUE" \
      -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
  fi
  if [ ! -f "$dir/auth" ]; then
    local pw; pw=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    printf 'certnode:%s\n' "$pw" >"$dir/auth"
    chmod 600 "$dir/auth"
  fi
  local pw; pw=$(cut -d: -f2- "$dir/auth")
  cat >"$dir/env" <<ENV
CERTNODE_TEST_SMTP=127.0.0.1:$SMTP_PORT
CERTNODE_TEST_SMTP_USERNAME=certnode
CERTNODE_TEST_SMTP_PASSWORD=$pw
CERTNODE_TEST_SMTP_CA=$dir/cert.pem
CERTNODE_TEST_MAILPIT_API=http://127.0.0.1:$API_PORT
ENV
  chmod 600 "$dir/env"
}

api_ok() { port_open 127.0.0.1 "$API_PORT" && port_open 127.0.0.1 "$SMTP_PORT"; }

start() {
  install
  setup
  if pid_alive "$pidf" && api_ok; then log "mailpit already running"; return 0; fi
  log "starting mailpit: SMTP 127.0.0.1:$SMTP_PORT (STARTTLS, auth required), API 127.0.0.1:$API_PORT"
  nohup "$bin" --listen "127.0.0.1:$API_PORT" --smtp "127.0.0.1:$SMTP_PORT" \
    --smtp-tls-cert "$dir/cert.pem" --smtp-tls-key "$dir/key.pem" --smtp-require-starttls \
    --smtp-auth-file "$dir/auth" --database "$dir/mailpit.db" --max 5000 --disable-version-check \
    >"$dir/mailpit.log" 2>&1 &
  echo $! >"$pidf"
  wait_until mailpit "$pidf" 30 api_ok "$dir/mailpit.log"
}

case "${1:-}" in
  start) start ;;
  env) cat "$dir/env" ;;
  stop|status|reset) service_cmd mailpit "$pidf" "$SMTP_PORT" "$dir" "$1" ;;
  *) echo "usage: $0 start|stop|status|reset|env" >&2; exit 2 ;;
esac
