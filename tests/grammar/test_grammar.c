/* Constraint engine: JSON Schema / regex / choice / grammar conformance (valid and invalid
 * instances fed token by token through the matcher with the real Llama 3.1 tokenizer), mask
 * exactness against a brute-force check over the whole vocabulary, rollback, forced tokens,
 * EOS and special tokens, compile errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "grammar/grammar.h"
#include "grammar/internal.h"
#include "tokenizer/tk_util.h"

static struct kiln_tokenizer *tok;
static struct kiln_grammar_vocab *vocab;

static int setup(void **state)
{
    (void)state;
    tok = tk_test_load("llama3_1");
    struct kiln_error err = {0};
    if (kiln_grammar_vocab_create(tok, &vocab, &err)) fail_msg("vocab: %s", err.msg);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    kiln_grammar_vocab_free(vocab);
    kiln_tokenizer_free(tok);
    return 0;
}

static struct kiln_grammar *compile_ws(enum kiln_constraint_kind kind, const char *text,
                                       enum kiln_grammar_ws ws)
{
    struct kiln_constraint_spec spec = {kind, text, strlen(text)};
    struct kiln_grammar_options o = {ws};
    struct kiln_grammar *g = NULL;
    struct kiln_error err = {0};
    if (kiln_grammar_compile_opts(&spec, vocab, &o, &g, &err))
        fail_msg("compile %s: %s", text, err.msg);
    return g;
}

static struct kiln_grammar *compile(enum kiln_constraint_kind kind, const char *text)
{
    return compile_ws(kind, text, KILN_GRAMMAR_WS_COMPACT);
}

static bool mask_has(const uint32_t *mask, int32_t t)
{
    return mask[t >> 5] >> (t & 31) & 1;
}

static void brute_check_matcher(struct kiln_matcher *m, const char *prefix);

/* Feeds text's tokens; true when every token was allowed by the mask and accepted and the
 * result is complete (EOS allowed). The mask and accept must agree at every step; brute: the
 * whole mask too, half way and at the end (long instances, whose matchers' caches fill up). */
static bool feed_check(struct kiln_grammar *g, const char *text, bool brute)
{
    int32_t *ids;
    size_t n;
    struct kiln_error err = {0};
    if (kiln_tokenizer_encode(tok, text, strlen(text), false, &ids, &n, &err))
        fail_msg("encode: %s", err.msg);
    struct kiln_matcher *m;
    assert_int_equal(kiln_matcher_create(g, &m, &err), KILN_OK);
    uint32_t *mask = malloc(((size_t)kiln_grammar_vocab_size(vocab) + 31) / 32 * 4);
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++) {
        kiln_matcher_fill_mask(m, mask);
        bool allowed = mask_has(mask, ids[i]);
        bool acc = kiln_matcher_accept(m, ids[i]);
        assert_int_equal(allowed, acc);
        ok = acc;
        if (ok && brute && (i == n / 2 || i + 1 == n)) brute_check_matcher(m, text);
    }
    if (ok) {
        ok = kiln_matcher_is_complete(m);
        kiln_matcher_fill_mask(m, mask);
        assert_int_equal(mask_has(mask, 128009), ok);
    }
    free(mask);
    free(ids);
    kiln_matcher_free(m);
    return ok;
}

static bool feed(struct kiln_grammar *g, const char *text)
{
    return feed_check(g, text, false);
}

struct cas {
    const char *text;
    bool valid;
};

static void check_cases(enum kiln_constraint_kind kind, const char *spec, const struct cas *c)
{
    struct kiln_grammar *g = compile(kind, spec);
    for (; c->text; c++)
        if (feed(g, c->text) != c->valid)
            fail_msg("%s: instance %s should be %s", spec, c->text,
                     c->valid ? "accepted" : "rejected");
    kiln_grammar_unref(g);
}

static void test_schema_basic(void **state)
{
    (void)state;
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"age\":{"
                "\"type\":\"integer\"}},\"required\":[\"name\"],\"additionalProperties\":false}",
                (struct cas[]){{"{\"name\":\"Bob\",\"age\":42}", true},
                               {"{\"name\":\"Bob\"}", true},
                               {"{\"age\":42}", false},
                               {"{\"name\":\"Bob\",\"age\":4.5}", false},
                               {"{\"name\":\"Bob\",\"x\":1}", false},
                               {"{\"name\": \"Bob\"}", false}, /* compact */
                               {"{\"name\":\"a\\\"b\\u00e9\\n\"}", true},
                               {"{\"name\":\"a\nb\"}", false},
                               {"{\"name\":\"Bob\",\"age\":042}", false},
                               {"{\"name\":\"Bob\",\"age\":-0}", true},
                               {NULL, false}});
}

static void test_schema_types(void **state)
{
    (void)state;
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":[\"string\",\"null\"]}",
                (struct cas[]){{"\"x\"", true}, {"null", true}, {"1", false}, {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"number\"}",
                (struct cas[]){{"1.5e-3", true},
                               {"-0.25", true},
                               {"1.", false},
                               {".5", false},
                               {"01", false},
                               {"1E+5", true},
                               {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA, "{\"enum\":[\"a\",1,null,{\"k\":[true]}]}",
                (struct cas[]){{"\"a\"", true},
                               {"1", true},
                               {"null", true},
                               {"{\"k\":[true]}", true},
                               {"\"b\"", false},
                               {"2", false},
                               {NULL, false}});
    check_cases(
        KILN_CONSTRAINT_JSON_SCHEMA, "{\"enum\":[0.1,2.5e-7,3]}",
        (struct cas[]){{"0.1", true}, {"3", true}, {"3.0", true}, {"0.2", false}, {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA, "{\"const\":\"x\"}",
                (struct cas[]){{"\"x\"", true}, {"\"y\"", false}, {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"string\",\"nullable\":true}",
                (struct cas[]){{"null", true}, {"\"s\"", true}, {"0", false}, {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA, "true",
                (struct cas[]){{"[1,{\"a\":null},\"x\"]", true}, {"[1,]", false}, {NULL, false}});
}

static void test_schema_strings(void **state)
{
    (void)state;
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}",
                (struct cas[]){{"\"ab\"", true},
                               {"\"abc\"", true},
                               {"\"a\"", false},
                               {"\"abcd\"", false},
                               {"\"\xc3\xa9\xc3\xa9\"", true},
                               {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"type\":\"string\",\"pattern\":\"^[a-z]+\\\\d{2}$\"}",
                (struct cas[]){
                    {"\"abc12\"", true}, {"\"abc1\"", false}, {"\"Abc12\"", false}, {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"string\",\"pattern\":\"b+\"}",
                (struct cas[]){{"\"abbc\"", true}, {"\"ac\"", false}, {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"string\",\"format\":\"date-time\"}",
                (struct cas[]){{"\"2024-02-29T12:30:00Z\"", true},
                               {"\"2024-02-29T12:30:00.5+01:00\"", true},
                               {"\"2024-13-01T00:00:00Z\"", false},
                               {"\"2024-01-01\"", false},
                               {NULL, false}});
    /* a format JSON Schema does not define is an annotation: any string */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"string\",\"format\":\"path\"}",
                (struct cas[]){{"\"/a b\"", true}, {"\"\"", true}, {"1", false}, {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"string\",\"format\":\"ipv4\"}",
                (struct cas[]){{"\"192.168.0.1\"", true},
                               {"\"255.255.255.255\"", true},
                               {"\"256.1.1.1\"", false},
                               {"\"01.1.1.1\"", false},
                               {"\"1.1.1\"", false},
                               {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"string\",\"format\":\"date\"}",
                (struct cas[]){{"\"2024-01-31\"", true},
                               {"\"2024-1-31\"", false},
                               {"\"2024-02-29\"", true},
                               {"\"2000-02-29\"", true},
                               {"\"2023-02-29\"", false},
                               {"\"1900-02-29\"", false},
                               {"\"2020-04-31\"", false},
                               {"\"2020-02-31\"", false},
                               {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"string\",\"format\":\"time\"}",
                (struct cas[]){{"\"23:59:59Z\"", true},
                               {"\"24:00:00Z\"", false},
                               {"\"23:59:60Z\"", true},
                               {"\"23:59:60.5+00:00\"", true},
                               {"\"16:18:60Z\"", false},
                               {"\"23:58:60Z\"", false},
                               {"\"23:59:60+01:00\"", false},
                               {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"string\",\"format\":\"uuid\"}",
                (struct cas[]){{"\"123e4567-e89b-12d3-a456-426614174000\"", true},
                               {"\"123e4567e89b12d3a456426614174000\"", false},
                               {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"string\",\"format\":\"email\"}",
                (struct cas[]){{"\"a.b@example.com\"", true},
                               {"\"a@b\"", false},
                               {"\"ab.com\"", false},
                               {NULL, false}});
    check_cases(
        KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"string\",\"format\":\"uri\"}",
        (struct cas[]){{"\"https://x.org/a?b=1\"", true}, {"\"no scheme\"", false}, {NULL, false}});
}

static void test_schema_numbers(void **state)
{
    (void)state;
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"type\":\"integer\",\"minimum\":-5,\"maximum\":120}",
                (struct cas[]){{"-5", true},
                               {"0", true},
                               {"120", true},
                               {"99", true},
                               {"-6", false},
                               {"121", false},
                               {"1000", false},
                               {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"integer\",\"exclusiveMinimum\":0}",
                (struct cas[]){
                    {"1", true}, {"123456789", true}, {"0", false}, {"-1", false}, {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"type\":\"number\",\"minimum\":0,\"exclusiveMaximum\":10}",
                (struct cas[]){{"0", true},
                               {"9.99", true},
                               {"0.5", true},
                               {"10", false},
                               {"10.0", false},
                               {"-0.5", false},
                               {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"type\":\"number\",\"exclusiveMinimum\":-2,\"maximum\":-1}",
                (struct cas[]){{"-1", true},
                               {"-1.5", true},
                               {"-2", false},
                               {"-1.0", true},
                               {"-0.5", false},
                               {"-2.0", false},
                               {NULL, false}});
}

/* whole text accepted and complete (defined below) */
static bool feed_bytes(struct kiln_grammar *g, const char *text);
static void expect_error(enum kiln_constraint_kind kind, const char *text, const char *needle);

/* bounds with fractions on numbers, against the value itself over every number of up to three
 * integer and three fraction digits (a few digits each: 0 1 2 4 5 9), both signs, with and
 * without a fraction; kiln writes no exponent under bounds and no "-0" (both valid JSON, left
 * out: stricter, never looser) */
static void test_schema_number_fractions(void **state)
{
    (void)state;
    static const struct {
        const char *schema;
        bool hlo, lox, hhi, hix;
        double lo, hi;
    } t[] = {
        {"{\"type\":\"number\",\"minimum\":0.5}", true, false, false, false, 0.5, 0},
        {"{\"type\":\"number\",\"exclusiveMinimum\":0.5}", true, true, false, false, 0.5, 0},
        {"{\"type\":\"number\",\"maximum\":1.25}", false, false, true, false, 0, 1.25},
        {"{\"type\":\"number\",\"exclusiveMaximum\":1.25}", false, false, true, true, 0, 1.25},
        {"{\"type\":\"number\",\"minimum\":-1.5,\"maximum\":2.05}", true, false, true, false, -1.5,
         2.05},
        {"{\"type\":\"number\",\"exclusiveMinimum\":-0.25,\"exclusiveMaximum\":0.4}", true, true,
         true, true, -0.25, 0.4},
        {"{\"type\":\"number\",\"minimum\":0.05,\"exclusiveMaximum\":1}", true, false, true, true,
         0.05, 1},
        {"{\"type\":\"number\",\"maximum\":-0.5}", false, false, true, false, 0, -0.5},
        {"{\"type\":\"number\",\"minimum\":1,\"maximum\":1.9}", true, false, true, false, 1, 1.9},
        {"{\"type\":\"number\",\"minimum\":-0.09,\"maximum\":0}", true, false, true, false, -0.09,
         0},
    };
    static const char dg[] = "012459";
    for (size_t k = 0; k < sizeof t / sizeof t[0]; k++) {
        struct kiln_grammar *g = compile(KILN_CONSTRAINT_JSON_SCHEMA, t[k].schema);
        for (int neg = 0; neg < 2; neg++)
            for (int ip = 0; ip < 12; ip++)
                for (int fl = -1, nf = 1; fl <= 3; fl++, nf *= fl > 0 ? 6 : 1)
                    for (int fi = 0; fl && fi < nf; fi++) {
                        char text[32];
                        int n = snprintf(text, sizeof text, "%s%d", neg ? "-" : "",
                                         ip < 10 ? ip : ip * 5);
                        if (fl >= 0) {
                            text[n++] = '.';
                            for (int q = 0, r = fi; q < fl; q++, r /= 6) text[n++] = dg[r % 6];
                            text[n] = 0;
                        }
                        double v = strtod(text, NULL);
                        bool want = !(t[k].hlo && (v < t[k].lo || (v == t[k].lo && t[k].lox))) &&
                                    !(t[k].hhi && (v > t[k].hi || (v == t[k].hi && t[k].hix))) &&
                                    !(neg && v == 0);
                        if (feed_bytes(g, text) != want)
                            fail_msg("%s: %s should be %s", t[k].schema, text,
                                     want ? "accepted" : "rejected");
                    }
        assert_false(feed_bytes(g, "1e0")); /* no exponent under bounds */
        kiln_grammar_unref(g);
    }
    /* fractions on both sides of one integer part: refused */
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA,
                 "{\"type\":\"number\",\"minimum\":0.25,\"maximum\":0.75}", "minimum");
    /* boundary spellings: 0.50 is 0.5, a bound read back as written */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"number\",\"exclusiveMinimum\":0.1}",
                (struct cas[]){{"0.10", false},
                               {"0.1000000001", true},
                               {"0.1", false},
                               {"0.09999", false},
                               {"1", true},
                               {NULL, false}});
}

/* multipleOf against the decimal value over the numbers of test_schema_number_fractions (and
 * a few integers up to 495): a multiple of c / 10^s has at most s fraction digits (then zeros)
 * and its digits, the fraction padded to s, read 0 mod c; integers take no fraction */
static void test_schema_multiple_of(void **state)
{
    (void)state;
    static const struct {
        const char *schema;
        unsigned c, s;
        bool is_int;
    } t[] = {
        {"{\"type\":\"integer\",\"multipleOf\":5}", 5, 0, true},
        {"{\"type\":\"number\",\"multipleOf\":2}", 2, 0, false},
        {"{\"type\":\"number\",\"multipleOf\":0.01}", 1, 2, false},
        {"{\"type\":\"number\",\"multipleOf\":0.25}", 25, 2, false},
        {"{\"type\":\"number\",\"multipleOf\":13.5}", 135, 1, false},
        {"{\"type\":\"integer\",\"multipleOf\":13.5}", 135, 1, true},
        {"{\"type\":\"number\",\"multipleOf\":1.0}", 1, 0, false},
        {"{\"type\":\"integer\",\"multipleOf\":16}", 16, 0, true},
    };
    static const char dg[] = "012459";
    for (size_t k = 0; k < sizeof t / sizeof t[0]; k++) {
        struct kiln_grammar *g = compile(KILN_CONSTRAINT_JSON_SCHEMA, t[k].schema);
        for (int neg = 0; neg < 2; neg++)
            for (int ip = 0; ip < 110; ip++)
                for (int fl = -1, nf = 1; fl <= 3; fl++, nf *= fl > 0 ? 6 : 1)
                    for (int fi = 0; fl && fi < nf; fi++) {
                        char text[32];
                        int iv = ip < 10 ? ip : ip * 9 / 2;
                        int n = snprintf(text, sizeof text, "%s%d", neg ? "-" : "", iv);
                        char fr[8] = "";
                        if (fl > 0) {
                            text[n++] = '.';
                            for (int q = 0, r = fi; q < fl; q++, r /= 6)
                                fr[q] = text[n++] = dg[r % 6];
                            text[n] = 0;
                            fr[fl] = 0;
                        }
                        int fn = (int)strlen(fr);
                        while (fn && fr[fn - 1] == '0') fr[--fn] = 0;
                        bool want = fn <= (int)t[k].s && !(t[k].is_int && fl > 0);
                        if (want) {
                            unsigned long long v = (unsigned long long)iv;
                            for (unsigned q = 0; q < t[k].s; q++)
                                v = v * 10 + (q < (unsigned)fn ? (unsigned)(fr[q] - '0') : 0);
                            want = v % t[k].c == 0;
                        }
                        if (feed_bytes(g, text) != want)
                            fail_msg("%s: %s should be %s", t[k].schema, text,
                                     want ? "accepted" : "rejected");
                    }
        assert_false(feed_bytes(g, "1e1")); /* no exponent */
        kiln_grammar_unref(g);
    }
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA,
                 "{\"type\":\"integer\",\"multipleOf\":5,\"minimum\":1}", "multipleOf");
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"number\",\"multipleOf\":0.0001234}",
                 "multipleOf");
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA, "{\"enum\":[1,2],\"multipleOf\":2}", "multipleOf");
    /* a multipleOf on strings constrains nothing */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"string\",\"multipleOf\":2}",
                (struct cas[]){{"\"a\"", true}, {NULL, false}});
}

static void test_schema_arrays(void **state)
{
    (void)state;
    check_cases(
        KILN_CONSTRAINT_JSON_SCHEMA,
        "{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":1,\"maxItems\":3}",
        (struct cas[]){{"[1]", true},
                       {"[1,2,3]", true},
                       {"[]", false},
                       {"[1,2,3,4]", false},
                       {"[\"a\"]", false},
                       {NULL, false}});
    check_cases(
        KILN_CONSTRAINT_JSON_SCHEMA,
        "{\"type\":\"array\",\"prefixItems\":[{\"type\":\"string\"},{\"type\":\"boolean\"}],"
        "\"items\":false}",
        (struct cas[]){{"[\"a\",true]", true},
                       {"[\"a\"]", true},
                       {"[true]", false},
                       {"[\"a\",true,1]", false},
                       {NULL, false}});
}

static void test_schema_combinators(void **state)
{
    (void)state;
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"anyOf\":[{\"type\":\"integer\"},{\"type\":\"string\"}]}",
                (struct cas[]){{"1", true}, {"\"x\"", true}, {"null", false}, {NULL, false}});
    check_cases(
        KILN_CONSTRAINT_JSON_SCHEMA,
        "{\"allOf\":[{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}},"
        "\"required\":[\"a\"]},{\"properties\":{\"b\":{\"type\":\"string\"}},\"required\":[\"b\"]}]"
        ","
        "\"properties\":{\"a\":true,\"b\":true},\"additionalProperties\":false}",
        (struct cas[]){{"{\"a\":1,\"b\":\"x\"}", true}, {"{\"a\":1}", false}, {NULL, false}});
    /* additionalProperties false beside an allOf: the members' properties are additional ones
     * to it (JSON Schema's additionalProperties sees only the properties beside it) */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"allOf\":[{\"properties\":{\"a\":{\"type\":\"integer\"}}}],"
                "\"additionalProperties\":false}",
                (struct cas[]){{"{}", true}, {"{\"a\":1}", false}, {NULL, false}});
    check_cases(
        KILN_CONSTRAINT_JSON_SCHEMA,
        "{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":"
        "\"integer\"},\"next\":{\"anyOf\":[{\"$ref\":\"#/$defs/node\"},{\"type\":\"null\"}]}},"
        "\"required\":[\"v\",\"next\"],\"additionalProperties\":false}},\"$ref\":\"#/$defs/node\"}",
        (struct cas[]){{"{\"v\":1,\"next\":{\"v\":2,\"next\":null}}", true},
                       {"{\"v\":1,\"next\":{\"v\":2}}", false},
                       {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"oneOf\":[{\"type\":\"object\",\"properties\":{\"k\":{\"const\":\"a\"}},"
                "\"required\":[\"k\"]},"
                "{\"type\":\"object\",\"properties\":{\"k\":{\"const\":\"b\"},\"n\":{\"type\":"
                "\"integer\"}},"
                "\"required\":[\"k\",\"n\"]}]}",
                (struct cas[]){{"{\"k\":\"a\"}", true},
                               {"{\"k\":\"b\",\"n\":1}", true},
                               {"{\"k\":\"b\"}", false},
                               {NULL, false}});
    /* additional properties: the named ones keep their schema, others any */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}},"
                "\"additionalProperties\":{\"type\":\"string\"}}",
                (struct cas[]){{"{\"a\":1,\"b\":\"x\"}", true},
                               {"{\"b\":\"x\"}", true},
                               {"{\"a\":\"x\"}", false},
                               {"{\"b\":1}", false},
                               {"{\"ab\":\"x\"}", true},
                               {"{\"a\\\"b\":\"x\"}", true},
                               {"{\"\\u0061\":\"x\"}", false},
                               {NULL, false}});
}

static void expect_error(enum kiln_constraint_kind kind, const char *text, const char *needle)
{
    struct kiln_constraint_spec spec = {kind, text, strlen(text)};
    struct kiln_grammar *g = NULL;
    struct kiln_error err = {0};
    if (kiln_grammar_compile(&spec, vocab, &g, &err) == KILN_OK) {
        kiln_grammar_unref(g);
        fail_msg("%s compiled, expected an error with '%s'", text, needle);
    }
    if (!strstr(err.msg, needle)) fail_msg("%s: error '%s' lacks '%s'", text, err.msg, needle);
}

/* minLength/maxLength beside a pattern or a format, and a pattern beside a format: exact, one
 * automaton (regex.c gr_regex_meet); lengths are code points (an escape or a multi-byte
 * character is one), and an unanchored pattern's ends count too */
static void brute_schema(const char *schema, const char *const *prefixes, size_t n, int passes);

static void test_schema_string_intersections(void **state)
{
    (void)state;
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"type\":\"string\",\"pattern\":\"^[A-Z\\u00c9]+$\",\"minLength\":2,"
                "\"maxLength\":3}",
                (struct cas[]){{"\"AB\"", true},
                               {"\"ABC\"", true},
                               {"\"A\"", false},
                               {"\"ABCD\"", false},
                               {"\"Ab\"", false},
                               {"\"\\u0041B\"", true},
                               {"\"\\u0041BCD\"", false},
                               {"\"\xc3\x89\xc3\x89\xc3\x89\"", true},
                               {"\"\xc3\x89\xc3\x89\xc3\x89\xc3\x89\"", false},
                               {"\"\"", false},
                               {NULL, false}});
    /* unanchored: the characters around the match count */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"type\":\"string\",\"pattern\":\"\xc3\xa9\",\"minLength\":3,\"maxLength\":4}",
                (struct cas[]){{"\"x\xc3\xa9y\"", true},
                               {"\"abc\xc3\xa9\"", true},
                               {"\"\xc3\xa9\xc3\xa9\"", false},
                               {"\"abcd\xc3\xa9\"", false},
                               {"\"abc\"", false},
                               {"\"\\u00e9ab\"", true},
                               {"\"a\\\"\\n\xc3\xa9\"", true},
                               {"\"a\\\"\\nb\xc3\xa9\"", false},
                               {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"type\":\"string\",\"pattern\":\"b\",\"minLength\":3}",
                (struct cas[]){{"\"abc\"", true},
                               {"\"bb\"", false},
                               {"\"aaaaaaaaaaab\"", true},
                               {"\"aaaa\"", false},
                               {NULL, false}});
    check_cases(
        KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"string\",\"format\":\"email\",\"maxLength\":7}",
        (struct cas[]){
            {"\"a@b.com\"", true}, {"\"ab@b.com\"", false}, {"\"a@b\"", false}, {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"type\":\"string\",\"format\":\"date\",\"pattern\":\"^2024-0\"}",
                (struct cas[]){{"\"2024-01-31\"", true},
                               {"\"2024-11-30\"", false},
                               {"\"2023-01-31\"", false},
                               {"\"2024-02-30\"", false},
                               {NULL, false}});
    /* no string has both: the string accepts nothing */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"type\":[\"string\",\"null\"],\"format\":\"date\",\"minLength\":11}",
                (struct cas[]){{"\"2024-01-31\"", false}, {"null", true}, {NULL, false}});
    const char *schema = "{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"string\","
                         "\"pattern\":\"^[a-z]+[0-9]*$\",\"minLength\":2,\"maxLength\":5}}}";
    const char *prefixes[] = {"{\"id\":\"",     "{\"id\":\"a",     "{\"id\":\"ab1",
                              "{\"id\":\"abcd", "{\"id\":\"abc12", "{\"id\":\"a\\u"};
    brute_schema(schema, prefixes, sizeof prefixes / sizeof prefixes[0], 1);
    /* past the budget: refused, saying why */
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA,
                 "{\"type\":\"string\",\"pattern\":\"^(a[b-z]{0,30})+$\",\"maxLength\":100000}",
                 "automaton states");
}

/* enum/const values filtered through the keywords beside them, checked on each value */
static void test_schema_enum_beside(void **state)
{
    (void)state;
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"enum\":[\"a\",\"abc\",\"\xc3\xa9\xc3\xa9\",\"x1\",3,7,null],\"minLength\":2,"
                "\"maxLength\":2,\"minimum\":5,\"additionalProperties\":false}",
                (struct cas[]){{"\"a\"", false},
                               {"\"abc\"", false},
                               {"\"\xc3\xa9\xc3\xa9\"", true},
                               {"\"x1\"", true},
                               {"3", false},
                               {"7", true},
                               {"null", true},
                               {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"enum\":[\"MIT\",\"mit\",\"GPL-3.0\",\"x\"],\"pattern\":\"^[A-Z]\","
                "\"exclusiveMaximum\":1}",
                (struct cas[]){{"\"MIT\"", true},
                               {"\"mit\"", false},
                               {"\"GPL-3.0\"", true},
                               {"\"x\"", false},
                               {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"enum\":[\"2024-01-01\",\"soon\"],\"format\":\"date\"}",
                (struct cas[]){{"\"2024-01-01\"", true}, {"\"soon\"", false}, {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"type\":\"object\",\"properties\":{\"a\":{\"const\":0,\"exclusiveMinimum\":0}}}",
                (struct cas[]){{"{}", true}, {"{\"a\":0}", false}, {NULL, false}});
    /* draft 4's boolean exclusiveMinimum */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"enum\":[1,2],\"minimum\":1,\"exclusiveMinimum\":true}",
                (struct cas[]){{"1", false}, {"2", true}, {NULL, false}});
    /* at the top, no value at all: refused when compiled, with a message that says why (the
     * first matcher used to fail with "out of memory") */
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA, "{\"const\":0,\"exclusiveMinimum\":0}",
                 "the constraint accepts no output at all");
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA,
                 "{\"type\":\"object\",\"properties\":{\"a\":{\"enum\":[\"x\"],"
                 "\"minLength\":2}},\"required\":[\"a\"]}",
                 "the constraint accepts no output at all");
    /* the same for patternProperties beside an object value (it constrains the object's keys),
     * while beside strings it constrains nothing */
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA,
                 "{\"enum\":[{\"a\":1}],\"patternProperties\":{\"^a\":{\"type\":\"string\"}}}",
                 "together with enum/const");
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"enum\":[\"a\",\"b\"],\"patternProperties\":{\"^a\":false}}",
                (struct cas[]){{"\"a\"", true}, {"\"b\"", true}, {NULL, false}});
    /* an object value under an object keyword would need validating: refused */
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA,
                 "{\"enum\":[{\"a\":1}],\"additionalProperties\":false}",
                 "together with enum/const");
}

/* oneOf compiles as anyOf only where no instance matches two members: each pair proved
 * exclusive by its own rule, the rest refused */
static void test_oneof_exclusive(void **state)
{
    (void)state;
    /* a discriminator per pair: A-B and A-C differ on k, B-C only on m */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"type\":\"object\",\"oneOf\":["
                "{\"required\":[\"k\"],\"properties\":{\"k\":{\"const\":1}}},"
                "{\"required\":[\"k\",\"m\"],\"properties\":{\"k\":{\"const\":2},\"m\":{\"const\":"
                "\"x\"}}},"
                "{\"required\":[\"k\",\"m\"],\"properties\":{\"k\":{\"const\":2},\"m\":{\"enum\":["
                "\"y\",\"z\"]}}}]}",
                (struct cas[]){{"{\"k\":1}", true},
                               {"{\"k\":2,\"m\":\"x\"}", true},
                               {"{\"k\":2,\"m\":\"z\"}", true},
                               {"{\"k\":2}", false},
                               {"1", false},
                               {NULL, false}});
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA,
                 "{\"type\":\"object\",\"oneOf\":["
                 "{\"required\":[\"k\",\"m\"],\"properties\":{\"k\":{\"const\":2},\"m\":{\"const\":"
                 "\"x\"}}},"
                 "{\"required\":[\"k\"],\"properties\":{\"k\":{\"const\":2},\"m\":{\"enum\":[\"x\","
                 "\"y\"]}}}]}",
                 "may overlap");
    /* a discriminator the keywords beside the oneOf require */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"type\":\"object\",\"required\":[\"t\"],\"oneOf\":[{\"properties\":{\"t\":{"
                "\"const\":\"a\"}}},{\"properties\":{\"t\":{\"const\":\"b\"}}}]}",
                (struct cas[]){{"{\"t\":\"a\"}", true},
                               {"{\"t\":\"b\",\"u\":1}", true},
                               {"{\"t\":\"c\"}", false},
                               {"{}", false},
                               {NULL, false}});
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA,
                 "{\"type\":\"object\",\"oneOf\":[{\"properties\":{\"t\":{\"const\":\"a\"}}},{"
                 "\"properties\":{\"t\":{\"const\":\"b\"}}}]}",
                 "may overlap");
    /* a property one requires that the other forbids ("x": false, additionalProperties false) */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"oneOf\":[{\"type\":\"object\",\"properties\":{\"a\":{}},\"required\":[\"a\"],"
                "\"additionalProperties\":false},{\"type\":\"object\",\"properties\":{\"b\":{},"
                "\"a\":false},\"required\":[\"b\"]}]}",
                (struct cas[]){{"{\"a\":1}", true},
                               {"{\"b\":1,\"c\":2}", true},
                               {"{\"a\":1,\"b\":1}", false},
                               {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"oneOf\":[{\"type\":\"object\",\"properties\":{\"a\":false}},{\"type\":"
                "\"object\",\"required\":[\"a\"]}]}",
                (struct cas[]){{"{\"b\":1}", true}, {"{\"a\":1}", true}, {NULL, false}});
    /* members that only list required names exclude each other's names: a and b not both */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"oneOf\":[{\"type\":\"object\",\"required\":[\"a\"]},{\"type\":\"object\","
                "\"required\":[\"b\"]}]}",
                (struct cas[]){{"{\"a\":1}", true},
                               {"{\"b\":1,\"c\":1}", true},
                               {"{\"a\":1,\"b\":2}", false},
                               {"{}", false},
                               {NULL, false}});
    /* a circle, a rectangle or a triangle (r, w h, b h: w without h is a circle's extra);
     * {a} and {a, b}: a without b */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"properties\":{\"d\":{\"type\":\"object\",\"oneOf\":[{\"required\":[\"r\"]},"
                "{\"required\":[\"w\",\"h\"]},{\"required\":[\"b\",\"h\"]}],\"properties\":{"
                "\"r\":{},\"w\":{},\"b\":{},\"h\":{}}},\"e\":{\"oneOf\":[{\"required\":[\"a\"]},"
                "{\"required\":[\"a\",\"b\"]}]}}}",
                (struct cas[]){{"{\"d\":{\"r\":1}}", true},
                               {"{\"d\":{\"r\":1,\"w\":1}}", true},
                               {"{\"d\":{\"w\":1,\"h\":1}}", true},
                               {"{\"d\":{\"b\":1,\"h\":1}}", true},
                               {"{\"d\":{\"r\":1,\"w\":1,\"h\":1}}", false},
                               {"{\"d\":{\"w\":1,\"b\":1,\"h\":1}}", false},
                               {"{\"d\":{\"w\":1,\"b\":1}}", false},
                               {"{\"e\":{\"a\":1}}", true},
                               {"{\"e\":{\"a\":1,\"b\":1}}", false},
                               {"{\"e\":1}", false},
                               {NULL, false}});
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA,
                 "{\"oneOf\":[{\"type\":\"object\",\"required\":[\"a\"],\"properties\":{\"a\":{"
                 "\"type\":\"integer\"}}},{\"type\":\"object\",\"required\":[\"b\"]}]}",
                 "may overlap");
    /* a property that is false is never written: no key leads to a dead end */
    static const char *const forbid[] = {
        "{\"type\":\"object\",\"properties\":{\"a\":false,\"b\":{}}}",
        /* also merged: false with a schema is false */
        "{\"allOf\":[{\"properties\":{\"a\":{\"type\":\"number\"}}},{\"type\":\"object\","
        "\"properties\":{\"a\":false}}]}"};
    for (int q = 0; q < 2; q++) {
        struct kiln_grammar *g =
            compile_ws(KILN_CONSTRAINT_JSON_SCHEMA, forbid[q], KILN_GRAMMAR_WS_COMPACT);
        struct kiln_matcher *m;
        struct kiln_error err = {0};
        assert_int_equal(kiln_matcher_create(g, &m, &err), KILN_OK);
        assert_true(kiln_matcher_accept_bytes(m, "{\"a", 3)); /* "ab" may follow */
        assert_false(kiln_matcher_accept_bytes(m, "\"", 1));
        kiln_matcher_free(m);
        kiln_grammar_unref(g);
    }
    /* members without a type: non-objects match both, so the oneOf takes objects only */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"oneOf\":[{\"required\":[\"k\"],\"properties\":{\"k\":{\"const\":\"a\"}}},"
                "{\"required\":[\"k\"],\"properties\":{\"k\":{\"const\":\"b\"}}}]}",
                (struct cas[]){{"{\"k\":\"a\"}", true},
                               {"{\"k\":\"b\"}", true},
                               {"{\"k\":\"c\"}", false},
                               {"5", false},
                               {"\"a\"", false},
                               {"null", false},
                               {NULL, false}});
    /* the same beside other keywords (a join) */
    check_cases(
        KILN_CONSTRAINT_JSON_SCHEMA,
        "{\"maxProperties\":3,\"oneOf\":[{\"required\":[\"k\"],\"properties\":{\"k\":{"
        "\"const\":\"a\"}}},{\"required\":[\"k\"],\"properties\":{\"k\":{\"const\":\"b\"}}}]}",
        (struct cas[]){{"{\"k\":\"b\"}", true}, {"5", false}, {"[]", false}, {NULL, false}});
    /* ... and strings match both whole here: none is taken; other kinds go to the first */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"properties\":{\"p\":{\"oneOf\":[{\"properties\":{\"a\":{\"type\":\"string\"}}},"
                "{\"type\":\"string\"}]}}}",
                (struct cas[]){{"{\"p\":1}", true},
                               {"{\"p\":{\"a\":\"s\"}}", true},
                               {"{\"p\":{\"a\":1}}", false},
                               {"{\"p\":\"x\"}", false},
                               {NULL, false}});
    /* nullable adds null: both members take it */
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA,
                 "{\"oneOf\":[{\"type\":\"string\",\"nullable\":true},{\"type\":\"null\"}]}",
                 "may overlap");
    /* values of a whole member (const/enum) the other rejects; 1 and 1.0 are one number */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"oneOf\":[{\"enum\":[\"ab\",\"c\",2]},{\"type\":\"string\",\"minLength\":3},"
                "{\"enum\":[\"d\",1]},{\"type\":\"integer\",\"minimum\":3}]}",
                (struct cas[]){{"\"c\"", true},
                               {"\"abc\"", true},
                               {"1", true},
                               {"3", true},
                               {"\"x\"", false},
                               {NULL, false}});
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA,
                 "{\"oneOf\":[{\"enum\":[\"ab\",\"abc\"]},{\"type\":\"string\",\"minLength\":3}]}",
                 "may overlap");
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA, "{\"oneOf\":[{\"const\":1},{\"enum\":[2,1.0]}]}",
                 "may overlap");
    /* numbers by range (draft 4's boolean exclusiveMinimum too), strings by length */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"oneOf\":[{\"type\":\"number\",\"maximum\":0},{\"type\":\"integer\","
                "\"minimum\":0,\"exclusiveMinimum\":true},{\"type\":\"string\",\"maxLength\":2},"
                "{\"type\":\"string\",\"minLength\":3,\"maxLength\":4}]}",
                (struct cas[]){{"0", true},
                               {"-0.5", true},
                               {"7", true},
                               {"0.5", false},
                               {"\"xy\"", true},
                               {"\"abc\"", true},
                               {"\"abcde\"", false},
                               {NULL, false}});
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA,
                 "{\"oneOf\":[{\"type\":\"number\",\"maximum\":0},{\"type\":\"integer\","
                 "\"minimum\":0}]}",
                 "may overlap");
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA,
                 "{\"oneOf\":[{\"type\":\"string\",\"maxLength\":3},{\"type\":\"string\","
                 "\"minLength\":3}]}",
                 "may overlap");
    /* arrays: items that share no value, both at least one long; an allOf member alone */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"oneOf\":[{\"type\":\"array\",\"items\":{\"type\":\"string\"},\"minItems\":1},"
                "{\"type\":\"array\",\"items\":{\"type\":\"integer\"}},{\"allOf\":[{\"type\":"
                "\"null\"}]}]}",
                (struct cas[]){{"[\"a\"]", true},
                               {"[1]", true},
                               {"[]", true},
                               {"null", true},
                               {"[1,\"a\"]", false},
                               {NULL, false}});
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA,
                 "{\"oneOf\":[{\"type\":\"array\",\"items\":{\"type\":\"string\"}},"
                 "{\"type\":\"array\",\"items\":{\"type\":\"integer\"}}]}",
                 "may overlap");
}

static void test_errors(void **state)
{
    (void)state;
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA,
                 "{\"properties\":{\"a\":{\"propertyNames\":{\"maxLength\":3}}}}",
                 "unsupported JSON Schema keyword 'propertyNames' at /properties/a");
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"array\",\"uniqueItems\":true}",
                 "uniqueItems");
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA, "{\"not\":{}}", "'not'");
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA,
                 "{\"oneOf\":[{\"type\":\"string\"},{\"maxLength\":3}]}", "oneOf");
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"string\",\"format\":\"hostname\"}",
                 "hostname");
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA, "{bad json", "not valid JSON");
    expect_error(KILN_CONSTRAINT_REGEX, "(a)\\1", "backreferences");
    expect_error(KILN_CONSTRAINT_REGEX, "a(?=b)", "lookaround");
    expect_error(KILN_CONSTRAINT_REGEX, "\\bword", "word boundary");
    expect_error(KILN_CONSTRAINT_CHOICE, "[1]", "not a string");
    expect_error(KILN_CONSTRAINT_GRAMMAR, "root ::= root \"a\" | \"b\"", "left-recursive");
    expect_error(KILN_CONSTRAINT_GRAMMAR, "root ::= foo", "not defined");
    /* left recursion behind a nullable prefix */
    expect_error(KILN_CONSTRAINT_GRAMMAR, "root ::= a root \"x\" | \"y\"\na ::= \"z\"?",
                 "left-recursive");
    expect_error(KILN_CONSTRAINT_REGEX, "a{3,2}", "out of order");
    expect_error(KILN_CONSTRAINT_REGEX, "a^b", "'^'");
}

static void brute_schema(const char *schema, const char *const *prefixes, size_t n, int passes);

/* s with every ' turned into " (schemas and instances of many quotes, written readably) */
static char *dq(const char *s)
{
    char *r = strdup(s);
    for (char *c = r; *c; c++)
        if (*c == '\'') *c = '"';
    return r;
}

static void check_cases_q(const char *spec, const struct cas *c)
{
    char *schema = dq(spec);
    struct kiln_grammar *g = compile(KILN_CONSTRAINT_JSON_SCHEMA, schema);
    for (; c->text; c++) {
        char *text = dq(c->text);
        if (feed(g, text) != c->valid)
            fail_msg("%s: instance %s should be %s", schema, text,
                     c->valid ? "accepted" : "rejected");
        free(text);
    }
    kiln_grammar_unref(g);
    free(schema);
}

/* patternProperties: a key gets the schema of every pattern it matches (a search, ECMA-262
 * '.'), a listed name its own schema too, additionalProperties only the keys that are neither */
static void test_schema_pattern_properties(void **state)
{
    (void)state;
    /* a join: one member's additionalProperties does not apply to a name another member lists
     * when the first member's own pattern matches it; that pattern's schema does */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"allOf\":[{\"$ref\":\"#/$defs/d\"}],\"properties\":{\"ver\":{\"enum\":[\"3.0\","
                "4]}},\"$defs\":{\"d\":{\"additionalProperties\":false,\"patternProperties\":{"
                "\"^[a-z]\":{\"type\":\"string\"}}}}}",
                (struct cas[]){{"{\"ver\":\"3.0\"}", true},
                               {"{\"ver\":4}", false},
                               {"{\"abc\":\"x\"}", true},
                               {"{\"Abc\":\"x\"}", false},
                               {NULL, false}});
    /* a map: only keys the pattern matches */
    check_cases_q("{'type':'object','patternProperties':{'^[a-z_]+$':{'type':'integer'}},"
                  "'additionalProperties':false}",
                  (struct cas[]){{"{}", true},
                                 {"{'ab':1}", true},
                                 {"{'a_b':1,'c':2}", true},
                                 {"{'ab':'x'}", false},
                                 {"{'Ab':1}", false},
                                 {"{'':1}", false},
                                 {"{'a b':1}", false},
                                 {NULL, false}});
    /* unanchored; additionalProperties absent: any other key, any value */
    check_cases_q("{'type':'object','patternProperties':{'a':{'type':'string'}}}",
                  (struct cas[]){{"{'xay':'s'}", true},
                                 {"{'xay':1}", false},
                                 {"{'a':1}", false},
                                 {"{'xy':1}", true},
                                 {"{'xy':'s','ya':'t'}", true},
                                 {NULL, false}});
    /* a key matching two patterns gets both; one matching none additionalProperties */
    check_cases_q("{'type':'object','patternProperties':{'^a':{'type':'integer'},"
                  "'b$':{'type':'number','minimum':5}},'additionalProperties':{'type':'string'}}",
                  (struct cas[]){{"{'ab':7}", true},
                                 {"{'ab':3}", false},
                                 {"{'ab':6.5}", false},
                                 {"{'ax':3}", true},
                                 {"{'ax':'s'}", false},
                                 {"{'xb':6.5}", true},
                                 {"{'xb':'s'}", false},
                                 {"{'xx':'s'}", true},
                                 {"{'xx':1}", false},
                                 {NULL, false}});
    /* a listed name matching a pattern: both schemas; other names by the pattern alone */
    check_cases_q("{'type':'object','properties':{'ab':{'type':'integer'}},"
                  "'patternProperties':{'^a':{'minimum':10}},'additionalProperties':false}",
                  (struct cas[]){{"{'ab':12}", true},
                                 {"{'ab':3}", false},
                                 {"{'ab':12.5}", false},
                                 {"{'ab':12,'ac':11}", true},
                                 {"{'ab':12,'ac':2}", false},
                                 {"{'ac':'x'}", true},
                                 {"{'b':1}", false},
                                 {"{'ab':12,'ab':13}", false},
                                 {NULL, false}});
    /* a required name no property lists: a pattern's when it matches one */
    check_cases_q("{'type':'object','patternProperties':{'^x-':{'type':'string'}},"
                  "'required':['x-a'],'additionalProperties':false}",
                  (struct cas[]){{"{'x-a':'s'}", true},
                                 {"{'x-a':1}", false},
                                 {"{'x-a':'s','x-b':'t'}", true},
                                 {"{'x-b':'t'}", false},
                                 {NULL, false}});
    /* '.' is no line terminator: a key with one is not matched by ^.*$ */
    check_cases_q("{'type':'object','patternProperties':{'^.*$':{'type':'integer'}},"
                  "'additionalProperties':{'type':'string'}}",
                  (struct cas[]){{"{'ab':1}", true},
                                 {"{'ab':'s'}", false},
                                 {"{'a\\nb':'s'}", true},
                                 {"{'a\\nb':1}", false},
                                 {"{'a\\u2028b':'s'}", true},
                                 {"{'a\\u2028b':1}", false},
                                 {"{'a\\tb':1}", true},
                                 {NULL, false}});
    /* escapes in keys: a pattern sees the characters; a listed name is taken in its one
     * spelling only (\\u0061 or \\/ for it would make it a second, unchecked member) */
    check_cases_q(
        "{'type':'object','properties':{'ab':{'type':'integer'},'a/b':{'type':'integer'}},"
        "'patternProperties':{'^q\\'':{'type':'integer'}},"
        "'additionalProperties':{'type':'string'}}",
        (struct cas[]){{"{'ab':1,'q\\'x':2}", true},
                       {"{'q\\'x':'s'}", false},
                       {"{'\\u0061b':'s'}", false},
                       {"{'a\\/b':'s'}", false},
                       {"{'a/b':1}", true},
                       {"{'zz':'s','\\u00e9':'t'}", true},
                       {NULL, false}});
    /* a search's anchors belong to their alternative: ^a|b$ is (^a)|(b$), in keys and values */
    check_cases_q("{'type':'object','patternProperties':{'^a|b$':{'type':'integer'}},"
                  "'additionalProperties':{'type':'string','pattern':'^x|y$'}}",
                  (struct cas[]){{"{'ax':1}", true},
                                 {"{'xb':1}", true},
                                 {"{'xa':1}", false},
                                 {"{'xa':'xz'}", true},
                                 {"{'bx':'zy'}", true},
                                 {"{'bx':'zx'}", false},
                                 {"{'bx':'yz'}", false},
                                 {NULL, false}});
    /* a bounded count: a key state per count, not one per spelling of each character */
    check_cases_q("{'type':'object','patternProperties':{'^[0-9a-z_-]{1,255}$':{'type':'integer'}},"
                  "'additionalProperties':false}",
                  (struct cas[]){{"{'a-1':1}", true}, {"{'a-1':'s'}", false}, {NULL, false}});
    /* a word list, unanchored: once a word is found the rest of the key is free (one key
     * state, not one per partial match of every other word) */
    check_cases_q("{'type':'object','patternProperties':{'Red|Blue|Yellow|Gold|Silver|Crystal|Ruby|"
                  "Sapphire|Emerald|FireRed|LeafGreen|Diamond|Pearl|Platinum|HeartGold|SoulSilver|"
                  "Black|White|Black 2|White 2|X|Y|Omega Ruby|Alpha Sapphire|Sun|Moon|Ultra Sun|"
                  "Ultra Moon|Lets Go Pikachu|Lets Go Eevee':{'type':'integer'}},"
                  "'additionalProperties':false}",
                  (struct cas[]){{"{'Pokemon Ultra Moon!':1}", true},
                                 {"{'Rex':1}", false},
                                 {"{'Ultra':2}", false},
                                 {"{'Redx':1,'xGoldx':2,'a Y':3}", true},
                                 {"{'Lets Go Eevee':2,'Lets Go':3}", false},
                                 {NULL, false}});
    /* a catch-all: additionalProperties never applies */
    check_cases_q("{'type':'object','properties':{'id':{'type':'string'}},"
                  "'patternProperties':{'.*':{'type':'string'}},'additionalProperties':false}",
                  (struct cas[]){{"{'id':'x','k':'v'}", true},
                                 {"{'id':1}", false},
                                 {"{'k':1}", false},
                                 {"{'':'v'}", true},
                                 {NULL, false}});
    /* refused: a pattern the regex compiler refuses; another allOf member's
     * additionalProperties (it would be widened by the patterns) */
    char *e1 = dq("{'type':'object','patternProperties':{'(?=a)':{}}}");
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA, e1, "patternProperties at /patternProperties/(?=a)");
    free(e1);
    char *e2 = dq("{'allOf':[{'additionalProperties':false},{'patternProperties':{'a':{}}}]}");
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA, e2, "keyword 'patternProperties'");
    free(e2);
    /* a pattern whose schema is false: such a key cannot even be begun */
    {
        char *f = dq("{'type':'object','patternProperties':{'^a':false,'b':{}}}");
        struct kiln_grammar *g = compile(KILN_CONSTRAINT_JSON_SCHEMA, f);
        struct kiln_matcher *m;
        struct kiln_error err = {0};
        assert_int_equal(kiln_matcher_create(g, &m, &err), KILN_OK);
        assert_false(kiln_matcher_accept_bytes(m, "{\"ab", 4));
        kiln_matcher_free(m);
        assert_true(feed(g, "{\"ba\":1,\"c\":2}"));
        kiln_grammar_unref(g);
        free(f);
    }
    /* masks exact inside keys of each kind */
    char *schema = dq("{'type':'object','properties':{'ab':{'type':'integer'}},"
                      "'patternProperties':{'^a':{'type':'integer'},'^[a-z]+$':{'maximum':9}},"
                      "'additionalProperties':{'type':'string'}}");
    const char *prefixes[] = {"{",
                              "{\"",
                              "{\"a",
                              "{\"ab",
                              "{\"ab\":1,\"a",
                              "{\"ab\":1,\"ax\":",
                              "{\"ab\":1,\"b\":",
                              "{\"ab\":1,\"B\\",
                              "{\"ab\":1,\"B\":\"s"};
    brute_schema(schema, prefixes, sizeof prefixes / sizeof prefixes[0], 1);
    free(schema);
}

static void test_regex_choice_grammar(void **state)
{
    (void)state;
    check_cases(KILN_CONSTRAINT_REGEX, "(\\+|-)?[0-9]{2,3}(\\.[0-9]+)?|[a-c]+x",
                (struct cas[]){{"12", true},
                               {"-123.5", true},
                               {"1", false},
                               {"abcx", true},
                               {"abc", false},
                               {NULL, false}});
    check_cases(KILN_CONSTRAINT_REGEX, "^\\w+@\\w+\\.com$",
                (struct cas[]){{"me@host.com", true}, {"me@host.org", false}, {NULL, false}});
    check_cases(
        KILN_CONSTRAINT_CHOICE, "[\"yes\",\"no\",\"not sure\"]",
        (struct cas[]){
            {"yes", true}, {"not sure", true}, {"n", false}, {"yess", false}, {NULL, false}});
    check_cases(KILN_CONSTRAINT_GRAMMAR,
                "root ::= \"call \" name \"(\" args? \")\"\n"
                "name ::= [a-z_]+\n"
                "args ::= %json {\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"integer\"}},"
                "\"required\":[\"x\"],\"additionalProperties\":false}\n",
                (struct cas[]){{"call get_x({\"x\":3})", true},
                               {"call f()", true},
                               {"call F()", false},
                               {"call f({\"y\":3})", false},
                               {NULL, false}});
    check_cases(
        KILN_CONSTRAINT_JSON_OBJECT, "",
        (struct cas[]){
            {"{\"a\":[1,2,{\"b\":null}]}", true}, {"[1]", false}, {"{}", true}, {NULL, false}});
}

static void test_whitespace_flexible(void **state)
{
    (void)state;
    struct kiln_grammar *g = compile_ws(KILN_CONSTRAINT_JSON_SCHEMA,
                                        "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":"
                                        "\"array\"}},\"required\":[\"a\"]}",
                                        KILN_GRAMMAR_WS_FLEXIBLE);
    assert_true(feed(g, "{\"a\": [1, 2]}"));
    assert_true(feed(g, "{\n  \"a\" : [ ]\n}"));
    assert_false(feed(g, "{\"a\": [1, 2],}"));
    kiln_grammar_unref(g);
}

/* The bounded indented form: what json.dumps(indent=2) writes (and ", " / ": " separators),
 * but never a tab, two spaces on one line outside an indent, or a run of indentation past the
 * bound; masks exact inside the indentation. */
static void brute_check(struct kiln_grammar *g, const char *prefix);
static void test_whitespace_indent(void **state)
{
    (void)state;
    struct kiln_grammar *g = compile_ws(
        KILN_CONSTRAINT_JSON_SCHEMA,
        "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"array\",\"items\":{"
        "\"type\":\"integer\"}},\"b\":{\"const\":{\"x\":[1]}}},\"required\":[\"a\",\"b\"],"
        "\"additionalProperties\":false}",
        KILN_GRAMMAR_WS_INDENT);
    assert_true(feed(g, "{\"a\":[1,2],\"b\":{\"x\":[1]}}"));
    assert_true(feed(g, "{\"a\": [1, 2], \"b\": {\"x\": [1]}}"));
    assert_true(feed(g, "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {\n    \"x\": [\n      1\n"
                        "    ]\n  }\n}"));
    assert_false(feed(g, "{\"a\":\t[1],\"b\":{\"x\":[1]}}"));
    assert_false(feed(g, "{\"a\":  [1],\"b\":{\"x\":[1]}}"));
    char deep[128] = "{\n";
    memset(deep + 2, ' ', KILN_GRAMMAR_INDENT_MAX + 1);
    strcpy(deep + 3 + KILN_GRAMMAR_INDENT_MAX, "\"a\":[],\"b\":{\"x\":[1]}}");
    assert_false(feed(g, deep));
    deep[2 + KILN_GRAMMAR_INDENT_MAX] = '"';
    strcpy(deep + 2 + KILN_GRAMMAR_INDENT_MAX, "\"a\":[],\"b\":{\"x\":[1]}}");
    assert_true(feed(g, deep));
    brute_check(g, "{\n   ");
    brute_check(g, "{\"a\": [");
    kiln_grammar_unref(g);
}

/* m's mask equals "accepting the token succeeds" for every token of the vocabulary (prefix:
 * what m took, for the message) */
static void brute_check_matcher(struct kiln_matcher *m, const char *prefix)
{
    int32_t nv = kiln_grammar_vocab_size(vocab);
    uint32_t *mask = malloc(((size_t)nv + 31) / 32 * 4);
    kiln_matcher_fill_mask(m, mask);
    int allowed = 0;
    for (int32_t t = 0; t < nv; t++) {
        bool a = kiln_matcher_accept(m, t);
        if (a) {
            kiln_matcher_rollback(m, 1);
            allowed++;
        }
        if (a != mask_has(mask, t)) {
            size_t n;
            const char *s = kiln_tokenizer_token_bytes(tok, t, &n);
            fail_msg("prefix '%s': token %d '%.*s' accept %d mask %d", prefix, t, (int)n,
                     s ? s : "", a, mask_has(mask, t));
        }
        /* independent check of the token's bytes */
        size_t n;
        const char *s = kiln_tokenizer_token_bytes(tok, t, &n);
        if (a && !kiln_tokenizer_is_special(tok, t)) {
            assert_true(kiln_matcher_accept_bytes(m, s, n));
            kiln_matcher_rollback(m, 1);
        }
        if (kiln_tokenizer_is_special(tok, t) && a) {
            const int32_t *eos;
            int ne = kiln_tokenizer_eos(tok, &eos);
            bool is_eos = false;
            for (int i = 0; i < ne; i++) is_eos |= eos[i] == t;
            assert_true(is_eos);
            assert_true(kiln_matcher_is_complete(m));
        }
    }
    assert_true(allowed > 0);
    free(mask);
}

/* the mask equals "accepting the token succeeds" for every token of the vocabulary */
static void brute_check(struct kiln_grammar *g, const char *prefix)
{
    struct kiln_matcher *m;
    struct kiln_error err = {0};
    assert_int_equal(kiln_matcher_create(g, &m, &err), KILN_OK);
    assert_true(kiln_matcher_accept_bytes(m, prefix, strlen(prefix)));
    brute_check_matcher(m, prefix);
    kiln_matcher_free(m);
}

/* brute_check at every prefix, `passes` times over (each pass with new matchers: a later one
 * finds what the earlier ones left in the grammar) */
static void brute_schema(const char *schema, const char *const *prefixes, size_t n, int passes)
{
    struct kiln_grammar *g = compile(KILN_CONSTRAINT_JSON_SCHEMA, schema);
    for (int pass = 0; pass < passes; pass++)
        for (size_t i = 0; i < n; i++) brute_check(g, prefixes[i]);
    kiln_grammar_unref(g);
}

static void test_mask_exact(void **state)
{
    (void)state;
    const char *schema =
        "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":4},"
        "\"n\":{\"type\":\"integer\",\"maximum\":250},\"tags\":{\"type\":\"array\",\"items\":{"
        "\"enum\":[\"red\",\"green\"]}}},\"required\":[\"name\"],\"additionalProperties\":false}";
    const char *prefixes[] = {"",
                              "{",
                              "{\"",
                              "{\"name\":\"ab",
                              "{\"name\":\"abcd",
                              "{\"name\":\"a\",\"n\":2",
                              "{\"name\":\"a\",\"tags\":[\"re",
                              "{\"name\":\"a\",\"tags\":[\"red\"]",
                              "{\"name\":\"a\"}"};
    brute_schema(schema, prefixes, sizeof prefixes / sizeof prefixes[0], 1);
}

/* positions whose plain tokens come from the per-state plain-character analysis (matcher.c):
 * keys of objects that take additional properties, strings with maxLength (around the 24-code
 * point boundary of the vocabulary's length masks), rules a plain run can return from */
static void test_mask_exact_plain(void **state)
{
    (void)state;
    const char *schema =
        "{\"type\":\"object\",\"properties\":{\"title\":{\"type\":\"string\",\"maxLength\":30},"
        "\"tag\":{\"type\":\"string\"}},\"additionalProperties\":{\"type\":\"string\","
        "\"maxLength\":3}}";
    const char *prefixes[] = {"{\"",
                              "{\"t",
                              "{\"ti",
                              "{\"title",
                              "{\"title\":\"",
                              "{\"title\":\"h\xc3\xa9llo w",
                              "{\"title\":\"abcdefghij",
                              "{\"title\":\"abcdefghijklmnopqrstuvwxy",
                              "{\"title\":\"abcdefghijklmnopqrstuvwxyz0123",
                              "{\"title\":\"abcdefghijklmnopqrstuvwxyz0\xc3\xa9\xc3\xa9\xc3\xa9",
                              "{\"title\":\"a\",\"",
                              "{\"title\":\"a\",\"ta",
                              "{\"title\":\"a\",\"tag\":\"x",
                              "{\"title\":\"a\",\"tax",
                              "{\"title\":\"a\",\"xy\":\"",
                              "{\"title\":\"a\",\"xy\":\"ab"};
    brute_schema(schema, prefixes, sizeof prefixes / sizeof prefixes[0], 2);
    /* a long maxLength: each character is a call of a shared rule (returns at every character
     * of its own frame walk), so masks come from the (character, caller) pair's walk */
    const char *longer = "{\"type\":\"object\",\"properties\":{\"s\":{\"type\":\"string\","
                         "\"maxLength\":300},\"t\":{\"type\":\"string\",\"maxLength\":200}},"
                         "\"required\":[\"s\"],\"additionalProperties\":false}";
    const char *long_prefixes[] = {"{\"s\":\"", "{\"s\":\"ab", "{\"s\":\"ab\\n",
                                   "{\"s\":\"a\",\"t\":\"xyz"};
    brute_schema(longer, long_prefixes, sizeof long_prefixes / sizeof long_prefixes[0], 2);
    /* a rule a plain run may leave early (x), then more plain characters (y) */
    struct kiln_grammar *g =
        compile(KILN_CONSTRAINT_GRAMMAR, "root ::= \"<\" x y \"!\"\nx ::= .{0,2}\ny ::= .*\n");
    brute_check(g, "<");
    brute_check(g, "<a");
    kiln_grammar_unref(g);
    g = compile(KILN_CONSTRAINT_GRAMMAR, "root ::= .{0,40} \"\\n\"\n");
    brute_check(g, "");
    brute_check(g, "abcdefghijklmnopqrst");
    brute_check(g, "abcdefghijklmnopqrstuvwxyz01234567");
    kiln_grammar_unref(g);
    g = compile(KILN_CONSTRAINT_REGEX, "[a-z ]{0,40}|[0-9]{3}");
    brute_check(g, "");
    brute_check(g, "ab");
    kiln_grammar_unref(g);
}

/* a prefix: head, then n copies of unit (caller frees) */
static char *repeated(const char *head, const char *unit, int n)
{
    size_t h = strlen(head), u = strlen(unit);
    char *s = malloc(h + u * (size_t)n + 1);
    memcpy(s, head, h);
    for (int i = 0; i < n; i++) memcpy(s + h + u * (size_t)i, unit, u);
    s[h + u * (size_t)n] = 0;
    return s;
}

/* positions whose plain tokens come from the configuration's plain chain (matcher.c): counted
 * runs of characters, where every plain character leads to the next position (maxLength, here
 * counted in blocks of 64 calls of a rule, and a counted class), and runs where they do not */
static void test_mask_exact_chain(void **state)
{
    (void)state;
    struct kiln_grammar *g = compile(KILN_CONSTRAINT_JSON_SCHEMA,
                                     "{\"type\":\"object\",\"properties\":{\"s\":{\"type\":"
                                     "\"string\",\"maxLength\":5000},\"n\":{\"type\":\"integer\"}},"
                                     "\"required\":[\"s\"],\"additionalProperties\":false}");
    /* around the block boundaries, after an escape and non-ASCII, and where the longest plain
     * tokens (128, 98 code points: runs of spaces, '-', '*') stop fitting */
    const struct {
        const char *unit;
        int n;
    } at[] = {{"", 0},     {"a", 1},    {"ab", 31},       {"a", 63},     {"a", 64},   {"a", 65},
              {"a", 127},  {"a", 128},  {"\xc3\xa9", 70}, {"ab\\n", 40}, {"a", 4872}, {"a", 4873},
              {"a", 4900}, {"a", 4903}, {"a", 4990},      {"a", 4999}};
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
        char *prefix = repeated("{\"s\":\"", at[i].unit, at[i].n);
        brute_check(g, prefix);
        free(prefix);
    }
    kiln_grammar_unref(g);
    /* every ASCII character goes on, every other one dies: no chain (a mask of only the
     * ASCII-led characters' target would allow the non-ASCII tokens) */
    g = compile(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"type\":\"string\",\"pattern\":\"^[ -\\\\x7f]{0,50}$\"}");
    const char *prefixes[] = {"\"", "\"abc", "\"0123456789012345678901234567890123456789012345"};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) brute_check(g, prefixes[i]);
    kiln_grammar_unref(g);
    /* a count of any character (not inside JSON: quotes and backslashes are plain here) */
    g = compile(KILN_CONSTRAINT_REGEX, "[^\\n]{2,300}\\n");
    brute_check(g, "");
    brute_check(g, "x");
    brute_check(g, "\xe2\x82\xac\xe2\x82\xac");
    kiln_grammar_unref(g);
}

/* A configuration of over 64 stacks (70 literals, runs of anything but '"' after a prefix) has
 * no per-state verdict and is walked as one over the whole vocabulary, skipping the subtrees
 * below "x", "yz", " ", ">" where every plain character stays in the run (matcher.c, walk_trie from
 * the root: a key of an object with ~100 listed names and others allowed): their plain tokens from
 * a mask (the 50k below " ") or a range, their tokens with quotes, backslashes, control characters
 * walked; a counted run ("c") is not skipped */
static void test_mask_exact_skipped_subtrees(void **state)
{
    (void)state;
    char gr[8192];
    size_t n = (size_t)snprintf(gr, sizeof gr, "root ::= \"k\" (");
    for (int i = 0; i < 70; i++) n += (size_t)snprintf(gr + n, sizeof gr - n, "r%d | ", i);
    n += (size_t)snprintf(gr + n, sizeof gr - n, "rx | ry | rz | rs | rc | rd)\n");
    for (int i = 0; i < 70; i++)
        n += (size_t)snprintf(gr + n, sizeof gr - n, "r%d ::= \"l%02d\"\n", i, i);
    snprintf(gr + n, sizeof gr - n,
             "rx ::= \"x\" [^\"]*\nry ::= \"yz\" [^\"]*\nrz ::= \"\xc3\xa9\" [^\"]*\n"
             "rs ::= \" \" [^\"]*\nrc ::= \"c\" [^\"]{0,3}\nrd ::= \">\" [^\"]*\n");
    struct kiln_grammar *g = compile(KILN_CONSTRAINT_GRAMMAR, gr);
    const char *prefixes[] = {"k", "kl"};
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++)
            brute_check(g, prefixes[i]);
    kiln_grammar_unref(g);
}

/* Strings whose pattern is a class of characters (matcher.c, "frames of a character class"): the
 * plain tokens come from a mask of the tokens avoiding the characters that die (one set first,
 * one after), up to a length where every character dies; classes that keep some non-ASCII
 * characters and not others (`.` and `\s` leave out U+2028, U+00A0, ...) have their non-ASCII
 * tokens walked */
static void test_mask_exact_class_frames(void **state)
{
    (void)state;
    const char *schema =
        "{\"type\":\"object\",\"properties\":{"
        "\"a\":{\"type\":\"string\",\"pattern\":\"^[0-9a-zA-Z_-]{1,255}$\"},"
        "\"b\":{\"type\":\"string\",\"pattern\":\"^[a-z]{1,5}$\"},"
        "\"c\":{\"type\":\"string\",\"pattern\":\"^[A-Z][a-z ]+$\"},"
        "\"d\":{\"type\":\"string\",\"pattern\":\".+:.+\"},"
        "\"e\":{\"type\":\"string\",\"pattern\":\"^[^\\\\s,]+$\"},"
        "\"f\":{\"type\":\"string\",\"pattern\":\"^[\\u00e9a-c\\u4e00-\\u9fff]*$\"},"
        "\"g\":{\"type\":\"string\",\"pattern\":\"^([A-Z][a-z])*$\"}},"
        "\"additionalProperties\":false}";
    const char *prefixes[] = {"{\"a\":\"",          "{\"a\":\"ab-",     "{\"b\":\"",
                              "{\"b\":\"abc",       "{\"b\":\"abcde",   "{\"c\":\"",
                              "{\"c\":\"A",         "{\"c\":\"Ab c",    "{\"d\":\"",
                              "{\"d\":\"my",        "{\"d\":\"my-app:", "{\"e\":\"",
                              "{\"e\":\"x\xc3\xa9", "{\"f\":\"",        "{\"f\":\"\xc3\xa9",
                              "{\"g\":\"",          "{\"g\":\"Ab"};
    brute_schema(schema, prefixes, sizeof prefixes / sizeof prefixes[0], 2);
}

/* Past the masks a vocabulary keeps for frames of a character class (512), such frames walk
 * their tokens again: 600 classes (all but two letters or digits, and a quote to end them:
 * a run that may end inside plain characters has no such verdict) on a small vocabulary, masks
 * exact at the start and after one character for each */
static void test_class_frames_past_the_cache(void **state)
{
    (void)state;
    const char *extra[] = {"ab", "a1", "q-", "zz", "Hello", " w", "\xc3\xa9", "a\"", "9x9"};
    const int nx = (int)(sizeof extra / sizeof extra[0]);
    const char *toks[95 + 9 + 1];
    size_t lens[95 + 9 + 1];
    char bytes[95];
    int32_t n = 0;
    for (int c = 0x20; c < 0x7f; c++, n++) {
        bytes[n] = (char)c;
        toks[n] = &bytes[n];
        lens[n] = 1;
    }
    for (int i = 0; i < nx; i++, n++) toks[n] = extra[i], lens[n] = strlen(extra[i]);
    toks[n] = "", lens[n] = 0; /* EOS */
    struct kiln_grammar_vocab *small;
    struct kiln_error err = {0};
    assert_int_equal(gr_vocab_from_strings(toks, lens, n + 1, n, &small, &err), KILN_OK);
    const char *alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    int made = 0;
    uint32_t mask[4];
    for (int j = 0; j < 62 && made < 600; j++)
        for (int k = j + 1; k < 62 && made < 600; k++, made++) {
            char re[16];
            snprintf(re, sizeof re, "[^%c%c\"]+\"", alnum[j], alnum[k]);
            struct kiln_constraint_spec spec = {KILN_CONSTRAINT_REGEX, re, strlen(re)};
            struct kiln_grammar_options o = {KILN_GRAMMAR_WS_COMPACT};
            struct kiln_grammar *g = NULL;
            if (kiln_grammar_compile_opts(&spec, small, &o, &g, &err))
                fail_msg("compile %s: %s", re, err.msg);
            struct kiln_matcher *m;
            assert_int_equal(kiln_matcher_create(g, &m, &err), KILN_OK);
            for (int step = 0; step < 2; step++) {
                if (step) assert_true(kiln_matcher_accept_bytes(m, "-", 1));
                kiln_matcher_fill_mask(m, mask);
                for (int32_t t = 0; t <= n; t++) {
                    bool a = kiln_matcher_accept(m, t);
                    if (a) kiln_matcher_rollback(m, 1);
                    if (a != mask_has(mask, t))
                        fail_msg("%s, step %d: token %d '%.*s' accept %d mask %d", re, step, t,
                                 (int)lens[t], toks[t], a, mask_has(mask, t));
                }
            }
            kiln_matcher_free(m);
            kiln_grammar_unref(g);
        }
    kiln_grammar_vocab_free(small);
}

/* A long instance with a mask at every token: a maxLength string's positions are new
 * configurations, whose dense rows run out (8,192 a matcher) and start over; masks after that
 * are still exact */
static void test_mask_exact_long_instance(void **state)
{
    (void)state;
    struct kiln_grammar *g = compile(KILN_CONSTRAINT_JSON_SCHEMA,
                                     "{\"type\":\"object\",\"properties\":{\"s\":{"
                                     "\"type\":\"string\",\"maxLength\":5000}},"
                                     "\"required\":[\"s\"],\"additionalProperties\":false}");
    char *body = repeated("{\"s\":\"", "This is a Vimeo video block. ", 160);
    size_t len = strlen(body);
    char *text = malloc(len + 3);
    memcpy(text, body, len);
    memcpy(text + len, "\"}", 3);
    assert_true(feed_check(g, text, true));
    free(body);
    free(text);
    kiln_grammar_unref(g);
}

/* Feeds text's bytes at once (no masks: for long instances); true when accepted and complete */
static bool feed_bytes(struct kiln_grammar *g, const char *text)
{
    struct kiln_matcher *m;
    struct kiln_error err = {0};
    assert_int_equal(kiln_matcher_create(g, &m, &err), KILN_OK);
    bool ok = kiln_matcher_accept_bytes(m, text, strlen(text)) && kiln_matcher_is_complete(m);
    kiln_matcher_free(m);
    return ok;
}

/* a string of n copies of unit between quotes (a test instance), caller frees */
static char *quoted_run(const char *unit, int n)
{
    size_t u = strlen(unit);
    char *s = malloc(u * (size_t)n + 3);
    s[0] = '"';
    for (int i = 0; i < n; i++) memcpy(s + 1 + u * (size_t)i, unit, u);
    strcpy(s + 1 + u * (size_t)n, "\"");
    return s;
}

/* The compiler's sharing: a long bounded repetition calls its body as a rule, equal sub-schemas
 * share one rule, every escape goes through shared rules; each must keep the exact language. */
static void test_schema_shared_rules(void **state)
{
    (void)state;
    /* maxLength 300: the character is a rule called 300 times; an escape is one character */
    struct kiln_grammar *g =
        compile(KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"string\",\"maxLength\":300}");
    const struct {
        const char *unit;
        int n;
        bool valid;
    } runs[] = {{"a", 300, true},       {"a", 301, false},        {"\\n", 300, true},
                {"\\u00e9", 300, true}, {"\xc3\xa9", 301, false}, {"\\ud83d\\ude00", 300, true},
                {"\\ud83d", 1, false}};
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        char *s = quoted_run(runs[i].unit, runs[i].n);
        if (feed_bytes(g, s) != runs[i].valid)
            fail_msg("maxLength 300: %d x '%s' should be %s", runs[i].n, runs[i].unit,
                     runs[i].valid ? "accepted" : "rejected");
        free(s);
    }
    kiln_grammar_unref(g);
    /* long counts go in blocks of 64 rules, recursively: every count from min to max, no other */
    const struct {
        const char *schema;
        int lo, hi; /* the lengths accepted */
    } counts[] = {{"{\"type\":\"string\",\"maxLength\":4100}", 0, 4100},
                  {"{\"type\":\"string\",\"minLength\":130,\"maxLength\":200}", 130, 200},
                  {"{\"type\":\"string\",\"minLength\":4097}", 4097, 9000},
                  {"{\"type\":\"string\",\"maxLength\":2147483647}", 0, 9000}};
    const int lens[] = {0,   1,   63,  64,   65,   127,  128,  129,  130,  131,
                        199, 200, 201, 4095, 4096, 4097, 4099, 4100, 4101, 9000};
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
        g = compile(KILN_CONSTRAINT_JSON_SCHEMA, counts[i].schema);
        for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
            char *q = quoted_run(k % 2 ? "\\u00e9" : "b", lens[k]);
            bool want = lens[k] >= counts[i].lo && lens[k] <= counts[i].hi;
            if (feed_bytes(g, q) != want)
                fail_msg("%s: length %d should be %s", counts[i].schema, lens[k],
                         want ? "accepted" : "rejected");
            free(q);
        }
        kiln_grammar_unref(g);
    }
    /* regex {n,m} over a large class: the same */
    g = compile(KILN_CONSTRAINT_REGEX, "[^x]{2,400}");
    char *s = malloc(402);
    memset(s, 'a', 400);
    s[400] = 0;
    assert_true(feed_bytes(g, s));
    s[2] = 0;
    assert_true(feed(g, s));
    s[1] = 0;
    assert_false(feed(g, s));
    memset(s, 'a', 401);
    s[401] = 0;
    assert_false(feed_bytes(g, s));
    free(s);
    kiln_grammar_unref(g);
    /* a class that is not every character: its escapes are its own, not the shared ones */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"string\",\"pattern\":\"^[^x]+$\"}",
                (struct cas[]){{"\"y\\u0079\\n\\u00e9\"", true},
                               {"\"\\u0078\"", false},
                               {"\"\\u0058\\ud83d\\ude00\"", true},
                               {NULL, false}});
    /* equal sub-schemas share a rule; different ones do not, nor do objects whose properties
     * are the same in another order (MaskBench's Github_hard---o7313) */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"type\":\"object\",\"properties\":{"
                "\"p\":{\"type\":\"object\",\"properties\":{\"x\":{},\"y\":{}}},"
                "\"q\":{\"type\":\"object\",\"properties\":{\"y\":{},\"x\":{}}},"
                "\"a\":{\"type\":\"string\",\"maxLength\":2},"
                "\"b\":{\"type\":\"string\",\"maxLength\":2},"
                "\"c\":{\"type\":\"string\",\"maxLength\":3},"
                "\"d\":{\"type\":\"array\",\"items\":{\"type\":\"string\",\"maxLength\":2}}},"
                "\"additionalProperties\":false}",
                (struct cas[]){{"{\"a\":\"xy\",\"b\":\"xy\",\"c\":\"xyz\"}", true},
                               {"{\"a\":\"xyz\"}", false},
                               {"{\"b\":\"xyz\"}", false},
                               {"{\"c\":\"xyz\"}", true},
                               {"{\"c\":\"wxyz\"}", false},
                               {"{\"d\":[\"xy\",\"z\"]}", true},
                               {"{\"d\":[\"xyz\"]}", false},
                               {"{\"p\":{\"x\":1,\"y\":2},\"q\":{\"y\":1,\"x\":2}}", true},
                               {"{\"q\":{\"x\":1,\"y\":2}}", false},
                               {NULL, false}});
    /* the keys of additional properties beside named ones: any spelling of another name, the
     * escapes a key needs (control characters, non-ASCII), never a named one in disguise */
    const char *addl = "{\"type\":\"object\",\"properties\":{\"ab\":{\"type\":\"integer\"},"
                       "\"a/c\":{\"type\":\"integer\"}},\"additionalProperties\":{\"type\":"
                       "\"string\"}}";
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA, addl,
                (struct cas[]){{"{\"ab\":1,\"a/c\":2,\"x\":\"y\"}", true},
                               {"{\"a\":\"y\"}", true},
                               {"{\"abc\":\"y\"}", true},
                               {"{\"a\\/\":\"y\"}", false}, /* a/ escaped: refused */
                               {"{\"a/\":\"y\"}", true},
                               {"{\"a/c\":\"y\"}", false},
                               {"{\"ab\":\"y\"}", false},
                               {"{\"a\\u0001\":\"y\"}", true},
                               {"{\"\\n\\t\\\\\\\"\":\"y\"}", true},
                               {"{\"\xc3\xa9\\u00e9\\ud83d\\ude00\":\"y\"}", true},
                               {"{\"\\ud83d\":\"y\"}", false},
                               {"{\"a\\u0062\":\"y\"}", false}, /* ab spelled with an escape */
                               {NULL, false}});
    g = compile(KILN_CONSTRAINT_JSON_SCHEMA, addl);
    const char *prefixes[] = {"{\"a", "{\"a/", "{\"x\\", "{\"\\ud83d"};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) brute_check(g, prefixes[i]);
    kiln_grammar_unref(g);
    g = compile(KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"string\",\"maxLength\":300}");
    brute_check(g, "\"ab\\u00");
    kiln_grammar_unref(g);
}

/* minProperties / maxProperties: the members are counted, named and additional alike */
static void test_schema_property_counts(void **state)
{
    (void)state;
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{"
                "\"type\":\"integer\"}},\"additionalProperties\":false,\"minProperties\":1}",
                (struct cas[]){{"{}", false},
                               {"{\"a\":1}", true},
                               {"{\"b\":1}", true},
                               {"{\"a\":1,\"b\":2}", true},
                               {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}},"
                "\"additionalProperties\":{\"type\":\"integer\"},\"minProperties\":2,"
                "\"maxProperties\":3}",
                (struct cas[]){{"{\"a\":1}", false},
                               {"{\"x\":1}", false},
                               {"{\"a\":1,\"x\":2}", true},
                               {"{\"x\":1,\"y\":2}", true},
                               {"{\"a\":1,\"x\":2,\"y\":3}", true},
                               {"{\"a\":1,\"x\":2,\"y\":3,\"z\":4}", false},
                               {"{\"w\":1,\"x\":2,\"y\":3,\"z\":4}", false},
                               {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"type\":\"object\",\"properties\":{\"a\":{},\"b\":{},\"c\":{}},"
                "\"maxProperties\":1}",
                (struct cas[]){{"{}", true},
                               {"{\"b\":1}", true},
                               {"{\"x\":1}", true},
                               {"{\"a\":1,\"c\":1}", false},
                               {"{\"a\":1,\"x\":1}", false},
                               {NULL, false}});
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA,
                 "{\"type\":\"object\",\"required\":[\"a\"],\"maxProperties\":0}",
                 "the constraint accepts no output at all");
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"allOf\":[{\"type\":\"object\",\"minProperties\":1},{\"minProperties\":2}]}",
                (struct cas[]){{"{\"x\":1}", false}, {"{\"x\":1,\"y\":2}", true}, {NULL, false}});
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA, "{\"type\":\"object\",\"minProperties\":65}",
                 "'minProperties'");
    expect_error(KILN_CONSTRAINT_JSON_SCHEMA, "{\"enum\":[{}],\"minProperties\":1}",
                 "'minProperties'");
}

/* Properties merged from allOf / $ref / anyOf members come in the order the schema writes them
 * (kiln takes properties in schema order; MaskBench's valid instances follow the text) */
static void test_schema_merge_order(void **state)
{
    (void)state;
    /* properties written before allOf: first (Github_hard---o73917) */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"definitions\":{\"base\":{\"type\":\"object\",\"properties\":{\"level\":{"
                "\"type\":\"string\"}}}},\"type\":\"object\",\"properties\":{\"spacing\":{"
                "\"type\":\"integer\"}},\"allOf\":[{\"$ref\":\"#/definitions/base\"}]}",
                (struct cas[]){{"{\"spacing\":1,\"level\":\"x\"}", true},
                               {"{\"level\":\"x\",\"spacing\":1}", false},
                               {NULL, false}});
    /* allOf members in order, a oneOf member before a properties member
     * (Github_trivial---o64859) */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"allOf\":[{\"oneOf\":[{\"properties\":{\"state\":{\"const\":\"a\"}},"
                "\"required\":[\"state\"]},{\"properties\":{\"state\":{\"const\":\"b\"},\"n\":{"
                "\"type\":\"integer\"}},\"required\":[\"state\"]}],\"type\":\"object\"},{"
                "\"properties\":{\"id\":{\"type\":\"integer\"}},\"required\":[\"id\"],\"type\":"
                "\"object\"}],\"type\":\"object\"}",
                (struct cas[]){{"{\"state\":\"b\",\"n\":2,\"id\":1}", true},
                               {"{\"state\":\"a\",\"id\":1}", true},
                               {"{\"id\":1,\"state\":\"a\"}", false},
                               {NULL, false}});
    /* an alternative written before the sibling properties brings its properties first, even
     * when the siblings list them all (Github_easy---o10011's instances, never reordered by
     * MaskBench, do not follow this: a validation error by the documented rule) */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"additionalProperties\":false,\"oneOf\":[{\"properties\":{\"g\":{\"const\":"
                "\"a\"},\"r\":{\"const\":\"c\"}},\"required\":[\"g\"]},{\"properties\":{\"g\":{"
                "\"const\":\"b\"},\"r\":{\"const\":\"t\"}},\"required\":[\"g\"]}],\"properties\":{"
                "\"g\":{\"type\":\"string\"},\"u\":{\"type\":\"integer\"},\"r\":{\"type\":"
                "\"string\"}},\"type\":\"object\"}",
                (struct cas[]){{"{\"g\":\"a\",\"r\":\"c\",\"u\":1}", true},
                               {"{\"g\":\"b\",\"r\":\"c\",\"u\":1}", false},
                               {"{\"g\":\"a\",\"u\":1,\"r\":\"c\"}", false},
                               {NULL, false}});
    /* an anyOf among allOf members: its alternative's properties where the anyOf stands
     * (Github_medium---o60846) */
    check_cases(
        KILN_CONSTRAINT_JSON_SCHEMA,
        "{\"allOf\":[{\"properties\":{\"m\":{},\"b\":{}}},{\"anyOf\":[{\"properties\":{"
        "\"d\":{\"type\":\"object\"}},\"required\":[\"d\"]},{\"properties\":{\"e\":{"
        "\"type\":\"string\"}},\"required\":[\"e\"]}]},{\"properties\":{\"p\":{},\"q\":{}}}]}",
        (struct cas[]){{"{\"m\":1,\"b\":1,\"d\":{},\"p\":1,\"q\":1}", true},
                       {"{\"m\":1,\"e\":\"x\",\"q\":1}", true},
                       {"{\"m\":1,\"p\":1,\"d\":{}}", false},
                       {"{\"q\":1,\"e\":\"x\"}", false},
                       {NULL, false}});
    /* $ref and allOf in the order written: allOf first when it comes first */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"$defs\":{\"r\":{\"properties\":{\"x\":{}}}},\"allOf\":[{\"properties\":{"
                "\"a\":{}}}],\"$ref\":\"#/$defs/r\",\"properties\":{\"z\":{}}}",
                (struct cas[]){{"{\"a\":1,\"x\":1,\"z\":1}", true},
                               {"{\"x\":1,\"a\":1}", false},
                               {"{\"z\":1,\"x\":1}", false},
                               {NULL, false}});
    /* required names not in properties: after them, in required's order; properties and
     * required merge separately, properties' order first */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"properties\":{\"a\":{}},\"required\":[\"z\",\"y\",\"a\"]}",
                (struct cas[]){{"{\"a\":1,\"z\":1,\"y\":1}", true},
                               {"{\"z\":1,\"a\":1,\"y\":1}", false},
                               {"{\"a\":1,\"y\":1,\"z\":1}", false},
                               {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"allOf\":[{\"required\":[\"b\",\"c\"]},{\"properties\":{\"a\":{},\"b\":{}}},{"
                "\"properties\":{\"c\":{},\"a\":{}},\"required\":[\"a\"]}]}",
                (struct cas[]){{"{\"a\":1,\"b\":1,\"c\":1}", true},
                               {"{\"b\":1,\"a\":1,\"c\":1}", false},
                               {"{\"c\":1,\"a\":1,\"b\":1}", false},
                               {NULL, false}});
    /* each member's additionalProperties constrains the properties the other members list */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"allOf\":[{\"properties\":{\"a\":{}},\"additionalProperties\":false},{"
                "\"properties\":{\"b\":{}}}]}",
                (struct cas[]){{"{\"a\":1}", true}, {"{\"b\":1}", false}, {NULL, false}});
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"allOf\":[{\"properties\":{\"b\":{}}},{\"properties\":{\"a\":{}},"
                "\"additionalProperties\":{\"type\":\"integer\"}}]}",
                (struct cas[]){{"{\"b\":1,\"a\":\"x\",\"c\":2}", true},
                               {"{\"b\":\"x\"}", false},
                               {"{\"c\":\"x\"}", false},
                               {NULL, false}});
    /* one anyOf reached twice (two $refs to it) takes one member: compiles (the cross
     * products would put an enum beside a minimum) and keeps both */
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA,
                "{\"$defs\":{\"r\":{\"oneOf\":[{\"type\":\"integer\",\"minimum\":0},{\"type\":"
                "\"string\",\"enum\":[\"off\"]}]}},\"allOf\":[{\"$ref\":\"#/$defs/r\"},{\"$ref\":"
                "\"#/$defs/r\",\"description\":\"again\"}]}",
                (struct cas[]){{"1", true}, {"\"off\"", true}, {"-1", false}, {NULL, false}});
}

/* Draft 4 to 7 ignore the keywords beside a $ref (MaskBench's Github_hard---o13693: a
 * `required` beside a $ref, instances without the property are valid); later drafts and
 * schemas that name none apply them. */
static void test_schema_ref_siblings(void **state)
{
    (void)state;
    const char *body = "\"type\":\"object\",\"properties\":{\"w\":{\"$ref\":\"#/definitions/w\","
                       "\"required\":[\"c\"]}},\"definitions\":{\"w\":{\"type\":\"object\","
                       "\"properties\":{\"a\":{\"type\":\"integer\"}}}}}";
    char text[1024];
    snprintf(text, sizeof text, "{\"$schema\":\"http://json-schema.org/draft-07/schema#\",%s",
             body);
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA, text,
                (struct cas[]){{"{\"w\":{\"a\":1}}", true},
                               {"{\"w\":{\"a\":\"x\"}}", false},
                               {"{\"w\":{\"a\":1,\"c\":2}}", true},
                               {NULL, false}});
    snprintf(text, sizeof text, "{\"$schema\":\"http://json-schema.org/draft-04/schema\",%s", body);
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA, text,
                (struct cas[]){{"{\"w\":{\"a\":1}}", true}, {NULL, false}});
    snprintf(text, sizeof text, "{%s", body);
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA, text,
                (struct cas[]){{"{\"w\":{\"a\":1}}", false},
                               {"{\"w\":{\"a\":1,\"c\":2}}", true},
                               {NULL, false}});
    snprintf(text, sizeof text, "{\"$schema\":\"https://json-schema.org/draft/2020-12/schema\",%s",
             body);
    check_cases(KILN_CONSTRAINT_JSON_SCHEMA, text,
                (struct cas[]){{"{\"w\":{\"a\":1}}", false}, {NULL, false}});
}

static double cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* compiles text; the status, and the thread CPU time it took in *ms */
static enum kiln_status timed_compile(enum kiln_constraint_kind kind, const char *text, double *ms,
                                      char *msg, size_t cap)
{
    struct kiln_constraint_spec spec = {kind, text, strlen(text)};
    struct kiln_grammar *g = NULL;
    struct kiln_error err = {0};
    double t0 = cpu_ms();
    enum kiln_status st = kiln_grammar_compile(&spec, vocab, &g, &err);
    *ms = cpu_ms() - t0;
    kiln_grammar_unref(g);
    snprintf(msg, cap, "%s", err.msg);
    return st;
}

/* A string of the given unit repeated n times, then tail (caller frees) */
static char *repeat(const char *unit, int n, const char *tail)
{
    size_t u = strlen(unit), t = strlen(tail);
    char *s = malloc(u * (size_t)n + t + 1);
    for (int i = 0; i < n; i++) memcpy(s + u * (size_t)i, unit, u);
    memcpy(s + u * (size_t)n, tail, t + 1);
    return s;
}

/* A ?, * or + of a ?, * or + is one quantifier of the same language (build.c, gx_rep): the
 * languages of nested quantifiers, then the masks of a deeply nested regex (a fuzz_regex find,
 * 25 s under the fuzz build's sanitizers): its 9 tokens took 1,369 ms here (-O2) without the
 * collapse, 14 ms with it. */
static void test_nested_quantifiers(void **state)
{
    (void)state;
    static const struct {
        const char *re, *yes[3], *no[2];
    } cases[] = {
        {"(a?)+b", {"b", "ab", "aaab"}, {"", "ba"}},
        {"(a+)?b", {"b", "ab", "aaab"}, {"a", "bb"}},
        {"(a*)+b", {"b", "ab", "aab"}, {"", "abb"}},
        {"(a?)?b", {"b", "ab", NULL}, {"aab", ""}},
        {"((a+)+)+b", {"ab", "aaaab", NULL}, {"b", "a"}},
        {"(a?){2}b", {"b", "ab", "aab"}, {"aaab", ""}}, /* {2} is not simple: kept */
        {"((a+)?)+b", {"b", "ab", "aaab"}, {"ba", "a"}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct kiln_grammar *g = compile(KILN_CONSTRAINT_REGEX, cases[i].re);
        for (int k = 0; k < 3 && cases[i].yes[k]; k++)
            if (!feed_check(g, cases[i].yes[k], true))
                fail_msg("%s refused %s", cases[i].re, cases[i].yes[k]);
        for (int k = 0; k < 2; k++)
            if (feed_check(g, cases[i].no[k], false))
                fail_msg("%s accepted \"%s\"", cases[i].re, cases[i].no[k]);
        kiln_grammar_unref(g);
    }
    struct kiln_grammar *g =
        compile(KILN_CONSTRAINT_REGEX,
                "\\u00e9++++.+++++++++++++++#+++e9++++++++++++++++++++#++++*++.+?x{2,}");
    double t0 = cpu_ms();
    bool ok = feed_check(g, "\xc3\xa9z#e9#zxx", false);
    double ms = cpu_ms() - t0;
    assert_true(ok);
    if (ms > 500) fail_msg("masks of the nested regex took %.1f ms", ms);
    kiln_grammar_unref(g);
}

/* The compile budget: constraints built to be expensive are accepted or refused within a
 * bounded CPU time (the limits are loose enough for the sanitizer build and a loaded machine:
 * without the budget each takes seconds to minutes). */
static void test_compile_budget(void **state)
{
    (void)state;
    double ms;
    char msg[256];
    /* nested unbounded repetitions: each level doubled the automaton (2^34 states; 38 s
     * under the fuzz build before the refusal); the repeated body is a rule now */
    assert_int_equal(timed_compile(KILN_CONSTRAINT_REGEX,
                                   "\\u00e9++++++++++++++++++++++++++++++++++", &ms, msg,
                                   sizeof msg),
                     KILN_OK);
    assert_true(ms < 1000);
    assert_int_equal(
        timed_compile(KILN_CONSTRAINT_REGEX, "((a{0,50}){0,50}){0,50}", &ms, msg, sizeof msg),
        KILN_OK);
    assert_true(ms < 1000);
    /* over the state budget: refused from the estimate, before anything is built */
    char *re = repeat("([a-z]{1000})", 1100, "");
    assert_int_equal(timed_compile(KILN_CONSTRAINT_REGEX, re, &ms, msg, sizeof msg),
                     KILN_ERR_LIMIT);
    assert_non_null(strstr(msg, "too large"));
    if (ms > 50) fail_msg("refusing 1.1M estimated states took %.1f ms", ms);
    free(re);
    /* nested bounded repetitions: counted in blocks of rules (unrolled, 1.6M states) */
    re = repeat("((((a{1,10000}){1,10000}){1,10000}){1,10000})b", 40, "");
    assert_int_equal(timed_compile(KILN_CONSTRAINT_REGEX, re, &ms, msg, sizeof msg), KILN_OK);
    if (ms > 1000) fail_msg("nested bounded repetitions took %.1f ms", ms);
    free(re);
    /* joins that double per level (each allOf member $refs the next level twice): the joins'
     * step budget, refused well before 2^30 merges */
    char *doubling = malloc(64 * 40 + 64), *at = doubling;
    at += sprintf(at, "{\"$defs\":{");
    for (int l = 0; l < 30; l++)
        at += sprintf(
            at, "%s\"l%d\":{\"allOf\":[{\"$ref\":\"#/$defs/l%d\"},{\"$ref\":\"#/$defs/l%d\"}]}",
            l ? "," : "", l, l + 1, l + 1);
    at += sprintf(
        at, ",\"l30\":{\"type\":\"object\",\"properties\":{\"a\":{}}}},\"$ref\":\"#/$defs/l0\"}");
    assert_int_equal(timed_compile(KILN_CONSTRAINT_JSON_SCHEMA, doubling, &ms, msg, sizeof msg),
                     KILN_ERR_LIMIT);
    assert_non_null(strstr(msg, "joins over"));
    if (ms > 1000) fail_msg("refusing doubling joins took %.1f ms", ms);
    free(doubling);
    /* quadratic epsilon closures (each optional reaches every later one): the step budget */
    re = repeat("a?", 60000, "");
    assert_int_equal(timed_compile(KILN_CONSTRAINT_REGEX, re, &ms, msg, sizeof msg),
                     KILN_ERR_LIMIT);
    assert_non_null(strstr(msg, "too large"));
    if (ms > 1500) fail_msg("refusing a?{60000} took %.1f ms", ms);
    free(re);
    /* a grammar of 40,000 rules, each calling the next at a nullable prefix: names are
     * looked up in a hash, nullable rules found in few passes */
    size_t cap = 40 * 40001, n = 0;
    char *gr = malloc(cap);
    n += (size_t)snprintf(gr + n, cap - n, "root ::= r0 \"x\"\n");
    for (int i = 0; i < 40000; i++)
        n += (size_t)snprintf(gr + n, cap - n, "r%d ::= r%d? \"a\"?\n", i, i + 1);
    snprintf(gr + n, cap - n, "r40000 ::= \"b\"?\n");
    assert_int_equal(timed_compile(KILN_CONSTRAINT_GRAMMAR, gr, &ms, msg, sizeof msg), KILN_OK);
    if (ms > 2000) fail_msg("a grammar of 40,000 rules took %.1f ms", ms);
    free(gr);
}

static void test_rollback_forced_eos(void **state)
{
    (void)state;
    struct kiln_grammar *g = compile(KILN_CONSTRAINT_JSON_SCHEMA,
                                     "{\"type\":\"object\",\"properties\":{\"answer\":{\"enum\":["
                                     "\"yes\",\"no\"]}},\"required\":[\"answer\"],"
                                     "\"additionalProperties\":false}");
    struct kiln_matcher *m;
    struct kiln_error err = {0};
    assert_int_equal(kiln_matcher_create(g, &m, &err), KILN_OK);
    int32_t forced[64];
    int nf = kiln_matcher_forced(m, forced, 64);
    assert_true(nf > 0);
    char *text;
    size_t len;
    assert_int_equal(kiln_tokenizer_decode(tok, forced, (size_t)nf, false, &text, &len, &err),
                     KILN_OK);
    /* the forced prefix is the start of {"answer":" and no more */
    assert_true(len > 0 && len <= strlen("{\"answer\":\""));
    assert_memory_equal(text, "{\"answer\":\"", len);
    free(text);
    for (int i = 0; i < nf; i++) assert_true(kiln_matcher_accept(m, forced[i]));
    assert_false(kiln_matcher_is_complete(m));
    assert_false(kiln_matcher_accept(m, 128009)); /* EOS before complete */
    kiln_matcher_rollback(m, nf);
    assert_false(kiln_matcher_is_complete(m));
    assert_true(kiln_matcher_accept_bytes(m, "{\"answer\":\"no\"}", 15));
    assert_true(kiln_matcher_is_complete(m));
    assert_true(kiln_matcher_is_finished(m));
    int32_t bos = kiln_tokenizer_bos(tok);
    assert_false(kiln_matcher_accept(m, bos)); /* special, never inside */
    assert_true(kiln_matcher_accept(m, 128009));
    assert_true(kiln_matcher_is_terminated(m));
    assert_false(kiln_matcher_accept(m, 128009));
    kiln_matcher_rollback(m, 1);
    assert_true(kiln_matcher_is_complete(m));
    kiln_matcher_rollback(m, 1);
    assert_false(kiln_matcher_is_complete(m));
    kiln_matcher_free(m);
    kiln_grammar_unref(g);
}

static void test_cache(void **state)
{
    (void)state;
    struct kiln_grammar_cache *c = kiln_grammar_cache_create(vocab, 2);
    struct kiln_constraint_spec a = {KILN_CONSTRAINT_REGEX, "a+", 2},
                                b = {KILN_CONSTRAINT_REGEX, "b+", 2};
    struct kiln_grammar *g1, *g2, *g3;
    struct kiln_error err = {0};
    assert_int_equal(kiln_grammar_cache_get(c, &a, &g1, &err), KILN_OK);
    assert_int_equal(kiln_grammar_cache_get(c, &a, &g2, &err), KILN_OK);
    assert_ptr_equal(g1, g2);
    assert_int_equal(kiln_grammar_cache_get(c, &b, &g3, &err), KILN_OK);
    assert_ptr_not_equal(g1, g3);
    kiln_grammar_unref(g1);
    kiln_grammar_unref(g2);
    kiln_grammar_unref(g3);
    kiln_grammar_cache_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schema_basic),
        cmocka_unit_test(test_schema_types),
        cmocka_unit_test(test_schema_strings),
        cmocka_unit_test(test_schema_string_intersections),
        cmocka_unit_test(test_schema_enum_beside),
        cmocka_unit_test(test_schema_numbers),
        cmocka_unit_test(test_schema_number_fractions),
        cmocka_unit_test(test_schema_multiple_of),
        cmocka_unit_test(test_schema_arrays),
        cmocka_unit_test(test_schema_combinators),
        cmocka_unit_test(test_oneof_exclusive),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_schema_pattern_properties),
        cmocka_unit_test(test_regex_choice_grammar),
        cmocka_unit_test(test_whitespace_flexible),
        cmocka_unit_test(test_whitespace_indent),
        cmocka_unit_test(test_mask_exact),
        cmocka_unit_test(test_schema_shared_rules),
        cmocka_unit_test(test_schema_ref_siblings),
        cmocka_unit_test(test_schema_merge_order),
        cmocka_unit_test(test_schema_property_counts),
        cmocka_unit_test(test_compile_budget),
        cmocka_unit_test(test_nested_quantifiers),
        cmocka_unit_test(test_mask_exact_plain),
        cmocka_unit_test(test_mask_exact_chain),
        cmocka_unit_test(test_mask_exact_long_instance),
        cmocka_unit_test(test_mask_exact_skipped_subtrees),
        cmocka_unit_test(test_mask_exact_class_frames),
        cmocka_unit_test(test_class_frames_past_the_cache),
        cmocka_unit_test(test_rollback_forced_eos),
        cmocka_unit_test(test_cache),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
