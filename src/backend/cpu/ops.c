#include "ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/numeric.h"

void kiln_cpu_rmsnorm(float *y, const float *x, const struct kiln_tensor *w, float eps, int n,
                      int d)
{
    for (int t = 0; t < n; t++) {
        const float *xr = x + (size_t)t * d;
        float *yr = y + (size_t)t * d;
        float ss = 0.0f;
        for (int i = 0; i < d; i++) ss += xr[i] * xr[i];
        float r = 1.0f / sqrtf(ss / (float)d + eps);
        for (int i = 0; i < d; i++) yr[i] = xr[i] * r * kiln_load_f32(w->data, w->dtype, i);
    }
}

void kiln_cpu_quant_fp8(uint8_t *q, const float *x, size_t n, float scale)
{
    float inv = 1.0f / scale;
    for (size_t i = 0; i < n; i++) q[i] = kiln_quant_e4m3(x[i], inv);
}

/* Both linears run over output rows in parallel: each thread takes a range of weight rows
 * (decoded once, or read from the prepared f32 copy) and dots each with every token's input, so
 * the weights are read once per forward. */
struct linear_job {
    float *y;
    const float *xf; /* (n, in) f32 inputs (FP8 activations already decoded) */
    const struct kiln_linear *l;
    const float *wf; /* prepared (out, in) or NULL */
    int n;
    float out_scale;
};

static void decode_row(const struct kiln_linear *l, int64_t r, float *row, uint8_t *codes)
{
    if (l->fp8) {
        kiln_linear_fp8_rows(l, r, r + 1, codes);
        for (int64_t i = 0; i < l->in; i++) row[i] = kiln_e4m3_to_f32(codes[i]);
    } else {
        kiln_linear_f32_rows(l, r, r + 1, row);
    }
}

/* Dot product with 8 independent partial sums (a fixed order: the result does not depend on the
 * thread count), which the compiler keeps in vector registers. */
static float dot(const float *a, const float *b, int64_t n)
{
    float p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) p[k] += a[i + k] * b[i + k];
    for (; i < n; i++) p[i & 7] += a[i] * b[i];
    return ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
}

static void linear_range(void *ctx, size_t r0, size_t r1)
{
    const struct linear_job *j = ctx;
    const struct kiln_linear *l = j->l;
    int64_t in = l->in;
    float *buf = j->wf ? NULL : malloc((size_t)in * sizeof(float));
    uint8_t *codes = !j->wf && l->fp8 ? malloc((size_t)in) : NULL;
    KILN_ASSERT(j->wf || (buf && (codes || !l->fp8)));
    for (size_t r = r0; r < r1; r++) {
        const float *row = j->wf ? j->wf + r * (size_t)in : buf;
        if (!j->wf) decode_row(l, (int64_t)r, buf, codes);
        for (int t = 0; t < j->n; t++)
            j->y[(size_t)t * l->out + r] = dot(j->xf + (size_t)t * in, row, in) * j->out_scale;
    }
    free(codes);
    free(buf);
}

void kiln_cpu_linear_fp8(struct kiln_pool *pool, float *y, const uint8_t *x8,
                         const struct kiln_linear *l, const float *wf, int n)
{
    size_t count = (size_t)n * (size_t)l->in;
    float *xf = malloc(count * sizeof(float));
    KILN_ASSERT(xf);
    kiln_convert_to_f32(xf, x8, KILN_DTYPE_F8E4M3, count);
    struct linear_job j = {y, xf, l, wf, n, l->input_scale * l->weight_scale};
    kiln_parallel_for(pool, (size_t)l->out, linear_range, &j);
    free(xf);
}

void kiln_cpu_linear_f32(struct kiln_pool *pool, float *y, const float *x,
                         const struct kiln_linear *l, const float *wf, int n)
{
    struct linear_job j = {y, x, l, wf, n, l->fp8 ? l->weight_scale : 1.0f};
    kiln_parallel_for(pool, (size_t)l->out, linear_range, &j);
}

struct prepare_job {
    const struct kiln_linear *l;
    float *wf;
};

static void prepare_range(void *ctx, size_t r0, size_t r1)
{
    const struct prepare_job *j = ctx;
    uint8_t *codes = j->l->fp8 ? malloc((size_t)j->l->in) : NULL;
    KILN_ASSERT(codes || !j->l->fp8);
    for (size_t r = r0; r < r1; r++)
        decode_row(j->l, (int64_t)r, j->wf + r * (size_t)j->l->in, codes);
    free(codes);
}

float *kiln_cpu_linear_prepare(struct kiln_pool *pool, const struct kiln_linear *l)
{
    float *wf = malloc((size_t)l->out * (size_t)l->in * sizeof(float));
    if (!wf) return NULL;
    struct prepare_job j = {l, wf};
    kiln_parallel_for(pool, (size_t)l->out, prepare_range, &j);
    return wf;
}

void kiln_rope_table(const struct kiln_config *cfg, int max_pos, float *cos_sin)
{
    int half = cfg->head_dim / 2;
    for (int i = 0; i < half; i++) {
        /* transformers: inv_freq = 1 / base ** (arange(0, dim, 2).float() / dim), in f32 */
        float expo = (float)(2 * i) / (float)cfg->head_dim;
        float inv_freq = 1.0f / powf(cfg->rope_theta, expo);
        if (cfg->rope_type == KILN_ROPE_LINEAR) {
            inv_freq /= cfg->rope_factor;
        } else if (cfg->rope_type == KILN_ROPE_LLAMA3) {
            float factor = cfg->rope_factor, lo = cfg->rope_low_freq_factor;
            float hi = cfg->rope_high_freq_factor, old = (float)cfg->rope_original_max_pos;
            float low_wavelen = old / lo, high_wavelen = old / hi;
            float wavelen = 2.0f * (float)M_PI / inv_freq;
            if (wavelen > low_wavelen) {
                inv_freq = inv_freq / factor;
            } else if (wavelen >= high_wavelen) {
                float smooth = (old / wavelen - lo) / (hi - lo);
                inv_freq = (1.0f - smooth) * inv_freq / factor + smooth * inv_freq;
            }
        }
        for (int p = 0; p < max_pos; p++) {
            float angle = (float)p * inv_freq;
            cos_sin[((size_t)p * half + i) * 2] = cosf(angle);
            cos_sin[((size_t)p * half + i) * 2 + 1] = sinf(angle);
        }
    }
}

void kiln_cpu_rope(float *x, const int32_t *pos, int n, int heads, int head_dim,
                   const float *cos_sin)
{
    int half = head_dim / 2;
    for (int t = 0; t < n; t++) {
        const float *cs = cos_sin + (size_t)pos[t] * half * 2;
        for (int h = 0; h < heads; h++) {
            float *v = x + ((size_t)t * heads + h) * head_dim;
            for (int i = 0; i < half; i++) {
                float c = cs[2 * i], s = cs[2 * i + 1];
                float a = v[i], b = v[i + half];
                v[i] = a * c - b * s;
                v[i + half] = b * c + a * s;
            }
        }
    }
}

void kiln_cpu_round_bf16(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) x[i] = kiln_bf16_to_f32(kiln_f32_to_bf16(x[i]));
}

void kiln_cpu_swiglu(float *h, const float *gu, int n, int f)
{
    for (int t = 0; t < n; t++) {
        const float *g = gu + (size_t)t * 2 * f, *u = g + f;
        for (int i = 0; i < f; i++) h[(size_t)t * f + i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

/* Element offset of (position p, kv head g) in a sequence's paged layer cache. */
static size_t kv_offset(const struct kiln_cpu_kv_layer *c, const int32_t *table, int p, int g)
{
    int block = table[p / c->block_size], slot = p % c->block_size;
    return (((size_t)block * c->n_kv_heads + g) * c->block_size + slot) * c->head_dim;
}

static void kv_store(void *base, enum kiln_dtype dt, size_t off, const float *src, int n,
                     float scale)
{
    switch (dt) {
    case KILN_DTYPE_F8E4M3:
        kiln_cpu_quant_fp8((uint8_t *)base + off, src, (size_t)n, scale);
        break;
    case KILN_DTYPE_BF16:
        for (int i = 0; i < n; i++) ((uint16_t *)base)[off + i] = kiln_f32_to_bf16(src[i]);
        break;
    default:
        memcpy((float *)base + off, src, (size_t)n * sizeof(float));
    }
}

static void kv_load(float *dst, const void *base, enum kiln_dtype dt, size_t off, int n,
                    float scale)
{
    kiln_convert_to_f32(dst, (const char *)base + off * kiln_dtype_size(dt), dt, (size_t)n);
    if (dt == KILN_DTYPE_F8E4M3)
        for (int i = 0; i < n; i++) dst[i] *= scale;
}

void kiln_cpu_kv_write(const struct kiln_cpu_kv_layer *c, const struct kiln_batch *b,
                       const float *k, const float *v)
{
    size_t row = (size_t)c->n_kv_heads * c->head_dim;
    for (int s = 0; s < b->n_seqs; s++) {
        const int32_t *table = b->block_table + (size_t)s * b->max_blocks;
        for (int t = b->seq_start[s]; t < b->seq_start[s + 1]; t++) {
            for (int g = 0; g < c->n_kv_heads; g++) {
                size_t off = kv_offset(c, table, b->positions[t], g);
                const float *ks = k + t * row + (size_t)g * c->head_dim;
                const float *vs = v + t * row + (size_t)g * c->head_dim;
                kv_store(c->k, c->dtype, off, ks, c->head_dim, c->k_scale);
                kv_store(c->v, c->dtype, off, vs, c->head_dim, c->v_scale);
            }
        }
    }
}

struct attn_job {
    float *out;
    const float *q;
    const struct kiln_cpu_kv_layer *c;
    const struct kiln_batch *b;
    int n_heads;
    int *token_seq; /* (n_tokens,) sequence of each token */
};

/* One (token, head) pair per work item: scores over positions 0..pos, softmax, weighted V. */
static void attn_range(void *ctx, size_t i0, size_t i1)
{
    const struct attn_job *j = ctx;
    const struct kiln_cpu_kv_layer *c = j->c;
    int dh = c->head_dim, group = j->n_heads / c->n_kv_heads;
    int max_len = j->b->max_blocks * c->block_size;
    float *scores = malloc((size_t)max_len * sizeof(float));
    float *kv = malloc((size_t)dh * sizeof(float));
    KILN_ASSERT(scores && kv);
    float scale = 1.0f / sqrtf((float)dh);
    for (size_t item = i0; item < i1; item++) {
        int t = (int)(item / (size_t)j->n_heads), h = (int)(item % (size_t)j->n_heads);
        int g = h / group, s = j->token_seq[t], p = j->b->positions[t];
        const int32_t *table = j->b->block_table + (size_t)s * j->b->max_blocks;
        const float *q = j->q + ((size_t)t * j->n_heads + h) * dh;
        float mx = -INFINITY;
        for (int pos = 0; pos <= p; pos++) {
            kv_load(kv, c->k, c->dtype, kv_offset(c, table, pos, g), dh, c->k_scale);
            float dot = 0.0f;
            for (int i = 0; i < dh; i++) dot += q[i] * kv[i];
            scores[pos] = dot * scale;
            if (scores[pos] > mx) mx = scores[pos];
        }
        float sum = 0.0f;
        for (int pos = 0; pos <= p; pos++) {
            scores[pos] = expf(scores[pos] - mx);
            sum += scores[pos];
        }
        float *o = j->out + ((size_t)t * j->n_heads + h) * dh;
        memset(o, 0, (size_t)dh * sizeof(float));
        for (int pos = 0; pos <= p; pos++) {
            kv_load(kv, c->v, c->dtype, kv_offset(c, table, pos, g), dh, c->v_scale);
            float w = scores[pos] / sum;
            for (int i = 0; i < dh; i++) o[i] += w * kv[i];
        }
    }
    free(kv);
    free(scores);
}

void kiln_cpu_attention(struct kiln_pool *pool, float *out, const float *q,
                        const struct kiln_cpu_kv_layer *c, const struct kiln_batch *b, int n_heads)
{
    int *token_seq = malloc((size_t)b->n_tokens * sizeof(int));
    KILN_ASSERT(token_seq);
    for (int s = 0; s < b->n_seqs; s++)
        for (int t = b->seq_start[s]; t < b->seq_start[s + 1]; t++) token_seq[t] = s;
    struct attn_job j = {out, q, c, b, n_heads, token_seq};
    kiln_parallel_for(pool, (size_t)b->n_tokens * (size_t)n_heads, attn_range, &j);
    free(token_seq);
}
