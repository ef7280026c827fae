// One model (or dataset): its versions, the lineage graph across models, accuracy and
// size over versions, channels with their policy, and the channel history.
import {
  add, api, el, svg, table, badge, emptyState, errorBox, fmtBytes, fmtTime, fmtNum, shortDigest, setTitle,
} from '../lib.js';

// ---- helpers shared with models.js and version.js ----

// Runs fn over items with at most n in flight; results in item order.
export async function mapLimit(items, n, fn) {
  const out = new Array(items.length);
  let next = 0;
  async function worker() {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  }
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
  return out;
}

// Accuracy metrics are fractions (0.4006 → 40.06 %); a gate's drop is in points.
export function fmtMetric(metric, value) {
  if (value === null || value === undefined || isNaN(Number(value))) return '—';
  if (/accuracy/.test(metric || '')) return `${(Number(value) * 100).toFixed(2)} %`;
  if (metric === 'kld') return Number(value).toFixed(4);
  return fmtNum(value, 2);
}

export function isAccuracy(metric) {
  return /accuracy/.test(metric || '');
}

// Tensor types without F32/F16 noise, e.g. "Q4_0, Q8_0" (F32 alone when that is all).
export function tensorTypesText(types) {
  if (!Array.isArray(types) || types.length === 0) return '';
  const q = types.filter((t) => !/^(F32|F16|BF16)$/.test(t));
  return (q.length ? q : types).join(', ');
}

// The accuracy to show for a version: its own evaluation with the channel gate's metric
// (else next_token_accuracy, else any accuracy metric), newest first; failing that, the
// gate value a channel recorded when it released this version.
export function pickAccuracy(evals, channels, version) {
  const gateMetric = (channels || []).map((c) => c.policy && c.policy.gate_metric).find(Boolean);
  const order = [gateMetric, 'next_token_accuracy', 'mc_accuracy'].filter(Boolean);
  const sorted = [...(evals || [])].sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
  for (const metric of order) {
    const e = sorted.find((x) => x.metric === metric);
    if (e) return { metric, value: e.value, dataset: e.dataset };
  }
  const anyAcc = sorted.find((x) => isAccuracy(x.metric));
  if (anyAcc) return { metric: anyAcc.metric, value: anyAcc.value, dataset: anyAcc.dataset };
  for (const c of channels || []) {
    const g = c.current && c.current.version === version && c.current.gate;
    if (g && g.candidate) {
      return { metric: g.metric, value: g.candidate.value, dataset: g.dataset, source: `gate of ${c.channel}` };
    }
  }
  return null;
}

// The recipe that made a version from its parents, in a few words: "quantize Q4_0 (rtn)",
// or the version's note for a push (e.g. "distilled from …").
export function recipeText(job, note) {
  const kind = job && job.kind;
  const p = (job && job.params) || {};
  if (kind === 'quantize') {
    const bits = [p.method || ''];
    if (p.calibration) bits.push(`calib ${typeof p.calibration === 'string' ? p.calibration : p.calibration.ref || p.calibration.name || 'data'}`);
    if (Array.isArray(p.overrides) && p.overrides.length) bits.push(`${p.overrides.length} override${p.overrides.length > 1 ? 's' : ''}`);
    const extra = bits.filter(Boolean).join(', ');
    return `quantize ${p.type || ''}${extra ? ` (${extra})` : ''}`.replace(/\s+/g, ' ').trim();
  }
  if (note) return note;
  return kind || 'derived';
}

const enc = encodeURIComponent;
export const versionHref = (name, v) => `#/models/${enc(name)}/versions/${v}`;

// ---- the page ----

export async function render(root, params) {
  const name = params.name;
  setTitle(name);
  const crumbs = el('p', { class: 'crumbs' }, el('a', { href: '#/models' }, 'Models'), ' / ', name);
  add(root, crumbs);

  let versions;
  try {
    versions = await api('GET', `/api/v1/models/${enc(name)}`);
  } catch (err) {
    if (err.status === 404) {
      setTitle('Not found');
      add(root, el('h1', null, `No model named “${name}”`), errorBox(err),
        el('p', null, el('a', { href: '#/models' }, 'See every model'), '.'));
      return;
    }
    throw err;
  }
  versions.sort((a, b) => b.version - a.version); // newest first
  const latest = versions[0];
  const isModel = latest.kind === 'model';

  add(root, el('div', { class: 'page-head' },
    el('h1', null, name, ' ', badge(latest.kind, latest.kind === 'model' ? 'info' : 'muted'))));

  // Everything else in parallel; each part that fails shows its own error box.
  const settle = (p) => p.then((value) => ({ value }), (error) => ({ error }));
  const [chRes, promoRes, fullRes, lineageRes] = await Promise.all([
    isModel ? settle(api('GET', `/api/v1/models/${enc(name)}/channels`)) : Promise.resolve({ value: [] }),
    isModel ? settle(api('GET', '/api/v1/promotions')) : Promise.resolve({ value: [] }),
    settle(mapLimit(versions.slice(0, 60), 6,
      (v) => api('GET', `/api/v1/models/${enc(name)}/versions/${v.version}`))),
    settle(loadLineage(name, versions)),
  ]);
  const channels = chRes.value || [];
  const full = new Map((fullRes.value || []).map((v) => [v.version, v]));

  add(root, summary(latest, versions, channels));

  if (isModel) {
    add(root, el('section', { 'aria-labelledby': 'h-channels' },
      el('h2', { id: 'h-channels' }, 'Channels'),
      chRes.error ? errorBox(chRes.error) : channelsTable(name, channels)));
  }

  add(root, el('section', { 'aria-labelledby': 'h-versions' },
    el('h2', { id: 'h-versions' }, 'Versions'),
    fullRes.error ? errorBox(fullRes.error) : null,
    versionsTable(name, versions, full, channels)));

  add(root, el('section', { 'aria-labelledby': 'h-lineage' },
    el('h2', { id: 'h-lineage' }, 'Lineage'),
    el('p', { class: 'muted small' },
      'Where each version came from, left to right; each arrow is labelled with the recipe that made the version it points to. ',
      'Boxes with a dashed border belong to other models. Select a box to open that version.'),
    lineageRes.error ? errorBox(lineageRes.error) : lineageGraph(name, lineageRes.value)));

  add(root, el('section', { 'aria-labelledby': 'h-history' },
    el('h2', { id: 'h-history' }, isModel ? 'Accuracy and size by version' : 'Size by version'),
    historyChart(name, versions, full, channels)));

  if (isModel) {
    const promos = (promoRes.value || []).filter((p) => p.model === name);
    add(root, el('section', { 'aria-labelledby': 'h-chhistory' },
      el('h2', { id: 'h-chhistory' }, 'Channel history'),
      el('p', { class: 'muted small' }, 'Every promotion request for this model, newest first: the gate’s numbers and who decided.'),
      promoRes.error ? errorBox(promoRes.error) : historyTable(promos)));
  }
}

function summary(latest, versions, channels) {
  const items = [
    ['Latest version', el('a', { href: versionHref(latest.name, latest.version) }, `v${latest.version}`)],
    ['Versions', String(versions.length)],
    ['Format', latest.format || '—'],
  ];
  if (latest.kind === 'model') {
    if (latest.architecture) items.push(['Architecture', latest.architecture]);
    if (latest.parameters) items.push(['Parameters', `${fmtNum(latest.parameters / 1e6, 1)} M`]);
    items.push(['Tensor types (latest)', tensorTypesText(latest.tensor_types) || '—']);
    const released = channels.filter((c) => c.current).map((c) => `${c.channel} → v${c.current.version}`);
    items.push(['Released', released.length ? released.join(', ') : 'not released on any channel']);
  }
  items.push(['Size (latest)', fmtBytes(latest.size)]);
  items.push(['Last pushed', `${fmtTime(latest.created_at)} by ${latest.created_by}`]);
  if (latest.note) items.push(['Note (latest)', latest.note]);
  return el('div', { class: 'card' },
    el('dl', { class: 'kv' }, items.map(([k, v]) => [el('dt', null, k), el('dd', null, v)])));
}

function channelsTable(name, channels) {
  const now = Date.now();
  return table([
    { key: 'channel', label: 'Channel', render: (c) => el('strong', null, c.channel) },
    { key: 'current', label: 'Current version', render: (c) => el('span', { 'data-testid': 'channel-current' },
      c.current ? el('a', { href: versionHref(name, c.current.version) }, `${name}:${c.current.version}`) : '—') },
    { key: 'released', label: 'Released', render: (c) => {
      if (!c.current) return el('span', { class: 'muted' }, 'nothing released yet');
      const expired = c.current.expires_at && Date.parse(c.current.expires_at) < now;
      return el('span', { class: 'cell-text' }, el('span', { class: 'nowrap' }, fmtTime(c.current.issued_at)), ' ',
        el('span', { class: 'muted small' }, `(#${c.current.sequence}`,
          c.current.approvers && c.current.approvers.length ? `, approved by ${c.current.approvers.join(', ')}` : '', ')'),
        el('br'),
        expired ? badge('expired', 'bad') : el('span', { class: 'muted small' }, `expires ${fmtTime(c.current.expires_at)}`));
    } },
    { key: 'gate', label: 'Gate', render: (c) => c.policy ? el('span', null,
      c.policy.gate_metric, el('span', { class: 'muted' }, ' on '), c.policy.gate_data,
      el('span', { class: 'muted small' }, ` (ctx ${c.policy.ctx})`)) : '—' },
    { key: 'threshold', label: 'Fails at a drop of', num: true, render: (c) =>
      c.policy ? `${fmtNum(c.policy.threshold, 2)} points` : '—' },
    { key: 'approvals', label: 'Approvals needed', num: true, render: (c) => c.policy ? String(c.policy.approvals) : '—' },
    { key: 'expiry', label: 'Expiry', num: true, render: (c) => c.policy ? `${c.policy.expiry_days} days` : '—' },
  ], channels, {
    id: 'channels',
    empty: { title: 'No channels yet.', hint: el('p', { class: 'empty-hint' }, 'An admin creates one with ',
      el('code', null, `mlvault channel set ${name} staging --gate-data DATASET`), '.') },
    rowAttrs: (c) => ({ 'data-channel': c.channel }),
  });
}

function versionsTable(name, versions, full, channels) {
  const isModel = versions[0] && versions[0].kind === 'model';
  const onChannel = (v) => channels.filter((c) => c.current && c.current.version === v).map((c) => c.channel);
  return table([
    { key: 'version', label: 'Version', render: (v) => el('a', { href: versionHref(name, v.version) }, `v${v.version}`) },
    { key: 'created_at', label: 'Created', render: (v) => el('span', null,
      el('span', { class: 'nowrap' }, fmtTime(v.created_at)), el('br'), el('span', { class: 'muted small' }, `by ${v.created_by}`)) },
    { key: 'size', label: 'Size', num: true, render: (v) => fmtBytes(v.size) },
    { key: 'format', label: isModel ? 'Format · tensor types' : 'Format', render: (v) => v.kind === 'dataset' ? v.format :
      el('span', null, v.format, el('span', { class: 'muted small' }, ` · ${tensorTypesText(v.tensor_types) || '—'}`)) },
    { key: 'parents', label: 'Parents', render: (v) => {
      const f = full.get(v.version);
      if (!f) return el('span', { class: 'muted' }, '?');
      if (!f.parents.length) return el('span', { class: 'muted' }, 'none');
      return f.parents.map((r, i) => [i ? ', ' : '', refLink(r)]);
    } },
    { key: 'accuracy', label: 'Accuracy', num: true, render: (v) => {
      const f = full.get(v.version);
      const a = f && pickAccuracy(f.evaluations, channels, v.version);
      return a ? el('span', { title: `${a.metric} on ${a.dataset}` }, fmtMetric(a.metric, a.value))
        : el('span', { class: 'muted' }, v.kind === 'model' ? 'not evaluated' : 'n/a');
    } },
    { key: 'digest', label: 'Digest', render: (v) => el('span', { class: 'digest', title: v.digest }, shortDigest(v.digest)) },
    { key: 'channels', label: 'Channels', render: (v) => {
      const c = onChannel(v.version);
      return c.length ? el('span', { class: 'badges' }, c.map((x) => badge(x, 'ok'))) : el('span', { class: 'muted' }, '—');
    } },
    { key: 'note', label: 'Note', render: (v) => v.note ? el('span', { class: 'small cell-text' }, v.note) : '' },
  ].filter((c) => isModel || !['accuracy', 'channels'].includes(c.key)), versions, { id: 'versions', rowAttrs: (v) => ({ 'data-version': String(v.version) }) });
}

// "name:3" → a link to that version's page.
export function refLink(ref) {
  const m = /^(.*):(\d+)$/.exec(ref);
  return m ? el('a', { href: versionHref(m[1], m[2]) }, ref) : el('span', null, ref);
}

// ---- lineage ----

// The union of the lineage of every version (newest 40): ancestors and descendants,
// across models. Plus each model's version list, for notes and tensor types.
async function loadLineage(name, versions) {
  const nodes = new Map();
  const edges = new Map();
  const parts = await mapLimit(versions.slice(0, 40), 4,
    (v) => api('GET', `/api/v1/models/${enc(name)}/versions/${v.version}/lineage`));
  for (const l of parts) {
    for (const n of l.nodes || []) nodes.set(n.id, n);
    for (const e of l.edges || []) edges.set(`${e.from}\u0000${e.to}`, e);
  }
  const info = new Map(versions.map((v) => [`${v.name}:${v.version}`, v]));
  const others = [...new Set([...nodes.values()].map((n) => n.name))].filter((n) => n !== name);
  await mapLimit(others, 4, async (other) => {
    try {
      for (const v of await api('GET', `/api/v1/models/${enc(other)}`)) info.set(`${v.name}:${v.version}`, v);
    } catch {
      /* the graph still draws without notes */
    }
  });
  return { nodes: [...nodes.values()], edges: [...edges.values()], info };
}

// Splits a label into at most two lines of about n characters, at spaces where it can.
function wrapLabel(text, n) {
  const words = String(text).split(/\s+/);
  const lines = [''];
  for (const w of words) {
    const cur = lines[lines.length - 1];
    if (!cur) lines[lines.length - 1] = w;
    else if ((cur + ' ' + w).length <= n) lines[lines.length - 1] = `${cur} ${w}`;
    else lines.push(w);
  }
  const out = lines.slice(0, 2).map((l) => truncate(l, n));
  if (lines.length > 2 && !out[1].endsWith('…')) out[1] = truncate(`${out[1]} …`, n);
  return out;
}

// The text cut (with …) to fit max px.
function fitText(s, max, px, bold) {
  s = String(s);
  if (textW(s, px, bold) <= max) return s;
  while (s.length > 1 && textW(`${s}…`, px, bold) > max) s = s.slice(0, -1);
  return `${s}…`;
}

function truncate(s, n) {
  s = String(s || '');
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}

// Text widths (px) for layout before the SVG is on the page: measured on a canvas in
// the page's font (bold for node titles), an estimate if there is no canvas.
let measureCtx;
function textW(s, px, bold) {
  if (measureCtx === undefined) measureCtx = document.createElement('canvas').getContext('2d') || null;
  if (!measureCtx) return String(s).length * px * 0.6;
  measureCtx.font = `${bold ? '700 ' : ''}${px}px ${getComputedStyle(document.body).fontFamily}`;
  return measureCtx.measureText(String(s)).width;
}

function nodeTypeLine(n, info) {
  const i = info.get(n.id);
  if (n.kind === 'dataset') return `dataset · ${fmtBytes(n.size)}`;
  const p = (n.job && n.job.params) || {};
  const types = n.job && n.job.kind === 'quantize' && p.type ? p.type : tensorTypesText(i && i.tensor_types);
  return [n.format && n.format !== 'gguf' ? n.format : '', types, fmtBytes(n.size)].filter(Boolean).join(' · ');
}

function lineageGraph(name, data) {
  const { nodes, edges, info } = data;
  if (!nodes.length) return emptyState('No lineage recorded.');
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const parents = new Map(nodes.map((n) => [n.id, []]));
  for (const e of edges) if (parents.has(e.to) && byId.has(e.from)) parents.get(e.to).push(e.from);

  // Layer = the longest path from a root, so every edge points rightwards.
  const layer = new Map();
  const depth = (id, seen = new Set()) => {
    if (layer.has(id)) return layer.get(id);
    if (seen.has(id)) return 0; // a cycle should not exist; do not loop on one
    seen.add(id);
    const ps = parents.get(id) || [];
    const d = ps.length ? 1 + Math.max(...ps.map((p) => depth(p, seen))) : 0;
    layer.set(id, d);
    return d;
  };
  nodes.forEach((n) => depth(n.id));
  const nLayers = Math.max(...layer.values()) + 1;
  const layers = Array.from({ length: nLayers }, () => []);
  const cmp = (a, b) => (a.name === name) - (b.name === name) || a.name.localeCompare(b.name) || a.version - b.version;
  for (const n of [...nodes].sort(cmp)) layers[layer.get(n.id)].push(n);
  // Order each layer by the mean position of its parents (fewer crossings).
  const pos = new Map();
  layers.forEach((ls, li) => {
    if (li > 0) {
      const key = (n) => {
        const ps = parents.get(n.id);
        return ps.length ? ps.reduce((s, p) => s + pos.get(p), 0) / ps.length : 1e9;
      };
      ls.sort((a, b) => key(a) - key(b) || cmp(a, b));
    }
    ls.forEach((n, i) => pos.set(n.id, i));
  });

  const labels = new Map(edges.map((e) => {
    const child = byId.get(e.to);
    const i = info.get(e.to);
    return [e, recipeText(child && child.job, i && i.note)];
  }));
  const LINE = 22; // characters per label line; two lines at most
  const wrapped = new Map([...labels].map(([e, t]) => [e, wrapLabel(t, LINE)]));
  const nodeW = Math.min(260, Math.max(130, ...nodes.map((n) =>
    Math.max(textW(n.id, 14, true), textW(nodeTypeLine(n, info), 12)) + 26)));
  const nodeH = 54;
  const vGap = 34;
  const hGap = Math.min(200, Math.max(80, ...[...wrapped.values()].flat().map((s) => textW(s, 11.5) + 40)));
  const pad = 16;
  const maxRows = Math.max(...layers.map((l) => l.length));
  const height = pad * 2 + maxRows * nodeH + (maxRows - 1) * vGap;
  const width = pad * 2 + nLayers * nodeW + (nLayers - 1) * hGap;
  const xy = new Map();
  layers.forEach((ls, li) => {
    const colH = ls.length * nodeH + (ls.length - 1) * vGap;
    const y0 = pad + (height - pad * 2 - colH) / 2;
    ls.forEach((n, i) => xy.set(n.id, { x: pad + li * (nodeW + hGap), y: y0 + i * (nodeH + vGap) }));
  });

  const g = svg('svg', {
    id: 'lineage', class: 'graph', width, height, viewBox: `0 0 ${width} ${height}`,
    role: 'group', 'aria-label': `Lineage of ${name}: ${nodes.length} versions, ${edges.length} derivations`,
  },
  svg('defs', null, svg('marker', {
    id: 'lineage-arrow', viewBox: '0 0 10 10', refX: '9', refY: '5', markerWidth: '8', markerHeight: '8', orient: 'auto-start-reverse',
  }, svg('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrowhead' }))));

  // Edges first so the boxes sit on top of them.
  for (const e of edges) {
    const a = xy.get(e.from);
    const b = xy.get(e.to);
    if (!a || !b) continue;
    const x1 = a.x + nodeW;
    const y1 = a.y + nodeH / 2;
    const x2 = b.x - 2;
    const y2 = b.y + nodeH / 2;
    const dx = Math.max(40, (x2 - x1) / 2);
    const full = labels.get(e);
    const lines = wrapped.get(e);
    const lw = Math.max(...lines.map((l) => textW(l, 11.5))) + 12;
    const lh = 14 * lines.length + 4;
    // The label sits in the gap right after the parent, where no box can be.
    const lx = x1 + hGap / 2;
    const t = Math.min(1, (lx - x1) / Math.max(1, x2 - x1));
    const ly = y1 + (y2 - y1) * (3 * t * t - 2 * t * t * t); // the curve's height there
    g.append(svg('g', { class: 'lineage-edge', 'data-from': e.from, 'data-to': e.to, 'data-recipe': full },
      svg('title', null, `${e.from} → ${e.to}: ${full}`),
      svg('path', { d: `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`, 'marker-end': 'url(#lineage-arrow)' }),
      svg('rect', { class: 'edge-label-bg', x: lx - lw / 2, y: ly - lh / 2, width: lw, height: lh, rx: 3 }),
      svg('text', { class: 'edge-label', x: lx, y: ly - lh / 2 + 13, 'text-anchor': 'middle' },
        lines.map((l, i) => svg('tspan', { x: lx, dy: i ? 14 : 0 }, i < lines.length - 1 ? `${l} ` : l)))));
  }

  for (const n of nodes) {
    const { x, y } = xy.get(n.id);
    const href = versionHref(n.name, n.version);
    const type = nodeTypeLine(n, info);
    const own = n.name === name;
    const go = () => { location.hash = href; };
    g.append(svg('g', {
      class: `lineage-node ${own ? 'is-current' : 'is-other'}`, 'data-ref': n.id, tabindex: '0', role: 'link',
      'aria-label': `${n.id}, ${type}. Open this version.`, transform: `translate(${x},${y})`,
      onclick: go,
      onkeydown: (ev) => {
        if (ev.key === 'Enter' || ev.key === ' ') {
          ev.preventDefault();
          go();
        }
      },
    },
    svg('title', null, `${n.id} — ${type}${info.get(n.id) && info.get(n.id).note ? `\n${info.get(n.id).note}` : ''}`),
    svg('rect', { width: nodeW, height: nodeH, rx: 6 }),
    svg('text', { class: 'node-title', x: 12, y: 22 }, fitText(n.id, nodeW - 22, 14, true)),
    svg('text', { class: 'node-sub', x: 12, y: 41 }, fitText(type, nodeW - 22, 12))));
  }
  // Shrinks to fit its box, but not below 80 % (the labels would be too small to read):
  // past that the box scrolls sideways. (CSSOM, not a style attribute: the CSP allows it.)
  g.style.minWidth = `${Math.round(width * 0.8)}px`;
  return el('div', { class: 'graph-wrap' }, g);
}

// ---- accuracy and size chart ----

function historyChart(name, versions, full, channels) {
  const rows = [...versions].sort((a, b) => a.version - b.version).slice(-30).map((v) => {
    const f = full.get(v.version);
    return { v: v.version, size: v.size, acc: f ? pickAccuracy(f.evaluations, channels, v.version) : null };
  });
  const accRows = rows.filter((r) => r.acc && isAccuracy(r.acc.metric));
  const metric = accRows.length ? accRows[accRows.length - 1].acc.metric : '';
  const hasAcc = (r) => r.acc && r.acc.metric === metric;

  // Two panels over one version axis: accuracy (a line, top) and size (bars, bottom),
  // so neither series' labels sit on the other's.
  const W = 860;
  const m = { l: 78, r: 24, t: 16 };
  const accH = metric ? 150 : 0;
  const gapH = metric ? 44 : 0;
  const sizeH = 130;
  const H = m.t + accH + gapH + sizeH + 52;
  const iw = W - m.l - m.r;
  const n = rows.length;
  const step = iw / n;
  const xAt = (i) => m.l + step * (i + 0.5);
  const showValues = n <= 14;

  const c = svg('svg', {
    id: 'history-chart', class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img',
    'aria-label': `${metric ? `${metric} and size` : 'Size'} of each version of ${name}: ` +
      rows.map((r) => `v${r.v} ${fmtBytes(r.size)}${hasAcc(r) ? `, ${fmtMetric(metric, r.acc.value)}` : ''}`).join('; '),
  });

  if (metric) {
    const vals = rows.filter(hasAcc).map((r) => r.acc.value * 100);
    const span = Math.max(Math.max(...vals) - Math.min(...vals), 2);
    const lo = Math.max(0, Math.floor(Math.min(...vals) - span * 0.4));
    const hi = Math.min(100, Math.ceil(Math.max(...vals) + span * 0.4));
    const top = m.t + 14;
    const ih = accH - 14;
    const y = (p) => top + ih - ((p - lo) / (hi - lo || 1)) * ih;
    for (let i = 0; i <= 4; i++) {
      const v = lo + ((hi - lo) * i) / 4;
      c.append(svg('line', { class: 'grid-line', x1: m.l, x2: m.l + iw, y1: y(v), y2: y(v) }),
        svg('text', { x: m.l - 8, y: y(v) + 4, 'text-anchor': 'end' }, `${fmtNum(v, hi - lo < 10 ? 1 : 0)} %`));
    }
    c.append(svg('text', { class: 'axis-title', x: m.l, y: m.t + 2 }, `Accuracy: ${metric} (%)`),
      svg('g', { class: 'axis' }, svg('line', { x1: m.l, x2: m.l, y1: top, y2: top + ih }),
        svg('line', { x1: m.l, x2: m.l + iw, y1: top + ih, y2: top + ih })));
    const pts = rows.map((r, i) => (hasAcc(r) ? [xAt(i), y(r.acc.value * 100), r] : null)).filter(Boolean);
    if (pts.length > 1) c.append(svg('polyline', { class: 'series-acc', points: pts.map((p) => `${p[0]},${p[1]}`).join(' ') }));
    for (const [x, yy, r] of pts) {
      c.append(svg('g', { class: 'point point-acc', 'data-version': String(r.v) },
        svg('title', null, `v${r.v}: ${metric} ${fmtMetric(metric, r.acc.value)} on ${r.acc.dataset}`),
        svg('circle', { class: 'dot-acc', cx: x, cy: yy, r: 4.5 }),
        showValues ? svg('text', { class: 'value-acc', x, y: yy - 10, 'text-anchor': 'middle' }, fmtMetric(metric, r.acc.value)) : null));
    }
    rows.forEach((r, i) => {
      if (!hasAcc(r)) c.append(svg('text', { class: 'small-note', x: xAt(i), y: top + ih - 6, 'text-anchor': 'middle' }, 'not evaluated'));
    });
  }

  // Size bars from zero.
  const top = m.t + accH + gapH + 14;
  const ih = sizeH - 14;
  const sMax = Math.max(...rows.map((r) => r.size || 0), 1) * 1.2;
  const y = (s) => top + ih - (s / sMax) * ih;
  for (let i = 0; i <= 2; i++) {
    const v = (sMax * i) / 2;
    c.append(svg('line', { class: 'grid-line', x1: m.l, x2: m.l + iw, y1: y(v), y2: y(v) }),
      svg('text', { x: m.l - 8, y: y(v) + 4, 'text-anchor': 'end' }, fmtBytes(v)));
  }
  c.append(svg('text', { class: 'axis-title', x: m.l, y: top - 12 }, 'Size'));
  const bw = Math.min(48, step * 0.5);
  rows.forEach((r, i) => {
    const x = xAt(i);
    c.append(svg('g', { class: 'point point-size', 'data-version': String(r.v) },
      svg('title', null, `v${r.v}: size ${fmtBytes(r.size)}`),
      svg('rect', { class: 'bar-size', x: x - bw / 2, y: y(r.size || 0), width: bw, height: top + ih - y(r.size || 0) }),
      showValues ? svg('text', { class: 'value-size', x, y: y(r.size || 0) - 6, 'text-anchor': 'middle' }, fmtBytes(r.size)) : null));
  });
  c.append(svg('g', { class: 'axis' }, svg('line', { x1: m.l, x2: m.l, y1: top, y2: top + ih }),
    svg('line', { x1: m.l, x2: m.l + iw, y1: top + ih, y2: top + ih })));
  rows.forEach((r, i) => c.append(svg('text', { x: xAt(i), y: top + ih + 18, 'text-anchor': 'middle' }, `v${r.v}`)));
  c.append(svg('text', { class: 'axis-title', x: m.l + iw / 2, y: H - 6, 'text-anchor': 'middle' }, 'Version'));

  return el('div', { class: 'card chart-card' },
    metric ? null : el('p', { class: 'muted small' },
      latestIsModel(versions) ? ['No version has been evaluated yet, so only sizes are shown. Evaluate one with ',
        el('code', null, `mlvault eval ${name}:N --data DATASET`), '.'] : 'Datasets have no accuracy; their sizes are shown.'),
    c);
}

const latestIsModel = (versions) => versions[0] && versions[0].kind === 'model';

// ---- channel history ----

function historyTable(promos) {
  const stateKind = { released: 'ok', rejected: 'bad', pending: 'warn', gating: 'info' };
  return table([
    { key: 'id', label: 'Request', render: (p) => el('a', { href: `#/promotions/${p.id}` }, `#${p.id}`) },
    { key: 'requested_at', label: 'Requested', render: (p) => el('span', null,
      el('span', { class: 'nowrap' }, fmtTime(p.requested_at)), el('br'), el('span', { class: 'muted small' }, `by ${p.requested_by}`)) },
    { key: 'channel', label: 'Channel', render: (p) => el('strong', null, p.channel) },
    { key: 'version', label: 'Version', render: (p) => el('a', { href: versionHref(p.model, p.version) }, `v${p.version}`) },
    { key: 'state', label: 'State', render: (p) => badge(p.state, stateKind[p.state] || 'muted') },
    { key: 'gate', label: 'Gate', render: (p) => el('span', { class: 'cell-text' }, gateText(p.gate)) },
    { key: 'decided', label: 'Decision', render: (p) => el('span', { class: 'cell-text' }, decisionText(p)) },
  ], promos, {
    id: 'channel-history',
    empty: { title: 'No promotion requests yet.', hint: el('p', { class: 'empty-hint' }, 'An engineer asks for one with ',
      el('code', null, 'mlvault promote NAME:V --to CHANNEL'), ' or on the Promotions page.') },
    rowAttrs: (p) => ({ 'data-promotion': String(p.id) }),
  });
}

function gateText(g) {
  if (!g) return el('span', { class: 'muted' }, 'not run yet');
  const kind = g.verdict === 'pass' ? 'ok' : g.verdict === 'fail' ? 'bad' : 'muted';
  return el('span', null, badge(g.verdict, kind), ' ',
    el('span', { class: 'small' },
      g.baseline ? `${fmtMetric(g.metric, g.baseline.value)} → ` : '',
      fmtMetric(g.metric, g.candidate && g.candidate.value),
      g.drop !== null && g.drop !== undefined ? ` (drop ${fmtNum(g.drop, 2)} pts)` : ''));
}

function decisionText(p) {
  if (p.state === 'rejected' && p.rejection) {
    return el('span', null, `rejected by ${p.rejection.user}`, el('br'),
      el('span', { class: 'muted small' }, `${fmtTime(p.rejection.at)}: ${p.rejection.reason}`));
  }
  const who = (p.approvals || []).map((a) => a.user);
  if (p.state === 'released') {
    return el('span', null, who.length ? `approved by ${who.join(', ')}` : 'released (no approval needed)', el('br'),
      el('span', { class: 'muted small' }, fmtTime(p.decided_at)));
  }
  if (p.state === 'pending') return el('span', null, `${who.length} of ${p.approvals_needed} approvals`);
  return el('span', { class: 'muted' }, 'gate running');
}
