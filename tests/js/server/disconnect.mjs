// Clients that hang up mid-generation, streaming or not: their generation stops and their KV
// blocks are freed at once (seen in /metrics), the server logs 499 and keeps serving.
import assert from 'node:assert/strict';
import net from 'node:net';
import test from 'node:test';

import { metrics, post, sleep, startServer } from './lib.mjs';

// A 1 s idle timeout: streams must outlive it even when no token comes for longer (queued
// behind another request: one sequence per step); idle connections must not.
const server = await startServer({ args: ['--idle-timeout', '1', '--max-batch-size', '1'] });
test.after(async () => {
  const { code } = await server.stop();
  assert.equal(code, 0, server.log());
});

const M = (name) => `${name}{model_name="tiny"}`;

// Opens a connection and sends a long generation request; resolves with the socket once the
// engine is running it and holds KV blocks.
async function startLongRequest(stream) {
  const body = JSON.stringify({ prompt: 'Tell me everything.', max_tokens: 4000, ignore_eos: true, stream });
  const sock = net.connect(server.port, '127.0.0.1');
  let received = '';
  sock.on('data', (d) => (received += d.toString()));
  sock.on('error', () => {});
  await new Promise((r) => sock.on('connect', r));
  sock.write(`POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
             `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  const t0 = Date.now();
  for (;;) {
    const m = await metrics(server);
    if (m[M('kiln_num_requests_running')] >= 1 && m[M('kiln_kv_blocks_used')] > 0 &&
        (!stream || received.includes('data: '))) break;
    assert.ok(Date.now() - t0 < 60000, 'the request never started');
    await sleep(20);
  }
  return { sock, received: () => received };
}

async function waitFreed(cancelledBefore) {
  const t0 = Date.now();
  for (;;) {
    const m = await metrics(server);
    if (m[M('kiln_kv_blocks_used')] === 0 && m[M('kiln_num_requests_running')] === 0 &&
        m[M('kiln_requests_cancelled_total')] === cancelledBefore + 1) return Date.now() - t0;
    assert.ok(Date.now() - t0 < 2000, `KV blocks not freed: ${JSON.stringify(m)}`);
    await sleep(5);
  }
}

for (const stream of [false, true]) {
  test(`a ${stream ? 'streaming' : 'non-streaming'} client that disconnects frees its KV blocks`, async () => {
    const before = (await metrics(server))[M('kiln_requests_cancelled_total')];
    const { sock, received } = await startLongRequest(stream);
    if (!stream) assert.equal(received(), '', 'no answer before the generation is done');
    sock.destroy();
    const ms = await waitFreed(before);
    console.log(`# freed ${ms} ms after the disconnect`);
    // The engine stops stepping: nothing else is running.
    const s1 = (await metrics(server))[M('kiln_engine_steps_total')];
    await sleep(200);
    assert.equal((await metrics(server))[M('kiln_engine_steps_total')], s1);
    assert.match(server.log(), / 499 /);
    // ... and the server still answers.
    const r = await post(server, '/v1/completions', { prompt: 'ok?', max_tokens: 2 });
    assert.equal(r.status, 200);
  });
}

test('a half-read stream abandoned by a fetch abort is cancelled too', async () => {
  const before = (await metrics(server))[M('kiln_requests_cancelled_total')];
  const ac = new AbortController();
  const r = await fetch(`${server.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ messages: [{ role: 'user', content: 'Go on forever.' }], max_tokens: 4000, ignore_eos: true, stream: true }),
    signal: ac.signal,
  });
  const reader = r.body.getReader();
  await reader.read(); // the role chunk
  await reader.read();
  ac.abort();
  await waitFreed(before);
});

test('a stream waiting longer than the idle timeout completes; an idle connection is closed', async () => {
  // A long request holds the only batch slot; the stream waits behind it for 1.6 s (no byte
  // after its headers), then the long one is abandoned and the stream runs.
  const ac = new AbortController();
  const first = fetch(`${server.url}/v1/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ prompt: 'First.', max_tokens: 4000, ignore_eos: true }),
    signal: ac.signal,
  }).catch((e) => e);
  while ((await metrics(server))[M('kiln_num_requests_running')] < 1) await sleep(10);
  const stream = fetch(`${server.url}/v1/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ prompt: 'Second.', max_tokens: 20, ignore_eos: true, stream: true }),
  }).then(async (r) => ({ status: r.status, text: await r.text() }));
  await sleep(1600);
  ac.abort();
  await first;
  const r = await stream;
  assert.equal(r.status, 200);
  const events = r.text.trim().split('\n\n');
  assert.equal(events.at(-1), 'data: [DONE]');
  assert.equal(JSON.parse(events.at(-2).slice(6)).choices[0].finish_reason, 'length');
  const sock = net.connect(server.port, '127.0.0.1');
  sock.on('error', () => {});
  const closed = await Promise.race([new Promise((res) => sock.on('close', () => res(true))), sleep(5000).then(() => false)]);
  assert.ok(closed, 'an idle connection stays open past the idle timeout');
});
