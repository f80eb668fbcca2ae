#!/usr/bin/env bash
# Produces sign requests straight into Kafka with kcat, one envelope per
# stdin line, each signed with a producer key (HMAC-SHA256 of the record
# value, hex) as certnode workers require.
# usage: kcat-sign.sh BROKER TOPIC TENANT KEY_ID SECRET < envelopes.ndjson
set -euo pipefail
broker=$1 topic=$2 tenant=$3 key_id=$4 secret=$5
while IFS= read -r value; do
  [ -n "$value" ] || continue
  sig=$(printf '%s' "$value" | openssl dgst -sha256 -hmac "$secret" -r | cut -d' ' -f1)
  # murmur2_random: the partitioner of the Java client and franz-go, so a
  # tenant's records share one partition whichever client wrote them.
  printf '%s|%s\n' "$tenant" "$value" |
    kcat -P -b "$broker" -t "$topic" -K '|' -X partitioner=murmur2_random \
      -H "certnode-key-id=$key_id" -H "certnode-signature=$sig"
done
