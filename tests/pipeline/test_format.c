/* The kiln checkpoint and engine formats without the command line: tree checksums, engine.json
 * (round trip and every error), the GEMM table lookup, the compute-capability check, the
 * kernel row orders and their inverse, reading rows of a permuted linear, the streaming
 * safetensors writer with its sink, output folders, and the CUDA memory plan. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/cuda/kernels.h"
#include "backend/cuda/plan.h"
#include "core/file.h"
#include "model/format.h"
#include "model/helpers.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

static uint8_t *random_bytes(size_t n, uint64_t seed)
{
    uint8_t *b = malloc(n ? n : 1);
    assert_non_null(b);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        b[i] = (uint8_t)(seed >> 56);
    }
    return b;
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* ---- checksums ---- */

/* The definition, computed here with xxHash directly: XXH3 of the chunk digests. */
static uint64_t tree_reference(const uint8_t *data, size_t n)
{
    size_t chunks = (n + KILN_HASH_CHUNK - 1) / KILN_HASH_CHUNK;
    uint8_t *d = malloc(chunks * 8 + 1);
    for (size_t c = 0; c < chunks; c++) {
        size_t off = c * KILN_HASH_CHUNK,
               len = n - off < KILN_HASH_CHUNK ? n - off : KILN_HASH_CHUNK;
        uint64_t h = XXH3_64bits(data + off, len);
        for (int i = 0; i < 8; i++) d[c * 8 + i] = (uint8_t)(h >> (8 * i));
    }
    uint64_t r = XXH3_64bits(d, chunks * 8);
    free(d);
    return r;
}

static void hash_definition(void **state)
{
    (void)state;
    const size_t sizes[] = {0,
                            1,
                            1000,
                            KILN_HASH_CHUNK - 1,
                            KILN_HASH_CHUNK,
                            KILN_HASH_CHUNK + 1,
                            2 * (size_t)KILN_HASH_CHUNK + 5};
    uint8_t *data = random_bytes(sizes[6], 7);
    struct kiln_pool *pool = kiln_pool_create(3);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        uint64_t want = tree_reference(data, n), got = 0, got_pool = 0;
        assert_int_equal(kiln_hash_bytes(data, n, NULL, &got, NULL), KILN_OK);
        assert_int_equal(kiln_hash_bytes(data, n, pool, &got_pool, NULL), KILN_OK);
        assert_true(got == want && got_pool == want);
        /* streamed in uneven pieces, with a look at the digest halfway */
        struct kiln_hasher *h = kiln_hasher_create();
        size_t off = 0, piece = 1;
        while (off < n) {
            size_t take = n - off < piece ? n - off : piece;
            assert_int_equal(kiln_hasher_update(h, data + off, take, NULL), KILN_OK);
            off += take;
            if (off >= n / 2 && off - take < n / 2)
                assert_true(kiln_hasher_digest(h) == tree_reference(data, off));
            piece = piece * 7 + 3;
        }
        assert_true(kiln_hasher_digest(h) == want);
        assert_true(kiln_hasher_bytes(h) == n);
        kiln_hasher_free(h);
    }
    /* one flipped bit changes it */
    uint64_t a, b;
    kiln_hash_bytes(data, 5000, NULL, &a, NULL);
    data[4321] ^= 0x10;
    kiln_hash_bytes(data, 5000, NULL, &b, NULL);
    assert_true(a != b);
    kiln_pool_free(pool);
    free(data);
}

static void hash_file_matches(void **state)
{
    (void)state;
    char *dir = tmpdir_make(), path[4200];
    uint8_t *data = random_bytes(300000, 3);
    write_bytes(dir, "f", data, 300000);
    snprintf(path, sizeof path, "%s/f", dir);
    uint64_t d1, d2, size;
    assert_int_equal(kiln_hash_file(path, NULL, &d1, &size, NULL), KILN_OK);
    kiln_hash_bytes(data, 300000, NULL, &d2, NULL);
    assert_true(d1 == d2 && size == 300000);
    write_bytes(dir, "empty", "", 0);
    snprintf(path, sizeof path, "%s/empty", dir);
    assert_int_equal(kiln_hash_file(path, NULL, &d1, &size, NULL), KILN_OK);
    assert_true(d1 == tree_reference(NULL, 0) && size == 0);
    struct kiln_error err = {0};
    snprintf(path, sizeof path, "%s/missing", dir);
    assert_int_equal(kiln_hash_file(path, NULL, &d1, &size, &err), KILN_ERR_IO);
    tmpdir_remove(dir);
    free(dir);
    free(data);
}

/* ---- engine.json ---- */

static struct kiln_file_record test_files[2] = {
    {"model.safetensors", 123456, 0x0123456789abcdefull},
    {"tokenizer.json", 99, 0xfedcba9876543210ull}};

static struct kiln_gemm_algo test_gemms[4] = {{.M = 6144,
                                               .N = 16,
                                               .K = 4096,
                                               .fp8 = true,
                                               .algo = {1, 2, 3, 4, 5, 6, 7, UINT64_MAX},
                                               .id = 66,
                                               .us = 10.5f,
                                               .heuristic_us = 11.0f},
                                              {.M = 6144,
                                               .N = 32,
                                               .K = 4096,
                                               .fp8 = true,
                                               .algo = {9},
                                               .id = 21,
                                               .us = 12.0f,
                                               .heuristic_us = 12.0f},
                                              {.M = 6144,
                                               .N = 2048,
                                               .K = 4096,
                                               .fp8 = true,
                                               .algo = {8},
                                               .id = 3,
                                               .us = 200.0f,
                                               .heuristic_us = 230.0f},
                                              {.M = 128256,
                                               .N = 16,
                                               .K = 4096,
                                               .fp8 = false,
                                               .algo = {7},
                                               .id = 5,
                                               .us = 90.0f,
                                               .heuristic_us = 95.0f}};

static struct kiln_engine_meta test_meta(void)
{
    struct kiln_engine_meta e = {.max_batch_size = 4,
                                 .max_input_len = 2048,
                                 .max_seq_len = 2560,
                                 .max_num_tokens = 2048,
                                 .tokens_per_block = 16,
                                 .kv_dtype = KILN_DTYPE_F8E4M3,
                                 .qkv_order = KILN_ROWS_QKV_PAIRED,
                                 .gate_up_order = KILN_ROWS_GU_INTERLEAVED,
                                 .cc_major = 9,
                                 .cc_minor = 0,
                                 .gpu_memory = 85520809984ull,
                                 .cublaslt_version = 130100,
                                 .gemms = test_gemms,
                                 .n_gemms = 4,
                                 .files = test_files,
                                 .n_files = 2};
    snprintf(e.gpu_name, sizeof e.gpu_name, "NVIDIA H100 80GB HBM3");
    return e;
}

static char *meta_text(void)
{
    struct kiln_engine_meta e = test_meta();
    json_t *extra = json_pack("{s:s}", "source", "/somewhere");
    json_t *root = kiln_engine_meta_json(&e, extra);
    json_decref(extra);
    char *s = json_dumps(root, JSON_INDENT(2));
    json_decref(root);
    return s;
}

static void meta_round_trip(void **state)
{
    (void)state;
    char *text = meta_text();
    struct kiln_engine_meta *e = NULL, want = test_meta();
    assert_int_equal(kiln_engine_meta_parse(text, strlen(text), "E", &e, NULL), KILN_OK);
    assert_int_equal(e->max_batch_size, 4);
    assert_int_equal(e->max_input_len, 2048);
    assert_int_equal(e->max_seq_len, 2560);
    assert_int_equal(e->max_num_tokens, 2048);
    assert_int_equal(e->tokens_per_block, 16);
    assert_int_equal(e->kv_dtype, KILN_DTYPE_F8E4M3);
    assert_int_equal(e->qkv_order, KILN_ROWS_QKV_PAIRED);
    assert_int_equal(e->gate_up_order, KILN_ROWS_GU_INTERLEAVED);
    assert_string_equal(e->gpu_name, want.gpu_name);
    assert_int_equal(e->cc_major, 9);
    assert_int_equal(e->cc_minor, 0);
    assert_true(e->gpu_memory == want.gpu_memory);
    assert_int_equal(e->cublaslt_version, 130100);
    assert_int_equal(e->n_gemms, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(e->gemms[i].M, test_gemms[i].M);
        assert_int_equal(e->gemms[i].N, test_gemms[i].N);
        assert_int_equal(e->gemms[i].K, test_gemms[i].K);
        assert_int_equal(e->gemms[i].fp8, test_gemms[i].fp8);
        assert_int_equal(e->gemms[i].id, test_gemms[i].id);
        assert_memory_equal(e->gemms[i].algo, test_gemms[i].algo, sizeof test_gemms[i].algo);
        assert_float_equal(e->gemms[i].us, test_gemms[i].us, 1e-6);
    }
    assert_int_equal(e->n_files, 2);
    for (int i = 0; i < 2; i++) {
        assert_string_equal(e->files[i].name, test_files[i].name);
        assert_true(e->files[i].bytes == test_files[i].bytes);
        assert_true(e->files[i].xxh3 == test_files[i].xxh3);
    }
    assert_non_null(strstr(text, "\"source\": \"/somewhere\""));
    kiln_engine_meta_free(e);
    free(text);
}

/* engine.json with one substring replaced must fail with a message containing want. */
static void meta_error(const char *from, const char *to, const char *want)
{
    char *text = meta_text();
    char *at = strstr(text, from);
    if (!at) fail_msg("'%s' not in engine.json", from);
    size_t n = strlen(text) + strlen(to) + 1;
    char *mut = malloc(n);
    snprintf(mut, n, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
    struct kiln_engine_meta *e = (struct kiln_engine_meta *)1;
    struct kiln_error err = {0};
    assert_int_not_equal(kiln_engine_meta_parse(mut, strlen(mut), "ENG", &e, &err), KILN_OK);
    assert_null(e);
    if (!strstr(err.msg, want)) fail_msg("message '%s' lacks '%s'", err.msg, want);
    free(mut);
    free(text);
}

static void meta_errors(void **state)
{
    (void)state;
    meta_error("\"format_version\": 1", "\"format_version\": 2",
               "engine format version 2, this kiln (" KILN_VERSION
               ") reads version 1: rebuild the engine with `kiln build CKPT -o ENG`");
    meta_error("\"kiln-engine\"", "\"kiln-checkpoint\"", "\"format\" is not \"kiln-engine\"");
    meta_error("\"build\"", "\"bild\"", "engine.json: build must be an object");
    meta_error("\"max_batch_size\": 4", "\"max_batch_size\": 0", "max_batch_size = 0 is outside");
    meta_error("\"max_input_len\": 2048", "\"max_input_len\": 2560", "limits are inconsistent");
    meta_error("\"max_num_tokens\": 2048", "\"max_num_tokens\": 3", "limits are inconsistent");
    meta_error("\"kv_dtype\": \"fp8\"", "\"kv_dtype\": \"int4\"", "kv_dtype: unknown value 'int4'");
    meta_error("\"qkv_order\": \"tile-paired\"", "\"qkv_order\": \"zigzag\"", "unknown value");
    meta_error("\"compute_capability\": \"9.0\"", "\"compute_capability\": \"nine\"",
               "is not like \"9.0\"");
    meta_error("\"dtype\": \"fp8\"", "\"dtype\": \"fp4\"", "unknown value 'fp4'");
    meta_error("\"algo\": \"0000", "\"algo\": \"zz00", "is not 128 hex digits");
    meta_error("\"xxh3\": \"0123456789abcdef\"", "\"xxh3\": \"0123\"", "is not 16 hex digits");
    meta_error("\"name\": \"tokenizer.json\"", "\"name\": \"../tokenizer.json\"",
               "is not a file name");
    meta_error("\"name\": \"model.safetensors\"", "\"name\": \"weights.bin\"",
               "files does not list model.safetensors");
    meta_error("\"file\": \"model.safetensors\"", "\"file\": \"x.safetensors\"",
               "weights.file must be");
    meta_error("{", "[", "line 2 column");
    struct kiln_engine_meta *e;
    assert_int_equal(kiln_engine_meta_parse("{}", 2, NULL, &e, NULL), KILN_ERR_FORMAT);
}

static void gemm_lookup(void **state)
{
    (void)state;
    struct kiln_engine_meta e = test_meta();
    assert_ptr_equal(kiln_engine_gemm_find(&e, 6144, 9, 4096, true), &test_gemms[0]);
    assert_ptr_equal(kiln_engine_gemm_find(&e, 6144, 16, 4096, true), &test_gemms[0]);
    assert_ptr_equal(kiln_engine_gemm_find(&e, 6144, 17, 4096, true), &test_gemms[1]);
    assert_ptr_equal(kiln_engine_gemm_find(&e, 6144, 33, 4096, true), &test_gemms[2]);
    assert_ptr_equal(kiln_engine_gemm_find(&e, 6144, 2048, 4096, true), &test_gemms[2]);
    assert_null(kiln_engine_gemm_find(&e, 6144, 2049, 4096, true));
    assert_null(kiln_engine_gemm_find(&e, 6144, 16, 4096, false));
    assert_null(kiln_engine_gemm_find(&e, 4096, 16, 4096, true));
    assert_ptr_equal(kiln_engine_gemm_find(&e, 128256, 12, 4096, false), &test_gemms[3]);
    assert_null(kiln_engine_gemm_find(NULL, 6144, 16, 4096, true));
}

static void gpu_check(void **state)
{
    (void)state;
    struct kiln_engine_meta e = test_meta();
    struct kiln_error err = {0};
    assert_int_equal(kiln_engine_check_gpu(&e, "ENG", 8, 9, "NVIDIA GeForce RTX 4070 Ti", &err),
                     KILN_ERR_UNSUPPORTED);
    assert_string_equal(err.msg, "engine ENG was built for sm_90 (NVIDIA H100 80GB HBM3), this "
                                 "GPU is sm_89 (NVIDIA GeForce RTX 4070 Ti): rebuild with `kiln "
                                 "build CKPT -o ENG` on this GPU");
    assert_int_equal(kiln_engine_check_gpu(&e, "ENG", 9, 0, "NVIDIA H200", NULL), KILN_OK);
    e.cc_major = 0; /* built without a GPU: runs anywhere */
    assert_int_equal(kiln_engine_check_gpu(&e, "ENG", 8, 9, "x", NULL), KILN_OK);
}

/* ---- row orders ---- */

static void check_inverse(enum kiln_row_order order, int64_t out, int head_dim)
{
    struct kiln_linear l = {
        .out = out, .in = 8, .n_parts = 1, .row_order = order, .row_head_dim = head_dim};
    char *seen = calloc((size_t)out, 1);
    for (int64_t r = 0; r < out; r++) {
        int64_t nat = kiln_cuda_natural_row(order, r, head_dim, out / 2);
        assert_true(nat >= 0 && nat < out);
        assert_int_equal(seen[nat], 0);
        seen[nat] = 1;
        assert_int_equal(kiln_linear_stored_row(&l, nat), r);
    }
    free(seen);
}

static void row_order_inverse(void **state)
{
    (void)state;
    check_inverse(KILN_ROWS_QKV_PAIRED, (4 + 2 * 2) * 64, 64);
    check_inverse(KILN_ROWS_QKV_PAIRED, (2 + 2 * 1) * 128, 128);
    check_inverse(KILN_ROWS_GU_INTERLEAVED, 2 * 384, 0);
    check_inverse(KILN_ROWS_GU_INTERLEAVED, 2 * 8, 0);
    check_inverse(KILN_ROWS_PLAIN, 40, 0);
}

/* A linear stored in a kernel order reads back, through every accessor, exactly as the same
 * linear in natural order. */
static void permuted_rows(void **state)
{
    (void)state;
    kiln_numeric_init();
    const int64_t out = 3 * 64, in = 40;
    uint8_t *nat = random_bytes((size_t)(out * in), 11), *perm = malloc((size_t)(out * in));
    for (size_t i = 0; i < (size_t)(out * in); i++)
        if ((nat[i] & 0x7f) == 0x7f) nat[i] = 0x11; /* no NaN codes */
    for (int64_t r = 0; r < out; r++)
        memcpy(perm + r * in, nat + kiln_cuda_natural_row(KILN_ROWS_QKV_PAIRED, r, 64, 0) * in,
               (size_t)in);
    struct kiln_linear a = {.out = out,
                            .in = in,
                            .n_parts = 1,
                            .fp8 = true,
                            .weight_scale = 0.5f,
                            .input_scale = 2.0f,
                            .row_head_dim = 64};
    a.part[0] = (struct kiln_tensor){KILN_DTYPE_F8E4M3, 2, {out, in}, nat};
    a.part_weight_scale[0] = 0.5f;
    struct kiln_linear b = a;
    b.part[0].data = perm;
    b.row_order = KILN_ROWS_QKV_PAIRED;
    uint8_t x[64 * 40], y[64 * 40];
    float fx[64 * 40], fy[64 * 40];
    const int64_t ranges[][2] = {{0, out}, {5, 6}, {17, 83}, {out - 1, out}};
    for (size_t k = 0; k < 4; k++) {
        int64_t r0 = ranges[k][0], r1 = r0 + (ranges[k][1] - r0 > 64 ? 64 : ranges[k][1] - r0);
        kiln_linear_fp8_rows(&a, r0, r1, x);
        kiln_linear_fp8_rows(&b, r0, r1, y);
        assert_memory_equal(x, y, (size_t)((r1 - r0) * in));
        kiln_linear_rows(&b, r0, r1, y);
        assert_memory_equal(x, y, (size_t)((r1 - r0) * in));
        kiln_linear_f32_rows(&a, r0, r1, fx);
        kiln_linear_f32_rows(&b, r0, r1, fy);
        assert_memory_equal(fx, fy, (size_t)((r1 - r0) * in) * sizeof(float));
    }
    assert_ptr_equal(kiln_linear_stored(&b, KILN_ROWS_QKV_PAIRED), perm);
    assert_null(kiln_linear_stored(&b, KILN_ROWS_PLAIN));
    assert_ptr_equal(kiln_linear_stored(&a, KILN_ROWS_PLAIN), nat);
    assert_int_equal(kiln_linear_dtype(&a), KILN_DTYPE_F8E4M3);
    /* a BF16 group of mixed dtypes cannot be stored fused */
    struct kiln_linear c = {.out = 2, .in = 2, .n_parts = 2};
    c.part[0].dtype = KILN_DTYPE_BF16;
    c.part[1].dtype = KILN_DTYPE_F32;
    assert_int_equal(kiln_linear_dtype(&c), -1);
    free(nat);
    free(perm);
}

/* ---- streaming safetensors writer ---- */

struct sink_state {
    struct kiln_hasher *h;
    uint64_t bytes, fail_after;
};

static enum kiln_status sink(void *ctx, const void *data, size_t n, struct kiln_error *err)
{
    struct sink_state *s = ctx;
    s->bytes += n;
    if (s->fail_after && s->bytes >= s->fail_after)
        return kiln_errorf(err, KILN_ERR_IO, "interrupted");
    return kiln_hasher_update(s->h, data, n, err);
}

struct fill_state {
    int64_t cols;
    int calls;
    bool fail;
};

static enum kiln_status fill(void *ctx, int64_t r0, int64_t r1, void *dst, struct kiln_error *err)
{
    struct fill_state *f = ctx;
    f->calls++;
    if (f->fail) return kiln_errorf(err, KILN_ERR_IO, "fill failed at row %d", (int)r0);
    uint16_t *d = dst;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t c = 0; c < f->cols; c++) d[(r - r0) * f->cols + c] = (uint16_t)(r * 31 + c);
    return KILN_OK;
}

static void writer_fill_and_sink(void **state)
{
    (void)state;
    char *dir = tmpdir_make(), path[4200];
    snprintf(path, sizeof path, "%s/w.safetensors", dir);
    /* 5000 rows of 8192 bf16 (80 MB): filled in several calls of whole rows */
    const int64_t rows = 5000, cols = 8192, shape[2] = {rows, cols}, small_shape[1] = {3};
    const float small[3] = {1, 2, 3};
    struct fill_state fs = {.cols = cols};
    struct sink_state ss = {.h = kiln_hasher_create()};
    struct kiln_st_writer *w = kiln_st_writer_create();
    assert_int_equal(kiln_st_writer_add_fill(w, "big", KILN_DTYPE_BF16, 2, shape, fill, &fs, NULL),
                     KILN_OK);
    assert_int_equal(kiln_st_writer_add(w, "small", KILN_DTYPE_F32, 1, small_shape, small, NULL),
                     KILN_OK);
    kiln_st_writer_set_sink(w, sink, &ss);
    assert_int_equal(kiln_st_writer_write(w, path, NULL), KILN_OK);
    kiln_st_writer_free(w);
    assert_true(fs.calls >= 2);
    uint64_t digest, size;
    assert_int_equal(kiln_hash_file(path, NULL, &digest, &size, NULL), KILN_OK);
    assert_true(size == ss.bytes && digest == kiln_hasher_digest(ss.h));
    struct kiln_st_set set;
    const char *paths[1] = {path};
    assert_int_equal(kiln_st_open_files(paths, 1, &set, NULL), KILN_OK);
    const struct kiln_st_tensor *t = kiln_st_find(&set, "big");
    assert_non_null(t);
    const uint16_t *d = t->data;
    for (int64_t r = 0; r < rows; r += 997)
        for (int64_t c = 0; c < cols; c += 101)
            assert_int_equal(d[r * cols + c], (uint16_t)(r * 31 + c));
    assert_memory_equal(kiln_st_find(&set, "small")->data, small, sizeof small);
    kiln_st_close(&set);
    kiln_hasher_free(ss.h);

    /* a failing fill or sink leaves no file, not even the temporary one */
    for (int k = 0; k < 2; k++) {
        unlink(path);
        fs = (struct fill_state){.cols = cols, .fail = k == 0};
        ss = (struct sink_state){.h = kiln_hasher_create(), .fail_after = k == 1 ? 1 : 0};
        w = kiln_st_writer_create();
        kiln_st_writer_add_fill(w, "big", KILN_DTYPE_BF16, 2, shape, fill, &fs, NULL);
        kiln_st_writer_set_sink(w, sink, &ss);
        struct kiln_error err = {0};
        assert_int_equal(kiln_st_writer_write(w, path, &err), KILN_ERR_IO);
        assert_non_null(strstr(err.msg, k == 0 ? "big: fill failed at row 0" : "interrupted"));
        kiln_st_writer_free(w);
        kiln_hasher_free(ss.h);
        assert_false(exists(path));
        char tmp[4300];
        snprintf(tmp, sizeof tmp, "%s.tmp-%d", path, (int)getpid());
        assert_false(exists(tmp));
    }
    tmpdir_remove(dir);
    free(dir);
}

/* ---- output folders ---- */

static pid_t dead_pid(void)
{
    for (pid_t p = 4000000; p > 1000; p -= 7919)
        if (kill(p, 0) != 0 && errno == ESRCH) return p;
    fail_msg("no unused pid found");
    return 0;
}

static void outdir_lifecycle(void **state)
{
    (void)state;
    char *dir = tmpdir_make(), out[4200], path[4300], leftover[4300];
    snprintf(out, sizeof out, "%s/out", dir);
    struct kiln_outdir o;
    struct kiln_error err = {0};
    /* a killed run's temporary folder is removed; a running process's is not */
    snprintf(leftover, sizeof leftover, "%s.tmp-%d", out, (int)dead_pid());
    assert_int_equal(mkdir(leftover, 0755), 0);
    write_text(leftover, "half", "written");
    char alive[4300];
    snprintf(alive, sizeof alive, "%s.tmp-%d", out, (int)getppid());
    assert_int_equal(mkdir(alive, 0755), 0);
    assert_int_equal(kiln_outdir_begin(&o, out, false, NULL), KILN_OK);
    assert_false(exists(leftover));
    assert_true(exists(alive));
    assert_true(exists(o.tmp));
    assert_false(exists(out));
    assert_int_equal(kiln_outdir_path(&o, "a", path, sizeof path, NULL), KILN_OK);
    write_text(o.tmp, "a", "first");
    assert_int_equal(kiln_outdir_commit(&o, NULL), KILN_OK);
    assert_false(exists(o.tmp));
    snprintf(path, sizeof path, "%s/a", out);
    assert_true(exists(path));
    kiln_outdir_abort(&o); /* no-op once committed */
    assert_true(exists(path));

    /* not replaced without force */
    assert_int_equal(kiln_outdir_begin(&o, out, false, &err), KILN_ERR_IO);
    assert_non_null(strstr(err.msg, "exists (pass --force to replace it)"));
    assert_int_equal(kiln_outdir_check(out, false, NULL), KILN_ERR_IO);
    /* replaced with it, atomically: the old folder's files are gone after */
    char slash[4300];
    snprintf(slash, sizeof slash, "%s/", out);
    assert_int_equal(kiln_outdir_begin(&o, slash, true, NULL), KILN_OK);
    assert_string_equal(o.out, out);
    write_text(o.tmp, "b", "second");
    assert_true(exists(path)); /* the old one stays whole until the rename */
    assert_int_equal(kiln_outdir_commit(&o, NULL), KILN_OK);
    assert_false(exists(path));
    snprintf(path, sizeof path, "%s/b", out);
    assert_true(exists(path));

    /* abort leaves nothing */
    char out2[4300];
    snprintf(out2, sizeof out2, "%s/out2", dir);
    assert_int_equal(kiln_outdir_begin(&o, out2, false, NULL), KILN_OK);
    write_text(o.tmp, "c", "x");
    kiln_outdir_abort(&o);
    assert_false(exists(o.tmp));
    assert_false(exists(out2));

    /* a file in the way */
    write_text(dir, "file", "x");
    snprintf(path, sizeof path, "%s/file", dir);
    assert_int_equal(kiln_outdir_begin(&o, path, true, &err), KILN_ERR_IO);
    assert_non_null(strstr(err.msg, "exists and is not a folder"));
    rmdir(alive);
    tmpdir_remove(dir);
    free(dir);
}

/* ---- memory plan ---- */

static void set_linear(struct kiln_linear *l, int64_t out, int64_t in, bool fp8)
{
    *l = (struct kiln_linear){.out = out, .in = in, .n_parts = 1, .fp8 = fp8};
    l->part[0] =
        (struct kiln_tensor){fp8 ? KILN_DTYPE_F8E4M3 : KILN_DTYPE_BF16, 2, {out, in}, NULL};
}

static void memory_plan_8b(void **state)
{
    (void)state;
    /* Llama-3.1-8B FP8: shapes only, the plan reads no weights */
    struct kiln_model m = {0};
    struct kiln_config *c = &m.cfg;
    c->vocab_size = 128256;
    c->hidden_size = 4096;
    c->intermediate_size = 14336;
    c->n_layers = 32;
    c->n_heads = 32;
    c->n_kv_heads = 8;
    c->head_dim = 128;
    struct kiln_layer_weights layers[32];
    m.layers = layers;
    for (int i = 0; i < 32; i++) {
        struct kiln_layer_weights *w = &layers[i];
        w->attn_norm = w->mlp_norm = (struct kiln_tensor){KILN_DTYPE_BF16, 1, {4096}, NULL};
        set_linear(&w->qkv, 6144, 4096, true);
        set_linear(&w->o, 4096, 4096, true);
        set_linear(&w->gate_up, 28672, 4096, true);
        set_linear(&w->down, 4096, 14336, true);
    }
    m.embed = (struct kiln_tensor){KILN_DTYPE_BF16, 2, {128256, 4096}, NULL};
    m.norm = (struct kiln_tensor){KILN_DTYPE_BF16, 1, {4096}, NULL};
    set_linear(&m.lm_head, 128256, 4096, false);
    struct kiln_backend_options o;
    kiln_backend_options_default(&o);
    o.kv_dtype = KILN_DTYPE_F8E4M3;
    o.max_seqs = 1;
    o.max_tokens = 2048;
    o.max_seq_len = 2560;
    o.n_blocks = 0;
    struct kiln_cuda_plan p;
    kiln_cuda_plan(&m, &o, &p);
    /* 6.98 GB of FP8 linears + 1.05 GB lm_head + 1.05 GB embedding + norms (DESIGN.md) */
    assert_true(p.weights == 6979321856ull + 2 * 1050673152ull + 32 * 2 * 8192 + 8192);
    assert_true(p.kv_block == 1u << 20); /* 16 tokens x 64 KiB: 32 layers x K,V x 8 x 128 */
    assert_int_equal(p.kv_blocks, 160);
    assert_true(p.kv == 160ull << 20);
    assert_true(p.big == 2048ull * 28672 * 4);
    assert_true(p.total == p.weights + p.activations + p.workspace + p.kv + p.reserve + p.context);
    /* what a 12 GiB card holds at these limits (the seed's RTX 4070 Ti) */
    assert_true(p.total < (12ull << 30));
    /* every limit costs memory */
    uint64_t base = p.total;
    o.max_seq_len = 8192;
    kiln_cuda_plan(&m, &o, &p);
    assert_true(p.total > base && p.kv == 512ull << 20);
    o.max_seqs = 64;
    kiln_cuda_plan(&m, &o, &p);
    assert_true(p.kv == 64ull * 512 << 20 && p.total > (32ull << 30));
    o.kv_dtype = KILN_DTYPE_BF16;
    kiln_cuda_plan(&m, &o, &p);
    assert_true(p.kv == 2 * 64ull * 512 << 20);
    o.n_blocks = 100; /* an explicit pool */
    kiln_cuda_plan(&m, &o, &p);
    assert_int_equal(p.kv_blocks, 100);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(hash_definition),      cmocka_unit_test(hash_file_matches),
        cmocka_unit_test(meta_round_trip),      cmocka_unit_test(meta_errors),
        cmocka_unit_test(gemm_lookup),          cmocka_unit_test(gpu_check),
        cmocka_unit_test(row_order_inverse),    cmocka_unit_test(permuted_rows),
        cmocka_unit_test(writer_fill_and_sink), cmocka_unit_test(outdir_lifecycle),
        cmocka_unit_test(memory_plan_8b),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
