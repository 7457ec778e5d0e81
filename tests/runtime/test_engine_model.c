/* The engine on a real backend and model (the tiny checkpoint of the tiny_model fixture, with
 * its Llama 3 tokenizer): greedy outputs do not depend on batching, chunked prefill,
 * preemption or prefix reuse; seeds draw the same alone or batched; stop strings cut the text;
 * cancel frees the KV; the context limit message; structured output (the grammar holds at
 * temperature 1, ends the request when complete, forced tokens give the same output as drawn
 * ones, preemption keeps the matcher right, a grammar too slow a token ends its request).
 *
 * usage: test_engine_model MODEL_DIR [cpu|cuda]
 * Results of different schedules must agree bitwise. On the CPU the math does not depend on the
 * batch. On CUDA the backend runs batch-invariant (opt.batch_invariant: one GEMM path, and one
 * cuBLASLt algorithm per weight shape, for every step size), which makes each row's sums the
 * same whatever else is in the step; only a preempted request, whose recomputed positions run
 * through the prefill attention kernel instead of the decode one, may part from its other
 * schedule, and then only at a near tie (near_tie_divergence), after which the comparison goes on
 * teacher-forced. Exits 77 (skipped) for cuda
 * when no GPU is visible. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine_helpers.h"
#include "grammar/grammar.h"
#include "model/model.h"
#include "runtime/engine.h"

static const char *model_dir;
static bool cuda;

/* Results of two schedules: bitwise (with preemption on the GPU, see near_tie_divergence and
 * alone_then_together). */
static bool preempting;
static void same_across_schedules(const struct result *a, const struct result *b)
{
    assert_same(a, b, 0.0f); /* bitwise */
}
/* The largest top-2 gap, in nats, at which a preempted request on the GPU may take the other of
 * the two tokens (near_tie_divergence): ~4x the schedules' logprob noise measured on an H100
 * (2.6e-2 nats at most over the four prompts, bench/RESULTS.md "GPU tolerances"); a flip needs
 * a gap no larger than the noise. */
#define NEAR_TIE_GAP 0.1f
static struct kiln_model *model;
static struct kiln_tokenizer *tok;

#define NP 4
static int32_t *prompts[NP];
static int prompt_len[NP];
static const char *prompt_text[NP] = {
    "The capital of France is",
    "Once upon a time, in a kingdom by the sea, there lived a",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n"
    "        return n\n    return",
    "Paged attention splits the key-value cache into fixed-size blocks, so sequences of "
    "different lengths share one pool without fragmentation; a block table maps each "
    "sequence's positions to blocks. Prefix caching then lets",
};

struct setup {
    int n_blocks, block_size, max_batch, max_tokens, max_seq_len;
    bool prefix_caching;
    double max_mask_ms;
};

static struct setup defaults(void)
{
    return (struct setup){.n_blocks = 64,
                          .block_size = 16,
                          .max_batch = 4,
                          .max_tokens = 128,
                          .max_seq_len = 128,
                          .prefix_caching = true};
}

struct rig {
    struct kiln_backend *be; /* the backend behind a gate (engine_helpers.h) */
    struct kiln_engine *e;
};

static struct rig rig_new(struct setup s)
{
    struct kiln_backend_options o;
    kiln_backend_options_default(&o);
    o.kv_dtype = KILN_DTYPE_BF16;
    o.block_size = s.block_size;
    o.n_blocks = s.n_blocks;
    o.max_tokens = s.max_tokens;
    o.max_seqs = s.max_batch;
    o.max_seq_len = s.max_seq_len;
    o.batch_invariant = true;
    struct kiln_error err;
    struct rig r = {0};
    enum kiln_status st = cuda ? kiln_backend_cuda_create(model, &o, &r.be, &err)
                               : kiln_backend_cpu_create(model, &o, &r.be, &err);
    if (st) fail_msg("backend: %s", err.msg);
    r.be = gate_wrap(r.be);
    struct kiln_engine_options eo = {.prefix_caching = s.prefix_caching,
                                     .max_mask_ms = s.max_mask_ms};
    if (kiln_engine_create(r.be, tok, &eo, &r.e, &err)) fail_msg("engine: %s", err.msg);
    return r;
}

static void rig_free(struct rig r)
{
    struct kiln_engine_stats st;
    kiln_engine_stats(r.e, &st);
    assert_int_equal(st.kv_blocks_used, 0);
    assert_int_equal(st.running + st.waiting, 0);
    kiln_engine_free(r.e);
    kiln_backend_free(r.be);
}

static struct kiln_request greedy(int p, int max_tokens)
{
    struct kiln_request r;
    kiln_request_defaults(&r);
    r.prompt = prompts[p];
    r.n_prompt = prompt_len[p];
    r.max_tokens = max_tokens;
    r.temperature = 0;
    r.ignore_eos = true;
    r.logprobs = 4;
    r.detokenize = true;
    return r;
}

/* The NP prompts all at once on `together`, prompt p replaced by `forced` when n_forced > 0
 * (b: NP + 1 results). */
static void run_together(struct setup together, struct kiln_request base, int p,
                         const int32_t *forced, int n_forced, int max_tokens, struct result *b,
                         struct kiln_engine_stats *st)
{
    struct rig r = rig_new(together);
    struct kiln_request reqs[NP];
    for (int q = 0; q < NP; q++) {
        reqs[q] = base;
        reqs[q].prompt = prompts[q];
        reqs[q].n_prompt = prompt_len[q];
        reqs[q].seed = 77 + (uint64_t)q;
    }
    if (n_forced) {
        reqs[p].prompt = forced;
        reqs[p].n_prompt = n_forced;
        reqs[p].max_tokens = max_tokens;
    }
    static const int32_t blocker[2] = {128000, 128006};
    submit_together(r.e, r.be, reqs, NP, b, blocker, 2);
    collect(r.e, NP + 1);
    if (st) kiln_engine_stats(r.e, st);
    rig_free(r);
}

/* a (alone) and b (together, preempted, on the GPU) may part at a near tie; from there b's
 * schedule runs again with a's tokens up to the tie appended to prompt p (teacher-forced), and
 * the comparison goes on until the rest of a is matched. */
static void same_or_near_tie(struct setup together, struct kiln_request base, int p,
                             const struct result *a, const struct result *b)
{
    static struct result cur[NP + 1];
    static int32_t forced[512];
    cur[p] = *b;
    for (int from = 0;;) {
        int i = near_tie_divergence(a, from, &cur[p], NEAR_TIE_GAP);
        if (i < 0 || i + 1 >= a->n) return;
        assert_true(prompt_len[p] + i + 1 <= (int)(sizeof forced / sizeof forced[0]));
        memcpy(forced, prompts[p], (size_t)prompt_len[p] * sizeof forced[0]);
        memcpy(forced + prompt_len[p], a->tokens, (size_t)(i + 1) * sizeof forced[0]);
        run_together(together, base, p, forced, prompt_len[p] + i + 1, a->n - i - 1, cur, NULL);
        from = i + 1;
    }
}

/* The NP prompts one at a time, then all at once on another setup (b: NP + 1 results). */
static void alone_then_together(struct setup alone, struct setup together, struct kiln_request base,
                                struct result *a, struct result *b, struct kiln_engine_stats *st)
{
    struct rig r = rig_new(alone);
    for (int p = 0; p < NP; p++) {
        struct kiln_request q = base;
        q.prompt = prompts[p];
        q.n_prompt = prompt_len[p];
        q.seed = 77 + (uint64_t)p;
        submit(r.e, q, &a[p]);
        collect(r.e, 1);
    }
    rig_free(r);
    run_together(together, base, 0, NULL, 0, 0, b, st);
    for (int p = 0; p < NP; p++)
        if (cuda && preempting)
            same_or_near_tie(together, base, p, &a[p], &b[p]);
        else
            same_across_schedules(&a[p], &b[p]);
}

static void batched_chunked_preempted(void **state)
{
    (void)state;
    struct result a[NP], b[NP + 1];
    struct kiln_engine_stats st;
    struct setup s = defaults();
    alone_then_together(s, s, greedy(0, 6), a, b, &st);
    for (int p = 0; p < NP; p++) {
        assert_int_equal(a[p].n, 6);
        assert_int_equal(a[p].finish, KILN_FINISH_LENGTH);
        assert_true(a[p].has_text);
    }
    struct setup chunked = s;
    chunked.max_tokens = 16; /* the 41-token prompt takes 3 steps beside the others' decodes */
    alone_then_together(s, chunked, greedy(0, 6), a, b, &st);
    struct setup tight = s;
    tight.block_size = 4;
    tight.n_blocks = 16; /* 64 positions: the longest request alone needs 12 blocks */
    preempting = true;
    alone_then_together(s, tight, greedy(0, 6), a, b, &st);
    preempting = false;
    print_message("prompts of %d, %d, %d, %d tokens; %llu preemptions in a pool of 64 positions\n",
                  prompt_len[0], prompt_len[1], prompt_len[2], prompt_len[3],
                  (unsigned long long)st.preemptions);
    assert_true(st.preemptions > 0);
}

static void seeds_alone_or_batched(void **state)
{
    (void)state;
    struct result a[NP], b[NP + 1];
    struct kiln_engine_stats st;
    struct kiln_request q = greedy(0, 6);
    q.temperature = 0.8f;
    q.top_p = 0.95f;
    q.top_k = 40;
    q.has_seed = true;
    alone_then_together(defaults(), defaults(), q, a, b, &st);
}

static void prefix_reuse(void **state)
{
    (void)state;
    struct setup s = defaults();
    s.prefix_caching = true;
    struct rig r = rig_new(s);
    struct result x, y;
    struct kiln_request q = greedy(3, 4);
    q.logprobs = KILN_MAX_LOGPROBS;
    submit(r.e, q, &x);
    collect(r.e, 1);
    submit(r.e, q, &y);
    collect(r.e, 1);
    assert_int_equal(x.cached_tokens, 0);
    assert_int_equal(y.cached_tokens, (prompt_len[3] - 1) / 16 * 16);
    assert_true(y.cached_tokens > 0);
    same_across_schedules(&x, &y);
    struct kiln_engine_stats st;
    kiln_engine_stats(r.e, &st);
    assert_int_equal(st.prefix_hits_tokens, (uint64_t)y.cached_tokens);
    rig_free(r);
}

static void stop_strings_and_text(void **state)
{
    (void)state;
    struct rig r = rig_new(defaults());
    struct result full, cut;
    submit(r.e, greedy(1, 12), &full);
    collect(r.e, 1);
    /* The streamed deltas add up to the one-shot decode of the tokens. */
    char *text;
    size_t len;
    struct kiln_error err;
    assert_int_equal(
        kiln_tokenizer_decode(tok, full.tokens, (size_t)full.n, true, &text, &len, &err), KILN_OK);
    assert_int_equal(len, full.text_len);
    assert_memory_equal(text, full.text, len);
    free(text);

    /* A stop string taken from the middle of the output: the text ends right before its first
     * occurrence and the stop string is not emitted. It occurs once in the output, so that
     * under min_tokens (below) the output's end cannot match it. */
    assert_true(full.text_len >= 8);
    char stop[16] = {0};
    for (size_t at = full.text_len / 2; !stop[0] && at < full.text_len; at++) {
        if ((full.text[at] & 0xc0) == 0x80) continue; /* whole UTF-8 characters */
        for (size_t n = 1; n < sizeof stop && at + n <= full.text_len; n++) {
            if (at + n < full.text_len && (full.text[at + n] & 0xc0) == 0x80) continue;
            memcpy(stop, full.text + at, n);
            stop[n] = 0;
            const char *one = strstr(full.text, stop);
            if (one == full.text + at && !strstr(one + 1, stop)) break;
            stop[0] = 0;
        }
    }
    assert_true(stop[0] != 0);
    const char *stops[] = {"\x01never", stop};
    struct kiln_request q = greedy(1, 12);
    q.stop = stops;
    q.n_stop = 2;
    submit(r.e, q, &cut);
    collect(r.e, 1);
    size_t first = (size_t)(strstr(full.text, stop) - full.text);
    assert_int_equal(cut.finish, KILN_FINISH_STOP);
    assert_string_equal(cut.stop_reason, stop);
    assert_int_equal(cut.text_len, first);
    assert_memory_equal(cut.text, full.text, first);
    assert_int_equal(cut.stop_token, -1);
    assert_true(cut.n <= full.n);

    /* Under min_tokens stop strings do not end the output. */
    q.min_tokens = 12;
    submit(r.e, q, &cut);
    collect(r.e, 1);
    assert_int_equal(cut.finish, KILN_FINISH_LENGTH);
    assert_same(&full, &cut, 0.0f);

    /* A stop token id ends it at its first occurrence, its text not emitted. */
    int32_t stop_id = full.tokens[5];
    int k = 0;
    while (full.tokens[k] != stop_id) k++;
    q = greedy(1, 12);
    q.stop_ids = &stop_id;
    q.n_stop_ids = 1;
    submit(r.e, q, &cut);
    collect(r.e, 1);
    assert_int_equal(cut.n, k + 1);
    assert_int_equal(cut.stop_token, stop_id);
    assert_int_equal(cut.finish, KILN_FINISH_STOP);
    assert_int_equal(kiln_tokenizer_decode(tok, full.tokens, (size_t)k, true, &text, &len, &err),
                     KILN_OK);
    assert_true(cut.text_len == len && !memcmp(cut.text, text, len));
    free(text);
    rig_free(r);
}

static void cancel_and_limits(void **state)
{
    (void)state;
    struct rig r = rig_new(defaults());
    struct result x;
    struct kiln_request q = greedy(0, 100);
    uint64_t id = submit(r.e, q, &x);
    struct kiln_engine_stats st;
    do {
        usleep(1000);
        kiln_engine_stats(r.e, &st);
    } while (st.running == 0);
    kiln_engine_cancel(r.e, id);
    collect(r.e, 1);
    assert_int_equal(x.finish, KILN_FINISH_CANCELLED);
    assert_true(x.n < 100);

    q.max_tokens = 128 - prompt_len[0] + 1;
    uint64_t bad;
    struct kiln_error err;
    enum kiln_submit_error why;
    assert_int_equal(kiln_engine_submit_ex(r.e, &q, &bad, &why, &err), KILN_ERR_LIMIT);
    assert_int_equal(why, KILN_SUBMIT_CONTEXT_LENGTH);
    char want[200];
    snprintf(want, sizeof want,
             "this model's maximum context length is 128 tokens; the prompt has %d tokens and "
             "max_tokens is %d",
             prompt_len[0], q.max_tokens);
    assert_string_equal(err.msg, want);
    rig_free(r);
}

/* ---- structured output ---- */

static struct kiln_grammar_vocab *gvocab;

static struct kiln_grammar *compile(enum kiln_constraint_kind kind, const char *text)
{
    struct kiln_constraint_spec spec = {.kind = kind, .text = text, .len = strlen(text)};
    struct kiln_grammar *g;
    struct kiln_error err;
    if (!gvocab && kiln_grammar_vocab_create(tok, &gvocab, &err)) fail_msg("vocab: %s", err.msg);
    if (kiln_grammar_compile(&spec, gvocab, &g, &err)) fail_msg("compile %s: %s", text, err.msg);
    return g;
}

static struct kiln_request sampled(int p, int max_tokens, struct kiln_grammar *g, uint64_t seed)
{
    struct kiln_request q = greedy(p, max_tokens);
    q.temperature = 1.0f;
    q.has_seed = true;
    q.seed = seed;
    q.ignore_eos = false;
    q.logprobs = -1;
    q.grammar = g;
    return q;
}

/* A constrained request for the tests that compare two schedules of it. On the CPU it draws at
 * temperature 1 (the schedules agree bitwise). On CUDA a forced chunk or a recompute after
 * preemption runs the prefill attention kernel where the other schedule ran the decode one, and
 * a draw at temperature 1 over the thousands of tokens a string allows on the random model flips
 * at that noise (about 2 x noise x allowed tokens per draw: a draw at token 1 flipped on the
 * H100, 2026-12-07), far more often than a greedy choice, which flips only at a near tie: so on
 * CUDA these comparisons are greedy. */
static struct kiln_request compared(int p, int max_tokens, struct kiln_grammar *g, uint64_t seed)
{
    struct kiln_request q = sampled(p, max_tokens, g, seed);
    if (cuda) q.temperature = 0.0f;
    return q;
}

/* Choices and regexes at temperature 1: every output is one of them / matches, ends with
 * finish "stop" when complete (without drawing an eos: nothing else could follow), also under
 * ignore_eos. */
static void constrained_choice_and_regex(void **state)
{
    (void)state;
    struct rig r = rig_new(defaults());
    static const char *const words[] = {"alpha", "beta", "gamma delta", "\"q\""};
    struct kiln_grammar *choice =
        compile(KILN_CONSTRAINT_CHOICE, "[\"alpha\",\"beta\",\"gamma delta\",\"\\\"q\\\"\"]");
    struct kiln_grammar *re = compile(KILN_CONSTRAINT_REGEX, "[a-c]{2,4}-[0-9]{1,2}");
    int seen = 0;
    for (uint64_t seed = 0; seed < 8; seed++) {
        struct result x;
        struct kiln_request q = sampled((int)seed % NP, 40, choice, seed);
        q.ignore_eos = seed % 2;
        submit(r.e, q, &x);
        collect(r.e, 1);
        assert_int_equal(x.finish, KILN_FINISH_STOP);
        assert_int_equal(x.stop_token, -1);
        int k = 0;
        while (k < 4 && strcmp(x.text, words[k])) k++;
        if (k == 4) fail_msg("output '%s' is none of the choices", x.text);
        seen |= 1 << k;

        q = sampled((int)seed % NP, 40, re, seed);
        submit(r.e, q, &x);
        collect(r.e, 1);
        assert_true(x.text_len >= 4 && x.text_len <= 7);
        const char *dash = strchr(x.text, '-');
        assert_non_null(dash);
        assert_int_equal(strspn(x.text, "abc"), (size_t)(dash - x.text));
        assert_true(dash - x.text >= 2 && dash - x.text <= 4);
        assert_int_equal(strspn(dash + 1, "0123456789"), strlen(dash + 1));
        assert_true(strlen(dash + 1) >= 1 && strlen(dash + 1) <= 2);
        /* the regex can go on after one digit: the end is a drawn eos or the second digit */
        assert_int_equal(x.finish, KILN_FINISH_STOP);
    }
    assert_true(__builtin_popcount((unsigned)seen) >= 2); /* temperature 1 varies the choice */
    kiln_grammar_unref(choice);
    kiln_grammar_unref(re);
    rig_free(r);
}

/* Without logprobs the tokens the grammar forces are appended without a draw; with logprobs
 * every token is drawn. The outputs are the same token for token, and a JSON Schema with long
 * fixed keys forces some. */
static void forced_tokens_exact(void **state)
{
    (void)state;
    struct rig r = rig_new(defaults());
    struct kiln_grammar *g = compile(
        KILN_CONSTRAINT_JSON_SCHEMA,
        "{\"type\":\"object\",\"properties\":{\"a_rather_long_property_name\":{\"type\":"
        "\"integer\",\"minimum\":0,\"maximum\":9},\"another_long_property_name\":{\"enum\":["
        "\"first value\",\"second value\"]},\"s\":{\"type\":\"string\",\"maxLength\":6}},"
        "\"required\":[\"a_rather_long_property_name\",\"another_long_property_name\",\"s\"],"
        "\"additionalProperties\":false}");
    for (uint64_t seed = 0; seed < 4; seed++) {
        struct result fast, drawn;
        struct kiln_engine_stats before, after;
        kiln_engine_stats(r.e, &before);
        submit(r.e, compared(2, 100, g, seed), &fast);
        collect(r.e, 1);
        kiln_engine_stats(r.e, &after);
        assert_true(after.grammar_forced > before.grammar_forced);
        struct kiln_request q = compared(2, 100, g, seed);
        q.logprobs = 0;
        submit(r.e, q, &drawn);
        collect(r.e, 1);
        uint64_t forced = after.grammar_forced - before.grammar_forced;
        kiln_engine_stats(r.e, &before);
        assert_int_equal(before.grammar_forced, after.grammar_forced);
        assert_int_equal(fast.n, drawn.n);
        assert_memory_equal(fast.tokens, drawn.tokens, (size_t)fast.n * sizeof *fast.tokens);
        assert_int_equal(fast.finish, KILN_FINISH_STOP);
        assert_int_equal(drawn.finish, KILN_FINISH_STOP);
        assert_string_equal(fast.text, drawn.text);
        assert_true(!strncmp(fast.text, "{\"a_rather_long_property_name\":", 31));
        assert_true(fast.text[fast.text_len - 1] == '}');
        print_message("seed %llu: %s (%d tokens, %llu forced)\n", (unsigned long long)seed,
                      fast.text, fast.n, (unsigned long long)forced);
    }
    struct kiln_engine_stats st;
    kiln_engine_stats(r.e, &st);
    assert_true(st.grammar_masks > 0 && st.grammar_s > 0);
    kiln_grammar_unref(g);
    rig_free(r);
}

/* Constrained requests batched in a KV pool too small for them (preemption, recompute) give
 * what they give alone: the matcher's state is kept across the recompute. */
static void constrained_preempted(void **state)
{
    (void)state;
    struct kiln_grammar *g =
        compile(KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"array\",\"items\":{\"type\":\"string\","
                                             "\"maxLength\":3},\"minItems\":2,\"maxItems\":4}");
    struct result a[NP], b[NP + 1];
    struct kiln_engine_stats st;
    struct setup s = defaults(), tight = defaults();
    tight.block_size = 4;
    tight.n_blocks = 24;
    struct kiln_request base = compared(0, 30, g, 0);
    preempting = true;
    alone_then_together(s, tight, base, a, b, &st);
    preempting = false;
    print_message("%llu preemptions\n", (unsigned long long)st.preemptions);
    assert_true(st.preemptions > 0);
    for (int p = 0; p < NP; p++) {
        assert_int_equal(a[p].finish, KILN_FINISH_STOP);
        assert_true(a[p].text[0] == '[' && a[p].text[a[p].text_len - 1] == ']');
    }
    kiln_grammar_unref(g);
}

/* --max-mask-ms: with a limit no mask can meet, a constrained request ends with an error after
 * KILN_SLOW_MASKS tokens, and an unconstrained one beside it is untouched; with the default
 * limit the same request completes. */
static void mask_time_limit(void **state)
{
    (void)state;
    struct kiln_grammar *g = compile(KILN_CONSTRAINT_REGEX, "[a-z]{60}");
    struct setup s = defaults();
    s.max_mask_ms = 1e-9;
    struct rig r = rig_new(s);
    struct result slow, plain;
    submit(r.e, sampled(1, 80, g, 1), &slow);
    submit(r.e, greedy(0, 20), &plain);
    collect(r.e, 2);
    assert_int_equal(slow.finish, KILN_FINISH_ERROR);
    assert_int_equal(slow.n, KILN_SLOW_MASKS - 1);
    assert_non_null(strstr(slow.error, "the output constraint is too costly: 8 token masks in a "
                                       "row took over 1e-09 ms each (--max-mask-ms)"));
    assert_int_equal(plain.finish, KILN_FINISH_LENGTH);
    assert_int_equal(plain.n, 20);
    rig_free(r);

    r = rig_new(defaults());
    submit(r.e, sampled(1, 80, g, 1), &slow);
    collect(r.e, 1);
    assert_int_equal(slow.finish, KILN_FINISH_STOP);
    assert_int_equal(slow.text_len, 60);
    rig_free(r);
    kiln_grammar_unref(g);
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: test_engine_model MODEL_DIR [cpu|cuda]\n");
        return 2;
    }
    model_dir = argv[1];
    cuda = argc == 3 && !strcmp(argv[2], "cuda");
    if (cuda && !kiln_cuda_available()) {
        printf("no GPU visible: skipped\n");
        return 77;
    }
    kiln_numeric_init();
    struct kiln_error err;
    if (kiln_model_load(model_dir, &model, &err) || kiln_tokenizer_load(model_dir, &tok, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    for (int p = 0; p < NP; p++) {
        size_t n;
        if (kiln_tokenizer_encode(tok, prompt_text[p], strlen(prompt_text[p]), true, &prompts[p],
                                  &n, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        prompt_len[p] = (int)n;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(batched_chunked_preempted),
        cmocka_unit_test(seeds_alone_or_batched),
        cmocka_unit_test(prefix_reuse),
        cmocka_unit_test(stop_strings_and_text),
        cmocka_unit_test(cancel_and_limits),
        cmocka_unit_test(constrained_choice_and_regex),
        cmocka_unit_test(forced_tokens_exact),
        cmocka_unit_test(constrained_preempted),
        cmocka_unit_test(mask_time_limit),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    if (gvocab) kiln_grammar_vocab_free(gvocab);
    for (int p = 0; p < NP; p++) free(prompts[p]);
    kiln_tokenizer_free(tok);
    kiln_model_free(model);
    return rc;
}
