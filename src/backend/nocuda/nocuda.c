/* Built when kiln is compiled without CUDA (no nvcc, or -DKILN_CUDA=OFF). */
#include <string.h>

#include "backend/backend.h"
#include "backend/cuda/tune.h"

bool kiln_cuda_available(void)
{
    return false;
}

enum kiln_status kiln_backend_cuda_create(const struct kiln_model *m,
                                          const struct kiln_backend_options *opt,
                                          struct kiln_backend **out, struct kiln_error *err)
{
    (void)m;
    (void)opt;
    *out = NULL;
    return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                       "this kiln was built without CUDA: install the CUDA toolkit (nvcc) and "
                       "rebuild, or use --device cpu");
}

enum kiln_status kiln_cuda_measure_limits(int device, double *read_gbs, double *fp8_tflops,
                                          struct kiln_error *err)
{
    (void)device;
    *read_gbs = *fp8_tflops = 0;
    return kiln_errorf(err, KILN_ERR_UNSUPPORTED, "this kiln was built without CUDA");
}

enum kiln_status kiln_cuda_memory(int device, uint64_t *used, uint64_t *total,
                                  struct kiln_error *err)
{
    (void)device;
    *used = *total = 0;
    return kiln_errorf(err, KILN_ERR_UNSUPPORTED, "this kiln was built without CUDA");
}

enum kiln_status kiln_cuda_device_info(int device, struct kiln_cuda_device *out,
                                       struct kiln_error *err)
{
    (void)device;
    memset(out, 0, sizeof *out);
    return kiln_errorf(err, KILN_ERR_UNSUPPORTED, "this kiln was built without CUDA");
}

enum kiln_status kiln_cuda_tune_gemms(int device, const struct kiln_gemm_shape *shapes, int n,
                                      int candidates, struct kiln_gemm_algo *out,
                                      struct kiln_error *err)
{
    (void)device, (void)shapes, (void)n, (void)candidates, (void)out;
    return kiln_errorf(err, KILN_ERR_UNSUPPORTED, "this kiln was built without CUDA");
}
