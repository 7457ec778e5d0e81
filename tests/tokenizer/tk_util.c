#include "tk_util.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

static char path_buf[4][4096];
static int path_next;

static const char *fmt_path(const char *fmt, ...)
{
    char *b = path_buf[path_next++ & 3];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, sizeof path_buf[0], fmt, ap);
    va_end(ap);
    return b;
}

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

static void make_metaspace_variant(const char *dir)
{
    const char *src = fmt_path("%s/tokenizer.json", tk_test_tokenizer_dir("llama2"));
    json_error_t je;
    json_t *root = json_load_file(src, 0, &je);
    if (!root) fail_msg("%s: %s", src, je.text);
    json_t *ms = json_pack("{s:s, s:s, s:s, s:b}", "type", "Metaspace", "replacement",
                           "\xE2\x96\x81", "prepend_scheme", "first", "split", 0);
    json_object_set_new(root, "normalizer", json_null());
    json_object_set(root, "pre_tokenizer", ms);
    json_object_set_new(root, "decoder", ms);
    mkdir(fmt_path("%s/tokenizer-variants", env_or("KILN_BINARY_DIR", ".")), 0755);
    mkdir(dir, 0755);
    if (json_dump_file(root, fmt_path("%s/tokenizer.json", dir), 0) != 0)
        fail_msg("cannot write %s", dir);
    json_decref(root);
}

const char *tk_test_tokenizer_dir(const char *name)
{
    if (!strcmp(name, "llama2_metaspace")) {
        const char *dir =
            fmt_path("%s/tokenizer-variants/llama2_metaspace", env_or("KILN_BINARY_DIR", "."));
        static char keep[4096];
        snprintf(keep, sizeof keep, "%s", dir);
        struct stat st;
        if (stat(fmt_path("%s/tokenizer.json", keep), &st) != 0) make_metaspace_variant(keep);
        return keep;
    }
    const char *root = getenv("KILN_TOKENIZERS");
    const char *dir = root && *root
                          ? fmt_path("%s/%s", root, name)
                          : fmt_path("%s/tokenizers/%s", env_or("KILN_BINARY_DIR", "."), name);
    struct stat st;
    if (stat(fmt_path("%s/tokenizer.json", dir), &st) != 0)
        fail_msg("%s/tokenizer.json is missing: run scripts/fetch-tokenizers BUILD_DIR (or set "
                 "KILN_TOKENIZERS)",
                 dir);
    return dir;
}

struct kiln_tokenizer *tk_test_load(const char *name)
{
    struct kiln_tokenizer *tok = NULL;
    struct kiln_error err = {0};
    const char *dir = tk_test_tokenizer_dir(name);
    if (kiln_tokenizer_load(dir, &tok, &err)) fail_msg("load %s: %s", dir, err.msg);
    return tok;
}

const char *tk_test_fixture(const char *rel)
{
    return fmt_path("%s/tests/fixtures/tokenizer/%s", env_or("KILN_SOURCE_DIR", "."), rel);
}

json_t **tk_test_read_jsonl(const char *path, size_t *n)
{
    size_t len = strlen(path);
    bool gz = len > 3 && !strcmp(path + len - 3, ".gz");
    FILE *f;
    if (gz) {
        char cmd[4200];
        snprintf(cmd, sizeof cmd, "gzip -dc '%s'", path);
        f = popen(cmd, "r");
    } else {
        f = fopen(path, "rb");
    }
    if (!f) fail_msg("cannot open %s", path);
    json_t **v = NULL;
    size_t cap = 0;
    *n = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t got;
    while ((got = getline(&line, &lcap, f)) > 0) {
        json_error_t je;
        json_t *j = json_loadb(line, (size_t)got, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
        if (!j) fail_msg("%s:%zu: %s", path, *n + 1, je.text);
        if (*n == cap) {
            cap = cap ? cap * 2 : 1024;
            v = realloc(v, cap * sizeof *v);
            assert_non_null(v);
        }
        v[(*n)++] = j;
    }
    free(line);
    int rc = gz ? pclose(f) : fclose(f);
    if (rc != 0 || *n == 0) fail_msg("%s: unreadable or empty", path);
    return v;
}

void tk_test_free_jsonl(json_t **v, size_t n)
{
    for (size_t i = 0; i < n; i++) json_decref(v[i]);
    free(v);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

struct tk_text *tk_test_corpus(size_t *n)
{
    json_t **lines = tk_test_read_jsonl(tk_test_fixture("corpus.jsonl"), n);
    struct tk_text *c = calloc(*n, sizeof *c);
    assert_non_null(c);
    for (size_t i = 0; i < *n; i++) {
        json_t *v = lines[i];
        if (json_is_string(v)) {
            c[i].n = json_string_length(v);
            c[i].p = malloc(c[i].n + 1);
            memcpy(c[i].p, json_string_value(v), c[i].n + 1);
        } else {
            const char *hex = json_string_value(json_object_get(v, "hex"));
            assert_non_null(hex);
            size_t hl = strlen(hex);
            c[i].n = hl / 2;
            c[i].p = malloc(c[i].n + 1);
            for (size_t k = 0; k < c[i].n; k++)
                c[i].p[k] = (char)(hexval(hex[2 * k]) * 16 + hexval(hex[2 * k + 1]));
            c[i].p[c[i].n] = 0;
        }
    }
    tk_test_free_jsonl(lines, *n);
    return c;
}

void tk_test_free_corpus(struct tk_text *c, size_t n)
{
    for (size_t i = 0; i < n; i++) free(c[i].p);
    free(c);
}

/* Python's bytes.decode("utf-8", "replace"): each maximal ill-formed subpart -> U+FFFD. The
 * test keeps its own copy of the rule rather than calling kiln's. */
struct tk_text tk_test_replaced(const struct tk_text *t)
{
    struct tk_text r = {malloc(t->n * 3 + 1), 0};
    assert_non_null(r.p);
    const unsigned char *s = (const unsigned char *)t->p;
    size_t i = 0, n = t->n;
    while (i < n) {
        unsigned char c = s[i];
        size_t need = c < 0x80                 ? 1
                      : c >= 0xC2 && c <= 0xDF ? 2
                      : c >= 0xE0 && c <= 0xEF ? 3
                      : c >= 0xF0 && c <= 0xF4 ? 4
                                               : 0;
        size_t k = 1;
        if (need > 1) {
            unsigned char lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
            unsigned char hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
            while (k < need && i + k < n) {
                unsigned char d = s[i + k];
                if (k == 1 ? (d < lo || d > hi) : (d & 0xC0) != 0x80) break;
                k++;
            }
        }
        if (need >= 1 && k == need) {
            memcpy(r.p + r.n, s + i, k);
            r.n += k;
        } else {
            memcpy(r.p + r.n, "\xEF\xBF\xBD", 3);
            r.n += 3;
        }
        i += k;
    }
    r.p[r.n] = 0;
    return r;
}
