/* MaskBench (guidance-ai/jsonschemabench, maskbench/) on kiln's constraint engine, single
 * thread, the way its runner.py does it: per schema compile (timed); per test instance
 * json.dumps(data) (", " and ": " separators, UTF-8 kept), tokenized with the Llama 3.1
 * tokenizer; for each token compute the mask and commit the token (timed together); the test is
 * "accepted" when every token was allowed. A valid test rejected is a validation error, an
 * invalid one accepted an invalidation error. JSON whitespace is flexible here (LLGuidance's
 * default, which the instances' spacing needs); the server's default is compact.
 *   bench_maskbench TOKENIZER_DIR DATA_DIR [--limit N] [--verbose] [--list-errors] [--slow US]
 *                   [--shard I/N --dump FILE]     (every N-th file from the I-th; raw times to
 * FILE) bench_maskbench --merge FILE...               (the table over shards' dumps)
 * (--slow: print where a mask took longer than US microseconds: the test, the token and the 200
 * bytes before it)
 * --only S: the files whose name contains S. --compile-times: print each schema's compile time.
 * --accept-only: no masks; each instance's bytes go through the matcher (kiln_matcher_accept_bytes,
 * byte by byte) and must end complete: compile time and correctness over many schemas quickly;
 * with --list-errors a rejected valid instance prints the byte offset where it was refused.
 * DATA_DIR comes from bench/maskbench-extract.sh. */
#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "grammar/grammar.h"

/* thread CPU time: the development machine is shared, wall time would count other processes */
static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

struct vec {
    double *p;
    size_t n, cap;
};

static void push(struct vec *v, double x)
{
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 1 << 16;
        v->p = realloc(v->p, v->cap * sizeof *v->p);
        if (!v->p) abort();
    }
    v->p[v->n++] = x;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(const struct vec *v, double q)
{
    if (!v->n) return 0;
    size_t i = (size_t)(q * (double)(v->n - 1) + 0.5);
    return v->p[i];
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static size_t missing_in(const char *dir)
{
    char path[4096];
    size_t missing = 0;
    snprintf(path, sizeof path, "%s/.missing", dir);
    FILE *f = fopen(path, "r");
    if (f) {
        for (int c; (c = fgetc(f)) != EOF;) missing += c == '\n';
        fclose(f);
    }
    return missing;
}

/* tot: schemas, passing, compile errors, unreadable, validation errors, invalidation errors,
 * tests, tokens */
static int report(const size_t *tot, struct vec *masks, struct vec *compiles, size_t missing)
{
    qsort(masks->p, masks->n, sizeof *masks->p, cmp_d);
    qsort(compiles->p, compiles->n, sizeof *compiles->p, cmp_d);
    double sum = 0;
    for (size_t k = 0; k < masks->n; k++) sum += masks->p[k];
    printf("MaskBench, kiln constraint engine, Llama 3.1 tokenizer, single thread (thread CPU "
           "time)\n");
    printf("schemas              %zu (+%zu missing from the mirror, counted as failing)\n", tot[0],
           missing);
    printf("passing              %zu of %zu\n", tot[1], tot[0] + missing);
    printf("compile errors       %zu\n", tot[2]);
    printf("unreadable (jansson) %zu\n", tot[3]);
    printf("validation errors    %zu (valid instance rejected)\n", tot[4]);
    printf("invalidation errors  %zu (invalid instance accepted)\n", tot[5]);
    printf("tests %zu, tokens %zu\n", tot[6], tot[7]);
    printf("mask us: avg %.1f p50 %.1f p75 %.1f p90 %.1f p95 %.1f p99 %.1f p99.9 %.1f max %.1f\n",
           masks->n ? sum / (double)masks->n : 0, pct(masks, .5), pct(masks, .75), pct(masks, .9),
           pct(masks, .95), pct(masks, .99), pct(masks, .999),
           masks->n ? masks->p[masks->n - 1] : 0);
    printf("compile us: p50 %.1f p75 %.1f p99 %.1f max %.1f\n", pct(compiles, .5),
           pct(compiles, .75), pct(compiles, .99), compiles->n ? compiles->p[compiles->n - 1] : 0);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr,
                "usage: %s TOKENIZER_DIR DATA_DIR [--limit N] [--verbose] [--list-errors] [--slow "
                "US]\n",
                argv[0]);
        return 2;
    }
    long limit = -1;
    long shard = 0, nshards = 1;
    const char *dump = NULL, *only = NULL;
    bool verbose = false, list = false, accept_only = false, ctimes = false;
    double slow = 0;
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--limit") && i + 1 < argc)
            limit = atol(argv[++i]);
        else if (!strcmp(argv[i], "--shard") && i + 1 < argc)
            sscanf(argv[++i], "%ld/%ld", &shard, &nshards);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else if (!strcmp(argv[i], "--dump") && i + 1 < argc)
            dump = argv[++i];
        else if (!strcmp(argv[i], "--slow") && i + 1 < argc)
            slow = atof(argv[++i]);
        else if (!strcmp(argv[i], "--verbose"))
            verbose = true;
        else if (!strcmp(argv[i], "--list-errors"))
            list = true;
        else if (!strcmp(argv[i], "--accept-only"))
            accept_only = true;
        else if (!strcmp(argv[i], "--compile-times"))
            ctimes = true;
    }
    if (!strcmp(argv[1], "--merge")) {
        size_t tot[10] = {0};
        struct vec mm = {0}, cc = {0};
        for (int i = 2; i < argc; i++) {
            FILE *f = fopen(argv[i], "rb");
            size_t hdr[10];
            if (!f || fread(hdr, sizeof hdr, 1, f) != 1) {
                perror(argv[i]);
                return 1;
            }
            for (int k = 0; k < 8; k++) tot[k] += hdr[k];
            for (size_t k = 0; k < hdr[8] + hdr[9]; k++) {
                double x;
                if (fread(&x, sizeof x, 1, f) != 1) return 1;
                push(k < hdr[8] ? &mm : &cc, x);
            }
            fclose(f);
        }
        return report(tot, &mm, &cc, 0);
    }
    struct kiln_error err = {0};
    struct kiln_tokenizer *tok;
    if (kiln_tokenizer_load(argv[1], &tok, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    struct kiln_grammar_vocab *vocab;
    if (kiln_grammar_vocab_create(tok, &vocab, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    DIR *d = opendir(argv[2]);
    if (!d) {
        perror(argv[2]);
        return 1;
    }
    char **names = NULL;
    size_t nn = 0, cap = 0;
    for (struct dirent *e; (e = readdir(d));) {
        size_t l = strlen(e->d_name);
        if (l < 6 || strcmp(e->d_name + l - 5, ".json")) continue;
        if (nn == cap) names = realloc(names, (cap = cap ? cap * 2 : 1024) * sizeof *names);
        names[nn++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, nn, sizeof *names, cmp_str);
    size_t missing = shard == 0 ? missing_in(argv[2]) : 0;
    int32_t nv = kiln_grammar_vocab_size(vocab);
    uint32_t *mask = malloc(((size_t)nv + 31) / 32 * sizeof *mask);
    struct vec masks = {0}, compiles = {0};
    size_t schemas = 0, passing = 0, compile_err = 0, val_err = 0, inval_err = 0, unreadable = 0;
    size_t tests = 0, tokens = 0;
    struct kiln_grammar_options opts = {KILN_GRAMMAR_WS_FLEXIBLE};
    double t_start = now_us();
    for (size_t fi = 0; fi < nn && (limit < 0 || (long)fi < limit); fi++) {
        if ((long)fi % nshards != shard) continue;
        if (only && !strstr(names[fi], only)) continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", argv[2], names[fi]);
        json_error_t je;
        json_t *root = json_load_file(path, JSON_ALLOW_NUL, &je);
        schemas++;
        if (!root) {
            unreadable++;
            if (list) printf("UNREADABLE %s: %s\n", names[fi], je.text);
            continue;
        }
        size_t text_len =
            json_dumpb(json_object_get(root, "schema"), NULL, 0, JSON_ENCODE_ANY | JSON_COMPACT);
        char *text = malloc(text_len + 1);
        json_dumpb(json_object_get(root, "schema"), text, text_len, JSON_ENCODE_ANY | JSON_COMPACT);
        struct kiln_constraint_spec spec = {KILN_CONSTRAINT_JSON_SCHEMA, text, text_len};
        struct kiln_grammar *g = NULL;
        double t0 = now_us();
        enum kiln_status st = kiln_grammar_compile_opts(&spec, vocab, &opts, &g, &err);
        double tc = now_us() - t0;
        free(text);
        if (st) {
            compile_err++;
            if (list) printf("COMPILE %s: %s\n", names[fi], err.msg);
            json_decref(root);
            continue;
        }
        push(&compiles, tc);
        if (ctimes) printf("COMPILED %.0f us %s\n", tc, names[fi]);
        int verdict = 0; /* 0 ok, 1 validation error, 2 invalidation error (last one wins) */
        size_t i;
        json_t *t;
        json_array_foreach(json_object_get(root, "tests"), i, t)
        {
            bool valid = json_is_true(json_object_get(t, "valid"));
            json_t *data = json_object_get(t, "data");
            size_t inst_len = json_dumpb(data, NULL, 0, JSON_ENCODE_ANY);
            char *inst = malloc(inst_len + 1);
            json_dumpb(data, inst, inst_len, JSON_ENCODE_ANY);
            inst[inst_len] = 0;
            if (accept_only) {
                tests++;
                struct kiln_matcher *m;
                if (kiln_matcher_create(g, &m, &err)) abort();
                size_t at = 0;
                while (at < inst_len && kiln_matcher_accept_bytes(m, inst + at, 1)) at++;
                bool accepted = at == inst_len && kiln_matcher_is_complete(m);
                tokens += at;
                if (accepted && !valid) {
                    verdict = 2;
                    if (list) printf("INVALIDATION %s test %zu: %s\n", names[fi], i, inst);
                } else if (!accepted && valid) {
                    verdict = 1;
                    if (list)
                        printf("VALIDATION %s test %zu at byte %zu (%.40s): %s\n", names[fi], i, at,
                               inst + at, inst);
                }
                kiln_matcher_free(m);
                free(inst);
                continue;
            }
            int32_t *ids;
            size_t n;
            if (kiln_tokenizer_encode(tok, inst, inst_len, false, &ids, &n, &err)) {
                free(inst);
                continue;
            }
            tests++;
            struct kiln_matcher *m;
            if (kiln_matcher_create(g, &m, &err)) abort();
            bool accepted = true;
            for (size_t k = 0; k < n; k++) {
                double a = now_us();
                kiln_matcher_fill_mask(m, mask);
                bool ok = mask[ids[k] >> 5] >> (ids[k] & 31) & 1;
                if (ok) ok = kiln_matcher_accept(m, ids[k]);
                double dt = now_us() - a;
                push(&masks, dt);
                if (slow > 0 && dt > slow) {
                    char *pre = NULL;
                    size_t pl = 0;
                    /* the last 200 bytes before the token: where in the instance it is */
                    if (!kiln_tokenizer_decode(tok, ids, k, false, &pre, &pl, &err))
                        printf("SLOW %.0f us %s test %zu token %zu of %zu after: %s%.*s\n", dt,
                               names[fi], i, k, n, pl > 200 ? "..." : "",
                               (int)(pl > 200 ? 200 : pl), pre + (pl > 200 ? pl - 200 : 0));
                    free(pre);
                }
                tokens++;
                if (!ok) {
                    accepted = false;
                    if (verbose && valid)
                        printf("  %s test %zu rejected token %zu of %zu\n    %s\n", names[fi], i, k,
                               n, inst);
                    break;
                }
            }
            if (accepted && !valid) {
                verdict = 2;
                if (list) printf("INVALIDATION %s test %zu: %s\n", names[fi], i, inst);
            } else if (!accepted && valid) {
                verdict = 1;
                if (list) printf("VALIDATION %s test %zu: %s\n", names[fi], i, inst);
            }
            kiln_matcher_free(m);
            free(ids);
            free(inst);
        }
        if (verdict == 0) passing++;
        if (verdict == 1) val_err++;
        if (verdict == 2) inval_err++;
        kiln_grammar_unref(g);
        json_decref(root);
        if (verbose && fi % 500 == 0)
            fprintf(stderr, "%zu/%zu schemas, %.0f s\n", fi, nn, (now_us() - t_start) / 1e6);
    }
    if (dump) { /* counts and raw times, for --merge */
        FILE *f = fopen(dump, "wb");
        size_t hdr[10] = {schemas,   passing, compile_err, unreadable, val_err,
                          inval_err, tests,   tokens,      masks.n,    compiles.n};
        if (!f || fwrite(hdr, sizeof hdr, 1, f) != 1 ||
            fwrite(masks.p, sizeof *masks.p, masks.n, f) != masks.n ||
            fwrite(compiles.p, sizeof *compiles.p, compiles.n, f) != compiles.n)
            perror(dump);
        if (f) fclose(f);
    }
    size_t tot[8] = {schemas, passing, compile_err, unreadable, val_err, inval_err, tests, tokens};
    report(tot, &masks, &compiles, missing);
    printf("cpu %.1f s\n", (now_us() - t_start) / 1e6);
    for (size_t k = 0; k < nn; k++) free(names[k]);
    free(names);
    free(masks.p);
    free(compiles.p);
    free(mask);
    kiln_grammar_vocab_free(vocab);
    kiln_tokenizer_free(tok);
    return 0;
}
