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
#include <stdlib.h>

#include "common.cuh"
#include "kernels.h"

#define GEMV_WARPS    8
#define GEMV_THREADS  (GEMV_WARPS * 32)
#define GEMV_PAD      64
#define TMA_THREADS   (GEMV_THREADS + 32) /* 8 compute warps and a producer warp */
#define GEMV_BARRIERS 144 /* bytes for the TMA ring's mbarriers (keeps what follows aligned) */
#define XREG          8   /* float4s of the normalized row a thread keeps (K <= 8192, batch 1) */

/* A barrier of the block's 256 compute threads (named barrier 1): the whole block in the
 * register kernel; in the TMA kernel it leaves out the producer warp, which keeps issuing weight
 * copies while the others reduce and run epilogues. */
__device__ __forceinline__ void consumer_sync()
{
    asm volatile("bar.sync 1, %0;\n" ::"n"(GEMV_THREADS) : "memory");
}

template <bool BF16>
__device__ __forceinline__ void mma_tile(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1)
{
    if (BF16)
        mma_bf16_16x8x16(d, a, b0, b1);
    else
        mma_e4m3_16x8x32(d, a, b0, b1);
}

/* One 64-byte chunk: this thread's 16 bytes of rows g (w0) and g + 8 (w1) and of x at the same
 * offsets, as two mma steps. Slots: step 0 takes bytes [0, 8) of each 16-byte piece, step 1
 * bytes [8, 16): a0 = row g lo word, a1 = row g+8 lo word, a2 = row g hi, a3 = row g+8 hi;
 * b0 / b1 = x's words at the same offsets. */
template <bool BF16>
__device__ __forceinline__ void mma_chunk(float (&acc)[4], uint4 w0, uint4 w1, uint4 xv)
{
    uint32_t s0[4] = {w0.x, w1.x, w0.y, w1.y};
    uint32_t s1[4] = {w0.z, w1.z, w0.w, w1.w};
    mma_tile<BF16>(acc, s0, xv.x, xv.y);
    mma_tile<BF16>(acc, s1, xv.z, xv.w);
}

/* RMSNorm's last step for 4 elements at k: v * r * w (w: 4 bf16 norm weights), quantized into
 * the staged row dst (FP8 codes with inv = 1 / in_scale, or bf16). */
template <bool BF16>
__device__ __forceinline__ void norm_quant4(float4 v, uint2 wb, float r, float inv, uint8_t *dst,
                                            int k)
{
    float y0 = v.x * r * bf16_bits_to_float(wb.x & 0xffff);
    float y1 = v.y * r * bf16_bits_to_float(wb.x >> 16);
    float y2 = v.z * r * bf16_bits_to_float(wb.y & 0xffff);
    float y3 = v.w * r * bf16_bits_to_float(wb.y >> 16);
    if (BF16) {
        uint2 o = make_uint2(pack_bf16x2(y0, y1), pack_bf16x2(y2, y3));
        *reinterpret_cast<uint2 *>(dst + (size_t)k * 2) = o;
    } else {
        uint32_t o = (uint32_t)to_e4m3(y0 * inv) | ((uint32_t)to_e4m3(y1 * inv) << 8) |
                     ((uint32_t)to_e4m3(y2 * inv) << 16) | ((uint32_t)to_e4m3(y3 * inv) << 24);
        *reinterpret_cast<uint32_t *>(dst + k) = o;
    }
}

/* Stage the activations: rows [0, n) of xs (stride ldx bytes). */
template <bool BF16> __device__ void stage_x(const kiln_gemv_args &a, uint8_t *xs, int ldx)
{
    const int esz = BF16 ? 2 : 1;
    const int row_bytes = a.K * esz;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (a.x && a.n == 1 && a.K % (GEMV_THREADS * 4) == 0 && a.K <= GEMV_THREADS * 4 * XREG) {
        /* one token (batch-1 decode): the row and the norm weights stay in registers, loaded in
         * one round trip, instead of being read again after the sum (that second pass read the
         * norm weights from L2 on the critical path of every RMSNorm GEMV). Same arithmetic, in
         * the same order, as the general path below. */
        __shared__ float part1[GEMV_WARPS];
        const float *xr = a.x + (size_t)(a.x_rows ? a.x_rows[0] : 0) * a.K;
        const int steps = a.K / (GEMV_THREADS * 4);
        float4 v[XREG];
        uint2 wb[XREG];
#pragma unroll
        for (int i = 0; i < XREG; i++)
            if (i < steps) {
                const int k = threadIdx.x * 4 + i * GEMV_THREADS * 4;
                v[i] = *reinterpret_cast<const float4 *>(xr + k);
                wb[i] = *reinterpret_cast<const uint2 *>(a.norm_w + k);
            }
        float acc = 0.0f;
#pragma unroll
        for (int i = 0; i < XREG; i++)
            if (i < steps)
                acc += v[i].x * v[i].x + v[i].y * v[i].y + v[i].z * v[i].z + v[i].w * v[i].w;
        acc = warp_sum(acc);
        if (lane == 0) part1[warp] = acc;
        consumer_sync();
        float tot = 0.0f;
#pragma unroll
        for (int w = 0; w < GEMV_WARPS; w++) tot += part1[w];
        const float r = 1.0f / sqrtf(tot / (float)a.K + a.eps), inv = 1.0f / a.in_scale;
#pragma unroll
        for (int i = 0; i < XREG; i++)
            if (i < steps)
                norm_quant4<BF16>(v[i], wb[i], r, inv, xs, threadIdx.x * 4 + i * GEMV_THREADS * 4);
    } else if (a.x) {
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
        consumer_sync();
        const float inv = 1.0f / a.in_scale;
        for (int t = 0; t < a.n; t++) {
            float tot = 0.0f;
#pragma unroll
            for (int w = 0; w < GEMV_WARPS; w++) tot += part[w][t];
            const float r = 1.0f / sqrtf(tot / (float)a.K + a.eps);
            const float *xr = a.x + (size_t)(a.x_rows ? a.x_rows[t] : t) * a.K;
            uint8_t *dst = xs + (size_t)t * ldx;
            for (int k = threadIdx.x * 4; k < a.K; k += GEMV_THREADS * 4)
                norm_quant4<BF16>(*reinterpret_cast<const float4 *>(xr + k),
                                  *reinterpret_cast<const uint2 *>(a.norm_w + k), r, inv, dst, k);
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

/* Where token t's rotation and cache rows are: its rope row (cos, sin pairs of its position) and
 * the element offset of its cache row for KV head 0 (head g adds g * block_size * Dh). Batch
 * metadata and tables only: the GEMV reads them before waiting for the previous kernel. */
struct rope_at {
    const float *cs;
    size_t row;
};

__device__ __forceinline__ rope_at rope_where(const kiln_cuda_batch &b, const kiln_cuda_kv &kv,
                                              const float *rope, int t)
{
    const int s = b.token_seq[t], p = b.positions[t];
    const int blk = b.block_table[(size_t)s * b.max_blocks + p / kv.block_size];
    return {rope + (size_t)p * kv.head_dim,
            ((size_t)blk * kv.n_kv_heads * kv.block_size + p % kv.block_size) * kv.head_dim};
}

__device__ __forceinline__ void kv_store(const kiln_cuda_kv &kv, void *base, size_t idx, float v,
                                         float scale)
{
    if (kv.fp8)
        static_cast<uint8_t *>(base)[idx] = to_e4m3(v * (1.0f / scale));
    else
        static_cast<uint16_t *>(base)[idx] = float_to_bf16_bits(v);
}

/* RoPE + cache write for one pair of a tile-paired q|k|v tile: (va, vb) are dims
 * (8j + i, Dh/2 + 8j + i) of the head the tile belongs to, of token t at `at`. Shared by the GEMV
 * epilogue and the prefill rope_kv kernel. */
__device__ __forceinline__ void rope_kv_pair(const rope_at &at, const kiln_cuda_kv &kv, int n_heads,
                                             float *q, int t, int head_all, int d0, float va,
                                             float vb)
{
    int Dh = kv.head_dim, half = Dh / 2;
    int d1 = d0 + half;
    if (head_all < n_heads + kv.n_kv_heads) { /* q or k: rotate */
        float c = at.cs[2 * d0], s = at.cs[2 * d0 + 1];
        float ra = va * c - vb * s, rb = vb * c + va * s;
        va = ra;
        vb = rb;
    }
    if (head_all < n_heads) {
        float *qr = q + ((size_t)t * n_heads + head_all) * Dh;
        qr[d0] = va;
        qr[d1] = vb;
    } else {
        const bool is_k = head_all < n_heads + kv.n_kv_heads;
        const int g = head_all - n_heads - (is_k ? 0 : kv.n_kv_heads);
        const size_t row = at.row + (size_t)g * kv.block_size * Dh;
        kv_store(kv, is_k ? kv.k : kv.v, row + d0, va, is_k ? kv.k_scale : kv.v_scale);
        kv_store(kv, is_k ? kv.k : kv.v, row + d1, vb, is_k ? kv.k_scale : kv.v_scale);
    }
}

/* Off the critical path of a ROPE_KV GEMV (before the wait on the previous kernel, or by the TMA
 * kernel's producer warp once its ring is full): every token's rope_at, with its rope row copied
 * into shared memory when it fits, so the epilogue makes no dependent global loads (position ->
 * block table -> cache row, position -> rope row; H100 batch-1 decode 306 -> 311 tok/s). */
#define ROPE_DH_MAX 128
struct rope_pre {
    rope_at at[8];
    float cs[8][ROPE_DH_MAX];
};

__device__ void rope_prefetch(const kiln_gemv_args &a, rope_pre &pre, int tid, int threads)
{
    const int Dh = a.kv.head_dim;
    const bool copy = Dh <= ROPE_DH_MAX;
    for (int i = tid; i < a.n * Dh; i += threads) {
        const int t = i / Dh, k = i % Dh;
        const rope_at at = rope_where(a.batch, a.kv, a.rope, t);
        if (copy) pre.cs[t][k] = at.cs[k];
        if (k == 0) pre.at[t] = {copy ? pre.cs[t] : at.cs, at.row};
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
        mma_chunk<BF16>(acc, w0[u], w1[u], xv);
    }
}

/* The residual a RESIDUAL epilogue adds to, for this thread's (row, token) of a tile, read when
 * the tile starts so that its latency hides behind the tile's weight stream (a read at the end
 * cost one L2 round trip per tile on the critical path). Rows are owned by one tile: nobody
 * else writes them during the kernel. */
__device__ __forceinline__ float residual_of(const kiln_gemv_args &a, int tile)
{
    const int r = threadIdx.x >> 3, t = threadIdx.x & 7;
    if (a.epilogue != KILN_EPI_RESIDUAL || threadIdx.x >= 128 || t >= a.n) return 0.0f;
    return a.y[(size_t)t * a.ldy + tile * 16 + r];
}

/* The end of one 16-row tile: the warps' partial 16x8 tiles are summed through shared memory
 * (red: (warps + 1, 16, 8) floats) and one thread per (row, token) runs the epilogue (resid:
 * residual_of, read when the tile started). */
__device__ __forceinline__ void finish_tile(const kiln_gemv_args &a, const float (&acc)[4],
                                            float *red, int tile, float resid, const rope_pre &pre)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, q = lane & 3;
    const int row0 = tile * 16;
    /* sum the warps' partial 16x8 tiles */
    float *mine = red + warp * 128;
    mine[g * 8 + 2 * q] = acc[0];
    mine[g * 8 + 2 * q + 1] = acc[1];
    mine[(g + 8) * 8 + 2 * q] = acc[2];
    mine[(g + 8) * 8 + 2 * q + 1] = acc[3];
    consumer_sync();
    float *fin = red + GEMV_WARPS * 128; /* (16, 8) summed */
    if (threadIdx.x < 128) {
        float sum = 0.0f;
#pragma unroll
        for (int wi = 0; wi < GEMV_WARPS; wi++) sum += red[wi * 128 + threadIdx.x];
        fin[threadIdx.x] = sum * a.out_scale;
    }
    consumer_sync();

    const int r = threadIdx.x >> 3, t = threadIdx.x & 7; /* (row, token) per thread */
    if (threadIdx.x < 128 && t < a.n) {
        float v = fin[r * 8 + t];
        switch (a.epilogue) {
        case KILN_EPI_STORE:
            a.y[(size_t)t * a.ldy + row0 + r] = v;
            break;
        case KILN_EPI_RESIDUAL:
            a.y[(size_t)t * a.ldy + row0 + r] = resid + v;
            break;
        case KILN_EPI_SWIGLU: /* gate and up rounded to bf16, as the prefill path stores them */
            if (r < 8) {
                float gate = bf16_round(v), up = bf16_round(fin[(r + 8) * 8 + t]);
                float hv = gate / (1.0f + expf(-gate)) * up;
                a.h8[(size_t)t * (a.M / 2) + tile * 8 + r] = to_e4m3(hv * (1.0f / a.h_scale));
            }
            break;
        case KILN_EPI_ROPE_KV:
            if (r < 8) {
                int tiles_per_head = a.kv.head_dim / 16;
                rope_kv_pair(pre.at[t], a.kv, a.n_heads, a.q, t, tile / tiles_per_head,
                             8 * (tile % tiles_per_head) + r, bf16_round(v),
                             bf16_round(fin[(r + 8) * 8 + t]));
            }
            break;
        }
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

    /* Weights depend on nothing the previous kernel writes: the first round is loaded before
     * waiting for it (programmatic dependent launch). (Bulk L2 prefetches of the rounds ahead
     * were measured slower: 243 against 264 tok/s at batch 1 on an H100.) */
    trace_stamp(a.trace, 0);
    uint4 a0[U], a1[U], b0[U], b1[U];
    {
        const uint8_t *p0 = w + (size_t)(blockIdx.x * 16 + g) * row_bytes + q * 16;
        load_round(p0, p0 + (size_t)8 * row_bytes, warp, n_chunks, 0, a0, a1);
    }
    __shared__ rope_pre pre;
    if (a.epilogue == KILN_EPI_ROPE_KV) /* made visible by the sync below */
        rope_prefetch(a, pre, threadIdx.x, GEMV_THREADS);
    pdl_wait();
    pdl_trigger();
    trace_stamp(a.trace, 1);
    stage_x<BF16>(a, xs, ldx);
    __syncthreads();

    /* persistent: the activations are staged once per block, then the block walks row tiles */
    for (int tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
        const int row0 = tile * 16;
        const uint8_t *wr0 = w + (size_t)(row0 + g) * row_bytes + q * 16;
        const uint8_t *wr1 = wr0 + (size_t)8 * row_bytes;
        const int next = tile + gridDim.x;
        const uint8_t *nr0 = w + (size_t)(next * 16 + g) * row_bytes + q * 16;
        const uint8_t *nr1 = nr0 + (size_t)8 * row_bytes;
        const float resid = residual_of(a, tile);
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        /* Rounds of U chunks per warp, double-buffered in registers: the loads of round r + 1
         * are issued before round r is multiplied, so the weight stream never waits on the
         * tensor cores (one round at a time streamed at ~2.1 TB/s on an H200). After the last
         * round the next tile's first round is issued, so the stream keeps going through the
         * reduction and epilogue below. a0/a1 hold round 0 on entry. */
        const int rounds = (n_chunks - warp + GEMV_WARPS * U - 1) / (GEMV_WARPS * U);
        for (int r = 0; r < rounds; r += 2) {
            if (r + 1 < rounds)
                load_round(wr0, wr1, warp, n_chunks, r + 1, b0, b1);
            else if (next < n_tiles)
                load_round(nr0, nr1, warp, n_chunks, 0, b0, b1);
            mma_round<BF16>(acc, xr, has_x, warp, n_chunks, r, a0, a1);
            if (r + 1 >= rounds) {
#pragma unroll
                for (int u = 0; u < U; u++) a0[u] = b0[u], a1[u] = b1[u];
                break;
            }
            if (r + 2 < rounds)
                load_round(wr0, wr1, warp, n_chunks, r + 2, a0, a1);
            else if (next < n_tiles)
                load_round(nr0, nr1, warp, n_chunks, 0, a0, a1);
            mma_round<BF16>(acc, xr, has_x, warp, n_chunks, r + 1, b0, b1);
        }

        finish_tile(a, acc, red, tile, resid, pre);
        __syncthreads(); /* red is reused by the next tile */
    }
    trace_stamp(a.trace, 2);
}

/* ---- Hopper: the weight stream through TMA bulk copies into a shared-memory ring ----
 * A producer warp copies KC bytes of each of a tile's 16 rows per stage (cp.async.bulk, one lane
 * per row, completed on a "full" mbarrier) into a ring of `stages` slots, refilling a slot as
 * soon as the 8 compute warps have released it (an "empty" mbarrier each), so the bytes in
 * flight are set by shared memory, not registers, and never wait on a block-wide barrier. The
 * stream runs across tiles (the next tile's stages load during this one's reduction and
 * epilogue, which synchronize the compute warps only: consumer_sync) and starts before the
 * wait on the previous kernel. Stage rows are padded by 16 bytes, so the 16-byte fragment
 * reads of a warp (rows g and g+8 at offset 16q) spread over all banks.
 * Measured on an H100 (batch-1 decode, 8B shape, tok/s, each group one run on one machine):
 *   - first version, every warp refilling after a block-wide barrier per stage: register
 *     kernel 263; ring of 2 x 4 KB-per-row stages 270, 2 x 8 KB 271, 3 x 4 KB 266, 4 x 1 KB
 *     249, 6 x 512 B 183; with programmatic dependent launch off the best ring ran at 249;
 *   - with the producer warp: register kernel 263; 2 x 4 KB 279; 4 x 2 KB 278-282; 5 x 2 KB
 *     279; 3 x 4 KB 274; 8 x 1 KB 268.
 * Bulk L2 prefetches were slower each time: of the rounds ahead in the register kernel (243
 * against 264), and of the next GEMV's first rows during a ring kernel's last tile (266 against
 * 270). Also measured and dropped (H100, 2026-11-26): a producer that waits for the previous
 * kernel before streaming (282 against 297); at most half an SM's shared memory per block, one
 * block per SM, so that the next GEMV's blocks become resident and stream while this one
 * drains (278-285 against 296); tiles handed out by an atomic counter instead of a static share
 * (the blocks of a 1792-tile GEMV end within 4.5 us instead of 13, but 285 against 288: the
 * static share's early finishers let the next kernel's blocks start streaming sooner). The
 * spread is the SMs': KILN_TRACE's per-SM table gives gate_up 2.3 to 3.0 us a tile (sd 7%),
 * the same SMs slow every step (even/odd correlation 0.999). Handing out only the tail by a
 * counter (the last partial round and 0-4 full ones), with the producer claiming ahead, cut
 * gate_up's spread from 11.3 to 3.4 us and gained it 0.6 us, but down lost 1.6 (its blocks
 * enter later): 309-311 against 312-313 tok/s (2026-11-26).
 * The copies carry L2's evict-first policy: weights are read once a step, and with the normal
 * policy they pushed out what is read again (activations, KV rows, prefetched lines): H100
 * batch-1 decode 318.6 / 318.2 -> 322.4 / 321.9 tok/s (KILN_GEMV_EVICT_FIRST=2 turns it off).
 * (The policy is made at every copy: made once per producer warp it measured 320.6 / 320.9
 * against 322.1 / 322.2.)
 * A block whose weights have all arrived may ask L2 for the next GEMV's first stages (l2_next,
 * kiln_gemv_args' pf_*): cuda.c has the o GEMV do it for gate_up, whose blocks cannot enter
 * before o's leave (313.8-314.3 against 309.9-311.3). Also measured there and dropped: the
 * q|k|v GEMV asking L2 for its own third tile at once (307.6-310.0 against 313.8-314.3, and
 * 317-318 against 322 with evict-first) or right after its wait (312 against 321: a block's 16
 * prefetch instructions held the issuing warp ~3 us), or holding all three in a 3-stage ring
 * (311 against 318.6); down asking for the next q|k|v's third tile (306 against 310-311); the
 * compute warps sleeping on the first stage's barrier before griddepcontrol.wait (307 against
 * 319). */
#define TMA_KC     8192 /* bytes of each row per stage, at most (whole rows of K = 4096 FP8) */
#define TMA_STAGES 2

__host__ __device__ inline int tma_kc(int row_bytes, int kc_max)
{
    /* the largest piece <= kc_max that splits the row evenly into multiples of 64 bytes
     * (row_bytes is a multiple of 64, so d = row_bytes / 64 always works) */
    for (int d = (row_bytes + kc_max - 1) / kc_max;; d++)
        if (row_bytes % d == 0 && (row_bytes / d) % 64 == 0) return row_bytes / d;
}

/* Where row `lane` (< 16) of stage i of block `blk`'s weight stream starts: stage i is piece
 * i % per_tile (kc bytes of each row) of the block's tile i / per_tile, tiles dealt round-robin
 * over `grid` blocks; NULL past the weights' last tile. */
struct ring_stream {
    const uint8_t *w;
    int row_bytes, n_tiles, kc, grid;
};

__device__ __forceinline__ const uint8_t *stage_row(const ring_stream &r, int blk, int i, int lane)
{
    const int per_tile = r.row_bytes / r.kc;
    const int tile = blk + (i / per_tile) * r.grid;
    if (tile >= r.n_tiles) return nullptr;
    return r.w + (size_t)(tile * 16 + lane) * r.row_bytes + (size_t)(i % per_tile) * r.kc;
}

/* The next GEMV's stream and the stages of each of its blocks to ask L2 for (count 0: none). */
struct l2_next {
    ring_stream s;
    int first, count;
};

template <bool BF16>
__global__ void __launch_bounds__(TMA_THREADS, 1)
    k_gemv_tma(const kiln_gemv_args a, int kc, int n_stages, l2_next nx, int evict_first)
{
    extern __shared__ __align__(16) uint8_t smem[];
    const int esz = BF16 ? 2 : 1;
    const int row_bytes = a.K * esz;
    const int ldx = row_bytes + GEMV_PAD;
    const int lds = kc + 16; /* kc: bytes of each row per stage, dividing the row */
    uint8_t *stages = smem;  /* (S, 16, lds) */
    uint64_t *full = reinterpret_cast<uint64_t *>(smem + (size_t)n_stages * 16 * lds); /* (S,) */
    uint64_t *empty = full + n_stages;                                                 /* (S,) */
    uint64_t *pre_ready = empty + n_stages; /* the producer's rope_prefetch is done */
    uint8_t *xs = smem + (size_t)n_stages * 16 * lds + GEMV_BARRIERS;
    float *red = reinterpret_cast<float *>(xs + (size_t)a.n * ldx); /* (warps + 1, 16, 8) */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, q = lane & 3;
    const uint8_t *w = static_cast<const uint8_t *>(a.w);
    const int n_tiles = a.M / 16;
    const int per_tile = row_bytes / kc;
    const int my_tiles = (n_tiles - (int)blockIdx.x + (int)gridDim.x - 1) / (int)gridDim.x;
    const int total = my_tiles * per_tile; /* stages this block streams */

    const bool rope = a.epilogue == KILN_EPI_ROPE_KV;
    __shared__ rope_pre pre;

    trace_stamp(a.trace, 0);
    if (warp == GEMV_WARPS && lane == 0) {
        for (int s = 0; s < n_stages; s++) {
            mbar_init(&full[s], 1);
            mbar_init(&empty[s], GEMV_WARPS);
        }
        mbar_init(pre_ready, 32);
    }
    __syncthreads();

    if (warp == GEMV_WARPS) {
        /* The producer warp: stage i = (tile j of this block, k piece kk) into ring slot
         * i % S, as soon as the compute warps have released the slot. The weights depend on
         * nothing the previous kernel writes, so it never waits for it (programmatic dependent
         * launch): the first S stages stream while the previous kernel drains. */
        const auto prefetch = [&]() { /* every lane arrives after its own writes */
                                      rope_prefetch(a, pre, lane, 32);
                                      mbar_arrive(pre_ready);
        };
        const ring_stream mine = {w, row_bytes, n_tiles, kc, (int)gridDim.x};
        for (int i = 0; i < total; i++) {          /* lane r copies row r of the stage */
            if (rope && i == n_stages) prefetch(); /* the ring is full: time to spare */
            const int slot = i % n_stages;
            if (lane == 0) {
                if (i >= n_stages) mbar_wait(&empty[slot], (unsigned)(i / n_stages - 1) & 1u);
                mbar_expect(&full[slot], 16u * kc);
            }
            __syncwarp();
            if (lane < 16) {
                if (evict_first)
                    bulk_copy_evict_first(stages + ((size_t)slot * 16 + lane) * lds,
                                          stage_row(mine, blockIdx.x, i, lane), kc, &full[slot]);
                else
                    bulk_copy(stages + ((size_t)slot * 16 + lane) * lds,
                              stage_row(mine, blockIdx.x, i, lane), kc, &full[slot]);
            }
        }
        if (rope && total <= n_stages) prefetch();
        if (nx.count > 0 && total > 0) {
            /* this block's weights have all arrived: its share of the next GEMV's first stages
             * goes to L2 while the kernels in between run */
            if (lane == 0)
                mbar_wait(&full[(total - 1) % n_stages], (unsigned)((total - 1) / n_stages) & 1u);
            __syncwarp();
            for (int b = blockIdx.x; b < nx.s.grid && lane < 16; b += gridDim.x)
                for (int i = nx.first; i < nx.first + nx.count; i++)
                    if (const uint8_t *src = stage_row(nx.s, b, i, lane)) l2_prefetch(src, nx.s.kc);
        }
        return;
    }

    pdl_wait();
    pdl_trigger();
    trace_stamp(a.trace, 1);
    stage_x<BF16>(a, xs, ldx);
    consumer_sync();
    trace_stamp(a.trace, 3);
    const bool has_x = g < a.n;
    const uint8_t *xr = xs + (size_t)g * ldx + q * 16;
    int i = 0;
    for (int tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
        const float resid = residual_of(a, tile);
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int kk = 0; kk < per_tile; kk++, i++) {
            const int slot = i % n_stages;
            mbar_wait(&full[slot], (unsigned)(i / n_stages) & 1u);
            if (i == n_stages) trace_stamp(a.trace, 5); /* the first stage past the ring */
            const uint8_t *st = stages + (size_t)slot * 16 * lds + q * 16;
            const uint8_t *xk = xr + (size_t)kk * kc;
            for (int c = warp; c < kc / 64; c += GEMV_WARPS) {
                uint4 w0 = *reinterpret_cast<const uint4 *>(st + g * lds + c * 64);
                uint4 w1 = *reinterpret_cast<const uint4 *>(st + (g + 8) * lds + c * 64);
                uint4 xv =
                    has_x ? *reinterpret_cast<const uint4 *>(xk + c * 64) : make_uint4(0, 0, 0, 0);
                mma_chunk<BF16>(acc, w0, w1, xv);
            }
            __syncwarp();
            if (lane == 0) mbar_arrive(&empty[slot]); /* this warp is done with the slot */
        }
        if (rope && tile == (int)blockIdx.x) mbar_wait(pre_ready, 0);
        finish_tile(a, acc, red, tile, resid, pre);
        consumer_sync();                                      /* red is reused by the next tile */
        if (tile == (int)blockIdx.x) trace_stamp(a.trace, 4); /* the first tile done */
    }
    trace_stamp(a.trace, 2);
    trace_smid(a.trace);
}

/* A tuning knob from the environment (for measurements), or its default. */
static int env_int(const char *name, int dflt)
{
    const char *e = getenv(name);
    return e && atoi(e) > 0 ? atoi(e) : dflt;
}

/* Per kernel: the shared memory limit granted and the occupancy at the last few sizes (a layer
 * launches a handful, and a launch also plans the GEMV after it). The limit is raised, and the
 * occupancy asked, only for a new size: a captured replay makes no such calls. */
#define OCC_SIZES 4
struct gemv_kernel {
    size_t granted;
    size_t occ_smem[OCC_SIZES];
    int occ[OCC_SIZES], next;
};

template <typename Kernel>
static cudaError_t prepare(Kernel kernel, int threads, size_t smem, gemv_kernel &k,
                           int &blocks_per_sm)
{
    cudaError_t e;
    if (smem > 48 * 1024 && smem > k.granted) {
        if ((e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)smem)))
            return e;
        k.granted = smem;
    }
    for (int i = 0; i < OCC_SIZES; i++)
        if (k.occ[i] > 0 && k.occ_smem[i] == smem) {
            blocks_per_sm = k.occ[i];
            return cudaSuccess;
        }
    if ((e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, threads, smem)))
        return e;
    if (blocks_per_sm < 1) blocks_per_sm = 1;
    k.occ_smem[k.next] = smem;
    k.occ[k.next] = blocks_per_sm;
    k.next = (k.next + 1) % OCC_SIZES;
    return cudaSuccess;
}

/* The device's facts and the measurement knobs, read at the first launch. */
struct gemv_config {
    bool ready, tma;
    int sms, kc_max, n_stages, bps, smem_max, evict_first;
};

static cudaError_t gemv_config_get(gemv_config &c)
{
    if (c.ready) return cudaSuccess;
    cudaError_t e;
    int dev, major;
    if ((e = cudaGetDevice(&dev))) return e;
    if ((e = cudaDeviceGetAttribute(&c.sms, cudaDevAttrMultiProcessorCount, dev))) return e;
    if ((e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev))) return e;
    if ((e = cudaDeviceGetAttribute(&c.smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev)))
        return e;
    /* measurement knobs: KILN_GEMV_TMA=2 selects the register kernel on Hopper too,
     * KILN_GEMV_KC / _STAGES / _BPS the ring's piece size, depth and blocks per SM,
     * KILN_GEMV_EVICT_FIRST=2 the normal L2 policy for the weight copies */
    c.tma = major >= 9 && kiln_cuda_hopper_code() && env_int("KILN_GEMV_TMA", 1) == 1;
    c.kc_max = env_int("KILN_GEMV_KC", TMA_KC);
    c.n_stages = env_int("KILN_GEMV_STAGES", TMA_STAGES);
    if (c.n_stages > 8) c.n_stages = 8; /* the barriers' space: 2 per stage and pre_ready */
    /* at most two blocks per SM (the register kernel's best; the ring's stages fit one) */
    c.bps = env_int("KILN_GEMV_BPS", 2);
    c.evict_first = env_int("KILN_GEMV_EVICT_FIRST", 1) == 1;
    c.ready = true;
    return cudaSuccess;
}

/* One launch's shape: kernel (register | TMA) x (FP8 | BF16), shared memory, grid, and the
 * ring's piece size and depth (TMA). */
struct gemv_launch {
    int which, kc, stages, grid;
    size_t smem;
};

static cudaError_t gemv_plan(const gemv_config &c, int M, int K, int bf16, int n, gemv_launch &p)
{
    static gemv_kernel kernels[4];
    const int row_bytes = K * (bf16 ? 2 : 1);
    const size_t tail = (size_t)n * (row_bytes + GEMV_PAD) +
                        (GEMV_WARPS + 1) * 128 * sizeof(float); /* x rows, reduction */
    p.which = (c.tma ? 2 : 0) + (bf16 ? 1 : 0);
    p.kc = 0;
    p.smem = tail;
    p.stages = c.n_stages;
    if (c.tma) {
        /* as many stages as asked, down to two, then smaller pieces, within shared memory */
        int kc = tma_kc(row_bytes, c.kc_max);
        /* the kernel's static shared memory (rope_pre, the reduction's partials) comes on top */
        const size_t room = (size_t)c.smem_max - sizeof(rope_pre) - 1024;
        while (tail + (size_t)p.stages * 16 * (kc + 16) + GEMV_BARRIERS > room) {
            if (p.stages > 2)
                p.stages--;
            else if (kc > 64)
                kc = tma_kc(row_bytes, kc - 64);
            else
                return cudaErrorInvalidValue; /* the activations alone do not fit */
        }
        p.smem += (size_t)p.stages * 16 * (kc + 16) + GEMV_BARRIERS;
        p.kc = kc;
    }
    cudaError_t e;
    int occ;
    switch (p.which) {
    case 0:
        e = prepare(k_gemv<false>, GEMV_THREADS, p.smem, kernels[0], occ);
        break;
    case 1:
        e = prepare(k_gemv<true>, GEMV_THREADS, p.smem, kernels[1], occ);
        break;
    case 2:
        e = prepare(k_gemv_tma<false>, TMA_THREADS, p.smem, kernels[2], occ);
        break;
    default:
        e = prepare(k_gemv_tma<true>, TMA_THREADS, p.smem, kernels[3], occ);
        break;
    }
    if (e) return e;
    const int per_sm = occ < c.bps ? occ : c.bps;
    p.grid = c.sms * per_sm < M / 16 ? c.sms * per_sm : M / 16;
    return cudaSuccess;
}

static bool gemv_shape_ok(int M, int K, int bf16, int n)
{
    return n >= 1 && n <= 8 && M % 16 == 0 && M > 0 && (K * (bf16 ? 2 : 1)) % 64 == 0 && K > 0;
}

extern "C" int kiln_cuda_gemv(const struct kiln_gemv_args *a, kiln_stream stream)
{
    if (!gemv_shape_ok(a->M, a->K, a->bf16, a->n) || a->pf_first < KILN_PF_PAST_RING ||
        a->pf_count < 0 || (a->pf_w && !gemv_shape_ok(a->pf_M, a->pf_K, a->pf_bf16, a->n)))
        return cudaErrorInvalidValue;
    static gemv_config cfg;
    cudaError_t e;
    gemv_launch p;
    if ((e = gemv_config_get(cfg)) || (e = gemv_plan(cfg, a->M, a->K, a->bf16, a->n, p))) return e;
    l2_next nx = {};
    if (cfg.tma && a->pf_w && a->pf_count > 0) {
        gemv_launch np;
        if ((e = gemv_plan(cfg, a->pf_M, a->pf_K, a->pf_bf16, a->n, np))) return e;
        nx = {{static_cast<const uint8_t *>(a->pf_w), a->pf_K * (a->pf_bf16 ? 2 : 1), a->pf_M / 16,
               np.kc, np.grid},
              a->pf_first == KILN_PF_PAST_RING ? np.stages : a->pf_first,
              a->pf_count};
    }
    switch (p.which) {
    case 0:
        return launch_pdl(k_gemv<false>, p.grid, GEMV_THREADS, p.smem, stream, *a);
    case 1:
        return launch_pdl(k_gemv<true>, p.grid, GEMV_THREADS, p.smem, stream, *a);
    case 2:
        return launch_pdl(k_gemv_tma<false>, p.grid, TMA_THREADS, p.smem, stream, *a, p.kc,
                          p.stages, nx, cfg.evict_first);
    default:
        return launch_pdl(k_gemv_tma<true>, p.grid, TMA_THREADS, p.smem, stream, *a, p.kc, p.stages,
                          nx, cfg.evict_first);
    }
}

/* ---- prefill-path companions of the GEMV epilogues ---- */

/* One thread per (token, tile, pair i < 8). */
__global__ void k_rope_kv(const uint16_t *qkv, const float *rope, kiln_cuda_batch b,
                          kiln_cuda_kv kv, int n_heads, float *q)
{
    int tiles_per_head = kv.head_dim / 16;
    int n_tiles = (n_heads + 2 * kv.n_kv_heads) * tiles_per_head;
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)b.n_tokens * n_tiles * 8) return;
    int i = idx % 8, tile = (idx / 8) % n_tiles, t = (int)(idx / 8 / n_tiles);
    int width = n_tiles * 16;
    const uint16_t *row = qkv + (size_t)t * width + tile * 16;
    rope_kv_pair(rope_where(b, kv, rope, t), kv, n_heads, q, t, tile / tiles_per_head,
                 8 * (tile % tiles_per_head) + i, bf16_bits_to_float(row[i]),
                 bf16_bits_to_float(row[i + 8]));
}

extern "C" int kiln_cuda_rope_kv(const uint16_t *qkv, const float *rope, struct kiln_cuda_batch b,
                                 struct kiln_cuda_kv kv, int n_heads, float *q, kiln_stream stream)
{
    long total = (long)b.n_tokens * (n_heads + 2 * kv.n_kv_heads) * (kv.head_dim / 16) * 8;
    k_rope_kv<<<(unsigned)((total + 255) / 256), 256, 0, stream>>>(qkv, rope, b, kv, n_heads, q);
    return cudaGetLastError();
}

/* One thread per (token, 16-row tile): 8 gates and 8 ups, bf16 (two 16-byte loads), 8 FP8 codes
 * out. */
__global__ void k_swiglu_quant(const uint16_t *gu, int n, int f, float h_scale, uint8_t *h8)
{
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int tiles = f / 8;
    if (idx >= (long)n * tiles) return;
    int t = (int)(idx / tiles), tile = (int)(idx % tiles);
    const uint4 *row = reinterpret_cast<const uint4 *>(gu + (size_t)t * 2 * f + (size_t)tile * 16);
    const uint4 gw = row[0], uw = row[1];
    const uint32_t gs[4] = {gw.x, gw.y, gw.z, gw.w}, us[4] = {uw.x, uw.y, uw.z, uw.w};
    float gate[8], up[8];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        gate[2 * i] = bf16_bits_to_float(gs[i] & 0xffff);
        gate[2 * i + 1] = bf16_bits_to_float(gs[i] >> 16);
        up[2 * i] = bf16_bits_to_float(us[i] & 0xffff);
        up[2 * i + 1] = bf16_bits_to_float(us[i] >> 16);
    }
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

extern "C" int kiln_cuda_swiglu_quant(const uint16_t *gu, int n, int f, float h_scale, uint8_t *h8,
                                      kiln_stream stream)
{
    if (f % 8) return cudaErrorInvalidValue;
    long total = (long)n * (f / 8);
    k_swiglu_quant<<<(unsigned)((total + 255) / 256), 256, 0, stream>>>(gu, n, f, h_scale, h8);
    return cudaGetLastError();
}
