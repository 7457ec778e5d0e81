/* Shared device helpers for the CUDA kernels: FP8/BF16 conversions that match the CPU twins
 * (src/core/numeric.h), warp reductions, and the tensor-core mma wrappers. */
#ifndef KILN_BACKEND_CUDA_COMMON_CUH
#define KILN_BACKEND_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "kernels.h" /* KILN_TRACE_BLOCKS */

#define KILN_FP8_MAX_F 448.0f

/* sat_e4m3(x): round to nearest even, saturate to +-448 (NaN stays NaN) -- the CPU twin is
 * kiln_f32_to_e4m3. */
__device__ __forceinline__ uint8_t to_e4m3(float x)
{
    return (uint8_t)__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
}

/* 4 packed e4m3 codes (little-endian bytes) -> 4 floats (exact) */
__device__ __forceinline__ float4 e4m3x4_to_float4(uint32_t v)
{
    __half2_raw lo = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(v & 0xffff), __NV_E4M3);
    __half2_raw hi = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(v >> 16), __NV_E4M3);
    float2 a = __half22float2(*reinterpret_cast<__half2 *>(&lo));
    float2 b = __half22float2(*reinterpret_cast<__half2 *>(&hi));
    return make_float4(a.x, a.y, b.x, b.y);
}

__device__ __forceinline__ float bf16_bits_to_float(uint16_t b)
{
    return __uint_as_float((uint32_t)b << 16);
}

/* RNE float -> bf16 bits (NaN kept), as kiln_f32_to_bf16. */
__device__ __forceinline__ uint16_t float_to_bf16_bits(float f)
{
    __nv_bfloat16 h = __float2bfloat16_rn(f);
    return *reinterpret_cast<uint16_t *>(&h);
}

/* f rounded to bf16 and back (what a bf16 store and load would give). */
__device__ __forceinline__ float bf16_round(float f)
{
    return bf16_bits_to_float(float_to_bf16_bits(f));
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi)
{
    return (uint32_t)float_to_bf16_bits(lo) | ((uint32_t)float_to_bf16_bits(hi) << 16);
}

/* RNE float -> f16, two packed (lo in the low half), as the f16 mma operands want them. */
__device__ __forceinline__ uint32_t pack_f16x2(float lo, float hi)
{
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&h);
}

/* The 2 e4m3 codes in the low 16 bits -> 2 packed f16 (exact: every e4m3 value is an f16). */
__device__ __forceinline__ uint32_t e4m3x2_to_f16x2(uint32_t pair)
{
    __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(pair & 0xffff), __NV_E4M3);
    return (uint32_t)h.x | ((uint32_t)h.y << 16);
}

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Block-wide sum over blockDim.x threads (a multiple of 32, <= 1024); every thread gets it.
 * scratch holds 32 floats. */
__device__ __forceinline__ float block_sum(float v, float *scratch)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < nw ? scratch[lane] : 0.0f;
    return warp_sum(t);
}

/* D (16x8 f32) += A (16x32 e4m3, row) * B (32x8 e4m3, col). sm_89+. */
__device__ __forceinline__ void mma_e4m3_16x8x32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                 uint32_t b1)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

/* D (16x8 f32) += A (16x16 bf16, row) * B (16x8 bf16, col). sm_80+. */
__device__ __forceinline__ void mma_bf16_16x8x16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                 uint32_t b1)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

/* mma m16n8k16 (f32 accumulators, A and B of element type T: "bf16" or "f16") when only rows
 * 0..7 of A are live: a = {a0, a2} (rows 8..15 zero), d = {c0, c1}; rows 8..15 of D go to scratch
 * registers and are dropped, so a caller with <= 8 rows keeps half the accumulators. */
#define KILN_MMA_16816_ROWS8(T, d, a, b0, b1)                                                      \
    asm volatile("{\n.reg .f32 z0, z1;\n"                                                          \
                 "mma.sync.aligned.m16n8k16.row.col.f32." T "." T ".f32 "                          \
                 "{%0,%1,z0,z1}, {%2,%3,%4,%3}, {%5,%6}, {%0,%1,%7,%7};\n}\n"                      \
                 : "+f"(d[0]), "+f"(d[1])                                                          \
                 : "r"(a[0]), "r"(0u), "r"(a[1]), "r"(b0), "r"(b1), "f"(0.0f))

/* D (16x8 f32) += A (16x16 f16, row) * B (16x8 f16, col). sm_80+. */
__device__ __forceinline__ void mma_f16_16x8x16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                uint32_t b1)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

__device__ __forceinline__ void mma_bf16_16x8x16_rows8(float (&d)[2], const uint32_t (&a)[2],
                                                       uint32_t b0, uint32_t b1)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    KILN_MMA_16816_ROWS8("bf16", d, a, b0, b1);
#endif
}

__device__ __forceinline__ void mma_f16_16x8x16_rows8(float (&d)[2], const uint32_t (&a)[2],
                                                      uint32_t b0, uint32_t b1)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    KILN_MMA_16816_ROWS8("f16", d, a, b0, b1);
#endif
}

/* 16-byte global load that bypasses L1 allocation (weights are streamed once). */
__device__ __forceinline__ uint4 ldg_stream(const void *p)
{
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

/* The 8-byte version (streamed once, no L1 allocation). */
__device__ __forceinline__ uint2 ldg_stream8(const void *p)
{
    uint2 r;
    asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];\n"
                 : "=r"(r.x), "=r"(r.y)
                 : "l"(p));
    return r;
}

/* Asynchronous 16-byte global -> shared copy, cached in L2 only (weights are streamed once). */
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem)
{
    unsigned addr = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(addr), "l"(gmem));
}

__device__ __forceinline__ void cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n" ::);
}

/* Waits until at most N of this thread's committed groups are still in flight. */
template <int N> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* ---- Hopper bulk copies (TMA, 1-D) into shared memory, completed on an mbarrier (sm_90+) ---- */
__device__ __forceinline__ unsigned smem_u32(const void *p)
{
    return (unsigned)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void mbar_init(uint64_t *bar, unsigned count)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count));
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

/* Arms the barrier's current phase to complete once `bytes` have arrived (one arrival). */
__device__ __forceinline__ void mbar_expect(uint64_t *bar, unsigned bytes)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)),
                 "r"(bytes)
                 : "memory");
#endif
}

/* One arrival on the barrier (a consumer releasing a ring slot). */
__device__ __forceinline__ void mbar_arrive(uint64_t *bar)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
#endif
}

/* Waits until the barrier's phase with this parity has completed. */
__device__ __forceinline__ void mbar_wait(uint64_t *bar, unsigned parity)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("{\n"
                 ".reg .pred P1;\n"
                 "WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
                 "@P1 bra DONE;\n"
                 "bra WAIT;\n"
                 "DONE:\n"
                 "}\n" ::"r"(smem_u32(bar)),
                 "r"(parity)
                 : "memory");
#endif
}

/* Copies `bytes` (a multiple of 16, both addresses 16-byte aligned) from global to shared
 * memory; completion is counted on bar. */
__device__ __forceinline__ void bulk_copy(void *dst, const void *src, unsigned bytes, uint64_t *bar)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], "
                 "%2, [%3];\n" ::"r"(smem_u32(dst)),
                 "l"(src), "r"(bytes), "r"(smem_u32(bar))
                 : "memory");
#endif
}

/* bulk_copy whose lines L2 evicts first (weights streamed once a step). */
__device__ __forceinline__ void bulk_copy_evict_first(void *dst, const void *src, unsigned bytes,
                                                      uint64_t *bar)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    uint64_t policy;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint "
                 "[%0], [%1], %2, [%3], %4;\n" ::"r"(smem_u32(dst)),
                 "l"(src), "r"(bytes), "r"(smem_u32(bar)), "l"(policy)
                 : "memory");
#endif
}

/* Asks L2 to fetch `bytes` (a multiple of 16, 16-byte aligned) from global memory: a hint,
 * nothing waits for it and it lands in no shared memory. */
__device__ __forceinline__ void l2_prefetch(const void *src, unsigned bytes)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(src), "r"(bytes) : "memory");
#endif
}

/* ---- programmatic dependent launch (sm_90+; no-ops on sm_89) ----
 * A kernel launched with launch_pdl may start while the kernel before it in the stream is still
 * running: it first does work that depends on nothing that kernel writes (prefetching its
 * weights), then pdl_wait() blocks until the previous grid has completed and its writes are
 * visible. pdl_trigger() lets the next kernel's blocks launch as soon as this grid's blocks
 * retire, so launch latency and load ramp-up overlap the tail of the previous kernel. Every read
 * of activations and every write must come after pdl_wait(); reads before it touch only what no
 * kernel of this step writes (weights, the step's batch description, KV rows of earlier
 * steps). */
__device__ __forceinline__ void pdl_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

/* KILN_TRACE: the block stamps %globaltimer into tr[KILN_TRACE_SLOTS * block + i] (i: 0 entry,
 * 1 the wait on the previous kernel done, 2 end, 3.. marks of the kernel's phases; blocks
 * numbered x fastest, the first KILN_TRACE_BLOCKS); tr NULL when not tracing. */
__device__ __forceinline__ void trace_stamp(unsigned long long *tr, int i)
{
    const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    if (tr && threadIdx.x == 0 && block < KILN_TRACE_BLOCKS) {
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        tr[KILN_TRACE_SLOTS * block + i] = t;
    }
}

/* KILN_TRACE: the block's multiprocessor (+ 1, so 0 stays "no block") into its last slot. */
__device__ __forceinline__ void trace_smid(unsigned long long *tr)
{
    const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    if (tr && threadIdx.x == 0 && block < KILN_TRACE_BLOCKS) {
        unsigned sm;
        asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
        tr[KILN_TRACE_SLOTS * block + KILN_TRACE_SLOTS - 1] = sm + 1;
    }
}

__device__ __forceinline__ void pdl_trigger()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

/* Whether launches use programmatic dependent launch: compute capability >= 9.0 and kernels
 * compiled for it (kiln_cuda_hopper_code), unless the environment sets KILN_PDL=0 (to measure
 * without it). */
extern "C" bool kiln_cuda_pdl(void);
/* Whether the kernels that run were compiled for sm_90 or later (griddepcontrol, TMA bulk copies
 * and their mbarriers): a GPU's compute capability alone does not say, since the Ada variant
 * (PTX for compute_89 only, KILN_CUDA_ARCHS=89-virtual) JIT-compiled on a Hopper GPU has none of
 * them; the Hopper-only paths (programmatic launch, the TMA GEMV ring) key on this too. */
extern "C" bool kiln_cuda_hopper_code(void);

/* kernel<<<grid, block, smem, stream>>>(args...), with the programmatic-serialization attribute
 * when kiln_cuda_pdl(): the kernel must call pdl_wait() before touching activations. */
template <typename... KArgs, typename... Args>
static cudaError_t launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                              cudaStream_t stream, Args... args)
{
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cfg.attrs = attr;
    cfg.numAttrs = kiln_cuda_pdl() ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, args...);
}

#endif
