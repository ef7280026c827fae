// The audit log (approvers and admins): filters kept in the address, pages of rows
// loaded on demand, and whether the hash chain verifies.
import { add, api, can, session, el, badge, table, errorBox, emptyState, fmtTime, setTitle } from '../lib.js';

const PAGE = 100;
const FILTERS = ['actor', 'action', 'target', 'since', 'until'];
const DAY = /^\d{4}-\d{2}-\d{2}$/;
const FULL = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/;

// The server wants RFC 3339 UTC; a bare day means its start (since) or end (until),
// as the CLI reads it.
function apiTime(v, end) {
  if (DAY.test(v)) return `${v}T${end ? '23:59:59' : '00:00:00'}Z`;
  return v;
}

async function chainState(box) {
  try {
    const r = await api('GET', '/api/v1/audit/verify');
    box.replaceChildren(badge('chain intact', 'ok'), ' ',
      el('span', { class: 'muted' }, `${r.rows} row${r.rows === 1 ? '' : 's'} verified: every row's hash links to the one before.`));
  } catch (err) {
    box.replaceChildren(badge('chain broken', 'bad'), ' ',
      el('span', null, `${err.code}: ${err.message}`));
  }
}

export async function render(root, params, query) {
  setTitle('Audit log');
  add(root, el('div', { class: 'page-head' }, el('h1', null, 'Audit log')));
  if (!can('audit')) {
    add(root, emptyState('Your role cannot read the audit log.',
      `Approvers and admins read it (you are ${session && session.user ? session.user.role : 'signed out'}).`));
    return undefined;
  }

  const values = Object.fromEntries(FILTERS.map((k) => [k, query.get(k) || '']));
  const actions = el('datalist', { id: 'dl-audit-actions' });
  const input = (name, label, placeholder, extra) => {
    const c = el('input', { type: 'text', name, id: `audit-${name}`, value: values[name], placeholder, autocomplete: 'off', ...extra });
    return el('label', { for: `audit-${name}` }, label, c);
  };
  const errors = el('div', { 'aria-live': 'polite' });
  const form = el('form', { id: 'audit-filter', class: 'toolbar', 'aria-label': 'Filter the audit log' },
    input('actor', 'Actor', 'user name'),
    input('action', 'Action', 'e.g. promote.', { list: 'dl-audit-actions', 'aria-describedby': 'audit-action-help' }),
    input('target', 'Target', 'e.g. smollm2:2'),
    input('since', 'Since (UTC)', 'YYYY-MM-DD'),
    input('until', 'Until (UTC)', 'YYYY-MM-DD'),
    el('div', { class: 'form-actions' },
      el('button', { type: 'submit', class: 'btn-primary' }, 'Filter'),
      el('button', { type: 'button', onclick: () => { location.hash = '#/audit'; } }, 'Clear')),
    actions);
  const help = el('p', { class: 'help', id: 'audit-action-help' },
    'An action ending in "." matches every action it starts (promote. → promote.request, promote.release, …). Times are UTC: a day or YYYY-MM-DDTHH:MM:SSZ.');

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const k of FILTERS) {
      const v = form.elements[k].value.trim();
      if (v) q.set(k, v);
    }
    for (const k of ['since', 'until']) {
      const v = q.get(k);
      if (v && !DAY.test(v) && !FULL.test(v)) {
        errors.replaceChildren(errorBox({ code: 'EINVAL', message: `${k}: write a day (2026-01-31) or a UTC time (2026-01-31T12:00:00Z).` }));
        form.elements[k].setAttribute('aria-invalid', 'true');
        form.elements[k].focus();
        return;
      }
    }
    // A new address: the router renders the page again with these filters (and Back
    // returns to the previous ones).
    const hash = `#/audit${q.toString() ? `?${q}` : ''}`;
    if (location.hash === hash) render0();
    else location.hash = hash;
  });

  const chain = el('p', { 'data-testid': 'chain', 'aria-live': 'polite' }, 'Verifying the chain…');
  const listBox = el('div');
  const more = el('button', { type: 'button', id: 'audit-more', hidden: true }, `Load ${PAGE} more`);
  const status = el('span', { class: 'small muted' });
  let rows = [];

  const active = FILTERS.filter((k) => values[k]);
  function draw() {
    listBox.replaceChildren(table([
      { key: 'seq', label: 'Seq', num: true },
      { key: 'at', label: 'When (local)', render: (r) => el('span', { class: 'nowrap', title: r.at }, fmtTime(r.at)) },
      { key: 'actor', label: 'Actor' },
      { key: 'action', label: 'Action', render: (r) => el('code', { class: 'nowrap' }, r.action) },
      { key: 'target', label: 'Target', render: (r) => el('span', { class: 'nowrap' }, r.target) },
      { key: 'detail', label: 'Detail', render: (r) => el('span', { class: 'wrap-anywhere small' }, r.detail) },
    ], rows, {
      id: 'audit',
      rowAttrs: (r) => ({ 'data-seq': r.seq }),
      empty: active.length ? { title: 'No rows match these filters.', hint: 'Loosen a filter, or Clear them all.' } : 'The audit log is empty.',
    }));
    // Offer the actions seen so far (and their prefixes) in the filter's list.
    const seen = new Set();
    for (const r of rows) {
      seen.add(r.action);
      if (r.action.includes('.')) seen.add(`${r.action.split('.')[0]}.`);
    }
    actions.replaceChildren(...[...seen].sort().map((a) => el('option', { value: a })));
  }

  async function loadPage() {
    const q = new URLSearchParams();
    for (const k of FILTERS) {
      if (values[k]) q.set(k, k === 'since' ? apiTime(values[k], false) : k === 'until' ? apiTime(values[k], true) : values[k]);
    }
    // Newest first: an auditor starts from what just happened and pages back in time.
    q.set('order', 'desc');
    if (rows.length) q.set('before', String(rows[rows.length - 1].seq));
    q.set('limit', String(PAGE));
    const page = await api('GET', `/api/v1/audit?${q}`);
    rows = rows.concat(page);
    draw();
    more.hidden = page.length < PAGE;
    status.textContent = `${rows.length} row${rows.length === 1 ? '' : 's'} shown, newest first${more.hidden ? '; that is all' : ''}.`;
  }

  async function render0() {
    rows = [];
    errors.replaceChildren();
    try {
      await loadPage();
    } catch (err) {
      listBox.replaceChildren(errorBox(err));
      more.hidden = true;
    }
  }

  more.addEventListener('click', async () => {
    more.disabled = true;
    root.setAttribute('aria-busy', 'true');
    try {
      await loadPage();
    } catch (err) {
      errors.replaceChildren(errorBox(err));
    } finally {
      more.disabled = false;
      root.removeAttribute('aria-busy');
    }
  });

  add(root, 
    chain,
    el('section', { class: 'card', 'aria-label': 'Filters' }, form, help, errors),
    active.length ? el('p', { class: 'small' }, 'Filtered by ',
      active.map((k, i) => [i ? ', ' : '', `${k} `, el('code', null, values[k])])) : null,
    listBox,
    el('div', { class: 'row' }, more, status));

  await Promise.all([render0(), chainState(chain)]);
  return undefined;
}
