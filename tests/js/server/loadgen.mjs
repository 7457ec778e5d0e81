// kiln_loadgen (the serving benchmark's load generator) against a CPU server: every request
// completes with exactly max_tokens tokens, its counts agree with /metrics, and the latency
// figures it reports are sane.
import assert from 'node:assert/strict';
import test from 'node:test';

import { metrics, run, startServer } from './lib.mjs';

const server = await startServer();
test.after(async () => {
  const { code } = await server.stop();
  assert.equal(code, 0, server.log());
});

test('kiln_loadgen: 8 streaming requests, 4 at a time', async () => {
  const before = await metrics(server);
  const { stdout } = await run(process.env.KILN_LOADGEN, [
    '--url', server.url, '--model', 'tiny', '--concurrency', '4', '--requests', '8',
    '--input-len', '16', '--output-len', '8', '--json',
  ]);
  const r = JSON.parse(stdout);
  assert.equal(r.completed, 8);
  assert.equal(r.failed, 0);
  assert.equal(r.output_tokens, 64);
  const after = await metrics(server);
  const M = (n) => `${n}{model_name="tiny"}`;
  assert.equal(after[M('kiln_generation_tokens_total')] - before[M('kiln_generation_tokens_total')], 64);
  assert.equal(after[M('kiln_prompt_tokens_total')] - before[M('kiln_prompt_tokens_total')], 8 * 16);
  assert.ok(r.output_tok_s > 0 && r.duration_s > 0);
  assert.ok(r.ttft_ms_p50 > 0 && r.ttft_ms_p99 >= r.ttft_ms_p50);
  assert.ok(r.itl_ms_p50 > 0 && r.itl_ms_p99 >= r.itl_ms_p50);
  assert.ok(r.e2e_s_p50 * 1000 >= r.ttft_ms_p50);
});
