/* config.json / hf_quant_config.json / generation_config.json: the real Llama 3.1 files,
 * defaults, RoPE variants, both places of the quantization config, exclude patterns and the
 * validation errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/config.h"
#include "model/helpers.h"

/* config.json of meta-llama/Llama-3.1-8B-Instruct as transformers writes it */
static const char *const llama31 =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": false,"
    " \"attention_dropout\": 0.0, \"bos_token_id\": 128000,"
    " \"eos_token_id\": [128001, 128008, 128009], \"head_dim\": 128, \"hidden_act\": \"silu\","
    " \"hidden_size\": 4096, \"initializer_range\": 0.02, \"intermediate_size\": 14336,"
    " \"max_position_embeddings\": 131072, \"mlp_bias\": false, \"model_type\": \"llama\","
    " \"num_attention_heads\": 32, \"num_hidden_layers\": 32, \"num_key_value_heads\": 8,"
    " \"pretraining_tp\": 1, \"rms_norm_eps\": 1e-05, \"rope_scaling\": {\"factor\": 8.0,"
    " \"high_freq_factor\": 4.0, \"low_freq_factor\": 1.0,"
    " \"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"},"
    " \"rope_theta\": 500000.0, \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\","
    " \"transformers_version\": \"4.43.0\", \"use_cache\": true, \"vocab_size\": 128256}";

static const char *const quant =
    "{\"producer\": {\"name\": \"modelopt\", \"version\": \"0.15.0\"},"
    " \"quantization\": {\"quant_algo\": \"FP8\", \"kv_cache_quant_algo\": \"FP8\","
    " \"exclude_modules\": [\"lm_head\"]}}";

static const char *const gen =
    "{\"bos_token_id\": 128000, \"do_sample\": true, \"eos_token_id\": [128001, 128008, 128009],"
    " \"temperature\": 0.6, \"top_p\": 0.9, \"transformers_version\": \"4.43.0\"}";

/* A minimal Llama config with extra members spliced in before the closing brace. */
static char *mini(const char *extra)
{
    static char buf[4096];
    snprintf(buf, sizeof buf,
             "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":100,\"hidden_size\":64,"
             "\"intermediate_size\":96,\"num_hidden_layers\":2,\"num_attention_heads\":4%s%s}",
             extra && *extra ? "," : "", extra ? extra : "");
    return buf;
}

static void expect_error(const char *config, const char *q, const char *g, enum kiln_status code,
                         const char *w1, const char *w2)
{
    struct kiln_config cfg;
    struct kiln_error err = {0};
    enum kiln_status st = kiln_config_parse(config, q, g, &cfg, &err);
    if (st == KILN_OK) kiln_config_free(&cfg);
    if (st != code || (w1 && !strstr(err.msg, w1)) || (w2 && !strstr(err.msg, w2)))
        fail_msg("got %s '%s', want %s with '%s' '%s'", kiln_status_name(st), err.msg,
                 kiln_status_name(code), w1 ? w1 : "", w2 ? w2 : "");
}

static void llama31_fp8(void **state)
{
    (void)state;
    struct kiln_config c;
    struct kiln_error err = {0};
    assert_int_equal(kiln_config_parse(llama31, quant, gen, &c, &err), KILN_OK);
    assert_string_equal(c.architecture, "LlamaForCausalLM");
    assert_int_equal(c.vocab_size, 128256);
    assert_int_equal(c.hidden_size, 4096);
    assert_int_equal(c.intermediate_size, 14336);
    assert_int_equal(c.n_layers, 32);
    assert_int_equal(c.n_heads, 32);
    assert_int_equal(c.n_kv_heads, 8);
    assert_int_equal(c.head_dim, 128);
    assert_int_equal(c.max_position_embeddings, 131072);
    assert_true(c.rms_norm_eps == 1e-5f);
    assert_true(c.rope_theta == 500000.0f);
    assert_int_equal(c.rope_type, KILN_ROPE_LLAMA3);
    assert_true(c.rope_factor == 8.0f);
    assert_true(c.rope_low_freq_factor == 1.0f);
    assert_true(c.rope_high_freq_factor == 4.0f);
    assert_int_equal(c.rope_original_max_pos, 8192);
    assert_false(c.tie_word_embeddings);
    assert_int_equal(c.torch_dtype, KILN_DTYPE_BF16);
    assert_int_equal(c.bos_token_id, 128000);
    assert_int_equal(c.n_eos, 3);
    assert_true(kiln_config_is_eos(&c, 128009));
    assert_false(kiln_config_is_eos(&c, 128000));
    assert_true(c.fp8);
    assert_true(c.fp8_kv_cache);
    assert_int_equal(c.n_exclude, 1);
    assert_true(kiln_config_excluded(&c, "lm_head"));
    assert_false(kiln_config_excluded(&c, "model.layers.0.self_attn.q_proj"));
    assert_true(fabsf(c.gen_temperature - 0.6f) < 1e-7f);
    assert_true(fabsf(c.gen_top_p - 0.9f) < 1e-7f);
    assert_int_equal(c.gen_top_k, -1);
    kiln_config_free(&c);
    kiln_config_free(&c); /* idempotent */
}

static void defaults(void **state)
{
    (void)state;
    struct kiln_config c;
    struct kiln_error err = {0};
    assert_int_equal(kiln_config_parse(mini(NULL), NULL, NULL, &c, &err), KILN_OK);
    assert_int_equal(c.n_kv_heads, 4);
    assert_int_equal(c.head_dim, 16);
    assert_true(c.rope_theta == 10000.0f);
    assert_int_equal(c.rope_type, KILN_ROPE_DEFAULT);
    assert_int_equal(c.max_position_embeddings, 2048);
    assert_true(c.rms_norm_eps == 1e-6f);
    assert_int_equal(c.bos_token_id, -1);
    assert_int_equal(c.n_eos, 0);
    assert_false(c.fp8);
    assert_false(c.fp8_kv_cache);
    assert_false(c.tie_word_embeddings);
    assert_int_equal(c.torch_dtype, KILN_DTYPE_F32);
    assert_true(isnan(c.gen_temperature));
    assert_true(isnan(c.gen_top_p));
    assert_int_equal(c.gen_top_k, -1);
    kiln_config_free(&c);
    /* model_type alone, Mistral-style, eos as an int, "dtype" instead of torch_dtype */
    assert_int_equal(kiln_config_parse("{\"model_type\":\"mistral\",\"vocab_size\":10,"
                                       "\"hidden_size\":64,\"intermediate_size\":8,"
                                       "\"num_hidden_layers\":1,\"num_attention_heads\":2,"
                                       "\"head_dim\":128,\"eos_token_id\":2,"
                                       "\"sliding_window\":null,\"dtype\":\"float16\","
                                       "\"tie_word_embeddings\":true,\"rope_theta\":1000000.0}",
                                       NULL, NULL, &c, &err),
                     KILN_OK);
    assert_string_equal(c.architecture, "MistralForCausalLM");
    assert_int_equal(c.head_dim, 128);
    assert_int_equal(c.n_eos, 1);
    assert_int_equal(c.eos_token_ids[0], 2);
    assert_int_equal(c.torch_dtype, KILN_DTYPE_F16);
    assert_true(c.tie_word_embeddings);
    assert_true(c.rope_theta == 1e6f);
    kiln_config_free(&c);
}

static void rope_variants(void **state)
{
    (void)state;
    struct kiln_config c;
    struct kiln_error err = {0};
    assert_int_equal(kiln_config_parse(mini("\"rope_scaling\":{\"type\":\"linear\",\"factor\":2}"),
                                       NULL, NULL, &c, &err),
                     KILN_OK);
    assert_int_equal(c.rope_type, KILN_ROPE_LINEAR);
    assert_true(c.rope_factor == 2.0f);
    kiln_config_free(&c);
    assert_int_equal(kiln_config_parse(mini("\"rope_scaling\":{\"rope_type\":\"default\"}"), NULL,
                                       NULL, &c, &err),
                     KILN_OK);
    assert_int_equal(c.rope_type, KILN_ROPE_DEFAULT);
    kiln_config_free(&c);
    /* transformers v5: rope_parameters carries the type and rope_theta */
    assert_int_equal(
        kiln_config_parse(mini("\"max_position_embeddings\":131072,\"rope_parameters\":{"
                               "\"rope_type\":\"llama3\",\"rope_theta\":500000.0,\"factor\":8.0,"
                               "\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
                               "\"original_max_position_embeddings\":8192}"),
                          NULL, NULL, &c, &err),
        KILN_OK);
    assert_int_equal(c.rope_type, KILN_ROPE_LLAMA3);
    assert_true(c.rope_theta == 500000.0f);
    assert_int_equal(c.rope_original_max_pos, 8192);
    kiln_config_free(&c);
    /* A fine-tune that shortens the context below the original one loads, as in transformers. */
    assert_int_equal(kiln_config_parse(mini("\"max_position_embeddings\":4096,\"rope_scaling\":{"
                                            "\"rope_type\":\"llama3\",\"factor\":8.0,"
                                            "\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
                                            "\"original_max_position_embeddings\":8192}"),
                                       NULL, NULL, &c, &err),
                     KILN_OK);
    assert_int_equal(c.max_position_embeddings, 4096);
    assert_int_equal(c.rope_original_max_pos, 8192);
    kiln_config_free(&c);
    assert_int_equal(
        kiln_config_parse(
            mini("\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":250000.0}"), NULL,
            NULL, &c, &err),
        KILN_OK);
    assert_int_equal(c.rope_type, KILN_ROPE_DEFAULT);
    assert_true(c.rope_theta == 250000.0f);
    kiln_config_free(&c);

    expect_error(mini("\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}"), NULL, NULL,
                 KILN_ERR_UNSUPPORTED, "yarn", NULL);
    expect_error(mini("\"rope_scaling\":{\"type\":\"dynamic\",\"factor\":4}"), NULL, NULL,
                 KILN_ERR_UNSUPPORTED, "dynamic", NULL);
    expect_error(mini("\"rope_scaling\":{\"type\":\"linear\"}"), NULL, NULL, KILN_ERR_INVALID,
                 "factor", "missing");
    expect_error(mini("\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,"
                      "\"low_freq_factor\":1,\"high_freq_factor\":4}"),
                 NULL, NULL, KILN_ERR_INVALID, "original_max_position_embeddings", NULL);
    expect_error(mini("\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,"
                      "\"low_freq_factor\":4,\"high_freq_factor\":4,"
                      "\"original_max_position_embeddings\":1024}"),
                 NULL, NULL, KILN_ERR_INVALID, "high_freq_factor", NULL);
    expect_error(mini("\"rope_scaling\":{\"factor\":2}"), NULL, NULL, KILN_ERR_INVALID, "rope_type",
                 NULL);
    expect_error(mini("\"rope_scaling\":5"), NULL, NULL, KILN_ERR_INVALID, "rope_scaling", NULL);
    expect_error(mini("\"rope_theta\":-1"), NULL, NULL, KILN_ERR_INVALID, "rope_theta", NULL);
}

static void quant_in_config_json(void **state)
{
    (void)state;
    struct kiln_config c;
    struct kiln_error err = {0};
    assert_int_equal(
        kiln_config_parse(mini("\"quantization_config\":{\"quant_method\":\"modelopt\","
                               "\"quant_algo\":\"FP8\",\"kv_cache_quant_algo\":null,"
                               "\"exclude_modules\":[\"lm_head\",\"model.layers.0.*\"],"
                               "\"ignore\":[\"model.layers.1.mlp\"]}"),
                          NULL, NULL, &c, &err),
        KILN_OK);
    assert_true(c.fp8);
    assert_false(c.fp8_kv_cache);
    assert_int_equal(c.n_exclude, 3);
    assert_true(kiln_config_excluded(&c, "lm_head"));
    assert_true(kiln_config_excluded(&c, "model.layers.0.self_attn.q_proj"));
    assert_false(kiln_config_excluded(&c, "model.layers.10.self_attn.q_proj"));
    assert_true(kiln_config_excluded(&c, "model.layers.1.mlp.down_proj"));
    assert_false(kiln_config_excluded(&c, "model.layers.1.mlp_x.down_proj"));
    assert_false(kiln_config_excluded(&c, "model.layers.1.self_attn.q_proj"));
    kiln_config_free(&c);
    /* hf_quant_config.json is used when both are given */
    assert_int_equal(kiln_config_parse(mini("\"quantization_config\":{\"quant_method\":\"gptq\"}"),
                                       quant, NULL, &c, &err),
                     KILN_OK);
    assert_true(c.fp8 && c.fp8_kv_cache);
    kiln_config_free(&c);
    expect_error(mini("\"quantization_config\":{\"quant_method\":\"gptq\",\"bits\":4}"), NULL, NULL,
                 KILN_ERR_UNSUPPORTED, "gptq", NULL);
    expect_error(mini("\"quantization_config\":{\"quant_method\":\"modelopt\","
                      "\"quant_algo\":\"NVFP4\"}"),
                 NULL, NULL, KILN_ERR_UNSUPPORTED, "NVFP4", NULL);
    expect_error(mini(NULL), "{\"quantization\":{\"quant_algo\":\"W4A16_AWQ\"}}", NULL,
                 KILN_ERR_UNSUPPORTED, "W4A16_AWQ", NULL);
    expect_error(mini(NULL),
                 "{\"quantization\":{\"quant_algo\":\"FP8\",\"kv_cache_quant_algo\":"
                 "\"INT8\"}}",
                 NULL, KILN_ERR_UNSUPPORTED, "INT8", NULL);
    expect_error(mini(NULL), "{\"producer\":{}}", NULL, KILN_ERR_INVALID, "hf_quant_config.json",
                 "quantization");
    expect_error(mini(NULL), "{\"quantization\":{\"exclude_modules\":\"lm_head\"}}", NULL,
                 KILN_ERR_INVALID, "exclude_modules", NULL);
    expect_error(mini(NULL), "{\"quantization\":{\"exclude_modules\":[1]}}", NULL, KILN_ERR_INVALID,
                 "exclude_modules[0]", NULL);
    expect_error(mini(NULL), "{\"quantization\":", NULL, KILN_ERR_FORMAT, "hf_quant_config.json",
                 NULL);
    /* KV-only quantization */
    assert_int_equal(kiln_config_parse(mini(NULL),
                                       "{\"quantization\":{\"quant_algo\":null,"
                                       "\"kv_cache_quant_algo\":\"FP8\"}}",
                                       NULL, &c, &err),
                     KILN_OK);
    assert_false(c.fp8);
    assert_true(c.fp8_kv_cache);
    kiln_config_free(&c);
}

static void exclude_patterns(void **state)
{
    (void)state;
    struct kiln_config c;
    struct kiln_error err = {0};
    assert_int_equal(
        kiln_config_parse(mini(NULL),
                          "{\"quantization\":{\"quant_algo\":\"FP8\",\"exclude_modules\":"
                          "[\"*.mlp.gate\",\"model.layers.*.self_attn.o_proj\",\"*down*\","
                          "\"model.layers.3\"]}}",
                          NULL, &c, &err),
        KILN_OK);
    assert_false(kiln_config_excluded(&c, "model.layers.0.mlp.gate_proj"));
    assert_true(kiln_config_excluded(&c, "model.layers.0.mlp.gate"));
    assert_true(kiln_config_excluded(&c, "model.layers.7.self_attn.o_proj"));
    assert_false(kiln_config_excluded(&c, "model.layers.7.self_attn.q_proj"));
    assert_true(kiln_config_excluded(&c, "model.layers.5.mlp.down_proj"));
    assert_true(kiln_config_excluded(&c, "model.layers.3.mlp.up_proj"));
    assert_false(kiln_config_excluded(&c, "model.layers.30.mlp.up_proj"));
    assert_false(kiln_config_excluded(&c, "lm_head"));
    kiln_config_free(&c);
}

static void generation_config(void **state)
{
    (void)state;
    struct kiln_config c;
    struct kiln_error err = {0};
    assert_int_equal(kiln_config_parse(mini("\"eos_token_id\":7"), NULL,
                                       "{\"eos_token_id\":[7,8],\"do_sample\":false,"
                                       "\"temperature\":0.7,\"top_k\":40}",
                                       &c, &err),
                     KILN_OK);
    assert_int_equal(c.n_eos, 2);
    assert_true(kiln_config_is_eos(&c, 7) && kiln_config_is_eos(&c, 8));
    assert_true(c.gen_temperature == 0.0f); /* do_sample false: greedy */
    assert_int_equal(c.gen_top_k, 40);
    assert_true(isnan(c.gen_top_p));
    kiln_config_free(&c);
    assert_int_equal(kiln_config_parse(mini(NULL), NULL, "{\"eos_token_id\":9}", &c, &err),
                     KILN_OK);
    assert_int_equal(c.n_eos, 1);
    kiln_config_free(&c);
    expect_error(mini(NULL), NULL, "{\"top_p\":1.5}", KILN_ERR_INVALID, "generation_config.json",
                 "top_p");
    expect_error(mini(NULL), NULL, "{\"temperature\":\"hot\"}", KILN_ERR_INVALID, "temperature",
                 NULL);
    expect_error(mini(NULL), NULL, "{\"eos_token_id\":\"x\"}", KILN_ERR_INVALID, "eos_token_id",
                 NULL);
    expect_error(mini(NULL), NULL, "[]", KILN_ERR_FORMAT, "generation_config.json", NULL);
    expect_error(mini("\"eos_token_id\":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]"), NULL, NULL,
                 KILN_ERR_LIMIT, "eos_token_id", NULL);
}

static void validation_errors(void **state)
{
    (void)state;
    expect_error("{", NULL, NULL, KILN_ERR_FORMAT, "config.json:", NULL);
    expect_error("[]", NULL, NULL, KILN_ERR_FORMAT, "not a JSON object", NULL);
    expect_error("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":1,\"vocab_size\":2}",
                 NULL, NULL, KILN_ERR_FORMAT, "duplicate", NULL);
    expect_error("{\"architectures\":[\"Qwen2ForCausalLM\"]}", NULL, NULL, KILN_ERR_UNSUPPORTED,
                 "Qwen2ForCausalLM", NULL);
    expect_error("{\"model_type\":\"gpt2\"}", NULL, NULL, KILN_ERR_UNSUPPORTED, "gpt2", NULL);
    expect_error("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64}", NULL, NULL,
                 KILN_ERR_INVALID, "vocab_size", "missing");
    expect_error(mini("\"num_key_value_heads\":3"), NULL, NULL, KILN_ERR_INVALID,
                 "num_key_value_heads", NULL);
    expect_error(mini("\"head_dim\":15"), NULL, NULL, KILN_ERR_INVALID, "head_dim", "even");
    expect_error(mini("\"attention_bias\":true"), NULL, NULL, KILN_ERR_UNSUPPORTED,
                 "attention_bias", NULL);
    expect_error(mini("\"mlp_bias\":true"), NULL, NULL, KILN_ERR_UNSUPPORTED, "mlp_bias", NULL);
    expect_error(mini("\"hidden_act\":\"gelu\""), NULL, NULL, KILN_ERR_UNSUPPORTED, "silu", NULL);
    expect_error(mini("\"sliding_window\":4096"), NULL, NULL, KILN_ERR_UNSUPPORTED, "sliding",
                 NULL);
    expect_error(mini("\"rms_norm_eps\":0"), NULL, NULL, KILN_ERR_INVALID, "rms_norm_eps", NULL);
    expect_error(mini("\"tie_word_embeddings\":1"), NULL, NULL, KILN_ERR_INVALID,
                 "tie_word_embeddings", NULL);
    expect_error(mini("\"torch_dtype\":\"float64\""), NULL, NULL, KILN_ERR_UNSUPPORTED, "float64",
                 NULL);
    expect_error(mini("\"bos_token_id\":-5"), NULL, NULL, KILN_ERR_INVALID, "bos_token_id", NULL);
    /* hidden not a multiple of heads without head_dim */
    expect_error("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":100,"
                 "\"hidden_size\":66,\"intermediate_size\":96,\"num_hidden_layers\":2,"
                 "\"num_attention_heads\":4}",
                 NULL, NULL, KILN_ERR_INVALID, "hidden_size", NULL);
    expect_error("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":100,"
                 "\"hidden_size\":64.0,\"intermediate_size\":96,\"num_hidden_layers\":2,"
                 "\"num_attention_heads\":4}",
                 NULL, NULL, KILN_ERR_INVALID, "hidden_size", "integer");
    expect_error("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":0,"
                 "\"hidden_size\":64,\"intermediate_size\":96,\"num_hidden_layers\":2,"
                 "\"num_attention_heads\":4}",
                 NULL, NULL, KILN_ERR_INVALID, "vocab_size", "range");
    expect_error("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":10,"
                 "\"hidden_size\":64,\"intermediate_size\":96,\"num_hidden_layers\":2,"
                 "\"num_attention_heads\":99999999999}",
                 NULL, NULL, KILN_ERR_INVALID, "num_attention_heads", NULL);
}

static void load_from_dir(void **state)
{
    (void)state;
    char *dir = tmpdir_make();
    struct kiln_config c;
    struct kiln_error err = {0};
    assert_int_equal(kiln_config_load(dir, &c, &err), KILN_ERR_IO);
    assert_non_null(strstr(err.msg, "config.json"));
    write_text(dir, "config.json", llama31);
    assert_int_equal(kiln_config_load(dir, &c, &err), KILN_OK);
    assert_false(c.fp8);
    assert_int_equal(c.n_eos, 3);
    kiln_config_free(&c);
    write_text(dir, "hf_quant_config.json", quant);
    write_text(dir, "generation_config.json", gen);
    assert_int_equal(kiln_config_load(dir, &c, &err), KILN_OK);
    assert_true(c.fp8);
    assert_true(c.gen_top_p > 0.89f);
    kiln_config_free(&c);
    write_text(dir, "generation_config.json", "{\"top_k\":-3}");
    assert_int_equal(kiln_config_load(dir, &c, &err), KILN_ERR_INVALID);
    assert_non_null(strstr(err.msg, dir));
    assert_non_null(strstr(err.msg, "generation_config.json"));
    tmpdir_remove(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(llama31_fp8),       cmocka_unit_test(defaults),
        cmocka_unit_test(rope_variants),     cmocka_unit_test(quant_in_config_json),
        cmocka_unit_test(exclude_patterns),  cmocka_unit_test(generation_config),
        cmocka_unit_test(validation_errors), cmocka_unit_test(load_from_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
