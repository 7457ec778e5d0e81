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
 * --reorder: before each test, put its keys in kiln's order the way MaskBench's data were put in
 * LLGuidance's (see reorder_instance): a valid instance kiln rejects, and every invalid one
 * (against the schema without value constraints); the counts say how many moved.
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

/* Python's repr of a double (what json.dumps writes): the shortest digits that read back,
 * fixed notation with at least one fraction digit from 1e-4 to below 1e16, else d.ddde+XX */
static int py_real(double v, char *out, size_t cap)
{
    char e[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(e, sizeof e, "%.*e", p - 1, v);
        if (strtod(e, NULL) == v) break;
    }
    char dg[24];
    int nd = 0, ex = 0;
    bool neg = e[0] == '-';
    for (const char *c = e + neg; *c; c++) {
        if (*c == 'e') {
            ex = atoi(c + 1);
            break;
        }
        if (*c >= '0' && *c <= '9' && nd < 20) dg[nd++] = *c;
    }
    while (nd > 1 && dg[nd - 1] == '0') nd--;
    size_t n = 0;
    char buf[400];
    if (neg) buf[n++] = '-';
    if (ex >= -4 && ex < 16) {
        if (ex < 0) {
            buf[n++] = '0';
            buf[n++] = '.';
            for (int q = -1; q > ex; q--) buf[n++] = '0';
            for (int q = 0; q < nd; q++) buf[n++] = dg[q];
        } else {
            for (int q = 0; q <= ex; q++) buf[n++] = q < nd ? dg[q] : '0';
            buf[n++] = '.';
            if (nd > ex + 1)
                for (int q = ex + 1; q < nd; q++) buf[n++] = dg[q];
            else
                buf[n++] = '0';
        }
        buf[n] = 0;
    } else {
        buf[n++] = dg[0];
        if (nd > 1) {
            buf[n++] = '.';
            for (int q = 1; q < nd; q++) buf[n++] = dg[q];
        }
        snprintf(buf + n, sizeof buf - n, "e%c%02d", ex < 0 ? '-' : '+', ex < 0 ? -ex : ex);
    }
    return snprintf(out, cap, "%s", buf);
}

/* json.dumps(v): jansson's text (", " and ": ", UTF-8 kept) with each real as Python writes it
 * (jansson writes 17 digits: 0.3 as 0.29999999999999999, not a multiple of 0.01 nor >= 0.3) */
static char *py_dumps(json_t *v, size_t *len)
{
    size_t n = json_dumpb(v, NULL, 0, JSON_ENCODE_ANY);
    char *s = malloc(n + 1), *o = malloc(8 * n + 64); /* a real: 3 bytes on, repr 24 at most */
    json_dumpb(v, s, n, JSON_ENCODE_ANY);
    s[n] = 0;
    size_t k = 0;
    bool str = false;
    for (size_t i = 0; i < n;) {
        char c = s[i];
        if (str) {
            o[k++] = c;
            i++;
            if (c == '\\' && i < n)
                o[k++] = s[i++];
            else if (c == '"')
                str = false;
            continue;
        }
        if (c == '"') str = true;
        if (c == '-' || (c >= '0' && c <= '9')) {
            size_t j = i;
            bool real = false;
            while (j < n && strchr("+-0123456789.eE", s[j])) real |= strchr(".eE", s[j++]) != NULL;
            if (real) {
                char tok[64], out[400];
                snprintf(tok, sizeof tok, "%.*s", (int)(j - i), s + i);
                int m = py_real(strtod(tok, NULL), out, sizeof out);
                memcpy(o + k, out, (size_t)m);
                k += (size_t)m;
                i = j;
                continue;
            }
            memcpy(o + k, s + i, j - i);
            k += j - i;
            i = j;
            continue;
        }
        o[k++] = c;
        i++;
    }
    o[k] = 0;
    free(s);
    *len = k;
    return o;
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

/* --reorder: MaskBench's data put each valid instance's keys in the order LLGuidance accepts
 * (maskbench/creation/reorder.py, run on the schemas LLGuidance compiled and rejected a test of;
 * invalid instances were reordered against the schema without its value constraints). This
 * repeats that procedure with kiln as the engine, written from its description, with a bounded
 * search behind its greedy choice of keys (which gets stuck where a required key must come
 * later, or where an object's first order fits an alternative the rest of the instance does not:
 * see ro_keys); arrays and scalars are written as they are. It only permutes keys, so a test
 * that still fails after it is rejected for something other than key order. */
struct reorder {
    struct kiln_matcher *m;
    int steps, depth;
    long tries, max_tries;
    char *out;
    size_t len, cap;
};

static bool ro_feed(struct reorder *r, const char *s, size_t n)
{
    if (!n) return true;
    if (!kiln_matcher_accept_bytes(r->m, s, n)) return false;
    r->steps++;
    if (r->len + n + 1 > r->cap) {
        r->cap = (r->len + n + 1) * 2;
        r->out = realloc(r->out, r->cap);
        if (!r->out) abort();
    }
    memcpy(r->out + r->len, s, n);
    r->len += n;
    r->out[r->len] = 0;
    return true;
}

static void ro_back(struct reorder *r, int steps, size_t len)
{
    kiln_matcher_rollback(r->m, r->steps - steps);
    r->steps = steps;
    r->len = len;
}

static bool ro_feed_json(struct reorder *r, json_t *v)
{
    size_t n;
    char *s = py_dumps(v, &n);
    bool ok = ro_feed(r, s, n);
    free(s);
    return ok;
}

/* the separator (", " unless first), the quoted key and ": " */
static bool ro_feed_key(struct reorder *r, const char *key, bool first)
{
    json_t *k = json_string(key);
    bool ok = k && ro_feed(r, first ? "" : ", ", first ? 0 : 2) && ro_feed_json(r, k) &&
              ro_feed(r, ": ", 2);
    json_decref(k);
    return ok;
}

/* Writes v with each object's keys in the first order the matcher takes (no backtracking into
 * a value once written): the value reorder.py's lookahead is judged with. */
static bool ro_value(struct reorder *r, json_t *v, int depth)
{
    if (depth > 200) return false;
    if (json_is_array(v)) {
        if (!ro_feed(r, "[", 1)) return false;
        for (size_t i = 0; i < json_array_size(v); i++)
            if ((i && !ro_feed(r, ", ", 2)) || !ro_value(r, json_array_get(v, i), depth + 1))
                return false;
        return ro_feed(r, "]", 1);
    }
    if (!json_is_object(v)) return ro_feed_json(r, v);
    size_t n = json_object_size(v), left = n, i = 0;
    const char **keys = malloc((n + 1) * sizeof *keys);
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x) keys[i++] = k;
    bool ok = ro_feed(r, "{", 1);
    for (bool first = true; ok && left; first = false) {
        size_t pick = left;
        for (i = 0; i < left && pick == left; i++) {
            int s = r->steps;
            size_t l = r->len;
            if (ro_feed_key(r, keys[i], first) &&
                ro_value(r, json_object_get(v, keys[i]), depth + 1))
                pick = i;
            else
                ro_back(r, s, l);
        }
        if (pick == left) ok = false;
        if (pick < left) memmove(keys + pick, keys + pick + 1, (left - pick - 1) * sizeof *keys);
        left--;
    }
    free(keys);
    return ok && ro_feed(r, "}", 1);
}

struct ro_frame;
static bool ro_go(struct reorder *r, json_t *v, const struct ro_frame *f);

/* What is left to write after a value: the rest of an object (its keys not written yet) or of an
 * array (the elements after idx), then what is left after that. */
struct ro_frame {
    json_t *v;
    const char **keys;
    size_t left, idx;
    const struct ro_frame *up;
};

static bool ro_keys(struct reorder *r, const struct ro_frame *f);

static bool ro_cont(struct reorder *r, const struct ro_frame *f)
{
    if (!f) return kiln_matcher_is_complete(r->m);
    if (json_is_object(f->v)) return ro_keys(r, f);
    if (f->idx + 1 == json_array_size(f->v)) return ro_feed(r, "]", 1) && ro_cont(r, f->up);
    struct ro_frame next = {f->v, NULL, 0, f->idx + 1, f->up};
    return ro_feed(r, ", ", 2) && ro_go(r, json_array_get(f->v, f->idx + 1), &next);
}

/* Writes v, then what f says is left: true when the whole instance was written. */
static bool ro_go(struct reorder *r, json_t *v, const struct ro_frame *f)
{
    if (++r->depth > 20000) return false;
    bool ok;
    if (json_is_array(v)) {
        struct ro_frame in = {v, NULL, 0, 0, f};
        ok = ro_feed(r, "[", 1) && (json_array_size(v) ? ro_go(r, json_array_get(v, 0), &in)
                                                       : ro_feed(r, "]", 1) && ro_cont(r, f));
    } else if (json_is_object(v)) {
        size_t n = json_object_size(v), i = 0;
        const char **keys = malloc((n + 1) * sizeof *keys);
        const char *k;
        json_t *x;
        json_object_foreach(v, k, x) keys[i++] = k;
        struct ro_frame in = {v, keys, n, 0, f};
        ok = ro_feed(r, "{", 1) && ro_keys(r, &in);
        free(keys);
    } else {
        ok = ro_feed_json(r, v) && ro_cont(r, f);
    }
    r->depth--;
    return ok;
}

/* Places f's keys not written yet, then "}" and the rest: a depth-first search over the keys
 * that can come now, first those after which every other such key still can (reorder.py's
 * greedy choice, judged with the first order of the value's own keys), then the others. The
 * search covers every order of every object; r->tries bounds it. */
static bool ro_keys(struct reorder *r, const struct ro_frame *f)
{
    if (!f->left) return ro_feed(r, "}", 1) && ro_cont(r, f->up);
    if (++r->tries > r->max_tries) return false;
    size_t left = f->left;
    bool first = left == json_object_size(f->v);
    const char **rest = malloc(left * sizeof *rest);
    bool *can = malloc(left), *look = malloc(left);
    for (size_t i = 0; i < left; i++) {
        int s = r->steps;
        size_t l = r->len;
        can[i] = ro_feed_key(r, f->keys[i], first);
        ro_back(r, s, l);
    }
    for (size_t i = 0; i < left; i++) {
        int s = r->steps;
        size_t l = r->len;
        look[i] = can[i] && ro_feed_key(r, f->keys[i], first) &&
                  ro_value(r, json_object_get(f->v, f->keys[i]), 0);
        for (size_t j = 0; look[i] && j < left; j++) {
            if (j == i || !can[j]) continue;
            int s2 = r->steps;
            size_t l2 = r->len;
            look[i] = ro_feed_key(r, f->keys[j], false);
            ro_back(r, s2, l2);
        }
        ro_back(r, s, l);
    }
    bool ok = false;
    for (int pass = 0; pass < 2 && !ok; pass++) {
        for (size_t i = 0; i < left && !ok; i++) {
            if (!can[i] || look[i] != (pass == 0)) continue;
            int s = r->steps;
            size_t l = r->len;
            memcpy(rest, f->keys, i * sizeof *rest);
            memcpy(rest + i, f->keys + i + 1, (left - i - 1) * sizeof *rest);
            struct ro_frame next = {f->v, rest, left - 1, 0, f->up};
            ok = ro_feed_key(r, f->keys[i], first) &&
                 ro_go(r, json_object_get(f->v, f->keys[i]), &next);
            if (!ok) ro_back(r, s, l);
        }
    }
    free(look);
    free(can);
    free(rest);
    return ok;
}

/* the instance's text with its keys in g's order (malloc'ed), or NULL when none is found within
 * max_tries */
static char *reorder_instance(struct kiln_grammar *g, json_t *data, long max_tries, size_t *len)
{
    struct kiln_error err = {0};
    struct reorder r = {.max_tries = max_tries};
    if (kiln_matcher_create(g, &r.m, &err)) abort();
    bool ok = ro_go(&r, data, NULL);
    kiln_matcher_free(r.m);
    if (!ok || !r.out) {
        free(r.out);
        return NULL;
    }
    *len = r.len;
    return r.out;
}

static bool accepts(struct kiln_grammar *g, const char *s, size_t n)
{
    struct kiln_error err = {0};
    struct kiln_matcher *m;
    if (kiln_matcher_create(g, &m, &err)) abort();
    bool ok = kiln_matcher_accept_bytes(m, s, n) && kiln_matcher_is_complete(m);
    kiln_matcher_free(m);
    return ok;
}

/* reorder.py's simplified schema: the value constraints removed, everywhere a keyword can be
 * (not inside enum/const/default/examples, nor names in properties maps) */
static void strip_constraints(json_t *s, int depth)
{
    static const char *const drop[] = {
        "minimum",  "maximum",       "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
        "pattern",  "minLength",     "maxLength",        "format",           "minItems",
        "maxItems", "minProperties", "maxProperties"};
    static const char *const maps[] = {"properties",  "patternProperties", "$defs",
                                       "definitions", "dependentSchemas",  "dependencies"};
    static const char *const data[] = {"enum", "const", "default", "examples", "required"};
    if (depth > 200) return;
    if (json_is_array(s)) {
        for (size_t i = 0; i < json_array_size(s); i++)
            strip_constraints(json_array_get(s, i), depth + 1);
        return;
    }
    if (!json_is_object(s)) return;
    for (size_t i = 0; i < sizeof drop / sizeof *drop; i++) json_object_del(s, drop[i]);
    const char *k;
    json_t *v;
    json_object_foreach(s, k, v)
    {
        bool is_map = false, is_data = false;
        for (size_t i = 0; i < sizeof maps / sizeof *maps; i++) is_map |= !strcmp(k, maps[i]);
        for (size_t i = 0; i < sizeof data / sizeof *data; i++) is_data |= !strcmp(k, data[i]);
        if (is_data) continue;
        if (is_map && json_is_object(v)) {
            const char *name;
            json_t *sub;
            json_object_foreach(v, name, sub) strip_constraints(sub, depth + 1);
        } else {
            strip_constraints(v, depth + 1);
        }
    }
}

static struct kiln_grammar *compile_json(json_t *schema, const struct kiln_grammar_vocab *vocab,
                                         const struct kiln_grammar_options *opts, double *us,
                                         struct kiln_error *err)
{
    size_t len = json_dumpb(schema, NULL, 0, JSON_ENCODE_ANY | JSON_COMPACT);
    char *text = malloc(len + 1);
    json_dumpb(schema, text, len, JSON_ENCODE_ANY | JSON_COMPACT);
    struct kiln_constraint_spec spec = {KILN_CONSTRAINT_JSON_SCHEMA, text, len};
    struct kiln_grammar *g = NULL;
    double t0 = now_us();
    enum kiln_status st = kiln_grammar_compile_opts(&spec, vocab, opts, &g, err);
    if (us) *us = now_us() - t0;
    free(text);
    return st ? NULL : g;
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
    bool verbose = false, list = false, accept_only = false, ctimes = false, reorder = false;
    size_t reordered[2] = {0}; /* invalid, valid tests whose keys --reorder moved */
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
        else if (!strcmp(argv[i], "--reorder"))
            reorder = true;
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
        double tc;
        struct kiln_grammar *g =
            compile_json(json_object_get(root, "schema"), vocab, &opts, &tc, &err);
        if (!g) {
            compile_err++;
            if (list) printf("COMPILE %s: %s\n", names[fi], err.msg);
            json_decref(root);
            continue;
        }
        push(&compiles, tc);
        if (ctimes) printf("COMPILED %.0f us %s\n", tc, names[fi]);
        struct kiln_grammar *loose = NULL; /* --reorder: the schema without value constraints */
        if (reorder) {
            json_t *plain = json_deep_copy(json_object_get(root, "schema"));
            strip_constraints(plain, 0);
            loose = compile_json(plain, vocab, &opts, NULL, &err);
            json_decref(plain);
        }
        int verdict = 0; /* 0 ok, 1 validation error, 2 invalidation error (last one wins) */
        size_t i;
        json_t *t;
        json_array_foreach(json_object_get(root, "tests"), i, t)
        {
            bool valid = json_is_true(json_object_get(t, "valid"));
            json_t *data = json_object_get(t, "data");
            size_t inst_len;
            char *inst = py_dumps(data, &inst_len);
            if (reorder) { /* the data's preparation, untimed: keys in kiln's order */
                struct kiln_grammar *by = valid ? g : loose;
                char *moved = NULL;
                size_t moved_len = 0;
                if (by && (!valid || !accepts(g, inst, inst_len)))
                    moved = reorder_instance(by, data, valid ? 20000 : 2000, &moved_len);
                if (moved && (moved_len != inst_len || memcmp(moved, inst, inst_len))) {
                    reordered[valid]++;
                    if (list) printf("REORDERED %s test %zu: %s\n", names[fi], i, moved);
                    free(inst);
                    inst = moved;
                    inst_len = moved_len;
                } else {
                    free(moved);
                }
            }
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
        if (loose) kiln_grammar_unref(loose);
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
    if (reorder)
        printf("reordered (keys put in kiln's order first): %zu valid tests, %zu invalid tests\n",
               reordered[1], reordered[0]);
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
