/* The sampler, step by step (sampler.h): exact tokens for constructed logits, the draw's
 * inverse CDF against u computed here from the documented formula, and every filter's boundary. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>

#include "runtime/sampler.h"

#define V 8

static struct kiln_sampling params(void)
{
    return (struct kiln_sampling){.temperature = 1.0f, .top_p = 1.0f, .repetition_penalty = 1.0f};
}

static float scratch[2 * 200000];

static struct kiln_sample_out sample(const float *logits, int vocab, const struct kiln_sampling *p)
{
    struct kiln_sample_out out;
    kiln_sample_row(logits, vocab, p, scratch, &out);
    assert_true(out.token >= 0 && out.token < vocab);
    return out;
}

static double u_of(uint64_t seed, uint64_t step)
{
    return (double)(kiln_sample_rng(seed, step) >> 40) * 0x1p-24;
}

/* The token the documented step 8 picks from kept probabilities q (unnormalized is fine). */
static int expected_draw(const double *q, int n, double u)
{
    double total = 0, acc = 0;
    int last = -1;
    for (int i = 0; i < n; i++)
        if (q[i] > 0) {
            total += q[i];
            last = i;
        }
    for (int i = 0; i < n; i++) {
        if (q[i] <= 0) continue;
        acc += q[i];
        if (acc > u * total) return i;
    }
    return last;
}

/* Every seed in [0, n_seeds) draws what step 8 picks from the kept probabilities q. */
static void expect_draws(const float *x, int vocab, struct kiln_sampling p, const double *q,
                         uint64_t n_seeds)
{
    for (uint64_t s = 0; s < n_seeds; s++) {
        p.seed = s;
        assert_int_equal(sample(x, vocab, &p).token, expected_draw(q, vocab, u_of(s, p.step)));
    }
}

static void rng_is_splitmix(void **state)
{
    (void)state;
    /* splitmix64's first output from state 0 (Vigna's reference implementation). */
    assert_true(kiln_splitmix64(0) == 0xe220a8397b1dcdafull);
    assert_true(kiln_sample_rng(42, 7) == kiln_splitmix64(42 ^ kiln_splitmix64(7)));
    assert_true(kiln_sample_rng(1, 0) != kiln_sample_rng(2, 0));
    assert_true(kiln_sample_rng(1, 0) != kiln_sample_rng(1, 1));
}

static void greedy_argmax_ties_smaller_id(void **state)
{
    (void)state;
    float x[V] = {0, 3, 1, 3, -2, 0, 2, 3};
    struct kiln_sampling p = params();
    p.temperature = 0;
    for (uint64_t seed = 0; seed < 20; seed++) {
        p.seed = seed;
        assert_int_equal(sample(x, V, &p).token, 1);
    }
    p.temperature = 0.9e-5f; /* below KILN_GREEDY_TEMPERATURE: still greedy */
    assert_int_equal(sample(x, V, &p).token, 1);
}

static void logprobs_raw_and_top(void **state)
{
    (void)state;
    float x[4] = {logf(0.1f), logf(0.2f), logf(0.3f), logf(0.4f)};
    struct kiln_sampling p = params();
    p.temperature = 0;
    p.n_logprobs = 3;
    struct kiln_sample_out o = sample(x, 4, &p);
    assert_int_equal(o.token, 3);
    assert_float_equal(o.logprob, logf(0.4f), 1e-6);
    assert_int_equal(o.n_top, 3);
    assert_int_equal(o.top_ids[0], 3);
    assert_int_equal(o.top_ids[1], 2);
    assert_int_equal(o.top_ids[2], 1);
    assert_float_equal(o.top_logprobs[1], logf(0.3f), 1e-6);
    assert_float_equal(o.top_logprobs[2], logf(0.2f), 1e-6);

    /* Ties: smaller id first; more alternatives asked than ids: all of them. */
    float y[3] = {1, 1, 0};
    p.n_logprobs = 2;
    o = sample(y, 3, &p);
    assert_int_equal(o.top_ids[0], 0);
    assert_int_equal(o.top_ids[1], 1);
    p.n_logprobs = KILN_MAX_LOGPROBS;
    o = sample(y, 3, &p);
    assert_int_equal(o.n_top, 3);
    assert_int_equal(o.top_ids[2], 2);
    p.n_logprobs = 0;
    o = sample(y, 3, &p);
    assert_int_equal(o.n_top, 0);

    /* The reported logprob is the raw model's, not the penalized/biased one. */
    float z[3] = {0, 1, 2};
    int32_t bid = 0;
    float bval = 10;
    p.bias_ids = &bid;
    p.bias_vals = &bval;
    p.n_bias = 1;
    o = sample(z, 3, &p);
    assert_int_equal(o.token, 0);
    double lse = log(exp(0.0) + exp(1.0) + exp(2.0));
    assert_float_equal(o.logprob, -lse, 1e-5);
}

/* Greedy parameters with a one-entry token history. */
static struct kiln_sampling greedy_with_history(const int32_t *ids, const int32_t *count,
                                                const uint8_t *in_prompt)
{
    struct kiln_sampling p = params();
    p.temperature = 0;
    p.hist_ids = ids;
    p.hist_out_count = count;
    p.hist_in_prompt = in_prompt;
    p.n_hist = 1;
    return p;
}

static void repetition_penalty(void **state)
{
    (void)state;
    float x[3] = {3, 2, 1};
    int32_t ids[1] = {0};
    int32_t count[1] = {0};
    uint8_t in_prompt[1] = {1};
    struct kiln_sampling p = greedy_with_history(ids, count, in_prompt);
    p.repetition_penalty = 2; /* 3 / 2 = 1.5 < 2 */
    assert_int_equal(sample(x, 3, &p).token, 1);
    in_prompt[0] = 0; /* neither in the prompt nor generated: untouched */
    assert_int_equal(sample(x, 3, &p).token, 0);
    count[0] = 1; /* generated once */
    assert_int_equal(sample(x, 3, &p).token, 1);
    p.repetition_penalty = 1.4f; /* 3 / 1.4 = 2.14 > 2 */
    assert_int_equal(sample(x, 3, &p).token, 0);

    /* Negative logits are multiplied: -1 * 2 = -2 < -1.5. */
    float y[2] = {-1, -1.5f};
    p.repetition_penalty = 2;
    assert_int_equal(sample(y, 2, &p).token, 1);
    p.repetition_penalty = 1.4f; /* -1.4 > -1.5 */
    assert_int_equal(sample(y, 2, &p).token, 0);
}

static void frequency_and_presence(void **state)
{
    (void)state;
    float x[2] = {3, 2.5f};
    int32_t ids[1] = {0};
    int32_t count[1] = {2};
    uint8_t in_prompt[1] = {1};
    struct kiln_sampling p = greedy_with_history(ids, count, in_prompt);
    p.frequency_penalty = 0.3f; /* 3 - 0.6 = 2.4 */
    assert_int_equal(sample(x, 2, &p).token, 1);
    count[0] = 1; /* 3 - 0.3 = 2.7 */
    assert_int_equal(sample(x, 2, &p).token, 0);
    p.frequency_penalty = 0;
    p.presence_penalty = 0.6f; /* 2.4 */
    assert_int_equal(sample(x, 2, &p).token, 1);
    count[0] = 0; /* only in the prompt: presence does not apply */
    assert_int_equal(sample(x, 2, &p).token, 0);
    /* Negative penalties reward. */
    count[0] = 1;
    p.presence_penalty = -1;
    float y[2] = {2.5f, 3};
    assert_int_equal(sample(y, 2, &p).token, 0);
}

static void bias_and_banned(void **state)
{
    (void)state;
    float x[3] = {1, 2, 3};
    int32_t bias_ids[3] = {99, -1, 0};
    float bias_vals[3] = {100, 100, 5};
    struct kiln_sampling p = params();
    p.temperature = 0;
    p.bias_ids = bias_ids;
    p.bias_vals = bias_vals;
    p.n_bias = 3; /* out-of-range ids are ignored */
    assert_int_equal(sample(x, 3, &p).token, 0);
    int32_t banned[3] = {0, 77, -5};
    p.banned_ids = banned;
    p.n_banned = 3;
    assert_int_equal(sample(x, 3, &p).token, 2);
    banned[1] = 2;
    assert_int_equal(sample(x, 3, &p).token, 1);
    /* Banned ids are never drawn at any temperature. */
    p.temperature = 5;
    for (uint64_t s = 0; s < 300; s++) {
        p.seed = s;
        assert_int_equal(sample(x, 3, &p).token, 1);
    }
    /* Everything banned: still a valid id, no crash. */
    banned[2] = 1;
    sample(x, 3, &p);
    p.temperature = 0;
    sample(x, 3, &p);
}

/* The draw is the inverse CDF of u over ids in ascending order. */
static void draw_inverse_cdf(void **state)
{
    (void)state;
    float x[3] = {logf(0.25f), logf(0.25f), logf(0.5f)};
    double q[3] = {0.25, 0.25, 0.5};
    struct kiln_sampling p = params();
    int seen[3] = {0};
    for (uint64_t s = 0; s < 2000; s++) {
        p.seed = s * 7919;
        p.step = s % 5;
        int want = expected_draw(q, 3, u_of(p.seed, p.step));
        int got = sample(x, 3, &p).token;
        assert_int_equal(got, want);
        seen[got]++;
    }
    for (int i = 0; i < 3; i++) assert_true(seen[i] > 300);
    assert_true(seen[2] > seen[0] && seen[2] > seen[1]);

    /* Temperature 2 on log-probabilities draws from sqrt(p), renormalized. */
    p.temperature = 2;
    p.step = 3;
    double r[3] = {sqrt(0.25), sqrt(0.25), sqrt(0.5)};
    expect_draws(x, 3, p, r, 2000);
}

static void determinism(void **state)
{
    (void)state;
    float x[V];
    for (int i = 0; i < V; i++) x[i] = 0.1f * (float)i;
    struct kiln_sampling p = params();
    p.top_p = 0.9f;
    p.seed = 1234;
    int first[50];
    for (int s = 0; s < 50; s++) {
        p.step = (uint64_t)s;
        first[s] = sample(x, V, &p).token;
    }
    int distinct = 0, mask = 0;
    for (int s = 0; s < 50; s++) {
        p.step = (uint64_t)s;
        assert_int_equal(sample(x, V, &p).token, first[s]);
        if (!(mask & (1 << first[s]))) distinct++;
        mask |= 1 << first[s];
    }
    assert_true(distinct >= 4); /* the step changes the draw */
}

static void top_k(void **state)
{
    (void)state;
    /* top_k 2 keeps x >= the 2nd largest value, so the tie at 1 keeps three ids. */
    float x[5] = {2, 1, 1, 0, -1};
    double e2 = exp(2.0), e1 = exp(1.0);
    double q[5] = {e2, e1, e1, 0, 0};
    struct kiln_sampling p = params();
    p.top_k = 2;
    int seen[5] = {0};
    for (uint64_t s = 0; s < 3000; s++) {
        p.seed = s;
        int got = sample(x, 5, &p).token;
        assert_int_equal(got, expected_draw(q, 5, u_of(s, 0)));
        seen[got]++;
    }
    assert_true(seen[1] > 0 && seen[2] > 0);
    assert_int_equal(seen[3] + seen[4], 0);
    p.top_k = 1;
    for (uint64_t s = 0; s < 300; s++) {
        p.seed = s;
        assert_int_equal(sample(x, 5, &p).token, 0);
    }
    /* top_k >= vocab is off. */
    p.top_k = 5;
    double all[5] = {e2, e1, e1, 1, exp(-1.0)};
    expect_draws(x, 5, p, all, 1000);
}

/* top_k on many equal values (the quickselect's three-way partition) at a large vocab. */
static void top_k_large_flat(void **state)
{
    (void)state;
    enum { N = 150000 };
    float *x = malloc(N * sizeof *x);
    assert_non_null(x);
    for (int i = 0; i < N; i++) x[i] = (float)(i % 3);
    struct kiln_sampling p = params();
    p.top_k = 10; /* the 10th largest is 2: keeps all 50000 twos */
    for (uint64_t s = 0; s < 20; s++) {
        p.seed = s;
        int got = sample(x, N, &p).token;
        assert_int_equal(got % 3, 2);
        assert_int_equal(got, 3 * (int)(u_of(s, 0) * 50000) + 2);
    }
    free(x);
}

/* The probabilities 1/2, 1/4, 1/8, 1/8 under each top_p / min_p boundary. */
static void top_p_and_min_p(void **state)
{
    (void)state;
    float x[4] = {logf(0.5f), logf(0.25f), logf(0.125f), logf(0.125f)};
    double q01[4] = {0.5, 0.25, 0, 0}, q_all[4] = {0.5, 0.25, 0.125, 0.125};
    double q0[4] = {0.5, 0, 0, 0};
    struct kiln_sampling p = params();
    struct {
        float top_p, min_p;
        const double *kept;
    } cases[] = {
        {0.4999f, 0, q0},  {0.5001f, 0, q01},     {0.7499f, 0, q01},    {0.7501f, 0, q_all},
        {0.99f, 0, q_all}, {1, 0.2f, q_all},      {1, 0.26f, q01},      {1, 0.49f, q01},
        {1, 0.51f, q0},    {0.7501f, 0.26f, q01}, {0.5001f, 0.2f, q01}, {0.5f, 0, q0},
        {0.75f, 0, q01}, /* exactly at a prefix sum (these p are exact): that prefix is enough */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        p.top_p = cases[c].top_p;
        p.min_p = cases[c].min_p;
        expect_draws(x, 4, p, cases[c].kept, 1000);
    }
    /* Filters compose. top_k 3 keeps both tied 0.125s (x >= the 3rd largest). */
    p.top_p = 1;
    p.min_p = 0;
    p.top_k = 3;
    expect_draws(x, 4, p, q_all, 1000);
    p.top_k = 2;
    p.top_p = 0.6f; /* after top_k: p = 2/3, 1/3; 2/3 >= 0.6 */
    for (uint64_t s = 0; s < 200; s++) {
        p.seed = s;
        assert_int_equal(sample(x, 4, &p).token, 0);
    }
}

static void nan_logits(void **state)
{
    (void)state;
    float x[4] = {NAN, 1, NAN, 2};
    struct kiln_sampling p = params();
    p.temperature = 0;
    assert_int_equal(sample(x, 4, &p).token, 3);
    p.temperature = 1;
    for (uint64_t s = 0; s < 100; s++) {
        p.seed = s;
        int t = sample(x, 4, &p).token;
        assert_true(t == 1 || t == 3);
    }
}

/* A llama-sized vocabulary with every filter on: valid tokens that respect top_k. */
static void large_vocab(void **state)
{
    (void)state;
    enum { N = 128256 };
    float *x = malloc(N * sizeof *x);
    assert_non_null(x);
    uint64_t r = 99;
    for (int i = 0; i < N; i++) {
        r = kiln_splitmix64(r);
        x[i] = (float)((double)(r >> 11) * 0x1p-53 * 8.0);
    }
    struct kiln_sampling p = params();
    p.temperature = 0.7f;
    p.top_p = 0.95f;
    p.min_p = 0.01f;
    p.n_logprobs = 5;
    for (int k = 0; k <= 50; k += 50) {
        p.top_k = k;
        for (uint64_t s = 0; s < 5; s++) {
            p.seed = s;
            struct kiln_sample_out o = sample(x, N, &p);
            assert_int_equal(o.n_top, 5);
            assert_true(o.top_logprobs[0] >= o.top_logprobs[4]);
            assert_true(o.logprob <= o.top_logprobs[0]);
            if (k) {
                int above = 0;
                for (int i = 0; i < N; i++) above += x[i] > x[o.token];
                assert_true(above < k);
            }
        }
    }
    free(x);
}

/* The allowed-token mask (structured output): masked-out ids are -inf in the processed logits
 * (greedy and drawn alike, the draw renormalized over the allowed ids), the raw logprob and the
 * alternatives are the unmasked model's, and it composes with bans, bias and top_k. */
static void allowed_mask(void **state)
{
    (void)state;
    enum { N = 70 }; /* three mask words, the last one partial */
    float x[N];
    for (int i = 0; i < N; i++) x[i] = (float)(i % 7) * 0.5f;
    x[3] = 9; /* the unmasked argmax */
    x[5] = 2.5f, x[33] = 2.5f, x[40] = 1.0f, x[69] = 1.5f;
    uint32_t mask[3] = {0, 0, 0};
    int allowed[4] = {5, 33, 40, 69};
    for (int j = 0; j < 4; j++) mask[allowed[j] >> 5] |= 1u << (allowed[j] & 31);
    struct kiln_sampling p = params();
    p.temperature = 0;
    p.n_logprobs = 2;
    p.mask = mask;
    struct kiln_sample_out o = sample(x, N, &p);
    /* the first of the tied allowed maxima 5 and 33 */
    assert_int_equal(o.token, 5);
    double lse = 0, e9 = exp(9.0);
    for (int i = 0; i < N; i++) lse += exp((double)x[i]);
    lse = log(lse);
    assert_float_equal(o.logprob, x[5] - lse, 1e-5);
    assert_int_equal(o.top_ids[0], 3); /* alternatives: the raw model's, mask or not */
    assert_float_equal(o.top_logprobs[0], log(e9) - lse, 1e-5);

    /* Drawn: only allowed ids, with probabilities renormalized over them. */
    p.temperature = 1;
    p.n_logprobs = 0;
    double q[N] = {0};
    for (int j = 0; j < 4; j++) q[allowed[j]] = exp((double)x[allowed[j]]);
    expect_draws(x, N, p, q, 2000);

    /* With a ban and a bias: a banned allowed id stays out, a bias cannot bring back a masked
     * one; top_k counts only what the mask left (x >= the k-th largest of the processed x). */
    int32_t banned[1] = {33}, bias_ids[2] = {3, 69};
    float bias_vals[2] = {100, 1.5f}; /* 69: 1.5 + 1.5 = 3, now the largest allowed */
    p.banned_ids = banned;
    p.n_banned = 1;
    p.bias_ids = bias_ids;
    p.bias_vals = bias_vals;
    p.n_bias = 2;
    p.top_k = 2;
    double r[N] = {0};
    r[5] = exp(2.5), r[69] = exp(3.0); /* allowed, not banned: 2.5, 1.0, 3.0; 2nd largest 2.5 */
    expect_draws(x, N, p, r, 2000);
    p.temperature = 0;
    assert_int_equal(sample(x, N, &p).token, 69);

    /* Nothing allowed: a valid id, no crash (the engine never sends such a row). */
    uint32_t none[3] = {0, 0, 0};
    p.mask = none;
    p.n_bias = 0;
    p.n_banned = 0;
    p.top_k = 0;
    sample(x, N, &p);
    p.temperature = 1;
    sample(x, N, &p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rng_is_splitmix),
        cmocka_unit_test(greedy_argmax_ties_smaller_id),
        cmocka_unit_test(logprobs_raw_and_top),
        cmocka_unit_test(repetition_penalty),
        cmocka_unit_test(frequency_and_presence),
        cmocka_unit_test(bias_and_banned),
        cmocka_unit_test(draw_inverse_cdf),
        cmocka_unit_test(determinism),
        cmocka_unit_test(top_k),
        cmocka_unit_test(top_k_large_flat),
        cmocka_unit_test(top_p_and_min_p),
        cmocka_unit_test(nan_logits),
        cmocka_unit_test(large_vocab),
        cmocka_unit_test(allowed_mask),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
