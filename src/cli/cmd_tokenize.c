/* kiln tokenize DIR: text on stdin -> token ids as a JSON array on stdout (--jsonl: one JSON
 * string per input line -> one JSON array per output line); --decode goes the other way. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common.h"
#include "tokenizer/tokenizer.h"

static const char usage_text[] =
    "usage: kiln tokenize DIR [--jsonl] [--no-special] [--decode [--skip-special]]\n"
    "  DIR             a model or tokenizer folder (tokenizer.json, tokenizer_config.json)\n"
    "  --jsonl         every input line is a JSON string; prints one JSON array per line\n"
    "  --no-special    leave out what the post-processor adds (BOS)\n"
    "  --decode        read a JSON array of ids (per line with --jsonl), print the text\n"
    "                  (with --jsonl as a JSON string)\n"
    "  --skip-special  with --decode: leave special tokens out of the text\n";

static char *read_all(FILE *f, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
        if (n == cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) free(buf);
            buf = nb;
            cap *= 2;
        }
    }
    *len = n;
    return buf;
}

static void print_ids(const int32_t *ids, size_t n)
{
    putchar('[');
    for (size_t i = 0; i < n; i++) printf(i ? ",%d" : "%d", ids[i]);
    fputs("]\n", stdout);
}

static int encode_one(const struct kiln_tokenizer *tok, const char *text, size_t len, bool special)
{
    int32_t *ids;
    size_t n;
    struct kiln_error err = {0};
    if (kiln_tokenizer_encode(tok, text, len, special, &ids, &n, &err)) {
        fprintf(stderr, "kiln tokenize: %s\n", err.msg);
        return 1;
    }
    print_ids(ids, n);
    free(ids);
    return 0;
}

static int decode_one(const struct kiln_tokenizer *tok, const char *line, size_t len, bool skip,
                      bool as_json)
{
    json_error_t je;
    json_t *arr = json_loadb(line, len, JSON_DECODE_ANY, &je);
    if (!json_is_array(arr)) {
        fprintf(stderr, "kiln tokenize: --decode expects a JSON array of ids (%s)\n",
                arr ? "not an array" : je.text);
        json_decref(arr);
        return 1;
    }
    size_t n = json_array_size(arr);
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    for (size_t i = 0; ids && i < n; i++) {
        json_t *v = json_array_get(arr, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX) {
            fprintf(stderr, "kiln tokenize: id %zu is not a token id\n", i);
            free(ids);
            json_decref(arr);
            return 1;
        }
        ids[i] = (int32_t)json_integer_value(v);
    }
    json_decref(arr);
    char *text;
    size_t tlen;
    struct kiln_error err = {0};
    if (!ids || kiln_tokenizer_decode(tok, ids, n, skip, &text, &tlen, &err)) {
        fprintf(stderr, "kiln tokenize: %s\n", ids ? err.msg : "out of memory");
        free(ids);
        return 1;
    }
    free(ids);
    if (as_json) {
        json_t *s = json_stringn(text, tlen);
        char *dump = s ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
        if (dump) puts(dump);
        free(dump);
        json_decref(s);
    } else {
        fwrite(text, 1, tlen, stdout);
    }
    free(text);
    return 0;
}

static void usage(FILE *f)
{
    fputs(usage_text, f);
}

struct tokenize_args {
    bool jsonl, special, decode, skip;
};

static const struct option opts[] = {
    {"jsonl", no_argument, 0, 'j'},  {"no-special", no_argument, 0, 'n'},
    {"decode", no_argument, 0, 'd'}, {"skip-special", no_argument, 0, 's'},
    {"help", no_argument, 0, 'h'},   {0, 0, 0, 0}};

static bool option(int id, const char *arg, void *ctx)
{
    (void)arg;
    struct tokenize_args *a = ctx;
    switch (id) {
    case 'j':
        a->jsonl = true;
        return true;
    case 'n':
        a->special = false;
        return true;
    case 'd':
        a->decode = true;
        return true;
    case 's':
        a->skip = true;
        return true;
    }
    return false;
}

int kiln_cmd_tokenize(int argc, char **argv)
{
    static const struct kiln_cli_command cmd = {"tokenize", "h", opts, usage, option};
    struct tokenize_args a = {.special = true};
    const char *dir;
    int prc = kiln_cli_parse(&cmd, argc, argv, &a, NULL, &dir);
    if (prc != KILN_CLI_GO_ON) return prc;
    struct kiln_tokenizer *tok;
    struct kiln_error err = {0};
    if (kiln_tokenizer_load(dir, &tok, &err)) {
        fprintf(stderr, "kiln tokenize: %s\n", err.msg);
        return 1;
    }
    size_t len;
    char *in = read_all(stdin, &len);
    int rc = 0;
    if (!in) {
        fprintf(stderr, "kiln tokenize: out of memory reading stdin\n");
        rc = 1;
    } else if (!a.jsonl) {
        rc = a.decode ? decode_one(tok, in, len, a.skip, false)
                      : encode_one(tok, in, len, a.special);
    } else {
        for (size_t i = 0; i < len && rc == 0;) {
            size_t j = i;
            while (j < len && in[j] != '\n') j++;
            size_t k = j;
            if (k > i && in[k - 1] == '\r') k--;
            if (k > i) {
                if (a.decode)
                    rc = decode_one(tok, in + i, k - i, a.skip, true);
                else {
                    json_error_t je;
                    json_t *s = json_loadb(in + i, k - i, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
                    if (!json_is_string(s)) {
                        fprintf(stderr, "kiln tokenize: line is not a JSON string: %.60s\n",
                                in + i);
                        rc = 1;
                    } else {
                        rc =
                            encode_one(tok, json_string_value(s), json_string_length(s), a.special);
                    }
                    json_decref(s);
                }
            }
            i = j + 1;
        }
    }
    free(in);
    kiln_tokenizer_free(tok);
    if (fflush(stdout) != 0) rc = 1;
    return rc;
}
