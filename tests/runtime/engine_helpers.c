/* Shared by the engine tests (see engine_helpers.h). */
#include "engine_helpers.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t submit(struct kiln_engine *e, struct kiln_request r, struct result *res)
{
    memset(res, 0, sizeof *res);
    r.user = res;
    uint64_t id;
    struct kiln_error err;
    enum kiln_status st = kiln_engine_submit(e, &r, &id, &err);
    if (st) fail_msg("submit: %s", err.msg);
    return id;
}

static void take(struct result *r, const struct kiln_event *ev)
{
    assert_true(ev->time > 0);
    if (ev->text) {
        assert_int_equal(strlen(ev->text), ev->text_len);
        assert_true(r->text_len + ev->text_len < sizeof r->text);
        memcpy(r->text + r->text_len, ev->text, ev->text_len + 1);
        r->text_len += ev->text_len;
        r->has_text = true;
    }
    if (ev->token >= 0) {
        assert_true(r->n < RESULT_MAX_OUT);
        assert_int_equal(r->finish, KILN_FINISH_NONE);
        r->tokens[r->n] = ev->token;
        r->logprobs[r->n] = ev->logprob;
        for (int k = 0; k < ev->n_top && k < 4; k++) {
            r->top[r->n][k] = ev->top_ids[k];
            r->top_lp[r->n][k] = ev->top_logprobs[k];
        }
        r->n++;
    }
    if (ev->finish) {
        r->finish = ev->finish;
        r->stop_token = ev->stop_token;
        if (ev->stop_reason) snprintf(r->stop_reason, sizeof r->stop_reason, "%s", ev->stop_reason);
        r->prompt_tokens = ev->prompt_tokens;
        r->completion_tokens = ev->completion_tokens;
        r->cached_tokens = ev->cached_tokens;
        memcpy(r->error, ev->error, sizeof r->error);
    }
}

void collect(struct kiln_engine *e, int n)
{
    struct kiln_event ev[16];
    int done = 0;
    while (done < n) {
        size_t got = kiln_engine_wait(e, ev, 16, 60.0);
        if (!got) fail_msg("no event within 60 s (%d of %d finished)", done, n);
        for (size_t i = 0; i < got; i++) {
            take(ev[i].user, &ev[i]);
            done += ev[i].finish != KILN_FINISH_NONE;
            kiln_event_release(&ev[i]);
        }
    }
}

static void same_float(float a, float b, float tol)
{
    if (tol == 0)
        assert_memory_equal(&a, &b, sizeof a); /* bitwise */
    else if (!(fabsf(a - b) <= tol))
        fail_msg("logprob %g vs %g (tolerance %g)", a, b, tol);
}

void assert_same(const struct result *a, const struct result *b, float tol)
{
    assert_int_equal(a->n, b->n);
    assert_int_equal(a->finish, b->finish);
    assert_int_equal(a->text_len, b->text_len);
    assert_memory_equal(a->text, b->text, a->text_len);
    for (int i = 0; i < a->n; i++) {
        assert_int_equal(a->tokens[i], b->tokens[i]);
        same_float(a->logprobs[i], b->logprobs[i], tol);
        for (int k = 0; k < 4; k++) {
            assert_int_equal(a->top[i][k], b->top[i][k]);
            same_float(a->top_lp[i][k], b->top_lp[i][k], tol);
        }
    }
}

int near_tie_check(const struct result *a, int from, const struct result *b, float gap, char *why,
                   size_t why_len)
{
    /* the schedules' noise: how far apart the logprobs of the same top tokens came out where the
     * two agreed (printed, with each tie's gaps, so that a GPU run measures what `gap` covers) */
    float noise = 0;
    for (int i = from; i < a->n && i - from < b->n; i++) {
        const int j = i - from;
        if (a->tokens[i] != b->tokens[j]) {
            /* the schedules part ways: only at a near tie -- each one's token the other's
             * runner-up, with both top-2 gaps within `gap` nats (what the FP8 noise can flip) */
            float da = a->top_lp[i][0] - a->top_lp[i][1], db = b->top_lp[j][0] - b->top_lp[j][1];
            printf("near-tie check at token %d: %d vs %d, top-2 gaps %.4f / %.4f nats (bound "
                   "%.3f), schedule noise before it %.2e nats\n",
                   i, a->tokens[i], b->tokens[j], da, db, gap, noise);
            if (a->top[i][1] != b->tokens[j] || b->top[j][1] != a->tokens[i]) {
                snprintf(why, why_len,
                         "token %d differs (%d vs %d) and is not the other's runner-up (%d, %d)", i,
                         a->tokens[i], b->tokens[j], a->top[i][1], b->top[j][1]);
                return -2;
            }
            if (!(da <= gap && db <= gap)) {
                snprintf(why, why_len,
                         "token %d differs (%d vs %d) though its top-2 log-probs are %.3f / %.3f "
                         "apart (bound %.3f)",
                         i, a->tokens[i], b->tokens[j], da, db, gap);
                return -2;
            }
            return i;
        }
        for (int k = 0; k < 4; k++)
            if (a->top[i][k] == b->top[j][k] && fabsf(a->top_lp[i][k] - b->top_lp[j][k]) > noise)
                noise = fabsf(a->top_lp[i][k] - b->top_lp[j][k]);
    }
    if (a->n - from != b->n) {
        snprintf(why, why_len, "%d tokens against %d", a->n - from, b->n);
        return -2;
    }
    if (noise > 0) printf("schedules agree; logprob noise %.2e nats\n", noise);
    return -1;
}

int near_tie_divergence(const struct result *a, int from, const struct result *b, float gap)
{
    char why[256];
    int i = near_tie_check(a, from, b, gap, why, sizeof why);
    if (i == -2) fail_msg("%s", why);
    return i;
}

struct gated {
    struct kiln_backend base;
    struct kiln_backend *inner;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool closed, held;
};

static enum kiln_status gated_forward(struct kiln_backend *b, const struct kiln_batch *batch,
                                      struct kiln_error *err)
{
    struct gated *g = b->impl;
    pthread_mutex_lock(&g->mu);
    g->held = g->closed;
    pthread_cond_broadcast(&g->cond);
    while (g->closed) pthread_cond_wait(&g->cond, &g->mu);
    g->held = false;
    pthread_mutex_unlock(&g->mu);
    return g->inner->ops->forward(g->inner, batch, err);
}

static enum kiln_status gated_read_logits(struct kiln_backend *b, float *dst,
                                          struct kiln_error *err)
{
    struct gated *g = b->impl;
    return g->inner->ops->read_logits(g->inner, dst, err);
}

static enum kiln_status gated_sample(struct kiln_backend *b, const struct kiln_sampling *p, int n,
                                     struct kiln_sample_out *out, struct kiln_error *err)
{
    struct gated *g = b->impl;
    return g->inner->ops->sample(g->inner, p, n, out, err);
}

static void gated_free(struct kiln_backend *b)
{
    struct gated *g = b->impl;
    kiln_backend_free(g->inner);
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cond);
    free(g);
}

static const struct kiln_backend_ops gated_ops = {
    .name = "gated",
    .forward = gated_forward,
    .read_logits = gated_read_logits,
    .sample = gated_sample,
    .free = gated_free,
};

struct kiln_backend *gate_wrap(struct kiln_backend *inner)
{
    struct gated *g = calloc(1, sizeof *g);
    assert_non_null(g);
    g->inner = inner;
    g->base = *inner;
    g->base.ops = &gated_ops;
    g->base.impl = g;
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cond, NULL);
    return &g->base;
}

void gate_set(struct kiln_backend *gated, bool closed)
{
    struct gated *g = gated->impl;
    pthread_mutex_lock(&g->mu);
    g->closed = closed;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->mu);
}

void gate_wait_held(struct kiln_backend *gated)
{
    struct gated *g = gated->impl;
    pthread_mutex_lock(&g->mu);
    while (!g->held) pthread_cond_wait(&g->cond, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

void submit_together(struct kiln_engine *e, struct kiln_backend *gated,
                     const struct kiln_request *reqs, int n, struct result *res,
                     const int32_t *blocker_prompt, int blocker_len)
{
    struct kiln_request blocker;
    kiln_request_defaults(&blocker);
    blocker.prompt = blocker_prompt;
    blocker.n_prompt = blocker_len;
    blocker.max_tokens = 1;
    gate_set(gated, true);
    submit(e, blocker, &res[n]);
    gate_wait_held(gated);
    for (int i = 0; i < n; i++) submit(e, reqs[i], &res[i]);
    gate_set(gated, false);
}
