// Forced tool calls with the real clients: tool_choice "required" or a named function is
// constrained by the structured-output engine (src/grammar) so that, even with the tiny model's
// random weights, every call names a declared tool and its arguments parse and validate (ajv)
// against that tool's parameters schema, every time. The openai SDK (required / named, streamed
// and not, parallel calls, a full round trip), LangChain (bindTools, withStructuredOutput with
// functionCalling), the AI SDK (generateText / streamText with toolChoice 'required', on the
// chat provider and on @ai-sdk/openai's default Responses provider), the Responses API through
// the openai SDK, and @openai/agents with its default API.
//
// The schemas bound every string (maxLength) and close every object (additionalProperties:
// false) so that a random model finishes a call within max_tokens: an unbounded string would
// be valid but may not end before the token budget, and a cut call is not a call. Under
// "required" with parallel calls a random model strings calls together ("; ") and stops at
// each junction with probability ~0.2 (measured: 2 of 30 outputs ran past 200 tokens), so
// those requests get 1000 tokens (p(cut) ~ 1e-5); a named function is always one call.
import assert from 'node:assert/strict';
import test from 'node:test';
import OpenAI from 'openai';
import Ajv from 'ajv';
import { z } from 'zod';
import { ChatOpenAI } from '@langchain/openai';
import { tool as lcTool } from '@langchain/core/tools';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { createOpenAI } from '@ai-sdk/openai';
import { generateText, streamText, tool as aiTool, jsonSchema } from 'ai';
import { Agent, run, tool as agentTool, setDefaultOpenAIClient, setTracingDisabled } from '@openai/agents';

import { startServer } from './lib.mjs';

const server = await startServer();
const model = 'tiny';
const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
test.after(async () => {
  const { code } = await server.stop();
  assert.equal(code, 0, server.log());
});

const ajv = new Ajv({ strict: false });
const weatherParams = {
  type: 'object',
  properties: { city: { type: 'string', maxLength: 12 }, days: { type: 'integer', minimum: 1, maximum: 7 } },
  required: ['city'],
  additionalProperties: false,
};
const searchParams = {
  type: 'object',
  properties: { q: { type: 'string', maxLength: 10 }, lang: { enum: ['en', 'fr'] } },
  required: ['q', 'lang'],
  additionalProperties: false,
};
const tools = [
  { type: 'function', function: { name: 'get_weather', description: 'Weather of a city', parameters: weatherParams } },
  { type: 'function', function: { name: 'search', description: 'Web search', parameters: searchParams } },
];
const validators = { get_weather: ajv.compile(weatherParams), search: ajv.compile(searchParams) };
const messages = [{ role: 'user', content: 'What is the weather in Paris?' }];
const ROUNDS = 4;

function checkCall(name, args, only) {
  assert.ok(name in validators, `unknown tool ${name}`);
  if (only) assert.equal(name, only);
  const obj = typeof args === 'string' ? JSON.parse(args) : args;
  assert.ok(validators[name](obj), `${name}(${JSON.stringify(obj)}): ${ajv.errorsText(validators[name].errors)}`);
}

test('openai SDK: tool_choice required and named, not streamed', async () => {
  for (let i = 0; i < ROUNDS; i++) {
    for (const [choice, only] of [
      ['required', null],
      [{ type: 'function', function: { name: 'search' } }, 'search'],
    ]) {
      const c = await client.chat.completions.create({ model, messages, tools, tool_choice: choice, max_tokens: 1000, seed: i, temperature: 1 });
      const msg = c.choices[0].message;
      assert.equal(c.choices[0].finish_reason, 'tool_calls', JSON.stringify(msg));
      assert.ok(msg.tool_calls.length >= 1);
      for (const tc of msg.tool_calls) {
        assert.equal(tc.type, 'function');
        assert.match(tc.id, /^call_/);
        checkCall(tc.function.name, tc.function.arguments, only);
      }
    }
  }
});

test('openai SDK: tool_choice required and named, streamed (deltas: index, id and name first)', async () => {
  for (let i = 0; i < ROUNDS; i++) {
    for (const [choice, only] of [
      ['required', null],
      [{ type: 'function', function: { name: 'get_weather' } }, 'get_weather'],
    ]) {
      const s = client.chat.completions.stream({ model, messages, tools, tool_choice: choice, max_tokens: 1000, seed: 100 + i });
      const seen = new Set();
      for await (const chunk of s) {
        for (const d of chunk.choices[0]?.delta?.tool_calls ?? []) {
          if (!seen.has(d.index)) {
            assert.ok(d.id && d.function.name, 'the first delta of a call carries its id and name');
            seen.add(d.index);
          } else {
            assert.equal(d.id, undefined);
          }
        }
      }
      const c = await s.finalChatCompletion();
      assert.equal(c.choices[0].finish_reason, 'tool_calls');
      for (const tc of c.choices[0].message.tool_calls) checkCall(tc.function.name, tc.function.arguments, only);
    }
  }
});

test('openai SDK: a full tool round trip', async () => {
  const first = await client.chat.completions.create({ model, messages, tools, tool_choice: 'required', parallel_tool_calls: false, max_tokens: 200, seed: 7 });
  const call = first.choices[0].message.tool_calls[0];
  checkCall(call.function.name, call.function.arguments);
  const convo = [
    ...messages,
    first.choices[0].message,
    { role: 'tool', tool_call_id: call.id, content: JSON.stringify({ temp_c: 21, sky: 'clear' }) },
  ];
  const second = await client.chat.completions.create({ model, messages: convo, tools, tool_choice: 'none', max_tokens: 8 });
  assert.equal(typeof second.choices[0].message.content, 'string');
  assert.equal(second.choices[0].message.tool_calls, undefined);
  assert.ok(second.usage.prompt_tokens > first.usage.prompt_tokens);
});

test('legacy functions / function_call', async () => {
  const c = await client.chat.completions.create({
    model,
    messages,
    functions: [{ name: 'get_weather', parameters: weatherParams }],
    function_call: { name: 'get_weather' },
    max_tokens: 200,
  });
  assert.equal(c.choices[0].finish_reason, 'function_call');
  checkCall(c.choices[0].message.function_call.name, c.choices[0].message.function_call.arguments, 'get_weather');
});

test('responses.create with a forced tool, streamed and not', async () => {
  const rtools = tools.map((t) => ({ type: 'function', name: t.function.name, parameters: t.function.parameters, strict: true }));
  const r = await client.responses.create({ model, input: 'Weather in Paris?', tools: rtools, tool_choice: 'required', max_output_tokens: 1000 });
  const calls = r.output.filter((o) => o.type === 'function_call');
  assert.ok(calls.length >= 1, JSON.stringify(r.output));
  for (const c of calls) checkCall(c.name, c.arguments);
  const s = await client.responses.create({
    model,
    input: 'Weather in Paris?',
    tools: rtools,
    tool_choice: { type: 'function', name: 'search' },
    max_output_tokens: 200,
    stream: true,
  });
  let args = '';
  let done;
  for await (const ev of s) {
    if (ev.type === 'response.function_call_arguments.delta') args += ev.delta;
    if (ev.type === 'response.function_call_arguments.done') done = ev;
  }
  assert.equal(done.arguments, args);
  checkCall('search', args, 'search');
});

test('LangChain: bindTools with a forced tool and withStructuredOutput (functionCalling)', async () => {
  const llm = new ChatOpenAI({ model, apiKey: 'unused', configuration: { baseURL: `${server.url}/v1` }, maxRetries: 0, maxTokens: 200 });
  const weather = lcTool(async ({ city }) => `sunny in ${city}`, {
    name: 'get_weather',
    description: 'Weather of a city',
    schema: z.object({ city: z.string().max(12) }).strict(),
  });
  for (let i = 0; i < ROUNDS; i++) {
    const m = await llm.bindTools([weather], { tool_choice: 'get_weather' }).invoke('Weather in Paris?');
    assert.ok(m.tool_calls.length >= 1, JSON.stringify(m));
    for (const tc of m.tool_calls) {
      assert.equal(tc.name, 'get_weather');
      assert.ok(typeof tc.args.city === 'string' && tc.args.city.length <= 12);
      assert.deepEqual(Object.keys(tc.args), ['city']);
    }
  }
  const Person = z.object({ name: z.string().max(10), age: z.number().int().min(0).max(120) }).strict();
  for (let i = 0; i < ROUNDS; i++) {
    const p = await llm.withStructuredOutput(Person, { method: 'functionCalling', name: 'person' }).invoke('Invent a person.');
    assert.ok(Person.safeParse(p).success, JSON.stringify(p));
  }
});

const aiTools = {
  get_weather: aiTool({ description: 'Weather of a city', inputSchema: jsonSchema(weatherParams) }),
  search: aiTool({ description: 'Web search', inputSchema: jsonSchema(searchParams) }),
};

test("AI SDK: generateText / streamText with toolChoice 'required' (chat provider and the default Responses provider)", async () => {
  const compat = createOpenAICompatible({ name: 'kiln', baseURL: `${server.url}/v1`, apiKey: 'unused' });
  const openai = createOpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused' });
  for (const m of [compat(model), openai(model)]) {
    for (let i = 0; i < ROUNDS; i++) {
      const g = await generateText({ model: m, prompt: 'Weather in Paris?', tools: aiTools, toolChoice: 'required', maxOutputTokens: 1000, maxRetries: 0 });
      assert.ok(g.toolCalls.length >= 1, JSON.stringify(g.content));
      for (const tc of g.toolCalls) checkCall(tc.toolName, tc.input);
      const s = streamText({ model: m, prompt: 'Weather in Paris?', tools: aiTools, toolChoice: { type: 'tool', toolName: 'search' }, maxOutputTokens: 200, maxRetries: 0 });
      const calls = await s.toolCalls;
      assert.ok(calls.length >= 1);
      for (const tc of calls) checkCall(tc.toolName, tc.input, 'search');
    }
  }
});

test('@openai/agents with its default API (Responses): the agent calls its tool', async () => {
  setTracingDisabled(true);
  setDefaultOpenAIClient(client);
  const seen = [];
  const weather = agentTool({
    name: 'get_weather',
    description: 'Weather of a city',
    parameters: z.object({ city: z.string().max(12) }),
    execute: async ({ city }) => {
      seen.push(city);
      return `sunny in ${city}`;
    },
  });
  const agent = new Agent({
    name: 'weather',
    instructions: 'Answer with the weather tool.',
    model,
    tools: [weather],
    modelSettings: { toolChoice: 'required', maxTokens: 1000 },
    toolUseBehavior: 'stop_on_first_tool',
  });
  const result = await run(agent, 'Weather in Paris?');
  assert.equal(seen.length >= 1, true);
  assert.ok(seen.every((c) => typeof c === 'string' && c.length <= 12));
  assert.equal(result.finalOutput, `sunny in ${seen[0]}`);
});
