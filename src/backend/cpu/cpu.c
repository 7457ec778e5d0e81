/* The CPU reference backend: the whole Llama forward pass over a mixed batch with a paged KV
 * cache, fp32 math, FP8 activations rounded exactly as the GPU rounds them (ops.h). It is the
 * oracle for the CUDA backend and runs the demo and the tests where there is no GPU. */
#include "cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core/log.h"
#include "ops.h"
#include "runtime/sampler.h"

/* Decoded f32 copies of the weights make the CPU path several times faster; they are made when
 * they fit this budget (tiny and small test models; not an 8B model). */
#define PREPARE_BUDGET ((size_t)3 << 30)

struct cpu_state {
    struct kiln_pool *pool;
    float **prep; /* [n_layers * 4 + 1]: qkv, o, gate_up, down per layer, then lm_head */
    struct kiln_cpu_kv_layer *kv; /* [n_layers] */
    /* The KV pool, every layer's k and v: a mapping of its own, so its pages are committed
     * exactly when a block is first written (the engine counts those blocks: kvcache.h's
     * n_touched) and never come pre-touched from memory malloc recycled. */
    void *kv_pool;
    size_t kv_pool_bytes;
    float *rope; /* (max_seq_len, Dh/2, 2) */
    /* activations for up to max_tokens tokens */
    float *x;      /* (T, d) residual */
    float *h;      /* (T, max(d, f)) normed input / swiglu output */
    float *big;    /* (T, max(qkv, 2f)) linear outputs */
    float *attn;   /* (T, H Dh) */
    uint8_t *x8;   /* (T, max(d, f, H Dh)) FP8 activations */
    float *logits; /* (max_out, vocab) */
    int n_out;
    int max_out;
    float *scratch; /* (2 vocab) for the sampler */
    /* calibration: when set, linears run on f32 inputs and record amax here */
    float *cal_amax, *cal_kv_amax;
};

static float amax_of(const float *x, size_t n)
{
    float m = 0.0f;
    for (size_t i = 0; i < n; i++) m = fmaxf(m, fabsf(x[i]));
    return m;
}

/* y (n, out) = linear(x (n, in)); FP8 linears quantize x with their input scale, or in
 * calibration mode run unquantized and record the largest |x| in *amax. */
static void run_linear(struct cpu_state *s, float *y, const float *x, const struct kiln_linear *l,
                       const float *wf, int n, float *amax)
{
    size_t count = (size_t)n * (size_t)l->in;
    if (amax) *amax = fmaxf(*amax, amax_of(x, count));
    if (l->fp8 && !s->cal_amax) {
        kiln_cpu_quant_fp8(s->x8, x, count, l->input_scale);
        kiln_cpu_linear_fp8(s->pool, y, s->x8, l, wf, n);
    } else {
        kiln_cpu_linear_f32(s->pool, y, x, l, wf, n);
    }
}

static const float *prep_of(const struct cpu_state *s, int index)
{
    return s->prep ? s->prep[index] : NULL;
}

static void copy_columns(float *dst, const float *src, int n, int src_stride, int col0, int cols)
{
    for (int t = 0; t < n; t++)
        memcpy(dst + (size_t)t * cols, src + (size_t)t * src_stride + col0,
               (size_t)cols * sizeof(float));
}

static enum kiln_status cpu_forward(struct kiln_backend *b, const struct kiln_batch *batch,
                                    struct kiln_error *err)
{
    struct cpu_state *s = b->impl;
    const struct kiln_model *m = b->model;
    const struct kiln_config *cfg = &m->cfg;
    enum kiln_status st = kiln_batch_check(b, batch, err);
    if (st) return st;
    int n = batch->n_tokens, d = cfg->hidden_size, f = cfg->intermediate_size;
    int H = cfg->n_heads, Hkv = cfg->n_kv_heads, Dh = cfg->head_dim;
    int qdim = H * Dh, kvdim = Hkv * Dh;

    for (int t = 0; t < n; t++)
        kiln_convert_to_f32(s->x + (size_t)t * d,
                            (const char *)m->embed.data +
                                (size_t)batch->tokens[t] * d * kiln_dtype_size(m->embed.dtype),
                            m->embed.dtype, (size_t)d);

    float *q = s->attn; /* (n, H Dh) rotated queries */
    int n_layers = b->opt.n_layers < 0                                      ? 0
                   : b->opt.n_layers > 0 && b->opt.n_layers < cfg->n_layers ? b->opt.n_layers
                                                                            : cfg->n_layers;
    for (int l = 0; l < n_layers; l++) {
        const struct kiln_layer_weights *w = &m->layers[l];
        float *amax = s->cal_amax ? s->cal_amax + 4 * l : NULL;

        kiln_cpu_rmsnorm(s->h, s->x, &w->attn_norm, cfg->rms_norm_eps, n, d);
        run_linear(s, s->big, s->h, &w->qkv, prep_of(s, 4 * l), n, amax ? &amax[0] : NULL);
        int qkv_dim = qdim + 2 * kvdim;
        /* stored as bf16, as the CUDA backend does (not in calibration, which runs in f32) */
        if (!s->cal_amax) kiln_cpu_round_bf16(s->big, (size_t)n * qkv_dim);
        /* split q | k | v; k and v (n, Hkv Dh) each live in h, sized for 2 Hkv Dh per token */
        float *k = s->h, *v = s->h + (size_t)n * kvdim;
        copy_columns(q, s->big, n, qkv_dim, 0, qdim);
        copy_columns(k, s->big, n, qkv_dim, qdim, kvdim);
        copy_columns(v, s->big, n, qkv_dim, qdim + kvdim, kvdim);
        kiln_cpu_rope(q, batch->positions, n, H, Dh, s->rope);
        kiln_cpu_rope(k, batch->positions, n, Hkv, Dh, s->rope);
        if (s->cal_kv_amax) {
            s->cal_kv_amax[2 * l] = fmaxf(s->cal_kv_amax[2 * l], amax_of(k, (size_t)n * kvdim));
            s->cal_kv_amax[2 * l + 1] =
                fmaxf(s->cal_kv_amax[2 * l + 1], amax_of(v, (size_t)n * kvdim));
        }
        kiln_cpu_kv_write(&s->kv[l], batch, k, v);
        /* attention output (n, H Dh) goes to big, free again; o_proj adds into the residual */
        kiln_cpu_attention(s->pool, s->big, q, &s->kv[l], batch, H);
        run_linear(s, s->h, s->big, &w->o, prep_of(s, 4 * l + 1), n, amax ? &amax[1] : NULL);
        for (size_t i = 0; i < (size_t)n * d; i++) s->x[i] += s->h[i];

        kiln_cpu_rmsnorm(s->h, s->x, &w->mlp_norm, cfg->rms_norm_eps, n, d);
        run_linear(s, s->big, s->h, &w->gate_up, prep_of(s, 4 * l + 2), n, amax ? &amax[2] : NULL);
        if (!s->cal_amax) kiln_cpu_round_bf16(s->big, (size_t)n * 2 * f);
        kiln_cpu_swiglu(s->h, s->big, n, f);
        run_linear(s, s->big, s->h, &w->down, prep_of(s, 4 * l + 3), n, amax ? &amax[3] : NULL);
        for (size_t i = 0; i < (size_t)n * d; i++) s->x[i] += s->big[i];
    }

    /* final norm and lm_head for the output rows only */
    s->n_out = batch->n_out;
    if (batch->n_out == 0) return KILN_OK;
    for (int i = 0; i < batch->n_out; i++)
        memcpy(s->h + (size_t)i * d, s->x + (size_t)batch->out_rows[i] * d,
               (size_t)d * sizeof(float));
    kiln_cpu_rmsnorm(s->h, s->h, &m->norm, cfg->rms_norm_eps, batch->n_out, d);
    const struct kiln_linear *head = &m->lm_head;
    if (!head->fp8 && head->part[0].dtype == KILN_DTYPE_BF16)
        kiln_cpu_round_bf16(s->h, (size_t)batch->n_out * d);
    run_linear(s, s->logits, s->h, head, prep_of(s, 4 * cfg->n_layers), batch->n_out, NULL);
    return KILN_OK;
}

static enum kiln_status cpu_read_logits(struct kiln_backend *b, float *dst, struct kiln_error *err)
{
    struct cpu_state *s = b->impl;
    (void)err;
    memcpy(dst, s->logits, (size_t)s->n_out * b->model->cfg.vocab_size * sizeof(float));
    return KILN_OK;
}

static enum kiln_status cpu_sample(struct kiln_backend *b, const struct kiln_sampling *params,
                                   int n, struct kiln_sample_out *out, struct kiln_error *err)
{
    struct cpu_state *s = b->impl;
    int vocab = b->model->cfg.vocab_size;
    if (n != s->n_out)
        return kiln_errorf(err, KILN_ERR_INTERNAL, "sample: %d rows asked, %d computed", n,
                           s->n_out);
    for (int i = 0; i < n; i++)
        kiln_sample_row(s->logits + (size_t)i * vocab, vocab, &params[i], s->scratch, &out[i]);
    return KILN_OK;
}

static void cpu_free(struct kiln_backend *b)
{
    if (!b) return;
    struct cpu_state *s = b->impl;
    if (s) {
        if (s->kv_pool) munmap(s->kv_pool, s->kv_pool_bytes);
        free(s->kv);
        if (s->prep)
            for (int i = 0; i <= 4 * b->model->cfg.n_layers; i++) free(s->prep[i]);
        free(s->prep);
        free(s->rope);
        free(s->x);
        free(s->h);
        free(s->big);
        free(s->attn);
        free(s->x8);
        free(s->logits);
        free(s->scratch);
        kiln_pool_free(s->pool);
        free(s);
    }
    free(b);
}

static const struct kiln_backend_ops cpu_ops = {
    .name = "cpu",
    .forward = cpu_forward,
    .read_logits = cpu_read_logits,
    .sample = cpu_sample,
    .free = cpu_free,
};

static int imax(int a, int b)
{
    return a > b ? a : b;
}

enum kiln_status kiln_backend_cpu_create(const struct kiln_model *m,
                                         const struct kiln_backend_options *opt,
                                         struct kiln_backend **out, struct kiln_error *err)
{
    const struct kiln_config *cfg = &m->cfg;
    *out = NULL;
    struct kiln_backend_options o = *opt;
    if (o.block_size <= 0) o.block_size = 16;
    if (o.max_tokens <= 0 || o.max_seqs <= 0 || o.max_seq_len <= 0)
        return kiln_errorf(err, KILN_ERR_INVALID,
                           "cpu backend: max_tokens, max_seqs and max_seq_len must be positive");
    if (o.kv_dtype != KILN_DTYPE_F8E4M3 && o.kv_dtype != KILN_DTYPE_BF16 &&
        o.kv_dtype != KILN_DTYPE_F32)
        return kiln_errorf(err, KILN_ERR_UNSUPPORTED, "cpu backend: KV cache dtype %s",
                           kiln_dtype_name(o.kv_dtype));
    int blocks_per_seq = (o.max_seq_len + o.block_size - 1) / o.block_size;
    if (o.n_blocks <= 0) o.n_blocks = o.max_seqs * blocks_per_seq;

    struct kiln_backend *b = calloc(1, sizeof *b);
    struct cpu_state *s = calloc(1, sizeof *s);
    if (!b || !s) {
        free(b);
        free(s);
        return kiln_errorf(err, KILN_ERR_NOMEM, "cpu backend: out of memory");
    }
    b->ops = &cpu_ops;
    b->model = m;
    b->impl = s;
    int d = cfg->hidden_size, f = cfg->intermediate_size, T = o.max_tokens;
    int qdim = cfg->n_heads * cfg->head_dim, kvdim = cfg->n_kv_heads * cfg->head_dim;
    size_t widest = (size_t)imax(imax(d, 2 * f), imax(qdim + 2 * kvdim, qdim));
    s->max_out = o.max_seqs;
    s->pool = kiln_pool_create(o.n_threads);
    s->rope = malloc((size_t)o.max_seq_len * cfg->head_dim * sizeof(float));
    s->x = malloc((size_t)T * d * sizeof(float));
    s->h = malloc((size_t)imax(T, s->max_out) * imax(imax(d, f), 2 * kvdim) * sizeof(float));
    s->big = malloc((size_t)T * widest * sizeof(float));
    s->attn = malloc((size_t)T * qdim * sizeof(float));
    s->x8 = malloc((size_t)imax(T, s->max_out) * widest);
    s->logits = malloc((size_t)s->max_out * cfg->vocab_size * sizeof(float));
    s->scratch = malloc((size_t)2 * cfg->vocab_size * sizeof(float));
    s->kv = calloc((size_t)cfg->n_layers, sizeof *s->kv);
    if (!s->pool || !s->rope || !s->x || !s->h || !s->big || !s->attn || !s->x8 || !s->logits ||
        !s->scratch || !s->kv) {
        cpu_free(b);
        return kiln_errorf(err, KILN_ERR_NOMEM, "cpu backend: out of memory for activations");
    }
    size_t layer_elems = (size_t)o.n_blocks * kvdim * o.block_size;
    size_t esz = kiln_dtype_size(o.kv_dtype);
    size_t array_bytes = layer_elems * esz;
    s->kv_pool_bytes = 2 * array_bytes * (size_t)cfg->n_layers;
    void *pool =
        mmap(NULL, s->kv_pool_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (pool == MAP_FAILED) {
        cpu_free(b);
        return kiln_errorf(err, KILN_ERR_NOMEM,
                           "cpu backend: out of memory for the KV cache (%d blocks of %d)",
                           o.n_blocks, o.block_size);
    }
    s->kv_pool = pool;
    for (int l = 0; l < cfg->n_layers; l++) {
        struct kiln_cpu_kv_layer *c = &s->kv[l];
        c->dtype = o.kv_dtype;
        c->k_scale = m->layers[l].k_scale;
        c->v_scale = m->layers[l].v_scale;
        c->n_kv_heads = cfg->n_kv_heads;
        c->head_dim = cfg->head_dim;
        c->block_size = o.block_size;
        c->k = (char *)pool + 2 * (size_t)l * array_bytes; /* zero pages until written */
        c->v = (char *)c->k + array_bytes;
    }
    b->kv_bytes = s->kv_pool_bytes;

    size_t prep_bytes = (size_t)m->lm_head.out * m->lm_head.in * sizeof(float);
    for (int l = 0; l < cfg->n_layers; l++) {
        const struct kiln_layer_weights *w = &m->layers[l];
        prep_bytes += ((size_t)w->qkv.out * w->qkv.in + (size_t)w->o.out * w->o.in +
                       (size_t)w->gate_up.out * w->gate_up.in + (size_t)w->down.out * w->down.in) *
                      sizeof(float);
    }
    if (prep_bytes <= PREPARE_BUDGET) {
        int count = 4 * cfg->n_layers + 1;
        s->prep = calloc((size_t)count, sizeof *s->prep);
        for (int i = 0; s->prep && i < count; i++) {
            const struct kiln_layer_weights *w = &m->layers[i / 4 < cfg->n_layers ? i / 4 : 0];
            const struct kiln_linear *lin = i == count - 1 ? &m->lm_head
                                            : i % 4 == 0   ? &w->qkv
                                            : i % 4 == 1   ? &w->o
                                            : i % 4 == 2   ? &w->gate_up
                                                           : &w->down;
            s->prep[i] = kiln_cpu_linear_prepare(s->pool, lin);
            if (!s->prep[i]) {
                cpu_free(b);
                return kiln_errorf(err, KILN_ERR_NOMEM, "cpu backend: out of memory for weights");
            }
        }
    }
    kiln_rope_table(cfg, o.max_seq_len, s->rope);
    b->opt = o;
    *out = b;
    return KILN_OK;
}

enum kiln_status kiln_cpu_calibrate(const struct kiln_model *m, const int32_t *tokens, int n,
                                    float *amax, float *kv_amax, struct kiln_error *err)
{
    struct kiln_backend_options o;
    kiln_backend_options_default(&o);
    o.kv_dtype = KILN_DTYPE_F32;
    o.max_tokens = n;
    o.max_seqs = 1;
    o.max_seq_len = n;
    struct kiln_backend *b;
    enum kiln_status st = kiln_backend_cpu_create(m, &o, &b, err);
    if (st) return st;
    struct cpu_state *s = b->impl;
    int n_layers = m->cfg.n_layers;
    memset(amax, 0, (size_t)n_layers * 4 * sizeof(float));
    if (kv_amax) memset(kv_amax, 0, (size_t)n_layers * 2 * sizeof(float));
    s->cal_amax = amax;
    s->cal_kv_amax = kv_amax;

    int32_t *pos = malloc((size_t)n * sizeof(int32_t));
    int32_t *table = malloc((size_t)b->opt.n_blocks * sizeof(int32_t));
    if (!pos || !table) {
        free(pos);
        free(table);
        cpu_free(b);
        return kiln_errorf(err, KILN_ERR_NOMEM, "calibration: out of memory");
    }
    for (int i = 0; i < n; i++) pos[i] = i;
    for (int i = 0; i < b->opt.n_blocks; i++) table[i] = i;
    int32_t seq_start[2] = {0, n}, kv_len = n;
    struct kiln_batch batch = {.n_tokens = n,
                               .tokens = tokens,
                               .positions = pos,
                               .n_seqs = 1,
                               .seq_start = seq_start,
                               .kv_len = &kv_len,
                               .block_table = table,
                               .max_blocks = b->opt.n_blocks,
                               .n_out = 0,
                               .out_rows = NULL};
    st = cpu_forward(b, &batch, err);
    free(pos);
    free(table);
    cpu_free(b);
    return st;
}
