/* Weight mapping for LlamaForCausalLM: every tensor looked up by its Hugging Face name,
 * checked against the configuration (presence, dtype, shape, scales), and grouped into the
 * fused q|k|v and gate|up linears the kernels run. Weights stay views into the mapped shards;
 * only tensors misaligned in the file are copied. */
#include "model.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/kernels.h"
#include "core/file.h"
#include "core/log.h"
#include "format.h"

#define FLOAT_MASK ((1u << KILN_DTYPE_BF16) | (1u << KILN_DTYPE_F16) | (1u << KILN_DTYPE_F32))
#define FP8_MASK   (1u << KILN_DTYPE_F8E4M3)
#define F32_MASK   (1u << KILN_DTYPE_F32)

struct loader {
    struct kiln_model *m;
    bool *used; /* [m->st.n_tensors]: tensors consumed, the rest are logged as ignored */
    bool fused; /* kiln checkpoint or engine: qkv_proj and gate_up_proj under kiln's names */
    int qkv_order, gate_up_order; /* their row orders (engines) */
};

enum kiln_status kiln_model_own(struct kiln_model *m, void *buf, struct kiln_error *err)
{
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? m->cap_owned * 2 : 16;
        void **v = realloc(m->owned, (size_t)cap * sizeof *v);
        if (!v) {
            free(buf);
            return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
        }
        m->owned = v;
        m->cap_owned = cap;
    }
    m->owned[m->n_owned++] = buf;
    return KILN_OK;
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static void format_shape(char *dst, size_t cap, int ndim, const int64_t *shape)
{
    size_t n = (size_t)snprintf(dst, cap, "[");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(dst + n, cap - n, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (n < cap) snprintf(dst + n, cap - n, "]");
}

static const char *mask_name(unsigned mask)
{
    if (mask == FP8_MASK) return "F8_E4M3";
    if (mask == F32_MASK) return "F32";
    return "BF16, F16 or F32";
}

static int cmp_name_key(const void *key, const void *elem)
{
    return strcmp(key, (*(const struct kiln_st_tensor *const *)elem)->name);
}

/* The tensor called name (NULL when absent), marked as used. */
static const struct kiln_st_tensor *take(struct loader *L, const char *name)
{
    const struct kiln_st_set *s = &L->m->st;
    if (!s->n_tensors) return NULL;
    const struct kiln_st_tensor *const *p =
        bsearch(name, s->by_name, s->n_tensors, sizeof *s->by_name, cmp_name_key);
    if (!p) return NULL;
    L->used[p - (const struct kiln_st_tensor *const *)s->by_name] = true;
    return *p;
}

/* Checks dtype (one of mask) and shape of a found tensor and fills out. */
static enum kiln_status check(struct loader *L, const struct kiln_st_tensor *t, unsigned mask,
                              int ndim, const int64_t *shape, struct kiln_tensor *out,
                              struct kiln_error *err)
{
    bool ok = ((1u << t->dtype) & mask) && t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
        char want[128], got[128];
        format_shape(want, sizeof want, ndim, shape);
        format_shape(got, sizeof got, t->ndim, t->shape);
        const char *hint = "";
        if (t->dtype == KILN_DTYPE_F8E4M3 && !(mask & FP8_MASK))
            hint = L->m->cfg.fp8 ? " (the module is in exclude_modules)"
                                 : " (FP8 weights but no ModelOpt FP8 quantization config: "
                                   "hf_quant_config.json missing?)";
        return kiln_errorf(err, KILN_ERR_INVALID, "%s: expected %s %s, got %s %s (in %s)%s",
                           t->name, mask_name(mask), want, kiln_dtype_name(t->dtype), got,
                           base_name(kiln_st_file_of(&L->m->st, t)), hint);
    }
    out->dtype = t->dtype;
    out->ndim = ndim;
    for (int i = 0; i < 4; i++) out->shape[i] = i < ndim ? shape[i] : 0;
    out->data = t->data;
    size_t align = kiln_dtype_size(t->dtype);
    if ((uintptr_t)t->data % align) {
        /* Files from writers that do not sort by alignment: copy so kernels and
         * kiln_load_f32 may read whole elements. */
        size_t bytes = (size_t)(t->end - t->begin);
        void *copy = malloc(bytes ? bytes : 1);
        if (!copy) return kiln_errorf(err, KILN_ERR_NOMEM, "%s: out of memory", t->name);
        memcpy(copy, t->data, bytes);
        enum kiln_status st = kiln_model_own(L->m, copy, err);
        if (st) return st;
        KILN_DEBUG("%s: misaligned in %s, copied", t->name, kiln_st_file_of(&L->m->st, t));
        out->data = copy;
    }
    return KILN_OK;
}

static enum kiln_status get(struct loader *L, const char *name, unsigned mask, int ndim,
                            const int64_t *shape, struct kiln_tensor *out, struct kiln_error *err)
{
    const struct kiln_st_tensor *t = take(L, name);
    if (!t) {
        char want[128];
        format_shape(want, sizeof want, ndim, shape);
        return kiln_errorf(err, KILN_ERR_INVALID, "%s: missing (expected %s %s) in %s", name,
                           mask_name(mask), want, L->m->dir);
    }
    return check(L, t, mask, ndim, shape, out, err);
}

/* A per-tensor scale: F32 of shape [] or [1], finite and > 0. */
static enum kiln_status scale_of(struct loader *L, const struct kiln_st_tensor *t, float *out,
                                 struct kiln_error *err)
{
    if (t->dtype != KILN_DTYPE_F32 || t->ndim > 1 || (t->ndim == 1 && t->shape[0] != 1)) {
        char got[128];
        format_shape(got, sizeof got, t->ndim, t->shape);
        return kiln_errorf(err, KILN_ERR_INVALID, "%s: expected F32 [] or [1], got %s %s (in %s)",
                           t->name, kiln_dtype_name(t->dtype), got,
                           base_name(kiln_st_file_of(&L->m->st, t)));
    }
    float v;
    memcpy(&v, t->data, sizeof v); /* the scalar may sit at any offset */
    if (!isfinite(v) || v <= 0)
        return kiln_errorf(err, KILN_ERR_INVALID, "%s: scale %g must be finite and > 0 (in %s)",
                           t->name, v, base_name(kiln_st_file_of(&L->m->st, t)));
    *out = v;
    return KILN_OK;
}

static enum kiln_status get_scale(struct loader *L, const char *module, const char *what,
                                  float *out, struct kiln_error *err)
{
    char name[320];
    snprintf(name, sizeof name, "%s.%s", module, what);
    const struct kiln_st_tensor *t = take(L, name);
    if (!t)
        return kiln_errorf(err, KILN_ERR_INVALID,
                           "%s: missing (FP8 linears need F32 scalar weight_scale and "
                           "input_scale) in %s",
                           name, L->m->dir);
    return scale_of(L, t, out, err);
}

/* One linear from n_parts checkpoint modules stacked along out: quantized (F8_E4M3 weight with
 * weight_scale and input_scale) unless the config is unquantized or excludes the modules. */
static enum kiln_status load_linear(struct loader *L, const char *const *modules,
                                    const int64_t *outs, int n_parts, int64_t in,
                                    struct kiln_linear *l, struct kiln_error *err)
{
    const struct kiln_config *cfg = &L->m->cfg;
    memset(l, 0, sizeof *l);
    l->n_parts = n_parts;
    l->in = in;
    l->fp8 = cfg->fp8 && !kiln_config_excluded(cfg, modules[0]);
    for (int p = 1; p < n_parts; p++)
        if ((cfg->fp8 && !kiln_config_excluded(cfg, modules[p])) != l->fp8)
            return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                               "%s and %s: one is excluded from FP8 quantization and the other "
                               "is not; kiln runs them as one fused linear",
                               modules[0], modules[p]);
    for (int p = 0; p < n_parts; p++) {
        char name[320];
        snprintf(name, sizeof name, "%s.weight", modules[p]);
        int64_t shape[2] = {outs[p], in};
        enum kiln_status st =
            get(L, name, l->fp8 ? FP8_MASK : FLOAT_MASK, 2, shape, &l->part[p], err);
        if (!st && l->fp8)
            st = get_scale(L, modules[p], "weight_scale", &l->part_weight_scale[p], err);
        if (!st && l->fp8)
            st = get_scale(L, modules[p], "input_scale", &l->part_input_scale[p], err);
        if (st) return st;
        l->out += outs[p];
        if (l->fp8) {
            l->weight_scale = fmaxf(l->weight_scale, l->part_weight_scale[p]);
            l->input_scale = fmaxf(l->input_scale, l->part_input_scale[p]);
        }
    }
    return KILN_OK;
}

/* KV-cache scale: k_proj.k_scale (older exports: self_attn.k_scale); 1 when absent. */
static enum kiln_status kv_scale(struct loader *L, int layer, const char *proj, const char *what,
                                 float *out, struct kiln_error *err)
{
    char name[320];
    snprintf(name, sizeof name, "model.layers.%d.self_attn.%s.%s", layer, proj, what);
    const struct kiln_st_tensor *t = take(L, name);
    if (!t) {
        snprintf(name, sizeof name, "model.layers.%d.self_attn.%s", layer, what);
        t = take(L, name);
    }
    *out = 1.0f;
    return t ? scale_of(L, t, out, err) : KILN_OK;
}

static enum kiln_status load_layer(struct loader *L, int i, struct kiln_error *err)
{
    const struct kiln_config *c = &L->m->cfg;
    struct kiln_layer_weights *w = &L->m->layers[i];
    int64_t d = c->hidden_size, f = c->intermediate_size, dh = c->head_dim;
    char mod[7][160], name[320];
    static const char *const sub[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                       "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                       "mlp.down_proj"};
    for (int k = 0; k < 7; k++) snprintf(mod[k], sizeof mod[k], "model.layers.%d.%s", i, sub[k]);
    const char *qkv[3] = {mod[0], mod[1], mod[2]}, *gu[2] = {mod[4], mod[5]};
    const int64_t qkv_out[3] = {c->n_heads * dh, c->n_kv_heads * dh, c->n_kv_heads * dh};
    const int64_t gu_out[2] = {f, f}, o_out = d, down_out = d;
    const char *o = mod[3], *down = mod[6];
    int n_qkv = 3, n_gu = 2;
    char fused_qkv[160], fused_gu[160];
    int64_t fused_qkv_out = qkv_out[0] + qkv_out[1] + qkv_out[2], fused_gu_out = 2 * f;
    if (L->fused) {
        snprintf(fused_qkv, sizeof fused_qkv, "model.layers.%d.%s", i, KILN_FUSED_QKV);
        snprintf(fused_gu, sizeof fused_gu, "model.layers.%d.%s", i, KILN_FUSED_GATE_UP);
        qkv[0] = fused_qkv;
        gu[0] = fused_gu;
        n_qkv = n_gu = 1;
    }
    enum kiln_status st;
    snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", i);
    if ((st = get(L, name, FLOAT_MASK, 1, &d, &w->attn_norm, err))) return st;
    snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", i);
    if ((st = get(L, name, FLOAT_MASK, 1, &d, &w->mlp_norm, err)) ||
        (st = load_linear(L, qkv, L->fused ? &fused_qkv_out : qkv_out, n_qkv, d, &w->qkv, err)) ||
        (st = load_linear(L, &o, &o_out, 1, c->n_heads * dh, &w->o, err)) ||
        (st = load_linear(L, gu, L->fused ? &fused_gu_out : gu_out, n_gu, d, &w->gate_up, err)) ||
        (st = load_linear(L, &down, &down_out, 1, f, &w->down, err)) ||
        (st = kv_scale(L, i, "k_proj", "k_scale", &w->k_scale, err)) ||
        (st = kv_scale(L, i, "v_proj", "v_scale", &w->v_scale, err)))
        return st;
    w->qkv.row_order = L->qkv_order;
    w->qkv.row_head_dim = c->head_dim;
    w->gate_up.row_order = L->gate_up_order;
    return KILN_OK;
}

static enum kiln_status load_weights(struct loader *L, struct kiln_error *err)
{
    struct kiln_model *m = L->m;
    const struct kiln_config *c = &m->cfg;
    int64_t d = c->hidden_size, embed_shape[2] = {c->vocab_size, d};
    enum kiln_status st =
        get(L, "model.embed_tokens.weight", FLOAT_MASK, 2, embed_shape, &m->embed, err);
    if (!st) st = get(L, "model.norm.weight", FLOAT_MASK, 1, &d, &m->norm, err);
    if (st) return st;
    if (c->tie_word_embeddings) {
        memset(&m->lm_head, 0, sizeof m->lm_head);
        m->lm_head.out = c->vocab_size;
        m->lm_head.in = d;
        m->lm_head.n_parts = 1;
        m->lm_head.part[0] = m->embed;
    } else {
        const char *head = "lm_head";
        int64_t vocab = c->vocab_size;
        st = load_linear(L, &head, &vocab, 1, d, &m->lm_head, err);
        if (st) return st;
    }
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    for (int i = 0; i < c->n_layers; i++)
        if ((st = load_layer(L, i, err))) return st;
    return KILN_OK;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* An engine folder has engine.json (checked: version, sizes, checksums), a kiln checkpoint
 * kiln.json; anything else is read as a Hugging Face checkpoint. */
static enum kiln_status detect_format(struct kiln_model *m, struct kiln_error *err)
{
    char path[1200];
    enum kiln_status st = kiln_path_join(path, sizeof path, m->dir, KILN_ENGINE_JSON, err);
    if (st) return st;
    if (kiln_file_exists(path)) {
        m->format = KILN_FORMAT_ENGINE;
        return kiln_engine_meta_load(m->dir, &m->engine, err);
    }
    if ((st = kiln_path_join(path, sizeof path, m->dir, KILN_CHECKPOINT_JSON, err))) return st;
    if (kiln_file_exists(path)) {
        m->format = KILN_FORMAT_CHECKPOINT;
        return kiln_checkpoint_check(m->dir, err);
    }
    m->format = KILN_FORMAT_HF;
    return KILN_OK;
}

enum kiln_status kiln_model_load(const char *dir, struct kiln_model **out, struct kiln_error *err)
{
    *out = NULL;
    kiln_numeric_init();
    struct kiln_model *m = calloc(1, sizeof *m);
    if (!m) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    if (snprintf(m->dir, sizeof m->dir, "%s", dir) >= (int)sizeof m->dir) {
        free(m);
        return kiln_errorf(err, KILN_ERR_INVALID, "%s: path too long", dir);
    }
    struct loader L = {m, NULL, false, 0, 0};
    enum kiln_status st = detect_format(m, err);
    if (!st && m->engine) {
        L.qkv_order = m->engine->qkv_order;
        L.gate_up_order = m->engine->gate_up_order;
    }
    L.fused = m->format != KILN_FORMAT_HF;
    if (!st) st = kiln_config_load(dir, &m->cfg, err);
    if (!st) st = kiln_st_open_dir(dir, &m->st, err);
    if (!st && !(L.used = calloc(m->st.n_tensors + 1, sizeof *L.used)))
        st = kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    if (!st) st = load_weights(&L, err);
    if (!st) {
        for (size_t i = 0; i < m->st.n_tensors; i++) {
            const struct kiln_st_tensor *t = m->st.by_name[i];
            if (!L.used[i] && !ends_with(t->name, ".rotary_emb.inv_freq"))
                KILN_DEBUG("%s: ignoring tensor %s (in %s)", dir, t->name,
                           base_name(kiln_st_file_of(&m->st, t)));
        }
    }
    free(L.used);
    if (st) {
        kiln_model_free(m);
        return st;
    }
    *out = m;
    return KILN_OK;
}

void kiln_model_free(struct kiln_model *m)
{
    if (!m) return;
    kiln_st_close(&m->st);
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    kiln_config_free(&m->cfg);
    kiln_engine_meta_free(m->engine);
    free(m);
}

/* ---- fused rows ---- */

/* The byte map that requantizes part p's codes to the group's weight scale:
 *   q' = sat_e4m3(e4m3_to_f32(q) * s_part / s_max)
 * Returns false when the scales are equal (identity, no map needed). */
static bool requant_map(const struct kiln_linear *l, int p, uint8_t map[256])
{
    float sp = l->part_weight_scale[p], smax = l->weight_scale;
    if (sp == smax) return false;
    kiln_numeric_init();
    for (int b = 0; b < 256; b++) {
        float v = kiln_e4m3_to_f32((uint8_t)b) * sp;
        map[b] = kiln_f32_to_e4m3(v / smax);
    }
    return true;
}

/* Calls fn for each part's slice of rows [r0, r1): src points at the part's first row of the
 * slice, n elements, dst_off the element offset of the slice in the output. */
typedef void (*slice_fn)(const struct kiln_linear *l, int p, const void *src, size_t n,
                         size_t dst_off, void *dst);

int64_t kiln_linear_stored_row(const struct kiln_linear *l, int64_t r)
{
    switch (l->row_order) {
    case KILN_ROWS_QKV_PAIRED: { /* dims [8j, 8j+8) and [Dh/2 + 8j, ...) share 16-row tile j */
        int64_t dh = l->row_head_dim, half = dh / 2, dim = r % dh, hi = dim >= half;
        int64_t j = dim - hi * half;
        return r - dim + 16 * (j / 8) + 8 * hi + j % 8;
    }
    case KILN_ROWS_GU_INTERLEAVED: { /* gate rows [8j, 8j+8) then up rows [8j, 8j+8) */
        int64_t f = l->out / 2, hi = r >= f, j = r - hi * f;
        return 16 * (j / 8) + 8 * hi + j % 8;
    }
    default:
        return r;
    }
}

static void for_slices(const struct kiln_linear *l, int64_t r0, int64_t r1, slice_fn fn, void *dst)
{
    KILN_ASSERT(0 <= r0 && r0 <= r1 && r1 <= l->out);
    if (l->row_order != KILN_ROWS_PLAIN) { /* an engine's kernel order: row by row */
        KILN_ASSERT(l->n_parts == 1);
        size_t row_bytes = (size_t)l->in * kiln_dtype_size(l->part[0].dtype);
        for (int64_t r = r0; r < r1; r++)
            fn(l, 0,
               (const uint8_t *)l->part[0].data + (size_t)kiln_linear_stored_row(l, r) * row_bytes,
               (size_t)l->in, (size_t)((r - r0) * l->in), dst);
        return;
    }
    int64_t base = 0;
    for (int p = 0; p < l->n_parts; p++) {
        int64_t rows = l->part[p].shape[0];
        int64_t a = r0 > base ? r0 : base, b = r1 < base + rows ? r1 : base + rows;
        if (a < b) {
            size_t esize = kiln_dtype_size(l->part[p].dtype);
            const uint8_t *src =
                (const uint8_t *)l->part[p].data + (size_t)((a - base) * l->in) * esize;
            fn(l, p, src, (size_t)((b - a) * l->in), (size_t)((a - r0) * l->in), dst);
        }
        base += rows;
    }
}

static void slice_fp8(const struct kiln_linear *l, int p, const void *src, size_t n, size_t dst_off,
                      void *dst)
{
    uint8_t map[256], *d = (uint8_t *)dst + dst_off;
    const uint8_t *s = src;
    if (!requant_map(l, p, map)) {
        memcpy(d, s, n);
        return;
    }
    for (size_t i = 0; i < n; i++) d[i] = map[s[i]];
}

static void slice_f32(const struct kiln_linear *l, int p, const void *src, size_t n, size_t dst_off,
                      void *dst)
{
    float *d = (float *)dst + dst_off;
    if (!l->fp8) {
        kiln_convert_to_f32(d, src, l->part[p].dtype, n);
        return;
    }
    uint8_t map[256];
    bool remap = requant_map(l, p, map);
    float lut[256];
    kiln_numeric_init();
    for (int b = 0; b < 256; b++) lut[b] = kiln_e4m3_to_f32(remap ? map[b] : (uint8_t)b);
    const uint8_t *s = src;
    for (size_t i = 0; i < n; i++) d[i] = lut[s[i]];
}

void kiln_linear_fp8_rows(const struct kiln_linear *l, int64_t r0, int64_t r1, uint8_t *dst)
{
    KILN_ASSERT(l->fp8);
    for_slices(l, r0, r1, slice_fp8, dst);
}

void kiln_linear_f32_rows(const struct kiln_linear *l, int64_t r0, int64_t r1, float *dst)
{
    for_slices(l, r0, r1, slice_f32, dst);
}

static void slice_raw(const struct kiln_linear *l, int p, const void *src, size_t n, size_t dst_off,
                      void *dst)
{
    size_t esize = kiln_dtype_size(l->part[p].dtype);
    memcpy((uint8_t *)dst + dst_off * esize, src, n * esize);
}

int kiln_linear_dtype(const struct kiln_linear *l)
{
    if (l->fp8) return KILN_DTYPE_F8E4M3;
    for (int p = 1; p < l->n_parts; p++)
        if (l->part[p].dtype != l->part[0].dtype) return -1;
    return (int)l->part[0].dtype;
}

void kiln_linear_rows(const struct kiln_linear *l, int64_t r0, int64_t r1, void *dst)
{
    if (l->fp8) {
        kiln_linear_fp8_rows(l, r0, r1, dst);
        return;
    }
    KILN_ASSERT(kiln_linear_dtype(l) >= 0);
    for_slices(l, r0, r1, slice_raw, dst);
}

const void *kiln_linear_stored(const struct kiln_linear *l, int order)
{
    if (l->n_parts != 1 || l->row_order != order) return NULL;
    return l->fp8 || l->part[0].dtype == KILN_DTYPE_BF16 ? l->part[0].data : NULL;
}

static uint64_t tensor_bytes(const struct kiln_tensor *t)
{
    uint64_t n = kiln_dtype_size(t->dtype);
    for (int i = 0; i < t->ndim; i++) n *= (uint64_t)t->shape[i];
    return n;
}

static uint64_t linear_bytes(const struct kiln_linear *l)
{
    uint64_t n = 0;
    for (int p = 0; p < l->n_parts; p++) n += tensor_bytes(&l->part[p]);
    return n;
}

uint64_t kiln_model_weight_bytes(const struct kiln_model *m)
{
    /* The embedding is not counted: a step reads one row per token (unless tied, when it is
     * the lm_head and counted as such). */
    uint64_t n = tensor_bytes(&m->norm) + linear_bytes(&m->lm_head);
    for (int i = 0; i < m->cfg.n_layers && m->layers; i++) {
        const struct kiln_layer_weights *w = &m->layers[i];
        n += tensor_bytes(&w->attn_norm) + tensor_bytes(&w->mlp_norm) + linear_bytes(&w->qkv) +
             linear_bytes(&w->o) + linear_bytes(&w->gate_up) + linear_bytes(&w->down);
    }
    return n;
}
