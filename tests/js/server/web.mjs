// The chat page's HTTP side (issue 17), without a browser: GET and HEAD of / and its assets,
// gzip or plain by Accept-Encoding (the same bytes either way), ETag revalidation (304), the
// caching and security headers, 405 for other methods, 404 for unknown assets, the page
// public under --api-key (the API is not), and --no-web-ui. tests/js/web/chat.mjs drives
// the page itself in Chromium.
import assert from 'node:assert/strict';
import test from 'node:test';
import zlib from 'node:zlib';

import { parseRaw, rawExchange, startServer } from './lib.mjs';

const [server, off] = await Promise.all([
  startServer({ args: ['--api-key', 'sesame'] }),
  startServer({ args: ['--no-web-ui'] }),
]);
test.after(async () => {
  for (const s of [server, off]) assert.equal((await s.stop()).code, 0, s.log());
});

// One request on a fresh connection; body as raw bytes (Node's fetch would gunzip silently).
async function request(srv, method, path, headers = {}) {
  const lines = [`${method} ${path} HTTP/1.1`, 'Host: x', 'Connection: close'];
  for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v}`);
  const raw = await rawExchange(srv.port, `${lines.join('\r\n')}\r\n\r\n`);
  const end = raw.indexOf('\r\n\r\n');
  const r = parseRaw(raw.subarray(0, end + 4));
  return { ...r, bytes: raw.subarray(end + 4) };
}

function assetsOf(html) {
  return [...html.matchAll(/(?:href|src)="(\/assets\/[^"]+)"/g)].map((m) => m[1]);
}

test('GET / is the chat page, gzip\'d for clients that accept gzip and plain for the rest', async () => {
  const plain = await request(server, 'GET', '/');
  assert.equal(plain.status, 200);
  assert.equal(plain.headers['content-type'], 'text/html; charset=utf-8');
  assert.equal(plain.headers['content-encoding'], undefined);
  assert.equal(Number(plain.headers['content-length']), plain.bytes.length);
  const html = plain.bytes.toString('utf8');
  assert.match(html, /<title>kiln chat<\/title>/);
  assert.doesNotMatch(html, /<script>|<script(?![^>]*\bsrc=)|https?:\/\//, 'no inline script, nothing from another host');

  const gz = await request(server, 'GET', '/', { 'Accept-Encoding': 'br, gzip;q=0.8, deflate' });
  assert.equal(gz.status, 200);
  assert.equal(gz.headers['content-encoding'], 'gzip');
  assert.equal(gz.headers.vary, 'Accept-Encoding');
  assert.ok(gz.bytes.length < plain.bytes.length);
  assert.equal(zlib.gunzipSync(gz.bytes).toString('utf8'), html);
  assert.notEqual(gz.headers.etag, plain.headers.etag, 'two representations, two strong ETags');
  assert.match(gz.headers.etag, /^"[0-9a-f]{20}-gz"$/);

  const refused = await request(server, 'GET', '/', { 'Accept-Encoding': '*, gzip;q=0' });
  assert.equal(refused.headers['content-encoding'], undefined, 'gzip;q=0 refuses gzip');
  assert.equal(refused.bytes.toString('utf8'), html);

  const csp = plain.headers['content-security-policy'];
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'(;|$)/, 'script from this server only: no inline, no eval');
  assert.equal(plain.headers['cache-control'], 'no-cache');
  assert.equal(plain.headers['x-content-type-options'], 'nosniff');

  // Every asset the page names is served, hashed ones cached for good; the total gzip'd
  // size is the budget (300 KB).
  let total = gz.bytes.length;
  const assets = assetsOf(html);
  assert.ok(assets.length >= 3, html);
  for (const a of assets) {
    const r = await request(server, 'GET', a, { 'Accept-Encoding': 'gzip' });
    assert.equal(r.status, 200, a);
    assert.equal(r.headers['content-encoding'], 'gzip', a);
    assert.match(r.headers['content-type'], a.endsWith('.js') ? /^text\/javascript/ : a.endsWith('.css') ? /^text\/css/ : /^image\/svg\+xml$/);
    if (/-[A-Z0-9]{8}\.(js|css)$/.test(a)) assert.equal(r.headers['cache-control'], 'public, max-age=31536000, immutable');
    total += r.bytes.length;
  }
  console.log(`# page assets: ${total} bytes gzip'd (${assets.length + 1} files)`);
  assert.ok(total <= 300 * 1024, `${total} bytes gzip'd`);
});

test('If-None-Match with the current ETag gets 304 and no body', async () => {
  const first = await request(server, 'GET', '/', { 'Accept-Encoding': 'gzip' });
  const again = await request(server, 'GET', '/', { 'Accept-Encoding': 'gzip', 'If-None-Match': `"nope", ${first.headers.etag}` });
  assert.equal(again.status, 304);
  assert.equal(again.headers.etag, first.headers.etag);
  assert.equal(again.bytes.length, 0);
  // The plain representation's tag does not validate the gzip'd one.
  const plain = await request(server, 'GET', '/');
  const other = await request(server, 'GET', '/', { 'Accept-Encoding': 'gzip', 'If-None-Match': plain.headers.etag });
  assert.equal(other.status, 200);
});

test('HEAD / sends the headers and length of GET without a body', async () => {
  const get = await request(server, 'GET', '/', { 'Accept-Encoding': 'gzip' });
  const head = await request(server, 'HEAD', '/', { 'Accept-Encoding': 'gzip' });
  assert.equal(head.status, 200);
  assert.equal(head.headers['content-length'], String(get.bytes.length));
  assert.equal(head.headers.etag, get.headers.etag);
  assert.equal(head.bytes.length, 0);
});

test('other methods on / get 405 JSON, unknown assets 404 JSON', async () => {
  for (const method of ['POST', 'PUT', 'DELETE']) {
    const r = await request(server, method, '/', { 'Content-Length': '0' });
    assert.equal(r.status, 405, method);
    assert.equal(JSON.parse(r.bytes.toString()).error.code, 'method_not_allowed');
  }
  const r = await request(server, 'GET', '/assets/nope.js');
  assert.equal(r.status, 404);
  assert.equal(JSON.parse(r.bytes.toString()).error.code, 'not_found');
});

test('with --api-key the page is public and the API is not', async () => {
  assert.equal((await request(server, 'GET', '/')).status, 200);
  assert.equal((await request(server, 'GET', '/v1/models')).status, 401);
});

test('--no-web-ui: no page, / is an unknown path', async () => {
  for (const path of ['/', '/assets/favicon.svg']) {
    const r = await request(off, 'GET', path);
    assert.equal(r.status, 404, path);
    assert.equal(JSON.parse(r.bytes.toString()).error.code, 'not_found');
  }
  assert.equal((await request(off, 'POST', '/', { 'Content-Length': '0' })).status, 404);
  assert.equal((await request(off, 'GET', '/health')).status, 200);
});
