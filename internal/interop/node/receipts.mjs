// CertNode receipts with Node's jose + canonicalize: an independent
// implementation the Go tests check themselves against.
//
//   node receipts.mjs sign JWKS_OUT [ES256|EdDSA] [KEY.pem] < payloads.ndjson  > receipts.ndjson
//   node receipts.mjs verify JWKS                            < receipts.ndjson  > verdicts (ok | fail: reason)
//   node receipts.mjs jcs                                    < json-texts        > canonical forms, one per line
//
// sign makes a new key of the algorithm (default ES256) unless KEY.pem, a
// PKCS#8 private key, is given.
import { createHash, createPrivateKey, createPublicKey } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import * as jose from 'jose';
import canonicalize from 'canonicalize';

const b64u = (buf) => Buffer.from(buf).toString('base64url');
const sha256 = (s) => createHash('sha256').update(s).digest();
const ALGS = ['ES256', 'EdDSA'];

// keyAlg is the receipt algorithm of a JWK's key type, or undefined.
const keyAlg = (jwk) => ({ 'EC P-256': 'ES256', 'OKP Ed25519': 'EdDSA' })[`${jwk?.kty} ${jwk?.crv}`];

async function* lines() {
  for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
    if (line.trim() !== '') yield line;
  }
}

async function sign(jwksOut, alg = 'ES256', keyPem) {
  if (!ALGS.includes(alg)) throw new Error(`alg ${alg}: want ES256 or EdDSA`);
  let privateKey, publicKey;
  if (keyPem) {
    privateKey = createPrivateKey(readFileSync(keyPem));
    publicKey = createPublicKey(privateKey);
  } else {
    ({ publicKey, privateKey } = await jose.generateKeyPair(alg, { extractable: true }));
  }
  const jwk = await jose.exportJWK(publicKey);
  if (keyAlg(jwk) !== alg) throw new Error(`the key is for ${keyAlg(jwk)}, not ${alg}`);
  const kid = await jose.calculateJwkThumbprint(jwk, 'sha256');
  writeFileSync(jwksOut, JSON.stringify({ keys: [{ ...jwk, kid, alg, use: 'sig' }] }));
  for await (const line of lines()) {
    const jcs = canonicalize(JSON.parse(line));
    const jws = await new jose.FlattenedSign(new TextEncoder().encode(jcs))
      .setProtectedHeader({ alg, kid })
      .sign(privateKey);
    // Members in the Go signer's order, the payload in its canonical form.
    const tail = JSON.stringify({
      signature: jws.signature,
      kid,
      payload_jcs_sha256: b64u(sha256(jcs)),
      receipt_id: b64u(sha256(`${jws.protected}.${jws.payload}.${jws.signature}`)),
    });
    process.stdout.write(`{"protected":${JSON.stringify(jws.protected)},"payload":${jcs},${tail.slice(1)}\n`);
  }
}

// usableKeys indexes the keys a receipt may name by kid; keys of other
// types or uses (RSA, X25519, encryption keys) are skipped.
async function usableKeys(jwks) {
  const keys = new Map();
  for (const jwk of jwks.keys ?? []) {
    const alg = keyAlg(jwk);
    if (!alg || (jwk.use ?? 'sig') !== 'sig' || (jwk.alg ?? alg) !== alg) continue;
    try {
      keys.set(jwk.kid ?? (await jose.calculateJwkThumbprint(jwk, 'sha256')), { jwk, alg, key: await jose.importJWK(jwk, alg) });
    } catch {
      // a key that does not decode is skipped too
    }
  }
  return keys;
}

async function check(r, keys) {
  if (!['protected', 'signature', 'kid'].every((m) => typeof r?.[m] === 'string') || typeof r.payload !== 'object' || r.payload === null || Array.isArray(r.payload)) {
    throw new Error('malformed');
  }
  const header = JSON.parse(Buffer.from(r.protected, 'base64url').toString('utf8'));
  if (!ALGS.includes(header.alg)) throw new Error('unsupported_alg');
  if (header.kid !== r.kid) throw new Error('kid_mismatch');
  const k = keys.get(r.kid);
  if (!k) throw new Error('unknown_kid');
  if (k.alg !== header.alg) throw new Error('alg_key_mismatch');
  if ((await jose.calculateJwkThumbprint(k.jwk, 'sha256')) !== r.kid) throw new Error('kid_not_thumbprint');
  const jcs = canonicalize(r.payload);
  if (r.payload_jcs_sha256 && r.payload_jcs_sha256 !== b64u(sha256(jcs))) throw new Error('payload_hash_mismatch');
  const payloadB64 = b64u(Buffer.from(jcs, 'utf8'));
  try {
    await jose.flattenedVerify({ protected: r.protected, payload: payloadB64, signature: r.signature }, k.key, { algorithms: [k.alg] });
  } catch {
    throw new Error('bad_signature');
  }
  if (r.receipt_id && r.receipt_id !== b64u(sha256(`${r.protected}.${payloadB64}.${r.signature}`))) throw new Error('receipt_id_mismatch');
}

async function verify(jwksPath) {
  const keys = await usableKeys(JSON.parse(readFileSync(jwksPath, 'utf8')));
  for await (const line of lines()) {
    let verdict = 'ok';
    try {
      await check(JSON.parse(line), keys);
    } catch (e) {
      verdict = `fail: ${e instanceof SyntaxError ? 'malformed' : e.message}`;
    }
    process.stdout.write(verdict + '\n');
  }
}

async function jcs() {
  for await (const line of lines()) process.stdout.write(canonicalize(JSON.parse(line)) + '\n');
}

const [mode, ...args] = process.argv.slice(2);
const modes = { sign, verify, jcs };
if (!modes[mode]) {
  console.error('usage: receipts.mjs sign JWKS_OUT [ES256|EdDSA] [KEY.pem] | verify JWKS | jcs');
  process.exit(2);
}
await modes[mode](...args);
