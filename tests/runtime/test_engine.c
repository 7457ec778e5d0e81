/* The engine's scheduler on the mock backend (mock_backend.h): outputs do not depend on how
 * requests were batched, chunked, preempted or prefix-cached; cancellation, stop conditions,
 * limits and errors behave as engine.h says. Stop strings and text need a tokenizer:
 * test_engine_cpu covers them with the real model. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "engine_helpers.h"
#include "mock_backend.h"
#include "runtime/engine.h"
#include "runtime/sampler.h"

#define VOCAB 64

static const int32_t eos_ids[2] = {0, 1};

struct setup {
    int n_blocks, block_size, max_batch, max_tokens, max_seq_len, max_queue;
    bool prefix_caching;
};

static struct setup defaults(void)
{
    return (struct setup){.n_blocks = 512,
                          .block_size = 4,
                          .max_batch = 8,
                          .max_tokens = 32,
                          .max_seq_len = 256,
                          .prefix_caching = true};
}

static int notified;
static void on_notify(void *arg)
{
    __atomic_fetch_add((int *)arg, 1, __ATOMIC_RELAXED);
}

/* The latest engine's backend: the mock behind a gate (engine_helpers.h). */
static struct kiln_backend *gate;
static const int32_t blocker[3] = {VOCAB - 1, VOCAB - 1, VOCAB - 1};

static struct kiln_engine *engine_new(struct setup s, struct mock_backend **mock)
{
    *mock = mock_create(VOCAB, s.n_blocks, s.block_size, s.max_batch, s.max_tokens, s.max_seq_len,
                        eos_ids, 2);
    assert_non_null(*mock);
    struct kiln_engine_options o = {.max_queue = s.max_queue,
                                    .prefix_caching = s.prefix_caching,
                                    .notify = on_notify,
                                    .notify_arg = &notified};
    struct kiln_engine *e;
    struct kiln_error err;
    gate = gate_wrap(&(*mock)->base);
    enum kiln_status st = kiln_engine_create(gate, NULL, &o, &e, &err);
    if (st) fail_msg("%s", err.msg);
    return e;
}

static void engine_done(struct kiln_engine *e, struct mock_backend *m)
{
    struct kiln_engine_stats st;
    kiln_engine_stats(e, &st);
    assert_int_equal(st.kv_blocks_used, 0);
    assert_int_equal(st.running, 0);
    /* the engine thread's time: steps that ran, and within them the backend's calls */
    if (st.steps > 0) assert_true(st.device_s > 0 && st.device_s <= st.step_s);
    assert_true(m->max_seqs_seen <= m->base.opt.max_seqs);
    assert_true(m->max_tokens_seen <= m->base.opt.max_tokens);
    kiln_engine_free(e);
    kiln_backend_free(gate);
}

/* Deterministic pseudo-random prompt. */
static void make_prompt(int32_t *p, int n, uint64_t seed)
{
    for (int i = 0; i < n; i++) {
        seed = kiln_splitmix64(seed);
        p[i] = 2 + (int32_t)(seed % (VOCAB - 2)); /* no eos in prompts */
    }
}

static struct kiln_request greedy(const int32_t *prompt, int n, int max_tokens)
{
    struct kiln_request r;
    kiln_request_defaults(&r);
    r.prompt = prompt;
    r.n_prompt = n;
    r.max_tokens = max_tokens;
    r.temperature = 0;
    r.ignore_eos = true;
    r.logprobs = 4;
    return r;
}

#define NREQ 8
static int32_t prompts[NREQ][120];
static const int prompt_len[NREQ] = {1, 5, 17, 33, 64, 9, 100, 40};

/* Runs the NREQ prompts one at a time, then all at once, on engines built from two setups.
 * out_together has NREQ + 1 entries (the last for submit_together's blocker). */
static void compare_schedules(struct setup alone, struct setup together, struct kiln_request base,
                              struct result *out_alone, struct result *out_together,
                              struct mock_backend **mock_together, struct kiln_engine **e_out)
{
    for (int i = 0; i < NREQ; i++) make_prompt(prompts[i], prompt_len[i], 100 + (uint64_t)i);
    struct mock_backend *m;
    struct kiln_engine *e = engine_new(alone, &m);
    for (int i = 0; i < NREQ; i++) {
        struct kiln_request r = base;
        r.prompt = prompts[i];
        r.n_prompt = prompt_len[i];
        r.seed = 1000 + (uint64_t)i;
        submit(e, r, &out_alone[i]);
        collect(e, 1);
    }
    engine_done(e, m);
    e = engine_new(together, &m);
    struct kiln_request reqs[NREQ];
    for (int i = 0; i < NREQ; i++) {
        reqs[i] = base;
        reqs[i].prompt = prompts[i];
        reqs[i].n_prompt = prompt_len[i];
        reqs[i].seed = 1000 + (uint64_t)i;
    }
    submit_together(e, gate, reqs, NREQ, out_together, blocker, 3);
    collect(e, NREQ + 1);
    for (int i = 0; i < NREQ; i++) assert_same(&out_alone[i], &out_together[i], 0);
    *mock_together = m;
    *e_out = e;
}

static void batched_equals_sequential(void **state)
{
    (void)state;
    struct result a[NREQ], b[NREQ + 1];
    struct mock_backend *m;
    struct kiln_engine *e;
    struct setup s = defaults();
    compare_schedules(s, s, greedy(NULL, 0, 24), a, b, &m, &e);
    assert_true(m->multi_seq_forwards > 0);
    for (int i = 0; i < NREQ; i++) {
        assert_false(b[i].has_text); /* no detokenize: no text */
        assert_int_equal(b[i].n, 24);
        assert_int_equal(b[i].finish, KILN_FINISH_LENGTH);
        assert_int_equal(b[i].completion_tokens, 24);
        assert_int_equal(b[i].prompt_tokens, prompt_len[i]);
    }
    assert_true(notified > 0);
    engine_done(e, m);
}

static void chunked_equals_whole(void **state)
{
    (void)state;
    struct result a[NREQ], b[NREQ + 1];
    struct mock_backend *m;
    struct kiln_engine *e;
    struct setup whole = defaults(), chunked = defaults();
    whole.max_tokens = 128;
    chunked.max_tokens = 8; /* the 100-token prompt takes 13 steps, interleaved with decodes */
    compare_schedules(whole, chunked, greedy(NULL, 0, 16), a, b, &m, &e);
    assert_int_equal(m->max_tokens_seen, 8);
    engine_done(e, m);
}

/* A pool far too small for the batch: requests are preempted and recomputed; outputs (greedy
 * and seeded sampling) equal those of requests that ran alone. */
static void preemption_recomputes(void **state)
{
    (void)state;
    struct result a[NREQ], b[NREQ + 1];
    struct mock_backend *m;
    struct kiln_engine *e;
    struct setup big = defaults(), tiny = defaults();
    tiny.n_blocks = 34; /* the 100-token prompt + 30 tokens needs 33 blocks */
    struct kiln_request r = greedy(NULL, 0, 30);
    compare_schedules(big, tiny, r, a, b, &m, &e);
    struct kiln_engine_stats st;
    kiln_engine_stats(e, &st);
    assert_true(st.preemptions > 0);
    engine_done(e, m);

    r.temperature = 0.9f;
    r.top_k = 20;
    r.has_seed = true;
    compare_schedules(big, tiny, r, a, b, &m, &e);
    kiln_engine_stats(e, &st);
    assert_true(st.preemptions > 0);
    engine_done(e, m);
}

/* The same seed gives the same tokens alone and in a batch, with every sampling knob on. */
static void seeds_alone_or_batched(void **state)
{
    (void)state;
    struct result a[NREQ], b[NREQ + 1];
    struct mock_backend *m;
    struct kiln_engine *e;
    struct kiln_request r = greedy(NULL, 0, 20);
    r.temperature = 1.1f;
    r.top_p = 0.9f;
    r.min_p = 0.02f;
    r.has_seed = true;
    r.presence_penalty = 0.5f;
    r.frequency_penalty = 0.3f;
    r.repetition_penalty = 1.2f;
    compare_schedules(defaults(), defaults(), r, a, b, &m, &e);
    engine_done(e, m);

    /* Without a seed each request draws its own: two runs differ. */
    e = engine_new(defaults(), &m);
    r.has_seed = false;
    r.prompt = prompts[0];
    r.n_prompt = prompt_len[0];
    submit(e, r, &a[0]);
    submit(e, r, &a[1]);
    collect(e, 2);
    assert_memory_not_equal(a[0].tokens, a[1].tokens, sizeof a[0].tokens);
    engine_done(e, m);
}

static void prefix_reuse(void **state)
{
    (void)state;
    struct mock_backend *m;
    struct kiln_engine *e = engine_new(defaults(), &m);
    int32_t p[41], q[41];
    make_prompt(p, 41, 5);
    memcpy(q, p, sizeof q);
    q[22] = (q[22] + 1) % (VOCAB - 2) + 2; /* q shares p's first 22 tokens: 5 full blocks */
    struct result r1, r2, r3, r4, r5;
    submit(e, greedy(p, 41, 10), &r1);
    collect(e, 1);
    assert_int_equal(r1.cached_tokens, 0);
    submit(e, greedy(p, 41, 10), &r2);
    collect(e, 1);
    assert_int_equal(r2.cached_tokens, 40); /* 10 blocks; the last token is recomputed */
    assert_same(&r1, &r2, 0);
    submit(e, greedy(q, 41, 10), &r3);
    collect(e, 1);
    assert_int_equal(r3.cached_tokens, 20);
    /* Two identical prompts at once: neither can reuse the other's unfinished blocks, both
     * agree with the first run. */
    submit(e, greedy(q, 41, 10), &r4);
    submit(e, greedy(q, 41, 10), &r5);
    collect(e, 2);
    assert_same(&r3, &r4, 0);
    assert_same(&r3, &r5, 0);
    struct kiln_engine_stats st;
    kiln_engine_stats(e, &st);
    assert_true(st.prefix_hits_tokens >= 60);
    engine_done(e, m);

    /* With prefix caching off nothing is reused and the output is the same. */
    struct setup off = defaults();
    off.prefix_caching = false;
    e = engine_new(off, &m);
    submit(e, greedy(p, 41, 10), &r4);
    collect(e, 1);
    submit(e, greedy(p, 41, 10), &r5);
    collect(e, 1);
    assert_int_equal(r5.cached_tokens, 0);
    assert_same(&r1, &r5, 0);
    engine_done(e, m);
}

static void cancel_frees_blocks(void **state)
{
    (void)state;
    struct setup s = defaults();
    s.max_batch = 1;
    s.max_tokens = 8;
    struct mock_backend *m;
    struct kiln_engine *e = engine_new(s, &m);
    int32_t p[30];
    make_prompt(p, 30, 9);
    struct result running, waiting;
    gate_set(gate, true);
    uint64_t a = submit(e, greedy(p, 30, 200), &running);
    gate_wait_held(gate); /* a is admitted and in its first forward */
    uint64_t b = submit(e, greedy(p, 30, 200), &waiting);
    struct kiln_engine_stats st;
    kiln_engine_stats(e, &st);
    assert_int_equal(st.running, 1);
    assert_int_equal(st.waiting, 1);
    assert_int_equal(st.kv_blocks_used, 8); /* 30 positions reserved at admission */
    /* Both cancelled while a's first prompt chunk (8 of 30 tokens) runs: a ends in the next
     * iteration, b without running. */
    kiln_engine_cancel(e, b);
    kiln_engine_cancel(e, a);
    kiln_engine_cancel(e, 12345); /* unknown ids are ignored */
    gate_set(gate, false);
    collect(e, 2);
    assert_int_equal(waiting.finish, KILN_FINISH_CANCELLED);
    assert_int_equal(waiting.n, 0);
    assert_int_equal(running.finish, KILN_FINISH_CANCELLED);
    assert_int_equal(running.n, 0);
    assert_int_equal(m->forwards, 1);
    kiln_engine_stats(e, &st);
    assert_int_equal(st.kv_blocks_used, 0);
    assert_int_equal(st.running + st.waiting, 0);
    engine_done(e, m);
}

/* Finds a prompt whose greedy output (with ignore_eos) has an eos at index >= 3. */
static void eos_prompt(struct kiln_engine *e, int32_t *p, struct result *full, int *at)
{
    for (uint64_t seed = 1;; seed++) {
        make_prompt(p, 6, seed);
        submit(e, greedy(p, 6, 60), full);
        collect(e, 1);
        for (int i = 3; i < full->n; i++)
            if (full->tokens[i] <= 1) {
                for (int k = 0; k < i; k++)
                    if (full->tokens[k] <= 1) goto next;
                *at = i;
                return;
            }
    next:;
    }
}

static void stop_conditions(void **state)
{
    (void)state;
    struct mock_backend *m;
    struct kiln_engine *e = engine_new(defaults(), &m);
    int32_t p[6];
    struct result full, r;
    int at;
    eos_prompt(e, p, &full, &at);

    /* eos ends the output (the eos token is the last one and counts). */
    struct kiln_request q = greedy(p, 6, 60);
    q.ignore_eos = false;
    submit(e, q, &r);
    collect(e, 1);
    assert_int_equal(r.finish, KILN_FINISH_STOP);
    assert_int_equal(r.n, at + 1);
    assert_int_equal(r.completion_tokens, at + 1);
    assert_int_equal(r.stop_token, full.tokens[at]);
    assert_memory_equal(r.tokens, full.tokens, (size_t)r.n * sizeof *r.tokens);

    /* A stop id ends it at its first occurrence, also with ignore_eos. */
    q.ignore_eos = true;
    int32_t stop_id = full.tokens[1];
    q.stop_ids = &stop_id;
    q.n_stop_ids = 1;
    submit(e, q, &r);
    collect(e, 1);
    int first = 0;
    while (full.tokens[first] != stop_id) first++;
    assert_int_equal(r.n, first + 1);
    assert_int_equal(r.finish, KILN_FINISH_STOP);
    assert_int_equal(r.stop_token, stop_id);

    /* min_tokens bans eos and stop ids until it is reached. */
    q.ignore_eos = false;
    q.min_tokens = at + 5;
    submit(e, q, &r);
    collect(e, 1);
    assert_true(r.n >= q.min_tokens);
    for (int i = 0; i < q.min_tokens; i++) assert_true(r.tokens[i] > 1 && r.tokens[i] != stop_id);
    assert_memory_equal(r.tokens, full.tokens, (size_t)first * sizeof *r.tokens);

    /* max_tokens */
    q = greedy(p, 6, 2);
    q.ignore_eos = false;
    submit(e, q, &r);
    collect(e, 1);
    assert_int_equal(r.finish, KILN_FINISH_LENGTH);
    assert_int_equal(r.n, 2);

    /* logit_bias forces a token; a huge repetition penalty forbids repeats */
    int32_t bid = 7;
    float bval = 100;
    q = greedy(p, 6, 12);
    q.bias_ids = &bid;
    q.bias_vals = &bval;
    q.n_bias = 1;
    submit(e, q, &r);
    collect(e, 1);
    for (int i = 0; i < r.n; i++) assert_int_equal(r.tokens[i], 7);
    q = greedy(p, 6, 30);
    q.repetition_penalty = 1e6f;
    submit(e, q, &r);
    collect(e, 1);
    for (int i = 0; i < r.n; i++) {
        for (int k = 0; k < i; k++) assert_int_not_equal(r.tokens[i], r.tokens[k]);
        for (int k = 0; k < 6; k++) assert_int_not_equal(r.tokens[i], p[k]);
    }
    engine_done(e, m);
}

static enum kiln_submit_error try_submit(struct kiln_engine *e, struct kiln_request q,
                                         const char *want)
{
    uint64_t id;
    struct kiln_error err = {0};
    enum kiln_submit_error why;
    enum kiln_status st = kiln_engine_submit_ex(e, &q, &id, &why, &err);
    assert_int_not_equal(st, KILN_OK);
    assert_int_equal(id, 0);
    if (!strstr(err.msg, want)) fail_msg("'%s' does not say '%s'", err.msg, want);
    return why;
}

static void limits(void **state)
{
    (void)state;
    struct setup s = defaults();
    s.max_queue = 2;
    s.max_batch = 1;
    s.max_tokens = 8;
    s.n_blocks = 40; /* 160 positions, below max_seq_len 256 */
    struct mock_backend *m;
    struct kiln_engine *e = engine_new(s, &m);
    int32_t p[300];
    make_prompt(p, 300, 3);
    struct kiln_request q = greedy(p, 10, 5);
    q.n_prompt = 0;
    assert_int_equal(try_submit(e, q, "empty"), KILN_SUBMIT_INVALID);
    q.n_prompt = 10;
    p[4] = VOCAB;
    assert_int_equal(try_submit(e, q, "outside the vocabulary"), KILN_SUBMIT_INVALID);
    p[4] = -1;
    assert_int_equal(try_submit(e, q, "outside the vocabulary"), KILN_SUBMIT_INVALID);
    p[4] = 5;
    q.max_tokens = 0;
    assert_int_equal(try_submit(e, q, "max_tokens"), KILN_SUBMIT_INVALID);
    q.max_tokens = 5;
    q.temperature = -1;
    assert_int_equal(try_submit(e, q, "temperature"), KILN_SUBMIT_INVALID);
    q.temperature = 0;
    q.top_p = 0;
    assert_int_equal(try_submit(e, q, "top_p"), KILN_SUBMIT_INVALID);
    q.top_p = 1;
    q.min_tokens = 6;
    assert_int_equal(try_submit(e, q, "min_tokens"), KILN_SUBMIT_INVALID);
    q.min_tokens = 0;
    int32_t bad = 64;
    q.stop_ids = &bad;
    q.n_stop_ids = 1;
    assert_int_equal(try_submit(e, q, "stop token id 64"), KILN_SUBMIT_INVALID);
    q.n_stop_ids = 0;
    const char *stop[] = {"x"};
    q.stop = stop;
    q.n_stop = 1;
    assert_int_equal(try_submit(e, q, "tokenizer"), KILN_SUBMIT_INVALID);
    q.n_stop = 0;

    q.n_prompt = 257;
    assert_int_equal(try_submit(e, q, "maximum input length is 256 tokens; the prompt has 257"),
                     KILN_SUBMIT_CONTEXT_LENGTH);
    q.n_prompt = 200;
    q.max_tokens = 57;
    assert_int_equal(try_submit(e, q,
                                "maximum context length is 256 tokens; the prompt has 200 "
                                "tokens and max_tokens is 57"),
                     KILN_SUBMIT_CONTEXT_LENGTH);
    q.n_prompt = 150;
    q.max_tokens = 20;
    assert_int_equal(try_submit(e, q, "KV cache holds 160 tokens"), KILN_SUBMIT_CONTEXT_LENGTH);

    /* Queue full: one request busy in the backend, two waiting. */
    struct result r[3];
    q = greedy(p, 10, 5);
    gate_set(gate, true);
    submit(e, q, &r[0]);
    gate_wait_held(gate);
    submit(e, q, &r[1]);
    submit(e, q, &r[2]);
    assert_int_equal(try_submit(e, q, "queue is full"), KILN_SUBMIT_QUEUE_FULL);
    gate_set(gate, false);
    collect(e, 3);
    for (int i = 1; i < 3; i++) assert_same(&r[0], &r[i], 0);

    /* Drain: new requests are refused; with a zero deadline running ones are cancelled. */
    gate_set(gate, true);
    submit(e, greedy(p, 10, 100), &r[0]);
    gate_wait_held(gate);
    kiln_engine_drain(e, 0);
    assert_int_equal(try_submit(e, q, "shutting down"), KILN_SUBMIT_SHUTTING_DOWN);
    gate_set(gate, false);
    collect(e, 1);
    assert_int_equal(r[0].finish, KILN_FINISH_CANCELLED);
    engine_done(e, m);
}

/* A failing forward ends the requests in that step with an error; the engine carries on. */
static void backend_error(void **state)
{
    (void)state;
    struct mock_backend *m;
    struct kiln_engine *e = engine_new(defaults(), &m);
    m->fail_at = 3;
    int32_t p[12];
    make_prompt(p, 12, 11);
    struct result a, b;
    submit(e, greedy(p, 12, 10), &a);
    collect(e, 1);
    assert_int_equal(a.finish, KILN_FINISH_ERROR);
    assert_int_equal(a.n, 2);
    assert_non_null(strstr(a.error, "injected failure"));
    submit(e, greedy(p, 12, 10), &b);
    collect(e, 1);
    assert_int_equal(b.finish, KILN_FINISH_LENGTH);
    assert_memory_equal(a.tokens, b.tokens, 2 * sizeof *a.tokens);
    engine_done(e, m);
}

static void bad_options(void **state)
{
    (void)state;
    struct mock_backend *m = mock_create(VOCAB, 16, 4, 8, 32, 64, eos_ids, 2);
    assert_non_null(m);
    struct kiln_engine *e;
    struct kiln_error err;
    struct kiln_engine_options o = {.max_batch_size = 16};
    assert_int_equal(kiln_engine_create(&m->base, NULL, &o, &e, &err), KILN_ERR_INVALID);
    o = (struct kiln_engine_options){.max_num_tokens = 4};
    assert_int_equal(kiln_engine_create(&m->base, NULL, &o, &e, &err), KILN_ERR_INVALID);
    assert_non_null(strstr(err.msg, "max_num_tokens"));
    m->model.cfg.max_position_embeddings = 32; /* the backend was sized for 64 */
    o = (struct kiln_engine_options){0};
    assert_int_equal(kiln_engine_create(&m->base, NULL, &o, &e, &err), KILN_ERR_INVALID);
    assert_non_null(strstr(err.msg, "max_position_embeddings"));
    kiln_backend_free(&m->base);
}

/* The GPU engine test's rule for schedules that part ways (engine_helpers.h): only at a near
 * tie, each token the other's runner-up, both gaps within the bound; teacher-forced from there. */
static void near_tie_rule(void **state)
{
    (void)state;
    static struct result a, b;
    char why[256];
    memset(&a, 0, sizeof a);
    a.n = 4;
    for (int i = 0; i < 4; i++) {
        a.tokens[i] = a.top[i][0] = 10 + i;
        a.top[i][1] = 20 + i;
        a.top_lp[i][0] = -0.5f, a.top_lp[i][1] = -3.0f;
    }
    b = a;
    assert_int_equal(near_tie_check(&a, 0, &b, 0.1f, why, sizeof why), -1);
    /* b takes a's runner-up at 2, where a's two best are 0.05 apart and b's 0.04 */
    a.top_lp[2][1] = -0.55f;
    b.tokens[2] = b.top[2][0] = 22;
    b.top[2][1] = 12;
    b.top_lp[2][0] = -0.5f, b.top_lp[2][1] = -0.54f;
    assert_int_equal(near_tie_check(&a, 0, &b, 0.1f, why, sizeof why), 2);
    assert_int_equal(near_tie_check(&a, 0, &b, 0.04f, why, sizeof why), -2); /* gap 0.05 */
    b.top[2][1] = 99; /* a's token is not b's runner-up */
    assert_int_equal(near_tie_check(&a, 0, &b, 0.1f, why, sizeof why), -2);
    b.top[2][1] = 12;
    b.tokens[2] = b.top[2][0] = 23; /* not a's runner-up */
    assert_int_equal(near_tie_check(&a, 0, &b, 0.1f, why, sizeof why), -2);
    /* teacher-forced: b holds a's continuation after position 1 */
    struct result c = {0};
    c.n = 2;
    for (int j = 0; j < 2; j++) {
        c.tokens[j] = c.top[j][0] = a.tokens[j + 2];
        c.top[j][1] = a.top[j + 2][1];
        c.top_lp[j][0] = a.top_lp[j + 2][0], c.top_lp[j][1] = a.top_lp[j + 2][1];
    }
    assert_int_equal(near_tie_check(&a, 2, &c, 0.1f, why, sizeof why), -1);
    c.tokens[1] = 77; /* a difference after the forced prefix, not at a tie */
    assert_int_equal(near_tie_check(&a, 2, &c, 0.1f, why, sizeof why), -2);
    c.tokens[1] = a.tokens[3];
    c.n = 1; /* too short */
    assert_int_equal(near_tie_check(&a, 2, &c, 0.1f, why, sizeof why), -2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(batched_equals_sequential),
        cmocka_unit_test(chunked_equals_whole),
        cmocka_unit_test(near_tie_rule),
        cmocka_unit_test(preemption_recomputes),
        cmocka_unit_test(seeds_alone_or_batched),
        cmocka_unit_test(prefix_reuse),
        cmocka_unit_test(cancel_frees_blocks),
        cmocka_unit_test(stop_conditions),
        cmocka_unit_test(limits),
        cmocka_unit_test(backend_error),
        cmocka_unit_test(bad_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
