// Issue 15 with the real clients, on the tiny model (random weights: the words are nonsense, the
// API is real): tool requests through the openai SDK (accepted, rendered through the Llama 3.1
// template, the shape of what comes back), a full tool round trip's rendering, streamed chat
// logprobs through the SDK's .stream() helper, the developer role, X-Request-Id and
// system_fingerprint, chat_template_kwargs / continue_final_message, the refused fields,
// /v1/responses plain, streamed and with tools through responses.create, and the AI SDK's
// default (Responses) provider. What needs the structured-output engine (tool_choice required /
// named always producing a valid call) is in tools_required.mjs.
import assert from 'node:assert/strict';
import test from 'node:test';
import OpenAI from 'openai';
import { createOpenAI } from '@ai-sdk/openai';
import { generateText, streamText } from 'ai';

import { post, startServer } from './lib.mjs';

const server = await startServer();
const model = 'tiny';
const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
test.after(async () => {
  const { code } = await server.stop();
  assert.equal(code, 0, server.log());
});

const weather = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Weather of a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
};
const user = [{ role: 'user', content: 'Weather in Paris?' }];

// The rendered prompt of a conversation, through /tokenize and /detokenize.
async function rendered(messages) {
  const t = await post(server, '/tokenize', { messages, add_generation_prompt: true });
  assert.equal(t.status, 200, t.text);
  const d = await post(server, '/detokenize', { tokens: t.body.tokens });
  return d.body.prompt;
}

test('tools with tool_choice auto: accepted, and a call or text comes back', async () => {
  for (const stream of [false, true]) {
    const args = { model, messages: user, tools: [weather], max_tokens: 8, temperature: 0 };
    let msg, finish;
    if (stream) {
      const s = client.chat.completions.stream(args);
      const c = await s.finalChatCompletion();
      msg = c.choices[0].message;
      finish = c.choices[0].finish_reason;
    } else {
      const c = await client.chat.completions.create(args);
      msg = c.choices[0].message;
      finish = c.choices[0].finish_reason;
    }
    if (msg.tool_calls?.length) {
      assert.equal(finish, 'tool_calls');
      for (const tc of msg.tool_calls) JSON.parse(tc.function.arguments);
    } else {
      assert.equal(typeof msg.content, 'string');
      assert.ok(['stop', 'length'].includes(finish));
    }
  }
  // the tools are in the prompt: it is longer than without them
  const a = await client.chat.completions.create({ model, messages: user, max_tokens: 1 });
  const b = await client.chat.completions.create({ model, messages: user, tools: [weather], max_tokens: 1 });
  assert.ok(b.usage.prompt_tokens > a.usage.prompt_tokens + 20, `${a.usage.prompt_tokens} ${b.usage.prompt_tokens}`);
});

test('a tool round trip renders as the Llama 3.1 template expects', async () => {
  const messages = [
    { role: 'user', content: 'Weather in Paris?' },
    {
      role: 'assistant',
      content: null,
      tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris"}' } }],
    },
    { role: 'tool', tool_call_id: 'call_1', content: '{"temp": 21}' },
  ];
  const text = await rendered(messages);
  // arguments given as a JSON string reach the template as the object they encode (not a
  // JSON-quoted string), the tool result is an ipython turn
  assert.ok(
    text.includes('<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'),
    text,
  );
  assert.ok(text.includes('<|start_header_id|>ipython<|end_header_id|>\n\n'), text);
  assert.ok(text.includes('Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024'), text);
  // and the SDK carries the whole round trip
  const c = await client.chat.completions.create({ model, messages, tools: [weather], max_tokens: 4 });
  assert.equal(c.choices[0].message.role, 'assistant');
});

test('streamed chat logprobs through .stream(): arrays, equal to the non-streamed ones', async () => {
  const args = { model, messages: user, max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 2, ignore_eos: true };
  const full = await client.chat.completions.create(args);
  const s = client.chat.completions.stream(args);
  const chunks = [];
  for await (const chunk of s) {
    const lp = chunk.choices[0]?.logprobs;
    if (lp) {
      assert.ok(Array.isArray(lp.content));
      chunks.push(...lp.content);
    }
  }
  const final = await s.finalChatCompletion();
  const want = full.choices[0].logprobs.content;
  assert.equal(chunks.length, want.length);
  assert.deepEqual(chunks.map((e) => e.token), want.map((e) => e.token));
  assert.deepEqual(final.choices[0].logprobs.content.map((e) => e.token), want.map((e) => e.token));
});

test('developer role, X-Request-Id and system_fingerprint', async () => {
  const dev = await rendered([{ role: 'developer', content: 'Be terse.' }, ...user]);
  const sys = await rendered([{ role: 'system', content: 'Be terse.' }, ...user]);
  assert.equal(dev, sys);
  const r = await post(server, '/v1/chat/completions', { messages: user, max_tokens: 2 }, { 'X-Request-Id': 'trace-42.a' });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('x-request-id'), 'trace-42.a');
  assert.match(r.body.system_fingerprint, /^fp_kiln_/);
  const g = await post(server, '/v1/chat/completions', { messages: user, max_tokens: 2 }, { 'X-Request-Id': 'bad id\u00e9' });
  assert.match(g.headers.get('x-request-id'), /^req-[0-9a-f]{32}$/);
  const e = await post(server, '/v1/chat/completions', { messages: [] });
  assert.match(e.headers.get('x-request-id'), /^req-/);
  const s = client.chat.completions.stream({ model, messages: user, max_tokens: 2 });
  for await (const chunk of s) assert.match(chunk.system_fingerprint, /^fp_kiln_/);
});

test('chat_template_kwargs and continue_final_message', async () => {
  const a = await post(server, '/v1/chat/completions', { messages: user, max_tokens: 1 });
  const b = await post(server, '/v1/chat/completions', {
    messages: user,
    max_tokens: 1,
    chat_template_kwargs: { date_string: '7 December 2026, a Monday' },
  });
  assert.equal(b.status, 200, b.text);
  assert.ok(b.body.usage.prompt_tokens > a.body.usage.prompt_tokens);
  const conv = [...user, { role: 'assistant', content: 'It is' }];
  const open = await post(server, '/v1/chat/completions', { messages: conv, max_tokens: 1, continue_final_message: true, add_generation_prompt: false });
  const closed = await post(server, '/v1/chat/completions', { messages: conv, max_tokens: 1, add_generation_prompt: false });
  assert.equal(open.status, 200, open.text);
  // the same prompt without the closing <|eot_id|>
  assert.equal(open.body.usage.prompt_tokens, closed.body.usage.prompt_tokens - 1);
  const both = await post(server, '/v1/chat/completions', { messages: conv, continue_final_message: true, add_generation_prompt: true });
  assert.equal(both.status, 400);
  assert.equal(both.body.error.param, 'continue_final_message');
});

test('fields kiln does not implement are refused by name, no-ops are accepted', async () => {
  for (const [field, value] of [
    ['store', true],
    ['use_beam_search', true],
    ['prompt_logprobs', 1],
    ['audio', { voice: 'alloy', format: 'wav' }],
    ['chat_template', '{{ messages }}'],
  ]) {
    const r = await post(server, '/v1/chat/completions', { messages: user, [field]: value });
    assert.equal(r.status, 400, `${field}: ${r.text}`);
    assert.equal(r.body.error.param, field);
  }
  const r = await post(server, '/v1/chat/completions', { messages: user, tool_choice: 'auto' });
  assert.equal(r.status, 400);
  assert.equal(r.body.error.param, 'tool_choice');
  const ok = await post(server, '/v1/chat/completions', {
    messages: user,
    max_tokens: 1,
    user: 'u1',
    store: false,
    metadata: { k: 'v' },
    service_tier: 'auto',
    prompt_cache_key: 'k',
    safety_identifier: 's',
  });
  assert.equal(ok.status, 200, ok.text);
});

test('responses.create: plain, streamed with the event sequence, with tools', async () => {
  const r = await client.responses.create({ model, input: 'Say hi', instructions: 'Be brief.', max_output_tokens: 6 });
  assert.equal(r.object, 'response');
  assert.match(r.id, /^resp_/);
  assert.ok(['completed', 'incomplete'].includes(r.status));
  assert.equal(typeof r.output_text, 'string');
  assert.equal(r.usage.total_tokens, r.usage.input_tokens + r.usage.output_tokens);
  assert.equal(r.instructions, 'Be brief.');

  const stream = await client.responses.create({ model, input: 'Say hi', max_output_tokens: 6, stream: true });
  const types = [];
  let text = '';
  let seq = -1;
  let final;
  for await (const ev of stream) {
    types.push(ev.type);
    assert.equal(ev.sequence_number, seq + 1);
    seq = ev.sequence_number;
    if (ev.type === 'response.output_text.delta') text += ev.delta;
    if (ev.type === 'response.completed' || ev.type === 'response.incomplete') final = ev.response;
  }
  assert.deepEqual(types.slice(0, 4), ['response.created', 'response.in_progress', 'response.output_item.added', 'response.content_part.added']);
  assert.ok(types.includes('response.output_text.delta'));
  assert.deepEqual(types.slice(-4, -1), ['response.output_text.done', 'response.content_part.done', 'response.output_item.done']);
  assert.equal(final.output[0].content[0].text, text);
  assert.equal(final.usage.output_tokens, 6);

  // tools and a function call round trip as input items
  const t = await client.responses.create({
    model,
    input: [
      { role: 'user', content: 'Weather in Paris?' },
      { type: 'function_call', call_id: 'call_1', name: 'get_weather', arguments: '{"city":"Paris"}' },
      { type: 'function_call_output', call_id: 'call_1', output: '{"temp": 21}' },
    ],
    tools: [{ type: 'function', name: 'get_weather', parameters: weather.function.parameters, strict: false }],
    max_output_tokens: 4,
  });
  assert.equal(t.tools[0].name, 'get_weather');
  for (const item of t.output) {
    if (item.type === 'function_call') JSON.parse(item.arguments);
    else assert.equal(item.type, 'message');
  }
  await assert.rejects(client.responses.create({ model, input: 'x', previous_response_id: 'resp_1' }), (e) => e.status === 400 && e.param === 'previous_response_id');

  // text.format json_schema goes through the constraint engine
  const schema = { type: 'object', properties: { ok: { type: 'boolean' }, n: { type: 'integer', minimum: 0, maximum: 9 } }, required: ['ok', 'n'], additionalProperties: false };
  for (let i = 0; i < 3; i++) {
    const j = await client.responses.create({ model, input: 'JSON please', text: { format: { type: 'json_schema', name: 'r', schema, strict: true } }, max_output_tokens: 40, seed: i });
    assert.equal(j.status, 'completed');
    const v = JSON.parse(j.output_text);
    assert.equal(typeof v.ok, 'boolean');
    assert.ok(Number.isInteger(v.n) && v.n >= 0 && v.n <= 9);
    assert.deepEqual(Object.keys(v), ['ok', 'n']);
  }
  await assert.rejects(
    client.responses.create({ model, input: 'x', text: { format: { type: 'json_schema', name: 'r', schema: { type: 'object', propertyNames: { maxLength: 3 } } } } }),
    (e) => e.status === 400 && e.param === 'text.format',
  );
});

test("the AI SDK's default OpenAI provider (the Responses API): generateText and streamText", async () => {
  const openai = createOpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused' });
  const g = await generateText({ model: openai(model), prompt: 'Say hi', maxOutputTokens: 5, maxRetries: 0 });
  assert.equal(typeof g.text, 'string');
  assert.ok(g.text.length > 0);
  assert.equal(g.usage.outputTokens, 5);
  const s = streamText({ model: openai(model), prompt: 'Say hi', maxOutputTokens: 5, maxRetries: 0 });
  let text = '';
  for await (const part of s.textStream) text += part;
  assert.equal(text, await s.text);
  assert.ok(text.length > 0);
});
