// The hosted verification page: a receipt is checked here, in the
// browser, against the keys this site publishes; it is never sent
// anywhere. The checks and their order are schemas.KeySet.VerifyReceipt's,
// with the same reason names.
'use strict';

(() => {
  const enc = new TextEncoder();

  // --- JSON, strictly (RFC 8259), refusing duplicate member names ---

  class JSONError extends Error {}

  // parseJSON reads one JSON text. Objects come back as null-prototype
  // objects; numbers as JS numbers (IEEE 754 doubles, as RFC 8785 reads
  // them); a number beyond the double range is refused, as Go's JCS does.
  function parseJSON(text) {
    let i = 0;
    const fail = (msg) => { throw new JSONError(msg + ' at offset ' + i); };
    const ws = () => { while (i < text.length && ' \t\n\r'.includes(text[i])) i++; };
    const value = (depth) => {
      if (depth > 1000) fail('nested too deeply');
      ws();
      const c = text[i];
      if (c === '{') return object(depth);
      if (c === '[') return array(depth);
      if (c === '"') return string();
      if (c === '-' || (c >= '0' && c <= '9')) return number();
      for (const [lit, v] of [['true', true], ['false', false], ['null', null]]) {
        if (text.startsWith(lit, i)) { i += lit.length; return v; }
      }
      return fail('unexpected ' + (c === undefined ? 'end' : JSON.stringify(c)));
    };
    const object = (depth) => {
      i++;
      const o = Object.create(null);
      ws();
      if (text[i] === '}') { i++; return o; }
      for (;;) {
        ws();
        if (text[i] !== '"') fail('expected a member name');
        const k = string();
        if (Object.prototype.hasOwnProperty.call(o, k)) fail('duplicate member name ' + JSON.stringify(k));
        ws();
        if (text[i] !== ':') fail('expected ":"');
        i++;
        o[k] = value(depth + 1);
        ws();
        if (text[i] === ',') { i++; continue; }
        if (text[i] === '}') { i++; return o; }
        fail('expected "," or "}"');
      }
    };
    const array = (depth) => {
      i++;
      const a = [];
      ws();
      if (text[i] === ']') { i++; return a; }
      for (;;) {
        a.push(value(depth + 1));
        ws();
        if (text[i] === ',') { i++; continue; }
        if (text[i] === ']') { i++; return a; }
        fail('expected "," or "]"');
      }
    };
    const string = () => {
      i++;
      let out = '';
      for (;;) {
        const c = text[i];
        if (c === undefined) fail('unterminated string');
        if (c === '"') { i++; break; }
        if (c < ' ') fail('control character in a string');
        if (c === '\\') {
          const e = text[i + 1];
          const simple = { '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };
          if (e in simple) { out += simple[e]; i += 2; continue; }
          if (e !== 'u') fail('bad escape');
          const hex = text.slice(i + 2, i + 6);
          if (!/^[0-9a-fA-F]{4}$/.test(hex)) fail('bad \\u escape');
          out += String.fromCharCode(parseInt(hex, 16));
          i += 6;
          continue;
        }
        out += c;
        i++;
      }
      if (!out.isWellFormed()) fail('a lone surrogate in a string');
      return out;
    };
    const number = () => {
      const m = /^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/.exec(text.slice(i));
      if (!m) fail('bad number');
      i += m[0].length;
      const n = Number(m[0]);
      if (!Number.isFinite(n)) fail('a number beyond the double range');
      return n;
    };
    if (!text.isWellFormed()) throw new JSONError('not valid Unicode');
    const v = value(0);
    ws();
    if (i !== text.length) fail('text after the JSON value');
    return v;
  }

  // canonicalize is RFC 8785 (JCS): members sorted by UTF-16 code units
  // (JS's own string order), numbers and strings as ECMAScript writes them.
  function canonicalize(v) {
    if (v === null || typeof v === 'boolean' || typeof v === 'number' || typeof v === 'string') return JSON.stringify(v);
    if (Array.isArray(v)) return '[' + v.map(canonicalize).join(',') + ']';
    return '{' + Object.keys(v).sort().map((k) => JSON.stringify(k) + ':' + canonicalize(v[k])).join(',') + '}';
  }

  // jcs is the canonical form of a JSON text (for the tests, and anyone).
  const jcs = (text) => canonicalize(parseJSON(text));

  // --- base64url ---

  function b64u(bytes) {
    const u = new Uint8Array(bytes);
    let bin = '';
    for (let i = 0; i < u.length; i += 0x8000) bin += String.fromCharCode(...u.subarray(i, i + 0x8000));
    return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }
  function unb64(s, url) {
    if (url && !/^[A-Za-z0-9_-]*$/.test(s)) throw new JSONError('not base64url');
    const std = url ? s.replace(/-/g, '+').replace(/_/g, '/') : s;
    const bin = atob(std + '='.repeat((4 - (std.length % 4)) % 4));
    return Uint8Array.from(bin, (c) => c.charCodeAt(0));
  }
  const sha256 = async (bytes) => new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));

  // --- keys ---

  // thumbprint is RFC 7638's, the kid receipts name.
  async function thumbprint(k) {
    const members = k.kty === 'EC' ? { crv: k.crv, kty: k.kty, x: k.x, y: k.y } : { crv: k.crv, kty: k.kty, x: k.x };
    return b64u(await sha256(enc.encode(canonicalize(members))));
  }

  // keySet indexes a JWKS by thumbprint: ES256 (P-256) and EdDSA (Ed25519)
  // keys for signing; others are skipped, never fatal.
  async function keySet(jwks) {
    const keys = new Map();
    for (const k of (jwks && Array.isArray(jwks.keys) ? jwks.keys : [])) {
      if (!k || typeof k !== 'object' || (k.use && k.use !== 'sig')) continue;
      let alg = '';
      if (k.kty === 'EC' && k.crv === 'P-256' && typeof k.x === 'string' && typeof k.y === 'string') alg = 'ES256';
      if (k.kty === 'OKP' && k.crv === 'Ed25519' && typeof k.x === 'string') alg = 'EdDSA';
      if (!alg || (k.alg && k.alg !== alg)) continue;
      const tp = await thumbprint(k);
      if (k.kid && k.kid !== tp) continue;
      keys.set(tp, { alg, jwk: k });
    }
    return keys;
  }

  async function verifySignature(key, input, sig) {
    const { kty, crv, x, y } = key.jwk;
    if (key.alg === 'ES256') {
      const pub = await crypto.subtle.importKey('jwk', { kty, crv, x, y }, { name: 'ECDSA', namedCurve: 'P-256' }, false, ['verify']);
      return crypto.subtle.verify({ name: 'ECDSA', hash: 'SHA-256' }, pub, sig, input);
    }
    let pub;
    try {
      pub = await crypto.subtle.importKey('jwk', { kty, crv, x }, { name: 'Ed25519' }, false, ['verify']);
    } catch (e) {
      throw new Failure('unsupported_browser', 'this browser cannot check Ed25519 signatures; use certnode verify');
    }
    return crypto.subtle.verify({ name: 'Ed25519' }, pub, sig, input);
  }

  class Failure extends Error {
    constructor(reason, detail) { super(detail || reason); this.reason = reason; this.detail = detail || ''; }
  }

  // verifyReceipt checks a receipt (its JSON text) against a JWKS; it
  // resolves to what it found, or throws a Failure naming the reason.
  async function verifyReceipt(text, jwks) {
    let r;
    try { r = parseJSON(text); } catch (e) { throw new Failure('malformed', e.message); }
    if (!r || typeof r !== 'object' || Array.isArray(r)) throw new Failure('malformed', 'a receipt is a JSON object');
    const str = (v) => typeof v === 'string' && v !== '';
    if (!str(r.protected) || !str(r.signature) || !str(r.kid) || r.payload === undefined) {
      throw new Failure('malformed', 'protected, payload, signature and kid are required');
    }
    let hdr;
    try { hdr = parseJSON(new TextDecoder('utf-8', { fatal: true }).decode(unb64(r.protected, true))); } catch (e) {
      throw new Failure('malformed', 'protected header: ' + e.message);
    }
    if (hdr.alg !== 'ES256' && hdr.alg !== 'EdDSA') throw new Failure('unsupported_alg', 'alg ' + JSON.stringify(hdr.alg) + '; receipts use ES256 or EdDSA');
    if (typeof hdr.kid !== 'string' || r.protected !== b64u(enc.encode('{"alg":' + JSON.stringify(hdr.alg) + ',"kid":' + JSON.stringify(hdr.kid) + '}'))) {
      throw new Failure('malformed', 'the protected header must be exactly {"alg":…,"kid":…}');
    }
    if (hdr.kid !== r.kid) throw new Failure('kid_mismatch', 'header kid ' + hdr.kid + ', receipt kid ' + r.kid);
    const keys = await keySet(jwks);
    const key = keys.get(r.kid);
    if (!key) throw new Failure('unknown_kid', 'kid ' + r.kid + ' is not among the keys this site publishes');
    const found = { kid: r.kid, alg: hdr.alg, key: key.jwk };
    if (key.alg !== hdr.alg) throw Object.assign(new Failure('alg_key_mismatch', 'header alg ' + hdr.alg + ', the key is for ' + key.alg), found);
    if (!r.payload || typeof r.payload !== 'object' || Array.isArray(r.payload)) throw Object.assign(new Failure('malformed', 'payload must be a JSON object'), found);
    const canon = enc.encode(canonicalize(r.payload));
    if (typeof r.payload_jcs_sha256 === 'string' && r.payload_jcs_sha256 !== '' && b64u(await sha256(canon)) !== r.payload_jcs_sha256) {
      throw Object.assign(new Failure('payload_hash_mismatch', 'the payload is not the one signed: it was changed'), found);
    }
    let sig;
    try { sig = unb64(r.signature, true); } catch (e) { throw Object.assign(new Failure('malformed', 'signature is not base64url'), found); }
    if (sig.length !== 64) throw Object.assign(new Failure('bad_signature', 'the signature is ' + sig.length + ' bytes, want 64'), found);
    const input = r.protected + '.' + b64u(canon);
    if (!(await verifySignature(key, enc.encode(input), sig))) throw Object.assign(new Failure('bad_signature', 'the signature does not match the payload'), found);
    const id = b64u(await sha256(enc.encode(input + '.' + r.signature)));
    if (typeof r.receipt_id === 'string' && r.receipt_id !== '' && r.receipt_id !== id) throw Object.assign(new Failure('receipt_id_mismatch', ''), found);
    return { ...found, receiptId: id, payload: r.payload };
  }

  // --- the transparency log ---

  // rootFromProof is RFC 9162's inclusion proof check: the root the
  // proof leads to from the leaf hash.
  async function rootFromProof(index, size, leaf, path) {
    const node = async (l, r) => sha256(new Uint8Array([1, ...l, ...r]));
    if (index >= size) throw new Error('leaf index past the tree');
    let fn = index;
    let sn = size - 1;
    let h = leaf;
    for (const p of path) {
      if (sn === 0) throw new Error('proof too long');
      if (fn % 2 === 1 || fn === sn) {
        h = await node(p, h);
        if (fn % 2 === 0) while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
      } else {
        h = await node(h, p);
      }
      fn = Math.floor(fn / 2);
      sn = Math.floor(sn / 2);
    }
    if (sn !== 0) throw new Error('proof too short');
    return h;
  }

  const eq = (a, b) => a.length === b.length && a.every((v, i) => v === b[i]);

  // checkInclusion checks a proof and its checkpoint (a C2SP signed note)
  // against the log's key; it says what it could check.
  async function checkInclusion(receiptId, p, vkey) {
    const leaf = await sha256(new Uint8Array([0, ...enc.encode('certnode-receipt-v1\n' + receiptId)]));
    const root = await rootFromProof(p.leaf_index, p.tree_size, leaf, p.inclusion_proof.map((h) => unb64(h, false)));
    if (b64u(root) !== b64u(unb64(p.root_hash, false))) throw new Error('the proof does not lead to the checkpoint\'s root');
    const [body, sigs] = p.checkpoint.split('\n\n');
    const lines = body.split('\n');
    if (Number(lines[1]) !== p.tree_size || lines[2] !== p.root_hash) throw new Error('the checkpoint is of another tree');
    const out = { origin: lines[0], index: p.leaf_index, size: p.tree_size, signature: 'not checked' };
    // name+hash+key, where the key (standard base64) may hold "+" too.
    const m = /^([^+\s]+)\+([0-9a-f]{8})\+(\S+)$/.exec((vkey || '').trim());
    if (!m) return out;
    const [, name, hash, key] = m;
    const raw = unb64(key, false);
    const line = (sigs || '').split('\n').find((l) => l.startsWith('\u2014 ' + name + ' '));
    if (!line) throw new Error('the checkpoint is not signed by ' + name);
    const sig = unb64(line.split(' ')[2], false);
    if (raw[0] !== 1 || b64u(sig.slice(0, 4)) !== b64u(Uint8Array.from(hash.match(/../g).map((h) => parseInt(h, 16))))) throw new Error('an unexpected key');
    try {
      const pub = await crypto.subtle.importKey('raw', raw.slice(1), { name: 'Ed25519' }, false, ['verify']);
      if (!(await crypto.subtle.verify({ name: 'Ed25519' }, pub, sig.slice(4), enc.encode(body + '\n')))) throw new Error('the checkpoint\'s signature is not the log\'s');
      out.signature = 'checked';
    } catch (e) {
      if (e instanceof DOMException && e.name === 'NotSupportedError') return out;
      throw e;
    }
    return out;
  }

  // --- the page ---

  const REASONS = {
    malformed: 'This is not a well-formed receipt.',
    unsupported_alg: 'The receipt uses an algorithm receipts do not use.',
    unknown_kid: 'It was signed by a key this site does not publish: it was not issued here, or by a key not (or no longer) listed.',
    kid_mismatch: 'The receipt names two different keys.',
    alg_key_mismatch: 'The receipt\'s algorithm is not its key\'s.',
    bad_signature: 'The signature does not match: the receipt was changed after it was signed, or was not signed by this key.',
    payload_hash_mismatch: 'The payload was changed after the receipt was signed.',
    receipt_id_mismatch: 'The receipt id does not match what was signed.',
    unsupported_browser: 'This browser cannot check this kind of signature.',
  };

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined) e.setAttribute(k, v);
    for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    return e;
  }

  async function fetchJSON(path) {
    const r = await fetch(path, { headers: { Accept: 'application/json' }, credentials: 'omit', cache: 'no-cache' });
    return { status: r.status, body: r.ok ? await r.json() : null };
  }

  function signer(jwk) {
    const own = document.body.dataset.org;
    if (jwk && jwk.org) return jwk.org === own && document.body.dataset.orgName ? document.body.dataset.orgName : (jwk.org_name || jwk.org);
    return 'the service (' + location.host + ')';
  }

  function show(state, title, rows, reason) {
    const box = document.getElementById('result');
    const dl = el('dl');
    for (const [k, v, id] of rows) if (v !== undefined && v !== '') dl.append(el('dt', {}, k), el('dd', id ? { id } : {}, v));
    box.replaceChildren(el('h2', {}, title), dl);
    box.dataset.state = state;
    box.dataset.reason = reason || '';
    box.hidden = false;
    return dl;
  }

  let run = 0;
  async function check(text) {
    const mine = ++run;
    const box = document.getElementById('result');
    box.dataset.state = 'checking';
    try {
      const jwks = await fetchJSON('/.well-known/jwks.json');
      if (jwks.status !== 200) throw new Failure('error', 'the published keys could not be read (' + jwks.status + ')');
      const v = await verifyReceipt(text, jwks.body);
      if (mine !== run) return;
      const pre = el('pre', {}, JSON.stringify(v.payload, null, 2));
      const dl = show('valid', '✓ Valid receipt', [['Signed by', signer(v.key), 'signed-by'], ['Key id', v.kid, 'kid'], ['Algorithm', v.alg],
        ['Receipt id', v.receiptId, 'receipt-id'], ['Transparency log', 'looking up its inclusion proof…', 'log']]);
      dl.append(el('dt', {}, 'Payload'), el('dd', {}, pre));
      const log = document.getElementById('log');
      try {
        const [proof, key] = await Promise.all([fetchJSON('/v1/log/proof/' + encodeURIComponent(v.receiptId)),
          fetch('/v1/log/key', { credentials: 'omit' }).then((r) => (r.ok ? r.text() : ''))]);
        if (mine !== run) return;
        if (proof.status === 200) {
          const inc = await checkInclusion(v.receiptId, proof.body, key);
          log.textContent = 'Included: leaf ' + inc.index + ' of ' + inc.size + ' in ' + inc.origin + ' (checkpoint signature ' + inc.signature + ')';
          log.dataset.state = 'included';
        } else if (proof.status === 404) {
          log.textContent = 'Not in the log yet (receipts are logged within seconds of signing), or not logged by this site.';
          log.dataset.state = 'not_logged';
        } else {
          log.textContent = 'The transparency log is not available here.';
          log.dataset.state = 'unavailable';
        }
      } catch (e) {
        log.textContent = 'The inclusion proof does not check: ' + e.message;
        log.dataset.state = 'bad_proof';
      }
    } catch (e) {
      if (mine !== run) return;
      const reason = e instanceof Failure ? e.reason : 'error';
      const state = reason === 'unknown_kid' ? 'unknown_key' : reason === 'error' ? 'error' : 'invalid';
      const title = state === 'unknown_key' ? '? Unknown signing key' : state === 'error' ? 'Could not check' : '✗ Not valid';
      show(state, title, [['Reason', reason, 'reason'], ['What it means', REASONS[reason] || ''], ['Detail', e.detail || e.message],
        ['Key id', e.kid || ''], ['Algorithm', e.alg || '']], reason);
    }
  }

  function start() {
    const paste = document.getElementById('paste');
    const drop = document.getElementById('drop');
    const file = document.getElementById('file');
    const readFile = (f) => { if (f) f.text().then((t) => { paste.value = t; return check(t); }); };
    document.getElementById('check').addEventListener('click', () => check(paste.value));
    file.addEventListener('change', () => readFile(file.files[0]));
    drop.addEventListener('dragover', (ev) => { ev.preventDefault(); drop.classList.add('over'); });
    drop.addEventListener('dragleave', () => drop.classList.remove('over'));
    drop.addEventListener('drop', (ev) => { ev.preventDefault(); drop.classList.remove('over'); readFile(ev.dataTransfer.files[0]); });
    drop.addEventListener('keydown', (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); file.click(); } });
    paste.addEventListener('paste', () => setTimeout(() => check(paste.value), 0));
  }

  window.CertNodeVerify = { jcs, canonicalize, parseJSON, verifyReceipt, checkInclusion };
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start); else start();
})();
