// One promotion request: the request, the gate's numbers and verdict, approvals, the
// decision form for approvers, and the release record once released.
import { add, api, can, session, el, errorBox, fmtTime, fmtAgo, fmtNum, setTitle, toast, poll } from '../lib.js';
import { promotionStateBadge, verdictBadge, versionLink } from './promotions.js';

const kv = (pairs) => el('dl', { class: 'kv' },
  pairs.filter(([, v]) => v !== undefined && v !== null && v !== '')
    .map(([k, v]) => [el('dt', null, k), el('dd', null, v)]));

const when = (t) => (t ? el('span', { title: fmtAgo(t) }, fmtTime(t)) : '—');

const isAccuracy = (metric) => /accuracy/.test(metric || '');

// A metric value; accuracies also as a percentage.
function value(metric, v) {
  if (v === null || v === undefined) return '—';
  return isAccuracy(metric) ? `${fmtNum(v, 4)} (${fmtNum(Number(v) * 100, 2)} %)` : fmtNum(v, 4);
}

function refCell(metric, side) {
  if (!side) return el('span', { class: 'muted' }, 'none: the channel has no release yet');
  const m = /^([^:]+):(\d+)$/.exec(side.ref || '');
  return [m ? versionLink(m[1], m[2]) : side.ref, ': ', el('strong', null, value(metric, side.value)),
    side.digest ? [' ', el('span', { class: 'digest small muted', title: side.digest }, side.digest.slice(0, 12))] : null];
}

// The verdict in one plain sentence.
function gateSentence(g) {
  if (!g.baseline || g.verdict === 'no baseline') {
    return 'The channel has no release yet, so there is no baseline to compare against: the gate lets the candidate through.';
  }
  const drop = Number(g.drop);
  const verdict = g.verdict === 'pass' ? 'passes' : g.verdict === 'fail' ? 'fails' : g.verdict;
  const lead = drop > 0 ? `Candidate loses ${fmtNum(drop, 2)} points against the baseline`
    : drop < 0 ? `Candidate gains ${fmtNum(-drop, 2)} points against the baseline`
      : 'Candidate scores the same as the baseline';
  return `${lead}; the limit is ${fmtNum(g.threshold, 2)}: ${verdict}.`;
}

function gateSection(p) {
  const g = p.gate;
  if (p.state === 'gating' || !g) {
    return el('section', { class: 'card', 'aria-labelledby': 'gate-h' },
      el('h2', { id: 'gate-h' }, 'Accuracy gate'),
      p.state === 'gating'
        ? el('p', { class: 'note', role: 'status' }, 'The gate is running: it evaluates the candidate against its baseline',
          p.job ? [' (', el('a', { href: `#/jobs/${p.job}` }, `job #${p.job}`), ')'] : null,
          '. This page updates when it is done.')
        : el('p', { class: 'muted' }, 'The gate did not run.',
          p.job ? [' See ', el('a', { href: `#/jobs/${p.job}` }, `job #${p.job}`), '.'] : null));
  }
  const row = (label, key, content) => el('tr', null, el('th', { scope: 'row' }, label), el('td', { 'data-gate': key }, content));
  return el('section', { class: 'card', 'aria-labelledby': 'gate-h' },
    el('h2', { id: 'gate-h' }, 'Accuracy gate'),
    el('p', { 'data-testid': 'gate-sentence' }, gateSentence(g)),
    el('table', { id: 'gate', class: 'data' },
      el('caption', { class: 'sr-only' }, 'The gate\'s numbers'),
      el('tbody', null,
        row('Verdict', 'verdict', verdictBadge(g.verdict)),
        row('Metric', 'metric', [g.metric, g.ctx ? el('span', { class: 'muted' }, ` (context ${g.ctx} tokens)`) : null]),
        row('Dataset', 'dataset', [g.dataset, g.dataset_digest ? [' ', el('span', { class: 'digest small muted', title: g.dataset_digest }, g.dataset_digest.slice(0, 12))] : null]),
        row('Baseline', 'baseline', refCell(g.metric, g.baseline)),
        row('Candidate', 'candidate', refCell(g.metric, g.candidate)),
        row('Drop', 'drop', g.drop === null || g.drop === undefined ? '—' : `${fmtNum(g.drop, 2)} points`),
        row('Threshold', 'threshold', `${fmtNum(g.threshold, 2)} points (a drop this large fails)`))),
    el('p', { class: 'small muted' }, `Run ${fmtTime(g.at)} for ${g.by || p.requested_by}`,
      p.job ? [' as ', el('a', { href: `#/jobs/${p.job}` }, `job #${p.job}`)] : null, '.'));
}

function approvalsSection(p) {
  const given = p.approvals || [];
  const needed = p.approvals_needed || 0;
  return el('section', { class: 'card', 'aria-labelledby': 'appr-h' },
    el('h2', { id: 'appr-h' }, 'Approvals'),
    el('p', null, needed
      ? `${given.length} of ${needed} approval${needed === 1 ? '' : 's'} given.`
      : 'The channel\'s policy needs no approvals: a passing gate releases the version.'),
    el('ul', { id: 'approvals' }, given.map((a) => el('li', { 'data-user': a.user },
      el('strong', null, a.user), ' ', el('span', { class: 'muted small' }, fmtTime(a.at)),
      a.comment ? el('div', { class: 'wrap-anywhere' }, `“${a.comment}”`) : null))),
    given.length || !needed ? null : el('p', { class: 'muted' }, 'No approvals yet.'),
    p.rejection ? el('div', { class: 'error-box', role: 'note', 'data-testid': 'rejection' },
      el('strong', null, `Rejected by ${p.rejection.user}`), ` on ${fmtTime(p.rejection.at)}: `,
      el('span', { class: 'wrap-anywhere' }, p.rejection.reason || '')) : null);
}

function releaseSection(p) {
  const r = p.release;
  if (!r) return null;
  return el('section', { class: 'card', 'aria-labelledby': 'rel-h', 'data-testid': 'release' },
    el('h2', { id: 'rel-h' }, 'Release record'),
    kv([
      ['Channel', el('a', { href: `#/models/${encodeURIComponent(r.model)}` }, `${r.model}@${r.channel}`)],
      ['Version', versionLink(r.model, r.version)],
      ['Sequence', String(r.sequence)],
      ['Issued', when(r.issued_at)],
      ['Expires', when(r.expires_at)],
      ['Approvers', (r.approvers || []).length ? r.approvers.map((a) => (typeof a === 'string' ? a : a.user)).join(', ') : 'none needed'],
      ['Digest', el('span', { class: 'digest', title: r.digest }, r.digest)],
    ]),
    el('p', { class: 'small muted' }, 'Signed by the registry; nodes following the channel pull it.'));
}

// Why the current user gets no decision form, or null when they may decide.
function whyNoDecision(p) {
  const me = session && session.user;
  if (p.state === 'gating') return 'The gate is still running; approvers decide once it passes.';
  if (p.state !== 'pending') return `This request is ${p.state}: there is nothing left to decide.`;
  if (!can('approve')) {
    return me && me.role === 'admin'
      ? 'Admins do not approve promotions: an approver must decide.'
      : `Only approvers decide on promotions (you are ${me ? me.role : 'signed out'}).`;
  }
  if (me && me.name === p.requested_by) return 'You requested this promotion; another approver must decide.';
  const mine = (p.approvals || []).find((a) => me && a.user === me.name);
  if (mine) return `You approved this request on ${fmtTime(mine.at)}; it waits for another approver.`;
  return null;
}

function decideSection(p, onDecided) {
  const why = whyNoDecision(p);
  if (why) {
    return el('section', { class: 'card', 'aria-labelledby': 'decide-h' },
      el('h2', { id: 'decide-h' }, 'Decision'), el('p', { class: 'muted', 'data-testid': 'no-decision' }, why));
  }
  const comment = el('textarea', { name: 'comment', id: 'decide-comment', rows: '3', placeholder: 'A comment (required to reject)' });
  const errors = el('div', { 'aria-live': 'polite' });
  const approve = el('button', { type: 'submit', id: 'approve', class: 'btn-ok' }, 'Approve');
  const reject = el('button', { type: 'button', id: 'reject', class: 'btn-danger' }, 'Reject');
  const form = el('form', { id: 'decide', class: 'form', novalidate: true, 'aria-label': 'Approve or reject' },
    el('div', { class: 'field' }, el('label', { for: 'decide-comment' }, 'Comment'), comment,
      el('p', { class: 'help' }, `Approving signs off on ${p.ref} (digest ${p.digest.slice(0, 12)}…) for ${p.channel}.`)),
    errors,
    el('div', { class: 'form-actions' }, approve, reject));

  async function decide(kind) {
    errors.replaceChildren();
    const text = comment.value.trim();
    if (kind === 'reject' && !text) {
      errors.replaceChildren(errorBox({ code: 'EINVAL', message: 'A rejection needs a reason: write it in the comment.' }));
      comment.setAttribute('aria-invalid', 'true');
      comment.focus();
      return;
    }
    comment.removeAttribute('aria-invalid');
    approve.disabled = reject.disabled = true;
    try {
      // Approving names the digest the approver saw, so a changed request is refused.
      const body = kind === 'approve' ? { digest: p.digest, comment: text } : { reason: text };
      const updated = await api('POST', `/api/v1/promotions/${p.id}/${kind}`, body);
      toast(kind === 'approve' ? `Approved request #${p.id}.` : `Rejected request #${p.id}.`, 'ok');
      onDecided(updated);
    } catch (err) {
      // Keep the comment; show the server's refusal (e.g. EGATE: a stale gate).
      errors.replaceChildren(errorBox(err));
      approve.disabled = reject.disabled = false;
      if (err.code === 'EGATE') onDecided(null); // the request was rejected meanwhile: reload it
    }
  }
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    decide('approve');
  });
  reject.addEventListener('click', () => decide('reject'));
  return el('section', { class: 'card', 'aria-labelledby': 'decide-h' },
    el('h2', { id: 'decide-h' }, 'Decision'), form);
}

export async function render(root, params) {
  const id = params.id;
  setTitle(`Promotion #${id}`);
  const url = `/api/v1/promotions/${encodeURIComponent(id)}`;
  let p = await api('GET', url);
  const body = el('div');
  const head = el('div');
  let keepError = null;

  function draw() {
    const state = el('span', { 'data-testid': 'promotion-state' }, promotionStateBadge(p.state));
    head.replaceChildren(
      el('p', { class: 'crumbs' }, el('a', { href: '#/promotions' }, 'Promotions'), ` › #${p.id}`),
      el('div', { class: 'page-head' },
        el('h1', { tabindex: '-1' }, `Promotion #${p.id}: ${p.ref} → ${p.channel}`),
        state));
    // Left: the request and its decision; right: the evidence (gate, release).
    body.replaceChildren(...[
      keepError,
      el('div', { class: 'grid' },
        el('div', { class: 'stack' },
          el('section', { class: 'card', 'aria-labelledby': 'req-h' },
            el('h2', { id: 'req-h' }, 'Request'),
            kv([
              ['Version', versionLink(p.model, p.version)],
              ['Digest', el('span', { class: 'digest', title: p.digest }, p.digest)],
              ['Channel', el('a', { href: `#/models/${encodeURIComponent(p.model)}` }, `${p.model}@${p.channel}`)],
              ['Reason', p.reason ? el('span', { class: 'wrap-anywhere' }, p.reason) : el('span', { class: 'muted' }, 'none given')],
              ['Requested', [when(p.requested_at), ` by ${p.requested_by}`]],
              ['Decided', p.decided_at ? when(p.decided_at) : null],
            ])),
          approvalsSection(p),
          decideSection(p, onDecided)),
        el('div', { class: 'stack' }, gateSection(p), releaseSection(p))),
    ].filter(Boolean)); // replaceChildren would print a null
  }

  async function onDecided(updated) {
    if (updated) {
      p = updated;
      keepError = null;
    } else {
      try {
        p = await api('GET', url);
      } catch {
        return;
      }
      // Keep the refusal on show above the refreshed request.
      keepError = body.querySelector('#decide .error-box');
    }
    draw();
    // Focus the state so keyboard users hear the outcome.
    root.querySelector('h1')?.focus();
  }

  add(root, head, body);
  draw();

  // While the gate runs, poll until the request moves on (pending, released, rejected).
  if (p.state !== 'gating') return undefined;
  const stop = poll(async () => {
    const next = await api('GET', url);
    if (next.state !== p.state || JSON.stringify(next) !== JSON.stringify(p)) {
      p = next;
      draw();
    }
    if (p.state !== 'gating') stop();
  }, 2000, { later: true });
  return () => stop();
}
