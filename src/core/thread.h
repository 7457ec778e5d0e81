/* A small persistent thread pool for data-parallel loops on the CPU backend:
 * kiln_parallel_for splits [0, n) into one contiguous range per thread and waits. Calls from
 * different threads are serialized (the pool runs one loop at a time). */
#ifndef KILN_CORE_THREAD_H
#define KILN_CORE_THREAD_H

#include <stddef.h>

struct kiln_pool;

/* n_threads <= 0: one per online core (or KILN_THREADS). Returns NULL when out of memory. */
struct kiln_pool *kiln_pool_create(int n_threads);
void kiln_pool_free(struct kiln_pool *pool);
int kiln_pool_size(const struct kiln_pool *pool);

typedef void (*kiln_range_fn)(void *ctx, size_t begin, size_t end);

/* Runs fn over [0, n) split in pool-size ranges; pool NULL runs inline. */
void kiln_parallel_for(struct kiln_pool *pool, size_t n, kiln_range_fn fn, void *ctx);

#endif
