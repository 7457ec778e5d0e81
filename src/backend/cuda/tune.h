/* What `kiln build` asks the GPU: its name, compute capability and memory, and the fastest
 * cuBLASLt algorithm for each prefill GEMM shape the engine's limits imply (tune.c; without
 * CUDA, nocuda.c answers that kiln was built without it). */
#ifndef KILN_BACKEND_CUDA_TUNE_H
#define KILN_BACKEND_CUDA_TUNE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "model/format.h"

struct kiln_cuda_device {
    char name[128];
    int cc_major, cc_minor;
    uint64_t total_bytes, free_bytes;
    int cublaslt_version;
};

enum kiln_status kiln_cuda_device_info(int device, struct kiln_cuda_device *out,
                                       struct kiln_error *err);

/* D (N, M) f32 = x (N, K) . W (M, K)^T, as the backend's prefill path runs it (lt_gemm). */
struct kiln_gemm_shape {
    int M, N, K;
    bool fp8;      /* e4m3 inputs, else bf16 */
    bool out_bf16; /* bf16 output (q|k|v, gate|up), else f32 */
};

/* For each shape: up to `candidates` algorithms from cublasLtMatmulAlgoGetHeuristic, each run
 * on random data (2 warm-up runs, then 10 timed with events); the fastest goes to out[i] with
 * its time and the time of the heuristic's first choice. */
enum kiln_status kiln_cuda_tune_gemms(int device, const struct kiln_gemm_shape *shapes, int n,
                                      int candidates, struct kiln_gemm_algo *out,
                                      struct kiln_error *err);

#endif
