/* Writing kiln's folders (format.h): the temporary output folder and its rename, file copies
 * with checksums, and the fused weights file both formats share. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/cuda/kernels.h"
#include "core/file.h"
#include "core/log.h"
#include "format.h"

/* Tokenizer files are a few MB; this only guards against surprises. */
#define COPY_LIMIT (1u << 30)

/* ---- output folders ---- */

static int remove_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void remove_tree(const char *path)
{
    nftw(path, remove_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static bool dir_is_empty(const char *path)
{
    DIR *d = opendir(path);
    if (!d) return false;
    struct dirent *e;
    bool empty = true;
    while (empty && (e = readdir(d))) empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
    closedir(d);
    return empty;
}

/* OUT.tmp-PID and OUT.old-PID of processes that no longer exist (killed during a write). */
static void remove_leftovers(const char *out)
{
    char a[4096], b[4096];
    snprintf(a, sizeof a, "%s", out);
    snprintf(b, sizeof b, "%s", out);
    const char *parent = dirname(a), *base = basename(b);
    size_t blen = strlen(base);
    DIR *d = opendir(parent);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *n = e->d_name, *suffix = n + blen;
        if (strncmp(n, base, blen) || (strncmp(suffix, ".tmp-", 5) && strncmp(suffix, ".old-", 5)))
            continue;
        char *end;
        long pid = strtol(suffix + 5, &end, 10);
        if (*end || pid <= 0 || pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", parent, n);
        KILN_INFO("removing %s, left by an interrupted run", path);
        remove_tree(path);
    }
    closedir(d);
}

enum kiln_status kiln_outdir_check(const char *out, bool force, struct kiln_error *err)
{
    struct stat st;
    if (stat(out, &st) != 0) return KILN_OK;
    if (!S_ISDIR(st.st_mode))
        return kiln_errorf(err, KILN_ERR_IO, "%s exists and is not a folder", out);
    if (!force && !dir_is_empty(out))
        return kiln_errorf(err, KILN_ERR_IO, "%s exists (pass --force to replace it)", out);
    return KILN_OK;
}

enum kiln_status kiln_outdir_begin(struct kiln_outdir *o, const char *out, bool force,
                                   struct kiln_error *err)
{
    memset(o, 0, sizeof *o);
    size_t len = strlen(out);
    while (len > 1 && out[len - 1] == '/') len--; /* "out/" and "out" name one folder */
    if (len == 0 || len + 16 >= sizeof o->out)
        return kiln_errorf(err, KILN_ERR_INVALID, "'%s' is not a usable output folder", out);
    memcpy(o->out, out, len);
    o->out[len] = 0;
    enum kiln_status st = kiln_outdir_check(o->out, force, err);
    if (st) return st;
    remove_leftovers(o->out);
    snprintf(o->tmp, sizeof o->tmp, "%s.tmp-%d", o->out, (int)getpid());
    remove_tree(o->tmp);
    if (mkdir(o->tmp, 0755) != 0)
        return kiln_errorf(err, KILN_ERR_IO, "%s: %s", o->tmp, strerror(errno));
    o->open = true;
    return KILN_OK;
}

enum kiln_status kiln_outdir_path(const struct kiln_outdir *o, const char *name, char *dst,
                                  size_t cap, struct kiln_error *err)
{
    return kiln_path_join(dst, cap, o->tmp, name, err);
}

static void sync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    fsync(fd);
    close(fd);
}

enum kiln_status kiln_outdir_commit(struct kiln_outdir *o, struct kiln_error *err)
{
    KILN_ASSERT(o->open);
    sync_dir(o->tmp);
    char old[4200];
    snprintf(old, sizeof old, "%s.old-%d", o->out, (int)getpid());
    struct stat st;
    bool existed = stat(o->out, &st) == 0;
    if (existed && rename(o->out, old) != 0)
        return kiln_errorf(err, KILN_ERR_IO, "rename %s -> %s: %s", o->out, old, strerror(errno));
    if (rename(o->tmp, o->out) != 0) {
        int e = errno;
        if (existed) rename(old, o->out);
        return kiln_errorf(err, KILN_ERR_IO, "rename %s -> %s: %s", o->tmp, o->out, strerror(e));
    }
    o->open = false;
    if (existed) remove_tree(old);
    char parent[4096];
    snprintf(parent, sizeof parent, "%s", o->out);
    sync_dir(dirname(parent));
    return KILN_OK;
}

void kiln_outdir_abort(struct kiln_outdir *o)
{
    if (!o->open) return;
    remove_tree(o->tmp);
    o->open = false;
}

enum kiln_status kiln_copy_file(const char *src, const char *dst, const char *name,
                                struct kiln_file_record *rec, struct kiln_error *err)
{
    char *data;
    size_t len;
    enum kiln_status st = kiln_file_read(src, COPY_LIMIT, &data, &len, err);
    if (st) return st;
    st = kiln_file_write_atomic(dst, data, len, err);
    if (!st && rec) {
        memset(rec, 0, sizeof *rec);
        snprintf(rec->name, sizeof rec->name, "%s", name);
        rec->bytes = len;
        st = kiln_hash_bytes(data, len, NULL, &rec->xxh3, err);
    }
    free(data);
    return st;
}

/* ---- fused weights ---- */

/* A linear written row range by row range, in its output row order. */
struct fill {
    const struct kiln_linear *l;
    int order, head_dim;
    int64_t f;
    size_t row_bytes;
    struct kiln_pool *pool;
    int64_t r0; /* this call's first row */
    uint8_t *dst;
};

static void fill_range(void *ctx, size_t i0, size_t i1)
{
    const struct fill *c = ctx;
    int64_t a = c->r0 + (int64_t)i0, b = c->r0 + (int64_t)i1;
    if (c->order == KILN_ROWS_PLAIN) {
        kiln_linear_rows(c->l, a, b, c->dst + i0 * c->row_bytes);
        return;
    }
    for (int64_t r = a; r < b; r++) {
        int64_t nat = kiln_cuda_natural_row((enum kiln_row_order)c->order, r, c->head_dim, c->f);
        kiln_linear_rows(c->l, nat, nat + 1, c->dst + (size_t)(r - c->r0) * c->row_bytes);
    }
}

static enum kiln_status fill_rows(void *ctx, int64_t r0, int64_t r1, void *dst,
                                  struct kiln_error *err)
{
    (void)err;
    struct fill *c = ctx;
    c->r0 = r0;
    c->dst = dst;
    kiln_parallel_for(c->pool, (size_t)(r1 - r0), fill_range, c);
    return KILN_OK;
}

struct fused_writer {
    const struct kiln_model *m;
    const struct kiln_fused_options *o;
    struct kiln_st_writer *w;
    struct fill *fills; /* [4 n_layers + 1] */
    int n_fills;
};

static enum kiln_status add_scalar(struct fused_writer *fw, const char *module, const char *what,
                                   const float *v, struct kiln_error *err)
{
    char name[320];
    snprintf(name, sizeof name, "%s.%s", module, what);
    return kiln_st_writer_add(fw->w, name, KILN_DTYPE_F32, 0, NULL, v, err);
}

static enum kiln_status add_tensor(struct fused_writer *fw, const char *name,
                                   const struct kiln_tensor *t, struct kiln_error *err)
{
    return kiln_st_writer_add(fw->w, name, t->dtype, t->ndim, t->shape, t->data, err);
}

static enum kiln_status add_linear(struct fused_writer *fw, const char *module,
                                   const struct kiln_linear *l, int order, struct kiln_error *err)
{
    int dt = kiln_linear_dtype(l);
    if (dt < 0)
        return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                           "%s: the fused parts have different dtypes (%s, %s); kiln stores them "
                           "as one tensor",
                           module, kiln_dtype_name(l->part[0].dtype),
                           kiln_dtype_name(l->part[1].dtype));
    const struct kiln_config *c = &fw->m->cfg;
    if ((order == KILN_ROWS_QKV_PAIRED && c->head_dim % 16) ||
        (order == KILN_ROWS_GU_INTERLEAVED && l->out % 16))
        return kiln_errorf(err, KILN_ERR_UNSUPPORTED, "%s: %d rows do not tile for %s order",
                           module, (int)l->out, kiln_row_order_name(order));
    char name[320];
    snprintf(name, sizeof name, "%s.weight", module);
    int64_t shape[2] = {l->out, l->in};
    enum kiln_status st;
    if (l->n_parts == 1 && l->row_order == order) {
        st = kiln_st_writer_add(fw->w, name, (enum kiln_dtype)dt, 2, shape, l->part[0].data, err);
    } else {
        struct fill *f = &fw->fills[fw->n_fills++];
        *f = (struct fill){.l = l,
                           .order = order,
                           .head_dim = c->head_dim,
                           .f = l->out / 2,
                           .row_bytes = (size_t)l->in * kiln_dtype_size((enum kiln_dtype)dt),
                           .pool = fw->o->pool};
        st = kiln_st_writer_add_fill(fw->w, name, (enum kiln_dtype)dt, 2, shape, fill_rows, f, err);
    }
    if (!st && l->fp8) st = add_scalar(fw, module, "weight_scale", &l->weight_scale, err);
    if (!st && l->fp8) st = add_scalar(fw, module, "input_scale", &l->input_scale, err);
    return st;
}

static enum kiln_status add_layer(struct fused_writer *fw, int i, struct kiln_error *err)
{
    const struct kiln_layer_weights *w = &fw->m->layers[i];
    char p[160], name[320];
    enum kiln_status st;
    snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", i);
    if ((st = add_tensor(fw, name, &w->attn_norm, err))) return st;
    snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", i);
    if ((st = add_tensor(fw, name, &w->mlp_norm, err))) return st;
    snprintf(p, sizeof p, "model.layers.%d.%s", i, KILN_FUSED_QKV);
    if ((st = add_linear(fw, p, &w->qkv, fw->o->qkv_order, err))) return st;
    snprintf(p, sizeof p, "model.layers.%d.self_attn.o_proj", i);
    if ((st = add_linear(fw, p, &w->o, KILN_ROWS_PLAIN, err))) return st;
    snprintf(p, sizeof p, "model.layers.%d.%s", i, KILN_FUSED_GATE_UP);
    if ((st = add_linear(fw, p, &w->gate_up, fw->o->gate_up_order, err))) return st;
    snprintf(p, sizeof p, "model.layers.%d.mlp.down_proj", i);
    if ((st = add_linear(fw, p, &w->down, KILN_ROWS_PLAIN, err))) return st;
    if (fw->o->kv_scales) {
        snprintf(p, sizeof p, "model.layers.%d.self_attn", i);
        if ((st = add_scalar(fw, p, "k_scale", &w->k_scale, err)) ||
            (st = add_scalar(fw, p, "v_scale", &w->v_scale, err)))
            return st;
    }
    return KILN_OK;
}

static enum kiln_status build_writer(struct fused_writer *fw, struct kiln_error *err)
{
    const struct kiln_model *m = fw->m;
    fw->w = kiln_st_writer_create();
    fw->fills = calloc((size_t)m->cfg.n_layers * 4 + 1, sizeof *fw->fills);
    if (!fw->w || !fw->fills) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    enum kiln_status st = add_tensor(fw, "model.embed_tokens.weight", &m->embed, err);
    for (int i = 0; !st && i < m->cfg.n_layers; i++) st = add_layer(fw, i, err);
    if (!st) st = add_tensor(fw, "model.norm.weight", &m->norm, err);
    if (!st && !m->cfg.tie_word_embeddings)
        st = add_linear(fw, "lm_head", &m->lm_head, KILN_ROWS_PLAIN, err);
    return st;
}

enum kiln_status kiln_write_fused(const struct kiln_model *m, const char *path,
                                  const struct kiln_fused_options *o, struct kiln_error *err)
{
    struct fused_writer fw = {.m = m, .o = o};
    enum kiln_status st = build_writer(&fw, err);
    if (!st) {
        kiln_st_writer_set_sink(fw.w, o->sink, o->sink_ctx);
        st = kiln_st_writer_write(fw.w, path, err);
    }
    kiln_st_writer_free(fw.w);
    free(fw.fills);
    return st;
}

uint64_t kiln_fused_bytes(const struct kiln_model *m, bool kv_scales)
{
    struct kiln_fused_options o = {.kv_scales = kv_scales};
    struct fused_writer fw = {.m = m, .o = &o};
    uint64_t n = build_writer(&fw, NULL) ? 0 : kiln_st_writer_bytes(fw.w);
    kiln_st_writer_free(fw.w);
    free(fw.fills);
    return n;
}
