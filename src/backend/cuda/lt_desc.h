/* The cuBLASLt descriptors of the prefill GEMMs, shared by the backend (cuda.c) and the
 * build-time timing (tune.c), so an algorithm timed at build time is one for exactly the
 * descriptors it later runs with. */
#ifndef KILN_BACKEND_CUDA_LT_DESC_H
#define KILN_BACKEND_CUDA_LT_DESC_H

#include <cublasLt.h>
#include <stdbool.h>

/* D (n, M; ld ldc) = x (n, K) . W (M, K)^T with W row-major e4m3 (fp8) or bf16: TN, f32 compute
 * and scale, C and D f32 or bf16 (out_bf16). On failure the caller destroys what was created
 * (non-NULL). */
cublasStatus_t kiln_lt_describe(int M, int n, int K, bool fp8, bool out_bf16, int ldc,
                                cublasLtMatmulDesc_t *desc, cublasLtMatrixLayout_t *la,
                                cublasLtMatrixLayout_t *lb, cublasLtMatrixLayout_t *lc);
/* Up to `requested` heuristic choices within the backend's workspace. */
cublasStatus_t kiln_lt_heuristic(cublasLtHandle_t lt, cublasLtMatmulDesc_t desc,
                                 cublasLtMatrixLayout_t la, cublasLtMatrixLayout_t lb,
                                 cublasLtMatrixLayout_t lc, int requested,
                                 cublasLtMatmulHeuristicResult_t *res, int *found);
/* Whether a recorded algorithm supports these descriptors within the workspace. */
bool kiln_lt_algo_usable(cublasLtHandle_t lt, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t la,
                         cublasLtMatrixLayout_t lb, cublasLtMatrixLayout_t lc,
                         const cublasLtMatmulAlgo_t *algo);

#endif
