// Every model and dataset: channels and the version each points at, the latest
// version's size, format, tensor types and accuracy. Filter by name and kind.
import { add, api, el, table, badge, emptyState, errorBox, fmtBytes, fmtTime, setTitle } from '../lib.js';
import { fmtMetric, pickAccuracy, tensorTypesText, mapLimit } from './model.js';

export async function render(root, params, query) {
  setTitle('Models');
  const head = el('div', { class: 'page-head' }, el('h1', null, 'Models and datasets'));
  add(root, head);

  let models;
  try {
    models = await api('GET', '/api/v1/models');
  } catch (err) {
    add(root, errorBox(err));
    return;
  }

  if (models.length === 0) {
    add(root, emptyState('The registry is empty.',
      el('div', { class: 'empty-hint' },
        el('p', null, 'Push a model (a .gguf file or a Hugging Face folder) with the command-line tool:'),
        el('pre', null, el('code', null, 'mlvault push NAME path/to/model.gguf --note "what it is"')),
        el('p', null, 'and an evaluation dataset with ',
          el('code', null, 'mlvault dataset push NAME FILE'), '.'))));
    return;
  }

  // Details per model: its channels and the latest version's evaluations. Datasets
  // have neither. A failure of one model's details shows in its row, not the page.
  const details = new Map();
  await mapLimit(models, 6, async (m) => {
    const d = { channels: [], evals: [], error: null };
    if (m.kind === 'model') {
      try {
        const [channels, evals] = await Promise.all([
          api('GET', `/api/v1/models/${encodeURIComponent(m.name)}/channels`),
          api('GET', `/api/v1/models/${encodeURIComponent(m.name)}/versions/${m.version}/evaluations`),
        ]);
        d.channels = channels || [];
        d.evals = evals || [];
      } catch (err) {
        d.error = err;
      }
    }
    details.set(m.name, d);
  });

  const search = el('input', {
    id: 'search', type: 'search', name: 'q', placeholder: 'Filter by name',
    value: query.get('q') || '', autocomplete: 'off',
  });
  const kindSel = el('select', { id: 'kind', name: 'kind' },
    el('option', { value: '' }, 'Models and datasets'),
    el('option', { value: 'model' }, 'Models only'),
    el('option', { value: 'dataset' }, 'Datasets only'));
  kindSel.value = ['model', 'dataset'].includes(query.get('kind')) ? query.get('kind') : '';
  const count = el('p', { class: 'muted small', 'aria-live': 'polite' });
  const results = el('div');

  add(root, 
    el('form', { class: 'toolbar', role: 'search', onsubmit: (e) => e.preventDefault() },
      el('label', { for: 'search' }, 'Name', search),
      el('label', { for: 'kind' }, 'Kind', kindSel)),
    count,
    results);

  const columns = [
    { key: 'name', label: 'Name', render: (m) => el('span', { class: 'stack-cell' },
      el('a', { class: 'nowrap', href: `#/models/${encodeURIComponent(m.name)}` }, m.name), ' ',
      m.kind === 'dataset' ? badge('dataset', 'muted') : null) },
    { key: 'version', label: 'Latest', num: true, render: (m) =>
      el('a', { href: `#/models/${encodeURIComponent(m.name)}/versions/${m.version}`, title: `${m.versions} version(s)` },
        `v${m.version}`) },
    { key: 'channels', label: 'Channels', render: (m) => channelsCell(m, details.get(m.name)) },
    { key: 'size', label: 'Size', num: true, render: (m) => fmtBytes(m.size) },
    { key: 'format', label: 'Format', render: (m) => formatCell(m) },
    { key: 'accuracy', label: 'Accuracy (latest)', num: true, render: (m) => accuracyCell(m, details.get(m.name)) },
    { key: 'created_at', label: 'Updated', render: (m) =>
      el('span', { class: 'nowrap', title: `by ${m.created_by}` }, fmtTime(m.created_at)) },
  ];

  function update() {
    const q = search.value.trim().toLowerCase();
    const kind = kindSel.value;
    const shown = models.filter((m) => (!kind || m.kind === kind) && (!q || m.name.toLowerCase().includes(q)));
    const nModels = shown.filter((m) => m.kind === 'model').length;
    count.textContent = `${nModels} model${nModels === 1 ? '' : 's'}, ${shown.length - nModels} dataset${shown.length - nModels === 1 ? '' : 's'}` +
      (shown.length < models.length ? ` (of ${models.length})` : '');
    results.replaceChildren(table(columns, shown, {
      id: 'models',
      empty: { title: 'Nothing matches the filter.', hint: 'Clear the name box or choose another kind.' },
      rowAttrs: (m) => ({ 'data-model': m.name, 'data-kind': m.kind }),
    }));
    // Keep the filter in the address (for links and reloads) without a new page render.
    const p = new URLSearchParams();
    if (search.value.trim()) p.set('q', search.value.trim());
    if (kind) p.set('kind', kind);
    const hash = `#/models${p.toString() ? `?${p}` : ''}`;
    if (location.hash !== hash) history.replaceState(null, '', hash);
  }
  search.addEventListener('input', update);
  kindSel.addEventListener('change', update);
  update();
}

function channelsCell(m, d) {
  if (m.kind !== 'model') return el('span', { class: 'muted' }, 'n/a');
  if (d.error) return el('span', { class: 'muted', title: d.error.message }, 'unavailable');
  if (!d.channels.length) return el('span', { class: 'muted' }, 'none');
  return el('ul', { class: 'plain-list nowrap' }, d.channels.map((c) => el('li', null,
    el('span', { class: 'channel-name' }, c.channel), ' → ',
    c.current
      ? el('a', { href: `#/models/${encodeURIComponent(m.name)}/versions/${c.current.version}` }, `v${c.current.version}`)
      : el('span', { class: 'muted' }, 'no release'))));
}

function formatCell(m) {
  if (m.kind === 'dataset') return el('span', { class: 'muted' }, m.format || 'dataset');
  const types = tensorTypesText(m.tensor_types);
  return el('span', { class: 'nowrap' }, m.format || '—', types ? el('span', { class: 'muted small' }, ` · ${types}`) : null);
}

function accuracyCell(m, d) {
  if (m.kind !== 'model') return el('span', { class: 'muted' }, 'n/a');
  const a = pickAccuracy(d.evals, d.channels, m.version);
  if (!a) return el('span', { class: 'muted' }, 'not evaluated');
  return el('span', { title: `${a.metric} on ${a.dataset}${a.source ? ` (${a.source})` : ''}` },
    fmtMetric(a.metric, a.value));
}
