// Helpers for the `kiln serve` end-to-end tests: start the real binary on a free loopback port
// (--port 0; the port is read from its "listening on" log line), wait for /health, talk raw
// HTTP over sockets, read /metrics, and stop it with a signal.
import { spawn, execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const BIN = process.env.KILN_BIN;
export const BUILD = process.env.KILN_BINARY_DIR || process.cwd();
export const MODEL = process.env.KILN_TEST_MODEL || path.join(BUILD, 'models', 'tiny');

if (!BIN) throw new Error('KILN_BIN is not set (run through ctest)');
if (!fs.existsSync(path.join(MODEL, 'config.json')))
  throw new Error(`${MODEL}: no model (the tiny_model ctest fixture writes it)`);

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function tmpdir(tag) {
  return fs.mkdtempSync(path.join(os.tmpdir(), `kiln-${tag}-`));
}

// Starts `kiln serve MODEL --port 0 --device cpu ...args`. waitReady: resolve only once
// /health answers 200 (else as soon as the port is known).
// wrap: a command line to run it under (e.g. ['prlimit', '--nofile=64', '--']).
export async function startServer({ model = MODEL, args = [], env = {}, waitReady = true, wrap = [] } = {}) {
  const argv = [BIN, 'serve', model, '--port', '0', '--device', 'cpu', ...args];
  const proc = spawn(wrap.length ? wrap[0] : BIN, [...wrap.slice(1), ...(wrap.length ? argv : argv.slice(1))], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  const port = await new Promise((resolve, reject) => {
    const onData = (d) => {
      log += d.toString();
      const m = log.match(/listening on http:\/\/[^:]+:(\d+)/);
      if (m) resolve(Number(m[1]));
    };
    proc.stderr.on('data', onData);
    proc.stdout.on('data', (d) => (log += d.toString()));
    exited.then(({ code, signal }) => reject(new Error(`kiln serve exited (${code ?? signal}) before listening:\n${log}`)));
  });
  const server = {
    proc,
    port,
    url: `http://127.0.0.1:${port}`,
    log: () => log,
    exited,
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      const result = await exited;
      // Under ASan + UBSan (scripts/test runs these tests on build-asan too) a report fails
      // the test that owns the server, whatever its exit status.
      const report = log.match(/(ERROR: (Address|Leak)Sanitizer|runtime error:)[^\n]*/);
      if (report) throw new Error(`kiln serve: ${report[0]}\n${log}`);
      return result;
    },
  };
  if (waitReady) await waitHealthy(server);
  return server;
}

export async function waitHealthy(server, timeoutMs = 300000) {
  const t0 = Date.now();
  for (;;) {
    try {
      const r = await fetch(`${server.url}/health`);
      if (r.status === 200) return;
    } catch {
      /* not yet */
    }
    if (server.proc.exitCode !== null) throw new Error(`kiln serve exited:\n${server.log()}`);
    if (Date.now() - t0 > timeoutMs) throw new Error(`not healthy after ${timeoutMs} ms:\n${server.log()}`);
    await sleep(100);
  }
}

// POST JSON (or raw bytes) and return {status, headers, body (parsed when JSON), text}.
export async function post(server, route, body, headers = {}) {
  const payload = typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body);
  const r = await fetch(`${server.url}${route}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: payload,
  });
  const text = await r.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  return { status: r.status, headers: r.headers, body: json, text };
}

export async function get(server, route, headers = {}) {
  const r = await fetch(`${server.url}${route}`, { headers });
  const text = await r.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  return { status: r.status, headers: r.headers, body: json, text };
}

// Writes raw bytes on a fresh connection and collects everything until the server closes it
// (or timeoutMs passes). Returns the response as a Buffer.
export function rawExchange(port, bytes, { timeoutMs = 10000, endAfterWrite = false } = {}) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    const sock = net.connect(port, '127.0.0.1', () => {
      sock.write(bytes, () => endAfterWrite && sock.end());
    });
    const timer = setTimeout(() => {
      sock.destroy();
      resolve(Buffer.concat(chunks));
    }, timeoutMs);
    sock.on('data', (d) => chunks.push(d));
    sock.on('error', (e) => {
      // A reset after the answer arrived still counts as an answer.
      clearTimeout(timer);
      if (chunks.length) resolve(Buffer.concat(chunks));
      else reject(e);
    });
    sock.on('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks));
    });
  });
}

// Splits a raw HTTP/1.1 response into status, headers (lower-case) and body text.
export function parseRaw(buf) {
  const s = buf.toString('utf8');
  const end = s.indexOf('\r\n\r\n');
  const head = end < 0 ? s : s.slice(0, end);
  const lines = head.split('\r\n');
  const status = Number((lines[0].match(/^HTTP\/1\.[01] (\d{3})/) || [])[1]);
  const headers = {};
  for (const l of lines.slice(1)) {
    const i = l.indexOf(':');
    if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
  }
  return { status, headers, body: end < 0 ? '' : s.slice(end + 4) };
}

// /metrics as {name{labels}: value}, plus a helper that sums a series over its labels.
export async function metrics(server) {
  const r = await get(server, '/metrics');
  if (r.status !== 200) throw new Error(`/metrics: ${r.status}`);
  const out = {};
  for (const line of r.text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  out.sum = (name, match = '') =>
    Object.entries(out)
      .filter(([k]) => typeof out[k] === 'number' && (k === name || k.startsWith(name + '{')) && k.includes(match))
      .reduce((a, [, v]) => a + v, 0);
  return out;
}

export function run(file, args, opts = {}) {
  return new Promise((resolve, reject) => {
    execFile(file, args, { maxBuffer: 1 << 26, ...opts }, (err, stdout, stderr) => {
      if (err) reject(Object.assign(err, { stdout, stderr }));
      else resolve({ stdout, stderr });
    });
  });
}

// Reads an SSE body into its "data:" payloads (strings), checking each line's bytes are
// valid UTF-8 on their own: a chunk that split a character would fail here.
export async function sseEvents(response) {
  const raw = Buffer.from(await response.arrayBuffer());
  const strict = new TextDecoder('utf-8', { fatal: true });
  const events = [];
  let start = 0;
  for (;;) {
    const end = raw.indexOf('\n\n', start);
    if (end < 0) break;
    const block = raw.subarray(start, end);
    start = end + 2;
    const text = strict.decode(block);
    if (!text.startsWith('data: ')) throw new Error(`not an SSE data line: ${text}`);
    events.push(text.slice(6));
  }
  if (start !== raw.length) throw new Error(`trailing bytes after the last event: ${raw.subarray(start)}`);
  return events;
}
