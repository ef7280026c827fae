// Sign in with an API token. The token is kept in sessionStorage only (lib.js).
import { add, el, signIn, session, setTitle, errorBox } from '../lib.js';

export async function render(root, params, query) {
  setTitle('Sign in');
  const next = query.get('next') || '';
  const input = el('input', {
    id: 'token', name: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'mlv_…', 'aria-describedby': 'token-help', required: true,
  });
  const error = el('div', { id: 'signin-error', 'aria-live': 'assertive' });
  const button = el('button', { id: 'signin', type: 'submit', class: 'btn btn-primary' }, 'Sign in');

  async function onsubmit(e) {
    e.preventDefault();
    error.replaceChildren();
    input.removeAttribute('aria-invalid');
    button.disabled = true;
    try {
      await signIn(input.value);
      input.value = '';
      // Only follow a `next` that is one of our own hash routes.
      location.hash = /^\/[a-z]/.test(next) && !next.startsWith('/signin') ? `#${next}` : '#/models';
    } catch (err) {
      input.setAttribute('aria-invalid', 'true');
      const msg = err.status === 401
        ? Object.assign(new Error('The registry does not know this token (or its user is disabled). Check it and try again.'), { code: err.code })
        : err;
      error.appendChild(errorBox(msg));
      input.focus();
    } finally {
      button.disabled = false;
    }
  }

  const form = el('form', { class: 'form', onsubmit, novalidate: true },
    el('div', { class: 'field' },
      el('label', { for: 'token' }, 'API token'),
      input,
      el('p', { id: 'token-help', class: 'help' },
        'Tokens start with ', el('code', null, 'mlv_'), '. It stays in this browser tab only and is forgotten when the tab closes.')),
    error,
    el('div', { class: 'form-actions' }, button));

  add(root, el('div', { class: 'signin card' },
    el('h1', null, 'Sign in to mlvault'),
    session
      ? el('p', { class: 'note' }, `You are signed in as ${session.user.name} (${session.user.role}). Signing in again replaces that session.`)
      : null,
    form,
    el('h2', null, 'Where does a token come from?'),
    el('ul', null,
      el('li', null, 'An administrator creates your user and gives you its token: ',
        el('code', null, 'mlvault user add NAME --role engineer'), ' (or ', el('code', null, 'viewer'), ', ',
        el('code', null, 'approver'), ', ', el('code', null, 'admin'), ').'),
      el('li', null, 'A lost token is replaced with ', el('code', null, 'mlvault user token NAME'),
        ' (the old one stops working).'),
      el('li', null, 'The first admin token is printed by ', el('code', null, 'mlvault init'),
        '; the demo (', el('code', null, 'make run'), ') prints a token for each demo user.'))));
  // Focus the field so a pasted token and Enter are all it takes.
  input.focus();
}
