// Promotion requests: the list (all, or pending only) and, for roles that may request
// one, the form that asks to release a version to a channel (its gate runs first).
import { add, api, can, el, badge, table, errorBox, fmtTime, fmtAgo, fmtNum, setTitle } from '../lib.js';

const STATE_KIND = { gating: 'info', pending: 'warn', released: 'ok', rejected: 'bad' };
const VERDICT_KIND = { pass: 'ok', fail: 'bad', 'no baseline': 'info' };

export function promotionStateBadge(state) {
  return badge(state || 'unknown', STATE_KIND[state] || 'muted');
}

export function verdictBadge(verdict) {
  return badge(verdict || 'not run', VERDICT_KIND[verdict] || 'muted');
}

export function versionLink(model, version) {
  return el('a', { href: `#/models/${encodeURIComponent(model)}/versions/${encodeURIComponent(version)}` }, `${model}:${version}`);
}

// The gate's verdict with its drop, as one short cell.
function gateCell(p) {
  if (p.state === 'gating') return el('span', { class: 'muted' }, 'running…');
  const g = p.gate;
  if (!g) return verdictBadge(null);
  return el('span', { class: 'row nowrap' }, verdictBadge(g.verdict),
    g.drop !== null && g.drop !== undefined ? el('span', { class: 'small muted' }, `drop ${fmtNum(g.drop, 2)} / ${fmtNum(g.threshold, 2)}`) : null);
}

function promoteForm() {
  const versions = el('datalist', { id: 'dl-promote-refs' });
  const channels = el('datalist', { id: 'dl-promote-channels' });
  const errors = el('div', { 'aria-live': 'polite' });
  const ref = el('input', { type: 'text', name: 'ref', id: 'promote-ref', list: 'dl-promote-refs', placeholder: 'NAME:VERSION', autocomplete: 'off', 'aria-required': 'true' });
  const channel = el('input', { type: 'text', name: 'channel', id: 'promote-channel', list: 'dl-promote-channels', placeholder: 'e.g. production', autocomplete: 'off', 'aria-required': 'true' });
  const reason = el('textarea', { name: 'reason', id: 'promote-reason', rows: '2', placeholder: 'Why this version should go out' });
  const submit = el('button', { type: 'submit', class: 'btn-primary' }, 'Request promotion');
  const channelHelp = el('p', { class: 'help', id: 'promote-channel-help' }, 'A channel of the model with a gate policy.');
  channel.setAttribute('aria-describedby', 'promote-channel-help');

  // The channel list follows the model named in the ref.
  let channelsOf = null;
  async function loadChannels() {
    const name = ref.value.trim().split(/[:@]/)[0];
    if (!name || name === channelsOf) return;
    channelsOf = name;
    try {
      const list = await api('GET', `/api/v1/models/${encodeURIComponent(name)}/channels`);
      if (channelsOf !== name) return;
      channels.replaceChildren(...list.map((c) => el('option', { value: c.channel },
        c.current ? `now ${c.current.model || name}:${c.current.version}` : 'no release yet')));
      channelHelp.textContent = list.length
        ? `Channels of ${name}: ${list.map((c) => c.channel).join(', ')}.`
        : `${name} has no channels yet: an admin sets one up with mlvault channel set.`;
    } catch {
      channels.replaceChildren();
      channelHelp.textContent = 'A channel of the model with a gate policy.';
    }
  }
  ref.addEventListener('change', loadChannels);
  ref.addEventListener('blur', loadChannels);

  const form = el('form', { id: 'promote-form', class: 'form', novalidate: true, 'aria-label': 'Request a promotion' },
    el('div', { class: 'grid' },
      el('div', { class: 'field' },
        el('label', { for: 'promote-ref', class: 'req' }, 'Version'), ref,
        el('p', { class: 'help' }, 'NAME:VERSION of the model to release.')),
      el('div', { class: 'field' },
        el('label', { for: 'promote-channel', class: 'req' }, 'Channel'), channel, channelHelp)),
    el('div', { class: 'field' }, el('label', { for: 'promote-reason' }, 'Reason'), reason),
    errors,
    el('div', { class: 'form-actions' }, submit),
    versions, channels);

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    errors.replaceChildren();
    const body = { ref: ref.value.trim(), channel: channel.value.trim(), reason: reason.value.trim() };
    if (!body.ref || !body.channel) {
      errors.replaceChildren(errorBox({ code: 'EINVAL', message: !body.ref ? 'Enter the version (NAME:VERSION).' : 'Enter the channel.' }));
      (body.ref ? channel : ref).focus();
      return;
    }
    submit.disabled = true;
    try {
      const p = await api('POST', '/api/v1/promotions', body);
      location.hash = `#/promotions/${p.id}`;
    } catch (err) {
      errors.replaceChildren(errorBox(err));
      submit.disabled = false;
    }
  });

  // Versions of every model, newest first (a convenience: any ref may be typed).
  api('GET', '/api/v1/models').then((list) => {
    versions.replaceChildren(...list.filter((m) => m.kind !== 'dataset').flatMap((m) => {
      const out = [];
      for (let v = Number(m.version) || 0, n = 0; v >= 1 && n < 25; v--, n++) out.push(el('option', { value: `${m.name}:${v}` }));
      return out;
    }));
  }).catch(() => {});
  return form;
}

export async function render(root, params, query) {
  setTitle('Promotions');
  let pending = query.get('pending') === '1';
  const listBox = el('div');
  const toggle = el('input', { type: 'checkbox', id: 'pending-only', name: 'pending', checked: pending });

  async function load() {
    let rows;
    try {
      rows = await api('GET', `/api/v1/promotions${pending ? '?pending=1' : ''}`);
    } catch (err) {
      listBox.replaceChildren(errorBox(err));
      return;
    }
    listBox.replaceChildren(table([
      { key: 'id', label: 'Request', render: (p) => el('a', { href: `#/promotions/${p.id}` }, `#${p.id}`) },
      { key: 'ref', label: 'Version', render: (p) => versionLink(p.model, p.version) },
      { key: 'channel', label: 'Channel' },
      { key: 'state', label: 'State', render: (p) => promotionStateBadge(p.state) },
      { key: 'gate', label: 'Gate', render: gateCell },
      { key: 'approvals', label: 'Approvals', num: true, render: (p) => (p.approvals_needed ? `${(p.approvals || []).length} / ${p.approvals_needed}` : 'none needed') },
      { key: 'requested_by', label: 'Requested by' },
      { key: 'requested_at', label: 'Requested', render: (p) => el('span', { title: fmtTime(p.requested_at), class: 'nowrap' }, fmtAgo(p.requested_at)) },
    ], rows, {
      id: 'promotions',
      rowAttrs: (p) => ({ 'data-promotion': p.id }),
      empty: pending ? { title: 'No pending requests.', hint: 'Nothing waits for an approver.' }
        : { title: 'No promotion requests yet.', hint: can('promote') ? 'Request one with the form above.' : 'Engineers request promotions; they show here.' },
    }));
  }

  toggle.addEventListener('change', async () => {
    pending = toggle.checked;
    history.replaceState(null, '', `#/promotions${pending ? '?pending=1' : ''}`);
    root.setAttribute('aria-busy', 'true');
    await load();
    root.removeAttribute('aria-busy');
  });

  add(root, 
    el('div', { class: 'page-head' }, el('h1', null, 'Promotions')),
    can('promote') ? el('section', { class: 'card', 'aria-labelledby': 'promote-h' },
      el('h2', { id: 'promote-h' }, 'Request a promotion'),
      el('p', { class: 'muted small' }, 'The channel\'s accuracy gate runs first; then the approvers its policy names decide.'),
      promoteForm()) : null,
    el('section', { 'aria-labelledby': 'requests-h' },
      el('h2', { id: 'requests-h' }, 'Requests'),
      el('div', { class: 'toolbar' },
        el('div', { class: 'field-inline' }, toggle, el('label', { for: 'pending-only' }, 'Pending only')),
        el('button', { type: 'button', onclick: load }, 'Refresh')),
      listBox));
  await load();
}
