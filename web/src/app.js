// kiln's chat page: conversations in localStorage, replies streamed from
// /v1/chat/completions, Markdown rendered safely (markdown.js). Model output only ever
// reaches the DOM through renderMarkdown (sanitized) or textContent. Settings may hold a JSON
// Schema (the reply is then constrained, and shown as a JSON block) and a list of tools (the
// reply's tool calls are shown as blocks; the user may answer one as a `tool` message).
import { ApiError, chatRequest, listModels, streamChat } from './api.js';
import * as store from './store.js';

// Markdown and highlighting are most of the page's code: they load beside the page, which is
// usable before they arrive (replies show as plain text until then, and are redrawn).
let renderMarkdown = null;
const markdownReady = import('./markdown.js').then((m) => {
  renderMarkdown = m.renderMarkdown;
  document.documentElement.dataset.markdown = '1';
});

const $ = (id) => document.getElementById(id);

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (v !== false && v !== null && v !== undefined) el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c !== null && c !== undefined) el.append(c);
  return el;
}

const state = {
  convs: store.loadConversations(),
  current: store.loadCurrent(),
  settings: store.loadSettings(),
  apiKey: store.loadApiKey(),
  model: null, // served model name, from /v1/models
  busy: null, // {controller, conv, msg} while a reply streams
  editing: -1, // index of the user message being edited
  toolReply: null, // {id, name}: the call the next message answers, as a `tool` message
};

const conv = () => state.convs.find((c) => c.id === state.current);

function save() {
  store.saveConversations(state.convs);
  store.saveCurrent(state.current);
}

function newConversation() {
  const c = store.cleanConversation({ id: store.newId(), title: store.DEFAULT_TITLE, messages: [] });
  state.convs.unshift(c);
  state.current = c.id;
  state.editing = -1;
  save();
  renderAll();
  $('input').focus();
}

function ensureConversation() {
  if (!conv()) {
    if (state.convs.length) state.current = state.convs[0].id;
    else newConversation();
  }
}

/* ---- rendering ---- */

function fmt(n, digits = 0) {
  return n === null || n === undefined ? '–' : n.toFixed(digits);
}

function statsText(s) {
  const parts = [];
  if (s.prompt_tokens !== null) parts.push(`${s.prompt_tokens} prompt tokens`);
  if (s.completion_tokens !== null) parts.push(`${s.completion_tokens} tokens`);
  if (s.ttft_ms !== null) parts.push(`TTFT ${fmt(s.ttft_ms)} ms`);
  if (s.tok_s !== null) parts.push(`${fmt(s.tok_s, 1)} tok/s`);
  parts.push(`finish: ${s.finish_reason || '–'}`);
  return parts.join(' · ');
}

function renderSidebar() {
  const list = $('conv-list');
  list.replaceChildren(
    ...state.convs.map((c) =>
      h('li', {},
        h('button', {
          class: `conv${c.id === state.current ? ' active' : ''}`,
          'aria-current': c.id === state.current ? 'true' : null,
          title: c.title,
          onclick: () => {
            if (state.busy) return;
            state.current = c.id;
            state.editing = -1;
            save();
            renderAll();
            closeSidebar();
          },
        }, c.title))));
}

function renderHeader() {
  const c = conv();
  $('conv-title').textContent = c ? c.title : '';
  $('model-name').textContent = state.model || '';
  $('system').value = c ? c.system : '';
}

// Fills an assistant message body: sanitized Markdown, then a copy button per code block.
function fillMarkdown(el, text) {
  if (!renderMarkdown) {
    el.textContent = text;
    return;
  }
  el.innerHTML = renderMarkdown(text);
  for (const pre of el.querySelectorAll('pre.code')) {
    const bar = h('div', { class: 'code-bar' },
      h('span', {}, pre.dataset.lang || 'text'),
      h('button', { type: 'button', class: 'copy' }, 'Copy'));
    pre.before(bar);
  }
}

function prettyJson(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text; // cut short (stopped, max_tokens): shown as it came
  }
}

// Fills an assistant message body: its text (a JSON block when a schema constrained it), then
// one block per tool call (name, arguments as highlighted JSON, and on the last message a
// "Reply as tool" button).
function fillAssistant(el, m, last) {
  if (m.json && m.content) fillMarkdown(el, `\`\`\`json\n${prettyJson(m.content)}\n\`\`\``);
  else fillMarkdown(el, m.content);
  for (const call of m.tool_calls || []) {
    const args = h('div', { class: 'tool-args' });
    fillMarkdown(args, `\`\`\`json\n${prettyJson(call.function.arguments)}\n\`\`\``);
    const head = h('div', { class: 'tool-head' }, 'tool call', h('span', { class: 'tool-name' }, call.function.name));
    if (last && !state.busy && call.id)
      head.append(h('button', { type: 'button', class: 'tool-reply', onclick: () => startToolReply(call) }, 'Reply as tool'));
    el.append(h('div', { class: 'tool-call', 'data-id': call.id }, head, args));
  }
}

function startToolReply(call) {
  state.toolReply = { id: call.id, name: call.function.name };
  renderToolReply();
  $('input').focus();
}

function renderToolReply() {
  const t = state.toolReply;
  $('tool-reply').hidden = !t;
  $('tool-reply-label').textContent = t ? `Your next message is the result of ${t.name} (${t.id}), sent as a tool message.` : '';
  $('input').placeholder = t ? `Result of ${t.name}` : 'Message';
}

function messageEl(c, m, i) {
  const isUser = m.role === 'user';
  const isTool = m.role === 'tool';
  const body = h('div', { class: isUser || isTool ? 'body plain' : 'body markdown' });
  if (isUser && state.editing === i) {
    const ta = h('textarea', { class: 'edit-box', rows: 3, 'aria-label': 'Edit message' });
    ta.value = m.content;
    ta.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        resendEdited(i, ta.value);
      } else if (e.key === 'Escape') {
        e.stopPropagation();
        state.editing = -1;
        renderMessages();
      }
    });
    body.append(ta, h('div', { class: 'edit-actions' },
      h('button', { type: 'button', class: 'primary', onclick: () => resendEdited(i, ta.value) }, 'Save & send'),
      h('button', { type: 'button', onclick: () => { state.editing = -1; renderMessages(); } }, 'Cancel')));
    queueMicrotask(() => ta.focus());
  } else if (isUser || isTool) {
    body.textContent = m.content;
  } else {
    fillAssistant(body, m, i === c.messages.length - 1);
  }
  const streaming = state.busy && state.busy.msg === m;
  const actions = h('div', { class: 'actions' });
  if (!streaming && !state.busy) {
    if (isUser && state.editing !== i)
      actions.append(h('button', { type: 'button', class: 'edit', onclick: () => { state.editing = i; renderMessages(); } }, 'Edit'));
    if (m.role === 'assistant') actions.append(h('button', { type: 'button', class: 'regen', onclick: () => regenerate(i) }, 'Regenerate'));
  }
  const meta = h('div', { class: 'meta' });
  if (m.error) meta.append(h('span', { class: 'error' }, m.error));
  else if (m.stats) meta.append(h('span', { class: 'stats' }, statsText(m.stats)));
  else if (streaming) meta.append(h('span', { class: 'stats' }, 'generating…'));
  meta.append(actions);
  return h('article', { class: `msg ${m.role}${streaming ? ' streaming' : ''}`, 'data-index': i },
    h('div', { class: 'role' }, isUser ? 'You' : isTool ? `tool result · ${m.name || m.tool_call_id}` : state.model || 'assistant'), body, meta);
}

function renderMessages() {
  const c = conv();
  const box = $('messages');
  if (!c || !c.messages.length) {
    box.replaceChildren(h('div', { class: 'empty' },
      h('p', { class: 'big' }, 'kiln'),
      h('p', {}, 'Ask anything. Enter sends, Shift+Enter starts a new line, Esc stops a reply.'),
      h('p', { class: 'muted' }, 'Conversations stay in this browser.')));
    return;
  }
  box.replaceChildren(...c.messages.map((m, i) => messageEl(c, m, i)));
}

function scrollToEnd(force) {
  const box = $('messages');
  const near = box.scrollHeight - box.scrollTop - box.clientHeight < 120;
  if (force || near) box.scrollTop = box.scrollHeight;
}

function renderAll() {
  state.toolReply = null;
  renderToolReply();
  renderSidebar();
  renderHeader();
  renderMessages();
  scrollToEnd(true);
}

function setBusy(busy) {
  $('send').hidden = busy;
  $('stop').hidden = !busy;
  for (const id of ['new-chat', 'delete-btn', 'rename-btn', 'import-btn']) $(id).disabled = busy;
}

/* ---- talking to the server ---- */

function requestMessages(c, upto) {
  const msgs = [];
  if (c.system.trim()) msgs.push({ role: 'system', content: c.system });
  for (const m of c.messages.slice(0, upto)) {
    if (m.error) continue;
    if (m.role === 'tool') msgs.push({ role: 'tool', tool_call_id: m.tool_call_id, content: m.content });
    else if (m.tool_calls) msgs.push({ role: 'assistant', content: m.content || null, tool_calls: m.tool_calls });
    else msgs.push({ role: m.role, content: m.content });
  }
  return msgs;
}

// The settings' JSON boxes, parsed: {schema, tools} (null when a box is empty), or {error}
// naming the box; each box shows its own error inline.
function jsonBoxes() {
  const out = {};
  const boxes = [
    ['schema', (v) => (v && typeof v === 'object' && !Array.isArray(v) ? null : 'a JSON Schema is a JSON object')],
    ['tools', (v) => (Array.isArray(v) && v.every((t) => t && t.type === 'function' && t.function && typeof t.function.name === 'string')
      ? null : 'tools is a JSON array of {"type": "function", "function": {"name": ...}}')],
  ];
  for (const [k, check] of boxes) {
    const ta = $(`set-${k}`);
    const text = ta.value.trim();
    let error = null;
    out[k] = null;
    if (text) {
      try {
        out[k] = JSON.parse(text);
        error = check(out[k]);
      } catch (e) {
        error = `invalid JSON: ${e.message}`;
      }
    }
    ta.classList.toggle('invalid', !!error);
    ta.setAttribute('aria-invalid', String(!!error));
    $(`${k}-error`).textContent = error || '';
    $(`${k}-error`).hidden = !error;
    if (error) out.error = error;
  }
  return out;
}

async function generate(c, boxes) {
  const msg = { role: 'assistant', content: '' };
  if (boxes.schema) msg.json = true;
  c.messages.push(msg);
  const controller = new AbortController();
  state.busy = { controller, conv: c, msg };
  setBusy(true);
  renderMessages();
  scrollToEnd(true);
  const body = () => $('messages').querySelector(`article[data-index="${c.messages.length - 1}"] .body`);
  let frame = 0;
  let pieces = 0;
  let tFirst = null;
  const t0 = performance.now();
  const paint = () => {
    frame = 0;
    const el = body();
    if (el) fillAssistant(el, msg, true);
    scrollToEnd(false);
  };
  let res = null;
  try {
    const request = chatRequest(state.model, requestMessages(c, c.messages.length - 1), state.settings, boxes);
    res = await streamChat(request, {
      apiKey: state.apiKey,
      signal: controller.signal,
      onDelta(piece) {
        if (tFirst === null) tFirst = performance.now();
        pieces++;
        msg.content += piece;
        if (!frame) frame = requestAnimationFrame(paint);
      },
      onToolCalls(calls) {
        if (tFirst === null) tFirst = performance.now();
        pieces++;
        msg.tool_calls = calls;
        if (!frame) frame = requestAnimationFrame(paint);
      },
    });
  } catch (e) {
    if (e.name === 'AbortError') {
      res = { finish_reason: 'stopped', usage: null, ttft_ms: tFirst === null ? null : tFirst - t0, total_ms: performance.now() - t0 };
    } else {
      msg.error = e instanceof ApiError ? `Error ${e.status || ''}: ${e.message}` : `Error: ${e.message}`;
      if (e.status === 401) askKey('The server refused the key. Enter the API key kiln serve was started with.');
    }
  }
  if (frame) cancelAnimationFrame(frame);
  // Only whole calls go back in the history: a stopped or cut one would be invalid JSON.
  if (msg.tool_calls && (!res || res.finish_reason !== 'tool_calls')) delete msg.tool_calls;
  if (msg.tool_calls) msg.tool_calls = msg.tool_calls.filter(Boolean);
  if (res) {
    const n = res.usage ? res.usage.completion_tokens : pieces;
    const decodeMs = res.ttft_ms !== null ? res.total_ms - res.ttft_ms : null;
    msg.stats = {
      prompt_tokens: res.usage ? res.usage.prompt_tokens : null,
      completion_tokens: n,
      ttft_ms: res.ttft_ms,
      tok_s: decodeMs > 0 && n > 1 ? ((n - 1) * 1000) / decodeMs : null,
      finish_reason: res.finish_reason,
    };
  }
  c.updated = Date.now();
  state.busy = null;
  setBusy(false);
  save();
  renderMessages();
  scrollToEnd(false);
  if (document.activeElement === document.body) $('input').focus();
}

function stop() {
  if (state.busy) state.busy.controller.abort();
}

// The settings' JSON boxes, or null (nothing is sent) with the settings opened on the error.
function checkedBoxes() {
  const boxes = jsonBoxes();
  if (!boxes.error) return boxes;
  $('settings').hidden = false;
  $('settings-btn').setAttribute('aria-expanded', 'true');
  return null;
}

async function send() {
  const input = $('input');
  const text = input.value;
  if (state.busy || !text.trim()) return;
  const boxes = checkedBoxes();
  if (!boxes) return;
  const c = conv();
  if (c.title === store.DEFAULT_TITLE && !c.messages.length) c.title = text.trim().split('\n')[0].slice(0, 48);
  if (state.toolReply) c.messages.push({ role: 'tool', tool_call_id: state.toolReply.id, name: state.toolReply.name, content: text });
  else c.messages.push({ role: 'user', content: text });
  state.toolReply = null;
  renderToolReply();
  input.value = '';
  autosize(input);
  state.editing = -1;
  save();
  renderSidebar();
  renderHeader();
  await generate(c, boxes);
}

function regenerate(i) {
  const c = conv();
  if (state.busy) return;
  const boxes = checkedBoxes();
  if (!boxes) return;
  c.messages.splice(i);
  state.toolReply = null;
  renderToolReply();
  generate(c, boxes);
}

function resendEdited(i, text) {
  const c = conv();
  if (state.busy || !text.trim()) return;
  const boxes = checkedBoxes();
  if (!boxes) return;
  c.messages.splice(i);
  c.messages.push({ role: 'user', content: text });
  state.editing = -1;
  state.toolReply = null;
  renderToolReply();
  generate(c, boxes);
}

/* ---- conversation actions ---- */

function download(name, data) {
  const url = URL.createObjectURL(new Blob([JSON.stringify(data, null, 2)], { type: 'application/json' }));
  const a = h('a', { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function fileName(title) {
  return `${title.replace(/[^\w.-]+/g, '_').slice(0, 40) || 'chat'}.json`;
}

function startRename() {
  const c = conv();
  const title = $('conv-title');
  const input = h('input', { class: 'rename', 'aria-label': 'Conversation name', maxlength: 120 });
  input.value = c.title;
  let done = false;
  const finish = (commit) => {
    if (done) return;
    done = true;
    if (commit && input.value.trim()) c.title = input.value.trim();
    save();
    input.replaceWith(title);
    renderSidebar();
    renderHeader();
  };
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') finish(true);
    if (e.key === 'Escape') {
      e.stopPropagation();
      finish(false);
    }
  });
  input.addEventListener('blur', () => finish(true));
  title.replaceWith(input);
  input.select();
}

function deleteConversation() {
  const c = conv();
  if (!c || !window.confirm(`Delete “${c.title}”?`)) return;
  state.convs = state.convs.filter((x) => x !== c);
  state.current = null;
  ensureConversation();
  save();
  renderAll();
}

async function importFile(file) {
  let data;
  try {
    data = JSON.parse(await file.text());
  } catch (e) {
    window.alert(`Not a JSON file: ${e.message}`);
    return;
  }
  const list = (Array.isArray(data) ? data : [data]).map(store.cleanConversation).filter(Boolean);
  if (!list.length) {
    window.alert('No conversation found in that file.');
    return;
  }
  for (const c of list) {
    c.id = store.newId();
    state.convs.unshift(c);
  }
  state.current = list[0].id;
  save();
  renderAll();
}

/* ---- settings and API key ---- */

const NUMBER_SETTINGS = { temperature: parseFloat, top_p: parseFloat, max_tokens: (v) => parseInt(v, 10), seed: (v) => parseInt(v, 10) };

function renderSettings() {
  for (const k of Object.keys(NUMBER_SETTINGS)) {
    const v = state.settings[k];
    $(`set-${k}`).value = v === null || v === undefined ? '' : String(v);
  }
  for (const k of ['schema', 'tools', 'tool_choice']) $(`set-${k}`).value = state.settings[k] || '';
  if (!$('set-tool_choice').value) $('set-tool_choice').value = 'auto';
  $('forget-key').hidden = !state.apiKey;
}

function readSettings() {
  for (const [k, parse] of Object.entries(NUMBER_SETTINGS)) {
    const raw = $(`set-${k}`).value.trim();
    const v = raw === '' ? null : parse(raw);
    state.settings[k] = Number.isFinite(v) ? v : null;
  }
  for (const k of ['schema', 'tools', 'tool_choice']) state.settings[k] = $(`set-${k}`).value;
  store.saveSettings(state.settings);
}

function askKey(message) {
  const dlg = $('key-dialog');
  $('key-message').textContent = message;
  $('key-input').value = state.apiKey;
  if (!dlg.open) dlg.showModal();
  $('key-input').focus();
}

async function connect() {
  const status = $('server-status');
  try {
    const models = await listModels(state.apiKey);
    state.model = models.length ? models[0].id : null;
    status.textContent = '';
    status.hidden = true;
    renderHeader();
    for (const el of document.querySelectorAll('.msg.assistant .role')) el.textContent = state.model || 'assistant';
  } catch (e) {
    status.hidden = false;
    if (e.status === 401) {
      status.textContent = 'This server needs an API key.';
      askKey('This server needs an API key. It is kept in this browser only.');
    } else if (e.status === 503) {
      status.textContent = 'The model is loading…';
      setTimeout(connect, 1000);
    } else {
      status.textContent = `Cannot reach the server: ${e.message}`;
      setTimeout(connect, 3000);
    }
  }
}

/* ---- wiring ---- */

function autosize(ta) {
  ta.style.height = 'auto';
  ta.style.height = `${Math.min(ta.scrollHeight, 240)}px`;
}

function closeSidebar() {
  document.body.classList.remove('sidebar-open');
}

function bind() {
  const input = $('input');
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    send();
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  input.addEventListener('input', () => autosize(input));
  $('stop').addEventListener('click', stop);
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && state.busy) {
      e.preventDefault();
      stop();
    }
  });
  $('new-chat').addEventListener('click', () => {
    newConversation();
    closeSidebar();
  });
  $('rename-btn').addEventListener('click', startRename);
  $('delete-btn').addEventListener('click', deleteConversation);
  $('export-btn').addEventListener('click', () => {
    const c = conv();
    download(fileName(c.title), c);
  });
  $('export-all').addEventListener('click', () => download('kiln-conversations.json', state.convs));
  $('import-btn').addEventListener('click', () => $('import-file').click());
  $('import-file').addEventListener('change', (e) => {
    const f = e.target.files[0];
    e.target.value = '';
    if (f) importFile(f);
  });
  $('menu-btn').addEventListener('click', () => document.body.classList.toggle('sidebar-open'));
  $('scrim').addEventListener('click', closeSidebar);
  $('settings-btn').addEventListener('click', () => {
    const panel = $('settings');
    panel.hidden = !panel.hidden;
    $('settings-btn').setAttribute('aria-expanded', String(!panel.hidden));
  });
  $('settings').addEventListener('input', (e) => {
    if (e.target.id === 'system') {
      const c = conv();
      c.system = e.target.value;
      save();
    } else {
      readSettings();
      if (e.target.classList.contains('json')) jsonBoxes();
    }
  });
  $('tool-reply-cancel').addEventListener('click', () => {
    state.toolReply = null;
    renderToolReply();
  });
  $('forget-key').addEventListener('click', () => {
    state.apiKey = '';
    store.saveApiKey('');
    renderSettings();
    connect();
  });
  $('key-form').addEventListener('submit', () => {
    // method=dialog closes the dialog.
    state.apiKey = $('key-input').value.trim();
    store.saveApiKey(state.apiKey);
    renderSettings();
    connect();
  });
  $('messages').addEventListener('click', async (e) => {
    const btn = e.target.closest('button.copy');
    if (!btn) return;
    const code = btn.parentElement.nextElementSibling;
    const text = code ? code.textContent : '';
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // No clipboard API outside secure contexts (http on another host): select instead.
      const range = document.createRange();
      range.selectNodeContents(code);
      const sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      document.execCommand('copy');
    }
    btn.textContent = 'Copied';
    setTimeout(() => (btn.textContent = 'Copy'), 1200);
  });
}

function main() {
  ensureConversation();
  bind();
  renderSettings();
  jsonBoxes();
  renderAll();
  $('input').focus();
  document.documentElement.dataset.ready = '1';
  performance.mark('kiln-interactive');
  connect();
  markdownReady.then(() => {
    if (!state.busy) renderMessages();
  });
}

main();
