// The page's side of kiln's OpenAI-compatible API: the model list and a streamed chat
// completion read as Server-Sent Events from fetch (so an AbortController can stop it: the
// browser closes the connection and kiln frees the sequence at once).

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

// The request body of one chat turn. Settings map to OpenAI parameters one to one; this is
// where response_format (structured output) and tools will be added once the server has them.
export function chatRequest(model, messages, settings) {
  const body = { model, messages, stream: true, stream_options: { include_usage: true } };
  if (Number.isFinite(settings.temperature)) body.temperature = settings.temperature;
  if (Number.isFinite(settings.top_p)) body.top_p = settings.top_p;
  if (Number.isInteger(settings.max_tokens) && settings.max_tokens > 0) body.max_tokens = settings.max_tokens;
  if (Number.isInteger(settings.seed)) body.seed = settings.seed;
  return body;
}

// Streams one chat completion. Calls onDelta(text) per content piece, and resolves with
// {finish_reason, usage, ttft_ms, total_ms, first_ms} once the server sends [DONE].
// Rejects with ApiError (HTTP or in-stream error) or the AbortError of signal.
export async function streamChat(body, { apiKey, signal, onDelta }) {
  const t0 = performance.now();
  const r = await fetch('/v1/chat/completions', {
    method: 'POST',
    headers: headers(apiKey, true),
    body: JSON.stringify(body),
    signal,
  });
  if (!r.ok) throw await errorOf(r);
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  const out = { finish_reason: null, usage: null, ttft_ms: null, total_ms: null };
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
        if (choice.finish_reason) out.finish_reason = choice.finish_reason;
      }
    }
  }
  throw new ApiError(0, 'the stream ended without [DONE]');
}
