// The official OpenAI Node SDK against kiln serve: completions and chat, streaming and not,
// n > 1 with seeds, logprobs, echo, stop strings, several prompts at once; plus the raw SSE
// framing (role chunk first, whole UTF-8 characters per chunk, usage chunk, [DONE]).
import assert from 'node:assert/strict';
import test from 'node:test';
import OpenAI from 'openai';

import { post, sseEvents, startServer } from './lib.mjs';

const server = await startServer();
const model = 'tiny';
const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
test.after(async () => {
  const { code } = await server.stop();
  assert.equal(code, 0, server.log());
});

const messages = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: 'Name three colours.' },
];

test('completions, not streamed', async () => {
  const r = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 12, temperature: 0 });
  assert.equal(r.object, 'text_completion');
  assert.equal(r.model, model);
  assert.match(r.id, /^cmpl-/);
  assert.equal(r.choices.length, 1);
  assert.equal(typeof r.choices[0].text, 'string');
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
  assert.equal(r.usage.prompt_tokens, 5);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
});

test('completions, streamed, equal the non-streamed text (greedy)', async () => {
  const args = { model, prompt: 'Once upon a time', max_tokens: 12, temperature: 0 };
  const full = await client.completions.create(args);
  const stream = await client.completions.create({ ...args, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let finish = null;
  let usage = null;
  let chunks = 0;
  let id = null;
  for await (const chunk of stream) {
    chunks++;
    assert.equal(chunk.object, 'text_completion');
    id ??= chunk.id;
    assert.equal(chunk.id, id, 'every chunk carries the first chunk\'s id');
    if (chunk.usage) {
      assert.deepEqual(chunk.choices, []);
      usage = chunk.usage;
      continue;
    }
    assert.equal(chunk.usage, null); // include_usage: every other chunk carries usage: null
    assert.equal(chunk.choices.length, 1);
    assert.equal(finish, null, 'no chunk after finish_reason');
    text += chunk.choices[0].text;
    finish = chunk.choices[0].finish_reason;
  }
  assert.ok(chunks >= 2);
  assert.equal(text, full.choices[0].text);
  assert.equal(finish, full.choices[0].finish_reason);
  assert.deepEqual(usage, full.usage);
});

test('chat, not streamed', async () => {
  const r = await client.chat.completions.create({ model, messages, max_completion_tokens: 10, temperature: 0 });
  assert.equal(r.object, 'chat.completion');
  assert.match(r.id, /^chatcmpl-/);
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(typeof r.choices[0].message.content, 'string');
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
  // The prompt is the rendered template, tokenized without a second BOS.
  const t = await post(server, '/tokenize', { messages });
  assert.equal(t.status, 200);
  assert.equal(t.body.tokens[0], 128000);
  assert.notEqual(t.body.tokens[1], 128000);
  assert.equal(r.usage.prompt_tokens, t.body.count);
});

test('chat, streamed: role first, content deltas, finish, usage (greedy equals non-streamed)', async () => {
  const args = { model, messages, max_tokens: 10, temperature: 0 };
  const full = await client.chat.completions.create(args);
  const stream = await client.chat.completions.create({ ...args, stream: true, stream_options: { include_usage: true } });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  assert.equal(chunks[0].object, 'chat.completion.chunk');
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  const usage = chunks.pop();
  assert.deepEqual(usage.choices, []);
  assert.deepEqual(usage.usage, full.usage);
  const last = chunks.at(-1);
  assert.equal(last.choices[0].finish_reason, full.choices[0].finish_reason);
  for (const c of chunks.slice(0, -1)) assert.equal(c.choices[0].finish_reason, null);
  const content = chunks.map((c) => c.choices[0].delta.content ?? '').join('');
  assert.equal(content, full.choices[0].message.content);
  assert.ok(chunks.every((c) => c.id === chunks[0].id && c.created === chunks[0].created));
});

test('raw SSE: valid UTF-8 in every event, [DONE] last', async () => {
  // Sampled at a high temperature the tiny random model emits many multi-byte tokens.
  for (const route of ['/v1/completions', '/v1/chat/completions']) {
    const body = route.includes('chat')
      ? { messages, max_tokens: 64, temperature: 1.5, seed: 1, stream: true }
      : { prompt: 'Здравствуйте, 世界', max_tokens: 64, temperature: 1.5, seed: 1, stream: true };
    const r = await fetch(`${server.url}${route}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type'), /^text\/event-stream/);
    const events = await sseEvents(r); // throws on a chunk that is not whole UTF-8
    assert.equal(events.at(-1), '[DONE]');
    const parsed = events.slice(0, -1).map((e) => JSON.parse(e));
    assert.ok(parsed.length >= 2);
    assert.ok(parsed.some((p) => /[^\x00-\x7f]/.test(p.choices[0]?.text ?? p.choices[0]?.delta?.content ?? '')),
      'the sample holds multi-byte characters');
  }
});

test('n = 2 with a seed: two choices, reproducible, choice 0 = the single request', async () => {
  const args = { model, prompt: 'The weather today', max_tokens: 8, temperature: 1.0, seed: 1234 };
  const a = await client.completions.create({ ...args, n: 2 });
  const b = await client.completions.create({ ...args, n: 2 });
  const one = await client.completions.create(args);
  assert.deepEqual(a.choices.map((c) => c.index), [0, 1]);
  assert.deepEqual(a.choices.map((c) => c.text), b.choices.map((c) => c.text));
  assert.equal(a.choices[0].text, one.choices[0].text);
  assert.equal(a.usage.prompt_tokens, one.usage.prompt_tokens); // counted once per prompt
  const chat = await client.chat.completions.create({ model, messages, max_tokens: 6, n: 3, seed: 9 });
  assert.deepEqual(chat.choices.map((c) => c.index), [0, 1, 2]);
});

test('several prompts in one request equal separate requests (greedy)', async () => {
  const prompts = ['Alpha beta', 'Gamma delta epsilon'];
  const both = await client.completions.create({ model, prompt: prompts, max_tokens: 6, temperature: 0 });
  assert.equal(both.choices.length, 2);
  for (let i = 0; i < 2; i++) {
    const single = await client.completions.create({ model, prompt: prompts[i], max_tokens: 6, temperature: 0 });
    assert.equal(both.choices[i].index, i);
    assert.equal(both.choices[i].text, single.choices[0].text);
  }
  const ids = await client.completions.create({ model, prompt: [[128000, 791, 6864], [128000, 9906]], max_tokens: 3, temperature: 0 });
  assert.equal(ids.choices.length, 2);
  assert.equal(ids.usage.prompt_tokens, 5);
});

test('logprobs: completions arrays and chat entries', async () => {
  const r = await client.completions.create({ model, prompt: 'Hello', max_tokens: 6, temperature: 0, logprobs: 3, ignore_eos: true });
  const lp = r.choices[0].logprobs;
  assert.equal(lp.tokens.length, r.usage.completion_tokens);
  assert.equal(lp.token_logprobs.length, lp.tokens.length);
  assert.equal(lp.text_offset[0], 0);
  for (let i = 0; i < lp.tokens.length; i++) {
    assert.ok(lp.token_logprobs[i] <= 0);
    assert.ok(Object.keys(lp.top_logprobs[i]).length <= 3);
    // greedy: the chosen token is the most likely one
    const best = Math.max(...Object.values(lp.top_logprobs[i]));
    assert.ok(Math.abs(best - lp.token_logprobs[i]) < 1e-4);
    if (i) assert.ok(lp.text_offset[i] >= lp.text_offset[i - 1]);
  }
  const c = await client.chat.completions.create({ model, messages, max_tokens: 4, logprobs: true, top_logprobs: 2, temperature: 0 });
  const content = c.choices[0].logprobs.content;
  assert.equal(content.length, c.usage.completion_tokens);
  for (const e of content) {
    assert.equal(typeof e.token, 'string');
    assert.ok(e.logprob <= 0);
    assert.ok(Array.isArray(e.bytes));
    assert.equal(e.top_logprobs.length, 2);
  }
});

test('echo and stop strings', async () => {
  const prompt = 'The quick brown fox';
  const e = await client.completions.create({ model, prompt, max_tokens: 4, temperature: 0, echo: true });
  const plain = await client.completions.create({ model, prompt, max_tokens: 4, temperature: 0 });
  assert.equal(e.choices[0].text, prompt + plain.choices[0].text);

  const long = await client.completions.create({ model, prompt, max_tokens: 16, temperature: 0, ignore_eos: true });
  const text = long.choices[0].text;
  // A stop string from the middle of the greedy text cuts it just before its first occurrence.
  const stop = text.slice(Math.floor(text.length / 2), Math.floor(text.length / 2) + 2);
  assert.equal(stop.length, 2);
  const cut = await client.completions.create({ model, prompt, max_tokens: 16, temperature: 0, ignore_eos: true, stop: [stop] });
  assert.equal(cut.choices[0].finish_reason, 'stop');
  assert.equal(cut.choices[0].text, text.slice(0, text.indexOf(stop)));
});

test('max_tokens 1 ends with length', async () => {
  const r = await client.completions.create({ model, prompt: 'Hi', max_tokens: 1, temperature: 0, ignore_eos: true });
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 1);
});
