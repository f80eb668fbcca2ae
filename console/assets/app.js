// The CertNode dashboard: everything it shows comes from the public API,
// called with the signed-in user's session and the organization picked.
'use strict';

const S = { me: null, org: '', role: '', csrf: '', timers: [], charts: [] };
const REFRESH_MS = 2000;

// el builds an element; text is always set as text, never as HTML.
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const k of kids.flat()) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}

class APIError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(path, opts = {}) {
  const headers = { Accept: 'application/json' };
  if (S.org) headers['Certnode-Org'] = S.org;
  const method = opts.method || 'GET';
  if (opts.body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && S.csrf) headers['X-CSRF-Token'] = S.csrf;
  const r = await fetch(path, { method, headers, credentials: 'same-origin', body: opts.body === undefined ? undefined : JSON.stringify(opts.body) });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (!r.ok) {
    const e = data && data.error ? data.error : {};
    throw new APIError(r.status, e.code || '', e.message || r.statusText);
  }
  return data;
}

const fmt = new Intl.NumberFormat();
const num = (v) => (v === null || v === undefined ? '–' : fmt.format(v));
const ms = (v) => (v === null || v === undefined ? '–' : fmt.format(v) + ' ms');
const when = (t) => (t ? new Date(t).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z') : '');
const iso = (d) => d.toISOString().replace(/\.\d+Z$/, 'Z');
const qs = (o) => Object.entries(o).filter(([, v]) => v !== '' && v !== undefined && v !== null)
  .map(([k, v]) => encodeURIComponent(k) + '=' + encodeURIComponent(v)).join('&');

// The sections, and the roles that see each.
const ALL = ['owner', 'admin', 'developer', 'viewer', 'billing'];
const PAGES = [
  { id: 'overview', title: 'Overview', roles: ALL, render: overview },
  { id: 'requests', title: 'Requests', roles: ALL, render: requests },
  { id: 'jobs', title: 'Jobs', roles: ALL, render: jobs },
  { id: 'webhooks', title: 'Webhooks', roles: ALL, render: webhooks },
  { id: 'reports', title: 'Reports', roles: ALL, render: reports },
  { id: 'exports', title: 'Exports', roles: ALL, render: exports },
  { id: 'usage', title: 'Usage', roles: ['owner', 'admin', 'billing'], render: usage },
  { id: 'invoices', title: 'Invoices', roles: ['owner', 'billing'], render: invoices },
  { id: 'keys', title: 'API keys', roles: ['owner', 'admin'], render: keys },
  { id: 'domains', title: 'Domains', roles: ALL, render: domains },
  { id: 'audit', title: 'Audit', roles: ['owner', 'admin'], render: audit },
  { id: 'security', title: 'Security', roles: ['owner', 'admin'], render: security },
  { id: 'branding', title: 'Branding', roles: ['owner', 'admin'], render: branding },
];

function stopTimers() {
  S.timers.forEach(clearInterval);
  S.timers = [];
  S.charts.forEach((c) => c.destroy());
  S.charts = [];
}

function every(fn) {
  S.timers.push(setInterval(() => { if (!document.hidden) fn().catch(showError); }, REFRESH_MS));
}

function main() { return document.getElementById('main'); }

function showError(e) {
  // A 401 signs the page out, once: a request still on its way when the
  // user signed out must not draw the sign-in form again over what they
  // opened since (the forgotten-password form).
  if (e instanceof APIError && e.status === 401) { if (S.me) signedOut(); return; }
  const box = document.getElementById('error') || main().appendChild(el('p', { id: 'error', class: 'error', role: 'alert' }));
  box.textContent = e.message || String(e);
}

// hashRoute is the page a link names: #overview, or, as emailed links
// write them, #/invitations/accept?token=...
function hashRoute() {
  const h = location.hash.slice(1).replace(/^\//, '');
  const [path, query] = h.split('?');
  return { path, params: new URLSearchParams(query || '') };
}

async function start() {
  // The links of invitation and reset emails open their forms, signed in
  // or not.
  const { path, params } = hashRoute();
  if (path === 'invitations/accept' || path === 'password-reset') { accountForm(path, params.get('token') || ''); return; }
  try {
    const me = await api('/v1/me');
    S.me = me.user;
    S.csrf = me.csrf_token;
  } catch (e) {
    if (e instanceof APIError && e.status === 401) { signedOut(); return; }
    showError(e);
    return;
  }
  const orgs = S.me.memberships.map((m) => m.org);
  if (orgs.length === 0) { main().replaceChildren(el('p', { text: 'You are not a member of any organization yet.' })); return; }
  const saved = localStorage.getItem('certnode.org');
  pickOrg(orgs.includes(saved) ? saved : orgs[0]);
}

function signedOut() {
  stopTimers();
  S.me = null; S.org = ''; S.role = '';
  // On an organization's custom domain, its sign-in page wears its brand.
  // data-host-brand says once the answer is in.
  api('/v1/branding/host').then((o) => { brand(o); document.body.dataset.hostBrand = o.id; }, () => { document.body.dataset.hostBrand = ''; });
  document.getElementById('nav').hidden = true;
  document.getElementById('who').hidden = true;
  const msg = el('p', { class: 'error', role: 'alert', id: 'login-error' });
  const form = el('form', { class: 'login', id: 'login', 'aria-labelledby': 'login-title' },
    el('h1', { id: 'login-title', text: 'Sign in' }),
    el('label', {}, 'Email', el('input', { type: 'email', id: 'email', name: 'email', autocomplete: 'username', required: true })),
    el('label', {}, 'Password', el('input', { type: 'password', id: 'password', name: 'password', autocomplete: 'current-password', required: true })),
    el('button', { type: 'submit', text: 'Sign in' }), msg,
    el('p', {}, el('a', { href: '#', id: 'forgot', text: 'Forgot your password?', onclick: (ev) => { ev.preventDefault(); forgotForm(); } })));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    msg.textContent = '';
    try {
      await api('/v1/auth/login', { method: 'POST', body: { email: form.email.value, password: form.password.value } });
      start();
    } catch (e) { msg.textContent = e.message; }
  });
  main().replaceChildren(form);
}

async function pickOrg(org) {
  S.org = org;
  S.role = (S.me.memberships.find((m) => m.org === org) || {}).role || '';
  localStorage.setItem('certnode.org', org);
  const sel = document.getElementById('org-select');
  sel.replaceChildren(...S.me.memberships.map((m) => el('option', { value: m.org, selected: m.org === org, text: m.org })));
  document.getElementById('who').hidden = false;
  try { brand(await api('/v1/orgs/' + encodeURIComponent(org))); } catch (e) { showError(e); }
  const nav = document.getElementById('nav');
  nav.replaceChildren(...PAGES.filter((p) => p.roles.includes(S.role)).map((p) => el('a', { href: '#' + p.id, id: 'nav-' + p.id, text: p.title })));
  nav.hidden = false;
  route();
}

// brand applies the organization's branding (its settings): name, logo,
// favicon, palette, and its style sheet (custom CSS), served by this site.
function brand(o) {
  const s = o.settings || {};
  const name = s.display_name || o.name || o.id;
  document.getElementById('org-name').textContent = name;
  document.title = name + ' · CertNode';
  const logo = document.getElementById('logo');
  if (s.logo_url && /^(https:|data:image\/)/.test(s.logo_url)) { logo.src = s.logo_url; logo.alt = name; logo.hidden = false; } else { logo.hidden = true; }
  const c = s.colors || {};
  const color = (v, d) => (/^#[0-9a-fA-F]{6}$/.test(v || '') ? v : d);
  const root = document.documentElement.style;
  root.setProperty('--brand', color(c.primary || s.brand_color, '#1f5fbf'));
  root.setProperty('--accent', color(c.accent, '#0a7ea4'));
  root.setProperty('--bg', color(c.background, '#ffffff'));
  root.setProperty('--fg', color(c.text, '#1b1f24'));
  const icon = document.getElementById('favicon');
  icon.href = /^https:/.test(s.favicon_url || '') ? s.favicon_url : 'data:,';
  document.getElementById('org-css')?.remove();
  if (s.custom_css) {
    document.head.append(el('link', { id: 'org-css', rel: 'stylesheet', href: '/v1/branding/style.css?' + qs({ org: o.id, v: o.updated_at }) }));
  }
}

function route() {
  if (!S.me) return;
  stopTimers();
  const allowed = PAGES.filter((p) => p.roles.includes(S.role));
  const id = hashRoute().path.split('/')[0];
  const page = allowed.find((p) => p.id === id) || allowed[0];
  document.querySelectorAll('#nav a').forEach((a) => {
    if (a.id === 'nav-' + page.id) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  });
  const section = el('section', { 'aria-labelledby': 'page-title', 'data-page': page.id }, el('h1', { id: 'page-title', text: page.title }));
  main().replaceChildren(section);
  // data-ready tells a reader (and the tests) that the first load is shown.
  page.render(section).then(() => { section.dataset.ready = '1'; }, showError);
}

// tile shows one number; data-value holds it unformatted (for tests).
function tile(id, label, value, text, bad) {
  return el('div', { class: 'tile' + (bad ? ' bad' : ''), 'data-testid': id, 'data-value': value === null ? '' : value },
    el('span', { class: 'label', text: label }), el('span', { class: 'value', text }));
}

const STROKES = ['#1f5fbf', '#b42318', '#1a7f37', '#9a6700', '#8250df', '#0a7ea4', '#cf222e', '#57606a'];
const DASHES = [[], [6, 3], [2, 2], [8, 2, 2, 2], [4, 4], [1, 3], [10, 4], [3, 6]];

// chart draws a series answer with uPlot inside an accessible figure: a
// caption summing it up and a table of the same numbers. It returns a
// function that takes a new answer.
function chart(parent, id, title, opts = {}) {
  const fig = el('figure', { 'aria-labelledby': id + '-cap', 'data-testid': id });
  const cap = el('figcaption', { id: id + '-cap' });
  const box = el('div', { class: 'chart', role: 'img', 'aria-labelledby': id + '-cap' });
  const details = el('details', {}, el('summary', { text: 'Table' }));
  fig.append(cap, box, details);
  parent.append(fig);
  let plot = null;
  let shape = '';
  return (ans) => {
    const xs = ans.timestamps.map((t) => Date.parse(t) / 1000);
    const lines = ans.series;
    const label = (l) => (l.group !== undefined && l.group !== '' ? l.group : l.metric) + (ans.series.some((o) => o.metric !== l.metric) && l.group ? ' ' + l.metric : '');
    const data = [xs, ...lines.map((l) => l.values)];
    const total = lines.reduce((s, l) => s + l.values.reduce((a, v) => a + (v || 0), 0), 0);
    fig.dataset.points = String(total);
    // Counts add up over the buckets; percentiles do not: show their peak.
    const sum = (l) => (/latency/.test(l.metric) ? 'peak ' + ms(Math.max(0, ...l.values.filter((v) => v !== null)))
      : num(Math.round(l.values.reduce((a, v) => a + (v || 0), 0) * 10) / 10));
    cap.textContent = title + ': ' + (lines.length ? lines.map((l) => label(l) + ' ' + sum(l)).join(', ') : 'no data') +
      ' (' + when(ans.from) + ' to ' + when(ans.to) + ', by ' + ans.granularity + ')';
    const next = lines.map(label).join('|');
    const width = Math.max(280, box.clientWidth || parent.clientWidth || 600);
    if (!plot || next !== shape) {
      if (plot) plot.destroy();
      shape = next;
      plot = new uPlot({
        width, height: 220,
        series: [{}, ...lines.map((l, i) => ({ label: label(l), stroke: STROKES[i % STROKES.length], dash: DASHES[i % DASHES.length], width: 2, spanGaps: false,
          fill: opts.bars ? STROKES[i % STROKES.length] + '99' : undefined, paths: opts.bars ? uPlot.paths.bars({ size: [0.8 / Math.max(1, lines.length), 60], align: 0 }) : undefined }))],
        axes: [{}, { size: 60 }],
        legend: { live: false },
      }, data, box);
      S.charts.push(plot);
    } else {
      plot.setData(data);
    }
    const head = el('tr', {}, el('th', { scope: 'col', text: 'Time (UTC)' }), ...lines.map((l) => el('th', { scope: 'col', class: 'num', text: label(l) })));
    const rows = xs.map((x, i) => el('tr', {}, el('td', { text: when(x * 1000) }), ...lines.map((l) => el('td', { class: 'num', text: l.values[i] === null ? '–' : num(l.values[i]) }))));
    const table = el('div', { class: 'scroll' }, el('table', {}, el('thead', {}, head), el('tbody', {}, rows.slice(-120))));
    details.replaceChildren(el('summary', { text: 'Table' }), table);
  };
}

function table(cols, rows, empty) {
  if (!rows.length) return el('p', { class: 'empty', text: empty || 'Nothing yet.' });
  return el('div', { class: 'scroll' }, el('table', {},
    el('thead', {}, el('tr', {}, cols.map((c) => el('th', { scope: 'col', class: c.num ? 'num' : null, text: c.label })))),
    el('tbody', {}, rows.map((r) => el('tr', {}, cols.map((c) => el('td', { class: c.num ? 'num' : null, text: c.value(r) })))))));
}

// --- pages ---

async function overview(sec) {
  const period = el('p', { class: 'period', id: 'overview-period' });
  const tiles = el('div', { class: 'tiles', 'aria-live': 'polite', id: 'overview-tiles' });
  sec.append(period, tiles);
  const reqs = chart(sec, 'chart-requests', 'Requests per minute by status, last hour');
  const lat = chart(sec, 'chart-latency', 'Latency per minute, last hour');
  const load = async () => {
    const now = new Date();
    const from = new Date(now.getTime() - 24 * 3600e3);
    const s = await api('/v1/analytics/summary?' + qs({ from: iso(from), to: iso(now) }));
    period.textContent = 'Last 24 hours: ' + when(s.from) + ' to ' + when(s.to) + ' (UTC, whole hours)';
    period.dataset.from = s.from; period.dataset.to = s.to;
    tiles.replaceChildren(
      tile('requests-total', 'Requests', s.requests, num(s.requests)),
      tile('signed-total', 'Receipts signed', s.signed, num(s.signed)),
      tile('valid-total', 'Verified valid', s.valid, num(s.valid)),
      tile('invalid-total', 'Verification failures', s.invalid, num(s.invalid), s.invalid > 0),
      tile('failed-total', 'Failed', s.failed, num(s.failed), s.failed > 0),
      tile('latency-p50', 'Latency p50', s.latency_ms.p50, ms(s.latency_ms.p50)),
      tile('latency-p99', 'Latency p99', s.latency_ms.p99, ms(s.latency_ms.p99)),
      tile('webhooks-delivered', 'Webhooks delivered', s.webhooks.delivered, num(s.webhooks.delivered)),
      tile('webhooks-failed', 'Webhook attempts failed', s.webhooks.failed + s.webhooks.retrying, num(s.webhooks.failed + s.webhooks.retrying), s.webhooks.failed > 0));
    const hour = { from: iso(new Date(now.getTime() - 3600e3)), to: iso(now), granularity: 'minute' };
    reqs(await api('/v1/analytics/series?' + qs({ ...hour, metric: 'requests', group_by: 'status' })));
    lat(await api('/v1/analytics/series?' + qs({ ...hour, metric: 'latency_p50,latency_p99' })));
  };
  await load();
  every(load);
}

const RANGES = { '1h': 3600e3, '24h': 24 * 3600e3, '7d': 7 * 24 * 3600e3, '30d': 30 * 24 * 3600e3 };

async function requests(sec) {
  const f = el('form', { class: 'filters', 'aria-label': 'Filters' },
    el('label', {}, 'Range', el('select', { name: 'range' }, Object.keys(RANGES).map((r) => el('option', { value: r, selected: r === '24h', text: r })))),
    el('label', {}, 'Kind', el('select', { name: 'kind' }, ['', 'sign', 'verify'].map((k) => el('option', { value: k, text: k || 'any' })))),
    el('label', {}, 'Status', el('select', { name: 'status' }, ['', 'signed', 'valid', 'invalid', 'failed'].map((k) => el('option', { value: k, text: k || 'any' })))),
    el('label', {}, 'API key', el('input', { name: 'key_id', placeholder: 'cnk_…', size: 16 })),
    el('label', {}, 'Job', el('input', { name: 'job_id', placeholder: 'job_…', size: 16 })),
    el('button', { type: 'submit', text: 'Apply' }));
  sec.append(f);
  const byStatus = chart(sec, 'chart-by-status', 'Requests by status');
  const lat = chart(sec, 'chart-explorer-latency', 'Latency percentiles');
  const reasons = el('div', { id: 'top-reasons' });
  const keysBox = el('div', { id: 'top-keys' });
  const drill = el('div', { id: 'drilldown' });
  sec.append(el('h2', { text: 'Top failure reasons' }), reasons, el('h2', { text: 'Busiest API keys' }), keysBox,
    el('h2', { text: 'Matching requests, newest first' }), drill);
  const requestCols = [{ label: 'Received', value: (r) => when(r.received_at) }, { label: 'Kind', value: (r) => r.kind }, { label: 'Status', value: (r) => r.status },
    { label: 'Reason', value: (r) => r.reason || '' }, { label: 'Key', value: (r) => r.key_id || '' }, { label: 'Job', value: (r) => r.job_id || '' },
    { label: 'Latency', num: true, value: (r) => ms(r.latency_ms) }, { label: 'Receipt', value: (r) => r.receipt_id || '' }];
  const drillDown = async (params, cursor, rows) => {
    const page = await api('/v1/analytics/requests?' + qs({ ...params, limit: 50, cursor }));
    const all = rows.concat(page.data);
    drill.replaceChildren(table(requestCols, all, 'No requests match.'));
    drill.querySelectorAll('tbody tr').forEach((tr) => tr.setAttribute('data-testid', 'request-row'));
    if (page.has_more) {
      drill.append(el('button', { type: 'button', text: 'More', onclick: () => drillDown(params, page.next_cursor, all).catch(showError) }));
    }
  };
  const load = async () => {
    const now = new Date();
    const base = { from: iso(new Date(now.getTime() - RANGES[f.range.value])), to: iso(now), kind: f.kind.value, key_id: f.key_id.value.trim(), job_id: f.job_id.value.trim() };
    byStatus(await api('/v1/analytics/series?' + qs({ ...base, status: f.status.value, metric: 'requests', group_by: 'status' })));
    lat(await api('/v1/analytics/series?' + qs({ ...base, status: f.status.value, metric: 'latency_p50,latency_p90,latency_p99' })));
    const top = await api('/v1/analytics/top?' + qs({ ...base, status: f.status.value || 'invalid,failed', group_by: 'reason' }));
    reasons.replaceChildren(table([{ label: 'Reason', value: (r) => r.group || '(none)' }, { label: 'Requests', num: true, value: (r) => num(r.values[0]) }], top.rows, 'No failures in this range.'));
    const tk = await api('/v1/analytics/top?' + qs({ ...base, status: f.status.value, group_by: 'key_id', metric: 'requests,latency_p99' }));
    keysBox.replaceChildren(table([{ label: 'Key', value: (r) => r.group || '(none)' }, { label: 'Requests', num: true, value: (r) => num(r.values[0]) },
      { label: 'p99 latency', num: true, value: (r) => ms(r.values[1]) }], tk.rows));
    await drillDown({ ...base, status: f.status.value }, '', []);
  };
  f.addEventListener('submit', (ev) => { ev.preventDefault(); load().catch(showError); });
  await load();
}

// progress is a bar of done out of total, readable as text too.
function progress(done, total, label) {
  const pct = total > 0 ? Math.min(100, Math.floor((done / total) * 100)) : 0;
  const fill = el('span');
  fill.style.width = pct + '%'; // CSSOM: the policy forbids style attributes
  return el('div', { class: 'bar', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': pct, 'aria-label': label, 'data-done': done, 'data-total': total }, fill);
}

async function jobs(sec) {
  const list = el('div', { id: 'jobs' });
  sec.append(list);
  const load = async () => {
    const page = await api('/v1/jobs?limit=50');
    list.replaceChildren(table([{ label: 'Job', value: (j) => j.job_id }, { label: 'Type', value: (j) => j.type }, { label: 'State', value: (j) => j.state },
      { label: 'Progress', value: (j) => num(j.done) + ' of ' + num(j.total) }, { label: 'Valid', num: true, value: (j) => num(j.valid) },
      { label: 'Invalid', num: true, value: (j) => num(j.invalid) }, { label: 'Failed', num: true, value: (j) => num(j.failed) }, { label: 'Started', value: (j) => when(j.created_at) }],
    page.data, 'No bulk jobs yet.'));
    // A bar in each row's progress cell.
    list.querySelectorAll('tbody tr').forEach((tr, i) => {
      const j = page.data[i];
      tr.dataset.job = j.job_id;
      tr.children[3].append(progress(j.done, j.total, 'Job ' + j.job_id + ' progress'));
    });
  };
  await load();
  every(load);
}

async function webhooks(sec) {
  const attempts = chart(sec, 'chart-webhooks', 'Delivery attempts by outcome, last 24 hours');
  const list = el('div', { id: 'deliveries' });
  sec.append(el('h2', { text: 'Latest deliveries' }), list);
  const load = async () => {
    const now = new Date();
    attempts(await api('/v1/analytics/series?' + qs({ from: iso(new Date(now.getTime() - 24 * 3600e3)), to: iso(now), granularity: 'hour', metric: 'webhook_attempts', group_by: 'outcome' })));
    const page = await api('/v1/webhooks/deliveries?limit=50');
    list.replaceChildren(table([{ label: 'Message', value: (d) => d.id }, { label: 'Event', value: (d) => d.event_type }, { label: 'Endpoint', value: (d) => d.endpoint_id },
      { label: 'Status', value: (d) => d.status }, { label: 'Attempts', num: true, value: (d) => num(d.attempts) }, { label: 'Last attempt', value: (d) => when(d.last_attempt_at) }],
    page.data, 'No deliveries yet.'));
  };
  await load();
  every(load);
}

const WRITERS = ['owner', 'admin', 'developer'];
const METRICS = ['requests', 'bytes', 'latency_p50', 'latency_p90', 'latency_p99', 'webhook_attempts', 'webhook_latency_p50', 'webhook_latency_p99'];
const DIMS = { requests: ['', 'kind', 'status', 'reason', 'kid', 'key_id', 'job_id'], webhook: ['', 'endpoint_id', 'event_type', 'outcome'] };

async function reports(sec) {
  const listBox = el('div', { id: 'report-list' });
  const view = el('div', { id: 'report-view', 'aria-live': 'polite' });
  const orgPath = '/v1/orgs/' + encodeURIComponent(S.org) + '/reports';
  const open = async (r) => {
    // A report saved just now reaches the API's copy of the state within moments.
    let run;
    for (let i = 0; ; i++) {
      try { run = await api('/v1/reports/' + encodeURIComponent(r.id) + '/run'); break; } catch (e) {
        if (!(e instanceof APIError && e.status === 404) || i >= 10) throw e;
        await new Promise((res) => setTimeout(res, 300));
      }
    }
    view.replaceChildren(el('h2', { text: r.name }), el('p', { class: 'period', text: (r.description ? r.description + ' · ' : '') + 'Ran at ' + when(run.ran_at) }),
      el('p', { class: 'downloads' }, 'Download: ', [...FORMATS, 'pdf'].map((f) => el('a', { id: 'report-' + f, href: '/v1/reports/' + encodeURIComponent(r.id) + '/run?' + qs({ format: f, org: S.org }), download: '', text: f }))));
    view.dataset.report = r.id;
    if (r.chart === 'table') {
      const cols = [{ label: 'Time (UTC)', value: (i) => when(run.series.timestamps[i]) }, ...run.series.series.map((l) => ({ label: (l.group || '') + ' ' + l.metric, num: true, value: (i) => num(l.values[i]) }))];
      view.append(table(cols, run.series.timestamps.map((_, i) => i)));
      view.dataset.points = String(run.series.series.reduce((a, l) => a + l.values.reduce((b, v) => b + (v || 0), 0), 0));
    } else {
      chart(view, 'chart-report', r.name, { bars: r.chart === 'bar' })(run.series);
    }
  };
  const load = async () => {
    const list = await api(orgPath);
    listBox.replaceChildren(table([{ label: 'Report', value: (r) => r.name }, { label: 'Metrics', value: (r) => r.query.metrics.join(', ') + (r.query.group_by ? ' by ' + r.query.group_by : '') },
      { label: 'Range', value: (r) => r.query.range }, { label: 'Chart', value: (r) => r.chart }, { label: 'Schedule', value: (r) => r.schedule || 'on demand' }, { label: '', value: () => '' }],
    list.reports, 'No reports saved yet.'));
    listBox.querySelectorAll('tbody tr').forEach((tr, i) => {
      const r = list.reports[i];
      tr.dataset.report = r.id;
      tr.lastChild.append(el('button', { type: 'button', text: 'Open', 'aria-label': 'Open ' + r.name, onclick: () => open(r).catch(showError) }));
    });
  };
  if (WRITERS.includes(S.role)) {
    const metric = el('select', { name: 'metric' }, METRICS.map((m) => el('option', { value: m, text: m })));
    const group = el('select', { name: 'group_by' });
    const fillGroups = () => group.replaceChildren(...DIMS[metric.value.startsWith('webhook') ? 'webhook' : 'requests'].map((d) => el('option', { value: d, text: d || 'none' })));
    metric.addEventListener('change', fillGroups);
    fillGroups();
    const msg = el('p', { class: 'error', role: 'alert' });
    const f = el('form', { class: 'filters', id: 'report-form', 'aria-label': 'New report' },
      el('label', {}, 'Name', el('input', { name: 'name', required: true, maxlength: 200 })),
      el('label', {}, 'Metric', metric), el('label', {}, 'Group by', group),
      el('label', {}, 'Range', el('select', { name: 'range' }, ['last_hour', 'last_24h', 'last_7d', 'last_30d', 'this_month', 'last_month'].map((r) => el('option', { value: r, selected: r === 'last_24h', text: r })))),
      el('label', {}, 'Chart', el('select', { name: 'chart' }, ['line', 'bar', 'table'].map((c) => el('option', { value: c, text: c })))),
      el('label', {}, 'Schedule', el('select', { name: 'schedule' }, ['', 'daily', 'weekly', 'monthly'].map((c) => el('option', { value: c, text: c || 'on demand' })))),
      el('button', { type: 'submit', text: 'Save report' }), msg);
    f.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      msg.textContent = '';
      try {
        const q = { metrics: [metric.value], range: f.range.value };
        if (group.value) q.group_by = group.value;
        const r = await api(orgPath, { method: 'POST', body: { name: f.name.value, query: q, chart: f.chart.value, schedule: f.schedule.value } });
        f.reset(); fillGroups();
        await load();
        await open(r);
      } catch (e) { msg.textContent = e.message; }
    });
    sec.append(el('h2', { text: 'New report' }), f);
  }
  sec.append(el('h2', { text: 'Saved reports' }), listBox, view);
  await load();
}

async function usage(sec) {
  const now = new Date();
  const start = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1));
  const end = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1));
  const [rep, org] = await Promise.all([api('/v1/usage?' + qs({ from: iso(start), to: iso(now), granularity: 'day' })), api('/v1/orgs/' + encodeURIComponent(S.org))]);
  const used = rep.totals.signed + rep.totals.valid + rep.totals.invalid;
  const limit = (org.limits || {}).monthly_receipts || 0;
  const elapsed = Math.max((now - start) / (end - start), 1 / (31 * 24));
  const forecast = Math.round(used / elapsed);
  sec.append(el('p', { class: 'period', text: 'This month: ' + when(start) + ' to ' + when(end) + ' (UTC). Billable: signed, valid and invalid.' }),
    el('div', { class: 'tiles' },
      tile('usage-used', 'Billable so far', used, num(used)),
      tile('usage-forecast', 'Forecast at month end', forecast, num(forecast), limit > 0 && forecast > limit),
      tile('usage-limit', 'Plan allowance', limit || null, limit ? num(limit) : 'unlimited')));
  if (limit > 0) {
    const pct = Math.min(100, Math.round((used / limit) * 100));
    sec.append(progress(used, limit, 'Allowance used'), el('p', { text: pct + '% of the allowance used' }));
  }
  const days = { granularity: 'day', from: rep.from, to: rep.to, timestamps: rep.rows.map((r) => r.start), series: [{ metric: 'billable', values: rep.rows.map((r) => r.signed + r.valid + r.invalid) }] };
  chart(sec, 'chart-usage', 'Billable requests per day')(days);
}

async function invoices(sec) {
  const list = await api('/v1/invoices');
  sec.append(table([{ label: 'Period', value: (i) => i.period }, { label: 'Status', value: (i) => i.status }, { label: 'Plan', value: (i) => i.plan.name },
    { label: 'Requests', num: true, value: (i) => num(i.usage.requests) }, { label: 'Total', num: true, value: (i) => (i.total / 100).toFixed(2) + ' ' + i.currency }],
  list.invoices, 'No invoices yet.'));
}

async function keys(sec) {
  const list = await api('/v1/orgs/' + encodeURIComponent(S.org) + '/keys');
  sec.append(table([{ label: 'Key', value: (k) => k.id }, { label: 'Name', value: (k) => k.name || '' }, { label: 'Scopes', value: (k) => k.scopes.join(', ') },
    { label: 'Created', value: (k) => when(k.created_at) }, { label: 'Last used', value: (k) => when(k.last_used_at) || 'never' },
    { label: 'State', value: (k) => (k.revoked_at ? 'revoked' : k.suspended_at ? 'suspended' : k.expires_at && Date.parse(k.expires_at) < Date.now() ? 'expired' : 'active') }],
  list.keys, 'No API keys.'));
}

const FORMATS = ['csv', 'ndjson', 'json', 'arrow', 'parquet'];
const KINDS = ['results', 'receipts', 'usage', 'webhook_attempts'];

// exports downloads the organization's data at once (a link the browser
// follows with the session) or in the background, with a progress bar and
// an expiring link once done.
async function exports(sec) {
  const now = new Date();
  const day = (d) => d.toISOString().slice(0, 10);
  const kinds = ['owner', 'admin'].includes(S.role) ? [...KINDS, 'audit_events'] : KINDS;
  const msg = el('p', { role: 'status', id: 'export-status' });
  const link = el('a', { id: 'export-download', class: 'button', download: '', text: 'Download now' });
  const f = el('form', { class: 'filters', id: 'export-form', 'aria-label': 'Export' },
    el('label', {}, 'Data', el('select', { name: 'kind' }, kinds.map((k) => el('option', { value: k, text: k.replace('_', ' ') })))),
    el('label', {}, 'Format', el('select', { name: 'format' }, FORMATS.map((x) => el('option', { value: x, text: x })))),
    el('label', {}, 'From', el('input', { type: 'date', name: 'from', value: day(new Date(now.getTime() - 7 * 86400e3)), required: true })),
    el('label', {}, 'To (included)', el('input', { type: 'date', name: 'to', value: day(now), required: true })),
    el('label', { class: 'check' }, el('input', { type: 'checkbox', name: 'receipt' }), 'With receipts'),
    link, el('button', { type: 'submit', id: 'export-job', text: 'Export in background' }), msg);
  const request = () => {
    const to = new Date(f.to.value + 'T00:00:00Z');
    to.setUTCDate(to.getUTCDate() + 1);
    const r = { kind: f.kind.value, format: f.format.value, from: f.from.value + 'T00:00:00Z', to: iso(to) };
    if (f.receipt.checked && r.kind === 'results') r.receipt = true;
    return r;
  };
  // The link follows the form: the browser downloads it as any file.
  const relink = () => {
    const r = request();
    link.href = '/v1/exports/' + encodeURIComponent(r.kind) + '?' + qs({ format: r.format, from: r.from, to: r.to, receipt: r.receipt, org: S.org });
  };
  f.addEventListener('change', relink);
  relink();
  const jobsBox = el('div', { id: 'export-jobs' });
  const load = async () => {
    const list = await api('/v1/export-jobs');
    jobsBox.replaceChildren(table([{ label: 'Started', value: (j) => when(j.created_at) }, { label: 'Data', value: (j) => j.request.kind + ' · ' + j.request.format },
      { label: 'Status', value: (j) => j.status }, { label: 'Rows', num: true, value: (j) => num(j.rows) }, { label: 'File', value: (j) => (j.download_url ? '' : j.error || '') }],
    list.exports, 'No exports yet.'));
    // A bar in each row's status cell, and the link once done.
    jobsBox.querySelectorAll('tbody tr').forEach((tr, i) => {
      const j = list.exports[i];
      tr.dataset.export = j.id;
      tr.dataset.status = j.status;
      tr.children[2].append(progress(Math.round(j.progress * 1000), 1000, 'Export ' + j.id + ' progress'));
      if (j.download_url) tr.children[4].append(el('a', { href: j.download_url, 'data-testid': 'export-file', id: 'export-file-' + j.id, download: '', text: j.file_name }));
    });
  };
  f.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const j = await api('/v1/export-jobs', { method: 'POST', body: request() });
      msg.textContent = 'Export ' + j.id + ' queued.';
      await load();
    } catch (e) { msg.textContent = e.message; }
  });
  sec.append(el('p', { text: 'Files of this organization’s data. Large exports run in the background: their link works for 15 minutes, and the file is kept a day.' }), f,
    el('h2', { text: 'Background exports' }), jobsBox);
  await load();
  every(load);
}

// download saves an answer of the API as a file, named as the server says.
async function download(path, body, accept) {
  const r = await fetch(path, { method: 'POST', credentials: 'same-origin', body: JSON.stringify(body),
    headers: { 'Content-Type': 'application/json', Accept: accept, 'Certnode-Org': S.org, 'X-CSRF-Token': S.csrf } });
  if (!r.ok) {
    let msg = r.statusText;
    try { msg = (await r.json()).error.message; } catch (_) { /* not JSON */ }
    throw new APIError(r.status, '', msg);
  }
  const name = (/filename="([^"]+)"/.exec(r.headers.get('Content-Disposition') || '') || [])[1] || 'download';
  const url = URL.createObjectURL(await r.blob());
  const a = el('a', { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

async function audit(sec) {
  const now = new Date();
  const day = (d) => d.toISOString().slice(0, 10);
  const msg = el('p', { role: 'status', id: 'compliance-status' });
  const f = el('form', { class: 'filters', id: 'compliance-form', 'aria-label': 'Compliance report' },
    el('label', {}, 'From', el('input', { type: 'date', name: 'from', value: day(new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1))), required: true })),
    el('label', {}, 'To (included)', el('input', { type: 'date', name: 'to', value: day(now), required: true })),
    el('button', { type: 'submit', value: 'application/json', id: 'compliance-json', text: 'Signed JSON' }),
    el('button', { type: 'submit', value: 'application/pdf', id: 'compliance-pdf', text: 'PDF' }), msg);
  f.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const to = new Date(f.to.value + 'T00:00:00Z');
    to.setUTCDate(to.getUTCDate() + 1);
    const end = to > new Date() ? new Date() : to;
    msg.textContent = 'Signing the report…';
    try {
      await download('/v1/compliance/reports', { from: f.from.value + 'T00:00:00Z', to: iso(end) }, ev.submitter.value);
      msg.textContent = 'Downloaded. Check it with certnode verify (see the README).';
    } catch (e) { msg.textContent = e.message; }
  });
  const since = iso(new Date(now.getTime() - 365 * 86400e3));
  const events = (f) => el('a', { id: 'audit-' + f, href: '/v1/exports/audit_events?' + qs({ format: f, from: since, to: iso(now), org: S.org }), download: '', text: f });
  sec.append(el('h2', { text: 'Compliance report' }), el('p', { text: 'A report for auditors, signed as a CertNode receipt: receipts per signing key, failures, latency, webhooks, users, API keys and these events.' }), f,
    el('h2', { text: 'Events' }), el('p', { class: 'downloads' }, 'Download the last year’s: ', ['csv', 'pdf', 'parquet'].map(events)));
  const list = await api('/v1/orgs/' + encodeURIComponent(S.org) + '/audit?limit=200');
  sec.append(table([{ label: 'When', value: (e) => when(e.at) }, { label: 'Action', value: (e) => e.action }, { label: 'Who', value: (e) => e.actor.kind + (e.actor.id ? ' ' + e.actor.id : '') },
    { label: 'From', value: (e) => e.actor.addr || '' }, { label: 'Target', value: (e) => e.target || '' }], list.events, 'No events.'));
}

// security lists the threat detectors' findings of the last 30 days; an
// alert about a key offers to suspend it, on the admin's confirmation.
async function security(sec) {
  const list = el('div', { id: 'alerts', 'aria-live': 'polite' });
  const msg = el('p', { role: 'status', id: 'alerts-status' });
  sec.append(el('p', { text: 'What the threat detectors flagged: bursts of refused credentials, credential stuffing, keys used from new addresses or far above their usual volume, spikes of failed verifications, webhook endpoints changed and then flooded. Each alert is also a security.alert webhook and an event in the audit log.' }), msg, list);
  const load = async () => {
    const now = new Date();
    const ans = await api('/v1/security/alerts?' + qs({ from: iso(new Date(now.getTime() - 30 * 86400e3)), to: iso(new Date(now.getTime() + 1000)), limit: 200 }));
    list.replaceChildren(table([{ label: 'When', value: (a) => when(a.at) }, { label: 'Detector', value: (a) => a.reason }, { label: 'About', value: (a) => a.target },
      { label: 'Finding', value: (a) => a.detail || '' }, { label: 'Response', value: () => '' }], ans.alerts, 'No alerts in the last 30 days.'));
    list.querySelectorAll('tbody tr').forEach((tr, i) => {
      tr.setAttribute('data-testid', 'alert-row');
      const a = ans.alerts[i];
      const key = (a.target || '').startsWith('key:') ? a.target.slice(4) : '';
      if (!key.startsWith('cnk_')) return;
      tr.lastChild.append(el('button', { type: 'button', 'data-testid': 'suspend-key', text: 'Suspend ' + key, onclick: async (ev) => {
        if (!window.confirm('Suspend the API key ' + key + '? Requests with it are refused until it is resumed.')) return;
        try {
          await api('/v1/orgs/' + encodeURIComponent(S.org) + '/keys/' + encodeURIComponent(key) + '/suspend', { method: 'POST', body: { reason: 'security.alert ' + a.id } });
          msg.textContent = 'Key ' + key + ' suspended.';
          ev.target.disabled = true;
        } catch (e) { msg.textContent = e.message; }
      } }));
    });
  };
  await load();
  every(load);
}

// domains lists the organization's custom domains with their state and the
// DNS record that proves each; owners and admins add, verify and remove
// them. The list refreshes while a certificate is on its way.
async function domains(sec) {
  const orgPath = '/v1/orgs/' + encodeURIComponent(S.org) + '/domains';
  const write = ['owner', 'admin'].includes(S.role);
  const msg = el('p', { role: 'status', id: 'domains-status' });
  const listBox = el('div', { id: 'domains-list', 'aria-live': 'polite' });
  const load = async () => {
    const list = await api(orgPath);
    listBox.replaceChildren(table([{ label: 'Domain', value: (d) => d.name }, { label: 'State', value: (d) => d.state },
      { label: 'Record to publish', value: (d) => (d.dns_record ? d.dns_record.type + ' ' + d.dns_record.name + ' "' + d.dns_record.value + '"' : 'none: the CA checks the name itself (HTTP-01)') },
      { label: 'Details', value: (d) => d.reason || (d.cert_not_after ? 'certificate until ' + when(d.cert_not_after) : '') }, { label: '', value: () => '' }],
    list.domains, 'No custom domains yet.'));
    listBox.querySelectorAll('tbody tr').forEach((tr, i) => {
      const d = list.domains[i];
      tr.dataset.domain = d.name;
      tr.dataset.state = d.state;
      if (!write) return;
      const path = orgPath + '/' + encodeURIComponent(d.name);
      if (d.state === 'pending' || d.state === 'failed') {
        tr.lastChild.append(el('button', { type: 'button', 'data-testid': 'verify-domain', text: 'Verify', onclick: async () => {
          msg.textContent = 'Checking ' + d.name + '…';
          try {
            const v = await api(path + '/verify', { method: 'POST', body: {} });
            msg.textContent = d.name + ' is ' + v.state + '.';
          } catch (e) { msg.textContent = e.message; }
          await load();
        } }));
      }
      tr.lastChild.append(el('button', { type: 'button', 'data-testid': 'remove-domain', text: 'Remove', onclick: async () => {
        if (!window.confirm('Remove ' + d.name + '? It stops being served and its certificate is revoked.')) return;
        try { await api(path, { method: 'DELETE' }); msg.textContent = d.name + ' removed.'; } catch (e) { msg.textContent = e.message; }
        await load();
      } }));
    });
    return list.domains.some((d) => d.state === 'verified' || d.state === 'issuing');
  };
  sec.append(el('p', { text: 'Serve the API, the key set and the verification page on a name of your own. Add it, publish the TXT record shown (or, with HTTP verification, point the name at the service), then verify: a certificate follows, renewed on its own.' }));
  if (write) {
    const f = el('form', { class: 'filters', id: 'domain-form', 'aria-label': 'Add a domain' },
      el('label', {}, 'Domain', el('input', { name: 'name', required: true, maxlength: 253, placeholder: 'api.example.com' })),
      el('label', {}, 'Proof', el('select', { name: 'verification' }, el('option', { value: 'dns', text: 'DNS TXT record' }), el('option', { value: 'http', text: 'HTTP (the CA checks the name)' }))),
      el('button', { type: 'submit', text: 'Add domain' }));
    f.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        const d = await api(orgPath, { method: 'POST', body: { name: f.name.value, verification: f.verification.value } });
        msg.textContent = d.name + ' added: ' + d.reason;
        f.reset();
      } catch (e) { msg.textContent = e.message; }
      await load();
    });
    sec.append(f);
  }
  sec.append(msg, listBox);
  await load();
  every(load);
}

// accountForm takes an emailed link's token: it accepts an invitation (a
// new user names themselves and picks a password; an existing one proves
// it with theirs) or sets a new password, then offers to sign in. The
// token is in the link's fragment, which the browser never sends.
function accountForm(path, token) {
  stopTimers();
  document.getElementById('nav').hidden = true;
  const invite = path === 'invitations/accept';
  const msg = el('p', { class: 'error', role: 'alert', id: 'account-error' });
  const done = el('p', { role: 'status', id: 'account-done' });
  const form = el('form', { class: 'login', id: 'account-form', 'aria-labelledby': 'account-title' },
    el('h1', { id: 'account-title', text: invite ? 'Join the organization' : 'Choose a new password' }),
    invite ? el('p', { text: 'New here? Give your name and choose a password. Already a user? Enter your password.' }) : null,
    invite ? el('label', {}, 'Name', el('input', { name: 'name', autocomplete: 'name', maxlength: 200 })) : null,
    el('label', {}, 'Password', el('input', { type: 'password', name: 'password', autocomplete: invite ? 'current-password' : 'new-password', required: true, minlength: 12 })),
    el('button', { type: 'submit', text: invite ? 'Accept the invitation' : 'Set the password' }), msg, done);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    msg.textContent = '';
    try {
      if (invite) {
        const r = await api('/v1/auth/invitations/accept', { method: 'POST', body: { token, name: form.name.value, password: form.password.value } });
        done.textContent = 'You joined ' + r.org + ' as ' + r.role + '. Sign in to continue.';
      } else {
        await api('/v1/auth/password-reset', { method: 'POST', body: { token, password: form.password.value } });
        done.textContent = 'Your password is changed. Sign in with it.';
      }
      form.querySelector('button').disabled = true;
      done.append(' ', el('a', { href: '#overview', id: 'to-sign-in', text: 'Sign in', onclick: () => { history.replaceState(null, '', '#overview'); start(); } }));
    } catch (e) { msg.textContent = e.message; }
  });
  main().replaceChildren(form);
}

// forgotForm asks for a reset link; the answer is the same whether or not
// the address has an account.
function forgotForm() {
  const done = el('p', { role: 'status', id: 'forgot-done' });
  const form = el('form', { class: 'login', id: 'forgot-form', 'aria-labelledby': 'forgot-title' },
    el('h1', { id: 'forgot-title', text: 'Reset your password' }),
    el('label', {}, 'Email', el('input', { type: 'email', name: 'email', autocomplete: 'username', required: true })),
    el('button', { type: 'submit', text: 'Email me a link' }), done);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      await api('/v1/auth/password-reset/request', { method: 'POST', body: { email: form.email.value } });
      done.textContent = 'If an account has this address, a link to reset its password is on its way.';
    } catch (e) { done.textContent = e.message; }
  });
  main().replaceChildren(form);
}

document.addEventListener('DOMContentLoaded', () => {
  window.addEventListener('hashchange', route);
  document.getElementById('org-select').addEventListener('change', (ev) => pickOrg(ev.target.value));
  document.getElementById('sign-out').addEventListener('click', async () => {
    // Nothing of the signed-in pages runs on, nor draws over what follows.
    stopTimers();
    S.me = null;
    try { await api('/v1/auth/logout', { method: 'POST', body: {} }); } catch (_) { /* signed out either way */ }
    signedOut();
  });
  start();
});
