/* The model's configuration: config.json (LlamaForCausalLM and compatible), ModelOpt's
 * hf_quant_config.json (or "quantization_config" with quant_method "modelopt" inside
 * config.json) and generation_config.json. */
#ifndef KILN_MODEL_CONFIG_H
#define KILN_MODEL_CONFIG_H

#include <stdbool.h>

#include "core/error.h"
#include "core/numeric.h"

#define KILN_MAX_EOS 16

enum kiln_rope_type { KILN_ROPE_DEFAULT, KILN_ROPE_LINEAR, KILN_ROPE_LLAMA3 };

struct kiln_config {
    char architecture[64]; /* "LlamaForCausalLM" */
    int vocab_size;
    int hidden_size;       /* d */
    int intermediate_size; /* f */
    int n_layers;
    int n_heads;    /* query heads */
    int n_kv_heads; /* GQA: n_heads % n_kv_heads == 0 */
    int head_dim;   /* default hidden_size / n_heads */
    int max_position_embeddings;
    float rms_norm_eps;
    float rope_theta;
    enum kiln_rope_type rope_type;
    float rope_factor;           /* linear and llama3 */
    float rope_low_freq_factor;  /* llama3 */
    float rope_high_freq_factor; /* llama3 */
    int rope_original_max_pos;   /* llama3: original_max_position_embeddings */
    bool tie_word_embeddings;
    enum kiln_dtype torch_dtype; /* dtype of the unquantized tensors */
    int bos_token_id;            /* -1 when absent */
    int eos_token_ids[KILN_MAX_EOS];
    int n_eos;

    /* Quantization (ModelOpt) */
    bool fp8;               /* quant_algo == "FP8": linears are F8_E4M3 with scales */
    bool fp8_kv_cache;      /* kv_cache_quant_algo == "FP8" */
    char **exclude_modules; /* [n_exclude], patterns such as "lm_head" or "*.mlp.gate" */
    int n_exclude;

    /* generation_config.json defaults (-1 / NAN when absent) */
    float gen_temperature;
    float gen_top_p;
    int gen_top_k;
};

/* Reads DIR/config.json (+ hf_quant_config.json, generation_config.json when present) and
 * validates the sizes. */
enum kiln_status kiln_config_load(const char *dir, struct kiln_config *cfg, struct kiln_error *err);
/* Same from strings (tests, fuzzing); quant_json and gen_json may be NULL. */
enum kiln_status kiln_config_parse(const char *config_json, const char *quant_json,
                                   const char *gen_json, struct kiln_config *cfg,
                                   struct kiln_error *err);
void kiln_config_free(struct kiln_config *cfg);
/* True when module (e.g. "lm_head", "model.layers.0.mlp.down_proj") matches an exclude pattern
 * (exact, or glob with '*'). */
bool kiln_config_excluded(const struct kiln_config *cfg, const char *module);
bool kiln_config_is_eos(const struct kiln_config *cfg, int token);

#endif
