/* kiln mkmodel end to end: the written checkpoint loads, is reproducible bit for bit for a seed
 * (whatever the thread count), changes with the seed, shards like transformers, its FP8 weights
 * are the quantization of the BF16 variant, its activation scales are calibrated, and it
 * refuses to overwrite a folder without --force. Runs $KILN_BIN. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "core/file.h"
#include "model/helpers.h"
#include "model/model.h"

static char *root; /* temporary folder of this run */

/* Runs "kiln ARGS" with KILN_THREADS=threads; returns the exit status, stderr in root/log. */
static int kiln(int threads, const char *args)
{
    const char *bin = getenv("KILN_BIN");
    if (!bin) fail_msg("KILN_BIN is not set (run through ctest)");
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "KILN_THREADS=%d KILN_LOG=warn '%s' %s 2>'%s/log'", threads, bin,
             args, root);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void mk(int threads, const char *name, const char *flags)
{
    char args[4096];
    snprintf(args, sizeof args, "mkmodel '%s/%s' %s", root, name, flags);
    if (kiln(threads, args) != 0) {
        size_t n;
        char path[4096];
        snprintf(path, sizeof path, "%s/log", root);
        uint8_t *log = read_all(path, &n);
        fail_msg("kiln %s failed: %.*s", args, (int)n, (const char *)log);
    }
}

/* root/name/file in one of four rotating buffers, so two may be passed to one call */
static char *path_of(const char *name, const char *file)
{
    static char p[4][4096];
    static int next;
    char *s = p[next++ % 4];
    snprintf(s, sizeof p[0], "%s/%s/%s", root, name, file);
    return s;
}

static bool same_file(const char *a, const char *b)
{
    size_t na, nb;
    uint8_t *x = read_all(a, &na), *y = read_all(b, &nb);
    bool same = na == nb && !memcmp(x, y, na);
    free(x);
    free(y);
    return same;
}

/* FNV-1a 64 of a file: a fingerprint for the golden test. */
static uint64_t fingerprint(const char *path)
{
    size_t n;
    uint8_t *b = read_all(path, &n);
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    free(b);
    return h;
}

static struct kiln_model *load(const char *name)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    struct kiln_model *m = NULL;
    struct kiln_error err = {0};
    if (kiln_model_load(dir, &m, &err)) fail_msg("load %s: %s", dir, err.msg);
    return m;
}

static int setup(void **state)
{
    (void)state;
    kiln_numeric_init();
    root = tmpdir_make();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tmpdir_remove(root);
    free(root);
    return 0;
}

static void fp8_checkpoint(void **state)
{
    (void)state;
    mk(1, "a", "--seed 7");
    assert_true(kiln_file_exists(path_of("a", "model.safetensors")));
    assert_true(kiln_file_exists(path_of("a", "hf_quant_config.json")));
    assert_true(kiln_file_exists(path_of("a", "generation_config.json")));
    assert_false(kiln_file_exists(path_of("a", "model.safetensors.index.json")));
    struct kiln_model *m = load("a");
    const struct kiln_config *c = &m->cfg;
    assert_int_equal(c->vocab_size, 128256);
    assert_int_equal(c->hidden_size, 128);
    assert_int_equal(c->intermediate_size, 384);
    assert_int_equal(c->n_layers, 2);
    assert_int_equal(c->n_heads, 2);
    assert_int_equal(c->n_kv_heads, 1);
    assert_int_equal(c->head_dim, 64);
    assert_int_equal(c->rope_type, KILN_ROPE_LLAMA3);
    assert_true(c->rope_theta == 500000.0f);
    assert_int_equal(c->bos_token_id, 128000);
    assert_int_equal(c->n_eos, 3);
    assert_true(kiln_config_is_eos(c, 128008));
    assert_true(c->fp8);
    assert_false(c->fp8_kv_cache);
    assert_false(m->lm_head.fp8);
    for (int i = 0; i < c->n_layers; i++) {
        const struct kiln_layer_weights *w = &m->layers[i];
        const struct kiln_linear *ls[4] = {&w->qkv, &w->o, &w->gate_up, &w->down};
        for (int g = 0; g < 4; g++) {
            assert_true(ls[g]->fp8);
            /* calibrated, not the placeholder, and the parts share the input's scale */
            assert_true(ls[g]->input_scale > 1e-6f && ls[g]->input_scale < 1.0f);
            for (int p = 0; p < ls[g]->n_parts; p++)
                assert_true(ls[g]->part_input_scale[p] == ls[g]->input_scale);
        }
        /* per-tensor weight scales differ within the fused groups */
        assert_true(w->qkv.part_weight_scale[0] != w->qkv.part_weight_scale[1] ||
                    w->qkv.part_weight_scale[1] != w->qkv.part_weight_scale[2]);
        assert_true(w->k_scale == 1.0f && w->v_scale == 1.0f);
    }
    kiln_model_free(m);
}

static void reproducible(void **state)
{
    (void)state;
    mk(2, "b", "--seed 7"); /* another thread count than "a" */
    mk(1, "c", "--seed 8");
    static const char *const files[] = {"model.safetensors", "config.json", "hf_quant_config.json",
                                        "generation_config.json"};
    for (int i = 0; i < 4; i++)
        assert_true(same_file(path_of("a", files[i]), path_of("b", files[i])));
    assert_false(same_file(path_of("a", "model.safetensors"), path_of("c", "model.safetensors")));
    assert_true(same_file(path_of("a", "config.json"), path_of("c", "config.json")));
}

/* The BF16 variant involves no calibration, so its bytes depend only on mkmodel's own
 * arithmetic: this fingerprint must be the same on every machine and compiler. */
static void bf16_golden(void **state)
{
    (void)state;
    mk(2, "bf", "--seed 7 --dtype bf16");
    assert_false(kiln_file_exists(path_of("bf", "hf_quant_config.json")));
    struct kiln_model *b = load("bf"), *a = load("a");
    assert_false(b->cfg.fp8);
    assert_int_equal(b->layers[0].qkv.part[0].dtype, KILN_DTYPE_BF16);
    /* the FP8 model is the quantization of the BF16 one: check one whole tensor */
    const struct kiln_linear *lb = &b->layers[1].gate_up, *la = &a->layers[1].gate_up;
    size_t n = (size_t)(lb->part[1].shape[0] * lb->part[1].shape[1]);
    const uint16_t *w = lb->part[1].data;
    const uint8_t *q = la->part[1].data;
    float amax = 0;
    for (size_t i = 0; i < n; i++) amax = fmaxf(amax, fabsf(kiln_bf16_to_f32(w[i])));
    float scale = amax / 448.0f;
    assert_true(la->part_weight_scale[1] == scale);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(q[i], kiln_f32_to_e4m3(kiln_bf16_to_f32(w[i]) / scale));
    /* norms and embeddings are shared */
    assert_memory_equal(a->embed.data, b->embed.data, 128256 * 128 * 2);
    assert_memory_equal(a->layers[0].attn_norm.data, b->layers[0].attn_norm.data, 128 * 2);
    kiln_model_free(a);
    kiln_model_free(b);
    uint64_t h = fingerprint(path_of("bf", "model.safetensors"));
    if (h != 0x0cc0a86e1f0d49fbull)
        fail_msg("bf16 tiny seed 7 fingerprint %016llx", (unsigned long long)h);
}

static void sharded(void **state)
{
    (void)state;
    mk(2, "s", "--seed 7 --shard-size 20MB");
    assert_true(kiln_file_exists(path_of("s", "model.safetensors.index.json")));
    /* embed_tokens (33 MB) alone, then the layers and the norm, then lm_head (33 MB) */
    assert_true(kiln_file_exists(path_of("s", "model-00001-of-00003.safetensors")));
    assert_true(kiln_file_exists(path_of("s", "model-00003-of-00003.safetensors")));
    assert_false(kiln_file_exists(path_of("s", "model.safetensors")));
    struct kiln_model *a = load("a"), *s = load("s");
    assert_int_equal(s->st.n_files, 3);
    assert_same_model(a, s);
    kiln_model_free(a);
    kiln_model_free(s);
    size_t n;
    char *index = (char *)read_all(path_of("s", "model.safetensors.index.json"), &n);
    index = realloc(index, n + 1);
    index[n] = 0;
    assert_non_null(strstr(index, "\"total_size\": 66"));
    assert_non_null(strstr(index, "\"lm_head.weight\": \"model-00003-of-00003.safetensors\""));
    free(index);
}

static void fp8_kv_and_tokenizer(void **state)
{
    (void)state;
    char tok[4096];
    snprintf(tok, sizeof tok, "%s/tok", root);
    tmpdir_remove(tok);
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", tok);
    assert_int_equal(system(cmd), 0);
    write_text(tok, "tokenizer.json", "{\"model\":{}}");
    write_text(tok, "tokenizer_config.json", "{\"bos_token\":\"<|begin_of_text|>\"}");
    char flags[4096];
    snprintf(flags, sizeof flags, "--fp8-kv-cache --tokenizer '%s'", tok);
    mk(2, "kv", flags);
    struct kiln_model *m = load("kv");
    assert_true(m->cfg.fp8_kv_cache);
    for (int i = 0; i < m->cfg.n_layers; i++) {
        assert_true(m->layers[i].k_scale != 1.0f && m->layers[i].k_scale > 0);
        assert_true(m->layers[i].v_scale != 1.0f && m->layers[i].v_scale > 0);
        assert_non_null(kiln_st_find(&m->st, "model.layers.0.self_attn.k_proj.k_scale"));
    }
    kiln_model_free(m);
    /* tokenizer_config.json keeps its fields and gets Llama 3.1 Instruct's chat template, the
     * one the real checkpoint ships (the fixture whose renderings jinja2 checked) */
    char src[4096];
    json_t *cfg = json_load_file(path_of("kv", "tokenizer_config.json"), 0, NULL);
    assert_string_equal(json_string_value(json_object_get(cfg, "bos_token")), "<|begin_of_text|>");
    snprintf(src, sizeof src, "%s/tests/fixtures/tokenizer/templates/llama3_1_tools.jinja",
             getenv("KILN_SOURCE_DIR"));
    size_t n;
    uint8_t *want = read_all(src, &n);
    const json_t *tpl = json_object_get(cfg, "chat_template");
    assert_int_equal(json_string_length(tpl), n);
    assert_memory_equal(json_string_value(tpl), want, n);
    free(want);
    json_decref(cfg);
    snprintf(src, sizeof src, "%s/tokenizer.json", tok);
    assert_true(same_file(src, path_of("kv", "tokenizer.json")));
}

static void refuses_and_replaces(void **state)
{
    (void)state;
    char args[4096];
    snprintf(args, sizeof args, "mkmodel '%s/a' --seed 9", root);
    assert_int_equal(kiln(2, args), 1); /* "a" exists */
    size_t n;
    char log[4096];
    snprintf(log, sizeof log, "%s/log", root);
    uint8_t *text = read_all(log, &n);
    assert_non_null(memmem(text, n, "--force", 7));
    free(text);
    assert_true(same_file(path_of("a", "model.safetensors"), path_of("b", "model.safetensors")));
    snprintf(args, sizeof args, "mkmodel '%s/a' --seed 8 --force", root);
    assert_int_equal(kiln(2, args), 0);
    assert_true(same_file(path_of("a", "model.safetensors"), path_of("c", "model.safetensors")));
    /* nothing temporary is left next to the outputs */
    DIR *d = opendir(root);
    struct dirent *e;
    while ((e = readdir(d))) assert_null(strstr(e->d_name, ".tmp-"));
    closedir(d);
    /* usage errors */
    assert_int_equal(kiln(1, "mkmodel"), 2);
    snprintf(args, sizeof args, "mkmodel '%s/u' --preset huge", root);
    assert_int_equal(kiln(1, args), 2);
    snprintf(args, sizeof args, "mkmodel '%s/u' --dtype bf16 --fp8-kv-cache", root);
    assert_int_equal(kiln(1, args), 2);
    snprintf(args, sizeof args, "mkmodel '%s/u' --shard-size 12XB", root);
    assert_int_equal(kiln(1, args), 2);
    snprintf(args, sizeof args, "mkmodel '%s/u' --seed -1", root);
    assert_int_equal(kiln(1, args), 2);
    snprintf(args, sizeof args, "mkmodel '%s/u' --tokenizer '%s/nowhere'", root, root);
    assert_int_equal(kiln(1, args), 1);
    assert_false(kiln_dir_exists(path_of("u", "")));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fp8_checkpoint),       cmocka_unit_test(reproducible),
        cmocka_unit_test(bf16_golden),          cmocka_unit_test(sharded),
        cmocka_unit_test(fp8_kv_and_tokenizer), cmocka_unit_test(refuses_and_replaces),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
