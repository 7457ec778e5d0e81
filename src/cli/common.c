#include "common.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/tune.h"
#include "core/log.h"
#include "model/format.h"

bool kiln_cli_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return false;
    *out = (int)v;
    return true;
}

bool kiln_cli_float(const char *s, float lo, float hi, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < lo || v > hi) return false;
    *out = v;
    return true;
}

bool kiln_cli_u64(const char *s, unsigned long long *out)
{
    char *end;
    errno = 0;
    if (*s == '-') return false;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end) return false;
    *out = v;
    return true;
}

enum kiln_status kiln_cli_parse_ids(const char *s, int32_t **ids, int *n, struct kiln_error *err)
{
    *ids = NULL;
    *n = 0;
    size_t cap = 1;
    for (const char *p = s; *p; p++) cap += *p == ',';
    int32_t *v = malloc(cap * sizeof(int32_t));
    if (!v) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    int count = 0;
    const char *p = s;
    for (;;) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (errno || end == p || x < 0 || x > INT32_MAX || (*end && *end != ',')) {
            free(v);
            return kiln_errorf(err, KILN_ERR_INVALID, "'%s' is not a list of token ids", s);
        }
        v[count++] = (int32_t)x;
        if (!*end) break;
        p = end + 1;
    }
    *ids = v;
    *n = count;
    return KILN_OK;
}

int kiln_cli_parse(const struct kiln_cli_command *cmd, int argc, char **argv, void *ctx,
                   struct kiln_cli_backend *backend, const char **positional)
{
    int help = 'h';
    for (const struct option *o = cmd->opts; o->name; o++)
        if (!strcmp(o->name, "help")) help = o->val;
    optind = 1;
    int c, li;
    while (li = -1, (c = getopt_long(argc, argv, cmd->shorts, cmd->opts, &li)) != -1) {
        if (c == help || c == 'h') {
            cmd->usage(stdout);
            return 0;
        }
        if (c == '?' || c == ':') { /* getopt has said what was wrong */
            cmd->usage(stderr);
            return 2;
        }
        bool ok = true;
        if (!backend || !kiln_cli_backend_option(c, optarg, backend, &ok))
            ok = cmd->option(c, optarg, ctx);
        if (!ok) {
            if (li >= 0)
                fprintf(stderr, "kiln %s: bad value '%s' for --%s\n", cmd->name,
                        optarg ? optarg : "", cmd->opts[li].name);
            else
                fprintf(stderr, "kiln %s: bad value '%s' for -%c\n", cmd->name,
                        optarg ? optarg : "", c);
            return 2;
        }
    }
    if (optind != argc - 1) {
        cmd->usage(stderr);
        return 2;
    }
    *positional = argv[optind];
    return KILN_CLI_GO_ON;
}

void kiln_cli_backend_defaults(struct kiln_cli_backend *b)
{
    *b = (struct kiln_cli_backend){
        .device = KILN_CLI_DEVICE_AUTO, .kv_dtype = -1, .block_size = 0, .kv_fraction = 0.9f};
}

bool kiln_cli_backend_option(int c, const char *arg, struct kiln_cli_backend *b, bool *ok)
{
    *ok = true;
    switch (c) {
    case KILN_CLI_OPT_DEVICE:
        if (!strcmp(arg, "auto"))
            b->device = KILN_CLI_DEVICE_AUTO;
        else if (!strcmp(arg, "cpu"))
            b->device = KILN_CLI_DEVICE_CPU;
        else if (!strcmp(arg, "cuda") || !strcmp(arg, "gpu"))
            b->device = KILN_CLI_DEVICE_CUDA;
        else
            *ok = false;
        return true;
    case KILN_CLI_OPT_KV_DTYPE:
        if (!strcmp(arg, "auto"))
            b->kv_dtype = -1;
        else if (!strcmp(arg, "fp8"))
            b->kv_dtype = KILN_DTYPE_F8E4M3;
        else if (!strcmp(arg, "bf16"))
            b->kv_dtype = KILN_DTYPE_BF16;
        else if (!strcmp(arg, "f32"))
            b->kv_dtype = KILN_DTYPE_F32;
        else
            *ok = false;
        return true;
    case KILN_CLI_OPT_BLOCK_SIZE:
        *ok = kiln_cli_int(arg, 1, 4096, &b->block_size);
        return true;
    case KILN_CLI_OPT_THREADS:
        *ok = kiln_cli_int(arg, 0, 1024, &b->threads);
        return true;
    case KILN_CLI_OPT_KV_FRACTION:
        *ok = kiln_cli_float(arg, 0.01f, 1.0f, &b->kv_fraction);
        return true;
    case KILN_CLI_OPT_NO_GRAPHS:
        b->no_graphs = true;
        return true;
    case KILN_CLI_OPT_BATCH_INVARIANT:
        b->batch_invariant = true;
        return true;
    }
    return false;
}

void kiln_cli_backend_options(const struct kiln_cli_backend *b, const struct kiln_model *m,
                              struct kiln_backend_options *opt)
{
    kiln_backend_options_default(opt);
    if (b->kv_dtype >= 0)
        opt->kv_dtype = (enum kiln_dtype)b->kv_dtype;
    else if (m->engine)
        opt->kv_dtype = m->engine->kv_dtype;
    else
        opt->kv_dtype = m->cfg.fp8_kv_cache ? KILN_DTYPE_F8E4M3 : KILN_DTYPE_BF16;
    if (b->block_size)
        opt->block_size = b->block_size;
    else if (m->engine)
        opt->block_size = m->engine->tokens_per_block;
    opt->n_threads = b->threads;
    opt->kv_memory_fraction = b->kv_fraction;
    opt->cuda_graphs = !b->no_graphs;
    opt->batch_invariant = b->batch_invariant;
}

static enum kiln_status over_limit(const struct kiln_model *m, const char *what, int asked,
                                   int limit, const char *option, struct kiln_error *err)
{
    return kiln_errorf(err, KILN_ERR_LIMIT,
                       "%s %d is more than engine %s allows (%d, built with %s %d): ask for at "
                       "most %d, or rebuild the engine with `kiln build CKPT -o %s %s %d`",
                       what, asked, m->dir, limit, option, limit, limit, m->dir, option, asked);
}

enum kiln_status kiln_cli_engine_limits(const struct kiln_model *m, int *max_batch_size,
                                        int *max_num_tokens, int *max_seq_len, int *max_input_len,
                                        struct kiln_error *err)
{
    const struct kiln_engine_meta *e = m->engine;
    if (!e) return KILN_OK;
    struct {
        int *v;
        int limit;
        const char *what, *option;
    } f[4] = {{max_batch_size, e->max_batch_size, "max_batch_size", "--max-batch-size"},
              {max_num_tokens, e->max_num_tokens, "max_num_tokens", "--max-num-tokens"},
              {max_seq_len, e->max_seq_len, "max_seq_len", "--max-seq-len"},
              {max_input_len, e->max_input_len, "max_input_len", "--max-input-len"}};
    for (int i = 0; i < 4; i++) {
        if (!f[i].v) continue;
        if (*f[i].v > f[i].limit)
            return over_limit(m, f[i].what, *f[i].v, f[i].limit, f[i].option, err);
        if (*f[i].v <= 0) *f[i].v = f[i].limit;
    }
    return KILN_OK;
}

/* The backend an engine may get: its limits at most, its KV dtype and block size, and on CUDA
 * a GPU of the compute capability it was built (and timed) for. */
static enum kiln_status check_engine(const struct kiln_model *m,
                                     const struct kiln_backend_options *opt, bool cuda,
                                     struct kiln_error *err)
{
    const struct kiln_engine_meta *e = m->engine;
    if (!e) return KILN_OK;
    if (opt->max_seqs > e->max_batch_size)
        return over_limit(m, "max_batch_size", opt->max_seqs, e->max_batch_size, "--max-batch-size",
                          err);
    if (opt->max_tokens > e->max_num_tokens)
        return over_limit(m, "max_num_tokens", opt->max_tokens, e->max_num_tokens,
                          "--max-num-tokens", err);
    if (opt->max_seq_len > e->max_seq_len)
        return over_limit(m, "max_seq_len", opt->max_seq_len, e->max_seq_len, "--max-seq-len", err);
    static const char *const kv[] = {
        [KILN_DTYPE_F8E4M3] = "fp8", [KILN_DTYPE_BF16] = "bf16", [KILN_DTYPE_F32] = "f32"};
    if (opt->kv_dtype != e->kv_dtype)
        return kiln_errorf(err, KILN_ERR_INVALID,
                           "engine %s was built with --kv-dtype %s: --kv-dtype %s needs an engine "
                           "built with `kiln build --kv-dtype %s`",
                           m->dir, kv[e->kv_dtype], kv[opt->kv_dtype], kv[opt->kv_dtype]);
    if (opt->block_size != e->tokens_per_block)
        return kiln_errorf(err, KILN_ERR_INVALID,
                           "engine %s was built with --tokens-per-block %d: --block-size %d needs "
                           "an engine built with `kiln build --tokens-per-block %d`",
                           m->dir, e->tokens_per_block, opt->block_size, opt->block_size);
    if (!cuda) return KILN_OK;
    struct kiln_cuda_device dev;
    enum kiln_status st = kiln_cuda_device_info(opt->device, &dev, err);
    if (!st) st = kiln_engine_check_gpu(e, m->dir, dev.cc_major, dev.cc_minor, dev.name, err);
    if (!st && !e->cc_major)
        KILN_INFO("engine %s was built without a GPU: cuBLASLt's heuristic picks its GEMM "
                  "algorithms (build it on this GPU to time them)",
                  m->dir);
    return st;
}

enum kiln_status kiln_cli_backend_create(const struct kiln_cli_backend *b,
                                         const struct kiln_model *m,
                                         const struct kiln_backend_options *opt,
                                         struct kiln_backend **out, struct kiln_error *err)
{
    bool cuda = b->device == KILN_CLI_DEVICE_CUDA ||
                (b->device == KILN_CLI_DEVICE_AUTO && kiln_cuda_available());
    enum kiln_status st = check_engine(m, opt, cuda, err);
    if (st) return st;
    if (cuda) return kiln_backend_cuda_create(m, opt, out, err);
    if (b->device == KILN_CLI_DEVICE_AUTO) KILN_INFO("no GPU found: running on the CPU");
    return kiln_backend_cpu_create(m, opt, out, err);
}
