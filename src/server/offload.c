/* Work off the event loop (offload.h): jobs in a FIFO for the threads, finished jobs in a
 * second list that a libevent user event (made active across threads) drains on the loop. */
#include "offload.h"

#include <event2/event.h>
#include <pthread.h>
#include <stdlib.h>

struct job {
    void (*work)(void *arg);
    void (*done)(void *arg);
    void *arg;
    struct job *next;
};

struct kiln_offload {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct job *todo, *todo_tail, *finished;
    bool stop;
    int n_threads;
    pthread_t *threads;
    struct event *ev_done;
};

static void *worker(void *arg)
{
    struct kiln_offload *o = arg;
    pthread_mutex_lock(&o->mu);
    for (;;) {
        while (!o->todo && !o->stop) pthread_cond_wait(&o->cv, &o->mu);
        if (o->stop) break;
        struct job *j = o->todo;
        o->todo = j->next;
        if (!o->todo) o->todo_tail = NULL;
        pthread_mutex_unlock(&o->mu);
        j->work(j->arg);
        pthread_mutex_lock(&o->mu);
        j->next = o->finished;
        o->finished = j;
        event_active(o->ev_done, 0, 0);
    }
    pthread_mutex_unlock(&o->mu);
    return NULL;
}

static void run_done(struct job *j)
{
    /* finished is pushed newest first: run the oldest first. */
    struct job *rev = NULL;
    while (j) {
        struct job *next = j->next;
        j->next = rev;
        rev = j;
        j = next;
    }
    while (rev) {
        struct job *next = rev->next;
        rev->done(rev->arg);
        free(rev);
        rev = next;
    }
}

static void on_done(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct kiln_offload *o = arg;
    pthread_mutex_lock(&o->mu);
    struct job *j = o->finished;
    o->finished = NULL;
    pthread_mutex_unlock(&o->mu);
    run_done(j);
}

struct kiln_offload *kiln_offload_create(struct event_base *base, int n_threads)
{
    struct kiln_offload *o = calloc(1, sizeof *o);
    if (!o) return NULL;
    pthread_mutex_init(&o->mu, NULL);
    pthread_cond_init(&o->cv, NULL);
    o->ev_done = event_new(base, -1, 0, on_done, o);
    o->threads = calloc((size_t)n_threads, sizeof *o->threads);
    if (!o->ev_done || !o->threads) {
        kiln_offload_free(o);
        return NULL;
    }
    for (int i = 0; i < n_threads; i++) {
        if (pthread_create(&o->threads[i], NULL, worker, o)) break;
        o->n_threads++;
    }
    if (!o->n_threads) {
        kiln_offload_free(o);
        return NULL;
    }
    return o;
}

bool kiln_offload_run(struct kiln_offload *o, void (*work)(void *arg), void (*done)(void *arg),
                      void *arg)
{
    struct job *j = malloc(sizeof *j);
    if (!j) return false;
    *j = (struct job){work, done, arg, NULL};
    pthread_mutex_lock(&o->mu);
    if (o->todo_tail)
        o->todo_tail->next = j;
    else
        o->todo = j;
    o->todo_tail = j;
    pthread_cond_signal(&o->cv);
    pthread_mutex_unlock(&o->mu);
    return true;
}

void kiln_offload_free(struct kiln_offload *o)
{
    if (!o) return;
    pthread_mutex_lock(&o->mu);
    o->stop = true;
    pthread_cond_broadcast(&o->cv);
    pthread_mutex_unlock(&o->mu);
    for (int i = 0; i < o->n_threads; i++) pthread_join(o->threads[i], NULL);
    run_done(o->finished);
    /* Queued, never worked on: in order. */
    for (struct job *j = o->todo; j;) {
        struct job *next = j->next;
        j->done(j->arg);
        free(j);
        j = next;
    }
    if (o->ev_done) event_free(o->ev_done);
    pthread_cond_destroy(&o->cv);
    pthread_mutex_destroy(&o->mu);
    free(o->threads);
    free(o);
}
