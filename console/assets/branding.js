// The dashboard's branding page: the organization's look (name, logo,
// favicon, colours, support details, custom CSS, error page templates),
// previewed before it is saved, and its maintenance mode. It loads before
// app.js, whose page list names it, and uses app.js's helpers when it runs.
'use strict';

const BRAND_COLORS = ['primary', 'accent', 'background', 'text'];
const PAGE_KINDS = ['404', '429', '5xx', 'maintenance'];
const PREVIEW_PAGES = [['verify', 'Verification page'], ['404', 'Not found'], ['429', 'Too many requests'], ['5xx', 'Server error'], ['maintenance', 'Maintenance']];

// htmlOf POSTs a body and answers the page it gets, or throws the API's error.
async function htmlOf(path, body) {
  const r = await fetch(path, { method: 'POST', credentials: 'same-origin', body: JSON.stringify(body),
    headers: { 'Content-Type': 'application/json', Accept: 'text/html', 'Certnode-Org': S.org, 'X-CSRF-Token': S.csrf } });
  if (!r.ok) {
    let msg = r.statusText;
    try { msg = (await r.json()).error.message; } catch (_) { /* not JSON */ }
    throw new APIError(r.status, '', msg);
  }
  return r.text();
}

async function branding(sec) {
  const orgPath = '/v1/orgs/' + encodeURIComponent(S.org);
  const [b, org] = await Promise.all([api(orgPath + '/branding'), api(orgPath)]);
  const input = (name, label, value, attrs) => el('label', {}, label, el('input', { name, value: value || '', ...attrs }));
  const msg = el('p', { role: 'status', id: 'branding-status' });
  const colors = b.colors || {};
  const f = el('form', { class: 'branding', id: 'branding-form', 'aria-label': 'Branding' },
    el('fieldset', {}, el('legend', { text: 'Identity' }),
      input('display_name', 'Display name', b.display_name, { maxlength: 200 }),
      input('logo_url', 'Logo URL (https)', b.logo_url, { type: 'url', placeholder: 'https://…' }),
      input('favicon_url', 'Favicon URL (https)', b.favicon_url, { type: 'url', placeholder: 'https://…' })),
    el('fieldset', {}, el('legend', { text: 'Colours (#rrggbb; empty: the default)' }),
      BRAND_COLORS.map((c) => input('color_' + c, c[0].toUpperCase() + c.slice(1), colors[c], { pattern: '#[0-9a-fA-F]{6}', placeholder: '#rrggbb', size: 8 }))),
    el('fieldset', {}, el('legend', { text: 'Support' }),
      input('support_email', 'Email', b.support_email, { type: 'email' }),
      input('support_url', 'URL', b.support_url, { type: 'url', placeholder: 'https://…' }),
      input('support_message', 'Message added to errors', b.support_message, { maxlength: 500, size: 40 })),
    el('fieldset', {}, el('legend', { text: 'Custom CSS' }),
      el('p', { class: 'period', text: 'Added after the pages’ own styles; use var(--brand), var(--accent), var(--bg), var(--fg) and the cn- classes. No url(), @import or @font-face: nothing is loaded.' }),
      el('textarea', { name: 'custom_css', rows: 6, cols: 60, spellcheck: 'false', 'aria-label': 'Custom CSS' })),
    el('fieldset', {}, el('legend', { text: 'Error pages (Go html/template; empty: the built-in page)' }),
      PAGE_KINDS.map((k) => el('label', {}, k, el('textarea', { name: 'error_' + k, rows: 4, cols: 60, spellcheck: 'false' })))),
    el('div', { class: 'filters' },
      el('label', {}, 'Preview', el('select', { name: 'preview_page' }, PREVIEW_PAGES.map(([v, t]) => el('option', { value: v, text: t })))),
      el('button', { type: 'button', id: 'branding-preview', text: 'Preview' }),
      el('button', { type: 'submit', id: 'branding-save', text: 'Save' })), msg);
  f.custom_css.value = b.custom_css || '';
  PAGE_KINDS.forEach((k) => { f['error_' + k].value = (b.error_pages || {})[k] || ''; });
  const proposed = () => {
    const out = {};
    for (const k of ['display_name', 'logo_url', 'favicon_url', 'support_email', 'support_url', 'support_message', 'custom_css']) if (f[k].value.trim()) out[k] = f[k].value.trim();
    const c = {};
    BRAND_COLORS.forEach((k) => { if (f['color_' + k].value.trim()) c[k] = f['color_' + k].value.trim(); });
    if (Object.keys(c).length) out.colors = c;
    const p = {};
    PAGE_KINDS.forEach((k) => { if (f['error_' + k].value.trim()) p[k] = f['error_' + k].value; });
    if (Object.keys(p).length) out.error_pages = p;
    return out;
  };
  // The preview is drawn by the server and shown in a sandboxed frame
  // whose own page takes it (preview.js): nothing is saved.
  const frame = el('iframe', { id: 'branding-frame', title: 'Preview', sandbox: 'allow-scripts', class: 'preview' });
  let pending = null;
  window.addEventListener('message', (ev) => {
    if (ev.source !== frame.contentWindow || !ev.data || ev.data.type !== 'certnode-preview-ready' || !pending) return;
    frame.contentWindow.postMessage({ type: 'certnode-preview', html: pending.html }, '*');
    frame.dataset.shown = pending.page;
    frame.dataset.bytes = String(pending.html.length);
    pending = null;
  });
  let n = 0;
  f.querySelector('#branding-preview').addEventListener('click', async () => {
    msg.textContent = '';
    const page = f.preview_page.value;
    try {
      const html = await htmlOf('/v1/branding/preview', { branding: proposed(), page, message: page === 'maintenance' ? 'This is how your maintenance page looks.' : undefined });
      pending = { html, page };
      frame.dataset.shown = '';
      frame.src = '/dashboard/preview?n=' + (++n);
      msg.textContent = 'Preview of the proposed branding (not saved).';
    } catch (e) { msg.textContent = e.message; }
  });
  f.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    msg.textContent = '';
    try {
      await api(orgPath + '/branding', { method: 'PUT', body: proposed() });
      msg.textContent = 'Saved.';
      brand(await api(orgPath));
    } catch (e) { msg.textContent = e.message; }
  });

  const m = org.maintenance;
  const mmsg = el('p', { role: 'status', id: 'maintenance-status', text: m ? 'Maintenance mode is on since ' + when(m.since) + (m.until ? ', until ' + when(m.until) : '') + ': ' + m.message : 'Maintenance mode is off.' });
  const mf = el('form', { class: 'filters', id: 'maintenance-form', 'aria-label': 'Maintenance mode' },
    el('label', {}, 'Message', el('input', { name: 'message', required: true, maxlength: 1000, size: 40, value: m ? m.message : '' })),
    el('label', {}, 'Until (UTC, optional)', el('input', { name: 'until', type: 'datetime-local' })),
    el('button', { type: 'submit', id: 'maintenance-on', text: m ? 'Update' : 'Turn on' }),
    m ? el('button', { type: 'button', id: 'maintenance-off', text: 'Turn off', onclick: async () => {
      try { await api(orgPath + '/maintenance', { method: 'DELETE' }); route(); } catch (e) { mmsg.textContent = e.message; }
    } }) : null);
  mf.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (!window.confirm('Turn maintenance mode on? Every request of this organization (API and pages) answers 503 until it is turned off.')) return;
    try {
      await api(orgPath + '/maintenance', { method: 'PUT', body: { message: mf.message.value, until: mf.until.value ? mf.until.value + ':00Z' : undefined } });
      route();
    } catch (e) { mmsg.textContent = e.message; }
  });
  sec.append(el('p', { text: 'How this organization’s pages look: this dashboard, the verification page (/verify) and error pages on its domains. Try a change with Preview; nothing is saved until Save.' }),
    f, el('h2', { text: 'Preview' }), frame,
    el('h2', { text: 'Maintenance mode' }), el('p', { text: 'While it is on, the organization’s API requests and pages answer 503 with this message and Retry-After; this dashboard and the account API stay reachable.' }), mmsg, mf);
}
