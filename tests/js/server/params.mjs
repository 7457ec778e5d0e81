// Request parameters end to end through the OpenAI SDK, with outputs made exact by logit_bias
// (+100 forces a token on any model): max_tokens defaults (completions 16, chat the rest of the
// context, both capped by the room left), n > 1 with and without a seed (every choice its own
// stream, choice j of each prompt the same as a single request with the seed's j-th stream),
// eos, stop ids and stop strings under min_tokens, held-back text released at max_tokens,
// streamed and not, and the sampling parameters that must reduce to greedy.
import assert from 'node:assert/strict';
import test from 'node:test';
import OpenAI from 'openai';

import { BIN, MODEL, post, run, startServer } from './lib.mjs';

const SEQ = 96;
const server = await startServer({ args: ['--max-seq-len', String(SEQ), '--max-n', '4'] });
const model = 'tiny';
const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
test.after(async () => {
  const { code } = await server.stop();
  assert.equal(code, 0, server.log());
});

const EOT = 128009; // <|eot_id|>, an eos id of the Llama 3.1 tokenizer
const messages = [{ role: 'user', content: 'Count.' }];

async function tokenId(text) {
  const r = await post(server, '/tokenize', { prompt: text, add_special_tokens: false });
  assert.equal(r.status, 200);
  assert.equal(r.body.tokens.length, 1, `'${text}' is one token`);
  return r.body.tokens[0];
}

// The streamed text of each choice (by index), the finish reasons, and the usage chunk.
async function streamed(args, chat = false) {
  const api = chat ? client.chat.completions : client.completions;
  const stream = await api.create({ ...args, stream: true, stream_options: { include_usage: true } });
  const text = [];
  const finish = [];
  let usage = null;
  let id = null;
  for await (const chunk of stream) {
    id ??= chunk.id;
    assert.equal(chunk.id, id, 'every chunk carries the id of the first');
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      text[c.index] = (text[c.index] ?? '') + ((chat ? c.delta.content : c.text) ?? '');
      if (c.finish_reason) {
        assert.equal(finish[c.index], undefined, 'one finish_reason per choice');
        finish[c.index] = c.finish_reason;
      }
    }
  }
  return { text, finish, usage };
}

test('max_tokens defaults: completions 16, chat the rest of the context', async () => {
  const r = await client.completions.create({ model, prompt: 'Hello there', temperature: 0, ignore_eos: true });
  assert.equal(r.usage.completion_tokens, 16);
  assert.equal(r.choices[0].finish_reason, 'length');
  const s = await streamed({ model, prompt: 'Hello there', temperature: 0, ignore_eos: true });
  assert.equal(s.usage.completion_tokens, 16);
  assert.equal(s.text[0], r.choices[0].text);

  const c = await client.chat.completions.create({ model, messages, temperature: 0, ignore_eos: true });
  assert.equal(c.usage.prompt_tokens + c.usage.completion_tokens, SEQ);
  assert.equal(c.choices[0].finish_reason, 'length');

  // A prompt that leaves fewer than 16 tokens: the completion gets exactly the room left.
  const long = Array.from({ length: SEQ - 10 }, () => 791); // 791: one token each
  const near = await client.completions.create({ model, prompt: long, temperature: 0, ignore_eos: true });
  assert.equal(near.usage.prompt_tokens, SEQ - 10);
  assert.equal(near.usage.completion_tokens, 10);
  const over = await post(server, '/v1/completions', { prompt: long, max_tokens: 11 });
  assert.equal(over.status, 400);
  assert.equal(over.body.error.code, 'context_length_exceeded');
  assert.equal(over.body.error.param, 'prompt'); // the server's own check, before the engine's
});

test('n > 1 with a seed: distinct, reproducible choices; choice j of every prompt is stream j', async () => {
  const args = { model, max_tokens: 12, temperature: 1.0, seed: 4242, ignore_eos: true };
  const a = await client.completions.create({ ...args, prompt: 'The weather', n: 3 });
  const b = await client.completions.create({ ...args, prompt: 'The weather', n: 3 });
  const texts = a.choices.map((c) => c.text);
  assert.deepEqual(b.choices.map((c) => c.text), texts);
  assert.equal(new Set(texts).size, 3, `three different choices: ${JSON.stringify(texts)}`);
  const single = await client.completions.create({ ...args, prompt: 'The weather' });
  assert.equal(single.choices[0].text, texts[0]);
  // streamed: the same choices
  const s = await streamed({ ...args, prompt: 'The weather', n: 3 });
  assert.deepEqual(s.text, texts);
  assert.deepEqual(s.finish, ['length', 'length', 'length']);
  assert.equal(s.usage.completion_tokens, 36);

  // two prompts x n = 2: choices 0, 1 belong to the first prompt, 2, 3 to the second, and
  // each prompt's choice j draws from the same stream as choice j of a request of its own
  const two = await client.completions.create({ ...args, prompt: ['The weather', 'A story'], n: 2 });
  const story = await client.completions.create({ ...args, prompt: 'A story', n: 2 });
  assert.deepEqual(two.choices.map((c) => c.index), [0, 1, 2, 3]);
  assert.deepEqual(two.choices.slice(0, 2).map((c) => c.text), texts.slice(0, 2));
  assert.deepEqual(two.choices.slice(2).map((c) => c.text), story.choices.map((c) => c.text));

  const chat = await client.chat.completions.create({ model, messages, max_tokens: 12, seed: 7, n: 3, ignore_eos: true });
  const contents = chat.choices.map((c) => c.message.content);
  assert.equal(new Set(contents).size, 3);
  const chatStream = await streamed({ model, messages, max_tokens: 12, seed: 7, n: 3, ignore_eos: true }, true);
  assert.deepEqual(chatStream.text, contents);
});

test('a seed draws the same tokens in kiln serve (choice 0 of n) as in kiln generate', async () => {
  const ids = [128000, 791, 6864];
  const { stdout } = await run(BIN, ['generate', MODEL, '--prompt-ids', ids.join(','), '--max-tokens', '8',
    '--temperature', '1', '--top-k', '40', '--seed', '77', '--ignore-eos', '--device', 'cpu']);
  const want = await post(server, '/detokenize', { tokens: stdout.trim().split(',').map(Number) });
  const args = { model, prompt: ids, max_tokens: 8, temperature: 1, top_k: 40, seed: 77, ignore_eos: true };
  for (const n of [1, 2]) {
    const r = await client.completions.create({ ...args, n });
    assert.equal(r.choices[0].text, want.body.prompt, `n = ${n}`);
  }
});

test('n > 1 without a seed: every choice (and every request) draws its own', async () => {
  const args = { model, prompt: 'The weather', max_tokens: 12, temperature: 1.0, n: 3, ignore_eos: true };
  const a = await client.completions.create(args);
  const b = await client.completions.create(args);
  assert.equal(new Set(a.choices.map((c) => c.text)).size, 3);
  assert.notDeepEqual(a.choices.map((c) => c.text), b.choices.map((c) => c.text));
});

test('sampling parameters that reduce to greedy', async () => {
  const base = { model, prompt: 'Once upon a time', max_tokens: 12, ignore_eos: true };
  const greedy = (await client.completions.create({ ...base, temperature: 0 })).choices[0].text;
  const variants = [
    { temperature: 0, seed: 1 },
    { temperature: 0, seed: 2, top_p: 0.5, top_k: 3 },
    { temperature: 1.5, top_k: 1, seed: 3 },
    { temperature: 1.0, top_p: 1e-6, seed: 4 },
    { temperature: 1.0, min_p: 1, seed: 5 },
  ];
  for (const v of variants) {
    const r = await client.completions.create({ ...base, ...v });
    assert.equal(r.choices[0].text, greedy, JSON.stringify(v));
  }
  // a seeded draw is reproducible and differs from another seed's
  const s1 = await client.completions.create({ ...base, temperature: 1.0, seed: 11 });
  const s1b = await client.completions.create({ ...base, temperature: 1.0, seed: 11 });
  const s2 = await client.completions.create({ ...base, temperature: 1.0, seed: 12 });
  assert.equal(s1.choices[0].text, s1b.choices[0].text);
  assert.notEqual(s1.choices[0].text, s2.choices[0].text);
});

test('forced tokens: eos, stop ids and min_tokens, exactly', async () => {
  const ab = await tokenId('ab');
  // logit_bias +100 forces its token at every step
  const forced = await client.completions.create({
    model, prompt: 'x', max_tokens: 4, temperature: 0, logit_bias: { [ab]: 100 },
  });
  assert.equal(forced.choices[0].text, 'abababab');
  // the forced token is a stop id: it ends the output at once, its text not emitted...
  const args = { model, prompt: 'x', max_tokens: 8, temperature: 0.7, seed: 1, logit_bias: { [ab]: 100 }, stop_token_ids: [ab] };
  let r = await client.completions.create(args);
  assert.equal(r.choices[0].text, '');
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.equal(r.usage.completion_tokens, 1);
  // ...unless min_tokens bans it: then it comes as token min_tokens + 1
  for (const min of [1, 3, 7]) {
    r = await client.completions.create({ ...args, min_tokens: min });
    assert.equal(r.usage.completion_tokens, min + 1, `min_tokens ${min}`);
    assert.equal(r.choices[0].finish_reason, 'stop');
    const s = await streamed({ ...args, min_tokens: min });
    assert.equal(s.text[0], r.choices[0].text);
    assert.equal(s.usage.completion_tokens, min + 1);
  }
  r = await client.completions.create({ ...args, min_tokens: 8 });
  assert.equal(r.usage.completion_tokens, 8);
  assert.equal(r.choices[0].finish_reason, 'length');

  // eos forced in chat: an empty answer that stops; ignored, it runs to max_tokens
  const eos = { model, messages, max_tokens: 5, temperature: 0, logit_bias: { [EOT]: 100 } };
  const c = await client.chat.completions.create(eos);
  assert.equal(c.choices[0].message.content, '');
  assert.equal(c.choices[0].finish_reason, 'stop');
  assert.equal(c.usage.completion_tokens, 1);
  const c2 = await client.chat.completions.create({ ...eos, min_tokens: 2 });
  assert.equal(c2.usage.completion_tokens, 3);
  const c3 = await client.chat.completions.create({ ...eos, ignore_eos: true });
  assert.equal(c3.usage.completion_tokens, 5);
  assert.equal(c3.choices[0].finish_reason, 'length');
  assert.equal(c3.choices[0].message.content, ''); // <|eot_id|> is special: skipped
  const c4 = await client.chat.completions.create({ ...eos, ignore_eos: true, skip_special_tokens: false });
  assert.equal(c4.choices[0].message.content, '<|eot_id|>'.repeat(5));
});

test('stop strings on forced text, streamed and not', async () => {
  const ab = await tokenId('ab');
  const base = { model, prompt: 'x', temperature: 0, logit_bias: { [ab]: 100 } };
  const cases = [
    // [max_tokens, min_tokens, stop, text, finish, completion tokens]
    [6, 0, ['ba'], 'a', 'stop', 2],
    [6, 0, ['zz', 'bab'], 'a', 'stop', 2],
    [6, 0, ['abab'], '', 'stop', 2],
    [3, 0, ['abc'], 'ababab', 'length', 3], // "ab" held back, then released at the end
    [1, 0, ['abc'], 'ab', 'length', 1],
    [6, 2, ['ba'], 'a', 'stop', 2], // "b" + "a": ends at token 2, checked
    [6, 3, ['ba'], 'aba', 'stop', 3], // the "ba" complete in token 2 is text
    [6, 3, ['ab'], 'abab', 'stop', 3],
    [3, 3, ['ab'], 'abab', 'stop', 3], // checked at the last token
  ];
  for (const [max_tokens, min_tokens, stop, text, finish, n] of cases) {
    const args = { ...base, max_tokens, min_tokens, stop };
    const what = JSON.stringify({ max_tokens, min_tokens, stop });
    const r = await client.completions.create(args);
    assert.equal(r.choices[0].text, text, what);
    assert.equal(r.choices[0].finish_reason, finish, what);
    assert.equal(r.usage.completion_tokens, n, what);
    const s = await streamed(args);
    assert.equal(s.text[0], text, `streamed ${what}`);
    assert.deepEqual(s.finish, [finish], `streamed ${what}`);
    const c = await client.chat.completions.create({ ...args, prompt: undefined, messages });
    assert.equal(c.choices[0].message.content, text, `chat ${what}`);
    const cs = await streamed({ ...args, prompt: undefined, messages }, true);
    assert.equal(cs.text[0], text, `chat streamed ${what}`);
  }
});
