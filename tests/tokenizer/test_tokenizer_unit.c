/* Tokenizer behaviour beyond the HF fixtures: load errors name the file and the problem,
 * tokenizer_config / generation_config give bos and every eos, the streaming detokenizer holds
 * back partial UTF-8 and flushes U+FFFD, bad ids are errors, and one tokenizer serves several
 * threads at once. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/file.h"
#include "tk_util.h"

static char tmp_root[4096];

static const char *tmp_dir(const char *name)
{
    static char dir[4096];
    const char *b = getenv("KILN_BINARY_DIR");
    snprintf(tmp_root, sizeof tmp_root, "%s/tokenizer-unit", b && *b ? b : ".");
    mkdir(tmp_root, 0755);
    snprintf(dir, sizeof dir, "%s/%s", tmp_root, name);
    mkdir(dir, 0755);
    return dir;
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void link_file(const char *dir, const char *name, const char *target)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    unlink(path);
    assert_int_equal(symlink(target, path), 0);
}

static enum kiln_status load_status(const char *dir, struct kiln_error *err)
{
    struct kiln_tokenizer *tok = NULL;
    enum kiln_status st = kiln_tokenizer_load(dir, &tok, err);
    kiln_tokenizer_free(tok);
    return st;
}

static void test_load_errors(void **state)
{
    (void)state;
    struct kiln_error err = {0};
    assert_int_equal(load_status("/nonexistent-kiln-dir", &err), KILN_ERR_IO);
    assert_non_null(strstr(err.msg, "tokenizer.json"));

    const char *d = tmp_dir("bad_json");
    write_file(d, "tokenizer.json", "{\"model\": {\"type\": \"BPE\", ");
    assert_int_equal(load_status(d, &err), KILN_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "tokenizer.json"));

    d = tmp_dir("unigram");
    write_file(d, "tokenizer.json", "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}");
    assert_int_equal(load_status(d, &err), KILN_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "Unigram"));

    d = tmp_dir("bad_merge");
    write_file(d, "tokenizer.json",
               "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": "
               "[\"a b\"]}}");
    assert_int_equal(load_status(d, &err), KILN_ERR_INVALID);
    assert_non_null(strstr(err.msg, "merges[0]"));

    d = tmp_dir("bad_regex");
    write_file(d, "tokenizer.json",
               "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
               "\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}, "
               "\"behavior\": \"Isolated\"}}");
    assert_int_equal(load_status(d, &err), KILN_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "regex"));

    /* a chat template kiln cannot render fails the load, naming the template */
    d = tmp_dir("bad_template");
    char target[4200];
    snprintf(target, sizeof target, "%s/tokenizer.json", tk_test_tokenizer_dir("llama2"));
    link_file(d, "tokenizer.json", target);
    write_file(d, "tokenizer_config.json",
               "{\"bos_token\": \"<s>\", \"chat_template\": \"{% for m in messages %}{{ m | "
               "frobnicate }}{% endfor %}\"}");
    assert_int_equal(load_status(d, &err), KILN_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "chat_template"));
    assert_non_null(strstr(err.msg, "frobnicate"));
}

static void test_configs(void **state)
{
    (void)state;
    const char *d = tmp_dir("llama31_model");
    char target[4200];
    snprintf(target, sizeof target, "%s/tokenizer.json", tk_test_tokenizer_dir("llama3_1"));
    link_file(d, "tokenizer.json", target);
    snprintf(target, sizeof target, "%s/tokenizer_config.json", tk_test_tokenizer_dir("llama3_1"));
    link_file(d, "tokenizer_config.json", target);
    write_file(d, "generation_config.json",
               "{\"bos_token_id\": 128000, \"eos_token_id\": [128001, 128008, 128009]}");
    struct kiln_tokenizer *tok;
    struct kiln_error err = {0};
    assert_int_equal(kiln_tokenizer_load(d, &tok, &err), KILN_OK);
    assert_int_equal(kiln_tokenizer_bos(tok), 128000);
    const int32_t *eos;
    int n = kiln_tokenizer_eos(tok, &eos);
    assert_int_equal(n, 3);
    assert_int_equal(eos[0], 128001);
    assert_int_equal(eos[1], 128008);
    assert_int_equal(eos[2], 128009);
    assert_int_equal(kiln_tokenizer_vocab_size(tok), 128256);
    assert_true(kiln_tokenizer_is_special(tok, 128009));
    assert_false(kiln_tokenizer_is_special(tok, 9906));
    assert_true(kiln_tokenizer_has_chat_template(tok));
    assert_int_equal(kiln_tokenizer_token_id(tok, "<|eot_id|>"), 128009);
    assert_int_equal(kiln_tokenizer_token_id(tok, "\xC4\xA0the"), 279); /* "Ġthe" */
    assert_int_equal(kiln_tokenizer_token_id(tok, "no such token"), -1);
    kiln_tokenizer_free(tok);

    /* without generation_config: the tokenizer_config eos alone */
    tok = tk_test_load("llama3_1");
    n = kiln_tokenizer_eos(tok, &eos);
    assert_int_equal(n, 1);
    assert_int_equal(eos[0], 128009);
    kiln_tokenizer_free(tok);
    /* deepseek: bos/eos given as AddedToken objects */
    tok = tk_test_load("deepseek_v3");
    assert_int_equal(kiln_tokenizer_bos(tok), 0);
    n = kiln_tokenizer_eos(tok, &eos);
    assert_int_equal(n, 1);
    assert_int_equal(eos[0], 1);
    kiln_tokenizer_free(tok);
}

/* chat_template as a named list: "default", and "tool_use" when tools are given */
static void test_named_templates(void **state)
{
    (void)state;
    const char *d = tmp_dir("named_templates");
    char target[4200];
    snprintf(target, sizeof target, "%s/tokenizer.json", tk_test_tokenizer_dir("llama2"));
    link_file(d, "tokenizer.json", target);
    write_file(d, "tokenizer_config.json",
               "{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"chat_template\": ["
               "{\"name\": \"tool_use\", \"template\": \"T{{ tools | length }}{{ bos_token }}\"},"
               "{\"name\": \"default\", \"template\": \"D{% for m in messages %}{{ m.content "
               "}}{% endfor %}{{ eos_token }}\"}]}");
    struct kiln_tokenizer *tok;
    struct kiln_error err = {0};
    assert_int_equal(kiln_tokenizer_load(d, &tok, &err), KILN_OK);
    char *out;
    size_t len;
    const char *msgs = "[{\"role\": \"user\", \"content\": \"hi\"}]";
    assert_int_equal(kiln_tokenizer_apply_chat_template(tok, msgs, false, NULL, &out, &len, &err),
                     KILN_OK);
    assert_string_equal(out, "Dhi</s>");
    free(out);
    assert_int_equal(kiln_tokenizer_apply_chat_template(tok, msgs, false,
                                                        "{\"tools\": [{\"a\": 1}, {\"b\": 2}]}",
                                                        &out, &len, &err),
                     KILN_OK);
    assert_string_equal(out, "T2<s>");
    free(out);
    /* bad requests are request errors */
    assert_int_equal(kiln_tokenizer_apply_chat_template(tok, "[]", true, NULL, &out, &len, &err),
                     KILN_ERR_INVALID);
    assert_int_equal(
        kiln_tokenizer_apply_chat_template(tok, "{\"x\":1}", true, NULL, &out, &len, &err),
        KILN_ERR_INVALID);
    assert_int_equal(kiln_tokenizer_apply_chat_template(tok, msgs, true, "[1]", &out, &len, &err),
                     KILN_ERR_INVALID);
    kiln_tokenizer_free(tok);
}

static char *push(struct kiln_detok *d, int32_t id)
{
    char *out = NULL;
    size_t len = 0;
    struct kiln_error err = {0};
    assert_int_equal(kiln_detok_push(d, id, &out, &len, &err), KILN_OK);
    assert_int_equal(strlen(out), len);
    return out;
}

static void test_streaming(void **state)
{
    (void)state;
    struct kiln_tokenizer *tok = tk_test_load("llama3_1");
    struct kiln_error err = {0};
    int32_t *ids;
    size_t n;
    /* "é😀" is several byte-level tokens; nothing partial may come out */
    const char *text = "\xC3\xA9\xF0\x9F\x98\x80!";
    assert_int_equal(kiln_tokenizer_encode(tok, text, strlen(text), false, &ids, &n, &err),
                     KILN_OK);
    assert_true(n >= 2);
    struct kiln_detok *d = kiln_detok_create(tok, true);
    char acc[64] = "";
    for (size_t i = 0; i < n; i++) {
        char *delta = push(d, ids[i]);
        size_t dl = strlen(delta);
        /* every delta ends on a character boundary */
        if (dl) assert_true(((unsigned char)delta[dl - 1] & 0xC0) != 0xC0);
        strcat(acc, delta);
        free(delta);
    }
    char *tail = NULL;
    size_t tl = 0;
    assert_int_equal(kiln_detok_flush(d, &tail, &tl, &err), KILN_OK);
    assert_int_equal(tl, 0);
    free(tail);
    assert_string_equal(acc, text);
    kiln_detok_free(d);

    /* the first byte of a 4-byte emoji alone: held back, then U+FFFD at the flush */
    d = kiln_detok_create(tok, false);
    free(ids);
    const char *rare = "\xF0\xA0\x80\x8B"; /* U+2000B: three byte-level tokens */
    assert_int_equal(kiln_tokenizer_encode(tok, rare, 4, false, &ids, &n, &err), KILN_OK);
    assert_int_equal(n, 3);
    {
        char *delta = push(d, ids[0]);
        assert_string_equal(delta, "");
        free(delta);
        char *out = NULL;
        size_t len = 0;
        assert_int_equal(kiln_detok_flush(d, &out, &len, &err), KILN_OK);
        assert_string_equal(out, "\xEF\xBF\xBD");
        free(out);
    }
    kiln_detok_free(d);
    free(ids);

    /* skip_special drops <|eot_id|>; without it the text is there */
    int32_t sp[3] = {9906, 128009, 0};
    char *t1, *t2;
    size_t l1, l2;
    assert_int_equal(kiln_tokenizer_decode(tok, sp, 3, true, &t1, &l1, &err), KILN_OK);
    assert_int_equal(kiln_tokenizer_decode(tok, sp, 3, false, &t2, &l2, &err), KILN_OK);
    assert_string_equal(t1, "Hello!");
    assert_string_equal(t2, "Hello<|eot_id|>!");
    free(t1);
    free(t2);

    /* ids outside the vocabulary are request errors */
    int32_t badid[2] = {9906, 999999};
    assert_int_equal(kiln_tokenizer_decode(tok, badid, 2, false, &t1, &l1, &err), KILN_ERR_INVALID);
    d = kiln_detok_create(tok, false);
    char *o = NULL;
    size_t ol = 0;
    assert_int_equal(kiln_detok_push(d, -5, &o, &ol, &err), KILN_ERR_INVALID);
    kiln_detok_free(d);
    kiln_tokenizer_free(tok);

    /* SentencePiece byte fallback: an invalid group becomes one U+FFFD per byte, and the
     * leading space of the first piece is stripped */
    tok = tk_test_load("llama2");
    int32_t *hid;
    size_t hn;
    assert_int_equal(kiln_tokenizer_encode(tok, " hello", 6, false, &hid, &hn, &err), KILN_OK);
    assert_int_equal(kiln_tokenizer_decode(tok, hid, hn, false, &t1, &l1, &err), KILN_OK);
    assert_string_equal(t1, " hello"); /* "▁▁hello": Strip removes one space */
    free(t1);
    free(hid);
    /* <0xXX> tokens are ids 3..258 in Llama 2; "world" encodes as "▁world" */
    assert_int_equal(kiln_tokenizer_encode(tok, "world", 5, false, &hid, &hn, &err), KILN_OK);
    assert_int_equal(hn, 1);
    int32_t grp[3] = {0xF0 + 3, 0x9F + 3, hid[0]};
    assert_int_equal(kiln_tokenizer_decode(tok, grp, 3, false, &t1, &l1, &err), KILN_OK);
    assert_string_equal(t1, "\xEF\xBF\xBD\xEF\xBF\xBD world");
    free(t1);
    free(hid);
    kiln_tokenizer_free(tok);
}

struct job {
    const struct kiln_tokenizer *tok;
    const char *text;
    size_t len;
    int32_t *want;
    size_t n;
    int bad;
};

static void *worker(void *arg)
{
    struct job *j = arg;
    for (int r = 0; r < 20; r++) {
        int32_t *ids;
        size_t n;
        struct kiln_error err = {0};
        if (kiln_tokenizer_encode(j->tok, j->text, j->len, true, &ids, &n, &err) || n != j->n ||
            memcmp(ids, j->want, n * sizeof *ids))
            j->bad++;
        free(ids);
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    struct kiln_tokenizer *tok = tk_test_load("llama3_1");
    size_t nc;
    struct tk_text *corpus = tk_test_corpus(&nc);
    struct job jobs[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (struct job){tok, corpus[i * 97].p, corpus[i * 97].n, NULL, 0, 0};
        struct kiln_error err = {0};
        assert_int_equal(kiln_tokenizer_encode(tok, jobs[i].text, jobs[i].len, true, &jobs[i].want,
                                               &jobs[i].n, &err),
                         KILN_OK);
    }
    for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, worker, &jobs[i]);
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(jobs[i].bad, 0);
        free(jobs[i].want);
    }
    tk_test_free_corpus(corpus, nc);
    kiln_tokenizer_free(tok);
}

int main(void)
{
    const struct CMUnitTest all[] = {
        cmocka_unit_test(test_load_errors),     cmocka_unit_test(test_configs),
        cmocka_unit_test(test_named_templates), cmocka_unit_test(test_streaming),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(all, NULL, NULL);
}
