// One job: state, progress and ETA, parameters, a live tail of its log, and its result
// or failure. Polls every second until the job has finished.
import { add, api, apiRaw, can, session, el, errorBox, table, fmtTime, fmtAgo, fmtDuration, fmtBytes, fmtNum, setTitle, toast, poll } from '../lib.js';
import { jobStateBadge, jobTarget, isActive } from './jobs.js';

const LOG_LINES = 200; // the tail kept on the page

const kv = (pairs) => el('dl', { class: 'kv' },
  pairs.filter(([, v]) => v !== undefined && v !== null && v !== '')
    .map(([k, v]) => [el('dt', null, k), el('dd', null, v)]));

const pretty = (x) => el('pre', { class: 'small' }, typeof x === 'string' ? x : JSON.stringify(x, null, 2));

// NAME:V → a link to that version's page.
function refLink(ref) {
  const m = /^([^:@]+):(\d+)$/.exec(String(ref || ''));
  return m ? el('a', { href: `#/models/${encodeURIComponent(m[1])}/versions/${m[2]}` }, ref) : String(ref || '—');
}

const pct = (x) => (x === null || x === undefined ? '—' : `${fmtNum(Number(x) * 100, 2)} %`);

function quantizeResult(r) {
  const ev = r.evaluation;
  return [
    el('p', null, 'New version: ', el('strong', null, refLink(r.output)),
      r.input ? [' (from ', refLink(r.input), ')'] : null),
    kv([
      ['Type', r.type],
      ['Method', r.method],
      ['Size', r.bytes !== undefined ? fmtBytes(r.bytes) : null],
      ['Bits per weight', r.bpw !== undefined ? fmtNum(r.bpw, 2) : null],
      ['Tensor types', r.tensor_types ? Object.entries(r.tensor_types).map(([t, n]) => `${t} × ${n}`).join(', ') : null],
      ['Raised tensors', Array.isArray(r.raised) && r.raised.length ? r.raised.join(', ') : null],
      ['Evaluation', ev ? `${ev.metric} on ${ev.dataset}: ${fmtNum(ev.input, 4)} → ${fmtNum(ev.output, 4)}, `
        + `drop ${fmtNum(ev.drop, 2)} points` : null],
      ['Took', r.seconds !== undefined ? fmtDuration(r.seconds) : null],
      ['Digest', r.digest ? el('span', { class: 'digest', title: r.digest }, r.digest) : null],
    ]),
    Array.isArray(r.warnings) && r.warnings.length
      ? el('div', { class: 'warn-note' }, el('strong', null, 'Warnings'), el('ul', null, r.warnings.map((w) => el('li', null, w))))
      : null,
  ];
}

function evalResult(r) {
  const ci = r.ci_low !== undefined && r.ci_high !== undefined ? ` (95% interval ${fmtNum(r.ci_low, 4)}–${fmtNum(r.ci_high, 4)})` : '';
  return kv([
    ['Model', refLink(r.model)],
    ['Data', r.dataset],
    ['Metric', r.metric],
    ['Value', `${fmtNum(r.value, 4)}${ci}`],
    ['Accuracy', r.accuracy !== undefined && r.metric !== 'next_token_accuracy' ? pct(r.accuracy) : null],
    ['Perplexity', r.perplexity !== undefined && r.metric !== 'perplexity' ? fmtNum(r.perplexity, 3) : null],
    ['Samples', r.n_samples],
    ['Context', r.ctx],
    ['Took', r.seconds !== undefined ? `${fmtDuration(r.seconds)}${r.cached ? ' (cached)' : ''}` : null],
    ['Engine', r.engine],
  ]);
}

// What a failed command printed: a --max-drop report's rounds as a table, then the whole
// document folded away (it lists every raised tensor).
function outputView(out) {
  if (out === undefined || out === null || out === '') return null;
  if (typeof out === 'string') return [el('h3', null, 'What it printed'), pretty(out)];
  const rounds = Array.isArray(out.rounds) ? out.rounds : null;
  return [
    rounds ? [el('h3', null, 'Rounds'), table([
      { key: 'round', label: 'Round', num: true },
      { key: 'accuracy', label: 'Accuracy', num: true, render: (r) => pct(r.accuracy) },
      { key: 'drop', label: 'Drop (points)', num: true, render: (r) => fmtNum(r.drop, 2) },
      { key: 'raised', label: 'Tensors raised', num: true, render: (r) => String((r.raised || []).length) },
    ], rounds, { empty: 'No rounds ran.' })] : null,
    el('details', null, el('summary', null, 'What it printed (JSON)'), pretty(out)),
  ];
}

export async function render(root, params) {
  const id = params.id;
  setTitle(`Job #${id}`);
  let job = await api('GET', `/api/v1/jobs/${encodeURIComponent(id)}`);

  // ---- the parts that change, built once and updated in place ----
  const stateBox = el('span', { class: 'row' });
  const cancelBtn = el('button', { type: 'button', id: 'job-cancel', class: 'btn-danger', hidden: true }, 'Cancel job');
  const progress = el('progress', { id: 'job-progress', max: '1', value: '0', 'aria-label': 'Progress' });
  const pctText = el('span', { class: 'nowrap' });
  const message = el('span', { class: 'muted' });
  const eta = el('span', { 'data-testid': 'job-eta' });
  const times = el('div');
  const outcome = el('div');
  const logPre = el('pre', { id: 'job-log', class: 'log', tabindex: '0', 'aria-label': 'Job log' });
  const logNote = el('p', { class: 'small muted' });
  const pollError = el('div');

  const mayCancel = () => isActive(job) && !!session
    && (can('admin') || session.user.name === job.created_by);

  // Not disabled while the request runs: a disabled button drops keyboard focus.
  let cancelling = false;
  cancelBtn.addEventListener('click', async () => {
    if (cancelling) return;
    if (!confirm(`Cancel job #${job.id} (${job.kind} ${job.params && job.params.ref ? job.params.ref : ''})?`)) return;
    cancelling = true;
    cancelBtn.setAttribute('aria-disabled', 'true');
    try {
      job = await api('POST', `/api/v1/jobs/${job.id}/cancel`);
      toast(`Cancelling job #${job.id}.`, 'info');
      update();
    } catch (err) {
      toast(`${err.code || 'Error'}: ${err.message}`, 'error');
    } finally {
      cancelling = false;
      cancelBtn.removeAttribute('aria-disabled');
    }
  });

  function update() {
    const state = el('span', { 'data-testid': 'job-state', class: 'nowrap' }, jobStateBadge(job.state));
    stateBox.replaceChildren(state);
    if (job.cancel_requested && isActive(job)) stateBox.append(el('span', { class: 'small muted' }, 'cancel requested'));
    // The testid element's text must be the plain state word.
    state.firstChild.textContent = job.state;
    const wasFocused = document.activeElement === cancelBtn;
    cancelBtn.hidden = !mayCancel();
    if (wasFocused && cancelBtn.hidden) root.querySelector('h1')?.focus(); // not lost to <body>

    const p = Math.max(0, Math.min(1, Number(job.progress) || 0));
    progress.value = p;
    progress.textContent = `${Math.round(p * 100)}%`;
    pctText.textContent = `${Math.round(p * 100)}%`;
    message.textContent = job.message || '';
    eta.textContent = job.state === 'running'
      ? (job.eta_s === null || job.eta_s === undefined ? 'estimating…' : `about ${fmtDuration(job.eta_s)}`)
      : job.state === 'queued' ? 'waiting for a worker' : '—';

    const took = job.started_at && job.finished_at
      ? (Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000 : null;
    times.replaceChildren(kv([
      ['Submitted', el('span', { title: fmtTime(job.created_at) }, `${fmtTime(job.created_at)} by ${job.created_by}`)],
      ['Started', job.started_at ? fmtTime(job.started_at) : 'not yet'],
      ['Finished', job.finished_at ? `${fmtTime(job.finished_at)} (${fmtAgo(job.finished_at)})` : 'not yet'],
      ['Took', took !== null ? fmtDuration(took) : null],
    ]));

    outcome.replaceChildren();
    if (job.state === 'succeeded') {
      const r = job.result;
      outcome.append(el('section', { class: 'card', 'data-testid': 'job-result', 'aria-labelledby': 'result-h' },
        el('h2', { id: 'result-h' }, 'Result'),
        r && job.kind === 'quantize' && r.output ? quantizeResult(r)
          : r && job.kind === 'eval' ? evalResult(r)
            : el('p', { class: 'muted' }, r ? 'The job finished; its output:' : 'The job finished without a result document.'),
        r ? el('details', null, el('summary', null, 'The full result (JSON)'), pretty(r)) : null));
    } else if (job.state === 'failed' || job.state === 'cancelled') {
      outcome.append(el('section', { class: 'card', 'data-testid': 'job-failure', 'aria-labelledby': 'fail-h' },
        el('h2', { id: 'fail-h' }, job.state === 'cancelled' ? 'Cancelled' : 'Failed'),
        job.error ? el('div', { class: 'error-box', role: 'alert' },
          job.error_code ? [el('strong', { class: 'error-code' }, job.error_code), ' '] : null,
          el('span', { class: 'error-message' }, job.error)) : null,
        kv([
          ['Exit code', job.exit_code === null || job.exit_code === undefined ? 'none (ended by a signal or the server)' : String(job.exit_code)],
        ]),
        outputView(job.output)));
    }
  }

  // ---- the log tail: appended from the last byte read ----
  let offset = 0;
  let lines = [];
  let dropped = false;
  const decoder = new TextDecoder();
  async function readLog() {
    const res = await apiRaw('GET', `/api/v1/jobs/${job.id}/log?offset=${offset}`);
    const buf = await res.arrayBuffer();
    if (!buf.byteLength) return;
    offset += buf.byteLength;
    // stream: a UTF-8 character split between two reads is joined on the next one.
    const text = decoder.decode(buf, { stream: true });
    const parts = text.split('\n');
    if (lines.length) lines[lines.length - 1] += parts.shift();
    lines.push(...parts);
    if (lines.length > LOG_LINES + 1) {
      lines = lines.slice(-(LOG_LINES + 1));
      dropped = true;
    }
    const atBottom = logPre.scrollHeight - logPre.scrollTop - logPre.clientHeight < 40;
    logPre.textContent = lines.join('\n');
    logNote.textContent = dropped ? `Showing the last ${LOG_LINES} lines.` : '';
    if (atBottom || !logPre.dataset.seen) logPre.scrollTop = logPre.scrollHeight;
    logPre.dataset.seen = '1';
  }

  const ref = jobTarget(job);
  add(root, 
    el('p', { class: 'crumbs' }, el('a', { href: '#/jobs' }, 'Jobs'), ` › #${job.id}`),
    el('div', { class: 'page-head' },
      el('h1', { tabindex: '-1' }, `Job #${job.id}: ${job.kind} `, typeof ref === 'string' ? ref : ref.textContent),
      el('div', { class: 'row' }, stateBox, cancelBtn)),
    pollError,
    el('div', { class: 'grid' },
      el('section', { class: 'card', 'aria-labelledby': 'prog-h' },
        el('h2', { id: 'prog-h' }, 'Progress'),
        el('div', { class: 'row' }, pctText, message),
        progress,
        el('p', null, el('span', { class: 'muted' }, 'Time left: '), eta),
        times),
      el('section', { class: 'card', 'aria-labelledby': 'params-h' },
        el('h2', { id: 'params-h' }, 'Parameters'),
        kv([['Kind', job.kind], ['Target', ref],
          ...Object.entries(job.params || {}).filter(([k]) => k !== 'ref' && !(job.kind === 'gate' && k === 'promotion'))
            .map(([k, v]) => [`--${k}`, el('span', { class: 'mono wrap-anywhere' }, v === true ? '(flag)' : Array.isArray(v) ? v.join(', ') : String(v))])]))),
    outcome,
    el('section', { 'aria-labelledby': 'log-h' },
      el('h2', { id: 'log-h' }, 'Log'),
      logPre, logNote));

  update();
  try {
    await readLog();
  } catch (err) {
    logNote.replaceChildren(errorBox(err));
  }
  if (!isActive(job)) return undefined;

  // Poll while the job runs; the last round after it ends picks up the log's tail.
  let stop = null;
  stop = poll(async () => {
    try {
      job = await api('GET', `/api/v1/jobs/${job.id}`);
      await readLog();
      pollError.replaceChildren();
    } catch (err) {
      pollError.replaceChildren(errorBox(err));
      return;
    }
    update();
    if (!isActive(job)) stop();
  }, 1000, { later: true });
  return () => stop();
}
