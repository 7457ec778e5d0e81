/* kiln convert HF_DIR -o CKPT: a Hugging Face checkpoint -> a kiln checkpoint (model/format.h).
 *
 * What it does, in order:
 *   1. loads and validates HF_DIR (kiln_model_load: every tensor's dtype and shape);
 *   2. --fp8 on an unquantized checkpoint: quantizes every layer linear to FP8 with a per-tensor
 *      weight scale amax / 448 over the fused group (q|k|v, gate|up: one scale, one rounding from
 *      the original weights); the lm_head and embedding stay as they are, as in ModelOpt exports;
 *   3. calibrates on the CPU what is missing: static activation scales (--fp8) and FP8 KV-cache
 *      scales (--fp8-kv-cache without k/v scales in the checkpoint), amax / 448 over a built-in
 *      text (or --calib-text) tokenized with the checkpoint's tokenizer;
 *   4. writes CKPT.tmp-PID -- fused weights (an FP8 checkpoint's groups requantized to their
 *      largest scale, exactly as kiln_linear_fp8_rows does at load), config, generation config,
 *      tokenizer files, hf_quant_config.json under kiln's names, kiln.json -- and renames it.
 *
 * Cost: step 4 streams the weights once (about 9 GB for Llama-3.1-8B FP8, disk-bound); step 3
 * runs the model on the CPU over --calib-tokens tokens (minutes for an 8B model). */
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/cpu/cpu.h"
#include "cli.h"
#include "common.h"
#include "core/file.h"
#include "core/log.h"
#include "core/thread.h"
#include "model/format.h"
#include "model/model.h"
#include "pipeline.h"
#include "tokenizer/tokenizer.h"

#define TEXT_LIMIT (64u << 20)

struct convert_args {
    const char *src, *out;
    bool fp8, fp8_kv, force;
    const char *calib_text;
    int calib_tokens;
};

/* The default calibration text: prose, dialogue, code, data and several languages, so that
 * the activation ranges it records are those of ordinary use rather than of one register. */
static const char builtin_text[] =
    "The river rose slowly through the night, and by morning the low fields along the valley "
    "were silver with standing water. Farmers who had worked the land for generations read the "
    "signs early: the swallows flew low, the wind turned south, and the old stone marker by the "
    "bridge disappeared under the current before noon. Nobody panicked. They moved the animals "
    "to higher ground, stacked sandbags around the school, and waited.\n\n"
    "\"Do you think it will reach the mill?\" asked Maria.\n"
    "\"Not this year,\" her grandfather said, pointing at a line scratched into the doorframe. "
    "\"In 1952 it came up to here. We are still a meter short of that.\"\n\n"
    "Photosynthesis converts light energy into chemical energy: carbon dioxide and water become "
    "glucose and oxygen, 6 CO2 + 6 H2O -> C6H12O6 + 6 O2. The reaction happens in the "
    "chloroplasts, where chlorophyll absorbs mostly blue and red light and reflects green.\n\n"
    "def moving_average(values, window):\n"
    "    \"\"\"Return the running mean of values over the given window size.\"\"\"\n"
    "    if window <= 0:\n"
    "        raise ValueError(\"window must be positive\")\n"
    "    total, out = 0.0, []\n"
    "    for i, v in enumerate(values):\n"
    "        total += v\n"
    "        if i >= window:\n"
    "            total -= values[i - window]\n"
    "        out.append(total / min(i + 1, window))\n"
    "    return out\n\n"
    "SELECT city, COUNT(*) AS orders, SUM(amount) AS revenue FROM sales WHERE year = 2024 "
    "GROUP BY city ORDER BY revenue DESC LIMIT 10;\n\n"
    "{\"id\": 4711, \"name\": \"sensor-12\", \"readings\": [21.5, 21.7, 22.0, 21.9], "
    "\"unit\": \"celsius\", \"ok\": true}\n\n"
    "Quarterly results: revenue grew 14.2% to $3.87 billion, operating margin was 21%, and the "
    "company raised its full-year guidance from $14.5-15.0 billion to $15.2-15.6 billion.\n\n"
    "User: Can you explain what a hash table is in two sentences?\n"
    "Assistant: A hash table stores key-value pairs in an array, using a hash function to turn "
    "each key into an index. Lookups, insertions and deletions take constant time on average, as "
    "long as collisions are handled and the table is resized when it gets too full.\n\n"
    "La ville se réveillait lentement ; les boulangers avaient déjà allumé leurs fours.\n"
    "Der Zug nach München hatte zwanzig Minuten Verspätung, aber niemand beschwerte sich.\n"
    "El mercado abre a las siete y cierra cuando se acaba el pescado.\n"
    "春天来了，山上的花都开了，孩子们在田野里奔跑。\n"
    "明日の会議は午後三時から始まります。資料を事前に確認してください。\n"
    "Сегодня в Москве ожидается небольшой снег и температура около нуля.\n\n"
    "Theorem. For every integer n >= 1, the sum 1 + 2 + ... + n equals n(n + 1)/2. Proof by "
    "induction: the case n = 1 holds, and if it holds for n then adding n + 1 gives "
    "n(n + 1)/2 + (n + 1) = (n + 1)(n + 2)/2.\n";

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: kiln convert HF_DIR -o CKPT [options]\n"
        "Writes a kiln checkpoint: q|k|v and gate|up fused (FP8 groups requantized to their\n"
        "largest weight scale) with their scales, norms, embedding and lm_head as they are,\n"
        "config, generation config and tokenizer files, and kiln.json. Then: kiln build CKPT.\n"
        "  -o, --output CKPT     the folder to write (replaced only with --force)\n"
        "  --fp8                 quantize a BF16/FP16/F32 checkpoint: per-tensor weight\n"
        "                        scales (amax / 448) and static activation scales calibrated\n"
        "                        on the CPU (an FP8 checkpoint keeps its weights and scales)\n"
        "  --fp8-kv-cache        FP8 KV cache: k/v scales from the checkpoint, else calibrated,\n"
        "                        else 1.0 with a warning\n"
        "  --calib-text FILE     calibration text (default: a built-in mixed text), tokenized\n"
        "                        with HF_DIR's tokenizer\n"
        "  --calib-tokens N      use at most N tokens of it (default 512)\n"
        "  --force               replace CKPT if it exists\n");
}

enum { O_FP8 = 256, O_KV, O_TEXT, O_NTOK, O_FORCE, O_HELP };

static const struct option opts[] = {{"output", required_argument, 0, 'o'},
                                     {"fp8", no_argument, 0, O_FP8},
                                     {"fp8-kv-cache", no_argument, 0, O_KV},
                                     {"calib-text", required_argument, 0, O_TEXT},
                                     {"calib-tokens", required_argument, 0, O_NTOK},
                                     {"force", no_argument, 0, O_FORCE},
                                     {"help", no_argument, 0, O_HELP},
                                     {0, 0, 0, 0}};

static bool option(int id, const char *arg, void *ctx)
{
    struct convert_args *a = ctx;
    switch (id) {
    case 'o':
        a->out = arg;
        return true;
    case O_FP8:
        a->fp8 = true;
        return true;
    case O_KV:
        a->fp8_kv = true;
        return true;
    case O_TEXT:
        a->calib_text = arg;
        return true;
    case O_NTOK:
        return kiln_cli_int(arg, 1, 1 << 20, &a->calib_tokens);
    case O_FORCE:
        a->force = true;
        return true;
    }
    return false;
}

static int parse(int argc, char **argv, struct convert_args *a)
{
    static const struct kiln_cli_command cmd = {"convert", "o:h", opts, usage, option};
    *a = (struct convert_args){.calib_tokens = 512};
    int rc = kiln_cli_parse(&cmd, argc, argv, a, NULL, &a->src);
    if (rc == KILN_CLI_GO_ON && !a->out) {
        usage(stderr);
        return 2;
    }
    return rc;
}

/* ---- quantization (--fp8) ---- */

struct quant_job {
    const struct kiln_linear *src;
    uint8_t *dst;    /* (out, in) codes */
    float *row_amax; /* (out,) */
    float scale;     /* pass 2 */
    bool write;      /* pass 1: amax, pass 2: codes */
};

static void quant_rows(void *ctx, size_t r0, size_t r1)
{
    const struct quant_job *j = ctx;
    int64_t in = j->src->in;
    float *row = malloc((size_t)in * sizeof *row);
    KILN_ASSERT(row);
    for (size_t r = r0; r < r1; r++) {
        kiln_linear_f32_rows(j->src, (int64_t)r, (int64_t)r + 1, row);
        if (!j->write) {
            float m = 0;
            for (int64_t i = 0; i < in; i++) m = fmaxf(m, fabsf(row[i]));
            j->row_amax[r] = m;
            continue;
        }
        uint8_t *d = j->dst + r * (size_t)in;
        for (int64_t i = 0; i < in; i++) d[i] = kiln_f32_to_e4m3(row[i] / j->scale);
    }
    free(row);
}

/* dst = src quantized as one tensor: weight_scale = amax / 448 over every part, codes
 * sat_e4m3(w / weight_scale); the input scale is set by calibration. */
static enum kiln_status quantize_linear(struct kiln_model *qm, const struct kiln_linear *src,
                                        struct kiln_linear *dst, struct kiln_pool *pool,
                                        struct kiln_error *err)
{
    size_t rows = (size_t)src->out, in = (size_t)src->in;
    struct quant_job j = {src, malloc(rows * in), malloc(rows * sizeof(float)), 0, false};
    if (!j.dst || !j.row_amax) {
        free(j.dst);
        free(j.row_amax);
        return kiln_errorf(err, KILN_ERR_NOMEM, "--fp8: out of memory for %zu x %zu weights", rows,
                           in);
    }
    kiln_parallel_for(pool, rows, quant_rows, &j);
    float amax = 0;
    for (size_t r = 0; r < rows; r++) amax = fmaxf(amax, j.row_amax[r]);
    free(j.row_amax);
    j.row_amax = NULL;
    if (!isfinite(amax)) {
        free(j.dst);
        return kiln_errorf(err, KILN_ERR_INVALID, "--fp8: a weight is not finite");
    }
    float scale = amax > 0 ? amax / KILN_FP8_MAX : 1.0f;
    /* w / s, not w * (1 / s) (which can differ in the last bit): ModelOpt divides */
    j.scale = scale;
    j.write = true;
    kiln_parallel_for(pool, rows, quant_rows, &j);
    enum kiln_status st = kiln_model_own(qm, j.dst, err);
    if (st) return st;
    *dst = (struct kiln_linear){.out = src->out, .in = src->in, .n_parts = 1, .fp8 = true};
    dst->part[0] = (struct kiln_tensor){
        .dtype = KILN_DTYPE_F8E4M3, .ndim = 2, .shape = {src->out, src->in}, .data = j.dst};
    dst->part_weight_scale[0] = dst->weight_scale = scale;
    dst->part_input_scale[0] = dst->input_scale = 1.0f;
    return KILN_OK;
}

static enum kiln_status quantize_model(const struct kiln_model *src, struct kiln_model **out,
                                       struct kiln_error *err)
{
    *out = NULL;
    struct kiln_model *qm = calloc(1, sizeof *qm);
    struct kiln_pool *pool = kiln_pool_create(0);
    enum kiln_status st = KILN_OK;
    if (!qm || !pool || !(qm->layers = calloc((size_t)src->cfg.n_layers, sizeof *qm->layers)))
        st = kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    if (qm) {
        /* views of src's tensors; only the quantized weights are qm's own */
        qm->cfg = src->cfg;
        qm->cfg.exclude_modules = NULL;
        qm->cfg.n_exclude = 0;
        qm->cfg.fp8 = true;
        qm->embed = src->embed;
        qm->norm = src->norm;
        qm->lm_head = src->lm_head;
        snprintf(qm->dir, sizeof qm->dir, "%s", src->dir);
    }
    for (int i = 0; !st && i < src->cfg.n_layers; i++) {
        const struct kiln_layer_weights *s = &src->layers[i];
        struct kiln_layer_weights *d = &qm->layers[i];
        d->attn_norm = s->attn_norm;
        d->mlp_norm = s->mlp_norm;
        d->k_scale = s->k_scale;
        d->v_scale = s->v_scale;
        if (!st) st = quantize_linear(qm, &s->qkv, &d->qkv, pool, err);
        if (!st) st = quantize_linear(qm, &s->o, &d->o, pool, err);
        if (!st) st = quantize_linear(qm, &s->gate_up, &d->gate_up, pool, err);
        if (!st) st = quantize_linear(qm, &s->down, &d->down, pool, err);
        if (st) kiln_error_prefix(err, "layer %d", i);
    }
    kiln_pool_free(pool);
    if (st) {
        kiln_model_free(qm);
        return st;
    }
    *out = qm;
    return KILN_OK;
}

/* ---- calibration ---- */

static enum kiln_status calib_ids(const struct convert_args *a, const struct kiln_model *m,
                                  int32_t **ids, int *n, struct kiln_error *err)
{
    struct kiln_tokenizer *tok = NULL;
    char *text = NULL;
    size_t len = 0;
    size_t count = 0;
    *ids = NULL;
    enum kiln_status st = kiln_tokenizer_load(a->src, &tok, err);
    if (st) kiln_error_prefix(err, "calibration needs %s's tokenizer", a->src);
    if (!st && a->calib_text) st = kiln_file_read(a->calib_text, TEXT_LIMIT, &text, &len, err);
    if (!st)
        st = kiln_tokenizer_encode(tok, text ? text : builtin_text,
                                   text ? len : strlen(builtin_text), true, ids, &count, err);
    if (!st && count < 2)
        st = kiln_errorf(err, KILN_ERR_INVALID, "--calib-text %s: too short (%zu tokens)",
                         a->calib_text, count);
    for (size_t i = 0; !st && i < count; i++)
        if ((*ids)[i] < 0 || (*ids)[i] >= m->cfg.vocab_size)
            st = kiln_errorf(err, KILN_ERR_INVALID,
                             "the tokenizer gives id %d, outside the model's vocabulary of %d",
                             (*ids)[i], m->cfg.vocab_size);
    *n = (int)(count < (size_t)a->calib_tokens ? count : (size_t)a->calib_tokens);
    free(text);
    kiln_tokenizer_free(tok);
    if (st) {
        free(*ids);
        *ids = NULL;
    }
    return st;
}

/* Runs the CPU calibration pass over ids and sets static input scales (inputs) and k/v scales
 * (kv) of cm to amax / 448. */
static enum kiln_status calibrate(struct kiln_model *cm, const int32_t *ids, int n, bool inputs,
                                  bool kv, struct kiln_error *err)
{
    int L = cm->cfg.n_layers;
    float *amax = malloc((size_t)L * 4 * sizeof *amax);
    float *kv_amax = malloc((size_t)L * 2 * sizeof *kv_amax);
    enum kiln_status st =
        amax && kv_amax ? KILN_OK : kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    if (!st) st = kiln_cpu_calibrate(cm, ids, n, amax, kv ? kv_amax : NULL, err);
    static const char *const group[4] = {"q|k|v", "o_proj", "gate|up", "down_proj"};
    for (int l = 0; !st && inputs && l < L; l++) {
        struct kiln_layer_weights *w = &cm->layers[l];
        struct kiln_linear *lin[4] = {&w->qkv, &w->o, &w->gate_up, &w->down};
        for (int g = 0; !st && g < 4; g++) {
            float a = amax[l * 4 + g];
            if (!(a > 0) || !isfinite(a)) {
                st = kiln_errorf(err, KILN_ERR_INVALID,
                                 "calibration: layer %d %s input amax is %g: the model's "
                                 "activations are zero or not finite on this text",
                                 l, group[g], a);
                break;
            }
            lin[g]->input_scale = lin[g]->part_input_scale[0] = a / KILN_FP8_MAX;
        }
    }
    for (int l = 0; !st && kv && l < L; l++) {
        float *dst[2] = {&cm->layers[l].k_scale, &cm->layers[l].v_scale};
        for (int j = 0; j < 2; j++) {
            float a = kv_amax[l * 2 + j];
            *dst[j] = a > 0 && isfinite(a) ? a / KILN_FP8_MAX : 1.0f;
            if (*dst[j] == 1.0f && !(a > 0))
                KILN_WARN("calibration: layer %d %s cache amax is %g: scale 1.0", l, j ? "v" : "k",
                          a);
        }
    }
    free(amax);
    free(kv_amax);
    return st;
}

/* ---- the checkpoint ---- */

static bool has_kv_scales(const struct kiln_model *m)
{
    return m->cfg.n_layers > 0 &&
           (kiln_st_find(&m->st, "model.layers.0.self_attn.k_proj.k_scale") ||
            kiln_st_find(&m->st, "model.layers.0.self_attn.k_scale"));
}

/* Fused FP8 groups whose parts had different weight scales (requantized to the largest). */
static int requantized_groups(const struct kiln_model *m, int *groups)
{
    int n = 0;
    *groups = 0;
    for (int i = 0; i < m->cfg.n_layers; i++) {
        const struct kiln_linear *g[2] = {&m->layers[i].qkv, &m->layers[i].gate_up};
        for (int k = 0; k < 2; k++) {
            if (!g[k]->fp8 || g[k]->n_parts < 2) continue;
            (*groups)++;
            for (int p = 0; p < g[k]->n_parts; p++)
                if (g[k]->part_weight_scale[p] != g[k]->weight_scale) {
                    n++;
                    break;
                }
        }
    }
    return n;
}

static void utc_now(char *buf, size_t cap)
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

struct convert_report {
    const char *method, *kv_scales;
    int requantized, groups;
    int calib_tokens;
    double calib_seconds;
};

static char *checkpoint_json(const struct convert_args *a, const struct kiln_model *m,
                             const struct convert_report *r, const struct kiln_cli_output *out)
{
    char src[PATH_MAX], created[32];
    if (!realpath(a->src, src)) snprintf(src, sizeof src, "%s", a->src);
    utc_now(created, sizeof created);
    json_t *files = json_array();
    for (int i = 0; i < out->n_files; i++)
        json_array_append_new(files, json_pack("{s:s,s:I}", "name", out->files[i].name, "bytes",
                                               (json_int_t)out->files[i].bytes));
    json_t *calib =
        r->calib_tokens
            ? json_pack("{s:s,s:i,s:f}", "text", a->calib_text ? a->calib_text : "built-in",
                        "tokens", r->calib_tokens, "seconds", r->calib_seconds)
            : json_null();
    json_t *kv =
        r->kv_scales ? json_pack("{s:s,s:s}", "dtype", "fp8", "scales", r->kv_scales) : json_null();
    json_t *root =
        json_pack("{s:s,s:i,s:s,s:s,s:s,s:s,s:{s:s,s:i,s:i},s:o,s:o,s:[s,s],s:o}", "format",
                  "kiln-checkpoint", "format_version", KILN_CHECKPOINT_VERSION, "kiln_version",
                  KILN_VERSION, "source", src, "created", created, "weights",
                  m->layers[0].qkv.fp8 ? "fp8" : kiln_dtype_name(m->layers[0].qkv.part[0].dtype),
                  "quantization", "method", r->method, "requantized_groups", r->requantized,
                  "fused_groups", r->groups, "calibration", calib, "kv_cache", kv, "fused",
                  KILN_FUSED_QKV, KILN_FUSED_GATE_UP, "files", files);
    char *s = root ? json_dumps(root, JSON_INDENT(2)) : NULL;
    json_decref(root);
    return s;
}

static enum kiln_status convert(const struct convert_args *a, struct kiln_error *err)
{
    double t0 = kiln_now();
    struct kiln_model *m = NULL, *qm = NULL;
    struct kiln_cli_output out = {0};
    struct convert_report r = {.method = "none (unquantized)"};
    int32_t *ids = NULL;
    int n_ids = 0;
    enum kiln_status st = kiln_cli_check_output(a->src, a->out, a->force, err);
    if (!st) st = kiln_model_load(a->src, &m, err);
    if (!st && m->format != KILN_FORMAT_HF)
        st = kiln_errorf(err, KILN_ERR_INVALID, "%s is a kiln %s already: pass it to `kiln %s`",
                         a->src, m->format == KILN_FORMAT_ENGINE ? "engine" : "checkpoint",
                         m->format == KILN_FORMAT_ENGINE ? "serve" : "build");
    if (st) goto done;

    bool quantize = a->fp8 && !m->layers[0].qkv.fp8;
    bool kv_fp8 = a->fp8_kv || m->cfg.fp8_kv_cache, kv_in_ckpt = has_kv_scales(m);
    bool kv_calibrate = kv_fp8 && !kv_in_ckpt;
    if (m->layers[0].qkv.fp8) r.method = "checkpoint (ModelOpt FP8): weights and scales kept";
    if (a->fp8 && !quantize)
        KILN_INFO("%s is FP8 already: its weights and scales are kept", a->src);
    r.requantized = requantized_groups(m, &r.groups);
    if (kv_fp8) r.kv_scales = kv_in_ckpt ? "checkpoint" : "calibrated";
    if (quantize) {
        double tq = kiln_now();
        r.method = "kiln convert --fp8: per-tensor weight scales amax/448, static input scales "
                   "calibrated on the CPU";
        if ((st = quantize_model(m, &qm, err))) goto done;
        KILN_INFO("quantized %d layers to FP8 in %.1f s", m->cfg.n_layers, kiln_now() - tq);
    }
    struct kiln_model *om = qm ? qm : m; /* the model written */
    if (quantize || kv_calibrate) {
        st = calib_ids(a, m, &ids, &n_ids, err);
        if (st && !quantize) { /* k/v scales only: fall back to 1.0 */
            KILN_WARN("--fp8-kv-cache: no k/v scales in %s and no calibration (%s): using 1.0",
                      a->src, err->msg);
            r.kv_scales = "1.0 (none in the checkpoint, no calibration possible)";
            kv_calibrate = false;
            st = KILN_OK;
        }
        if (st) goto done;
    }
    if (quantize || kv_calibrate) {
        double tc = kiln_now();
        KILN_INFO("calibrating %s%s%s on %d tokens (CPU)", quantize ? "activation scales" : "",
                  quantize && kv_calibrate ? " and " : "", kv_calibrate ? "k/v cache scales" : "",
                  n_ids);
        if ((st = calibrate(om, ids, n_ids, quantize, kv_calibrate, err))) goto done;
        r.calib_tokens = n_ids;
        r.calib_seconds = kiln_now() - tc;
        KILN_INFO("calibrated in %.1f s", r.calib_seconds);
    }
    if ((st = kiln_outdir_begin(&out.dir, a->out, a->force, err))) goto done;
    kiln_cli_catch_interrupts();
    struct kiln_fused_options fo = {.kv_scales = kv_fp8};
    st = kiln_cli_write_model(om, a->src, &fo, kv_fp8, &out, err);
    if (!st) {
        char *text = checkpoint_json(a, om, &r, &out);
        st = kiln_cli_write_text(&out, KILN_CHECKPOINT_JSON, text, false, err);
        free(text);
    }
    if (!st && kiln_cli_interrupted()) st = kiln_errorf(err, KILN_ERR_IO, "interrupted");
    if (!st) st = kiln_outdir_commit(&out.dir, err);
    if (!st)
        fprintf(stderr,
                "kiln convert: wrote %s in %.1f s: %.2f GB of weights (%s), %d of %d fused FP8 "
                "groups requantized%s%s\n",
                out.dir.out, kiln_now() - t0, (double)out.bytes / 1e9,
                om->layers[0].qkv.fp8 ? "fp8" : "unquantized", r.requantized, r.groups,
                r.kv_scales ? ", FP8 KV cache scales: " : "", r.kv_scales ? r.kv_scales : "");
done:
    kiln_outdir_abort(&out.dir);
    free(ids);
    kiln_model_free(qm);
    kiln_model_free(m);
    return st;
}

int kiln_cmd_convert(int argc, char **argv)
{
    struct convert_args a;
    int rc = parse(argc, argv, &a);
    if (rc != KILN_CLI_GO_ON) return rc;
    struct kiln_error err = {0};
    return kiln_cli_pipeline_exit("convert", a.out, convert(&a, &err), &err);
}
