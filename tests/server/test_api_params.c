/* Every request parameter of kiln_api_parse at both ends of its range (the end accepted and
 * stored in its own field, just past it refused with the parameter named), and every default
 * when the parameter is absent or null, for completions and chat. test_api.c covers the
 * shapes of bodies and responses; this file covers the numbers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "server/api.h"

static const struct kiln_api_limits lim = {
    .vocab_size = 1000, .max_n = 4, .max_choices = 8, .max_stop = 4};

#define CMPL KILN_API_COMPLETION
#define CHAT KILN_API_CHAT

/* A body of the kind with `extra` (JSON members, may be "") added. */
static const char *body(enum kiln_api_kind kind, const char *extra)
{
    static char b[1024];
    snprintf(b, sizeof b, "{%s%s%s}",
             kind == CMPL ? "\"prompt\":\"x\""
                          : "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]",
             *extra ? "," : "", extra);
    return b;
}

static struct kiln_api_request ok(enum kiln_api_kind kind, const char *extra)
{
    struct kiln_api_request r;
    struct kiln_api_error err = {0};
    const char *b = body(kind, extra);
    if (kiln_api_parse(kind, b, strlen(b), &lim, &r, &err))
        fail_msg("%s: rejected: %s", b, err.message);
    return r;
}

static void refused(enum kiln_api_kind kind, const char *extra, const char *param)
{
    struct kiln_api_request r;
    struct kiln_api_error err = {0};
    const char *b = body(kind, extra);
    if (!kiln_api_parse(kind, b, strlen(b), &lim, &r, &err)) {
        kiln_api_request_free(&r);
        fail_msg("%s: accepted", b);
    }
    assert_int_equal(err.status, 400);
    if (strcmp(err.param, param)) fail_msg("%s: param '%s', expected '%s'", b, err.param, param);
}

/* What each numeric parameter parses to. */
static double field(const struct kiln_api_request *r, const char *name)
{
    if (!strcmp(name, "max_tokens") || !strcmp(name, "max_completion_tokens")) return r->max_tokens;
    if (!strcmp(name, "min_tokens")) return r->min_tokens;
    if (!strcmp(name, "temperature")) return r->temperature;
    if (!strcmp(name, "top_p")) return r->top_p;
    if (!strcmp(name, "top_k")) return r->top_k;
    if (!strcmp(name, "min_p")) return r->min_p;
    if (!strcmp(name, "n")) return r->n;
    if (!strcmp(name, "presence_penalty")) return r->presence_penalty;
    if (!strcmp(name, "frequency_penalty")) return r->frequency_penalty;
    if (!strcmp(name, "repetition_penalty")) return r->repetition_penalty;
    if (!strcmp(name, "logprobs") || !strcmp(name, "top_logprobs")) return r->logprobs;
    fail_msg("no field %s", name);
    return 0;
}

/* name: its lowest and highest accepted values (as JSON text and as numbers), the closest
 * refused values past each end, and the default. */
struct range {
    enum kiln_api_kind kind;
    const char *name;
    const char *lo, *hi;       /* accepted ends */
    const char *below, *above; /* refused; NULL: no such value */
    double lo_v, hi_v;
    double dflt;
    const char *also; /* extra members needed (chat top_logprobs needs logprobs) */
};

static const struct range ranges[] = {
    {CMPL, "max_tokens", "1", "2147483647", "0", "2147483648", 1, 2147483647, 0, ""},
    {CHAT, "max_tokens", "1", "2147483647", "0", "2147483648", 1, 2147483647, 0, ""},
    {CHAT, "max_completion_tokens", "1", "2147483647", "0", "2147483648", 1, 2147483647, 0, ""},
    {CMPL, "min_tokens", "0", "2147483647", "-1", "2147483648", 0, 2147483647, 0, ""},
    {CMPL, "temperature", "0", "1000000", "-0.0001", "1000000.1", 0, 1e6, 1, ""},
    {CHAT, "temperature", "0", "1000000", "-1e-9", "1000000.1", 0, 1e6, 1, ""},
    {CMPL, "top_p", "1e-6", "1", "0", "1.0001", 1e-6, 1, 1, ""},
    {CHAT, "top_p", "1e-6", "1", "0", "1.0001", 1e-6, 1, 1, ""},
    {CMPL, "top_k", "-1", "2147483647", "-2", "2147483648", -1, 2147483647, 0, ""},
    {CMPL, "min_p", "0", "1", "-0.0001", "1.0001", 0, 1, 0, ""},
    {CMPL, "n", "1", "4", "0", "5", 1, 4, 1, ""},
    {CHAT, "n", "1", "4", "0", "5", 1, 4, 1, ""},
    {CMPL, "presence_penalty", "-2", "2", "-2.0001", "2.0001", -2, 2, 0, ""},
    {CHAT, "presence_penalty", "-2", "2", "-2.0001", "2.0001", -2, 2, 0, ""},
    {CMPL, "frequency_penalty", "-2", "2", "-2.0001", "2.0001", -2, 2, 0, ""},
    {CHAT, "frequency_penalty", "-2", "2", "-2.0001", "2.0001", -2, 2, 0, ""},
    {CMPL, "repetition_penalty", "1e-6", "2", "0", "2.0001", 1e-6, 2, 1, ""},
    {CMPL, "logprobs", "0", "20", "-1", "21", 0, 20, -1, ""},
    {CHAT, "top_logprobs", "0", "20", "-1", "21", 0, 20, -1, "\"logprobs\":true,"},
};

static void numeric_ranges(void **state)
{
    (void)state;
    char extra[256];
    for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++) {
        const struct range *g = &ranges[i];
        struct kiln_api_request r = ok(g->kind, "");
        if (field(&r, g->name) != g->dflt)
            fail_msg("%s: default %g, expected %g", g->name, field(&r, g->name), g->dflt);
        kiln_api_request_free(&r);
        snprintf(extra, sizeof extra, "%s\"%s\":null", g->also, g->name);
        r = ok(g->kind, extra);
        if (strcmp(g->name, "top_logprobs") && field(&r, g->name) != g->dflt)
            fail_msg("%s: null gives %g, expected the default %g", g->name, field(&r, g->name),
                     g->dflt);
        kiln_api_request_free(&r);
        const char *ends[2] = {g->lo, g->hi};
        const double want[2] = {g->lo_v, g->hi_v};
        for (int e = 0; e < 2; e++) {
            snprintf(extra, sizeof extra, "%s\"%s\":%s", g->also, g->name, ends[e]);
            r = ok(g->kind, extra);
            double got = field(&r, g->name);
            if (got != (double)(float)want[e] && got != want[e])
                fail_msg("%s: %s parsed as %.9g", g->name, ends[e], got);
            kiln_api_request_free(&r);
        }
        const char *past[2] = {g->below, g->above};
        for (int e = 0; e < 2; e++) {
            snprintf(extra, sizeof extra, "%s\"%s\":%s", g->also, g->name, past[e]);
            refused(g->kind, extra, g->name);
        }
    }
}

static void other_defaults(void **state)
{
    (void)state;
    for (int kind = CMPL; kind <= CHAT; kind++) {
        struct kiln_api_request r = ok(kind, "");
        assert_false(r.has_seed);
        assert_int_equal(r.n_stop, 0);
        assert_int_equal(r.n_stop_ids, 0);
        assert_int_equal(r.n_bias, 0);
        assert_false(r.stream);
        assert_false(r.include_usage);
        assert_false(r.echo);
        assert_false(r.ignore_eos);
        assert_true(r.skip_special_tokens);
        assert_true(r.add_generation_prompt);
        assert_int_equal(r.add_special_tokens, kind == CMPL); /* chat templates spell BOS */
        kiln_api_request_free(&r);
        /* null is absent */
        r = ok(kind, "\"seed\":null,\"stop\":null,\"stop_token_ids\":null,\"logit_bias\":null,"
                     "\"stream\":null,\"ignore_eos\":null,\"skip_special_tokens\":null,"
                     "\"user\":null,\"model\":null");
        assert_false(r.has_seed);
        assert_int_equal(r.n_stop + r.n_stop_ids + r.n_bias, 0);
        assert_false(r.stream || r.ignore_eos);
        assert_true(r.skip_special_tokens);
        assert_null(r.model);
        kiln_api_request_free(&r);
        /* booleans flip */
        r = ok(kind, "\"ignore_eos\":true,\"skip_special_tokens\":false,"
                     "\"add_special_tokens\":true,\"stream\":true");
        assert_true(r.ignore_eos && r.add_special_tokens && r.stream);
        assert_false(r.skip_special_tokens);
        kiln_api_request_free(&r);
    }
    struct kiln_api_request r = ok(CHAT, "\"add_generation_prompt\":false,\"logprobs\":false,"
                                         "\"add_special_tokens\":false");
    assert_false(r.add_generation_prompt);
    assert_int_equal(r.logprobs, -1);
    kiln_api_request_free(&r);
    r = ok(CMPL, "\"echo\":true,\"add_special_tokens\":false");
    assert_true(r.echo);
    assert_false(r.add_special_tokens);
    kiln_api_request_free(&r);
}

/* seed: any 64-bit integer; stop / stop_token_ids: up to max_stop; logit_bias in [-100, 100]
 * for ids in [0, vocab). */
static void seeds_stops_and_bias(void **state)
{
    (void)state;
    struct kiln_api_request r = ok(CMPL, "\"seed\":0");
    assert_true(r.has_seed);
    assert_true(r.seed == 0);
    kiln_api_request_free(&r);
    r = ok(CMPL, "\"seed\":9223372036854775807");
    assert_true(r.seed == INT64_MAX);
    kiln_api_request_free(&r);
    r = ok(CHAT, "\"seed\":-9223372036854775808");
    assert_true(r.has_seed && r.seed == (uint64_t)INT64_MIN);
    kiln_api_request_free(&r);
    refused(CMPL, "\"seed\":1.5", "seed");

    r = ok(CHAT, "\"stop\":\"END\"");
    assert_int_equal(r.n_stop, 1);
    assert_string_equal(r.stop[0], "END");
    kiln_api_request_free(&r);
    r = ok(CMPL, "\"stop\":[\"a\",\"b\",\"c\",\"d\"],\"stop_token_ids\":[0,1,2,999]");
    assert_int_equal(r.n_stop, 4);
    assert_string_equal(r.stop[3], "d");
    assert_int_equal(r.n_stop_ids, 4);
    assert_int_equal(r.stop_ids[0], 0);
    assert_int_equal(r.stop_ids[3], 999);
    kiln_api_request_free(&r);
    r = ok(CMPL, "\"stop\":[],\"stop_token_ids\":[]");
    assert_int_equal(r.n_stop + r.n_stop_ids, 0);
    kiln_api_request_free(&r);
    refused(CMPL, "\"stop_token_ids\":[0,1,2,3,4]", "stop_token_ids");
    refused(CMPL, "\"stop_token_ids\":[-1]", "stop_token_ids");
    refused(CMPL, "\"stop_token_ids\":[1000]", "stop_token_ids");
    refused(CHAT, "\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]", "stop");
    refused(CMPL, "\"stop\":[\"a\\u0000b\"]", "stop");

    r = ok(CMPL, "\"logit_bias\":{\"0\":-100,\"999\":100,\"5\":0.25}");
    assert_int_equal(r.n_bias, 3);
    for (int i = 0; i < 3; i++) {
        int32_t id = r.bias_ids[i];
        float v = r.bias_vals[i];
        assert_true((id == 0 && v == -100) || (id == 999 && v == 100) || (id == 5 && v == 0.25f));
    }
    kiln_api_request_free(&r);
    refused(CHAT, "\"logit_bias\":{\"1\":-100.001}", "logit_bias");
    refused(CMPL, "\"logit_bias\":{\"1\":100.001}", "logit_bias");
    refused(CMPL, "\"logit_bias\":{\"-1\":1}", "logit_bias");
    refused(CMPL, "\"logit_bias\":{\"1\":\"2\"}", "logit_bias");
    refused(CMPL, "\"logit_bias\":[1]", "logit_bias");

    /* min_tokens up to max_tokens; without max_tokens any min_tokens parses (checked later
     * against the room left in the context) */
    r = ok(CMPL, "\"min_tokens\":7,\"max_tokens\":7");
    assert_int_equal(r.min_tokens, 7);
    kiln_api_request_free(&r);
    refused(CMPL, "\"min_tokens\":8,\"max_tokens\":7", "min_tokens");
    refused(CHAT, "\"min_tokens\":8,\"max_completion_tokens\":7", "min_tokens");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(numeric_ranges),
        cmocka_unit_test(other_defaults),
        cmocka_unit_test(seeds_stops_and_bias),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
