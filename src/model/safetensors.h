/* safetensors: https://github.com/huggingface/safetensors#format
 *   [u64 little-endian N][N bytes of UTF-8 JSON header][data]
 * The header maps tensor names to {"dtype","shape","data_offsets":[begin,end]} (offsets relative
 * to the data section) plus an optional "__metadata__" object of strings.
 *
 * The parser is strict because the bytes are untrusted: header length <= 100 MB and inside the
 * file, valid UTF-8 JSON object, no duplicate names, known dtype, shape x dtype size computed
 * with overflow checks and equal to the span, spans contiguous and non-overlapping from 0, the
 * last end equal to the data size. Every error names the file and the tensor. */
#ifndef KILN_MODEL_SAFETENSORS_H
#define KILN_MODEL_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/file.h"
#include "core/numeric.h"

#define KILN_ST_MAX_HEADER (100u * 1024u * 1024u)
#define KILN_ST_MAX_DIMS   8

struct kiln_st_tensor {
    char *name;
    enum kiln_dtype dtype;
    int ndim;
    int64_t shape[KILN_ST_MAX_DIMS];
    uint64_t begin, end; /* byte span inside the data section */
    const void *data;    /* points into the file's bytes */
    int file;            /* index of the shard in its set */
};

struct kiln_st_header {
    struct kiln_st_tensor *tensors; /* [n], in data-offset order */
    size_t n;
    size_t data_offset; /* 8 + header length */
};

/* Parses and validates a whole safetensors file held in memory (the libFuzzer entry point).
 * fname is only used in messages. Tensor data pointers point into buf. */
enum kiln_status kiln_st_parse(const uint8_t *buf, size_t size, const char *fname,
                               struct kiln_st_header *out, struct kiln_error *err);
void kiln_st_header_free(struct kiln_st_header *h);

/* A checkpoint's tensors over one or many mapped shards. */
struct kiln_st_set {
    int n_files;
    char **paths;                    /* [n_files] */
    struct kiln_mapping *maps;       /* [n_files] */
    struct kiln_st_header *hdrs;     /* [n_files] */
    struct kiln_st_tensor **by_name; /* [n_tensors], sorted by name, for lookup */
    size_t n_tensors;
};

/* Opens DIR/model.safetensors.index.json when present (every shard it names must exist and
 * every tensor must be in the shard the index says), else DIR/model.safetensors, else the one
 * *.safetensors file in DIR. */
enum kiln_status kiln_st_open_dir(const char *dir, struct kiln_st_set *out, struct kiln_error *err);
enum kiln_status kiln_st_open_files(const char *const *paths, int n, struct kiln_st_set *out,
                                    struct kiln_error *err);
void kiln_st_close(struct kiln_st_set *set);
const struct kiln_st_tensor *kiln_st_find(const struct kiln_st_set *set, const char *name);
const char *kiln_st_file_of(const struct kiln_st_set *set, const struct kiln_st_tensor *t);

/* Writer: collects tensors (their data is referenced, not copied) and writes one file. Data
 * is laid out widest dtype first, then in insertion order, after a header padded to a multiple
 * of 8 bytes, so every tensor is aligned to its element size; the header's __metadata__ is
 * {"format":"pt"} as torch's writers put it. Large tensors are streamed with write(). */
struct kiln_st_writer;
struct kiln_st_writer *kiln_st_writer_create(void);
/* data must stay valid until kiln_st_writer_write returns. */
enum kiln_status kiln_st_writer_add(struct kiln_st_writer *w, const char *name, enum kiln_dtype dt,
                                    int ndim, const int64_t *shape, const void *data,
                                    struct kiln_error *err);
/* A tensor whose bytes are made while writing, so a converted model is never held whole in
 * memory: fill writes rows [r0, r1) of the first dimension (a tensor of fewer than two
 * dimensions is one row) into dst, at most 64 MiB (or one row) per call, in order. */
typedef enum kiln_status (*kiln_st_fill_fn)(void *ctx, int64_t r0, int64_t r1, void *dst,
                                            struct kiln_error *err);
enum kiln_status kiln_st_writer_add_fill(struct kiln_st_writer *w, const char *name,
                                         enum kiln_dtype dt, int ndim, const int64_t *shape,
                                         kiln_st_fill_fn fill, void *ctx, struct kiln_error *err);
/* Hears every byte of the file once it is written, in file order, at most 64 MiB per call
 * (hashing, progress); a failure it returns stops the write, which then leaves no file. */
typedef enum kiln_status (*kiln_st_sink_fn)(void *ctx, const void *data, size_t n,
                                            struct kiln_error *err);
void kiln_st_writer_set_sink(struct kiln_st_writer *w, kiln_st_sink_fn sink, void *ctx);
size_t kiln_st_writer_bytes(const struct kiln_st_writer *w); /* data bytes so far */
/* Writes atomically: PATH.tmp-PID, fsync, rename to PATH. */
enum kiln_status kiln_st_writer_write(struct kiln_st_writer *w, const char *path,
                                      struct kiln_error *err);
void kiln_st_writer_free(struct kiln_st_writer *w);

#endif
