"""Standard Webhooks signatures with the official PyPI library
(standardwebhooks), for the Go interoperability tests.

  python3 webhooks.py sign   < requests.ndjson > webhook-signature headers, one per line
  python3 webhooks.py verify < requests.ndjson > verdicts (ok | fail: message)

Requests are those of ../node/webhooks.mjs: sign takes
{"secrets":[...],"id":...,"timestamp":"<unix>","body":...} and joins the
signatures of several secrets by spaces (a rotation); verify takes
{"secret":...,"id":...,"timestamp":"<unix>","signature":...,"body":...} and
checks it against this machine's clock with the library's 5-minute tolerance.
`python3 receipts.py deps` says whether the pinned packages are installed.
"""

import json
import sys
from datetime import datetime, timezone

from standardwebhooks import Webhook


def main(mode):
    for line in sys.stdin:
        if not line.strip():
            continue
        r = json.loads(line)
        if mode == "sign":
            at = datetime.fromtimestamp(int(r["timestamp"]), tz=timezone.utc)
            print(" ".join(Webhook(s).sign(r["id"], at, r["body"]) for s in r["secrets"]))
            continue
        headers = {"webhook-id": r["id"], "webhook-timestamp": r["timestamp"], "webhook-signature": r["signature"]}
        try:
            Webhook(r["secret"]).verify(r["body"], headers, json_parse=False)
            print("ok")
        except Exception as e:  # the verdict names whatever the library raised
            print(f"fail: {type(e).__name__}: {e}")


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("sign", "verify"):
        sys.exit("usage: python3 webhooks.py sign|verify < requests.ndjson")
    main(sys.argv[1])
