/* config.json, hf_quant_config.json / quantization_config, generation_config.json.
 *
 * Fields follow transformers' LlamaConfig and its defaults; newer transformers (v5) moves
 * rope_theta and rope_scaling into "rope_parameters", which is read too. Anything that would
 * change the math in a way kiln does not implement (other RoPE types, biases, sliding windows,
 * other quantization schemes) is refused with KILN_ERR_UNSUPPORTED rather than ignored. */
#include "core/json.h"
#include "config.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"

#define CONFIG_MAX_BYTES (16u * 1024u * 1024u)

/* Sanity caps: far above any released Llama-family model, low enough that products such as
 * vocab x hidden or layers x heads x head_dim cannot overflow 64-bit sizes downstream. */
#define MAX_VOCAB   (1 << 24)
#define MAX_HIDDEN  (1 << 17)
#define MAX_FFN     (1 << 20)
#define MAX_LAYERS  1024
#define MAX_HEADS   1024
#define MAX_HEADDIM 1024
#define MAX_POS     (1 << 28)

static bool absent(const json_t *v)
{
    return !v || json_is_null(v);
}

/* obj[key] as an int in [lo, hi]; def when absent, an error when absent and required. */
static enum kiln_status get_int(const char *file, json_t *obj, const char *key, int lo, int hi,
                                bool required, int def, int *out, struct kiln_error *err)
{
    json_t *v = json_object_get(obj, key);
    if (absent(v)) {
        if (required) return kiln_errorf(err, KILN_ERR_INVALID, "%s: \"%s\" is missing", file, key);
        *out = def;
        return KILN_OK;
    }
    if (!json_is_integer(v))
        return kiln_errorf(err, KILN_ERR_INVALID, "%s: \"%s\" must be an integer, not %s", file,
                           key, kiln_json_type_name(v));
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return kiln_errorf(err, KILN_ERR_INVALID, "%s: \"%s\" = %lld is out of range [%d, %d]",
                           file, key, (long long)x, lo, hi);
    *out = (int)x;
    return KILN_OK;
}

/* obj[key] as a finite number in (lo, hi] ([lo, hi] when lo_inclusive); def when absent, an
 * error when absent and required. */
static enum kiln_status get_num(const char *file, json_t *obj, const char *key, double lo,
                                bool lo_inclusive, double hi, bool required, double def, float *out,
                                struct kiln_error *err)
{
    json_t *v = json_object_get(obj, key);
    if (absent(v)) {
        if (required) return kiln_errorf(err, KILN_ERR_INVALID, "%s: \"%s\" is missing", file, key);
        *out = (float)def;
        return KILN_OK;
    }
    if (!json_is_number(v))
        return kiln_errorf(err, KILN_ERR_INVALID, "%s: \"%s\" must be a number, not %s", file, key,
                           kiln_json_type_name(v));
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || (x == lo && !lo_inclusive) || x > hi)
        return kiln_errorf(err, KILN_ERR_INVALID, "%s: \"%s\" = %g is out of range %s%g, %g]", file,
                           key, x, lo_inclusive ? "[" : "(", lo, hi);
    *out = (float)x;
    return KILN_OK;
}

static enum kiln_status get_bool(const char *file, json_t *obj, const char *key, bool def,
                                 bool *out, struct kiln_error *err)
{
    json_t *v = json_object_get(obj, key);
    if (absent(v)) {
        *out = def;
        return KILN_OK;
    }
    if (!json_is_boolean(v))
        return kiln_errorf(err, KILN_ERR_INVALID, "%s: \"%s\" must be true or false, not %s", file,
                           key, kiln_json_type_name(v));
    *out = json_is_true(v);
    return KILN_OK;
}

static bool has_eos(const struct kiln_config *cfg, int id)
{
    for (int i = 0; i < cfg->n_eos; i++)
        if (cfg->eos_token_ids[i] == id) return true;
    return false;
}

/* eos_token_id: an int, a list of ints, or null; ids are added to cfg's list (deduplicated). */
static enum kiln_status add_eos(const char *file, json_t *v, struct kiln_config *cfg,
                                struct kiln_error *err)
{
    if (absent(v)) return KILN_OK;
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > INT_MAX)
            return kiln_errorf(err, KILN_ERR_INVALID,
                               "%s: \"eos_token_id\" must be a token id or a list of them", file);
        int id = (int)json_integer_value(e);
        if (has_eos(cfg, id)) continue;
        if (cfg->n_eos == KILN_MAX_EOS)
            return kiln_errorf(err, KILN_ERR_LIMIT, "%s: more than %d eos_token_id values", file,
                               KILN_MAX_EOS);
        cfg->eos_token_ids[cfg->n_eos++] = id;
    }
    return KILN_OK;
}

static json_t *load_json(const char *file, const char *text, struct kiln_error *err)
{
    json_error_t jerr;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        kiln_errorf(err, KILN_ERR_FORMAT, "%s:%d:%d: %s", file, jerr.line, jerr.column, jerr.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        kiln_errorf(err, KILN_ERR_FORMAT, "%s: not a JSON object", file);
        return NULL;
    }
    return root;
}

static enum kiln_status parse_dtype(json_t *root, struct kiln_config *cfg, struct kiln_error *err)
{
    json_t *v = json_object_get(root, "torch_dtype");
    if (absent(v)) v = json_object_get(root, "dtype");
    if (absent(v)) {
        cfg->torch_dtype = KILN_DTYPE_F32; /* transformers' default */
        return KILN_OK;
    }
    const char *s = json_is_string(v) ? json_string_value(v) : "";
    if (!strcmp(s, "bfloat16"))
        cfg->torch_dtype = KILN_DTYPE_BF16;
    else if (!strcmp(s, "float16"))
        cfg->torch_dtype = KILN_DTYPE_F16;
    else if (!strcmp(s, "float32"))
        cfg->torch_dtype = KILN_DTYPE_F32;
    else
        return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                           "config.json: torch_dtype '%.50s' is not supported (bfloat16, "
                           "float16 or float32)",
                           s);
    return KILN_OK;
}

/* rope_scaling (or v5's rope_parameters, which also carries rope_theta). */
static enum kiln_status parse_rope(json_t *root, struct kiln_config *cfg, struct kiln_error *err)
{
    const char *f = "config.json";
    json_t *params = json_object_get(root, "rope_parameters");
    json_t *scaling = json_object_get(root, "rope_scaling");
    if (!absent(params) && !json_is_object(params))
        return kiln_errorf(err, KILN_ERR_INVALID, "%s: \"rope_parameters\" must be an object", f);
    if (!absent(params) && absent(scaling)) scaling = params;
    json_t *theta_src = root;
    if (!absent(params) && !absent(json_object_get(params, "rope_theta"))) theta_src = params;
    enum kiln_status st =
        get_num(f, theta_src, "rope_theta", 0, false, 1e12, false, 10000.0, &cfg->rope_theta, err);
    if (st) return st;
    cfg->rope_type = KILN_ROPE_DEFAULT;
    cfg->rope_factor = 1.0f;
    if (absent(scaling)) return KILN_OK;
    if (!json_is_object(scaling))
        return kiln_errorf(err, KILN_ERR_INVALID, "%s: \"rope_scaling\" must be an object or null",
                           f);
    json_t *type = json_object_get(scaling, "rope_type");
    if (absent(type)) type = json_object_get(scaling, "type");
    const char *t = json_is_string(type) ? json_string_value(type) : NULL;
    if (!t)
        return kiln_errorf(err, KILN_ERR_INVALID, "%s: rope scaling without a \"rope_type\"", f);
    if (!strcmp(t, "default")) return KILN_OK;
    if (!strcmp(t, "linear")) {
        cfg->rope_type = KILN_ROPE_LINEAR;
        return get_num(f, scaling, "factor", 0, false, 1e6, true, 0, &cfg->rope_factor, err);
    }
    if (!strcmp(t, "llama3")) {
        cfg->rope_type = KILN_ROPE_LLAMA3;
        st = get_num(f, scaling, "factor", 0, false, 1e6, true, 0, &cfg->rope_factor, err);
        if (!st)
            st = get_num(f, scaling, "low_freq_factor", 0, false, 1e6, true, 0,
                         &cfg->rope_low_freq_factor, err);
        if (!st)
            st = get_num(f, scaling, "high_freq_factor", 0, false, 1e6, true, 0,
                         &cfg->rope_high_freq_factor, err);
        if (!st)
            st = get_int(f, scaling, "original_max_position_embeddings", 1, MAX_POS, true, 0,
                         &cfg->rope_original_max_pos, err);
        if (!st && !(cfg->rope_high_freq_factor > cfg->rope_low_freq_factor))
            st = kiln_errorf(err, KILN_ERR_INVALID,
                             "%s: llama3 rope scaling needs high_freq_factor > low_freq_factor "
                             "(got %g and %g)",
                             f, cfg->rope_high_freq_factor, cfg->rope_low_freq_factor);
        return st;
    }
    return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                       "%s: rope scaling type '%.50s' is not supported (kiln implements default, "
                       "linear and llama3)",
                       f, t);
}

/* Refuses configs whose math kiln does not implement instead of silently computing something
 * else. */
static enum kiln_status check_architecture(json_t *root, struct kiln_config *cfg,
                                           struct kiln_error *err)
{
    const char *f = "config.json";
    json_t *archs = json_object_get(root, "architectures");
    json_t *mtype = json_object_get(root, "model_type");
    const char *arch = NULL;
    if (json_is_array(archs) && json_array_size(archs) > 0)
        arch = json_string_value(json_array_get(archs, 0));
    else if (!absent(archs))
        return kiln_errorf(err, KILN_ERR_INVALID, "%s: \"architectures\" must be a list of names",
                           f);
    const char *mt = json_is_string(mtype) ? json_string_value(mtype) : NULL;
    if (arch) {
        if (strcmp(arch, "LlamaForCausalLM") && strcmp(arch, "MistralForCausalLM"))
            return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                               "%s: architecture '%.60s' is not supported (LlamaForCausalLM or "
                               "MistralForCausalLM)",
                               f, arch);
    } else if (!mt || (strcmp(mt, "llama") && strcmp(mt, "mistral"))) {
        return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                           "%s: no \"architectures\" and model_type '%.60s' is not llama or "
                           "mistral",
                           f, mt ? mt : "(none)");
    }
    snprintf(cfg->architecture, sizeof cfg->architecture, "%s",
             arch                   ? arch
             : !strcmp(mt, "llama") ? "LlamaForCausalLM"
                                    : "MistralForCausalLM");
    static const char *const no_bias[] = {"attention_bias", "mlp_bias"};
    for (int i = 0; i < 2; i++) {
        bool b = false;
        enum kiln_status st = get_bool(f, root, no_bias[i], false, &b, err);
        if (st) return st;
        if (b)
            return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                               "%s: \"%s\": true is not supported (Llama without biases only)", f,
                               no_bias[i]);
    }
    json_t *act = json_object_get(root, "hidden_act");
    if (!absent(act) && (!json_is_string(act) || strcmp(json_string_value(act), "silu")))
        return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                           "%s: hidden_act must be \"silu\" (SwiGLU MLP)", f);
    json_t *window = json_object_get(root, "sliding_window");
    if (!absent(window))
        return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                           "%s: sliding-window attention (\"sliding_window\": %s) is not "
                           "supported",
                           f, json_is_integer(window) ? "a size" : kiln_json_type_name(window));
    return KILN_OK;
}

static enum kiln_status parse_sizes(json_t *root, struct kiln_config *cfg, struct kiln_error *err)
{
    const char *f = "config.json";
    enum kiln_status st;
    if ((st = get_int(f, root, "vocab_size", 1, MAX_VOCAB, true, 0, &cfg->vocab_size, err)) ||
        (st = get_int(f, root, "hidden_size", 1, MAX_HIDDEN, true, 0, &cfg->hidden_size, err)) ||
        (st = get_int(f, root, "intermediate_size", 1, MAX_FFN, true, 0, &cfg->intermediate_size,
                      err)) ||
        (st = get_int(f, root, "num_hidden_layers", 1, MAX_LAYERS, true, 0, &cfg->n_layers, err)) ||
        (st = get_int(f, root, "num_attention_heads", 1, MAX_HEADS, true, 0, &cfg->n_heads, err)) ||
        (st = get_int(f, root, "num_key_value_heads", 1, MAX_HEADS, false, cfg->n_heads,
                      &cfg->n_kv_heads, err)))
        return st;
    if (cfg->n_heads % cfg->n_kv_heads)
        return kiln_errorf(err, KILN_ERR_INVALID,
                           "%s: num_attention_heads (%d) is not a multiple of "
                           "num_key_value_heads (%d)",
                           f, cfg->n_heads, cfg->n_kv_heads);
    json_t *hd = json_object_get(root, "head_dim");
    if (absent(hd) && cfg->hidden_size % cfg->n_heads)
        return kiln_errorf(err, KILN_ERR_INVALID,
                           "%s: hidden_size (%d) is not a multiple of num_attention_heads (%d) "
                           "and head_dim is not given",
                           f, cfg->hidden_size, cfg->n_heads);
    if ((st = get_int(f, root, "head_dim", 1, MAX_HEADDIM, false, cfg->hidden_size / cfg->n_heads,
                      &cfg->head_dim, err)))
        return st;
    if (cfg->head_dim % 2)
        return kiln_errorf(err, KILN_ERR_INVALID, "%s: head_dim (%d) must be even for RoPE", f,
                           cfg->head_dim);
    if ((st = get_int(f, root, "max_position_embeddings", 1, MAX_POS, false, 2048,
                      &cfg->max_position_embeddings, err)) ||
        (st =
             get_num(f, root, "rms_norm_eps", 0, false, 1, false, 1e-6, &cfg->rms_norm_eps, err)) ||
        (st = get_bool(f, root, "tie_word_embeddings", false, &cfg->tie_word_embeddings, err)) ||
        (st = get_int(f, root, "bos_token_id", 0, INT_MAX, false, -1, &cfg->bos_token_id, err)))
        return st;
    return KILN_OK;
}

static enum kiln_status add_excludes(const char *file, json_t *list, struct kiln_config *cfg,
                                     struct kiln_error *err)
{
    if (absent(list)) return KILN_OK;
    if (!json_is_array(list))
        return kiln_errorf(err, KILN_ERR_INVALID, "%s: exclude_modules must be a list of names",
                           file);
    size_t n = json_array_size(list);
    if (n > 1000000) return kiln_errorf(err, KILN_ERR_LIMIT, "%s: %zu exclude_modules", file, n);
    char **v = realloc(cfg->exclude_modules, ((size_t)cfg->n_exclude + n + 1) * sizeof *v);
    if (!v) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    cfg->exclude_modules = v;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(list, i);
        if (!json_is_string(e))
            return kiln_errorf(err, KILN_ERR_INVALID, "%s: exclude_modules[%zu] is not a string",
                               file, i);
        char *s = strdup(json_string_value(e));
        if (!s) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
        cfg->exclude_modules[cfg->n_exclude++] = s;
    }
    return KILN_OK;
}

/* The keys shared by hf_quant_config.json's "quantization" and config.json's
 * "quantization_config" with quant_method "modelopt". */
static enum kiln_status parse_quant_keys(const char *file, json_t *q, struct kiln_config *cfg,
                                         struct kiln_error *err)
{
    json_t *algo = json_object_get(q, "quant_algo");
    if (!absent(algo)) {
        const char *a = json_is_string(algo) ? json_string_value(algo) : "";
        if (strcmp(a, "FP8"))
            return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                               "%s: quant_algo '%.60s' is not supported (kiln reads FP8 "
                               "per-tensor ModelOpt checkpoints)",
                               file, a);
        cfg->fp8 = true;
    }
    json_t *kv = json_object_get(q, "kv_cache_quant_algo");
    if (!absent(kv)) {
        const char *a = json_is_string(kv) ? json_string_value(kv) : "";
        if (strcmp(a, "FP8"))
            return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                               "%s: kv_cache_quant_algo '%.60s' is not supported (null or FP8)",
                               file, a);
        cfg->fp8_kv_cache = true;
    }
    enum kiln_status st = add_excludes(file, json_object_get(q, "exclude_modules"), cfg, err);
    if (!st) st = add_excludes(file, json_object_get(q, "ignore"), cfg, err);
    return st;
}

static enum kiln_status parse_quant(json_t *config, const char *quant_json, struct kiln_config *cfg,
                                    struct kiln_error *err)
{
    if (quant_json) {
        const char *f = "hf_quant_config.json";
        json_t *root = load_json(f, quant_json, err);
        if (!root) return err ? err->code : KILN_ERR_FORMAT;
        json_t *q = json_object_get(root, "quantization");
        enum kiln_status st = json_is_object(q) ? parse_quant_keys(f, q, cfg, err)
                                                : kiln_errorf(err, KILN_ERR_INVALID,
                                                              "%s: no \"quantization\" object", f);
        json_decref(root);
        return st;
    }
    json_t *qc = json_object_get(config, "quantization_config");
    if (absent(qc)) return KILN_OK;
    const char *f = "config.json quantization_config";
    if (!json_is_object(qc)) return kiln_errorf(err, KILN_ERR_INVALID, "%s: not an object", f);
    json_t *method = json_object_get(qc, "quant_method");
    const char *m = json_is_string(method) ? json_string_value(method) : "(none)";
    if (strcmp(m, "modelopt"))
        return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                           "%s: quant_method '%.60s' is not supported (kiln reads ModelOpt FP8: "
                           "quant_method \"modelopt\")",
                           f, m);
    return parse_quant_keys(f, qc, cfg, err);
}

static enum kiln_status parse_generation(const char *gen_json, struct kiln_config *cfg,
                                         struct kiln_error *err)
{
    if (!gen_json) return KILN_OK;
    const char *f = "generation_config.json";
    json_t *root = load_json(f, gen_json, err);
    if (!root) return err ? err->code : KILN_ERR_FORMAT;
    bool sample = true;
    enum kiln_status st = add_eos(f, json_object_get(root, "eos_token_id"), cfg, err);
    if (!st)
        st = get_num(f, root, "temperature", 0, true, 1e6, false, NAN, &cfg->gen_temperature, err);
    if (!st) st = get_num(f, root, "top_p", 0, false, 1, false, NAN, &cfg->gen_top_p, err);
    if (!st) st = get_int(f, root, "top_k", 0, INT_MAX, false, -1, &cfg->gen_top_k, err);
    if (!st) st = get_bool(f, root, "do_sample", true, &sample, err);
    /* transformers ignores temperature when do_sample is false: greedy */
    if (!st && !sample) cfg->gen_temperature = 0.0f;
    json_decref(root);
    return st;
}

enum kiln_status kiln_config_parse(const char *config_json, const char *quant_json,
                                   const char *gen_json, struct kiln_config *cfg,
                                   struct kiln_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->bos_token_id = -1;
    cfg->gen_temperature = NAN;
    cfg->gen_top_p = NAN;
    cfg->gen_top_k = -1;
    json_t *root = load_json("config.json", config_json, err);
    if (!root) return err ? err->code : KILN_ERR_FORMAT;
    enum kiln_status st = check_architecture(root, cfg, err);
    if (!st) st = parse_sizes(root, cfg, err);
    if (!st) st = parse_rope(root, cfg, err);
    if (!st) st = parse_dtype(root, cfg, err);
    if (!st) st = add_eos("config.json", json_object_get(root, "eos_token_id"), cfg, err);
    if (!st) st = parse_quant(root, quant_json, cfg, err);
    if (!st) st = parse_generation(gen_json, cfg, err);
    /* original_max_position_embeddings above max_position_embeddings is allowed, as in
     * transformers and vLLM: fine-tunes that shorten the context ship such configs, and the
     * llama3 rope only uses it for its wavelength thresholds. */
    json_decref(root);
    if (st) kiln_config_free(cfg);
    return st;
}

/* Reads DIR/name into *text; a missing optional file leaves *text NULL. */
static enum kiln_status read_json_file(const char *dir, const char *name, bool required,
                                       char **text, struct kiln_error *err)
{
    char path[4096];
    *text = NULL;
    enum kiln_status st = kiln_path_join(path, sizeof path, dir, name, err);
    if (st) return st;
    if (!required && !kiln_file_exists(path)) return KILN_OK;
    return kiln_file_read(path, CONFIG_MAX_BYTES, text, NULL, err);
}

enum kiln_status kiln_config_load(const char *dir, struct kiln_config *cfg, struct kiln_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    char *config = NULL, *quant = NULL, *gen = NULL;
    enum kiln_status st = read_json_file(dir, "config.json", true, &config, err);
    if (!st) st = read_json_file(dir, "hf_quant_config.json", false, &quant, err);
    if (!st) st = read_json_file(dir, "generation_config.json", false, &gen, err);
    if (!st) {
        st = kiln_config_parse(config, quant, gen, cfg, err);
        if (st) kiln_error_prefix(err, "%s", dir);
    }
    free(config);
    free(quant);
    free(gen);
    return st;
}

void kiln_config_free(struct kiln_config *cfg)
{
    if (!cfg) return;
    for (int i = 0; i < cfg->n_exclude; i++) free(cfg->exclude_modules[i]);
    free(cfg->exclude_modules);
    cfg->exclude_modules = NULL;
    cfg->n_exclude = 0;
}

/* Glob with '*' matching any run of characters (dots included), as ModelOpt and vLLM match
 * exclude_modules with fnmatch. Iterative with one backtrack point: linear in practice. */
static bool glob_match(const char *p, const char *s, size_t n)
{
    const char *star = NULL;
    size_t i = 0, back = 0;
    while (i < n) {
        if (*p == '*') {
            star = p++;
            back = i;
        } else if (*p && *p == s[i]) {
            p++;
            i++;
        } else if (star) {
            p = star + 1;
            i = ++back;
        } else {
            return false;
        }
    }
    while (*p == '*') p++;
    return !*p;
}

bool kiln_config_excluded(const struct kiln_config *cfg, const char *module)
{
    size_t len = strlen(module);
    for (int i = 0; i < cfg->n_exclude; i++) {
        const char *pat = cfg->exclude_modules[i];
        /* the module itself or one of its parents ("model.layers.0.mlp" excludes its projs) */
        for (size_t n = 0; n <= len; n++)
            if ((n == len || module[n] == '.') && glob_match(pat, module, n)) return true;
    }
    return false;
}

bool kiln_config_is_eos(const struct kiln_config *cfg, int token)
{
    return has_eos(cfg, token);
}
