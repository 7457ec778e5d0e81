#!/usr/bin/env python3
"""Reference outputs for kiln's tokenizer tests, made with Hugging Face `tokenizers`,
`transformers` and `jinja2` (run where they are installed: the GPU machine).

For every tokenizer folder under --tokenizers (plus "llama2_metaspace", the llama2 tokenizer with
its normalizer replaced by a Metaspace pre-tokenizer and decoder, as Mistral-style files have):
  ids_NAME.jsonl         per corpus line, the ids of tokenizers' encode(text, add_special_tokens=False)
  decode_NAME.jsonl      per corpus line, [decode(ids), decode(ids, skip_special_tokens=True)],
                         null where equal to the input text (first) or to the first (second)
  special_NAME.jsonl     first 200 lines: {"tokenizers": encode(text, True), "transformers":
                         AutoTokenizer(text)["input_ids"]}
  randdecode_NAME.jsonl  random id lists (specials, byte tokens, cut UTF-8) and both decodes
chat_expected.json: transformers.apply_chat_template(..., tokenize=False) per case of
--chat-cases (output, or the exception type and message).
bench.txt: single-threaded HF encode speed on --bench-corpus, then kiln's bench binary if given.

Corpus lines {"hex": ...} are bytes decoded with errors="replace" (HF's Python API takes str).

usage: make_fixtures.py --tokenizers DIR --corpus C.jsonl --chat-cases CASES.json
       --templates DIR --out DIR [--bench-corpus B.jsonl] [--bench-bin PATH]"""
import argparse
import json
import os
import random
import subprocess
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jinja2  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402


def load_corpus(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            v = json.loads(line)
            if isinstance(v, dict):
                v = bytes.fromhex(v["hex"]).decode("utf-8", errors="replace")
            out.append(v)
    return out


def metaspace_variant(src_dir, dst_dir):
    os.makedirs(dst_dir, exist_ok=True)
    tj = json.load(open(os.path.join(src_dir, "tokenizer.json"), encoding="utf-8"))
    ms = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
    tj["normalizer"] = None
    tj["pre_tokenizer"] = ms
    tj["decoder"] = ms
    json.dump(tj, open(os.path.join(dst_dir, "tokenizer.json"), "w", encoding="utf-8"),
              ensure_ascii=False)


def dump_lines(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")


def random_ids(tk, rnd, corpus):
    n = tk.get_vocab_size(with_added_tokens=True)
    vocab = tk.get_vocab(with_added_tokens=True)
    specials = [i for t, i in vocab.items() if t.startswith("<") and t.endswith(">")]
    bytes_ = [i for t, i in vocab.items() if len(t) == 6 and t.startswith("<0x")]
    out = []
    for k in range(300):
        ids = []
        for _ in range(rnd.randint(1, 12)):
            r = rnd.random()
            if r < 0.4:
                ids.append(rnd.randrange(n))
            elif r < 0.55 and specials:
                ids.append(rnd.choice(specials))
            elif r < 0.75 and bytes_:
                ids.extend(rnd.choice(bytes_) for _ in range(rnd.randint(1, 4)))
            else:
                enc = tk.encode(rnd.choice(corpus)[:200], add_special_tokens=False).ids
                if enc:
                    a = rnd.randrange(len(enc))
                    ids.extend(enc[a:a + rnd.randint(1, 6)])
        out.append(ids)
    return out


def bench_hf(tk_dir, docs, reps):
    tk = Tokenizer.from_file(os.path.join(tk_dir, "tokenizer.json"))
    nbytes = sum(len(d.encode()) for d in docs)
    best = 1e9
    ntok = 0
    for _ in range(reps):
        t0 = time.perf_counter()
        ntok = 0
        for d in docs:
            ntok += len(tk.encode(d, add_special_tokens=False).ids)
        best = min(best, time.perf_counter() - t0)
    return nbytes, ntok, best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizers", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--chat-cases", required=True)
    ap.add_argument("--templates", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--bench-corpus")
    ap.add_argument("--bench-bin")
    ap.add_argument("--skip-fixtures", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    versions = {"tokenizers": tokenizers.__version__, "transformers": transformers.__version__,
                "jinja2": jinja2.__version__, "python": sys.version.split()[0]}
    print("versions", versions, flush=True)
    json.dump(versions, open(os.path.join(a.out, "versions.json"), "w"))
    names = sorted(d for d in os.listdir(a.tokenizers)
                   if os.path.exists(os.path.join(a.tokenizers, d, "tokenizer.json")))
    variant_dir = os.path.join(a.out, "..", "llama2_metaspace")
    if "llama2" in names:
        metaspace_variant(os.path.join(a.tokenizers, "llama2"), variant_dir)
    dirs = {n: os.path.join(a.tokenizers, n) for n in names}
    if "llama2" in names:
        dirs["llama2_metaspace"] = variant_dir

    if not a.skip_fixtures:
        corpus = load_corpus(a.corpus)
        for name, d in sorted(dirs.items()):
            t0 = time.time()
            tk = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
            encs = tk.encode_batch(corpus, add_special_tokens=False)
            ids = [e.ids for e in encs]
            dump_lines(os.path.join(a.out, "ids_%s.jsonl" % name), ids)
            dec = tk.decode_batch(ids, skip_special_tokens=False)
            decs = tk.decode_batch(ids, skip_special_tokens=True)
            dump_lines(os.path.join(a.out, "decode_%s.jsonl" % name),
                       [[x if x != t else None, y if y != x else None]
                        for t, x, y in zip(corpus, dec, decs)])
            try:
                at = AutoTokenizer.from_pretrained(d) if name != "llama2_metaspace" else None
            except Exception as e:  # recorded, not fatal
                print("AutoTokenizer(%s): %r" % (name, e), flush=True)
                at = None
            rows = []
            for t in corpus[:200]:
                r = {"tokenizers": tk.encode(t, add_special_tokens=True).ids}
                if at is not None:
                    r["transformers"] = at(t)["input_ids"]
                rows.append(r)
            dump_lines(os.path.join(a.out, "special_%s.jsonl" % name), rows)
            rnd = random.Random(7)
            rid = random_ids(tk, rnd, corpus)
            dump_lines(os.path.join(a.out, "randdecode_%s.jsonl" % name),
                       [[x, tk.decode(x, skip_special_tokens=False),
                         tk.decode(x, skip_special_tokens=True)] for x in rid])
            print("%s: %d lines, %d ids, %.1fs" % (name, len(ids), sum(map(len, ids)),
                                                   time.time() - t0), flush=True)

        cases = json.load(open(a.chat_cases, encoding="utf-8"))
        toks = {}
        results = []
        for c in cases["cases"]:
            tname = c["tokenizer"]
            if tname not in toks:
                toks[tname] = AutoTokenizer.from_pretrained(dirs[tname])
            src = None
            if c["template"]:
                src = open(os.path.join(a.templates, c["template"]), encoding="utf-8").read()
            extra = dict(c["extra"])
            tools = extra.pop("tools", None)
            conv = cases["conversations"][c["conversation"]]
            try:
                out = toks[tname].apply_chat_template(
                    conv, tools=tools, add_generation_prompt=c["add_generation_prompt"],
                    tokenize=False, chat_template=src, **extra)
                results.append({"name": c["name"], "output": out})
            except Exception as e:
                results.append({"name": c["name"], "error": str(e), "type": type(e).__name__})
        json.dump(results, open(os.path.join(a.out, "chat_expected.json"), "w", encoding="utf-8"),
                  ensure_ascii=False, indent=1)
        print("chat: %d cases, %d errors" % (len(results), sum("error" in r for r in results)),
              flush=True)

    if a.bench_corpus:
        docs = [json.loads(l) for l in open(a.bench_corpus, encoding="utf-8")]
        lines = []
        for name in ["llama3_1", "qwen3", "llama2", "deepseek_v3", "gemma3"]:
            if name not in dirs:
                continue
            nbytes, ntok, best = bench_hf(dirs[name], docs, 3 if name == "llama3_1" else 1)
            line = ("hf_tokenizers %s single-thread: %d bytes, %d docs, %d tokens, %.3f s, "
                    "%.2f MB/s, %.0f tokens/s" % (name, nbytes, len(docs), ntok, best,
                                                  nbytes / best / 1e6, ntok / best))
            print(line, flush=True)
            lines.append(line)
        if a.bench_bin and os.path.exists(a.bench_bin):
            for name in ["llama3_1", "qwen3", "llama2", "deepseek_v3", "gemma3"]:
                if name not in dirs:
                    continue
                r = subprocess.run([a.bench_bin, dirs[name], a.bench_corpus, "--repeat",
                                    "3" if name == "llama3_1" else "1"],
                                   capture_output=True, text=True)
                line = "kiln %s: %s %s" % (name, r.stdout.strip(), r.stderr.strip()[-500:])
                print(line, flush=True)
                lines.append(line)
        open(os.path.join(a.out, "bench.txt"), "w").write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
