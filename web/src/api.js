// The page's side of kiln's OpenAI-compatible API: the model list and a streamed chat
// completion read as Server-Sent Events from fetch (so an AbortController can stop it: the
// browser closes the connection and kiln frees the sequence at once), with its text and its
// tool calls (delta.tool_calls, put together by index).

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(apiKey, json) {
  const h = {};
  if (json) h['Content-Type'] = 'application/json';
  if (apiKey) h.Authorization = `Bearer ${apiKey}`;
  return h;
}

async function errorOf(response) {
  let message = `HTTP ${response.status}`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code || null;
    }
  } catch {
    /* not JSON */
  }
  return new ApiError(response.status, message, code);
}

export async function listModels(apiKey) {
  const r = await fetch('/v1/models', { headers: headers(apiKey, false) });
  if (!r.ok) throw await errorOf(r);
  return (await r.json()).data || [];
}

// The request body of one chat turn. Settings map to OpenAI parameters one to one; `schema`
// (a parsed JSON Schema object) and `tools` (a parsed OpenAI tools array) come from the
// settings' JSON boxes, already checked, or null when the box is empty.
export function chatRequest(model, messages, settings, { schema = null, tools = null } = {}) {
  const body = { model, messages, stream: true, stream_options: { include_usage: true } };
  if (Number.isFinite(settings.temperature)) body.temperature = settings.temperature;
  if (Number.isFinite(settings.top_p)) body.top_p = settings.top_p;
  if (Number.isInteger(settings.max_tokens) && settings.max_tokens > 0) body.max_tokens = settings.max_tokens;
  if (Number.isInteger(settings.seed)) body.seed = settings.seed;
  if (schema) body.response_format = { type: 'json_schema', json_schema: { name: 'page_schema', schema, strict: true } };
  if (tools && tools.length) {
    body.tools = tools;
    body.tool_choice = settings.tool_choice || 'auto';
    // Llama 3.1's template (the demo model's) refuses an assistant turn of several calls when
    // the history comes back, so the page asks for one call at a time.
    body.parallel_tool_calls = false;
  }
  return body;
}

// Adds one streamed tool-call delta to calls (OpenAI's shape: the first delta of a call has
// its index, id and name, the next ones fragments of its arguments).
function addToolCall(calls, d) {
  const i = Number.isInteger(d.index) ? d.index : calls.length;
  if (!calls[i]) calls[i] = { id: '', type: 'function', function: { name: '', arguments: '' } };
  const c = calls[i];
  if (d.id) c.id = d.id;
  if (d.function) {
    if (d.function.name) c.function.name += d.function.name;
    if (d.function.arguments) c.function.arguments += d.function.arguments;
  }
}

// Streams one chat completion. Calls onDelta(text) per content piece and onToolCalls(calls)
// whenever a tool call grows, and resolves with {finish_reason, usage, ttft_ms, total_ms,
// tool_calls} once the server sends [DONE].
// Rejects with ApiError (HTTP or in-stream error) or the AbortError of signal.
export async function streamChat(body, { apiKey, signal, onDelta, onToolCalls = () => {} }) {
  const t0 = performance.now();
  const r = await fetch('/v1/chat/completions', {
    method: 'POST',
    headers: headers(apiKey, true),
    body: JSON.stringify(body),
    signal,
  });
  if (!r.ok) throw await errorOf(r);
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  const out = { finish_reason: null, usage: null, ttft_ms: null, total_ms: null, tool_calls: [] };
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let end;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const event = buf.slice(0, end);
      buf = buf.slice(end + 2);
      for (const line of event.split('\n')) {
        if (!line.startsWith('data:')) continue;
        const data = line.slice(5).trim();
        if (data === '[DONE]') {
          out.total_ms = performance.now() - t0;
          return out;
        }
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(500, chunk.error.message || 'generation failed', chunk.error.code);
        if (chunk.usage) out.usage = chunk.usage;
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;
        const piece = choice.delta && choice.delta.content;
        if (piece) {
          if (out.ttft_ms === null) out.ttft_ms = performance.now() - t0;
          onDelta(piece);
        }
        const calls = choice.delta && choice.delta.tool_calls;
        if (Array.isArray(calls) && calls.length) {
          if (out.ttft_ms === null) out.ttft_ms = performance.now() - t0;
          for (const d of calls) addToolCall(out.tool_calls, d);
          onToolCalls(out.tool_calls);
        }
        if (choice.finish_reason) out.finish_reason = choice.finish_reason;
      }
    }
  }
  throw new ApiError(0, 'the stream ended without [DONE]');
}
