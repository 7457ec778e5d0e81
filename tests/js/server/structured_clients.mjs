// Structured output through the client libraries applications use, against the real
// `kiln serve` on the tiny random-weight model at temperature 1: the OpenAI SDK's
// chat.completions.parse with a zod schema (zodResponseFormat), LangChain.js
// ChatOpenAI.withStructuredOutput (methods jsonSchema and jsonMode) and the Vercel AI SDK's
// generateObject / streamObject over @ai-sdk/openai-compatible. Each must hand back an object
// that its own validation accepts. The zod fields are bounded (max lengths, ranges, enums) so a
// random model ends its value within max_tokens.
import assert from 'node:assert/strict';
import test from 'node:test';
import OpenAI from 'openai';
import { zodResponseFormat } from 'openai/helpers/zod';
import { ChatOpenAI } from '@langchain/openai';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { generateObject, streamObject } from 'ai';
import { z } from 'zod';

import { startServer } from './lib.mjs';

const server = await startServer();
test.after(async () => {
  const { code } = await server.stop();
  assert.equal(code, 0, server.log());
});
const baseURL = `${server.url}/v1`;
const model = 'tiny';

const Person = z.object({
  name: z.string().max(10),
  age: z.number().int().min(0).max(120),
  role: z.enum(['admin', 'user', 'guest']),
  tags: z.array(z.string().max(4)).max(3),
  active: z.boolean(),
});

test('openai chat.completions.parse with zodResponseFormat', async () => {
  const client = new OpenAI({ baseURL, apiKey: 'unused', maxRetries: 0 });
  for (let seed = 0; seed < 3; seed++) {
    const r = await client.chat.completions.parse({
      model,
      messages: [{ role: 'user', content: 'Describe a person.' }],
      response_format: zodResponseFormat(Person, 'person'),
      temperature: 1,
      seed,
      max_tokens: 300,
    });
    const msg = r.choices[0].message;
    assert.equal(r.choices[0].finish_reason, 'stop');
    assert.ok(msg.parsed, msg.content);
    assert.deepEqual(Person.parse(msg.parsed), msg.parsed);
    assert.deepEqual(JSON.parse(msg.content), msg.parsed);
  }
});

test('LangChain withStructuredOutput, methods jsonSchema and jsonMode', async () => {
  const chat = (modelKwargs) =>
    new ChatOpenAI({ model, apiKey: 'unused', configuration: { baseURL }, temperature: 1, maxTokens: 300, maxRetries: 0, modelKwargs });
  const llm = chat({ seed: 5 });
  const viaSchema = llm.withStructuredOutput(Person, { method: 'jsonSchema', name: 'person' });
  const a = await viaSchema.invoke('Describe a person.');
  assert.deepEqual(Person.parse(a), a);

  // jsonMode asks for response_format json_object (any object); a JSON Schema (not zod) makes
  // LangChain parse without validating against it, as its docs describe for this mode. Free-form
  // strings of a random model rarely close within max_tokens, so this client biases the tokens
  // that close them (what logit_bias is for); the constraint still decides what is allowed.
  const bias = {};
  for (const piece of ['"', '}', '",', '"}', '":', ' "']) {
    const t = await fetch(`${server.url}/tokenize`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ prompt: piece, add_special_tokens: false }),
    }).then((r) => r.json());
    assert.equal(t.tokens.length, 1, piece);
    bias[t.tokens[0]] = 12;
  }
  const viaJsonMode = chat({ seed: 5, logit_bias: bias }).withStructuredOutput(
    { type: 'object', title: 'anything', properties: {} },
    { method: 'jsonMode' },
  );
  const b = await viaJsonMode.invoke('Reply with a JSON object.');
  assert.equal(typeof b, 'object');
  assert.ok(b !== null && !Array.isArray(b));

  // includeRaw: the raw message is the JSON text of the parsed object
  const raw = await llm
    .withStructuredOutput(Person, { method: 'jsonSchema', name: 'person', includeRaw: true })
    .invoke('Describe a person.');
  assert.deepEqual(Person.parse(raw.parsed), raw.parsed);
  assert.deepEqual(JSON.parse(raw.raw.content), raw.parsed);
});

test('AI SDK generateObject and streamObject', async () => {
  const kiln = createOpenAICompatible({ name: 'kiln', baseURL, apiKey: 'unused', supportsStructuredOutputs: true });
  const g = await generateObject({
    model: kiln.chatModel(model),
    schema: Person,
    schemaName: 'person',
    prompt: 'Describe a person.',
    temperature: 1,
    seed: 9,
    maxOutputTokens: 300,
    maxRetries: 0,
  });
  assert.deepEqual(Person.parse(g.object), g.object);
  assert.equal(g.finishReason, 'stop');

  const s = streamObject({
    model: kiln.chatModel(model),
    schema: Person,
    schemaName: 'person',
    prompt: 'Describe a person.',
    temperature: 1,
    seed: 10,
    maxOutputTokens: 300,
    maxRetries: 0,
  });
  let partials = 0;
  for await (const p of s.partialObjectStream) {
    assert.equal(typeof p, 'object');
    partials++;
  }
  const obj = await s.object;
  assert.deepEqual(Person.parse(obj), obj);
  assert.ok(partials >= 2, `${partials} partial objects streamed`);

  // an array of objects (output: 'array')
  const list = await generateObject({
    model: kiln.chatModel(model),
    output: 'array',
    schema: z.object({ id: z.number().int().min(1).max(9), ok: z.boolean() }),
    prompt: 'List some items.',
    temperature: 1,
    seed: 2,
    maxOutputTokens: 400,
    maxRetries: 0,
  });
  assert.ok(Array.isArray(list.object));
});

// kiln's json_whitespace: "indent" lets the JSON break lines and indent (bounded: one space, or
// a newline and at most 32 spaces, between tokens; twice inside an empty array or object);
// compact (the default) allows none. A large
// logit_bias on "\n" (Llama 3 token 198) makes the random model take a newline wherever one is
// allowed: under indent the reply has newlines, under compact it has none.
test('openai SDK with json_whitespace indent and compact', async () => {
  const client = new OpenAI({ baseURL, apiKey: 'unused', maxRetries: 0 });
  const ask = (json_whitespace) =>
    client.chat.completions.parse({
      model,
      messages: [{ role: 'user', content: 'Describe a person.' }],
      response_format: zodResponseFormat(Person, 'person'),
      temperature: 1,
      seed: 3,
      max_tokens: 400,
      logit_bias: { 198: 100 },
      ...(json_whitespace ? { json_whitespace } : {}),
    });
  for (const ws of ['indent', 'compact', null]) {
    const r = await ask(ws);
    const msg = r.choices[0].message;
    assert.equal(r.choices[0].finish_reason, 'stop', msg.content);
    assert.deepEqual(Person.parse(msg.parsed), msg.parsed);
    const outside = msg.content.replace(/"(?:[^"\\]|\\.)*"/g, '""'); // whitespace outside strings
    if (ws === 'indent') {
      assert.match(outside, /\n/, msg.content);
      // one run between two tokens; two where an empty array or object's slots meet
      for (const run of outside.match(/\s+/g)) assert.match(run, /^( |\n {0,32}){1,2}$/, JSON.stringify(msg.content));
    } else {
      assert.doesNotMatch(outside, /\s/, msg.content);
    }
  }
  await assert.rejects(ask('pretty'), (e) => e.status === 400 && /json_whitespace/.test(e.message));
});
