/* engine.json and kiln.json (format.h): parsing with errors that say what to do, writing,
 * verification of an engine folder's files, and the lookups the runtime makes in it. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backend/cuda/kernels.h"
#include "core/file.h"
#include "core/log.h"
#include "format.h"

#define META_LIMIT (64u << 20)
/* Files this large are verified by every core. */
#define PARALLEL_HASH_BYTES (256u << 20)

const char *kiln_row_order_name(int order)
{
    switch (order) {
    case KILN_ROWS_PLAIN:
        return "natural";
    case KILN_ROWS_QKV_PAIRED:
        return "tile-paired";
    case KILN_ROWS_GU_INTERLEAVED:
        return "tile-interleaved";
    default:
        return "unknown";
    }
}

static const char *kv_name(enum kiln_dtype t)
{
    return t == KILN_DTYPE_F8E4M3 ? "fp8" : t == KILN_DTYPE_BF16 ? "bf16" : "f32";
}

/* ---- kiln.json ---- */

static json_t *read_json(const char *dir, const char *name, struct kiln_error *err)
{
    char path[4096], *text;
    size_t len;
    if (kiln_path_join(path, sizeof path, dir, name, err) ||
        kiln_file_read(path, META_LIMIT, &text, &len, err))
        return NULL;
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    free(text);
    if (!root)
        kiln_errorf(err, KILN_ERR_FORMAT, "%s: line %d column %d: %s", path, je.line, je.column,
                    je.text);
    else if (!json_is_object(root)) {
        json_decref(root);
        root = NULL;
        kiln_errorf(err, KILN_ERR_FORMAT, "%s: not a JSON object", path);
    }
    return root;
}

enum kiln_status kiln_checkpoint_check(const char *dir, struct kiln_error *err)
{
    json_t *root = read_json(dir, KILN_CHECKPOINT_JSON, err);
    if (!root) return err ? err->code : KILN_ERR_FORMAT;
    const char *fmt = json_string_value(json_object_get(root, "format"));
    json_t *v = json_object_get(root, "format_version");
    enum kiln_status st = KILN_OK;
    if (!fmt || strcmp(fmt, "kiln-checkpoint"))
        st = kiln_errorf(err, KILN_ERR_FORMAT, "%s/%s: \"format\" is not \"kiln-checkpoint\"", dir,
                         KILN_CHECKPOINT_JSON);
    else if (!json_is_integer(v) || json_integer_value(v) != KILN_CHECKPOINT_VERSION)
        st = kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                         "%s is a kiln checkpoint of format version %" JSON_INTEGER_FORMAT
                         "; this kiln reads version %d: convert it again with `kiln convert "
                         "HF_DIR -o %s --force`",
                         dir, json_is_integer(v) ? json_integer_value(v) : -1,
                         KILN_CHECKPOINT_VERSION, dir);
    json_decref(root);
    return st;
}

/* ---- engine.json: parsing ---- */

struct reader {
    const char *where; /* "engine.json build" ... for messages */
    struct kiln_error *err;
    enum kiln_status st;
};

static json_t *member(struct reader *r, json_t *obj, const char *key, json_type type)
{
    if (r->st) return NULL;
    json_t *v = json_object_get(obj, key);
    if (!v || json_typeof(v) != type) {
        static const char *const types[] = {"an object", "a list",    "a string",  "an integer",
                                            "a number",  "a boolean", "a boolean", "null"};
        r->st = kiln_errorf(r->err, KILN_ERR_FORMAT, "engine.json: %s%s%s must be %s", r->where,
                            *r->where ? "." : "", key, types[type]);
        return NULL;
    }
    return v;
}

static int get_int(struct reader *r, json_t *obj, const char *key, int lo, int hi)
{
    json_t *v = member(r, obj, key, JSON_INTEGER);
    if (!v) return 0;
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi) {
        r->st = kiln_errorf(r->err, KILN_ERR_FORMAT,
                            "engine.json: %s.%s = %" JSON_INTEGER_FORMAT " is outside [%d, %d]",
                            r->where, key, x, lo, hi);
        return 0;
    }
    return (int)x;
}

static uint64_t get_u64(struct reader *r, json_t *obj, const char *key)
{
    json_t *v = member(r, obj, key, JSON_INTEGER);
    if (!v) return 0;
    if (json_integer_value(v) < 0) {
        r->st =
            kiln_errorf(r->err, KILN_ERR_FORMAT, "engine.json: %s.%s is negative", r->where, key);
        return 0;
    }
    return (uint64_t)json_integer_value(v);
}

/* A time in microseconds: a number in [0, 1e9]. */
static float get_us(struct reader *r, json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    double x = json_is_number(v) ? json_number_value(v) : -1;
    if (!r->st && !(x >= 0 && x <= 1e9))
        r->st = kiln_errorf(r->err, KILN_ERR_FORMAT,
                            "engine.json: %s.%s must be a time in microseconds", r->where, key);
    return r->st ? 0 : (float)x;
}

static const char *get_str(struct reader *r, json_t *obj, const char *key)
{
    json_t *v = member(r, obj, key, JSON_STRING);
    return v ? json_string_value(v) : "";
}

static int get_choice(struct reader *r, json_t *obj, const char *key, const char *const *names,
                      int n)
{
    const char *s = get_str(r, obj, key);
    for (int i = 0; !r->st && i < n; i++)
        if (!strcmp(s, names[i])) return i;
    if (!r->st)
        r->st = kiln_errorf(r->err, KILN_ERR_FORMAT, "engine.json: %s.%s: unknown value '%.40s'",
                            r->where, key, s);
    return 0;
}

/* "0123456789abcdef" -> value; false unless exactly 16 hex digits */
static bool parse_hex64(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return false;
        v = v << 4 | (uint64_t)d;
    }
    *out = v;
    return s[16] == 0;
}

static void read_build(struct reader *r, json_t *root, struct kiln_engine_meta *e)
{
    r->where = "";
    json_t *b = member(r, root, "build", JSON_OBJECT);
    r->where = "build";
    e->max_batch_size = get_int(r, b, "max_batch_size", 1, 1 << 16);
    e->max_input_len = get_int(r, b, "max_input_len", 1, 1 << 24);
    e->max_seq_len = get_int(r, b, "max_seq_len", 2, 1 << 24);
    e->max_num_tokens = get_int(r, b, "max_num_tokens", 1, 1 << 24);
    e->tokens_per_block = get_int(r, b, "tokens_per_block", 1, 4096);
    static const char *const kv[] = {"fp8", "bf16", "f32"};
    static const enum kiln_dtype kv_t[] = {KILN_DTYPE_F8E4M3, KILN_DTYPE_BF16, KILN_DTYPE_F32};
    e->kv_dtype = kv_t[get_choice(r, b, "kv_dtype", kv, 3)];
    if (!r->st && (e->max_input_len >= e->max_seq_len || e->max_num_tokens < e->max_batch_size))
        r->st = kiln_errorf(r->err, KILN_ERR_FORMAT,
                            "engine.json: build limits are inconsistent (max_input_len %d, "
                            "max_seq_len %d, max_batch_size %d, max_num_tokens %d)",
                            e->max_input_len, e->max_seq_len, e->max_batch_size, e->max_num_tokens);
    r->where = "";
    json_t *w = member(r, root, "weights", JSON_OBJECT);
    r->where = "weights";
    const char *file = get_str(r, w, "file");
    if (!r->st && strcmp(file, KILN_WEIGHTS_FILE))
        r->st = kiln_errorf(r->err, KILN_ERR_FORMAT, "engine.json: weights.file must be \"%s\"",
                            KILN_WEIGHTS_FILE);
    static const char *const qkv_names[] = {"natural", "tile-paired"};
    e->qkv_order =
        get_choice(r, w, "qkv_order", qkv_names, 2) ? KILN_ROWS_QKV_PAIRED : KILN_ROWS_PLAIN;
    static const char *const gu_names[] = {"natural", "tile-interleaved"};
    e->gate_up_order =
        get_choice(r, w, "gate_up_order", gu_names, 2) ? KILN_ROWS_GU_INTERLEAVED : KILN_ROWS_PLAIN;
}

static void read_gpu(struct reader *r, json_t *root, struct kiln_engine_meta *e)
{
    r->where = "gpu";
    json_t *g = json_object_get(root, "gpu");
    if (r->st || json_is_null(g)) return;
    if (!json_is_object(g)) {
        r->st = kiln_errorf(r->err, KILN_ERR_FORMAT, "engine.json: gpu must be an object or null");
        return;
    }
    const char *name = get_str(r, g, "name");
    if (!r->st && strlen(name) >= sizeof e->gpu_name)
        r->st = kiln_errorf(r->err, KILN_ERR_FORMAT, "engine.json: gpu.name is too long");
    snprintf(e->gpu_name, sizeof e->gpu_name, "%s", name);
    const char *cc = get_str(r, g, "compute_capability");
    if (!r->st && (sscanf(cc, "%d.%d", &e->cc_major, &e->cc_minor) != 2 || e->cc_major < 1))
        r->st = kiln_errorf(r->err, KILN_ERR_FORMAT,
                            "engine.json: gpu.compute_capability '%.20s' is not like \"9.0\"", cc);
    e->gpu_memory = get_u64(r, g, "memory_bytes");
    e->cublaslt_version = get_int(r, g, "cublaslt_version", 0, 1 << 30);
}

static void read_gemms(struct reader *r, json_t *root, struct kiln_engine_meta *e)
{
    r->where = "";
    json_t *g = member(r, root, "gemm", JSON_OBJECT);
    r->where = "gemm";
    json_t *list = member(r, g, "algorithms", JSON_ARRAY);
    if (r->st) return;
    size_t n = json_array_size(list);
    if (n > 100000) {
        r->st = kiln_errorf(r->err, KILN_ERR_FORMAT, "engine.json: %zu GEMM algorithms", n);
        return;
    }
    e->gemms = calloc(n ? n : 1, sizeof *e->gemms);
    if (!e->gemms) {
        r->st = kiln_errorf(r->err, KILN_ERR_NOMEM, "out of memory");
        return;
    }
    r->where = "gemm.algorithms[]";
    for (size_t i = 0; i < n && !r->st; i++) {
        json_t *a = json_array_get(list, i);
        if (!json_is_object(a)) {
            r->st = kiln_errorf(r->err, KILN_ERR_FORMAT,
                                "engine.json: gemm.algorithms[%zu] is "
                                "not an object",
                                i);
            break;
        }
        struct kiln_gemm_algo *x = &e->gemms[e->n_gemms++];
        x->M = get_int(r, a, "M", 1, 1 << 30);
        x->N = get_int(r, a, "N", 1, 1 << 30);
        x->K = get_int(r, a, "K", 1, 1 << 30);
        static const char *const dt[] = {"bf16", "fp8"};
        x->fp8 = get_choice(r, a, "dtype", dt, 2) == 1;
        x->id = get_int(r, a, "id", -1, 1 << 30);
        x->us = get_us(r, a, "us");
        x->heuristic_us = get_us(r, a, "heuristic_us");
        const char *hex = get_str(r, a, "algo");
        bool ok = strlen(hex) == 128;
        for (int k = 0; ok && k < 8; k++) {
            char part[17];
            memcpy(part, hex + 16 * k, 16);
            part[16] = 0;
            ok = parse_hex64(part, &x->algo[k]);
        }
        if (!ok && !r->st)
            r->st = kiln_errorf(r->err, KILN_ERR_FORMAT,
                                "engine.json: gemm.algorithms[%zu].algo is not 128 hex digits", i);
    }
}

static void read_files(struct reader *r, json_t *root, struct kiln_engine_meta *e)
{
    r->where = "";
    json_t *list = member(r, root, "files", JSON_ARRAY);
    if (r->st) return;
    size_t n = json_array_size(list);
    if (n == 0 || n > 64) {
        r->st = kiln_errorf(r->err, KILN_ERR_FORMAT, "engine.json: files lists %zu files", n);
        return;
    }
    e->files = calloc(n, sizeof *e->files);
    if (!e->files) {
        r->st = kiln_errorf(r->err, KILN_ERR_NOMEM, "out of memory");
        return;
    }
    r->where = "files[]";
    bool weights = false;
    for (size_t i = 0; i < n && !r->st; i++) {
        json_t *f = json_array_get(list, i);
        if (!json_is_object(f)) {
            r->st =
                kiln_errorf(r->err, KILN_ERR_FORMAT, "engine.json: files[%zu] is not an object", i);
            break;
        }
        struct kiln_file_record *rec = &e->files[e->n_files++];
        const char *name = get_str(r, f, "name");
        if (!r->st && (!*name || strlen(name) >= sizeof rec->name || strchr(name, '/') ||
                       !strcmp(name, "..") || !strcmp(name, ".")))
            r->st = kiln_errorf(r->err, KILN_ERR_FORMAT,
                                "engine.json: files[%zu].name '%.80s' is not a file name", i, name);
        snprintf(rec->name, sizeof rec->name, "%s", name);
        rec->bytes = get_u64(r, f, "bytes");
        const char *hex = get_str(r, f, "xxh3");
        if (!r->st && !parse_hex64(hex, &rec->xxh3))
            r->st = kiln_errorf(r->err, KILN_ERR_FORMAT,
                                "engine.json: files[%zu].xxh3 is not 16 hex digits", i);
        weights |= !strcmp(name, KILN_WEIGHTS_FILE);
    }
    if (!r->st && !weights)
        r->st = kiln_errorf(r->err, KILN_ERR_FORMAT, "engine.json: files does not list %s",
                            KILN_WEIGHTS_FILE);
}

enum kiln_status kiln_engine_meta_parse(const char *json, size_t len, const char *dir,
                                        struct kiln_engine_meta **out, struct kiln_error *err)
{
    *out = NULL;
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return kiln_errorf(err, KILN_ERR_FORMAT, "engine.json: line %d column %d: %s", je.line,
                           je.column, je.text);
    struct kiln_engine_meta *e = calloc(1, sizeof *e);
    if (!e) {
        json_decref(root);
        return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    }
    struct reader r = {"", err, KILN_OK};
    const char *fmt = json_string_value(json_object_get(root, "format"));
    json_t *ver = json_object_get(root, "format_version");
    if (!r.st && (!json_is_object(root) || !fmt || strcmp(fmt, "kiln-engine")))
        r.st = kiln_errorf(err, KILN_ERR_FORMAT, "engine.json: \"format\" is not \"kiln-engine\"");
    if (!r.st && !json_is_integer(ver))
        r.st = kiln_errorf(err, KILN_ERR_FORMAT, "engine.json: format_version must be an integer");
    if (!r.st && json_integer_value(ver) != KILN_ENGINE_VERSION)
        r.st = kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                           "engine format version %" JSON_INTEGER_FORMAT
                           ", this kiln (%s) reads version %d: rebuild the engine with `kiln "
                           "build CKPT -o %s`",
                           json_integer_value(ver), KILN_VERSION, KILN_ENGINE_VERSION,
                           dir ? dir : "ENGINE");
    if (!r.st) {
        e->format_version = KILN_ENGINE_VERSION;
        snprintf(e->kiln_version, sizeof e->kiln_version, "%s",
                 json_string_value(json_object_get(root, "kiln_version"))
                     ? json_string_value(json_object_get(root, "kiln_version"))
                     : "?");
    }
    read_build(&r, root, e);
    read_gpu(&r, root, e);
    read_gemms(&r, root, e);
    read_files(&r, root, e);
    json_decref(root);
    if (r.st) {
        kiln_engine_meta_free(e);
        return r.st;
    }
    *out = e;
    return KILN_OK;
}

void kiln_engine_meta_free(struct kiln_engine_meta *e)
{
    if (!e) return;
    free(e->gemms);
    free(e->files);
    free(e);
}

/* ---- engine.json: writing ---- */

static json_t *hex64(uint64_t v)
{
    char s[17];
    snprintf(s, sizeof s, "%016" PRIx64, v);
    return json_string(s);
}

json_t *kiln_engine_meta_json(const struct kiln_engine_meta *e, json_t *extra)
{
    json_t *root = json_object();
    json_object_set_new(root, "format", json_string("kiln-engine"));
    json_object_set_new(root, "format_version", json_integer(KILN_ENGINE_VERSION));
    json_object_set_new(root, "kiln_version", json_string(KILN_VERSION));
    json_object_set_new(root, "build",
                        json_pack("{s:i,s:i,s:i,s:i,s:s,s:i}", "max_batch_size", e->max_batch_size,
                                  "max_input_len", e->max_input_len, "max_seq_len", e->max_seq_len,
                                  "max_num_tokens", e->max_num_tokens, "kv_dtype",
                                  kv_name(e->kv_dtype), "tokens_per_block", e->tokens_per_block));
    json_object_set_new(root, "weights",
                        json_pack("{s:s,s:s,s:s}", "file", KILN_WEIGHTS_FILE, "qkv_order",
                                  kiln_row_order_name(e->qkv_order), "gate_up_order",
                                  kiln_row_order_name(e->gate_up_order)));
    if (e->cc_major) {
        char cc[16];
        snprintf(cc, sizeof cc, "%d.%d", e->cc_major, e->cc_minor);
        json_object_set_new(root, "gpu",
                            json_pack("{s:s,s:s,s:I,s:i}", "name", e->gpu_name,
                                      "compute_capability", cc, "memory_bytes",
                                      (json_int_t)e->gpu_memory, "cublaslt_version",
                                      e->cublaslt_version));
    } else {
        json_object_set_new(root, "gpu", json_null());
    }
    json_t *algos = json_array();
    for (int i = 0; i < e->n_gemms; i++) {
        const struct kiln_gemm_algo *a = &e->gemms[i];
        char hex[129];
        for (int k = 0; k < 8; k++) snprintf(hex + 16 * k, 17, "%016" PRIx64, a->algo[k]);
        json_array_append_new(algos, json_pack("{s:i,s:i,s:i,s:s,s:i,s:f,s:f,s:s}", "M", a->M, "N",
                                               a->N, "K", a->K, "dtype", a->fp8 ? "fp8" : "bf16",
                                               "id", a->id, "us", (double)a->us, "heuristic_us",
                                               (double)a->heuristic_us, "algo", hex));
    }
    json_object_set_new(root, "gemm",
                        json_pack("{s:s,s:o}", "chosen_by",
                                  e->n_gemms ? "timing cuBLASLt's candidates on the build GPU"
                                             : "cuBLASLt's heuristic at run time (built without "
                                               "a GPU)",
                                  "algorithms", algos));
    json_t *files = json_array();
    for (int i = 0; i < e->n_files; i++)
        json_array_append_new(files, json_pack("{s:s,s:I,s:o}", "name", e->files[i].name, "bytes",
                                               (json_int_t)e->files[i].bytes, "xxh3",
                                               hex64(e->files[i].xxh3)));
    json_object_set_new(root, "files", files);
    if (extra) json_object_update(root, extra);
    return root;
}

/* ---- engine folders ---- */

static enum kiln_status verify_file(const char *dir, const struct kiln_file_record *f,
                                    struct kiln_pool *pool, struct kiln_error *err)
{
    char path[4096];
    enum kiln_status st = kiln_path_join(path, sizeof path, dir, f->name, err);
    if (st) return st;
    struct stat sb;
    if (stat(path, &sb) != 0)
        return kiln_errorf(err, KILN_ERR_IO,
                           "%s is missing: the engine is incomplete; rebuild it with `kiln build "
                           "CKPT -o %s`",
                           path, dir);
    if ((uint64_t)sb.st_size != f->bytes)
        return kiln_errorf(err, KILN_ERR_INVALID,
                           "%s: %lld bytes, engine.json says %" PRIu64
                           ": the file is truncated or was replaced; rebuild the engine with "
                           "`kiln build CKPT -o %s`",
                           path, (long long)sb.st_size, f->bytes, dir);
    uint64_t digest, size;
    st = kiln_hash_file(path, f->bytes >= PARALLEL_HASH_BYTES ? pool : NULL, &digest, &size, err);
    if (st) return st;
    if (digest != f->xxh3 || size != f->bytes)
        return kiln_errorf(err, KILN_ERR_INVALID,
                           "%s: checksum %016" PRIx64 ", engine.json says %016" PRIx64
                           ": the file is damaged; rebuild the engine with `kiln build CKPT -o %s`",
                           path, digest, f->xxh3, dir);
    return KILN_OK;
}

enum kiln_status kiln_engine_meta_load(const char *dir, struct kiln_engine_meta **out,
                                       struct kiln_error *err)
{
    *out = NULL;
    char path[4096], *text;
    size_t len;
    enum kiln_status st = kiln_path_join(path, sizeof path, dir, KILN_ENGINE_JSON, err);
    if (!st) st = kiln_file_read(path, META_LIMIT, &text, &len, err);
    if (st) return st;
    struct kiln_engine_meta *e;
    st = kiln_engine_meta_parse(text, len, dir, &e, err);
    free(text);
    if (st) return kiln_error_prefix(err, "%s", dir);
    double t0 = kiln_now();
    uint64_t total = 0;
    struct kiln_pool *pool = NULL;
    for (int i = 0; i < e->n_files; i++) {
        if (!pool && e->files[i].bytes >= PARALLEL_HASH_BYTES) pool = kiln_pool_create(0);
        total += e->files[i].bytes;
    }
    for (int i = 0; !st && i < e->n_files; i++) st = verify_file(dir, &e->files[i], pool, err);
    kiln_pool_free(pool);
    if (st) {
        kiln_engine_meta_free(e);
        return st;
    }
    KILN_INFO("%s: engine verified (%d files, %.2f GB, checksums in %.2f s)", dir, e->n_files,
              (double)total / 1e9, kiln_now() - t0);
    *out = e;
    return KILN_OK;
}

const struct kiln_gemm_algo *kiln_engine_gemm_find(const struct kiln_engine_meta *e, int M, int n,
                                                   int K, bool fp8)
{
    const struct kiln_gemm_algo *best = NULL;
    for (int i = 0; e && i < e->n_gemms; i++) {
        const struct kiln_gemm_algo *a = &e->gemms[i];
        if (a->M == M && a->K == K && a->fp8 == fp8 && a->N >= n && (!best || a->N < best->N))
            best = a;
    }
    return best;
}

enum kiln_status kiln_engine_check_gpu(const struct kiln_engine_meta *e, const char *dir,
                                       int cc_major, int cc_minor, const char *gpu_name,
                                       struct kiln_error *err)
{
    if (!e || !e->cc_major) return KILN_OK;
    if (e->cc_major != cc_major || e->cc_minor != cc_minor)
        return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                           "engine %s was built for sm_%d%d (%s), this GPU is sm_%d%d (%s): "
                           "rebuild with `kiln build CKPT -o %s` on this GPU",
                           dir, e->cc_major, e->cc_minor, e->gpu_name, cc_major, cc_minor, gpu_name,
                           dir);
    if (strcmp(e->gpu_name, gpu_name))
        KILN_INFO("engine %s was built on a %s, running on a %s (same sm_%d%d): its GEMM timings "
                  "may not be the best here",
                  dir, e->gpu_name, gpu_name, cc_major, cc_minor);
    return KILN_OK;
}
