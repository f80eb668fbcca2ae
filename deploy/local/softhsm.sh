#!/usr/bin/env bash
# SoftHSM2 token for local runs and tests, kept under $CERTNODE_LOCAL/softhsm
# (no system-wide changes beyond the Debian package).
# usage: softhsm.sh init|env|reset
#   init  installs softhsm2 if missing and creates the token (idempotent)
#   env   prints the variables that point certnode and the tests at it
source "$(dirname "$0")/lib.sh"
HDIR="$CERTNODE_LOCAL/softhsm"
TOKEN="${CERTNODE_SOFTHSM_TOKEN:-certnode-test}"
MODULE=/usr/lib/softhsm/libsofthsm2.so

init() {
  apt_install softhsm2
  mkdir -p "$HDIR/tokens"; chmod 700 "$HDIR"
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' \
    "$HDIR/tokens" >"$HDIR/softhsm2.conf"
  # The PIN is generated once and kept in a 0600 file; nothing prints it.
  if [ ! -f "$HDIR/pin" ]; then
    (umask 077; od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$HDIR/pin"; od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$HDIR/so-pin")
  fi
  export SOFTHSM2_CONF="$HDIR/softhsm2.conf"
  if ! softhsm2-util --show-slots 2>/dev/null | grep -Eq "Label:[[:space:]]*$TOKEN[[:space:]]*\$"; then
    softhsm2-util --init-token --free --label "$TOKEN" --pin "$(cat "$HDIR/pin")" --so-pin "$(cat "$HDIR/so-pin")" >/dev/null
    log "token '$TOKEN' created"
  fi
  env_file >"$HDIR/env"
  log "ready: token '$TOKEN' (source $HDIR/env)"
}

env_file() {
  cat <<VARS
export SOFTHSM2_CONF='$HDIR/softhsm2.conf'
export CERTNODE_PKCS11_MODULE='$MODULE'
export CERTNODE_PKCS11_TOKEN='$TOKEN'
export CERTNODE_PKCS11_PIN_FILE='$HDIR/pin'
VARS
}

case "${1:-}" in
  init) init ;;
  env) [ -f "$HDIR/env" ] || init; cat "$HDIR/env" ;;
  reset) rm -rf "$HDIR"; log "removed $HDIR" ;;
  *) echo "usage: $0 init|env|reset" >&2; exit 2 ;;
esac
