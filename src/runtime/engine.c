/* The engine: request validation, the scheduler loop on its own thread, stop conditions and
 * events (see engine.h for the API).
 *
 * Scheduling, each iteration (vLLM-style continuous batching with chunked prefill):
 *  1. decode tokens of running sequences, oldest first; a sequence that needs a new KV block
 *     when the pool is empty preempts the latest running sequence (recompute: its blocks are
 *     freed and it goes back to the head of the queue, to re-run prompt + generated tokens as
 *     one prefill later; emitted tokens are not emitted again and the output is the same);
 *  2. the next prompt chunk of running sequences still in prefill, within max_num_tokens;
 *  3. admission of waiting requests, first come first served, while max_batch_size, the token
 *     budget and the KV pool allow: an admitted request takes its cached prefix blocks and
 *     reserves blocks for every token it has (so a prefill never stops half way for blocks),
 *     and starts its first chunk in the same step. No admission in a step that preempted.
 * Then one forward, the structured-output masks of the constrained rows (computed while a
 * GPU forward runs: the CUDA backend's forward returns once launched), one sample call for the
 * rows that end a sequence's tokens, and the stop conditions. Per step host work is O(tokens +
 * sequences) in preallocated arrays; the only per-token allocations are the text of events (the API
 * hands out malloc'ed strings). */
#include "engine.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "core/log.h"
#include "grammar/grammar.h"
#include "kvcache.h"
#include "sampler.h"
#include "stop.h"

/* A request inside the engine. Only the engine thread touches it once submitted. */
struct req {
    uint64_t id;
    void *user;
    int32_t *tokens; /* (n_prompt + max_tokens,) the prompt, then the generated tokens */
    int n_prompt, n_tokens, max_tokens, min_tokens;
    int n_computed;    /* leading positions whose K/V are in the cache */
    int cached_tokens; /* prefix-cache hit at the first admission */
    bool admitted;     /* once: cached_tokens is set */
    bool finished;
    struct kiln_kv_seq kv;
    struct kiln_sampling samp; /* per-request parameters; step and banned set per draw */
    int32_t *end_ids;          /* (n_end,) eos ids (unless ignore_eos) and stop ids */
    int n_end;
    /* penalties: unique ids seen so far (only when a penalty is on) */
    int32_t *hist_ids, *hist_count; /* (n_prompt + max_tokens,) */
    uint8_t *hist_prompt;
    int32_t *hist_slot; /* (hist_mask + 1,) open addressing: index + 1, 0 empty */
    uint32_t hist_mask;
    int32_t *bias_ids;
    float *bias_vals;
    int logprobs;
    bool detokenize; /* events carry text */
    bool need_text;  /* text is produced: for events or for stop strings */
    struct kiln_detok *detok;
    struct kiln_stop stop;
    /* structured output */
    struct kiln_matcher *matcher; /* NULL: unconstrained */
    uint32_t *mask;               /* (mask_words,) the allowed tokens of the next draw */
    bool mask_ready;              /* mask already holds the matcher's current state */
    int slow_masks;               /* masks in a row over max_mask_ms */
};

struct list {
    struct req **v;
    int n, cap;
};

struct kiln_engine {
    struct kiln_backend *b;
    struct kiln_tokenizer *tok;
    struct kiln_engine_options opt;
    int vocab, block_size, blocks_per_seq, watermark;
    int32_t eos[2 * KILN_MAX_EOS];
    int n_eos;
    int mask_words; /* (max(model vocab, tokenizer vocab) + 31) / 32 */
    struct kiln_kv kv;

    /* engine thread only */
    struct list running; /* in admission order */
    struct list waiting; /* FCFS; preempted requests go back to the front */
    uint64_t steps, preemptions, prefix_hits;
    uint64_t grammar_masks, grammar_forced;
    double grammar_s;
    double step_s, device_s;                  /* see kiln_engine_stats */
    int32_t *b_tokens, *b_pos;                /* (max_num_tokens,) */
    int32_t *b_seq_start;                     /* (max_batch_size + 1,) */
    int32_t *b_kv_len, *b_out_rows, *b_chunk; /* (max_batch_size,) */
    int32_t *b_table;                         /* (max_batch_size, blocks_per_seq) */
    struct req **sched;                       /* (max_batch_size,) this step's sequences */
    struct kiln_sampling *b_samp;             /* (max_batch_size,) */
    struct kiln_sample_out *b_out;            /* (max_batch_size,) */
    struct kiln_event *evs;                   /* this step's events */
    size_t n_evs, cap_evs;

    /* shared with the API threads, under mu */
    pthread_mutex_t mu;
    pthread_cond_t work;   /* engine thread: something to do */
    pthread_cond_t events; /* kiln_engine_wait: events queued */
    struct list incoming;
    uint64_t *cancels;
    int n_cancels, cap_cancels;
    struct kiln_event *queue; /* ring of q_cap events from q_head */
    size_t q_head, q_len, q_cap;
    struct kiln_engine_stats stats;
    uint64_t next_id;
    bool quit, draining, started;
    double deadline;
    pthread_t thread;
};

/* ---- small helpers ---- */

static bool list_reserve(struct list *l, int need)
{
    if (need <= l->cap) return true;
    int cap = l->cap ? l->cap : 16;
    while (cap < need) cap *= 2;
    struct req **v = realloc(l->v, (size_t)cap * sizeof *v);
    if (!v) return false;
    l->v = v;
    l->cap = cap;
    return true;
}

static void list_remove_at(struct list *l, int i)
{
    memmove(l->v + i, l->v + i + 1, (size_t)(l->n - i - 1) * sizeof *l->v);
    l->n--;
}

static bool contains(const int32_t *ids, int n, int32_t id)
{
    for (int i = 0; i < n; i++)
        if (ids[i] == id) return true;
    return false;
}

static void *dup_array(const void *src, size_t n, size_t size)
{
    void *p = malloc(n ? n * size : 1);
    if (p && n) memcpy(p, src, n * size);
    return p;
}

static int blocks_for(const struct kiln_engine *e, int n_pos)
{
    return (n_pos + e->block_size - 1) / e->block_size;
}

void kiln_request_defaults(struct kiln_request *req)
{
    *req = (struct kiln_request){
        .max_tokens = 16,
        .temperature = 1.0f,
        .top_p = 1.0f,
        .repetition_penalty = 1.0f,
        .logprobs = -1,
        .skip_special_tokens = true,
    };
}

void kiln_event_release(struct kiln_event *ev)
{
    free(ev->text);
    free(ev->stop_reason);
    ev->text = ev->stop_reason = NULL;
}

static void req_free(struct req *r)
{
    if (!r) return;
    free(r->tokens);
    kiln_kv_seq_free(&r->kv);
    free(r->end_ids);
    free(r->hist_ids);
    free(r->hist_count);
    free(r->hist_prompt);
    free(r->hist_slot);
    free(r->bias_ids);
    free(r->bias_vals);
    if (r->detok) kiln_detok_free(r->detok);
    kiln_stop_free(&r->stop);
    if (r->matcher) kiln_matcher_free(r->matcher);
    free(r->mask);
    free(r);
}

/* Counts one more occurrence of id: in the output (out) or in the prompt. */
static void hist_add(struct req *r, int32_t id, bool out)
{
    if (!r->hist_slot) return;
    uint32_t i = ((uint32_t)id * 2654435761u) & r->hist_mask;
    while (r->hist_slot[i] && r->hist_ids[r->hist_slot[i] - 1] != id) i = (i + 1) & r->hist_mask;
    if (!r->hist_slot[i]) {
        int k = r->samp.n_hist++;
        r->hist_ids[k] = id;
        r->hist_count[k] = 0;
        r->hist_prompt[k] = 0;
        r->hist_slot[i] = k + 1;
    }
    int k = r->hist_slot[i] - 1;
    if (out)
        r->hist_count[k]++;
    else
        r->hist_prompt[k] = 1;
}

/* ---- submit ---- */

static uint64_t random_seed(const struct req *r)
{
    uint64_t s;
    if (getrandom(&s, sizeof s, GRND_NONBLOCK) == (ssize_t)sizeof s) return s;
    /* No entropy yet (early boot): the clock and the request's address still differ. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return kiln_splitmix64((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ (uintptr_t)r);
}

/* Records why a submit failed, then fills err: fail(why, w, err, code, fmt, ...). */
static void set_why(enum kiln_submit_error *why, enum kiln_submit_error w)
{
    if (why) *why = w;
}
#define fail(why, w, err, code, ...) (set_why(why, w), kiln_errorf(err, code, __VA_ARGS__))

static int bad_id(const int32_t *ids, int n, int vocab)
{
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab) return i;
    return -1;
}

/* Parameter checks that need no engine state beyond sizes: KILN_SUBMIT_INVALID ones. */
static enum kiln_status validate(const struct kiln_engine *e, const struct kiln_request *q,
                                 enum kiln_submit_error *why, struct kiln_error *err)
{
#define INVALID(...) fail(why, KILN_SUBMIT_INVALID, err, KILN_ERR_INVALID, __VA_ARGS__)
    if (!q->prompt || q->n_prompt <= 0) return INVALID("the prompt is empty");
    int i = bad_id(q->prompt, q->n_prompt, e->vocab);
    if (i >= 0)
        return INVALID("prompt token %d (at position %d) is outside the vocabulary (0..%d)",
                       q->prompt[i], i, e->vocab - 1);
    if (q->max_tokens <= 0) return INVALID("max_tokens must be at least 1, got %d", q->max_tokens);
    if (q->min_tokens < 0 || q->min_tokens > q->max_tokens)
        return INVALID("min_tokens must be between 0 and max_tokens (%d), got %d", q->max_tokens,
                       q->min_tokens);
    if (!isfinite(q->temperature) || q->temperature < 0)
        return INVALID("temperature must be a finite number >= 0, got %g", q->temperature);
    if (!(q->top_p > 0 && q->top_p <= 1))
        return INVALID("top_p must be in (0, 1], got %g", q->top_p);
    if (!(q->min_p >= 0 && q->min_p <= 1))
        return INVALID("min_p must be in [0, 1], got %g", q->min_p);
    if (!(q->presence_penalty >= -2 && q->presence_penalty <= 2))
        return INVALID("presence_penalty must be in [-2, 2], got %g", q->presence_penalty);
    if (!(q->frequency_penalty >= -2 && q->frequency_penalty <= 2))
        return INVALID("frequency_penalty must be in [-2, 2], got %g", q->frequency_penalty);
    if (!isfinite(q->repetition_penalty) || q->repetition_penalty <= 0)
        return INVALID("repetition_penalty must be a finite number > 0, got %g",
                       q->repetition_penalty);
    if (q->logprobs < -1 || q->logprobs > KILN_MAX_LOGPROBS)
        return INVALID("logprobs must be between 0 and %d, got %d", KILN_MAX_LOGPROBS, q->logprobs);
    if (q->n_bias < 0 || (q->n_bias && (!q->bias_ids || !q->bias_vals)))
        return INVALID("logit_bias is malformed");
    i = bad_id(q->bias_ids, q->n_bias, e->vocab);
    if (i >= 0)
        return INVALID("logit_bias token %d is outside the vocabulary (0..%d)", q->bias_ids[i],
                       e->vocab - 1);
    for (i = 0; i < q->n_bias; i++)
        if (!isfinite(q->bias_vals[i]))
            return INVALID("logit_bias for token %d is not a finite number", q->bias_ids[i]);
    if (q->n_stop_ids < 0 || (q->n_stop_ids && !q->stop_ids))
        return INVALID("stop_token_ids is malformed");
    i = bad_id(q->stop_ids, q->n_stop_ids, e->vocab);
    if (i >= 0)
        return INVALID("stop token id %d is outside the vocabulary (0..%d)", q->stop_ids[i],
                       e->vocab - 1);
    if (q->n_stop < 0 || (q->n_stop && !q->stop)) return INVALID("stop is malformed");
    for (i = 0; i < q->n_stop; i++)
        if (!q->stop[i]) return INVALID("stop string %d is missing", i);
    if ((q->n_stop > 0 || q->detokenize) && !e->tok)
        return INVALID("stop strings and text output need a tokenizer; this engine has none");
    if (q->grammar && !e->tok)
        return INVALID("structured output needs a tokenizer; this engine has none");
#undef INVALID
    return KILN_OK;
}

static enum kiln_status check_context(const struct kiln_engine *e, const struct kiln_request *q,
                                      enum kiln_submit_error *why, struct kiln_error *err)
{
    if (q->n_prompt > e->opt.max_input_len)
        return fail(why, KILN_SUBMIT_CONTEXT_LENGTH, err, KILN_ERR_LIMIT,
                    "this model's maximum input length is %d tokens; the prompt has %d tokens",
                    e->opt.max_input_len, q->n_prompt);
    if ((int64_t)q->n_prompt + q->max_tokens > e->opt.max_seq_len)
        return fail(why, KILN_SUBMIT_CONTEXT_LENGTH, err, KILN_ERR_LIMIT,
                    "this model's maximum context length is %d tokens; the prompt has %d tokens "
                    "and max_tokens is %d",
                    e->opt.max_seq_len, q->n_prompt, q->max_tokens);
    /* A request that cannot fit the whole KV pool alone would never finish. */
    int positions = q->n_prompt + q->max_tokens - 1;
    if (blocks_for(e, positions) > e->kv.n_blocks)
        return fail(why, KILN_SUBMIT_CONTEXT_LENGTH, err, KILN_ERR_LIMIT,
                    "the KV cache holds %d tokens; the prompt has %d tokens and max_tokens is %d",
                    e->kv.n_blocks * e->block_size, q->n_prompt, q->max_tokens);
    return KILN_OK;
}

static struct req *req_build(struct kiln_engine *e, const struct kiln_request *q,
                             struct kiln_error *err)
{
    struct req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    int cap = q->n_prompt + q->max_tokens;
    r->user = q->user;
    r->n_prompt = r->n_tokens = q->n_prompt;
    r->max_tokens = q->max_tokens;
    r->min_tokens = q->min_tokens;
    r->logprobs = q->logprobs;
    r->detokenize = q->detokenize;
    r->need_text = q->detokenize || q->n_stop > 0;
    r->tokens = malloc((size_t)cap * sizeof *r->tokens);
    r->end_ids = malloc((size_t)(e->n_eos + q->n_stop_ids + 1) * sizeof *r->end_ids);
    r->bias_ids = dup_array(q->bias_ids, (size_t)q->n_bias, sizeof *q->bias_ids);
    r->bias_vals = dup_array(q->bias_vals, (size_t)q->n_bias, sizeof *q->bias_vals);
    if (!r->tokens || !r->end_ids || !r->bias_ids || !r->bias_vals ||
        kiln_kv_seq_init(&r->kv, e->blocks_per_seq, err) ||
        kiln_stop_init(&r->stop, q->stop, q->n_stop, err))
        goto fail;
    memcpy(r->tokens, q->prompt, (size_t)q->n_prompt * sizeof *r->tokens);
    if (!q->ignore_eos)
        for (int i = 0; i < e->n_eos; i++) r->end_ids[r->n_end++] = e->eos[i];
    for (int i = 0; i < q->n_stop_ids; i++)
        if (!contains(r->end_ids, r->n_end, q->stop_ids[i]))
            r->end_ids[r->n_end++] = q->stop_ids[i];
    if (r->need_text && !(r->detok = kiln_detok_create(e->tok, q->skip_special_tokens))) goto fail;
    if (q->grammar) {
        /* words past the tokenizer's vocabulary (padded embeddings) stay 0: never allowed */
        r->mask = calloc((size_t)e->mask_words, sizeof *r->mask);
        if (!r->mask || kiln_matcher_create(q->grammar, &r->matcher, err)) goto fail;
    }

    r->samp = (struct kiln_sampling){
        .temperature = q->temperature,
        .top_k = q->top_k,
        .top_p = q->top_p,
        .min_p = q->min_p,
        .seed = q->has_seed ? q->seed : random_seed(r),
        .presence_penalty = q->presence_penalty,
        .frequency_penalty = q->frequency_penalty,
        .repetition_penalty = q->repetition_penalty,
        .bias_ids = r->bias_ids,
        .bias_vals = r->bias_vals,
        .n_bias = q->n_bias,
        .n_logprobs = q->logprobs > 0 ? q->logprobs : 0,
    };
    if (q->presence_penalty != 0 || q->frequency_penalty != 0 || q->repetition_penalty != 1) {
        uint32_t slots = 2;
        while (slots < 2u * (uint32_t)cap) slots <<= 1;
        r->hist_ids = malloc((size_t)cap * sizeof *r->hist_ids);
        r->hist_count = malloc((size_t)cap * sizeof *r->hist_count);
        r->hist_prompt = malloc((size_t)cap);
        r->hist_slot = calloc(slots, sizeof *r->hist_slot);
        if (!r->hist_ids || !r->hist_count || !r->hist_prompt || !r->hist_slot) goto fail;
        r->hist_mask = slots - 1;
        for (int i = 0; i < q->n_prompt; i++) hist_add(r, q->prompt[i], false);
        r->samp.hist_ids = r->hist_ids;
        r->samp.hist_out_count = r->hist_count;
        r->samp.hist_in_prompt = r->hist_prompt;
    }
    return r;
fail:
    req_free(r);
    return NULL;
}

enum kiln_status kiln_engine_submit_ex(struct kiln_engine *e, const struct kiln_request *req,
                                       uint64_t *id, enum kiln_submit_error *why,
                                       struct kiln_error *err)
{
    if (why) *why = KILN_SUBMIT_OK;
    *id = 0;
    enum kiln_status st = validate(e, req, why, err);
    if (!st) st = check_context(e, req, why, err);
    if (st) return st;
    struct req *r = req_build(e, req, err);
    if (!r)
        return fail(why, KILN_SUBMIT_INTERNAL, err, KILN_ERR_NOMEM,
                    "out of memory for a request of %d tokens", req->n_prompt + req->max_tokens);
    pthread_mutex_lock(&e->mu);
    if (e->draining || e->quit) {
        pthread_mutex_unlock(&e->mu);
        req_free(r);
        return fail(why, KILN_SUBMIT_SHUTTING_DOWN, err, KILN_ERR_LIMIT,
                    "the server is shutting down and accepts no new requests");
    }
    int queued = e->incoming.n + e->stats.waiting;
    if (e->opt.max_queue > 0 && queued >= e->opt.max_queue) {
        pthread_mutex_unlock(&e->mu);
        req_free(r);
        return fail(why, KILN_SUBMIT_QUEUE_FULL, err, KILN_ERR_LIMIT,
                    "the request queue is full (%d requests waiting); retry later", queued);
    }
    if (!list_reserve(&e->incoming, e->incoming.n + 1)) {
        pthread_mutex_unlock(&e->mu);
        req_free(r);
        return fail(why, KILN_SUBMIT_INTERNAL, err, KILN_ERR_NOMEM, "out of memory");
    }
    r->id = e->next_id++;
    e->incoming.v[e->incoming.n++] = r;
    *id = r->id;
    pthread_cond_signal(&e->work);
    pthread_mutex_unlock(&e->mu);
    return KILN_OK;
}

enum kiln_status kiln_engine_submit(struct kiln_engine *e, const struct kiln_request *req,
                                    uint64_t *id, struct kiln_error *err)
{
    return kiln_engine_submit_ex(e, req, id, NULL, err);
}

/* ---- events ---- */

static struct kiln_event *new_event(struct kiln_engine *e, const struct req *r)
{
    if (e->n_evs == e->cap_evs) {
        size_t cap = e->cap_evs ? 2 * e->cap_evs : 64;
        struct kiln_event *v = realloc(e->evs, cap * sizeof *v);
        KILN_ASSERT(v); /* a few KB; nothing sensible to do without it */
        e->evs = v;
        e->cap_evs = cap;
    }
    struct kiln_event *ev = &e->evs[e->n_evs++];
    memset(ev, 0, offsetof(struct kiln_event, error) + 1);
    ev->id = r->id;
    ev->user = r->user;
    ev->token = -1;
    ev->stop_token = -1;
    ev->prompt_tokens = r->n_prompt;
    ev->completion_tokens = r->n_tokens - r->n_prompt;
    ev->cached_tokens = r->cached_tokens;
    return ev;
}

/* Copies n bytes of text into the event (NUL-terminated), or "" when n is 0. */
static void set_text(struct kiln_event *ev, const char *text, size_t n)
{
    ev->text = malloc(n + 1);
    KILN_ASSERT(ev->text);
    if (n) memcpy(ev->text, text, n);
    ev->text[n] = 0;
    ev->text_len = n;
}

/* Ends a request that has not produced its last token (cancel, error, drain deadline). */
static void finish_early(struct kiln_engine *e, struct req *r, enum kiln_finish why,
                         const char *msg)
{
    struct kiln_event *ev = new_event(e, r);
    ev->finish = why;
    if (r->detokenize) set_text(ev, "", 0);
    if (msg) snprintf(ev->error, sizeof ev->error, "%s", msg);
    kiln_kv_seq_release(&e->kv, &r->kv);
    r->finished = true;
}

/* Under mu. */
static void update_stats(struct kiln_engine *e)
{
    e->stats.running = e->running.n;
    e->stats.waiting = e->waiting.n;
    e->stats.kv_blocks_used = kiln_kv_used(&e->kv);
    e->stats.kv_blocks_touched = e->kv.n_touched;
    e->stats.steps = e->steps;
    e->stats.preemptions = e->preemptions;
    e->stats.prefix_hits_tokens = e->prefix_hits;
    e->stats.grammar_masks = e->grammar_masks;
    e->stats.grammar_forced = e->grammar_forced;
    e->stats.grammar_s = e->grammar_s;
    e->stats.step_s = e->step_s;
    e->stats.device_s = e->device_s;
}

/* Publishes this step's events and the stats, then wakes the consumers. */
static void publish(struct kiln_engine *e)
{
    pthread_mutex_lock(&e->mu);
    if (e->q_len + e->n_evs > e->q_cap) {
        size_t cap = e->q_cap ? e->q_cap : 256;
        while (cap < e->q_len + e->n_evs) cap *= 2;
        struct kiln_event *q = malloc(cap * sizeof *q);
        KILN_ASSERT(q);
        for (size_t i = 0; i < e->q_len; i++) q[i] = e->queue[(e->q_head + i) % e->q_cap];
        free(e->queue);
        e->queue = q;
        e->q_head = 0;
        e->q_cap = cap;
    }
    double now = kiln_now();
    for (size_t i = 0; i < e->n_evs; i++) {
        e->evs[i].time = now;
        e->queue[(e->q_head + e->q_len++) % e->q_cap] = e->evs[i];
    }
    bool any = e->n_evs > 0;
    e->n_evs = 0;
    update_stats(e);
    if (any) pthread_cond_broadcast(&e->events);
    pthread_mutex_unlock(&e->mu);
    if (any && e->opt.notify) e->opt.notify(e->opt.notify_arg);
}

size_t kiln_engine_poll(struct kiln_engine *e, struct kiln_event *ev, size_t max)
{
    pthread_mutex_lock(&e->mu);
    size_t n = e->q_len < max ? e->q_len : max;
    for (size_t i = 0; i < n; i++) ev[i] = e->queue[(e->q_head + i) % e->q_cap];
    if (n) {
        e->q_head = (e->q_head + n) % e->q_cap;
        e->q_len -= n;
    }
    pthread_mutex_unlock(&e->mu);
    return n;
}

size_t kiln_engine_wait(struct kiln_engine *e, struct kiln_event *ev, size_t max, double timeout_s)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    double t = (double)until.tv_sec + until.tv_nsec * 1e-9 + (timeout_s > 0 ? timeout_s : 0);
    until.tv_sec = (time_t)t;
    until.tv_nsec = (long)((t - (double)until.tv_sec) * 1e9);
    pthread_mutex_lock(&e->mu);
    while (e->q_len == 0)
        if (pthread_cond_timedwait(&e->events, &e->mu, &until) == ETIMEDOUT) break;
    pthread_mutex_unlock(&e->mu);
    return kiln_engine_poll(e, ev, max);
}

void kiln_engine_cancel(struct kiln_engine *e, uint64_t id)
{
    pthread_mutex_lock(&e->mu);
    if (e->n_cancels == e->cap_cancels) {
        int cap = e->cap_cancels ? 2 * e->cap_cancels : 16;
        uint64_t *v = realloc(e->cancels, (size_t)cap * sizeof *v);
        if (!v) { /* the request then runs to its end; nothing is leaked */
            pthread_mutex_unlock(&e->mu);
            KILN_WARN("out of memory: cancel of request %llu dropped", (unsigned long long)id);
            return;
        }
        e->cancels = v;
        e->cap_cancels = cap;
    }
    e->cancels[e->n_cancels++] = id;
    pthread_cond_signal(&e->work);
    pthread_mutex_unlock(&e->mu);
}

void kiln_engine_stats(struct kiln_engine *e, struct kiln_engine_stats *st)
{
    pthread_mutex_lock(&e->mu);
    *st = e->stats;
    st->waiting += e->incoming.n;
    pthread_mutex_unlock(&e->mu);
}

void kiln_engine_drain(struct kiln_engine *e, double deadline_s)
{
    pthread_mutex_lock(&e->mu);
    if (!e->draining) {
        e->draining = true;
        e->deadline = kiln_now() + deadline_s;
    }
    pthread_cond_signal(&e->work);
    pthread_mutex_unlock(&e->mu);
}

/* ---- the step ---- */

/* Drops finished requests from a list, keeping the order of the rest. */
static void sweep(struct list *l)
{
    int k = 0;
    for (int i = 0; i < l->n; i++) {
        if (l->v[i]->finished)
            req_free(l->v[i]);
        else
            l->v[k++] = l->v[i];
    }
    l->n = k;
}

static void cancel_ids(struct kiln_engine *e, const uint64_t *ids, int n)
{
    if (!n) return;
    for (int c = 0; c < n; c++) {
        struct list *lists[2] = {&e->running, &e->waiting};
        for (int l = 0; l < 2; l++)
            for (int i = 0; i < lists[l]->n; i++) {
                struct req *r = lists[l]->v[i];
                if (r->id == ids[c] && !r->finished)
                    finish_early(e, r, KILN_FINISH_CANCELLED, NULL);
            }
    }
    sweep(&e->running);
    sweep(&e->waiting);
}

static void cancel_all(struct kiln_engine *e, enum kiln_finish why, const char *msg)
{
    for (int i = 0; i < e->running.n; i++) finish_early(e, e->running.v[i], why, msg);
    for (int i = 0; i < e->waiting.n; i++) finish_early(e, e->waiting.v[i], why, msg);
    sweep(&e->running);
    sweep(&e->waiting);
}

/* Recompute preemption of the latest running request. */
static void preempt_last(struct kiln_engine *e)
{
    struct req *r = e->running.v[--e->running.n];
    kiln_kv_seq_release(&e->kv, &r->kv);
    r->n_computed = 0;
    KILN_ASSERT(list_reserve(&e->waiting, e->waiting.n + 1));
    memmove(e->waiting.v + 1, e->waiting.v, (size_t)e->waiting.n * sizeof *e->waiting.v);
    e->waiting.v[0] = r;
    e->waiting.n++;
    e->preemptions++;
    KILN_DEBUG("preempted request %llu (%d tokens) for recompute", (unsigned long long)r->id,
               r->n_tokens);
}

/* Picks this step's sequences and chunk lengths into e->sched / e->b_chunk; returns how many. */
static int schedule(struct kiln_engine *e)
{
    int n_seq = 0, n_tok = 0, budget = e->opt.max_num_tokens;
    bool preempted = false;
    /* 1. decodes, oldest first */
    for (int i = 0; i < e->running.n && n_tok < budget; i++) {
        struct req *r = e->running.v[i];
        if (r->n_tokens - r->n_computed != 1) continue;
        bool self = false;
        while (!kiln_kv_seq_reserve(&e->kv, &r->kv, r->n_computed + 1)) {
            self = e->running.v[e->running.n - 1] == r;
            preempt_last(e);
            preempted = true;
            if (self) break;
        }
        if (self) break;
        e->sched[n_seq] = r;
        e->b_chunk[n_seq++] = 1;
        n_tok++;
    }
    /* 2. prompt chunks of running sequences (their blocks are reserved) */
    for (int i = 0; i < e->running.n && n_tok < budget; i++) {
        struct req *r = e->running.v[i];
        int rem = r->n_tokens - r->n_computed;
        if (rem <= 1) continue;
        int chunk = rem < budget - n_tok ? rem : budget - n_tok;
        e->sched[n_seq] = r;
        e->b_chunk[n_seq++] = chunk;
        n_tok += chunk;
    }
    /* 3. admission, first come first served */
    while (!preempted && e->waiting.n > 0 && e->running.n < e->opt.max_batch_size &&
           n_tok < budget) {
        struct req *r = e->waiting.v[0];
        int m = kiln_kv_seq_match(&e->kv, &r->kv, r->tokens, r->n_tokens);
        int need = blocks_for(e, r->n_tokens) - m;
        bool fits = e->running.n == 0 || kiln_kv_available(&e->kv) - need >= e->watermark;
        if (!fits || !kiln_kv_seq_reserve(&e->kv, &r->kv, r->n_tokens)) {
            kiln_kv_seq_release(&e->kv, &r->kv);
            break;
        }
        list_remove_at(&e->waiting, 0);
        e->running.v[e->running.n++] = r;
        r->n_computed = m * e->block_size;
        e->prefix_hits += (uint64_t)r->n_computed;
        if (!r->admitted) {
            r->admitted = true;
            r->cached_tokens = r->n_computed;
        }
        int rem = r->n_tokens - r->n_computed;
        int chunk = rem < budget - n_tok ? rem : budget - n_tok;
        e->sched[n_seq] = r;
        e->b_chunk[n_seq++] = chunk;
        n_tok += chunk;
    }
    return n_seq;
}

/* Fills the batch arrays for the scheduled sequences. */
static void build_batch(struct kiln_engine *e, int n_seq, struct kiln_batch *batch)
{
    int stride = 1;
    for (int s = 0; s < n_seq; s++)
        if (e->sched[s]->kv.n > stride) stride = e->sched[s]->kv.n;
    int t = 0, n_out = 0;
    for (int s = 0; s < n_seq; s++) {
        struct req *r = e->sched[s];
        int chunk = e->b_chunk[s];
        e->b_seq_start[s] = t;
        for (int k = 0; k < chunk; k++) {
            e->b_tokens[t] = r->tokens[r->n_computed + k];
            e->b_pos[t++] = r->n_computed + k;
        }
        e->b_kv_len[s] = r->n_computed + chunk;
        int32_t *row = e->b_table + (size_t)s * stride;
        memcpy(row, r->kv.blocks, (size_t)r->kv.n * sizeof *row);
        memset(row + r->kv.n, 0, (size_t)(stride - r->kv.n) * sizeof *row);
        if (r->n_computed + chunk == r->n_tokens) e->b_out_rows[n_out++] = t - 1;
    }
    e->b_seq_start[n_seq] = t;
    *batch = (struct kiln_batch){
        .n_tokens = t,
        .tokens = e->b_tokens,
        .positions = e->b_pos,
        .n_seqs = n_seq,
        .seq_start = e->b_seq_start,
        .kv_len = e->b_kv_len,
        .block_table = e->b_table,
        .max_blocks = stride,
        .n_out = n_out,
        .out_rows = e->b_out_rows,
    };
}

/* Text handling of one new token: the detokenized delta goes through the stop-string matcher.
 * Returns the bytes ready in r->stop.buf; *matched is a stop string's index or -1. */
static size_t next_text(struct req *r, int32_t token, bool end, bool check, int *matched)
{
    char *delta = NULL;
    size_t len = 0, ready = 0;
    struct kiln_error err;
    /* An end token's own text is not part of the output; at the end what the detokenizer
     * holds back (an unfinished UTF-8 sequence) is flushed. */
    enum kiln_status st = end ? kiln_detok_flush(r->detok, &delta, &len, &err)
                              : kiln_detok_push(r->detok, token, &delta, &len, &err);
    if (!st) st = kiln_stop_push(&r->stop, delta ? delta : "", len, check, &ready, matched, &err);
    free(delta);
    if (st) {
        KILN_WARN("request %llu: %s", (unsigned long long)r->id, err.msg);
        *matched = -1;
        return r->stop.len;
    }
    return ready;
}

/* Appends a sampled token, applies the stop conditions and queues its event. complete: the
 * constraint's output is complete and nothing but an eos id can follow (or t is one). */
static void take_token(struct kiln_engine *e, struct req *r, const struct kiln_sample_out *o,
                       bool complete)
{
    int32_t t = o->token;
    r->tokens[r->n_tokens++] = t;
    int n_out = r->n_tokens - r->n_prompt;
    hist_add(r, t, true);
    bool end = contains(r->end_ids, r->n_end, t) || (complete && contains(e->eos, e->n_eos, t));
    bool check = n_out >= r->min_tokens;
    enum kiln_finish finish = end ? KILN_FINISH_STOP : KILN_FINISH_NONE;
    enum kiln_finish last = complete ? KILN_FINISH_STOP : KILN_FINISH_LENGTH;
    int matched = -1;
    size_t ready = 0;
    if (r->need_text) {
        ready = next_text(r, t, end, check, &matched);
        if (matched >= 0) finish = KILN_FINISH_STOP;
        if (!finish && (complete || n_out >= r->max_tokens)) {
            finish = last;
            ready = next_text(r, t, true, check, &matched);
            if (matched >= 0) finish = KILN_FINISH_STOP;
        }
        if (finish && matched < 0) ready = r->stop.len; /* release what was held back */
    } else if (!finish && (complete || n_out >= r->max_tokens)) {
        finish = last;
    }
    struct kiln_event *ev = new_event(e, r);
    ev->token = t;
    if (r->logprobs >= 0) {
        ev->logprob = o->logprob;
        ev->n_top = o->n_top < r->logprobs ? o->n_top : r->logprobs;
        memcpy(ev->top_ids, o->top_ids, (size_t)ev->n_top * sizeof *ev->top_ids);
        memcpy(ev->top_logprobs, o->top_logprobs, (size_t)ev->n_top * sizeof *ev->top_logprobs);
    }
    if (r->detokenize) set_text(ev, r->stop.buf, ready);
    if (r->need_text) kiln_stop_consume(&r->stop, ready);
    ev->finish = finish;
    if (end) ev->stop_token = t;
    if (matched >= 0) ev->stop_reason = strdup(r->stop.strs[matched]);
    if (finish) {
        kiln_kv_seq_release(&e->kv, &r->kv);
        r->finished = true;
    }
}

/* ---- structured output ---- */

/* This thread's CPU time: a loaded host does not make a mask look slow. */
static double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Fills r->mask with the tokens the matcher allows next (unless it already holds them), and
 * counts the masks in a row that took longer than max_mask_ms (mask_too_slow). */
static void grammar_mask(struct kiln_engine *e, struct req *r)
{
    if (r->mask_ready) return;
    double t0 = e->opt.max_mask_ms > 0 ? thread_cpu_s() : 0;
    kiln_matcher_fill_mask(r->matcher, r->mask);
    if (e->opt.max_mask_ms > 0)
        r->slow_masks = (thread_cpu_s() - t0) * 1e3 > e->opt.max_mask_ms ? r->slow_masks + 1 : 0;
    r->mask_ready = true;
    e->grammar_masks++;
}

/* Ends r with an error once KILN_SLOW_MASKS masks in a row went over max_mask_ms: a grammar that
 * costs that much a token delays every sequence of every step. One slow mask (a table growing,
 * a first visit to a large object's keys) is allowed. */
static bool mask_too_slow(struct kiln_engine *e, struct req *r)
{
    if (r->slow_masks < KILN_SLOW_MASKS) return false;
    char msg[200];
    snprintf(msg, sizeof msg,
             "the output constraint is too costly: %d token masks in a row took over %g ms each "
             "(--max-mask-ms); simplify the schema or pattern",
             r->slow_masks, e->opt.max_mask_ms);
    KILN_ERROR("request %llu: %s", (unsigned long long)r->id, msg);
    finish_early(e, r, KILN_FINISH_ERROR, msg);
    return true;
}

/* After a complete output: whether a token other than an eos id may follow. */
static bool grammar_can_continue(struct kiln_engine *e, struct req *r)
{
    grammar_mask(e, r);
    for (int w = 0; w < e->mask_words; w++) {
        for (uint32_t bits = r->mask[w]; bits; bits &= bits - 1) {
            int32_t id = w * 32 + __builtin_ctz(bits);
            if (!contains(e->eos, e->n_eos, id)) return true;
        }
    }
    return false;
}

/* r->mask allows token t and nothing else. */
static bool grammar_only(const struct kiln_engine *e, const struct req *r, int32_t t)
{
    for (int w = 0; w < e->mask_words; w++)
        if (r->mask[w] != (w == t >> 5 ? 1u << (t & 31) : 0u)) return false;
    return true;
}

/* take_token for a constrained request (unless it is past its mask time limit, mask_too_slow,
 * and ends): the matcher accepts the token first (a token it
 * refuses ends the request with an error: the mask makes that unreachable), then, without
 * logprobs, a token the grammar forces is appended as if drawn, and so on, while the KV pool
 * has room (their forward is then one chunk of the next step). Forced means exact here: the
 * mask allows that token alone, so the sampler could draw nothing else. kiln_matcher_forced
 * only names a candidate (the first token of the forced bytes as the tokenizer splits them;
 * other splits of those bytes are often allowed too, and then the token is drawn); the mask
 * filled to check it is the next step's when it is not forced. */
static void take_constrained(struct kiln_engine *e, struct req *r, const struct kiln_sample_out *o)
{
    if (mask_too_slow(e, r)) return; /* the drawn token is not taken */
    double t0 = kiln_now();
    const struct kiln_sample_out *cur = o;
    struct kiln_sample_out fo = {.token = -1};
    for (;;) {
        if (!kiln_matcher_accept(r->matcher, cur->token)) {
            char msg[128];
            snprintf(msg, sizeof msg, "token %d is not allowed by the output constraint",
                     cur->token);
            KILN_ERROR("request %llu: %s", (unsigned long long)r->id, msg);
            finish_early(e, r, KILN_FINISH_ERROR, msg);
            break;
        }
        r->mask_ready = false;
        bool complete = contains(e->eos, e->n_eos, cur->token) ||
                        (kiln_matcher_is_complete(r->matcher) && !grammar_can_continue(e, r));
        e->grammar_s += kiln_now() - t0; /* the token's text and event are not the grammar's */
        take_token(e, r, cur, complete);
        t0 = kiln_now();
        if (r->finished || r->logprobs >= 0) break;
        int32_t t;
        if (kiln_matcher_forced(r->matcher, &t, 1) != 1) break;
        grammar_mask(e, r);
        if (!grammar_only(e, r, t)) break;
        /* an end id goes through the sampler (min_tokens may ban it); a new KV block only
         * while the pool keeps the decode headroom */
        if (contains(r->end_ids, r->n_end, t) || contains(e->eos, e->n_eos, t)) break;
        if (blocks_for(e, r->n_tokens + 1) > r->kv.n && kiln_kv_available(&e->kv) <= e->watermark)
            break;
        if (!kiln_kv_seq_reserve(&e->kv, &r->kv, r->n_tokens + 1)) break;
        fo.token = t;
        cur = &fo;
        e->grammar_forced++;
    }
    e->grammar_s += kiln_now() - t0;
}

static void step(struct kiln_engine *e)
{
    int n_seq = schedule(e);
    if (n_seq == 0) {
        /* Waiting work and an idle pool can only mean a request that cannot ever fit (the
         * submit checks make this unreachable); fail it rather than spin. */
        if (e->running.n == 0 && e->waiting.n > 0) {
            finish_early(e, e->waiting.v[0], KILN_FINISH_ERROR,
                         "the request does not fit the KV cache");
            sweep(&e->waiting);
        }
        return;
    }
    /* The stats show this step's admissions while its forward runs. */
    pthread_mutex_lock(&e->mu);
    update_stats(e);
    pthread_mutex_unlock(&e->mu);
    struct kiln_batch batch;
    build_batch(e, n_seq, &batch);
    struct kiln_error err = {0};
    double t_fwd = kiln_now();
    enum kiln_status st = e->b->ops->forward(e->b, &batch, &err);
    e->device_s += kiln_now() - t_fwd;
    int n_out = batch.n_out;
    if (!st && n_out > 0) {
        double t0 = 0;
        for (int s = 0, k = 0; s < n_seq; s++) {
            struct req *r = e->sched[s];
            if (r->n_computed + e->b_chunk[s] != r->n_tokens) continue;
            int n_gen = r->n_tokens - r->n_prompt;
            e->b_samp[k] = r->samp;
            e->b_samp[k].step = (uint64_t)n_gen;
            if (n_gen < r->min_tokens) {
                e->b_samp[k].banned_ids = r->end_ids;
                e->b_samp[k].n_banned = r->n_end;
            }
            if (r->matcher) {
                if (!t0) t0 = kiln_now();
                grammar_mask(e, r);
                e->b_samp[k].mask = r->mask;
            }
            k++;
        }
        if (t0) e->grammar_s += kiln_now() - t0;
        double t_samp = kiln_now();
        st = e->b->ops->sample(e->b, e->b_samp, n_out, e->b_out, &err);
        e->device_s += kiln_now() - t_samp;
    }
    e->steps++;
    if (st) {
        KILN_ERROR("engine step failed: %s", err.msg);
        for (int s = 0; s < n_seq; s++) finish_early(e, e->sched[s], KILN_FINISH_ERROR, err.msg);
        sweep(&e->running);
        return;
    }
    for (int s = 0, k = 0; s < n_seq; s++) {
        struct req *r = e->sched[s];
        r->n_computed += e->b_chunk[s];
        kiln_kv_seq_commit(&e->kv, &r->kv, r->tokens, r->n_computed);
        if (r->n_computed != r->n_tokens) continue;
        if (r->matcher)
            take_constrained(e, r, &e->b_out[k++]);
        else
            take_token(e, r, &e->b_out[k++], false);
    }
    sweep(&e->running);
}

static void *engine_main(void *arg)
{
    struct kiln_engine *e = arg;
    uint64_t *cancels = NULL;
    int cap_cancels = 0;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        while (!e->quit && e->incoming.n == 0 && e->n_cancels == 0 && e->running.n == 0 &&
               e->waiting.n == 0)
            pthread_cond_wait(&e->work, &e->mu);
        if (e->quit) {
            pthread_mutex_unlock(&e->mu);
            break;
        }
        bool moved = list_reserve(&e->waiting, e->waiting.n + e->incoming.n);
        if (moved) {
            memcpy(e->waiting.v + e->waiting.n, e->incoming.v,
                   (size_t)e->incoming.n * sizeof *e->incoming.v);
            e->waiting.n += e->incoming.n;
            e->incoming.n = 0;
        }
        int n_cancels = 0;
        if (e->n_cancels > cap_cancels) {
            uint64_t *v = realloc(cancels, (size_t)e->n_cancels * sizeof *v);
            if (v) {
                cancels = v;
                cap_cancels = e->n_cancels;
            }
        }
        if (e->n_cancels <= cap_cancels) {
            n_cancels = e->n_cancels;
            if (n_cancels) memcpy(cancels, e->cancels, (size_t)n_cancels * sizeof *cancels);
            e->n_cancels = 0;
        }
        bool expired = e->draining && kiln_now() >= e->deadline;
        pthread_mutex_unlock(&e->mu);

        cancel_ids(e, cancels, n_cancels);
        if (expired) cancel_all(e, KILN_FINISH_CANCELLED, NULL);
        double t_step = kiln_now();
        uint64_t steps = e->steps;
        step(e);
        publish(e);
        if (e->steps != steps) e->step_s += kiln_now() - t_step;
    }
    free(cancels);
    return NULL;
}

/* ---- create / free ---- */

static void add_eos(struct kiln_engine *e, int32_t id)
{
    if (id >= 0 && id < e->vocab && !contains(e->eos, e->n_eos, id) &&
        e->n_eos < (int)(sizeof e->eos / sizeof e->eos[0]))
        e->eos[e->n_eos++] = id;
}

enum kiln_status kiln_engine_create(struct kiln_backend *backend, struct kiln_tokenizer *tok,
                                    const struct kiln_engine_options *opt, struct kiln_engine **out,
                                    struct kiln_error *err)
{
    *out = NULL;
    const struct kiln_backend_options *bo = &backend->opt;
    struct kiln_engine_options o = *opt;
    if (o.max_batch_size <= 0) o.max_batch_size = bo->max_seqs;
    if (o.max_num_tokens <= 0) o.max_num_tokens = bo->max_tokens;
    if (o.max_seq_len <= 0) o.max_seq_len = bo->max_seq_len;
    if (o.max_input_len <= 0) o.max_input_len = o.max_seq_len;
    if (o.max_mask_ms == 0) o.max_mask_ms = KILN_MAX_MASK_MS;
    if (o.max_batch_size > bo->max_seqs || o.max_num_tokens > bo->max_tokens ||
        o.max_seq_len > bo->max_seq_len)
        return kiln_errorf(err, KILN_ERR_INVALID,
                           "engine: batch size %d, %d tokens per step and sequences of %d exceed "
                           "what the backend was built for (%d, %d, %d)",
                           o.max_batch_size, o.max_num_tokens, o.max_seq_len, bo->max_seqs,
                           bo->max_tokens, bo->max_seq_len);
    if (o.max_num_tokens < o.max_batch_size)
        return kiln_errorf(err, KILN_ERR_INVALID,
                           "engine: max_num_tokens (%d) must be at least max_batch_size (%d) so "
                           "every running sequence can decode each step",
                           o.max_num_tokens, o.max_batch_size);
    int max_pos = backend->model->cfg.max_position_embeddings;
    if (max_pos > 0 && o.max_seq_len > max_pos)
        return kiln_errorf(err, KILN_ERR_INVALID,
                           "engine: max_seq_len %d exceeds the model's context of %d positions "
                           "(max_position_embeddings)",
                           o.max_seq_len, max_pos);
    if (o.max_input_len > o.max_seq_len)
        return kiln_errorf(err, KILN_ERR_INVALID,
                           "engine: max_input_len (%d) exceeds max_seq_len (%d)", o.max_input_len,
                           o.max_seq_len);
    struct kiln_engine *e = calloc(1, sizeof *e);
    if (!e) return kiln_errorf(err, KILN_ERR_NOMEM, "engine: out of memory");
    e->b = backend;
    e->tok = tok;
    e->opt = o;
    e->vocab = backend->model->cfg.vocab_size;
    e->block_size = bo->block_size;
    e->blocks_per_seq = blocks_for(e, o.max_seq_len);
    e->watermark = bo->n_blocks / 100; /* headroom for decodes, as vLLM keeps */
    e->next_id = 1;
    const struct kiln_config *cfg = &backend->model->cfg;
    for (int i = 0; i < cfg->n_eos; i++) add_eos(e, cfg->eos_token_ids[i]);
    int mask_vocab = e->vocab;
    if (tok) {
        const int32_t *ids;
        int n = kiln_tokenizer_eos(tok, &ids);
        for (int i = 0; i < n; i++) add_eos(e, ids[i]);
        if (kiln_tokenizer_vocab_size(tok) > mask_vocab)
            mask_vocab = kiln_tokenizer_vocab_size(tok);
    }
    e->mask_words = (mask_vocab + 31) / 32;
    enum kiln_status st = kiln_kv_init(&e->kv, bo->n_blocks, bo->block_size, o.prefix_caching, err);
    if (st) {
        free(e);
        return st;
    }
    size_t B = (size_t)o.max_batch_size, T = (size_t)o.max_num_tokens;
    e->b_tokens = malloc(T * sizeof *e->b_tokens);
    e->b_pos = malloc(T * sizeof *e->b_pos);
    e->b_seq_start = malloc((B + 1) * sizeof *e->b_seq_start);
    e->b_kv_len = malloc(B * sizeof *e->b_kv_len);
    e->b_out_rows = malloc(B * sizeof *e->b_out_rows);
    e->b_chunk = malloc(B * sizeof *e->b_chunk);
    e->b_table = malloc(B * (size_t)e->blocks_per_seq * sizeof *e->b_table);
    e->sched = malloc(B * sizeof *e->sched);
    e->b_samp = malloc(B * sizeof *e->b_samp);
    e->b_out = malloc(B * sizeof *e->b_out);
    bool ok = e->b_tokens && e->b_pos && e->b_seq_start && e->b_kv_len && e->b_out_rows &&
              e->b_chunk && e->b_table && e->sched && e->b_samp && e->b_out &&
              list_reserve(&e->running, o.max_batch_size);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->work, NULL);
    pthread_cond_init(&e->events, &ca);
    pthread_condattr_destroy(&ca);
    if (!ok) {
        kiln_engine_free(e);
        return kiln_errorf(err, KILN_ERR_NOMEM, "engine: out of memory for step buffers");
    }
    e->stats.kv_blocks_total = e->kv.n_blocks;
    e->stats.kv_bytes = backend->kv_bytes;
    if (pthread_create(&e->thread, NULL, engine_main, e)) {
        kiln_engine_free(e);
        return kiln_errorf(err, KILN_ERR_INTERNAL, "engine: cannot start its thread");
    }
    e->started = true;
    KILN_INFO("engine: %d KV blocks of %d positions (%d tokens), batch %d, %d tokens per step, "
              "prefix caching %s",
              e->kv.n_blocks, e->block_size, e->kv.n_blocks * e->block_size, o.max_batch_size,
              o.max_num_tokens, o.prefix_caching ? "on" : "off");
    *out = e;
    return KILN_OK;
}

void kiln_engine_free(struct kiln_engine *e)
{
    if (!e) return;
    if (e->started) {
        pthread_mutex_lock(&e->mu);
        e->quit = true;
        pthread_cond_signal(&e->work);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->thread, NULL);
    }
    struct list *lists[3] = {&e->running, &e->waiting, &e->incoming};
    for (int l = 0; l < 3; l++) {
        for (int i = 0; i < lists[l]->n; i++) req_free(lists[l]->v[i]);
        free(lists[l]->v);
    }
    for (size_t i = 0; i < e->q_len; i++) kiln_event_release(&e->queue[(e->q_head + i) % e->q_cap]);
    for (size_t i = 0; i < e->n_evs; i++) kiln_event_release(&e->evs[i]);
    free(e->queue);
    free(e->evs);
    free(e->cancels);
    free(e->b_tokens);
    free(e->b_pos);
    free(e->b_seq_start);
    free(e->b_kv_len);
    free(e->b_out_rows);
    free(e->b_chunk);
    free(e->b_table);
    free(e->sched);
    free(e->b_samp);
    free(e->b_out);
    kiln_kv_free(&e->kv);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->work);
    pthread_cond_destroy(&e->events);
    free(e);
}
