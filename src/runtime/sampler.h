/* The sampler: one output row of logits -> one token (+ its logprob and the top alternatives).
 * The CPU backend's `sample` op calls kiln_sample_row for each row; the CUDA sampler implements
 * the SAME algorithm, so a (seed, step) pair draws the same token on both backends and whether
 * the row is alone or in a batch. Keep the two in step when changing anything here.
 *
 * Algorithm, for logits x (vocab,) and parameters p (struct kiln_sampling):
 *  1. Raw log-probs lp_i = x_i - logsumexp(x). out->logprob = lp[token]; the p->n_logprobs
 *     alternatives are the largest lp (ties: smaller id first), largest first.
 *  2. Processed logits: for each history entry (id, out_count, in_prompt), in order:
 *       if repetition_penalty != 1 and (in_prompt || out_count > 0):
 *           x = x > 0 ? x / repetition_penalty : x * repetition_penalty
 *       x -= frequency_penalty * out_count + presence_penalty * (out_count > 0)
 *     then x += bias for each logit_bias entry, then banned ids -> -inf, then (p->mask not
 *     NULL) every id whose mask bit is clear -> -inf. Ids outside [0, vocab) in any list are
 *     ignored; NaN logits count as -inf. The raw log-probs of step 1 stay as they were (vLLM
 *     reports them so under structured output too).
 *  3. temperature < 1e-5: token = argmax of the processed x (ties: smaller id). Done.
 *  4. x /= temperature. top_k in (0, vocab): keep x_i >= the k-th largest value (so ties at the
 *     boundary are all kept).
 *  5. p_i = exp(x_i - max) over kept ids, normalized to sum 1; ids not kept have p_i = 0, and
 *     from here on "kept" means p_i > 0.
 *  6. top_p < 1: keep p_i >= t, where t is the largest value such that the sum of the p_j >= t
 *     is >= top_p (threshold form: every id tied at the boundary stays; GPU-friendly because it
 *     needs a threshold, not a stable sort). When rounding leaves the total below top_p, all
 *     stay.
 *  7. min_p > 0: keep p_i >= min_p * max p.
 *  8. u = (kiln_sample_rng(seed, step) >> 40) * 2^-24, in [0, 1). S = sum of kept p. Walk ids in
 *     ascending order accumulating kept p_i; the token is the first id whose running sum
 *     exceeds u * S (fallback: the last kept id).
 * Sums (logsumexp, normalization, top-p prefix sums, S and the running sum) accumulate in double;
 * the top-p prefix sums run over p in descending order, the others over ids in ascending order.
 * The CUDA twin (backend/cuda/sample.cu) repeats these float operations, but its expf is within
 * 2 ulp (glibc's within 1) and its sums run in another order (logsumexp in float per thread,
 * top-p sums in fixed point): its p differ by a few ulps, so its token can differ only when a
 * draw lands within rounding distance of a boundary or a p within a few ulps of a threshold.
 *
 * Cost: O(vocab) per row, plus a sort of the kept probabilities when top_p < 1 (all of them when
 * top_k is off: ~10 ms at vocab 128K on one core). No allocation. */
#ifndef KILN_RUNTIME_SAMPLER_H
#define KILN_RUNTIME_SAMPLER_H

#include <stdint.h>

#include "backend/backend.h"

/* Below this temperature a row is decoded greedily (step 3). */
#define KILN_GREEDY_TEMPERATURE 1e-5f

/* logits (vocab,) f32 -> out. scratch holds at least 2 * vocab floats. */
void kiln_sample_row(const float *logits, int vocab, const struct kiln_sampling *p, float *scratch,
                     struct kiln_sample_out *out);

/* splitmix64(seed ^ splitmix64(step)): the random bits of draw number `step` of a sequence. */
uint64_t kiln_sample_rng(uint64_t seed, uint64_t step);

/* The splitmix64 finalizer (Steele, Lea, Flood 2014): a bijective 64-bit mixer. */
uint64_t kiln_splitmix64(uint64_t x);

#endif
