/* The KV block manager (see kvcache.h). */
#include "kvcache.h"

#include <stdlib.h>
#include <string.h>

#include "sampler.h"

uint64_t kiln_kv_block_hash(uint64_t parent, const int32_t *tokens, int n)
{
    uint64_t h = kiln_splitmix64(parent);
    for (int i = 0; i < n; i++) h = kiln_splitmix64(h ^ (uint32_t)tokens[i]);
    return h;
}

enum kiln_status kiln_kv_init(struct kiln_kv *kv, int n_blocks, int block_size, bool prefix_caching,
                              struct kiln_error *err)
{
    memset(kv, 0, sizeof *kv);
    if (n_blocks < 1 || block_size < 1 || n_blocks > (1 << 28))
        return kiln_errorf(err, KILN_ERR_INVALID,
                           "KV cache: %d blocks of %d positions is not a usable pool", n_blocks,
                           block_size);
    kv->n_blocks = n_blocks;
    kv->block_size = block_size;
    kv->prefix_caching = prefix_caching;
    uint32_t cap = 1;
    while (cap < 2u * (uint32_t)n_blocks) cap <<= 1; /* load <= 1/2: short probes */
    size_t nb = (size_t)n_blocks;
    kv->ref = calloc(nb, sizeof *kv->ref);
    kv->prev = malloc(nb * sizeof *kv->prev);
    kv->next = malloc(nb * sizeof *kv->next);
    kv->cached = calloc(nb, 1);
    kv->hash = calloc(nb, sizeof *kv->hash);
    kv->parent = calloc(nb, sizeof *kv->parent);
    kv->tokens = prefix_caching ? malloc(nb * (size_t)block_size * sizeof *kv->tokens) : NULL;
    kv->table = malloc((size_t)cap * sizeof *kv->table);
    if (!kv->ref || !kv->prev || !kv->next || !kv->cached || !kv->hash || !kv->parent ||
        (prefix_caching && !kv->tokens) || !kv->table) {
        kiln_kv_free(kv);
        return kiln_errorf(err, KILN_ERR_NOMEM, "KV cache: out of memory for %d blocks", n_blocks);
    }
    kv->table_mask = cap - 1;
    memset(kv->table, 0xff, (size_t)cap * sizeof *kv->table);
    for (int b = 0; b < n_blocks; b++) {
        kv->prev[b] = b - 1;
        kv->next[b] = b + 1 < n_blocks ? b + 1 : -1;
    }
    kv->head = 0;
    kv->tail = n_blocks - 1;
    kv->n_free = n_blocks;
    return KILN_OK;
}

void kiln_kv_free(struct kiln_kv *kv)
{
    free(kv->ref);
    free(kv->prev);
    free(kv->next);
    free(kv->cached);
    free(kv->hash);
    free(kv->parent);
    free(kv->tokens);
    free(kv->table);
    memset(kv, 0, sizeof *kv);
}

/* ---- free list ---- */

static void unlink_free(struct kiln_kv *kv, int b)
{
    int p = kv->prev[b], n = kv->next[b];
    if (p >= 0)
        kv->next[p] = n;
    else
        kv->head = n;
    if (n >= 0)
        kv->prev[n] = p;
    else
        kv->tail = p;
    kv->prev[b] = kv->next[b] = -1;
    kv->n_free--;
}

static void push_free(struct kiln_kv *kv, int b, bool at_head)
{
    if (kv->head < 0) {
        kv->prev[b] = kv->next[b] = -1;
        kv->head = kv->tail = b;
    } else if (at_head) {
        kv->prev[b] = -1;
        kv->next[b] = kv->head;
        kv->prev[kv->head] = b;
        kv->head = b;
    } else {
        kv->next[b] = -1;
        kv->prev[b] = kv->tail;
        kv->next[kv->tail] = b;
        kv->tail = b;
    }
    kv->n_free++;
}

/* ---- prefix table: linear probing, backward-shift deletion (no tombstones) ---- */

static uint32_t home(const struct kiln_kv *kv, uint64_t h)
{
    return (uint32_t)(h ^ (h >> 32)) & kv->table_mask;
}

static int table_find(const struct kiln_kv *kv, uint64_t h)
{
    for (uint32_t i = home(kv, h);; i = (i + 1) & kv->table_mask) {
        int b = kv->table[i];
        if (b < 0) return -1;
        if (kv->hash[b] == h) return (int)i;
    }
}

static void table_remove(struct kiln_kv *kv, int b)
{
    int slot = table_find(kv, kv->hash[b]);
    KILN_ASSERT(slot >= 0 && kv->table[slot] == b);
    uint32_t i = (uint32_t)slot, mask = kv->table_mask;
    for (uint32_t j = (i + 1) & mask;; j = (j + 1) & mask) {
        int c = kv->table[j];
        if (c < 0) break;
        uint32_t k = home(kv, kv->hash[c]);
        /* c may move back to i when its home slot is not cyclically inside (i, j]. */
        bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (stays) continue;
        kv->table[i] = c;
        i = j;
    }
    kv->table[i] = -1;
    kv->cached[b] = 0;
    kv->n_cached--;
}

/* ---- blocks ---- */

static int take_free(struct kiln_kv *kv)
{
    int b = kv->head;
    KILN_ASSERT(b >= 0 && kv->ref[b] == 0);
    unlink_free(kv, b);
    if (kv->cached[b]) table_remove(kv, b); /* evicted: its memory is about to be rewritten */
    KILN_ASSERT(b <= kv->n_touched);
    if (b == kv->n_touched) kv->n_touched++;
    kv->ref[b] = 1;
    return b;
}

static void retain(struct kiln_kv *kv, int b)
{
    if (kv->ref[b]++ == 0) unlink_free(kv, b);
}

static void release(struct kiln_kv *kv, int b)
{
    KILN_ASSERT(kv->ref[b] > 0);
    if (--kv->ref[b] == 0) push_free(kv, b, !kv->cached[b]);
}

/* ---- sequences ---- */

enum kiln_status kiln_kv_seq_init(struct kiln_kv_seq *s, int cap, struct kiln_error *err)
{
    memset(s, 0, sizeof *s);
    s->blocks = malloc((size_t)(cap > 0 ? cap : 1) * sizeof *s->blocks);
    if (!s->blocks) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory for a block table");
    s->cap = cap;
    s->hash = KILN_KV_ROOT_HASH;
    return KILN_OK;
}

void kiln_kv_seq_free(struct kiln_kv_seq *s)
{
    free(s->blocks);
    memset(s, 0, sizeof *s);
}

int kiln_kv_seq_match(struct kiln_kv *kv, struct kiln_kv_seq *s, const int32_t *tokens,
                      int n_tokens)
{
    KILN_ASSERT(s->n == 0);
    s->n_hashed = 0;
    s->hash = KILN_KV_ROOT_HASH;
    if (!kv->prefix_caching) return 0;
    int bs = kv->block_size;
    int max_blocks = n_tokens > 0 ? (n_tokens - 1) / bs : 0;
    if (max_blocks > s->cap) max_blocks = s->cap;
    while (s->n < max_blocks) {
        const int32_t *t = tokens + (size_t)s->n * bs;
        uint64_t h = kiln_kv_block_hash(s->hash, t, bs);
        int slot = table_find(kv, h);
        if (slot < 0) break;
        int b = kv->table[slot];
        if (kv->parent[b] != s->hash || memcmp(kv->tokens + (size_t)b * bs, t, bs * sizeof *t))
            break;
        retain(kv, b);
        s->blocks[s->n++] = b;
        s->hash = h;
        s->n_hashed = s->n;
    }
    return s->n;
}

bool kiln_kv_seq_reserve(struct kiln_kv *kv, struct kiln_kv_seq *s, int n_pos)
{
    int need = (n_pos + kv->block_size - 1) / kv->block_size;
    if (need > s->cap) return false;
    if (need - s->n > kv->n_free) return false;
    while (s->n < need) s->blocks[s->n++] = take_free(kv);
    return true;
}

void kiln_kv_seq_commit(struct kiln_kv *kv, struct kiln_kv_seq *s, const int32_t *tokens,
                        int n_computed)
{
    if (!kv->prefix_caching) return;
    int bs = kv->block_size;
    int full = n_computed / bs;
    if (full > s->n) full = s->n;
    while (s->n_hashed < full) {
        int b = s->blocks[s->n_hashed];
        const int32_t *t = tokens + (size_t)s->n_hashed * bs;
        uint64_t h = kiln_kv_block_hash(s->hash, t, bs);
        /* The first block with this hash stays the cached one; a twin computed at the same
         * time by another sequence is freed normally when that sequence ends. */
        if (!kv->cached[b] && table_find(kv, h) < 0) {
            uint32_t i = home(kv, h);
            while (kv->table[i] >= 0) i = (i + 1) & kv->table_mask;
            kv->table[i] = b;
            kv->cached[b] = 1;
            kv->hash[b] = h;
            kv->parent[b] = s->hash;
            memcpy(kv->tokens + (size_t)b * bs, t, bs * sizeof *t);
            kv->n_cached++;
        }
        s->hash = h;
        s->n_hashed++;
    }
}

void kiln_kv_seq_release(struct kiln_kv *kv, struct kiln_kv_seq *s)
{
    while (s->n > 0) release(kv, s->blocks[--s->n]);
    s->n_hashed = 0;
    s->hash = KILN_KV_ROOT_HASH;
}
