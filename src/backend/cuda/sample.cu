/* The GPU sampler: the twin of kiln_sample_row (src/runtime/sampler.h, steps 1-8), one block of
 * 1024 threads per row, every row of a step in one launch.
 *
 * Design, and what it costs per row (vocab V; a "pass" reads the row once, from L2 at small
 * batch):
 *  - step 1 is one online pass (running max and rescaled sum per thread, in float: ~126 terms,
 *    so the log-probabilities are within ~3e-5 of the CPU's double sum) that also yields the
 *    argmax: a greedy row without penalties, bias, bans or mask is done after it. With scratch for
 *    it (the backend's case) the pass runs before, in KILN_CUDA_SAMPLE_CHUNKS pieces of the row
 *    each read by a block of k_sample_scan, and the row's block merges the pieces: one block
 *    reading a 128K row took 28 us on an H100, a quarter of a batch-1 token's time outside the
 *    decode graph.
 *    The top-n alternatives: the n-th largest of the 1024 per-thread maxima bounds the n-th
 *    largest logit from below, so one more pass gathers every logit at or above it into shared
 *    memory (about n of them for real rows) and n block-wide argmax rounds with exclusion run
 *    there; when ties overflow the buffer (flat rows) the rounds run over the row instead.
 *  - step 2 runs IN PLACE on the logits: every listed id's logit is saved into its list entry,
 *    the penalties are applied (history entries in parallel: their ids are unique), then the
 *    biases (one warp, in list order: entries of one id are added in order by one lane), then the
 *    bans; the saved logits are written back before the kernel returns, bit for bit. NaN reads
 *    as -inf from here on, and so does an id the row's allowed-token mask (structured output)
 *    leaves out: the mask is applied where x is read, never written into the row. This keeps the
 * sampler out of the memory plan's big buffers: no (rows, V) scratch.
 *  - every later value is recomputed from the processed logit x_i where it is needed:
 *    e_i = exp(x_i / T - max) (0 below the top-k threshold), p_i = e_i * (1 / sum e), with the
 *    CPU's float operations in the CPU's order (no FMA contraction: __f*_rn), so both backends
 *    compute the same x, the same top-k threshold and p within a few ulps (CUDA's expf is
 *    within 2 ulps, glibc's within 1).
 *  - top-k (4 passes): radix select of the k-th largest over the order-preserving uint32 keys of
 *    the floats, 8-bit digits, block-wide histograms in shared memory.
 *  - softmax (1 pass): sum of e in double, as the CPU.
 *  - top-p (4 passes): the same radix select over p's bits with per-bucket SUMS of p instead of
 *    counts. The sums are fixed point (p * 2^62 in uint64, truncated: at most V * 2^-62 ~ 3e-14
 *    low in total), so they are exact and independent of the order the atomics land in.
 *  - draw (1 pass + a walk): each thread sums the kept p of a contiguous range of ids, a
 *    block-wide exclusive scan orders the ranges, and the one thread whose range holds u * S
 *    walks it to the token.
 * So a greedy row costs 1 pass (2 with penalties, bias, bans or a mask), a sampled one up to 12
 * (top-k and top-p after penalties), plus 1 for the alternatives (n more when ties overflow). The
 * normalization and draw sums are doubles as on the CPU (in another order), the top-p sums exact,
 * and p differs from the CPU's by <= ~6e-7 relative: the token can differ only when u * S lies
 * within that rounding distance of a cumulative boundary, or a p within a few ulps of a threshold
 * (tests/cuda/test_cuda_sample.c finds and counts such rows). */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "kernels.h"

#define THREADS  KILN_CUDA_SAMPLE_THREADS
#define WARPS    (THREADS / 32)
#define CAND_CAP 2048 /* top-n candidates held in shared memory */
#define FULL     0xffffffffu
#define NO_ID    0x7fffffff

struct arg_max {
    float v;
    int i;
};

/* running logsumexp: max m and sum of exp(x - m) */
struct lse_acc {
    float m, s;
};

__device__ __forceinline__ float ninf_if_nan(float v)
{
    return isnan(v) ? -INFINITY : v;
}

/* (v, i) order of the sampler: larger value first, ties to the smaller id */
__device__ __forceinline__ arg_max better(arg_max a, arg_max b)
{
    return (b.v > a.v || (b.v == a.v && b.i < a.i)) ? b : a;
}

__device__ __forceinline__ lse_acc lse_merge(lse_acc a, lse_acc b)
{
    float m = fmaxf(a.m, b.m);
    float fa = a.m == m ? 1.0f : expf(a.m - m), fb = b.m == m ? 1.0f : expf(b.m - m);
    return {m, __fadd_rn(__fmul_rn(a.s, fa), __fmul_rn(b.s, fb))};
}

template <typename T> __device__ __forceinline__ T shfl_xor(T v, int o)
{
    return __shfl_xor_sync(FULL, v, o);
}
__device__ __forceinline__ arg_max shfl_xor(arg_max a, int o)
{
    return {__shfl_xor_sync(FULL, a.v, o), __shfl_xor_sync(FULL, a.i, o)};
}
__device__ __forceinline__ lse_acc shfl_xor(lse_acc a, int o)
{
    return {__shfl_xor_sync(FULL, a.m, o), __shfl_xor_sync(FULL, a.s, o)};
}

/* Block-wide reduction; every thread gets the same result (the warps' partials are combined in
 * one fixed order by every thread). All threads must call it. scratch: 32 * 8 bytes. */
template <int NW = WARPS, typename T, typename Op>
__device__ T block_reduce(T v, Op op, void *scratch)
{
    T *sh = static_cast<T *>(scratch);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v = op(v, shfl_xor(v, o));
    __syncthreads(); /* the previous user of scratch is done reading */
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    T r = sh[0];
    for (int w = 1; w < NW; w++) r = op(r, sh[w]);
    return r;
}

/* Step 1's element update: the running logsumexp and the first argmax (ids ascend). */
__device__ __forceinline__ void take(lse_acc &acc, arg_max &am, float v, int i)
{
    if (v > acc.m) {
        acc.s = __fadd_rn(__fmul_rn(acc.s, expf(acc.m - v)), 1.0f);
        acc.m = v;
    } else if (v != -INFINITY) {
        acc.s += expf(v - acc.m); /* NaN makes the sum NaN, as on the CPU */
    }
    float w = ninf_if_nan(v);
    if (w > am.v || am.i == NO_ID) am = {w, i}; /* the first maximum stays */
}

/* Step 1 over row[begin, end) by `threads` threads (begin a multiple of 4). */
__device__ __forceinline__ void take_range(const float *row, int begin, int end, int threads,
                                           lse_acc &acc, arg_max &am)
{
    const int tid = threadIdx.x;
    if (end % 4 == 0 && (reinterpret_cast<uintptr_t>(row) & 15) == 0) {
        /* 16-byte loads, several in flight per thread (with one 4-byte load at a time one block
         * reading a row was latency-bound: ~65 us for 128K logits) */
        const float4 *row4 = reinterpret_cast<const float4 *>(row);
#pragma unroll 4
        for (int i4 = begin / 4 + tid; i4 < end / 4; i4 += threads) {
            float4 v = row4[i4];
            take(acc, am, v.x, 4 * i4), take(acc, am, v.y, 4 * i4 + 1);
            take(acc, am, v.z, 4 * i4 + 2), take(acc, am, v.w, 4 * i4 + 3);
        }
    } else {
        for (int i = begin + tid; i < end; i += threads) take(acc, am, row[i], i);
    }
}

#define SCAN_THREADS 256

/* Step 1 of row blockIdx.y, piece blockIdx.x of KILN_CUDA_SAMPLE_CHUNKS. */
__global__ void __launch_bounds__(SCAN_THREADS)
    k_sample_scan(const float *logits, int vocab, kiln_cuda_sample_part *parts)
{
    __shared__ __align__(8) unsigned char red[32 * 8];
    const int chunk = ((vocab + KILN_CUDA_SAMPLE_CHUNKS - 1) / KILN_CUDA_SAMPLE_CHUNKS + 3) & ~3;
    const int begin = min(vocab, (int)blockIdx.x * chunk), end = min(vocab, begin + chunk);
    lse_acc acc = {-INFINITY, 0.0f};
    arg_max am = {-INFINITY, NO_ID};
    take_range(logits + (size_t)blockIdx.y * vocab, begin, end, SCAN_THREADS, acc, am);
    constexpr int NW = SCAN_THREADS / 32;
    lse_acc all = block_reduce<NW>(
        acc, [](lse_acc a, lse_acc b) { return lse_merge(a, b); }, red);
    arg_max best = block_reduce<NW>(
        am, [](arg_max a, arg_max b) { return better(a, b); }, red);
    if (threadIdx.x == 0)
        parts[(size_t)blockIdx.y * KILN_CUDA_SAMPLE_CHUNKS + blockIdx.x] = {all.m, all.s, best.v,
                                                                            best.i};
}

/* Block-wide exclusive prefix sum in thread order; *total gets the sum of all. */
__device__ double block_exclusive_scan(double v, double *total, double *scratch)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    double incl = v;
    for (int o = 1; o < 32; o <<= 1) {
        double t = __shfl_up_sync(FULL, incl, o);
        if (lane >= o) incl += t;
    }
    double excl = __shfl_up_sync(FULL, incl, 1);
    if (lane == 0) excl = 0.0;
    __syncthreads();
    if (lane == 31) scratch[warp] = incl;
    __syncthreads();
    double before = 0.0, all = 0.0;
    for (int w = 0; w < WARPS; w++) {
        if (w == warp) before = all;
        all += scratch[w];
    }
    *total = all;
    return before + excl;
}

/* splitmix64, as kiln_splitmix64 (sampler.c) */
__device__ __forceinline__ uint64_t splitmix64(uint64_t x)
{
    uint64_t z = x + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* float -> uint32 with the same order (-inf lowest); -0 sorts below +0, which no threshold
 * notices: the keep tests compare floats. */
__device__ __forceinline__ uint32_t order_key(float f)
{
    uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_value(uint32_t k)
{
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

/* The largest key t such that the weights of the elements with key >= t add up to >= need >= 1
 * (weights 1: the need-th largest key), by 4 passes of 8-bit digits from the top: each pass
 * histograms the next digit of the elements that match the digits chosen so far, and picks the
 * bucket where the cumulative weight from the top reaches need. elem(i, &key, &w) says whether
 * id i takes part. Integer weights make the sums exact in any order. Returns false when all
 * weights together stay below need (then in the first pass).
 *
 * Histogram hist (256, COLS): lane l of every warp adds into column l % COLS, so the lanes of a
 * warp never hit one address together (real rows put most keys in a few buckets: the float's
 * exponent), and a thread adds a run of equal buckets once (flat rows). total: 256 words. */
struct radix_shared {
    unsigned long long above; /* weight of the elements above the chosen bucket */
    int bucket;
};
template <typename W, int COLS, typename Elem>
__device__ bool radix_select(int vocab, unsigned long long need, Elem elem, W *hist,
                             unsigned long long *total, radix_shared *rs, uint32_t *key)
{
    static_assert(THREADS == 4 * 256 && COLS % 4 == 0, "4 threads sum each bucket's columns");
    const int col = (threadIdx.x & 31) % COLS;
    uint32_t prefix = 0, mask = 0;
    unsigned long long above = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int j = threadIdx.x; j < 256 * COLS; j += THREADS) hist[j] = 0;
        __syncthreads();
        int run_b = -1;
        W run = 0;
        for (int i = threadIdx.x; i < vocab; i += THREADS) {
            uint32_t k;
            W w;
            if (!elem(i, &k, &w) || (k & mask) != prefix) continue;
            int b = (int)((k >> shift) & 255u);
            if (b != run_b) {
                if (run) atomicAdd(&hist[run_b * COLS + col], run);
                run_b = b;
                run = 0;
            }
            run += w;
        }
        if (run) atomicAdd(&hist[run_b * COLS + col], run);
        __syncthreads();
        {
            int b = threadIdx.x >> 2, q = threadIdx.x & 3;
            unsigned long long t = 0;
            for (int c = q * (COLS / 4); c < (q + 1) * (COLS / 4); c++) t += hist[b * COLS + c];
            t += __shfl_xor_sync(FULL, t, 1);
            t += __shfl_xor_sync(FULL, t, 2);
            if (q == 0) total[b] = t;
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            /* lane l holds buckets 255 - 8l down to 248 - 8l: a warp scan in lane order is a
             * cumulative sum from the top bucket down; one lane holds the crossing */
            int lane = threadIdx.x, hi = 255 - 8 * lane;
            unsigned long long mine = 0;
            for (int j = 0; j < 8; j++) mine += total[hi - j];
            unsigned long long incl = mine;
            for (int o = 1; o < 32; o <<= 1) {
                unsigned long long t = __shfl_up_sync(FULL, incl, o);
                if (lane >= o) incl += t;
            }
            unsigned long long c = above + (incl - mine);
            if (lane == 0) rs->bucket = -1;
            __syncwarp();
            if (c < need && above + incl >= need) {
                for (int j = 0; j < 8; j++) {
                    if (c + total[hi - j] >= need) {
                        rs->bucket = hi - j;
                        rs->above = c;
                        break;
                    }
                    c += total[hi - j];
                }
            }
        }
        __syncthreads();
        int b = rs->bucket;
        if (b < 0) return false;
        prefix |= (uint32_t)b << shift;
        mask |= 255u << shift;
        above = rs->above;
    }
    *key = prefix;
    return true;
}

/* Step 2's last rule: an id the row's allowed-token mask leaves out (mask not NULL) reads as
 * -inf. The mask is applied where the processed logit is read, not written into the row, so
 * the raw row needs no restoring. */
__device__ __forceinline__ float processed(const float *row, const uint32_t *mask, int i)
{
    if (mask && !((mask[i >> 5] >> (i & 31)) & 1u)) return -INFINITY;
    return ninf_if_nan(row[i]);
}

/* A row's processed logits x (in place, NaN read as -inf, masked ids -inf) -> the sampler's
 * values for id i. */
struct row_values {
    const float *row;
    const uint32_t *mask; /* allowed tokens, NULL: all */
    float inv_t, mx_t;    /* 1 / temperature; the largest x * inv_t */
    bool topk;
    float kth;     /* top-k threshold on x * inv_t */
    float inv_sum; /* 1 / sum of e */
    float keep;    /* larger of the top-p and min-p thresholds on p (0: none) */

    __device__ float scaled(int i) const
    {
        return __fmul_rn(processed(row, mask, i), inv_t);
    }
    /* step 4-5: exp(x - max) of the ids top-k keeps, else 0 */
    __device__ float e(int i) const
    {
        float x = scaled(i);
        if (topk && !(x >= kth)) return 0.0f;
        return expf(__fsub_rn(x, mx_t));
    }
    __device__ float p(int i) const
    {
        return __fmul_rn(e(i), inv_sum);
    }
    /* steps 6-7: p of the ids every threshold keeps, else 0 */
    __device__ float kept(int i) const
    {
        float q = p(i);
        return q < keep ? 0.0f : q;
    }
};

struct topk_elem {
    row_values rv;
    __device__ bool operator()(int i, uint32_t *key, unsigned *w) const
    {
        *key = order_key(rv.scaled(i));
        *w = 1;
        return true;
    }
};

#define FIXED_ONE 0x1p62f /* top-p sums: p in units of 2^-62 */

struct topp_elem {
    row_values rv;
    __device__ bool operator()(int i, uint32_t *key, unsigned long long *w) const
    {
        float q = rv.p(i);
        if (!(q > 0.0f)) return false;
        *key = __float_as_uint(q); /* positive floats order as their bits */
        *w = __float2ull_rz(q * FIXED_ONE);
        return true;
    }
};

/* The list entry e of a row (history, then bias, then banned) and its "saved" word. */
__device__ __forceinline__ int32_t *list_entry(const kiln_cuda_sample_row &P, int32_t *words, int e,
                                               int32_t **saved)
{
    int32_t *w;
    if (e < P.n_hist) {
        w = words + P.hist + KILN_CUDA_SAMPLE_HIST_WORDS * e;
        *saved = w + 3;
    } else if (e < P.n_hist + P.n_bias) {
        w = words + P.bias + KILN_CUDA_SAMPLE_BIAS_WORDS * (e - P.n_hist);
        *saved = w + 2;
    } else {
        w = words + P.banned + KILN_CUDA_SAMPLE_BANNED_WORDS * (e - P.n_hist - P.n_bias);
        *saved = w + 1;
    }
    return w;
}

__global__ void __launch_bounds__(THREADS)
    k_sample(float *logits, int vocab, const kiln_cuda_sample_row *rows, int32_t *words,
             const kiln_cuda_sample_part *parts, kiln_cuda_sample_out *out)
{
    /* the top-n buffers and the two histograms are used one after the other: 32 KiB */
    __shared__ union {
        struct {
            float thread_max[THREADS];
            float cand_v[CAND_CAP];
            int cand_i[CAND_CAP];
        } top;
        unsigned count[256 * 32];
        unsigned long long sum[256 * 16];
    } sm;
    __shared__ __align__(8) unsigned char red[32 * 8];
    __shared__ double scan[WARPS];
    __shared__ unsigned long long bucket_total[256];
    __shared__ radix_shared rs;
    __shared__ int n_cand, token_sh;

    const kiln_cuda_sample_row P = rows[blockIdx.x];
    float *row = logits + (size_t)blockIdx.x * vocab;
    const uint32_t *mask = P.mask >= 0 ? reinterpret_cast<const uint32_t *>(words + P.mask) : NULL;
    kiln_cuda_sample_out *o = out + blockIdx.x;
    const int tid = threadIdx.x;
    const auto best_of = [](arg_max a, arg_max b) { return better(a, b); };
    const auto min_of = [](auto a, auto b) { return a < b ? a : b; };
    const auto max_of = [](auto a, auto b) { return a > b ? a : b; };

    /* ---- step 1: logsumexp and argmax of the raw row, one pass ---- */
    lse_acc acc = {-INFINITY, 0.0f};
    arg_max am = {-INFINITY, NO_ID}; /* over the row with NaN as -inf */
    if (parts) {
        /* the pieces k_sample_scan took: a thread per piece, merged below as the threads' own
         * partials would be (the top-n floor below then comes from the pieces' maxima) */
        if (tid < KILN_CUDA_SAMPLE_CHUNKS) {
            const kiln_cuda_sample_part pt =
                parts[(size_t)blockIdx.x * KILN_CUDA_SAMPLE_CHUNKS + tid];
            acc = {pt.m, pt.s};
            am = {pt.v, pt.i};
        }
    } else {
        take_range(row, 0, vocab, THREADS, acc, am);
    }
    const float own_max = acc.m; /* this thread's largest non-NaN logit */
    lse_acc all = block_reduce(
        acc, [](lse_acc a, lse_acc b) { return lse_merge(a, b); }, red);
    /* the CPU's mx + log(sum exp(x - mx)); NaN where that is (any NaN, max -inf or +inf) */
    const float lse = isfinite(all.m) ? __fadd_rn(all.m, logf(all.s)) : NAN;
    arg_max best_x = block_reduce(am, best_of, red);

    /* ---- step 1: the top alternatives ---- */
    int n_top = 0;
    if (P.n_logprobs > 0) {
        const int n = P.n_logprobs;
        float *thread_max = sm.top.thread_max, *cand_v = sm.top.cand_v;
        int *cand_i = sm.top.cand_i;
        thread_max[tid] = own_max;
        if (tid == 0) n_cand = 0;
        __syncthreads();
        /* the n-th largest thread maximum: n distinct logits are >= it */
        int above = 0;
        for (int j = 0; j < THREADS && above < n; j++) above += thread_max[j] > own_max;
        float floor_v = block_reduce(above < n ? own_max : INFINITY, min_of, red);
        for (int i = tid; i < vocab; i += THREADS) {
            float v = row[i];
            /* false for NaN; no more atomics once the buffer overflowed (flat rows) */
            if (v >= floor_v && *(volatile int *)&n_cand <= CAND_CAP) {
                int k = atomicAdd(&n_cand, 1);
                if (k < CAND_CAP) cand_v[k] = v, cand_i[k] = i;
            }
        }
        __syncthreads();
        const int nc = n_cand; /* > CAND_CAP: overflowed */
        arg_max prev = {INFINITY, -1};
        for (; n_top < n; n_top++) {
            arg_max b = {-INFINITY, NO_ID};
            if (nc <= CAND_CAP) {
                for (int j = tid; j < nc; j += THREADS) {
                    float v = cand_v[j];
                    int i = cand_i[j];
                    if (v < prev.v || (v == prev.v && i > prev.i)) b = better(b, {v, i});
                }
            } else {
                for (int i = tid; i < vocab; i += THREADS) {
                    float v = row[i];
                    if (!isnan(v) && (v < prev.v || (v == prev.v && i > prev.i)))
                        b = better(b, {v, i});
                }
            }
            b = block_reduce(b, best_of, red);
            if (b.i == NO_ID) break; /* fewer non-NaN logits than asked */
            if (tid == 0) {
                o->top_ids[n_top] = b.i;
                o->top_logprobs[n_top] = b.v - lse;
            }
            prev = b;
        }
    }

    /* ---- step 2: penalties, bias, bans, in place; the mask where x is read ---- */
    const int n_list = P.n_hist + P.n_bias + P.n_banned;
    if (n_list > 0) {
        for (int e = tid; e < n_list; e += THREADS) {
            int32_t *saved, *w = list_entry(P, words, e, &saved);
            if (w[0] >= 0 && w[0] < vocab) *saved = __float_as_int(row[w[0]]);
        }
        __syncthreads();
        const float rp = P.repetition_penalty;
        for (int h = tid; h < P.n_hist; h += THREADS) {
            const int32_t *w = words + P.hist + KILN_CUDA_SAMPLE_HIST_WORDS * h;
            int id = w[0], count = w[1];
            if (id < 0 || id >= vocab) continue;
            float v = ninf_if_nan(row[id]);
            if (rp != 1.0f && (w[2] || count > 0)) v = v > 0 ? __fdiv_rn(v, rp) : __fmul_rn(v, rp);
            v = __fsub_rn(v, __fadd_rn(__fmul_rn(P.frequency_penalty, (float)count),
                                       __fmul_rn(P.presence_penalty, (float)(count > 0))));
            row[id] = v;
        }
        __syncthreads();
        if (tid < 32) {
            /* 32 entries at a time; the lowest lane of each id adds that id's biases in list
             * order, so repeated ids sum exactly as the CPU's loop does */
            for (int c = 0; c < P.n_bias; c += 32) {
                int j = c + tid, id = -1;
                float bv = 0.0f;
                if (j < P.n_bias) {
                    id = words[P.bias + KILN_CUDA_SAMPLE_BIAS_WORDS * j];
                    bv = __int_as_float(words[P.bias + KILN_CUDA_SAMPLE_BIAS_WORDS * j + 1]);
                }
                bool valid = id >= 0 && id < vocab;
                unsigned peers = __match_any_sync(FULL, valid ? id : -1);
                bool lead = valid && (__ffs(peers) - 1) == tid;
                float v = lead ? ninf_if_nan(row[id]) : 0.0f;
                for (int l = 0; l < 32; l++) {
                    float add = __shfl_sync(FULL, bv, l);
                    if (lead && ((peers >> l) & 1u)) v = __fadd_rn(v, add);
                }
                if (lead) row[id] = v;
                __syncwarp();
            }
        }
        __syncthreads();
        for (int k = tid; k < P.n_banned; k += THREADS) {
            int id = words[P.banned + KILN_CUDA_SAMPLE_BANNED_WORDS * k];
            if (id >= 0 && id < vocab) row[id] = -INFINITY;
        }
        __syncthreads();
    }
    if (n_list > 0 || mask) {
        arg_max m = {-INFINITY, NO_ID};
        for (int i = tid; i < vocab; i += THREADS) {
            float w = processed(row, mask, i);
            if (w > m.v || m.i == NO_ID) m = {w, i};
        }
        best_x = block_reduce(m, best_of, red);
    }

    /* ---- step 3: greedy; steps 4-8: the draw ---- */
    int token;
    if (P.greedy) {
        token = best_x.i;
    } else {
        row_values rv;
        rv.row = row;
        rv.mask = mask;
        rv.inv_t = __fdiv_rn(1.0f, P.temperature);
        rv.mx_t = __fmul_rn(best_x.v, rv.inv_t); /* rounding is monotone: the max stays the max */
        rv.topk = P.top_k > 0 && P.top_k < vocab;
        rv.kth = -INFINITY;
        rv.inv_sum = 0.0f;
        rv.keep = 0.0f;
        if (rv.mx_t == -INFINITY) {
            token = 0; /* everything banned: the CPU's argmax of an all -inf row */
        } else {
            if (rv.topk) {
                uint32_t k = 0;
                if (P.top_k == 1) {
                    rv.kth = rv.mx_t;
                } else {
                    radix_select<unsigned, 32>(vocab, (unsigned long long)P.top_k, topk_elem{rv},
                                               sm.count, bucket_total, &rs, &k);
                    rv.kth = key_value(k);
                }
            }
            /* step 5: the normalization; the largest p is the largest e times 1 / sum */
            double sum = 0.0;
            float e_max = 0.0f;
            for (int i = tid; i < vocab; i += THREADS) {
                float e = rv.e(i);
                sum += e;
                e_max = fmaxf(e_max, e);
            }
            sum = block_reduce(
                sum, [](double a, double b) { return a + b; }, red);
            e_max = block_reduce(e_max, max_of, red);
            rv.inv_sum = (float)(1.0 / sum);
            float p_max = __fmul_rn(e_max, rv.inv_sum);
            /* step 6: top-p threshold (none when rounding leaves the total below top_p) */
            if (P.top_p < 1.0f) {
                unsigned long long need = P.top_p > 0.0f ? __float2ull_ru(P.top_p * FIXED_ONE) : 0;
                uint32_t k;
                if (radix_select<unsigned long long, 16>(vocab, need > 0 ? need : 1ull,
                                                         topp_elem{rv}, sm.sum, bucket_total, &rs,
                                                         &k))
                    rv.keep = __uint_as_float(k);
            }
            /* step 7 */
            if (P.min_p > 0.0f) rv.keep = fmaxf(rv.keep, __fmul_rn(P.min_p, p_max));

            /* step 8: thread t sums the kept p of ids [t * chunk, (t + 1) * chunk) */
            const int chunk = (vocab + THREADS - 1) / THREADS;
            const int lo = min(tid * chunk, vocab), hi = min(lo + chunk, vocab);
            double mine = 0.0;
            int last = -1;
            for (int i = lo; i < hi; i++) {
                float q = rv.kept(i);
                if (q > 0.0f) {
                    mine += q;
                    last = i;
                }
            }
            double total;
            double before = block_exclusive_scan(mine, &total, scan);
            const double u = (double)(splitmix64(P.seed ^ splitmix64(P.step)) >> 40) * 0x1p-24;
            const double target = u * total;
            /* the first range whose end passes the target holds the token */
            int owner =
                block_reduce(mine > 0.0 && before + mine > target ? tid : NO_ID, min_of, red);
            int last_kept = block_reduce(last, max_of, red);
            if (owner == NO_ID) {
                if (tid == 0) token_sh = last_kept >= 0 ? last_kept : 0; /* CPU's fallbacks */
            } else if (tid == owner) {
                /* the running sum repeats `mine`'s additions in order, so before + run reaches
                 * before + mine (> target) at the range's last kept id at the latest */
                double run = 0.0;
                int pick = last;
                for (int i = lo; i < hi; i++) {
                    float q = rv.kept(i);
                    if (!(q > 0.0f)) continue;
                    run += q;
                    if (before + run > target) {
                        pick = i;
                        break;
                    }
                }
                token_sh = pick;
            }
            __syncthreads();
            token = token_sh;
        }
    }

    /* ---- restore the raw logits; the token's log-probability under them ---- */
    if (n_list > 0) {
        __syncthreads(); /* every read of the processed row is done */
        for (int e = tid; e < n_list; e += THREADS) {
            int32_t *saved, *w = list_entry(P, words, e, &saved);
            if (w[0] >= 0 && w[0] < vocab) row[w[0]] = __int_as_float(*saved);
        }
        __syncthreads();
    }
    if (tid == 0) {
        o->token = token;
        o->logprob = row[token] - lse;
        o->n_top = n_top;
    }
}

extern "C" int kiln_cuda_sample(float *logits, int n, int vocab, void *args,
                                struct kiln_cuda_sample_part *parts,
                                struct kiln_cuda_sample_out *out, kiln_stream stream)
{
    if (n <= 0) return 0;
    if (vocab <= 0 || n > 65535) return cudaErrorInvalidValue;
    const kiln_cuda_sample_row *rows = static_cast<const kiln_cuda_sample_row *>(args);
    int32_t *words = reinterpret_cast<int32_t *>(static_cast<kiln_cuda_sample_row *>(args) + n);
    /* the split pass pays off while one block per row leaves SMs idle: at 256 rows of 128K it
     * took 0.133 ms against 0.075 (H100) */
    if (n > KILN_CUDA_SAMPLE_SPLIT_ROWS) parts = NULL;
    if (parts) {
        k_sample_scan<<<dim3(KILN_CUDA_SAMPLE_CHUNKS, n), SCAN_THREADS, 0, stream>>>(logits, vocab,
                                                                                     parts);
        cudaError_t e = cudaGetLastError();
        if (e) return e;
    }
    k_sample<<<n, THREADS, 0, stream>>>(logits, vocab, rows, words, parts, out);
    return cudaGetLastError();
}
