/* safetensors: strict header parser, shard sets over mmap, and a streaming writer.
 *
 * Parsing only touches the header (at most 100 MB); tensor bytes stay in the mapping, so
 * opening an 8 GB checkpoint costs one mmap per shard and no copy. */
#include "safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Index files of real checkpoints are a few hundred KB; this only guards against surprises. */
#define INDEX_MAX_BYTES (64u * 1024u * 1024u)
/* One write() moves at most ~2 GB on Linux; smaller calls keep the loop simple, and the sink
 * (progress, hashing, cancellation) hears from the writer every 64 MiB. */
#define WRITE_CHUNK (64u * 1024u * 1024u)

static uint64_t read_u64le(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* Bytes of a tensor of this dtype and shape; false on overflow. A zero dimension makes the
 * whole product zero even when other dimensions would overflow together. */
static bool tensor_bytes(enum kiln_dtype dt, int ndim, const int64_t *shape, uint64_t *out)
{
    uint64_t n = kiln_dtype_size(dt);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == 0) {
            *out = 0;
            return true;
        }
    }
    for (int i = 0; i < ndim; i++) {
        uint64_t d = (uint64_t)shape[i];
        if (n > UINT64_MAX / d) return false;
        n *= d;
    }
    *out = n;
    return true;
}

static enum kiln_status parse_metadata(const char *fname, json_t *v, struct kiln_error *err)
{
    if (!json_is_object(v))
        return kiln_errorf(err, KILN_ERR_FORMAT, "%s: __metadata__ is not an object", fname);
    const char *key;
    json_t *val;
    json_object_foreach(v, key, val)
    {
        if (!json_is_string(val))
            return kiln_errorf(err, KILN_ERR_FORMAT,
                               "%s: __metadata__ entry '%.200s' is not a string", fname, key);
    }
    return KILN_OK;
}

static enum kiln_status parse_int_array(const char *fname, const char *name, const char *what,
                                        json_t *arr, int max, int64_t *dst, int *n,
                                        struct kiln_error *err)
{
    if (!json_is_array(arr))
        return kiln_errorf(err, KILN_ERR_FORMAT, "%s: tensor '%.200s': %s is not an array", fname,
                           name, what);
    size_t len = json_array_size(arr);
    if (len > (size_t)max)
        return kiln_errorf(err, KILN_ERR_FORMAT,
                           "%s: tensor '%.200s': %s has %zu entries (at most %d)", fname, name,
                           what, len, max);
    for (size_t i = 0; i < len; i++) {
        json_t *e = json_array_get(arr, i);
        if (!json_is_integer(e) || json_integer_value(e) < 0)
            return kiln_errorf(err, KILN_ERR_FORMAT,
                               "%s: tensor '%.200s': %s[%zu] is not a non-negative integer", fname,
                               name, what, i);
        dst[i] = (int64_t)json_integer_value(e);
    }
    *n = (int)len;
    return KILN_OK;
}

static enum kiln_status parse_entry(const char *fname, const char *name, json_t *v,
                                    uint64_t data_size, struct kiln_st_tensor *t,
                                    struct kiln_error *err)
{
    if (!*name) return kiln_errorf(err, KILN_ERR_FORMAT, "%s: empty tensor name", fname);
    if (!json_is_object(v))
        return kiln_errorf(err, KILN_ERR_FORMAT, "%s: tensor '%.200s': entry is not an object",
                           fname, name);
    json_t *dtype = NULL, *shape = NULL, *offsets = NULL;
    const char *key;
    json_t *val;
    json_object_foreach(v, key, val)
    {
        if (!strcmp(key, "dtype"))
            dtype = val;
        else if (!strcmp(key, "shape"))
            shape = val;
        else if (!strcmp(key, "data_offsets"))
            offsets = val;
        else
            return kiln_errorf(err, KILN_ERR_FORMAT, "%s: tensor '%.200s': unknown key '%.100s'",
                               fname, name, key);
    }
    if (!dtype || !shape || !offsets)
        return kiln_errorf(err, KILN_ERR_FORMAT, "%s: tensor '%.200s': missing %s", fname, name,
                           !dtype   ? "dtype"
                           : !shape ? "shape"
                                    : "data_offsets");
    if (!json_is_string(dtype))
        return kiln_errorf(err, KILN_ERR_FORMAT, "%s: tensor '%.200s': dtype is not a string",
                           fname, name);
    if (kiln_dtype_parse(json_string_value(dtype), &t->dtype) != 0)
        return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                           "%s: tensor '%.200s': unsupported dtype '%.50s' (kiln reads F8_E4M3, "
                           "BF16, F16, F32, I32, I64)",
                           fname, name, json_string_value(dtype));
    enum kiln_status st =
        parse_int_array(fname, name, "shape", shape, KILN_ST_MAX_DIMS, t->shape, &t->ndim, err);
    if (st) return st;
    int64_t span[2];
    int n_span;
    st = parse_int_array(fname, name, "data_offsets", offsets, 2, span, &n_span, err);
    if (st) return st;
    if (n_span != 2)
        return kiln_errorf(err, KILN_ERR_FORMAT,
                           "%s: tensor '%.200s': data_offsets needs [begin, end]", fname, name);
    t->begin = (uint64_t)span[0];
    t->end = (uint64_t)span[1];
    if (t->begin > t->end)
        return kiln_errorf(err, KILN_ERR_FORMAT,
                           "%s: tensor '%.200s': data_offsets [%" PRIu64 ", %" PRIu64
                           "] end before begin",
                           fname, name, t->begin, t->end);
    if (t->end > data_size)
        return kiln_errorf(err, KILN_ERR_FORMAT,
                           "%s: tensor '%.200s': data_offsets [%" PRIu64 ", %" PRIu64
                           "] run past the data section (%" PRIu64 " bytes): file truncated?",
                           fname, name, t->begin, t->end, data_size);
    uint64_t bytes;
    if (!tensor_bytes(t->dtype, t->ndim, t->shape, &bytes))
        return kiln_errorf(err, KILN_ERR_FORMAT,
                           "%s: tensor '%.200s': shape x dtype size overflows 64 bits", fname,
                           name);
    if (bytes != t->end - t->begin)
        return kiln_errorf(err, KILN_ERR_FORMAT,
                           "%s: tensor '%.200s': shape x %s needs %" PRIu64
                           " bytes but data_offsets span %" PRIu64,
                           fname, name, kiln_dtype_name(t->dtype), bytes, t->end - t->begin);
    t->name = strdup(name);
    if (!t->name) return kiln_errorf(err, KILN_ERR_NOMEM, "%s: out of memory", fname);
    return KILN_OK;
}

static int cmp_span(const void *a, const void *b)
{
    const struct kiln_st_tensor *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Spans sorted by (begin, end) must tile [0, data_size) exactly; zero-size tensors may sit at
 * any boundary. */
static enum kiln_status check_tiling(const char *fname, const struct kiln_st_header *h,
                                     uint64_t data_size, struct kiln_error *err)
{
    uint64_t expect = 0;
    const char *prev = NULL;
    for (size_t i = 0; i < h->n; i++) {
        const struct kiln_st_tensor *t = &h->tensors[i];
        if (t->begin < expect)
            return kiln_errorf(err, KILN_ERR_FORMAT,
                               "%s: tensor '%.200s': data [%" PRIu64 ", %" PRIu64
                               ") overlaps tensor '%.200s' (which ends at %" PRIu64 ")",
                               fname, t->name, t->begin, t->end, prev, expect);
        if (t->begin > expect)
            return kiln_errorf(err, KILN_ERR_FORMAT,
                               "%s: tensor '%.200s': gap of %" PRIu64
                               " unused bytes before its data at %" PRIu64,
                               fname, t->name, t->begin - expect, t->begin);
        if (t->end > expect) {
            expect = t->end;
            prev = t->name;
        }
    }
    if (expect != data_size) {
        if (prev)
            return kiln_errorf(err, KILN_ERR_FORMAT,
                               "%s: %" PRIu64
                               " trailing bytes after the last tensor '%.200s' (data ends at "
                               "%" PRIu64 ", file has %" PRIu64 ")",
                               fname, data_size - expect, prev, expect, data_size);
        return kiln_errorf(err, KILN_ERR_FORMAT,
                           "%s: %" PRIu64 " data bytes but no tensor with data", fname, data_size);
    }
    return KILN_OK;
}

enum kiln_status kiln_st_parse(const uint8_t *buf, size_t size, const char *fname,
                               struct kiln_st_header *out, struct kiln_error *err)
{
    memset(out, 0, sizeof *out);
    if (size < 8)
        return kiln_errorf(err, KILN_ERR_FORMAT, "%s: %zu bytes, too short for a safetensors file",
                           fname, size);
    uint64_t hlen = read_u64le(buf);
    if (hlen > KILN_ST_MAX_HEADER)
        return kiln_errorf(err, KILN_ERR_FORMAT,
                           "%s: header length %" PRIu64
                           " exceeds the 100 MB limit (corrupt or not a safetensors file)",
                           fname, hlen);
    if (hlen > size - 8)
        return kiln_errorf(err, KILN_ERR_FORMAT,
                           "%s: header length %" PRIu64 " runs past the end of the file (%zu "
                           "bytes): truncated or not a safetensors file",
                           fname, hlen, size);
    const char *hdr = (const char *)buf + 8;
    if (memchr(hdr, 0, hlen))
        return kiln_errorf(err, KILN_ERR_FORMAT, "%s: header contains a NUL byte", fname);
    json_error_t jerr;
    json_t *root = json_loadb(hdr, hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return kiln_errorf(err, KILN_ERR_FORMAT,
                           "%s: header is not valid JSON (byte %d of the header): %s", fname,
                           jerr.position, jerr.text);
    enum kiln_status st = KILN_OK;
    if (!json_is_object(root)) {
        st = kiln_errorf(err, KILN_ERR_FORMAT, "%s: header is not a JSON object", fname);
        goto done;
    }
    out->data_offset = 8 + (size_t)hlen;
    uint64_t data_size = size - out->data_offset;
    size_t cap = json_object_size(root);
    out->tensors = calloc(cap ? cap : 1, sizeof *out->tensors);
    if (!out->tensors) {
        st = kiln_errorf(err, KILN_ERR_NOMEM, "%s: out of memory", fname);
        goto done;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val)
    {
        if (!strcmp(key, "__metadata__"))
            st = parse_metadata(fname, val, err);
        else {
            st = parse_entry(fname, key, val, data_size, &out->tensors[out->n], err);
            if (!st) out->n++;
        }
        if (st) goto done;
    }
    qsort(out->tensors, out->n, sizeof *out->tensors, cmp_span);
    st = check_tiling(fname, out, data_size, err);
    if (st) goto done;
    for (size_t i = 0; i < out->n; i++)
        out->tensors[i].data = buf + out->data_offset + out->tensors[i].begin;
done:
    json_decref(root);
    if (st) kiln_st_header_free(out);
    return st;
}

void kiln_st_header_free(struct kiln_st_header *h)
{
    if (!h) return;
    for (size_t i = 0; i < h->n; i++) free(h->tensors[i].name);
    free(h->tensors);
    memset(h, 0, sizeof *h);
}

/* ---- sets of shards ---- */

static int cmp_tensor_ptr(const void *a, const void *b)
{
    const struct kiln_st_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* Fills by_name and rejects a tensor stored in two shards (or twice in one set). */
static enum kiln_status build_lookup(struct kiln_st_set *s, struct kiln_error *err)
{
    size_t n = 0;
    for (int f = 0; f < s->n_files; f++) n += s->hdrs[f].n;
    s->by_name = calloc(n ? n : 1, sizeof *s->by_name);
    if (!s->by_name) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    for (int f = 0; f < s->n_files; f++)
        for (size_t i = 0; i < s->hdrs[f].n; i++)
            s->by_name[s->n_tensors++] = &s->hdrs[f].tensors[i];
    qsort(s->by_name, s->n_tensors, sizeof *s->by_name, cmp_tensor_ptr);
    for (size_t i = 1; i < s->n_tensors; i++) {
        const struct kiln_st_tensor *a = s->by_name[i - 1], *b = s->by_name[i];
        if (!strcmp(a->name, b->name))
            return kiln_errorf(err, KILN_ERR_FORMAT, "tensor '%.200s' is in two shards: %s and %s",
                               a->name, s->paths[a->file], s->paths[b->file]);
    }
    return KILN_OK;
}

enum kiln_status kiln_st_open_files(const char *const *paths, int n, struct kiln_st_set *out,
                                    struct kiln_error *err)
{
    memset(out, 0, sizeof *out);
    if (n <= 0) return kiln_errorf(err, KILN_ERR_INVALID, "no safetensors files given");
    out->paths = calloc((size_t)n, sizeof *out->paths);
    out->maps = calloc((size_t)n, sizeof *out->maps);
    out->hdrs = calloc((size_t)n, sizeof *out->hdrs);
    if (!out->paths || !out->maps || !out->hdrs) {
        kiln_st_close(out);
        return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    }
    enum kiln_status st = KILN_OK;
    for (int f = 0; f < n && !st; f++) {
        out->n_files = f + 1;
        out->paths[f] = strdup(paths[f]);
        if (!out->paths[f]) {
            st = kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
            break;
        }
        st = kiln_file_map(paths[f], &out->maps[f], err);
        if (st) break;
        st = kiln_st_parse(out->maps[f].data, out->maps[f].size, paths[f], &out->hdrs[f], err);
        if (st) break;
        for (size_t i = 0; i < out->hdrs[f].n; i++) out->hdrs[f].tensors[i].file = f;
    }
    if (!st) st = build_lookup(out, err);
    if (st) kiln_st_close(out);
    return st;
}

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A shard name from an index must be a plain file name inside the checkpoint folder. */
static bool plain_file_name(const char *s)
{
    return *s && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..");
}

/* The distinct shard names of a weight_map, sorted (model-00001-of-N first); they point into
 * the JSON. */
static enum kiln_status index_shards(const char *index_path, json_t *map, const char ***out,
                                     size_t *n_out, struct kiln_error *err)
{
    size_t n = 0, cap = json_object_size(map);
    if (cap == 0) return kiln_errorf(err, KILN_ERR_FORMAT, "%s: weight_map is empty", index_path);
    const char **names = calloc(cap, sizeof *names);
    if (!names) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    const char *key;
    json_t *val;
    json_object_foreach(map, key, val)
    {
        if (!json_is_string(val) || !plain_file_name(json_string_value(val))) {
            free(names);
            return kiln_errorf(err, KILN_ERR_FORMAT,
                               "%s: weight_map[\"%.200s\"] is not a file name in the folder",
                               index_path, key);
        }
        names[n++] = json_string_value(val);
    }
    qsort(names, n, sizeof *names, cmp_str_ptr);
    size_t u = 0;
    for (size_t i = 0; i < n; i++)
        if (u == 0 || strcmp(names[i], names[u - 1])) names[u++] = names[i];
    *out = names;
    *n_out = u;
    return KILN_OK;
}

/* Every tensor the index lists is in the shard it names, and every tensor of every shard is
 * listed. */
static enum kiln_status check_index(const char *index_path, json_t *map,
                                    const struct kiln_st_set *s, struct kiln_error *err)
{
    const char *key;
    json_t *val;
    json_object_foreach(map, key, val)
    {
        const struct kiln_st_tensor *t = kiln_st_find(s, key);
        const char *want = json_string_value(val);
        if (!t)
            return kiln_errorf(err, KILN_ERR_FORMAT,
                               "%s: tensor '%.200s' should be in %s, which does not contain it",
                               index_path, key, want);
        if (strcmp(base_name(s->paths[t->file]), want))
            return kiln_errorf(err, KILN_ERR_FORMAT,
                               "%s: tensor '%.200s' should be in %s but is in %s", index_path, key,
                               want, base_name(s->paths[t->file]));
    }
    for (size_t i = 0; i < s->n_tensors; i++) {
        const struct kiln_st_tensor *t = s->by_name[i];
        if (!json_object_get(map, t->name))
            return kiln_errorf(err, KILN_ERR_FORMAT,
                               "%s: tensor '%.200s' in %s is not in the index", index_path, t->name,
                               base_name(s->paths[t->file]));
    }
    return KILN_OK;
}

static void free_strings(char **v, size_t n)
{
    if (!v) return;
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

static enum kiln_status open_index(const char *dir, const char *index_path, struct kiln_st_set *out,
                                   struct kiln_error *err)
{
    char *text = NULL;
    size_t len = 0;
    enum kiln_status st = kiln_file_read(index_path, INDEX_MAX_BYTES, &text, &len, err);
    if (st) return st;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root)
        return kiln_errorf(err, KILN_ERR_FORMAT, "%s:%d:%d: %s", index_path, jerr.line, jerr.column,
                           jerr.text);
    json_t *map = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
    const char **names = NULL;
    char **paths = NULL;
    size_t n = 0;
    if (!json_is_object(map))
        st = kiln_errorf(err, KILN_ERR_FORMAT, "%s: no \"weight_map\" object", index_path);
    if (!st) st = index_shards(index_path, map, &names, &n, err);
    if (!st && n > INT32_MAX)
        st = kiln_errorf(err, KILN_ERR_LIMIT, "%s: too many shards", index_path);
    if (!st && !(paths = calloc(n, sizeof *paths)))
        st = kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n && !st; i++) {
        size_t cap = strlen(dir) + strlen(names[i]) + 2;
        paths[i] = malloc(cap);
        if (!paths[i])
            st = kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
        else
            st = kiln_path_join(paths[i], cap, dir, names[i], err);
        if (!st && !kiln_file_exists(paths[i]))
            st = kiln_errorf(err, KILN_ERR_IO, "%s names shard %s, which does not exist",
                             index_path, paths[i]);
    }
    if (!st) st = kiln_st_open_files((const char *const *)paths, (int)n, out, err);
    if (!st) {
        st = check_index(index_path, map, out, err);
        if (st) kiln_st_close(out);
    }
    free_strings(paths, n);
    free(names);
    json_decref(root);
    return st;
}

/* Without index or model.safetensors: the one *.safetensors file of the folder. */
static enum kiln_status find_single(const char *dir, char *path, size_t cap, struct kiln_error *err)
{
    DIR *d = opendir(dir);
    if (!d) return kiln_errorf(err, KILN_ERR_IO, "%s: %s", dir, strerror(errno));
    int found = 0;
    enum kiln_status st = KILN_OK;
    struct dirent *e;
    while ((e = readdir(d)) && !st) {
        size_t len = strlen(e->d_name);
        if (len <= 12 || strcmp(e->d_name + len - 12, ".safetensors")) continue;
        if (found++) {
            st = kiln_errorf(err, KILN_ERR_FORMAT,
                             "%s: several *.safetensors files but no "
                             "model.safetensors.index.json to say which belong together",
                             dir);
            break;
        }
        st = kiln_path_join(path, cap, dir, e->d_name, err);
    }
    closedir(d);
    if (!st && !found)
        st = kiln_errorf(err, KILN_ERR_IO,
                         "%s: no model.safetensors.index.json, model.safetensors or other "
                         "*.safetensors file",
                         dir);
    return st;
}

enum kiln_status kiln_st_open_dir(const char *dir, struct kiln_st_set *out, struct kiln_error *err)
{
    memset(out, 0, sizeof *out);
    char path[4096];
    enum kiln_status st =
        kiln_path_join(path, sizeof path, dir, "model.safetensors.index.json", err);
    if (st) return st;
    if (kiln_file_exists(path)) return open_index(dir, path, out, err);
    st = kiln_path_join(path, sizeof path, dir, "model.safetensors", err);
    if (st) return st;
    if (!kiln_file_exists(path)) st = find_single(dir, path, sizeof path, err);
    if (st) return st;
    const char *one = path;
    return kiln_st_open_files(&one, 1, out, err);
}

void kiln_st_close(struct kiln_st_set *set)
{
    if (!set) return;
    for (int f = 0; f < set->n_files; f++) {
        if (set->hdrs) kiln_st_header_free(&set->hdrs[f]);
        if (set->maps) kiln_file_unmap(&set->maps[f]);
        if (set->paths) free(set->paths[f]);
    }
    free(set->hdrs);
    free(set->maps);
    free(set->paths);
    free(set->by_name);
    memset(set, 0, sizeof *set);
}

static int cmp_name_key(const void *key, const void *elem)
{
    return strcmp(key, (*(const struct kiln_st_tensor *const *)elem)->name);
}

const struct kiln_st_tensor *kiln_st_find(const struct kiln_st_set *set, const char *name)
{
    if (!set->n_tensors) return NULL;
    const struct kiln_st_tensor *const *p =
        bsearch(name, set->by_name, set->n_tensors, sizeof *set->by_name, cmp_name_key);
    return p ? *p : NULL;
}

const char *kiln_st_file_of(const struct kiln_st_set *set, const struct kiln_st_tensor *t)
{
    return t->file >= 0 && t->file < set->n_files ? set->paths[t->file] : "(memory)";
}

/* ---- writer ---- */

struct wtensor {
    char *name;
    enum kiln_dtype dtype;
    int ndim;
    int64_t shape[KILN_ST_MAX_DIMS];
    const void *data;
    kiln_st_fill_fn fill; /* or: bytes made on demand, row range by row range */
    void *fill_ctx;
    uint64_t bytes;
    size_t order; /* insertion index, for a stable layout */
};

struct kiln_st_writer {
    struct wtensor *t; /* [n] */
    size_t n, cap;
    uint64_t bytes;
    kiln_st_sink_fn sink;
    void *sink_ctx;
};

struct kiln_st_writer *kiln_st_writer_create(void)
{
    return calloc(1, sizeof(struct kiln_st_writer));
}

void kiln_st_writer_free(struct kiln_st_writer *w)
{
    if (!w) return;
    for (size_t i = 0; i < w->n; i++) free(w->t[i].name);
    free(w->t);
    free(w);
}

size_t kiln_st_writer_bytes(const struct kiln_st_writer *w)
{
    return (size_t)w->bytes;
}

void kiln_st_writer_set_sink(struct kiln_st_writer *w, kiln_st_sink_fn sink, void *ctx)
{
    w->sink = sink;
    w->sink_ctx = ctx;
}

static enum kiln_status add_entry(struct kiln_st_writer *w, const char *name, enum kiln_dtype dt,
                                  int ndim, const int64_t *shape, const void *data,
                                  kiln_st_fill_fn fill, void *fill_ctx, struct kiln_error *err)
{
    if (!*name || !strcmp(name, "__metadata__"))
        return kiln_errorf(err, KILN_ERR_INVALID, "'%s' is not a valid tensor name", name);
    if ((unsigned)dt >= KILN_DTYPE_COUNT)
        return kiln_errorf(err, KILN_ERR_INVALID, "%s: bad dtype %d", name, (int)dt);
    if (ndim < 0 || ndim > KILN_ST_MAX_DIMS)
        return kiln_errorf(err, KILN_ERR_INVALID, "%s: %d dimensions (at most %d)", name, ndim,
                           KILN_ST_MAX_DIMS);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0) return kiln_errorf(err, KILN_ERR_INVALID, "%s: negative dimension", name);
    for (size_t i = 0; i < w->n; i++)
        if (!strcmp(w->t[i].name, name))
            return kiln_errorf(err, KILN_ERR_INVALID, "%s: added twice", name);
    uint64_t bytes;
    if (!tensor_bytes(dt, ndim, shape, &bytes) || bytes > UINT64_MAX - w->bytes)
        return kiln_errorf(err, KILN_ERR_INVALID, "%s: size overflows", name);
    if (bytes && !data && !fill) return kiln_errorf(err, KILN_ERR_INVALID, "%s: no data", name);
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 64;
        struct wtensor *nt = realloc(w->t, cap * sizeof *nt);
        if (!nt) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
        w->t = nt;
        w->cap = cap;
    }
    struct wtensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    t->dtype = dt;
    t->ndim = ndim;
    if (ndim) memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->data = data;
    t->fill = fill;
    t->fill_ctx = fill_ctx;
    t->bytes = bytes;
    t->order = w->n++;
    w->bytes += bytes;
    return KILN_OK;
}

enum kiln_status kiln_st_writer_add(struct kiln_st_writer *w, const char *name, enum kiln_dtype dt,
                                    int ndim, const int64_t *shape, const void *data,
                                    struct kiln_error *err)
{
    return add_entry(w, name, dt, ndim, shape, data, NULL, NULL, err);
}

enum kiln_status kiln_st_writer_add_fill(struct kiln_st_writer *w, const char *name,
                                         enum kiln_dtype dt, int ndim, const int64_t *shape,
                                         kiln_st_fill_fn fill, void *ctx, struct kiln_error *err)
{
    if (!fill) return kiln_errorf(err, KILN_ERR_INVALID, "%s: no fill function", name);
    return add_entry(w, name, dt, ndim, shape, NULL, fill, ctx, err);
}

/* Data order: widest elements first, then insertion order. With the header padded to a
 * multiple of 8 this keeps every tensor aligned to its element size in the mapping (what the
 * Rust safetensors writer does too), so readers may load F32 data in place. */
static int cmp_layout(const void *a, const void *b)
{
    const struct wtensor *x = a, *y = b;
    size_t sx = kiln_dtype_size(x->dtype), sy = kiln_dtype_size(y->dtype);
    if (sx != sy) return sx > sy ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

static char *header_json(const struct kiln_st_writer *w, struct kiln_error *err)
{
    json_t *root = json_object();
    json_t *meta = json_object();
    bool ok = root && meta && !json_object_set_new(meta, "format", json_string("pt")) &&
              !json_object_set_new(root, "__metadata__", meta);
    uint64_t off = 0;
    for (size_t i = 0; ok && i < w->n; i++) {
        const struct wtensor *t = &w->t[i];
        json_t *shape = json_array(), *e = json_object();
        ok = shape && e;
        for (int d = 0; ok && d < t->ndim; d++)
            ok = !json_array_append_new(shape, json_integer(t->shape[d]));
        ok = ok && !json_object_set_new(e, "dtype", json_string(kiln_dtype_name(t->dtype)));
        ok = ok && !json_object_set_new(e, "shape", shape);
        shape = NULL;
        ok = ok &&
             !json_object_set_new(e, "data_offsets",
                                  json_pack("[II]", (json_int_t)off, (json_int_t)(off + t->bytes)));
        ok = ok && !json_object_set_new(root, t->name, e);
        json_decref(shape);
        off += t->bytes;
    }
    char *s = ok ? json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(root);
    if (!s) kiln_errorf(err, KILN_ERR_NOMEM, "out of memory building the header");
    return s;
}

/* Writes n bytes and hands every WRITE_CHUNK of them to the sink once on disk. */
static enum kiln_status write_all(const struct kiln_st_writer *w, int fd, const char *path,
                                  const void *data, uint64_t n, struct kiln_error *err)
{
    const char *p = data;
    while (n > 0) {
        size_t chunk = n > WRITE_CHUNK ? WRITE_CHUNK : (size_t)n;
        ssize_t got = write(fd, p, chunk);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0)
            return kiln_errorf(err, KILN_ERR_IO, "%s: write: %s", path,
                               got < 0 ? strerror(errno) : "no progress");
        if (w->sink) {
            enum kiln_status st = w->sink(w->sink_ctx, p, (size_t)got, err);
            if (st) return st;
        }
        p += got;
        n -= (uint64_t)got;
    }
    return KILN_OK;
}

/* A filled tensor, WRITE_CHUNK at a time in whole rows of its first dimension (a tensor of
 * fewer than two dimensions is one row) through buf (cap bytes, at least one row). */
static enum kiln_status write_filled(const struct kiln_st_writer *w, int fd, const char *path,
                                     const struct wtensor *t, uint8_t *buf, size_t cap,
                                     struct kiln_error *err)
{
    int64_t rows = t->ndim >= 2 ? t->shape[0] : 1;
    size_t row_bytes = rows ? (size_t)(t->bytes / (uint64_t)rows) : 0;
    if (!row_bytes) return KILN_OK;
    int64_t step = (int64_t)(cap / row_bytes);
    for (int64_t r0 = 0; r0 < rows; r0 += step) {
        int64_t r1 = rows - r0 < step ? rows : r0 + step;
        enum kiln_status st = t->fill(t->fill_ctx, r0, r1, buf, err);
        if (!st) st = write_all(w, fd, path, buf, (uint64_t)(r1 - r0) * row_bytes, err);
        if (st) return kiln_error_prefix(err, "%s", t->name);
    }
    return KILN_OK;
}

/* Bytes of the buffer filled tensors go through: WRITE_CHUNK, or one row when larger. */
static size_t fill_buffer_bytes(const struct kiln_st_writer *w)
{
    size_t cap = 0;
    for (size_t i = 0; i < w->n; i++) {
        const struct wtensor *t = &w->t[i];
        if (!t->fill) continue;
        int64_t rows = t->ndim >= 2 ? t->shape[0] : 1;
        size_t row = rows ? (size_t)(t->bytes / (uint64_t)rows) : 0;
        size_t need = row > WRITE_CHUNK ? row : WRITE_CHUNK;
        if (need > cap) cap = need;
    }
    return cap;
}

static enum kiln_status write_file(const struct kiln_st_writer *w, const char *hdr, const char *tmp,
                                   struct kiln_error *err)
{
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return kiln_errorf(err, KILN_ERR_IO, "%s: %s", tmp, strerror(errno));
    /* header padded with spaces so the data section starts 8-byte aligned */
    size_t hlen = strlen(hdr), padded = (hlen + 7) & ~(size_t)7;
    uint8_t prefix[8];
    for (int i = 0; i < 8; i++) prefix[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    static const char spaces[8] = "        ";
    size_t cap = fill_buffer_bytes(w);
    uint8_t *buf = cap ? malloc(cap) : NULL;
    enum kiln_status st = cap && !buf ? kiln_errorf(err, KILN_ERR_NOMEM, "out of memory") : KILN_OK;
    if (!st) st = write_all(w, fd, tmp, prefix, 8, err);
    if (!st) st = write_all(w, fd, tmp, hdr, hlen, err);
    if (!st) st = write_all(w, fd, tmp, spaces, padded - hlen, err);
    for (size_t i = 0; i < w->n && !st; i++)
        st = w->t[i].fill ? write_filled(w, fd, tmp, &w->t[i], buf, cap, err)
                          : write_all(w, fd, tmp, w->t[i].data, w->t[i].bytes, err);
    free(buf);
    if (!st && fsync(fd) != 0)
        st = kiln_errorf(err, KILN_ERR_IO, "%s: fsync: %s", tmp, strerror(errno));
    if (close(fd) != 0 && !st)
        st = kiln_errorf(err, KILN_ERR_IO, "%s: close: %s", tmp, strerror(errno));
    return st;
}

enum kiln_status kiln_st_writer_write(struct kiln_st_writer *w, const char *path,
                                      struct kiln_error *err)
{
    qsort(w->t, w->n, sizeof *w->t, cmp_layout);
    char *hdr = header_json(w, err);
    if (!hdr) return KILN_ERR_NOMEM;
    if (strlen(hdr) > KILN_ST_MAX_HEADER - 8) {
        free(hdr);
        return kiln_errorf(err, KILN_ERR_LIMIT, "%s: header over the 100 MB limit", path);
    }
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp-%d", path, (int)getpid()) >= (int)sizeof tmp) {
        free(hdr);
        return kiln_errorf(err, KILN_ERR_INVALID, "%s: path too long", path);
    }
    enum kiln_status st = write_file(w, hdr, tmp, err);
    free(hdr);
    if (!st && rename(tmp, path) != 0)
        st = kiln_errorf(err, KILN_ERR_IO, "rename %s -> %s: %s", tmp, path, strerror(errno));
    if (st) unlink(tmp);
    return st;
}
