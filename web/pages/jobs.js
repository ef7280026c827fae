// Jobs: the list (filtered by state, refreshed while anything runs) and, for roles that
// may run jobs, the launcher for quantize and eval jobs.
import { add, api, can, el, badge, table, errorBox, fmtTime, fmtAgo, fmtDuration, setTitle, poll } from '../lib.js';

export const JOB_STATES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];
const STATE_KIND = { queued: 'info', running: 'info', succeeded: 'ok', failed: 'bad', cancelled: 'muted' };
const QUANT_TYPES = ['Q8_0', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q4_K', 'Q6_K', 'Q4_K_M', 'Q5_K_M'];
const METHODS = [
  ['rtn', 'rtn — round to nearest (no calibration)'],
  ['imatrix', 'imatrix — importance matrix (needs calibration data)'],
  ['gptq', 'gptq — error-correcting (needs calibration data)'],
];
const METRICS = ['next_token_accuracy', 'perplexity', 'mc_accuracy', 'kld'];

export const isActive = (job) => job.state === 'queued' || job.state === 'running';

export function jobStateBadge(state) {
  return badge(state || 'unknown', STATE_KIND[state] || 'muted');
}

// What a job works on: its positional ref, or for a gate job its promotion.
export function jobTarget(job) {
  const p = job.params || {};
  if (p.ref) {
    // NAME or NAME:V (or NAME:latest) opens the model or the version; anything else stays text
    const m = /^([a-z0-9][a-z0-9._-]{0,63})(?::(\d+|latest))?$/.exec(p.ref);
    if (!m) return p.ref;
    const href = m[2] ? `#/models/${m[1]}/versions/${m[2]}` : `#/models/${m[1]}`;
    return el('a', { href }, p.ref);
  }
  if (job.kind === 'gate' && p.promotion !== undefined) {
    return el('a', { href: `#/promotions/${p.promotion}` }, `promotion #${p.promotion}`);
  }
  return '—';
}

// A bar while the job is queued or running; afterwards how long it took.
export function progressCell(job) {
  if (!isActive(job)) {
    const took = job.started_at && job.finished_at
      ? (Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000 : null;
    return took === null ? '' : el('span', { class: 'small muted nowrap' }, `took ${fmtDuration(took)}`);
  }
  const p = Math.max(0, Math.min(1, Number(job.progress) || 0));
  const pct = `${Math.round(p * 100)}%`;
  return el('div', null,
    el('div', { class: 'small muted' }, pct),
    el('progress', { max: '1', value: String(p), 'aria-label': `Job ${job.id} progress` }, pct));
}

// The step while running; afterwards the error, or what the job made or measured.
function outcome(job) {
  if (isActive(job)) return job.message || '';
  if (job.state !== 'succeeded') return job.error || '';
  const r = job.result || {};
  const m = /^([^:]+):(\d+)$/.exec(r.output || '');
  if (job.kind === 'quantize' && m) {
    return ['made ', el('a', { href: `#/models/${encodeURIComponent(m[1])}/versions/${m[2]}` }, r.output)];
  }
  if (job.kind === 'eval' && r.metric) return `${r.metric} ${Number(r.value).toFixed(4)}`;
  return '';
}

// Options for the ref fields: every version of every model (newest first, a few per
// model) and every dataset, from the catalog listing.
async function loadRefOptions(models, datasets) {
  let list;
  try {
    list = await api('GET', '/api/v1/models');
  } catch {
    return; // the datalists are a convenience; typing a ref still works
  }
  const opts = (rows) => rows.flatMap((m) => {
    const out = [el('option', { value: m.name }, `${m.name} (latest)`)];
    for (let v = Number(m.version) || Number(m.versions) || 0, n = 0; v >= 1 && n < 25; v--, n++) {
      out.push(el('option', { value: `${m.name}:${v}` }));
    }
    return out;
  });
  models.replaceChildren(...opts(list.filter((m) => m.kind !== 'dataset')));
  datasets.replaceChildren(...opts(list.filter((m) => m.kind === 'dataset')));
}

function field(label, control, help, required) {
  const id = control.id || `f-${control.getAttribute('name')}`;
  control.id = id;
  if (required) control.setAttribute('aria-required', 'true');
  const helpId = help ? `${id}-help` : null;
  if (helpId) control.setAttribute('aria-describedby', helpId);
  return el('div', { class: 'field' },
    el('label', { for: id, class: required ? 'req' : null }, label),
    control,
    help ? el('p', { class: 'help', id: helpId }, help) : null);
}

const select = (name, values, selected) =>
  el('select', { name }, values.map((v) => {
    const [value, text] = Array.isArray(v) ? v : [v, v];
    return el('option', { value, selected: value === selected }, text);
  }));

function jobForm() {
  const modelsDl = el('datalist', { id: 'dl-job-models' });
  const datasetsDl = el('datalist', { id: 'dl-job-datasets' });
  const errors = el('div', { 'aria-live': 'polite' });

  const kind = select('kind', [['quantize', 'quantize — make a smaller version'], ['eval', 'eval — measure a version']], 'quantize');
  const ref = el('input', { type: 'text', name: 'ref', list: 'dl-job-models', placeholder: 'NAME:VERSION', autocomplete: 'off' });
  const method = select('method', METHODS, 'rtn');
  const calib = el('input', { type: 'text', name: 'calib', list: 'dl-job-datasets', placeholder: 'DATASET:VERSION', autocomplete: 'off' });
  const calibField = field('Calibration data', calib, 'A dataset ref; needed by imatrix and gptq.');

  const quantize = el('fieldset', { 'data-kind': 'quantize' },
    el('legend', null, 'Quantize'),
    el('div', { class: 'stack' },
      field('Type', select('type', QUANT_TYPES, 'Q8_0'), null, true),
      field('Method', method),
      calibField,
      el('div', { class: 'grid' },
        field('Evaluation data', el('input', { type: 'text', name: 'eval-data', list: 'dl-job-datasets', placeholder: 'DATASET:VERSION', autocomplete: 'off' }),
          'Optional: evaluate the result against the input.'),
        field('Max drop (points)', el('input', { type: 'number', name: 'max-drop', min: '0', step: '0.01', placeholder: 'e.g. 2' }),
          'Optional, with evaluation data: raise tensors until the drop is below this.')),
      field('New model name', el('input', { type: 'text', name: 'name', placeholder: 'default: the input model', autocomplete: 'off' }),
        'Optional: store the result under another model name.')));

  const evalSet = el('fieldset', { 'data-kind': 'eval', hidden: true },
    el('legend', null, 'Evaluate'),
    el('div', { class: 'stack' },
      field('Data', el('input', { type: 'text', name: 'data', list: 'dl-job-datasets', placeholder: 'DATASET:VERSION', autocomplete: 'off' }), 'The dataset to evaluate on.', true),
      field('Metric', select('metric', METRICS, 'next_token_accuracy')),
      field('Baseline', el('input', { type: 'text', name: 'baseline', list: 'dl-job-models', placeholder: 'NAME:VERSION', autocomplete: 'off' }),
        'Needed for kld: the version to compare against.')));

  const ctx = el('input', { type: 'number', name: 'ctx', min: '16', step: '1', placeholder: 'default' });
  const submit = el('button', { type: 'submit', class: 'btn-primary' }, 'Start job');

  const sync = () => {
    const k = kind.value;
    quantize.hidden = k !== 'quantize';
    evalSet.hidden = k !== 'eval';
    calibField.hidden = method.value === 'rtn';
    calibField.querySelector('label').classList.toggle('req', method.value !== 'rtn');
  };
  kind.addEventListener('change', sync);
  method.addEventListener('change', sync);

  // Two columns on wide screens: what to run on the left, the kind's options on the right.
  const form = el('form', { id: 'job-form', class: 'stack', novalidate: true, 'aria-label': 'Launch a job' },
    el('div', { class: 'grid' },
      el('div', { class: 'stack' },
        field('Kind', kind),
        field('Model version', ref, 'NAME:VERSION, or NAME for its latest version.', true),
        field('Context (tokens)', ctx, 'Optional: the evaluation window; smaller is faster.')),
      el('div', null, quantize, evalSet)),
    errors,
    el('div', { class: 'form-actions' }, submit),
    modelsDl, datasetsDl);

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    errors.replaceChildren();
    const k = kind.value;
    const params = {};
    // Only the fields shown (the chosen kind's; calib only for imatrix/gptq); empty ones
    // are left to their defaults. Values go as strings, as the CLI sends its options.
    for (const c of form.elements) {
      if (!c.name || c.name === 'kind' || c.closest('[hidden]')) continue;
      const v = c.value.trim();
      if (v !== '') params[c.name] = v;
    }
    const missing = !params.ref ? 'Enter the model version (NAME:VERSION).'
      : k === 'eval' && !params.data ? 'Enter the evaluation data (a dataset ref).' : null;
    if (missing) {
      errors.replaceChildren(errorBox({ code: 'EINVAL', message: missing }));
      (params.ref ? form.elements.data : ref).focus();
      return;
    }
    submit.disabled = true;
    try {
      const job = await api('POST', '/api/v1/jobs', { kind: k, params });
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      // Keep everything typed; show the server's reason beside the form.
      errors.replaceChildren(errorBox(err));
      submit.disabled = false;
    }
  });

  sync();
  loadRefOptions(modelsDl, datasetsDl);
  return form;
}

export async function render(root, params, query) {
  setTitle('Jobs');
  let state = JOB_STATES.includes(query.get('state')) ? query.get('state') : '';
  let active = false;

  const listBox = el('div', { id: 'job-list' });
  const updated = el('span', { class: 'small muted', 'aria-live': 'off' });
  const filter = el('select', { id: 'job-state-filter', name: 'state' },
    el('option', { value: '' }, 'all'),
    JOB_STATES.map((s) => el('option', { value: s, selected: s === state }, s)));

  async function load() {
    let jobs;
    try {
      jobs = await api('GET', `/api/v1/jobs${state ? `?state=${encodeURIComponent(state)}` : ''}`);
    } catch (err) {
      listBox.replaceChildren(errorBox(err));
      return;
    }
    active = jobs.some(isActive);
    // Keep keyboard focus on the same row link across a refresh.
    const focused = document.activeElement && document.activeElement.closest('tr[data-job]');
    const focusId = focused ? focused.dataset.job : null;
    const t = table([
      { key: 'id', label: 'Job', render: (j) => el('a', { href: `#/jobs/${j.id}` }, `#${j.id}`) },
      { key: 'kind', label: 'Kind' },
      { key: 'ref', label: 'Ref', render: (j) => jobTarget(j) },
      { key: 'state', label: 'State', render: (j) => jobStateBadge(j.state) },
      { key: 'progress', label: 'Progress', render: (j) => progressCell(j) },
      { key: 'message', label: 'Step / outcome', render: outcome },
      { key: 'created_by', label: 'By' },
      { key: 'created_at', label: 'Submitted', render: (j) => el('span', { title: fmtTime(j.created_at), class: 'nowrap' }, fmtAgo(j.created_at)) },
    ], jobs, {
      id: 'jobs',
      rowAttrs: (j) => ({ 'data-job': j.id }),
      empty: state ? { title: `No ${state} jobs.`, hint: 'Choose another state to see more.' }
        : { title: 'No jobs yet.', hint: can('job') ? 'Launch one with the form above.' : 'Engineers launch quantize and eval jobs; they show here.' },
    });
    listBox.replaceChildren(t);
    updated.textContent = active ? 'Refreshing every 2 s while jobs run.' : `Updated ${fmtTime(new Date())}.`;
    if (focusId) {
      const a = listBox.querySelector(`tr[data-job="${CSS.escape(focusId)}"] a`);
      if (a) a.focus();
    }
  }

  filter.addEventListener('change', async () => {
    state = filter.value;
    // Reflect the filter in the address without re-rendering the page (the form keeps
    // what was typed).
    history.replaceState(null, '', `#/jobs${state ? `?state=${state}` : ''}`);
    root.setAttribute('aria-busy', 'true');
    await load();
    root.removeAttribute('aria-busy');
  });

  add(root, 
    el('div', { class: 'page-head' }, el('h1', null, 'Jobs')),
    can('job') ? el('section', { class: 'card', 'aria-labelledby': 'launch-h' },
      el('h2', { id: 'launch-h' }, 'Launch a job'), jobForm()) : null,
    el('section', { 'aria-labelledby': 'list-h' },
      el('h2', { id: 'list-h' }, 'Recent jobs'),
      el('div', { class: 'toolbar' },
        el('label', { for: 'job-state-filter' }, 'State', filter),
        el('button', { type: 'button', onclick: load }, 'Refresh'),
        updated),
      listBox));

  await load();
  // Poll only while something is queued or running; finished lists do not change by
  // themselves (the Refresh button covers new submissions from elsewhere).
  return poll(async () => {
    if (active) await load();
  }, 2000, { later: true });
}
