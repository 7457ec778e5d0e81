/* kiln mkmodel: writes a random-weight Llama checkpoint in exactly the Hugging Face ModelOpt FP8
 * layout of nvidia/Llama-3.1-8B-Instruct-FP8 (or a plain BF16 one), for tests and benchmarks
 * where no model hub is reachable.
 *
 * Reproducible bit for bit from the seed: every element comes from a counter-based integer
 * PRNG (splitmix64 of the tensor's key + its index, so threads may split tensors any way) and
 * exact float arithmetic (an int24 scaled by a power of two, one rounding multiply), never a
 * libm transcendental. The FP8 model is the quantization of the BF16 one of the same seed:
 *   weight_scale = amax(W) / 448, W8 = sat_e4m3(W / weight_scale)
 * and its static activation scales come from a calibration pass of the CPU backend over a fixed
 * pseudo-random prompt: input_scale = amax(x) / 448, rounded up to BF16 precision (so a last-bit
 * difference in libm's expf inside the forward pass almost never changes the file).
 *
 * Cost: the llama-3.1-8b preset holds its 9 GB of FP8 + BF16 weights in memory (calibration needs
 * the whole model) and streams them to disk tensor by tensor. */
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/cpu/cpu.h"
#include "cli.h"
#include "common.h"
#include "core/file.h"
#include "core/log.h"
#include "core/thread.h"
#include "model/model.h"

#define VOCAB           128256
#define DEFAULT_SHARD   5000000000ull /* transformers' max_shard_size "5GB" */
#define CHUNK           65536         /* elements per parallel work item */
#define GOLDEN          0x9e3779b97f4a7c15ull
#define TOKENIZER_LIMIT (256u * 1024u * 1024u)

struct preset {
    const char *name;
    int hidden, intermediate, layers, heads, kv_heads, head_dim;
    int calib_tokens; /* prompt length of the calibration pass */
};

static const struct preset presets[] = {
    {"tiny", 128, 384, 2, 2, 1, 64, 64},
    {"small", 1024, 3584, 4, 8, 2, 128, 64},
    {"llama-3.1-8b", 4096, 14336, 32, 32, 8, 128, 8},
};

static const int eos_ids[3] = {128001, 128008, 128009};

struct mk_opts {
    const char *out;
    const struct preset *preset;
    bool fp8, fp8_kv, force;
    uint64_t seed;
    uint64_t shard_size;
    const char *tokenizer;
};

/* ---- deterministic values ---- */

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t tensor_key(uint64_t seed, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (const char *p = name; *p; p++) h = (h ^ (uint8_t)*p) * 0x100000001b3ull;
    return mix64(seed ^ mix64(h));
}

/* Element i: uniform in [center - a, center + a) as center + (int24 / 2^23) * a. The product
 * is one rounding (exact when a is a power of two), so no FMA contraction can change it. */
static float uniform_at(uint64_t key, size_t i, float center, float a)
{
    int32_t q = (int32_t)(mix64(key + (uint64_t)(i + 1) * GOLDEN) >> 40) - (1 << 23);
    float w = (float)q * 0x1p-23f * a;
    return center + w;
}

struct gen_job {
    uint64_t key;
    float center, a;
    size_t n;
    uint16_t *bf16;    /* (n,) BF16 values */
    float *chunk_amax; /* (n / CHUNK + 1,) */
    uint8_t *fp8;      /* (n,) when quantizing */
    float scale;       /* weight_scale when quantizing */
};

static void gen_chunks(void *ctx, size_t c0, size_t c1)
{
    struct gen_job *j = ctx;
    for (size_t c = c0; c < c1; c++) {
        size_t end = (c + 1) * CHUNK < j->n ? (c + 1) * CHUNK : j->n;
        /* finite BF16 magnitudes order like their bits without the sign */
        uint16_t amax = 0;
        for (size_t i = c * CHUNK; i < end; i++) {
            uint16_t b = kiln_f32_to_bf16(uniform_at(j->key, i, j->center, j->a));
            j->bf16[i] = b;
            amax = (b & 0x7fff) > amax ? (uint16_t)(b & 0x7fff) : amax;
        }
        j->chunk_amax[c] = kiln_bf16_to_f32(amax);
    }
}

static void quant_chunks(void *ctx, size_t c0, size_t c1)
{
    struct gen_job *j = ctx;
    size_t end = c1 * CHUNK < j->n ? c1 * CHUNK : j->n;
    for (size_t i = c0 * CHUNK; i < end; i++)
        j->fp8[i] = kiln_f32_to_e4m3(kiln_bf16_to_f32(j->bf16[i]) / j->scale);
}

/* ---- the checkpoint being built ---- */

struct mk_tensor {
    char name[96];
    enum kiln_dtype dtype;
    int ndim;
    int64_t shape[2];
    void *data; /* owned by the model */
};

struct mk {
    struct mk_opts o;
    struct kiln_pool *pool;
    struct kiln_model *m;
    struct mk_tensor *t; /* [n] in Hugging Face state_dict order */
    int n, cap;
    uint16_t *scratch; /* (largest linear,) BF16 before quantization */
    float *chunk_amax; /* (largest tensor / CHUNK + 1,) */
};

static enum kiln_status push(struct mk *k, const char *name, enum kiln_dtype dt, int ndim,
                             int64_t rows, int64_t cols, void **data, struct kiln_error *err)
{
    if (k->n == k->cap) {
        int cap = k->cap ? 2 * k->cap : 256;
        struct mk_tensor *v = realloc(k->t, (size_t)cap * sizeof *v);
        if (!v) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
        k->t = v;
        k->cap = cap;
    }
    size_t n = ndim == 0 ? 1 : ndim == 1 ? (size_t)rows : (size_t)rows * (size_t)cols;
    void *buf = malloc(n * kiln_dtype_size(dt));
    if (!buf)
        return kiln_errorf(err, KILN_ERR_NOMEM, "%s: out of memory (%zu bytes)", name,
                           n * kiln_dtype_size(dt));
    enum kiln_status st = kiln_model_own(k->m, buf, err);
    if (st) return st;
    struct mk_tensor *t = &k->t[k->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = dt;
    t->ndim = ndim;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->data = buf;
    *data = buf;
    return KILN_OK;
}

static struct kiln_tensor view(const struct mk_tensor *t)
{
    struct kiln_tensor v = {.dtype = t->dtype, .ndim = t->ndim, .data = t->data};
    v.shape[0] = t->shape[0];
    v.shape[1] = t->shape[1];
    return v;
}

/* A BF16 tensor of uniform values: (rows, cols), or (rows,) when cols == 0. Returns its amax. */
static void gen_bf16(struct mk *k, const char *name, int64_t rows, int64_t cols, float center,
                     float a, uint16_t *dst, float *amax_out)
{
    struct gen_job j = {.key = tensor_key(k->o.seed, name),
                        .center = center,
                        .a = a,
                        .n = (size_t)rows * (size_t)(cols ? cols : 1),
                        .bf16 = dst,
                        .chunk_amax = k->chunk_amax};
    size_t chunks = (j.n + CHUNK - 1) / CHUNK;
    kiln_parallel_for(k->pool, chunks, gen_chunks, &j);
    float amax = 0.0f;
    for (size_t c = 0; c < chunks; c++) amax = k->chunk_amax[c] > amax ? k->chunk_amax[c] : amax;
    if (amax_out) *amax_out = amax;
}

static enum kiln_status add_bf16(struct mk *k, const char *name, int64_t rows, int64_t cols,
                                 float center, float a, struct kiln_tensor *out,
                                 struct kiln_error *err)
{
    void *data;
    enum kiln_status st = push(k, name, KILN_DTYPE_BF16, cols ? 2 : 1, rows, cols, &data, err);
    if (st) return st;
    gen_bf16(k, name, rows, cols, center, a, data, NULL);
    *out = view(&k->t[k->n - 1]);
    return KILN_OK;
}

static enum kiln_status add_scalar(struct mk *k, const char *module, const char *what, float v,
                                   float **slot, struct kiln_error *err)
{
    char name[128];
    snprintf(name, sizeof name, "%s.%s", module, what);
    void *data = NULL;
    enum kiln_status st = push(k, name, KILN_DTYPE_F32, 0, 0, 0, &data, err);
    if (st) return st;
    *(float *)data = v;
    if (slot) *slot = data;
    return KILN_OK;
}

/* Half-range of a uniform distribution with standard deviation 0.02: 0.02 * sqrt(3). */
#define WEIGHT_A 0.034641016f

/* A linear's half-range: WEIGHT_A times a per-tensor factor in [0.75, 1.25) so that q, k and v
 * (and gate and up) get different weight scales, as real checkpoints do, and fusing them
 * exercises the requantization. 1 + q / 512 is exact; the product is one rounding. */
static float linear_half_range(uint64_t seed, const char *name)
{
    int q = (int)(mix64(tensor_key(seed, name) ^ 0x5ca1eull) >> 56) - 128;
    return WEIGHT_A * (1.0f + (float)q * 0x1p-9f);
}

/* One linear part: BF16 weights, or their FP8 quantization with weight_scale and a placeholder
 * input_scale that calibration fills in. */
static enum kiln_status add_linear_part(struct mk *k, const char *module, int64_t out, int64_t in,
                                        struct kiln_linear *l, int p, float **input_scale_slot,
                                        struct kiln_error *err)
{
    char name[128];
    snprintf(name, sizeof name, "%s.weight", module);
    enum kiln_status st;
    float a = linear_half_range(k->o.seed, name);
    if (!k->o.fp8) {
        st = add_bf16(k, name, out, in, 0.0f, a, &l->part[p], err);
        if (!st) l->out += out;
        return st;
    }
    void *data;
    if ((st = push(k, name, KILN_DTYPE_F8E4M3, 2, out, in, &data, err))) return st;
    struct kiln_tensor w = view(&k->t[k->n - 1]);
    float amax;
    gen_bf16(k, name, out, in, 0.0f, a, k->scratch, &amax);
    struct gen_job j = {.n = (size_t)out * (size_t)in,
                        .bf16 = k->scratch,
                        .fp8 = data,
                        .scale = amax / KILN_FP8_MAX};
    kiln_parallel_for(k->pool, (j.n + CHUNK - 1) / CHUNK, quant_chunks, &j);
    if ((st = add_scalar(k, module, "weight_scale", j.scale, NULL, err)) ||
        (st = add_scalar(k, module, "input_scale", 1.0f, input_scale_slot, err)))
        return st;
    l->part[p] = w;
    l->part_weight_scale[p] = j.scale;
    l->part_input_scale[p] = 1.0f;
    l->weight_scale = fmaxf(l->weight_scale, j.scale);
    l->input_scale = 1.0f;
    l->out += out;
    return KILN_OK;
}

/* input_scale slots of one layer: [qkv: 3][o: 1][gate_up: 2][down: 1] and k/v scale slots */
struct layer_slots {
    float *in[7];
    float *kv[2];
};

static enum kiln_status add_layer(struct mk *k, int i, struct layer_slots *s,
                                  struct kiln_error *err)
{
    const struct kiln_config *c = &k->m->cfg;
    struct kiln_layer_weights *w = &k->m->layers[i];
    int64_t d = c->hidden_size, f = c->intermediate_size, dh = c->head_dim;
    char mod[128], name[160];
    enum kiln_status st;
    static const char *const attn[4] = {"q_proj", "k_proj", "v_proj", "o_proj"};
    const int64_t attn_out[4] = {c->n_heads * dh, c->n_kv_heads * dh, c->n_kv_heads * dh, d};
    for (int p = 0; p < 4; p++) {
        snprintf(mod, sizeof mod, "model.layers.%d.self_attn.%s", i, attn[p]);
        struct kiln_linear *l = p < 3 ? &w->qkv : &w->o;
        int64_t in = p < 3 ? d : c->n_heads * dh;
        l->n_parts = p < 3 ? 3 : 1;
        l->in = in;
        l->fp8 = k->o.fp8;
        if ((st = add_linear_part(k, mod, attn_out[p], in, l, p < 3 ? p : 0, &s->in[p], err)))
            return st;
    }
    static const char *const mlp[3] = {"gate_proj", "up_proj", "down_proj"};
    for (int p = 0; p < 3; p++) {
        snprintf(mod, sizeof mod, "model.layers.%d.mlp.%s", i, mlp[p]);
        struct kiln_linear *l = p < 2 ? &w->gate_up : &w->down;
        l->n_parts = p < 2 ? 2 : 1;
        l->in = p < 2 ? d : f;
        l->fp8 = k->o.fp8;
        if ((st = add_linear_part(k, mod, p < 2 ? f : d, l->in, l, p < 2 ? p : 0, &s->in[4 + p],
                                  err)))
            return st;
    }
    snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", i);
    if ((st = add_bf16(k, name, d, 0, 1.0f, 0.125f, &w->attn_norm, err))) return st;
    snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", i);
    if ((st = add_bf16(k, name, d, 0, 1.0f, 0.125f, &w->mlp_norm, err))) return st;
    w->k_scale = w->v_scale = 1.0f;
    if (k->o.fp8_kv) {
        snprintf(mod, sizeof mod, "model.layers.%d.self_attn.k_proj", i);
        if ((st = add_scalar(k, mod, "k_scale", 1.0f, &s->kv[0], err))) return st;
        snprintf(mod, sizeof mod, "model.layers.%d.self_attn.v_proj", i);
        if ((st = add_scalar(k, mod, "v_scale", 1.0f, &s->kv[1], err))) return st;
    }
    return KILN_OK;
}

/* Static FP8 scale from a calibrated amax: amax / 448 rounded up to BF16 precision. */
static enum kiln_status scale_from_amax(float amax, const char *what, int layer, float *out,
                                        struct kiln_error *err)
{
    if (!isfinite(amax) || amax <= 0.0f)
        return kiln_errorf(err, KILN_ERR_INTERNAL,
                           "calibration gave %s amax %g in layer %d (expected finite, > 0)", what,
                           amax, layer);
    float s = amax / KILN_FP8_MAX;
    uint32_t u;
    memcpy(&u, &s, 4);
    if (u & 0xffffu) u = (u | 0xffffu) + 1u;
    memcpy(&s, &u, 4);
    *out = s;
    return KILN_OK;
}

/* Runs the calibration pass and writes every input_scale (and k/v scale) into its tensor. */
static enum kiln_status calibrate(struct mk *k, struct layer_slots *slots, struct kiln_error *err)
{
    const struct kiln_config *c = &k->m->cfg;
    int n = k->o.preset->calib_tokens, L = c->n_layers;
    int32_t *tokens = malloc((size_t)n * sizeof *tokens);
    float *amax = malloc((size_t)L * 4 * sizeof *amax);
    float *kv_amax = malloc((size_t)L * 2 * sizeof *kv_amax);
    enum kiln_status st = KILN_OK;
    if (!tokens || !amax || !kv_amax) st = kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    uint64_t key = tensor_key(k->o.seed, "calibration prompt");
    for (int i = 0; !st && i < n; i++)
        tokens[i] = (int32_t)(mix64(key + (uint64_t)(i + 1) * GOLDEN) % (uint64_t)c->vocab_size);
    if (!st) st = kiln_cpu_calibrate(k->m, tokens, n, amax, k->o.fp8_kv ? kv_amax : NULL, err);
    static const int group_of[7] = {0, 0, 0, 1, 2, 2, 3}; /* part -> [qkv, o, gate_up, down] */
    static const char *const group_name[4] = {"qkv", "o_proj", "gate_up", "down_proj"};
    for (int l = 0; !st && l < L; l++) {
        float s[4];
        for (int g = 0; !st && g < 4; g++)
            st = scale_from_amax(amax[l * 4 + g], group_name[g], l, &s[g], err);
        for (int p = 0; !st && p < 7; p++) *slots[l].in[p] = s[group_of[p]];
        if (!st) {
            struct kiln_layer_weights *w = &k->m->layers[l];
            struct kiln_linear *lin[4] = {&w->qkv, &w->o, &w->gate_up, &w->down};
            for (int g = 0; g < 4; g++) {
                lin[g]->input_scale = s[g];
                for (int p = 0; p < lin[g]->n_parts; p++) lin[g]->part_input_scale[p] = s[g];
            }
        }
        for (int j = 0; !st && k->o.fp8_kv && j < 2; j++)
            st = scale_from_amax(kv_amax[l * 2 + j], j ? "v cache" : "k cache", l, slots[l].kv[j],
                                 err);
        if (!st && k->o.fp8_kv) {
            k->m->layers[l].k_scale = *slots[l].kv[0];
            k->m->layers[l].v_scale = *slots[l].kv[1];
        }
    }
    free(tokens);
    free(amax);
    free(kv_amax);
    return st;
}

/* ---- JSON files ---- */

static json_t *eos_list(void)
{
    json_t *a = json_array();
    for (int i = 0; i < 3; i++) json_array_append_new(a, json_integer(eos_ids[i]));
    return a;
}

/* config.json as transformers' LlamaConfig.to_json_string writes it for Llama 3.1 (sorted
 * keys, two-space indent); quantization stays in hf_quant_config.json as in NVIDIA's export. */
static char *config_json(const struct mk_opts *o)
{
    const struct preset *p = o->preset;
    json_t *c = json_object();
    json_object_set_new(c, "architectures", json_pack("[s]", "LlamaForCausalLM"));
    json_object_set_new(c, "attention_bias", json_false());
    json_object_set_new(c, "attention_dropout", json_real(0.0));
    json_object_set_new(c, "bos_token_id", json_integer(128000));
    json_object_set_new(c, "eos_token_id", eos_list());
    json_object_set_new(c, "head_dim", json_integer(p->head_dim));
    json_object_set_new(c, "hidden_act", json_string("silu"));
    json_object_set_new(c, "hidden_size", json_integer(p->hidden));
    json_object_set_new(c, "initializer_range", json_real(0.02));
    json_object_set_new(c, "intermediate_size", json_integer(p->intermediate));
    json_object_set_new(c, "max_position_embeddings", json_integer(131072));
    json_object_set_new(c, "mlp_bias", json_false());
    json_object_set_new(c, "model_type", json_string("llama"));
    json_object_set_new(c, "num_attention_heads", json_integer(p->heads));
    json_object_set_new(c, "num_hidden_layers", json_integer(p->layers));
    json_object_set_new(c, "num_key_value_heads", json_integer(p->kv_heads));
    json_object_set_new(c, "pretraining_tp", json_integer(1));
    json_object_set_new(c, "rms_norm_eps", json_real(1e-5));
    json_object_set_new(c, "rope_scaling",
                        json_pack("{s:f,s:f,s:f,s:i,s:s}", "factor", 8.0, "high_freq_factor", 4.0,
                                  "low_freq_factor", 1.0, "original_max_position_embeddings", 8192,
                                  "rope_type", "llama3"));
    json_object_set_new(c, "rope_theta", json_real(500000.0));
    json_object_set_new(c, "tie_word_embeddings", json_false());
    json_object_set_new(c, "torch_dtype", json_string("bfloat16"));
    json_object_set_new(c, "use_cache", json_true());
    json_object_set_new(c, "vocab_size", json_integer(VOCAB));
    char *s = json_dumps(c, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(9));
    json_decref(c);
    return s;
}

/* hf_quant_config.json as ModelOpt writes it (four-space indent, its own key order). */
static char *quant_json(const struct mk_opts *o)
{
    json_t *q = json_pack(
        "{s:{s:s,s:s},s:{s:s,s:o,s:[s]}}", "producer", "name", "modelopt", "version",
        "kiln mkmodel " KILN_VERSION, "quantization", "quant_algo", "FP8", "kv_cache_quant_algo",
        o->fp8_kv ? json_string("FP8") : json_null(), "exclude_modules", "lm_head");
    char *s = q ? json_dumps(q, JSON_INDENT(4)) : NULL;
    json_decref(q);
    return s;
}

/* generation_config.json of Llama 3.1 Instruct. */
static char *generation_json(void)
{
    json_t *g = json_object();
    json_object_set_new(g, "bos_token_id", json_integer(128000));
    json_object_set_new(g, "do_sample", json_true());
    json_object_set_new(g, "eos_token_id", eos_list());
    json_object_set_new(g, "temperature", json_real(0.6));
    json_object_set_new(g, "top_p", json_real(0.9));
    char *s = json_dumps(g, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(9));
    json_decref(g);
    return s;
}

static enum kiln_status write_text_file(const char *dir, const char *name, const char *text,
                                        struct kiln_error *err)
{
    char path[4096];
    enum kiln_status st = kiln_path_join(path, sizeof path, dir, name, err);
    if (st) return st;
    if (!text) return kiln_errorf(err, KILN_ERR_NOMEM, "%s: out of memory", name);
    size_t len = strlen(text);
    char *buf = malloc(len + 2);
    if (!buf) return kiln_errorf(err, KILN_ERR_NOMEM, "%s: out of memory", name);
    memcpy(buf, text, len);
    buf[len] = '\n';
    st = kiln_file_write_atomic(path, buf, len + 1, err);
    free(buf);
    return st;
}

/* ---- shards ---- */

static enum kiln_status write_shards(struct mk *k, const char *dir, int *n_shards_out,
                                     uint64_t *total_out, struct kiln_error *err)
{
    /* transformers' split: a new shard when the next tensor would overflow the current one */
    int *shard_of = calloc((size_t)k->n, sizeof *shard_of);
    if (!shard_of) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    int n_shards = 1;
    uint64_t cur = 0, total = 0;
    for (int i = 0; i < k->n; i++) {
        uint64_t b = kiln_dtype_size(k->t[i].dtype);
        for (int d = 0; d < k->t[i].ndim; d++) b *= (uint64_t)k->t[i].shape[d];
        if (cur > 0 && cur + b > k->o.shard_size) {
            n_shards++;
            cur = 0;
        }
        cur += b;
        total += b;
        shard_of[i] = n_shards - 1;
    }
    enum kiln_status st = KILN_OK;
    json_t *map = json_object();
    for (int s = 0; s < n_shards && !st; s++) {
        char fname[64], path[4096];
        if (n_shards == 1)
            snprintf(fname, sizeof fname, "model.safetensors");
        else
            snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
        struct kiln_st_writer *w = kiln_st_writer_create();
        if (!w) st = kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
        for (int i = 0; i < k->n && !st; i++) {
            if (shard_of[i] != s) continue;
            const struct mk_tensor *t = &k->t[i];
            st = kiln_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, err);
            json_object_set_new(map, t->name, json_string(fname));
        }
        if (!st) st = kiln_path_join(path, sizeof path, dir, fname, err);
        if (!st) st = kiln_st_writer_write(w, path, err);
        kiln_st_writer_free(w);
    }
    if (!st && n_shards > 1) {
        json_t *index = json_pack("{s:{s:I},s:O}", "metadata", "total_size", (json_int_t)total,
                                  "weight_map", map);
        char *text = index ? json_dumps(index, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
        st = write_text_file(dir, "model.safetensors.index.json", text, err);
        free(text);
        json_decref(index);
    }
    json_decref(map);
    free(shard_of);
    *n_shards_out = n_shards;
    *total_out = total;
    return st;
}

/* tokenizer_config.json with chat_template set to Llama 3.1 Instruct's. model_max_length, which
 * tokenizer packages often hold as transformers' 1e30 sentinel (an integer beyond JSON parsers'
 * int64), becomes the real checkpoint's 131072. */
static enum kiln_status set_chat_template(char **data, size_t *len, const char *path,
                                          struct kiln_error *err)
{
    json_error_t je;
    json_t *cfg = json_loadb(*data, *len, JSON_DECODE_INT_AS_REAL, &je);
    if (!json_is_object(cfg)) {
        json_decref(cfg);
        return kiln_errorf(err, KILN_ERR_FORMAT, "%s: not a JSON object (%s)", path, je.text);
    }
    json_object_set_new(cfg, "chat_template", json_string(kiln_llama31_chat_template));
    /* every other number back to an integer where it is one (INT_AS_REAL read them as reals) */
    const char *key;
    json_t *v;
    json_object_foreach(cfg, key, v)
    {
        double x = json_is_real(v) ? json_real_value(v) : 0.0;
        if (!json_is_real(v) || x != floor(x)) continue;
        json_object_set_new(cfg, key, json_integer(fabs(x) < 9.0e15 ? (json_int_t)x : 131072));
    }
    char *text = json_dumps(cfg, JSON_INDENT(2));
    json_decref(cfg);
    if (!text) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    free(*data);
    *data = text;
    *len = strlen(text);
    return KILN_OK;
}

static enum kiln_status copy_tokenizer(const char *from, const char *dir, struct kiln_error *err)
{
    static const char *const files[] = {"tokenizer.json", "tokenizer_config.json",
                                        "special_tokens_map.json", "chat_template.jinja"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char src[4096], dst[4096];
        enum kiln_status st = kiln_path_join(src, sizeof src, from, files[i], err);
        if (!st) st = kiln_path_join(dst, sizeof dst, dir, files[i], err);
        if (st) return st;
        if (!kiln_file_exists(src)) {
            if (i == 0)
                return kiln_errorf(err, KILN_ERR_IO, "--tokenizer %s: no tokenizer.json there",
                                   from);
            continue;
        }
        /* the demo model gets the real checkpoint's template (the template file's is dropped) */
        if (i == 3) continue;
        char *data;
        size_t len;
        if ((st = kiln_file_read(src, TOKENIZER_LIMIT, &data, &len, err))) return st;
        if (i == 1) st = set_chat_template(&data, &len, src, err);
        if (!st) st = kiln_file_write_atomic(dst, data, len, err);
        free(data);
        if (st) return st;
    }
    return KILN_OK;
}

/* ---- the whole model ---- */

static enum kiln_status build_model(struct mk *k, struct kiln_error *err)
{
    const struct kiln_config *c = &k->m->cfg;
    /* scratch holds one linear before quantization; chunk_amax covers the embedding too */
    int64_t d = c->hidden_size, q = (int64_t)c->n_heads * c->head_dim;
    int64_t linear =
        (int64_t)c->intermediate_size * d > q * d ? (int64_t)c->intermediate_size * d : q * d;
    int64_t largest = (int64_t)VOCAB * d > linear ? (int64_t)VOCAB * d : linear;
    k->scratch = malloc((size_t)linear * sizeof *k->scratch);
    k->chunk_amax = malloc(((size_t)largest / CHUNK + 1) * sizeof *k->chunk_amax);
    k->m->layers = calloc((size_t)c->n_layers, sizeof *k->m->layers);
    struct layer_slots *slots = calloc((size_t)c->n_layers, sizeof *slots);
    enum kiln_status st = KILN_OK;
    double t_gen = kiln_now();
    if (!k->scratch || !k->chunk_amax || !k->m->layers || !slots)
        st = kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    if (!st)
        st = add_bf16(k, "model.embed_tokens.weight", VOCAB, d, 0.0f, WEIGHT_A, &k->m->embed, err);
    for (int i = 0; !st && i < c->n_layers; i++) st = add_layer(k, i, &slots[i], err);
    if (!st) st = add_bf16(k, "model.norm.weight", d, 0, 1.0f, 0.125f, &k->m->norm, err);
    if (!st) {
        /* logits with a standard deviation of ~4 so the greedy choice is clear-cut:
         * std 4 / sqrt(d), half-range 4 sqrt(3 / d) (sqrt is correctly rounded) */
        float a = (float)(4.0 * sqrt(3.0 / (double)d));
        struct kiln_linear *h = &k->m->lm_head;
        h->out = VOCAB;
        h->in = d;
        h->n_parts = 1;
        st = add_bf16(k, "lm_head.weight", VOCAB, d, 0.0f, a, &h->part[0], err);
    }
    KILN_INFO("mkmodel: generated %d tensors in %.1f s", k->n, kiln_now() - t_gen);
    if (!st && k->o.fp8) {
        double t0 = kiln_now();
        st = calibrate(k, slots, err);
        if (!st)
            KILN_INFO("mkmodel: calibrated activation scales over %d tokens in %.1f s",
                      k->o.preset->calib_tokens, kiln_now() - t0);
    }
    free(slots);
    return st;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void remove_tree(const char *path)
{
    nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* 0: missing, 1: empty folder, 2: non-empty folder, 3: something else */
static int out_state(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) return 0;
    if (!S_ISDIR(st.st_mode)) return 3;
    DIR *d = opendir(path);
    if (!d) return 2;
    int state = 1;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) state = 2;
    closedir(d);
    return state;
}

/* Moves the finished tmp folder to OUT; an existing OUT (empty, or replaced with --force) is
 * moved aside first and deleted after, so OUT always names a complete model. */
static enum kiln_status publish(const char *tmp, const char *out, struct kiln_error *err)
{
    int state = out_state(out);
    char old[4096];
    snprintf(old, sizeof old, "%s.old-%d", out, (int)getpid());
    if (state && rename(out, old) != 0)
        return kiln_errorf(err, KILN_ERR_IO, "rename %s -> %s: %s", out, old, strerror(errno));
    if (rename(tmp, out) != 0) {
        int e = errno;
        if (state) rename(old, out);
        return kiln_errorf(err, KILN_ERR_IO, "rename %s -> %s: %s", tmp, out, strerror(e));
    }
    if (state) remove_tree(old);
    return KILN_OK;
}

static enum kiln_status mkmodel(const struct mk_opts *o, struct kiln_error *err)
{
    int state = out_state(o->out);
    if (state == 3) return kiln_errorf(err, KILN_ERR_IO, "%s exists and is not a folder", o->out);
    if (state == 2 && !o->force)
        return kiln_errorf(err, KILN_ERR_IO,
                           "%s exists and is not empty (pass --force to replace it)", o->out);
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp-%d", o->out, (int)getpid()) >= (int)sizeof tmp)
        return kiln_errorf(err, KILN_ERR_INVALID, "%s: path too long", o->out);
    remove_tree(tmp);
    if (mkdir(tmp, 0755) != 0) return kiln_errorf(err, KILN_ERR_IO, "%s: %s", tmp, strerror(errno));

    double t0 = kiln_now();
    struct mk k = {.o = *o};
    char *config = config_json(o), *quant = o->fp8 ? quant_json(o) : NULL, *gen = generation_json();
    enum kiln_status st = KILN_OK;
    k.m = calloc(1, sizeof *k.m);
    k.pool = kiln_pool_create(0);
    if (!k.m || !k.pool || !config || !gen || (o->fp8 && !quant))
        st = kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    /* the in-memory model reads the same JSON the checkpoint gets */
    if (!st) st = kiln_config_parse(config, quant, gen, &k.m->cfg, err);
    if (!st) st = build_model(&k, err);
    int n_shards = 0;
    uint64_t total = 0;
    double t_write = kiln_now();
    if (!st) st = write_shards(&k, tmp, &n_shards, &total, err);
    if (!st) KILN_INFO("mkmodel: wrote the shards in %.1f s", kiln_now() - t_write);
    if (!st) st = write_text_file(tmp, "config.json", config, err);
    if (!st && o->fp8) st = write_text_file(tmp, "hf_quant_config.json", quant, err);
    if (!st) st = write_text_file(tmp, "generation_config.json", gen, err);
    if (!st && o->tokenizer) st = copy_tokenizer(o->tokenizer, tmp, err);
    if (!st) st = publish(tmp, o->out, err);
    if (st)
        remove_tree(tmp);
    else
        fprintf(stderr,
                "mkmodel: wrote %s (%s, %s%s, seed %llu): %d shard%s, %.1f MB of tensors in "
                "%.1f s\n",
                o->out, o->preset->name, o->fp8 ? "fp8" : "bf16", o->fp8_kv ? " + fp8 KV" : "",
                (unsigned long long)o->seed, n_shards, n_shards == 1 ? "" : "s", total / 1e6,
                kiln_now() - t0);
    free(config);
    free(quant);
    free(gen);
    free(k.t);
    free(k.scratch);
    free(k.chunk_amax);
    kiln_model_free(k.m);
    kiln_pool_free(k.pool);
    return st;
}

/* ---- command line ---- */

static void usage(FILE *f)
{
    fprintf(f, "usage: kiln mkmodel OUT_DIR [options]\n"
               "Writes a random-weight Llama checkpoint in the Hugging Face ModelOpt FP8 layout.\n"
               "  --preset tiny|small|llama-3.1-8b  sizes (default tiny); all use the Llama 3\n"
               "                        vocabulary (128256) and Llama 3.1 RoPE scaling\n"
               "  --dtype fp8|bf16      FP8 linears with scales (default) or a plain BF16 model\n"
               "  --seed N              weights are identical on every machine for a seed "
               "(default 0)\n"
               "  --fp8-kv-cache        also calibrate and write FP8 KV-cache scales\n"
               "  --shard-size BYTES    largest shard (default 5GB; suffixes KB MB GB KiB MiB "
               "GiB)\n"
               "  --tokenizer DIR       copy tokenizer.json (+ tokenizer_config.json, ...) from "
               "DIR\n"
               "  --force               replace OUT_DIR if it exists and is not empty\n");
}

static bool parse_size(const char *s, uint64_t *out)
{
    static const struct {
        const char *suffix;
        uint64_t mul;
    } units[] = {{"", 1},
                 {"B", 1},
                 {"KB", 1000},
                 {"MB", 1000000},
                 {"GB", 1000000000},
                 {"KiB", 1ull << 10},
                 {"MiB", 1ull << 20},
                 {"GiB", 1ull << 30}};
    char *end;
    errno = 0;
    if (!*s || *s == '-') return false;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s) return false;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(end, units[i].suffix)) continue;
        if (v == 0 || v > UINT64_MAX / units[i].mul) return false;
        *out = v * units[i].mul;
        return true;
    }
    return false;
}

enum { OPT_PRESET = 1, OPT_DTYPE, OPT_SEED, OPT_FP8KV, OPT_SHARD, OPT_TOK, OPT_FORCE, OPT_HELP };

static const struct option longopts[] = {{"preset", required_argument, 0, OPT_PRESET},
                                         {"dtype", required_argument, 0, OPT_DTYPE},
                                         {"seed", required_argument, 0, OPT_SEED},
                                         {"fp8-kv-cache", no_argument, 0, OPT_FP8KV},
                                         {"shard-size", required_argument, 0, OPT_SHARD},
                                         {"tokenizer", required_argument, 0, OPT_TOK},
                                         {"force", no_argument, 0, OPT_FORCE},
                                         {"help", no_argument, 0, OPT_HELP},
                                         {0, 0, 0, 0}};

static bool option(int id, const char *arg, void *ctx)
{
    struct mk_opts *o = ctx;
    unsigned long long seed;
    switch (id) {
    case OPT_PRESET:
        for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
            if (!strcmp(arg, presets[i].name)) {
                o->preset = &presets[i];
                return true;
            }
        return false;
    case OPT_DTYPE:
        o->fp8 = !strcmp(arg, "fp8");
        return !strcmp(arg, "fp8") || !strcmp(arg, "bf16");
    case OPT_SEED:
        if (!kiln_cli_u64(arg, &seed)) return false;
        o->seed = seed;
        return true;
    case OPT_FP8KV:
        o->fp8_kv = true;
        return true;
    case OPT_SHARD:
        return parse_size(arg, &o->shard_size);
    case OPT_TOK:
        o->tokenizer = arg;
        return true;
    case OPT_FORCE:
        o->force = true;
        return true;
    }
    return false;
}

int kiln_cmd_mkmodel(int argc, char **argv)
{
    static const struct kiln_cli_command cmd = {"mkmodel", "h", longopts, usage, option};
    struct mk_opts o = {.preset = &presets[0], .fp8 = true, .shard_size = DEFAULT_SHARD};
    const char *dir;
    int rc = kiln_cli_parse(&cmd, argc, argv, &o, NULL, &dir);
    if (rc != KILN_CLI_GO_ON) return rc;
    if (o.fp8_kv && !o.fp8) {
        fprintf(stderr, "kiln mkmodel: --fp8-kv-cache needs --dtype fp8\n");
        return 2;
    }
    /* "out/" and "out" name the same folder; the temporary folder goes next to it */
    char out[4096];
    snprintf(out, sizeof out, "%s", dir);
    for (size_t n = strlen(out); n > 1 && out[n - 1] == '/'; n--) out[n - 1] = 0;
    if (!*out) {
        usage(stderr);
        return 2;
    }
    o.out = out;
    kiln_numeric_init();
    struct kiln_error err = {0};
    if (mkmodel(&o, &err) != KILN_OK) {
        fprintf(stderr, "kiln mkmodel: %s\n", err.msg);
        return 1;
    }
    return 0;
}
