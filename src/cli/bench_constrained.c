/* kiln bench --json-schema: decode under a JSON Schema constraint, for the latency benchmark's
 * batch-1 and batched decode points (bench_latency.c). Each sequence carries a matcher, as in the
 * engine: after a step's forward is launched the masks of its rows are filled (on the GPU this
 * overlaps the forward), the backend samples with them, the matchers accept the tokens, and the
 * sampled tokens are the next step's inputs. A matcher whose value is complete starts a new one,
 * so every timed step decodes a constrained token (no forced-token shortcut: the figure is the
 * per-token cost of a mask). Never used by the server. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core/file.h"
#include "core/log.h"
#include "grammar/grammar.h"

/* An object like the ones applications ask for, with nesting, an array, a format and a pattern;
 * no bounds, so the model decides when each value ends. */
static const char builtin_schema[] =
    "{\"type\":\"object\",\"properties\":{"
    "\"id\":{\"type\":\"integer\"},"
    "\"name\":{\"type\":\"string\"},"
    "\"email\":{\"type\":\"string\",\"format\":\"email\"},"
    "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}},"
    "\"address\":{\"type\":\"object\",\"properties\":{\"street\":{\"type\":\"string\"},"
    "\"city\":{\"type\":\"string\"},\"zip\":{\"type\":\"string\",\"pattern\":\"^[0-9]{5}$\"}},"
    "\"required\":[\"street\",\"city\",\"zip\"],\"additionalProperties\":false},"
    "\"score\":{\"type\":\"number\",\"minimum\":0,\"maximum\":100},"
    "\"active\":{\"type\":\"boolean\"}},"
    "\"required\":[\"id\",\"name\",\"email\",\"tags\",\"address\",\"score\",\"active\"],"
    "\"additionalProperties\":false}";

/* The same kind of object with every value bounded (a string's maxLength, an integer range, an
 * enum, a maxItems): on a random model, whose strings never close by themselves, the values
 * still end, so the timed steps go through keys, separators, numbers and string ends, where the
 * masks cost the most, and not only through one long string. */
static const char bounded_schema[] =
    "{\"type\":\"object\",\"properties\":{"
    "\"id\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":99999},"
    "\"name\":{\"type\":\"string\",\"maxLength\":12},"
    "\"kind\":{\"enum\":[\"person\",\"company\",\"place\"]},"
    "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\",\"maxLength\":8},"
    "\"maxItems\":3},"
    "\"zip\":{\"type\":\"string\",\"pattern\":\"^[0-9]{5}$\"},"
    "\"active\":{\"type\":\"boolean\"}},"
    "\"required\":[\"id\",\"name\",\"kind\",\"tags\",\"zip\",\"active\"],"
    "\"additionalProperties\":false}";

struct bench_grammar {
    struct kiln_tokenizer *tok;
    struct kiln_grammar_vocab *vocab;
    struct kiln_grammar *g;
    struct kiln_matcher **m; /* (n,) */
    uint32_t *masks;         /* (n, words) */
    int n, words;
    int32_t eos[8];
    int n_eos;
    /* since the last bench_grammar_reset */
    double mask_s;
    long n_masks, n_values;
};

void bench_grammar_free(struct bench_grammar *b)
{
    if (!b) return;
    for (int i = 0; b->m && i < b->n; i++)
        if (b->m[i]) kiln_matcher_free(b->m[i]);
    free(b->m);
    free(b->masks);
    if (b->g) kiln_grammar_unref(b->g);
    if (b->vocab) kiln_grammar_vocab_free(b->vocab);
    if (b->tok) kiln_tokenizer_free(b->tok);
    free(b);
}

enum kiln_status bench_grammar_create(const char *schema, const char *tok_dir, int n, int vocab,
                                      struct bench_grammar **out, struct kiln_error *err)
{
    *out = NULL;
    struct bench_grammar *b = calloc(1, sizeof *b);
    if (!b) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    char *text = NULL;
    size_t len = 0;
    enum kiln_status st = KILN_OK;
    const char *named = !strcmp(schema, "builtin")   ? builtin_schema
                        : !strcmp(schema, "bounded") ? bounded_schema
                                                     : NULL;
    if (named) {
        len = strlen(named);
        text = malloc(len + 1);
        if (text)
            memcpy(text, named, len + 1);
        else
            st = kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    } else {
        st = kiln_file_read(schema, 16u << 20, &text, &len, err);
    }
    if (!st && (st = kiln_tokenizer_load(tok_dir, &b->tok, err)))
        kiln_error_prefix(err, "tokenizer (%s)", tok_dir);
    double t0 = kiln_now();
    if (!st) st = kiln_grammar_vocab_create(b->tok, &b->vocab, err);
    double t1 = kiln_now();
    struct kiln_constraint_spec spec = {
        .kind = KILN_CONSTRAINT_JSON_SCHEMA, .text = text, .len = len};
    if (!st && (st = kiln_grammar_compile(&spec, b->vocab, &b->g, err)))
        kiln_error_prefix(err, "--json-schema %s", schema);
    free(text);
    if (st) {
        bench_grammar_free(b);
        return st;
    }
    printf("json schema %s: vocabulary indexed in %.1f ms, compiled in %.2f ms\n", schema,
           (t1 - t0) * 1e3, (kiln_now() - t1) * 1e3);
    int gv = kiln_grammar_vocab_size(b->vocab);
    b->n = n;
    b->words = ((gv > vocab ? gv : vocab) + 31) / 32;
    b->m = calloc((size_t)n, sizeof *b->m);
    b->masks = calloc((size_t)n * b->words, sizeof *b->masks);
    if (!b->m || !b->masks) {
        bench_grammar_free(b);
        return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory for %d masks", n);
    }
    const int32_t *eos;
    int ne = kiln_tokenizer_eos(b->tok, &eos);
    for (int i = 0; i < ne && b->n_eos < 8; i++) b->eos[b->n_eos++] = eos[i];
    *out = b;
    return KILN_OK;
}

/* Fresh matchers for rows 0..n and zeroed counters. */
enum kiln_status bench_grammar_reset(struct bench_grammar *b, struct kiln_error *err)
{
    for (int i = 0; i < b->n; i++) {
        if (b->m[i]) kiln_matcher_free(b->m[i]);
        b->m[i] = NULL;
        enum kiln_status st = kiln_matcher_create(b->g, &b->m[i], err);
        if (st) return st;
    }
    b->mask_s = 0;
    b->n_masks = b->n_values = 0;
    return KILN_OK;
}

void bench_grammar_masks(struct bench_grammar *b, struct kiln_sampling *sp, int n)
{
    double t0 = kiln_now();
    for (int i = 0; i < n; i++) {
        uint32_t *mask = b->masks + (size_t)i * b->words;
        kiln_matcher_fill_mask(b->m[i], mask);
        sp[i].mask = mask;
    }
    b->mask_s += kiln_now() - t0;
    b->n_masks += n;
}

/* Accepts row i's token; a complete value (or an eos) starts a new matcher. */
enum kiln_status bench_grammar_accept(struct bench_grammar *b, const struct kiln_sample_out *so,
                                      int n, struct kiln_error *err)
{
    for (int i = 0; i < n; i++) {
        int32_t t = so[i].token;
        if (!kiln_matcher_accept(b->m[i], t))
            return kiln_errorf(err, KILN_ERR_INTERNAL,
                               "row %d: the sampler drew token %d, which the mask did not allow", i,
                               t);
        bool eos = false;
        for (int k = 0; k < b->n_eos; k++) eos |= b->eos[k] == t;
        if (eos || kiln_matcher_is_complete(b->m[i])) {
            b->n_values++;
            kiln_matcher_free(b->m[i]);
            b->m[i] = NULL;
            enum kiln_status st = kiln_matcher_create(b->g, &b->m[i], err);
            if (st) return st;
        }
    }
    return KILN_OK;
}

double bench_grammar_mask_us(const struct bench_grammar *b)
{
    return b->n_masks ? b->mask_s / (double)b->n_masks * 1e6 : 0;
}

long bench_grammar_values(const struct bench_grammar *b)
{
    return b->n_values;
}
