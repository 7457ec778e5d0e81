#!/usr/bin/env python3
"""Compares logits kiln wrote (`kiln generate --dump-logits`) with the PyTorch simulation of
kiln's FP8 math (make_fixtures.Sim) on the same checkpoint, on the GPU when there is one.

usage: compare_logits.py MODEL_DIR IDS(comma-separated) LOGITS.bin [OUT.json]
Prints, over every prompt position: relative L2 error per position (median, worst), the worst
absolute difference, and argmax agreement -- and, as the yardstick, the same figures between
the simulation and itself with every linear output perturbed by 2.5e-4 relative noise (the
accumulation error measured for cuBLASLt's FP8 GEMM on Hopper): FP8 re-quantization amplifies
any such difference to the same "FP8 noise" level."""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import Sim, load_dir  # noqa: E402

torch.set_grad_enabled(False)


def main():
    model_dir, ids, path = sys.argv[1], [int(x) for x in sys.argv[2].split(",")], sys.argv[3]
    cfg, quant, sd, _ = load_dir(model_dir)
    kv = "fp8" if quant and quant.get("kv_cache_quant_algo") == "FP8" else "bf16"
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    sim = Sim(cfg, quant, sd, kv, dev)
    del sd
    ref = sim.forward(ids).float().cpu().numpy()
    torch.manual_seed(0)
    sim.gemm_noise = 2.5e-4
    noisy = sim.forward(ids).float().cpu().numpy()
    V = ref.shape[1]
    got = np.fromfile(path, dtype=np.float32).reshape(-1, V)
    assert got.shape[0] == len(ids), (got.shape, len(ids))

    def stats(a):
        rel = np.linalg.norm(a - ref, axis=1) / np.linalg.norm(ref, axis=1)
        return {"rel_l2_median": float(np.median(rel)), "rel_l2_worst": float(rel.max()),
                "argmax_agreement": float(np.mean(a.argmax(1) == ref.argmax(1)))}

    res = {"positions": len(ids), "kv_dtype": kv, "device": dev, "kiln_vs_sim": stats(got),
           "sim_2.5e-4_noise_vs_sim": stats(noisy)}
    print(json.dumps(res))
    if len(sys.argv) > 4:
        json.dump(res, open(sys.argv[4], "w"))


if __name__ == "__main__":
    main()
