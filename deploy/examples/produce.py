#!/usr/bin/env python3
"""Produces sign requests straight into Kafka with confluent-kafka, each
record signed with a producer key (hex HMAC-SHA256 of the record value).

usage: produce.py BROKER TOPIC TENANT KEY_ID SECRET < envelopes.ndjson
"""
import hashlib
import hmac
import sys

from confluent_kafka import Producer


def main():
    broker, topic, tenant, key_id, secret = sys.argv[1:6]
    # murmur2_random: the Java client's and franz-go's partitioner, so a
    # tenant's records share one partition whichever client wrote them.
    p = Producer({"bootstrap.servers": broker, "partitioner": "murmur2_random",
                  "acks": "all", "enable.idempotence": True})
    failed = []

    def delivered(err, msg):
        if err is not None:
            failed.append(err)

    for line in sys.stdin:
        value = line.rstrip("\n").encode()
        if not value:
            continue
        sig = hmac.new(secret.encode(), value, hashlib.sha256).hexdigest()
        p.produce(topic, key=tenant.encode(), value=value, on_delivery=delivered,
                  headers=[("certnode-key-id", key_id.encode()), ("certnode-signature", sig.encode())])
        p.poll(0)
    if p.flush(30) != 0 or failed:
        sys.exit(f"not delivered: {failed or 'timeout'}")


if __name__ == "__main__":
    main()
