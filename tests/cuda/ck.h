/* CK(call): a CUDA runtime call or kiln_cuda_* launcher a kernel test cannot go on without;
 * on failure prints the call, file:line and the error, and exits 1. */
#ifndef KILN_TESTS_CUDA_CK_H
#define KILN_TESTS_CUDA_CK_H

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>

#define CK(call)                                                                                   \
    do {                                                                                           \
        int e_ = (int)(call);                                                                      \
        if (e_) {                                                                                  \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                          \
                    cudaGetErrorString((cudaError_t)e_));                                          \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

#endif
