/* Tokenizer speed: encodes every document of a corpus (one JSON string per line) on one
 * thread, best of --repeat runs, then decodes the ids one-shot and streaming. Prints one
 * line: bytes, tokens, seconds, MB/s and tokens/s, the number to set beside HF tokenizers'.
 * usage: bench_tokenizer TOKENIZER_DIR CORPUS.jsonl [--repeat N] */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "tokenizer/tokenizer.h"

struct doc {
    char *text;
    size_t len;
    int32_t *ids;
    size_t n;
};

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_tokenizer TOKENIZER_DIR CORPUS.jsonl [--repeat N]\n");
        return 2;
    }
    int repeat = 1;
    if (argc >= 5 && !strcmp(argv[3], "--repeat")) repeat = atoi(argv[4]);
    if (repeat < 1) repeat = 1;
    struct kiln_error err = {0};
    struct kiln_tokenizer *tok;
    double t0 = kiln_now();
    if (kiln_tokenizer_load(argv[1], &tok, &err)) {
        fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
        return 1;
    }
    double load_s = kiln_now() - t0;
    FILE *f = fopen(argv[2], "rb");
    if (!f) {
        perror(argv[2]);
        return 1;
    }
    struct doc *docs = NULL;
    size_t ndocs = 0, cap = 0, bytes = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t got;
    while ((got = getline(&line, &lcap, f)) > 0) {
        json_error_t je;
        json_t *s = json_loadb(line, (size_t)got, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
        if (!json_is_string(s)) {
            json_decref(s);
            continue;
        }
        if (ndocs == cap) {
            cap = cap ? cap * 2 : 1024;
            docs = realloc(docs, cap * sizeof *docs);
            if (!docs) return 1;
        }
        struct doc *d = &docs[ndocs++];
        d->len = json_string_length(s);
        d->text = malloc(d->len + 1);
        if (!d->text) return 1;
        memcpy(d->text, json_string_value(s), d->len + 1);
        d->ids = NULL;
        d->n = 0;
        bytes += d->len;
        json_decref(s);
    }
    free(line);
    fclose(f);

    double best = 1e30;
    size_t tokens = 0;
    for (int r = 0; r < repeat; r++) {
        tokens = 0;
        t0 = kiln_now();
        for (size_t i = 0; i < ndocs; i++) {
            free(docs[i].ids);
            if (kiln_tokenizer_encode(tok, docs[i].text, docs[i].len, false, &docs[i].ids,
                                      &docs[i].n, &err)) {
                fprintf(stderr, "bench_tokenizer: doc %zu: %s\n", i, err.msg);
                return 1;
            }
            tokens += docs[i].n;
        }
        double s = kiln_now() - t0;
        if (s < best) best = s;
    }
    /* decode one-shot and streaming; both must give the text back where it was valid UTF-8 */
    t0 = kiln_now();
    size_t mismatches = 0;
    for (size_t i = 0; i < ndocs; i++) {
        char *text;
        size_t len;
        if (kiln_tokenizer_decode(tok, docs[i].ids, docs[i].n, false, &text, &len, &err)) {
            fprintf(stderr, "bench_tokenizer: decode: %s\n", err.msg);
            return 1;
        }
        mismatches += len != docs[i].len || memcmp(text, docs[i].text, len) != 0;
        free(text);
    }
    double dec_s = kiln_now() - t0;
    t0 = kiln_now();
    for (size_t i = 0; i < ndocs; i++) {
        struct kiln_detok *d = kiln_detok_create(tok, false);
        char *out = NULL;
        size_t len = 0;
        for (size_t k = 0; k < docs[i].n; k++)
            if (kiln_detok_push(d, docs[i].ids[k], &out, &len, &err)) return 1;
        if (kiln_detok_flush(d, &out, &len, &err)) return 1;
        free(out);
        kiln_detok_free(d);
    }
    double stream_s = kiln_now() - t0;
    printf("%zu bytes, %zu docs, %zu tokens, encode %.3f s (best of %d), %.2f MB/s, %.0f "
           "tokens/s; decode %.2f MB/s; streaming decode %.2f MB/s; load %.2f s; "
           "round-trip mismatches %zu\n",
           bytes, ndocs, tokens, best, repeat, bytes / best / 1e6, tokens / best,
           bytes / dec_s / 1e6, bytes / stream_s / 1e6, load_s, mismatches);
    for (size_t i = 0; i < ndocs; i++) {
        free(docs[i].text);
        free(docs[i].ids);
    }
    free(docs);
    kiln_tokenizer_free(tok);
    return 0;
}
