#include "thread.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

struct kiln_pool {
    int n;              /* threads including the caller */
    pthread_t *threads; /* [n - 1] workers */
    pthread_mutex_t mu, run_mu;
    pthread_cond_t start, done;
    unsigned long generation;
    int pending, stop;
    kiln_range_fn fn;
    void *ctx;
    size_t total;
};

struct worker_arg {
    struct kiln_pool *pool;
    int index;
};

static void run_range(struct kiln_pool *p, int index)
{
    size_t begin = p->total * (size_t)index / (size_t)p->n;
    size_t end = p->total * (size_t)(index + 1) / (size_t)p->n;
    if (begin < end) p->fn(p->ctx, begin, end);
}

static void *worker(void *arg)
{
    struct worker_arg wa = *(struct worker_arg *)arg;
    free(arg);
    struct kiln_pool *p = wa.pool;
    unsigned long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->generation == seen) pthread_cond_wait(&p->start, &p->mu);
        if (p->stop) break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        run_range(p, wa.index);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

struct kiln_pool *kiln_pool_create(int n_threads)
{
    if (n_threads <= 0) {
        const char *env = getenv("KILN_THREADS");
        n_threads = env ? atoi(env) : (int)sysconf(_SC_NPROCESSORS_ONLN);
        if (n_threads <= 0) n_threads = 1;
        if (n_threads > 256) n_threads = 256;
    }
    struct kiln_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = n_threads;
    p->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    if (!p->threads) {
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->run_mu, NULL);
    pthread_cond_init(&p->start, NULL);
    pthread_cond_init(&p->done, NULL);
    for (int i = 1; i < n_threads; i++) {
        struct worker_arg *wa = malloc(sizeof *wa);
        if (wa) *wa = (struct worker_arg){p, i};
        if (!wa || pthread_create(&p->threads[i - 1], NULL, worker, wa) != 0) {
            free(wa);
            p->n = i; /* run with the threads we got */
            break;
        }
    }
    return p;
}

void kiln_pool_free(struct kiln_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->threads[i - 1], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->run_mu);
    pthread_cond_destroy(&p->start);
    pthread_cond_destroy(&p->done);
    free(p->threads);
    free(p);
}

int kiln_pool_size(const struct kiln_pool *p)
{
    return p ? p->n : 1;
}

void kiln_parallel_for(struct kiln_pool *p, size_t n, kiln_range_fn fn, void *ctx)
{
    if (!p || p->n == 1 || n <= 1) {
        if (n) fn(ctx, 0, n);
        return;
    }
    pthread_mutex_lock(&p->run_mu);
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->total = n;
    p->pending = p->n - 1;
    p->generation++;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    run_range(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->pending > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
    pthread_mutex_unlock(&p->run_mu);
}
