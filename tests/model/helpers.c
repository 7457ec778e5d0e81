#include "helpers.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/model.h"

char *tmpdir_make(void)
{
    const char *base = getenv("TMPDIR");
    char tmpl[4096];
    snprintf(tmpl, sizeof tmpl, "%s/kiln-test-XXXXXX", base && *base ? base : "/tmp");
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    return strdup(d);
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void tmpdir_remove(const char *path)
{
    nftw(path, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

void write_bytes(const char *dir, const char *name, const void *data, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

void write_text(const char *dir, const char *name, const char *text)
{
    write_bytes(dir, name, text, strlen(text));
}

uint8_t *st_build(const char *header, size_t data_len, size_t *size)
{
    size_t hlen = strlen(header);
    *size = 8 + hlen + data_len;
    uint8_t *b = malloc(*size ? *size : 1);
    assert_non_null(b);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    memcpy(b + 8, header, hlen);
    for (size_t i = 0; i < data_len; i++) b[8 + hlen + i] = (uint8_t)(i * 7);
    return b;
}

uint8_t *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)len + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return b;
}

void assert_same_tensor(const struct kiln_tensor *a, const struct kiln_tensor *b)
{
    assert_int_equal(a->dtype, b->dtype);
    assert_int_equal(a->ndim, b->ndim);
    size_t n = kiln_dtype_size(a->dtype);
    for (int i = 0; i < a->ndim; i++) {
        assert_int_equal(a->shape[i], b->shape[i]);
        n *= (size_t)a->shape[i];
    }
    assert_memory_equal(a->data, b->data, n);
}

static void same_linear(const struct kiln_linear *a, const struct kiln_linear *b)
{
    assert_int_equal(a->out, b->out);
    assert_int_equal(a->in, b->in);
    assert_int_equal(a->n_parts, b->n_parts);
    assert_int_equal(a->fp8, b->fp8);
    assert_true(a->weight_scale == b->weight_scale && a->input_scale == b->input_scale);
    for (int p = 0; p < a->n_parts; p++) {
        assert_same_tensor(&a->part[p], &b->part[p]);
        assert_true(a->part_weight_scale[p] == b->part_weight_scale[p]);
        assert_true(a->part_input_scale[p] == b->part_input_scale[p]);
    }
}

void assert_same_model(const struct kiln_model *a, const struct kiln_model *b)
{
    assert_same_tensor(&a->embed, &b->embed);
    assert_same_tensor(&a->norm, &b->norm);
    same_linear(&a->lm_head, &b->lm_head);
    assert_int_equal(a->cfg.n_layers, b->cfg.n_layers);
    for (int i = 0; i < a->cfg.n_layers; i++) {
        const struct kiln_layer_weights *x = &a->layers[i], *y = &b->layers[i];
        assert_same_tensor(&x->attn_norm, &y->attn_norm);
        assert_same_tensor(&x->mlp_norm, &y->mlp_norm);
        same_linear(&x->qkv, &y->qkv);
        same_linear(&x->o, &y->o);
        same_linear(&x->gate_up, &y->gate_up);
        same_linear(&x->down, &y->down);
        assert_true(x->k_scale == y->k_scale && x->v_scale == y->v_scale);
    }
}
