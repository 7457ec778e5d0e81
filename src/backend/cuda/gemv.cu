/* Skinny GEMM (n <= 8 tokens) on the tensor cores: the batch-1..8 decode path.
 *
 * Decode is a weight stream: every weight byte is read once per step and used n times, so the
 * kernel is built around 16-byte streaming loads of W. A block owns a 16-row tile of W; its 8
 * warps split K (warp w takes 64-byte k-chunks w, w+8, ...), so consecutive warps read adjacent
 * segments of the same rows. Each thread of a warp loads 16 bytes of row g and of row g+8
 * (g = lane / 4) at k offset 16 * (lane % 4): one mma.m16n8k32 (e4m3) or m16n8k16 (bf16) takes
 * 8 bytes per row per thread, so one pair of loads feeds two mma steps.
 *
 * The tensor cores sum over k, so which physical k a register slot holds does not matter as
 * long as A (W) and B (x) agree: the thread's 16 bytes of W row g at k offset 16q map to its a0
 * and a2 slots of two consecutive mma steps, and the B slots are filled from x's bytes at the
 * same offsets. Both element widths need the same byte mapping (see the slot tables in the
 * loop), which is why one kernel body serves FP8 and BF16.
 *
 * x (<= 8 token rows of K elements) is staged in shared memory once per block (rows padded by
 * 64 bytes against bank conflicts), either copied from prepared activations or computed by the
 * fused RMSNorm prologue; the grid is persistent (as many blocks as fit on the GPU, each
 * walking row tiles), so that staging is paid once per block, not once per 16 rows. After the
 * k loop of a tile, the 8 warps' 16x8 partial tiles are summed through shared memory and one
 * thread per (row, token) runs the epilogue. Column tokens >= n read zeros and are never
 * stored.
 *
 * Cost model (H100, batch 1): bytes = M*K*elem; each round issues the loads of 4 chunks before
 * their mmas, so each thread has 128 bytes of W in flight, enough to cover DRAM latency with two
 * blocks per SM. (A first version that loaded and multiplied one chunk at a time streamed at
 * ~1.5 TB/s on an H200: latency-bound.) */
#include "common.cuh"
#include "kernels.h"

#define GEMV_WARPS   8
#define GEMV_THREADS (GEMV_WARPS * 32)
#define GEMV_PAD     64

template <bool BF16>
__device__ __forceinline__ void mma_tile(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1)
{
    if (BF16)
        mma_bf16_16x8x16(d, a, b0, b1);
    else
        mma_e4m3_16x8x32(d, a, b0, b1);
}

/* Stage the activations: rows [0, n) of xs (stride ldx bytes). */
template <bool BF16> __device__ void stage_x(const kiln_gemv_args &a, uint8_t *xs, int ldx)
{
    const int esz = BF16 ? 2 : 1;
    const int row_bytes = a.K * esz;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (a.x) {
        /* fused RMSNorm: all 256 threads sum the squares of each token (16-byte loads, four in
         * flight per thread), then normalize and quantize into xs. A version where one warp did
         * one token walked 16 KB with dependent loads and cost ~10 us per block. */
        __shared__ float part[GEMV_WARPS][8];
        float ss[8];
#pragma unroll
        for (int t = 0; t < 8; t++) ss[t] = 0.0f;
        for (int t = 0; t < a.n; t++) {
            const float *xr = a.x + (size_t)(a.x_rows ? a.x_rows[t] : t) * a.K;
            float acc = 0.0f;
#pragma unroll 4
            for (int k = threadIdx.x * 4; k < a.K; k += GEMV_THREADS * 4) {
                float4 v = *reinterpret_cast<const float4 *>(xr + k);
                acc += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
            }
            ss[t] = warp_sum(acc);
        }
        if (lane == 0)
            for (int t = 0; t < 8; t++) part[warp][t] = ss[t];
        __syncthreads();
        const float inv = 1.0f / a.in_scale;
        for (int t = 0; t < a.n; t++) {
            float tot = 0.0f;
#pragma unroll
            for (int w = 0; w < GEMV_WARPS; w++) tot += part[w][t];
            const float r = 1.0f / sqrtf(tot / (float)a.K + a.eps);
            const float *xr = a.x + (size_t)(a.x_rows ? a.x_rows[t] : t) * a.K;
            uint8_t *dst = xs + (size_t)t * ldx;
            for (int k = threadIdx.x * 4; k < a.K; k += GEMV_THREADS * 4) {
                float4 v = *reinterpret_cast<const float4 *>(xr + k);
                uint2 wb = *reinterpret_cast<const uint2 *>(a.norm_w + k);
                float y0 = v.x * r * bf16_bits_to_float(wb.x & 0xffff);
                float y1 = v.y * r * bf16_bits_to_float(wb.x >> 16);
                float y2 = v.z * r * bf16_bits_to_float(wb.y & 0xffff);
                float y3 = v.w * r * bf16_bits_to_float(wb.y >> 16);
                if (BF16) {
                    uint2 o = make_uint2(pack_bf16x2(y0, y1), pack_bf16x2(y2, y3));
                    *reinterpret_cast<uint2 *>(dst + (size_t)k * 2) = o;
                } else {
                    uint32_t o = (uint32_t)to_e4m3(y0 * inv) | ((uint32_t)to_e4m3(y1 * inv) << 8) |
                                 ((uint32_t)to_e4m3(y2 * inv) << 16) |
                                 ((uint32_t)to_e4m3(y3 * inv) << 24);
                    *reinterpret_cast<uint32_t *>(dst + k) = o;
                }
            }
        }
    } else {
        const uint8_t *src = static_cast<const uint8_t *>(a.xq);
        int chunks = row_bytes / 16;
        for (int i = threadIdx.x; i < a.n * chunks; i += GEMV_THREADS) {
            int t = i / chunks, c = i % chunks;
            *reinterpret_cast<uint4 *>(xs + (size_t)t * ldx + c * 16) =
                *reinterpret_cast<const uint4 *>(src + (size_t)t * row_bytes + c * 16);
        }
    }
}

__device__ __forceinline__ uint8_t *kv_slot(const kiln_cuda_kv &kv, const kiln_cuda_batch &b,
                                            void *base, int t, int head, int dim)
{
    int s = b.token_seq[t], p = b.positions[t];
    int blk = b.block_table[(size_t)s * b.max_blocks + p / kv.block_size];
    size_t idx =
        (((size_t)blk * kv.n_kv_heads + head) * kv.block_size + p % kv.block_size) * kv.head_dim +
        dim;
    return static_cast<uint8_t *>(base) + idx * (kv.fp8 ? 1 : 2);
}

__device__ __forceinline__ void kv_store(const kiln_cuda_kv &kv, uint8_t *p, float v, float scale)
{
    if (kv.fp8)
        *p = to_e4m3(v * (1.0f / scale));
    else
        *reinterpret_cast<uint16_t *>(p) = float_to_bf16_bits(v);
}

/* RoPE + cache write for one pair of a tile-paired q|k|v tile: (va, vb) are dims
 * (8j + i, Dh/2 + 8j + i) of the head the tile belongs to. Shared by the GEMV epilogue and the
 * prefill rope_kv kernel. */
__device__ __forceinline__ void rope_kv_pair(const kiln_cuda_batch &b, const kiln_cuda_kv &kv,
                                             const float *rope, int n_heads, float *q, int t,
                                             int head_all, int d0, float va, float vb)
{
    int Dh = kv.head_dim, half = Dh / 2;
    int d1 = d0 + half;
    if (head_all < n_heads + kv.n_kv_heads) { /* q or k: rotate */
        const float *cs = rope + ((size_t)b.positions[t] * half + d0) * 2;
        float c = cs[0], s = cs[1];
        float ra = va * c - vb * s, rb = vb * c + va * s;
        va = ra;
        vb = rb;
    }
    if (head_all < n_heads) {
        float *qr = q + ((size_t)t * n_heads + head_all) * Dh;
        qr[d0] = va;
        qr[d1] = vb;
    } else if (head_all < n_heads + kv.n_kv_heads) {
        int g = head_all - n_heads;
        kv_store(kv, kv_slot(kv, b, kv.k, t, g, d0), va, kv.k_scale);
        kv_store(kv, kv_slot(kv, b, kv.k, t, g, d1), vb, kv.k_scale);
    } else {
        int g = head_all - n_heads - kv.n_kv_heads;
        kv_store(kv, kv_slot(kv, b, kv.v, t, g, d0), va, kv.v_scale);
        kv_store(kv, kv_slot(kv, b, kv.v, t, g, d1), vb, kv.v_scale);
    }
}

#define U 4 /* chunks per warp per round */

/* Issues the loads of round r (chunks warp + (r * U + u) * GEMV_WARPS) of rows g and g+8. */
__device__ __forceinline__ void load_round(const uint8_t *wr0, const uint8_t *wr1, int warp,
                                           int n_chunks, int r, uint4 (&w0)[U], uint4 (&w1)[U])
{
#pragma unroll
    for (int u = 0; u < U; u++) {
        int c = warp + (r * U + u) * GEMV_WARPS;
        bool live = c < n_chunks;
        w0[u] = live ? ldg_stream(wr0 + c * 64) : make_uint4(0, 0, 0, 0);
        w1[u] = live ? ldg_stream(wr1 + c * 64) : make_uint4(0, 0, 0, 0);
    }
}

/* Multiplies round r's weights with the staged activations (zeros past the end). */
template <bool BF16>
__device__ __forceinline__ void mma_round(float (&acc)[4], const uint8_t *xr, bool has_x, int warp,
                                          int n_chunks, int r, const uint4 (&w0)[U],
                                          const uint4 (&w1)[U])
{
#pragma unroll
    for (int u = 0; u < U; u++) {
        int c = warp + (r * U + u) * GEMV_WARPS;
        uint4 xv = c < n_chunks && has_x ? *reinterpret_cast<const uint4 *>(xr + c * 64)
                                         : make_uint4(0, 0, 0, 0);
        /* slots: step 0 takes bytes [0, 8) of each 16-byte piece, step 1 bytes [8, 16):
         *   a0 = row g lo word, a1 = row g+8 lo word, a2 = row g hi, a3 = row g+8 hi;
         *   b0 / b1 = x's words at the same offsets. */
        uint32_t s0[4] = {w0[u].x, w1[u].x, w0[u].y, w1[u].y};
        uint32_t s1[4] = {w0[u].z, w1[u].z, w0[u].w, w1[u].w};
        mma_tile<BF16>(acc, s0, xv.x, xv.y);
        mma_tile<BF16>(acc, s1, xv.z, xv.w);
    }
}

template <bool BF16>
__global__ void __launch_bounds__(GEMV_THREADS, 2) k_gemv(const kiln_gemv_args a)
{
    extern __shared__ __align__(16) uint8_t smem[];
    const int esz = BF16 ? 2 : 1;
    const int row_bytes = a.K * esz;
    const int ldx = row_bytes + GEMV_PAD;
    uint8_t *xs = smem;
    float *red = reinterpret_cast<float *>(smem + (size_t)a.n * ldx); /* (warps + 1, 16, 8) */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, q = lane & 3;
    const uint8_t *w = static_cast<const uint8_t *>(a.w);
    const bool has_x = g < a.n;
    const uint8_t *xr = xs + (size_t)g * ldx + q * 16;
    const int n_chunks = row_bytes / 64;
    const int n_tiles = a.M / 16;

    /* the first tile's first weight round does not depend on x: in flight while x is staged */
    uint4 pre0[U], pre1[U];
    {
        const uint8_t *p0 = w + (size_t)(blockIdx.x * 16 + g) * row_bytes + q * 16;
        load_round(p0, p0 + (size_t)8 * row_bytes, warp, n_chunks, 0, pre0, pre1);
    }
    stage_x<BF16>(a, xs, ldx);
    __syncthreads();

    /* persistent: the activations are staged once per block, then the block walks row tiles */
    for (int tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
        const int row0 = tile * 16;
        const uint8_t *wr0 = w + (size_t)(row0 + g) * row_bytes + q * 16;
        const uint8_t *wr1 = wr0 + (size_t)8 * row_bytes;
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        /* Rounds of U chunks per warp, double-buffered in registers: the loads of round r + 1
         * are issued before round r is multiplied, so the weight stream never waits on the
         * tensor cores (one round at a time streamed at ~2.1 TB/s on an H200). */
        const int rounds = (n_chunks - warp + GEMV_WARPS * U - 1) / (GEMV_WARPS * U);
        uint4 a0[U], a1[U], b0[U], b1[U];
        if (tile == blockIdx.x) {
#pragma unroll
            for (int u = 0; u < U; u++) a0[u] = pre0[u], a1[u] = pre1[u];
        } else {
            load_round(wr0, wr1, warp, n_chunks, 0, a0, a1);
        }
        for (int r = 0; r < rounds; r += 2) {
            if (r + 1 < rounds) load_round(wr0, wr1, warp, n_chunks, r + 1, b0, b1);
            mma_round<BF16>(acc, xr, has_x, warp, n_chunks, r, a0, a1);
            if (r + 1 >= rounds) break;
            if (r + 2 < rounds) load_round(wr0, wr1, warp, n_chunks, r + 2, a0, a1);
            mma_round<BF16>(acc, xr, has_x, warp, n_chunks, r + 1, b0, b1);
        }

        /* sum the warps' partial 16x8 tiles */
        float *mine = red + warp * 128;
        mine[g * 8 + 2 * q] = acc[0];
        mine[g * 8 + 2 * q + 1] = acc[1];
        mine[(g + 8) * 8 + 2 * q] = acc[2];
        mine[(g + 8) * 8 + 2 * q + 1] = acc[3];
        __syncthreads();
        float *fin = red + GEMV_WARPS * 128; /* (16, 8) summed */
        if (threadIdx.x < 128) {
            float sum = 0.0f;
#pragma unroll
            for (int wi = 0; wi < GEMV_WARPS; wi++) sum += red[wi * 128 + threadIdx.x];
            fin[threadIdx.x] = sum * a.out_scale;
        }
        __syncthreads();

        const int r = threadIdx.x >> 3, t = threadIdx.x & 7; /* (row, token) per thread */
        if (threadIdx.x < 128 && t < a.n) {
            float v = fin[r * 8 + t];
            switch (a.epilogue) {
            case KILN_EPI_STORE:
                a.y[(size_t)t * a.ldy + row0 + r] = v;
                break;
            case KILN_EPI_RESIDUAL:
                a.y[(size_t)t * a.ldy + row0 + r] += v;
                break;
            case KILN_EPI_SWIGLU:
                if (r < 8) {
                    float gate = v, up = fin[(r + 8) * 8 + t];
                    float hv = gate / (1.0f + expf(-gate)) * up;
                    a.h8[(size_t)t * (a.M / 2) + tile * 8 + r] = to_e4m3(hv * (1.0f / a.h_scale));
                }
                break;
            case KILN_EPI_ROPE_KV:
                if (r < 8) {
                    int tiles_per_head = a.kv.head_dim / 16;
                    rope_kv_pair(a.batch, a.kv, a.rope, a.n_heads, a.q, t, tile / tiles_per_head,
                                 8 * (tile % tiles_per_head) + r, v, fin[(r + 8) * 8 + t]);
                }
                break;
            }
        }
        __syncthreads(); /* red is reused by the next tile */
    }
}

extern "C" int kiln_cuda_gemv(const struct kiln_gemv_args *a, kiln_stream stream)
{
    if (a->n < 1 || a->n > 8 || a->M % 16 || (a->K * (a->bf16 ? 2 : 1)) % 64)
        return cudaErrorInvalidValue;
    int row_bytes = a->K * (a->bf16 ? 2 : 1);
    size_t smem = (size_t)a->n * (row_bytes + GEMV_PAD) + (GEMV_WARPS + 1) * 128 * sizeof(float);
    /* raise the dynamic shared memory limit, and size the persistent grid from the occupancy,
     * only when a launch needs more than before: a captured replay makes no such calls */
    static size_t granted[2], occupancy_for[2];
    static int sms, blocks_per_sm[2];
    int which = a->bf16 ? 1 : 0;
    cudaError_t e;
    if (!sms) {
        int dev;
        if ((e = cudaGetDevice(&dev))) return e;
        if ((e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev))) return e;
    }
    if (smem > 48 * 1024 && smem > granted[which]) {
        e = a->bf16 ? cudaFuncSetAttribute(k_gemv<true>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem)
                    : cudaFuncSetAttribute(k_gemv<false>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e) return e;
        granted[which] = smem;
    }
    if (occupancy_for[which] != smem) {
        e = a->bf16
                ? cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm[which], k_gemv<true>,
                                                                GEMV_THREADS, smem)
                : cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm[which],
                                                                k_gemv<false>, GEMV_THREADS, smem);
        if (e) return e;
        if (blocks_per_sm[which] < 1) blocks_per_sm[which] = 1;
        occupancy_for[which] = smem;
    }
    int tiles = a->M / 16, grid = sms * blocks_per_sm[which];
    if (grid > tiles) grid = tiles;
    if (a->bf16)
        k_gemv<true><<<grid, GEMV_THREADS, smem, stream>>>(*a);
    else
        k_gemv<false><<<grid, GEMV_THREADS, smem, stream>>>(*a);
    return cudaGetLastError();
}

/* ---- prefill-path companions of the GEMV epilogues ---- */

/* One thread per (token, tile, pair i < 8). */
__global__ void k_rope_kv(const float *qkv, const float *rope, kiln_cuda_batch b, kiln_cuda_kv kv,
                          int n_heads, float *q)
{
    int tiles_per_head = kv.head_dim / 16;
    int n_tiles = (n_heads + 2 * kv.n_kv_heads) * tiles_per_head;
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)b.n_tokens * n_tiles * 8) return;
    int i = idx % 8, tile = (idx / 8) % n_tiles, t = (int)(idx / 8 / n_tiles);
    int width = n_tiles * 16;
    const float *row = qkv + (size_t)t * width + tile * 16;
    rope_kv_pair(b, kv, rope, n_heads, q, t, tile / tiles_per_head, 8 * (tile % tiles_per_head) + i,
                 row[i], row[i + 8]);
}

extern "C" int kiln_cuda_rope_kv(const float *qkv, const float *rope, struct kiln_cuda_batch b,
                                 struct kiln_cuda_kv kv, int n_heads, float *q, kiln_stream stream)
{
    long total = (long)b.n_tokens * (n_heads + 2 * kv.n_kv_heads) * (kv.head_dim / 16) * 8;
    k_rope_kv<<<(unsigned)((total + 255) / 256), 256, 0, stream>>>(qkv, rope, b, kv, n_heads, q);
    return cudaGetLastError();
}

/* One thread per (token, 16-row tile): 8 gates and 8 ups (four 16-byte loads), 8 FP8 codes out. */
__global__ void k_swiglu_quant(const float *gu, int n, int f, float h_scale, uint8_t *h8)
{
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int tiles = f / 8;
    if (idx >= (long)n * tiles) return;
    int t = (int)(idx / tiles), tile = (int)(idx % tiles);
    const float4 *row =
        reinterpret_cast<const float4 *>(gu + (size_t)t * 2 * f + (size_t)tile * 16);
    float4 g0 = row[0], g1 = row[1], u0 = row[2], u1 = row[3];
    float gate[8] = {g0.x, g0.y, g0.z, g0.w, g1.x, g1.y, g1.z, g1.w};
    float up[8] = {u0.x, u0.y, u0.z, u0.w, u1.x, u1.y, u1.z, u1.w};
    const float inv = 1.0f / h_scale;
    uint32_t lo = 0, hi = 0;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        float h = gate[i] / (1.0f + expf(-gate[i])) * up[i];
        uint32_t c = to_e4m3(h * inv);
        if (i < 4)
            lo |= c << (8 * i);
        else
            hi |= c << (8 * (i - 4));
    }
    *reinterpret_cast<uint2 *>(h8 + (size_t)t * f + (size_t)tile * 8) = make_uint2(lo, hi);
}

extern "C" int kiln_cuda_swiglu_quant(const float *gu, int n, int f, float h_scale, uint8_t *h8,
                                      kiln_stream stream)
{
    if (f % 8) return cudaErrorInvalidValue;
    long total = (long)n * (f / 8);
    k_swiglu_quant<<<(unsigned)((total + 255) / 256), 256, 0, stream>>>(gu, n, f, h_scale, h8);
    return cudaGetLastError();
}
