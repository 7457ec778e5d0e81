/* safetensors: one test per validation rule (each error names the file and the tensor), shard
 * sets with and without an index, and the writer's round trip. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/helpers.h"
#include "model/safetensors.h"

/* Parses header + data_len bytes; returns the status and keeps the message in err. */
static enum kiln_status parse(const char *header, size_t data_len, struct kiln_error *err)
{
    size_t size;
    uint8_t *b = st_build(header, data_len, &size);
    struct kiln_st_header h;
    enum kiln_status st = kiln_st_parse(b, size, "f.safetensors", &h, err);
    if (!st) kiln_st_header_free(&h);
    free(b);
    return st;
}

/* The parse fails with code and a message naming the file and each of the words. */
static void expect_error(const char *header, size_t data_len, enum kiln_status code, const char *w1,
                         const char *w2)
{
    struct kiln_error err = {0};
    enum kiln_status st = parse(header, data_len, &err);
    if (st != code || !strstr(err.msg, "f.safetensors") || (w1 && !strstr(err.msg, w1)) ||
        (w2 && !strstr(err.msg, w2)))
        fail_msg("header %s: got %s '%s', want %s with '%s' '%s'", header, kiln_status_name(st),
                 err.msg, kiln_status_name(code), w1 ? w1 : "", w2 ? w2 : "");
}

static void parses_valid_file(void **state)
{
    (void)state;
    const char *hdr = "{\"__metadata__\":{\"format\":\"pt\"},"
                      "\"b\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[6,22]},"
                      "\"a\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,6]},"
                      "\"s\":{\"dtype\":\"F8_E4M3\",\"shape\":[],\"data_offsets\":[22,23]},"
                      "\"z\":{\"dtype\":\"F16\",\"shape\":[0,5],\"data_offsets\":[23,23]}}";
    size_t size;
    uint8_t *b = st_build(hdr, 23, &size);
    struct kiln_st_header h;
    struct kiln_error err = {0};
    assert_int_equal(kiln_st_parse(b, size, "f", &h, &err), KILN_OK);
    assert_int_equal(h.n, 4);
    assert_int_equal(h.data_offset, 8 + strlen(hdr));
    /* sorted by data offset */
    assert_string_equal(h.tensors[0].name, "a");
    assert_int_equal(h.tensors[0].dtype, KILN_DTYPE_BF16);
    assert_int_equal(h.tensors[0].ndim, 1);
    assert_int_equal(h.tensors[0].shape[0], 3);
    assert_string_equal(h.tensors[1].name, "b");
    assert_int_equal(h.tensors[1].ndim, 2);
    assert_ptr_equal(h.tensors[1].data, b + h.data_offset + 6);
    assert_string_equal(h.tensors[2].name, "s");
    assert_int_equal(h.tensors[2].ndim, 0);
    assert_int_equal(h.tensors[2].dtype, KILN_DTYPE_F8E4M3);
    assert_string_equal(h.tensors[3].name, "z");
    assert_int_equal(h.tensors[3].end - h.tensors[3].begin, 0);
    kiln_st_header_free(&h);
    /* an empty file of tensors with trailing header spaces is fine */
    struct kiln_error e2 = {0};
    assert_int_equal(parse("{}    ", 0, &e2), KILN_OK);
    free(b);
}

static void rejects_size_problems(void **state)
{
    (void)state;
    struct kiln_error err = {0};
    uint8_t tiny[4] = {0};
    struct kiln_st_header h;
    assert_int_equal(kiln_st_parse(tiny, 4, "t.safetensors", &h, &err), KILN_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "t.safetensors"));
    assert_int_equal(kiln_st_parse(NULL, 0, "t.safetensors", &h, &err), KILN_ERR_FORMAT);

    /* huge header length */
    uint8_t huge[16] = {0, 0, 0, 0, 0, 1, 0, 0, '{', '}'};
    assert_int_equal(kiln_st_parse(huge, sizeof huge, "h.safetensors", &h, &err), KILN_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "h.safetensors"));
    assert_non_null(strstr(err.msg, "100 MB"));
    /* just over the limit */
    uint8_t over[16] = {0};
    uint64_t n = KILN_ST_MAX_HEADER + 1u;
    for (int i = 0; i < 8; i++) over[i] = (uint8_t)(n >> (8 * i));
    assert_int_equal(kiln_st_parse(over, sizeof over, "h.safetensors", &h, &err), KILN_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "100 MB"));
    /* header past the end of the file */
    uint8_t past[12] = {100, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' '};
    assert_int_equal(kiln_st_parse(past, sizeof past, "p.safetensors", &h, &err), KILN_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "p.safetensors"));
    assert_non_null(strstr(err.msg, "past the end"));
}

static void rejects_truncated_data(void **state)
{
    (void)state;
    /* the last tensor ends after the data section: truncated shard */
    expect_error("{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 10,
                 KILN_ERR_FORMAT, "'w'", "truncated");
}

static void rejects_bad_dtype(void **state)
{
    (void)state;
    expect_error("{\"w\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8,
                 KILN_ERR_UNSUPPORTED, "'w'", "F64");
    expect_error("{\"w\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,8]}}", 8, KILN_ERR_FORMAT,
                 "'w'", "dtype");
}

static void rejects_overlap_and_gap(void **state)
{
    (void)state;
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                 12, KILN_ERR_FORMAT, "'b'", "overlaps tensor 'a'");
    /* two tensors on the same bytes */
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                 8, KILN_ERR_FORMAT, "overlaps", NULL);
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
                 20, KILN_ERR_FORMAT, "'b'", "gap");
    /* data must start at 0 */
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
                 KILN_ERR_FORMAT, "'a'", "gap");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8,
                 KILN_ERR_FORMAT, "'a'", "end before begin");
}

static void rejects_last_end_not_file_size(void **state)
{
    (void)state;
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 9,
                 KILN_ERR_FORMAT, "'a'", "trailing");
    expect_error("{}", 3, KILN_ERR_FORMAT, "3 data bytes", NULL);
}

static void rejects_duplicates_and_bad_json(void **state)
{
    (void)state;
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                 "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                 8, KILN_ERR_FORMAT, "duplicate", NULL);
    /* invalid UTF-8 in a name and in metadata */
    expect_error("{\"\xff\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                 KILN_ERR_FORMAT, "JSON", NULL);
    expect_error("{\"__metadata__\":{\"k\":\"\xc3\x28\"}}", 0, KILN_ERR_FORMAT, "JSON", NULL);
    /* an escaped NUL and a raw NUL */
    expect_error("{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                 KILN_ERR_FORMAT, "JSON", NULL);
    size_t size;
    uint8_t *b = st_build("{\"a\":1}   ", 0, &size);
    b[8 + 8] = 0;
    struct kiln_st_header h;
    struct kiln_error err = {0};
    assert_int_equal(kiln_st_parse(b, size, "f.safetensors", &h, &err), KILN_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "NUL"));
    free(b);
    expect_error("[1,2]", 0, KILN_ERR_FORMAT, "not a JSON object", NULL);
    expect_error("{\"a\":{}", 0, KILN_ERR_FORMAT, "JSON", NULL);
    expect_error("", 0, KILN_ERR_FORMAT, "JSON", NULL);
    expect_error("{} x", 0, KILN_ERR_FORMAT, "JSON", NULL);
}

static void rejects_bad_entries(void **state)
{
    (void)state;
    expect_error("{\"a\":[1]}", 0, KILN_ERR_FORMAT, "'a'", "not an object");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 0, KILN_ERR_FORMAT, "'a'",
                 "data_offsets");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, KILN_ERR_FORMAT, "'a'",
                 "shape");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
                 KILN_ERR_FORMAT, "'a'", "shape[0]");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4,
                 KILN_ERR_FORMAT, "'a'", "shape[0]");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                 "\"data_offsets\":[0,4]}}",
                 4, KILN_ERR_FORMAT, "'a'", "at most 8");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4,
                 KILN_ERR_FORMAT, "'a'", "begin, end");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4,
                 KILN_ERR_FORMAT, "'a'", "unknown key 'x'");
    expect_error("{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                 KILN_ERR_FORMAT, "empty tensor name", NULL);
    expect_error("{\"__metadata__\":{\"k\":1}}", 0, KILN_ERR_FORMAT, "__metadata__", "'k'");
    expect_error("{\"__metadata__\":[]}", 0, KILN_ERR_FORMAT, "__metadata__", NULL);
}

static void rejects_shape_overflow_and_span_mismatch(void **state)
{
    (void)state;
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
                 "\"data_offsets\":[0,4]}}",
                 4, KILN_ERR_FORMAT, "'a'", "overflows");
    /* fits in 64 bits as elements but not as bytes */
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],"
                 "\"data_offsets\":[0,4]}}",
                 4, KILN_ERR_FORMAT, "'a'", "overflows");
    /* a zero dimension makes the product zero, however large the others */
    struct kiln_error err = {0};
    assert_int_equal(parse("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,0],"
                           "\"data_offsets\":[0,0]}}",
                           0, &err),
                     KILN_OK);
    expect_error("{\"a\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
                 KILN_ERR_FORMAT, "'a'", "needs 6 bytes");
}

/* ---- writer and sets ---- */

static void write_tensors(const char *dir, const char *name, const char *const *names, int n,
                          const float *vals)
{
    struct kiln_st_writer *w = kiln_st_writer_create();
    struct kiln_error err = {0};
    for (int i = 0; i < n; i++) {
        int64_t shape[1] = {1};
        assert_int_equal(kiln_st_writer_add(w, names[i], KILN_DTYPE_F32, 1, shape, &vals[i], &err),
                         KILN_OK);
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    assert_int_equal(kiln_st_writer_write(w, path, &err), KILN_OK);
    kiln_st_writer_free(w);
}

static void writer_round_trip(void **state)
{
    (void)state;
    char *dir = tmpdir_make();
    uint8_t fp8[5] = {1, 2, 3, 4, 5};
    uint16_t bf16[3] = {0x3f80, 0x4000, 0xbf80};
    float f32[4] = {1.5f, -2.0f, 3.25f, 0.0f};
    float scalar = 0.125f;
    struct kiln_st_writer *w = kiln_st_writer_create();
    struct kiln_error err = {0};
    int64_t s5[1] = {5}, s3[1] = {3}, s22[2] = {2, 2};
    assert_int_equal(kiln_st_writer_add(w, "fp8", KILN_DTYPE_F8E4M3, 1, s5, fp8, &err), KILN_OK);
    assert_int_equal(kiln_st_writer_add(w, "bf16", KILN_DTYPE_BF16, 1, s3, bf16, &err), KILN_OK);
    assert_int_equal(kiln_st_writer_add(w, "f32", KILN_DTYPE_F32, 2, s22, f32, &err), KILN_OK);
    assert_int_equal(kiln_st_writer_add(w, "scalar", KILN_DTYPE_F32, 0, NULL, &scalar, &err),
                     KILN_OK);
    assert_int_equal(kiln_st_writer_bytes(w), 5 + 6 + 16 + 4);
    /* bad additions */
    assert_int_equal(kiln_st_writer_add(w, "fp8", KILN_DTYPE_F32, 0, NULL, &scalar, &err),
                     KILN_ERR_INVALID);
    assert_int_equal(kiln_st_writer_add(w, "__metadata__", KILN_DTYPE_F32, 0, NULL, &scalar, &err),
                     KILN_ERR_INVALID);
    int64_t neg[1] = {-1};
    assert_int_equal(kiln_st_writer_add(w, "n", KILN_DTYPE_F32, 1, neg, &scalar, &err),
                     KILN_ERR_INVALID);
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_int_equal(kiln_st_writer_write(w, path, &err), KILN_OK);
    kiln_st_writer_free(w);

    struct kiln_st_set set;
    assert_int_equal(kiln_st_open_dir(dir, &set, &err), KILN_OK);
    assert_int_equal(set.n_files, 1);
    assert_int_equal(set.n_tensors, 4);
    assert_int_equal(set.hdrs[0].data_offset % 8, 0);
    const struct kiln_st_tensor *t = kiln_st_find(&set, "f32");
    assert_non_null(t);
    assert_int_equal(t->ndim, 2);
    assert_int_equal((uintptr_t)t->data % 4, 0);
    assert_memory_equal(t->data, f32, sizeof f32);
    t = kiln_st_find(&set, "bf16");
    assert_int_equal((uintptr_t)t->data % 2, 0);
    assert_memory_equal(t->data, bf16, sizeof bf16);
    t = kiln_st_find(&set, "fp8");
    assert_memory_equal(t->data, fp8, sizeof fp8);
    t = kiln_st_find(&set, "scalar");
    assert_int_equal(t->ndim, 0);
    assert_memory_equal(t->data, &scalar, 4);
    assert_null(kiln_st_find(&set, "nope"));
    assert_string_equal(kiln_st_file_of(&set, t), path);
    kiln_st_close(&set);
    /* the metadata is torch's */
    size_t n;
    uint8_t *bytes = read_all(path, &n);
    const char *meta = "\"__metadata__\":{\"format\":\"pt\"}";
    assert_non_null(memmem(bytes, n, meta, strlen(meta)));
    free(bytes);
    tmpdir_remove(dir);
    free(dir);
}

static const char *const names_a[2] = {"x.a", "x.b"}, *const names_b[2] = {"y.a", "y.b"};
static const float vals[2] = {1.0f, 2.0f};

/* Two shards plus an index that is then rewritten to test each rule. */
static char *sharded_dir(void)
{
    char *dir = tmpdir_make();
    write_tensors(dir, "model-00001-of-00002.safetensors", names_a, 2, vals);
    write_tensors(dir, "model-00002-of-00002.safetensors", names_b, 2, vals);
    return dir;
}

static const char *const index_ok =
    "{\"metadata\":{\"total_size\":16},\"weight_map\":{"
    "\"x.a\":\"model-00001-of-00002.safetensors\",\"x.b\":\"model-00001-of-00002.safetensors\","
    "\"y.a\":\"model-00002-of-00002.safetensors\",\"y.b\":\"model-00002-of-00002.safetensors\"}}";

static void expect_dir_error(const char *dir, enum kiln_status code, const char *w1, const char *w2)
{
    struct kiln_st_set set;
    struct kiln_error err = {0};
    enum kiln_status st = kiln_st_open_dir(dir, &set, &err);
    if (st != code || (w1 && !strstr(err.msg, w1)) || (w2 && !strstr(err.msg, w2)))
        fail_msg("got %s '%s', want %s with '%s' '%s'", kiln_status_name(st), err.msg,
                 kiln_status_name(code), w1 ? w1 : "", w2 ? w2 : "");
}

static void sharded_set(void **state)
{
    (void)state;
    char *dir = sharded_dir();
    /* no index, two files: ambiguous */
    expect_dir_error(dir, KILN_ERR_FORMAT, "several", NULL);
    write_text(dir, "model.safetensors.index.json", index_ok);
    struct kiln_st_set set;
    struct kiln_error err = {0};
    assert_int_equal(kiln_st_open_dir(dir, &set, &err), KILN_OK);
    assert_int_equal(set.n_files, 2);
    assert_int_equal(set.n_tensors, 4);
    const struct kiln_st_tensor *t = kiln_st_find(&set, "y.b");
    assert_non_null(t);
    assert_non_null(strstr(kiln_st_file_of(&set, t), "model-00002-of-00002.safetensors"));
    float v;
    memcpy(&v, t->data, 4);
    assert_true(v == 2.0f);
    kiln_st_close(&set);

    /* index naming a missing shard */
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"x.a\":\"model-00001-of-00003.safetensors\"}}");
    expect_dir_error(dir, KILN_ERR_IO, "model-00001-of-00003.safetensors", "does not exist");
    /* index naming the wrong shard */
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{"
               "\"x.a\":\"model-00002-of-00002.safetensors\","
               "\"x.b\":\"model-00001-of-00002.safetensors\","
               "\"y.a\":\"model-00002-of-00002.safetensors\","
               "\"y.b\":\"model-00002-of-00002.safetensors\"}}");
    expect_dir_error(dir, KILN_ERR_FORMAT, "'x.a'", "should be in model-00002-of-00002");
    /* index listing a tensor no shard has */
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{"
               "\"x.a\":\"model-00001-of-00002.safetensors\","
               "\"x.b\":\"model-00001-of-00002.safetensors\","
               "\"y.a\":\"model-00002-of-00002.safetensors\","
               "\"y.b\":\"model-00002-of-00002.safetensors\","
               "\"y.c\":\"model-00002-of-00002.safetensors\"}}");
    expect_dir_error(dir, KILN_ERR_FORMAT, "'y.c'", "does not contain it");
    /* a shard tensor missing from the index */
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{"
               "\"x.a\":\"model-00001-of-00002.safetensors\","
               "\"y.a\":\"model-00002-of-00002.safetensors\","
               "\"y.b\":\"model-00002-of-00002.safetensors\"}}");
    expect_dir_error(dir, KILN_ERR_FORMAT, "'x.b'", "not in the index");
    /* shard names must stay inside the folder */
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\":{\"x.a\":\"../x\"}}");
    expect_dir_error(dir, KILN_ERR_FORMAT, "x.a", "not a file name");
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\":{}}");
    expect_dir_error(dir, KILN_ERR_FORMAT, "empty", NULL);
    write_text(dir, "model.safetensors.index.json", "{\"metadata\":{}}");
    expect_dir_error(dir, KILN_ERR_FORMAT, "weight_map", NULL);
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\":{\"a\":1,\"a\":2}}");
    expect_dir_error(dir, KILN_ERR_FORMAT, "duplicate", NULL);
    tmpdir_remove(dir);
    free(dir);
}

static void tensor_in_two_shards(void **state)
{
    (void)state;
    char *dir = tmpdir_make();
    write_tensors(dir, "model-00001-of-00002.safetensors", names_a, 2, vals);
    write_tensors(dir, "model-00002-of-00002.safetensors", names_a, 2, vals);
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"x.a\":\"model-00001-of-00002.safetensors\","
               "\"x.b\":\"model-00002-of-00002.safetensors\"}}");
    expect_dir_error(dir, KILN_ERR_FORMAT, "'x.a'", "two shards");
    /* same through open_files */
    char p1[4096], p2[4096];
    snprintf(p1, sizeof p1, "%s/model-00001-of-00002.safetensors", dir);
    snprintf(p2, sizeof p2, "%s/model-00002-of-00002.safetensors", dir);
    const char *paths[2] = {p1, p2};
    struct kiln_st_set set;
    struct kiln_error err = {0};
    assert_int_equal(kiln_st_open_files(paths, 2, &set, &err), KILN_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "two shards"));
    assert_int_equal(kiln_st_open_files(paths, 1, &set, &err), KILN_OK);
    assert_int_equal(set.n_tensors, 2);
    kiln_st_close(&set);
    tmpdir_remove(dir);
    free(dir);
}

static void single_file_lookup(void **state)
{
    (void)state;
    char *dir = tmpdir_make();
    expect_dir_error(dir, KILN_ERR_IO, "no model.safetensors", NULL);
    /* the one *.safetensors file of the folder */
    write_tensors(dir, "weights.safetensors", names_a, 2, vals);
    struct kiln_st_set set;
    struct kiln_error err = {0};
    assert_int_equal(kiln_st_open_dir(dir, &set, &err), KILN_OK);
    assert_int_equal(set.n_tensors, 2);
    kiln_st_close(&set);
    /* a corrupt file: the error names it */
    write_bytes(dir, "weights.safetensors", "\x05\0\0\0\0\0\0\0{\"a\":", 13);
    expect_dir_error(dir, KILN_ERR_FORMAT, "weights.safetensors", "JSON");
    /* model.safetensors wins over other files */
    write_tensors(dir, "model.safetensors", names_b, 2, vals);
    assert_int_equal(kiln_st_open_dir(dir, &set, &err), KILN_OK);
    assert_non_null(kiln_st_find(&set, "y.a"));
    kiln_st_close(&set);
    tmpdir_remove(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parses_valid_file),
        cmocka_unit_test(rejects_size_problems),
        cmocka_unit_test(rejects_truncated_data),
        cmocka_unit_test(rejects_bad_dtype),
        cmocka_unit_test(rejects_overlap_and_gap),
        cmocka_unit_test(rejects_last_end_not_file_size),
        cmocka_unit_test(rejects_duplicates_and_bad_json),
        cmocka_unit_test(rejects_bad_entries),
        cmocka_unit_test(rejects_shape_overflow_and_span_mismatch),
        cmocka_unit_test(writer_round_trip),
        cmocka_unit_test(sharded_set),
        cmocka_unit_test(tensor_in_two_shards),
        cmocka_unit_test(single_file_lookup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
