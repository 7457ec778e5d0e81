/* The CPU reference backend and its op twins. Every CUDA kernel has a function here computing
 * the same thing with fp32 math and the same FP8 rounding of activations, so kernel tests
 * compare against these on random, uneven shapes. */
#ifndef KILN_BACKEND_CPU_CPU_H
#define KILN_BACKEND_CPU_CPU_H

#include <stdint.h>

#include "backend/backend.h"

/* Calibration: runs the model over one sequence of n tokens with UNquantized activations
 * (f32 inputs times the dequantized weights) and records the largest |input| of each linear:
 *   amax (n_layers, 4): [qkv, o, gate_up, down] per layer
 *   kv_amax (n_layers, 2): [k, v] largest |value| written to the KV cache (may be NULL).
 * input_scale = amax / 448 gives static FP8 activation scales that use their range. */
enum kiln_status kiln_cpu_calibrate(const struct kiln_model *m, const int32_t *tokens, int n,
                                    float *amax, float *kv_amax, struct kiln_error *err);

#endif
