// The branding preview's frame: it takes the page the dashboard drew
// with the proposed branding (POST /v1/branding/preview) and shows it in
// place of itself. The frame is sandboxed (an origin of its own), so the
// page reaches neither the dashboard nor its session.
'use strict';
window.addEventListener('message', (ev) => {
  if (ev.source !== window.parent || !ev.data || ev.data.type !== 'certnode-preview' || typeof ev.data.html !== 'string') return;
  document.open();
  document.write(ev.data.html);
  document.close();
});
window.parent.postMessage({ type: 'certnode-preview-ready' }, '*');
