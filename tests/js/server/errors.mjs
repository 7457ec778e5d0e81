// Every row of issue 7 item 5 against the real server: bad input gets OpenAI's error JSON with
// the right status and never a 500 or a crash; 401/413/431/429/503; graceful SIGTERM.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import test from 'node:test';

import { MODEL, get, metrics, parseRaw, post, rawExchange, sleep, startServer, tmpdir, waitHealthy } from './lib.mjs';

function assertError(r, status, { param, code } = {}) {
  assert.equal(r.status, status, r.text);
  assert.ok(r.body && r.body.error, `not an OpenAI error object: ${r.text}`);
  const e = r.body.error;
  assert.deepEqual(Object.keys(e).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(typeof e.message, 'string');
  assert.ok(e.message.length > 0);
  assert.equal(typeof e.type, 'string');
  if (param !== undefined) assert.equal(e.param, param);
  if (code !== undefined) assert.equal(e.code, code);
}

test('bad requests: 400/404/405/413/431, never a 500', async (t) => {
  const server = await startServer({
    args: ['--max-seq-len', '128', '--max-n', '4', '--max-body-bytes', '65536', '--max-header-bytes', '4096'],
  });
  t.after(() => server.stop());
  const C = '/v1/completions';
  const H = '/v1/chat/completions';
  const rows = [
    // invalid JSON, wrong types
    [C, '{"prompt": "x",', 400, null],
    [C, 'prompt=hello', 400, null],
    [C, '[]', 400, null],
    [C, { prompt: 'x', temperature: 'hot' }, 400, 'temperature'],
    [C, { prompt: 'x', max_tokens: '5' }, 400, 'max_tokens'],
    [C, { prompt: 'x', stream: 1 }, 400, 'stream'],
    [C, { prompt: 'x', stop: [1] }, 400, 'stop'],
    [C, { prompt: { text: 'x' } }, 400, 'prompt'],
    [H, { messages: 'hi' }, 400, 'messages'],
    [H, { messages: [{ role: 'user', content: 5 }] }, 400, 'messages[0].content'],
    [H, { messages: [{ role: 'robot', content: 'x' }] }, 400, 'messages[0].role'],
    // empty prompt / messages
    [C, { prompt: '' }, 400, 'prompt'],
    [C, { prompt: [] }, 400, 'prompt'],
    [C, { prompt: [[]] }, 400, 'prompt'],
    [C, {}, 400, 'prompt'],
    [H, { messages: [] }, 400, 'messages'],
    [H, {}, 400, 'messages'],
    // out-of-vocabulary token ids
    [C, { prompt: [1, 128256] }, 400, 'prompt'],
    [C, { prompt: [-5] }, 400, 'prompt'],
    [C, { prompt: 'x', logit_bias: { 999999: 1 } }, 400, 'logit_bias'],
    [C, { prompt: 'x', stop_token_ids: [200000] }, 400, 'stop_token_ids'],
    ['/detokenize', { tokens: [1, 999999] }, 400, 'tokens'],
    // non-finite or negative temperature
    [C, { prompt: 'x', temperature: -1 }, 400, 'temperature'],
    [C, '{"prompt": "x", "temperature": NaN}', 400, null],
    [C, '{"prompt": "x", "temperature": Infinity}', 400, null],
    [C, '{"prompt": "x", "temperature": 1e400}', 400, null],
    // top_p outside (0, 1]
    [C, { prompt: 'x', top_p: 0 }, 400, 'top_p'],
    [C, { prompt: 'x', top_p: 1.5 }, 400, 'top_p'],
    // n over its limit (--max-n 4)
    [C, { prompt: 'x', n: 5 }, 400, 'n'],
    [H, { messages: [{ role: 'user', content: 'x' }], n: 100 }, 400, 'n'],
  ];
  for (const [route, body, status, param] of rows) {
    const r = await post(server, route, body);
    await t.test(`${route} ${typeof body === 'string' ? body : JSON.stringify(body)}`, () => assertError(r, status, { param }));
  }

  await t.test('invalid UTF-8 in the body', async () => {
    const bytes = Buffer.concat([Buffer.from('{"prompt": "ab'), Buffer.from([0xc3, 0x28, 0xff]), Buffer.from('"}')]);
    assertError(await post(server, C, bytes), 400);
    const chat = Buffer.concat([Buffer.from('{"messages":[{"role":"user","content":"'), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from('"}]}')]);
    assertError(await post(server, H, chat), 400);
  });

  await t.test('context_length_exceeded', async () => {
    const long = Array.from({ length: 200 }, (_, i) => 1000 + i);
    assertError(await post(server, C, { prompt: long }), 400, { code: 'context_length_exceeded' });
    const mid = long.slice(0, 100);
    assertError(await post(server, C, { prompt: mid, max_tokens: 100 }), 400, { code: 'context_length_exceeded' });
    assert.equal((await post(server, C, { prompt: mid, max_tokens: 28 })).status, 200);
    const words = 'word '.repeat(300);
    assertError(await post(server, H, { messages: [{ role: 'user', content: words }] }), 400, { code: 'context_length_exceeded', param: 'messages' });
  });

  await t.test('unknown model: 404', async () => {
    assertError(await post(server, C, { model: 'gpt-4', prompt: 'x' }), 404, { code: 'model_not_found', param: 'model' });
    assertError(await post(server, H, { model: 'nope', messages: [{ role: 'user', content: 'x' }] }), 404, { code: 'model_not_found' });
  });

  await t.test('unknown path 404, wrong method 405', async () => {
    assertError(await get(server, '/v1/engines'), 404);
    assertError(await get(server, '/v1/completions'), 405);
    assertError(await post(server, '/v1/models', {}), 405);
  });

  await t.test('oversized body: 413', async () => {
    const big = { prompt: 'x'.repeat(70000) };
    assertError(await post(server, C, big), 413, { code: 'request_too_large' });
    // Over twice the limit evhttp refuses it from Content-Length alone (its own 413 page),
    // reading the body to the end first (lingering close) so a plain client sees the answer.
    const body = JSON.stringify({ prompt: 'x'.repeat(200000) });
    const raw = parseRaw(await rawExchange(server.port,
      `POST ${C} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`));
    assert.equal(raw.status, 413);
  });

  await t.test('oversized headers: 431', async () => {
    const r = await fetch(`${server.url}${C}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-Padding': 'p'.repeat(6000) },
      body: JSON.stringify({ prompt: 'x', max_tokens: 1 }),
    });
    const text = await r.text();
    assertError({ status: r.status, body: JSON.parse(text), text }, 431);
    const raw = parseRaw(await rawExchange(server.port,
      'GET /health HTTP/1.1\r\nHost: x\r\n' +
      Array.from({ length: 8 }, (_, i) => `X-B${i}: ${'b'.repeat(900)}\r\n`).join('') + '\r\n'));
    assert.equal(raw.status, 431);
    assert.equal(JSON.parse(raw.body).error.code, 'request_header_fields_too_large');
  });

  await t.test('the server is alive and never answered 500', async () => {
    assert.equal((await post(server, C, { prompt: 'still here', max_tokens: 2 })).status, 200);
    const m = await metrics(server);
    assert.equal(m.sum('kiln_requests_total', 'status="500"'), 0);
    assert.ok(m.sum('kiln_requests_total', 'status="400"') >= rows.length - 1);
    assert.equal(server.proc.exitCode, null);
  });
});

test('API key: 401 without or with a wrong key, /health stays open', async (t) => {
  const server = await startServer({ env: { KILN_API_KEY: 's3cret' } });
  t.after(() => server.stop());
  const body = { prompt: 'x', max_tokens: 1 };
  assertError(await post(server, '/v1/completions', body), 401, { code: 'invalid_api_key' });
  assertError(await post(server, '/v1/completions', body, { Authorization: 'Bearer s3cre' }), 401);
  assertError(await post(server, '/v1/completions', body, { Authorization: 'Bearer s3cret2' }), 401);
  assertError(await post(server, '/v1/completions', body, { Authorization: 's3cret' }), 401);
  assertError(await get(server, '/v1/models'), 401);
  assert.equal((await post(server, '/v1/completions', body, { Authorization: 'Bearer s3cret' })).status, 200);
  assert.equal((await get(server, '/v1/models', { Authorization: 'Bearer s3cret' })).status, 200);
  assert.equal((await get(server, '/health')).status, 200);
});

test('queue full: 429 with Retry-After', async (t) => {
  const server = await startServer({ args: ['--max-batch-size', '1', '--max-queue', '1'] });
  t.after(() => server.stop());
  const long = { prompt: 'x', max_tokens: 100, ignore_eos: true };
  const results = await Promise.all(Array.from({ length: 6 }, () => post(server, '/v1/completions', long)));
  const statuses = results.map((r) => r.status).sort();
  assert.ok(statuses.includes(200), statuses.join());
  const limited = results.filter((r) => r.status === 429);
  assert.ok(limited.length >= 3, statuses.join());
  for (const r of limited) {
    assertError(r, 429);
    assert.ok(Number(r.headers.get('retry-after')) >= 1);
  }
  assert.ok(results.every((r) => r.status === 200 || r.status === 429), statuses.join());
});

test('503 while the model loads, then ready', async (t) => {
  // config.json as a FIFO: loading blocks on it until the test writes it.
  const dir = tmpdir('loading');
  const model = path.join(dir, 'slow');
  fs.mkdirSync(model);
  for (const f of fs.readdirSync(MODEL)) if (f !== 'config.json') fs.symlinkSync(path.join(MODEL, f), path.join(model, f));
  execFileSync('mkfifo', [path.join(model, 'config.json')]);
  const server = await startServer({ model, waitReady: false });
  t.after(async () => {
    await server.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const h = await get(server, '/health');
  assertError(h, 503, { code: 'model_loading' });
  assert.ok(Number(h.headers.get('retry-after')) >= 1);
  assertError(await post(server, '/v1/completions', { prompt: 'x' }), 503, { code: 'model_loading' });
  assertError(await post(server, '/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }] }), 503);
  const m = await metrics(server);
  assert.equal(m['kiln_model_loading{model_name="slow"}'], 1);
  assert.equal((await get(server, '/version')).status, 200);
  fs.writeFileSync(path.join(model, 'config.json'), fs.readFileSync(path.join(MODEL, 'config.json')));
  await waitHealthy(server);
  assert.equal((await post(server, '/v1/completions', { prompt: 'x', max_tokens: 2 })).status, 200);
});

// One keep-alive connection: GET /health now, more requests later on the same socket.
function keepAlive(port) {
  const sock = net.connect(port, '127.0.0.1');
  let buf = '';
  const waiters = [];
  sock.on('data', (d) => {
    buf += d.toString();
    while (waiters.length && buf.includes('\r\n\r\n')) {
      const r = parseRaw(Buffer.from(buf));
      const len = Number(r.headers['content-length'] || 0);
      const head = buf.indexOf('\r\n\r\n') + 4;
      if (buf.length < head + len) break;
      buf = buf.slice(head + len);
      waiters.shift()({ ...r, body: r.body.slice(0, len) });
    }
  });
  sock.on('error', () => {});
  const closed = new Promise((r) => sock.on('close', r));
  return {
    closed,
    request(method, route, body = '') {
      return new Promise((resolve) => {
        waiters.push(resolve);
        sock.write(`${method} ${route} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
      });
    },
  };
}

test('SIGTERM: stop accepting, finish running requests, exit 0', async () => {
  const server = await startServer();
  const conn = keepAlive(server.port);
  assert.equal((await conn.request('GET', '/health')).status, 200);
  const running = fetch(`${server.url}/v1/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ prompt: 'Count:', max_tokens: 60, ignore_eos: true, stream: true }),
  }).then(async (r) => ({ status: r.status, text: await r.text() }));
  while ((await metrics(server))['kiln_num_requests_running{model_name="tiny"}'] < 1) await sleep(10);
  server.proc.kill('SIGTERM');
  await sleep(200);
  // New connections are refused ...
  await assert.rejects(new Promise((resolve, reject) => {
    const s = net.connect(server.port, '127.0.0.1', () => {
      s.destroy();
      resolve();
    });
    s.on('error', reject);
  }), { code: 'ECONNREFUSED' });
  // ... requests on open connections get 503 and the connection closes ...
  const late = await conn.request('POST', '/v1/completions', JSON.stringify({ prompt: 'x' }));
  assert.equal(late.status, 503);
  assert.equal(JSON.parse(late.body).error.code, 'shutting_down');
  assert.equal(late.headers.connection, 'close');
  await conn.closed;
  // ... the running request completes normally, and the process exits 0.
  const done = await running;
  assert.equal(done.status, 200);
  const events = done.text.trim().split('\n\n');
  assert.equal(events.at(-1), 'data: [DONE]');
  assert.equal(JSON.parse(events.at(-2).slice(6)).choices[0].finish_reason, 'length');
  const { code } = await server.exited;
  assert.equal(code, 0, server.log());
});

test('SIGTERM past --shutdown-timeout: running requests are stopped, exit 0', async () => {
  const server = await startServer({ args: ['--shutdown-timeout', '0.5'] });
  const body = (stream) => JSON.stringify({ prompt: 'x', max_tokens: 4000, ignore_eos: true, stream });
  const plain = post(server, '/v1/completions', body(false));
  const streamed = fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: body(true) })
    .then(async (r) => ({ status: r.status, text: await r.text() }));
  while ((await metrics(server))['kiln_num_requests_running{model_name="tiny"}'] < 2) await sleep(10);
  const t0 = Date.now();
  server.proc.kill('SIGTERM');
  const p = await plain;
  assertError(p, 503, { code: 'shutting_down' });
  const s = await streamed;
  assert.equal(s.status, 200);
  const events = s.text.trim().split('\n\n');
  assert.equal(events.at(-1), 'data: [DONE]');
  assert.equal(JSON.parse(events.at(-2).slice(6)).error.code, 'shutting_down');
  const { code } = await server.exited;
  assert.equal(code, 0, server.log());
  assert.ok(Date.now() - t0 < 10000);
});
