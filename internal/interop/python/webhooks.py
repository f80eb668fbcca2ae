"""Standard Webhooks signatures with the official PyPI library
(standardwebhooks), for the Go interoperability tests.

  python3 webhooks.py sign   < requests.ndjson > webhook-signature headers, one per line
  python3 webhooks.py verify < requests.ndjson > verdicts (ok | fail: message)
  python3 webhooks.py serve  (secrets in $WEBHOOK_SECRETS) > "listening PORT", then one line per request

Requests are those of ../node/webhooks.mjs: sign takes
{"secrets":[...],"id":...,"timestamp":"<unix>","body":...} and joins the
signatures of several secrets by spaces (a rotation); verify takes
{"secret":...,"id":...,"timestamp":"<unix>","signature":...,"body":...} and
checks it against this machine's clock with the library's 5-minute tolerance.
serve is the receiver of ../node/webhooks.mjs serve: an HTTP server on
127.0.0.1 (a free port, printed first) checking each request with one
Webhook per secret of $WEBHOOK_SECRETS (space-separated), printing
{"id":...,"verdicts":[...]} a line, answering 204 when some secret verifies,
else 400; it exits when its stdin closes, or after 10 minutes.
`python3 receipts.py deps` says whether the pinned packages are installed.
"""

import json
import os
import sys
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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


def serve():
    hooks = [Webhook(s) for s in os.environ.get("WEBHOOK_SECRETS", "").split()]
    if not hooks:
        sys.exit("serve: $WEBHOOK_SECRETS names no secret")
    out = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = dict(self.headers.items())
            verdicts = []
            for wh in hooks:
                try:
                    wh.verify(body, headers, json_parse=False)
                    verdicts.append("ok")
                except Exception as e:  # the verdict names whatever the library raised
                    verdicts.append(f"fail: {type(e).__name__}: {e}")
            with out:
                sys.stdout.write(json.dumps({"id": self.headers.get("webhook-id", ""), "verdicts": verdicts}) + "\n")
                sys.stdout.flush()
            self.send_response(204 if "ok" in verdicts else 400)
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True

    def until_stdin_closes():
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=until_stdin_closes, daemon=True).start()
    limit = threading.Timer(600, lambda: os._exit(0))
    limit.daemon = True
    limit.start()
    with out:
        sys.stdout.write(f"listening {srv.server_address[1]}\n")
        sys.stdout.flush()
    srv.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("sign", "verify", "serve"):
        sys.exit("usage: python3 webhooks.py sign|verify < requests.ndjson | serve")
    if sys.argv[1] == "serve":
        serve()
    else:
        main(sys.argv[1])
