// A helper of hardening.mjs (not a test): GET /health on one keep-alive connection every 5 ms
// until its stdin closes, then prints {"n", "p50", "p99", "worst"} in ms. A process of its own,
// so the latency it sees is the server's, not the pauses of the test process that builds and
// sends a 14 MB body.
import net from 'node:net';

const port = Number(process.argv[2]);
let stop = false;
process.stdin.on('end', () => (stop = true));
process.stdin.resume();
const sock = net.connect(port, '127.0.0.1');
await new Promise((r) => sock.on('connect', r));
let got = '';
sock.on('data', (d) => (got += d));
const lat = [];
while (!stop) {
  got = '';
  const t0 = process.hrtime.bigint();
  sock.write('GET /health HTTP/1.1\r\nHost: x\r\n\r\n');
  while (!got.includes('{"status":"ok"}')) await new Promise((r) => setImmediate(r));
  lat.push(Number(process.hrtime.bigint() - t0) / 1e6);
  await new Promise((r) => setTimeout(r, 5));
}
sock.destroy();
lat.sort((a, b) => a - b);
const at = (q) => lat[Math.min(lat.length - 1, Math.floor(lat.length * q))];
console.log(JSON.stringify({ n: lat.length, p50: at(0.5), p99: at(0.99), worst: lat.at(-1) }));
