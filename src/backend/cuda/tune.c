/* Build-time GPU work: device facts and cuBLASLt algorithm timing (tune.h), plus the GEMM
 * descriptors the backend shares with it (lt_desc.h).
 *
 * Timing: cuBLASLt's heuristic ranks candidates by a model of the GPU, and its first choice is
 * not always the fastest for a given shape (split-K and tile choices for skinny N especially).
 * Each candidate runs on random FP8 / bf16 data of the real shape: 2 warm-up runs, then 10
 * timed with CUDA events; the fastest is recorded. 4 layer GEMMs x ~10 token buckets x 8
 * candidates take about 2 s on an H100 for Llama-3.1-8B at max_num_tokens 8192. */
#include <cuda_runtime_api.h>
#include <stdlib.h>
#include <string.h>

#include "lt_desc.h"
#include "plan.h"
#include "tune.h"

#define WARMUP         2
#define REPS           10
#define MAX_CANDIDATES 32

cublasStatus_t kiln_lt_describe(int M, int n, int K, bool fp8, bool out_bf16, int ldc,
                                cublasLtMatmulDesc_t *desc, cublasLtMatrixLayout_t *la,
                                cublasLtMatrixLayout_t *lb, cublasLtMatrixLayout_t *lc)
{
    cudaDataType_t in_t = fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasStatus_t st = cublasLtMatmulDescCreate(desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (!st)
        st = cublasLtMatmulDescSetAttribute(*desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    if (!st)
        st = cublasLtMatmulDescSetAttribute(*desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    if (!st) st = cublasLtMatrixLayoutCreate(la, in_t, (uint64_t)K, (uint64_t)M, K);
    if (!st) st = cublasLtMatrixLayoutCreate(lb, in_t, (uint64_t)K, (uint64_t)n, K);
    if (!st)
        st = cublasLtMatrixLayoutCreate(lc, out_bf16 ? CUDA_R_16BF : CUDA_R_32F, (uint64_t)M,
                                        (uint64_t)n, ldc);
    return st;
}

cublasStatus_t kiln_lt_heuristic(cublasLtHandle_t lt, cublasLtMatmulDesc_t desc,
                                 cublasLtMatrixLayout_t la, cublasLtMatrixLayout_t lb,
                                 cublasLtMatrixLayout_t lc, int requested,
                                 cublasLtMatmulHeuristicResult_t *res, int *found)
{
    cublasLtMatmulPreference_t pref = NULL;
    size_t ws = KILN_CUDA_LT_WORKSPACE;
    *found = 0;
    cublasStatus_t st = cublasLtMatmulPreferenceCreate(&pref);
    if (!st)
        st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                  &ws, sizeof ws);
    if (!st)
        st = cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, requested, res, found);
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    return st;
}

bool kiln_lt_algo_usable(cublasLtHandle_t lt, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t la,
                         cublasLtMatrixLayout_t lb, cublasLtMatrixLayout_t lc,
                         const cublasLtMatmulAlgo_t *algo)
{
    cublasLtMatmulHeuristicResult_t r;
    memset(&r, 0, sizeof r);
    return cublasLtMatmulAlgoCheck(lt, desc, la, lb, lc, lc, algo, &r) == CUBLAS_STATUS_SUCCESS &&
           r.workspaceSize <= KILN_CUDA_LT_WORKSPACE;
}

enum kiln_status kiln_cuda_device_info(int device, struct kiln_cuda_device *out,
                                       struct kiln_error *err)
{
    memset(out, 0, sizeof *out);
    struct cudaDeviceProp prop;
    cudaError_t ce = cudaGetDeviceProperties(&prop, device);
    size_t free_b = 0, total_b = 0;
    if (!ce) ce = cudaSetDevice(device);
    if (!ce) ce = cudaMemGetInfo(&free_b, &total_b);
    if (ce) return kiln_errorf(err, KILN_ERR_CUDA, "GPU %d: %s", device, cudaGetErrorString(ce));
    snprintf(out->name, sizeof out->name, "%s", prop.name);
    out->cc_major = prop.major;
    out->cc_minor = prop.minor;
    out->total_bytes = total_b;
    out->free_bytes = free_b;
    out->cublaslt_version = (int)cublasLtGetVersion();
    return KILN_OK;
}

struct tuner {
    cudaStream_t stream;
    cublasLtHandle_t lt;
    void *a, *b, *d, *ws; /* weights, activations, output, workspace */
    cudaEvent_t e0, e1;
};

static void tuner_free(struct tuner *t)
{
    if (t->e0) cudaEventDestroy(t->e0);
    if (t->e1) cudaEventDestroy(t->e1);
    cudaFree(t->a);
    cudaFree(t->b);
    cudaFree(t->d);
    cudaFree(t->ws);
    if (t->lt) cublasLtDestroy(t->lt);
    if (t->stream) cudaStreamDestroy(t->stream);
}

/* Random bytes of moderate magnitude (the high bits of every byte cleared, so neither FP8 codes
 * nor bf16 halves are NaN or huge), repeated from a 16 MiB pattern. */
static cudaError_t fill_random(void *dst, size_t bytes)
{
    size_t pat = bytes < (16u << 20) ? bytes : (16u << 20);
    uint8_t *h = malloc(pat ? pat : 1);
    if (!h) return cudaErrorMemoryAllocation;
    uint64_t r = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < pat; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        h[i] = (uint8_t)((r >> 40) & 0x3b);
    }
    cudaError_t ce = cudaSuccess;
    for (size_t off = 0; !ce && off < bytes; off += pat)
        ce = cudaMemcpy((uint8_t *)dst + off, h, bytes - off < pat ? bytes - off : pat,
                        cudaMemcpyHostToDevice);
    free(h);
    return ce;
}

/* Microseconds per run of one algorithm; < 0 when it fails to run. */
static float time_algo(struct tuner *t, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t la,
                       cublasLtMatrixLayout_t lb, cublasLtMatrixLayout_t lc,
                       const cublasLtMatmulAlgo_t *algo)
{
    float alpha = 1.0f, beta = 0.0f;
    for (int i = 0; i < WARMUP + REPS; i++) {
        if (i == WARMUP && cudaEventRecord(t->e0, t->stream)) return -1;
        if (cublasLtMatmul(t->lt, desc, &alpha, t->a, la, t->b, lb, &beta, t->d, lc, t->d, lc, algo,
                           t->ws, KILN_CUDA_LT_WORKSPACE, t->stream))
            return -1;
    }
    float ms = 0;
    if (cudaEventRecord(t->e1, t->stream) || cudaEventSynchronize(t->e1) ||
        cudaEventElapsedTime(&ms, t->e0, t->e1))
        return -1;
    return ms * 1000.0f / REPS;
}

static enum kiln_status tune_one(struct tuner *t, const struct kiln_gemm_shape *s, int candidates,
                                 struct kiln_gemm_algo *out, struct kiln_error *err)
{
    cublasLtMatmulDesc_t desc = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL;
    cublasLtMatmulHeuristicResult_t res[MAX_CANDIDATES];
    int found = 0;
    cublasStatus_t cs =
        kiln_lt_describe(s->M, s->N, s->K, s->fp8, s->out_bf16, s->M, &desc, &la, &lb, &lc);
    if (!cs) cs = kiln_lt_heuristic(t->lt, desc, la, lb, lc, candidates, res, &found);
    int best = -1;
    float best_us = 0, first_us = 0;
    for (int c = 0; !cs && c < found; c++) {
        if (res[c].state != CUBLAS_STATUS_SUCCESS || res[c].workspaceSize > KILN_CUDA_LT_WORKSPACE)
            continue;
        float us = time_algo(t, desc, la, lb, lc, &res[c].algo);
        if (c == 0) first_us = us;
        if (us > 0 && (best < 0 || us < best_us)) {
            best = c;
            best_us = us;
        }
    }
    enum kiln_status st = KILN_OK;
    if (cs || best < 0) {
        st = kiln_errorf(err, KILN_ERR_CUDA,
                         "cuBLASLt: no usable %s GEMM algorithm for M=%d N=%d K=%d (status %d, %d "
                         "candidates)",
                         s->fp8 ? "FP8" : "BF16", s->M, s->N, s->K, (int)cs, found);
    } else {
        *out = (struct kiln_gemm_algo){.M = s->M,
                                       .N = s->N,
                                       .K = s->K,
                                       .fp8 = s->fp8,
                                       .us = best_us,
                                       .heuristic_us = first_us > 0 ? first_us : best_us};
        memcpy(out->algo, res[best].algo.data, sizeof out->algo);
        size_t written = 0;
        int id = -1;
        if (cublasLtMatmulAlgoConfigGetAttribute(&res[best].algo, CUBLASLT_ALGO_CONFIG_ID, &id,
                                                 sizeof id, &written))
            id = -1;
        out->id = id;
    }
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (desc) cublasLtMatmulDescDestroy(desc);
    return st;
}

enum kiln_status kiln_cuda_tune_gemms(int device, const struct kiln_gemm_shape *shapes, int n,
                                      int candidates, struct kiln_gemm_algo *out,
                                      struct kiln_error *err)
{
    if (candidates < 1) candidates = 1;
    if (candidates > MAX_CANDIDATES) candidates = MAX_CANDIDATES;
    size_t a_bytes = 1, b_bytes = 1, d_bytes = 1;
    for (int i = 0; i < n; i++) {
        size_t es = shapes[i].fp8 ? 1 : 2;
        size_t a = (size_t)shapes[i].M * shapes[i].K * es,
               b = (size_t)shapes[i].K * shapes[i].N * es;
        size_t d = (size_t)shapes[i].M * shapes[i].N * 4;
        a_bytes = a > a_bytes ? a : a_bytes;
        b_bytes = b > b_bytes ? b : b_bytes;
        d_bytes = d > d_bytes ? d : d_bytes;
    }
    struct tuner t = {0};
    cudaError_t ce = cudaSetDevice(device);
    if (!ce) ce = cudaStreamCreateWithFlags(&t.stream, cudaStreamNonBlocking);
    if (!ce) ce = cudaEventCreate(&t.e0);
    if (!ce) ce = cudaEventCreate(&t.e1);
    if (!ce) ce = cudaMalloc(&t.a, a_bytes);
    if (!ce) ce = cudaMalloc(&t.b, b_bytes);
    if (!ce) ce = cudaMalloc(&t.d, d_bytes);
    if (!ce) ce = cudaMalloc(&t.ws, KILN_CUDA_LT_WORKSPACE);
    if (!ce) ce = fill_random(t.a, a_bytes);
    if (!ce) ce = fill_random(t.b, b_bytes);
    if (ce) {
        tuner_free(&t);
        return kiln_errorf(
            err, KILN_ERR_CUDA, "GEMM timing: %s (buffers of %.2f GiB for the largest shape)",
            cudaGetErrorString(ce), (double)(a_bytes + b_bytes + d_bytes) / (1u << 30));
    }
    enum kiln_status st = KILN_OK;
    if (cublasLtCreate(&t.lt))
        st = kiln_errorf(err, KILN_ERR_CUDA, "GEMM timing: cublasLtCreate failed");
    for (int i = 0; !st && i < n; i++) st = tune_one(&t, &shapes[i], candidates, &out[i], err);
    tuner_free(&t);
    return st;
}
