// Shared helpers for every page: session, API calls, DOM building, formatting.
// Pages import only these names (see the UI contract); keep them stable.

const TOKEN_KEY = 'mlvault.token';
const USER_KEY = 'mlvault.user';

// The session lives in sessionStorage only: it ends with the tab, never in a cookie or
// localStorage, so a token is not left behind on a shared machine.
function restoreSession() {
  try {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) return null;
    const user = JSON.parse(sessionStorage.getItem(USER_KEY) || 'null');
    return { token, user: user && user.name ? user : { name: '', role: '' } };
  } catch {
    return null;
  }
}

export let session = restoreSession();

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.name = 'ApiError';
    this.status = status;
    this.code = code || `HTTP ${status}`;
  }
}

export async function signIn(token) {
  token = String(token || '').trim();
  if (!token) throw new ApiError(0, 'EINVAL', 'Enter a token.');
  let res;
  try {
    res = await fetch('/api/v1/whoami', { headers: { Authorization: `Bearer ${token}` } });
  } catch (e) {
    throw new ApiError(0, 'ENETWORK', `Cannot reach the registry: ${e.message}`);
  }
  if (!res.ok) throw await errorFrom(res);
  const user = await res.json();
  sessionStorage.setItem(TOKEN_KEY, token);
  sessionStorage.setItem(USER_KEY, JSON.stringify({ name: user.name, role: user.role }));
  session = { token, user: { name: user.name, role: user.role } };
  window.dispatchEvent(new CustomEvent('mlvault:session'));
  return session;
}

// Re-reads who the stored token belongs to (the role may have changed since sign-in;
// a revoked token signs out through api()'s 401 handling). app.js calls it at start.
export async function refreshSession() {
  if (!session) return null;
  const user = await api('GET', '/api/v1/whoami');
  session.user = { name: user.name, role: user.role };
  sessionStorage.setItem(USER_KEY, JSON.stringify(session.user));
  return session;
}

export function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(USER_KEY);
  session = null;
  window.dispatchEvent(new CustomEvent('mlvault:session'));
}

// Mirrors the roles of docs/api.md; the server enforces them anyway.
const RIGHTS = {
  read: ['viewer', 'engineer', 'approver', 'admin'],
  push: ['engineer', 'admin'],
  job: ['engineer', 'admin'],
  promote: ['engineer', 'admin'],
  approve: ['approver'],
  audit: ['approver', 'admin'],
  admin: ['admin'],
};

export function can(what) {
  const role = session && session.user && session.user.role;
  return !!role && (RIGHTS[what] || []).includes(role);
}

async function errorFrom(res) {
  let code = '';
  let message = '';
  try {
    const text = await res.text();
    try {
      const j = JSON.parse(text);
      if (j && j.error) {
        code = j.error.code || j.error.type || ''; // OpenAI's errors (/v1) often have only a type
        message = j.error.message || '';
      }
    } catch {
      message = text.slice(0, 300);
    }
  } catch {
    /* body unreadable: keep the status alone */
  }
  return new ApiError(res.status, code, message || res.statusText);
}

export async function apiRaw(method, path, body, { signal, headers } = {}) {
  const h = { ...(headers || {}) };
  if (session && session.token) h.Authorization = `Bearer ${session.token}`;
  const init = { method, headers: h, signal };
  if (body !== undefined && body !== null) {
    h['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    if (e && e.name === 'AbortError') throw e;
    throw new ApiError(0, 'ENETWORK', `Cannot reach the registry: ${e.message}`);
  }
  if (res.status === 401) {
    // The token was revoked or the user disabled: start over at sign-in.
    const err = await errorFrom(res);
    signOut();
    if (location.hash.split('?')[0] !== '#/signin') location.hash = '#/signin';
    throw err;
  }
  if (!res.ok) throw await errorFrom(res);
  return res;
}

export async function api(method, path, body, opts) {
  const res = await apiRaw(method, path, body, opts);
  const type = res.headers.get('Content-Type') || '';
  if (type.includes('application/json')) return res.json();
  const text = await res.text();
  if (type.startsWith('text/')) return text;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

// ---- DOM ----

function setAttrs(node, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') node.textContent = String(v);
    else if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
    else if (k === 'class') node.setAttribute('class', Array.isArray(v) ? v.filter(Boolean).join(' ') : v);
    else if (v === true) node.setAttribute(k, '');
    else node.setAttribute(k, String(v));
  }
}

function append(node, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(node, c);
    else if (c instanceof Node) node.appendChild(c);
    else node.appendChild(document.createTextNode(String(c)));
  }
}

// Appends children to node as el does (nodes, text, arrays; null, undefined and false
// skipped). Pages fill their root with it: the DOM's own append prints "null".
export function add(node, ...children) {
  append(node, children);
  return node;
}

// Builds DOM without ever parsing HTML: data is always text.
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  // A value attribute only sets the default; make it the current value too.
  if (attrs && attrs.value !== undefined && attrs.value !== null && 'value' in node) node.value = String(attrs.value);
  append(node, children);
  return node;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
export function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

// ---- formatting ----

export function fmtBytes(n) {
  if (n === null || n === undefined || n === '' || isNaN(Number(n))) return '—';
  n = Number(n);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0)} ${units[i]}`;
}

function toDate(t) {
  if (t === null || t === undefined || t === '') return null;
  if (t instanceof Date) return t;
  if (typeof t === 'number' || /^\d+(\.\d+)?$/.test(String(t))) {
    const n = Number(t);
    return new Date(n < 1e12 ? n * 1000 : n); // seconds or milliseconds
  }
  const d = new Date(t);
  return isNaN(d.getTime()) ? null : d;
}

const pad = (n) => String(n).padStart(2, '0');

export function fmtTime(t) {
  const d = toDate(t);
  if (!d) return '—';
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function fmtAgo(t) {
  const d = toDate(t);
  if (!d) return '—';
  const s = Math.round((Date.now() - d.getTime()) / 1000);
  if (s < 0) return `in ${fmtDuration(-s)}`;
  if (s < 10) return 'just now';
  return `${fmtDuration(s)} ago`;
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || isNaN(Number(seconds))) return '—';
  let s = Math.max(0, Math.round(Number(seconds)));
  if (s < 60) return `${s}s`;
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  return `${m}m ${s}s`;
}

export function fmtNum(x, digits = 2) {
  if (x === null || x === undefined || x === '' || isNaN(Number(x))) return '—';
  return Number(x).toFixed(digits);
}

export function shortDigest(hex) {
  if (!hex) return '—';
  return String(hex).slice(0, 12);
}

// ---- feedback ----

function toastRegion() {
  let r = document.getElementById('toasts');
  if (!r) {
    r = el('div', { id: 'toasts', class: 'toasts', role: 'status', 'aria-live': 'polite' });
    document.body.appendChild(r);
  }
  return r;
}

export function toast(message, kind = 'info') {
  const t = el('div', { class: `toast toast-${kind}` }, message);
  toastRegion().appendChild(t);
  setTimeout(() => t.remove(), kind === 'error' ? 8000 : 4000);
}

export function clearToasts() {
  const r = document.getElementById('toasts');
  if (r) r.replaceChildren();
}

export function emptyState(title, hint) {
  return el('div', { class: 'empty' },
    el('p', { class: 'empty-title' }, title || 'Nothing here yet.'),
    hint ? (hint instanceof Node ? hint : el('p', { class: 'empty-hint' }, hint)) : null);
}

export function errorBox(err) {
  const code = (err && err.code) || (err && err.name) || 'Error';
  const message = (err && err.message) || String(err);
  return el('div', { class: 'error-box', role: 'alert' },
    el('strong', { class: 'error-code' }, code),
    ' ',
    el('span', { class: 'error-message' }, message));
}

export function badge(text, kind = 'muted') {
  return el('span', { class: `badge badge-${kind}` }, text);
}

// A data table. Options: empty (a title string, or {title, hint}) shown instead when
// there are no rows; id; caption; rowAttrs(row) → attributes for each <tr> (e.g.
// {'data-job': row.id}). Returns the <table> (app.js wraps every table.data in a
// horizontally scrolling box once it is on the page), or the empty state.
export function table(columns, rows, { empty, id, caption, rowAttrs } = {}) {
  if (!rows || rows.length === 0) {
    const e = empty && typeof empty === 'object' && !(empty instanceof Node) ? empty : { title: empty };
    return emptyState(e.title || 'Nothing to show.', e.hint);
  }
  const thead = el('thead', null,
    el('tr', null, columns.map((c) => el('th', { scope: 'col', class: c.num ? 'num' : null }, c.label))));
  const tbody = el('tbody', null, rows.map((row) => {
    const tr = el('tr', rowAttrs ? rowAttrs(row) : null);
    for (const c of columns) {
      const v = c.render ? c.render(row) : row[c.key];
      tr.appendChild(el('td', { class: c.num ? 'num' : null },
        v === null || v === undefined || v === '' ? '—' : v));
    }
    return tr;
  }));
  return el('table', { id, class: 'data' }, caption ? el('caption', null, caption) : null, thead, tbody);
}

export function setTitle(text) {
  document.title = text ? `${text} · mlvault` : 'mlvault';
}

// Calls fn now and every ms while the page shows; the tab hidden pauses it.
// Never overlaps calls: the next waits for the previous to settle.
// {later: true}: the first call after ms, for a page that has just loaded what fn loads.
export function poll(fn, ms, { later = false } = {}) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try {
        await fn();
      } catch (e) {
        console.warn('poll:', e);
      }
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  if (later) timer = setTimeout(tick, ms);
  else tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
