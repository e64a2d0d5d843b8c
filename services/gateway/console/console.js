// The Invicta console: a client of the API, drawn in the browser. Every view is one or more API
// calls made with the key the user signed in with, kept in this tab's sessionStorage only;
// errors are the API's problems, shown in words. Text from the API is only ever set as text
// (never parsed as HTML).
'use strict';

const KEY = 'invicta.key';
const ROLE = 'invicta.role';
const TAB = 'invicta.tenant';

// ---------------------------------------------------------------------------------------------
// Building the page

/** An element: `h('a', {href: '#/'}, 'text', child)`. Attributes starting with `on` are events. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
    else if (name === 'text') el.textContent = value;
    else if (value === true) el.setAttribute(name, '');
    else el.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

let nextId = 0;
/** A labelled field: the label names the control, the hint describes it. */
function field(labelText, control, hint) {
  const id = control.id || `f${++nextId}`;
  control.id = id;
  const parts = [h('label', { for: id }, labelText)];
  if (hint) {
    const hintId = `${id}-hint`;
    control.setAttribute('aria-describedby', hintId);
    parts.push(h('span', { class: 'hint', id: hintId }, hint));
  }
  const inline = control.type === 'checkbox';
  return h('div', { class: inline ? 'field inline' : 'field' }, inline ? [control, ...parts] : [...parts, control]);
}

function table(headers, rows, caption) {
  return h('table', {},
    caption ? h('caption', { class: 'muted' }, caption) : null,
    h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, rows.length ? rows.map((cells) => h('tr', {}, cells.map((c) => h('td', {}, c))))
      : h('tr', {}, h('td', { colspan: headers.length, class: 'muted' }, 'None.'))));
}

function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

const fmtTime = (ms) => (ms ? new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC') : '—');
const fmtNum = (n) => (n === null || n === undefined ? 'no limit' : Number(n).toLocaleString('en'));
function fmtBytes(n) {
  if (n === null || n === undefined) return 'no limit';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
}
const enc = encodeURIComponent;
const json = (v) => JSON.stringify(v);

// ---------------------------------------------------------------------------------------------
// Talking to the API

class ApiProblem extends Error {
  constructor(problem) {
    super(problem.detail || problem.title || 'request failed');
    this.problem = problem;
  }
}

function key() { return sessionStorage.getItem(KEY); }

async function api(method, path, options = {}) {
  const headers = Object.assign({ authorization: `Bearer ${key()}` }, options.headers || {});
  let body;
  if (options.json !== undefined) {
    headers['content-type'] = 'application/json';
    body = JSON.stringify(options.json);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body, signal: options.signal });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiProblem({ title: 'Unreachable', detail: `the server did not answer: ${e.message}`, code: 'unreachable' });
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!response.ok) {
    throw new ApiProblem(data && data.code ? data : {
      title: response.statusText || `HTTP ${response.status}`, status: response.status,
      detail: text.slice(0, 300) || 'no detail', code: `http_${response.status}`,
    });
  }
  // A file's bytes, as text, when the caller takes them.
  if (options.raw && !(response.headers.get('content-type') || '').includes('json')) return { raw: text };
  return data;
}

// ---------------------------------------------------------------------------------------------
// Problems, in words

function showProblem(error) {
  const alert = document.getElementById('alert');
  alert.replaceChildren();
  if (!error) return;
  if (error.name === 'AbortError') return;
  const p = error.problem || { title: 'Error', detail: String(error.message || error), code: 'client' };
  const words = [h('strong', {}, p.title || 'Error'), ': ', p.detail || ''];
  if (p.code) words.push(' ', h('span', { class: 'code' }, `(${p.code}`, p.status ? `, HTTP ${p.status}` : '', ')'));
  if (p.quota) words.push(h('div', {}, `Quota ${p.quota}: limit ${fmtNum(p.limit)}, used ${fmtNum(p.used)}.`));
  alert.append(h('p', { class: 'tight' }, words));
  if (p.status === 401) {
    alert.append(h('p', { class: 'tight' }, h('a', { href: '#/signin', onclick: signOut }, 'Sign in again')));
  }
}

/** Runs an action, showing its problem if it fails; returns whether it succeeded. */
async function attempt(action) {
  showProblem(null);
  try {
    await action();
    return true;
  } catch (e) {
    showProblem(e);
    return false;
  }
}

function confirmThen(question, action) {
  return () => { if (window.confirm(question)) attempt(action); };
}

// ---------------------------------------------------------------------------------------------
// Routing: the fragment names the view

let leaving = new AbortController();

function route() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, queryString] = raw.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(queryString || '') };
}

const TENANT_NAV = [['#/components', 'Components'], ['#/usage', 'Usage'], ['#/keys', 'Keys']];
const OPERATOR_NAV = [['#/tenants', 'Tenants'], ['#/plans', 'Plans'], ['#/invoices', 'Invoices'], ['#/cluster', 'Cluster']];

function drawChrome() {
  const role = sessionStorage.getItem(ROLE);
  const nav = document.getElementById('nav');
  const who = document.getElementById('who');
  const items = !key() ? [] : role === 'operator' ? OPERATOR_NAV : TENANT_NAV;
  const here = location.hash || '#/';
  nav.replaceChildren(h('ul', {}, items.map(([href, text]) => h('li', {},
    h('a', { href, 'aria-current': here.startsWith(href) ? 'page' : null }, text)))));
  who.replaceChildren();
  if (key()) {
    const label = role === 'operator' ? 'operator' : `tenant ${sessionStorage.getItem(TAB) || ''}`;
    who.append(h('span', {}, `Signed in as ${label}`),
      h('button', { type: 'button', class: 'secondary', onclick: signOut }, 'Sign out'));
  }
}

function signOut() {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(ROLE);
  sessionStorage.removeItem(TAB);
  location.hash = '#/signin';
}

async function render() {
  leaving.abort();
  leaving = new AbortController();
  const signal = leaving.signal;
  const { parts, query } = route();
  const main = document.getElementById('main');
  drawChrome();
  let view;
  if (!key()) {
    view = signIn;
  } else if (sessionStorage.getItem(ROLE) === 'operator') {
    view = {
      tenants: parts.length > 1 ? tenantPage : tenantsPage,
      plans: plansPage, invoices: invoicesPage, cluster: clusterPage,
    }[parts[0]] || tenantsPage;
  } else {
    const [top, component, sub, worker] = parts;
    if (top === 'usage') view = usagePage;
    else if (top === 'keys') view = keysPage;
    else if (top === 'components' && component && sub === 'workers' && worker) view = workerPage;
    else if (top === 'components' && component && sub === 'workers') view = workersPage;
    else if (top === 'components' && component) view = componentPage;
    else view = componentsPage;
  }
  const content = h('div', {});
  main.replaceChildren(content);
  showProblem(null);
  try {
    await view(content, { parts, query, signal });
  } catch (e) {
    showProblem(e);
  }
  // The new view's heading takes the focus, as a page load would for a screen reader.
  // (A view that put the focus on its first field, as sign-in does, keeps it.)
  const heading = main.querySelector('h1');
  if (heading && !main.contains(document.activeElement)) {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: true });
  }
}

window.addEventListener('hashchange', render);
window.addEventListener('DOMContentLoaded', render);

// ---------------------------------------------------------------------------------------------
// Signing in

async function signIn(root) {
  const input = h('input', { type: 'password', name: 'key', autocomplete: 'off', required: true, spellcheck: 'false', size: 60 });
  const form = h('form', { class: 'panel', 'aria-labelledby': 'signin-title' },
    field('API key', input, 'A tenant key, or the operator key. It stays in this browser tab only.'),
    h('button', { type: 'submit' }, 'Sign in'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    attempt(async () => {
      const value = input.value.trim();
      if (!/^inv_[0-9a-f]+_[0-9a-f]+$/.test(value)) {
        throw new ApiProblem({ title: 'Not a key', detail: 'keys look like inv_<id>_<secret>', code: 'invalid_key' });
      }
      sessionStorage.setItem(KEY, value);
      try {
        // An operator key may list plans; a tenant key is refused with 403 and is a tenant's.
        await api('GET', '/v1/admin/plans');
        sessionStorage.setItem(ROLE, 'operator');
        location.hash = '#/tenants';
      } catch (e) {
        if (!e.problem || e.problem.status !== 403) { sessionStorage.removeItem(KEY); throw e; }
        sessionStorage.setItem(ROLE, 'tenant');
        try {
          const usage = await api('GET', '/v1/usage');
          sessionStorage.setItem(TAB, usage.tenant);
        } catch (_) { /* a key without the read scope still signs in */ }
        location.hash = '#/components';
      }
    });
  });
  root.append(h('h1', { id: 'signin-title' }, 'Sign in to Invicta'), form,
    h('p', { class: 'muted' }, 'New here? Run ', h('code', {}, 'make run'),
      ': it prints a key for the demo tenant and the operator key.'));
  input.focus();
}

// ---------------------------------------------------------------------------------------------
// Components

async function componentsPage(root) {
  const data = await api('GET', '/v1/components');
  root.append(h('h1', {}, 'Components'));
  root.append(table(['Name', 'Latest version', 'Size', 'Exports', 'Uploaded'],
    data.components.map((c) => [
      h('a', { href: `#/components/${enc(c.name)}` }, c.name), String(c.version), fmtBytes(c.size),
      String(c.exports.length), fmtTime(c.created_at_ms),
    ])));
  root.append(uploadForm());
}

function uploadForm(fixedName) {
  const name = h('input', { type: 'text', name: 'name', required: true, maxlength: 128, pattern: '[a-z0-9][a-z0-9_\\-]*', value: fixedName || '' });
  const file = h('input', { type: 'file', name: 'file', accept: '.wasm,.tar,application/wasm,application/x-tar', required: true });
  const bar = h('progress', { max: 100, value: 0, id: 'upload-progress' });
  const status = h('p', { class: 'muted', role: 'status', id: 'upload-status' }, 'Nothing uploading.');
  const button = h('button', { type: 'submit' }, fixedName ? 'Upload a new version' : 'Upload');
  const form = h('form', { class: 'panel', 'aria-labelledby': 'upload-title' },
    h('h2', { id: 'upload-title' }, fixedName ? 'New version' : 'Upload a component'),
    fixedName ? null : field('Name', name, 'Lowercase letters, digits, - and _.'),
    field('Component file (.wasm, or .tar with its files)', file),
    h('div', { class: 'field' }, h('label', { for: 'upload-progress' }, 'Progress'), bar), status, button);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const chosen = file.files[0];
    if (!chosen) return;
    const component = fixedName || name.value.trim();
    button.disabled = true;
    attempt(async () => {
      try {
        const done = await upload(component, chosen, (fraction, words) => {
          bar.value = Math.round(fraction * 100);
          status.textContent = words;
        });
        status.textContent = `Version ${done.version} of ${done.name} is ready.`;
        status.className = 'ok';
        location.hash = `#/components/${enc(done.name)}`;
      } finally {
        button.disabled = false;
      }
    });
  });
  return form;
}

/** Uploads with progress: the bytes (90% of the bar), then compiling, answered early (202). */
function upload(component, blob, progress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', `/v1/components/${enc(component)}`);
    xhr.setRequestHeader('authorization', `Bearer ${key()}`);
    // A tar archive carries the component and the files its workers start with.
    xhr.setRequestHeader('content-type', /\.tar$/i.test(blob.name || '') ? 'application/x-tar' : 'application/wasm');
    xhr.setRequestHeader('prefer', 'respond-async');
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) progress(0.9 * (e.loaded / e.total), `Sending: ${fmtBytes(e.loaded)} of ${fmtBytes(e.total)}`);
    };
    xhr.onerror = () => reject(new ApiProblem({ title: 'Unreachable', detail: 'the upload was cut off', code: 'unreachable' }));
    xhr.onload = async () => {
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch (_) { data = null; }
      if (xhr.status === 200 || xhr.status === 201) { progress(1, 'Ready.'); resolve(data); return; }
      if (xhr.status !== 202) {
        reject(new ApiProblem(data && data.code ? data : { title: `HTTP ${xhr.status}`, detail: xhr.responseText.slice(0, 300), status: xhr.status }));
        return;
      }
      progress(0.9, 'Compiling…');
      const location = xhr.getResponseHeader('location');
      try {
        for (;;) {
          const state = await api('GET', location);
          if (state.status === 'ready') {
            progress(1, 'Ready.');
            resolve(await api('GET', `/v1/components/${enc(component)}`));
            return;
          }
          if (state.status === 'failed') { reject(new ApiProblem(state.problem)); return; }
          progress(0.9 + 0.09 * Math.min(1, (state.elapsed_ms || 0) / 30000), `Compiling… ${Math.round((state.elapsed_ms || 0) / 100) / 10} s`);
          await new Promise((r) => setTimeout(r, 250));
        }
      } catch (e) { reject(e); }
    };
    xhr.send(blob);
  });
}

async function componentPage(root, { parts }) {
  const name = parts[1];
  const c = await api('GET', `/v1/components/${enc(name)}`);
  root.append(h('h1', {}, `Component ${c.name}`));
  root.append(facts([
    ['Latest version', String(c.version)], ['Versions', (c.versions || []).join(', ')],
    ['Size', fmtBytes(c.size)], ['Content hash', h('code', {}, c.hash)], ['Uploaded', fmtTime(c.created_at_ms)],
  ]));
  root.append(h('p', {}, h('a', { href: `#/components/${enc(name)}/workers` }, `Workers of ${name}`)));
  root.append(h('h2', {}, 'Exports'));
  root.append(table(['Function', 'Parameters', 'Result'], c.exports.map((f) => [
    h('code', {}, f.name),
    f.params.length ? h('ul', { class: 'mono' }, f.params.map((p) => h('li', {}, `${p.name}: ${p.type}`))) : h('span', { class: 'muted' }, 'none'),
    f.result ? h('code', {}, f.result) : h('span', { class: 'muted' }, 'none'),
  ])));
  root.append(uploadForm(name));
  root.append(h('h2', {}, 'Delete'));
  root.append(h('button', {
    type: 'button', class: 'danger',
    onclick: confirmThen(`Delete ${name} and all its versions?`, async () => {
      await api('DELETE', `/v1/components/${enc(name)}`);
      location.hash = '#/components';
    }),
  }, `Delete ${name}`));
}

// ---------------------------------------------------------------------------------------------
// Workers

async function workersPage(root, { parts, query }) {
  const component = parts[1];
  const status = query.get('status') || '';
  const prefix = query.get('prefix') || '';
  const cursor = query.get('cursor') || '';
  const params = new URLSearchParams({ limit: '20' });
  if (status) params.set('status', status);
  if (prefix) params.set('prefix', prefix);
  if (cursor) params.set('cursor', cursor);
  const data = await api('GET', `/v1/components/${enc(component)}/workers?${params}`);
  root.append(h('h1', {}, `Workers of ${component}`));
  const statusSelect = h('select', { name: 'status' }, ['', 'active', 'suspended', 'failed'].map((s) => h('option', { value: s, selected: s === status }, s || 'any')));
  const prefixInput = h('input', { type: 'text', name: 'prefix', value: prefix, maxlength: 128 });
  const filter = h('form', { class: 'panel row', role: 'search', 'aria-label': 'Filter workers' },
    field('Status', statusSelect), field('Name starts with', prefixInput), h('button', { type: 'submit' }, 'Filter'));
  filter.addEventListener('submit', (event) => {
    event.preventDefault();
    const q = new URLSearchParams();
    if (statusSelect.value) q.set('status', statusSelect.value);
    if (prefixInput.value) q.set('prefix', prefixInput.value);
    location.hash = `#/components/${enc(component)}/workers?${q}`;
  });
  root.append(filter);
  const base = `/v1/components/${enc(component)}/workers`;
  root.append(table(['Name', 'Status', 'Version', 'Created', 'Actions'], data.workers.map((w) => [
    h('a', { href: `#/components/${enc(component)}/workers/${enc(w.name)}` }, w.name),
    h('span', { class: `status status-${w.status}` }, w.status), String(w.component_version), fmtTime(w.created_at_ms),
    h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'secondary', 'aria-label': `Interrupt ${w.name}`, onclick: () => attempt(async () => { await api('POST', `${base}/${enc(w.name)}/interrupt`); render(); }) }, 'Interrupt'),
      h('button', { type: 'button', class: 'secondary', 'aria-label': `Resume ${w.name}`, onclick: () => attempt(async () => { await api('POST', `${base}/${enc(w.name)}/resume`); render(); }) }, 'Resume'),
      h('button', { type: 'button', class: 'danger', 'aria-label': `Delete ${w.name}`, onclick: confirmThen(`Delete worker ${w.name}?`, async () => { await api('DELETE', `${base}/${enc(w.name)}`); render(); }) }, 'Delete')),
  ])));
  const pager = h('p', { class: 'actions' });
  if (cursor) pager.append(h('a', { href: `#/components/${enc(component)}/workers?${new URLSearchParams({ status, prefix })}` }, 'First page'));
  if (data.next) {
    const q = new URLSearchParams({ status, prefix, cursor: data.next });
    pager.append(h('a', { href: `#/components/${enc(component)}/workers?${q}` }, 'Next page'));
  }
  root.append(pager);
  root.append(createWorkerForm(component));
}

function createWorkerForm(component) {
  const name = h('input', { type: 'text', name: 'worker', required: true, maxlength: 128 });
  const env = h('textarea', { name: 'env', rows: 3 });
  const args = h('textarea', { name: 'args', rows: 2 });
  const version = h('input', { type: 'number', name: 'version', min: 1, step: 1 });
  const form = h('form', { class: 'panel', 'aria-labelledby': 'create-title' },
    h('h2', { id: 'create-title' }, 'Create a worker'),
    field('Worker name', name), field('Environment', env, 'One NAME=value per line.'),
    field('Arguments', args, 'One per line.'), field('Component version', version, 'The latest if empty.'),
    h('button', { type: 'submit' }, 'Create'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    attempt(async () => {
      const envMap = {};
      for (const line of env.value.split('\n').map((l) => l.trim()).filter(Boolean)) {
        const at = line.indexOf('=');
        if (at < 1) throw new ApiProblem({ title: 'Bad environment', detail: `\`${line}\` is not NAME=value`, code: 'invalid_env' });
        envMap[line.slice(0, at)] = line.slice(at + 1);
      }
      const body = { name: name.value.trim(), env: envMap, args: args.value.split('\n').filter((l) => l.length) };
      if (version.value) body.version = Number(version.value);
      const created = await api('POST', `/v1/components/${enc(component)}/workers`, { json: body });
      location.hash = `#/components/${enc(component)}/workers/${enc(created.name)}`;
    });
  });
  return form;
}

async function workerPage(root, { parts, signal }) {
  const [, component, , worker] = parts;
  const base = `/v1/components/${enc(component)}/workers/${enc(worker)}`;
  const [status, comp] = await Promise.all([api('GET', base), api('GET', `/v1/components/${enc(component)}`)]);
  root.append(h('h1', {}, `Worker ${worker}`));
  root.append(h('p', {}, 'Of ', h('a', { href: `#/components/${enc(component)}` }, component), ' · ',
    h('a', { href: `#/components/${enc(component)}/workers` }, 'all its workers')));
  const workerFacts = (st) => facts([
    ['Status', h('span', { class: `status status-${st.status}`, id: 'worker-status' }, st.status)],
    ['Component version', String(st.component_version)],
    ['Oplog entries', `${fmtNum(st.oplog_length)}${st.archived_entries ? ` (${fmtNum(st.archived_entries)} archived)` : ''}`],
    ['Pending invocations', String(st.pending_invocations)],
    ...(st.error ? [['Error', h('span', { class: 'status-failed' }, st.error)]] : []),
  ]);
  const about = h('div', {}, workerFacts(status));
  root.append(about);
  root.append(h('div', { class: 'actions' },
    h('button', { type: 'button', class: 'secondary', onclick: () => attempt(async () => { await api('POST', `${base}/interrupt`); render(); }) }, 'Interrupt'),
    h('button', { type: 'button', class: 'secondary', onclick: () => attempt(async () => { await api('POST', `${base}/resume`); render(); }) }, 'Resume'),
    h('button', { type: 'button', class: 'danger', onclick: confirmThen(`Delete worker ${worker}?`, async () => { await api('DELETE', base); location.hash = `#/components/${enc(component)}/workers`; }) }, 'Delete')));
  const oplog = h('div', {}, await timeline(base));
  // After each call the timeline shows what it recorded.
  const invoked = async () => {
    oplog.replaceChildren(await timeline(base));
    about.replaceChildren(workerFacts(await api('GET', base)));
  };
  root.append(invokeForm(base, comp.exports, invoked));
  const logs = logsPanel(base, signal);
  root.append(h('h2', {}, 'Oplog'), oplog, h('h2', {}, 'Logs'), logs);
  const [pending, promises, schedules] = await Promise.all([
    api('GET', `${base}/invocations?limit=50`), api('GET', `${base}/promises?limit=50`), api('GET', `${base}/schedules`),
  ]);
  root.append(h('h2', {}, 'Pending invocations'), table(['Idempotency key', 'Function', 'Accepted', 'Due', 'Attempts', 'Last error'],
    pending.invocations.map((p) => [h('code', {}, p.idempotency_key), h('code', {}, `${p.function}(${p.params.map(json).join(', ')})`),
      fmtTime(p.enqueued_at_ms), fmtTime(p.due_at_ms), String(p.attempts), p.last_error || '—'])));
  root.append(h('h2', {}, 'Promises'), table(['Id', 'Made', 'Completed', 'Data'], promises.promises.map((p) => [
    h('code', {}, p.id), fmtTime(p.created_at_ms), p.completed_at_ms ? fmtTime(p.completed_at_ms) : 'waiting',
    p.completed === null || p.completed === undefined ? '—' : h('code', {}, json(p.completed).slice(0, 200)),
  ])));
  root.append(h('h2', {}, 'Schedules'), table(['Id', 'Function', 'Cron (UTC)', 'State', 'Next tick', 'Fired'], schedules.schedules.map((s) => [
    h('code', {}, s.id), h('code', {}, `${s.function}(${s.params.map(json).join(', ')})`), h('code', {}, s.cron),
    s.paused ? 'paused' : 'running', fmtTime(s.next_at_ms), fmtNum(s.fired),
  ])));
  root.append(h('h2', {}, 'Files'), filesPanel(base));
}

/** The worker's files, on demand (reading them activates a suspended worker). */
function filesPanel(base) {
  const panel = h('div', { class: 'panel', id: 'files' });
  const show = async (path) => {
    const rest = path.split('/').filter(Boolean).map(enc).join('/');
    const at = await api('GET', rest ? `${base}/files/${rest}` : `${base}/files`, { raw: true });
    const crumbs = h('p', {}, h('button', { type: 'button', class: 'link', onclick: () => attempt(() => show('')) }, '/'));
    const parts = path.split('/').filter(Boolean);
    const isFile = at && at.raw !== undefined;
    parts.forEach((part, i) => crumbs.append(' ', h('button', { type: 'button', class: 'link',
      onclick: () => attempt(() => show(parts.slice(0, i + 1).join('/'))) }, isFile && i === parts.length - 1 ? part : `${part}/`)));
    if (isFile) {
      panel.replaceChildren(crumbs, h('pre', { class: 'file', 'aria-label': `Contents of /${path}` }, at.raw.slice(0, 65536)));
      return;
    }
    panel.replaceChildren(crumbs, table(['Name', 'Kind', 'Size', 'Access'], at.entries.map((e) => [
      e.kind === 'symlink' ? e.name : h('button', { type: 'button', class: 'link', onclick: () => attempt(() => show([...parts, e.name].join('/'))) }, e.kind === 'directory' ? `${e.name}/` : e.name),
      e.kind, e.kind === 'file' ? fmtNum(e.size) : '—', e.read_only ? 'read-only' : 'read-write',
    ])));
  };
  panel.append(h('p', {}, 'What the worker has at / (its version’s files and what it wrote).'),
    h('button', { type: 'button', class: 'secondary', onclick: () => attempt(() => show('')) }, 'Show files'));
  return panel;
}

// --- The invoke form, generated from the function's WIT types -------------------------------

/** Parses a WIT type as the API writes it (`record { a: u8 }`, `option<string>`, …). */
function parseType(text) {
  const tokens = text.match(/[A-Za-z0-9_%-]+|[<>{}(),:]/g) || [];
  let at = 0;
  const peek = () => tokens[at];
  const take = (want) => {
    const t = tokens[at++];
    if (want && t !== want) throw new Error(`expected ${want} in ${text}`);
    return t;
  };
  function type() {
    const word = take();
    if (['record', 'variant', 'enum', 'flags'].includes(word) && peek() === '{') {
      take('{');
      const items = [];
      while (peek() !== '}') {
        const name = take();
        let inner = null;
        if (word === 'record') { take(':'); inner = type(); }
        if (word === 'variant' && peek() === '(') { take('('); inner = type(); take(')'); }
        items.push({ name, type: inner });
        if (peek() === ',') take(',');
      }
      take('}');
      return { kind: word, items };
    }
    if ((word === 'own' || word === 'borrow') && peek() === '<') {
      take('<');
      const resource = take();
      take('>');
      return { kind: word, resource };
    }
    if (['list', 'option', 'result', 'tuple'].includes(word) && peek() === '<') {
      take('<');
      const args = [];
      while (peek() !== '>') {
        if (peek() === '_') { take(); args.push(null); } else args.push(type());
        if (peek() === ',') take(',');
      }
      take('>');
      return { kind: word, args };
    }
    return { kind: word };
  }
  const parsed = type();
  if (at !== tokens.length) throw new Error(`unexpected ${tokens[at]} in ${text}`);
  return parsed;
}

const INTS = { u8: [0, 255], u16: [0, 65535], u32: [0, 4294967295], u64: [0, '18446744073709551615'],
  s8: [-128, 127], s16: [-32768, 32767], s32: [-2147483648, 2147483647], s64: ['-9223372036854775808', '9223372036854775807'] };

function waveString(s, quote) {
  let out = quote;
  for (const ch of s) {
    if (ch === '\\') out += '\\\\';
    else if (ch === quote) out += `\\${quote}`;
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (ch.codePointAt(0) < 0x20) out += `\\u{${ch.codePointAt(0).toString(16)}}`;
    else out += ch;
  }
  return out + quote;
}

/** A control for a value of `t`, with its WAVE text: `{ el, wave() }`. */
function control(t, label, typeText) {
  const hint = typeText;
  if (t.kind === 'bool') {
    const box = h('input', { type: 'checkbox' });
    return { el: field(label, box, hint), wave: () => (box.checked ? 'true' : 'false') };
  }
  if (INTS[t.kind]) {
    const [min, max] = INTS[t.kind];
    const input = h('input', { type: 'text', inputmode: 'numeric', required: true, pattern: '-?[0-9]+' });
    return {
      el: field(label, input, `${hint}, ${min} to ${max}`),
      wave: () => {
        const v = input.value.trim();
        if (!/^-?[0-9]+$/.test(v)) throw new ApiProblem({ title: 'Not a whole number', detail: `${label}: \`${v}\` is not a ${t.kind}`, code: 'invalid_param' });
        return v;
      },
    };
  }
  if (t.kind === 'f32' || t.kind === 'f64') {
    const input = h('input', { type: 'text', inputmode: 'decimal', required: true });
    return { el: field(label, input, hint), wave: () => input.value.trim() };
  }
  if (t.kind === 'string' || t.kind === 'char') {
    const input = h('input', { type: 'text', maxlength: t.kind === 'char' ? 2 : null });
    return { el: field(label, input, hint), wave: () => waveString(input.value, t.kind === 'char' ? "'" : '"') };
  }
  if (t.kind === 'own' || t.kind === 'borrow') {
    // A handle the worker returned earlier (`h12-0`), sent as a string.
    const input = h('input', { type: 'text', required: true, spellcheck: 'false', maxlength: 128 });
    return {
      el: field(label, input, `${hint}: a handle this worker returned, e.g. h12-0`),
      wave: () => {
        const text = input.value.trim();
        let handle = text;
        try { const parsed = JSON.parse(text); handle = parsed.handle || parsed; } catch (_) { handle = text; }
        return waveString(String(handle), '"');
      },
    };
  }
  if (t.kind === 'enum') {
    const select = h('select', {}, t.items.map((i) => h('option', { value: i.name }, i.name)));
    return { el: field(label, select, hint), wave: () => select.value };
  }
  if (t.kind === 'flags') {
    const boxes = t.items.map((i) => h('input', { type: 'checkbox', value: i.name }));
    const set = h('fieldset', {}, h('legend', {}, label), t.items.map((i, n) => field(i.name, boxes[n])));
    return { el: set, wave: () => `{${boxes.filter((b) => b.checked).map((b) => b.value).join(', ')}}` };
  }
  if (t.kind === 'option') {
    const some = h('input', { type: 'checkbox' });
    const inner = control(t.args[0], `${label} value`, describe(t.args[0]));
    const set = h('fieldset', {}, h('legend', {}, `${label} (${hint})`), field('Present', some), inner.el);
    return { el: set, wave: () => (some.checked ? `some(${inner.wave()})` : 'none') };
  }
  if (t.kind === 'record') {
    const fields = t.items.map((i) => ({ name: i.name, c: control(i.type, i.name, describe(i.type)) }));
    const set = h('fieldset', {}, h('legend', {}, `${label} (record)`), fields.map((f) => f.c.el));
    return { el: set, wave: () => `{${fields.map((f) => `${f.name}: ${f.c.wave()}`).join(', ')}}` };
  }
  if (t.kind === 'variant' || t.kind === 'result') {
    const cases = t.kind === 'variant' ? t.items : [{ name: 'ok', type: t.args ? t.args[0] : null }, { name: 'err', type: t.args ? t.args[1] : null }];
    const select = h('select', {}, cases.map((c) => h('option', { value: c.name }, c.name)));
    const payloads = cases.map((c) => (c.type ? control(c.type, `${c.name} payload`, describe(c.type)) : null));
    const holder = h('div', {});
    const show = () => {
      const n = cases.findIndex((c) => c.name === select.value);
      holder.replaceChildren(...(payloads[n] ? [payloads[n].el] : []));
    };
    select.addEventListener('change', show);
    show();
    const set = h('fieldset', {}, h('legend', {}, `${label} (${hint})`), field('Case', select), holder);
    return {
      el: set,
      wave: () => {
        const n = cases.findIndex((c) => c.name === select.value);
        return payloads[n] ? `${cases[n].name}(${payloads[n].wave()})` : cases[n].name;
      },
    };
  }
  // Lists, tuples and anything else: written as WAVE text.
  const area = h('textarea', { rows: 2, spellcheck: 'false' });
  const example = t.kind === 'list' ? '[1, 2, 3]' : t.kind === 'tuple' ? '(1, "a")' : '';
  return { el: field(label, area, `${hint} in WAVE${example ? `, e.g. ${example}` : ''}`), wave: () => area.value.trim() };
}

function describe(t) {
  if (!t) return '_';
  if (t.items) return `${t.kind} { ${t.items.map((i) => (i.type ? `${i.name}: ${describe(i.type)}` : i.name)).join(', ')} }`;
  if (t.args) return `${t.kind}<${t.args.map(describe).join(', ')}>`;
  return t.kind;
}

function invokeForm(base, exports, invoked) {
  const select = h('select', { name: 'function' }, exports.map((f) => h('option', { value: f.name }, f.name)));
  const params = h('div', {});
  const key = h('input', { type: 'text', name: 'idempotency-key', maxlength: 256 });
  const result = h('pre', { id: 'invoke-result', 'aria-live': 'polite' }, 'No call yet.');
  let controls = [];
  const draw = () => {
    const f = exports.find((e) => e.name === select.value);
    controls = [];
    params.replaceChildren();
    if (!f) return;
    for (const p of f.params) {
      let c;
      try { c = control(parseType(p.type), p.name, p.type); } catch (_) { c = control({ kind: 'wave' }, p.name, p.type); }
      controls.push(c);
      params.append(c.el);
    }
    if (!f.params.length) params.append(h('p', { class: 'muted' }, 'No parameters.'));
  };
  select.addEventListener('change', draw);
  draw();
  // Values are checked by the script (`wave()`), which says what is wrong in words.
  const form = h('form', { class: 'panel', 'aria-labelledby': 'invoke-title', novalidate: true },
    h('h2', { id: 'invoke-title' }, 'Invoke'), field('Function', select), params,
    field('Idempotency key', key, 'Optional: the same key returns the same result without running again.'),
    h('button', { type: 'submit' }, 'Invoke'), h('h3', {}, 'Result'), result);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    attempt(async () => {
      const wave = controls.map((c) => c.wave());
      result.textContent = 'Running…';
      const headers = key.value.trim() ? { 'idempotency-key': key.value.trim() } : {};
      try {
        const answer = await api('POST', `${base}/invoke`, { json: { function: select.value, wave }, headers });
        result.textContent = `${json(answer.result)}\n(fuel ${fmtNum(answer.fuel_consumed)})`;
      } catch (e) {
        result.textContent = 'Failed: see the message above.';
        await invoked().catch(() => {});
        throw e;
      }
      await invoked();
    });
  });
  return form;
}

// --- The oplog as a timeline -----------------------------------------------------------------

const KIND_WORDS = {
  create: 'Created', invocation_enqueued: 'Accepted', exported_function_invoked: 'Invoked',
  imported_function_invoked: 'Host call', exported_function_completed: 'Completed', error: 'Failed',
  interrupted: 'Interrupted', suspended: 'Suspended', log: 'Log', begin_remote_write: 'Remote write begins',
  end_remote_write: 'Remote write ends', snapshot: 'Snapshot', jump: 'Jump', begin_atomic_region: 'Atomic region begins',
  end_atomic_region: 'Atomic region ends',
};

function entrySummary(e) {
  const cut = (s) => (s.length > 240 ? `${s.slice(0, 240)}…` : s);
  switch (e.kind) {
    case 'create': return `version ${e.component_version}${Object.keys(e.env || {}).length ? `, env ${Object.keys(e.env).join(', ')}` : ''}`;
    case 'invocation_enqueued': return `key ${e.idempotency_key}`;
    case 'exported_function_invoked': return cut(`${e.function}(${(e.params || []).map(json).join(', ')}) · key ${e.idempotency_key}`);
    case 'imported_function_invoked': return cut(`${e.host_function}${e.request !== null && e.request !== undefined ? ` ${json(e.request)}` : ''} → ${json(e.response)}`);
    case 'exported_function_completed': return cut(`→ ${(e.results || []).map(json).join(', ') || 'nothing'} · fuel ${fmtNum(e.fuel_consumed)}`);
    case 'error': return cut(`${e.error}: ${e.message} · fuel ${fmtNum(e.fuel_consumed)}`);
    case 'log': return cut(`${e.stream}: ${e.text}`);
    case 'begin_remote_write': return `${e.host_function} · key ${e.idempotency_key}`;
    case 'end_remote_write': case 'end_atomic_region': return `began at #${e.begin}`;
    case 'jump': return `replay skips #${e.from} to #${e.to}`;
    case 'snapshot': return `${fmtBytes(e.size)}`;
    default: return '';
  }
}

/** The oplog's latest 100 entries, oldest first, with a button for the 100 before them. */
async function timeline(base) {
  const status = await api('GET', base);
  const list = h('ol', { class: 'timeline', 'aria-label': 'Oplog entries' });
  const earlier = h('button', { type: 'button', class: 'secondary' }, 'Show earlier entries');
  const PAGE = 100;
  let first = Math.max(1, status.oplog_length - PAGE + 1);
  const rows = (entries) => {
    let lastTime = null;
    return entries.map((e) => {
      let when = '';
      if (e.timestamp_ms) {
        when = lastTime === null ? fmtTime(e.timestamp_ms).slice(11, 19) : `+${(e.timestamp_ms - lastTime).toLocaleString('en')} ms`;
        lastTime = e.timestamp_ms;
      }
      return h('li', { class: `k-${e.kind}` },
        h('span', { class: 'mono' }, `#${e.index}`), h('span', { class: 'kind' }, KIND_WORDS[e.kind] || e.kind),
        h('span', { class: 'when' }, when), h('span', { class: 'mono' }, entrySummary(e)));
    });
  };
  const page = await api('GET', `${base}/oplog?from=${first}&count=${PAGE}`);
  list.append(...rows(page.entries));
  earlier.hidden = first <= 1;
  earlier.addEventListener('click', () => attempt(async () => {
    const from = Math.max(1, first - PAGE);
    const before = await api('GET', `${base}/oplog?from=${from}&count=${first - from}`);
    list.prepend(...rows(before.entries));
    first = from;
    earlier.hidden = first <= 1;
  }));
  return h('div', {}, earlier, list,
    h('p', { class: 'muted' }, `${status.oplog_length.toLocaleString('en')} entries; times are of the entries that carry one.`));
}

// --- Live logs over server-sent events -------------------------------------------------------

function logsPanel(base, signal) {
  const out = h('pre', { id: 'logs', 'aria-live': 'polite' });
  const state = h('span', { class: 'muted', role: 'status' }, 'Not following.');
  let following = null;
  const button = h('button', { type: 'button', class: 'secondary' }, 'Follow live');
  const append = (line) => {
    out.append(`${line.stream === 'stderr' ? '! ' : ''}${line.text}${line.text.endsWith('\n') ? '' : '\n'}`);
    out.scrollTop = out.scrollHeight;
  };
  const stop = () => { if (following) following.abort(); following = null; button.textContent = 'Follow live'; state.textContent = 'Not following.'; };
  signal.addEventListener('abort', stop);
  button.addEventListener('click', () => {
    if (following) { stop(); return; }
    following = new AbortController();
    const mine = following;
    button.textContent = 'Stop following';
    state.textContent = 'Following…';
    follow(base, mine.signal, append, (reason) => { if (following === mine) { stop(); state.textContent = `Stopped: ${reason}.`; } })
      .catch((e) => { if (e.name !== 'AbortError') { showProblem(e); stop(); } });
  });
  attempt(async () => {
    const page = await api('GET', `${base}/logs`);
    page.lines.forEach(append);
    if (!page.lines.length) out.append('');
  });
  return h('div', {}, h('div', { class: 'actions' }, button, state), out);
}

/** Reads `follow=true` server-sent events with the key in a header (EventSource cannot send one). */
async function follow(base, signal, onLine, onEnd) {
  const response = await fetch(`${base}/logs?follow=true`, {
    headers: { authorization: `Bearer ${key()}`, accept: 'text/event-stream' }, signal,
  });
  if (!response.ok) {
    const data = await response.json().catch(() => null);
    throw new ApiProblem(data && data.code ? data : { title: `HTTP ${response.status}`, status: response.status });
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) { onEnd('the stream ended'); return; }
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = 'message';
      let data = '';
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data += line.slice(5).trim();
      }
      if (!data) continue;
      const parsed = JSON.parse(data);
      if (event === 'log') onLine(parsed);
      if (event === 'end') { onEnd(parsed.reason); return; }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Usage, against the plan

function barChart(title, points, unit) {
  const width = 700;
  const height = 140;
  const most = Math.max(1, ...points.map((p) => p.value));
  const barWidth = points.length ? Math.max(4, Math.floor(width / points.length) - 4) : 0;
  const svgNs = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(svgNs, 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('role', 'img');
  const total = points.reduce((a, p) => a + p.value, 0);
  svg.setAttribute('aria-label', `${title}: ${fmtNum(total)} ${unit} over ${points.length} day(s)`);
  points.forEach((p, n) => {
    const barHeight = Math.round((p.value / most) * (height - 10));
    const rect = document.createElementNS(svgNs, 'rect');
    rect.setAttribute('x', String(n * (barWidth + 4)));
    rect.setAttribute('y', String(height - barHeight));
    rect.setAttribute('width', String(barWidth));
    rect.setAttribute('height', String(barHeight));
    const tip = document.createElementNS(svgNs, 'title');
    tip.textContent = `${p.label}: ${fmtNum(p.value)} ${unit}`;
    rect.append(tip);
    svg.append(rect);
  });
  return h('figure', { class: 'chart' }, h('figcaption', {}, `${title} per day (${unit})`), svg);
}

function meterRow(label, used, limit, format) {
  const id = `m${++nextId}`;
  const row = h('div', { class: 'meter-row' }, h('label', { for: id }, label),
    h('span', {}, `${format(used)} of ${limit === null || limit === undefined ? 'no limit' : format(limit)}`));
  const meter = h('meter', { id, min: 0, max: limit || 1, value: limit ? Math.min(used, limit) : 0, high: limit ? limit * 0.8 : 1 });
  row.append(meter);
  return row;
}

async function usageReport(root, data) {
  // Every day of the report's month up to today (or its last), so that bars keep one width.
  const month = data.month || new Date().toISOString().slice(0, 7);
  const seen = [...new Set(data.rows.map((r) => r.period))].sort();
  const today = new Date().toISOString().slice(0, 10);
  const last = today.startsWith(month) ? Number(today.slice(8, 10)) : new Date(Date.UTC(Number(month.slice(0, 4)), Number(month.slice(5, 7)), 0)).getUTCDate();
  const days = [...new Set([...Array.from({ length: last }, (_, n) => `${month}-${String(n + 1).padStart(2, '0')}`), ...seen])].sort();
  const series = (f) => days.map((d) => ({ label: d, value: data.rows.filter((r) => r.period === d).reduce((a, r) => a + f(r), 0) }));
  root.append(barChart('Invocations', series((r) => r.invocations), 'invocations'));
  root.append(barChart('Fuel', series((r) => r.fuel), 'fuel'));
  root.append(barChart('Wall time', series((r) => Math.round(r.wall_us / 1000)), 'ms'));
  root.append(barChart('Storage', series((r) => r.storage_byte_hours), 'byte-hours'));
  const components = [...new Set(data.rows.map((r) => r.component))].sort();
  root.append(h('h2', {}, 'By component'), table(['Component', 'Invocations', 'Fuel', 'Wall time', 'Storage (byte-hours)', 'HTTP requests'],
    components.map((c) => {
      const rows = data.rows.filter((r) => r.component === c);
      const sum = (f) => rows.reduce((a, r) => a + f(r), 0);
      return [c || '(none)', fmtNum(sum((r) => r.invocations)), fmtNum(sum((r) => r.fuel)), `${fmtNum(Math.round(sum((r) => r.wall_us) / 1000))} ms`,
        fmtNum(sum((r) => r.storage_byte_hours)), fmtNum(sum((r) => r.http_requests))];
    })));
}

async function usagePage(root) {
  const data = await api('GET', '/v1/usage?granularity=day');
  const plan = data.plan;
  root.append(h('h1', {}, `Usage in ${data.month}`));
  root.append(h('p', {}, `Plan `, h('strong', {}, plan.name), '.'));
  root.append(h('section', { class: 'panel', 'aria-label': 'Against the plan' },
    meterRow('Fuel this month', data.fuel, plan.fuel_per_month, fmtNum),
    meterRow('Workers', data.workers, plan.workers_max, fmtNum),
    meterRow('Components', data.components, plan.components_max, fmtNum),
    meterRow('Component bytes', data.component_bytes, plan.component_bytes_max, fmtBytes),
    h('p', { class: 'muted' }, `Invocations this month: ${fmtNum(data.invocations)}. Stored: ${fmtBytes(data.stored_bytes.oplog_bytes)} of oplogs, ${fmtBytes(data.stored_bytes.component_bytes)} of components.`)));
  await usageReport(root, data);
}

// ---------------------------------------------------------------------------------------------
// Keys

const SCOPES = ['admin', 'deploy', 'invoke', 'read'];

function keyForm(path, onCreated) {
  const boxes = SCOPES.map((s) => h('input', { type: 'checkbox', value: s, checked: s === 'read' }));
  const description = h('input', { type: 'text', maxlength: 200 });
  const shown = h('div', { 'aria-live': 'polite' });
  const form = h('form', { class: 'panel', 'aria-labelledby': 'key-title' },
    h('h2', { id: 'key-title' }, 'Create a key'),
    h('fieldset', {}, h('legend', {}, 'Scopes'), SCOPES.map((s, n) => field(s, boxes[n]))),
    field('Description', description), h('button', { type: 'submit' }, 'Create key'), shown);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    attempt(async () => {
      const created = await api('POST', path, { json: { scopes: boxes.filter((b) => b.checked).map((b) => b.value), description: description.value } });
      const secret = h('output', { class: 'mono', id: 'new-key' }, created.key);
      shown.replaceChildren(h('div', { class: 'secret' }, h('p', {}, h('strong', {}, 'The key, shown this once: '), 'copy it now.'), secret));
      if (onCreated) onCreated(created);
    });
  });
  return form;
}

async function keysPage(root) {
  const data = await api('GET', '/v1/keys');
  root.append(h('h1', {}, 'Keys'));
  const list = h('div', {});
  const draw = (keys) => list.replaceChildren(table(['Key', 'Scopes', 'Description', 'Created', 'State', ''], keys.map((k) => [
    h('code', {}, `${k.prefix}…`), k.scopes.join(', '), k.description || '—', fmtTime(k.created_at_ms), k.revoked ? 'revoked' : 'active',
    k.revoked ? '' : h('button', { type: 'button', class: 'danger', 'aria-label': `Revoke ${k.prefix}`, onclick: confirmThen(`Revoke ${k.prefix}…?`, async () => { await api('DELETE', `/v1/keys/${enc(k.id)}`); draw((await api('GET', '/v1/keys')).keys); }) }, 'Revoke'),
  ])));
  draw(data.keys);
  root.append(list, keyForm('/v1/keys', async () => draw((await api('GET', '/v1/keys')).keys)));
}

// ---------------------------------------------------------------------------------------------
// The operator's views

async function tenantsPage(root) {
  const [tenants, plans] = await Promise.all([api('GET', '/v1/admin/tenants'), api('GET', '/v1/admin/plans')]);
  root.append(h('h1', {}, 'Tenants'));
  root.append(table(['Name', 'Id', 'Plan', 'Created'], tenants.tenants.map((t) => [
    h('a', { href: `#/tenants/${enc(t.id)}` }, t.name), h('code', {}, t.id), t.plan, fmtTime(t.created_at_ms),
  ])));
  const name = h('input', { type: 'text', required: true, maxlength: 64 });
  const plan = h('select', {}, plans.plans.map((p) => h('option', { value: p.name }, p.name)));
  const form = h('form', { class: 'panel', 'aria-labelledby': 'tenant-title' }, h('h2', { id: 'tenant-title' }, 'Create a tenant'),
    field('Tenant name', name), field('Plan', plan), h('button', { type: 'submit' }, 'Create tenant'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    attempt(async () => {
      const t = await api('POST', '/v1/admin/tenants', { json: { name: name.value.trim(), plan: plan.value } });
      location.hash = `#/tenants/${enc(t.id)}`;
    });
  });
  root.append(form);
}

async function tenantPage(root, { parts }) {
  const id = parts[1];
  const [t, plans] = await Promise.all([api('GET', `/v1/admin/tenants/${enc(id)}`), api('GET', '/v1/admin/plans')]);
  root.append(h('h1', {}, `Tenant ${t.name}`));
  root.append(facts([['Id', h('code', {}, t.id)], ['Plan', h('span', { id: 'tenant-plan' }, t.plan)], ['Created', fmtTime(t.created_at_ms)]]));
  const plan = h('select', {}, plans.plans.map((p) => h('option', { value: p.name, selected: p.name === t.plan }, p.name)));
  const move = h('form', { class: 'panel row', 'aria-label': 'Move to another plan' }, field('Move to plan', plan), h('button', { type: 'submit' }, 'Move'));
  move.addEventListener('submit', (event) => {
    event.preventDefault();
    attempt(async () => { await api('PUT', `/v1/admin/tenants/${enc(id)}/plan`, { json: { plan: plan.value } }); render(); });
  });
  root.append(move, keyForm(`/v1/admin/tenants/${enc(id)}/keys`));
  root.append(h('p', {}, h('a', { href: `#/invoices?tenant=${enc(id)}` }, 'Invoices of this tenant')));
  root.append(h('h2', {}, 'Usage this month'));
  await usageReport(root, await api('GET', `/v1/admin/usage?tenant=${enc(id)}&granularity=day`));
}

async function plansPage(root) {
  const data = await api('GET', '/v1/admin/plans');
  root.append(h('h1', {}, 'Plans'));
  root.append(table(['Plan', 'Fuel per month', 'Workers', 'Memory per worker', 'Requests per second', 'Base price'], data.plans.map((p) => [
    p.name, fmtNum(p.fuel_per_month), fmtNum(p.workers_max), fmtBytes(p.memory_per_worker_bytes), fmtNum(p.requests_per_second),
    `${p.prices.base_monthly} ${p.prices.currency}`,
  ])));
  const pick = h('select', {}, h('option', { value: '' }, 'a new plan'), data.plans.map((p) => h('option', { value: p.name }, p.name)));
  const name = h('input', { type: 'text', required: true, maxlength: 64 });
  const body = h('textarea', { rows: 16, spellcheck: 'false', class: 'mono' });
  const fill = () => {
    const p = data.plans.find((x) => x.name === pick.value) || Object.assign({}, data.plans[0], { name: '' });
    name.value = p.name;
    body.value = JSON.stringify(p, null, 2);
  };
  pick.addEventListener('change', fill);
  fill();
  const form = h('form', { class: 'panel', 'aria-labelledby': 'plan-title' }, h('h2', { id: 'plan-title' }, 'Edit a plan'),
    field('Start from', pick), field('Plan name', name), field('Plan (JSON)', body, 'Limits that mean "no limit" are null.'),
    h('button', { type: 'submit' }, 'Save plan'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    attempt(async () => {
      let plan;
      try { plan = JSON.parse(body.value); } catch (e) { throw new ApiProblem({ title: 'Not JSON', detail: e.message, code: 'invalid_json' }); }
      plan.name = name.value.trim();
      await api('PUT', `/v1/admin/plans/${enc(plan.name)}`, { json: plan });
      render();
    });
  });
  root.append(form);
}

async function invoicesPage(root, { query }) {
  const tenants = await api('GET', '/v1/admin/tenants');
  root.append(h('h1', {}, 'Invoices'));
  const tenant = h('select', {}, tenants.tenants.map((t) => h('option', { value: t.id, selected: t.id === query.get('tenant') }, `${t.name} (${t.id})`)));
  const month = h('input', { type: 'month', value: query.get('month') || new Date().toISOString().slice(0, 7), required: true });
  const form = h('form', { class: 'panel row', 'aria-label': 'Choose an invoice' }, field('Tenant', tenant), field('Month', month), h('button', { type: 'submit' }, 'Show invoice'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    location.hash = `#/invoices?${new URLSearchParams({ tenant: tenant.value, month: month.value })}`;
  });
  root.append(form);
  if (!query.get('tenant')) return;
  const invoice = await api('GET', `/v1/admin/invoices?${new URLSearchParams({ tenant: query.get('tenant'), month: month.value })}`);
  root.append(h('h2', {}, `Invoice for ${invoice.month}, plan ${invoice.plan}`));
  root.append(table(['Item', 'Quantity', 'Unit', 'Unit price', 'Amount'], invoice.lines.map((l) => [
    l.item, fmtNum(l.quantity), l.unit, String(l.unit_price), `${l.amount} ${invoice.currency}`,
  ])));
  root.append(h('p', { id: 'invoice-total' }, h('strong', {}, `Total: ${invoice.total} ${invoice.currency}`)));
}

async function clusterPage(root) {
  const c = await api('GET', '/v1/admin/cluster');
  root.append(h('h1', {}, 'Cluster'));
  root.append(h('h2', {}, 'Executors'), table(['Executor', 'Address', 'State', 'Shards', 'Workers'], c.executors.map((e) => [
    h('code', {}, e.id), e.address || 'in process (all-in-one)', e.live ? (e.leaving ? 'leaving' : 'live') : 'gone', String(e.shards), fmtNum(e.workers),
  ])));
  if (c.workers_truncated) root.append(h('p', { class: 'muted' }, `Worker counts are lower bounds: ${fmtNum(c.workers_counted)} counted.`));
  root.append(h('h2', {}, 'Recent failovers'), table(['When', 'From', 'To', 'Shards'], c.failovers.map((f) => [
    fmtTime(f.at_ms), h('code', {}, f.from), h('code', {}, f.to), f.shards.join(', '),
  ])));
  root.append(h('h2', {}, 'Shards'), table(['Shard', 'Owner', 'Epoch', 'Lease until', 'Hand-off to', 'Workers'], c.shards.map((s) => [
    String(s.shard), s.owner ? h('code', {}, s.owner) : 'never granted', String(s.epoch), s.live ? fmtTime(s.expires_ms) : 'expired',
    s.handoff_to || '—', fmtNum(s.workers),
  ])));
}
