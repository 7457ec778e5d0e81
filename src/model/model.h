/* A Llama-family model in memory: configuration plus views of every weight, validated
 * against the configuration (presence, dtype, shape) with errors that name the tensor.
 *
 * Linears are grouped the way the kernels run them: q|k|v as one [(H + 2 Hkv) Dh, d] linear and
 * gate|up as one [2 f, d] linear. The parts stay views into the checkpoint; a backend asks for
 * the fused FP8 rows with kiln_linear_fp8_rows, which requantizes a part to the group's largest
 * weight scale when the scales differ (as vLLM does).
 *
 * FP8 math of one linear (ModelOpt static per-tensor scales):
 *   y = (sat_e4m3(x / input_scale) @ W8^T) * (input_scale * weight_scale) */
#ifndef KILN_MODEL_MODEL_H
#define KILN_MODEL_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "core/error.h"
#include "core/numeric.h"
#include "safetensors.h"

#define KILN_MAX_PARTS 3

struct kiln_tensor {
    enum kiln_dtype dtype;
    int ndim;
    int64_t shape[4];
    const void *data; /* into a mapping or into the model's owned buffers */
};

struct kiln_linear {
    int64_t out, in;                         /* W (out, in) @ x (in,) -> y (out,) */
    int n_parts;                             /* 1; 3 for q|k|v; 2 for gate|up (stacked along out) */
    struct kiln_tensor part[KILN_MAX_PARTS]; /* (out_i, in), checkpoint dtype */
    float part_weight_scale[KILN_MAX_PARTS]; /* FP8 only */
    float part_input_scale[KILN_MAX_PARTS];  /* FP8 only */
    bool fp8;                                /* weights F8_E4M3 with static activation scale */
    float weight_scale;                      /* fused: max over parts */
    float input_scale;                       /* fused: max over parts */
    /* How part[0]'s rows are stored: 0 in the natural order; in an engine, the order the CUDA
     * kernels read (enum kiln_row_order of backend/cuda/kernels.h; one part only). The
     * accessors below always speak natural row numbers. */
    int row_order;
    int row_head_dim; /* head_dim, for the q|k|v order */
};

struct kiln_layer_weights {
    struct kiln_tensor attn_norm; /* (d,) */
    struct kiln_linear qkv;       /* ((H + 2 Hkv) Dh, d) */
    struct kiln_linear o;         /* (d, H Dh) */
    struct kiln_tensor mlp_norm;  /* (d,) */
    struct kiln_linear gate_up;   /* (2 f, d): rows [0, f) gate, [f, 2f) up */
    struct kiln_linear down;      /* (d, f) */
    float k_scale, v_scale;       /* FP8 KV cache: stored = sat_e4m3(k / k_scale); 1 if absent */
};

/* Where a model was loaded from. Kiln checkpoints (kiln convert) and engines (kiln build) store
 * q|k|v and gate|up fused under kiln's names (format.h), so their groups load as one part. */
enum kiln_model_format { KILN_FORMAT_HF, KILN_FORMAT_CHECKPOINT, KILN_FORMAT_ENGINE };

struct kiln_engine_meta;

struct kiln_model {
    struct kiln_config cfg;
    enum kiln_model_format format;
    struct kiln_engine_meta *engine;   /* engines: build settings, GPU, GEMM table (format.h) */
    struct kiln_tensor embed;          /* (vocab, d) */
    struct kiln_tensor norm;           /* (d,) */
    struct kiln_linear lm_head;        /* (vocab, d); the embedding when tied */
    struct kiln_layer_weights *layers; /* [n_layers] */
    struct kiln_st_set st;             /* owns the mappings */
    char dir[1024];
    /* Heap buffers freed with the model: copies of tensors whose bytes in the file are not
     * aligned to their element size, and the weights of a model built in memory (mkmodel). */
    void **owned; /* [n_owned] */
    int n_owned, cap_owned;
};

/* Loads config + safetensors from an HF folder, a kiln checkpoint or an engine folder (whose
 * format version, file sizes and checksums are checked first) and validates everything. */
enum kiln_status kiln_model_load(const char *dir, struct kiln_model **out, struct kiln_error *err);
/* Frees a loaded model, or one built by hand: m, m->layers and every m->owned[i] from
 * malloc/calloc, m->cfg from kiln_config_parse (or zeroed), m->st zeroed (n_files = 0). */
void kiln_model_free(struct kiln_model *m);
/* Hands buf (from malloc) to the model, which frees it in kiln_model_free; on failure buf is
 * freed at once and KILN_ERR_NOMEM returned. */
enum kiln_status kiln_model_own(struct kiln_model *m, void *buf, struct kiln_error *err);

/* Rows [r0, r1) of the fused FP8 weight: dst (r1 - r0, in) bytes, each part's bytes requantized
 * to l->weight_scale when its own scale differs. Requires l->fp8. */
void kiln_linear_fp8_rows(const struct kiln_linear *l, int64_t r0, int64_t r1, uint8_t *dst);
/* Rows [r0, r1) as f32 in the linear's own units: for FP8 the codes of kiln_linear_fp8_rows
 * (requantized to the group's weight_scale) decoded but NOT multiplied by weight_scale (the
 * backends apply input_scale * weight_scale after the dot product); other dtypes converted.
 * dst (r1 - r0, in). */
void kiln_linear_f32_rows(const struct kiln_linear *l, int64_t r0, int64_t r1, float *dst);

/* The dtype kiln_linear_rows writes: F8_E4M3 for FP8, else the parts' own; -1 when the parts
 * of an unquantized group differ in dtype. */
int kiln_linear_dtype(const struct kiln_linear *l);
/* Rows [r0, r1) in that dtype: the codes of kiln_linear_fp8_rows, or the parts' bytes.
 * dst (r1 - r0, in). Requires kiln_linear_dtype(l) >= 0. */
void kiln_linear_rows(const struct kiln_linear *l, int64_t r0, int64_t r1, void *dst);
/* The weight bytes as they lie, when they already hold every row in row order `order` with
 * nothing to requantize or convert (one part, FP8 or BF16): a backend may copy them whole.
 * NULL otherwise. */
const void *kiln_linear_stored(const struct kiln_linear *l, int order);
/* Where natural row r of l lies in storage (the inverse of kiln_cuda_natural_row). */
int64_t kiln_linear_stored_row(const struct kiln_linear *l, int64_t r);

/* Total bytes of weights a forward pass reads (for GB/s figures). */
uint64_t kiln_model_weight_bytes(const struct kiln_model *m);

#endif
