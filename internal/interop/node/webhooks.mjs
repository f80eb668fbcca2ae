// Standard Webhooks signatures with the official npm library
// (standardwebhooks), for the Go interoperability tests.
//
//   node webhooks.mjs sign   < requests.ndjson > webhook-signature headers, one per line
//   node webhooks.mjs verify < requests.ndjson > verdicts (ok | fail: message)
//
// A sign request is {"secrets":["whsec_..."],"id":"...","timestamp":"<unix>","body":"..."};
// with several secrets the signatures are joined by spaces, as during a
// rotation (the library signs with one secret at a time). A verify request
// is {"secret":"whsec_...","id":"...","timestamp":"<unix>","signature":"...","body":"..."},
// checked against this machine's clock with the library's 5-minute tolerance.
import { createInterface } from 'node:readline';
import { Webhook } from 'standardwebhooks';

const [mode] = process.argv.slice(2);
if (mode !== 'sign' && mode !== 'verify') {
  console.error('usage: node webhooks.mjs sign|verify < requests.ndjson');
  process.exit(2);
}
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
