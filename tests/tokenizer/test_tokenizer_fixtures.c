/* Exactness against Hugging Face: every corpus string encodes to the ids `tokenizers` 0.23
 * produced (tests/fixtures/tokenizer/expected, made by tools/tokenizer/make_fixtures.py),
 * decodes to the text it decoded, with and without special tokens; random id lists (special
 * tokens, byte tokens, cut UTF-8) decode the same; the streaming detokenizer gives the one-shot
 * text and never emits a split UTF-8 character. One test per tokenizer package. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tk_util.h"

static struct tk_text *corpus;
static size_t corpus_n;

static int setup(void **state)
{
    (void)state;
    corpus = tk_test_corpus(&corpus_n);
    return corpus_n >= 5000 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    tk_test_free_corpus(corpus, corpus_n);
    return 0;
}

static bool ids_equal(json_t *want, const int32_t *ids, size_t n)
{
    if (!json_is_array(want) || json_array_size(want) != n) return false;
    for (size_t i = 0; i < n; i++)
        if (json_integer_value(json_array_get(want, i)) != ids[i]) return false;
    return true;
}

static int32_t *json_ids(json_t *arr, size_t *n)
{
    *n = json_array_size(arr);
    int32_t *ids = malloc((*n + 1) * sizeof *ids);
    for (size_t i = 0; i < *n; i++) ids[i] = (int32_t)json_integer_value(json_array_get(arr, i));
    return ids;
}

static void show_ids(const char *what, const int32_t *ids, size_t n)
{
    fprintf(stderr, "    %s:", what);
    for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, "%s\n", n > 40 ? " ..." : "");
}

static bool valid_utf8(const char *s, size_t n)
{
    struct tk_text t = {(char *)s, n};
    struct tk_text r = tk_test_replaced(&t);
    bool ok = r.n == n && !memcmp(r.p, s, n);
    free(r.p);
    return ok;
}

/* One-shot decode compared with HF; streaming compared with one-shot. Returns mismatches. */
static int check_decode(const struct kiln_tokenizer *tok, const int32_t *ids, size_t n, bool skip,
                        const char *want, size_t want_len, const char *what, size_t line)
{
    char *text;
    size_t len;
    struct kiln_error err = {0};
    if (kiln_tokenizer_decode(tok, ids, n, skip, &text, &len, &err))
        fail_msg("%s line %zu: decode: %s", what, line, err.msg);
    int bad = 0;
    if (len != want_len || memcmp(text, want, len) != 0) {
        if (bad++ == 0)
            fprintf(stderr, "  %s line %zu (skip=%d): decode gives \"%.80s\", HF \"%.80s\"\n", what,
                    line, skip, text, want);
    }
    struct kiln_detok *d = kiln_detok_create(tok, skip);
    assert_non_null(d);
    char *acc = NULL;
    size_t acc_len = 0;
    for (size_t i = 0; i < n; i++) {
        char *delta = NULL;
        size_t dl = 0;
        if (kiln_detok_push(d, ids[i], &delta, &dl, &err)) fail_msg("detok: %s", err.msg);
        if (!valid_utf8(delta, dl)) {
            fprintf(stderr, "  %s line %zu: streaming delta %zu is not valid UTF-8\n", what, line,
                    i);
            bad++;
        }
        acc = realloc(acc, acc_len + dl + 1);
        memcpy(acc + acc_len, delta, dl);
        acc_len += dl;
        free(delta);
    }
    if (kiln_detok_flush(d, &acc, &acc_len, &err)) fail_msg("detok flush: %s", err.msg);
    if (acc_len != len || memcmp(acc, text, len) != 0) {
        fprintf(stderr, "  %s line %zu: streaming gives \"%.80s\", one-shot \"%.80s\"\n", what,
                line, acc ? acc : "", text);
        bad++;
    }
    kiln_detok_free(d);
    free(acc);
    free(text);
    return bad;
}

static void run_fixture(const char *name)
{
    struct kiln_tokenizer *tok = tk_test_load(name);
    char rel[256];
    size_t n_ids, n_dec, n_sp, n_rd;
    snprintf(rel, sizeof rel, "expected/ids_%s.jsonl.gz", name);
    json_t **want = tk_test_read_jsonl(tk_test_fixture(rel), &n_ids);
    snprintf(rel, sizeof rel, "expected/decode_%s.jsonl.gz", name);
    json_t **dec = tk_test_read_jsonl(tk_test_fixture(rel), &n_dec);
    snprintf(rel, sizeof rel, "expected/special_%s.jsonl.gz", name);
    json_t **sp = tk_test_read_jsonl(tk_test_fixture(rel), &n_sp);
    snprintf(rel, sizeof rel, "expected/randdecode_%s.jsonl.gz", name);
    json_t **rd = tk_test_read_jsonl(tk_test_fixture(rel), &n_rd);
    assert_int_equal(n_ids, corpus_n);
    assert_int_equal(n_dec, corpus_n);

    int enc_bad = 0, dec_bad = 0, sp_bad = 0, rd_bad = 0;
    size_t total_ids = 0;
    struct kiln_error err = {0};
    for (size_t i = 0; i < corpus_n; i++) {
        int32_t *ids;
        size_t n;
        if (kiln_tokenizer_encode(tok, corpus[i].p, corpus[i].n, false, &ids, &n, &err))
            fail_msg("%s line %zu: encode: %s", name, i + 1, err.msg);
        total_ids += n;
        if (!ids_equal(want[i], ids, n)) {
            if (enc_bad++ < 5) {
                size_t wn;
                int32_t *w = json_ids(want[i], &wn);
                fprintf(stderr, "  %s line %zu: \"%.60s\"\n", name, i + 1, corpus[i].p);
                show_ids("kiln", ids, n);
                show_ids("HF  ", w, wn);
                free(w);
            }
        }
        /* decode HF's ids: [decode, decode skip_special], null = same as text / as decode */
        size_t wn;
        int32_t *w = json_ids(want[i], &wn);
        struct tk_text rep = tk_test_replaced(&corpus[i]);
        json_t *d0 = json_array_get(dec[i], 0), *d1 = json_array_get(dec[i], 1);
        const char *t0 = json_is_string(d0) ? json_string_value(d0) : rep.p;
        size_t l0 = json_is_string(d0) ? json_string_length(d0) : rep.n;
        const char *t1 = json_is_string(d1) ? json_string_value(d1) : t0;
        size_t l1 = json_is_string(d1) ? json_string_length(d1) : l0;
        dec_bad += check_decode(tok, w, wn, false, t0, l0, name, i + 1) > 0;
        dec_bad += check_decode(tok, w, wn, true, t1, l1, name, i + 1) > 0;
        free(rep.p);
        free(w);
        free(ids);
    }
    for (size_t i = 0; i < n_sp; i++) {
        int32_t *ids;
        size_t n;
        if (kiln_tokenizer_encode(tok, corpus[i].p, corpus[i].n, true, &ids, &n, &err))
            fail_msg("%s: encode: %s", name, err.msg);
        if (!ids_equal(json_object_get(sp[i], "tokenizers"), ids, n) && sp_bad++ < 3)
            fprintf(stderr, "  %s line %zu: add_special ids differ\n", name, i + 1);
        free(ids);
    }
    for (size_t i = 0; i < n_rd; i++) {
        size_t n;
        int32_t *ids = json_ids(json_array_get(rd[i], 0), &n);
        json_t *a = json_array_get(rd[i], 1), *b = json_array_get(rd[i], 2);
        rd_bad += check_decode(tok, ids, n, false, json_string_value(a), json_string_length(a),
                               name, i + 1) > 0;
        rd_bad += check_decode(tok, ids, n, true, json_string_value(b), json_string_length(b), name,
                               i + 1) > 0;
        free(ids);
    }
    fprintf(stderr,
            "%s: %zu strings, %zu ids: %d encode mismatches, %d decode mismatches, %d "
            "add_special mismatches, %d random-id decode mismatches\n",
            name, corpus_n, total_ids, enc_bad, dec_bad, sp_bad, rd_bad);
    tk_test_free_jsonl(want, n_ids);
    tk_test_free_jsonl(dec, n_dec);
    tk_test_free_jsonl(sp, n_sp);
    tk_test_free_jsonl(rd, n_rd);
    kiln_tokenizer_free(tok);
    assert_int_equal(enc_bad, 0);
    assert_int_equal(dec_bad, 0);
    assert_int_equal(sp_bad, 0);
    assert_int_equal(rd_bad, 0);
}

static void test_llama3_1(void **state)
{
    (void)state;
    run_fixture("llama3_1");
}
static void test_llama2(void **state)
{
    (void)state;
    run_fixture("llama2");
}
static void test_llama2_metaspace(void **state)
{
    (void)state;
    run_fixture("llama2_metaspace");
}
static void test_qwen3(void **state)
{
    (void)state;
    run_fixture("qwen3");
}
static void test_gemma3(void **state)
{
    (void)state;
    run_fixture("gemma3");
}
static void test_deepseek_v3(void **state)
{
    (void)state;
    run_fixture("deepseek_v3");
}

int main(int argc, char **argv)
{
    const struct CMUnitTest all[] = {
        cmocka_unit_test(test_llama3_1),         cmocka_unit_test(test_llama2),
        cmocka_unit_test(test_llama2_metaspace), cmocka_unit_test(test_qwen3),
        cmocka_unit_test(test_gemma3),           cmocka_unit_test(test_deepseek_v3),
    };
    /* optional argument: run one tokenizer only (e.g. while debugging) */
    if (argc > 1) cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(all, setup, teardown);
}
