/* The KV block manager: which block of the backend's KV pool belongs to which sequence. The
 * backend owns the memory (n_blocks blocks of block_size positions per layer, backend.h); this
 * owns the bookkeeping: a reference count per block, a free list, per-sequence block tables, and
 * the prefix cache.
 *
 * Prefix cache: once a block is full of computed positions it is identified by a hash chained
 * over (the previous block's hash, its block_size token ids) and entered in a table, so a later
 * sequence whose prompt starts with the same tokens takes the same blocks (reference count + 1)
 * instead of recomputing them. Only full blocks are shared and a shared block is never written
 * again, so no copy is ever needed. A match also compares the block's stored token ids and its
 * parent hash, so a wrong reuse needs a 64-bit collision of two different parent chains.
 *
 * Free list: blocks nobody holds, in allocation order: never-cached blocks first, then cached
 * blocks least recently released first (LRU). A cached free block stays reusable by a match
 * until allocation needs its memory; then it leaves the table. A sequence releases its blocks
 * last to first, so the tail of a chain is evicted before its head.
 *
 * Not thread-safe: the engine thread is its only user. */
#ifndef KILN_RUNTIME_KVCACHE_H
#define KILN_RUNTIME_KVCACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"

/* The chain's seed: the "previous hash" of a sequence's first block. */
#define KILN_KV_ROOT_HASH 0x6b696c6e6b762121ull

struct kiln_kv {
    int n_blocks, block_size;
    bool prefix_caching;
    int32_t *ref;         /* (n_blocks,) sequences holding each block */
    int32_t *prev, *next; /* (n_blocks,) free-list links, -1 at the ends */
    int head, tail;       /* free list: allocation takes the head */
    int n_free;           /* blocks with ref == 0 (cached or not) */
    uint8_t *cached;      /* (n_blocks,) 1 while the block is in the prefix table */
    uint64_t *hash;       /* (n_blocks,) chain hash of a cached block */
    uint64_t *parent;     /* (n_blocks,) the previous block's chain hash */
    int32_t *tokens;      /* (n_blocks, block_size) token ids of a cached block */
    int32_t *table;       /* (table_mask + 1,) open addressing by hash: block id or -1 */
    uint32_t table_mask;
    int n_cached; /* blocks in the table */
    /* Blocks allocated at least once: exactly [0, n_touched). The free list starts in index
     * order and a released block goes before (never cached) or after (cached) the blocks never
     * used, so those are always taken in index order. A backend whose pool memory is committed
     * on first write (the CPU backend's mmap'ed pool) holds n_touched blocks' worth of it. */
    int n_touched;
};

/* A sequence's block table. */
struct kiln_kv_seq {
    int32_t *blocks; /* (cap,) block ids in position order */
    int n;           /* blocks held */
    int cap;         /* most blocks a sequence can hold: ceil(max_seq_len / block_size) */
    int n_hashed;    /* leading blocks whose chain hash is known (matched or committed) */
    uint64_t hash;   /* chain hash of block n_hashed - 1 (KILN_KV_ROOT_HASH when none) */
};

enum kiln_status kiln_kv_init(struct kiln_kv *kv, int n_blocks, int block_size, bool prefix_caching,
                              struct kiln_error *err);
void kiln_kv_free(struct kiln_kv *kv);

/* Blocks an allocation can take now: unused ones plus cached ones nobody holds. */
static inline int kiln_kv_available(const struct kiln_kv *kv)
{
    return kv->n_free;
}
/* Blocks held by at least one sequence. */
static inline int kiln_kv_used(const struct kiln_kv *kv)
{
    return kv->n_blocks - kv->n_free;
}

/* Chain hash of a full block: mixes parent and each of the n token ids. */
uint64_t kiln_kv_block_hash(uint64_t parent, const int32_t *tokens, int n);

enum kiln_status kiln_kv_seq_init(struct kiln_kv_seq *s, int cap, struct kiln_error *err);
void kiln_kv_seq_free(struct kiln_kv_seq *s);

/* Prefix caching, for a sequence that holds no blocks: takes the cached blocks that match
 * tokens[0..n_tokens) block by block from the start. At least one position is left to compute
 * (the last token needs logits), so at most (n_tokens - 1) / block_size blocks are taken.
 * Returns the number taken. */
int kiln_kv_seq_match(struct kiln_kv *kv, struct kiln_kv_seq *s, const int32_t *tokens,
                      int n_tokens);
/* Grows s to hold n_pos positions: all or nothing. False when the pool has too few available
 * blocks or n_pos exceeds the sequence's capacity; s is then unchanged. */
bool kiln_kv_seq_reserve(struct kiln_kv *kv, struct kiln_kv_seq *s, int n_pos);
/* Enters every full block among the first n_computed positions (tokens[0..n_computed)) into the
 * prefix table. Call after the forward that wrote them, never before: another sequence may
 * read a block as soon as it is in the table. */
void kiln_kv_seq_commit(struct kiln_kv *kv, struct kiln_kv_seq *s, const int32_t *tokens,
                        int n_computed);
/* Releases every block of s, last to first. */
void kiln_kv_seq_release(struct kiln_kv *kv, struct kiln_kv_seq *s);

#endif
