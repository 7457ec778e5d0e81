/* Tree checksums (format.h): XXH3-64 per 64 MiB chunk, then of the digests. xxHash is used
 * header-only (XXH_INLINE_ALL) so the binary needs no libxxhash at run time. */
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "format.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

struct kiln_hasher {
    XXH3_state_t *chunk; /* the chunk being hashed (64-byte aligned: XXH3_createState) */
    uint64_t in_chunk;   /* its bytes so far */
    uint8_t *digests;    /* finished chunks' digests, little-endian u64 each */
    size_t n, cap;       /* digests */
    uint64_t total;      /* bytes */
};

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

struct kiln_hasher *kiln_hasher_create(void)
{
    struct kiln_hasher *h = calloc(1, sizeof *h);
    if (h && !(h->chunk = XXH3_createState())) {
        free(h);
        return NULL;
    }
    if (h) XXH3_64bits_reset(h->chunk);
    return h;
}

void kiln_hasher_free(struct kiln_hasher *h)
{
    if (!h) return;
    XXH3_freeState(h->chunk);
    free(h->digests);
    free(h);
}

uint64_t kiln_hasher_bytes(const struct kiln_hasher *h)
{
    return h->total;
}

static enum kiln_status push_digest(struct kiln_hasher *h, uint64_t d, struct kiln_error *err)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? 2 * h->cap : 64;
        uint8_t *v = realloc(h->digests, cap * 8);
        if (!v) return kiln_errorf(err, KILN_ERR_NOMEM, "checksum: out of memory");
        h->digests = v;
        h->cap = cap;
    }
    put_le64(h->digests + 8 * h->n++, d);
    return KILN_OK;
}

enum kiln_status kiln_hasher_update(struct kiln_hasher *h, const void *data, size_t n,
                                    struct kiln_error *err)
{
    const uint8_t *p = data;
    while (n > 0) {
        size_t take = KILN_HASH_CHUNK - h->in_chunk;
        if (take > n) take = n;
        XXH3_64bits_update(h->chunk, p, take);
        h->in_chunk += take;
        h->total += take;
        p += take;
        n -= take;
        if (h->in_chunk == KILN_HASH_CHUNK) {
            enum kiln_status st = push_digest(h, XXH3_64bits_digest(h->chunk), err);
            if (st) return st;
            XXH3_64bits_reset(h->chunk);
            h->in_chunk = 0;
        }
    }
    return KILN_OK;
}

uint64_t kiln_hasher_digest(struct kiln_hasher *h)
{
    /* a partial last chunk joins the list without being committed, so more may follow */
    XXH3_state_t top;
    XXH3_64bits_reset(&top);
    XXH3_64bits_update(&top, h->digests, 8 * h->n);
    if (h->in_chunk) {
        uint8_t last[8];
        put_le64(last, XXH3_64bits_digest(h->chunk));
        XXH3_64bits_update(&top, last, 8);
    }
    return XXH3_64bits_digest(&top);
}

struct chunk_job {
    const uint8_t *data;
    size_t n;
    uint8_t *digests; /* (chunks, 8) */
};

static void hash_chunks(void *ctx, size_t c0, size_t c1)
{
    const struct chunk_job *j = ctx;
    for (size_t c = c0; c < c1; c++) {
        size_t off = c * (size_t)KILN_HASH_CHUNK;
        size_t len = j->n - off < KILN_HASH_CHUNK ? j->n - off : KILN_HASH_CHUNK;
        put_le64(j->digests + 8 * c, XXH3_64bits(j->data + off, len));
    }
}

enum kiln_status kiln_hash_bytes(const void *data, size_t n, struct kiln_pool *pool,
                                 uint64_t *digest, struct kiln_error *err)
{
    size_t chunks = (n + KILN_HASH_CHUNK - 1) / KILN_HASH_CHUNK;
    struct chunk_job j = {data, n, malloc(chunks ? chunks * 8 : 1)};
    if (!j.digests) return kiln_errorf(err, KILN_ERR_NOMEM, "checksum: out of memory");
    kiln_parallel_for(pool, chunks, hash_chunks, &j);
    *digest = XXH3_64bits(j.digests, chunks * 8);
    free(j.digests);
    return KILN_OK;
}

enum kiln_status kiln_hash_file(const char *path, struct kiln_pool *pool, uint64_t *digest,
                                uint64_t *size, struct kiln_error *err)
{
    struct kiln_mapping map;
    enum kiln_status st = kiln_file_map(path, &map, err);
    if (st) return st;
    st = kiln_hash_bytes(map.data, map.size, pool, digest, err);
    *size = map.size;
    kiln_file_unmap(&map);
    return st;
}
