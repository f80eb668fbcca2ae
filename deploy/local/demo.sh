#!/usr/bin/env bash
# What `make run` does until the pipeline lands: a CLI walk-through with a
# development key kept in $CERTNODE_LOCAL/dev.
source "$(dirname "$0")/lib.sh"
bin="$REPO_ROOT/bin/certnode"
dir="$CERTNODE_LOCAL/dev"
mkdir -p "$dir"
[ -f "$dir/key.pem" ] || "$bin" keys generate --out "$dir/key.pem" >/dev/null
"$bin" jwks --key "$dir/key.pem" >"$dir/jwks.json"

echo "\$ echo '{\"order\":42,\"amount\":19.99,\"currency\":\"EUR\"}' | certnode sign --key $dir/key.pem"
echo '{"order":42,"amount":19.99,"currency":"EUR"}' | "$bin" sign --key "$dir/key.pem" | tee "$dir/receipt.json"
echo
echo "\$ certnode verify --jwks $dir/jwks.json --receipt $dir/receipt.json"
"$bin" verify --jwks "$dir/jwks.json" --receipt "$dir/receipt.json"
echo
echo "\$ # the same receipt with the amount changed:"
sed 's/19.99/1999/' "$dir/receipt.json" | "$bin" verify --jwks "$dir/jwks.json" || true
echo
echo "The pipeline (HTTP ingest, Kafka, workers, ClickHouse) is not built yet; see README.md."
