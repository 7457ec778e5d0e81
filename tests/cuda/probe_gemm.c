/* Times cuBLASLt FP8 GEMMs at the Llama-3.1-8B prefill shapes with f32 or bf16 output and with
 * or without fast accumulation, to choose the prefill path's GEMM configuration from
 * measurements. usage: probe_gemm [N]   (N = tokens, default 2048) */
#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>

#define CK(x)                                                                                      \
    do {                                                                                           \
        int e_ = (int)(x);                                                                         \
        if (e_) {                                                                                  \
            fprintf(stderr, "%s: %d\n", #x, e_);                                                   \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static double run(cublasLtHandle_t lt, int M, int N, int K, cudaDataType_t out, int fast, void *a,
                  void *b, void *d, void *ws, size_t wsz)
{
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    int8_t fa = (int8_t)fast;
    CK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fa, sizeof fa));
    CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_8F_E4M3, K, M, K));
    CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_8F_E4M3, K, N, K));
    CK(cublasLtMatrixLayoutCreate(&lc, out, M, N, M));
    cublasLtMatmulPreference_t pref;
    CK(cublasLtMatmulPreferenceCreate(&pref));
    CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz,
                                            sizeof wsz));
    cublasLtMatmulHeuristicResult_t res[8];
    int found = 0;
    CK(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, 8, res, &found));
    float alpha = 1, beta = 0;
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    double best = 0;
    for (int i = 0; i < found; i++) {
        if (cublasLtMatmul(lt, desc, &alpha, a, la, b, lb, &beta, d, lc, d, lc, &res[i].algo, ws,
                           wsz, 0))
            continue;
        CK(cudaEventRecord(e0, 0));
        for (int r = 0; r < 10; r++)
            CK(cublasLtMatmul(lt, desc, &alpha, a, la, b, lb, &beta, d, lc, d, lc, &res[i].algo, ws,
                              wsz, 0));
        CK(cudaEventRecord(e1, 0));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        double tf = 2.0 * M * N * (double)K * 10 / (ms * 1e-3) / 1e12;
        printf("    algo %d of %d: %7.1f TFLOP/s%s\n", i, found, tf,
               i == 0 ? " (heuristic's first)" : "");
        if (tf > best) best = tf;
    }
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(desc);
    return best;
}

int main(int argc, char **argv)
{
    int N = argc > 1 ? atoi(argv[1]) : 2048;
    int shapes[4][2] = {{6144, 4096}, {4096, 4096}, {28672, 4096}, {4096, 14336}};
    void *a, *b, *d, *ws;
    size_t wsz = 64u << 20;
    CK(cudaMalloc(&a, (size_t)28672 * 14336));
    CK(cudaMalloc(&b, (size_t)N * 14336));
    CK(cudaMalloc(&d, (size_t)28672 * N * 4));
    CK(cudaMalloc(&ws, wsz));
    CK(cudaMemset(a, 0x38, (size_t)28672 * 14336));
    CK(cudaMemset(b, 0x31, (size_t)N * 14336));
    cublasLtHandle_t lt;
    CK(cublasLtCreate(&lt));
    for (int s = 0; s < 4; s++)
        for (int out = 0; out < 2; out++)
            for (int fast = 0; fast < 2; fast++) {
                int M = shapes[s][0], K = shapes[s][1];
                printf("M=%d N=%d K=%d out=%s fast_accum=%d\n", M, N, K, out ? "bf16" : "f32",
                       fast);
                double best =
                    run(lt, M, N, K, out ? CUDA_R_16BF : CUDA_R_32F, fast, a, b, d, ws, wsz);
                printf("  best %.1f TFLOP/s\n", best);
            }
    return 0;
}
