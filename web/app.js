// The shell (header, nav, who am I) and the hash router: #/PATH?QUERY → a page module
// under ./pages/, rendered into a fresh element inside <main>.
import { session, signOut, refreshSession, can, el, errorBox, setTitle, clearToasts } from './lib.js';

// [pattern, module, param names]; the first match wins.
const ROUTES = [
  [/^\/signin$/, 'signin', []],
  [/^\/models$/, 'models', []],
  [/^\/models\/([^/]+)$/, 'model', ['name']],
  [/^\/models\/([^/]+)\/versions\/([^/]+)$/, 'version', ['name', 'v']],
  [/^\/jobs$/, 'jobs', []],
  [/^\/jobs\/([^/]+)$/, 'job', ['id']],
  [/^\/promotions$/, 'promotions', []],
  [/^\/promotions\/([^/]+)$/, 'promotion', ['id']],
  [/^\/audit$/, 'audit', []],
  [/^\/nodes$/, 'nodes', []],
  [/^\/chat$/, 'chat', []],
];

const NAV = [
  ['models', 'Models'],
  ['jobs', 'Jobs'],
  ['promotions', 'Promotions'],
  ['audit', 'Audit'],
  ['nodes', 'Nodes'],
  ['chat', 'Chat'],
];

let main;
let cleanup = null;
let navSeq = 0;
let firstRender = true;

function buildShell() {
  const nav = el('nav', { 'aria-label': 'Main' },
    el('ul', null, NAV.map(([key, label]) =>
      el('li', { 'data-nav-item': key }, el('a', { href: `#/${key}`, 'data-nav': key }, label)))));
  const header = el('header', { class: 'shell' },
    el('div', { class: 'shell-inner' },
      el('a', { class: 'brand', href: '#/models' }, 'mlvault', el('span', { class: 'brand-sub' }, ' registry')),
      nav,
      el('div', { class: 'user' },
        el('span', { id: 'whoami', 'aria-label': 'Signed in as' }),
        el('button', { id: 'signout', type: 'button', class: 'btn btn-small', onclick: onSignOut }, 'Sign out'))));
  main = el('main', { id: 'main', tabindex: '-1' });
  const skip = el('a', { class: 'skip-link', href: '#main', onclick: (e) => { e.preventDefault(); main.focus(); } },
    'Skip to content');
  document.body.replaceChildren(skip, header, main);
  // Tables scroll sideways inside their own box: wrap each one once it is on the page,
  // whichever page made it (lib.js table() returns a bare <table>).
  new MutationObserver(wrapTables).observe(main, { childList: true, subtree: true });
}

function wrapTables() {
  for (const t of main.querySelectorAll('table.data')) {
    if (t.parentElement && t.parentElement.classList.contains('table-wrap')) continue;
    const wrap = el('div', { class: 'table-wrap' });
    t.replaceWith(wrap);
    wrap.appendChild(t);
  }
}

function updateShell(active) {
  const signedIn = !!session;
  document.body.classList.toggle('signed-out', !signedIn);
  const who = document.getElementById('whoami');
  who.textContent = signedIn ? `${session.user.name} (${session.user.role})` : '';
  document.getElementById('signout').hidden = !signedIn;
  document.querySelector('header nav').hidden = !signedIn;
  for (const li of document.querySelectorAll('[data-nav-item]')) {
    // The audit log is for approvers and admins only.
    li.hidden = li.dataset.navItem === 'audit' && !can('audit');
  }
  for (const a of document.querySelectorAll('nav a[data-nav]')) {
    if (a.dataset.nav === active) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

function onSignOut() {
  signOut();
  location.hash = '#/signin';
}

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/models';
  const q = raw.indexOf('?');
  const path = q < 0 ? raw : raw.slice(0, q);
  const query = new URLSearchParams(q < 0 ? '' : raw.slice(q + 1));
  return { path: path.startsWith('/') ? path : `/${path}`, query };
}

function match(path) {
  for (const [re, mod, names] of ROUTES) {
    const m = re.exec(path);
    if (!m) continue;
    const params = {};
    names.forEach((n, i) => {
      params[n] = decodeURIComponent(m[i + 1]);
    });
    return { mod, params };
  }
  return null;
}

async function route() {
  const seq = ++navSeq;
  const { path, query } = parseHash();

  if (typeof cleanup === 'function') {
    try {
      cleanup();
    } catch (e) {
      console.warn('cleanup:', e);
    }
  }
  cleanup = null;
  clearToasts(); // a toast tells of an action on the page being left: it would cover the next one

  const m = match(path);
  if (!session && (!m || m.mod !== 'signin')) {
    // Remember where the user was going, to return there after signing in.
    const target = path + (query.toString() ? `?${query}` : '');
    const next = path === '/' || path === '/signin' ? '' : `?next=${encodeURIComponent(target)}`;
    location.replace(`#/signin${next}`);
    return;
  }
  if (path === '/' || path === '') {
    location.replace('#/models');
    return;
  }

  const active = m ? m.mod.replace(/^(model|version)$/, 'models').replace(/^job$/, 'jobs')
    .replace(/^promotion$/, 'promotions') : '';
  updateShell(active);

  const root = el('div', { class: 'page', 'aria-busy': 'true' });
  main.replaceChildren(root);

  if (!m) {
    setTitle('Not found');
    root.append(el('h1', null, 'Page not found'),
      el('p', null, 'There is no page at ', el('code', null, `#${path}`), '. ',
        el('a', { href: '#/models' }, 'Go to the models'), '.'));
    root.removeAttribute('aria-busy');
    return;
  }

  try {
    const page = await import(`./pages/${m.mod}.js`);
    const ret = await page.render(root, m.params, query);
    if (seq !== navSeq) {
      // The user moved on while this page loaded: stop whatever it started.
      if (typeof ret === 'function') ret();
      return;
    }
    cleanup = typeof ret === 'function' ? ret : null;
  } catch (err) {
    if (seq !== navSeq) return;
    console.error(err);
    if (!root.querySelector('h1')) {
      root.prepend(el('h1', null, err && err.status === 404 ? 'Not found' : 'Something went wrong'));
    }
    root.appendChild(errorBox(err));
  } finally {
    if (seq === navSeq) root.removeAttribute('aria-busy');
  }

  if (seq === navSeq && !firstRender) {
    // Move focus to the new page's heading so keyboard and screen-reader users land there.
    const h1 = root.querySelector('h1');
    if (h1) {
      h1.setAttribute('tabindex', '-1');
      h1.focus({ preventScroll: true });
    }
    window.scrollTo(0, 0);
  }
  firstRender = false;
}

async function start() {
  buildShell();
  if (session) {
    try {
      await refreshSession();
    } catch (e) {
      // A 401 has already signed out; anything else (registry down) shows on the page.
      console.warn('whoami:', e);
    }
  }
  window.addEventListener('hashchange', route);
  window.addEventListener('mlvault:session', () => updateShell(''));
  route();
}

start();
