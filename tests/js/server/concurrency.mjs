// 32 concurrent clients (half streaming, half not) whose greedy results equal the same
// requests sent one at a time: batching, chunked prefill and scheduling must not change what
// a request gets.
import assert from 'node:assert/strict';
import test from 'node:test';
import OpenAI from 'openai';

import { metrics, startServer } from './lib.mjs';

// A batch smaller than the client count, so requests also queue and join mid-flight.
const server = await startServer({ args: ['--max-batch-size', '8', '--max-num-tokens', '64'] });
const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
test.after(async () => {
  const { code } = await server.stop();
  assert.equal(code, 0, server.log());
});

const N = 32;
const words = ['river', 'mountain', 'engine', 'garden', 'silver', 'thunder', 'paper', 'orbit'];
// Prompts of different lengths (some over the 64-token step budget: chunked prefill).
const prompt = (i) => `Story ${i}: ` + Array.from({ length: 3 + ((i * 7) % 29) * 3 }, (_, k) => words[(i + k) % 8]).join(' ');

async function complete(i) {
  const args = { model: 'tiny', prompt: prompt(i), max_tokens: 12 + (i % 5), temperature: 0, ignore_eos: i % 2 === 0 };
  if (i % 2) {
    const r = await client.completions.create(args);
    return { text: r.choices[0].text, finish: r.choices[0].finish_reason, tokens: r.usage.completion_tokens };
  }
  const stream = await client.completions.create({ ...args, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let finish = null;
  let tokens = 0;
  for await (const c of stream) {
    if (c.usage) tokens = c.usage.completion_tokens;
    else {
      text += c.choices[0].text;
      finish = c.choices[0].finish_reason ?? finish;
    }
  }
  return { text, finish, tokens };
}

test('32 concurrent greedy clients equal the sequential results', async () => {
  const sequential = [];
  for (let i = 0; i < N; i++) sequential.push(await complete(i));
  const t0 = Date.now();
  const concurrent = await Promise.all(Array.from({ length: N }, (_, i) => complete(i)));
  const dt = (Date.now() - t0) / 1000;
  for (let i = 0; i < N; i++) assert.deepEqual(concurrent[i], sequential[i], `client ${i}`);
  const m = await metrics(server);
  assert.equal(m.sum('kiln_requests_total', 'status="200"') >= 2 * N, true);
  assert.equal(m['kiln_kv_blocks_used{model_name="tiny"}'], 0);
  assert.equal(m['kiln_num_requests_running{model_name="tiny"}'], 0);
  assert.ok(m['kiln_engine_steps_total{model_name="tiny"}'] > 0);
  // Blocks used at least once: 32 concurrent sequences held that many at least, never more
  // than the pool; a block is 2 layers x (k, v) x 16 positions x 64 x bf16.
  const total = m['kiln_kv_blocks_total{model_name="tiny"}'];
  const touched = m['kiln_kv_blocks_touched{model_name="tiny"}'];
  assert.ok(touched >= N && touched <= total, `touched ${touched} of ${total}`);
  assert.equal(m['kiln_kv_cache_bytes{model_name="tiny"}'], total * 2 * 2 * 16 * 64 * 2);
  console.log(`# ${N} concurrent requests in ${dt.toFixed(2)} s`);
});
