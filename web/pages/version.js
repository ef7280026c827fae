// One version: manifest summary, files, signature check, evaluations, parents and
// children, where it is deployed, and how to download it.
import {
  add, api, apiRaw, el, table, badge, errorBox, fmtBytes, fmtTime, fmtNum, fmtAgo, shortDigest, setTitle, toast,
} from '../lib.js';
import { fmtMetric, recipeText, refLink, tensorTypesText, versionHref } from './model.js';

const enc = encodeURIComponent;
// Downloads go through the browser's memory (a Blob), so only offer them for files
// that comfortably fit; larger ones are for the command-line tool.
const BLOB_LIMIT = 2 * 1024 ** 3;

export async function render(root, params) {
  const { name, v } = params;
  const base = `/api/v1/models/${enc(name)}/versions/${enc(v)}`;
  setTitle(`${name}:${v}`);
  add(root, el('p', { class: 'crumbs' },
    el('a', { href: '#/models' }, 'Models'), ' / ',
    el('a', { href: `#/models/${enc(name)}` }, name), ' / ', `v${v}`));

  let ver;
  try {
    ver = await api('GET', base);
  } catch (err) {
    if (err.status === 404 || err.status === 400) {
      setTitle('Not found');
      add(root, el('h1', null, `No version ${v} of “${name}”`), errorBox(err),
        el('p', null, el('a', { href: `#/models/${enc(name)}` }, `See the versions of ${name}`), ' or ',
          el('a', { href: '#/models' }, 'every model'), '.'));
      return;
    }
    throw err;
  }
  const ref = `${ver.name}:${ver.version}`;
  const man = ver.manifest || {};
  setTitle(ref);

  add(root, el('div', { class: 'page-head' },
    el('h1', null, ref, ' ', badge(ver.kind, ver.kind === 'model' ? 'info' : 'muted'))),
  man.note ? el('p', { class: 'lead' }, man.note) : null);

  // Where it is deployed needs the channels, the nodes and the registry's own served model.
  const settle = (p) => p.then((value) => ({ value }), (error) => ({ error }));
  const [chRes, nodesRes, servedRes] = await Promise.all([
    ver.kind === 'model' ? settle(api('GET', `/api/v1/models/${enc(ver.name)}/channels`)) : Promise.resolve({ value: [] }),
    ver.kind === 'model' ? settle(api('GET', '/api/v1/nodes')) : Promise.resolve({ value: [] }),
    ver.kind === 'model' ? settle(api('GET', '/v1/models')) : Promise.resolve({ value: null }),
  ]);

  const sigBox = el('div', { 'data-testid': 'signature-state', 'aria-live': 'polite' });
  add(root, el('div', { class: 'grid' },
    el('div', { class: 'card' }, el('h2', null, 'Manifest'), manifestList(ver, man)),
    el('div', { class: 'stack' },
      el('div', { class: 'card' }, el('h2', null, 'Signature and integrity'), sigBox, storedSignature(ver.signature)),
      el('div', { class: 'card' }, el('h2', null, 'Deployed'), deployed(ver, chRes, nodesRes, servedRes)))));

  add(root, el('section', { 'aria-labelledby': 'h-files' },
    el('h2', { id: 'h-files' }, 'Files'),
    filesTable(ver, base),
    el('p', { class: 'muted small' }, 'To download the whole version, verified and decrypted, with its signature (',
      el('code', null, 'model.sig'), ') — the way to go for large files:'),
    el('pre', null, el('code', null, `mlvault export ${ref} -o ${ver.name}-v${ver.version}`)),
    el('p', { class: 'muted small' }, 'Against this registry, set ', el('code', null, `MLVAULT_URL=${location.origin}`),
      ' and ', el('code', null, 'MLVAULT_TOKEN'), ' (your token) first.')));

  if (ver.kind === 'model') {
    add(root, el('section', { 'aria-labelledby': 'h-evals' },
      el('h2', { id: 'h-evals' }, 'Evaluations'),
      evalsTable(ver.evaluations || [], ref)));
  }

  add(root, el('section', { 'aria-labelledby': 'h-lineage' },
    el('h2', { id: 'h-lineage' }, 'Lineage'),
    lineageCard(ver, man)));

  // The full check reads and hashes every file, so it runs after the page is shown.
  let alive = true;
  const verify = async () => {
    sigBox.setAttribute('aria-busy', 'true');
    sigBox.dataset.state = 'checking';
    sigBox.replaceChildren(el('p', null, badge('checking', 'info'), ' Checking the signature and every file’s SHA-256…'));
    try {
      const r = await api('POST', `${base}/verify`);
      if (!alive) return;
      const ok = r.ok !== false && r.verified !== false;
      sigBox.dataset.state = ok ? 'verified' : 'failed';
      sigBox.replaceChildren(
        el('p', null, ok ? badge('verified', 'ok') : badge('not verified', 'bad'), ' ',
          ok ? 'The signature is valid and every file matches the manifest.' : 'The check did not pass.'),
        el('ul', { class: 'checks small mono' }, (r.checked || []).map((line) => el('li', null, line))),
        againButton());
    } catch (err) {
      if (!alive) return;
      const integrity = err.code === 'EINTEGRITY';
      sigBox.dataset.state = integrity ? 'failed' : 'error';
      sigBox.replaceChildren(
        el('p', null, integrity ? badge('FAILED', 'bad') : badge('could not check', 'warn'), ' ',
          integrity ? 'This version does not verify: do not use it.' : 'The check could not run.'),
        errorBox(err), againButton());
    } finally {
      if (alive) sigBox.removeAttribute('aria-busy');
    }
  };
  const againButton = () => el('button', { type: 'button', class: 'btn btn-small', onclick: verify }, 'Check again');
  verify();
  return () => { alive = false; };
}

function manifestList(ver, man) {
  const rows = [
    ['Name', el('a', { href: `#/models/${enc(ver.name)}` }, ver.name)],
    ['Version', String(ver.version)],
    ['Kind', ver.kind],
    ['Format', man.format || '—'],
  ];
  if (ver.kind === 'model') {
    if (man.architecture) rows.push(['Architecture', man.architecture]);
    if (man.parameters) rows.push(['Parameters', `${fmtNum(man.parameters / 1e6, 1)} M (${Number(man.parameters).toLocaleString()})`]);
    rows.push(['Tensor types', tensorTypesText(man.tensor_types) || '—']);
  }
  rows.push(['Size', `${fmtBytes(ver.size)} (${Number(ver.size).toLocaleString()} bytes)`]);
  rows.push(['Created by', ver.created_by || man.creator || '—']);
  rows.push(['Created at', fmtTime(ver.created_at || man.created_at)]);
  if (man.note) rows.push(['Note', man.note]);
  if (ver.origin && ver.origin !== 'local') rows.push(['Origin', ver.origin]);
  rows.push(['Digest', el('span', { class: 'mono wrap-anywhere small' }, ver.digest)]);
  return el('dl', { class: 'kv' }, rows.map(([k, val]) => [el('dt', null, k), el('dd', null, val)]));
}

function storedSignature(sig) {
  if (!sig) return null;
  return el('details', { class: 'small' },
    el('summary', null, 'Stored signature'),
    el('dl', { class: 'kv' },
      el('dt', null, 'State'), el('dd', null, sig.state || '—', sig.detail ? ` (${sig.detail})` : ''),
      el('dt', null, 'Signer'), el('dd', null, sig.signer || '—'),
      el('dt', null, 'Format'), el('dd', null, sig.format || '—'),
      el('dt', null, 'Key'), el('dd', null, el('span', { class: 'mono wrap-anywhere' }, sig.key_hint || '—'))));
}

function deployed(ver, chRes, nodesRes, servedRes) {
  const ref = `${ver.name}:${ver.version}`;
  const box = el('div', { 'data-testid': 'deployed' });
  if (ver.kind !== 'model') {
    box.append(el('p', { class: 'muted' }, 'Datasets are not deployed.'));
    return box;
  }
  const items = [];
  for (const c of chRes.value || []) {
    if (c.current && c.current.version === ver.version) {
      const expired = c.current.expires_at && Date.parse(c.current.expires_at) < Date.now();
      items.push(el('li', null, badge('channel', 'ok'), ' ', el('strong', null, c.channel),
        ` — release #${c.current.sequence} of ${fmtTime(c.current.issued_at)}`,
        expired ? [' ', badge('expired', 'bad')] : el('span', { class: 'muted' }, `, expires ${fmtTime(c.current.expires_at)}`)));
    }
  }
  for (const n of nodesRes.value || []) {
    if (n.state && n.state.serving === ref) {
      items.push(el('li', null, badge('node', 'info'), ' ', el('a', { href: '#/nodes' }, n.name),
        ' — ', n.state.healthy ? badge('healthy', 'ok') : badge('unhealthy', 'bad'),
        n.state.channel ? ` following ${n.state.channel}` : '',
        el('span', { class: 'muted' }, `, last report ${fmtAgo(n.last_seen)}`)));
    }
  }
  const served = servedRes.value && Array.isArray(servedRes.value.data) ? servedRes.value.data : [];
  if (served.some((m) => m.id === ref)) {
    items.push(el('li', null, badge('registry', 'info'), ' served by this registry’s chat API (',
      el('a', { href: '#/chat' }, 'try it'), ')'));
  }
  if (items.length) box.append(el('ul', { class: 'plain-list stack' }, items));
  else box.append(el('p', { class: 'muted' }, 'Not deployed: no channel’s current release is this version and no serving node reports it.'));
  if (chRes.error) box.append(errorBox(chRes.error));
  // Nodes are optional (older registries have no such route): only other errors show.
  if (nodesRes.error && nodesRes.error.status !== 404) box.append(errorBox(nodesRes.error));
  return box;
}

function filesTable(ver, base) {
  return table([
    { key: 'path', label: 'Path', render: (f) => el('span', { class: 'mono wrap-anywhere' }, f.path) },
    { key: 'size', label: 'Size', num: true, render: (f) => el('span', { title: `${f.size} bytes` }, fmtBytes(f.size)) },
    { key: 'sha256', label: 'SHA-256', render: (f) => el('span', { class: 'mono small wrap-anywhere' }, f.sha256) },
    { key: 'download', label: 'Download', render: (f) => f.size <= BLOB_LIMIT
      ? el('button', { type: 'button', class: 'btn btn-small', 'aria-label': `Download ${f.path}`,
        onclick: (e) => download(e.currentTarget, base, f) }, 'Download')
      : el('span', { class: 'muted small' }, 'too large for the browser: use the command below') },
  ], ver.files || [], {
    id: 'files',
    empty: 'This version has no files.',
    rowAttrs: (f) => ({ 'data-path': f.path }),
  });
}

// Fetches the file with the token (a plain link cannot send it) and saves it.
async function download(button, base, f) {
  const label = button.textContent;
  button.disabled = true;
  button.textContent = 'Downloading…';
  try {
    const res = await apiRaw('GET', `${base}/files/${f.path.split('/').map(enc).join('/')}`);
    const blob = await res.blob();
    const url = URL.createObjectURL(blob);
    const a = el('a', { href: url, download: f.path.split('/').pop() });
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    toast(`Downloaded ${f.path} (${fmtBytes(blob.size)}).`, 'ok');
  } catch (err) {
    toast(`Download of ${f.path} failed: ${err.code || ''} ${err.message}`, 'error');
  } finally {
    button.disabled = false;
    button.textContent = label;
  }
}

function evalsTable(evals, ref) {
  return table([
    { key: 'dataset', label: 'Dataset', render: (e) => refLink(e.dataset) },
    { key: 'metric', label: 'Metric' },
    { key: 'value', label: 'Value', num: true, render: (e) => el('strong', null, fmtMetric(e.metric, e.value)) },
    { key: 'ci', label: '95% interval', num: true, render: (e) => e.ci_low !== undefined && e.ci_high !== undefined && e.ci_high > 0
      ? `${fmtMetric(e.metric, e.ci_low)} – ${fmtMetric(e.metric, e.ci_high)}` : '—' },
    { key: 'perplexity', label: 'Perplexity', num: true, render: (e) => (e.perplexity ? fmtNum(e.perplexity, 2) : '—') },
    { key: 'n_samples', label: 'Samples', num: true, render: (e) => (e.n_samples ?? '—').toLocaleString() },
    { key: 'ctx', label: 'Context', num: true },
    { key: 'baseline', label: 'Baseline', render: (e) => e.baseline_digest
      ? el('span', { class: 'digest', title: e.baseline_digest }, shortDigest(e.baseline_digest)) : el('span', { class: 'muted' }, 'none') },
    { key: 'created', label: 'Run', render: (e) => el('span', null, el('span', { class: 'nowrap' }, fmtTime(e.created_at)),
      el('br'), el('span', { class: 'muted small' }, `by ${e.created_by}${e.seconds ? `, ${fmtNum(e.seconds, 1)} s` : ''}`)) },
  ], evals, {
    id: 'evaluations',
    empty: { title: 'Not evaluated yet.', hint: el('p', { class: 'empty-hint' }, 'Run ',
      el('code', null, `mlvault eval ${ref} --data DATASET`), ' or an eval job on the Jobs page.') },
  });
}

function lineageCard(ver, man) {
  const lin = man.lineage || {};
  const job = lin.job || {};
  const p = job.params || {};
  const recipe = [];
  if (job.kind === 'quantize') {
    const counts = {};
    for (const t of Object.values(p.tensor_types || {})) counts[t] = (counts[t] || 0) + 1;
    recipe.push(['Recipe', recipeText(job)]);
    recipe.push(['Target type', p.type || '—'], ['Method', p.method || '—']);
    if (p.calibration) recipe.push(['Calibration', typeof p.calibration === 'string' ? p.calibration : JSON.stringify(p.calibration)]);
    if (Object.keys(counts).length) {
      recipe.push(['Tensors', Object.entries(counts).sort((a, b) => b[1] - a[1]).map(([t, c]) => `${t} × ${c}`).join(', ')]);
    }
    if (Array.isArray(p.overrides) && p.overrides.length) recipe.push(['Overrides', p.overrides.map(String).join(', ')]);
    if (Array.isArray(p.raised) && p.raised.length) recipe.push(['Raised to keep accuracy', p.raised.map(String).join(', ')]);
    if (Array.isArray(p.dequantized_from) && p.dequantized_from.length) recipe.push(['Dequantized from', p.dequantized_from.join(', ')]);
  } else {
    recipe.push(['Made by', job.kind || '—']);
    // A pushed child (distilled, pruned, fine-tuned elsewhere) says how in its note.
    if (ver.parents && ver.parents.length && man.note) recipe.push(['Recipe (note)', man.note]);
  }
  if (Array.isArray(lin.datasets) && lin.datasets.length) {
    recipe.push(['Datasets', lin.datasets.map((d, i) => [i ? ', ' : '', typeof d === 'string' ? refLink(d)
      : refLink(d.name && d.version ? `${d.name}:${d.version}` : JSON.stringify(d))])]);
  }
  const links = (refs) => (refs && refs.length
    ? el('ul', { class: 'plain-list' }, refs.map((r) => el('li', null, refLink(r))))
    : el('span', { class: 'muted' }, 'none'));
  return el('div', { class: 'grid' },
    el('div', { class: 'card' },
      el('dl', { class: 'kv' },
        el('dt', null, 'Parents'), el('dd', { 'data-testid': 'parents' }, links(ver.parents)),
        el('dt', null, 'Children'), el('dd', { 'data-testid': 'children' }, links(ver.children))),
      el('p', { class: 'small' }, el('a', { href: `#/models/${enc(ver.name)}` }, `The lineage graph of ${ver.name}`))),
    el('div', { class: 'card' },
      el('dl', { class: 'kv' }, recipe.map(([k, val]) => [el('dt', null, k), el('dd', null, val)]))));
}

export { versionHref };
