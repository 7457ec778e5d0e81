/* kiln_model_load on small hand-made checkpoints: FP8 and unquantized, single file and
 * sharded, tied embeddings, KV scales under both names, exclude patterns, misaligned files,
 * the validation errors (each naming the tensor and its file), the fused-row requantization
 * and a model built by hand. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/helpers.h"
#include "model/model.h"

/* vocab 64, d 32, f 48, 2 layers, 4 heads, 2 KV heads, head_dim 8 */
enum { V = 64, D = 32, F = 48, L = 2, H = 4, HKV = 2, DH = 8 };

struct opts {
    bool fp8, tie, kv_scales, old_kv_names;
    enum kiln_dtype float_dtype; /* of unquantized tensors */
    int n_shards;
    const char *exclude;   /* JSON list members of exclude_modules (default "\"lm_head\"") */
    const char *skip;      /* a tensor to leave out */
    const char *as_bf16;   /* a tensor written as BF16 whatever it should be */
    const char *bad_shape; /* a tensor written with one more row */
    const char *scale_name;
    float scale_value; /* value of scale_name */
    bool scale_shape2; /* scale_name written with shape [2] */
    bool extras;       /* unknown tensors and rotary inv_freq */
};

struct tensor {
    char name[128];
    enum kiln_dtype dtype;
    int ndim;
    int64_t shape[2];
    void *data;
};

struct ckpt {
    struct tensor t[128];
    int n;
};

static uint32_t hash(const char *s)
{
    uint32_t h = 2166136261u;
    while (*s) h = (h ^ (uint8_t)*s++) * 16777619u;
    return h;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static void add(struct ckpt *c, const struct opts *o, const char *name, enum kiln_dtype dt,
                int ndim, int64_t rows, int64_t cols)
{
    if (o->skip && !strcmp(o->skip, name)) return;
    bool scale = ends_with(name, "scale"), chosen = o->scale_name && !strcmp(o->scale_name, name);
    struct tensor *t = &c->t[c->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    if (o->as_bf16 && !strcmp(o->as_bf16, name)) dt = KILN_DTYPE_BF16;
    if (o->bad_shape && !strcmp(o->bad_shape, name)) rows++;
    if (chosen && o->scale_shape2) {
        ndim = 1;
        rows = 2;
    }
    t->dtype = dt;
    t->ndim = ndim;
    t->shape[0] = rows;
    t->shape[1] = cols;
    size_t n = ndim == 0 ? 1 : ndim == 1 ? (size_t)rows : (size_t)(rows * cols);
    t->data = malloc(n * kiln_dtype_size(dt));
    uint32_t x = hash(name);
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        float v = (float)((int)(x >> 8) - (1 << 23)) / (float)(1 << 23); /* [-1, 1) */
        /* scales: positive, different per module so fusing must requantize */
        if (scale) v = chosen ? o->scale_value : 0.001f + (float)(hash(name) % 1000) * 1e-5f;
        switch (dt) {
        case KILN_DTYPE_F8E4M3: {
            uint8_t b = (uint8_t)(x >> 24);
            ((uint8_t *)t->data)[i] = (b & 0x7f) == 0x7f ? 0x7e : b; /* no NaN codes */
            break;
        }
        case KILN_DTYPE_BF16:
            ((uint16_t *)t->data)[i] = kiln_f32_to_bf16(v);
            break;
        case KILN_DTYPE_F16:
            ((uint16_t *)t->data)[i] = kiln_f32_to_f16(v);
            break;
        default:
            ((float *)t->data)[i] = v;
            break;
        }
    }
}

static bool excluded(const struct opts *o, const char *module)
{
    if (!o->exclude) return !strcmp(module, "lm_head");
    char pat[160];
    snprintf(pat, sizeof pat, "\"%s\"", module);
    return strstr(o->exclude, pat) != NULL;
}

static void add_linear(struct ckpt *c, const struct opts *o, const char *module, int64_t out,
                       int64_t in)
{
    char name[160];
    bool q = o->fp8 && !excluded(o, module);
    snprintf(name, sizeof name, "%s.weight", module);
    add(c, o, name, q ? KILN_DTYPE_F8E4M3 : o->float_dtype, 2, out, in);
    if (!q) return;
    snprintf(name, sizeof name, "%s.weight_scale", module);
    add(c, o, name, KILN_DTYPE_F32, 0, 0, 0);
    snprintf(name, sizeof name, "%s.input_scale", module);
    add(c, o, name, KILN_DTYPE_F32, 0, 0, 0);
}

static void build(struct ckpt *c, const struct opts *o)
{
    memset(c, 0, sizeof *c);
    add(c, o, "model.embed_tokens.weight", o->float_dtype, 2, V, D);
    for (int i = 0; i < L; i++) {
        char p[128], n[160];
        snprintf(p, sizeof p, "model.layers.%d.", i);
        snprintf(n, sizeof n, "%sinput_layernorm.weight", p);
        add(c, o, n, o->float_dtype, 1, D, 0);
        static const char *const mods[7] = {
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
        const int64_t outs[7] = {H * DH, HKV * DH, HKV * DH, D, F, F, D};
        const int64_t ins[7] = {D, D, D, H * DH, D, D, F};
        for (int k = 0; k < 7; k++) {
            snprintf(n, sizeof n, "%s%s", p, mods[k]);
            add_linear(c, o, n, outs[k], ins[k]);
        }
        snprintf(n, sizeof n, "%spost_attention_layernorm.weight", p);
        add(c, o, n, o->float_dtype, 1, D, 0);
        if (o->kv_scales) {
            snprintf(n, sizeof n, "%sself_attn.%s", p,
                     o->old_kv_names ? "k_scale" : "k_proj.k_scale");
            add(c, o, n, KILN_DTYPE_F32, 0, 0, 0);
            snprintf(n, sizeof n, "%sself_attn.%s", p,
                     o->old_kv_names ? "v_scale" : "v_proj.v_scale");
            add(c, o, n, KILN_DTYPE_F32, 0, 0, 0);
        }
        if (o->extras) {
            snprintf(n, sizeof n, "%sself_attn.rotary_emb.inv_freq", p);
            add(c, o, n, KILN_DTYPE_F32, 1, DH / 2, 0);
        }
    }
    add(c, o, "model.norm.weight", o->float_dtype, 1, D, 0);
    if (!o->tie) add_linear(c, o, "lm_head", V, D);
    if (o->extras) add(c, o, "model.some_adapter.weight", KILN_DTYPE_F32, 1, 3, 0);
}

static void free_ckpt(struct ckpt *c)
{
    for (int i = 0; i < c->n; i++) free(c->t[i].data);
}

static void write_config(const char *dir, const struct opts *o)
{
    char cfg[2048];
    snprintf(cfg, sizeof cfg,
             "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":%d,\"hidden_size\":%d,"
             "\"intermediate_size\":%d,\"num_hidden_layers\":%d,\"num_attention_heads\":%d,"
             "\"num_key_value_heads\":%d,\"head_dim\":%d,\"tie_word_embeddings\":%s,"
             "\"torch_dtype\":\"bfloat16\",\"eos_token_id\":1}",
             V, D, F, L, H, HKV, DH, o->tie ? "true" : "false");
    write_text(dir, "config.json", cfg);
    if (o->fp8) {
        char q[1024];
        snprintf(q, sizeof q,
                 "{\"producer\":{\"name\":\"modelopt\"},\"quantization\":{\"quant_algo\":\"FP8\","
                 "\"kv_cache_quant_algo\":%s,\"exclude_modules\":[%s]}}",
                 o->kv_scales ? "\"FP8\"" : "null", o->exclude ? o->exclude : "\"lm_head\"");
        write_text(dir, "hf_quant_config.json", q);
    }
}

static void shard_name(char *dst, size_t cap, int k, int n)
{
    if (n == 1)
        snprintf(dst, cap, "model.safetensors");
    else
        snprintf(dst, cap, "model-%05d-of-%05d.safetensors", k + 1, n);
}

/* Writes the checkpoint of o into a new folder and returns it. */
static char *make_dir(const struct opts *o)
{
    char *dir = tmpdir_make();
    struct ckpt c;
    build(&c, o);
    int n = o->n_shards ? o->n_shards : 1;
    char *index = malloc(65536);
    size_t len = (size_t)snprintf(index, 65536, "{\"metadata\":{},\"weight_map\":{");
    struct kiln_error err = {0};
    for (int k = 0; k < n; k++) {
        struct kiln_st_writer *w = kiln_st_writer_create();
        char fname[64], path[4096];
        shard_name(fname, sizeof fname, k, n);
        for (int i = k * c.n / n; i < (k + 1) * c.n / n; i++) {
            struct tensor *t = &c.t[i];
            assert_int_equal(
                kiln_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, &err),
                KILN_OK);
            len += (size_t)snprintf(index + len, 65536 - len, "%s\"%s\":\"%s\"", i ? "," : "",
                                    t->name, fname);
        }
        snprintf(path, sizeof path, "%s/%s", dir, fname);
        assert_int_equal(kiln_st_writer_write(w, path, &err), KILN_OK);
        kiln_st_writer_free(w);
    }
    snprintf(index + len, 65536 - len, "}}");
    if (n > 1) write_text(dir, "model.safetensors.index.json", index);
    free(index);
    free_ckpt(&c);
    write_config(dir, o);
    return dir;
}

static struct opts fp8_opts(void)
{
    return (struct opts){.fp8 = true, .float_dtype = KILN_DTYPE_BF16};
}

static struct kiln_model *load_ok(const char *dir)
{
    struct kiln_model *m = NULL;
    struct kiln_error err = {0};
    enum kiln_status st = kiln_model_load(dir, &m, &err);
    if (st) fail_msg("load: %s", err.msg);
    return m;
}

static void expect_load_error(const struct opts *o, enum kiln_status code, const char *w1,
                              const char *w2)
{
    char *dir = make_dir(o);
    struct kiln_model *m = NULL;
    struct kiln_error err = {0};
    enum kiln_status st = kiln_model_load(dir, &m, &err);
    tmpdir_remove(dir);
    free(dir);
    assert_null(m);
    if (st != code || (w1 && !strstr(err.msg, w1)) || (w2 && !strstr(err.msg, w2)))
        fail_msg("got %s '%s', want %s with '%s' '%s'", kiln_status_name(st), err.msg,
                 kiln_status_name(code), w1 ? w1 : "", w2 ? w2 : "");
}

static float scalar_of(const struct kiln_model *m, const char *name)
{
    const struct kiln_st_tensor *t = kiln_st_find(&m->st, name);
    assert_non_null(t);
    float v;
    memcpy(&v, t->data, 4);
    return v;
}

static void loads_fp8(void **state)
{
    (void)state;
    struct opts o = fp8_opts();
    char *dir = make_dir(&o);
    struct kiln_model *m = load_ok(dir);
    assert_true(m->cfg.fp8);
    assert_int_equal(m->embed.dtype, KILN_DTYPE_BF16);
    assert_int_equal(m->embed.shape[0], V);
    assert_int_equal(m->embed.shape[1], D);
    assert_int_equal(m->norm.shape[0], D);
    assert_false(m->lm_head.fp8); /* excluded */
    assert_int_equal(m->lm_head.out, V);
    assert_int_equal(m->lm_head.part[0].dtype, KILN_DTYPE_BF16);
    for (int i = 0; i < L; i++) {
        const struct kiln_layer_weights *w = &m->layers[i];
        assert_true(w->qkv.fp8);
        assert_int_equal(w->qkv.n_parts, 3);
        assert_int_equal(w->qkv.out, (H + 2 * HKV) * DH);
        assert_int_equal(w->qkv.in, D);
        assert_int_equal(w->qkv.part[1].shape[0], HKV * DH);
        assert_int_equal(w->o.n_parts, 1);
        assert_int_equal(w->o.in, H * DH);
        assert_int_equal(w->gate_up.n_parts, 2);
        assert_int_equal(w->gate_up.out, 2 * F);
        assert_int_equal(w->down.out, D);
        assert_int_equal(w->down.in, F);
        assert_true(w->k_scale == 1.0f && w->v_scale == 1.0f);
        char name[160];
        static const char *const qkv[3] = {"q_proj", "k_proj", "v_proj"};
        float wmax = 0, imax = 0;
        for (int p = 0; p < 3; p++) {
            snprintf(name, sizeof name, "model.layers.%d.self_attn.%s.weight_scale", i, qkv[p]);
            float s = scalar_of(m, name);
            assert_true(w->qkv.part_weight_scale[p] == s);
            wmax = fmaxf(wmax, s);
            snprintf(name, sizeof name, "model.layers.%d.self_attn.%s.input_scale", i, qkv[p]);
            s = scalar_of(m, name);
            assert_true(w->qkv.part_input_scale[p] == s);
            imax = fmaxf(imax, s);
        }
        assert_true(w->qkv.weight_scale == wmax);
        assert_true(w->qkv.input_scale == imax);
    }
    /* bytes a forward reads: linears, norms, lm_head; not the embedding */
    uint64_t per_layer =
        (uint64_t)((H + 2 * HKV) * DH * D + D * H * DH + 2 * F * D + D * F) + 2 * 2 * D;
    assert_int_equal(kiln_model_weight_bytes(m), L * per_layer + 2 * D + 2 * V * D);
    kiln_model_free(m);
    tmpdir_remove(dir);
    free(dir);
}

static void sharded_equals_single(void **state)
{
    (void)state;
    struct opts o = fp8_opts();
    o.kv_scales = true;
    char *one = make_dir(&o);
    o.n_shards = 3;
    char *three = make_dir(&o);
    struct kiln_model *a = load_ok(one), *b = load_ok(three);
    assert_int_equal(a->st.n_files, 1);
    assert_int_equal(b->st.n_files, 3);
    assert_same_model(a, b);
    assert_true(a->layers[1].k_scale != 1.0f);
    assert_true(a->layers[1].k_scale == scalar_of(a, "model.layers.1.self_attn.k_proj.k_scale"));
    kiln_model_free(a);
    kiln_model_free(b);
    tmpdir_remove(one);
    tmpdir_remove(three);
    free(one);
    free(three);
}

static void kv_scale_names(void **state)
{
    (void)state;
    struct opts o = fp8_opts();
    o.kv_scales = true;
    o.old_kv_names = true;
    char *dir = make_dir(&o);
    struct kiln_model *m = load_ok(dir);
    assert_true(m->cfg.fp8_kv_cache);
    assert_true(m->layers[0].v_scale == scalar_of(m, "model.layers.0.self_attn.v_scale"));
    assert_true(m->layers[0].v_scale != 1.0f);
    kiln_model_free(m);
    tmpdir_remove(dir);
    free(dir);
    o.scale_name = "model.layers.1.self_attn.k_scale";
    o.scale_value = -1.0f;
    expect_load_error(&o, KILN_ERR_INVALID, "model.layers.1.self_attn.k_scale", "finite and > 0");
}

/* The requantization rule, written out once more for the test. */
static uint8_t requant(uint8_t q, float s_part, float s_max)
{
    float v = kiln_e4m3_to_f32(q) * s_part;
    return kiln_f32_to_e4m3(v / s_max);
}

static void fused_rows(void **state)
{
    (void)state;
    struct opts o = fp8_opts();
    char *dir = make_dir(&o);
    struct kiln_model *m = load_ok(dir);
    const struct kiln_linear *l = &m->layers[0].qkv;
    /* the three scales differ, so two parts are requantized and one is copied */
    int n_equal = 0;
    for (int p = 0; p < 3; p++) n_equal += l->part_weight_scale[p] == l->weight_scale;
    assert_int_equal(n_equal, 1);
    int64_t r0 = 5, r1 = l->out - 3, in = l->in;
    uint8_t *got = malloc((size_t)((r1 - r0) * in));
    float *f = malloc((size_t)((r1 - r0) * in) * sizeof *f);
    kiln_linear_fp8_rows(l, r0, r1, got);
    kiln_linear_f32_rows(l, r0, r1, f);
    int64_t base = 0;
    int changed = 0;
    for (int p = 0; p < 3; p++) {
        const uint8_t *src = l->part[p].data;
        for (int64_t r = 0; r < l->part[p].shape[0]; r++) {
            int64_t row = base + r;
            if (row < r0 || row >= r1) continue;
            for (int64_t c = 0; c < in; c++) {
                uint8_t q = src[r * in + c];
                uint8_t want = requant(q, l->part_weight_scale[p], l->weight_scale);
                uint8_t g = got[(row - r0) * in + c];
                assert_int_equal(g, want);
                assert_true(f[(row - r0) * in + c] == kiln_e4m3_to_f32(want));
                changed += g != q;
                if (l->part_weight_scale[p] == l->weight_scale) assert_int_equal(g, q);
            }
        }
        base += l->part[p].shape[0];
    }
    assert_true(changed > 0);
    /* an empty range writes nothing; a single-part linear is a copy */
    kiln_linear_fp8_rows(l, 7, 7, NULL);
    const struct kiln_linear *down = &m->layers[1].down;
    uint8_t *all = malloc((size_t)(down->out * down->in));
    kiln_linear_fp8_rows(down, 0, down->out, all);
    assert_memory_equal(all, down->part[0].data, (size_t)(down->out * down->in));
    free(all);
    /* lm_head is BF16: f32 rows are the converted values */
    float row[D];
    kiln_linear_f32_rows(&m->lm_head, 3, 4, row);
    for (int c = 0; c < D; c++)
        assert_true(row[c] ==
                    kiln_bf16_to_f32(((const uint16_t *)m->lm_head.part[0].data)[3 * D + c]));
    free(got);
    free(f);
    kiln_model_free(m);
    tmpdir_remove(dir);
    free(dir);
}

static void loads_unquantized(void **state)
{
    (void)state;
    static const enum kiln_dtype dts[3] = {KILN_DTYPE_BF16, KILN_DTYPE_F16, KILN_DTYPE_F32};
    for (int k = 0; k < 3; k++) {
        struct opts o = {.float_dtype = dts[k], .n_shards = k + 1, .extras = true};
        char *dir = make_dir(&o);
        struct kiln_model *m = load_ok(dir);
        assert_false(m->cfg.fp8);
        const struct kiln_linear *gu = &m->layers[1].gate_up;
        assert_false(gu->fp8);
        assert_int_equal(gu->part[0].dtype, dts[k]);
        float *rows = malloc(2 * F * D * sizeof *rows);
        kiln_linear_f32_rows(gu, 0, 2 * F, rows);
        for (int64_t i = 0; i < F * D; i++) {
            assert_true(rows[i] == kiln_load_f32(gu->part[0].data, dts[k], (size_t)i));
            assert_true(rows[F * D + i] == kiln_load_f32(gu->part[1].data, dts[k], (size_t)i));
        }
        free(rows);
        kiln_model_free(m);
        tmpdir_remove(dir);
        free(dir);
    }
}

static void tied_embeddings(void **state)
{
    (void)state;
    struct opts o = fp8_opts();
    o.tie = true;
    char *dir = make_dir(&o);
    struct kiln_model *m = load_ok(dir);
    assert_true(m->cfg.tie_word_embeddings);
    assert_ptr_equal(m->lm_head.part[0].data, m->embed.data);
    assert_int_equal(m->lm_head.out, V);
    assert_false(m->lm_head.fp8);
    kiln_model_free(m);
    tmpdir_remove(dir);
    free(dir);
}

static void exclude_one_module(void **state)
{
    (void)state;
    struct opts o = fp8_opts();
    o.exclude = "\"lm_head\",\"model.layers.1.mlp.down_proj\"";
    char *dir = make_dir(&o);
    struct kiln_model *m = load_ok(dir);
    assert_true(m->layers[0].down.fp8);
    assert_false(m->layers[1].down.fp8);
    assert_int_equal(m->layers[1].down.part[0].dtype, KILN_DTYPE_BF16);
    kiln_model_free(m);
    tmpdir_remove(dir);
    free(dir);
    /* q excluded but not k and v: cannot fuse */
    o.exclude = "\"lm_head\",\"model.layers.0.self_attn.q_proj\"";
    expect_load_error(&o, KILN_ERR_UNSUPPORTED, "model.layers.0.self_attn.q_proj",
                      "model.layers.0.self_attn.k_proj");
}

/* Moves the data section one byte further (one more header space): every tensor misaligned. */
static void misalign(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    size_t n;
    uint8_t *b = read_all(path, &n);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | b[i];
    uint8_t *c = malloc(n + 1);
    memcpy(c, b, 8 + hlen);
    c[8 + hlen] = ' ';
    memcpy(c + 9 + hlen, b + 8 + hlen, n - 8 - hlen);
    hlen++;
    for (int i = 0; i < 8; i++) c[i] = (uint8_t)(hlen >> (8 * i));
    write_bytes(dir, "model.safetensors", c, n + 1);
    free(b);
    free(c);
}

static void misaligned_file(void **state)
{
    (void)state;
    struct opts o = {.float_dtype = KILN_DTYPE_F32};
    char *a = make_dir(&o), *b = make_dir(&o);
    misalign(b);
    struct kiln_model *x = load_ok(a), *y = load_ok(b);
    assert_true(y->n_owned > 0);
    assert_int_equal((uintptr_t)y->embed.data % 4, 0);
    assert_same_model(x, y);
    kiln_model_free(x);
    kiln_model_free(y);
    tmpdir_remove(a);
    tmpdir_remove(b);
    free(a);
    free(b);
}

static void validation_errors(void **state)
{
    (void)state;
    struct opts o = fp8_opts();
    o.n_shards = 3;
    o.as_bf16 = "model.layers.1.mlp.up_proj.weight";
    expect_load_error(&o, KILN_ERR_INVALID,
                      "model.layers.1.mlp.up_proj.weight: expected F8_E4M3 [48, 32], got BF16 "
                      "[48, 32] (in model-0000",
                      "-of-00003.safetensors)");
    o = fp8_opts();
    o.bad_shape = "model.layers.0.self_attn.k_proj.weight";
    expect_load_error(&o, KILN_ERR_INVALID,
                      "model.layers.0.self_attn.k_proj.weight: expected F8_E4M3 [16, 32], got "
                      "F8_E4M3 [17, 32] (in model.safetensors)",
                      NULL);
    o = fp8_opts();
    o.bad_shape = "model.norm.weight";
    expect_load_error(&o, KILN_ERR_INVALID,
                      "model.norm.weight: expected BF16, F16 or F32 [32], got BF16 [33]", NULL);
    o = fp8_opts();
    o.skip = "model.layers.1.mlp.gate_proj.input_scale";
    expect_load_error(&o, KILN_ERR_INVALID, "model.layers.1.mlp.gate_proj.input_scale: missing",
                      NULL);
    o.skip = "model.layers.0.self_attn.o_proj.weight_scale";
    expect_load_error(&o, KILN_ERR_INVALID, "model.layers.0.self_attn.o_proj.weight_scale: missing",
                      NULL);
    o.skip = "model.layers.1.post_attention_layernorm.weight";
    expect_load_error(&o, KILN_ERR_INVALID, "model.layers.1.post_attention_layernorm.weight",
                      "missing");
    o.skip = "lm_head.weight";
    expect_load_error(&o, KILN_ERR_INVALID, "lm_head.weight", "missing");
    o.skip = "model.embed_tokens.weight";
    expect_load_error(&o, KILN_ERR_INVALID, "model.embed_tokens.weight", "missing");
    o = fp8_opts();
    o.scale_name = "model.layers.0.mlp.down_proj.weight_scale";
    o.scale_value = NAN;
    expect_load_error(&o, KILN_ERR_INVALID, "model.layers.0.mlp.down_proj.weight_scale",
                      "finite and > 0 (in model.safetensors)");
    o.scale_value = 0.0f;
    expect_load_error(&o, KILN_ERR_INVALID, "model.layers.0.mlp.down_proj.weight_scale",
                      "finite and > 0");
    o.scale_value = INFINITY;
    expect_load_error(&o, KILN_ERR_INVALID, "model.layers.0.mlp.down_proj.weight_scale",
                      "finite and > 0");
    o.scale_value = 1.0f;
    o.scale_shape2 = true;
    expect_load_error(&o, KILN_ERR_INVALID,
                      "model.layers.0.mlp.down_proj.weight_scale: expected F32 [] or [1], got "
                      "F32 [2]",
                      NULL);
    /* FP8 weights but no quantization config */
    o = fp8_opts();
    char *dir = make_dir(&o);
    char path[4096];
    snprintf(path, sizeof path, "%s/hf_quant_config.json", dir);
    remove(path);
    struct kiln_model *m = NULL;
    struct kiln_error err = {0};
    assert_int_equal(kiln_model_load(dir, &m, &err), KILN_ERR_INVALID);
    assert_non_null(strstr(err.msg, "expected BF16, F16 or F32"));
    assert_non_null(strstr(err.msg, "hf_quant_config.json missing?"));
    /* no config at all */
    snprintf(path, sizeof path, "%s/config.json", dir);
    remove(path);
    assert_int_equal(kiln_model_load(dir, &m, &err), KILN_ERR_IO);
    assert_non_null(strstr(err.msg, "config.json"));
    tmpdir_remove(dir);
    free(dir);
}

/* A model assembled in memory (as mkmodel does) frees cleanly. */
static void hand_built_model(void **state)
{
    (void)state;
    struct kiln_model *m = calloc(1, sizeof *m);
    struct kiln_error err = {0};
    assert_int_equal(kiln_config_parse("{\"architectures\":[\"LlamaForCausalLM\"],"
                                       "\"vocab_size\":8,\"hidden_size\":4,"
                                       "\"intermediate_size\":8,\"num_hidden_layers\":1,"
                                       "\"num_attention_heads\":2}",
                                       "{\"quantization\":{\"quant_algo\":\"FP8\","
                                       "\"exclude_modules\":[\"lm_head\"]}}",
                                       NULL, &m->cfg, &err),
                     KILN_OK);
    m->layers = calloc(1, sizeof *m->layers);
    for (int i = 0; i < 40; i++) assert_int_equal(kiln_model_own(m, malloc(16), &err), KILN_OK);
    kiln_model_free(m);
    kiln_model_free(NULL);
}

int main(void)
{
    kiln_numeric_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(loads_fp8),          cmocka_unit_test(sharded_equals_single),
        cmocka_unit_test(kv_scale_names),     cmocka_unit_test(fused_rows),
        cmocka_unit_test(loads_unquantized),  cmocka_unit_test(tied_embeddings),
        cmocka_unit_test(exclude_one_module), cmocka_unit_test(misaligned_file),
        cmocka_unit_test(validation_errors),  cmocka_unit_test(hand_built_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
