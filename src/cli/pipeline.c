#include "pipeline.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/file.h"
#include "core/log.h"
#include "core/thread.h"

/* Copied next to the weights when the source folder has them (tokenizer files are what
 * kiln_tokenizer_load reads; config.json is required). */
static const char *const aux_files[] = {
    "config.json",           "generation_config.json",  "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "tokenizer.model"};

/* ---- interruption ---- */

static volatile sig_atomic_t interrupted;
static uint64_t interrupt_at; /* KILN_TEST_INTERRUPT_AT_BYTES */

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

void kiln_cli_catch_interrupts(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    const char *at = getenv("KILN_TEST_INTERRUPT_AT_BYTES");
    if (at && *at) interrupt_at = strtoull(at, NULL, 10);
}

bool kiln_cli_interrupted(void)
{
    return interrupted;
}

/* ---- progress ---- */

struct progress {
    const char *what;
    uint64_t total, done;
    double t0, last;
    bool tty;
    struct kiln_hasher *hash;
};

static void draw(struct progress *p, bool final)
{
    double now = kiln_now(), dt = now - p->t0;
    if (!p->tty || (!final && now - p->last < 0.1)) return;
    p->last = now;
    double frac = p->total ? (double)p->done / (double)p->total : 1.0;
    if (frac > 1) frac = 1;
    char bar[31];
    int fill = (int)(frac * 30);
    for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
    bar[30] = 0;
    fprintf(stderr, "\r  %s [%s] %3d%%  %.2f / %.2f GB  %.2f GB/s%s", p->what, bar,
            (int)(frac * 100), (double)p->done / 1e9, (double)p->total / 1e9,
            dt > 0 ? (double)p->done / dt / 1e9 : 0.0, final ? "\n" : "");
}

static enum kiln_status progress_sink(void *ctx, const void *data, size_t n, struct kiln_error *err)
{
    struct progress *p = ctx;
    p->done += n;
    if (interrupt_at && p->done >= interrupt_at) {
        interrupt_at = 0;
        raise(SIGINT);
    }
    if (interrupted) return kiln_errorf(err, KILN_ERR_IO, "interrupted");
    draw(p, false);
    return p->hash ? kiln_hasher_update(p->hash, data, n, err) : KILN_OK;
}

/* ---- writing ---- */

enum kiln_status kiln_cli_check_output(const char *src, const char *out, bool force,
                                       struct kiln_error *err)
{
    char a[PATH_MAX], b[PATH_MAX];
    if (realpath(src, a) && realpath(out, b) && !strcmp(a, b))
        return kiln_errorf(err, KILN_ERR_INVALID,
                           "the output folder %s is the input folder: write somewhere else", out);
    return kiln_outdir_check(out, force, err);
}

static struct kiln_file_record *next_record(struct kiln_cli_output *out)
{
    KILN_ASSERT(out->n_files < KILN_CLI_MAX_FILES);
    return &out->files[out->n_files++];
}

enum kiln_status kiln_cli_write_text(struct kiln_cli_output *out, const char *name,
                                     const char *text, bool rec, struct kiln_error *err)
{
    char path[4200];
    if (!text) return kiln_errorf(err, KILN_ERR_NOMEM, "%s: out of memory", name);
    if (interrupted) return kiln_errorf(err, KILN_ERR_IO, "interrupted");
    size_t len = strlen(text);
    enum kiln_status st = kiln_outdir_path(&out->dir, name, path, sizeof path, err);
    if (!st) st = kiln_file_write_atomic(path, text, len, err);
    if (!st && rec) {
        struct kiln_file_record *r = next_record(out);
        snprintf(r->name, sizeof r->name, "%s", name);
        r->bytes = len;
        st = kiln_hash_bytes(text, len, NULL, &r->xxh3, err);
    }
    return st;
}

/* hf_quant_config.json as ModelOpt writes it, with exclude_modules naming kiln's modules, so
 * the folder's config reads back exactly as the weights are stored. */
static char *quant_config(const struct kiln_model *m, bool kv_fp8)
{
    json_t *ex = json_array();
    bool any_fp8 = false;
    for (int i = 0; i < m->cfg.n_layers; i++) {
        const struct kiln_layer_weights *w = &m->layers[i];
        const struct kiln_linear *lin[4] = {&w->qkv, &w->o, &w->gate_up, &w->down};
        static const char *const names[4] = {KILN_FUSED_QKV, "self_attn.o_proj", KILN_FUSED_GATE_UP,
                                             "mlp.down_proj"};
        for (int k = 0; k < 4; k++) {
            any_fp8 |= lin[k]->fp8;
            if (lin[k]->fp8) continue;
            char name[160];
            snprintf(name, sizeof name, "model.layers.%d.%s", i, names[k]);
            json_array_append_new(ex, json_string(name));
        }
    }
    if (!m->cfg.tie_word_embeddings && !m->lm_head.fp8)
        json_array_append_new(ex, json_string("lm_head"));
    if (!any_fp8) json_array_clear(ex);
    json_t *q = json_pack("{s:{s:s,s:s},s:{s:o,s:o,s:o}}", "producer", "name", "kiln", "version",
                          KILN_VERSION, "quantization", "quant_algo",
                          any_fp8 ? json_string("FP8") : json_null(), "kv_cache_quant_algo",
                          kv_fp8 ? json_string("FP8") : json_null(), "exclude_modules", ex);
    char *s = q ? json_dumps(q, JSON_INDENT(4)) : NULL;
    json_decref(q);
    return s;
}

static bool any_fp8(const struct kiln_model *m)
{
    for (int i = 0; i < m->cfg.n_layers; i++)
        if (m->layers[i].qkv.fp8 || m->layers[i].o.fp8 || m->layers[i].gate_up.fp8 ||
            m->layers[i].down.fp8)
            return true;
    return m->lm_head.fp8;
}

enum kiln_status kiln_cli_write_model(const struct kiln_model *m, const char *src_dir,
                                      const struct kiln_fused_options *fo, bool kv_fp8,
                                      struct kiln_cli_output *out, struct kiln_error *err)
{
    struct kiln_pool *pool = kiln_pool_create(0);
    struct progress p = {.what = KILN_WEIGHTS_FILE,
                         .total = kiln_fused_bytes(m, fo->kv_scales),
                         .t0 = kiln_now(),
                         .tty = isatty(STDERR_FILENO),
                         .hash = kiln_hasher_create()};
    char path[4200];
    enum kiln_status st = KILN_OK;
    if (!pool || !p.hash) st = kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    if (!st) st = kiln_outdir_path(&out->dir, KILN_WEIGHTS_FILE, path, sizeof path, err);
    if (!st) {
        struct kiln_fused_options o = *fo;
        o.pool = pool;
        o.sink = progress_sink;
        o.sink_ctx = &p;
        st = kiln_write_fused(m, path, &o, err);
        if (p.tty) fprintf(stderr, "\r\033[K");
    }
    if (!st) {
        struct kiln_file_record *r = next_record(out);
        snprintf(r->name, sizeof r->name, "%s", KILN_WEIGHTS_FILE);
        r->bytes = kiln_hasher_bytes(p.hash);
        r->xxh3 = kiln_hasher_digest(p.hash);
        out->write_seconds = kiln_now() - p.t0;
        out->bytes = r->bytes;
    }
    kiln_hasher_free(p.hash);
    kiln_pool_free(pool);
    for (size_t i = 0; !st && i < sizeof aux_files / sizeof aux_files[0]; i++) {
        char src[4200];
        if ((st = kiln_path_join(src, sizeof src, src_dir, aux_files[i], err))) break;
        if (!kiln_file_exists(src)) continue;
        if ((st = kiln_outdir_path(&out->dir, aux_files[i], path, sizeof path, err))) break;
        st = kiln_copy_file(src, path, aux_files[i], next_record(out), err);
    }
    if (!st && (any_fp8(m) || kv_fp8)) {
        char *q = quant_config(m, kv_fp8);
        st = kiln_cli_write_text(out, "hf_quant_config.json", q, true, err);
        free(q);
    }
    return st;
}

int kiln_cli_pipeline_exit(const char *cmd, const char *out, enum kiln_status st,
                           const struct kiln_error *err)
{
    if (!st) return 0;
    fflush(stdout); /* the plan printed so far comes before the error */
    if (interrupted) {
        fprintf(stderr, "kiln %s: interrupted; %s was not written\n", cmd, out);
        return 130;
    }
    fprintf(stderr, "kiln %s: %s\n", cmd, err->msg);
    return 1;
}

/* ---- sizes ---- */

bool kiln_cli_size(const char *s, uint64_t *out)
{
    static const struct {
        const char *suffix;
        double mul;
    } units[] = {{"", 1},          {"B", 1},
                 {"KB", 1e3},      {"MB", 1e6},
                 {"GB", 1e9},      {"TB", 1e12},
                 {"K", 1024.0},    {"M", 1048576.0},
                 {"G", 1 << 30},   {"T", 1099511627776.0},
                 {"KiB", 1024.0},  {"MiB", 1048576.0},
                 {"GiB", 1 << 30}, {"TiB", 1099511627776.0}};
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !isfinite(v) || v <= 0 || *s == '-') return false;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(end, units[i].suffix)) continue;
        double bytes = v * units[i].mul;
        if (bytes >= 1.8e19) return false;
        *out = (uint64_t)bytes;
        return true;
    }
    return false;
}

double kiln_cli_gib(uint64_t bytes)
{
    return (double)bytes / (double)(1u << 30);
}
