// A chat playground against the model the registry serves (`mlvault serve --serve-model
// NAME@CHANNEL`): the OpenAI API at /v1 with the same token, answers streamed token by
// token (server-sent events).
import { add, api, apiRaw, el, badge, errorBox, emptyState, fmtNum, setTitle } from '../lib.js';

// The model served, or why there is none. /health (served with the model) adds the
// channel and the last failed load.
async function served() {
  let models;
  try {
    models = await api('GET', '/v1/models');
  } catch (err) {
    return { err };
  }
  let health = null;
  try {
    health = await api('GET', '/health');
  } catch {
    /* optional detail */
  }
  const ids = ((models && models.data) || []).map((m) => m.id);
  return { model: ids[0] || null, health };
}

function notServing(root, err) {
  const hint = el('div', { class: 'stack' },
    el('p', { class: 'empty-hint' }, 'The registry serves a channel\'s current release with the OpenAI API at /v1 when started with:'),
    el('pre', null, el('code', null, 'mlvault serve --listen ADDR:PORT --serve-model NAME@CHANNEL')),
    el('p', { class: 'empty-hint' }, 'Serving nodes (see Nodes) serve the same API on their own address.'));
  add(root, emptyState('This registry serves no model.', hint));
  if (err && err.status !== 404) add(root, errorBox(err));
}

// Reads a server-sent event stream: calls onEvent(JSON) for each `data:` line until
// `[DONE]` or the end of the body.
async function readEvents(res, onEvent) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, '');
      buf = buf.slice(nl + 1);
      if (!line.startsWith('data:')) continue; // blank separators, comments
      const data = line.slice(5).trim();
      if (data === '[DONE]') return;
      onEvent(JSON.parse(data));
    }
  }
}

export async function render(root) {
  setTitle('Chat');
  add(root, el('div', { class: 'page-head' }, el('h1', null, 'Chat playground')));

  const info = await served();
  if (info.err) {
    notServing(root, info.err);
    return undefined;
  }

  const modelName = el('strong', { 'data-testid': 'chat-model' }, info.model || 'none');
  const h = info.health || {};
  add(root, el('p', { class: 'row' },
    el('span', null, 'Served model: ', modelName),
    h.channel ? el('span', { class: 'muted' }, `following ${h.channel}${h.release_sequence ? `, release ${h.release_sequence}` : ''}`) : null,
    h.n_ctx ? el('span', { class: 'muted small' }, `context ${h.n_ctx} tokens`) : null));
  if (!info.model) {
    add(root, emptyState('No model is loaded yet.',
      h.last_error ? `The last load failed: ${h.last_error}` : 'The served channel has no release yet, or its model is still loading. Reload this page in a moment.'));
    return undefined;
  }

  // ---- the conversation ----
  const history = []; // {role, content} sent with every request
  const log = el('div', { id: 'chat-log', role: 'log', 'aria-live': 'polite', 'aria-label': 'Conversation', tabindex: '0' });
  const input = el('textarea', { id: 'chat-input', name: 'message', rows: '3', placeholder: 'Ask something… (Enter sends, Shift+Enter starts a new line)' });
  const send = el('button', { type: 'submit', id: 'chat-send', class: 'btn-primary' }, 'Send');
  const stop = el('button', { type: 'button', id: 'chat-stop', class: 'btn-danger', hidden: true }, 'Stop');
  const clear = el('button', { type: 'button', id: 'chat-clear' }, 'Clear');
  const maxTokens = el('input', { type: 'number', id: 'chat-max-tokens', name: 'max_tokens', min: '1', max: '4096', step: '1', value: '256' });
  const temperature = el('input', { type: 'number', id: 'chat-temperature', name: 'temperature', min: '0', max: '2', step: '0.1', value: '0.7' });
  const system = el('textarea', { id: 'chat-system', name: 'system', rows: '2', placeholder: 'Optional: the model\'s default system prompt is used when empty' });
  let controller = null;

  const scrollDown = () => { log.scrollTop = log.scrollHeight; };
  const emptyNote = el('p', { class: 'muted', 'data-testid': 'chat-empty' }, 'No messages yet. Write one below.');
  log.append(emptyNote);

  const form = el('form', { id: 'chat-form', class: 'stack', novalidate: true, 'aria-label': 'Send a message' },
    el('div', { class: 'field' }, el('label', { for: 'chat-input' }, 'Message'), input),
    el('div', { class: 'form-actions' }, send, stop, clear),
    el('details', null, el('summary', null, 'Settings'),
      el('div', { class: 'toolbar' },
        el('label', { for: 'chat-max-tokens' }, 'Max tokens', maxTokens),
        el('label', { for: 'chat-temperature' }, 'Temperature (0 = greedy)', temperature)),
      el('div', { class: 'field' }, el('label', { for: 'chat-system' }, 'System prompt'), system)));

  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      if (!controller) form.requestSubmit();
    }
  });
  stop.addEventListener('click', () => controller && controller.abort());
  clear.addEventListener('click', () => {
    if (controller) controller.abort();
    history.length = 0;
    log.replaceChildren(emptyNote);
    input.focus();
  });

  function bubble(kind, text) {
    emptyNote.remove();
    const body = el('div', { class: 'msg-text' }, text);
    const msg = el('div', { class: `msg msg-${kind}` }, body);
    log.append(msg);
    scrollDown();
    return { msg, body };
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text || controller) return;
    input.value = '';
    bubble('user', text);
    history.push({ role: 'user', content: text });

    const reply = bubble('assistant', '');
    reply.msg.setAttribute('aria-busy', 'true');
    const meta = el('div', { class: 'msg-meta' }, 'waiting for the model…');
    reply.msg.append(meta);

    const body = {
      model: info.model,
      messages: [...(system.value.trim() ? [{ role: 'system', content: system.value.trim() }] : []), ...history],
      stream: true,
      stream_options: { include_usage: true },
    };
    const mt = Number(maxTokens.value);
    if (maxTokens.value !== '' && Number.isFinite(mt)) body.max_tokens = Math.round(mt);
    const t = Number(temperature.value);
    if (temperature.value !== '' && Number.isFinite(t)) body.temperature = t;

    controller = new AbortController();
    send.disabled = true;
    stop.hidden = false;
    const started = performance.now();
    let answer = '';
    let finish = null;
    let usage = null;
    let model = null;
    let stopped = false;
    try {
      const res = await apiRaw('POST', '/v1/chat/completions', body, { signal: controller.signal });
      model = res.headers.get('X-Mlvault-Model');
      meta.textContent = 'answering…';
      await readEvents(res, (chunk) => {
        if (chunk.error) throw Object.assign(new Error(chunk.error.message), { code: chunk.error.code || chunk.error.type });
        if (chunk.model) model = chunk.model;
        if (chunk.usage) usage = chunk.usage;
        const c = chunk.choices && chunk.choices[0];
        if (!c) return;
        if (c.delta && c.delta.content) {
          answer += c.delta.content;
          reply.body.textContent = answer;
          scrollDown();
        }
        if (c.finish_reason) finish = c.finish_reason;
      });
    } catch (err) {
      if (err && err.name === 'AbortError') {
        stopped = true;
      } else {
        // OpenAI-shaped errors arrive as ApiError (message from error.message).
        reply.msg.classList.add('msg-error');
        reply.msg.setAttribute('role', 'alert');
        reply.body.textContent = answer;
        reply.msg.insertBefore(errorBox(err), meta);
      }
    } finally {
      controller = null;
      send.disabled = false;
      stop.hidden = true;
      reply.msg.removeAttribute('aria-busy');
    }
    if (answer) history.push({ role: 'assistant', content: answer });
    else history.pop(); // no answer: the next request must not carry an unanswered turn
    if (!answer && !reply.msg.classList.contains('msg-error')) reply.body.textContent = stopped ? '(stopped before the first token)' : '(no text)';
    const secs = (performance.now() - started) / 1000;
    meta.replaceChildren(...[
      model ? `${model}` : null,
      usage ? `${usage.completion_tokens} tokens (prompt ${usage.prompt_tokens})` : null,
      usage && usage.completion_tokens ? `${fmtNum(usage.completion_tokens / secs, 1)} tokens/s` : null,
      `${fmtNum(secs, 1)} s`,
      !stopped && finish === 'length' ? 'cut at max tokens' : null,
    ].filter(Boolean).join(' · '));
    if (stopped) meta.prepend(badge('stopped', 'warn'), ' ');
    scrollDown();
    input.focus();
  });

  add(root, log, el('section', { class: 'card', 'aria-label': 'Message' }, form));
  return () => controller && controller.abort(); // leaving the page stops the generation
}
