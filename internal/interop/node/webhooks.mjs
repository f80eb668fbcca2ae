// Standard Webhooks signatures with the official npm library
// (standardwebhooks), for the Go interoperability tests.
//
//   node webhooks.mjs sign   < requests.ndjson > webhook-signature headers, one per line
//   node webhooks.mjs verify < requests.ndjson > verdicts (ok | fail: message)
//   node webhooks.mjs serve  (secrets in $WEBHOOK_SECRETS)  > "listening PORT", then one line per request
//
// A sign request is {"secrets":["whsec_..."],"id":"...","timestamp":"<unix>","body":"..."};
// with several secrets the signatures are joined by spaces, as during a
// rotation (the library signs with one secret at a time). A verify request
// is {"secret":"whsec_...","id":"...","timestamp":"<unix>","signature":"...","body":"..."},
// checked against this machine's clock with the library's 5-minute tolerance.
//
// serve is a webhook receiver: an HTTP server on 127.0.0.1 (a free port,
// printed first as "listening PORT") that checks every request with one
// Webhook per space-separated secret of $WEBHOOK_SECRETS, each holding only
// that secret, and prints {"id":"<webhook-id>","verdicts":["ok"|"fail: ...",...]}
// (one verdict per secret, in order) a line. It answers 204 when some
// secret verifies, else 400. It exits when its stdin closes, or after 10 minutes.
import http from 'node:http';
import { createInterface } from 'node:readline';
import { Webhook } from 'standardwebhooks';

const [mode] = process.argv.slice(2);
if (mode !== 'sign' && mode !== 'verify' && mode !== 'serve') {
  console.error('usage: node webhooks.mjs sign|verify < requests.ndjson | serve');
  process.exit(2);
}

function serve() {
  const hooks = (process.env.WEBHOOK_SECRETS ?? '').split(' ').filter((s) => s !== '').map((s) => new Webhook(s));
  if (hooks.length === 0) {
    console.error('serve: $WEBHOOK_SECRETS names no secret');
    process.exit(2);
  }
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const verdicts = hooks.map((wh) => {
        try {
          wh.verify(body, req.headers, { jsonParse: false });
          return 'ok';
        } catch (e) {
          return `fail: ${e.message}`;
        }
      });
      process.stdout.write(JSON.stringify({ id: req.headers['webhook-id'] ?? '', verdicts }) + '\n');
      res.writeHead(verdicts.includes('ok') ? 204 : 400).end();
    });
  });
  server.listen(0, '127.0.0.1', () => process.stdout.write(`listening ${server.address().port}\n`));
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
  setTimeout(() => process.exit(0), 10 * 60 * 1000).unref();
}

if (mode === 'serve') {
  serve();
} else {
  for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
    if (line.trim() === '') continue;
    const r = JSON.parse(line);
    if (mode === 'sign') {
      const at = new Date(Number(r.timestamp) * 1000);
      console.log(r.secrets.map((s) => new Webhook(s).sign(r.id, at, r.body)).join(' '));
      continue;
    }
    const headers = { 'webhook-id': r.id, 'webhook-timestamp': r.timestamp, 'webhook-signature': r.signature };
    try {
      new Webhook(r.secret).verify(r.body, headers, { jsonParse: false });
      console.log('ok');
    } catch (e) {
      console.log(`fail: ${e.message}`);
    }
  }
}
