/* Shared by the engine tests: submit requests whose events land in a struct result, collect
 * them, compare two results; a gate in front of a backend's forward, so a test can hold the
 * engine inside a step while it queues requests (arrival order is otherwise a race). */
#ifndef KILN_TESTS_RUNTIME_ENGINE_HELPERS_H
#define KILN_TESTS_RUNTIME_ENGINE_HELPERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/engine.h"

#define RESULT_MAX_OUT 128

struct result {
    int32_t tokens[RESULT_MAX_OUT];
    float logprobs[RESULT_MAX_OUT];
    int32_t top[RESULT_MAX_OUT][4];
    float top_lp[RESULT_MAX_OUT][4];
    int n;
    char text[8192]; /* concatenated text deltas (with detokenize) */
    size_t text_len;
    bool has_text;
    enum kiln_finish finish;
    int32_t stop_token;
    char stop_reason[64];
    int prompt_tokens, completion_tokens, cached_tokens;
    char error[256];
};

/* On the GPU, a different schedule (batch composition, chunking, a cached prefix) can take
 * another GEMM or attention path, whose rounding FP8 re-quantization amplifies: two results must
 * then agree until they part ways, and may part only at a near tie -- b's token a's runner-up
 * and a's token b's runner-up, both top-2 gaps within `gap` nats. Compares a's tokens from
 * position `from` with b's from 0 (b: a's prompt plus a's first `from` tokens, teacher-forced).
 * Returns the position in a where they part (the caller re-runs b's schedule on a's tokens up
 * to and including it, and compares again from there), or -1 when b matches the rest of a.
 * Fails the test at any other difference. The results need logprobs >= 2. */
int near_tie_divergence(const struct result *a, int from, const struct result *b, float gap);
/* near_tie_divergence without failing the test: -2 (with the reason in why) where that fails. */
int near_tie_check(const struct result *a, int from, const struct result *b, float gap, char *why,
                   size_t why_len);

/* Submits r with res as its user pointer (fails the test on error); returns the id. */
uint64_t submit(struct kiln_engine *e, struct kiln_request r, struct result *res);
/* Collects events until n requests have finished (fails after 60 s without an event). */
void collect(struct kiln_engine *e, int n);
/* Same tokens, finish and text; logprobs bitwise when tol is 0, else within tol. */
void assert_same(const struct result *a, const struct result *b, float tol);

/* Wraps inner (owned: freed with the wrapper) so that forward waits while the gate is closed. */
struct kiln_backend *gate_wrap(struct kiln_backend *inner);
void gate_set(struct kiln_backend *gated, bool closed);
/* Waits until a forward is held at the closed gate. */
void gate_wait_held(struct kiln_backend *gated);
/* Submits reqs[0..n) so that one step of the engine sees all of them waiting: a blocker request
 * (prompt: blocker_prompt, max_tokens 1) is held in its forward at the gate while they are
 * queued. res[n] receives the blocker's events; collect n + 1 finishes. */
void submit_together(struct kiln_engine *e, struct kiln_backend *gated,
                     const struct kiln_request *reqs, int n, struct result *res,
                     const int32_t *blocker_prompt, int blocker_len);

#endif
