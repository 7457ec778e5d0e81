/* kiln build CKPT_OR_HF_DIR -o ENGINE: a kiln checkpoint (or a Hugging Face folder, converted in
 * memory) -> an engine for one GPU and one set of limits (model/format.h).
 *
 *   1. limits: --max-batch-size, --max-input-len, --max-seq-len, --max-num-tokens, KV dtype and
 *      tokens per block, checked against the model; they become the runtime's defaults and
 *      ceilings when the engine is served;
 *   2. memory plan: exactly what the CUDA backend allocates for these limits (backend/cuda/
 *      plan.h, the function its create uses) with a KV pool for every sequence at full length,
 *      printed and checked against the GPU or --gpu-memory, with an error naming the limit to
 *      lower; an unset --max-batch-size becomes the most that fits;
 *   3. GEMMs: on a GPU, cuBLASLt's best candidates timed for each prefill shape the limits imply
 *      (token counts in powers of two up to max_num_tokens) and the fastest recorded; without
 *      one, the heuristic decides at run time;
 *   4. files: the weights with q|k|v and gate|up rows in the kernels' order (the CUDA backend
 *      copies them to the GPU as they lie), config and tokenizer files, engine.json with every
 *      file's size and checksum; written to ENGINE.tmp-PID and renamed. */
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/plan.h"
#include "backend/cuda/tune.h"
#include "cli.h"
#include "common.h"
#include "core/log.h"
#include "model/format.h"
#include "model/model.h"
#include "pipeline.h"

#define MAX_SHAPES      256
#define AUTO_MAX_BATCH  256 /* an unset --max-batch-size: the most that fits, at most this */
#define NO_GPU_BATCH    8   /* ... and this without a GPU or --gpu-memory */
#define DEFAULT_MAX_SEQ 8192

struct build_args {
    const char *src, *out;
    int max_batch, max_input, max_seq, max_tokens, block;
    int kv_dtype; /* -1: FP8 when the checkpoint has FP8 KV scales */
    uint64_t gpu_memory;
    enum kiln_cli_device device;
    int candidates;
    bool force;
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kiln build CKPT_OR_HF_DIR -o ENGINE [options]\n"
            "Builds an engine for this GPU and these limits from a kiln checkpoint (kiln convert)\n"
            "or a Hugging Face folder. Then: kiln serve ENGINE.\n"
            "  -o, --output ENGINE     the folder to write (replaced only with --force)\n"
            "  --max-batch-size N      sequences per step (default: as many full-length\n"
            "                          sequences as fit the GPU, at most %d; %d without a GPU)\n"
            "  --max-input-len N       longest prompt (default: max-seq-len - 1)\n"
            "  --max-seq-len N         prompt + output tokens (default: the model's context, at\n"
            "                          most %d)\n"
            "  --max-num-tokens N      tokens per step (default: max-batch-size x max-input-len,\n"
            "                          at most 8192 and at least max-batch-size)\n"
            "  --kv-dtype fp8|bf16     KV cache (default: fp8 when the checkpoint has FP8 KV\n"
            "                          scales)\n"
            "  --tokens-per-block N    positions per KV block (default 16)\n"
            "  --gpu-memory SIZE       check the memory plan against SIZE (e.g. 12GiB for an RTX\n"
            "                          4070 Ti) instead of this GPU's memory\n"
            "  --device auto|cpu|cuda  GPU to time GEMMs on (auto: the first GPU, if any; cpu: no\n"
            "                          timing, cuBLASLt's heuristic decides at run time)\n"
            "  --gemm-candidates N     cuBLASLt algorithms timed per GEMM shape (default 8)\n"
            "  --force                 replace ENGINE if it exists\n",
            AUTO_MAX_BATCH, NO_GPU_BATCH, DEFAULT_MAX_SEQ);
}

enum {
    O_BATCH = 256,
    O_INPUT,
    O_SEQ,
    O_TOKENS,
    O_KV,
    O_BLOCK,
    O_MEM,
    O_DEVICE,
    O_CAND,
    O_FORCE,
    O_HELP
};

static const struct option opts[] = {{"output", required_argument, 0, 'o'},
                                     {"max-batch-size", required_argument, 0, O_BATCH},
                                     {"max-input-len", required_argument, 0, O_INPUT},
                                     {"max-seq-len", required_argument, 0, O_SEQ},
                                     {"max-num-tokens", required_argument, 0, O_TOKENS},
                                     {"kv-dtype", required_argument, 0, O_KV},
                                     {"tokens-per-block", required_argument, 0, O_BLOCK},
                                     {"gpu-memory", required_argument, 0, O_MEM},
                                     {"device", required_argument, 0, O_DEVICE},
                                     {"gemm-candidates", required_argument, 0, O_CAND},
                                     {"force", no_argument, 0, O_FORCE},
                                     {"help", no_argument, 0, O_HELP},
                                     {0, 0, 0, 0}};

static bool option(int id, const char *arg, void *ctx)
{
    struct build_args *a = ctx;
    switch (id) {
    case 'o':
        a->out = arg;
        return true;
    case O_BATCH:
        return kiln_cli_int(arg, 1, 1 << 16, &a->max_batch);
    case O_INPUT:
        return kiln_cli_int(arg, 1, 1 << 24, &a->max_input);
    case O_SEQ:
        return kiln_cli_int(arg, 2, 1 << 24, &a->max_seq);
    case O_TOKENS:
        return kiln_cli_int(arg, 1, 1 << 24, &a->max_tokens);
    case O_KV:
        a->kv_dtype = !strcmp(arg, "fp8") ? KILN_DTYPE_F8E4M3 : KILN_DTYPE_BF16;
        return !strcmp(arg, "fp8") || !strcmp(arg, "bf16");
    case O_BLOCK:
        return kiln_cli_int(arg, 1, 4096, &a->block);
    case O_MEM:
        return kiln_cli_size(arg, &a->gpu_memory);
    case O_DEVICE:
        a->device = !strcmp(arg, "cpu")    ? KILN_CLI_DEVICE_CPU
                    : !strcmp(arg, "cuda") ? KILN_CLI_DEVICE_CUDA
                                           : KILN_CLI_DEVICE_AUTO;
        return !strcmp(arg, "auto") || !strcmp(arg, "cpu") || !strcmp(arg, "cuda");
    case O_CAND:
        return kiln_cli_int(arg, 1, 32, &a->candidates);
    case O_FORCE:
        a->force = true;
        return true;
    }
    return false;
}

static int parse(int argc, char **argv, struct build_args *a)
{
    static const struct kiln_cli_command cmd = {"build", "o:h", opts, usage, option};
    *a = (struct build_args){.kv_dtype = -1, .block = 16, .candidates = 8};
    int rc = kiln_cli_parse(&cmd, argc, argv, a, NULL, &a->src);
    if (rc == KILN_CLI_GO_ON && !a->out) {
        usage(stderr);
        return 2;
    }
    return rc;
}

/* ---- limits and the memory plan ---- */

struct build {
    const struct build_args *a;
    struct kiln_model *m;
    struct kiln_engine_meta meta; /* what engine.json records */
    bool gpu;                     /* a GPU to time GEMMs on */
    struct kiln_cuda_device dev;
    uint64_t available;       /* memory the plan must fit; 0: unchecked */
    const char *available_of; /* "--gpu-memory" or the GPU's name */
    const char *cpu_only;     /* why the CUDA backend cannot run this model, or NULL */
    struct kiln_cuda_plan plan;
    bool auto_batch;
};

/* What the CUDA backend refuses (check_model in cuda.c): such an engine runs on the CPU. */
static const char *cuda_unsupported(const struct kiln_model *m)
{
    const struct kiln_config *c = &m->cfg;
    if (c->head_dim != 64 && c->head_dim != 128) return "head_dim is not 64 or 128";
    if (c->hidden_size % 64 || c->intermediate_size % 64)
        return "hidden_size or intermediate_size is not a multiple of 64";
    for (int l = 0; l < c->n_layers; l++) {
        const struct kiln_layer_weights *w = &m->layers[l];
        if (!w->qkv.fp8 || !w->o.fp8 || !w->gate_up.fp8 || !w->down.fp8)
            return "its linears are not FP8 (convert with --fp8)";
        if (w->attn_norm.dtype != KILN_DTYPE_BF16 || w->mlp_norm.dtype != KILN_DTYPE_BF16)
            return "its norms are not BF16";
    }
    if (m->embed.dtype != KILN_DTYPE_BF16 || m->norm.dtype != KILN_DTYPE_BF16)
        return "its embedding or final norm is not BF16";
    if (!m->lm_head.fp8 && m->lm_head.part[0].dtype != KILN_DTYPE_BF16)
        return "its lm_head is neither FP8 nor BF16";
    return NULL;
}

static void fill_plan(struct build *b, int max_batch)
{
    struct kiln_engine_meta *e = &b->meta;
    e->max_batch_size = max_batch;
    e->max_num_tokens = b->a->max_tokens;
    if (!e->max_num_tokens) {
        int64_t t = (int64_t)max_batch * e->max_input_len;
        e->max_num_tokens = t > 8192 ? 8192 : (int)t;
        if (e->max_num_tokens < max_batch) e->max_num_tokens = max_batch;
    }
    struct kiln_backend_options o;
    kiln_backend_options_default(&o);
    o.kv_dtype = e->kv_dtype;
    o.block_size = e->tokens_per_block;
    o.max_seqs = max_batch;
    o.max_tokens = e->max_num_tokens;
    o.max_seq_len = e->max_seq_len;
    o.n_blocks = 0; /* every sequence at max_seq_len */
    kiln_cuda_plan(b->m, &o, &b->plan);
}

static enum kiln_status resolve_limits(struct build *b, struct kiln_error *err)
{
    const struct build_args *a = b->a;
    const struct kiln_config *c = &b->m->cfg;
    struct kiln_engine_meta *e = &b->meta;
    int ctx = c->max_position_embeddings;
    e->max_seq_len = a->max_seq                         ? a->max_seq
                     : ctx > 0 && ctx < DEFAULT_MAX_SEQ ? ctx
                                                        : DEFAULT_MAX_SEQ;
    if (ctx > 0 && e->max_seq_len > ctx)
        return kiln_errorf(err, KILN_ERR_LIMIT,
                           "--max-seq-len %d exceeds the model's context of %d positions "
                           "(max_position_embeddings)",
                           e->max_seq_len, ctx);
    e->max_input_len = a->max_input ? a->max_input : e->max_seq_len - 1;
    if (e->max_input_len >= e->max_seq_len)
        return kiln_errorf(err, KILN_ERR_INVALID,
                           "--max-input-len %d must be less than --max-seq-len %d (prompt + at "
                           "least one generated token)",
                           e->max_input_len, e->max_seq_len);
    if (a->max_tokens && a->max_batch && a->max_tokens < a->max_batch)
        return kiln_errorf(err, KILN_ERR_INVALID,
                           "--max-num-tokens %d must be at least --max-batch-size %d (every "
                           "running sequence decodes one token per step)",
                           a->max_tokens, a->max_batch);
    e->kv_dtype = a->kv_dtype >= 0  ? (enum kiln_dtype)a->kv_dtype
                  : c->fp8_kv_cache ? KILN_DTYPE_F8E4M3
                                    : KILN_DTYPE_BF16;
    if (e->kv_dtype == KILN_DTYPE_F8E4M3 && !c->fp8_kv_cache)
        KILN_WARN("--kv-dtype fp8 but %s has no FP8 KV-cache scales: they are 1.0 (kiln convert "
                  "--fp8-kv-cache calibrates them)",
                  a->src);
    e->tokens_per_block = a->block;
    return KILN_OK;
}

static bool fits(struct build *b, int max_batch)
{
    fill_plan(b, max_batch);
    return !b->available || b->plan.total <= b->available;
}

/* The error for a plan that does not fit: what to lower, largest part first. */
static enum kiln_status no_fit(const struct build *b, struct kiln_error *err)
{
    const struct kiln_cuda_plan *p = &b->plan;
    const struct kiln_engine_meta *e = &b->meta;
    uint64_t fixed = p->weights + p->workspace + p->reserve + p->context;
    if (fixed > b->available)
        return kiln_errorf(err, KILN_ERR_LIMIT,
                           "the weights alone need %.1f GiB (%.1f GiB with the CUDA context and "
                           "workspace), %.1f GiB available (%s): this model does not fit",
                           kiln_cli_gib(p->weights), kiln_cli_gib(fixed),
                           kiln_cli_gib(b->available), b->available_of);
    char kv[200], act[160];
    if (b->auto_batch) /* one sequence did not fit: only its length is left to lower */
        snprintf(kv, sizeof kv, "--max-seq-len (KV cache %.1f GiB for one sequence of %d tokens)",
                 kiln_cli_gib(p->kv), e->max_seq_len);
    else
        snprintf(kv, sizeof kv,
                 "--max-seq-len (KV cache %.1f GiB for %d x %d tokens) or --max-batch-size",
                 kiln_cli_gib(p->kv), e->max_batch_size, e->max_seq_len);
    snprintf(act, sizeof act, "--max-num-tokens (activations %.1f GiB for %d tokens per step)",
             kiln_cli_gib(p->activations), e->max_num_tokens);
    bool kv_first = p->kv >= p->activations;
    return kiln_errorf(err, KILN_ERR_LIMIT,
                       "the engine needs %.1f GiB, %.1f GiB available (%s): lower %s, or %s%s",
                       kiln_cli_gib(p->total), kiln_cli_gib(b->available), b->available_of,
                       kv_first ? kv : act, kv_first ? act : kv,
                       e->kv_dtype == KILN_DTYPE_BF16 ? ", or use --kv-dtype fp8" : "");
}

static enum kiln_status plan_memory(struct build *b, struct kiln_error *err)
{
    const struct build_args *a = b->a;
    if (a->gpu_memory) {
        b->available = a->gpu_memory;
        b->available_of = "--gpu-memory";
    } else if (b->gpu) {
        b->available = b->dev.total_bytes;
        b->available_of = b->dev.name;
    }
    b->auto_batch = !a->max_batch;
    if (a->max_batch) {
        if (!fits(b, a->max_batch)) return no_fit(b, err);
        return KILN_OK;
    }
    if (!b->available) { /* nothing to fit: a small default */
        fill_plan(b, NO_GPU_BATCH);
        return KILN_OK;
    }
    if (!fits(b, 1)) return no_fit(b, err);
    int lo = 1, hi = AUTO_MAX_BATCH; /* the largest batch that fits: fits() is monotonic */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (fits(b, mid))
            lo = mid;
        else
            hi = mid - 1;
    }
    fill_plan(b, lo);
    return KILN_OK;
}

static void print_plan(const struct build *b)
{
    const struct kiln_cuda_plan *p = &b->plan;
    const struct kiln_engine_meta *e = &b->meta;
    printf("limits: max_batch_size %d%s, max_input_len %d, max_seq_len %d, max_num_tokens %d, "
           "KV %s in blocks of %d\n",
           e->max_batch_size, b->auto_batch && b->available ? " (the most that fit)" : "",
           e->max_input_len, e->max_seq_len, e->max_num_tokens,
           e->kv_dtype == KILN_DTYPE_F8E4M3 ? "fp8" : "bf16", e->tokens_per_block);
    printf("memory plan (CUDA):\n"
           "  weights              %8.2f GiB\n"
           "  activations          %8.2f GiB  (%d tokens per step, batch %d)\n"
           "  KV cache             %8.2f GiB  (%d blocks: %d x %d tokens)\n"
           "  cuBLASLt workspace   %8.2f GiB\n"
           "  graphs, reserve      %8.2f GiB\n"
           "  CUDA context         %8.2f GiB  (estimate)\n"
           "  total                %8.2f GiB",
           kiln_cli_gib(p->weights), kiln_cli_gib(p->activations), e->max_num_tokens,
           e->max_batch_size, kiln_cli_gib(p->kv), p->kv_blocks, e->max_batch_size, e->max_seq_len,
           kiln_cli_gib(p->workspace), kiln_cli_gib(p->reserve), kiln_cli_gib(p->context),
           kiln_cli_gib(p->total));
    if (b->available)
        printf(" of %.2f GiB (%s)\n", kiln_cli_gib(b->available), b->available_of);
    else
        printf(" (not checked: no GPU; --gpu-memory SIZE checks it)\n");
}

/* ---- GEMM timing ---- */

static int add_shape(struct kiln_gemm_shape *s, int n, int M, int N, int K, bool fp8, bool out_bf16)
{
    for (int i = 0; i < n; i++)
        if (s[i].M == M && s[i].N == N && s[i].K == K && s[i].fp8 == fp8 &&
            s[i].out_bf16 == out_bf16)
            return n;
    if (n < MAX_SHAPES) s[n++] = (struct kiln_gemm_shape){M, N, K, fp8, out_bf16};
    return n;
}

/* Token buckets of the prefill path (more than KILN_CUDA_DECODE_MAX_TOKENS tokens): powers of
 * two from 16 below the limit, then the limit itself. */
static int add_buckets(struct kiln_gemm_shape *s, int n, int M, int K, bool fp8, bool out_bf16,
                       int limit)
{
    if (limit <= KILN_CUDA_DECODE_MAX_TOKENS) return n;
    for (int b = 16; b < limit; b *= 2) n = add_shape(s, n, M, b, K, fp8, out_bf16);
    return add_shape(s, n, M, limit, K, fp8, out_bf16);
}

static enum kiln_status tune(struct build *b, double *seconds, struct kiln_error *err)
{
    const struct kiln_model *m = b->m;
    const struct kiln_layer_weights *w = &m->layers[0];
    const struct kiln_engine_meta *e = &b->meta;
    struct kiln_gemm_shape shapes[MAX_SHAPES];
    int n = 0, T = e->max_num_tokens;
    const struct kiln_linear *lin[4] = {&w->qkv, &w->o, &w->gate_up, &w->down};
    /* q|k|v and gate|up write bf16 (the CUDA backend's cuda_linear.out_bf16) */
    for (int k = 0; k < 4; k++)
        n = add_buckets(shapes, n, (int)lin[k]->out, (int)lin[k]->in, true,
                        lin[k] == &w->qkv || lin[k] == &w->gate_up, T);
    /* the lm_head runs through cuBLASLt only for more than 8 output rows */
    n = add_buckets(shapes, n, (int)m->lm_head.out, (int)m->lm_head.in, m->lm_head.fp8, false,
                    e->max_batch_size);
    double t0 = kiln_now();
    b->meta.gemms = calloc((size_t)n + 1, sizeof *b->meta.gemms);
    if (!b->meta.gemms) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    fprintf(stderr, "timing %d cuBLASLt candidates for %d GEMM shapes on %s ...\n",
            b->a->candidates, n, b->dev.name);
    enum kiln_status st = kiln_cuda_tune_gemms(0, shapes, n, b->a->candidates, b->meta.gemms, err);
    if (st) return kiln_error_prefix(err, "GEMM timing");
    b->meta.n_gemms = n;
    *seconds = kiln_now() - t0;
    int better = 0;
    double best_gain = 0;
    for (int i = 0; i < n; i++) {
        const struct kiln_gemm_algo *g = &b->meta.gemms[i];
        double gain = g->heuristic_us > 0 ? 1.0 - g->us / g->heuristic_us : 0;
        if (gain > 0.005) better++;
        if (gain > best_gain) best_gain = gain;
    }
    printf("GEMMs: %d shapes timed in %.1f s; on %d the fastest candidate beat cuBLASLt's first "
           "choice (by up to %.0f%%)\n",
           n, *seconds, better, 100 * best_gain);
    return KILN_OK;
}

/* ---- engine.json ---- */

static json_t *extra_json(const struct build *b, double seconds)
{
    const struct kiln_config *c = &b->m->cfg;
    const struct kiln_cuda_plan *p = &b->plan;
    char src[PATH_MAX], created[32];
    if (!realpath(b->a->src, src)) snprintf(src, sizeof src, "%s", b->a->src);
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_t *model = json_pack(
        "{s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:b,s:b,s:I}", "architecture", c->architecture,
        "vocab_size", c->vocab_size, "hidden_size", c->hidden_size, "intermediate_size",
        c->intermediate_size, "num_hidden_layers", c->n_layers, "num_attention_heads", c->n_heads,
        "num_key_value_heads", c->n_kv_heads, "head_dim", c->head_dim, "max_position_embeddings",
        c->max_position_embeddings, "fp8", b->m->layers[0].qkv.fp8, "fp8_kv_scales",
        c->fp8_kv_cache, "weight_bytes", (json_int_t)kiln_model_weight_bytes(b->m));
    json_t *plan =
        json_pack("{s:I,s:I,s:I,s:i,s:I,s:I,s:I,s:I,s:o,s:o}", "weights", (json_int_t)p->weights,
                  "activations", (json_int_t)p->activations, "kv_cache", (json_int_t)p->kv,
                  "kv_blocks", p->kv_blocks, "cublaslt_workspace", (json_int_t)p->workspace,
                  "reserve", (json_int_t)p->reserve, "cuda_context_estimate",
                  (json_int_t)p->context, "total", (json_int_t)p->total, "available",
                  b->available ? json_integer((json_int_t)b->available) : json_null(),
                  "available_from", b->available ? json_string(b->available_of) : json_null());
    return json_pack("{s:s,s:s,s:f,s:o,s:o,s:o}", "source", src, "created", created,
                     "build_seconds", seconds, "runs_on",
                     b->cpu_only ? json_string("cpu") : json_string("cuda, cpu"), "model", model,
                     "memory_plan", plan);
}

static enum kiln_status build(const struct build_args *a, struct kiln_error *err)
{
    double t0 = kiln_now(), tune_s = 0;
    struct build b = {.a = a};
    struct kiln_cli_output out = {0};
    enum kiln_status st = kiln_cli_check_output(a->src, a->out, a->force, err);
    if (!st) st = kiln_model_load(a->src, &b.m, err);
    if (!st && b.m->format == KILN_FORMAT_ENGINE)
        st = kiln_errorf(err, KILN_ERR_INVALID,
                         "%s is an engine already: build from its checkpoint", a->src);
    if (!st) st = resolve_limits(&b, err);
    if (st) goto done;
    b.cpu_only = cuda_unsupported(b.m);
    bool want_gpu = a->device == KILN_CLI_DEVICE_CUDA ||
                    (a->device == KILN_CLI_DEVICE_AUTO && kiln_cuda_available());
    if (want_gpu && b.cpu_only) {
        if (a->device == KILN_CLI_DEVICE_CUDA) {
            st = kiln_errorf(err, KILN_ERR_UNSUPPORTED, "the CUDA backend cannot run %s: %s",
                             a->src, b.cpu_only);
            goto done;
        }
        want_gpu = false;
    }
    if (want_gpu) {
        if ((st = kiln_cuda_device_info(0, &b.dev, err))) goto done;
        b.gpu = true;
        snprintf(b.meta.gpu_name, sizeof b.meta.gpu_name, "%s", b.dev.name);
        b.meta.cc_major = b.dev.cc_major;
        b.meta.cc_minor = b.dev.cc_minor;
        b.meta.gpu_memory = b.dev.total_bytes;
        b.meta.cublaslt_version = b.dev.cublaslt_version;
    }
    if (b.cpu_only) {
        KILN_WARN("%s: the CUDA backend cannot run this model (%s): the engine runs on the CPU "
                  "only",
                  a->src, b.cpu_only);
        fill_plan(&b, a->max_batch ? a->max_batch : NO_GPU_BATCH);
        b.auto_batch = !a->max_batch;
    } else {
        st = plan_memory(&b, err);
        b.meta.qkv_order = KILN_ROWS_QKV_PAIRED;
        b.meta.gate_up_order = KILN_ROWS_GU_INTERLEAVED;
    }
    if (!st && a->max_tokens && a->max_tokens < b.meta.max_batch_size)
        st = kiln_errorf(err, KILN_ERR_INVALID,
                         "--max-num-tokens %d must be at least max_batch_size %d", a->max_tokens,
                         b.meta.max_batch_size);
    if (!b.cpu_only) print_plan(&b);
    if (st) goto done;
    if (b.gpu && (st = tune(&b, &tune_s, err))) goto done;
    if (!b.gpu && !b.cpu_only)
        printf("GEMMs: no GPU to time them on: cuBLASLt's heuristic picks at run time (build on "
               "the serving GPU to time them)\n");
    fflush(stdout);

    if ((st = kiln_outdir_begin(&out.dir, a->out, a->force, err))) goto done;
    kiln_cli_catch_interrupts();
    struct kiln_fused_options fo = {
        .qkv_order = b.meta.qkv_order, .gate_up_order = b.meta.gate_up_order, .kv_scales = true};
    st = kiln_cli_write_model(b.m, a->src, &fo, b.meta.kv_dtype == KILN_DTYPE_F8E4M3, &out, err);
    if (!st) {
        b.meta.files = out.files;
        b.meta.n_files = out.n_files;
        json_t *extra = extra_json(&b, kiln_now() - t0);
        json_t *root = kiln_engine_meta_json(&b.meta, extra);
        char *text = root ? json_dumps(root, JSON_INDENT(2)) : NULL;
        json_decref(root);
        json_decref(extra);
        b.meta.files = NULL;
        b.meta.n_files = 0;
        st = kiln_cli_write_text(&out, KILN_ENGINE_JSON, text, false, err);
        free(text);
    }
    if (!st && kiln_cli_interrupted()) st = kiln_errorf(err, KILN_ERR_IO, "interrupted");
    if (!st) st = kiln_outdir_commit(&out.dir, err);
    if (!st)
        fprintf(
            stderr,
            "kiln build: wrote %s in %.1f s (weights %.2f GB in %.1f s, GEMM timing %.1f s)%s\n",
            out.dir.out, kiln_now() - t0, (double)out.bytes / 1e9, out.write_seconds, tune_s,
            b.cpu_only ? "; CPU only" : "");
done:
    kiln_outdir_abort(&out.dir);
    free(b.meta.gemms);
    kiln_model_free(b.m);
    return st;
}

int kiln_cmd_build(int argc, char **argv)
{
    struct build_args a;
    int rc = parse(argc, argv, &a);
    if (rc != KILN_CLI_GO_ON) return rc;
    struct kiln_error err = {0};
    return kiln_cli_pipeline_exit("build", a.out, build(&a, &err), &err);
}
