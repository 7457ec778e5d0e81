/* Sampling one row of logits (the CPU backend's sample op; the CUDA sampler implements the
 * same algorithm). Owned by the runtime; see kiln_sample_row's implementation for the exact
 * steps (raw log-probs, penalties, bias, bans, greedy, temperature, top-k, top-p, min-p,
 * inverse-CDF draw in ascending id order from kiln_sample_rng(seed, step)). */
#ifndef KILN_RUNTIME_SAMPLER_H
#define KILN_RUNTIME_SAMPLER_H

#include <stdint.h>

#include "backend/backend.h"

/* logits (vocab,) f32 -> out. scratch holds at least 2 * vocab floats. */
void kiln_sample_row(const float *logits, int vocab, const struct kiln_sampling *p, float *scratch,
                     struct kiln_sample_out *out);
/* splitmix64(seed ^ splitmix64(step)) */
uint64_t kiln_sample_rng(uint64_t seed, uint64_t step);

#endif
