#!/usr/bin/env bash
# Apache Kafka 4.x as production should run it, single KRaft node on
# 127.0.0.1, from the same Maven Central jars as kafka.sh: clients reach it
# only over TLS (SASL_SSL) and authenticate with SCRAM-SHA-512; the
# StandardAuthorizer refuses whatever no ACL allows. The tests of the
# per-role grants (certnode kafka grant) run against it.
# usage: kafka-secure.sh start|stop|status|wait|reset
# environment:
#   CERTNODE_KAFKA_SECURE_PORT            SASL_SSL listener (default 9094)
#   CERTNODE_KAFKA_SECURE_CONTROLLER_PORT controller listener (default: the first free port above it)
#   CERTNODE_LOCAL                        state folder; everything in $CERTNODE_LOCAL/kafka-secure
# State, made at the first start: ca.pem (the CA clients trust), server.pem
# (the broker's key and certificate, SAN IP:127.0.0.1 and DNS:localhost),
# admin.password (the super user "admin", SCRAM-SHA-512, created when the
# storage is formatted) and controller.password (the controller listener's
# PLAIN user): all mode 600 in a mode 700 folder, never printed; and
# bootstrap (host:port). The tests find them there (internal/testenv).
source "$(dirname "$0")/lib.sh"
PORT="${CERTNODE_KAFKA_SECURE_PORT:-9094}"
KDIR="$CERTNODE_LOCAL/kafka-secure"
PIDF="$KDIR/kafka.pid"

# controller_port: the configured one, else the one this state was made
# with, else the first free port above the listener's.
controller_port() {
  if [ -n "${CERTNODE_KAFKA_SECURE_CONTROLLER_PORT:-}" ]; then echo "$CERTNODE_KAFKA_SECURE_CONTROLLER_PORT"; return; fi
  if [ -f "$KDIR/controller.port" ]; then cat "$KDIR/controller.port"; return; fi
  local p
  for ((p = PORT + 1; p < PORT + 100; p++)); do
    port_open 127.0.0.1 "$p" || { echo "$p"; return; }
  done
  die "no free port in $((PORT + 1))-$((PORT + 99)) for the controller"
}

secret() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }

# credentials makes the CA, the broker's certificate and the passwords,
# once: a restart keeps them (clients hold the CA and the users).
credentials() {
  mkdir -p "$KDIR/data"; chmod 700 "$KDIR"
  (
    umask 077; cd "$KDIR"
    [ -f admin.password ] || secret >admin.password
    [ -f controller.password ] || secret >controller.password
    if [ ! -f server.pem ]; then
      command -v openssl >/dev/null || apt_install openssl
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=CertNode local Kafka CA" -keyout ca.key -out ca.pem \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
        -keyout server.key -out server.csr 2>/dev/null
      printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >server.ext
      openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
        -extfile server.ext -out server.crt 2>/dev/null
      # Kafka's PEM key store: the PKCS#8 key, then the chain.
      cat server.key server.crt >server.pem
      rm -f server.csr server.ext server.key server.crt ca.srl ca.key # the CA signs nothing else
      chmod 644 ca.pem
    fi
  )
}

configure() {
  local admin ctrl cport
  admin=$(cat "$KDIR/admin.password"); ctrl=$(cat "$KDIR/controller.password"); cport=$(controller_port)
  echo "$cport" >"$KDIR/controller.port"
  (umask 077; cat >"$KDIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=SASL_SSL://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$cport
advertised.listeners=SASL_SSL://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin";
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="controller" password="$ctrl" user_controller="$ctrl";
ssl.keystore.type=PEM
ssl.keystore.location=$KDIR/server.pem
ssl.truststore.type=PEM
ssl.truststore.location=$KDIR/ca.pem
ssl.enabled.protocols=TLSv1.3,TLSv1.2
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin;User:controller
PROPS
  )
  # Roles may not create topics: the administrator does (certnode kafka grant).
  kafka_common_props "$KDIR/data" 1 1 | grep -v -e '^controller.listener.names=' -e '^inter.broker.listener.name=' \
    -e '^listener.security.protocol.map=' -e '^auto.create.topics.enable=' >>"$KDIR/server.properties"
  echo "auto.create.topics.enable=false" >>"$KDIR/server.properties"
  kafka_log4j "$KDIR/log4j2.properties" "$KDIR/server.log"
  echo "127.0.0.1:$PORT" >"$KDIR/bootstrap"
}

java_cmd=(java -Xms256m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true
  -Dlog4j2.configurationFile="$KDIR/log4j2.properties" -cp "$KAFKA_LIBS/*")

start() {
  if pid_alive "$PIDF"; then log "already running (pid $(cat "$PIDF")) on 127.0.0.1:$PORT"; wait_ready; return; fi
  port_open 127.0.0.1 "$PORT" && die "127.0.0.1:$PORT is taken by another process"
  kafka_fetch; credentials; configure
  if [ ! -f "$KDIR/data/meta.properties" ]; then
    # The super user exists from the start: SCRAM users live in the
    # cluster's metadata, which only a running broker could change. The
    # tool takes the password only as an argument, visible to this
    # machine's other users for the second it runs: fine for a test broker.
    (umask 077
      "${java_cmd[@]}" kafka.tools.StorageTool format --standalone -t "$("${java_cmd[@]}" kafka.tools.StorageTool random-uuid)" \
        -c "$KDIR/server.properties" --add-scram "SCRAM-SHA-512=[name=admin,password=$(cat "$KDIR/admin.password")]" \
        >"$KDIR/format.log" 2>&1) || { cat "$KDIR/format.log" >&2; die "storage format failed"; }
  fi
  log "starting on 127.0.0.1:$PORT (SASL_SSL, SCRAM-SHA-512, ACLs)"
  nohup "${java_cmd[@]}" kafka.Kafka "$KDIR/server.properties" >"$KDIR/stdout.log" 2>&1 &
  echo $! >"$PIDF"
  wait_ready
}

# api_versions_ok sends the ApiVersions request of kafka_api_versions_ok
# over TLS, checking the broker's certificate against the CA: it is served
# before authentication, so it shows the broker takes requests.
api_versions_ok() {
  local reply
  reply=$(printf '\x00\x00\x00\x0c\x00\x12\x00\x00\x00\x00\x00\x01\x00\x02up' |
    timeout 3 openssl s_client -quiet -ign_eof -verify_return_error -CAfile "$KDIR/ca.pem" \
      -verify_ip 127.0.0.1 -connect "127.0.0.1:$PORT" 2>/dev/null |
    head -c 10 | od -An -tx1 | tr -d ' \n') || true
  [ "${reply:8:12}" = "000000010000" ]
}

wait_ready() {
  wait_until "secure kafka on 127.0.0.1:$PORT" "$PIDF" 90 api_versions_ok "$KDIR/stdout.log" "$KDIR/server.log"
}

case "${1:-}" in
  start) start ;;
  wait) wait_ready ;;
  *) service_cmd "secure kafka" "$PIDF" "$PORT" "$KDIR" "${1:-}" ||
    { echo "usage: $0 start|stop|status|wait|reset" >&2; exit 2; } ;;
esac
