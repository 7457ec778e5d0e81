// Conversations and settings kept in the browser's localStorage (nothing is stored on the
// server). A conversation: {id, title, system, created, updated, messages: [{role, content,
// stats?, error?, json?, tool_calls?, tool_call_id?, name?}]}; role is user, assistant or tool
// (a tool result the user typed: tool_call_id, name of the tool); json marks a reply constrained
// by a JSON Schema; tool_calls are the assistant's calls as OpenAI sends them back;
// stats: {prompt_tokens, completion_tokens, ttft_ms, tok_s, finish_reason}.
const KEY_CONVS = 'kiln.conversations';
const KEY_CURRENT = 'kiln.current';
const KEY_SETTINGS = 'kiln.settings';
const KEY_API = 'kiln.apiKey';

// schema and tools are the text of the settings' JSON boxes ('' when off).
export const DEFAULT_SETTINGS = { temperature: 0.7, top_p: 1, max_tokens: 1024, seed: null, schema: '', tools: '', tool_choice: 'auto' };
export const DEFAULT_TITLE = 'New chat';

function read(key, fallback) {
  try {
    const v = localStorage.getItem(key);
    return v === null ? fallback : JSON.parse(v);
  } catch {
    return fallback;
  }
}

function write(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch (e) {
    console.warn('kiln: cannot save to localStorage', e);
  }
}

export function newId() {
  return `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
}

// Keeps only well-formed fields, so an imported or hand-edited file cannot break the page.
export function cleanConversation(c) {
  if (!c || typeof c !== 'object' || !Array.isArray(c.messages)) return null;
  const str = (v, d = '') => (typeof v === 'string' ? v : d);
  const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);
  const messages = c.messages
    .filter((m) => m && ['user', 'assistant', 'tool'].includes(m.role) && typeof m.content === 'string')
    .map((m) => {
      const out = { role: m.role, content: m.content };
      if (m.role === 'tool') {
        out.tool_call_id = str(m.tool_call_id);
        out.name = str(m.name);
      }
      if (m.role === 'assistant' && m.json === true) out.json = true;
      if (m.role === 'assistant' && Array.isArray(m.tool_calls)) {
        const calls = m.tool_calls
          .filter((t) => t && typeof t === 'object' && t.function && typeof t.function === 'object')
          .map((t) => ({ id: str(t.id), type: 'function', function: { name: str(t.function.name), arguments: str(t.function.arguments) } }));
        if (calls.length) out.tool_calls = calls;
      }
      if (m.stats && typeof m.stats === 'object') {
        out.stats = {
          prompt_tokens: num(m.stats.prompt_tokens),
          completion_tokens: num(m.stats.completion_tokens),
          ttft_ms: num(m.stats.ttft_ms),
          tok_s: num(m.stats.tok_s),
          finish_reason: typeof m.stats.finish_reason === 'string' ? m.stats.finish_reason : null,
        };
      }
      if (typeof m.error === 'string') out.error = m.error;
      return out;
    });
  const now = Date.now();
  return {
    id: str(c.id) || newId(),
    title: str(c.title, DEFAULT_TITLE) || DEFAULT_TITLE,
    system: str(c.system),
    created: num(c.created) ?? now,
    updated: num(c.updated) ?? now,
    messages,
  };
}

export function loadConversations() {
  const list = read(KEY_CONVS, []);
  return Array.isArray(list) ? list.map(cleanConversation).filter(Boolean) : [];
}

export function saveConversations(list) {
  write(KEY_CONVS, list);
}

export const loadCurrent = () => read(KEY_CURRENT, null);
export const saveCurrent = (id) => write(KEY_CURRENT, id);

export function loadSettings() {
  const s = read(KEY_SETTINGS, {});
  return { ...DEFAULT_SETTINGS, ...(s && typeof s === 'object' ? s : {}) };
}

export const saveSettings = (s) => write(KEY_SETTINGS, s);

export function loadApiKey() {
  try {
    return localStorage.getItem(KEY_API) || '';
  } catch {
    return '';
  }
}

export function saveApiKey(key) {
  try {
    if (key) localStorage.setItem(KEY_API, key);
    else localStorage.removeItem(KEY_API);
  } catch {
    /* private mode: the key lives for this page only */
  }
}
