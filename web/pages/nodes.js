// Serving nodes: what each one serves and how it is, from its last report. Refreshes
// every 5 s.
import { add, api, can, el, badge, table, errorBox, emptyState, fmtTime, fmtAgo, fmtNum, setTitle, poll } from '../lib.js';

// The health in words (the badge carries the text; colour only adds).
function health(n) {
  if (n.disabled) return badge('disabled', 'muted');
  if (!n.state || !n.last_seen) return badge('never reported', 'muted');
  return n.state.healthy ? badge('healthy', 'ok') : badge('unhealthy', 'bad');
}

function serving(n) {
  const s = n.state;
  if (!s) return el('span', { class: 'muted' }, '—');
  if (s.serving) {
    const m = /^([^:]+):(\d+)$/.exec(s.serving);
    return m ? el('a', { href: `#/models/${encodeURIComponent(m[1])}/versions/${m[2]}` }, s.serving) : s.serving;
  }
  return el('span', { class: 'muted' }, 'nothing');
}

function enrollHelp() {
  return el('div', { class: 'stack' },
    el('p', { class: 'empty-hint' }, 'A serving node pulls one model\'s releases from this registry and serves them with the OpenAI API. On the node\'s machine:'),
    el('pre', null, el('code', null, 'mlvault node init --home /var/lib/mlvault-node        # writes node.pub')),
    el('p', { class: 'empty-hint' }, 'Then an admin enrols it here (the token it prints is shown once):'),
    el('pre', null, el('code', null, 'mlvault node enroll edge-1 --pubkey node.pub --model NAME')),
    el('p', { class: 'empty-hint' }, 'and the node runs, following a channel:'),
    el('pre', null, el('code', null, 'MLVAULT_TOKEN=… mlvault node run --home /var/lib/mlvault-node --registry URL \\\n  --model NAME --channel production --trust signing.pub --listen 0.0.0.0:8081')));
}

export async function render(root) {
  setTitle('Nodes');
  const listBox = el('div');
  const updated = el('span', { class: 'small muted' });
  const more = el('details', { class: 'card', hidden: true },
    el('summary', null, 'How to enrol another node'), enrollHelp());
  add(root, 
    el('div', { class: 'page-head' }, el('h1', null, 'Serving nodes'), updated),
    listBox,
    can('admin') ? more : null);

  async function load() {
    let nodes;
    try {
      nodes = await api('GET', '/api/v1/nodes');
    } catch (err) {
      listBox.replaceChildren(errorBox(err));
      return;
    }
    updated.textContent = `Updated ${fmtTime(new Date())}; refreshes every 5 s.`;
    more.hidden = !nodes.length; // the empty state shows the same commands
    if (!nodes.length) {
      listBox.replaceChildren(emptyState('No serving nodes enrolled.', enrollHelp()));
      return;
    }
    listBox.replaceChildren(table([
      { key: 'name', label: 'Node', render: (n) => el('strong', { class: 'nowrap' }, n.name) },
      { key: 'model', label: 'Model', render: (n) => el('a', { href: `#/models/${encodeURIComponent(n.model)}` }, n.model) },
      { key: 'channel', label: 'Channel', render: (n) => (n.state && n.state.channel) || '—' },
      { key: 'version', label: 'Serving', render: serving },
      { key: 'health', label: 'Health', render: health },
      { key: 'last_error', label: 'Last error', render: (n) => (n.state && n.state.last_error
        ? el('span', { class: 'wrap-anywhere small' }, n.state.last_error) : '—') },
      { key: 'rps', label: 'Req/s', num: true, render: (n) => (n.state ? fmtNum(n.state.rps, 2) : '—') },
      { key: 'last_seen', label: 'Last seen', render: (n) => (n.last_seen
        ? el('span', { class: 'nowrap', title: fmtTime(n.last_seen) }, fmtAgo(n.last_seen)) : 'never') },
      { key: 'enrolled', label: 'Enrolled', render: (n) => el('span', { class: 'small' },
        `${n.enrolled_by}, `, el('span', { class: 'nowrap', title: fmtAgo(n.enrolled_at) }, fmtTime(n.enrolled_at))) },
    ], nodes, { id: 'nodes', rowAttrs: (n) => ({ 'data-node': n.name }) }));
  }

  await load();
  return poll(async () => {
    await load();
  }, 5000, { later: true });
}
