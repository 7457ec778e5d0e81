/* kiln convert / build end to end on tiny models, on the CPU: what the files hold, that the
 * three-step (convert, build, generate ENGINE) and one-step (generate HF_DIR) paths give the
 * same generations and logits, every error a user can hit, and that interrupted writes leave
 * nothing behind.
 * usage: test_pipeline_cli TINY_MODEL_DIR   (env KILN_BIN, KILN_BINARY_DIR, KILN_TOKENIZERS) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "model/format.h"
#include "model/helpers.h"
#include "model/model.h"

static const char *tiny; /* the tiny_model fixture: HF ModelOpt FP8 with a tokenizer */
static char scratch[4096];

/* Runs a shell command (kiln is $K) with stderr into stdout; returns the exit status and the
 * output (malloc'ed) in *out when out is not NULL. */
static int run(char **out, const char *fmt, ...)
{
    char cmd[8192], full[8400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    snprintf(full, sizeof full, "K=\"%s\"; S=\"%s\"; T=\"%s\"; ( %s ) 2>&1", getenv("KILN_BIN"),
             scratch, tiny, cmd);
    FILE *f = popen(full, "r");
    assert_non_null(f);
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (n + 1 == cap) buf = realloc(buf, cap *= 2);
    }
    buf[n] = 0;
    int status = pclose(f);
    if (out)
        *out = buf;
    else
        free(buf);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* The command must fail (exit status rc) with want in its output. */
static void expect_error(int rc, const char *want, const char *fmt, const char *arg)
{
    char *out;
    int got = run(&out, fmt, arg);
    if (got != rc || !strstr(out, want))
        fail_msg("`%s` (%s): exit %d, expected %d with '%s'; output:\n%s", fmt, arg, got, rc, want,
                 out);
    free(out);
}

static void ok(const char *cmd)
{
    char *out;
    if (run(&out, "%s", cmd) != 0) fail_msg("`%s` failed:\n%s", cmd, out);
    free(out);
}

/* The generated ids kiln generate prints (its stdout's one line). */
static char *generate(const char *model, const char *extra)
{
    char *out;
    int rc = run(&out,
                 "\"$K\" generate %s --prompt-ids 791,6864,315,9822,374,1234 --max-tokens 12 "
                 "--device cpu %s 2>/dev/null",
                 model, extra);
    if (rc) fail_msg("generate %s failed", model);
    return out;
}

static bool path_exists(const char *fmt, const char *arg)
{
    char p[4400];
    snprintf(p, sizeof p, fmt, scratch, arg);
    struct stat st;
    return stat(p, &st) == 0;
}

/* No NAME and no NAME.tmp-* / NAME.old-* under the scratch folder. */
static void assert_nothing_named(const char *name)
{
    assert_false(path_exists("%s/%s", name));
    DIR *d = opendir(scratch);
    struct dirent *e;
    size_t n = strlen(name);
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, name, n) && e->d_name[n] == '.')
            fail_msg("%s/%s was left behind", scratch, e->d_name);
    closedir(d);
}

static json_t *load_json(const char *dir, const char *name)
{
    char p[4400];
    snprintf(p, sizeof p, "%s/%s/%s", scratch, dir, name);
    json_error_t je;
    json_t *j = json_load_file(p, 0, &je);
    if (!j) fail_msg("%s: %s", p, je.text);
    return j;
}

static struct kiln_model *load(const char *dir)
{
    char p[4400];
    if (dir[0] == '/')
        snprintf(p, sizeof p, "%s", dir);
    else
        snprintf(p, sizeof p, "%s/%s", scratch, dir);
    struct kiln_model *m = NULL;
    struct kiln_error err = {0};
    if (kiln_model_load(p, &m, &err)) fail_msg("load %s: %s", p, err.msg);
    return m;
}

/* Every fused linear of b (one part) holds exactly the rows and scales the loader makes of a's
 * parts (requantized to the group's largest scale); norms, embedding and lm_head are equal. */
static void same_fused(const struct kiln_model *a, const struct kiln_model *b)
{
    assert_int_equal(a->cfg.n_layers, b->cfg.n_layers);
    for (int i = 0; i < a->cfg.n_layers; i++) {
        const struct kiln_layer_weights *x = &a->layers[i], *y = &b->layers[i];
        assert_same_tensor(&x->attn_norm, &y->attn_norm);
        assert_same_tensor(&x->mlp_norm, &y->mlp_norm);
        const struct kiln_linear *lx[4] = {&x->qkv, &x->o, &x->gate_up, &x->down};
        const struct kiln_linear *ly[4] = {&y->qkv, &y->o, &y->gate_up, &y->down};
        for (int k = 0; k < 4; k++) {
            assert_int_equal(ly[k]->n_parts, 1);
            assert_true(lx[k]->out == ly[k]->out && lx[k]->in == ly[k]->in);
            assert_int_equal(lx[k]->fp8, ly[k]->fp8);
            assert_true(lx[k]->weight_scale == ly[k]->weight_scale);
            assert_true(lx[k]->input_scale == ly[k]->input_scale);
            size_t n = (size_t)(lx[k]->out * lx[k]->in);
            uint8_t *p = malloc(n), *q = malloc(n);
            kiln_linear_fp8_rows(lx[k], 0, lx[k]->out, p);
            kiln_linear_fp8_rows(ly[k], 0, ly[k]->out, q);
            assert_memory_equal(p, q, n);
            free(p);
            free(q);
        }
        assert_true(x->k_scale == y->k_scale && x->v_scale == y->v_scale);
    }
    assert_same_tensor(&a->embed, &b->embed);
    assert_same_tensor(&a->norm, &b->norm);
    assert_same_tensor(&a->lm_head.part[0], &b->lm_head.part[0]);
}

/* ---- tests ---- */

static void convert_fp8_checkpoint(void **state)
{
    (void)state;
    ok("\"$K\" convert \"$T\" -o \"$S/ckpt\"");
    json_t *j = load_json("ckpt", "kiln.json");
    assert_string_equal(json_string_value(json_object_get(j, "format")), "kiln-checkpoint");
    assert_int_equal(json_integer_value(json_object_get(j, "format_version")), 1);
    json_t *q = json_object_get(j, "quantization");
    /* mkmodel gives q, k, v (and gate, up) different weight scales: every group requantized */
    assert_int_equal(json_integer_value(json_object_get(q, "fused_groups")), 4);
    assert_int_equal(json_integer_value(json_object_get(q, "requantized_groups")), 4);
    json_decref(j);
    assert_true(path_exists("%s/%s", "ckpt/tokenizer.json"));
    assert_true(path_exists("%s/%s", "ckpt/generation_config.json"));
    struct kiln_model *hf = load(tiny), *ck = load("ckpt");
    assert_int_equal(hf->format, KILN_FORMAT_HF);
    assert_int_equal(ck->format, KILN_FORMAT_CHECKPOINT);
    assert_int_equal(hf->layers[0].qkv.n_parts, 3);
    same_fused(hf, ck);
    kiln_model_free(hf);
    kiln_model_free(ck);
    /* kept, not replaced, without --force; replaced with it */
    expect_error(1, "exists (pass --force to replace it)", "\"$K\" convert \"$T\" -o \"$S/%s\"",
                 "ckpt");
    ok("\"$K\" convert \"$T\" -o \"$S/ckpt/\" --force");
    expect_error(1, "is the input folder", "\"$K\" convert \"$S/%s\" -o \"$S/ckpt\" --force",
                 "ckpt");
}

static void build_and_generate_identical(void **state)
{
    (void)state;
    const char *limits = "--max-batch-size 2 --max-input-len 32 --max-seq-len 64";
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "\"$K\" build \"$S/ckpt\" -o \"$S/eng\" %s --device cpu", limits);
    ok(cmd);
    /* one step from the Hugging Face folder: the same weights file */
    snprintf(cmd, sizeof cmd, "\"$K\" build \"$T\" -o \"$S/eng_hf\" %s --device cpu", limits);
    ok(cmd);
    ok("cmp \"$S/eng/model.safetensors\" \"$S/eng_hf/model.safetensors\"");
    json_t *j = load_json("eng", "engine.json");
    json_t *b = json_object_get(j, "build");
    assert_int_equal(json_integer_value(json_object_get(b, "max_batch_size")), 2);
    assert_int_equal(json_integer_value(json_object_get(b, "max_input_len")), 32);
    assert_int_equal(json_integer_value(json_object_get(b, "max_seq_len")), 64);
    assert_int_equal(json_integer_value(json_object_get(b, "max_num_tokens")), 64);
    assert_string_equal(json_string_value(json_object_get(b, "kv_dtype")), "bf16");
    assert_true(json_is_null(json_object_get(j, "gpu")));
    assert_non_null(json_object_get(json_object_get(j, "memory_plan"), "kv_cache"));
    json_decref(j);

    char *one = generate("\"$T\"", ""), *ck = generate("\"$S/ckpt\"", ""),
         *three = generate("\"$S/eng\"", ""), *hf = generate("\"$S/eng_hf\"", "");
    assert_true(strlen(one) > 10);
    assert_string_equal(one, ck);
    assert_string_equal(one, three);
    assert_string_equal(one, hf);
    free(one);
    free(ck);
    free(three);
    free(hf);
    /* every prompt position's logits, bit for bit (dump-logits needs a batch of 6 rows) */
    ok("\"$K\" build \"$S/ckpt\" -o \"$S/eng8\" --max-batch-size 8 --max-seq-len 64 --device cpu");
    free(generate("\"$T\"", "--dump-logits \"$S/logits_hf.bin\""));
    free(generate("\"$S/eng8\"", "--dump-logits \"$S/logits_eng.bin\""));
    ok("cmp \"$S/logits_hf.bin\" \"$S/logits_eng.bin\"");
}

static void engine_loads_in_kernel_order(void **state)
{
    (void)state;
    struct kiln_model *hf = load(tiny), *e = load("eng");
    assert_int_equal(e->format, KILN_FORMAT_ENGINE);
    assert_non_null(e->engine);
    assert_int_equal(e->engine->max_batch_size, 2);
    assert_int_equal(e->engine->max_input_len, 32);
    assert_int_equal(e->engine->kv_dtype, KILN_DTYPE_BF16);
    assert_int_equal(e->layers[0].qkv.row_order, e->engine->qkv_order);
    assert_int_not_equal(e->layers[0].qkv.row_order, 0);
    assert_int_not_equal(e->layers[0].gate_up.row_order, 0);
    /* stored permuted, read back in natural order */
    size_t n = (size_t)(hf->layers[1].qkv.out * hf->layers[1].qkv.in);
    uint8_t *p = malloc(n);
    kiln_linear_fp8_rows(&hf->layers[1].qkv, 0, hf->layers[1].qkv.out, p);
    assert_memory_not_equal(p, e->layers[1].qkv.part[0].data, n);
    free(p);
    same_fused(hf, e);
    kiln_model_free(hf);
    kiln_model_free(e);
}

static void engine_file_errors(void **state)
{
    (void)state;
    const char *gen = "\"$K\" generate \"$S/%s\" --prompt-ids 1,2,3 --max-tokens 2 --device cpu";
    ok("rm -rf \"$S/bad\" && cp -r \"$S/eng\" \"$S/bad\" && printf '\\001' | dd "
       "of=\"$S/bad/model.safetensors\" bs=1 seek=3000000 conv=notrunc 2>/dev/null");
    expect_error(1, "model.safetensors: checksum", gen, "bad");
    expect_error(1, "the file is damaged; rebuild the engine with `kiln build CKPT -o", gen, "bad");
    ok("rm -rf \"$S/bad\" && cp -r \"$S/eng\" \"$S/bad\" && truncate -s -10 "
       "\"$S/bad/tokenizer.json\"");
    expect_error(1, "bytes, engine.json says", gen, "bad");
    ok("rm -rf \"$S/bad\" && cp -r \"$S/eng\" \"$S/bad\" && rm \"$S/bad/config.json\"");
    expect_error(1, "config.json is missing: the engine is incomplete", gen, "bad");
    ok("rm -rf \"$S/bad\" && cp -r \"$S/eng\" \"$S/bad\" && sed -i "
       "'s/\"format_version\": 1/\"format_version\": 7/' \"$S/bad/engine.json\"");
    expect_error(1, "engine format version 7, this kiln (" KILN_VERSION ") reads version 1", gen,
                 "bad");
    expect_error(1, "is a kiln engine already", "\"$K\" convert \"$S/%s\" -o \"$S/x\"", "eng");
    expect_error(1, "is an engine already", "\"$K\" build \"$S/%s\" -o \"$S/x\"", "eng");
}

static void engine_limits(void **state)
{
    (void)state;
    /* prompt over max_input_len (32) */
    expect_error(1, "max_input_len 40 is more than engine",
                 "\"$K\" generate \"$S/%s\" --prompt-ids "
                 "$(seq -s, 100 139) --max-tokens 2 --device cpu",
                 "eng");
    /* prompt + output over max_seq_len (64) */
    expect_error(1, "max_seq_len 65 is more than engine",
                 "\"$K\" generate \"$S/%s\" --prompt-ids 1,2,3 --max-tokens 62 --device cpu",
                 "eng");
    /* batch over max_batch_size (2) */
    expect_error(1, "max_batch_size 4 is more than engine",
                 "\"$K\" bench \"$S/%s\" --throughput --num-requests 4 --input-len 8 "
                 "--output-len 2 --max-batch-size 4 --device cpu",
                 "eng");
    expect_error(1, "max_batch_size 4 is more than engine",
                 "timeout 60 \"$K\" serve \"$S/%s\" --port 0 --max-batch-size 4 --device cpu",
                 "eng");
    expect_error(1, "rebuild the engine with `kiln build CKPT -o",
                 "\"$K\" bench \"$S/%s\" --throughput --num-requests 4 --input-len 40 "
                 "--output-len 2 --device cpu",
                 "eng");
    /* the engine's own settings: KV dtype, block size */
    expect_error(1, "was built with --kv-dtype bf16: --kv-dtype fp8 needs an engine",
                 "\"$K\" generate \"$S/%s\" --prompt-ids 1,2 --kv-dtype fp8 --device cpu", "eng");
    expect_error(1, "was built with --tokens-per-block 16: --block-size 32",
                 "\"$K\" generate \"$S/%s\" --prompt-ids 1,2 --block-size 32 --device cpu", "eng");
    /* within the limits, the engine's values are the defaults */
    char *out;
    assert_int_equal(run(&out, "\"$K\" bench \"$S/eng\" --throughput --num-requests 3 "
                               "--input-len 8 --output-len 2 --warmup 0 --device cpu"),
                     0);
    assert_non_null(strstr(out, "batch 2, 64 tokens/step"));
    free(out);
}

static void build_errors(void **state)
{
    (void)state;
    expect_error(1, "lower --max-seq-len (KV cache",
                 "\"$K\" build \"$S/%s\" -o \"$S/big\" --max-batch-size 64 --max-seq-len 8192 "
                 "--gpu-memory 1GiB",
                 "ckpt");
    expect_error(1, "the engine needs 1.2 GiB, 1.0 GiB available (--gpu-memory)",
                 "\"$K\" build \"$S/%s\" -o \"$S/big\" --max-batch-size 64 --max-seq-len 8192 "
                 "--gpu-memory 1GiB",
                 "ckpt");
    assert_nothing_named("big");
    expect_error(1, "the weights alone need",
                 "\"$K\" build \"$S/%s\" -o \"$S/big\" --gpu-memory 700MiB", "ckpt");
    assert_nothing_named("big");
    /* an unset batch size becomes the most that fits */
    char *out;
    assert_int_equal(run(&out, "\"$K\" build \"$S/ckpt\" -o \"$S/fit\" --max-seq-len 8192 "
                               "--gpu-memory 1GiB"),
                     0);
    assert_non_null(strstr(out, "(the most that fit)"));
    free(out);
    json_t *j = load_json("fit", "engine.json");
    json_t *plan = json_object_get(j, "memory_plan");
    assert_true(json_integer_value(json_object_get(plan, "total")) <= (1ll << 30));
    assert_true(json_integer_value(json_object_get(json_object_get(j, "build"), "max_batch_size")) >
                1);
    json_decref(j);
    expect_error(1, "must be less than --max-seq-len",
                 "\"$K\" build \"$S/%s\" -o \"$S/x\" --max-input-len 64 --max-seq-len 64", "ckpt");
    expect_error(1, "exceeds the model's context",
                 "\"$K\" build \"$S/%s\" -o \"$S/x\" --max-seq-len 200000", "ckpt");
    expect_error(1, "must be at least --max-batch-size",
                 "\"$K\" build \"$S/%s\" -o \"$S/x\" --max-batch-size 8 --max-num-tokens 4",
                 "ckpt");
    expect_error(2, "bad value '12XB' for --gpu-memory",
                 "\"$K\" build \"$S/%s\" -o \"$S/x\" --gpu-memory 12XB", "ckpt");
    assert_nothing_named("x");
}

static void interrupted_writes(void **state)
{
    (void)state;
    /* SIGINT once 1 MB of weights is written: exit 130, nothing left */
    expect_error(130, "interrupted; ",
                 "KILN_TEST_INTERRUPT_AT_BYTES=1000000 \"$K\" convert \"$T\" -o \"$S/%s\"", "int");
    assert_nothing_named("int");
    expect_error(130, "interrupted; ",
                 "KILN_TEST_INTERRUPT_AT_BYTES=1000000 \"$K\" build \"$S/ckpt\" -o \"$S/%s\" "
                 "--max-batch-size 1 --max-seq-len 64",
                 "int");
    assert_nothing_named("int");
    /* replacing with --force: the old folder stays whole */
    ok("cp -r \"$S/ckpt\" \"$S/keep\"");
    expect_error(130, "interrupted; ",
                 "KILN_TEST_INTERRUPT_AT_BYTES=1000000 \"$K\" convert \"$T\" -o \"$S/%s\" --force",
                 "keep");
    ok("cmp \"$S/keep/model.safetensors\" \"$S/ckpt/model.safetensors\" && cmp "
       "\"$S/keep/kiln.json\" \"$S/ckpt/kiln.json\"");
    assert_false(path_exists("%s/%s", "keep.old"));
}

static const char *tokenizer_dir(void)
{
    static char dir[4096];
    const char *t = getenv("KILN_TOKENIZERS");
    if (t && *t)
        snprintf(dir, sizeof dir, "%s/llama3_1", t);
    else
        snprintf(dir, sizeof dir, "%s/tokenizers/llama3_1", getenv("KILN_BINARY_DIR"));
    return dir;
}

static void quantize_bf16(void **state)
{
    (void)state;
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "\"$K\" mkmodel \"$S/bf16\" --preset tiny --dtype bf16 --seed 3 --tokenizer \"%s\"",
             tokenizer_dir());
    ok(cmd);
    ok("\"$K\" convert \"$S/bf16\" -o \"$S/q\" --fp8 --fp8-kv-cache --calib-tokens 200");
    json_t *j = load_json("q", "kiln.json");
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(j, "calibration"), "tokens")), 200);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(j, "kv_cache"), "scales")), "calibrated");
    json_decref(j);
    struct kiln_model *src = load("bf16"), *q = load("q");
    kiln_numeric_init();
    for (int i = 0; i < src->cfg.n_layers; i++) {
        const struct kiln_linear *a[4] = {&src->layers[i].qkv, &src->layers[i].o,
                                          &src->layers[i].gate_up, &src->layers[i].down};
        const struct kiln_linear *b[4] = {&q->layers[i].qkv, &q->layers[i].o, &q->layers[i].gate_up,
                                          &q->layers[i].down};
        for (int k = 0; k < 4; k++) {
            size_t n = (size_t)(a[k]->out * a[k]->in);
            float *w = malloc(n * sizeof *w);
            uint8_t *codes = malloc(n);
            kiln_linear_f32_rows(a[k], 0, a[k]->out, w);
            kiln_linear_fp8_rows(b[k], 0, b[k]->out, codes);
            float amax = 0;
            for (size_t e = 0; e < n; e++) amax = fmaxf(amax, fabsf(w[e]));
            float scale = amax / KILN_FP8_MAX;
            assert_true(b[k]->fp8 && b[k]->weight_scale == scale);
            for (size_t e = 0; e < n; e++)
                if (codes[e] != kiln_f32_to_e4m3(w[e] / scale))
                    fail_msg("layer %d linear %d element %zu: code %d, expected %d", i, k, e,
                             codes[e], kiln_f32_to_e4m3(w[e] / scale));
            assert_true(isfinite(b[k]->input_scale) && b[k]->input_scale > 0 &&
                        b[k]->input_scale != 1.0f);
            free(w);
            free(codes);
        }
        const struct kiln_layer_weights *w = &q->layers[i];
        assert_true(w->k_scale > 0 && w->k_scale != 1.0f && w->v_scale > 0 && w->v_scale != 1.0f);
    }
    assert_true(q->cfg.fp8 && q->cfg.fp8_kv_cache);
    assert_false(q->lm_head.fp8);
    kiln_model_free(src);
    kiln_model_free(q);
    /* the quantized checkpoint builds (FP8 KV by default now) and runs */
    ok("\"$K\" build \"$S/q\" -o \"$S/q_eng\" --max-batch-size 1 --max-seq-len 64 --device cpu");
    j = load_json("q_eng", "engine.json");
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "build"), "kv_dtype")),
                        "fp8");
    json_decref(j);
    char *a = generate("\"$S/q\"", ""), *b = generate("\"$S/q_eng\"", "");
    assert_string_equal(a, b);
    free(a);
    free(b);
}

static void kv_scales(void **state)
{
    (void)state;
    /* taken from the checkpoint when it has them */
    ok("\"$K\" mkmodel \"$S/fp8kv\" --preset tiny --fp8-kv-cache --seed 4");
    ok("\"$K\" convert \"$S/fp8kv\" -o \"$S/kv\" --fp8-kv-cache");
    json_t *j = load_json("kv", "kiln.json");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(j, "kv_cache"), "scales")), "checkpoint");
    json_decref(j);
    struct kiln_model *a = load("fp8kv"), *b = load("kv");
    for (int i = 0; i < a->cfg.n_layers; i++) {
        assert_true(a->layers[i].k_scale != 1.0f);
        assert_true(a->layers[i].k_scale == b->layers[i].k_scale);
        assert_true(a->layers[i].v_scale == b->layers[i].v_scale);
    }
    kiln_model_free(a);
    kiln_model_free(b);
    /* no scales and no tokenizer to calibrate with: 1.0 and a warning */
    ok("\"$K\" mkmodel \"$S/notok\" --preset tiny --seed 5");
    char *out;
    assert_int_equal(run(&out, "\"$K\" convert \"$S/notok\" -o \"$S/notok_kv\" --fp8-kv-cache"), 0);
    assert_non_null(strstr(out, "--fp8-kv-cache: no k/v scales in"));
    assert_non_null(strstr(out, "using 1.0"));
    free(out);
    b = load("notok_kv");
    assert_true(b->cfg.fp8_kv_cache && b->layers[0].k_scale == 1.0f);
    kiln_model_free(b);
    /* --fp8 cannot do without a tokenizer */
    ok("\"$K\" mkmodel \"$S/notok_bf16\" --preset tiny --dtype bf16 --seed 5");
    expect_error(1, "calibration needs", "\"$K\" convert \"$S/%s\" -o \"$S/x\" --fp8",
                 "notok_bf16");
    assert_nothing_named("x");
}

int main(int argc, char **argv)
{
    if (argc != 2 || !getenv("KILN_BIN") || !getenv("KILN_BINARY_DIR")) {
        fprintf(stderr,
                "usage: test_pipeline_cli TINY_MODEL_DIR (env KILN_BIN, KILN_BINARY_DIR)\n");
        return 2;
    }
    tiny = argv[1];
    snprintf(scratch, sizeof scratch, "%s/pipeline-test", getenv("KILN_BINARY_DIR"));
    tmpdir_remove(scratch);
    mkdir(scratch, 0755);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(convert_fp8_checkpoint),
        cmocka_unit_test(build_and_generate_identical),
        cmocka_unit_test(engine_loads_in_kernel_order),
        cmocka_unit_test(engine_file_errors),
        cmocka_unit_test(engine_limits),
        cmocka_unit_test(build_errors),
        cmocka_unit_test(interrupted_writes),
        cmocka_unit_test(quantize_bf16),
        cmocka_unit_test(kv_scales),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    if (!failed) tmpdir_remove(scratch);
    return failed;
}
