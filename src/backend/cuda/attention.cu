/* Attention over the paged KV cache.
 *
 * Decode (few query tokens per sequence, possibly long context): flash-decoding. A block owns
 * (split of the context, KV head, sequence) and up to 8 query rows (query tokens x the GQA
 * heads sharing this KV head), so each K/V row is read once for all of them. Lanes split the
 * head dimension; each warp walks a strided subset of the split's positions keeping an online
 * softmax per row; the 4 warps merge through shared memory, then either write the FP8 output
 * (one split) or a partial (m, l, acc) that kiln_cuda_attention_combine merges.
 * Bytes per step: kv_len * Hkv * Dh * 2 * elem per sequence and layer -- at 8K context and batch
 * 1, 512 MB per token for the 8B model, which is why long contexts split over many blocks.
 *
 * Prefill (query chunks of many tokens): FlashAttention-2 on bf16 tensor cores (mma m16n8k16).
 * A block owns 64 query rows of one head (4 warps x 16 rows); K/V tiles of 64 positions are
 * loaded from the cache into shared memory as bf16 (FP8 codes convert exactly; the k/v scales
 * are folded into the softmax scale and the output), V stored transposed so both products read
 * 32-bit pairs. S and P never leave registers. The CPU twin (kiln_cpu_attention) is fp32 with
 * f32 queries; here Q and P are rounded to bf16, so outputs differ by bf16 rounding. */
#include <math.h>

#include "common.cuh"
#include "kernels.h"

#define DEC_THREADS 128
#define DEC_ROWS 8

__device__ __forceinline__ size_t cache_index(const kiln_cuda_kv &kv, const int32_t *table, int p,
                                              int g)
{
    int blk = table[p / kv.block_size];
    return (((size_t)blk * kv.n_kv_heads + g) * kv.block_size + p % kv.block_size) * kv.head_dim;
}

/* DPL dims per lane of a K or V row as floats (codes; scales applied by the caller). */
template <int DPL>
__device__ __forceinline__ void load_dims(const kiln_cuda_kv &kv, const void *base, size_t idx,
                                          int lane, float (&out)[DPL])
{
    if (kv.fp8) {
        const uint8_t *p = static_cast<const uint8_t *>(base) + idx + lane * DPL;
        if constexpr (DPL == 4) {
            float4 f = e4m3x4_to_float4(*reinterpret_cast<const uint32_t *>(p));
            out[0] = f.x, out[1] = f.y, out[2] = f.z, out[3] = f.w;
        } else {
#pragma unroll
            for (int i = 0; i < DPL; i++) out[i] = e4m3x4_to_float4(p[i]).x;
        }
    } else {
        const uint16_t *p = static_cast<const uint16_t *>(base) + idx + lane * DPL;
#pragma unroll
        for (int i = 0; i < DPL; i++) out[i] = bf16_bits_to_float(p[i]);
    }
}

struct dec_geom {
    int s, t0, lq, kv_len, G, rows, row0;
};

__device__ __forceinline__ dec_geom dec_setup(const kiln_cuda_batch &b, const int32_t *seqs,
                                              int n_heads, int n_kv_heads, int max_q)
{
    dec_geom d;
    d.G = n_heads / n_kv_heads;
    int row_groups = (max_q * d.G + DEC_ROWS - 1) / DEC_ROWS;
    int g_and_rg = blockIdx.y;
    d.row0 = (g_and_rg % row_groups) * DEC_ROWS;
    d.s = seqs[blockIdx.z];
    d.t0 = b.seq_start[d.s];
    d.lq = b.seq_start[d.s + 1] - d.t0;
    d.kv_len = b.kv_len[d.s];
    d.rows = min(DEC_ROWS, d.lq * d.G - d.row0);
    return d;
}

template <int DH>
__global__ void __launch_bounds__(DEC_THREADS)
    k_attn_decode(const float *q, kiln_cuda_batch b, const int32_t *seqs, int max_q,
                  kiln_cuda_kv kv, int n_heads, int split_len, float *part, float out_scale,
                  uint8_t *out8)
{
    constexpr int DPL = DH / 32;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int row_groups = (max_q * (n_heads / kv.n_kv_heads) + DEC_ROWS - 1) / DEC_ROWS;
    const int g = blockIdx.y / row_groups;
    dec_geom d = dec_setup(b, seqs, n_heads, kv.n_kv_heads, max_q);
    if (d.rows <= 0) return; /* a padding row group of a shorter sequence: whole block exits */
    const int n_splits = gridDim.x, sp = blockIdx.x;
    const int p_begin = sp * split_len, p_end = min(d.kv_len, p_begin + split_len);
    const int32_t *table = b.block_table + (size_t)d.s * b.max_blocks;
    const float qk_scale = kv.k_scale * rsqrtf((float)DH);

    float qv[DEC_ROWS][DPL], acc[DEC_ROWS][DPL], m[DEC_ROWS], l[DEC_ROWS];
    int qpos[DEC_ROWS];
#pragma unroll
    for (int r = 0; r < DEC_ROWS; r++) {
        int row = d.row0 + r;
        int tq = row / d.G, h = g * d.G + row % d.G;
        bool live = r < d.rows;
        qpos[r] = live ? b.positions[d.t0 + tq] : -1;
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            qv[r][i] = live ? q[((size_t)(d.t0 + tq) * n_heads + h) * DH + lane * DPL + i] : 0.0f;
            acc[r][i] = 0.0f;
        }
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }

    for (int p = p_begin + warp; p < p_end; p += DEC_THREADS / 32) {
        size_t idx = cache_index(kv, table, p, g);
        float kd[DPL], vd[DPL];
        load_dims<DPL>(kv, kv.k, idx, lane, kd);
        load_dims<DPL>(kv, kv.v, idx, lane, vd);
#pragma unroll
        for (int r = 0; r < DEC_ROWS; r++) {
            if (r >= d.rows) break;
            if (p > qpos[r]) continue; /* causal; p and qpos are uniform across the warp */
            float dot = 0.0f;
#pragma unroll
            for (int i = 0; i < DPL; i++) dot += qv[r][i] * kd[i];
            dot = warp_sum(dot);
            float s = dot * qk_scale;
            float m_new = fmaxf(m[r], s);
            float corr = expf(m[r] - m_new), w = expf(s - m_new);
            l[r] = l[r] * corr + w;
#pragma unroll
            for (int i = 0; i < DPL; i++) acc[r][i] = acc[r][i] * corr + w * vd[i];
            m[r] = m_new;
        }
    }

    /* merge the warps: (m, l, acc) per warp and row in shared memory */
    __shared__ float sm_m[4][DEC_ROWS], sm_l[4][DEC_ROWS];
    __shared__ float sm_acc[4][DEC_ROWS][DH];
#pragma unroll
    for (int r = 0; r < DEC_ROWS; r++) {
        if (lane == 0) sm_m[warp][r] = m[r], sm_l[warp][r] = l[r];
#pragma unroll
        for (int i = 0; i < DPL; i++) sm_acc[warp][r][lane * DPL + i] = acc[r][i];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < d.rows * DH; e += DEC_THREADS) {
        int r = e / DH, dim = e % DH;
        float M = fmaxf(fmaxf(sm_m[0][r], sm_m[1][r]), fmaxf(sm_m[2][r], sm_m[3][r]));
        float L = 0.0f, A = 0.0f;
#pragma unroll
        for (int w = 0; w < 4; w++) {
            float f = sm_m[w][r] == -INFINITY ? 0.0f : expf(sm_m[w][r] - M);
            L += sm_l[w][r] * f;
            A += sm_acc[w][r][dim] * f;
        }
        int row = d.row0 + r;
        int tq = row / d.G, h = g * d.G + row % d.G;
        if (n_splits == 1) {
            float o = A / L * kv.v_scale;
            out8[(size_t)(d.t0 + tq) * n_heads * DH + h * DH + dim] = to_e4m3(o * (1.0f / out_scale));
        } else {
            float *pp = part + ((((size_t)blockIdx.z * max_q + tq) * n_heads + h) * n_splits + sp) *
                                   (DH + 2);
            if (dim == 0) pp[0] = M, pp[1] = L;
            pp[2 + dim] = A;
        }
    }
}

template <int DH>
__global__ void k_attn_combine(const float *part, kiln_cuda_batch b, const int32_t *seqs,
                               int max_q, int n_heads, int n_splits, float v_scale,
                               float out_scale, uint8_t *out8)
{
    int item = blockIdx.x; /* (list, tq, h) */
    int h = item % n_heads, tq = (item / n_heads) % max_q, li = item / n_heads / max_q;
    int s = seqs[li];
    int t0 = b.seq_start[s];
    if (tq >= b.seq_start[s + 1] - t0) return;
    const float *pp = part + (((size_t)li * max_q + tq) * n_heads + h) * n_splits * (DH + 2);
    float M = -INFINITY;
    for (int sp = 0; sp < n_splits; sp++) M = fmaxf(M, pp[sp * (DH + 2)]);
    float L = 0.0f, A = 0.0f;
    for (int sp = 0; sp < n_splits; sp++) {
        const float *e = pp + sp * (DH + 2);
        float f = e[0] == -INFINITY ? 0.0f : expf(e[0] - M);
        L += e[1] * f;
        A += e[2 + threadIdx.x] * f;
    }
    float o = A / L * v_scale;
    out8[(size_t)(t0 + tq) * n_heads * DH + h * DH + threadIdx.x] = to_e4m3(o * (1.0f / out_scale));
}

extern "C" long kiln_cuda_attention_part_floats(int n_list, int max_q_per_seq, int n_heads,
                                                int head_dim, int n_splits)
{
    return (long)n_list * max_q_per_seq * n_heads * n_splits * (head_dim + 2);
}

extern "C" int kiln_cuda_attention_decode(const float *q, struct kiln_cuda_batch b,
                                          const int32_t *seqs, int n_list, int max_q_per_seq,
                                          struct kiln_cuda_kv kv, int n_heads, int n_splits,
                                          int split_len, float *part, float out_scale,
                                          uint8_t *out8, kiln_stream stream)
{
    int G = n_heads / kv.n_kv_heads;
    int row_groups = (max_q_per_seq * G + DEC_ROWS - 1) / DEC_ROWS;
    dim3 grid(n_splits, kv.n_kv_heads * row_groups, n_list);
    if (kv.head_dim == 128)
        k_attn_decode<128><<<grid, DEC_THREADS, 0, stream>>>(
            q, b, seqs, max_q_per_seq, kv, n_heads, split_len, part, out_scale, out8);
    else if (kv.head_dim == 64)
        k_attn_decode<64><<<grid, DEC_THREADS, 0, stream>>>(
            q, b, seqs, max_q_per_seq, kv, n_heads, split_len, part, out_scale, out8);
    else return cudaErrorInvalidValue;
    return cudaGetLastError();
}

extern "C" int kiln_cuda_attention_combine(const float *part, struct kiln_cuda_batch b,
                                           const int32_t *seqs, int n_list, int max_q_per_seq,
                                           int n_heads, int head_dim, int n_splits, float v_scale,
                                           float out_scale, uint8_t *out8, kiln_stream stream)
{
    unsigned grid = (unsigned)(n_list * max_q_per_seq * n_heads);
    if (head_dim == 128)
        k_attn_combine<128><<<grid, 128, 0, stream>>>(part, b, seqs, max_q_per_seq, n_heads,
                                                       n_splits, v_scale, out_scale, out8);
    else if (head_dim == 64)
        k_attn_combine<64><<<grid, 64, 0, stream>>>(part, b, seqs, max_q_per_seq, n_heads,
                                                     n_splits, v_scale, out_scale, out8);
    else return cudaErrorInvalidValue;
    return cudaGetLastError();
}

/* ---- prefill: FlashAttention-2 on bf16 mma ---- */

#define FA_ROWS 64
#define FA_KEYS 64
#define FA_THREADS 128

template <int DH>
__global__ void __launch_bounds__(FA_THREADS)
    k_attn_prefill(const float *q, kiln_cuda_batch b, const int32_t *seqs, kiln_cuda_kv kv,
                   int n_heads, float out_scale, uint8_t *out8)
{
    constexpr int KS = DH / 16;  /* k-steps over the head dim */
    constexpr int DT = DH / 8;   /* 8-wide n-tiles over the head dim */
    constexpr int KLD = DH + 8;  /* padded row of Ks (bf16 elements) */
    constexpr int VLD = FA_KEYS + 8;
    __shared__ __align__(16) uint16_t Ks[FA_KEYS * KLD];
    __shared__ __align__(16) uint16_t Vt[DH * VLD];

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int gq = lane >> 2, qd = lane & 3;
    const int h = blockIdx.y, s = seqs[blockIdx.z];
    const int t0 = b.seq_start[s], lq = b.seq_start[s + 1] - t0;
    const int qt0 = blockIdx.x * FA_ROWS;
    if (qt0 >= lq) return;
    const int p0 = b.positions[t0];
    const int kv_g = h / (n_heads / kv.n_kv_heads);
    const int32_t *table = b.block_table + (size_t)s * b.max_blocks;
    const int key_end = min(b.kv_len[s], p0 + min(qt0 + FA_ROWS, lq));
    const float scale_log2 = kv.k_scale * rsqrtf((float)DH) * 1.4426950408889634f;

    /* this warp's 16 rows: r_lo = qt0 + 16 warp + gq, r_hi = r_lo + 8 */
    const int r_lo = qt0 + warp * 16 + gq, r_hi = r_lo + 8;
    uint32_t qf[KS][4];
#pragma unroll
    for (int ks = 0; ks < KS; ks++) {
        const float *ql = q + ((size_t)(t0 + r_lo) * n_heads + h) * DH + ks * 16 + 2 * qd;
        const float *qh = q + ((size_t)(t0 + r_hi) * n_heads + h) * DH + ks * 16 + 2 * qd;
        bool vl = r_lo < lq, vh = r_hi < lq;
        qf[ks][0] = vl ? pack_bf16x2(ql[0], ql[1]) : 0u;
        qf[ks][1] = vh ? pack_bf16x2(qh[0], qh[1]) : 0u;
        qf[ks][2] = vl ? pack_bf16x2(ql[8], ql[9]) : 0u;
        qf[ks][3] = vh ? pack_bf16x2(qh[8], qh[9]) : 0u;
    }
    const int qpos_lo = p0 + r_lo, qpos_hi = p0 + r_hi;

    float o[DT][4];
#pragma unroll
    for (int i = 0; i < DT; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.0f, l_hi = 0.0f;

    for (int k0 = 0; k0 < key_end; k0 += FA_KEYS) {
        __syncthreads();
        /* load K and V rows [k0, k0 + 64) as bf16, 16 elements per item */
        for (int c = threadIdx.x; c < FA_KEYS * (DH / 16); c += FA_THREADS) {
            int key = c / (DH / 16), d0 = (c % (DH / 16)) * 16, p = k0 + key;
            uint16_t kb[16], vb[16];
            if (p < key_end) {
                size_t idx = cache_index(kv, table, p, kv_g) + d0;
                if (kv.fp8) {
                    uint4 kw = *reinterpret_cast<const uint4 *>(static_cast<const uint8_t *>(kv.k) + idx);
                    uint4 vw = *reinterpret_cast<const uint4 *>(static_cast<const uint8_t *>(kv.v) + idx);
                    uint32_t kk[4] = {kw.x, kw.y, kw.z, kw.w}, vv[4] = {vw.x, vw.y, vw.z, vw.w};
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        float4 fk = e4m3x4_to_float4(kk[j]), fv = e4m3x4_to_float4(vv[j]);
                        kb[4 * j] = float_to_bf16_bits(fk.x), kb[4 * j + 1] = float_to_bf16_bits(fk.y);
                        kb[4 * j + 2] = float_to_bf16_bits(fk.z), kb[4 * j + 3] = float_to_bf16_bits(fk.w);
                        vb[4 * j] = float_to_bf16_bits(fv.x), vb[4 * j + 1] = float_to_bf16_bits(fv.y);
                        vb[4 * j + 2] = float_to_bf16_bits(fv.z), vb[4 * j + 3] = float_to_bf16_bits(fv.w);
                    }
                } else {
                    const uint16_t *kp = static_cast<const uint16_t *>(kv.k) + idx;
                    const uint16_t *vp = static_cast<const uint16_t *>(kv.v) + idx;
#pragma unroll
                    for (int j = 0; j < 16; j++) kb[j] = kp[j], vb[j] = vp[j];
                }
            } else {
#pragma unroll
                for (int j = 0; j < 16; j++) kb[j] = vb[j] = 0;
            }
#pragma unroll
            for (int j = 0; j < 16; j++) {
                Ks[key * KLD + d0 + j] = kb[j];
                Vt[(d0 + j) * VLD + key] = vb[j];
            }
        }
        __syncthreads();

        /* S (16 x 64) = Q K^T for this warp's rows */
        float sc[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
            const uint16_t *kr = Ks + (nt * 8 + gq) * KLD + 2 * qd;
#pragma unroll
            for (int ks = 0; ks < KS; ks++) {
                uint32_t b0 = *reinterpret_cast<const uint32_t *>(kr + ks * 16);
                uint32_t b1 = *reinterpret_cast<const uint32_t *>(kr + ks * 16 + 8);
                mma_bf16_16x8x16(sc[nt], qf[ks], b0, b1);
            }
        }
        /* scale, causal mask, tile row max */
        float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
#pragma unroll
            for (int c = 0; c < 4; c++) {
                int key = k0 + nt * 8 + 2 * qd + (c & 1);
                int qp = c < 2 ? qpos_lo : qpos_hi;
                float v = (key <= qp && key < key_end) ? sc[nt][c] * scale_log2 : -INFINITY;
                sc[nt][c] = v;
                if (c < 2) mx_lo = fmaxf(mx_lo, v);
                else mx_hi = fmaxf(mx_hi, v);
            }
        }
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
        float mn_lo = fmaxf(m_lo, mx_lo), mn_hi = fmaxf(m_hi, mx_hi);
        float base_lo = mn_lo == -INFINITY ? 0.0f : mn_lo;
        float base_hi = mn_hi == -INFINITY ? 0.0f : mn_hi;
        float corr_lo = exp2f(m_lo - base_lo), corr_hi = exp2f(m_hi - base_hi);
        m_lo = mn_lo, m_hi = mn_hi;
        float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            sc[nt][0] = exp2f(sc[nt][0] - base_lo), sc[nt][1] = exp2f(sc[nt][1] - base_lo);
            sc[nt][2] = exp2f(sc[nt][2] - base_hi), sc[nt][3] = exp2f(sc[nt][3] - base_hi);
            sum_lo += sc[nt][0] + sc[nt][1];
            sum_hi += sc[nt][2] + sc[nt][3];
        }
        l_lo = l_lo * corr_lo + sum_lo;
        l_hi = l_hi * corr_hi + sum_hi;
#pragma unroll
        for (int i = 0; i < DT; i++) {
            o[i][0] *= corr_lo, o[i][1] *= corr_lo;
            o[i][2] *= corr_hi, o[i][3] *= corr_hi;
        }
        /* O += P V: P's accumulator layout is the A-fragment layout of the next mma */
#pragma unroll
        for (int kt = 0; kt < 4; kt++) {
            uint32_t pa[4] = {pack_bf16x2(sc[2 * kt][0], sc[2 * kt][1]),
                              pack_bf16x2(sc[2 * kt][2], sc[2 * kt][3]),
                              pack_bf16x2(sc[2 * kt + 1][0], sc[2 * kt + 1][1]),
                              pack_bf16x2(sc[2 * kt + 1][2], sc[2 * kt + 1][3])};
#pragma unroll
            for (int dt = 0; dt < DT; dt++) {
                const uint16_t *vr = Vt + (dt * 8 + gq) * VLD + kt * 16 + 2 * qd;
                uint32_t b0 = *reinterpret_cast<const uint32_t *>(vr);
                uint32_t b1 = *reinterpret_cast<const uint32_t *>(vr + 8);
                mma_bf16_16x8x16(o[dt], pa, b0, b1);
            }
        }
    }

    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
    const float inv_out = 1.0f / out_scale;
    const float f_lo = kv.v_scale / l_lo, f_hi = kv.v_scale / l_hi;
#pragma unroll
    for (int dt = 0; dt < DT; dt++) {
        int dim = dt * 8 + 2 * qd;
        if (r_lo < lq) {
            uint8_t *dst = out8 + (size_t)(t0 + r_lo) * n_heads * DH + h * DH + dim;
            dst[0] = to_e4m3(o[dt][0] * f_lo * inv_out);
            dst[1] = to_e4m3(o[dt][1] * f_lo * inv_out);
        }
        if (r_hi < lq) {
            uint8_t *dst = out8 + (size_t)(t0 + r_hi) * n_heads * DH + h * DH + dim;
            dst[0] = to_e4m3(o[dt][2] * f_hi * inv_out);
            dst[1] = to_e4m3(o[dt][3] * f_hi * inv_out);
        }
    }
}

extern "C" int kiln_cuda_attention_prefill(const float *q, struct kiln_cuda_batch b,
                                           const int32_t *seqs, int n_list, int max_q,
                                           struct kiln_cuda_kv kv, int n_heads, float out_scale,
                                           uint8_t *out8, kiln_stream stream)
{
    dim3 grid((max_q + FA_ROWS - 1) / FA_ROWS, n_heads, n_list);
    if (kv.head_dim == 128)
        k_attn_prefill<128><<<grid, FA_THREADS, 0, stream>>>(q, b, seqs, kv, n_heads, out_scale, out8);
    else if (kv.head_dim == 64)
        k_attn_prefill<64><<<grid, FA_THREADS, 0, stream>>>(q, b, seqs, kv, n_heads, out_scale, out8);
    else return cudaErrorInvalidValue;
    return cudaGetLastError();
}
