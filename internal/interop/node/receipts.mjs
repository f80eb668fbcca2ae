// CertNode receipts with Node's jose + canonicalize: an independent
// implementation the Go tests check themselves against.
//
//   node receipts.mjs sign JWKS_OUT   < payloads.ndjson  > receipts.ndjson
//   node receipts.mjs verify JWKS     < receipts.ndjson  > verdicts (ok | fail: reason)
//   node receipts.mjs jcs             < json-texts        > canonical forms, one per line
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import * as jose from 'jose';
import canonicalize from 'canonicalize';

const b64u = (buf) => Buffer.from(buf).toString('base64url');
const sha256 = (s) => createHash('sha256').update(s).digest();

async function* lines() {
  for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
    if (line.trim() !== '') yield line;
  }
}

async function sign(jwksOut) {
  const { publicKey, privateKey } = await jose.generateKeyPair('ES256', { extractable: true });
  const jwk = await jose.exportJWK(publicKey);
  const kid = await jose.calculateJwkThumbprint(jwk, 'sha256');
  writeFileSync(jwksOut, JSON.stringify({ keys: [{ ...jwk, kid, alg: 'ES256', use: 'sig' }] }));
  for await (const line of lines()) {
    const payload = JSON.parse(line);
    const jcs = canonicalize(payload);
    const jws = await new jose.FlattenedSign(new TextEncoder().encode(jcs))
      .setProtectedHeader({ alg: 'ES256', kid })
      .sign(privateKey);
    const receipt = {
      protected: jws.protected,
      payload,
      signature: jws.signature,
      kid,
      payload_jcs_sha256: b64u(sha256(jcs)),
      receipt_id: b64u(sha256(`${jws.protected}.${jws.payload}.${jws.signature}`)),
    };
    process.stdout.write(JSON.stringify(receipt) + '\n');
  }
}

async function verify(jwksPath) {
  const jwks = JSON.parse(readFileSync(jwksPath, 'utf8'));
  for await (const line of lines()) {
    let verdict = 'ok';
    try {
      const r = JSON.parse(line);
      const header = JSON.parse(Buffer.from(r.protected, 'base64url').toString('utf8'));
      if (header.alg !== 'ES256') throw new Error('unsupported_alg');
      if (header.kid !== r.kid) throw new Error('kid_mismatch');
      const jwk = jwks.keys.find((k) => k.kid === r.kid);
      if (!jwk) throw new Error('unknown_kid');
      if ((await jose.calculateJwkThumbprint(jwk, 'sha256')) !== r.kid) throw new Error('kid_not_thumbprint');
      const jcs = canonicalize(r.payload);
      if (r.payload_jcs_sha256 && r.payload_jcs_sha256 !== b64u(sha256(jcs))) throw new Error('payload_hash_mismatch');
      const payloadB64 = b64u(Buffer.from(jcs, 'utf8'));
      try {
        await jose.flattenedVerify({ protected: r.protected, payload: payloadB64, signature: r.signature }, await jose.importJWK(jwk, 'ES256'));
      } catch {
        throw new Error('bad_signature');
      }
      if (r.receipt_id && r.receipt_id !== b64u(sha256(`${r.protected}.${payloadB64}.${r.signature}`))) throw new Error('receipt_id_mismatch');
    } catch (e) {
      verdict = `fail: ${e.message}`;
    }
    process.stdout.write(verdict + '\n');
  }
}

async function jcs() {
  for await (const line of lines()) process.stdout.write(canonicalize(JSON.parse(line)) + '\n');
}

const [mode, arg] = process.argv.slice(2);
const modes = { sign: () => sign(arg), verify: () => verify(arg), jcs };
if (!modes[mode]) {
  console.error('usage: receipts.mjs sign JWKS_OUT | verify JWKS | jcs');
  process.exit(2);
}
await modes[mode]();
