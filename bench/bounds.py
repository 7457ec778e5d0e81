#!/usr/bin/env python3
"""Physical bounds of the nine throughput points of issue 16 (Llama-3.1-8B, FP8 weights and KV).

For each ISL/OSL: the time per output token if every GEMM ran at the measured FP8 GEMM peak and
every byte of decode KV and weights streamed at the measured read bandwidth, with nothing else
(no norms, no sampling, no host work) and no overlap of compute with memory inside a step: what a
step that runs its GEMMs, then its attention, can at best do. The batch is what a 1.0M-token KV
pool holds at mean occupancy (prompt + half the output), at most 2048. Printed against
TensorRT-LLM's best published figure and kiln's best measured one (bench/RESULTS.md).
  bench/bounds.py [BANDWIDTH_GBs GEMM_TFLOPs]     (defaults: the H100 session-14 measurements)
"""
import sys

L, d, f, V, nh, nkv, hd = 32, 4096, 14336, 128256, 32, 8, 128
lin = L * (d * (nh + 2 * nkv) * hd + nh * hd * d + d * 2 * f + f * d)  # linear weights
gemm_tok = 2 * lin  # FLOPs of every layer's GEMMs, per token
head_tok = 2 * d * V  # lm_head, per output token
w_bytes = lin + V * d * 2  # FP8 linear weights + bf16 lm_head, read once a decode step
kv_pos = L * 2 * nkv * hd  # FP8 KV bytes per position
BW = float(sys.argv[1]) * 1e9 if len(sys.argv) > 1 else 3155e9
PEAK = float(sys.argv[2]) * 1e12 if len(sys.argv) > 2 else 1570e12
POOL = 1.0e6


def attn_prefill(n):  # QK^T and PV of a causal prefill of n tokens
    return 4 * nh * hd * L * n * (n + 1) / 2


# ISL, OSL, TRT-LLM best (perf-overview v0.17 / v1.0), kiln best (bench/RESULTS.md, H100)
rows = [(128, 128, 28837, 27092), (128, 2048, 22714, 19552), (128, 4096, 14325, 12799),
        (500, 2000, 17660, 16514), (1000, 1000, 15245, 13634), (2048, 128, 3557, 2943),
        (2048, 2048, 9488, 8598), (5000, 500, 3559, 2889), (20000, 2000, 1401, 1078)]
print(f"bandwidth {BW / 1e9:.0f} GB/s, FP8 GEMM {PEAK / 1e12:.0f} TFLOP/s; us per output token")
print("ISL/OSL     batch  prefill  gemm+w   KV read   bound tok/s   TRT-LLM  kiln   "
      "TRT/bound  1.1xTRT/bound  kiln/bound")
for isl, osl, trt, kiln in rows:
    B = min(2048, int(POOL / (isl + osl / 2)))
    pre = (isl * gemm_tok + attn_prefill(isl)) / PEAK / osl
    dec = max(B * (gemm_tok + head_tok) / PEAK, w_bytes / BW) / B
    kv = (isl + osl / 2) * kv_pos / BW
    t = pre + dec + kv
    print(f"{isl:>5}/{osl:<5} {B:5d} {pre * 1e6:8.1f} {dec * 1e6:8.1f} {kv * 1e6:9.1f} {1 / t:11.0f} "
          f"{trt:9d} {kiln:6d} {trt * t:9.0%} {1.1 * trt * t:12.0%} {kiln * t:11.0%}")
