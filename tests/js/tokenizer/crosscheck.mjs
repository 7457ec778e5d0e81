// Cross-check of kiln's tokenizer against a second implementation, @lenml/tokenizers (a port of
// transformers.js), on a sample of the fixture corpus. kiln must give the JS ids wherever the
// JS ids equal the Hugging Face reference fixture; lines where the JS port itself differs from
// HF are counted and reported, not held against kiln.
// usage: node crosscheck.mjs KILN_BIN TOKENIZERS_DIR|"" SOURCE_DIR [every=5]
// ("" takes $KILN_TOKENIZERS, else $KILN_BINARY_DIR/tokenizers)
import { TokenizerLoader } from "@lenml/tokenizers";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import zlib from "node:zlib";

const [kiln, tokArg, srcDir, everyArg] = process.argv.slice(2);
const tokDir = tokArg || process.env.KILN_TOKENIZERS || `${process.env.KILN_BINARY_DIR}/tokenizers`;
const every = Number(everyArg || 5);
const fixtures = `${srcDir}/tests/fixtures/tokenizer`;
const corpus = fs
  .readFileSync(`${fixtures}/corpus.jsonl`, "utf8")
  .split("\n")
  .filter((l) => l.length)
  .map((l) => JSON.parse(l));

let failed = 0;
let passed = 0;
for (const name of ["llama3_1", "llama2", "qwen3", "deepseek_v3"]) {
  const dir = `${tokDir}/${name}`;
  const tok = TokenizerLoader.fromPreTrained({
    tokenizerJSON: JSON.parse(fs.readFileSync(`${dir}/tokenizer.json`, "utf8")),
    tokenizerConfig: JSON.parse(fs.readFileSync(`${dir}/tokenizer_config.json`, "utf8")),
  });
  const want = zlib
    .gunzipSync(fs.readFileSync(`${fixtures}/expected/ids_${name}.jsonl.gz`))
    .toString("utf8")
    .split("\n")
    .filter((l) => l.length)
    .map((l) => JSON.parse(l));
  const idx = [];
  for (let i = 0; i < corpus.length; i += every) if (typeof corpus[i] === "string") idx.push(i);
  const input = idx.map((i) => JSON.stringify(corpus[i])).join("\n") + "\n";
  const out = execFileSync(kiln, ["tokenize", dir, "--jsonl", "--no-special"], {
    input,
    maxBuffer: 1 << 28,
  })
    .toString("utf8")
    .split("\n")
    .filter((l) => l.length)
    .map((l) => JSON.parse(l));
  let agree = 0;
  let jsDiffers = 0;
  let bad = 0;
  idx.forEach((line, k) => {
    const js = Array.from(tok.encode(corpus[line], { add_special_tokens: false }));
    const hf = want[line];
    const got = out[k];
    const same = (a, b) => a.length === b.length && a.every((x, j) => x === b[j]);
    if (!same(js, hf)) {
      jsDiffers++;
      if (!same(got, hf)) bad++;
      return;
    }
    if (same(got, js)) agree++;
    else {
      bad++;
      if (bad <= 3)
        console.error(`  ${name} line ${line + 1}: kiln ${JSON.stringify(got).slice(0, 120)} js ${JSON.stringify(js).slice(0, 120)}`);
    }
  });
  console.log(
    `${name}: ${idx.length} strings, kiln = @lenml/tokenizers on ${agree}, ` +
      `${jsDiffers} where the JS port differs from HF, ${bad} kiln mismatches`,
  );
  if (bad) failed++;
  else passed++;
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
