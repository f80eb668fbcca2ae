#!/usr/bin/env bash
# ClickHouse from Debian's clickhouse-server package, run as a plain process
# with its data under $CERTNODE_LOCAL/clickhouse, listening on 127.0.0.1 only.
# usage: clickhouse.sh start|stop|status|wait|reset
#   CERTNODE_CLICKHOUSE_PORT (native, default 9000; user default, no password);
#   HTTP is that port - 877 (8123).
#   CERTNODE_CLICKHOUSE_SECURE_PORT (native over TLS 1.2+, default 9440): user
#   certnode, its password in $CERTNODE_LOCAL/clickhouse/certnode.password, the
#   server's certificate signed by the local CA $CERTNODE_LOCAL/clickhouse/ca.pem.
source "$(dirname "$0")/lib.sh"
PORT="${CERTNODE_CLICKHOUSE_PORT:-9000}"
SECURE_PORT="${CERTNODE_CLICKHOUSE_SECURE_PORT:-9440}"
HTTP_PORT=$((PORT - 877))
CDIR="$CERTNODE_LOCAL/clickhouse"
PIDF="$CDIR/clickhouse.pid"

# secrets makes, once, a local CA, the server's certificate it signs (for
# 127.0.0.1 and localhost) and the certnode user's password; keys and the
# password are readable by this user only.
secrets() {
  local d="$CDIR/tls"
  mkdir -p "$d"
  (
    umask 077
    if [ ! -f "$CDIR/ca.pem" ]; then
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 -subj "/CN=CertNode local ClickHouse CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$d/ca.key" -out "$CDIR/ca.pem" 2>/dev/null
      rm -f "$d/server.pem"
    fi
    if [ ! -f "$d/server.pem" ]; then
      openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
        -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
      printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n' >"$d/server.ext"
      openssl x509 -req -in "$d/server.csr" -CA "$CDIR/ca.pem" -CAkey "$d/ca.key" -CAserial "$d/ca.srl" -CAcreateserial -days 825 \
        -extfile "$d/server.ext" -out "$d/server.pem" 2>/dev/null
    fi
    [ -s "$CDIR/certnode.password" ] || openssl rand -hex 24 | tr -d '\n' >"$CDIR/certnode.password"
  )
  chmod 644 "$CDIR/ca.pem"
}

configure() {
  mkdir -p "$CDIR/data" "$CDIR/tmp" "$CDIR/user_files" "$CDIR/format_schemas" "$CDIR/log"
  secrets
  local hash
  hash=$(sha256sum <"$CDIR/certnode.password" | cut -d' ' -f1)
  # <yandex> is the root element 18.16 understands; current releases accept it too.
  cat >"$CDIR/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$CDIR/log/server.log</log><errorlog>$CDIR/log/error.log</errorlog><size>100M</size><count>2</count></logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>$PORT</tcp_port>
  <tcp_port_secure>$SECURE_PORT</tcp_port_secure>
  <openSSL>
    <server>
      <certificateFile>$CDIR/tls/server.pem</certificateFile>
      <privateKeyFile>$CDIR/tls/server.key</privateKeyFile>
      <verificationMode>none</verificationMode>
      <loadDefaultCAFile>false</loadDefaultCAFile>
      <cacheSessions>true</cacheSessions>
      <disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>
      <preferServerCiphers>true</preferServerCiphers>
    </server>
  </openSSL>
  <http_port>$HTTP_PORT</http_port>
  <max_connections>512</max_connections>
  <keep_alive_timeout>3</keep_alive_timeout>
  <max_concurrent_queries>100</max_concurrent_queries>
  <mark_cache_size>268435456</mark_cache_size>
  <path>$CDIR/data/</path>
  <tmp_path>$CDIR/tmp/</tmp_path>
  <user_files_path>$CDIR/user_files/</user_files_path>
  <format_schema_path>$CDIR/format_schemas/</format_schema_path>
  <users_config>$CDIR/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mlock_executable>false</mlock_executable>
</yandex>
XML
  cat >"$CDIR/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
    <certnode>
      <password_sha256_hex>$hash</password_sha256_hex>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </certnode>
  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
XML
  # The certnode user's password is stored hashed; still, only this user reads it.
  chmod 600 "$CDIR/users.xml"
}

start() {
  if pid_alive "$PIDF"; then log "already running (pid $(cat "$PIDF")) on 127.0.0.1:$PORT"; wait_ready; return; fi
  port_open 127.0.0.1 "$PORT" && die "127.0.0.1:$PORT is taken by another process"
  port_open 127.0.0.1 "$SECURE_PORT" && die "127.0.0.1:$SECURE_PORT is taken by another process"
  apt_install clickhouse-server clickhouse-client
  configure
  log "starting on 127.0.0.1:$PORT (TLS $SECURE_PORT, http $HTTP_PORT)"
  nohup clickhouse-server --config-file="$CDIR/config.xml" >"$CDIR/log/stdout.log" 2>&1 &
  echo $! >"$PIDF"
  wait_ready
  # A certificate 18.16 cannot load leaves the server up without its TLS port.
  port_open 127.0.0.1 "$SECURE_PORT" || { tail -n 20 "$CDIR/log/error.log" >&2; die "no TLS port on 127.0.0.1:$SECURE_PORT"; }
}

ping_ok() {
  [ "$(exec 2>/dev/null 3<>"/dev/tcp/127.0.0.1/$HTTP_PORT" && printf 'GET /ping HTTP/1.0\r\n\r\n' >&3 && tail -n1 <&3)" = "Ok." ]
}

wait_ready() {
  wait_until "clickhouse on 127.0.0.1:$PORT" "$PIDF" 60 ping_ok "$CDIR/log/stdout.log" "$CDIR/log/error.log"
}

case "${1:-}" in
  start) start ;;
  wait) wait_ready ;;
  *) service_cmd clickhouse "$PIDF" "$PORT" "$CDIR" "${1:-}" ||
    { echo "usage: $0 start|stop|status|wait|reset" >&2; exit 2; } ;;
esac
