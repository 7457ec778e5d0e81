/* CPU twins of the CUDA kernels: fp32 math with the same FP8 / BF16 rounding points, so a
 * kernel test runs both on the same random inputs and compares. Rounding points, shared by
 * both backends:
 *   - the residual stream and every linear's output are f32;
 *   - an FP8 linear's input is sat_e4m3(x / input_scale) (round to nearest even);
 *   - K and V are stored in the cache's dtype (FP8 as sat_e4m3(k / k_scale), BF16, or F32);
 *   - the lm_head's input is rounded to BF16 when its weight is BF16 (as the GPU GEMM needs);
 *   - RoPE angles come from one host table (kiln_rope_table) that both backends use. */
#ifndef KILN_BACKEND_CPU_OPS_H
#define KILN_BACKEND_CPU_OPS_H

#include <stdint.h>

#include "core/thread.h"
#include "backend/backend.h"
#include "model/model.h"

/* y (n, d) = x (n, d) * rsqrt(mean(x^2) + eps) * w (d,); y may equal x. */
void kiln_cpu_rmsnorm(float *y, const float *x, const struct kiln_tensor *w, float eps, int n,
                      int d);

/* q (n,) = sat_e4m3(x (n,) / scale) */
void kiln_cpu_quant_fp8(uint8_t *q, const float *x, size_t n, float scale);

/* FP8 linear: y (n, out) = (x8 (n, in) . W8 (out, in)) * input_scale * weight_scale, with W8 the
 * group's (requantized) codes. wf (out, in), when not NULL, holds the weights already decoded by
 * kiln_cpu_linear_prepare (same values, faster); else rows are decoded on the fly. */
void kiln_cpu_linear_fp8(struct kiln_pool *pool, float *y, const uint8_t *x8,
                         const struct kiln_linear *l, const float *wf, int n);

/* Unquantized linear: y (n, out) = x (n, in) . W (out, in), W in the checkpoint's dtype (or the
 * dequantized FP8 codes times weight_scale, for calibration). wf as above. */
void kiln_cpu_linear_f32(struct kiln_pool *pool, float *y, const float *x,
                         const struct kiln_linear *l, const float *wf, int n);

/* The weights of l decoded to f32 (out, in): FP8 codes as their values (not scaled), other
 * dtypes converted. Returns NULL when out of memory. */
float *kiln_cpu_linear_prepare(struct kiln_pool *pool, const struct kiln_linear *l);

/* RoPE table: cos_sin (max_pos, Dh/2, 2) f32, angle = pos * inv_freq[i] in f32 with the llama3
 * or linear frequency scaling of the config, as transformers computes it. */
void kiln_rope_table(const struct kiln_config *cfg, int max_pos, float *cos_sin);

/* Rotates x (n, heads, Dh) in place (rotate-half layout of HF Llama) at positions pos (n,). */
void kiln_cpu_rope(float *x, const int32_t *pos, int n, int heads, int head_dim,
                   const float *cos_sin);

/* x[i] rounded to bf16 (nearest even), in place: the q|k|v and gate|up outputs, which the CUDA
 * backend stores as bf16 (half the bytes its RoPE and SwiGLU kernels read back), and a bf16
 * lm_head's input. */
void kiln_cpu_round_bf16(float *x, size_t n);

/* h (n, f) = silu(gu[:, :f]) * gu[:, f:] for gu (n, 2f). */
void kiln_cpu_swiglu(float *h, const float *gu, int n, int f);

/* The paged cache of one layer: k, v (n_blocks, Hkv, block_size, Dh) in dtype. */
struct kiln_cpu_kv_layer {
    void *k, *v;
    enum kiln_dtype dtype;  /* F8E4M3, BF16 or F32 */
    float k_scale, v_scale; /* FP8 only */
    int n_kv_heads, head_dim, block_size;
};

/* Writes k, v (n, Hkv, Dh) of the batch's tokens at their positions (block tables). */
void kiln_cpu_kv_write(const struct kiln_cpu_kv_layer *c, const struct kiln_batch *b,
                       const float *k, const float *v);

/* Causal attention over the paged cache (this step's K/V already written):
 * out (n, H, Dh) = softmax(q k^T / sqrt(Dh)) v, GQA: query head h reads KV head h / (H / Hkv). */
void kiln_cpu_attention(struct kiln_pool *pool, float *out, const float *q,
                        const struct kiln_cpu_kv_layer *c, const struct kiln_batch *b, int n_heads);

#endif
