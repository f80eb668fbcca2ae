#!/usr/bin/env bash
# The full system on one machine, each part its own process: real Kafka,
# ClickHouse and SoftHSM2, plus `certnode worker` (signing in the HSM),
# `certnode sink clickhouse`, `certnode sink usage`, `certnode log serve` (the
# transparency log, its checkpoints signed by an Ed25519 key in the HSM),
# `certnode log serve --kind audit` (the audit log, likewise) and
# `certnode ingest` on 127.0.0.1:8080; with $CERTNODE_COORDINATOR (and
# $CERTNODE_NODE_TOKEN), `certnode mailer` too, sending through the local
# mailpit with its DKIM keys in the HSM.
# usage: up.sh [down|status]   (state and logs in $CERTNODE_LOCAL/up)
source "$(dirname "$0")/lib.sh"
here="$(dirname "$0")"
bin="$REPO_ROOT/bin/certnode"
UP="$CERTNODE_LOCAL/up"
HTTP="${CERTNODE_HTTP:-127.0.0.1:8080}"
RING="$UP/keyring"

roles=(worker sink usage log auditlog ingest)
[ -n "${CERTNODE_COORDINATOR:-}" ] && roles+=(mailer)

down() {
  local r
  for r in mailer ingest auditlog log usage sink worker; do stop_pid "$UP/$r.pid" "$r"; done
}

status() {
  local r rc=0
  for r in "${roles[@]}"; do
    if pid_alive "$UP/$r.pid"; then echo "$r running (pid $(cat "$UP/$r.pid"))"; else echo "$r stopped"; rc=3; fi
  done
  return $rc
}

start_role() { # name, args...
  local name=$1; shift
  pid_alive "$UP/$name.pid" && { log "$name already running"; return; }
  nohup "$bin" "$@" >"$UP/$name.log" 2>&1 &
  echo $! >"$UP/$name.pid"
}

up() {
  [ -x "$bin" ] || die "build first: make build"
  bash "$here/services.sh" up
  mkdir -p "$UP"; chmod 700 "$UP"
  set -a; . "$CERTNODE_LOCAL/softhsm/env"; set +a
  # One demo tenant; its API key and producer key are shown only in
  # credentials.json (0600).
  if [ ! -f "$UP/credentials.json" ] || ! grep -q producer_secret "$UP/credentials.json"; then
    local key secret hash psecret
    key="cn_$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
    secret="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
    psecret="ps_$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
    hash="sha256:$(printf '%s' "$key" | sha256sum | cut -d' ' -f1)"
    (umask 077
      printf '{"tenants":[{"id":"demo","api_key_hashes":["%s"],"producer_keys":[{"id":"pk_demo","secret":"%s"}]}]}\n' "$hash" "$psecret" >"$UP/tenants.json"
      printf '%s\n' "$secret" >"$UP/internal.secret"
      printf '{"http":"http://%s","kafka":"127.0.0.1:9092","tenant":"demo","api_key":"%s","producer_key_id":"pk_demo","producer_secret":"%s"}\n' \
        "$HTTP" "$key" "$psecret" >"$UP/credentials.json")
  fi
  # The key ring: ring.json here, its keys inside the HSM. Rotate with
  # certnode keys rotate --keyring $RING (module and token from the env).
  [ -f "$RING/ring.json" ] ||
    "$bin" keys generate --keyring "$RING" --pkcs11-module "$CERTNODE_PKCS11_MODULE" --token "$CERTNODE_PKCS11_TOKEN" >/dev/null

  # The transparency log's checkpoint key, inside the HSM too.
  local loghsm=(--pkcs11-module "$CERTNODE_PKCS11_MODULE" --token "$CERTNODE_PKCS11_TOKEN" --label certnode-log)
  "$bin" log key "${loghsm[@]}" >"$UP/log.vkey" 2>/dev/null ||
    { "$bin" keys generate --alg EdDSA "${loghsm[@]}" >/dev/null && "$bin" log key "${loghsm[@]}" >"$UP/log.vkey"; }
  local audithsm=(--pkcs11-module "$CERTNODE_PKCS11_MODULE" --token "$CERTNODE_PKCS11_TOKEN" --label certnode-audit)
  "$bin" log key --origin certnode.local/audit "${audithsm[@]}" >"$UP/audit.vkey" 2>/dev/null ||
    { "$bin" keys generate --alg EdDSA "${audithsm[@]}" >/dev/null &&
      "$bin" log key --origin certnode.local/audit "${audithsm[@]}" >"$UP/audit.vkey"; }

  export CERTNODE_KAFKA=127.0.0.1:9092 CERTNODE_TENANTS_FILE="$UP/tenants.json" CERTNODE_INTERNAL_SECRET_FILE="$UP/internal.secret"
  start_role worker worker --keyring "$RING" --pkcs11-module "$CERTNODE_PKCS11_MODULE" --token "$CERTNODE_PKCS11_TOKEN" --metrics 127.0.0.1:9101
  # Payloads are stored sealed under each organization's KEK in the HSM.
  local kek=(--kek-pkcs11-module "$CERTNODE_PKCS11_MODULE" --kek-token "$CERTNODE_PKCS11_TOKEN")
  start_role sink sink clickhouse --clickhouse 127.0.0.1:9000 --metrics 127.0.0.1:9102 "${kek[@]}"
  start_role usage sink usage --metrics 127.0.0.1:9103
  start_role log log serve --dir "$UP/translog" --http 127.0.0.1:9106 "${loghsm[@]}"
  start_role auditlog log serve --kind audit --dir "$UP/auditlog" --http 127.0.0.1:9107 "${audithsm[@]}"
  start_role ingest ingest --http "$HTTP" --keyring "$RING" --clickhouse 127.0.0.1:9000 "${kek[@]}" --exports-dir "$UP/exports" \
    --log http://127.0.0.1:9106 --log-key "$UP/log.vkey" --audit-log http://127.0.0.1:9107 --audit-log-key "$UP/audit.vkey"
  # Email: the outbox is the coordinator's, so the mailer runs with one.
  # It sends through mailpit (STARTTLS, authentication; see its messages
  # at http://127.0.0.1:8025), its DKIM keys made in the HSM; the SMTP
  # password goes by file, never on the command line.
  if [ -n "${CERTNODE_COORDINATOR:-}" ]; then
    local mp; mp="$(bash "$here/mailpit.sh" env)"
    (umask 077; sed -n 's/^CERTNODE_TEST_SMTP_PASSWORD=//p' <<<"$mp" >"$UP/smtp.password")
    CERTNODE_SMTP_PASSWORD_FILE="$UP/smtp.password" start_role mailer mailer --coordinator "$CERTNODE_COORDINATOR" \
      --smtp "$(sed -n 's/^CERTNODE_TEST_SMTP=//p' <<<"$mp")" --smtp-username "$(sed -n 's/^CERTNODE_TEST_SMTP_USERNAME=//p' <<<"$mp")" \
      --smtp-ca "$(sed -n 's/^CERTNODE_TEST_SMTP_CA=//p' <<<"$mp")" --public-url "http://$HTTP" --mail-from no-reply@certnode.localhost \
      --dkim-pkcs11-module "$CERTNODE_PKCS11_MODULE" --dkim-token "$CERTNODE_PKCS11_TOKEN" --metrics 127.0.0.1:9109
  else
    log "no \$CERTNODE_COORDINATOR: no mailer (email needs the coordinator's outbox)"
  fi
  local i
  for ((i = 0; i < 120; i++)); do
    curl -fs "http://$HTTP/readyz" >/dev/null 2>&1 && break
    pid_alive "$UP/ingest.pid" || { tail -20 "$UP/ingest.log" >&2; die "ingest exited"; }
    sleep 0.25
  done
  status
  log "API on http://$HTTP; API key in $UP/credentials.json; the logs' verifier keys in $UP/log.vkey and $UP/audit.vkey; logs in $UP/*.log; stop with: $0 down"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 [up|down|status]" >&2; exit 2 ;;
esac
