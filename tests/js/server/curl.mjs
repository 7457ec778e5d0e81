// The seed's workflow with kiln's commands, as DESIGN.md maps them: convert the checkpoint
// (FP8, FP8 KV cache), build an engine with the seed's limits into a folder named
// llama_3.1_8b_engine_fp8 (its name becomes the served model name), serve it with the
// tokenizer of the original folder on 0.0.0.0, then the seed's curl command as written
// (against this server's port instead of 8000). Also /v1/models, /version, /tokenize and
// /detokenize.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import test from 'node:test';

import { BIN, MODEL, get, post, run, startServer, tmpdir } from './lib.mjs';

const dir = tmpdir('curl');
const ckpt = path.join(dir, 'ckpt');
const engine = path.join(dir, 'llama_3.1_8b_engine_fp8');
await run(BIN, ['convert', MODEL, '-o', ckpt, '--fp8', '--fp8-kv-cache']);
await run(BIN, ['build', ckpt, '-o', engine, '--max-batch-size', '1', '--max-input-len', '2048',
                '--max-seq-len', '2560']);
const server = await startServer({ model: engine, args: ['--tokenizer', MODEL, '--host', '0.0.0.0'] });
test.after(async () => {
  const { code } = await server.stop();
  assert.equal(code, 0, server.log());
  fs.rmSync(dir, { recursive: true, force: true });
});

test("the seed's curl command", async () => {
  // Exactly the seed's command line, with the port of this server.
  const { stdout } = await run('curl', [
    `localhost:${server.port}/v1/completions`,
    '-H', 'Content-Type: application/json',
    '-d', '{"model": "llama_3.1_8b_engine_fp8", "prompt": "The capital of France is", "max_tokens": 50, "temperature": 0.5}',
  ]);
  const r = JSON.parse(stdout);
  assert.match(r.id, /^cmpl-[0-9a-f]{32}$/);
  assert.equal(r.object, 'text_completion');
  assert.equal(r.model, 'llama_3.1_8b_engine_fp8');
  assert.ok(Number.isInteger(r.created) && Math.abs(r.created - Date.now() / 1000) < 600);
  assert.equal(r.choices.length, 1);
  const c = r.choices[0];
  assert.equal(c.index, 0);
  assert.equal(typeof c.text, 'string');
  assert.equal(c.logprobs, null);
  assert.ok(['stop', 'length'].includes(c.finish_reason));
  // <|begin_of_text|> The capital of France is
  assert.equal(r.usage.prompt_tokens, 6);
  assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 50);
  if (c.finish_reason === 'length') assert.equal(r.usage.completion_tokens, 50);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
});

test('GET /v1/models, /version, /health', async () => {
  const m = await get(server, '/v1/models');
  assert.equal(m.status, 200);
  assert.equal(m.body.object, 'list');
  assert.equal(m.body.data.length, 1);
  assert.equal(m.body.data[0].id, 'llama_3.1_8b_engine_fp8');
  assert.equal(m.body.data[0].object, 'model');
  assert.equal(m.body.data[0].max_model_len, 2560); // the engine's --max-seq-len
  const one = await get(server, '/v1/models/llama_3.1_8b_engine_fp8');
  assert.equal(one.status, 200);
  assert.equal(one.body.id, 'llama_3.1_8b_engine_fp8');
  assert.equal((await get(server, '/v1/models/gpt-4')).status, 404);
  const v = await get(server, '/version');
  assert.equal(v.status, 200);
  assert.match(v.body.version, /^\d+\.\d+\.\d+/);
  assert.equal((await get(server, '/health')).status, 200);
});

test('/tokenize and /detokenize round trip', async () => {
  const t = await post(server, '/tokenize', { prompt: 'The capital of France is' });
  assert.equal(t.status, 200);
  assert.deepEqual(t.body.tokens, [128000, 791, 6864, 315, 9822, 374]);
  assert.equal(t.body.count, 6);
  assert.equal(t.body.max_model_len, 2560);
  const bare = await post(server, '/tokenize', { prompt: 'The capital of France is', add_special_tokens: false });
  assert.deepEqual(bare.body.tokens, [791, 6864, 315, 9822, 374]);
  const d = await post(server, '/detokenize', { tokens: bare.body.tokens });
  assert.equal(d.status, 200);
  assert.equal(d.body.prompt, 'The capital of France is');
  // Token-id prompts give the same completion as the text they encode (greedy).
  const a = await post(server, '/v1/completions', { prompt: 'The capital of France is', max_tokens: 8, temperature: 0 });
  const b = await post(server, '/v1/completions', { prompt: t.body.tokens, max_tokens: 8, temperature: 0 });
  assert.equal(a.status, 200);
  assert.equal(a.body.choices[0].text, b.body.choices[0].text);
});
