/* Attention over the paged KV cache.
 *
 * Decode (few query tokens per sequence, possibly long context): flash-decoding. A block owns
 * (split of the context, KV head, sequence) and up to 8 query rows (query tokens x the GQA
 * heads sharing this KV head), so each K/V row is read once for all of them. Lanes split the
 * split into rounds of 32 positions per warp: one lane per position computes the scores of all
 * rows (q broadcast from shared memory), the round's softmax weights go through shared memory,
 * and one lane per 4 dims accumulates V; the 8 warps merge through shared memory, then either write
 * the FP8 output (one split) or a partial (m, l, acc) that kiln_cuda_attention_combine merges.
 * Bytes per step: kv_len * Hkv * Dh * 2 * elem per sequence and layer -- at 8K context and batch
 * 1, 512 MB per token for the 8B model, which is why long contexts split over many blocks.
 *
 * Prefill (query chunks of many tokens): FlashAttention-2 on bf16 tensor cores (mma m16n8k16).
 * A block owns 64 query rows of one head (4 warps x 16 rows); K/V tiles of 64 positions are
 * loaded from the cache into shared memory as bf16 (FP8 codes convert exactly; the k/v scales
 * are folded into the softmax scale and the output); V's fragments come transposed through
 * ldmatrix. S and P never leave registers. Q and P are each split into bf16 hi + lo and both
 * halves multiplied, so the products carry ~16 bits: with plain bf16 Q and P the outputs were
 * 1e-2 away from the f32 CPU twin and every FP8 rounding flip they caused grew through the
 * layers (2-5% logit error after one layer); the split costs 2x tensor-core work. */
#include <math.h>

#include "common.cuh"
#include "kernels.h"

#define DEC_THREADS 256
#define DEC_WARPS   (DEC_THREADS / 32)
#define DEC_ROWS    8

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
    __shared__ float qs[DEC_ROWS][DH];
    __shared__ float ps[DEC_WARPS][DEC_ROWS][32];
    __shared__ float sm_m[DEC_WARPS][DEC_ROWS], sm_l[DEC_WARPS][DEC_ROWS];
    __shared__ float sm_acc[DEC_WARPS][DEC_ROWS][DH];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int row_groups = (max_q * (n_heads / kv.n_kv_heads) + DEC_ROWS - 1) / DEC_ROWS;
    const int g = blockIdx.y / row_groups;
    dec_geom d = dec_setup(b, seqs, n_heads, kv.n_kv_heads, max_q);
    if (d.rows <= 0) return; /* a padding row group of a shorter sequence: whole block exits */
    const int n_splits = gridDim.x, sp = blockIdx.x;
    const int p_begin = sp * split_len, p_end = min(d.kv_len, p_begin + split_len);
    const int32_t *table = b.block_table + (size_t)d.s * b.max_blocks;
    const float qk_scale = kv.k_scale * rsqrtf((float)DH);

    int qpos[DEC_ROWS];
#pragma unroll
    for (int r = 0; r < DEC_ROWS; r++) {
        int row = d.row0 + r, tq = row / d.G;
        qpos[r] = r < d.rows ? b.positions[d.t0 + tq] : -1;
    }
    for (int e = threadIdx.x; e < DEC_ROWS * DH; e += DEC_THREADS) {
        int r = e / DH, dim = e % DH, row = d.row0 + r;
        int tq = row / d.G, h = g * d.G + row % d.G;
        qs[r][dim] = r < d.rows ? q[((size_t)(d.t0 + tq) * n_heads + h) * DH + dim] : 0.0f;
    }
    __syncthreads();

    float acc[DEC_ROWS][DPL], m[DEC_ROWS], l[DEC_ROWS];
#pragma unroll
    for (int r = 0; r < DEC_ROWS; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < DPL; i++) acc[r][i] = 0.0f;
    }

    /* rounds of 32 positions per warp: scores with one lane per position (a whole K row per
     * lane, q broadcast from shared memory, no shuffles), then the softmax weights go through
     * shared memory to the V pass, which has one lane per 4 dims (coalesced V rows). */
    for (int base = p_begin + warp * 32; base < p_end; base += DEC_THREADS) {
        const int p = base + lane;
        const bool live = p < p_end;
        float sc[DEC_ROWS];
#pragma unroll
        for (int r = 0; r < DEC_ROWS; r++) sc[r] = 0.0f;
        if (live) {
            size_t idx = cache_index(kv, table, p, g);
            if (kv.fp8) {
                const uint4 *kr =
                    reinterpret_cast<const uint4 *>(static_cast<const uint8_t *>(kv.k) + idx);
                uint4 kw[DH / 16];
#pragma unroll
                for (int c = 0; c < DH / 16; c++) kw[c] = kr[c];
#pragma unroll
                for (int c = 0; c < DH / 16; c++) {
                    uint32_t words[4] = {kw[c].x, kw[c].y, kw[c].z, kw[c].w};
#pragma unroll
                    for (int wi = 0; wi < 4; wi++) {
                        float4 f = e4m3x4_to_float4(words[wi]);
                        int d0 = c * 16 + wi * 4;
#pragma unroll
                        for (int r = 0; r < DEC_ROWS; r++)
                            sc[r] += qs[r][d0] * f.x + qs[r][d0 + 1] * f.y + qs[r][d0 + 2] * f.z +
                                     qs[r][d0 + 3] * f.w;
                    }
                }
            } else {
                const uint4 *kr =
                    reinterpret_cast<const uint4 *>(static_cast<const uint16_t *>(kv.k) + idx);
#pragma unroll 4
                for (int c = 0; c < DH / 8; c++) {
                    uint4 kw = kr[c];
                    uint32_t words[4] = {kw.x, kw.y, kw.z, kw.w};
#pragma unroll
                    for (int wi = 0; wi < 4; wi++) {
                        float lo = bf16_bits_to_float(words[wi] & 0xffff),
                              hi = bf16_bits_to_float(words[wi] >> 16);
                        int d0 = c * 8 + wi * 2;
#pragma unroll
                        for (int r = 0; r < DEC_ROWS; r++)
                            sc[r] += qs[r][d0] * lo + qs[r][d0 + 1] * hi;
                    }
                }
            }
        }
        const int n_live = min(32, p_end - base);
#pragma unroll
        for (int r = 0; r < DEC_ROWS; r++) {
            if (r >= d.rows) break;
            float s = live && p <= qpos[r] ? sc[r] * qk_scale : -INFINITY;
            float m_tile = warp_max(s);
            float m_new = fmaxf(m[r], m_tile);
            float base_m = m_new == -INFINITY ? 0.0f : m_new;
            float w = expf(s - base_m);
            float corr = expf(m[r] - base_m);
            l[r] = l[r] * corr + warp_sum(w);
            m[r] = m_new;
#pragma unroll
            for (int i = 0; i < DPL; i++) acc[r][i] *= corr;
            ps[warp][r][lane] = w;
        }
        __syncwarp();
        for (int j0 = 0; j0 < n_live; j0 += 8) {
            float vd[8][DPL];
#pragma unroll
            for (int u = 0; u < 8; u++)
                if (j0 + u < n_live)
                    load_dims<DPL>(kv, kv.v, cache_index(kv, table, base + j0 + u, g), lane, vd[u]);
#pragma unroll
            for (int u = 0; u < 8; u++) {
                if (j0 + u >= n_live) break;
#pragma unroll
                for (int r = 0; r < DEC_ROWS; r++) {
                    if (r >= d.rows) break;
                    float w = ps[warp][r][j0 + u];
#pragma unroll
                    for (int i = 0; i < DPL; i++) acc[r][i] += w * vd[u][i];
                }
            }
        }
        __syncwarp();
    }

    /* merge the warps: (m, l, acc) per warp and row in shared memory */
#pragma unroll
    for (int r = 0; r < DEC_ROWS; r++) {
        if (lane == 0) sm_m[warp][r] = m[r], sm_l[warp][r] = l[r];
#pragma unroll
        for (int i = 0; i < DPL; i++) sm_acc[warp][r][lane * DPL + i] = acc[r][i];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < d.rows * DH; e += DEC_THREADS) {
        int r = e / DH, dim = e % DH;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; w++) M = fmaxf(M, sm_m[w][r]);
        float L = 0.0f, A = 0.0f;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; w++) {
            float f = sm_m[w][r] == -INFINITY ? 0.0f : expf(sm_m[w][r] - M);
            L += sm_l[w][r] * f;
            A += sm_acc[w][r][dim] * f;
        }
        int row = d.row0 + r;
        int tq = row / d.G, h = g * d.G + row % d.G;
        if (n_splits == 1) {
            float o = A / L * kv.v_scale;
            out8[(size_t)(d.t0 + tq) * n_heads * DH + h * DH + dim] =
                to_e4m3(o * (1.0f / out_scale));
        } else {
            float *pp = part + ((((size_t)blockIdx.z * max_q + tq) * n_heads + h) * n_splits + sp) *
                                   (DH + 2);
            if (dim == 0) pp[0] = M, pp[1] = L;
            pp[2 + dim] = A;
        }
    }
}

template <int DH>
__global__ void k_attn_combine(const float *part, kiln_cuda_batch b, const int32_t *seqs, int max_q,
                               int n_heads, int n_splits, float v_scale, float out_scale,
                               uint8_t *out8)
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
        k_attn_decode<128><<<grid, DEC_THREADS, 0, stream>>>(q, b, seqs, max_q_per_seq, kv, n_heads,
                                                             split_len, part, out_scale, out8);
    else if (kv.head_dim == 64)
        k_attn_decode<64><<<grid, DEC_THREADS, 0, stream>>>(q, b, seqs, max_q_per_seq, kv, n_heads,
                                                            split_len, part, out_scale, out8);
    else
        return cudaErrorInvalidValue;
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
        k_attn_combine<64><<<grid, 64, 0, stream>>>(part, b, seqs, max_q_per_seq, n_heads, n_splits,
                                                    v_scale, out_scale, out8);
    else
        return cudaErrorInvalidValue;
    return cudaGetLastError();
}

/* ---- prefill: FlashAttention-2 on bf16 mma ---- */

#define FA_ROWS    64
#define FA_KEYS    64
#define FA_THREADS 128

/* Splits x into bf16 hi + lo (x - hi rounded again): hi + lo carries ~16 significant bits,
 * so two bf16 products approximate one f32 product to ~1e-5. */
__device__ __forceinline__ void split_bf16x2(float a, float b, uint32_t &hi, uint32_t &lo)
{
    hi = pack_bf16x2(a, b);
    float ah = bf16_bits_to_float(hi & 0xffff), bh = bf16_bits_to_float(hi >> 16);
    lo = pack_bf16x2(a - ah, b - bh);
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void *smem_row)
{
    unsigned addr = (unsigned)__cvta_generic_to_shared(smem_row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

/* 16 cache elements (FP8 codes or bf16) at src -> 16 bf16 (exact) as two 16-byte words. */
__device__ __forceinline__ void load16_bf16(const kiln_cuda_kv &kv, const void *base, size_t idx,
                                            uint4 &lo, uint4 &hi)
{
    if (kv.fp8) {
        uint4 w = *reinterpret_cast<const uint4 *>(static_cast<const uint8_t *>(base) + idx);
        float4 a = e4m3x4_to_float4(w.x), b = e4m3x4_to_float4(w.y);
        float4 c = e4m3x4_to_float4(w.z), d = e4m3x4_to_float4(w.w);
        lo = make_uint4(pack_bf16x2(a.x, a.y), pack_bf16x2(a.z, a.w), pack_bf16x2(b.x, b.y),
                        pack_bf16x2(b.z, b.w));
        hi = make_uint4(pack_bf16x2(c.x, c.y), pack_bf16x2(c.z, c.w), pack_bf16x2(d.x, d.y),
                        pack_bf16x2(d.z, d.w));
    } else {
        const uint4 *p = reinterpret_cast<const uint4 *>(static_cast<const uint16_t *>(base) + idx);
        lo = p[0];
        hi = p[1];
    }
}

template <int DH>
__global__ void __launch_bounds__(FA_THREADS)
    k_attn_prefill(const float *q, kiln_cuda_batch b, const int32_t *seqs, kiln_cuda_kv kv,
                   int n_heads, float out_scale, uint8_t *out8)
{
    constexpr int KS = DH / 16; /* k-steps over the head dim */
    constexpr int DT = DH / 8;  /* 8-wide n-tiles over the head dim */
    constexpr int LD = DH + 8;  /* padded row (bf16 elements) of Ks and Vs */
    __shared__ __align__(16) uint16_t Ks[FA_KEYS * LD];
    __shared__ __align__(16) uint16_t Vs[FA_KEYS * LD];

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

    /* this warp's 16 rows: r_lo = qt0 + 16 warp + gq, r_hi = r_lo + 8; Q as bf16 hi + lo */
    const int r_lo = qt0 + warp * 16 + gq, r_hi = r_lo + 8;
    uint32_t qh[KS][4], ql[KS][4];
#pragma unroll
    for (int ks = 0; ks < KS; ks++) {
        const float *pl = q + ((size_t)(t0 + r_lo) * n_heads + h) * DH + ks * 16 + 2 * qd;
        const float *ph = q + ((size_t)(t0 + r_hi) * n_heads + h) * DH + ks * 16 + 2 * qd;
        bool vl = r_lo < lq, vh = r_hi < lq;
        split_bf16x2(vl ? pl[0] : 0.0f, vl ? pl[1] : 0.0f, qh[ks][0], ql[ks][0]);
        split_bf16x2(vh ? ph[0] : 0.0f, vh ? ph[1] : 0.0f, qh[ks][1], ql[ks][1]);
        split_bf16x2(vl ? pl[8] : 0.0f, vl ? pl[9] : 0.0f, qh[ks][2], ql[ks][2]);
        split_bf16x2(vh ? ph[8] : 0.0f, vh ? ph[9] : 0.0f, qh[ks][3], ql[ks][3]);
    }
    const int qpos_lo = p0 + r_lo, qpos_hi = p0 + r_hi;

    float o[DT][4];
#pragma unroll
    for (int i = 0; i < DT; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.0f, l_hi = 0.0f;

    for (int k0 = 0; k0 < key_end; k0 += FA_KEYS) {
        __syncthreads();
        /* K and V rows [k0, k0 + 64) as bf16 (row-major), 16 elements per item */
        for (int c = threadIdx.x; c < FA_KEYS * (DH / 16); c += FA_THREADS) {
            int key = c / (DH / 16), d0 = (c % (DH / 16)) * 16, p = k0 + key;
            uint4 klo = make_uint4(0, 0, 0, 0), khi = klo, vlo = klo, vhi = klo;
            if (p < key_end) {
                size_t idx = cache_index(kv, table, p, kv_g) + d0;
                load16_bf16(kv, kv.k, idx, klo, khi);
                load16_bf16(kv, kv.v, idx, vlo, vhi);
            }
            *reinterpret_cast<uint4 *>(Ks + key * LD + d0) = klo;
            *reinterpret_cast<uint4 *>(Ks + key * LD + d0 + 8) = khi;
            *reinterpret_cast<uint4 *>(Vs + key * LD + d0) = vlo;
            *reinterpret_cast<uint4 *>(Vs + key * LD + d0 + 8) = vhi;
        }
        __syncthreads();

        /* S (16 x 64) = Q K^T for this warp's rows, as Qhi K + Qlo K */
        float sc[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
            const uint16_t *kr = Ks + (nt * 8 + gq) * LD + 2 * qd;
#pragma unroll
            for (int ks = 0; ks < KS; ks++) {
                uint32_t b0 = *reinterpret_cast<const uint32_t *>(kr + ks * 16);
                uint32_t b1 = *reinterpret_cast<const uint32_t *>(kr + ks * 16 + 8);
                mma_bf16_16x8x16(sc[nt], qh[ks], b0, b1);
                mma_bf16_16x8x16(sc[nt], ql[ks], b0, b1);
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
                if (c < 2)
                    mx_lo = fmaxf(mx_lo, v);
                else
                    mx_hi = fmaxf(mx_hi, v);
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
        /* O += P V with P as bf16 hi + lo; P's accumulator layout is the A-fragment layout of the
         * next mma; V's B fragments come transposed from row-major Vs through ldmatrix */
#pragma unroll
        for (int kt = 0; kt < 4; kt++) {
            uint32_t ph[4], pl[4];
            split_bf16x2(sc[2 * kt][0], sc[2 * kt][1], ph[0], pl[0]);
            split_bf16x2(sc[2 * kt][2], sc[2 * kt][3], ph[1], pl[1]);
            split_bf16x2(sc[2 * kt + 1][0], sc[2 * kt + 1][1], ph[2], pl[2]);
            split_bf16x2(sc[2 * kt + 1][2], sc[2 * kt + 1][3], ph[3], pl[3]);
            const int key_row = kt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
            for (int dt = 0; dt < DT; dt += 2) {
                uint32_t vb[4];
                ldmatrix_x4_trans(vb, Vs + key_row * LD + (dt + (lane >> 4)) * 8);
                mma_bf16_16x8x16(o[dt], ph, vb[0], vb[1]);
                mma_bf16_16x8x16(o[dt], pl, vb[0], vb[1]);
                mma_bf16_16x8x16(o[dt + 1], ph, vb[2], vb[3]);
                mma_bf16_16x8x16(o[dt + 1], pl, vb[2], vb[3]);
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
        k_attn_prefill<128>
            <<<grid, FA_THREADS, 0, stream>>>(q, b, seqs, kv, n_heads, out_scale, out8);
    else if (kv.head_dim == 64)
        k_attn_prefill<64>
            <<<grid, FA_THREADS, 0, stream>>>(q, b, seqs, kv, n_heads, out_scale, out8);
    else
        return cudaErrorInvalidValue;
    return cudaGetLastError();
}
