#!/usr/bin/env python3
"""Summarizes bench/gpu-run.sh tolerances: the figures test_cuda_model prints on its `metrics:`
line, over the seeds of each configuration (ok-MODEL-KV-sSEED.log) and under each planted fault
(fault-FAULT-MODEL-KV.log), with the exit status of each run under the bounds it was built with.

usage: gpu-tolerances.py DIR"""
import os
import re
import statistics
import sys


def parse(path):
    text = open(path).read()
    m = re.search(r"^metrics: (.*)$", text, re.M)
    rc = re.search(r"^exit (\d+)$", text, re.M)
    vals = {}
    if m:
        it = m.group(1).split()
        vals = {it[i]: float(it[i + 1]) for i in range(0, len(it) - 1, 2)}
    return vals, int(rc.group(1)) if rc else None


def main():
    d = sys.argv[1]
    ok, faults = {}, []
    for name in sorted(os.listdir(d)):
        m = re.match(r"ok-(.+)-(fp8|bf16)-s(\d+)\.log$", name)
        f = re.match(r"fault-(.+?)-(tiny-fp8kv|tiny|small)-(fp8|bf16)\.log$", name)
        if m:
            ok.setdefault(f"{m.group(1)} {m.group(2)}", []).append(parse(os.path.join(d, name)))
        elif f:
            faults.append((f.group(1), f"{f.group(2)} {f.group(3)}", *parse(os.path.join(d, name))))
    print("correct kiln, per configuration: min / median / max over seeds (exit statuses)")
    for cfg, runs in ok.items():
        keys = [k for k in runs[0][0]] if runs and runs[0][0] else []
        print(f"{cfg}: {len(runs)} seeds, exits {sorted(set(r[1] for r in runs))}")
        for k in keys:
            xs = [r[0][k] for r in runs if k in r[0]]
            print(f"  {k:15s} {min(xs):.4g} / {statistics.median(xs):.4g} / {max(xs):.4g}")
    print("planted faults (exit under the built-in bounds; 1 = caught)")
    for fault, cfg, vals, rc in faults:
        print(f"{fault:12s} {cfg:12s} exit {rc}  " +
              " ".join(f"{k} {v:.4g}" for k, v in vals.items()))


if __name__ == "__main__":
    main()
