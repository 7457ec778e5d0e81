/* The engine's stop conditions and request parameters with exact expected outputs: the mock
 * backend plays a script (mock_backend.h), so each test knows every token the request will
 * produce, and the Llama 3.1 tokenizer turns them into text. Covered, at every boundary:
 * stop strings (inside, across and at the end of tokens, earliest wins, under min_tokens),
 * text held back as a possible stop string and released when the request ends by
 * max_tokens, eos or a stop id, eos and stop ids banned exactly until min_tokens, max_tokens,
 * skip_special_tokens, a UTF-8 character cut by max_tokens; the engine's parameter checks at
 * both ends of every range; and each sampling parameter's effect, token for token, against an
 * independent replay of the request on the mock's logits (sampler.h: penalties counted over
 * the prompt and the output, logit_bias, the seed and step of every draw).
 *
 * Needs the llama3_1 tokenizer package (scripts/fetch-tokenizers) under $KILN_TOKENIZERS. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/numeric.h"
#include "engine_helpers.h"
#include "mock_backend.h"
#include "runtime/engine.h"
#include "runtime/sampler.h"
#include "tokenizer/tk_util.h"

#define MAX_OUT 64
#define EOT     128009 /* <|eot_id|>, one of Llama 3.1's eos ids */

static struct kiln_tokenizer *tok;

/* ---- the script: prompt [KEY] -> the tokens in play[] ---- */

#define KEY 1000
static int32_t play[MAX_OUT];
static int n_play;

static int32_t next_in_play(const int32_t *ctx, int n, void *arg)
{
    (void)arg;
    int g = n - 1; /* the prompt is one token */
    return ctx[0] == KEY && g < n_play ? play[g] : -1;
}

/* The id of a piece of text that is exactly one token. */
static int32_t tok1(const char *text)
{
    int32_t *ids;
    size_t n;
    struct kiln_error err;
    assert_int_equal(kiln_tokenizer_encode(tok, text, strlen(text), false, &ids, &n, &err),
                     KILN_OK);
    if (n != 1) fail_msg("'%s' is %zu tokens, not one", text, n);
    int32_t id = ids[0];
    free(ids);
    return id;
}

static void set_play(const char *const *pieces, int n)
{
    for (int i = 0; i < n; i++) play[i] = tok1(pieces[i]);
    n_play = n;
}

/* ---- one request at a time, every event kept ---- */

struct out {
    int32_t tokens[MAX_OUT];
    int n;
    char text[1024];
    size_t text_len;
    size_t delta[MAX_OUT + 1]; /* text bytes of each event */
    int n_events;
    enum kiln_finish finish;
    int32_t stop_token;
    char stop_reason[64];
    int completion_tokens;
};

struct rig {
    struct mock_backend *m;
    struct kiln_engine *e;
};

static struct rig rig_new(struct kiln_tokenizer *t, int vocab)
{
    struct rig r;
    r.m = mock_create(vocab, 64, 4, 2, 32, 128, NULL, 0);
    assert_non_null(r.m);
    r.m->script = next_in_play;
    struct kiln_engine_options o = {0};
    struct kiln_error err;
    if (kiln_engine_create(&r.m->base, t, &o, &r.e, &err)) fail_msg("%s", err.msg);
    return r;
}

static void rig_free(struct rig r)
{
    struct kiln_engine_stats st;
    kiln_engine_stats(r.e, &st);
    assert_int_equal(st.kv_blocks_used, 0);
    kiln_engine_free(r.e);
    kiln_backend_free(&r.m->base);
}

static void run(struct rig r, struct kiln_request q, struct out *o)
{
    memset(o, 0, sizeof *o);
    uint64_t id;
    struct kiln_error err;
    if (kiln_engine_submit(r.e, &q, &id, &err)) fail_msg("submit: %s", err.msg);
    for (;;) {
        struct kiln_event ev;
        if (!kiln_engine_wait(r.e, &ev, 1, 60.0)) fail_msg("no event within 60 s");
        assert_int_equal(ev.id, id);
        assert_true(o->n_events < MAX_OUT + 1);
        o->delta[o->n_events++] = ev.text_len;
        if (ev.text) {
            assert_true(o->text_len + ev.text_len < sizeof o->text);
            memcpy(o->text + o->text_len, ev.text, ev.text_len);
            o->text_len += ev.text_len;
        }
        if (ev.token >= 0) o->tokens[o->n++] = ev.token;
        enum kiln_finish f = ev.finish;
        if (f) {
            o->finish = f;
            o->stop_token = ev.stop_token;
            if (ev.stop_reason)
                snprintf(o->stop_reason, sizeof o->stop_reason, "%s", ev.stop_reason);
            o->completion_tokens = ev.completion_tokens;
        }
        kiln_event_release(&ev);
        if (f) break;
    }
    o->text[o->text_len] = 0;
}

static const int32_t key_prompt[1] = {KEY};

static struct kiln_request text_req(int max_tokens)
{
    struct kiln_request q;
    kiln_request_defaults(&q);
    q.prompt = key_prompt;
    q.n_prompt = 1;
    q.max_tokens = max_tokens;
    q.temperature = 0;
    q.detokenize = true;
    return q;
}

static void expect(const struct out *o, const char *text, enum kiln_finish finish, int n)
{
    if (strcmp(o->text, text))
        fail_msg("text '%s', expected '%s' (finish %d, %d tokens)", o->text, text, o->finish, o->n);
    assert_int_equal(o->finish, finish);
    assert_int_equal(o->n, n);
    assert_int_equal(o->completion_tokens, n);
}

/* ---- stop strings and held-back text ---- */

/* "abSTOx" against the stop string "STOP": "S", "ST", "STO" are held back until "x" shows they
 * are not one; whatever ends the request (max_tokens, eos, a stop id) releases them. */
static void held_back_released_at_every_end(void **state)
{
    (void)state;
    struct rig r = rig_new(tok, kiln_tokenizer_vocab_size(tok));
    static const char *const pieces[] = {"ab", "S", "T", "O", "x", "yz"};
    static const char *const prefix[] = {"", "ab", "abS", "abST", "abSTO", "abSTOx", "abSTOxyz"};
    const char *stops[] = {"STOP"};
    set_play(pieces, 6);
    struct out o;
    for (int m = 1; m <= 6; m++) {
        struct kiln_request q = text_req(m);
        q.stop = stops;
        q.n_stop = 1;
        run(r, q, &o);
        expect(&o, prefix[m], KILN_FINISH_LENGTH, m);
        assert_int_equal(o.stop_token, -1);
        assert_int_equal(o.n_events, m);
        /* what each event emits: "S", "T", "O" wait for "x" (or the end) */
        static const size_t deltas[] = {2, 0, 0, 0, 4, 2};
        for (int k = 0; k < m - 1; k++) assert_int_equal(o.delta[k], deltas[k]);
    }
    int32_t stop_id = tok1("yz");
    for (int at = 1; at <= 5; at++) {
        /* eos as token number at + 1: the text of the first `at` pieces, all of it */
        set_play(pieces, 6);
        play[at] = EOT;
        struct kiln_request q = text_req(20);
        q.stop = stops;
        q.n_stop = 1;
        run(r, q, &o);
        expect(&o, prefix[at], KILN_FINISH_STOP, at + 1);
        assert_int_equal(o.stop_token, EOT);
        assert_string_equal(o.stop_reason, "");
        /* the same with a stop id, and with eos ignored */
        play[at] = stop_id;
        q.stop_ids = &stop_id;
        q.n_stop_ids = 1;
        q.ignore_eos = true;
        run(r, q, &o);
        expect(&o, prefix[at], KILN_FINISH_STOP, at + 1);
        assert_int_equal(o.stop_token, stop_id);
    }
    /* ignore_eos: eos is an ordinary token (its text is special, skipped) */
    set_play(pieces, 6);
    play[1] = EOT;
    struct kiln_request q = text_req(3);
    q.ignore_eos = true;
    run(r, q, &o);
    expect(&o, "abT", KILN_FINISH_LENGTH, 3);
    rig_free(r);
}

static void stop_string_positions(void **state)
{
    (void)state;
    struct rig r = rig_new(tok, kiln_tokenizer_vocab_size(tok));
    struct out o;
    /* completed by the last token allowed: a stop, not a length */
    static const char *const spell[] = {"ab", "S", "T", "O", "P", "x"};
    set_play(spell, 6);
    const char *stop_word[] = {"STOP"};
    struct kiln_request q = text_req(5);
    q.stop = stop_word;
    q.n_stop = 1;
    run(r, q, &o);
    expect(&o, "ab", KILN_FINISH_STOP, 5);
    assert_string_equal(o.stop_reason, "STOP");
    assert_int_equal(o.stop_token, -1);
    q.max_tokens = 4;
    run(r, q, &o);
    expect(&o, "abSTO", KILN_FINISH_LENGTH, 4);

    /* inside one token, in the first token, across two tokens; the earliest match wins, ties
     * go to the first listed */
    static const char *const words[] = {" hello", " world", " again"};
    set_play(words, 3);
    const char *inside[] = {"wor"};
    const char *first[] = {"ell"};
    const char *across[] = {"o w"};
    const char *earliest[] = {"again", "ld", "world", "o"};
    const char *tie[] = {" wo", " w"};
    const char *const *cases[] = {inside, first, across, earliest, tie};
    const int n_cases[] = {1, 1, 1, 4, 2};
    const char *want[] = {" hello ", " h", " hell", " hell", " hello"};
    const char *reason[] = {"wor", "ell", "o w", "o", " wo"};
    const int tokens[] = {2, 1, 2, 1, 2};
    for (int c = 0; c < 5; c++) {
        q = text_req(3);
        q.stop = cases[c];
        q.n_stop = n_cases[c];
        run(r, q, &o);
        expect(&o, want[c], KILN_FINISH_STOP, tokens[c]);
        assert_string_equal(o.stop_reason, reason[c]);
    }
    /* a stop string that never completes costs nothing */
    const char *never[] = {" again and"};
    q = text_req(3);
    q.stop = never;
    q.n_stop = 1;
    run(r, q, &o);
    expect(&o, " hello world again", KILN_FINISH_LENGTH, 3);
    rig_free(r);
}

/* Until min_tokens tokens exist stop strings do not match and eos / stop ids are banned; from
 * the min_tokens-th token on they do. */
static void min_tokens_boundary(void **state)
{
    (void)state;
    struct rig r = rig_new(tok, kiln_tokenizer_vocab_size(tok));
    struct out o;
    static const char *const pieces[] = {"a", "b", "P", "c", "d"};
    set_play(pieces, 5);
    const char *p[] = {"P"};
    const char *pc[] = {"Pc"};
    for (int min = 0; min <= 5; min++) {
        struct kiln_request q = text_req(5);
        q.min_tokens = min;
        q.stop = p;
        q.n_stop = 1;
        run(r, q, &o); /* "P" is token 3 */
        if (min <= 3)
            expect(&o, "ab", KILN_FINISH_STOP, 3);
        else
            expect(&o, "abPcd", KILN_FINISH_LENGTH, 5);
        /* "Pc" ends at token 4: it matches once token 4 is checked, though it began before */
        q.stop = pc;
        run(r, q, &o);
        if (min <= 4)
            expect(&o, "ab", KILN_FINISH_STOP, 4);
        else
            expect(&o, "abPcd", KILN_FINISH_LENGTH, 5);
    }
    /* eos scripted as token 3: banned while fewer than min_tokens tokens exist */
    int32_t stop_id = tok1("yz");
    for (int min = 0; min <= 4; min++) {
        for (int use_id = 0; use_id < 2; use_id++) {
            set_play(pieces, 5);
            play[2] = use_id ? stop_id : EOT;
            struct kiln_request q = text_req(5);
            q.min_tokens = min;
            if (use_id) {
                q.stop_ids = &stop_id;
                q.n_stop_ids = 1;
            }
            run(r, q, &o);
            if (min <= 2) {
                expect(&o, "ab", KILN_FINISH_STOP, 3);
                assert_int_equal(o.stop_token, play[2]);
            } else {
                /* the ban gives the mock's best other token; the script goes on after it */
                assert_int_equal(o.finish, KILN_FINISH_LENGTH);
                assert_int_equal(o.n, 5);
                assert_true(o.tokens[2] != EOT && o.tokens[2] != stop_id);
                assert_int_equal(o.tokens[3], play[3]);
            }
        }
    }
    rig_free(r);
}

/* Special tokens' text follows skip_special_tokens; a UTF-8 character cut by max_tokens comes
 * out as U+FFFD, and a whole one can be a stop string. */
static void text_details(void **state)
{
    (void)state;
    struct rig r = rig_new(tok, kiln_tokenizer_vocab_size(tok));
    struct out o;
    static const char *const pieces[] = {"a", "b"};
    set_play(pieces, 2);
    play[2] = play[1];
    play[1] = kiln_tokenizer_token_id(tok, "<|start_header_id|>");
    assert_true(play[1] > 0);
    n_play = 3;
    struct kiln_request q = text_req(3);
    run(r, q, &o);
    expect(&o, "ab", KILN_FINISH_LENGTH, 3);
    q.skip_special_tokens = false;
    run(r, q, &o);
    expect(&o, "a<|start_header_id|>b", KILN_FINISH_LENGTH, 3);

    /* "é" is the bytes C3 A9: two byte tokens ("Ã" and "©" in the vocabulary's spelling) */
    play[0] = kiln_tokenizer_token_id(tok, "\xc3\x83");
    play[1] = kiln_tokenizer_token_id(tok, "\xc2\xa9");
    play[2] = tok1("x");
    assert_true(play[0] >= 0 && play[1] >= 0);
    q = text_req(1);
    run(r, q, &o);
    expect(&o, "\xef\xbf\xbd", KILN_FINISH_LENGTH, 1);
    q.max_tokens = 3;
    run(r, q, &o);
    expect(&o, "\xc3\xa9x", KILN_FINISH_LENGTH, 3);
    assert_int_equal(o.delta[0], 0); /* half a character is never emitted */
    /* the replacement character that ends a cut output can complete a stop string */
    const char *replacement[] = {"\xef\xbf\xbd"};
    q = text_req(1);
    q.stop = replacement;
    q.n_stop = 1;
    run(r, q, &o);
    expect(&o, "", KILN_FINISH_STOP, 1);
    assert_string_equal(o.stop_reason, "\xef\xbf\xbd");
    q.max_tokens = 3;
    const char *e_acute[] = {"\xc3\xa9"};
    q.stop = e_acute;
    q.n_stop = 1;
    run(r, q, &o);
    expect(&o, "", KILN_FINISH_STOP, 2);
    rig_free(r);
}

/* ---- parameters: the engine's checks, and their exact effect ---- */

#define VOCAB 64
static const int32_t prompt[6] = {5, 9, 9, 17, 33, 5};

static void accepted(struct rig r, struct kiln_request q)
{
    struct out o;
    run(r, q, &o);
    assert_true(o.finish == KILN_FINISH_LENGTH || o.finish == KILN_FINISH_STOP);
    assert_true(o.n >= 1);
}

static void refused(struct rig r, struct kiln_request q, const char *what)
{
    uint64_t id;
    struct kiln_error err = {0};
    enum kiln_submit_error why;
    if (!kiln_engine_submit_ex(r.e, &q, &id, &why, &err)) fail_msg("%s: accepted", what);
    assert_int_equal(why, KILN_SUBMIT_INVALID);
    if (!strstr(err.msg, what)) fail_msg("'%s' does not name %s", err.msg, what);
}

static struct kiln_request plain(void)
{
    struct kiln_request q;
    kiln_request_defaults(&q);
    q.prompt = prompt;
    q.n_prompt = 6;
    q.max_tokens = 2;
    q.ignore_eos = true;
    q.has_seed = true;
    return q;
}

/* Both ends of every range the engine checks: the end accepted, just past it refused. */
static void engine_ranges(void **state)
{
    (void)state;
    struct rig r = rig_new(NULL, VOCAB);
    struct kiln_request q;
    const float eps = 1e-4f;
#define EDGE(field, lo, hi, name)                                                                  \
    do {                                                                                           \
        q = plain();                                                                               \
        q.field = lo;                                                                              \
        accepted(r, q);                                                                            \
        q.field = hi;                                                                              \
        accepted(r, q);                                                                            \
        q.field = (lo)-eps;                                                                        \
        refused(r, q, name);                                                                       \
        q.field = (hi) + eps;                                                                      \
        refused(r, q, name);                                                                       \
        q.field = NAN;                                                                             \
        refused(r, q, name);                                                                       \
    } while (0)
    EDGE(presence_penalty, -2.0f, 2.0f, "presence_penalty");
    EDGE(frequency_penalty, -2.0f, 2.0f, "frequency_penalty");
    EDGE(min_p, 0.0f, 1.0f, "min_p");
#undef EDGE
    /* top_p in (0, 1], temperature >= 0 and finite, repetition_penalty > 0 and finite */
    q = plain();
    q.top_p = eps;
    accepted(r, q);
    q.top_p = 1;
    accepted(r, q);
    q.top_p = 0;
    refused(r, q, "top_p");
    q.top_p = 1 + eps;
    refused(r, q, "top_p");
    q = plain();
    q.temperature = 0;
    accepted(r, q);
    q.temperature = 1e6f;
    accepted(r, q);
    q.temperature = -eps;
    refused(r, q, "temperature");
    q.temperature = INFINITY;
    refused(r, q, "temperature");
    q = plain();
    q.repetition_penalty = eps;
    accepted(r, q);
    q.repetition_penalty = 0;
    refused(r, q, "repetition_penalty");
    q.repetition_penalty = INFINITY;
    refused(r, q, "repetition_penalty");
    /* integers */
    q = plain();
    q.logprobs = -1;
    accepted(r, q);
    q.logprobs = KILN_MAX_LOGPROBS;
    accepted(r, q);
    q.logprobs = -2;
    refused(r, q, "logprobs");
    q.logprobs = KILN_MAX_LOGPROBS + 1;
    refused(r, q, "logprobs");
    q = plain();
    q.max_tokens = 1;
    accepted(r, q);
    q.max_tokens = 0;
    refused(r, q, "max_tokens");
    q = plain();
    q.min_tokens = 2;
    accepted(r, q);
    q.min_tokens = 3;
    refused(r, q, "min_tokens");
    q.min_tokens = -1;
    refused(r, q, "min_tokens");
    /* ids at both ends of the vocabulary */
    q = plain();
    int32_t ids[2] = {0, VOCAB - 1}, bad_lo = -1, bad_hi = VOCAB;
    float vals[2] = {-100, 100}, inf = INFINITY;
    q.stop_ids = ids;
    q.n_stop_ids = 2;
    q.bias_ids = ids;
    q.bias_vals = vals;
    q.n_bias = 2;
    accepted(r, q);
    q.stop_ids = &bad_lo;
    q.n_stop_ids = 1;
    refused(r, q, "stop token id -1");
    q.stop_ids = &bad_hi;
    refused(r, q, "stop token id 64");
    q.n_stop_ids = 0;
    q.bias_ids = &bad_hi;
    q.n_bias = 1;
    refused(r, q, "logit_bias token 64");
    q.bias_ids = &bad_lo;
    refused(r, q, "logit_bias token -1");
    q.bias_ids = ids;
    q.bias_vals = &inf;
    refused(r, q, "logit_bias for token 0");
    const int32_t out_of_vocab[2] = {3, VOCAB};
    q = plain();
    q.prompt = out_of_vocab;
    q.n_prompt = 2;
    refused(r, q, "prompt token 64");
    rig_free(r);
}

/* The request replayed outside the engine, on the mock's logits and kiln_sample_row: the
 * history of unique ids (prompt first), counts of each in the output, bans until min_tokens,
 * and draw number g of the request's seed for output token g. */
static int replay(const struct kiln_request *q, int32_t *out)
{
    int32_t ctx[128], hist[128], count[128];
    uint8_t in_prompt[128];
    float row[VOCAB], scratch[2 * VOCAB];
    int n = q->n_prompt, n_hist = 0;
    memcpy(ctx, q->prompt, (size_t)n * sizeof *ctx);
    for (int i = 0; i < n; i++) {
        int k = 0;
        while (k < n_hist && hist[k] != ctx[i]) k++;
        if (k == n_hist) {
            hist[n_hist] = ctx[i];
            count[n_hist] = 0;
            in_prompt[n_hist++] = 1;
        }
    }
    int g = 0;
    for (; g < q->max_tokens; g++) {
        mock_logits(ctx, n + g, VOCAB, row);
        struct kiln_sampling p = {
            .temperature = q->temperature,
            .top_k = q->top_k,
            .top_p = q->top_p,
            .min_p = q->min_p,
            .seed = q->seed,
            .step = (uint64_t)g,
            .presence_penalty = q->presence_penalty,
            .frequency_penalty = q->frequency_penalty,
            .repetition_penalty = q->repetition_penalty,
            .hist_ids = hist,
            .hist_out_count = count,
            .hist_in_prompt = in_prompt,
            .n_hist = n_hist,
            .bias_ids = q->bias_ids,
            .bias_vals = q->bias_vals,
            .n_bias = q->n_bias,
        };
        if (g < q->min_tokens) {
            p.banned_ids = q->stop_ids;
            p.n_banned = q->n_stop_ids;
        }
        struct kiln_sample_out so;
        kiln_sample_row(row, VOCAB, &p, scratch, &so);
        out[g] = ctx[n + g] = so.token;
        int k = 0;
        while (k < n_hist && hist[k] != so.token) k++;
        if (k == n_hist) {
            hist[n_hist] = so.token;
            count[n_hist] = 0;
            in_prompt[n_hist++] = 0;
        }
        count[k]++;
        bool stop = false;
        for (int s = 0; s < q->n_stop_ids; s++) stop |= so.token == q->stop_ids[s];
        if (stop) return g + 1;
    }
    return g;
}

static void same_as_replay(struct rig r, struct kiln_request q, struct out *o)
{
    int32_t want[MAX_OUT];
    int n = replay(&q, want);
    run(r, q, o);
    assert_int_equal(o->n, n);
    for (int i = 0; i < n; i++)
        if (o->tokens[i] != want[i])
            fail_msg("token %d: engine %d, replay %d", i, o->tokens[i], want[i]);
}

static bool same_tokens(const struct out *a, const struct out *b)
{
    return a->n == b->n && !memcmp(a->tokens, b->tokens, (size_t)a->n * sizeof *a->tokens);
}

/* Cancelling one request ends that one only; the other runs to its end. */
static void cancel_one_of_two(void **state)
{
    (void)state;
    struct mock_backend *m = mock_create(VOCAB, 64, 4, 2, 32, 128, NULL, 0);
    assert_non_null(m);
    struct kiln_backend *gated = gate_wrap(&m->base);
    struct kiln_engine_options opt = {0};
    struct kiln_engine *e;
    struct kiln_error err;
    if (kiln_engine_create(gated, NULL, &opt, &e, &err)) fail_msg("%s", err.msg);
    struct kiln_request q = plain();
    q.max_tokens = 20;
    struct result a, b;
    gate_set(gated, true);
    uint64_t ia = submit(e, q, &a);
    gate_wait_held(gated); /* a is in its first forward */
    submit(e, q, &b);
    kiln_engine_cancel(e, ia);
    gate_set(gated, false);
    collect(e, 2);
    assert_int_equal(a.finish, KILN_FINISH_CANCELLED);
    assert_int_equal(b.finish, KILN_FINISH_LENGTH);
    assert_int_equal(b.n, 20);
    kiln_engine_free(e);
    kiln_backend_free(gated);
}

static void sampling_exact(void **state)
{
    (void)state;
    struct rig r = rig_new(NULL, VOCAB);
    struct out a, b, g;
    struct kiln_request q = plain();
    q.max_tokens = 40;
    q.temperature = 0;
    q.seed = 1;
    same_as_replay(r, q, &g);
    /* greedy ignores the seed; top_k = 1 at any temperature is greedy */
    q.seed = 2;
    run(r, q, &a);
    assert_true(same_tokens(&a, &g));
    q.temperature = 1.5f;
    q.top_k = 1;
    run(r, q, &a);
    assert_true(same_tokens(&a, &g));
    /* a seed reproduces its draws; another seed draws others */
    q.top_k = 0;
    q.temperature = 1.0f;
    same_as_replay(r, q, &a);
    run(r, q, &b);
    assert_true(same_tokens(&a, &b));
    q.seed = 3;
    same_as_replay(r, q, &b);
    assert_false(same_tokens(&a, &b));
    assert_false(same_tokens(&a, &g));
    /* without a seed, two runs differ */
    q.has_seed = false;
    run(r, q, &a);
    run(r, q, &b);
    assert_false(same_tokens(&a, &b));

    /* every filter and penalty, greedy and sampled: the engine draws what the replay draws */
    struct kiln_request k[8];
    for (int i = 0; i < 8; i++) {
        k[i] = plain();
        k[i].max_tokens = 40;
        k[i].seed = 10 + (uint64_t)i;
        k[i].temperature = i % 2 ? 0.9f : 0;
    }
    k[0].presence_penalty = 2;
    k[1].presence_penalty = -1.5f;
    k[2].frequency_penalty = 0.8f;
    k[3].frequency_penalty = 2;
    k[3].presence_penalty = 0.5f;
    k[4].repetition_penalty = 1.8f;
    k[5].repetition_penalty = 0.6f;
    k[5].top_k = 8;
    k[5].top_p = 0.7f;
    k[6].frequency_penalty = -0.5f;
    k[6].repetition_penalty = 1.3f;
    int32_t bias_ids[3] = {7, 8, 40};
    float bias_vals[3] = {3.5f, -100, 2};
    k[7].bias_ids = bias_ids;
    k[7].bias_vals = bias_vals;
    k[7].n_bias = 3;
    k[7].min_p = 0.2f;
    k[7].presence_penalty = 1;
    for (int i = 0; i < 8; i++) {
        same_as_replay(r, k[i], &a);
        if (i < 4 || i == 6) assert_false(same_tokens(&a, &g)); /* the penalty did something */
    }
    /* a bias of +100 forces its token, -100 bans the greedy one */
    q = plain();
    q.max_tokens = 20;
    q.temperature = 0;
    int32_t forced = 12;
    float plus = 100;
    q.bias_ids = &forced;
    q.bias_vals = &plus;
    q.n_bias = 1;
    run(r, q, &a);
    for (int i = 0; i < a.n; i++) assert_int_equal(a.tokens[i], forced);
    float minus = -100;
    q.bias_ids = &g.tokens[0];
    q.bias_vals = &minus;
    same_as_replay(r, q, &a);
    for (int i = 0; i < a.n; i++) assert_int_not_equal(a.tokens[i], g.tokens[0]);
    /* stop ids end it and are banned until min_tokens */
    q = plain();
    q.max_tokens = 40;
    q.temperature = 0;
    int32_t stop_ids[2] = {g.tokens[3], g.tokens[5]};
    q.stop_ids = stop_ids;
    q.n_stop_ids = 2;
    same_as_replay(r, q, &a);
    assert_int_equal(a.finish, KILN_FINISH_STOP);
    q.min_tokens = 10;
    same_as_replay(r, q, &b);
    assert_true(b.n >= 10);
    rig_free(r);
}

static int load_tokenizer(void **state)
{
    (void)state;
    tok = tk_test_load("llama3_1");
    return 0;
}

static int free_tokenizer(void **state)
{
    (void)state;
    kiln_tokenizer_free(tok);
    return 0;
}

int main(void)
{
    kiln_numeric_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(held_back_released_at_every_end),
        cmocka_unit_test(stop_string_positions),
        cmocka_unit_test(min_tokens_boundary),
        cmocka_unit_test(text_details),
        cmocka_unit_test(engine_ranges),
        cmocka_unit_test(cancel_one_of_two),
        cmocka_unit_test(sampling_exact),
    };
    return cmocka_run_group_tests(tests, load_tokenizer, free_tokenizer);
}
