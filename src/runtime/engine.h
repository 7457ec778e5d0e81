/* The engine: one thread that owns a backend and runs the scheduler loop (admit waiting
 * requests, build one batch of prefill chunks and decode tokens within max_num_tokens and
 * max_batch_size, forward, sample, emit). Other threads talk to it only through this API; it
 * never touches sockets, and callers never block it.
 *
 * Events are delivered through one thread-safe queue: after pushing, the engine calls
 * notify(notify_arg) (e.g. event_active on a libevent user event); the consumer then drains
 * the queue with kiln_engine_poll. */
#ifndef KILN_RUNTIME_ENGINE_H
#define KILN_RUNTIME_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"

struct kiln_grammar; /* grammar/grammar.h */

/* Structured output's mask time limit: KILN_SLOW_MASKS masks in a row over max_mask_ms (by
 * default KILN_MAX_MASK_MS) end a request. */
#define KILN_SLOW_MASKS  8
#define KILN_MAX_MASK_MS 50

/* Sizes left at 0 take the backend's (max_seqs, max_tokens, max_seq_len; max_input_len: the
 * max_seq_len); max_queue <= 0 means no limit. max_num_tokens >= max_batch_size. */
struct kiln_engine_options {
    int max_batch_size; /* sequences per step */
    int max_num_tokens; /* tokens per step (prefill chunk budget) */
    int max_queue;      /* waiting requests before submit fails with KILN_ERR_LIMIT */
    int max_seq_len;    /* prompt + output */
    int max_input_len;  /* prompt */
    bool prefix_caching;
    /* Structured output: a request whose token masks each take longer than this much of the
     * engine thread's CPU time, KILN_SLOW_MASKS in a row, ends with KILN_FINISH_ERROR (every
     * sequence of a step waits for its masks). 0: KILN_MAX_MASK_MS; < 0: no limit. */
    double max_mask_ms;
    void (*notify)(void *arg); /* called from the engine thread after events are queued */
    void *notify_arg;
};

/* Stop conditions, checked after every token: an eos id (unless ignore_eos) or a stop id ends
 * the request with KILN_FINISH_STOP and stop_token set; the token counts in completion_tokens but
 * its text is not emitted. A stop string ends it with stop_reason set; the text stops right before
 * it and text that could still begin one is held back until it cannot. Until min_tokens tokens
 * exist, eos and stop ids are banned in sampling and stop strings are not matched. max_tokens
 * ends it with KILN_FINISH_LENGTH. No seed (has_seed false): a random one per request.
 *
 * Structured output (grammar not NULL; needs the engine's tokenizer): the engine keeps a
 * matcher of the grammar per request, samples only tokens it allows (the mask is computed after
 * the step's forward is launched, so on the GPU it overlaps the forward), and ends the request
 * with KILN_FINISH_STOP once the output is complete and nothing but an eos id could follow (or
 * an eos id is drawn, ignore_eos or not). Without logprobs, tokens the grammar forces (the only
 * one allowed) are appended without a draw; the sampler would pick them anyway, and the draws
 * of the later tokens depend only on (seed, step), so the output is the same. Stop strings end
 * the request and preemption keeps every token, so the matcher never needs to roll back. */
struct kiln_request {
    const int32_t *prompt; /* copied by submit */
    int n_prompt;
    int max_tokens; /* > 0 */
    int min_tokens;
    bool ignore_eos;
    float temperature, top_p, min_p;
    int top_k;
    bool has_seed;
    uint64_t seed;
    float presence_penalty, frequency_penalty, repetition_penalty;
    const int32_t *bias_ids; /* logit_bias, copied */
    const float *bias_vals;
    int n_bias;
    const char *const *stop; /* stop strings, copied; matched on the detokenized output */
    int n_stop;
    const int32_t *stop_ids; /* extra stop token ids, copied */
    int n_stop_ids;
    int logprobs; /* -1: none; 0..20: chosen token + that many alternatives */
    bool skip_special_tokens;
    bool detokenize;              /* produce text deltas (needs the tokenizer) */
    struct kiln_grammar *grammar; /* structured output, NULL: none (submit takes its own ref) */
    void *user;                   /* returned in every event of this request */
};

/* Fills the neutral parameters (temperature 1, top_p 1, repetition_penalty 1, logprobs -1,
 * max_tokens 16, skip_special_tokens); the caller sets prompt and the rest. */
void kiln_request_defaults(struct kiln_request *req);

enum kiln_finish {
    KILN_FINISH_NONE,
    KILN_FINISH_STOP,
    KILN_FINISH_LENGTH,
    KILN_FINISH_CANCELLED,
    KILN_FINISH_ERROR
};

struct kiln_event {
    uint64_t id;
    void *user;
    int32_t token; /* -1 in a finish-only event */
    char *text;    /* text delta (malloc'ed, may be ""), NULL without detokenize */
    size_t text_len;
    float logprob;
    int n_top;
    int32_t top_ids[KILN_MAX_LOGPROBS];
    float top_logprobs[KILN_MAX_LOGPROBS];
    enum kiln_finish finish; /* NONE while running; set on the request's last event */
    char *stop_reason;       /* matched stop string (malloc'ed) or NULL */
    int32_t stop_token;      /* matched stop token id or -1 */
    int prompt_tokens, completion_tokens, cached_tokens;
    char error[256]; /* with KILN_FINISH_ERROR */
    double time;     /* kiln_now() when the engine queued the event (TTFT, ITL) */
};

struct kiln_engine_stats {
    int running, waiting;
    int kv_blocks_used, kv_blocks_total;
    int kv_blocks_touched; /* used at least once (kvcache.h: where the CPU's pool is committed) */
    uint64_t kv_bytes;     /* the pool's memory, all layers */
    uint64_t steps, preemptions, prefix_hits_tokens;
    /* structured output: masks computed and their engine-thread time (fill, plus the search for
     * forced tokens), tokens appended without a draw */
    uint64_t grammar_masks, grammar_forced;
    double grammar_s;
    /* engine-thread time in steps that ran a forward (scheduling, batch building, the backend's
     * forward and sample calls, token handling, publishing events), and within it the forward
     * and sample calls alone (launches and the waits for the device): the rest is host work
     * during which the device idles, since the step waits for the sampled tokens */
    double step_s, device_s;
};

struct kiln_engine;

/* Takes ownership of nothing; backend and tokenizer (may be NULL) must outlive the engine. */
enum kiln_status kiln_engine_create(struct kiln_backend *backend, struct kiln_tokenizer *tok,
                                    const struct kiln_engine_options *opt, struct kiln_engine **out,
                                    struct kiln_error *err);
/* Validates and queues; fails with KILN_ERR_LIMIT when the queue is full or the request
 * cannot fit (context_length_exceeded), KILN_ERR_INVALID for bad parameters. */
enum kiln_status kiln_engine_submit(struct kiln_engine *e, const struct kiln_request *req,
                                    uint64_t *id, struct kiln_error *err);
/* Non-blocking: moves up to max queued events into ev; returns how many. */
size_t kiln_engine_poll(struct kiln_engine *e, struct kiln_event *ev, size_t max);
/* Blocking variant for CLI use: waits up to timeout_s for at least one event. */
size_t kiln_engine_wait(struct kiln_engine *e, struct kiln_event *ev, size_t max, double timeout_s);
/* Why a submit failed, for the server's status code:
 *   INVALID (KILN_ERR_INVALID)       -> 400: bad parameters, ids outside the vocabulary
 *   CONTEXT_LENGTH (KILN_ERR_LIMIT)  -> 400 context_length_exceeded: the prompt, prompt +
 *                                       max_tokens, or the KV pool cannot hold the request
 *   QUEUE_FULL (KILN_ERR_LIMIT)      -> 429: max_queue requests are waiting; retry later
 *   SHUTTING_DOWN (KILN_ERR_LIMIT)   -> 503: kiln_engine_drain was called
 *   INTERNAL (KILN_ERR_NOMEM)        -> 500: out of memory */
enum kiln_submit_error {
    KILN_SUBMIT_OK,
    KILN_SUBMIT_INVALID,
    KILN_SUBMIT_CONTEXT_LENGTH,
    KILN_SUBMIT_QUEUE_FULL,
    KILN_SUBMIT_SHUTTING_DOWN,
    KILN_SUBMIT_INTERNAL,
};
/* kiln_engine_submit that also says why it failed (why may be NULL). */
enum kiln_status kiln_engine_submit_ex(struct kiln_engine *e, const struct kiln_request *req,
                                       uint64_t *id, enum kiln_submit_error *why,
                                       struct kiln_error *err);
void kiln_event_release(struct kiln_event *ev); /* frees text and stop_reason */
/* The request finishes with KILN_FINISH_CANCELLED; its KV blocks are freed within one step. */
void kiln_engine_cancel(struct kiln_engine *e, uint64_t id);
void kiln_engine_stats(struct kiln_engine *e, struct kiln_engine_stats *st);
/* Stops accepting; running requests finish (up to deadline_s, then are cancelled). Returns at
 * once: the engine is drained when kiln_engine_stats shows running + waiting == 0. */
void kiln_engine_drain(struct kiln_engine *e, double deadline_s);
void kiln_engine_free(struct kiln_engine *e);

#endif
