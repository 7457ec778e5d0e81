#!/usr/bin/env python3
"""Compares logits kiln wrote (`kiln generate --dump-logits`) with the PyTorch simulation of
kiln's FP8 math (make_fixtures.Sim) on the same checkpoint, on the GPU when there is one.

usage: compare_logits.py MODEL_DIR IDS(comma-separated) LOGITS.bin [OUT.json]
Prints, over every prompt position: relative L2 error per position (median, worst), the worst
absolute difference, and argmax agreement."""
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
    V = ref.shape[1]
    got = np.fromfile(path, dtype=np.float32).reshape(-1, V)
    assert got.shape[0] == len(ids), (got.shape, len(ids))
    rel = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
    agree = float(np.mean(got.argmax(1) == ref.argmax(1)))
    res = {"positions": len(ids), "rel_l2_median": float(np.median(rel)),
           "rel_l2_worst": float(rel.max()), "max_abs": float(np.abs(got - ref).max()),
           "argmax_agreement": agree, "kv_dtype": kv, "device": dev}
    print(json.dumps(res))
    if len(sys.argv) > 4:
        json.dump(res, open(sys.argv[4], "w"))


if __name__ == "__main__":
    main()
